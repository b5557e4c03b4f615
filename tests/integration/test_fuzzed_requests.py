"""Property: whatever a client sends, the answer is a success or a structured client error, never
INTERNAL or UNKNOWN (docs/behaviour.md, "Errors"). Random requests go through the real server and database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelroute.v1 import (
    access_token_pb2,
    access_token_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

from ..helpers import Stubs, create_model, create_provider, decode, policy, stubs

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(max_size=40) | st.sampled_from(["", " ", "a", "openai", "p-a", "m-a", "x" * 300, "\x00", "sk-ok"])
ids = text | st.sampled_from(["p-a", "p-b", "m-a", "brand-new"])
provider_names = ids.map(lambda i: f"providerConfigs/{i}") | text
model_names = ids.map(lambda i: f"modelConfigs/{i}") | text
families = st.integers(min_value=-3, max_value=12)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.none()
maybe_bool = st.none() | st.booleans()
paths = st.lists(
    st.sampled_from(
        [
            "display_name",
            "base_url",
            "enabled",
            "api_key",
            "family",
            "credential_policy",
            "model",
            "is_default",
            "context_limit",
            "compression_threshold",
            "options",
            "options.temperature",
            "provider_configs",
            "*",
            "name",
            "etag",
            "nope",
            "",
        ]
    )
    | text,
    max_size=4,
)


def expect_client_outcome(method: Callable[..., Any], request: Any) -> None:
    try:
        method(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, f"{error.code()}: {error.details()}"
        decode(error)  # carries an ErrorInfo from the catalogue


def seed(s: Stubs) -> None:
    if not s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()).provider_configs:
        create_provider(s, "p-a", credential_policy=policy(True, True, True))
        create_provider(s, "p-b")
        try:
            create_model(s, "m-a", providers=("p-a", "p-b"))
        except grpc.RpcError as error:
            # Earlier examples force-deleted both configs, which soft-deleted the model: its id stays taken.
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def _with_optional(message: Any, **fields: Any) -> Any:
    for name, value in fields.items():
        if value is not None:
            setattr(message, name, value)
    return message


@FUZZ
@given(
    provider_id=ids,
    family=families,
    display_name=text,
    base_url=text,
    api_key=text,
    enabled=maybe_bool,
    c=maybe_bool,
    u=maybe_bool,
    f=maybe_bool,
    mask=st.none() | paths,
    etag=text,
)
def test_provider_requests(
    channel: grpc.Channel,
    provider_id: str,
    family: int,
    display_name: str,
    base_url: str,
    api_key: str,
    enabled: bool | None,
    c: bool | None,
    u: bool | None,
    f: bool | None,
    mask: list[str] | None,
    etag: str,
) -> None:
    s = stubs(channel)
    seed(s)
    policy_message = _with_optional(
        common_pb2.CredentialPolicy(), central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
    )
    config = _with_optional(
        provider_config_pb2.ProviderConfig(
            family=family,
            display_name=display_name,
            base_url=base_url,
            api_key=api_key,
            credential_policy=policy_message,
            etag=etag,
        ),
        enabled=enabled,
    )
    expect_client_outcome(
        s.providers.CreateProviderConfig,
        provider_config_pb2.CreateProviderConfigRequest(provider_config=config, provider_config_id=provider_id),
    )
    config.name = f"providerConfigs/{provider_id}" if provider_id in ("p-a", "p-b") else provider_id
    expect_client_outcome(
        s.providers.UpdateProviderConfig,
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=config, update_mask=None if mask is None else field_mask_pb2.FieldMask(paths=mask)
        ),
    )


@FUZZ
@given(
    model_id=ids,
    family=families,
    upstream=text,
    display_name=text,
    context_limit=int32,
    threshold=st.none() | int32,
    temperature=numbers,
    price=numbers,
    top_k=st.none() | int32,
    providers=st.lists(provider_names, max_size=4),
    enabled=maybe_bool,
    is_default=maybe_bool,
    mask=st.none() | paths,
    etag=text,
)
def test_model_requests(
    channel: grpc.Channel,
    model_id: str,
    family: int,
    upstream: str,
    display_name: str,
    context_limit: int,
    threshold: int | None,
    temperature: float | None,
    price: float | None,
    top_k: int | None,
    providers: list[str],
    enabled: bool | None,
    is_default: bool | None,
    mask: list[str] | None,
    etag: str,
) -> None:
    s = stubs(channel)
    seed(s)
    options = _with_optional(
        model_config_pb2.ModelCallOptions(), temperature=temperature, input_price_per_mtok=price, top_k=top_k
    )
    model = _with_optional(
        model_config_pb2.ModelConfig(
            family=family,
            model=upstream,
            display_name=display_name,
            context_limit=context_limit,
            options=options,
            provider_configs=providers,
            etag=etag,
        ),
        compression_threshold=threshold,
        enabled=enabled,
        is_default=is_default,
    )
    expect_client_outcome(
        s.models.CreateModelConfig,
        model_config_pb2.CreateModelConfigRequest(model_config=model, model_config_id=model_id),
    )
    model.name = "modelConfigs/m-a" if model_id == "m-a" else model_id
    expect_client_outcome(
        s.models.UpdateModelConfig,
        model_config_pb2.UpdateModelConfigRequest(
            model_config=model, update_mask=None if mask is None else field_mask_pb2.FieldMask(paths=mask)
        ),
    )


@FUZZ
@given(
    name=model_names | provider_names,
    user=text,
    key=text,
    min_revision=st.integers(-(2**63), 2**63 - 1),
    page_size=int32,
    token=text,
    filter_text=text,
    show_deleted=st.booleans(),
    force=st.booleans(),
    overrides=st.lists(st.tuples(provider_names, st.booleans()), max_size=3),
)
def test_other_requests(
    channel: grpc.Channel,
    name: str,
    user: str,
    key: str,
    min_revision: int,
    page_size: int,
    token: str,
    filter_text: str,
    show_deleted: bool,
    force: bool,
    overrides: list[tuple[str, bool]],
) -> None:
    s = stubs(channel)
    seed(s)
    calls: list[tuple[Callable[..., Any], Any]] = [
        (s.providers.GetProviderConfig, provider_config_pb2.GetProviderConfigRequest(name=name)),
        (
            s.providers.ListProviderConfigs,
            provider_config_pb2.ListProviderConfigsRequest(page_size=page_size, page_token=token, filter=filter_text),
        ),
        (s.models.GetModelConfig, model_config_pb2.GetModelConfigRequest(name=name)),
        (
            s.models.ListModelConfigs,
            model_config_pb2.ListModelConfigsRequest(
                page_size=page_size, page_token=token, filter=filter_text, show_deleted=show_deleted
            ),
        ),
        (s.models.UndeleteModelConfig, model_config_pb2.UndeleteModelConfigRequest(name=name, etag=token)),
        (
            s.user_keys.SetUserProviderKey,
            user_key_pb2.SetUserProviderKeyRequest(user=user, provider_config=name, api_key=key),
        ),
        (s.user_keys.ListUserProviderConfigs, user_key_pb2.ListUserProviderConfigsRequest(user=user)),
        (s.user_keys.DeleteUserProviderKey, user_key_pb2.DeleteUserProviderKeyRequest(user=user, provider_config=name)),
        (s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model=name, user=user, min_revision=min_revision)),
        (s.resolver.ListAvailableModels, resolver_pb2.ListAvailableModelsRequest(user=user)),
        (
            s.resolver.ExplainResolution,
            resolver_pb2.ExplainResolutionRequest(
                model=name,
                user=user,
                user_key_overrides=[
                    resolver_pb2.UserKeyOverride(provider_config=p, has_user_api_key=v) for p, v in overrides
                ],
                provider_enabled_overrides=[
                    resolver_pb2.ProviderEnabledOverride(provider_config=p, enabled=v) for p, v in overrides
                ],
            ),
        ),
        (
            s.resolver.ReportAttempts,
            resolver_pb2.ReportAttemptsRequest(
                attempts=[
                    resolver_pb2.AttemptReport(
                        provider_config=p,
                        model=key,
                        user=user,
                        key_source=min_revision % 6,
                        config_revision=min_revision,
                        outcome=page_size % 8,
                        retry_after={"seconds": page_size, "nanos": 0},
                    )
                    for p, _ in overrides
                ]
            ),
        ),
        (s.providers.ResetProviderHealth, provider_config_pb2.ResetProviderHealthRequest(name=name)),
        (s.models.DeleteModelConfig, model_config_pb2.DeleteModelConfigRequest(name=name, etag=token)),
        (
            s.providers.DeleteProviderConfig,
            provider_config_pb2.DeleteProviderConfigRequest(name=name, etag=token, force=force),
        ),
    ]
    for method, request in calls:
        expect_client_outcome(method, request)


roles = st.lists(st.integers(min_value=-2, max_value=6), max_size=4)
token_names = ids.map(lambda i: f"accessTokens/{i}") | text
timestamps = st.integers(min_value=-62_135_596_800, max_value=253_402_300_799)
durations = st.integers(min_value=-(10**11), max_value=10**11)
audit_filters = text | st.builds(
    lambda field, op, value: f"{field} {op} {value}",
    st.sampled_from(["resource", "actor", "method", "user", "event_time", "nope"]),
    st.sampled_from(["=", ">=", ">", "<", "<=", "!="]),
    text.map(lambda t: f'"{t}"') | text,
)


@FUZZ
@given(
    token_id=ids,
    name=token_names,
    role_values=roles,
    expire_seconds=st.none() | timestamps,
    ttl_seconds=st.none() | durations,
    page_size=int32,
    page_token=text,
    filter_text=audit_filters,
)
def test_access_token_and_audit_requests(
    channel: grpc.Channel,
    token_id: str,
    name: str,
    role_values: list[int],
    expire_seconds: int | None,
    ttl_seconds: int | None,
    page_size: int,
    page_token: str,
    filter_text: str,
) -> None:
    tokens = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    audit = audit_pb2_grpc.AuditServiceStub(channel)
    token = access_token_pb2.AccessToken(roles=role_values)  # type: ignore[arg-type]
    if expire_seconds is not None:
        token.expire_time.seconds = expire_seconds
    elif ttl_seconds is not None:
        token.ttl.seconds = ttl_seconds
    calls: list[tuple[Callable[..., Any], Any]] = [
        (
            tokens.CreateAccessToken,
            access_token_pb2.CreateAccessTokenRequest(access_token_id=token_id, access_token=token),
        ),
        (tokens.ListAccessTokens, access_token_pb2.ListAccessTokensRequest(page_size=page_size, page_token=page_token)),
        (tokens.RevokeAccessToken, access_token_pb2.RevokeAccessTokenRequest(name=name)),
        (
            audit.ListAuditEvents,
            audit_pb2.ListAuditEventsRequest(filter=filter_text, page_size=page_size, page_token=page_token),
        ),
    ]
    for method, request in calls:
        expect_client_outcome(method, request)
