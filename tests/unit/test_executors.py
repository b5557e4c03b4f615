"""Database work runs in threads below the event loop's scheduling priority, bounded per class."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from modelroute_server.domain.errors import DomainError, ErrorCode, Reason
from modelroute_server.entrypoints import executors


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_database_workers_run_nicer_than_the_thread_that_made_them() -> None:
    mine = _niceness()
    with executors.database_executor(2) as pool:
        theirs = {pool.submit(_niceness).result() for _ in range(4)}
    assert theirs == {min(executors.MAX_NICENESS, mine + executors.DATABASE_WORK_NICENESS)}
    assert _niceness() == mine  # only the workers changed


def test_a_refused_change_leaves_the_work_running(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError("not allowed here")

    monkeypatch.setattr(os, "setpriority", refuse)
    with executors.database_executor(1) as pool:
        assert pool.submit(lambda: 42).result() == 42


def test_bounded_work_refuses_past_its_bound_at_once_and_counts_until_the_thread_is_done() -> None:
    work = executors.BoundedWork("admin reads", workers=1, max_in_flight=2)
    release = threading.Event()

    async def scenario() -> None:
        first = asyncio.ensure_future(work.run(release.wait, 30))
        second = asyncio.ensure_future(work.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        assert work.in_flight == 2
        with pytest.raises(DomainError) as refused:
            await work.run(lambda: "one too many")
        error = refused.value
        assert (error.reason, error.code) == (Reason.TOO_MANY_CALLS, ErrorCode.RESOURCE_EXHAUSTED)
        assert error.retry_delay == executors.SHED_RETRY_DELAY
        assert error.metadata == {"work_class": "admin reads", "limit": "2"}
        # A caller that stops waiting frees its place only once its thread is done with the work.
        first.cancel()
        await asyncio.sleep(0.05)
        assert work.in_flight == 2
        release.set()
        assert await second == "queued"
        assert work.in_flight == 0
        assert await work.run(lambda: "room again") == "room again"

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        work.shutdown()


def test_bounded_work_releases_its_place_when_the_work_fails() -> None:
    work = executors.BoundedWork("writes", workers=1, max_in_flight=1)

    def fail() -> None:
        raise ValueError("boom")

    async def scenario() -> None:
        for _ in range(3):  # would be refused from the second on if a failure kept its place
            with pytest.raises(ValueError):
                await work.run(fail)
        assert work.in_flight == 0

    try:
        asyncio.run(scenario())
    finally:
        work.shutdown()
