"""Attempt reports: what came of calling a provider config, and the background reporter that sends them.

    client.report_attempts([AttemptReport("openai-main", "gpt-4o", Outcome.RATE_LIMITED, retry_after=20)])

`call_with_failover` reports every attempt itself, through one background reporter per client: a bounded
queue that the caller only appends to (it never waits), emptied by a daemon thread (the synchronous client)
or a task (the asyncio client) in batches. When the queue is full, a report is older than `max_age`, or a
batch cannot be sent (the service away, a deadline passed), those reports are dropped and counted: health
reports are advice, and a caller must never wait for them. A batch is sent once, never again (a repeated
batch would count its failures twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

from .calls import provider_config_name
from .v1 import common_pb2, resolver_pb2

__all__ = [
    "AsyncReporter",
    "AttemptReport",
    "Outcome",
    "ReportQueue",
    "Reporter",
    "Reporting",
    "ReportingStatistics",
]

log = logging.getLogger("modelroute.failover")

# The service takes at most this many reports per call, and a retry-after of at most 24 hours.
MAX_BATCH = 1000
MAX_RETRY_AFTER = 24 * 3600.0


class Outcome(enum.IntEnum):
    """What came of one attempt; the values are `modelroute.v1.AttemptOutcome`'s."""

    SUCCESS = resolver_pb2.ATTEMPT_OUTCOME_SUCCESS
    # 429 or the provider's own quota signal; with the provider's Retry-After when it gave one.
    RATE_LIMITED = resolver_pb2.ATTEMPT_OUTCOME_RATE_LIMITED
    # 5xx or an equivalent failure on the provider's side.
    SERVER_ERROR = resolver_pb2.ATTEMPT_OUTCOME_SERVER_ERROR
    TIMEOUT = resolver_pb2.ATTEMPT_OUTCOME_TIMEOUT
    CONNECTION_FAILED = resolver_pb2.ATTEMPT_OUTCOME_CONNECTION_FAILED
    # 401/403: the provider refused the credential it was given.
    KEY_REJECTED = resolver_pb2.ATTEMPT_OUTCOME_KEY_REJECTED


@dataclass(frozen=True)
class AttemptReport:
    """One attempt to call a provider config (`openai-main` or `providerConfigs/openai-main`).

    `model`: the upstream model name that was sent (the resolved attachment's `model`). `user`: the user the
    attempt was made for (required when `key_source` is USER). `key_source` and `config_revision`: those of
    the resolution the attempt came from (the service ignores a rejected key it has replaced since).
    `retry_after`: seconds, the provider's Retry-After; sent with RATE_LIMITED only, capped at 24 hours.
    """

    provider_config: str
    model: str
    outcome: Outcome
    user: str = ""
    key_source: common_pb2.KeySource.ValueType = common_pb2.KEY_SOURCE_UNSPECIFIED
    config_revision: int = 0
    retry_after: float | None = None

    def to_proto(self) -> resolver_pb2.AttemptReport:
        message = resolver_pb2.AttemptReport(
            provider_config=provider_config_name(self.provider_config),
            model=self.model,
            user=self.user,
            key_source=self.key_source,
            config_revision=self.config_revision,
            outcome=resolver_pb2.AttemptOutcome.ValueType(int(self.outcome)),
        )
        if self.outcome is Outcome.RATE_LIMITED and self.retry_after is not None and math.isfinite(self.retry_after):
            seconds = min(max(self.retry_after, 0.0), MAX_RETRY_AFTER)
            message.retry_after.CopyFrom(duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)))
        return message


@dataclass(frozen=True)
class Reporting:
    """How a client's background reporter works. `enabled=False`: `call_with_failover` reports nothing.

    `capacity`: reports waiting at most (more are dropped). `batch_size`: reports per call at most (at most
    1000); a call costs the service about the same whatever its size, so a busy client sends few large ones.
    `interval`: seconds between sends when no batch has filled. `send_timeout`: each call's deadline.
    `max_age`: a report waiting longer is dropped (the service takes a report as news of now).
    `close_timeout`: how long `close()` spends sending what is queued.
    """

    enabled: bool = True
    capacity: int = 10_000
    batch_size: int = 500
    interval: float = 0.2
    send_timeout: float = 1.0
    max_age: float = 30.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}")
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if min(self.interval, self.send_timeout, self.max_age) <= 0 or self.close_timeout < 0:
            raise ValueError("interval, send_timeout and max_age must be positive; close_timeout not negative")


@dataclass(frozen=True)
class ReportingStatistics:
    """A client's attempt reports so far. `reported`: accepted by the service (of which `ignored`: about
    a key replaced since). `dropped`: never sent (queue full, too old, a failed batch, the client closed).
    `send_failures`: batches the service did not take. `queued`: waiting now."""

    reported: int = 0
    ignored: int = 0
    dropped: int = 0
    send_failures: int = 0
    queued: int = 0


class ReportQueue:
    """The batching core both reporters share: a bounded queue and its counters, safe across threads.

    `offer` never blocks. A reentrant lock: a stream closed by the garbage collector reports from wherever
    the collector ran, possibly inside this queue's own critical section on the same thread.
    """

    def __init__(self, settings: Reporting, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._items: deque[tuple[float, AttemptReport]] = deque()
        self._lock = threading.RLock()
        self._reported = self._ignored = self._dropped = self._send_failures = 0
        self._closed = self._failing = False

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, report: AttemptReport) -> bool:
        """Queues `report`; False (and counted as dropped) when the queue is full or closed."""
        now = self._clock()
        with self._lock:
            if self._closed or len(self._items) >= self.settings.capacity:
                self._dropped += 1
                return False
            self._items.append((now, report))
            return True

    @property
    def batch_ready(self) -> bool:
        return len(self._items) >= self.settings.batch_size

    def take(self) -> list[AttemptReport]:
        """Up to a batch of the oldest reports; those older than `max_age` are dropped on the way."""
        oldest = self._clock() - self.settings.max_age
        batch: list[AttemptReport] = []
        with self._lock:
            while self._items and len(batch) < self.settings.batch_size:
                queued_at, report = self._items.popleft()
                if queued_at < oldest:
                    self._dropped += 1
                else:
                    batch.append(report)
        return batch

    def next_send(self, deadline: float | None) -> tuple[list[AttemptReport], float] | None:
        """The next batch and its call's timeout, or None when nothing is queued. Past `deadline` (a closing
        reporter's), everything queued is dropped instead."""
        timeout = self.settings.send_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock())
            if timeout <= 0:
                self.drop_all()
                return None
        batch = self.take()
        return (batch, timeout) if batch else None

    def sent(self, batch: Sequence[AttemptReport], response: Any) -> None:
        with self._lock:
            self._reported += len(batch)
            self._ignored += int(getattr(response, "ignored", 0) or 0)
            self._failing = False

    def failed(
        self, batch: Sequence[AttemptReport], error: BaseException, retry: bool = True
    ) -> list[AttemptReport] | None:
        """Counts a batch the service did not take. The service refuses a batch whole when any report in
        it is invalid (one about a provider config deleted since, say), recording none of it: then the
        reports it named are dropped and the others returned, to be sent once more (`retry`). Otherwise
        the whole batch is dropped and None returned."""
        invalid = _invalid_reports(error, len(batch)) if retry else set()
        valid = [report for index, report in enumerate(batch) if index not in invalid] if invalid else []
        with self._lock:
            first, self._failing = not self._failing, True
            self._send_failures += 1
            self._dropped += len(batch) - len(valid)
        # A warning when sending starts failing, then quietly until a batch is taken again.
        (log.warning if first else log.debug)(
            "%d attempt reports dropped: %s", len(batch) - len(valid), _describe(error)
        )
        return valid or None

    def close(self) -> None:
        """No report is taken any more."""
        with self._lock:
            self._closed = True

    def drop_all(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self._dropped += count
        return count

    def statistics(self) -> ReportingStatistics:
        with self._lock:
            return ReportingStatistics(
                self._reported, self._ignored, self._dropped, self._send_failures, len(self._items)
            )


_REPORT_FIELD = re.compile(r"^attempts\[(\d+)\]")


def _invalid_reports(error: BaseException, size: int) -> set[int]:
    """The indices of the reports an INVALID_ARGUMENT names in its field violations (`attempts[3].model`)."""
    if getattr(error, "code", None) != grpc.StatusCode.INVALID_ARGUMENT:
        return set()
    indices = set()
    for violation in getattr(error, "field_violations", None) or ():
        found = _REPORT_FIELD.match(str(violation[0]))
        if found is None:
            return set()  # a problem of the batch as a whole
        indices.add(int(found.group(1)))
    return indices if indices and all(index < size for index in indices) else set()


def _describe(error: BaseException) -> str:
    code, reason = getattr(error, "code", None), getattr(error, "reason", "")
    return " ".join(str(part) for part in (type(error).__name__, getattr(code, "name", ""), reason) if part)


SendBatch = Callable[[list[AttemptReport], float], Any]
AsyncSendBatch = Callable[[list[AttemptReport], float], Awaitable[Any]]


class Reporter:
    """The synchronous client's reporter: a daemon thread, started with the first report, sends a batch
    every `interval` or as soon as one fills. `send(batch, timeout)` raises when the batch was not taken."""

    def __init__(self, send: SendBatch, settings: Reporting | None = None) -> None:
        self.settings = settings or Reporting()
        self.queue = ReportQueue(self.settings)
        self._send = send
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline: float | None = None

    def report(self, report: AttemptReport) -> None:
        """Queues a report; never blocks, never raises."""
        if self._thread is None and not self._closing:
            self._start()
        idle = not len(self.queue)
        if self.queue.offer(report) and (idle or self.queue.batch_ready):
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="modelroute-attempt-reports", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._closing and not len(self.queue):
                self._wake.wait()  # idle (no wake-ups) until a report comes, or close()
            self._wake.clear()
            if not self._closing and not self.queue.batch_ready:
                self._wake.wait(self.settings.interval)  # a batch gathers for an interval, unless it fills
                self._wake.clear()
            closing = self._closing
            self._drain(self._close_deadline if closing else None)
            if closing:
                return

    def _drain(self, deadline: float | None) -> None:
        while (step := self.queue.next_send(deadline)) is not None:
            batch, timeout = step
            if not self._deliver(batch, timeout) and deadline is None:
                return  # try again at the next tick
            if deadline is None and len(batch) < self.settings.batch_size:
                return  # the rest waits for the next tick (or for a batch to fill)

    def _deliver(self, batch: list[AttemptReport], timeout: float) -> bool:
        try:
            response = self._send(batch, timeout)
        except Exception as error:  # the service away, a deadline, a closed channel: drop, never die
            valid = self.queue.failed(batch, error)
            if valid is None:
                return False
            try:
                response = self._send(valid, timeout)
            except Exception as again:
                self.queue.failed(valid, again, retry=False)
                return False
            batch = valid
        self.queue.sent(batch, response)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Sends what is queued, for at most `timeout` seconds (the settings' `close_timeout`); drops the rest."""
        timeout = self.settings.close_timeout if timeout is None else timeout
        with self._lock:
            if self._closing:
                return
            self._close_deadline = time.monotonic() + timeout
            self._closing = True
            thread = self._thread
        self.queue.close()
        if thread is not None:
            self._wake.set()
            thread.join(timeout + 0.5)
        self.queue.drop_all()

    def statistics(self) -> ReportingStatistics:
        return self.queue.statistics()


class AsyncReporter:
    """The asyncio client's reporter: a task on the client's event loop, started with the first report,
    doing what `Reporter`'s thread does. `send(batch, timeout)` is awaited."""

    def __init__(self, send: AsyncSendBatch, settings: Reporting | None = None) -> None:
        self.settings = settings or Reporting()
        self.queue = ReportQueue(self.settings)
        self._send = send
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_deadline: float | None = None

    def report(self, report: AttemptReport) -> None:
        """Queues a report; never blocks, never raises. Call it on the client's event loop."""
        if self._task is None and not self._closing:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelroute-attempt-reports")
        idle = not len(self.queue)
        if self.queue.offer(report) and (idle or self.queue.batch_ready) and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._closing and not len(self.queue):
                await self._wake.wait()  # idle until a report comes, or close()
            self._wake.clear()
            if not self._closing and not self.queue.batch_ready:
                with contextlib.suppress(TimeoutError):  # a batch gathers for an interval, unless it fills
                    await asyncio.wait_for(self._wake.wait(), self.settings.interval)
                self._wake.clear()
            closing = self._closing
            await self._drain(self._close_deadline if closing else None)
            if closing:
                return

    async def _drain(self, deadline: float | None) -> None:
        while (step := self.queue.next_send(deadline)) is not None:
            batch, timeout = step
            if not await self._deliver(batch, timeout) and deadline is None:
                return
            if deadline is None and len(batch) < self.settings.batch_size:
                return

    async def _deliver(self, batch: list[AttemptReport], timeout: float) -> bool:
        try:
            response = await self._send(batch, timeout)
        except Exception as error:
            valid = self.queue.failed(batch, error)
            if valid is None:
                return False
            try:
                response = await self._send(valid, timeout)
            except Exception as again:
                self.queue.failed(valid, again, retry=False)
                return False
            batch = valid
        self.queue.sent(batch, response)
        return True

    async def close(self, timeout: float | None = None) -> None:
        """Sends what is queued, for at most `timeout` seconds (the settings' `close_timeout`); drops the rest."""
        timeout = self.settings.close_timeout if timeout is None else timeout
        if self._closing:
            return
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self.queue.close()
        task = self._task
        if task is not None and not task.done():
            assert self._wake is not None
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout + 0.5)
            except Exception:  # still sending past the deadline (or failed): what is left is dropped
                task.cancel()
        self.queue.drop_all()

    def statistics(self) -> ReportingStatistics:
        return self.queue.statistics()
