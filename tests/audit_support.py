"""Shared by the audit log tests: the stubs they call, the calls that change state, and readers of events.

The keys used here are fake but distinctive; assertions look for them without ever printing them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2

from modelroute.v1 import (
    access_token_pb2,
    access_token_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

from .helpers import Stubs, create_model, create_provider, policy, stubs

TIMEOUT = 30  # seconds, for every call: generous, a slow machine must not fail a test
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED
CENTRAL_KEY = "sk-audit-central-4b1e9d"
OTHER_KEY = "sk-audit-other-7c2a5f"
USER_KEY = "uk-audit-user-3e8b0d"
USER_KEY_2 = "uk-audit-user-second-9a4c6e"
BYOK = policy(True, True, True)  # central key, user keys allowed, central fallback


# ---------------------------------------------------------------- access to the server


@dataclass(frozen=True)
class Api:
    """Every stub a test calls, on the all-roles channel, and the database behind them."""

    channel: grpc.Channel
    s: Stubs
    tokens: access_token_pb2_grpc.AccessTokenServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    engine: sa.Engine


def make_api(channel: grpc.Channel, engine: sa.Engine) -> Api:
    return Api(
        channel,
        stubs(channel),
        access_token_pb2_grpc.AccessTokenServiceStub(channel),
        audit_pb2_grpc.AuditServiceStub(channel),
        engine,
    )


def pc(provider_id: str) -> str:
    return f"providerConfigs/{provider_id}"


def mc(model_id: str) -> str:
    return f"modelConfigs/{model_id}"


def fresh_token_id(prefix: str = "audit") -> str:
    """Access tokens outlive each test (and revoked names stay reserved): every test takes new names."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def etag_revision(etag: str) -> int:
    """An etag is the quoted revision its resource was last written at."""
    return int(etag.strip('"'))


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def list_events(api: Api, audit_filter: str = "") -> list[audit_pb2.AuditEvent]:
    """Every matching event, newest first (one page: no test writes 200)."""
    page = api.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(filter=audit_filter, page_size=200), timeout=TIMEOUT
    )
    assert not page.next_page_token
    return list(page.audit_events)


def names(events: Iterable[audit_pb2.AuditEvent]) -> list[str]:
    return [e.name for e in events]


def revisions(api: Api) -> tuple[int, int]:
    """The config revision as resolution reports it, and as the database's counter holds it."""
    reported = api.s.resolver.ListAvailableModels(
        resolver_pb2.ListAvailableModelsRequest(), timeout=TIMEOUT
    ).config_revision
    with api.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT revision FROM config_revision")).scalar_one()
    return reported, stored


def state(api: Api) -> dict[str, str]:
    """What a read shows of every resource's version: etags of providers and models (deleted ones too)
    and the revocation of every token."""
    providers = api.s.providers.ListProviderConfigs(
        provider_config_pb2.ListProviderConfigsRequest(page_size=200), timeout=TIMEOUT
    )
    models = api.s.models.ListModelConfigs(
        model_config_pb2.ListModelConfigsRequest(page_size=200, show_deleted=True), timeout=TIMEOUT
    )
    tokens = api.tokens.ListAccessTokens(access_token_pb2.ListAccessTokensRequest(page_size=200), timeout=TIMEOUT)
    seen = {p.name: p.etag for p in providers.provider_configs}
    seen.update({m.name: m.etag for m in models.model_configs})
    seen.update({t.name: t.revoke_time.ToJsonString() for t in tokens.access_tokens})
    return seen


def plain(value: struct_pb2.Value, present: bool) -> Any:
    """A FieldChange side as a Python value; None when absent."""
    return json_format.MessageToDict(value) if present else None


def changes(event: audit_pb2.AuditEvent) -> dict[str, tuple[Any, Any]]:
    """An event's field changes as {field: (before, after)}; each field appears once."""
    fields = [c.field for c in event.changes]
    assert len(fields) == len(set(fields)), f"a field listed twice: {fields}"
    return {
        c.field: (plain(c.before, c.HasField("before")), plain(c.after, c.HasField("after"))) for c in event.changes
    }


def event_time(event: audit_pb2.AuditEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


# ---------------------------------------------------------------- calls


def add_provider(api: Api, provider_id: str = "p", **fields: Any) -> provider_config_pb2.ProviderConfig:
    return create_provider(api.s, provider_id, api_key=fields.pop("api_key", CENTRAL_KEY), **fields)


def add_model(api: Api, model_id: str = "m", provider_id: str = "p", **fields: Any) -> model_config_pb2.ModelConfig:
    return create_model(api.s, model_id, providers=(provider_id,), **fields)


def update_provider(api: Api, provider_id: str, paths: tuple[str, ...], **fields: Any) -> Any:
    message = provider_config_pb2.ProviderConfig(name=pc(provider_id), **fields)
    request = provider_config_pb2.UpdateProviderConfigRequest(provider_config=message, update_mask=mask(*paths))
    return api.s.providers.UpdateProviderConfig(request, timeout=TIMEOUT)


def update_model(api: Api, model_id: str, paths: tuple[str, ...], **fields: Any) -> Any:
    message = model_config_pb2.ModelConfig(name=mc(model_id), **fields)
    request = model_config_pb2.UpdateModelConfigRequest(model_config=message, update_mask=mask(*paths))
    return api.s.models.UpdateModelConfig(request, timeout=TIMEOUT)


def delete_provider(api: Api, provider_id: str, etag: str = "", force: bool = False) -> Any:
    request = provider_config_pb2.DeleteProviderConfigRequest(name=pc(provider_id), etag=etag, force=force)
    return api.s.providers.DeleteProviderConfig(request, timeout=TIMEOUT)


def delete_model(api: Api, model_id: str, etag: str = "") -> Any:
    request = model_config_pb2.DeleteModelConfigRequest(name=mc(model_id), etag=etag)
    return api.s.models.DeleteModelConfig(request, timeout=TIMEOUT)


def undelete_model(api: Api, model_id: str, etag: str = "") -> Any:
    request = model_config_pb2.UndeleteModelConfigRequest(name=mc(model_id), etag=etag)
    return api.s.models.UndeleteModelConfig(request, timeout=TIMEOUT)


def set_key(api: Api, user: str, provider_id: str, api_key: str) -> Any:
    request = user_key_pb2.SetUserProviderKeyRequest(user=user, provider_config=pc(provider_id), api_key=api_key)
    return api.s.user_keys.SetUserProviderKey(request, timeout=TIMEOUT)


def delete_key(api: Api, user: str, provider_id: str) -> Any:
    request = user_key_pb2.DeleteUserProviderKeyRequest(user=user, provider_config=pc(provider_id))
    return api.s.user_keys.DeleteUserProviderKey(request, timeout=TIMEOUT)


def create_token(
    api: Api, token_id: str, *roles: access_token_pb2.Role.ValueType, ttl_seconds: int = 0
) -> access_token_pb2.CreateAccessTokenResponse:
    token = access_token_pb2.AccessToken(roles=list(roles or (access_token_pb2.ROLE_READER,)))
    if ttl_seconds:
        token.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
    request = access_token_pb2.CreateAccessTokenRequest(access_token_id=token_id, access_token=token)
    return api.tokens.CreateAccessToken(request, timeout=TIMEOUT)


def revoke_token(api: Api, token_id: str) -> access_token_pb2.AccessToken:
    request = access_token_pb2.RevokeAccessTokenRequest(name=f"accessTokens/{token_id}")
    return api.tokens.RevokeAccessToken(request, timeout=TIMEOUT)


def stale_provider_etag(api: Api) -> str:
    """Provider `p`'s etag from before a later write: stale."""
    old = add_provider(api).etag
    update_provider(api, "p", ("display_name",), display_name="Moved On")
    return old


def stale_model_etag(api: Api) -> str:
    """Model `m`'s etag from before a later write: stale."""
    add_provider(api)
    old = add_model(api).etag
    update_model(api, "m", ("display_name",), display_name="Moved On")
    return old


def provider_and_model(api: Api) -> None:
    add_provider(api)
    add_model(api)


def provider_and_deleted_model(api: Api) -> None:
    provider_and_model(api)
    delete_model(api, "m")


def byok_provider(api: Api) -> None:
    add_provider(api, credential_policy=BYOK)


def byok_provider_with_key(api: Api) -> None:
    byok_provider(api)
    set_key(api, "alice", "p", USER_KEY)


def everything_attached(api: Api) -> None:
    """Provider `p` (with a user key) serving model `m` alone: a forced delete cascades."""
    byok_provider_with_key(api)
    add_model(api)


def nothing(api: Api) -> None:
    return None


def new_token(api: Api) -> str:
    token_id = fresh_token_id()
    create_token(api, token_id)
    return token_id


def revoked_token(api: Api) -> str:
    token_id = new_token(api)
    revoke_token(api, token_id)
    return token_id
