"""The threads that run database work, below the event loop in the operating system's eyes.

Resolution answers from memory on the event loop; everything that talks to the database (admin reads
and writes, the catch-up a write does before it answers, health probes) runs in worker threads. On a
busy core those threads compete with the loop for CPU time: a write costs about 6 ms of Python, and
while it runs, resolutions queued behind it wait their turn. Lowering the workers' scheduling priority
lets the kernel hand the core to the loop as soon as it has work, so a write slows resolution far less;
the write itself only takes longer while resolution keeps the core busy.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

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
