"""The failover helper's overhead on a call that succeeds at once, against a bare ResolveModel.

One `modelroute-server serve` process on a private PostgreSQL (the configuration bench_load uses: 12
provider configs, 40 models of 3 attachments, 500 users with keys), one synchronous client with a
resolver token. Two series over the same client and channel, in alternating batches of 100 calls (a
noisy machine slows both alike):
  * bare: `client.resolve(model, user)`;
  * helper: `client.call_with_failover(model, user, fn)` with an `fn` that returns at once, so what is
    measured is the helper itself: the resolution, the attempt bookkeeping and the SUCCESS report queued
    for the background reporter, whose thread sends its batches (up to 500) to the same server meanwhile.
Figure: median per-call time of helper / bare, per run; the median of 3 runs. Target: at most 1.2x.
The reporter's statistics are printed too: a report dropped instead of sent would flatter the figure.

Run: .venv/bin/python bench/bench_failover.py [--calls 3000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    MODELS,
    SERVER,
    USERS,
    free_port,
    new_keyring_spec,
    private_database,
    seed,
    server_env,
    server_processes,
    wait_serving,
)
from modelroute import Attempt, Client
from modelroute_server.domain.access import Role

TARGET = 1.2
BATCH = 100


def answer_at_once(attempt: Attempt) -> str:
    return attempt.model


def run_once(client: Client, calls: int) -> tuple[float, float]:
    """Median per-call seconds of (bare, helper), from alternating batches."""
    bare_batches: list[float] = []
    helper_batches: list[float] = []
    counter = 0

    def bare() -> None:
        nonlocal counter
        counter += 1
        client.resolve(f"m{counter % MODELS}", f"user-{counter % USERS}")

    def helper() -> None:
        nonlocal counter
        counter += 1
        client.call_with_failover(f"m{counter % MODELS}", f"user-{counter % USERS}", answer_at_once)

    series: list[tuple[Callable[[], None], list[float]]] = [(bare, bare_batches), (helper, helper_batches)]
    for turn in range(max(1, calls // BATCH)):
        for call, samples in series if turn % 2 == 0 else reversed(series):
            start = time.perf_counter()
            for _ in range(BATCH):
                call()
            samples.append((time.perf_counter() - start) / BATCH)
    return statistics.median(bare_batches), statistics.median(helper_batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="calls per series per run")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    keyring_spec = new_keyring_spec()
    with tempfile.TemporaryDirectory() as scratch, private_database(Path(scratch)) as url:
        tokens = seed(url, keyring_spec)
        address = f"127.0.0.1:{free_port()}"
        command = [str(SERVER), "serve", "--listen", address]
        with server_processes([command], server_env(url, keyring_spec)):
            wait_serving(address)
            with Client(address, token=tokens[Role.RESOLVER]) as client:
                run_once(client, 1000)  # warm up: the snapshot, the channel, the reporter's thread
                results = [run_once(client, options.calls) for _ in range(options.runs)]
                before_close = client.failover_statistics
            after_close = client.failover_statistics
    ratios = [helper / bare for bare, helper in results]
    median = statistics.median(ratios)
    bare_us = statistics.median(bare for bare, _ in results) * 1e6
    helper_us = statistics.median(helper for _, helper in results) * 1e6
    print(f"{options.calls} calls per series per run, {options.runs} runs, alternating batches of {BATCH}")
    print(f"bare ResolveModel, median per call:                   {bare_us:8.1f} us")
    print(f"call_with_failover (resolve + fn + report), per call: {helper_us:8.1f} us")
    print("helper / bare, by run: " + ", ".join(f"{r:.3f}x" for r in ratios))
    verdict = "met" if median <= TARGET else "NOT met"
    print(f"helper / bare, median of {options.runs} runs: {median:.3f}x   (target: at most {TARGET}x: {verdict})")
    print(
        f"attempt reports: {after_close.reported} reported, {after_close.dropped} dropped, "
        f"{after_close.send_failures} failed sends ({before_close.queued} still queued at the end of the runs, "
        "flushed by close)"
    )


if __name__ == "__main__":
    main()
