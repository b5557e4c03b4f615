"""Shared by the benchmarks that run server processes: a private PostgreSQL, seeding, processes, CPU time."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.domain.access import Role
from modelroute_server.domain.audit import Caller
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import Attachment
from modelroute_server.entrypoints.server import sql_context
from modelroute_server.service_layer import access_tokens, model_configs, provider_configs, user_keys
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput

SERVER = Path(sys.executable).parent / "modelroute-server"
BENCH_CALLER = Caller("cli:bench", "Bench")
PROVIDERS, MODELS, USERS = 12, 40, 500
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_cluster(scratch: Path) -> Iterator[str]:
    """A PostgreSQL of the benchmark's own (never the machine's), stopped afterwards; the URL of its
    `postgres` database, unmigrated (`create_database` adds migrated ones beside it)."""
    postgres = database.EmbeddedPostgres(scratch / "pgdata")
    url = postgres.start()
    try:
        yield url
    finally:
        postgres.stop()


@contextmanager
def private_database(scratch: Path) -> Iterator[str]:
    """A migrated PostgreSQL of the benchmark's own (never the machine's), stopped afterwards."""
    with private_cluster(scratch) as url:
        migrate(url)
        yield url


def migrate(url: str) -> None:
    engine = database.create_engine(url)
    try:
        database.upgrade(engine)
    finally:
        engine.dispose()


def database_url(url: str, name: str) -> str:
    """The same server's URL for another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def create_database(cluster_url: str, name: str) -> str:
    """A new, migrated database on the private cluster; its URL."""
    with psycopg.connect(database.libpq_url(cluster_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = database_url(cluster_url, name)
    migrate(url)
    return url


def create_tokens(url: str, keyring_spec: str, prefix: str = "bench") -> dict[Role, str]:
    """One access token per role, through the service layer; returns their secrets."""
    engine = database.create_engine(url)
    ctx = sql_context(engine, Keyring.parse(keyring_spec))
    try:
        return {
            role: access_tokens.create_access_token(
                ctx, BENCH_CALLER, f"{prefix}-{role.value}", access_tokens.AccessTokenInput(roles=(role,))
            ).secret
            for role in Role
        }
    finally:
        engine.dispose()


def seed(url: str, keyring_spec: str) -> dict[Role, str]:
    """The benchmark's configuration (the shape bench_load uses) and one token per role; returns the tokens."""
    engine = database.create_engine(url)
    ctx = sql_context(engine, Keyring.parse(keyring_spec))
    try:
        for i in range(PROVIDERS):
            provider_configs.create_provider_config(
                ctx,
                BENCH_CALLER,
                f"p{i}",
                ProviderConfigInput(
                    family=Family.OPENAI,
                    api_key=f"sk-{i}",
                    central_api_key_enabled=True,
                    allow_user_api_key=True,
                    allow_central_api_key_fallback=True,
                ),
            )
        for m in range(MODELS):
            ids = tuple(f"p{(m + k) % PROVIDERS}" for k in range(3))
            model_configs.create_model_config(
                ctx,
                BENCH_CALLER,
                f"m{m}",
                ModelConfigInput(
                    family=Family.OPENAI, model="gpt", context_limit=1000, attachments=tuple(Attachment(i) for i in ids)
                ),
            )
        for u in range(USERS):
            user_keys.set_user_provider_key(ctx, BENCH_CALLER, f"user-{u}", f"p{u % PROVIDERS}", f"uk-{u}")
    finally:
        engine.dispose()
    return create_tokens(url, keyring_spec)


def server_env(url: str, keyring_spec: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELROUTE_")}
    env.update(MODELROUTE_DATABASE_URL=url, MODELROUTE_KEYRING=keyring_spec, MODELROUTE_LOG_LEVEL="WARNING")
    # Replicas side by side on one machine: metrics on any free port each (the default one is one port).
    env["MODELROUTE_METRICS_LISTEN"] = "127.0.0.1:0"
    return env


def wait_serving(target: str, timeout: float = 60) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server at {target} never became SERVING")
            time.sleep(0.1)


@contextmanager
def server_processes(commands: Sequence[Sequence[str]], env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [subprocess.Popen(list(command), env=env) for command in commands]
    try:
        yield processes
    finally:
        stop_processes(processes)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each (still running) process, then wait; a process that does not stop in 30 s is killed."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (from /proc, at clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin(pid: int, to: Iterable[int]) -> None:
    """Every thread of a process (grpc's pollers included) onto these cores; threads started later inherit it."""
    wanted = set(to)
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), wanted)


def new_keyring_spec() -> str:
    return generate_keyring_spec("bench")
