"""The fault suite (marker `faults`; docs/operations.md, "Health"): PostgreSQL killed with SIGKILL, every
one of its processes, while several clients resolve and one writes. Nothing a client saw fails: every
resolution is answered, every acknowledged write is there after recovery, ResolverService (and the
overall name) stays SERVING throughout, and the administration services say NOT_SERVING while the
database is gone and SERVING again once it is back. The database is this test's own, never the
machine's."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute.credentials import authenticated
from modelroute.v1 import provider_config_pb2, resolver_pb2
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.entrypoints.health import ADMIN_SERVICES, NOT_SERVING, RESOLVER_SERVICE, SERVING

from ..conftest import OwnPostgres, RunningServer, all_roles_token, build_app, wait_for
from ..helpers import create_model, create_provider, provider_request, stubs

pytestmark = pytest.mark.faults

RESOLVING_CLIENTS = 4


def test_postgres_killed_under_resolve_load(own_postgres: OwnPostgres, keyring: Keyring) -> None:
    app = build_app(own_postgres.url, keyring)
    app.start_listener(retry_seconds=0.2)
    server = RunningServer(app, all_roles_token(app))
    stop = threading.Event()
    failures: list[str] = []
    resolved = [0] * RESOLVING_CLIENTS
    health_seen: dict[str, set[int]] = {RESOLVER_SERVICE: set(), "": set(), ADMIN_SERVICES[0]: set()}
    acknowledged: list[str] = []
    try:
        s = stubs(server.channel)
        health = health_pb2_grpc.HealthStub(server.channel)

        def status(service: str) -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)

        wait_for(lambda: {status(n) for n in ("", RESOLVER_SERVICE, *ADMIN_SERVICES)} == {SERVING})
        create_provider(s, "a", api_key="sk-faults")
        create_model(s, "m", providers=("a",))

        token = all_roles_token(app)

        def resolve(client: int) -> None:
            # A client of its own: a channel (a connection) per resolving client.
            channel = authenticated(grpc.insecure_channel(server.address), token)
            resolver = stubs(channel).resolver
            try:
                while not stop.is_set():
                    try:
                        answer = resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"), timeout=10)
                        assert answer.selected.provider_config == "providerConfigs/a"
                        resolved[client] += 1
                    except (grpc.RpcError, AssertionError) as error:
                        failures.append(f"client {client}: {error!r}"[:300])
            finally:
                channel.close()

        def write() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                provider_id = f"w{number}"
                try:
                    s.providers.CreateProviderConfig(provider_request(provider_id), timeout=10)
                except grpc.RpcError:
                    time.sleep(0.05)  # the outage: this one was not acknowledged
                    continue
                acknowledged.append(provider_id)

        def watch_health() -> None:
            while not stop.is_set():
                for service, seen in health_seen.items():
                    seen.add(status(service))
                time.sleep(0.05)

        threads = [threading.Thread(target=resolve, args=(c,)) for c in range(RESOLVING_CLIENTS)]
        threads += [threading.Thread(target=write), threading.Thread(target=watch_health)]
        for thread in threads:
            thread.start()
        wait_for(lambda: min(resolved) > 20 and len(acknowledged) > 3)

        own_postgres.kill()
        during = sum(resolved)
        wait_for(lambda: status(ADMIN_SERVICES[0]) == NOT_SERVING)
        wait_for(lambda: sum(resolved) > during + 100)  # resolution goes on with the database gone
        outage = {service: status(service) for service in ("", RESOLVER_SERVICE, *ADMIN_SERVICES)}
        assert outage == {"": SERVING, RESOLVER_SERVICE: SERVING, **dict.fromkeys(ADMIN_SERVICES, NOT_SERVING)}

        own_postgres.start()
        wait_for(lambda: {status(n) for n in ("", RESOLVER_SERVICE, *ADMIN_SERVICES)} == {SERVING}, 60)
        after_recovery = len(acknowledged)
        wait_for(lambda: len(acknowledged) > after_recovery + 3, 30)  # writes work again
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        stop.set()
        server.stop()
        app.close()

    assert failures == []
    assert health_seen[RESOLVER_SERVICE] == {SERVING} and health_seen[""] == {SERVING}
    assert health_seen[ADMIN_SERVICES[0]] == {SERVING, NOT_SERVING}
    # Every acknowledged write survived the crash (a new replica on the recovered database reads it).
    replica = build_app(own_postgres.url, keyring)
    check = RunningServer(replica, all_roles_token(replica))
    try:
        names: set[str] = set()
        token = ""
        while True:
            page = stubs(check.channel).providers.ListProviderConfigs(
                provider_config_pb2.ListProviderConfigsRequest(page_size=1000, page_token=token)
            )
            names |= {p.name for p in page.provider_configs}
            token = page.next_page_token
            if not token:
                break
        assert {f"providerConfigs/{p}" for p in acknowledged} <= names
    finally:
        check.stop()
        replica.close()
