"""ResolveModel under concurrent load, as ratios against the health Check on the same server in the same run.

The service runs as its own process (embedded PostgreSQL, as `make run` starts it); a grpc.aio client keeps
`--concurrency` calls in flight for `--calls` calls per series. Both series hit the same server and channel.

Run: .venv/bin/python bench/bench_load.py [--calls 4000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute import ModelrouteClient
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, resolver_pb2_grpc

SERVER = Path(sys.executable).parent / "modelroute-server"
PROVIDERS, MODELS, USERS = 12, 40, 500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def seed(target: str, admin_token: str, user_keys_token: str) -> None:
    with ModelrouteClient(target, token=admin_token) as client:
        for i in range(PROVIDERS):
            policy = common_pb2.CredentialPolicy(
                central_api_key_enabled=True, allow_user_api_key=True, allow_central_api_key_fallback=True
            )
            client.create_provider_config(
                f"p{i}",
                provider_config_pb2.ProviderConfig(
                    family=common_pb2.FAMILY_OPENAI, api_key=f"sk-{i}", credential_policy=policy
                ),
            )
        for m in range(MODELS):
            names = [f"providerConfigs/p{(m + k) % PROVIDERS}" for k in range(3)]
            client.create_model_config(
                f"m{m}",
                model_config_pb2.ModelConfig(
                    family=common_pb2.FAMILY_OPENAI, model="gpt", context_limit=1000, provider_configs=names
                ),
            )
    with ModelrouteClient(target, token=user_keys_token) as client:
        for u in range(USERS):
            client.set_user_key(f"user-{u}", f"p{u % PROVIDERS}", f"uk-{u}")


async def series(call: Callable[[int], Awaitable[object]], calls: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < calls:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


async def measure(target: str, calls: int, concurrency: int, resolver_token: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resolver = resolver_pb2_grpc.ResolverServiceStub(channel)
        check = health_pb2.HealthCheckRequest()
        credentials = (("authorization", f"Bearer {resolver_token}"),)
        requests = [
            resolver_pb2.ResolveModelRequest(model=f"m{i % MODELS}", user=f"user-{i % USERS}") for i in range(calls)
        ]
        await resolver.ResolveModel(requests[0], metadata=credentials)  # warm the snapshot and the channel
        await series(lambda i: health.Check(check), min(calls, 500), concurrency)
        health_rate, health_latency = await series(lambda i: health.Check(check), calls, concurrency)
        resolve_rate, resolve_latency = await series(
            lambda i: resolver.ResolveModel(requests[i], metadata=credentials), calls, concurrency
        )

    def p99(samples: list[float]) -> float:
        return sorted(samples)[int(len(samples) * 0.99)]

    print(f"{calls} calls per series, {concurrency} in flight ({PROVIDERS} providers, {MODELS} models, {USERS} users)")
    print(f"health Check baseline: {health_rate:.0f} calls/s")
    print(f"ResolveModel / health Check throughput:     {resolve_rate / health_rate:.2f}x")
    print(
        "ResolveModel / health Check median latency: "
        f"{statistics.median(resolve_latency) / statistics.median(health_latency):.2f}x"
    )
    print(f"ResolveModel / health Check p99 latency:    {p99(resolve_latency) / p99(health_latency):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    port = free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELROUTE_")}
        env["MODELROUTE_LOG_LEVEL"] = "WARNING"
        env["MODELROUTE_METRICS_LISTEN"] = "127.0.0.1:0"  # never the default port another server may hold
        data_dir = Path(scratch) / "data"
        server = subprocess.Popen([str(SERVER), "serve", "--data-dir", str(data_dir), "--listen", target], env=env)
        try:
            channel = grpc.insecure_channel(target)
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server never became SERVING")
                time.sleep(0.2)
            channel.close()
            # Embedded mode wrote one token per role.
            seed(
                target,
                (data_dir / "admin.token").read_text().strip(),
                (data_dir / "user-keys.token").read_text().strip(),
            )
            resolver_token = (data_dir / "resolver.token").read_text().strip()
            asyncio.run(measure(target, options.calls, options.concurrency, resolver_token))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
