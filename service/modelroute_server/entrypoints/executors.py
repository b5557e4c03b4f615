"""The threads that run database work, below the event loop in the operating system's eyes, and
bounded per class of work.

Resolution answers from memory on the event loop; everything that talks to the database runs in worker
threads. Admin reads and writes each have a small pool of their own, sized to a connection pool of
their own (so a thread never waits for a connection): writes stuck on a lock cannot hold up reads, and
neither holds up the health probe, which has its own thread (entrypoints/health.py). The rest (the
catch-up after a change, start-up work) runs in the event loop's default executor. On a
busy core those threads compete with the loop for CPU time: a write costs about 6 ms of Python, and
while it runs, resolutions queued behind it wait their turn. Lowering the workers' scheduling priority
lets the kernel hand the core to the loop as soon as it has work, so a write slows resolution far less;
the write itself only takes longer while resolution keeps the core busy.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import ParamSpec, TypeVar

from ..domain.errors import DomainError, Reason

log = logging.getLogger(__name__)

# Added to the process's niceness for each worker thread (Linux schedules threads, not processes).
DATABASE_WORK_NICENESS = 10
MAX_NICENESS = 19


def lower_this_thread() -> None:
    """Makes the calling thread `DATABASE_WORK_NICENESS` nicer than it is (Linux only; a no-op elsewhere,
    where niceness belongs to the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICENESS, current + DATABASE_WORK_NICENESS))
    except OSError as error:  # a sandbox may refuse it: the work still runs, at the loop's priority
        log.warning("could not lower the priority of a database worker thread", extra={"error": str(error)})


def database_executor(max_workers: int | None = None) -> ThreadPoolExecutor:
    """The event loop's default executor: asyncio's own size (CPU count + 4, at most 32), workers at a
    lower priority."""
    workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelroute-db", initializer=lower_this_thread)


# One thread: building a page is Python work, and every thread doing it competes with the event loop for
# the interpreter lock (under a flood of 16 List clients, ResolveModel's p99 was 5 times its p99 alone
# with 2 threads, under 3 times with 1). A slow query cannot hold it long: admin reads end after 10 s.
ADMIN_READ_WORKERS = 1
ADMIN_WRITE_WORKERS = 4
# Calls of a class in flight (running, or waiting for one of its threads) past which more are refused at
# once, instead of queueing until the callers' deadlines.
MAX_ADMIN_READS_IN_FLIGHT = 16
MAX_WRITES_IN_FLIGHT = 16
# Attempt reports are best effort (the client drops a batch refused): their own threads and bound, so that
# a flood of reports never delays an admin write, and the other way round.
# One thread: a batch is mostly Python, and a second thread would only contend for the interpreter lock
# with the event loop.
ATTEMPT_REPORT_WORKERS = 1
MAX_ATTEMPT_REPORTS_IN_FLIGHT = 32
# Resolution answers from memory at once; only a call waiting for a revision (`min_revision`, or this
# replica's own write) stays in flight, and this many of those are taken at most.
MAX_WAITING_RESOLUTIONS = 1000
SHED_RETRY_DELAY = timedelta(milliseconds=250)
P = ParamSpec("P")
T = TypeVar("T")


def too_many_calls(work_class: str, limit: int) -> DomainError:
    return DomainError(
        Reason.TOO_MANY_CALLS,
        f"this replica is already running {limit} {work_class}; retry shortly",
        metadata={"work_class": work_class, "limit": str(limit)},
        retry_delay=SHED_RETRY_DELAY,
    )


class CallBound:
    """At most `limit` calls of one class at once; one more is refused at once (TOO_MANY_CALLS)."""

    def __init__(self, work_class: str, limit: int) -> None:
        self.work_class, self.limit = work_class, limit
        self._lock = threading.Lock()  # released from worker threads too
        self.in_flight = 0
        self.refused = 0  # since start, for the metrics

    def acquire(self) -> None:
        with self._lock:
            if self.in_flight >= self.limit:
                self.refused += 1
                raise too_many_calls(self.work_class, self.limit)
            self.in_flight += 1

    def release(self, _: object = None) -> None:
        with self._lock:
            self.in_flight -= 1


class BoundedWork:
    """One class of database work: its own worker threads, and at most `max_in_flight` calls at once."""

    def __init__(self, work_class: str, workers: int, max_in_flight: int, *, lowered: bool = True) -> None:
        self.work_class, self.workers = work_class, workers
        self._pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix=f"modelroute-{work_class.replace(' ', '-')}",
            initializer=lower_this_thread if lowered else None,
        )
        self.bound = CallBound(work_class, max_in_flight)

    @property
    def in_flight(self) -> int:
        return self.bound.in_flight

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self.bound.acquire()
        # As asyncio.to_thread does: the work sees the calling task's context variables.
        call = functools.partial(contextvars.copy_context().run, work, *args, **kwargs)
        try:
            submitted = self._pool.submit(call)
        except BaseException:
            self.bound.release()
            raise
        # Counted until the thread is done with it (or it is dropped unstarted), even when the caller gave
        # up waiting: a call whose client went away still holds its thread until the database answers.
        submitted.add_done_callback(self.bound.release)
        return await asyncio.wrap_future(submitted)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class AdminWork:
    """Admin reads, writes and attempt reports, each class on worker threads of its own and bounded on its own."""

    def __init__(
        self,
        read_workers: int = ADMIN_READ_WORKERS,
        write_workers: int = ADMIN_WRITE_WORKERS,
        max_reads: int = MAX_ADMIN_READS_IN_FLIGHT,
        max_writes: int = MAX_WRITES_IN_FLIGHT,
        report_workers: int = ATTEMPT_REPORT_WORKERS,
        max_reports: int = MAX_ATTEMPT_REPORTS_IN_FLIGHT,
    ) -> None:
        self.reads = BoundedWork("admin reads", read_workers, max_reads)
        self.writes = BoundedWork("writes", write_workers, max_writes)
        # Not lowered: a report batch is short bursts of Python holding the interpreter lock, and a thread the
        # kernel keeps waiting while it holds the lock keeps the event loop waiting too.
        self.reports = BoundedWork("attempt reports", report_workers, max_reports, lowered=False)

    async def read(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.reads.run(work, *args, **kwargs)

    async def write(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.writes.run(work, *args, **kwargs)

    async def report(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.reports.run(work, *args, **kwargs)

    def shutdown(self) -> None:
        self.reads.shutdown()
        self.writes.shutdown()
        self.reports.shutdown()
