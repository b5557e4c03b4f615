"""Admin reads, writes and the health check do not share workers or connections: with a row lock held
from outside and a dozen writes queued on it, reads and health keep answering, and the writes end as
UNAVAILABLE DATABASE_BUSY with a retry delay once their lock timeout passes (docs/operations.md)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from modelroute.v1 import model_config_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.adapters.repositories import UnitOfWork
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.entrypoints.health import ADMIN_SERVICES, SERVING
from modelroute_server.settings import Settings

from ..conftest import PostgresForTests, RunningServer, all_roles_token, build_app, migrated_database
from ..helpers import create_model, create_provider, decode, stubs, wait_for_health

# Part of the fault suite (docs/operations.md).
pytestmark = pytest.mark.faults

WRITES = 12
LOCK_SECONDS = 10


def retry_delay(error: grpc.RpcError) -> timedelta | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta()
    return None


def test_a_held_row_lock_holds_only_the_writes_behind_it(postgres: PostgresForTests, keyring: Keyring) -> None:
    url = migrated_database(postgres)
    engine = database.create_engine(url)
    settings = Settings(database_url=url, write_lock_timeout=timedelta(seconds=2))
    app = build_app(url, keyring, settings)
    server = RunningServer(app, all_roles_token(app))
    try:
        s = stubs(server.channel)
        health = health_pb2_grpc.HealthStub(server.channel)
        for service in ("", *ADMIN_SERVICES):
            wait_for_health(server.channel, SERVING, timeout=15, service=service)
        create_provider(s, "a", api_key="sk-a")
        create_model(s, "m")
        get = model_config_pb2.GetModelConfigRequest(name="modelConfigs/m")
        original = s.models.GetModelConfig(get, timeout=5).display_name

        def update(number: int) -> grpc.RpcError | None:
            request = model_config_pb2.UpdateModelConfigRequest(
                model_config=model_config_pb2.ModelConfig(name="modelConfigs/m", display_name=f"M {number}"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
            try:
                s.models.UpdateModelConfig(request, timeout=120)
                return None
            except grpc.RpcError as error:
                return error

        holder = engine.connect()
        transaction = holder.begin()
        holder.exec_driver_sql("SELECT 1 FROM model_configs WHERE id = 'm' FOR UPDATE")
        locked_at = time.monotonic()
        with ThreadPoolExecutor(WRITES) as writers:
            outcomes = [writers.submit(update, n) for n in range(WRITES)]
            reads = 0
            # While the lock is held and the writes wait on it: reads and health answer, each well within
            # a generous deadline, again and again.
            while time.monotonic() - locked_at < LOCK_SECONDS:
                assert s.models.GetModelConfig(get, timeout=5).name == "modelConfigs/m"
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
                service = ADMIN_SERVICES[1]
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING
                reads += 1
                time.sleep(0.2)
            transaction.rollback()
            holder.close()
            errors = [o.result(timeout=120) for o in outcomes]
        assert reads >= 10
        busy = [e for e in errors if e is not None]
        assert busy, "no write ran into the lock timeout"
        for error in busy:
            decoded = decode(error)
            assert (decoded.code, decoded.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_BUSY")
            assert retry_delay(error) == timedelta(seconds=1)
            trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert trailers.get("grpc-retry-pushback-ms") == "1000"
        # Nothing of a refused write was kept, and with the lock gone the same write goes through.
        succeeded = {f"M {n}" for n, e in enumerate(errors) if e is None}
        assert s.models.GetModelConfig(get, timeout=5).display_name in succeeded | {original}
        assert update(WRITES) is None
        assert s.models.GetModelConfig(get, timeout=5).display_name == f"M {WRITES}"
    finally:
        server.stop()
        app.close()
        engine.dispose()


def test_an_admin_read_past_its_statement_timeout_ends_as_database_busy(engine: sa.Engine, keyring: Keyring) -> None:
    """So that one slow query cannot hold the admin reads' one thread for long."""
    read = UnitOfWork(engine, keyring, read_only=True, read_timeout=timedelta(milliseconds=100))
    with pytest.raises(DomainError) as raised, read as uow:
        assert uow.now is not None  # the transaction is open and answers
        uow._connection.execute(sa.text("SELECT pg_sleep(2)"))
    assert raised.value.reason is Reason.DATABASE_BUSY
    assert raised.value.retry_delay == timedelta(seconds=1)
    # The timeout was the transaction's own: the connection it returns to the pool has none.
    with engine.connect() as connection:
        assert connection.execute(sa.text("SHOW statement_timeout")).scalar_one() == "0"
