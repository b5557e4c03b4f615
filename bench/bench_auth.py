"""What authorization costs: server CPU per 10,000 ResolveModel calls with the interceptor and without it.

One server process of this build serves the same application (one snapshot, one token set) on two ports:
one as it is served in production (bearer token checked and role enforced on every call), one built with
the authorization interceptor left out (only this benchmark can build that). Hosting both in one process
keeps everything but the interceptor equal (memory layout, threads, caches), which two processes do not.
Each round sends the same calls through each port, in small chunks taken in turns, and reads the process's
CPU time from /proc around every chunk; the load client runs on the other core. The figure is the median,
over rounds, of CPU(without) / CPU(with): 1.00 means authorization is free; the target is at least 0.95.

`--calibrate` gives both ports the interceptor: the spread of its ratios is this machine's noise floor.

Run: .venv/bin/python bench/bench_auth.py [--calls 10000] [--rounds 9] [--chunks 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from modelroute_server.entrypoints.health import watch_health
from modelroute_server.entrypoints.logs import configure_logging
from modelroute_server.entrypoints.server import build_application, create_server
from modelroute_server.settings import settings_from_env

TARGET_RATIO = 0.95


async def serve(guarded: str, open_address: str, open_has_authorization: bool) -> None:
    """This build's application on two ports, with and without the authorization interceptor, until SIGTERM."""
    settings = replace(settings_from_env(), listen=guarded)
    configure_logging(settings.log_level)
    app = await asyncio.to_thread(build_application, settings)
    servers = [
        create_server(app, guarded)[0],
        create_server(app, open_address, authorization=open_has_authorization)[0],
    ]
    for server in servers:
        await server.start()
    watcher = asyncio.create_task(watch_health(app.health, app.start_probe()))
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    watcher.cancel()
    for server in servers:
        await server.stop(grace=1)
    await asyncio.to_thread(app.close)


async def calls_through(
    resolver: resolver_pb2_grpc.ResolverServiceStub, token: str | None, calls: int, concurrency: int
) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    remaining = iter(
        resolver_pb2.ResolveModelRequest(model=f"m{i % MODELS}", user=f"user-{i % USERS}") for i in range(calls)
    )

    async def worker() -> None:
        for request in remaining:
            await resolver.ResolveModel(request, metadata=metadata)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    pid: int, ports: dict[str, tuple[str, str | None]], rounds: int, chunks: int, calls: int, concurrency: int
) -> dict[str, list[float]]:
    """Server CPU seconds per round and port. A round splits each port's calls into chunks taken in turns
    (ABAB..., then BABA... in the next round), so both ports meet the same machine, moment by moment."""
    channels = {name: grpc.aio.insecure_channel(target) for name, (target, _) in ports.items()}
    try:
        stubs = {name: resolver_pb2_grpc.ResolverServiceStub(channel) for name, channel in channels.items()}
        for name, (_, token) in ports.items():  # warm up: snapshot, connections, code paths
            await calls_through(stubs[name], token, 2000, concurrency)
        cpu: dict[str, list[float]] = {name: [] for name in ports}
        names = list(ports)
        per_chunk = max(1, calls // chunks)
        for round_number in range(rounds):
            spent = dict.fromkeys(names, 0.0)
            order = names if round_number % 2 == 0 else names[::-1]
            for _ in range(chunks):
                for name in order:
                    before = cpu_seconds(pid)
                    await calls_through(stubs[name], ports[name][1], per_chunk, concurrency)
                    spent[name] += cpu_seconds(pid) - before
            for name in names:
                cpu[name].append(spent[name] * calls / (per_chunk * chunks))
        return cpu
    finally:
        for channel in channels.values():
            await channel.close()


def pin_apart(client: int, server: int) -> None:
    """The load client on one core, the server on the other (when there are two): the server's CPU time then
    does not swell with the client's contention for the same core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return
    os.sched_setaffinity(client, {cores[0]})
    for task in os.listdir(f"/proc/{server}/task"):  # every thread, grpc's pollers included
        os.sched_setaffinity(int(task), {cores[1]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=10, help="turns per port and round")
    parser.add_argument(
        "--calibrate", action="store_true", help="both ports with authorization: the ratio's noise on this machine"
    )
    parser.add_argument("--serve", nargs=2, metavar=("GUARDED", "OPEN"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(*options.serve, open_has_authorization=options.calibrate))
        return
    keyring_spec = new_keyring_spec()
    with tempfile.TemporaryDirectory() as scratch, private_database(Path(scratch)) as url:
        tokens = seed(url, keyring_spec)
        guarded, open_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", guarded, open_address]
        if options.calibrate:
            command.append("--calibrate")
        with server_processes([command], server_env(url, keyring_spec)) as (server,):
            wait_serving(guarded)
            wait_serving(open_address)
            pin_apart(client=os.getpid(), server=server.pid)
            token = tokens[Role.RESOLVER]
            ports = {"with": (guarded, token), "without": (open_address, token if options.calibrate else None)}
            cpu = asyncio.run(
                measure(server.pid, ports, options.rounds, options.chunks, options.calls, options.concurrency)
            )
    ratios = [without / with_ for with_, without in zip(cpu["with"], cpu["without"], strict=True)]
    per_10k = 10_000 / options.calls
    print(
        f"{options.calls} ResolveModel calls per port per round, {options.concurrency} in flight, "
        f"{options.rounds} rounds of {options.chunks} turns per port"
        + (" (calibration: both ports authorize)" if options.calibrate else "")
    )
    print(f"server CPU per 10,000 calls, with authorization:    {statistics.median(cpu['with']) * per_10k:.2f} s")
    print(f"server CPU per 10,000 calls, without authorization: {statistics.median(cpu['without']) * per_10k:.2f} s")
    print("CPU ratio without / with, by round: " + ", ".join(f"{r:.3f}" for r in ratios))
    median = statistics.median(ratios)
    verdict = "met" if median >= TARGET_RATIO else "NOT met"
    print(f"median CPU ratio without / with: {median:.3f}   (target >= {TARGET_RATIO}: {verdict})")


if __name__ == "__main__":
    main()
