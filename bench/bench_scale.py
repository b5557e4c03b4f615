"""The service at scale: 100,000 models, 500,000 attachments, 1,000 provider configs, 1,000,000 user keys.

One private PostgreSQL (pgserver, never the machine's own) holds three databases, seeded once through COPY
(keys sealed exactly as the repositories seal them, the change-log triggers off for the seeding session):

  * the large catalogue (the figures' size);
  * a 100-model catalogue, the baseline for the ratios "at 100,000 models vs at 100 models";
  * a 1,000-model catalogue for pure resolution against LiteLLM's Router (same shape on both sides).

Each run then starts real `modelroute-server serve` processes (two replicas per catalogue, on the same
database), measures every figure below, and stops them; every timing is the median of `--runs` runs (the
per-run values are printed beside it). The load client (grpc.aio, in this process) runs on one core and the
measured replica on the other, as in bench_auth.py; the second replicas and PostgreSQL float.

Figures (see the table printed at the end):
  * every RPC answers OK at the large size and every List pages to its end (checked once, at the end of the
    last run, so that its writes do not disturb the measured runs);
  * cold start: process start to the first OK ResolveModel;
  * resident memory (VmRSS) of a replica after loading and after the write phase;
  * 200 sequential UpdateModelConfig writes (display_name toggled) on replica 1, while 8 ResolveModel calls
    stay in flight on it: time from each write's response to replica 1's next ResolveModel response (which
    must report config_revision >= the write's revision), and to the first ResolveModel on replica 2 that
    reports it (polled tightly); the same at 100 models; the background load's p99 during the writes vs
    without them;
  * ResolveModel throughput at the large size vs at 100 models (chunks taken in turns);
  * server CPU per call of grpc.health.v1.Health/Check (bearer token sent, same interceptors) vs ResolveModel,
    for a model with 5 attachments and no user, and with a user holding a key for one of them;
  * in-process resolution vs LiteLLM `Router.get_available_deployment` (1,000 models x 5 ordered deployments);
  * transactions the bench database sees per ResolveModel in steady state (pg_stat_database), net of what
    the replicas' background work does in an idle window of the same length.

Run: .venv/bin/python bench/bench_scale.py [--runs 3] [--small]
(`--small` is a quick check of the code paths on a small catalogue; its figures are not the targets' size.)
LiteLLM is optional: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    SERVER,
    cores,
    cpu_seconds,
    create_database,
    create_tokens,
    database_name,
    free_port,
    new_keyring_spec,
    pin,
    private_cluster,
    rss_bytes,
    server_env,
    stop_processes,
)
from modelroute.v1 import (
    access_token_pb2,
    access_token_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    provider_config_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
    user_key_pb2,
    user_key_pb2_grpc,
)
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, provider_key_binding, seal_bound, user_key_binding
from modelroute_server.domain.access import Role

LITELLM_MISSING = "litellm not installed (pip install -e '.[bench]')"
PAGE = 200  # the service's largest page
CONCURRENCY = 8
WRITE_MODEL = "m1"
REQUEST_SPREAD = 4096  # distinct (model, user) requests the load cycles through
MACHINE_CORES = cores()  # read before this process pins itself to one of them
CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),  # each channel its own connection
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)


# -- catalogue shapes and seeding


@dataclass(frozen=True)
class Shape:
    """Providers p0..pP-1 (every `user_key_stride`-th allows user keys, policy C=1,U=1,F=1; the rest C=1,U=0,F=0;
    all openai, all with a central key); models m0..mM-1 (m0 the default), model i attached to providers
    5i..5i+4 (mod P) in that order; users user-0..user-U-1 with `keys_per_user` keys each, on distinct
    user-key providers."""

    label: str
    models: int
    providers: int
    users: int
    keys_per_user: int = 4
    attachments: int = 5
    user_key_stride: int = 10

    def __post_init__(self) -> None:
        assert self.providers >= self.attachments, "a model's attachments are distinct providers"
        assert self.users == 0 or self.keys_per_user <= self.user_key_providers, "a user's keys are on distinct ones"

    @property
    def user_key_providers(self) -> int:
        return self.providers // self.user_key_stride

    @property
    def keys(self) -> int:
        return self.users * self.keys_per_user

    def attached(self, model: int) -> list[int]:
        return [(self.attachments * model + k) % self.providers for k in range(self.attachments)]

    def key_providers(self, user: int) -> list[int]:
        q = self.user_key_providers
        return [self.user_key_stride * ((self.keys_per_user * user + k) % q) for k in range(self.keys_per_user)]

    def user_with_key_for(self, provider: int) -> int:
        return next(u for u in range(self.users) if provider in self.key_providers(u))

    def describe(self) -> str:
        return (
            f"{self.models:,} models x {self.attachments} attachments = {self.models * self.attachments:,}, "
            f"{self.providers:,} provider configs ({self.user_key_providers:,} allow user keys), "
            f"{self.users:,} users x {self.keys_per_user} keys = {self.keys:,} user keys"
        )


LARGE = Shape("100,000 models", 100_000, 1_000, 250_000)
HUNDRED = Shape("100 models", 100, 50, 100)
THOUSAND = Shape("1,000 models", 1_000, 1_000, 0)
QUICK_LARGE = Shape("5,000 models (--small)", 5_000, 200, 10_000)
QUICK_THOUSAND = Shape("200 models (--small)", 200, 200, 0)


def seed_catalogue(url: str, keyring_spec: str, shape: Shape) -> dict[Role, str]:
    """The catalogue through COPY in one transaction, with the change-log triggers off for this session;
    then the config revision (and change sequence, where the schema has one) moves past everything, so a
    replica loads it in full. Returns one access token per role."""
    tokens = create_tokens(url, keyring_spec)
    keyring = Keyring.parse(keyring_spec)
    with psycopg.connect(database.libpq_url(url)) as connection:
        connection.execute("SET session_replication_role = replica")  # no triggers (change log, foreign keys)
        connection.execute("SET synchronous_commit = off")
        has_sequence = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'config_revision' AND column_name = 'sequence')"
        ).fetchone()[0]
        counter = "sequence" if has_sequence else "revision"
        revision = int(connection.execute(f"SELECT {counter} FROM config_revision").fetchone()[0]) + 1
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY provider_configs (id, family, display_name, enabled, central_api_key_enabled, "
                "allow_user_api_key, allow_central_api_key_fallback, api_key_ciphertext, api_key_key_id, "
                "key_incarnation, revision) FROM STDIN"
            ) as copy:
                for j in range(shape.providers):
                    provider_id = f"p{j}"
                    user_keys = j % shape.user_key_stride == 0
                    sealed = seal_bound(
                        keyring, f"sk-central-{j}", functools.partial(provider_key_binding, provider_id)
                    )
                    copy.write_row(
                        (
                            *(provider_id, "openai", f"Provider {j}", True, True, user_keys, user_keys),
                            *(sealed.ciphertext, sealed.key_id, sealed.incarnation, revision),
                        )
                    )
            with cursor.copy(
                "COPY model_configs (id, family, model, display_name, enabled, is_default, context_limit, revision) "
                "FROM STDIN"
            ) as copy:
                for i in range(shape.models):
                    copy.write_row((f"m{i}", "openai", "gpt-4o", f"Model {i}", True, i == 0, 128_000, revision))
            with cursor.copy(
                "COPY model_attachments (model_config_id, provider_config_id, family, position, model_family) "
                "FROM STDIN"
            ) as copy:
                for i in range(shape.models):
                    model_id = f"m{i}"
                    for position, j in enumerate(shape.attached(i)):
                        copy.write_row((model_id, f"p{j}", "openai", position, "openai"))
            with cursor.copy(
                "COPY user_provider_keys (user_id, provider_config_id, api_key_ciphertext, api_key_key_id, "
                "key_incarnation) FROM STDIN"
            ) as copy:
                for u in range(shape.users):
                    user = f"user-{u}"
                    for j in shape.key_providers(u):
                        provider_id = f"p{j}"
                        sealed = seal_bound(
                            keyring, f"uk-{u}-{j}", functools.partial(user_key_binding, user, provider_id)
                        )
                        copy.write_row((user, provider_id, sealed.ciphertext, sealed.key_id, sealed.incarnation))
        if has_sequence:
            connection.execute(
                "UPDATE config_revision SET sequence = sequence + 1, revision = sequence + 1, "
                "pruned_through = sequence + 1"
            )
        else:
            connection.execute("UPDATE config_revision SET revision = revision + 1")
    with psycopg.connect(database.libpq_url(url), autocommit=True) as connection:
        connection.execute("ANALYZE")
        counts = connection.execute(
            "SELECT (SELECT count(*) FROM provider_configs), (SELECT count(*) FROM model_configs), "
            "(SELECT count(*) FROM model_attachments), (SELECT count(*) FROM user_provider_keys), "
            "(SELECT count(*) FROM model_configs WHERE is_default)"
        ).fetchone()
    expected = (shape.providers, shape.models, shape.models * shape.attachments, shape.keys, 1)
    if tuple(counts) != expected:
        raise SystemExit(f"seeding {shape.label}: counts {counts}, expected {expected}")
    return tokens


class RunFailed(Exception):
    """A run could not measure (a replica that does not start, a call that fails); the table says so."""


# -- statistics


def p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


# -- server processes


@dataclass
class Replica:
    label: str
    url: str
    keyring_spec: str
    tokens: dict[Role, str]
    shape: Shape
    cores: set[int]
    log_path: Path | None = None
    address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = server_env(self.url, self.keyring_spec)
        env["MODELROUTE_LISTEN"] = self.address
        assert self.log_path is not None
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.started = time.perf_counter()
            self.process = subprocess.Popen(
                [str(SERVER), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        pin(self.process.pid, self.cores)

    def log_tail(self, lines: int = 8, width: int = 300) -> str:
        """The end of this replica's log, each line cut short (a failed load can log a whole statement)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode(errors="replace")
        return "\n".join(
            f"    {line[:width]}{' ...' if len(line) > width else ''}" for line in text.splitlines()[-lines:]
        )

    def wait_resolvable(self, timeout: float) -> float:
        """Seconds from process start to the first OK ResolveModel (polled every 20 ms)."""
        assert self.process is not None
        request = resolver_pb2.ResolveModelRequest(model="m0")
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            resolver = resolver_pb2_grpc.ResolverServiceStub(channel)
            while True:
                try:
                    resolver.ResolveModel(request, metadata=bearer(self.tokens[Role.RESOLVER]), timeout=30)
                    elapsed = time.perf_counter() - self.started
                    break
                except grpc.RpcError as error:
                    if self.process.poll() is not None:
                        raise RunFailed(f"{self.label} exited ({self.process.returncode}) before serving") from None
                    if time.perf_counter() - self.started > timeout:
                        raise RunFailed(
                            f"{self.label}: no OK ResolveModel within {timeout:.0f} s of its start "
                            f"(last answer {error.code().name})"
                        ) from None
                    time.sleep(0.02)
        pin(self.process.pid, self.cores)  # every thread it has started by now
        return elapsed


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def channel(replica: Replica) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(replica.address, options=CHANNEL_OPTIONS)


def load_requests(shape: Shape) -> list[resolver_pb2.ResolveModelRequest]:
    """Requests spread over the whole catalogue (models and users), cycled by the loads."""
    return [
        resolver_pb2.ResolveModelRequest(
            model=f"m{(i * 7919) % shape.models}", user=f"user-{(i * 104729) % shape.users}" if shape.users else ""
        )
        for i in range(REQUEST_SPREAD)
    ]


@dataclass
class Load:
    """A closed loop of `concurrency` ResolveModel calls in flight: (start time, latency) per call."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(
        self,
        resolver: resolver_pb2_grpc.ResolverServiceStub,
        requests: Sequence[resolver_pb2.ResolveModelRequest],
        token: str,
        *,
        count: int | None = None,
        stop: asyncio.Event | None = None,
        concurrency: int = CONCURRENCY,
    ) -> None:
        metadata = bearer(token)
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while (count is None or issued < count) and (stop is None or not stop.is_set()):
                request = requests[issued % len(requests)]
                issued += 1
                started = time.perf_counter()
                try:
                    await resolver.ResolveModel(request, metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                self.samples.append((started, time.perf_counter() - started))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- the write phase


@dataclass
class WritePhase:
    own_ms: list[float]  # write response -> replica 1's next ResolveModel response
    other_ms: list[float]  # write response -> replica 2 reports the write's revision
    stale: int  # replica 1's next response below the write's revision
    missed: int  # replica 2 never reported the revision within the poll limit
    baseline_p99_ms: float
    during_p99_ms: float
    failures: list[str]
    writes: int
    requested: int


async def write_phase(r1: Replica, r2: Replica, writes: int, baseline_calls: int, cap_seconds: float) -> WritePhase:
    requests = load_requests(r1.shape)
    resolver_token, admin = r1.tokens[Role.RESOLVER], bearer(r1.tokens[Role.ADMIN])
    ask = resolver_pb2.ResolveModelRequest(model=WRITE_MODEL)
    async with channel(r1) as background_channel, channel(r1) as writer_channel, channel(r2) as other_channel:
        background = resolver_pb2_grpc.ResolverServiceStub(background_channel)
        models = model_config_pb2_grpc.ModelConfigServiceStub(writer_channel)
        own = resolver_pb2_grpc.ResolverServiceStub(writer_channel)
        other = resolver_pb2_grpc.ResolverServiceStub(other_channel)
        for stub in (own, other):
            await stub.ResolveModel(ask, metadata=bearer(resolver_token))  # connections up
        await Load().run(background, requests, resolver_token, count=1000)  # warm up
        baseline = Load()
        await baseline.run(background, requests, resolver_token, count=baseline_calls)

        during, stop = Load(), asyncio.Event()
        window_start = time.perf_counter()
        load = asyncio.create_task(during.run(background, requests, resolver_token, stop=stop))
        own_ms: list[float] = []
        other_ms: list[float] = []
        stale = missed = 0

        async def next_own(after: float) -> tuple[float, int]:
            response = await own.ResolveModel(ask, metadata=bearer(resolver_token))
            return (time.perf_counter() - after) * 1000, response.config_revision

        async def seen_on_other(after: float, revision: int) -> float | None:
            while time.perf_counter() - after < 10:
                response = await other.ResolveModel(ask, metadata=bearer(resolver_token))
                if response.config_revision >= revision:
                    return (time.perf_counter() - after) * 1000
            return None

        done = 0
        for n in range(writes):
            if time.perf_counter() - window_start > cap_seconds:
                break
            written = await models.UpdateModelConfig(
                model_config_pb2.UpdateModelConfigRequest(
                    model_config=model_config_pb2.ModelConfig(
                        name=f"modelConfigs/{WRITE_MODEL}", display_name=f"Model one, write {n % 2}"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                ),
                metadata=admin,
            )
            answered = time.perf_counter()
            revision = etag_revision(written.etag)
            (own_latency, own_revision), other_latency = await asyncio.gather(
                next_own(answered), seen_on_other(answered, revision)
            )
            own_ms.append(own_latency)
            stale += own_revision < revision
            if other_latency is None:
                missed += 1
                other_ms.append(math.inf)
            else:
                other_ms.append(other_latency)
            done += 1
        stop.set()
        await load
    window = [latency for started, latency in during.samples if started >= window_start]
    return WritePhase(
        own_ms,
        other_ms,
        stale,
        missed,
        p99([latency for _, latency in baseline.samples]) * 1000,
        p99(window) * 1000 if window else math.inf,
        baseline.failures + during.failures,
        done,
        writes,
    )


def etag_revision(etag: str) -> int:
    """An etag is the revision the row was written at, quoted (service_layer/resources.etag_of)."""
    try:
        return int(etag.strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise RunFailed(f"cannot read a revision from the etag {etag!r}") from None


# -- throughput and CPU per call, in chunks taken in turns


async def throughput(large: Replica, small: Replica, chunks: int, per_chunk: int) -> dict[str, tuple[float, float]]:
    """Calls per second and server CPU seconds per call, for each replica; chunks alternate between them."""
    targets = {"large": large, "small": small}
    async with channel(large) as large_channel, channel(small) as small_channel:
        stubs = {
            "large": resolver_pb2_grpc.ResolverServiceStub(large_channel),
            "small": resolver_pb2_grpc.ResolverServiceStub(small_channel),
        }
        requests = {name: load_requests(replica.shape) for name, replica in targets.items()}
        for name, replica in targets.items():  # warm up
            await Load().run(stubs[name], requests[name], replica.tokens[Role.RESOLVER], count=1000)
        seconds = dict.fromkeys(targets, 0.0)
        cpu = dict.fromkeys(targets, 0.0)
        failures: list[str] = []
        for chunk in range(chunks):
            for name in list(targets) if chunk % 2 == 0 else list(targets)[::-1]:
                replica = targets[name]
                load = Load()
                cpu_before, started = cpu_seconds(replica.pid), time.perf_counter()
                await load.run(stubs[name], requests[name], replica.tokens[Role.RESOLVER], count=per_chunk)
                seconds[name] += time.perf_counter() - started
                cpu[name] += cpu_seconds(replica.pid) - cpu_before
                failures += load.failures
    if failures:
        raise RunFailed(f"ResolveModel failed under load: {failures[:3]}")
    calls = chunks * per_chunk
    return {name: (calls / seconds[name], cpu[name] / calls) for name in targets}


@dataclass
class CpuRows:
    health_us: float
    resolve_a_us: float
    resolve_b_us: float
    source_a: str
    source_b: str
    resolve_b_unkept_us: float  # row b's shape, every call a (model, user) pair with no kept answer

    @property
    def ratio_b_unkept(self) -> float:
        return self.health_us / self.resolve_b_unkept_us

    @property
    def ratio_a(self) -> float:
        return self.health_us / self.resolve_a_us

    @property
    def ratio_b(self) -> float:
        return self.health_us / self.resolve_b_us


def cpu_row_requests(shape: Shape) -> tuple[resolver_pb2.ResolveModelRequest, resolver_pb2.ResolveModelRequest]:
    """Row a: a model (5 attachments, the first one allows user keys) and no user; row b: the same model and
    a user holding a key for that first attachment (user key preferred, central fallback)."""
    model = next(i for i in range(2, shape.models) if shape.attached(i)[0] % shape.user_key_stride == 0)
    user = shape.user_with_key_for(shape.attached(model)[0])
    return (
        resolver_pb2.ResolveModelRequest(model=f"m{model}"),
        resolver_pb2.ResolveModelRequest(model=f"m{model}", user=f"user-{user}"),
    )


KEPT_ANSWERS = 10_000  # the server's default MODELROUTE_KEPT_ANSWERS


def unkept_requests(shape: Shape, count: int = 2 * KEPT_ANSWERS) -> list[resolver_pb2.ResolveModelRequest]:
    """Row b's shape (a user holding a key for the model's first attachment) over `count` distinct
    (model, user) pairs, cycled: more than the server keeps answers for, so none is given from there."""
    holders: dict[int, list[int]] = {}
    for user in range(shape.users):
        for provider in shape.key_providers(user):
            holders.setdefault(provider, []).append(user)
    models: dict[int, list[int]] = {}
    for model in range(1, shape.models):
        first = shape.attached(model)[0]
        if first in holders:
            models.setdefault(first, []).append(model)
    per_model = math.ceil(count / sum(map(len, models.values())))
    pairs = [
        (model, user)
        for provider in sorted(models)
        for model in models[provider]
        for user in holders[provider][:per_model]
    ][:count]
    return [resolver_pb2.ResolveModelRequest(model=f"m{m}", user=f"user-{u}") for m, u in pairs]


async def cpu_rows(replica: Replica, chunks: int, per_chunk: int) -> CpuRows:
    resolve_a, resolve_b = cpu_row_requests(replica.shape)
    unkept = unkept_requests(replica.shape)
    unkept_at = 0

    def next_unkept() -> resolver_pb2.ResolveModelRequest:
        nonlocal unkept_at
        unkept_at += 1
        return unkept[unkept_at % len(unkept)]

    metadata = bearer(replica.tokens[Role.RESOLVER])
    async with channel(replica) as shared:
        health = health_pb2_grpc.HealthStub(shared)
        resolver = resolver_pb2_grpc.ResolverServiceStub(shared)
        check = health_pb2.HealthCheckRequest()
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "health": lambda: health.Check(check, metadata=metadata),
            "a": lambda: resolver.ResolveModel(resolve_a, metadata=metadata),
            "b": lambda: resolver.ResolveModel(resolve_b, metadata=metadata),
            "b_unkept": lambda: resolver.ResolveModel(next_unkept(), metadata=metadata),
        }
        sources = {}
        for name in ("a", "b"):
            selected = (await calls[name]()).selected
            sources[name] = f"{common_pb2.KeySource.Name(selected.key_source)} at position {selected.position}"

        async def chunk_of(call: Callable[[], Awaitable[Any]], count: int) -> None:
            remaining = count

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await call()

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        for call in calls.values():  # warm up
            await chunk_of(call, 500)
        spent = dict.fromkeys(calls, 0.0)
        names = list(calls)
        for number in range(chunks):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                before = cpu_seconds(replica.pid)
                await chunk_of(calls[name], per_chunk)
                spent[name] += cpu_seconds(replica.pid) - before
    per_call = {name: spent[name] / (chunks * per_chunk) * 1e6 for name in names}
    return CpuRows(per_call["health"], per_call["a"], per_call["b"], sources["a"], sources["b"], per_call["b_unkept"])


# -- SQL per ResolveModel


def transactions(cluster_url: str, name: str) -> int:
    """Committed plus rolled-back transactions of one database, read from another (ours are not counted)."""
    with psycopg.connect(database.libpq_url(cluster_url), autocommit=True) as connection:
        row = connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0])


async def statements_per_call(replica: Replica, cluster_url: str, calls: int) -> tuple[int, int, float]:
    """(transactions during `calls` ResolveModel calls, transactions in an idle window as long, seconds).
    Backends report their counters at most once a second: each reading waits for that."""
    name = database_name(replica.url)
    flush = 2.0
    async with channel(replica) as shared:
        resolver = resolver_pb2_grpc.ResolverServiceStub(shared)
        requests = load_requests(replica.shape)
        await Load().run(resolver, requests, replica.tokens[Role.RESOLVER], count=500)
        await asyncio.sleep(flush)
        before = transactions(cluster_url, name)
        started = time.perf_counter()
        load = Load()
        await load.run(resolver, requests, replica.tokens[Role.RESOLVER], count=calls)
        seconds = time.perf_counter() - started
        await asyncio.sleep(flush)
        after_calls = transactions(cluster_url, name)
        await asyncio.sleep(seconds)
        await asyncio.sleep(flush)
        after_idle = transactions(cluster_url, name)
    if load.failures:
        raise RunFailed(f"ResolveModel failed: {load.failures[:3]}")
    return after_calls - before, after_idle - after_calls, seconds


# -- pure resolution vs LiteLLM


class InProcessResolution:
    """The service's own resolution over its own snapshot, in this process (no gRPC): the application as the
    server builds it, on the 1,000-model database."""

    def __init__(self, url: str, keyring_spec: str) -> None:
        from modelroute_server.entrypoints.server import build_application
        from modelroute_server.service_layer import resolution
        from modelroute_server.settings import Settings

        self._resolve_model = resolution.resolve_model
        self.app = build_application(Settings(database_url=url, keyring=keyring_spec, log_level="WARNING"))
        self.snapshot = self.app.snapshots.current()

    def first_position_and_fallbacks(self, model: str) -> tuple[int, int]:
        resolved = self._resolve_model(self.app.ctx, self.snapshot, model, "")
        return resolved.selected.position, len(resolved.fallbacks)

    def seconds_per_call(self, models: int, calls: int) -> float:
        resolve, ctx, snapshot = self._resolve_model, self.app.ctx, self.snapshot
        names = [f"m{i % models}" for i in range(calls)]
        started = time.perf_counter()
        for name in names:
            resolve(ctx, snapshot, name, "")
        return (time.perf_counter() - started) / calls

    def close(self) -> None:
        self.app.close()


def litellm_worker(models: int) -> None:
    """`--litellm-worker`: builds a Router with `models` model groups of 5 ordered deployments, then answers
    `N` lines on stdin with the seconds N `get_available_deployment` calls took."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map
    try:
        from importlib.metadata import version

        import litellm  # noqa: F401
        from litellm import Router
    except ImportError:
        print("missing", flush=True)
        return
    started = time.perf_counter()
    router = Router(
        model_list=[
            {
                "model_name": f"m{i}",
                "litellm_params": {"model": "openai/gpt-4o", "api_key": f"sk-{i}-{k}", "order": k + 1},
                "model_info": {"id": f"m{i}-d{k}"},
            }
            for i in range(models)
            for k in range(5)
        ]
    )
    built = time.perf_counter() - started
    chosen = router.get_available_deployment(model="m7")
    order = chosen["litellm_params"].get("order")
    print(f"ready {version('litellm')} {built:.1f} {order}", flush=True)
    call = 0
    for line in sys.stdin:
        count = int(line)
        names = [f"m{(call + n) % models}" for n in range(count)]
        call += count
        started = time.perf_counter()
        for name in names:
            router.get_available_deployment(model=name)
        print(f"{time.perf_counter() - started:.9f}", flush=True)


class LiteLLM:
    def __init__(self, models: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--litellm-worker", str(models)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.version: str | None = None
        self.build_seconds = 0.0
        self.first_order: str | None = None
        self.missing = False

    def ready(self) -> bool:
        """Waits for the Router to be built; False when litellm is not installed."""
        if self.version is None and not self.missing:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().split()
            if not line or line[0] == "missing":
                self.missing = True
            else:
                self.version, self.build_seconds, self.first_order = line[1], float(line[2]), line[3]
        return not self.missing

    def seconds_per_call(self, calls: int) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline()) / calls

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def pure_resolution(ours: InProcessResolution, theirs: LiteLLM, models: int, rounds: int) -> list[float]:
    """LiteLLM's seconds per call / ours, per round (batches taken in turns, both on the client's core)."""
    ratios = []
    for _ in range(rounds):
        mine = ours.seconds_per_call(models, 20_000)
        ratios.append(theirs.seconds_per_call(30) / mine)
    return ratios


# -- every RPC at size, every List to its end


@dataclass
class Sweep:
    results: list[tuple[str, str]] = field(default_factory=list)  # (rpc, "OK" or the failure)
    lists: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(outcome == "OK" for _, outcome in self.results)

    async def call(self, rpc: str, awaitable: Awaitable[Any]) -> Any:
        try:
            response = await awaitable
        except grpc.aio.AioRpcError as error:
            self.results.append((rpc, f"{error.code().name}: {error.details()}"))
            return None
        self.results.append((rpc, "OK"))
        return response

    async def pages(
        self,
        rpc: str,
        fetch: Callable[[str], Awaitable[Any]],
        items: Callable[[Any], Sequence[Any]],
        expected: int | None,
    ) -> None:
        token, pages, count, started = "", 0, 0, time.perf_counter()
        while True:
            response = await self.call(f"{rpc} page {pages + 1}", fetch(token))
            if response is None:
                break
            pages += 1
            count += len(items(response))
            token = response.next_page_token
            if not token:
                break
        seconds = time.perf_counter() - started
        complete = expected is None or count == expected
        if not complete:
            self.results.append((rpc, f"paged to its end with {count} items, expected {expected}"))
        note = "" if expected is None else f" (expected {expected:,})"
        self.lists.append(f"{rpc}: {count:,} items in {pages} pages, {seconds:.1f} s{note}")


def compact(results: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One line per RPC: a List's pages folded into it (the first failure kept)."""
    folded: dict[str, str] = {}
    for rpc, outcome in results:
        name = rpc.split(" page ")[0]
        if folded.get(name, "OK") == "OK":
            folded[name] = outcome
    return list(folded.items())


async def sweep(replica: Replica) -> Sweep:
    shape, tokens = replica.shape, replica.tokens
    admin, reader = bearer(tokens[Role.ADMIN]), bearer(tokens[Role.READER])
    resolver_md, user_keys_md = bearer(tokens[Role.RESOLVER]), bearer(tokens[Role.USER_KEYS])
    result = Sweep()
    async with channel(replica) as shared:
        providers = provider_config_pb2_grpc.ProviderConfigServiceStub(shared)
        models = model_config_pb2_grpc.ModelConfigServiceStub(shared)
        user_keys = user_key_pb2_grpc.UserKeyServiceStub(shared)
        resolver = resolver_pb2_grpc.ResolverServiceStub(shared)
        audit = audit_pb2_grpc.AuditServiceStub(shared)
        access = access_token_pb2_grpc.AccessTokenServiceStub(shared)
        health = health_pb2_grpc.HealthStub(shared)
        await result.call("Health/Check", health.Check(health_pb2.HealthCheckRequest(), metadata=admin))

        policy = common_pb2.CredentialPolicy(
            central_api_key_enabled=True, allow_user_api_key=True, allow_central_api_key_fallback=True
        )
        await result.call(
            "CreateProviderConfig",
            providers.CreateProviderConfig(
                provider_config_pb2.CreateProviderConfigRequest(
                    provider_config_id="p-sweep",
                    provider_config=provider_config_pb2.ProviderConfig(
                        family=common_pb2.FAMILY_OPENAI, api_key="sk-sweep", credential_policy=policy
                    ),
                ),
                metadata=admin,
            ),
        )
        await result.call(
            "GetProviderConfig",
            providers.GetProviderConfig(
                provider_config_pb2.GetProviderConfigRequest(name="providerConfigs/p-sweep"), metadata=reader
            ),
        )
        await result.call(
            "UpdateProviderConfig",
            providers.UpdateProviderConfig(
                provider_config_pb2.UpdateProviderConfigRequest(
                    provider_config=provider_config_pb2.ProviderConfig(
                        name="providerConfigs/p-sweep", display_name="Sweep"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                ),
                metadata=admin,
            ),
        )
        await result.pages(
            "ListProviderConfigs",
            lambda token: providers.ListProviderConfigs(
                provider_config_pb2.ListProviderConfigsRequest(page_size=PAGE, page_token=token), metadata=reader
            ),
            lambda response: response.provider_configs,
            shape.providers + 1,
        )

        await result.call(
            "CreateModelConfig",
            models.CreateModelConfig(
                model_config_pb2.CreateModelConfigRequest(
                    model_config_id="m-sweep",
                    model_config=model_config_pb2.ModelConfig(
                        family=common_pb2.FAMILY_OPENAI,
                        model="gpt-4o",
                        context_limit=1000,
                        provider_configs=["providerConfigs/p-sweep", "providerConfigs/p1"],
                    ),
                ),
                metadata=admin,
            ),
        )
        await result.call(
            "GetModelConfig",
            models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m-sweep"), metadata=reader),
        )
        await result.call(
            "UpdateModelConfig",
            models.UpdateModelConfig(
                model_config_pb2.UpdateModelConfigRequest(
                    model_config=model_config_pb2.ModelConfig(name="modelConfigs/m-sweep", display_name="Sweep"),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                ),
                metadata=admin,
            ),
        )
        await result.pages(
            "ListModelConfigs",
            lambda token: models.ListModelConfigs(
                model_config_pb2.ListModelConfigsRequest(page_size=PAGE, page_token=token), metadata=reader
            ),
            lambda response: response.model_configs,
            shape.models + 1,
        )

        seeded_user = f"user-{shape.user_with_key_for(0)}" if shape.users else "user-0"
        await result.call(
            "SetUserProviderKey",
            user_keys.SetUserProviderKey(
                user_key_pb2.SetUserProviderKeyRequest(
                    user="user-sweep", provider_config="providerConfigs/p-sweep", api_key="uk-sweep"
                ),
                metadata=user_keys_md,
            ),
        )
        await result.pages(
            "ListUserProviderConfigs",
            lambda token: user_keys.ListUserProviderConfigs(
                user_key_pb2.ListUserProviderConfigsRequest(user=seeded_user, page_size=PAGE, page_token=token),
                metadata=reader,
            ),
            lambda response: response.user_provider_configs,
            shape.user_key_providers + 1,
        )
        await result.call(
            "ResolveModel (the default model)",
            resolver.ResolveModel(resolver_pb2.ResolveModelRequest(), metadata=resolver_md),
        )
        await result.call(
            "ResolveModel",
            resolver.ResolveModel(
                resolver_pb2.ResolveModelRequest(model="m-sweep", user="user-sweep"), metadata=resolver_md
            ),
        )
        await result.call(
            "ExplainResolution",
            resolver.ExplainResolution(
                resolver_pb2.ExplainResolutionRequest(model="m2", user=seeded_user), metadata=reader
            ),
        )
        await result.pages(
            "ListAvailableModels",
            lambda token: resolver.ListAvailableModels(
                resolver_pb2.ListAvailableModelsRequest(user=seeded_user, page_size=PAGE, page_token=token),
                metadata=reader,
            ),
            lambda response: response.models,
            shape.models + 1,
        )
        await result.call(
            "DeleteUserProviderKey",
            user_keys.DeleteUserProviderKey(
                user_key_pb2.DeleteUserProviderKeyRequest(user="user-sweep", provider_config="providerConfigs/p-sweep"),
                metadata=admin,
            ),
        )
        await result.call(
            "DeleteModelConfig",
            models.DeleteModelConfig(
                model_config_pb2.DeleteModelConfigRequest(name="modelConfigs/m-sweep"), metadata=admin
            ),
        )
        await result.call(
            "UndeleteModelConfig",
            models.UndeleteModelConfig(
                model_config_pb2.UndeleteModelConfigRequest(name="modelConfigs/m-sweep"), metadata=admin
            ),
        )
        await result.call(
            "DeleteModelConfig (again)",
            models.DeleteModelConfig(
                model_config_pb2.DeleteModelConfigRequest(name="modelConfigs/m-sweep"), metadata=admin
            ),
        )
        await result.call(
            "DeleteProviderConfig",
            providers.DeleteProviderConfig(
                provider_config_pb2.DeleteProviderConfigRequest(name="providerConfigs/p-sweep", force=True),
                metadata=admin,
            ),
        )

        await result.call(
            "CreateAccessToken",
            access.CreateAccessToken(
                access_token_pb2.CreateAccessTokenRequest(
                    access_token_id="sweep-token",
                    access_token=access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_READER]),
                ),
                metadata=admin,
            ),
        )
        await result.pages(
            "ListAccessTokens",
            lambda token: access.ListAccessTokens(
                access_token_pb2.ListAccessTokensRequest(page_size=PAGE, page_token=token), metadata=admin
            ),
            lambda response: response.access_tokens,
            len(Role) + 1,
        )
        await result.call(
            "RevokeAccessToken",
            access.RevokeAccessToken(
                access_token_pb2.RevokeAccessTokenRequest(name="accessTokens/sweep-token"), metadata=admin
            ),
        )
        await result.pages(
            "ListAuditEvents",
            lambda token: audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_size=PAGE, page_token=token), metadata=reader
            ),
            lambda response: response.audit_events,
            None,
        )
    return result


# -- one run


@dataclass
class Plan:
    writes: int
    baseline_calls: int
    write_cap_seconds: float
    throughput_chunks: int
    throughput_per_chunk: int
    cpu_chunks: int
    cpu_per_chunk: int
    statement_calls: int
    pure_rounds: int
    start_timeout: float


@dataclass
class RunResult:
    cold_start: float
    second_start: float
    rss_load: int
    rss_write: int
    large: WritePhase
    hundred: WritePhase
    rates: dict[str, tuple[float, float]]
    cpu: CpuRows
    statements: tuple[int, int, float]
    pure: list[float]


def say(text: str) -> None:
    print(text, flush=True)


def one_run(
    number: int,
    catalogues: dict[str, tuple[str, dict[Role, str], Shape]],
    keyring_spec: str,
    cluster_url: str,
    plan: Plan,
    ours: InProcessResolution,
    theirs: LiteLLM,
    do_sweep: bool,
    scratch: Path,
) -> tuple[RunResult, Sweep | None]:
    client_core, server_core = MACHINE_CORES[0], MACHINE_CORES[-1]
    everywhere = set(MACHINE_CORES)
    pin(os.getpid(), {client_core})  # the load client (this process) on one core, replica 1 on the other

    def replica(name: str, label: str, where: set[int]) -> Replica:
        url, tokens, shape = catalogues[name]
        log = scratch / f"{label.replace(' ', '-')}-run{number}.log"
        return Replica(label, url, keyring_spec, tokens, shape, where, log)

    large_1 = replica("large", "large replica 1", {server_core})
    large_2 = replica("large", "large replica 2", everywhere)
    small_1 = replica("hundred", "100-model replica 1", {server_core})
    small_2 = replica("hundred", "100-model replica 2", everywhere)
    replicas = [large_1, large_2, small_1, small_2]
    try:
        large_1.start()
        cold = large_1.wait_resolvable(plan.start_timeout)
        say(f"run {number}: cold start {cold:.2f} s (process start to the first OK ResolveModel)")
        large_2.start()
        second = large_2.wait_resolvable(plan.start_timeout)
        for r in (small_1, small_2):
            r.start()
        for r in (small_1, small_2):
            r.wait_resolvable(plan.start_timeout)
        rss_load = rss_bytes(large_1.pid)
        say(f"run {number}: replica 2 ready in {second:.2f} s; replica 1 RSS after load {rss_load / 1e6:.0f} MB")

        async def measured() -> tuple[RunResult, Sweep | None]:
            large = await write_phase(large_1, large_2, plan.writes, plan.baseline_calls, plan.write_cap_seconds)
            rss_write = rss_bytes(large_1.pid)
            say(
                f"run {number}: {large.writes} writes at {large_1.shape.label}: next own ResolveModel median "
                f"{median(large.own_ms):.1f} ms, p99 {p99(large.own_ms):.1f} ms; replica 2 p99 "
                f"{p99(large.other_ms):.1f} ms; load p99 {large.during_p99_ms:.2f} ms vs "
                f"{large.baseline_p99_ms:.2f} ms without writes; RSS after writes {rss_write / 1e6:.0f} MB"
            )
            hundred = await write_phase(small_1, small_2, plan.writes, plan.baseline_calls, plan.write_cap_seconds)
            say(
                f"run {number}: {hundred.writes} writes at 100 models: next own ResolveModel median "
                f"{median(hundred.own_ms):.1f} ms, p99 {p99(hundred.own_ms):.1f} ms"
            )
            rates = await throughput(large_1, small_1, plan.throughput_chunks, plan.throughput_per_chunk)
            say(
                f"run {number}: throughput {rates['large'][0]:.0f} calls/s at {large_1.shape.label}, "
                f"{rates['small'][0]:.0f} at 100 models"
            )
            cpu = await cpu_rows(large_1, plan.cpu_chunks, plan.cpu_per_chunk)
            say(
                f"run {number}: server CPU per call: Health {cpu.health_us:.0f} us, ResolveModel a "
                f"{cpu.resolve_a_us:.0f} us ({cpu.source_a}), b {cpu.resolve_b_us:.0f} us ({cpu.source_b})"
            )
            statements = await statements_per_call(large_1, cluster_url, plan.statement_calls)
            say(
                f"run {number}: transactions on the bench database: {statements[0]} during "
                f"{plan.statement_calls} ResolveModel calls, {statements[1]} in an idle {statements[2]:.1f} s"
            )
            pure: list[float] = []
            if theirs.ready():
                pin(theirs.process.pid, {client_core})
                pure = pure_resolution(ours, theirs, catalogues["thousand"][2].models, plan.pure_rounds)
                say(f"run {number}: LiteLLM / ours per call: " + ", ".join(f"{r:.0f}x" for r in pure))
            swept = await sweep(large_1) if do_sweep else None
            result = RunResult(cold, second, rss_load, rss_write, large, hundred, rates, cpu, statements, pure)
            return result, swept

        return asyncio.run(measured())
    except (RunFailed, grpc.RpcError):
        for r in replicas:
            tail = r.log_tail()
            if tail:
                say(f"end of the log of {r.label}:\n{tail}")
        raise
    finally:
        stop_processes([r.process for r in replicas if r.process is not None])


# -- the table

FIGURES = {
    "size": ("every RPC at {size}; every List pages to its end", "each RPC OK; every List to its end"),
    "cold": ("cold start: process start -> first OK ResolveModel", "<= 5 s"),
    "rss": ("replica RSS (VmRSS), the larger of after load / after the writes", "<= 500 MB"),
    "own": ("one model update: the writer's next ResolveModel, median", "<= 50 ms, reflecting the write"),
    "own_p99": ("  its p99 at {size} / at 100 models", "<= 2x"),
    "other": ("the same change seen on replica 2, p99", "<= 100 ms"),
    "load": ("ResolveModel p99 under load during the writes / without", "<= 2x"),
    "rate": ("ResolveModel throughput at {size} / at 100 models", ">= 0.9"),
    "cpu_a": ("server CPU per call, Health / ResolveModel, row a (5 attachments, no user)", ">= 0.9"),
    "cpu_b": ("server CPU per call, Health / ResolveModel, row b (same, user with one user key)", ">= 0.9"),
    "cpu_b_unkept": (
        "  row b's shape, 20,000 distinct (model, user) pairs: no answer kept (for information)",
        "none (row b holds)",
    ),
    "pure": ("pure resolution vs LiteLLM Router.get_available_deployment ({pure} x 5 ordered)", ">= 50x faster"),
    "sql": ("SQL transactions per ResolveModel, steady state (net of an idle window as long)", "0"),
}


@dataclass
class Row:
    key: str
    measured: str
    met: bool | None  # None: not measured


def per_run(values: Sequence[float], unit: str, digits: int = 1) -> str:
    middle = median(values) if all(math.isfinite(v) for v in values) else math.inf
    listed = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{middle:.{digits}f}{unit} (runs: {listed})"


def table(runs: list[RunResult], swept: Sweep | None, theirs: LiteLLM, calls: int, failure: str | None) -> list[Row]:
    """One row per figure, from the runs that completed (`failure` says why the others did not)."""
    not_measured = f"not measured: {failure}" if failure else "not measured"
    if swept is not None:
        rpcs = compact(swept.results)
        failed = [f"{rpc}: {outcome}" for rpc, outcome in rpcs if outcome != "OK"]
        measured = f"{len(rpcs) - len(failed)}/{len(rpcs)} RPCs OK, every List paged to its end"
        if failed:
            measured = f"{len(rpcs) - len(failed)}/{len(rpcs)} RPCs OK; failed: " + "; ".join(failed[:4])
        rows = [Row("size", measured, swept.ok)]
    else:
        rows = [Row("size", not_measured, False)]
    if not runs:
        rows += [Row(key, not_measured, False) for key in FIGURES if key not in ("size", "pure")]
        pure = LITELLM_MISSING if theirs.missing else not_measured
        rows.insert(-1, Row("pure", pure, None if theirs.missing else False))
        return rows

    cold = [r.cold_start for r in runs]
    rows.append(Row("cold", per_run(cold, " s", 2), median(cold) <= 5))
    rss = [max(r.rss_load, r.rss_write) / 1e6 for r in runs]
    detail = ", ".join(f"{r.rss_load / 1e6:.0f}/{r.rss_write / 1e6:.0f}" for r in runs)
    rows.append(Row("rss", per_run(rss, " MB", 0) + f"; after load/after writes: {detail}", median(rss) <= 500))

    complete = all(r.large.writes == r.large.requested and r.hundred.writes == r.hundred.requested for r in runs)
    capped = "" if complete else " [writes done within the time cap: " + ", ".join(str(r.large.writes) for r in runs)
    capped += "]" if capped else ""
    stale = sum(r.large.stale + r.hundred.stale for r in runs)
    own = [median(r.large.own_ms) for r in runs]
    rows.append(
        Row(
            "own",
            per_run(own, " ms") + f"; responses below the write's revision: {stale}{capped}",
            median(own) <= 50 and stale == 0 and complete,
        )
    )
    own_ratio = [p99(r.large.own_ms) / p99(r.hundred.own_ms) for r in runs]
    detail = ", ".join(f"{p99(r.large.own_ms):.1f}/{p99(r.hundred.own_ms):.1f}" for r in runs)
    rows.append(Row("own_p99", per_run(own_ratio, "x", 2) + f"; p99 ms large/100: {detail}", median(own_ratio) <= 2))
    other = [p99(r.large.other_ms) for r in runs]
    missed = sum(r.large.missed for r in runs)
    detail = ", ".join(f"{median(r.large.other_ms):.1f}" for r in runs)
    rows.append(
        Row(
            "other",
            per_run(other, " ms")
            + f"; medians {detail} ms"
            + (f"; never seen within 10 s: {missed}" if missed else ""),
            median(other) <= 100 and complete,
        )
    )
    load_ratio = [r.large.during_p99_ms / r.large.baseline_p99_ms for r in runs]
    failures = sum(len(r.large.failures) + len(r.hundred.failures) for r in runs)
    detail = ", ".join(f"{r.large.during_p99_ms:.2f}/{r.large.baseline_p99_ms:.2f}" for r in runs)
    rows.append(
        Row(
            "load",
            per_run(load_ratio, "x", 3)
            + f"; p99 ms during/without: {detail}"
            + (f"; failed calls: {failures}" if failures else ""),
            median(load_ratio) <= 2 and failures == 0,
        )
    )
    rate_ratio = [r.rates["large"][0] / r.rates["small"][0] for r in runs]
    rates = ", ".join(f"{r.rates['large'][0]:.0f}/{r.rates['small'][0]:.0f}" for r in runs)
    cpu = ", ".join(f"{r.rates['large'][1] * 1e6:.0f}/{r.rates['small'][1] * 1e6:.0f}" for r in runs)
    rows.append(
        Row(
            "rate",
            per_run(rate_ratio, "", 3) + f"; calls/s large/100: {rates}; server CPU us/call large/100: {cpu}",
            median(rate_ratio) >= 0.9,
        )
    )
    for key, ratio_of, source_of, us_of in (
        ("cpu_a", lambda c: c.ratio_a, lambda c: c.source_a, lambda c: c.resolve_a_us),
        ("cpu_b", lambda c: c.ratio_b, lambda c: c.source_b, lambda c: c.resolve_b_us),
    ):
        ratios = [ratio_of(r.cpu) for r in runs]
        detail = ", ".join(f"{r.cpu.health_us:.0f}/{us_of(r.cpu):.0f}" for r in runs)
        rows.append(
            Row(
                key,
                per_run(ratios, "", 3) + f"; us Health/ResolveModel: {detail}; selected {source_of(runs[0].cpu)}",
                median(ratios) >= 0.9,
            )
        )
    unkept = [r.cpu.ratio_b_unkept for r in runs]
    detail = ", ".join(f"{r.cpu.health_us:.0f}/{r.cpu.resolve_b_unkept_us:.0f}" for r in runs)
    rows.append(Row("cpu_b_unkept", per_run(unkept, "", 3) + f"; us Health/ResolveModel: {detail}", None))
    if theirs.missing:
        rows.append(Row("pure", LITELLM_MISSING, None))
    else:
        speedups = [median(r.pure) for r in runs]
        rows.append(
            Row(
                "pure",
                per_run(speedups, "x", 0) + f"; LiteLLM {theirs.version}, its pick has order {theirs.first_order}",
                median(speedups) >= 50,
            )
        )
    net = [(r.statements[0] - r.statements[1]) / calls for r in runs]
    raw = ", ".join(f"{r.statements[0]}/{r.statements[1]}" for r in runs)
    rows.append(
        Row(
            "sql",
            per_run(net, "/call", 4) + f"; transactions during {calls:,} calls/idle: {raw}",
            median(net) < 0.001,
        )
    )
    return rows


def print_table(rows: list[Row], size: str, pure: str) -> None:
    say("")
    say("| figure | target | measured (median; per-run values) | met |")
    say("|---|---|---|---|")
    for row in rows:
        figure, target = FIGURES[row.key]
        met = "n/a" if row.met is None else ("yes" if row.met else "NO")
        say(f"| {figure.format(size=size, pure=pure)} | {target} | {row.measured} | {met} |")


# -- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of the measured part (default 3)")
    parser.add_argument("--small", action="store_true", help="a quick check on a small catalogue")
    parser.add_argument("--litellm-worker", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.litellm_worker:
        litellm_worker(options.litellm_worker)
        return
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    # A SIGTERM unwinds like an error, so the servers and the private PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    large, thousand = (QUICK_LARGE, QUICK_THOUSAND) if options.small else (LARGE, THOUSAND)
    plan = (
        Plan(40, 1000, 60, 4, 500, 4, 500, 5000, 3, 120)
        if options.small
        else Plan(200, 4000, 120, 10, 1000, 10, 1000, 10_000, 5, 240)
    )
    shapes = {"large": large, "hundred": HUNDRED, "thousand": thousand}
    keyring_spec = new_keyring_spec()
    theirs = LiteLLM(thousand.models)  # builds its Router while the catalogues are seeded
    started = time.perf_counter()
    results: list[RunResult] = []
    swept: Sweep | None = None
    failure: str | None = None
    try:
        with _scratch() as scratch, private_cluster(Path(scratch)) as cluster:
            catalogues = {}
            for name, shape in shapes.items():
                seeding = time.perf_counter()
                url = create_database(cluster, f"bench_{name}")
                catalogues[name] = (url, seed_catalogue(url, keyring_spec, shape), shape)
                say(f"seeded {name}: {shape.describe()} in {time.perf_counter() - seeding:.1f} s")
            ours = InProcessResolution(catalogues["thousand"][0], keyring_spec)
            try:
                position, fallbacks = ours.first_position_and_fallbacks("m7")
                say(f"in-process resolution of m7: selected position {position}, {fallbacks} fallbacks")
                if theirs.ready():
                    say(
                        f"LiteLLM {theirs.version}: Router with {thousand.models * 5:,} deployments built in "
                        f"{theirs.build_seconds:.0f} s"
                    )
                else:
                    say(LITELLM_MISSING)
                for number in range(1, options.runs + 1):
                    try:
                        result, run_sweep = one_run(
                            number,
                            catalogues,
                            keyring_spec,
                            cluster,
                            plan,
                            ours,
                            theirs,
                            number == options.runs,
                            Path(scratch),
                        )
                    except (RunFailed, grpc.RpcError) as error:
                        failure = f"run {number} failed: {describe_failure(error)}"
                        say(failure)
                        break
                    results.append(result)
                    swept = run_sweep or swept
            finally:
                ours.close()
    finally:
        theirs.close()
    if swept is not None:
        say("")
        for line in swept.lists:
            say(f"paged: {line}")
    say("")
    say(
        f"catalogue: {large.describe()}; all openai; policies C=1,U=0,F=0 except every {large.user_key_stride}th "
        "provider C=1,U=1,F=1 (they hold the user keys); one default model; seeded once through COPY"
    )
    say(f"baseline catalogue: {HUNDRED.describe()}; pure resolution: {thousand.describe()}")
    say(
        f"{len(results)} of {options.runs} runs; load: {CONCURRENCY} ResolveModel calls in flight (grpc.aio) on core "
        f"{MACHINE_CORES[0]}, replica 1 on core {MACHINE_CORES[-1]}; total {time.perf_counter() - started:.0f} s"
    )
    rows = table(results, swept, theirs, plan.statement_calls, failure)
    print_table(rows, large.label, thousand.label)
    if options.small:
        say("(--small: a check of the code paths; the targets are for the full size)")


def describe_failure(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        return f"an RPC failed: {error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return str(error)


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    """A scratch directory, removed afterwards unless BENCH_KEEP_LOGS is set (the replicas' logs stay there)."""
    if os.environ.get("BENCH_KEEP_LOGS"):
        path = tempfile.mkdtemp(prefix="bench-scale-")
        print(f"replica logs kept in {path}", file=sys.stderr)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as path:
            yield path


if __name__ == "__main__":
    main()
