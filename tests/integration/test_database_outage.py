"""With PostgreSQL gone, resolution answers from the last snapshot and its health stays SERVING
(so does the overall name), writes are UNAVAILABLE and the administration services' health says
NOT_SERVING, and everything recovers by itself when it returns (docs/operations.md, "Health").
Part of the fault suite (marker `faults`)."""

from __future__ import annotations

import time
from datetime import timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute.v1 import provider_config_pb2, resolver_pb2
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.entrypoints.health import ADMIN_SERVICES, NOT_SERVING, RESOLVER_SERVICE, SERVING
from modelroute_server.settings import Settings

from ..conftest import OwnPostgres, RunningServer, all_roles_token, build_app, wait_for
from ..helpers import call_error, create_model, create_provider, provider_request, stubs

# Part of the fault suite (docs/operations.md).
pytestmark = pytest.mark.faults


def test_outage_and_recovery(own_postgres: OwnPostgres, keyring: Keyring) -> None:
    app = build_app(own_postgres.url, keyring)
    app.start_listener(retry_seconds=0.2)
    server = RunningServer(app, all_roles_token(app))
    try:
        s = stubs(server.channel)
        health = health_pb2_grpc.HealthStub(server.channel)

        def status(service: str) -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)

        def statuses() -> dict[str, int]:
            return {service: status(service) for service in ("", RESOLVER_SERVICE, *ADMIN_SERVICES)}

        def all_serving() -> bool:
            return set(statuses().values()) == {SERVING}

        wait_for(all_serving)
        create_provider(s, "a", api_key="sk-before")
        create_model(s, "m")
        before = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))

        own_postgres.stop()
        during = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
        assert during == before
        error = call_error(s.providers.CreateProviderConfig, provider_request("b"))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        # Attempt reports are best effort: refused quickly, never queued.
        attempt = resolver_pb2.AttemptReport(
            provider_config="providerConfigs/a", model="gpt-4.1", outcome=resolver_pb2.ATTEMPT_OUTCOME_SERVER_ERROR
        )
        error = call_error(s.resolver.ReportAttempts, resolver_pb2.ReportAttemptsRequest(attempts=[attempt]))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        wait_for(lambda: status(ADMIN_SERVICES[0]) == NOT_SERVING)
        outage = statuses()
        assert outage == {"": SERVING, RESOLVER_SERVICE: SERVING, **dict.fromkeys(ADMIN_SERVICES, NOT_SERVING)}
        assert s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")) == before
        # Even when this replica knows of a write its snapshot lacks, it keeps answering (quickly).
        app.snapshots.committed(before.config_revision + 1)
        started = time.monotonic()
        for _ in range(20):
            assert s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")) == before
        assert time.monotonic() - started < 5

        own_postgres.start()
        wait_for(all_serving)
        wait_for(lambda: app.listener is not None and app.listener.connected.is_set())
        create_provider(s, "b", api_key="sk-after")
        after = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
        assert after.config_revision > before.config_revision
        assert after.selected.api_key == "sk-before"
        # The acknowledged writes from before the outage are all there.
        names = [
            p.name
            for p in s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()).provider_configs
        ]
        assert names == ["providerConfigs/a", "providerConfigs/b"]
    finally:
        server.stop()
        app.close()


def test_a_max_snapshot_age_stops_a_replica_cut_off_for_longer(own_postgres: OwnPostgres, keyring: Keyring) -> None:
    """Opt-in: past MODELROUTE_MAX_SNAPSHOT_AGE without its database, a replica stops resolving and says so in
    its health; it serves again by itself once the database is back."""
    settings = Settings(database_url=own_postgres.url, max_snapshot_age=timedelta(seconds=2))
    app = build_app(own_postgres.url, keyring, settings)
    app.start_listener(retry_seconds=0.2)
    server = RunningServer(app, all_roles_token(app))
    try:
        s = stubs(server.channel)
        health = health_pb2_grpc.HealthStub(server.channel)

        def resolver_status() -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=RESOLVER_SERVICE), timeout=10).status)

        wait_for(lambda: resolver_status() == SERVING)
        create_provider(s, "a", api_key="sk-before")
        create_model(s, "m")
        request = resolver_pb2.ResolveModelRequest(model="m")
        before = s.resolver.ResolveModel(request)

        own_postgres.stop()
        # Within the age it still answers from its snapshot; past it (the listener notices the loss at
        # once), it refuses, and its health follows.
        assert s.resolver.ResolveModel(request) == before
        wait_for(lambda: resolver_status() == NOT_SERVING, seconds=30)
        assert int(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status) == NOT_SERVING
        error = call_error(s.resolver.ResolveModel, request)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "CONFIGURATION_STALE")
        assert "MODELROUTE_MAX_SNAPSHOT_AGE" in error.message

        own_postgres.start()
        wait_for(lambda: resolver_status() == SERVING, seconds=30)
        assert s.resolver.ResolveModel(request).selected == before.selected
    finally:
        server.stop()
        app.close()
