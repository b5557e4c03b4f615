"""What authorization costs: server CPU per 10,000 ResolveModel calls with the interceptor and without it.

Two server processes of this same build run side by side on one private PostgreSQL: one as served (bearer
token checked and role enforced on every call), one built with the authorization interceptor left out
(only this benchmark can build that). Rounds alternate which server goes first; each round sends the same
calls to each and reads the server's own CPU time from /proc. The figure is the median, over rounds, of
CPU(without) / CPU(with): 1.00 means authorization is free; the target is at least 0.95.

Run: .venv/bin/python bench/bench_auth.py [--calls 10000] [--rounds 7] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    MODELS,
    USERS,
    cpu_seconds,
    free_port,
    new_keyring_spec,
    private_database,
    seed,
    server_env,
    server_processes,
    wait_serving,
)
from modelroute.v1 import resolver_pb2, resolver_pb2_grpc
from modelroute_server.domain.access import Role
from modelroute_server.entrypoints.logs import configure_logging
from modelroute_server.entrypoints.server import build_application, create_server, watch_health
from modelroute_server.settings import settings_from_env

TARGET_RATIO = 0.95


async def serve(listen: str, authorization: bool) -> None:
    """One server of this build, with or without the authorization interceptor, until SIGTERM."""
    settings = replace(settings_from_env(), listen=listen)
    configure_logging(settings.log_level)
    app = await asyncio.to_thread(build_application, settings)
    server, _ = create_server(app, listen, authorization=authorization)
    await server.start()
    watcher = asyncio.create_task(watch_health(app))
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    watcher.cancel()
    await server.stop(grace=1)
    await asyncio.to_thread(app.close)


async def load(target: str, token: str | None, calls: int, concurrency: int) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    requests = [
        resolver_pb2.ResolveModelRequest(model=f"m{i % MODELS}", user=f"user-{i % USERS}") for i in range(calls)
    ]
    async with grpc.aio.insecure_channel(target) as channel:
        resolver = resolver_pb2_grpc.ResolverServiceStub(channel)
        remaining = iter(requests)

        async def worker() -> None:
            for request in remaining:
                await resolver.ResolveModel(request, metadata=metadata)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(pid: int, target: str, token: str | None, calls: int, concurrency: int) -> float:
    before = cpu_seconds(pid)
    asyncio.run(load(target, token, calls, concurrency))
    return cpu_seconds(pid) - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--no-authorization", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(options.serve, authorization=not options.no_authorization))
        return
    keyring_spec = new_keyring_spec()
    with tempfile.TemporaryDirectory() as scratch, private_database(Path(scratch)) as url:
        tokens = seed(url, keyring_spec)
        with_auth, without_auth = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        me = [sys.executable, str(Path(__file__).resolve())]
        commands = [[*me, "--serve", with_auth], [*me, "--serve", without_auth, "--no-authorization"]]
        with server_processes(commands, server_env(url, keyring_spec)) as (guarded, open_server):
            wait_serving(with_auth)
            wait_serving(without_auth)
            resolver_token = tokens[Role.RESOLVER]
            servers = {
                "with": (guarded.pid, with_auth, resolver_token),
                "without": (open_server.pid, without_auth, None),
            }
            for pid, target, token in servers.values():  # warm up: snapshot, channel, code paths
                measure(pid, target, token, min(2000, options.calls), options.concurrency)
            cpu: dict[str, list[float]] = {"with": [], "without": []}
            for round_number in range(options.rounds):
                order = ("with", "without") if round_number % 2 == 0 else ("without", "with")
                for name in order:
                    pid, target, token = servers[name]
                    cpu[name].append(measure(pid, target, token, options.calls, options.concurrency))
    ratios = [without / with_ for with_, without in zip(cpu["with"], cpu["without"], strict=True)]
    per_10k = 10_000 / options.calls
    print(f"{options.calls} ResolveModel calls per server per round, {options.concurrency} in flight, ")
    print(f"{options.rounds} interleaved rounds; server CPU from /proc")
    print(f"server CPU per 10,000 calls, with authorization:    {statistics.median(cpu['with']) * per_10k:.2f} s")
    print(f"server CPU per 10,000 calls, without authorization: {statistics.median(cpu['without']) * per_10k:.2f} s")
    print("CPU ratio without / with, by round: " + ", ".join(f"{r:.3f}" for r in ratios))
    median = statistics.median(ratios)
    verdict = "met" if median >= TARGET_RATIO else "NOT met"
    print(f"median CPU ratio without / with: {median:.3f}   (target >= {TARGET_RATIO}: {verdict})")


if __name__ == "__main__":
    main()
