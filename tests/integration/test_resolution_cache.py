"""Guarantee 9 (docs/behaviour.md) and docs/architecture.md: steady-state resolution does no database round trip."""

from __future__ import annotations

import time

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import common_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.entrypoints.server import Application

from ..helpers import call_error, create_model, create_provider, policy, stubs


def is_health_check(statement: str) -> bool:
    """The health watcher's schema check (alembic reads pg_catalog, then alembic_version) runs on a timer."""
    return "alembic_version" in statement or "pg_catalog" in statement


def test_steady_state_resolution_runs_no_sql(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", credential_policy=policy(True, True, True))
    create_model(s, "m")
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="u1", provider_config="providerConfigs/a", api_key="uk-1")
    )
    s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))  # loads the snapshot
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not is_health_check(statement):
            statements.append(statement)

    sa.event.listen(app.engine, "before_cursor_execute", record)
    try:
        for i in range(200):
            answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user=f"u{i % 2}"))
            assert answer.selected.key_source in (common_pb2.KEY_SOURCE_USER, common_pb2.KEY_SOURCE_STORED)
        s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user="u1"))
        s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m", user="u1"))
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", record)
    assert statements == []


def test_a_write_is_seen_by_the_next_resolution(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-old")
    create_model(s, "m")
    first = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
    assert first.selected.api_key == "sk-old"
    updated = s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/a", api_key="sk-new"),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    assert updated.has_api_key
    second = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
    assert second.selected.api_key == "sk-new"
    assert second.config_revision > first.config_revision


def _recorded_statements(app: Application) -> tuple[list[str], object]:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not is_health_check(statement):
            statements.append(statement)

    sa.event.listen(app.engine, "before_cursor_execute", record)
    return statements, record


def test_a_reconnect_without_changes_costs_one_position_read(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a")
    create_model(s, "m")
    snapshot = app.snapshots.current()
    statements, record = _recorded_statements(app)
    try:
        app.snapshots.changed(None)  # what the listener says after a reconnect
        assert app.snapshots.fresh() is snapshot  # answered at once; the catch-up runs in the background
        deadline = time.monotonic() + 5
        while not any("config_revision" in st for st in statements):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", record)
    assert app.snapshots.current() is snapshot
    assert [st for st in statements if not st.startswith("SET LOCAL")] == [
        st for st in statements if "FROM config_revision" in st
    ]
    assert len([st for st in statements if "FROM config_revision" in st]) == 1


def test_another_replicas_write_is_applied_from_the_change_log(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-old")
    create_model(s, "m")
    before = app.snapshots.current()
    loads = app.snapshots.statistics.full_loads
    # Another replica's write, or a hand edit in psql: the database's triggers log it and announce it.
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_configs SET enabled = false"))
        sequence = conn.execute(sa.text("SELECT current_setting('modelroute.change_sequence')")).scalar_one()
    statements, record = _recorded_statements(app)
    try:
        app.snapshots.changed(int(sequence))
        assert app.snapshots.fresh() is before  # never blocks a caller for someone else's write
        deadline = time.monotonic() + 5
        while (app.snapshots.fresh() or before).sequence < int(sequence):
            assert time.monotonic() < deadline, "the announced write was never applied"
            time.sleep(0.01)
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", record)
    answer = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m"))
    assert [kind for kind, _, _ in answer.precondition_violations] == ["PROVIDER_DISABLED"]
    assert app.snapshots.statistics.full_loads == loads
    assert not any("FROM model_configs" in st or "FROM user_provider_keys" in st for st in statements)


def test_a_user_key_change_rereads_that_users_keys_only(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", credential_policy=policy(True, True, True), api_key="sk-central")
    create_model(s, "m")
    before = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u1"))
    assert before.selected.key_source == common_pb2.KEY_SOURCE_STORED
    loads = app.snapshots.statistics.full_loads
    statements, record = _recorded_statements(app)
    try:
        for key in ("uk-1", "uk-2"):
            s.user_keys.SetUserProviderKey(
                user_key_pb2.SetUserProviderKeyRequest(user="u1", provider_config="providerConfigs/a", api_key=key)
            )
            after = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u1"))
            assert (after.selected.key_source, after.selected.api_key == key) == (common_pb2.KEY_SOURCE_USER, True)
        s.user_keys.DeleteUserProviderKey(
            user_key_pb2.DeleteUserProviderKeyRequest(user="u1", provider_config="providerConfigs/a")
        )
        gone = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u1"))
        assert gone.selected.key_source == common_pb2.KEY_SOURCE_STORED
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", record)
    assert app.snapshots.statistics.full_loads == loads
    assert not any("FROM model_configs" in st for st in statements)
    assert all("ANY" in st for st in statements if "FROM user_provider_keys" in st and "GROUP BY" in st)


def test_a_config_change_between_user_key_changes_is_applied_too(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", credential_policy=policy(True, True, True), api_key="sk-central")
    create_model(s, "m")
    s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u1"))
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="u1", provider_config="providerConfigs/a", api_key="uk-1")
    )
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/a", enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="u1"))
    assert [kind for kind, _, _ in error.precondition_violations] == ["PROVIDER_DISABLED"]


def test_a_kept_answer_is_given_only_to_the_same_valid_request(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", credential_policy=policy(True, True, True), api_key="sk-central")
    create_model(s, "m")
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="u1", provider_config="providerConfigs/a", api_key="uk-1")
    )
    asked = resolver_pb2.ResolveModelRequest(model="m", user="u1")
    first, again = s.resolver.ResolveModel(asked), s.resolver.ResolveModel(asked)
    assert first == again and again.selected.api_key == "uk-1"
    negative = call_error(
        s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="u1", min_revision=-1)
    )
    assert negative.code == grpc.StatusCode.INVALID_ARGUMENT
    other = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u2"))
    assert other.selected.key_source == common_pb2.KEY_SOURCE_STORED
    ahead = call_error(
        s.resolver.ResolveModel,
        resolver_pb2.ResolveModelRequest(model="m", user="u1", min_revision=first.config_revision + 1),
    )
    assert ahead.reason == "REVISION_NOT_REACHED"
