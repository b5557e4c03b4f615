"""The database probe behind the administration services' health: its own thread and connection, a
statement timeout, and a bounded answer whatever holds the database or the worker pool."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from modelroute_server.adapters import database
from modelroute_server.entrypoints.health import DatabaseProbe

from ..conftest import PostgresForTests, migrated_database


def ask(probe: DatabaseProbe) -> tuple[bool, float]:
    async def timed() -> tuple[bool, float]:
        started = time.monotonic()
        return await probe.ready(), time.monotonic() - started

    return asyncio.run(timed())


def test_ready_on_a_migrated_database_and_not_on_an_empty_one(postgres: PostgresForTests) -> None:
    for url, expected in ((migrated_database(postgres), True), (postgres.create_database(), False)):
        probe = DatabaseProbe(url, timeout=5)
        try:
            assert ask(probe)[0] is expected
        finally:
            probe.close()


def test_a_locked_schema_table_is_not_ready_within_the_timeout(postgres: PostgresForTests) -> None:
    url = migrated_database(postgres)
    probe = DatabaseProbe(url, timeout=1)
    try:
        holder = database.create_engine(url)
        with holder.connect() as connection, connection.begin():
            connection.exec_driver_sql("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
            ready, seconds = ask(probe)
            assert not ready
            assert seconds < 10  # generous: the probe gives up after about 1 s
        holder.dispose()
        # The lock is gone (the holder's transaction ended): the probe reports ready again.
        deadline = time.monotonic() + 30
        while not ask(probe)[0]:
            assert time.monotonic() < deadline, "the probe did not recover after the lock was released"
            time.sleep(0.2)
    finally:
        probe.close()


def test_a_full_worker_pool_does_not_hold_the_probe(postgres: PostgresForTests) -> None:
    url = migrated_database(postgres)
    probe = DatabaseProbe(url, timeout=5)
    release = threading.Event()

    async def with_the_default_pool_stuck() -> bool:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        stuck = [loop.run_in_executor(None, release.wait, 60) for _ in range(8)]
        try:
            return await asyncio.wait_for(probe.ready(), 30)
        finally:
            release.set()
            await asyncio.gather(*stuck)

    try:
        assert asyncio.run(with_the_default_pool_stuck()) is True
    finally:
        probe.close()
