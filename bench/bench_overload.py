"""Overload and isolation: resolution under an admin flood, shed calls, and reads behind a held row lock.

One server process on a PostgreSQL of the benchmark's own; every load generator is a process of its own.
Each run measures:
  * ResolveModel latency (4 calls in flight) alone, then while 16 clients loop ListModelConfigs(page_size=200):
    the ratio of the two p99s;
  * more clients looping ListModelConfigs than the admin reads' bound takes, each waiting out the retry
    delay it is refused with, and a probe in a process of its own sending one more List call every 20 ms:
    how long the probe's refused calls (RESOURCE_EXHAUSTED) take to be answered (the saturating clients'
    own view, which includes their process decoding 200-item pages, is printed beside it);
  * GetModelConfig latency while a row lock is held from outside for 10 s with 12 UpdateModelConfig calls
    waiting on that row.

Run: .venv/bin/python bench/bench_overload.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    SERVER,
    create_database,
    create_tokens,
    free_port,
    new_keyring_spec,
    private_cluster,
    server_env,
    stop_processes,
    wait_serving,
)
from modelroute.v1 import model_config_pb2, model_config_pb2_grpc, resolver_pb2, resolver_pb2_grpc
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.domain.access import Role
from modelroute_server.domain.audit import Caller
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import Attachment
from modelroute_server.entrypoints.server import sql_context
from modelroute_server.service_layer import model_configs, provider_configs
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput

PROVIDERS, MODELS = 5, 400
FLOOD_CLIENTS = 16
SATURATING_CLIENTS = 32  # twice the admin reads' bound of 16 calls in flight
LOCK_SECONDS = 10
QUEUED_WRITES = 12
PHASE_SECONDS = 6.0
RESOLVE_IN_FLIGHT = 4
PROBE_INTERVAL_SECONDS = 0.02


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def seed(url: str, keyring_spec: str) -> dict[Role, str]:
    engine = database.create_engine(url)
    ctx = sql_context(engine, Keyring.parse(keyring_spec))
    caller = Caller("bench", "bench_overload")
    try:
        for i in range(PROVIDERS):
            provider_configs.create_provider_config(
                ctx, caller, f"p{i}", ProviderConfigInput(family=Family.OPENAI, api_key=f"sk-bench-{i}")
            )
        for m in range(MODELS):
            ids = tuple(f"p{(m + k) % PROVIDERS}" for k in range(3))
            model_configs.create_model_config(
                ctx,
                caller,
                f"m{m}",
                ModelConfigInput(
                    family=Family.OPENAI,
                    model=f"gpt-{m}",
                    display_name=f"Model {m}, " + "a long display name " * 8,
                    context_limit=128_000,
                    attachments=tuple(Attachment(i) for i in ids),
                ),
            )
    finally:
        engine.dispose()
    return create_tokens(url, keyring_spec)


# -- load generators (each runs as its own process: `--worker NAME`)


async def resolve_worker(target: str, token: str, seconds: float) -> dict[str, list[float]]:
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    failures: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        resolver = resolver_pb2_grpc.ResolverServiceStub(channel)
        deadline = time.monotonic() + seconds

        async def loop(offset: int) -> None:
            number = offset
            while time.monotonic() < deadline:
                request = resolver_pb2.ResolveModelRequest(model=f"m{number % MODELS}")
                started = time.perf_counter()
                try:
                    await resolver.ResolveModel(request, metadata=metadata, timeout=30)
                    latencies.append((time.perf_counter() - started) * 1000)
                except grpc.aio.AioRpcError as error:
                    failures.append(error.code().name)
                number += RESOLVE_IN_FLIGHT

        await asyncio.gather(*(loop(i) for i in range(RESOLVE_IN_FLIGHT)))
    return {"latencies_ms": latencies, "failures": failures}  # type: ignore[dict-item]


class ListCalls:
    """ListModelConfigs(page_size=200) calls of one load generator: the count of each status, and how long
    each refusal (RESOURCE_EXHAUSTED) took to be answered."""

    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.request = model_config_pb2.ListModelConfigsRequest(page_size=200)
        self.shed: list[float] = []
        self.codes: dict[str, int] = {}

    async def call(self, models: model_config_pb2_grpc.ModelConfigServiceStub) -> grpc.aio.AioRpcError | None:
        """One call; the refusal, if it was refused."""
        started = time.perf_counter()
        refusal = None
        try:
            await models.ListModelConfigs(self.request, metadata=self.metadata, timeout=60)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.shed.append((time.perf_counter() - started) * 1000)
                refusal = error
        self.codes[code] = self.codes.get(code, 0) + 1
        return refusal

    def result(self) -> dict[str, list[float]]:
        return {"shed_ms": self.shed, "codes": self.codes}  # type: ignore[dict-item]


async def list_clients(target: str, token: str, seconds: float, clients: int) -> dict[str, list[float]]:
    """`clients` clients, each on its own connection, looping ListModelConfigs(page_size=200). A refused one
    waits out the retry delay it is given, as a client honouring RetryInfo does."""
    calls = ListCalls(token)
    deadline = time.monotonic() + seconds

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),)) as channel:
            models = model_config_pb2_grpc.ModelConfigServiceStub(channel)
            while time.monotonic() < deadline:
                refusal = await calls.call(models)
                if refusal is not None:
                    pushback = dict(refusal.trailing_metadata() or ()).get("grpc-retry-pushback-ms", "250")
                    await asyncio.sleep(int(pushback) / 1000)

    await asyncio.gather(*(client() for _ in range(clients)))
    return calls.result()


async def flood_worker(target: str, token: str, seconds: float) -> dict[str, list[float]]:
    """The flood resolution is measured under: FLOOD_CLIENTS List clients, within the admin reads' bound."""
    return await list_clients(target, token, seconds, FLOOD_CLIENTS)


async def saturate_worker(target: str, token: str, seconds: float) -> dict[str, list[float]]:
    """More List clients than the admin reads take at once, keeping the bound full."""
    return await list_clients(target, token, seconds, SATURATING_CLIENTS)


async def probe_worker(target: str, token: str, seconds: float) -> dict[str, list[float]]:
    """One more List call every PROBE_INTERVAL_SECONDS (not waiting for the previous one) while the bound is
    full, from a process that does nothing else: how long a refusal takes to reach a client that is not
    itself busy (the saturating clients' own figures also hold the time their process spends decoding
    200-item pages)."""
    calls = ListCalls(token)
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        models = model_config_pb2_grpc.ModelConfigServiceStub(channel)
        probes = []
        while time.monotonic() < deadline:
            probes.append(asyncio.ensure_future(calls.call(models)))
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
        await asyncio.gather(*probes)
    return calls.result()


WORKERS = {"resolve": resolve_worker, "flood": flood_worker, "saturate": saturate_worker, "probe": probe_worker}


def run_worker(name: str, target: str, token: str, seconds: float) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--worker", name, "--target", target, "--token", token]
    return subprocess.Popen([*command, "--seconds", str(seconds)], stdout=subprocess.PIPE)


def result_of(process: subprocess.Popen[bytes]) -> dict[str, list[float]]:
    out, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        raise SystemExit(f"a load generator failed ({process.returncode})")
    return json.loads(out)  # type: ignore[no-any-return]


# -- the held lock (from this process: a writer pool and a reader)


def held_lock_reads(target: str, token: str, url: str) -> tuple[list[float], dict[str, int]]:
    """GetModelConfig latencies while a row lock is held and QUEUED_WRITES updates wait on it."""
    metadata = (("authorization", f"Bearer {token}"),)
    engine = database.create_engine(url)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    with grpc.insecure_channel(target) as channel:
        models = model_config_pb2_grpc.ModelConfigServiceStub(channel)
        get = model_config_pb2.GetModelConfigRequest(name="modelConfigs/m0")

        def update(number: int) -> None:
            request = model_config_pb2.UpdateModelConfigRequest(
                model_config=model_config_pb2.ModelConfig(name="modelConfigs/m0", display_name=f"held {number}"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
            try:
                models.UpdateModelConfig(request, metadata=metadata, timeout=120)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name  # type: ignore[attr-defined]
            codes[code] = codes.get(code, 0) + 1

        with engine.connect() as holder, ThreadPoolExecutor(QUEUED_WRITES) as writers:
            transaction = holder.begin()
            holder.execute(sa.text("SELECT 1 FROM model_configs WHERE id = 'm0' FOR UPDATE"))
            locked = time.monotonic()
            for number in range(QUEUED_WRITES):
                writers.submit(update, number)
            time.sleep(0.5)  # the writes are queued on the lock
            while time.monotonic() - locked < LOCK_SECONDS:
                started = time.perf_counter()
                models.GetModelConfig(get, metadata=metadata, timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.01)
            transaction.rollback()
    engine.dispose()
    return latencies, codes


@dataclass
class RunResult:
    resolve_alone_p99_ms: float
    resolve_flooded_p99_ms: float
    flood_codes: dict[str, int]
    resolve_failures: int
    shed_median_ms: float
    shed_p99_ms: float
    burst_codes: dict[str, int]
    probe_codes: dict[str, int]
    saturating_shed_p99_ms: float
    held_get_p99_ms: float
    held_write_codes: dict[str, int]

    @property
    def flood_ratio(self) -> float:
        return self.resolve_flooded_p99_ms / self.resolve_alone_p99_ms


def one_run(target: str, tokens: dict[Role, str], url: str) -> RunResult:
    resolver, reader, admin = tokens[Role.RESOLVER], tokens[Role.READER], tokens[Role.ADMIN]
    alone = result_of(run_worker("resolve", target, resolver, PHASE_SECONDS))
    flood = run_worker("flood", target, reader, PHASE_SECONDS + 2)
    time.sleep(1.0)  # the flood is running
    flooded = result_of(run_worker("resolve", target, resolver, PHASE_SECONDS))
    flood_result = result_of(flood)
    saturating = run_worker("saturate", target, reader, PHASE_SECONDS + 2)
    time.sleep(1.0)  # the bound is full
    probe = result_of(run_worker("probe", target, reader, PHASE_SECONDS))
    burst = result_of(saturating)
    held, held_codes = held_lock_reads(target, admin, url)
    shed = probe["shed_ms"] or [float("nan")]
    saturating_shed = burst["shed_ms"] or [float("nan")]
    return RunResult(
        p99(alone["latencies_ms"]),
        p99(flooded["latencies_ms"]),
        flood_result["codes"],  # type: ignore[arg-type]
        len(alone["failures"]) + len(flooded["failures"]),
        statistics.median(shed),
        p99(shed),
        burst["codes"],  # type: ignore[arg-type]
        probe["codes"],  # type: ignore[arg-type]
        p99(saturating_shed),
        p99(held),
        held_codes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        result = asyncio.run(WORKERS[options.worker](options.target, options.token, options.seconds))
        print(json.dumps(result))
        return
    keyring_spec = new_keyring_spec()
    with tempfile.TemporaryDirectory() as scratch, private_cluster(Path(scratch)) as cluster:
        url = create_database(cluster, "bench_overload")
        tokens = seed(url, keyring_spec)
        print(f"seeded {PROVIDERS} provider configs and {MODELS} models", flush=True)
        results = []
        for number in range(1, options.runs + 1):
            target = f"127.0.0.1:{free_port()}"
            env = server_env(url, keyring_spec) | {"MODELROUTE_LISTEN": target}
            server = subprocess.Popen([str(SERVER), "serve"], env=env, stdin=subprocess.DEVNULL)
            try:
                wait_serving(target)
                result = one_run(target, tokens, url)
            finally:
                stop_processes([server])
            results.append(result)
            print(
                f"run {number}: ResolveModel p99 {result.resolve_alone_p99_ms:.2f} ms alone, "
                f"{result.resolve_flooded_p99_ms:.2f} ms flooded (flood answers {result.flood_codes}, "
                f"resolve failures {result.resolve_failures}); saturated {result.burst_codes}, "
                f"probe {result.probe_codes}, "
                f"shed answered in median {result.shed_median_ms:.1f} ms, p99 {result.shed_p99_ms:.1f} ms (p99 "
                f"{result.saturating_shed_p99_ms:.1f} ms as the saturating clients saw it); GetModelConfig p99 "
                f"{result.held_get_p99_ms:.1f} ms behind the lock (writes {result.held_write_codes})",
                flush=True,
            )
    rows = [
        (
            f"ResolveModel p99 with {FLOOD_CLIENTS} clients flooding ListModelConfigs vs without",
            "<= 3x",
            statistics.median(r.flood_ratio for r in results),
            "x",
            lambda v: v <= 3,
        ),
        (
            f"shed calls (RESOURCE_EXHAUSTED) with {SATURATING_CLIENTS} clients past the bound: p99 time to answer",
            "< 10 ms",
            statistics.median(r.shed_p99_ms for r in results),
            " ms",
            lambda v: v < 10,
        ),
        (
            f"GetModelConfig p99 while a row lock is held {LOCK_SECONDS} s with {QUEUED_WRITES} writes queued",
            "<= 100 ms",
            statistics.median(r.held_get_p99_ms for r in results),
            " ms",
            lambda v: v <= 100,
        ),
    ]
    print(f"\nmedian of {len(results)} runs")
    print(f"{'figure':<100} {'target':>10} {'measured':>12}  met")
    for label, target_text, value, unit, met in rows:
        print(f"{label:<100} {target_text:>10} {value:>10.2f}{unit:<2}  {'yes' if met(value) else 'NO'}")


if __name__ == "__main__":
    main()
