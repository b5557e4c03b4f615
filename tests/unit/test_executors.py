"""Database work runs in threads below the event loop's scheduling priority."""

from __future__ import annotations

import os
import threading

import pytest

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
