"""Provider health: how fast a cooldown reaches another replica, and what attempt reports cost under load.

Every server is a `modelroute-server serve` process of its own on a PostgreSQL of the benchmark's own;
every load generator is a process of its own, so that a client's event loop never shares the server's
interpreter. Each figure is the median of `--runs` runs (3), each run's value printed beside it.

1. Cooldown visible on a second replica. Two replicas on one database. Each of `--trials` (50) trials
   resets the health of provider config h0 through replica 1 (ResetProviderHealth), waits until replica 2
   serves h0 first again, then trips a cooldown of h0 through replica 1 (even trials: one RATE_LIMITED
   report with a retry-after; odd trials: 3 SERVER_ERROR reports in one batch) and polls replica 2's
   ResolveModel (no min_revision) every millisecond until it answers h0 last among the fallbacks with its
   `cooldown_until` set. Measured from ReportAttempts returning on replica 1; target: p99 <= 100 ms (with
   50 trials the nearest-rank p99 is the slowest trial). Printed beside it: the same from sending the
   report (replica 1's commit and its own catch-up included).
2. ReportAttempts under load. One replica; ResolveModel open-loop at 500 calls/s (grpc.aio, pre-encoded
   requests, every one of them answered once before, as in steady state) throughout, while another process
   sends ReportAttempts open-loop at 50 batches/s of 100 reports (5,000 reports/s; 99% SUCCESS, 1%
   SERVER_ERROR rotating over every (provider config, upstream model) pair of the catalogue, so that
   successes clear each failure and nothing trips) in every other slot of 2 s. After a 2 s warm-up (reports
   in its second half), quiet and reporting slots alternate until each kind has had `--seconds` (10); the
   first 0.25 s of every slot is left out, so that a batch still in flight from the slot before counts for
   neither. ResolveModel's p99 in the reporting slots is compared with its p99 in the quiet slots of the
   same phase: alternating in short slots, both see the same moments of a machine that others share (run
   one after the other, a quiet phase and a loaded one differ by the machine's mood as much as by the
   reports). Targets: reports recorded per second of reporting slots >= 95% of the 5,000 offered;
   ResolveModel p99 reporting / quiet <= 1.5x. `--control` adds a phase in which the reports go to another
   replica on the same machine, which costs the machine the same CPU but not the measured server's
   interpreter.

The machine may be shared: every phase prints the CPU each process group used (the server, the generators,
the benchmark's PostgreSQL, everything else). A load phase during which other processes used more than 0.1
cores is measured again (up to 3 times), after waiting for a quiet second; a warning says when that did
not help. `--pin` (an experiment) puts the servers on the last core and the rest on the other.

Catalogue: 50 provider configs, 200 models of 6 upstream names with 3 attachments each (every 4th model's
second attachment carries an upstream name override), 500 users with a key each for one of the 10 provider
configs that take users' keys; plus h0 and h1 and the model `probe` (h0 then h1) for the first figure.

Run: .venv/bin/python bench/bench_health.py [--runs 3] [--trials 50] [--seconds 10] [--quick] [--control]
(--quick: 1 run, 10 trials, 4 s of each kind of slot; BENCH_KEEP_LOGS=1 keeps the scratch directory with the
servers' logs.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    BENCH_CALLER,
    CLOCK_TICKS,
    SERVER,
    cores,
    create_database,
    create_tokens,
    free_port,
    new_keyring_spec,
    pin,
    private_cluster,
    server_env,
    stop_processes,
    wait_serving,
)
from modelroute.v1 import common_pb2, provider_config_pb2, provider_config_pb2_grpc, resolver_pb2, resolver_pb2_grpc
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.domain.access import Role
from modelroute_server.domain.families import Family
from modelroute_server.domain.health import HealthPolicyOverride
from modelroute_server.domain.models import Attachment
from modelroute_server.entrypoints.server import sql_context
from modelroute_server.service_layer import model_configs, provider_configs, user_keys
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput

# -- the catalogue

PROVIDERS, MODELS, USERS = 50, 200, 500
UPSTREAMS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "claude-sonnet-4", "llama-3.3-70b")
USER_KEY_STRIDE = 5  # every 5th provider config takes users' keys (with the central key as fallback)
PROBE_MODEL, PROBE_UPSTREAM = "probe", "gpt-4o-probe"
COOLING, HEALTHY_FIRST = "h0", "h1"
# Any cooldown in the catalogue is short (a stray trip under load recovers by itself); h0's lasts long
# enough to be seen, and each trial resets it anyway.
LOAD_POLICY = HealthPolicyOverride(base_cooldown=timedelta(seconds=1), max_cooldown=timedelta(seconds=2))
PROBE_POLICY = HealthPolicyOverride(base_cooldown=timedelta(seconds=5), max_cooldown=timedelta(seconds=60))

# -- the figures

TRIALS = 50
TRIAL_TARGET_P99_MS = 100.0
POLL_INTERVAL_SECONDS = 0.001
TRIAL_GIVE_UP_SECONDS = 10.0
RESOLVE_RATE = 500  # ResolveModel calls per second
BATCHES_PER_SECOND, BATCH_SIZE, FAILURES_PER_BATCH = 50, 100, 1
OFFERED_REPORTS = BATCHES_PER_SECOND * BATCH_SIZE
DISTINCT_BATCHES = 500  # cycled; the failures rotate over every pair
REQUEST_SPREAD = 4096  # distinct ResolveModel requests, cycled
LOAD_SECONDS, WARMUP_SECONDS = 10.0, 2.0
SLOT_SECONDS, SLOT_GUARD_SECONDS = 2.0, 0.25  # quiet and reporting slots alternate; each one's start left out
START_LEAD_SECONDS = 4.0  # the generators start together this long after they are launched
RPC_TIMEOUT_SECONDS = 5.0
ACHIEVED_SHARE_TARGET = 0.95
P99_RATIO_TARGET = 1.5
# Other processes using more than this during a load phase: the phase is measured again (up to
# PHASE_ATTEMPTS times), after waiting (up to QUIET_WAIT_SECONDS) for a quiet machine.
BUSY_MACHINE_CORES = 0.1
PHASE_ATTEMPTS = 3
QUIET_WAIT_SECONDS = 120.0
WARM_IN_FLIGHT = 8
TOKEN_VARIABLE = "BENCH_HEALTH_TOKEN"  # how a load generator is given its token
RESOLVE_METHOD = "/modelroute.v1.ResolverService/ResolveModel"
REPORT_METHOD = "/modelroute.v1.ResolverService/ReportAttempts"


def upstream_of(model: int) -> str:
    return UPSTREAMS[model % len(UPSTREAMS)]


def attachments_of(model: int) -> list[tuple[str, str]]:
    """(provider config id, upstream name override or "") for each of the model's 3 attachments."""
    entries = []
    for k in range(3):
        provider = f"p{(7 * model + 17 * k) % PROVIDERS}"
        override = f"{upstream_of(model)}-{provider}" if k == 1 and model % 4 == 0 else ""
        entries.append((provider, override))
    return entries


def reported_pairs() -> list[tuple[str, str]]:
    """Every (provider config, upstream model) an attempt can be reported about, in a fixed order."""
    pairs = {(p, override or upstream_of(m)) for m in range(MODELS) for p, override in attachments_of(m)}
    return sorted(pairs)


def user_key_provider(user: int) -> str:
    return f"p{(user % (PROVIDERS // USER_KEY_STRIDE)) * USER_KEY_STRIDE}"


def seed(url: str, keyring_spec: str) -> dict[Role, str]:
    """The catalogue, through the service layer; one token per role."""
    engine = database.create_engine(url)
    ctx = sql_context(engine, Keyring.parse(keyring_spec))
    try:
        for i in range(PROVIDERS):
            takes_user_keys = i % USER_KEY_STRIDE == 0
            provider_configs.create_provider_config(
                ctx,
                BENCH_CALLER,
                f"p{i}",
                ProviderConfigInput(
                    family=Family.OPENAI,
                    api_key=f"sk-bench-{i}",
                    central_api_key_enabled=True,
                    allow_user_api_key=takes_user_keys,
                    allow_central_api_key_fallback=takes_user_keys,
                    health_policy=LOAD_POLICY,
                ),
            )
        for provider, policy in ((COOLING, PROBE_POLICY), (HEALTHY_FIRST, LOAD_POLICY)):
            provider_configs.create_provider_config(
                ctx,
                BENCH_CALLER,
                provider,
                ProviderConfigInput(family=Family.OPENAI, api_key=f"sk-bench-{provider}", health_policy=policy),
            )
        for m in range(MODELS):
            model_configs.create_model_config(
                ctx,
                BENCH_CALLER,
                f"m{m}",
                ModelConfigInput(
                    family=Family.OPENAI,
                    model=upstream_of(m),
                    context_limit=128_000,
                    attachments=tuple(Attachment(p, override) for p, override in attachments_of(m)),
                    overrides_given=True,
                ),
            )
        model_configs.create_model_config(
            ctx,
            BENCH_CALLER,
            PROBE_MODEL,
            ModelConfigInput(
                family=Family.OPENAI,
                model=PROBE_UPSTREAM,
                context_limit=128_000,
                attachments=(Attachment(COOLING), Attachment(HEALTHY_FIRST)),
            ),
        )
        for u in range(USERS):
            user_keys.set_user_provider_key(ctx, BENCH_CALLER, f"user-{u}", user_key_provider(u), f"uk-bench-{u}")
    finally:
        engine.dispose()
    return create_tokens(url, keyring_spec)


# -- small helpers


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def percentile(samples: Sequence[float], share: float) -> float:
    """Nearest rank: the smallest value at or above `share` of the samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def process_cpu() -> dict[int, tuple[int, float]]:
    """Every process's (parent pid, CPU seconds so far). Per process, because the kernel scales those to
    its exact run time; /proc/stat's per-CPU ticks undercount short bursts on this (tickless) VM."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


@dataclass
class CpuShares:
    """CPU used during a window, in cores (1.0 = one core busy throughout), by whom: the named groups of
    processes, the benchmark's own PostgreSQL (its postmaster and every backend), and everything else on
    the machine ("others": another benchmark, a test run, the kernel's threads)."""

    cores: dict[str, float]

    @property
    def others(self) -> float:
        return self.cores["others"]

    def describe(self) -> str:
        used = ", ".join(f"{name} {value:.2f}" for name, value in self.cores.items())
        return f"CPU in cores: {used} (of {os.cpu_count()})"


def cpu_shares(
    before: dict[int, tuple[int, float]],
    after: dict[int, tuple[int, float]],
    seconds: float,
    groups: dict[str, set[int]],
    postmaster: int,
) -> CpuShares:
    used = dict.fromkeys([*groups, "PostgreSQL", "others"], 0.0)
    for pid, (parent, cpu) in after.items():
        spent = cpu - before.get(pid, (parent, 0.0))[1]
        group = next((name for name, pids in groups.items() if pid in pids), None)
        if group is None:
            group = "PostgreSQL" if postmaster in (pid, parent) else "others"
        if pid != os.getpid():
            used[group] += spent
    return CpuShares({name: value / seconds for name, value in used.items()})


def others_cores(seconds: float, ours: set[int], postmaster: int) -> float:
    """The cores the machine's other processes use over the next `seconds`."""
    before = process_cpu()
    time.sleep(seconds)
    return cpu_shares(before, process_cpu(), seconds, {"ours": ours}, postmaster).others


def wait_quiet(ours: set[int], postmaster: int, limit: float = QUIET_WAIT_SECONDS) -> float:
    """Waits (up to `limit`) for a second in which the machine's other processes use at most
    BUSY_MACHINE_CORES; the cores they used in the last second measured."""
    deadline = time.monotonic() + limit
    said = False
    while True:
        others = others_cores(1.0, ours, postmaster)
        if others <= BUSY_MACHINE_CORES or time.monotonic() > deadline:
            return others
        if not said:
            say(f"  (other processes use {others:.2f} cores: waiting up to {limit:.0f} s for a quiet machine)")
            said = True


def postmaster_pid(scratch: Path) -> int:
    """The private cluster's postmaster (the first line of its postmaster.pid)."""
    return int((scratch / "pgdata" / "postmaster.pid").read_text().split()[0])


def say(text: str) -> None:
    print(text, flush=True)


class RunFailed(Exception):
    pass


@dataclass
class Server:
    """One `modelroute-server serve` process, its output in a log file of its own."""

    name: str
    env: dict[str, str]
    log_path: Path
    cores: set[int] | None = None  # every thread of the process on these (--pin)
    address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [str(SERVER), "serve", "--listen", self.address],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.cores is not None:
            pin(self.process.pid, self.cores)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_serving(self) -> None:
        try:
            wait_serving(self.address, timeout=90)
        except SystemExit as error:
            raise RunFailed(f"{self.name}: {error}\n{self.log_tail()}") from None
        if self.cores is not None:
            pin(self.pid, self.cores)  # every thread it has started by now

    def log_tail(self, lines: int = 10) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes()[-32_000:].decode(errors="replace")
        return "\n".join(f"    {line[:300]}" for line in text.splitlines()[-lines:])


@contextlib.contextmanager
def servers(
    names: Sequence[str], url: str, keyring_spec: str, scratch: Path, cores: set[int] | None
) -> Iterator[list[Server]]:
    started = [Server(name, server_env(url, keyring_spec), scratch / f"{name}.log", cores) for name in names]
    try:
        for server in started:
            server.start()
        for server in started:
            server.wait_serving()
        yield started
    finally:
        stop_processes(s.process for s in started if s.process is not None)


# -- figure 1: a cooldown seen on another replica


@dataclass
class TrialRun:
    visible_ms: list[float]  # ReportAttempts returned on replica 1 -> replica 2 answers h0 demoted
    report_ms: list[float]  # the ReportAttempts call itself, on replica 1
    polls: list[int]  # replica 2 calls per trial until it answered demoted
    own_stale: int  # replica 1's own ResolveModel right after not yet demoted (must be 0)
    cpu: CpuShares | None = None

    @property
    def p99(self) -> float:
        return percentile(self.visible_ms, 0.99)

    @property
    def p50(self) -> float:
        return percentile(self.visible_ms, 0.50)

    @property
    def from_send_ms(self) -> list[float]:
        return [sent + seen for sent, seen in zip(self.report_ms, self.visible_ms, strict=True)]

    def describe(self) -> str:
        return (
            f"{len(self.visible_ms)} trips on replica 1 seen on replica 2 in p50 {self.p50:.1f} ms, p99 "
            f"{self.p99:.1f} ms, max {max(self.visible_ms):.1f} ms (polls per trial median "
            f"{statistics.median(self.polls):.0f}, max {max(self.polls)}); from sending ReportAttempts p50 "
            f"{percentile(self.from_send_ms, 0.5):.1f} ms, p99 {percentile(self.from_send_ms, 0.99):.1f} ms; the "
            f"call on replica 1 p50 {percentile(self.report_ms, 0.5):.1f} ms, p99 "
            f"{percentile(self.report_ms, 0.99):.1f} ms; replica 1 stale after its own report: {self.own_stale}"
            + (f"; {self.cpu.describe()}" if self.cpu is not None else "")
        )


def order(answer: resolver_pb2.ResolveModelResponse) -> list[str]:
    return [a.provider_config.removeprefix("providerConfigs/") for a in (answer.selected, *answer.fallbacks)]


def demoted(answer: resolver_pb2.ResolveModelResponse) -> bool:
    return order(answer) == [HEALTHY_FIRST, COOLING] and answer.fallbacks[-1].HasField("cooldown_until")


def restored(answer: resolver_pb2.ResolveModelResponse) -> bool:
    return order(answer) == [COOLING, HEALTHY_FIRST] and not answer.selected.HasField("cooldown_until")


def trip_request(number: int) -> resolver_pb2.ReportAttemptsRequest:
    outcome = resolver_pb2.AttemptOutcome
    name = f"providerConfigs/{COOLING}"
    if number % 2 == 0:
        limited = resolver_pb2.AttemptReport(
            provider_config=name,
            model=PROBE_UPSTREAM,
            outcome=outcome.ATTEMPT_OUTCOME_RATE_LIMITED,
            retry_after=duration_pb2.Duration(seconds=30),
        )
        return resolver_pb2.ReportAttemptsRequest(attempts=[limited])
    failed = resolver_pb2.AttemptReport(
        provider_config=name, model=PROBE_UPSTREAM, outcome=outcome.ATTEMPT_OUTCOME_SERVER_ERROR
    )
    return resolver_pb2.ReportAttemptsRequest(attempts=[failed] * 3)


def wait_for(
    resolver: resolver_pb2_grpc.ResolverServiceStub,
    metadata: tuple[tuple[str, str], ...],
    condition: Callable[[resolver_pb2.ResolveModelResponse], bool],
    what: str,
) -> tuple[float, int]:
    """Polls ResolveModel(probe) every POLL_INTERVAL_SECONDS until `condition`; (seconds, calls)."""
    request = resolver_pb2.ResolveModelRequest(model=PROBE_MODEL)
    started = time.perf_counter()
    calls = 0
    while True:
        answer = resolver.ResolveModel(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)
        calls += 1
        now = time.perf_counter()
        if condition(answer):
            return now - started, calls
        if now - started > TRIAL_GIVE_UP_SECONDS:
            raise RunFailed(f"replica 2 never answered {what} within {TRIAL_GIVE_UP_SECONDS:.0f} s: {order(answer)}")
        # The next poll on the next millisecond tick since the start.
        next_tick = started + (math.floor((now - started) / POLL_INTERVAL_SECONDS) + 1) * POLL_INTERVAL_SECONDS
        time.sleep(max(0.0, next_tick - time.perf_counter()))


def cooldown_trials(one: Server, two: Server, tokens: dict[Role, str], trials: int) -> TrialRun:
    resolver_md, admin_md = bearer(tokens[Role.RESOLVER]), bearer(tokens[Role.ADMIN])
    result = TrialRun([], [], [], 0)
    rng = random.Random(1)
    probe = resolver_pb2.ResolveModelRequest(model=PROBE_MODEL)
    reset = provider_config_pb2.ResetProviderHealthRequest(name=f"providerConfigs/{COOLING}")
    with grpc.insecure_channel(one.address) as first, grpc.insecure_channel(two.address) as second:
        resolver_1 = resolver_pb2_grpc.ResolverServiceStub(first)
        providers_1 = provider_config_pb2_grpc.ProviderConfigServiceStub(first)
        resolver_2 = resolver_pb2_grpc.ResolverServiceStub(second)
        wait_for(resolver_2, resolver_md, restored, "h0 first")  # warm both channels
        resolver_1.ResolveModel(probe, metadata=resolver_md, timeout=RPC_TIMEOUT_SECONDS)
        for number in range(trials):
            providers_1.ResetProviderHealth(reset, metadata=admin_md, timeout=RPC_TIMEOUT_SECONDS)
            wait_for(resolver_2, resolver_md, restored, "h0 first after a reset")
            time.sleep(rng.uniform(0.01, 0.03))  # not in step with anything the replicas do
            request = trip_request(number)
            sent = time.perf_counter()
            resolver_1.ReportAttempts(request, metadata=resolver_md, timeout=RPC_TIMEOUT_SECONDS)
            result.report_ms.append((time.perf_counter() - sent) * 1000)
            seconds, polls = wait_for(resolver_2, resolver_md, demoted, "h0 demoted")
            result.visible_ms.append(seconds * 1000)
            result.polls.append(polls)
            own = resolver_1.ResolveModel(probe, metadata=resolver_md, timeout=RPC_TIMEOUT_SECONDS)
            result.own_stale += not demoted(own)
        providers_1.ResetProviderHealth(reset, metadata=admin_md, timeout=RPC_TIMEOUT_SECONDS)
    return result


def cooldown_run(
    number: int,
    trials: int,
    tokens: dict[Role, str],
    url: str,
    keyring_spec: str,
    scratch: Path,
    server_cores: set[int] | None,
) -> TrialRun:
    """One run of the trials on two new replicas; measured again (up to PHASE_ATTEMPTS times) while other
    processes were busy."""
    postmaster = postmaster_pid(scratch)
    for attempt in range(1, PHASE_ATTEMPTS + 1):
        wait_quiet(set(), postmaster)
        names = [f"cooldown-{number}-{attempt}-r1", f"cooldown-{number}-{attempt}-r2"]
        with servers(names, url, keyring_spec, scratch, server_cores) as pair:
            cpu_before, began = process_cpu(), time.monotonic()
            trial = cooldown_trials(pair[0], pair[1], tokens, trials)
            trial.cpu = cpu_shares(
                cpu_before, process_cpu(), time.monotonic() - began, {"replicas": {s.pid for s in pair}}, postmaster
            )
        say(f"cooldown run {number}: {trial.describe()}")
        if trial.cpu.others <= BUSY_MACHINE_CORES:
            break
        if attempt < PHASE_ATTEMPTS:
            say(f"  (other processes used {trial.cpu.others:.2f} cores: measured again)")
    return trial


# -- figure 2: load generators (each a process of its own: `--worker NAME`)


@dataclass
class Record:
    due: float  # seconds after the schedule's start the call was due
    lag: float  # how late it was sent (the generator's own delay)
    latency: float
    done: float  # seconds after the schedule's start it completed
    answer: bytes | None
    error: str | None


async def open_loop(
    dues: Sequence[float], start_at: float, send: Callable[[int], Awaitable[bytes]]
) -> tuple[list[Record], float]:
    """Calls `send(i)` at `start_at + dues[i]` (time.monotonic, the same clock in every process), never waiting
    for an answer before the next call; the records, and how late the schedule started."""
    records: list[Record] = []
    pending: set[asyncio.Task[None]] = set()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    late_start = time.monotonic() - start_at

    async def one(index: int, due: float) -> None:
        started = time.monotonic()
        answer, error = None, None
        try:
            answer = await send(index)
        except grpc.aio.AioRpcError as failure:
            error = failure.code().name
        ended = time.monotonic()
        records.append(Record(due - start_at, started - due, ended - started, ended - start_at, answer, error))

    for index, offset in enumerate(dues):
        due = start_at + offset
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(index, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=RPC_TIMEOUT_SECONDS + 5)
    return records, late_start


def steady(rate: float, seconds: float) -> list[float]:
    return [i / rate for i in range(int(rate * seconds))]


def slot_of(offset: float) -> int | None:
    """The slot a call due `offset` seconds after the schedule's start is measured in: None in the warm-up
    and in the guard at each slot's start. Even slots are quiet; odd ones carry the reports."""
    measured = offset - WARMUP_SECONDS
    if measured < 0:
        return None
    slot = int(measured // SLOT_SECONDS)
    return slot if measured - slot * SLOT_SECONDS >= SLOT_GUARD_SECONDS else None


def reporting(offset: float) -> bool:
    """Whether reports are sent at `offset`: in the warm-up's second half, and all through every odd slot."""
    if offset < WARMUP_SECONDS:
        return offset >= WARMUP_SECONDS / 2
    return int((offset - WARMUP_SECONDS) // SLOT_SECONDS) % 2 == 1


def resolve_requests() -> list[bytes]:
    return [
        resolver_pb2.ResolveModelRequest(
            model=f"m{(i * 7919) % MODELS}", user=f"user-{(i * 104729) % USERS}" if i % 2 else ""
        ).SerializeToString()
        for i in range(REQUEST_SPREAD)
    ]


def report_batches(revision: int) -> list[bytes]:
    """DISTINCT_BATCHES batches of BATCH_SIZE: successes on random pairs, FAILURES_PER_BATCH failures each on
    the next pair of a shuffled list of every pair (so a failure is cleared by the next success on its pair
    long before two more fail it)."""
    outcome = resolver_pb2.AttemptOutcome
    pairs = reported_pairs()
    rng = random.Random(7)
    failing = pairs[:]
    rng.shuffle(failing)
    batches = []
    failures = 0
    for _ in range(DISTINCT_BATCHES):
        failure_slots = set(rng.sample(range(BATCH_SIZE), FAILURES_PER_BATCH))
        attempts = []
        for slot in range(BATCH_SIZE):
            if slot in failure_slots:
                (provider, model), kind = failing[failures % len(failing)], outcome.ATTEMPT_OUTCOME_SERVER_ERROR
                failures += 1
            else:
                (provider, model), kind = rng.choice(pairs), outcome.ATTEMPT_OUTCOME_SUCCESS
            attempts.append(
                resolver_pb2.AttemptReport(
                    provider_config=f"providerConfigs/{provider}",
                    model=model,
                    user=f"user-{rng.randrange(USERS)}",
                    key_source=common_pb2.KEY_SOURCE_STORED,
                    config_revision=revision,
                    outcome=kind,
                )
            )
        batches.append(resolver_pb2.ReportAttemptsRequest(attempts=attempts).SerializeToString())
    return batches


async def warm_answers(target: str, token: str) -> None:
    """Every request the resolve generator cycles through, once, so that the replica keeps its answer (as
    in steady state) before anything is measured."""
    metadata = bearer(token)
    requests = resolve_requests()
    async with grpc.aio.insecure_channel(target) as channel:
        resolve = channel.unary_unary(RESOLVE_METHOD)

        async def warm(offset: int) -> None:
            for request in requests[offset::WARM_IN_FLIGHT]:
                await resolve(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)

        await asyncio.gather(*(warm(i) for i in range(WARM_IN_FLIGHT)))


async def resolve_worker(target: str, token: str, seconds: float, start_at: float) -> dict[str, Any]:
    """ResolveModel at RESOLVE_RATE from `start_at` for `seconds` (the caller skips the warm-up)."""
    metadata = bearer(token)
    requests = resolve_requests()
    async with grpc.aio.insecure_channel(target) as channel:
        resolve = channel.unary_unary(RESOLVE_METHOD)  # bytes in, bytes out: nothing decoded per call
        for request in requests[:50]:  # the channel is up, and the kept answers warm
            await resolve(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)
        records, late_start = await open_loop(
            steady(RESOLVE_RATE, seconds),
            start_at,
            lambda i: resolve(requests[i % len(requests)], metadata=metadata, timeout=RPC_TIMEOUT_SECONDS),
        )
    return {"records": [(r.due, r.lag, r.latency, r.done, r.error) for r in records], "late_start": late_start}


async def report_worker(target: str, token: str, seconds: float, start_at: float) -> dict[str, Any]:
    """ReportAttempts at BATCHES_PER_SECOND batches of BATCH_SIZE in the reporting slots of the `seconds`
    from `start_at`."""
    metadata = bearer(token)
    async with grpc.aio.insecure_channel(target) as channel:
        resolver = resolver_pb2_grpc.ResolverServiceStub(channel)
        answer = await resolver.ResolveModel(
            resolver_pb2.ResolveModelRequest(model="m0"), metadata=metadata, timeout=RPC_TIMEOUT_SECONDS
        )
        batches = report_batches(answer.config_revision)
        report = channel.unary_unary(REPORT_METHOD)
        records, late_start = await open_loop(
            [due for due in steady(BATCHES_PER_SECOND, seconds) if reporting(due)],
            start_at,
            lambda i: report(batches[i % len(batches)], metadata=metadata, timeout=RPC_TIMEOUT_SECONDS),
        )
    recorded = [
        resolver_pb2.ReportAttemptsResponse.FromString(r.answer).recorded if r.answer is not None else 0
        for r in records
    ]
    return {
        "records": [(r.due, r.lag, r.latency, r.done, r.error) for r in records],
        "recorded": recorded,
        "late_start": late_start,
    }


WORKERS = {"resolve": resolve_worker, "report": report_worker}


class Worker:
    """A load generator process; its JSON result."""

    def __init__(self, name: str, target: str, token: str, seconds: float, start_at: float) -> None:
        self.name = name
        command = [sys.executable, __file__, "--worker", name, "--target", target]
        command += ["--seconds", str(seconds), "--start-at", repr(start_at)]
        env = os.environ | {TOKEN_VARIABLE: token}  # not on the command line, where `ps` shows it
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        self.deadline = start_at + seconds + 60

    def result(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RunFailed(f"the {self.name} load generator did not finish in time") from None
        if self.process.returncode != 0:
            raise RunFailed(f"the {self.name} load generator failed ({self.process.returncode})")
        return json.loads(out)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Phase:
    resolve_p50_ms: float
    resolve_p99_ms: float
    resolve_calls: int
    resolve_errors: int
    resolve_lag_p99_ms: float  # how late the generator sent its calls (its own delay, not the server's)
    reports_per_second: float = 0.0
    report_batches: int = 0
    report_errors: dict[str, int] = field(default_factory=dict)
    report_p50_ms: float = 0.0
    report_p99_ms: float = 0.0
    health_changes: int = 0  # cooldown moves logged during the phase (trips, their ends, resets)

    def describe(self) -> str:
        text = (
            f"ResolveModel p50 {self.resolve_p50_ms:.2f} ms, p99 {self.resolve_p99_ms:.2f} ms over "
            f"{self.resolve_calls} calls ({self.resolve_errors} failed; send lag p99 {self.resolve_lag_p99_ms:.2f} "
            f"ms)"
        )
        if self.report_batches:
            text += (
                f"; {self.reports_per_second:.0f} reports/s recorded, {self.report_batches} batches sent "
                f"(failed: {self.report_errors or 'none'}), ReportAttempts p50 {self.report_p50_ms:.1f} ms, "
                f"p99 {self.report_p99_ms:.1f} ms; health changes logged: {self.health_changes}"
            )
        return text


def health_changes(url: str) -> int:
    with psycopg.connect(database.libpq_url(url), autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM change_log WHERE kind = 'health'").fetchone()
    assert row is not None
    return int(row[0])


def slot_records(records: Sequence[Any], reports: bool) -> list[Any]:
    """The records due in a measured slot of that kind (record[0] is when each was due)."""
    return [r for r in records if (slot := slot_of(r[0])) is not None and (slot % 2 == 1) == reports]


@dataclass
class LoadPhase:
    """One phase of alternating slots: ResolveModel in the quiet ones and in the reporting ones."""

    quiet: Phase
    loaded: Phase
    cpu: CpuShares

    @property
    def ratio(self) -> float:
        return self.loaded.resolve_p99_ms / self.quiet.resolve_p99_ms

    def describe(self) -> str:
        return (
            f"quiet slots: {self.quiet.describe()}\n    reporting slots: {self.loaded.describe()}\n"
            f"    p99 reporting / quiet {self.ratio:.2f}x; {self.cpu.describe()}"
        )


def resolve_phase(records: Sequence[Any]) -> Phase:
    latencies = [r[2] * 1000 for r in records if r[4] is None]
    return Phase(
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        len(records),
        sum(r[4] is not None for r in records),
        percentile([r[1] * 1000 for r in records], 0.99),
    )


def load_phase(
    server: Server,
    tokens: dict[Role, str],
    url: str,
    postmaster: int,
    seconds: float,
    reports_to: Server,
) -> LoadPhase:
    """ResolveModel at RESOLVE_RATE against `server` throughout, and reports sent to `reports_to` (the same
    server, or another one on the machine for the control) in every other slot, until each kind of slot
    has had `seconds`."""
    token = tokens[Role.RESOLVER]
    start_at = time.monotonic() + START_LEAD_SECONDS
    slots = 2 * max(1, round(seconds / SLOT_SECONDS))
    total = WARMUP_SECONDS + slots * SLOT_SECONDS
    workers: list[Worker] = []
    groups = {"server": {server.pid}}
    if reports_to is not server:
        groups["other replica"] = {reports_to.pid}
    try:
        workers.append(Worker("resolve", server.address, token, total, start_at))
        workers.append(Worker("report", reports_to.address, token, total, start_at))
        groups["generators"] = {w.process.pid for w in workers}
        changes_before = health_changes(url)
        time.sleep(max(0.0, start_at + WARMUP_SECONDS - time.monotonic()))
        cpu_before = process_cpu()
        time.sleep(max(0.0, start_at + total - time.monotonic()))
        cpu_after = process_cpu()
        results = [w.result() for w in workers]
        changes = health_changes(url) - changes_before
    finally:
        for worker in workers:
            worker.stop()
    for worker, result in zip(workers, results, strict=True):
        if result["late_start"] > 0.5:
            raise RunFailed(f"the {worker.name} generator started {result['late_start']:.1f} s late")
    resolved = results[0]["records"]
    measured_seconds = slots // 2 * (SLOT_SECONDS - SLOT_GUARD_SECONDS)
    quiet = resolve_phase(slot_records(resolved, reports=False))
    loaded = resolve_phase(slot_records(resolved, reports=True))
    reports = results[1]
    sent = [
        (record, recorded)
        for record, recorded in zip(reports["records"], reports["recorded"], strict=True)
        if slot_of(record[0]) is not None
    ]
    # Reports recorded by the batches sent in the measured part of the reporting slots, per second of it.
    loaded.reports_per_second = sum(recorded for _, recorded in sent) / measured_seconds
    loaded.report_batches = len(sent)
    for record, _ in sent:
        if record[4] is not None:
            loaded.report_errors[record[4]] = loaded.report_errors.get(record[4], 0) + 1
    report_latencies = [r[2] * 1000 for r, _ in sent if r[4] is None]
    loaded.report_p50_ms = percentile(report_latencies, 0.50)
    loaded.report_p99_ms = percentile(report_latencies, 0.99)
    loaded.health_changes = changes
    return LoadPhase(quiet, loaded, cpu_shares(cpu_before, cpu_after, total - WARMUP_SECONDS, groups, postmaster))


@dataclass
class Setting:
    """What the load phases of one run share."""

    tokens: dict[Role, str]
    url: str
    postmaster: int
    seconds: float
    number: int
    ours: set[int]

    def phase(self, label: str, server: Server, reports_to: Server) -> LoadPhase:
        """A load phase, measured again (up to PHASE_ATTEMPTS times) while other processes were busy."""
        for attempt in range(1, PHASE_ATTEMPTS + 1):
            wait_quiet(self.ours, self.postmaster)
            measured = load_phase(server, self.tokens, self.url, self.postmaster, self.seconds, reports_to)
            say(f"load run {self.number}, {label}:\n    {measured.describe()}")
            if measured.cpu.others <= BUSY_MACHINE_CORES:
                break
            if attempt < PHASE_ATTEMPTS:
                say(f"  (other processes used {measured.cpu.others:.2f} cores: measured again)")
        return measured


@dataclass
class LoadRun:
    reports: LoadPhase
    control: LoadPhase | None  # the reports sent to another replica on the same machine


# -- main


@dataclass
class Row:
    figure: str
    target: str
    values: list[float]
    unit: str
    met: Callable[[float], bool] | None
    digits: int = 1

    def print(self) -> None:
        value = statistics.median(self.values) if self.values else float("nan")
        runs = ", ".join(f"{v:.{self.digits}f}" for v in self.values)
        verdict = "n/a" if self.met is None else ("yes" if self.values and self.met(value) else "NO")
        say(f"| {self.figure} | {self.target} | {value:.{self.digits}f}{self.unit} | {runs} | {verdict} |")


@contextlib.contextmanager
def scratch_directory() -> Iterator[Path]:
    if os.environ.get("BENCH_KEEP_LOGS"):
        path = tempfile.mkdtemp(prefix="bench-health-")
        print(f"scratch (server logs) kept in {path}", file=sys.stderr)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-health-") as path:
            yield Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure (default 3)")
    parser.add_argument("--trials", type=int, default=TRIALS, help=f"cooldown trials per run (default {TRIALS})")
    parser.add_argument(
        "--seconds",
        type=float,
        default=LOAD_SECONDS,
        help="measured seconds of each kind of slot (quiet, reporting) per load phase",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run, 10 trials, 4 s of each kind of slot")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also send the reports to another replica on the same machine while ResolveModel is measured "
        "(what the machine's contention alone costs)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on the last core, PostgreSQL and the load generators on the others (an experiment: the "
        "targets are for the machine shared)",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        seconds = float(options.seconds)
        result = asyncio.run(
            WORKERS[options.worker](options.target, os.environ[TOKEN_VARIABLE], seconds, options.start_at)
        )
        print(json.dumps(result))
        return
    if options.quick:
        options.runs, options.trials, options.seconds = 1, 10, 4.0
    if options.runs < 1 or options.trials < 1 or options.seconds <= 0:
        parser.error("--runs and --trials must be at least 1, --seconds positive")
    # A SIGTERM unwinds like an error: the servers, the generators and the private PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    keyring_spec = new_keyring_spec()
    trial_runs: list[TrialRun] = []
    load_runs: list[LoadRun] = []
    failure = None
    started = time.perf_counter()
    with scratch_directory() as scratch, private_cluster(scratch) as cluster:
        url = create_database(cluster, "bench_health")
        seeding = time.perf_counter()
        tokens = seed(url, keyring_spec)
        say(
            f"seeded {PROVIDERS} provider configs, {MODELS} models ({len(UPSTREAMS)} upstream names, "
            f"{len(reported_pairs())} (provider config, upstream model) pairs), {USERS} users with a key, "
            f"in {time.perf_counter() - seeding:.1f} s"
        )
        postmaster = postmaster_pid(scratch)
        server_cores, rest = None, set(cores())
        if options.pin:
            machine = cores()
            server_cores, rest = set(machine[-1:]), set(machine[:-1]) or set(machine)
            os.sched_setaffinity(0, rest)  # this process, and the generators it starts
            for pid, (parent, _) in process_cpu().items():
                if postmaster in (pid, parent):  # backends started later inherit the postmaster's
                    pin(pid, rest)
            say(
                f"pinned: servers on cores {sorted(server_cores)}; PostgreSQL, the generators and this process on "
                f"{sorted(rest)}"
            )
        say(f"before the runs, other processes used {others_cores(1.0, set(), postmaster):.2f} cores")
        try:
            for number in range(1, options.runs + 1):
                trial_runs.append(
                    cooldown_run(number, options.trials, tokens, url, keyring_spec, scratch, server_cores)
                )
            for number in range(1, options.runs + 1):
                names = [f"load-{number}"] + ([f"load-{number}-other"] if options.control else [])
                with servers(names, url, keyring_spec, scratch, server_cores) as started_servers:
                    server = started_servers[0]
                    ours = {s.pid for s in started_servers}
                    if options.pin and options.control:  # the other replica beside the generators
                        pin(started_servers[1].pid, rest)
                    asyncio.run(warm_answers(server.address, tokens[Role.RESOLVER]))

                    run = Setting(tokens, url, postmaster, options.seconds, number, ours)
                    reports = run.phase("reports to the measured replica", server, server)
                    control = (
                        run.phase("control, reports to another replica", server, started_servers[1])
                        if options.control
                        else None
                    )
                load_runs.append(LoadRun(reports, control))
        except (RunFailed, grpc.RpcError) as error:
            if isinstance(error, grpc.RpcError):
                failure = f"an RPC failed: {error.code().name}: {error.details()}"  # type: ignore[attr-defined]
            else:
                failure = str(error)
            say(f"stopped: {failure}")
    say("")
    say(
        f"{len(trial_runs)} cooldown runs of {options.trials} trials, {len(load_runs)} load runs of "
        f"{options.seconds:.0f} s of quiet and as many of reporting {SLOT_SECONDS:.0f} s slots, alternating (after "
        f"{WARMUP_SECONDS:.0f} s warm-up; the first {SLOT_GUARD_SECONDS} s of each slot left out): ResolveModel "
        f"{RESOLVE_RATE}/s open-loop, "
        f"reports {BATCHES_PER_SECOND} batches/s of {BATCH_SIZE} ({FAILURES_PER_BATCH} SERVER_ERROR each), "
        f"{os.cpu_count()} cores; total {time.perf_counter() - started:.0f} s"
    )
    say("")
    say("| figure | target | median | runs | met |")
    say("|---|---|---|---|---|")
    Row(
        "cooldown visible on a second replica, p99",
        f"<= {TRIAL_TARGET_P99_MS:.0f} ms",
        [t.p99 for t in trial_runs],
        " ms",
        lambda v: v <= TRIAL_TARGET_P99_MS,
    ).print()
    Row("cooldown visible on a second replica, p50", "", [t.p50 for t in trial_runs], " ms", None).print()
    Row(
        "the same from sending ReportAttempts (its commit included), p99",
        "",
        [percentile(t.from_send_ms, 0.99) for t in trial_runs],
        " ms",
        None,
    ).print()
    Row(
        f"ReportAttempts achieved reports/s (offered {OFFERED_REPORTS:,})",
        f">= {ACHIEVED_SHARE_TARGET * OFFERED_REPORTS:,.0f}/s",
        [r.reports.loaded.reports_per_second for r in load_runs],
        "/s",
        lambda v: v >= ACHIEVED_SHARE_TARGET * OFFERED_REPORTS,
        0,
    ).print()
    Row(
        "ResolveModel p99 in reporting slots / in quiet slots",
        f"<= {P99_RATIO_TARGET}x",
        [r.reports.ratio for r in load_runs],
        "x",
        lambda v: v <= P99_RATIO_TARGET,
        2,
    ).print()
    for share, attribute in (("p99", "resolve_p99_ms"), ("p50", "resolve_p50_ms")):
        for slots in ("quiet", "loaded"):
            values = [getattr(getattr(r.reports, slots), attribute) for r in load_runs]
            label = "quiet" if slots == "quiet" else "reporting"
            Row(f"ResolveModel {share}, {label} slots", "", values, " ms", None, 2).print()
    controls = [r.control for r in load_runs if r.control is not None]
    if controls:
        Row(
            "control: the same ratio with the reports sent to another replica",
            "",
            [c.ratio for c in controls],
            "x",
            None,
            2,
        ).print()
    phases = [p for r in load_runs for p in (r.reports, r.control) if p is not None]
    measured = [t.cpu for t in trial_runs] + [p.cpu for p in phases]
    others = max((cpu.others for cpu in measured if cpu is not None), default=0.0)
    if others > BUSY_MACHINE_CORES:
        say(
            f"warning: other processes used up to {others:.2f} cores during a measurement: the machine was not "
            "quiet, and those figures are not this service's alone"
        )
    if options.quick:
        say("(--quick: a check of the code paths; the targets are for the full run)")
    if failure is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
