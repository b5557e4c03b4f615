"""Health per service (grpc.health.v1), as docs/operations.md describes it.

The resolver answers from its in-memory snapshot, which is loaded before the port opens, so it is
SERVING whenever this process serves, through a database outage too. The administration services
need the database: they are SERVING only while it answers with a schema this build serves. The
overall name "" follows the resolver, so that a load balancer checking it keeps every replica that
can still resolve.

The database is asked on a thread and a connection of the probe's own: a pool held by stuck writes,
or a worker pool full of them, cannot stop health from being told the truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2

from modelroute.v1 import (
    access_token_pb2,
    audit_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

from ..adapters import database

log = logging.getLogger("modelroute.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

RESOLVER_SERVICE = resolver_pb2.DESCRIPTOR.services_by_name["ResolverService"].full_name
ADMIN_SERVICES = (
    provider_config_pb2.DESCRIPTOR.services_by_name["ProviderConfigService"].full_name,
    model_config_pb2.DESCRIPTOR.services_by_name["ModelConfigService"].full_name,
    user_key_pb2.DESCRIPTOR.services_by_name["UserKeyService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    access_token_pb2.DESCRIPTOR.services_by_name["AccessTokenService"].full_name,
)
OVERALL = ""
HEALTH_NAMES = (OVERALL, RESOLVER_SERVICE, *ADMIN_SERVICES)

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 3.0  # a database slower than this to say its schema revision is not answering


def service_statuses(database_ready: bool, resolver_serving: bool = True) -> dict[str, int]:
    """What each health name reports: the resolver (and "") while this process serves, unless it has been
    cut off from the database for longer than MODELROUTE_MAX_SNAPSHOT_AGE allows; the administration
    services only while the database is ready."""
    admin = SERVING if database_ready else NOT_SERVING
    resolver = SERVING if resolver_serving else NOT_SERVING
    return {OVERALL: resolver, RESOLVER_SERVICE: resolver, **dict.fromkeys(ADMIN_SERVICES, admin)}


class DatabaseProbe:
    """Whether the database answers with the schema this build serves, asked on its own thread and
    over its own single connection, with a statement timeout; a probe that does not finish in time
    counts as not ready (and the next one waits for it, so probes never pile up)."""

    def __init__(self, url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._engine = database.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeout)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelroute-health")
        self._timeout = timeout
        self._running: Future[bool] | None = None

    def _ask(self) -> bool:
        try:
            with self._engine.connect() as connection, connection.begin():
                # SET LOCAL: the setting ends with this transaction, so it also holds through PgBouncer.
                connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(self._timeout * 1000)}")
                return database.schema_is_served(connection)
        except sa.exc.SQLAlchemyError:
            return False

    async def ready(self) -> bool:
        if self._running is None or self._running.done():
            self._running = self._executor.submit(self._ask)
        try:
            # Shielded: a probe that overruns keeps its thread, and the next probe awaits the same one.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._running)), self._timeout)
        except TimeoutError:
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._engine.dispose()


async def publish(servicer: health.aio.HealthServicer, statuses: Mapping[str, int]) -> None:
    for name, status in statuses.items():
        await servicer.set(name, status)


async def mark_not_serving(servicer: health.aio.HealthServicer) -> None:
    """The health servicer starts out SERVING: nothing is reported as serving before it is."""
    await publish(servicer, dict.fromkeys(HEALTH_NAMES, NOT_SERVING))


async def watch_health(
    servicer: health.aio.HealthServicer,
    probe: DatabaseProbe,
    resolver_serving: Callable[[], bool] = lambda: True,
) -> None:
    """Publishes each name's status now (the administration services not yet ready: the database has
    not been asked), then again whenever the database's readiness or the resolver's state changes."""
    last = (False, resolver_serving())
    await publish(servicer, service_statuses(*last))
    while True:
        now = (await probe.ready(), resolver_serving())
        if now != last:
            await publish(servicer, service_statuses(*now))
            log.info("health changed", extra={"database_ready": now[0], "resolver_serving": now[1]})
            last = now
        await asyncio.sleep(PROBE_INTERVAL_SECONDS)
