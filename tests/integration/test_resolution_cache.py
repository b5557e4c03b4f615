"""SPEC trap 9 and section 7: steady-state resolution does no database round trip."""

from __future__ import annotations

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import common_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.entrypoints.server import Application

from ..helpers import create_model, create_provider, policy, stubs


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

    sa.event.listen(app.ctx.engine, "before_cursor_execute", record)
    try:
        for i in range(200):
            answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user=f"u{i % 2}"))
            assert answer.selected.key_source in (common_pb2.KEY_SOURCE_USER, common_pb2.KEY_SOURCE_STORED)
        s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user="u1"))
        s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m", user="u1"))
    finally:
        sa.event.remove(app.ctx.engine, "before_cursor_execute", record)
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
