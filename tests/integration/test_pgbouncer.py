"""The service with its connection pool behind PgBouncer in transaction pooling mode.

Two replicas pool through a private pgbouncer; their change listeners (LISTEN/NOTIFY, which transaction
pooling cannot carry) connect directly. Writes on either replica reach the other one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import TypeVar

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy.engine import make_url

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.settings import Settings

from ..conftest import PostgresForTests, RunningServer, all_roles_token, build_app
from ..helpers import Stubs, create_model, create_provider, policy, stubs
from ..pgbouncer_support import DEFAULT_POOL_SIZE, PgBouncer, running_pgbouncer

# Generous: a replica learns of another's write through NOTIFY, usually in milliseconds.
PROPAGATION_SECONDS = 30.0
T = TypeVar("T")


@pytest.fixture
def pgbouncer(postgres: PostgresForTests) -> Iterator[PgBouncer]:
    with running_pgbouncer(postgres.base_url) as bouncer:
        yield bouncer


def database_name(url: str) -> str:
    name = make_url(database.sqlalchemy_url(url)).database
    assert name
    return name


def eventually(probe: Callable[[], T | None], accept: Callable[[T], bool], what: str) -> T:
    """Calls `probe` until `accept` takes its answer (None: no answer yet); fails saying `what` never happened."""
    deadline = time.monotonic() + PROPAGATION_SECONDS
    while True:
        answer = probe()
        if answer is not None and accept(answer):
            return answer
        assert time.monotonic() < deadline, f"{what} within {PROPAGATION_SECONDS}s; last answer: {answer}"
        time.sleep(0.05)


def serve_replica(stack: ExitStack, url: str, keyring: Keyring, settings: Settings) -> RunningServer:
    """A replica with its change listener, served until `stack` closes."""
    replica = build_app(url, keyring, settings)
    stack.callback(replica.close)
    listener = replica.start_listener()
    assert listener.connected.wait(10), "the change listener never connected"
    server = RunningServer(replica, all_roles_token(replica))
    stack.callback(server.stop)
    return server


def resolve(s: Stubs, user: str = "") -> resolver_pb2.ResolveModelResponse:
    answer: resolver_pb2.ResolveModelResponse = s.resolver.ResolveModel(
        resolver_pb2.ResolveModelRequest(model="m", user=user)
    )
    return answer


def resolve_once_known(s: Stubs) -> resolver_pb2.ResolveModelResponse | None:
    """None while the replica has not learnt of the model yet."""
    try:
        return resolve(s)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


def test_pgbouncer_runs_many_clients_transactions_on_a_few_server_connections(
    pgbouncer: PgBouncer, fresh_database_url: str
) -> None:
    """The fixture itself: more clients than server connections, each transaction on whichever is free."""
    url = database.libpq_url(pgbouncer.url_for(fresh_database_url))
    name = database_name(fresh_database_url)
    rounds = 10
    # prepare_threshold=None: a statement prepared on one server connection is unknown on the next.
    clients = [psycopg.connect(url, prepare_threshold=None, connect_timeout=5) for _ in range(3 * DEFAULT_POOL_SIZE)]
    try:
        backends = set()
        for round_number in range(rounds):
            for client in clients:
                row = client.execute("SELECT %s::int, pg_backend_pid()", (round_number,)).fetchone()
                client.commit()
                assert row is not None and row[0] == round_number
                backends.add(row[1])
        assert pgbouncer.pool(name)["pool_mode"] == "transaction"
        assert pgbouncer.server_connections(name) <= DEFAULT_POOL_SIZE
    finally:
        for client in clients:
            client.close()
    assert len(backends) <= DEFAULT_POOL_SIZE < len(clients), backends
    totals = pgbouncer.totals(name)
    assert totals.xacts >= rounds * len(clients)
    assert totals.queries >= rounds * len(clients)


def test_two_replicas_pool_through_pgbouncer_and_listen_directly(
    pgbouncer: PgBouncer, postgres: PostgresForTests, keyring: Keyring
) -> None:
    direct_url = postgres.create_database()
    engine = database.create_engine(direct_url)
    database.upgrade(engine)  # directly, as an operator migrates before rolling out replicas
    engine.dispose()
    bouncer_url = pgbouncer.url_for(direct_url)
    name = database_name(direct_url)
    before = pgbouncer.totals(name)
    settings = Settings(database_url=bouncer_url, listen_database_url=direct_url)

    with ExitStack() as stack:
        first = serve_replica(stack, bouncer_url, keyring, settings)
        second = serve_replica(stack, bouncer_url, keyring, settings)
        one, two = stubs(first.channel), stubs(second.channel)

        create_provider(one, "a", api_key="sk-pgbouncer-a")
        create_provider(one, "b", api_key="sk-pgbouncer-b", credential_policy=policy(True, True, True))
        create_model(one, "m", providers=("a", "b"))
        for s, replica in ((one, "first"), (two, "second")):
            eventually(
                partial(resolve_once_known, s),
                lambda answer: answer.selected.provider_config == "providerConfigs/a",
                f"the {replica} replica resolved the new model to providerConfigs/a",
            )

        # A change on the first replica reaches the second through its (direct) listener.
        one.providers.UpdateProviderConfig(
            provider_config_pb2.UpdateProviderConfigRequest(
                provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/a", enabled=False),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
            )
        )
        one.models.UpdateModelConfig(
            model_config_pb2.UpdateModelConfigRequest(
                model_config=model_config_pb2.ModelConfig(name="modelConfigs/m", display_name="Behind PgBouncer"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
        answer = eventually(
            lambda: resolve(two),
            lambda answer: answer.selected.provider_config == "providerConfigs/b",
            "the second replica stopped routing to the provider disabled on the first",
        )
        assert answer.selected.api_key == "sk-pgbouncer-b"
        model = two.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"))
        assert model.display_name == "Behind PgBouncer"
        assert [(a.provider_config, a.enabled) for a in model.attachments] == [
            ("providerConfigs/a", False),
            ("providerConfigs/b", True),
        ]

        # A user key set on the second replica serves on the first.
        assert resolve(one, "u").selected.key_source == common_pb2.KEY_SOURCE_STORED
        two.user_keys.SetUserProviderKey(
            user_key_pb2.SetUserProviderKeyRequest(user="u", provider_config="providerConfigs/b", api_key="uk-u")
        )
        answer = eventually(
            lambda: resolve(one, "u"),
            lambda answer: answer.selected.key_source == common_pb2.KEY_SOURCE_USER,
            "the first replica served the user key set on the second",
        )
        assert answer.selected.api_key == "uk-u"
        assert resolve(one, "v").selected.key_source == common_pb2.KEY_SOURCE_STORED

        # pgbouncer carried the pools' traffic, in transaction mode, on at most its pool's server connections.
        after = pgbouncer.totals(name)
        assert after.xacts > before.xacts, (before, after)
        assert after.queries > before.queries, (before, after)
        assert pgbouncer.pool(name)["pool_mode"] == "transaction"
        assert pgbouncer.server_connections(name) <= DEFAULT_POOL_SIZE
