"""The requests of every operation, built once for the synchronous and the asyncio client.

Each builder returns a `Call` (one unary method and its request) or a `ListCall` (a paginated method);
the clients only send them. Ids and resource names are accepted alike (`gpt-4o` or `modelConfigs/gpt-4o`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.message import Message

from .metadata import CONFIG_REVISION_KEY, DEFAULT_MODEL_KEY
from .v1 import (
    access_token_pb2,
    audit_pb2,
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

if TYPE_CHECKING:
    from .attempts import AttemptReport

R = TypeVar("R")
Item = TypeVar("Item")


@dataclass(frozen=True)
class Call(Generic[R]):
    """One unary call: the stub (`providers`, `models`, `user_keys`, `resolver`, `access_tokens`, `audit`),
    its method and the request. `write`: its answer is a `Written`."""

    stub: str
    method: str
    request: Message
    write: bool = False


@dataclass(frozen=True)
class ListCall(Generic[Item]):
    """A paginated List: the request for a page token, and the items of a page."""

    stub: str
    method: str
    request_for: Callable[[str], Message]
    items_of: Callable[[Any], Sequence[Item]]


@dataclass(frozen=True)
class Written(Generic[R]):
    """A write's answer and its side effects, from the trailing metadata every write sets.

    `config_revision`: the revision the write produced (or, for one that changed nothing, the revision it
    saw); pass it as `min_revision` to read the write on any replica. `default_changed`: the write moved
    the default model, to `default_model_config` ("" for none).
    """

    value: R
    config_revision: int = 0
    default_changed: bool = False
    default_model_config: str = ""


def written(value: R, trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> Written[R]:
    trailers = {key: value if isinstance(value, str) else value.decode() for key, value in trailing_metadata or ()}
    revision = trailers.get(CONFIG_REVISION_KEY, "")
    default = trailers.get(DEFAULT_MODEL_KEY)
    return Written(value, int(revision) if revision.isdigit() else 0, default is not None, default or "")


def provider_config_name(provider_config_id: str) -> str:
    return provider_config_id if "/" in provider_config_id else f"providerConfigs/{provider_config_id}"


def model_config_name(model_config_id: str) -> str:
    return model_config_id if "/" in model_config_id else f"modelConfigs/{model_config_id}"


def access_token_name(access_token_id: str) -> str:
    return access_token_id if "/" in access_token_id else f"accessTokens/{access_token_id}"


def _mask(paths: Sequence[str]) -> field_mask_pb2.FieldMask | None:
    return field_mask_pb2.FieldMask(paths=list(paths)) if paths else None


# ------------------------------------------------------------------ resolution


def resolve(model: str, user: str, min_revision: int) -> Call[resolver_pb2.ResolveModelResponse]:
    request = resolver_pb2.ResolveModelRequest(model=model, user=user, min_revision=min_revision)
    return Call("resolver", "ResolveModel", request)


def available_models(user: str, page_size: int) -> ListCall[resolver_pb2.AvailableModel]:
    return ListCall(
        "resolver",
        "ListAvailableModels",
        lambda token: resolver_pb2.ListAvailableModelsRequest(user=user, page_size=page_size, page_token=token),
        lambda page: page.models,
    )


def explain(
    model: str,
    user: str,
    user_has_key: Mapping[str, bool] | None,
    provider_enabled: Mapping[str, bool] | None,
    ignore_health: bool = False,
) -> Call[resolver_pb2.ExplainResolutionResponse]:
    request = resolver_pb2.ExplainResolutionRequest(
        model=model,
        user=user,
        ignore_health=ignore_health,
        user_key_overrides=[
            resolver_pb2.UserKeyOverride(provider_config=provider_config_name(p), has_user_api_key=v)
            for p, v in (user_has_key or {}).items()
        ],
        provider_enabled_overrides=[
            resolver_pb2.ProviderEnabledOverride(provider_config=provider_config_name(p), enabled=v)
            for p, v in (provider_enabled or {}).items()
        ],
    )
    return Call("resolver", "ExplainResolution", request)


def report_attempts(
    reports: Iterable[AttemptReport | resolver_pb2.AttemptReport],
) -> Call[resolver_pb2.ReportAttemptsResponse]:
    """At most 1000 reports. Best effort: never retried (a repeated batch would count its failures twice)."""
    request = resolver_pb2.ReportAttemptsRequest(
        attempts=[r if isinstance(r, resolver_pb2.AttemptReport) else r.to_proto() for r in reports]
    )
    return Call("resolver", "ReportAttempts", request)


# ------------------------------------------------------------------ provider configs


def create_provider_config(
    provider_config_id: str, provider_config: provider_config_pb2.ProviderConfig
) -> Call[provider_config_pb2.ProviderConfig]:
    request = provider_config_pb2.CreateProviderConfigRequest(
        provider_config_id=provider_config_id, provider_config=provider_config
    )
    return Call("providers", "CreateProviderConfig", request, write=True)


def get_provider_config(provider_config_id: str) -> Call[provider_config_pb2.ProviderConfig]:
    request = provider_config_pb2.GetProviderConfigRequest(name=provider_config_name(provider_config_id))
    return Call("providers", "GetProviderConfig", request)


def list_provider_configs(filter: str, page_size: int) -> ListCall[provider_config_pb2.ProviderConfig]:
    return ListCall(
        "providers",
        "ListProviderConfigs",
        lambda token: provider_config_pb2.ListProviderConfigsRequest(
            filter=filter, page_size=page_size, page_token=token
        ),
        lambda page: page.provider_configs,
    )


def update_provider_config(
    provider_config: provider_config_pb2.ProviderConfig, paths: Sequence[str]
) -> Call[provider_config_pb2.ProviderConfig]:
    request = provider_config_pb2.UpdateProviderConfigRequest(provider_config=provider_config, update_mask=_mask(paths))
    return Call("providers", "UpdateProviderConfig", request, write=True)


def delete_provider_config(
    provider_config_id: str, force: bool, etag: str
) -> Call[provider_config_pb2.DeleteProviderConfigResponse]:
    request = provider_config_pb2.DeleteProviderConfigRequest(
        name=provider_config_name(provider_config_id), force=force, etag=etag
    )
    return Call("providers", "DeleteProviderConfig", request, write=True)


def reset_provider_health(provider_config_id: str) -> Call[provider_config_pb2.ProviderConfig]:
    """Ends every cooldown of the provider config and clears its central key's rejected mark."""
    request = provider_config_pb2.ResetProviderHealthRequest(name=provider_config_name(provider_config_id))
    return Call("providers", "ResetProviderHealth", request, write=True)


def health_policy(
    failure_threshold: int | None = None,
    failure_window: float | None = None,
    base_cooldown: float | None = None,
    max_cooldown: float | None = None,
) -> provider_config_pb2.HealthPolicy:
    """A provider config's `health_policy` from a count and durations in seconds; every None is left unset
    (the service's default). It is written as a whole: `health_policy` in an update mask."""
    policy = provider_config_pb2.HealthPolicy()
    if failure_threshold is not None:
        policy.failure_threshold = failure_threshold
    for field_name, seconds in (
        ("failure_window", failure_window),
        ("base_cooldown", base_cooldown),
        ("max_cooldown", max_cooldown),
    ):
        if seconds is not None:
            getattr(policy, field_name).FromNanoseconds(round(seconds * 1e9))
    return policy


# ------------------------------------------------------------------ model configs


def create_model_config(
    model_config_id: str, model_config: model_config_pb2.ModelConfig
) -> Call[model_config_pb2.ModelConfig]:
    request = model_config_pb2.CreateModelConfigRequest(model_config_id=model_config_id, model_config=model_config)
    return Call("models", "CreateModelConfig", request, write=True)


def get_model_config(model_config_id: str) -> Call[model_config_pb2.ModelConfig]:
    return Call(
        "models", "GetModelConfig", model_config_pb2.GetModelConfigRequest(name=model_config_name(model_config_id))
    )


def list_model_configs(filter: str, show_deleted: bool, page_size: int) -> ListCall[model_config_pb2.ModelConfig]:
    return ListCall(
        "models",
        "ListModelConfigs",
        lambda token: model_config_pb2.ListModelConfigsRequest(
            filter=filter, show_deleted=show_deleted, page_size=page_size, page_token=token
        ),
        lambda page: page.model_configs,
    )


def update_model_config(
    model_config: model_config_pb2.ModelConfig, paths: Sequence[str]
) -> Call[model_config_pb2.ModelConfig]:
    request = model_config_pb2.UpdateModelConfigRequest(model_config=model_config, update_mask=_mask(paths))
    return Call("models", "UpdateModelConfig", request, write=True)


def delete_model_config(model_config_id: str, etag: str) -> Call[model_config_pb2.ModelConfig]:
    request = model_config_pb2.DeleteModelConfigRequest(name=model_config_name(model_config_id), etag=etag)
    return Call("models", "DeleteModelConfig", request, write=True)


def undelete_model_config(model_config_id: str, etag: str) -> Call[model_config_pb2.ModelConfig]:
    request = model_config_pb2.UndeleteModelConfigRequest(name=model_config_name(model_config_id), etag=etag)
    return Call("models", "UndeleteModelConfig", request, write=True)


# ------------------------------------------------------------------ user keys


def set_user_key(user: str, provider_config_id: str, api_key: str) -> Call[user_key_pb2.UserProviderConfig]:
    request = user_key_pb2.SetUserProviderKeyRequest(
        user=user, provider_config=provider_config_name(provider_config_id), api_key=api_key
    )
    return Call("user_keys", "SetUserProviderKey", request, write=True)


def delete_user_key(user: str, provider_config_id: str) -> Call[empty_pb2.Empty]:
    request = user_key_pb2.DeleteUserProviderKeyRequest(
        user=user, provider_config=provider_config_name(provider_config_id)
    )
    return Call("user_keys", "DeleteUserProviderKey", request, write=True)


def user_provider_configs(user: str, page_size: int) -> ListCall[user_key_pb2.UserProviderConfig]:
    return ListCall(
        "user_keys",
        "ListUserProviderConfigs",
        lambda token: user_key_pb2.ListUserProviderConfigsRequest(user=user, page_size=page_size, page_token=token),
        lambda page: page.user_provider_configs,
    )


# ------------------------------------------------------------------ access tokens and the audit log


def create_access_token(
    access_token_id: str, roles: Sequence[str], ttl_seconds: int | None
) -> Call[access_token_pb2.CreateAccessTokenResponse]:
    token = access_token_pb2.AccessToken(roles=[role_from_name(r) for r in roles])
    if ttl_seconds is not None:
        token.ttl.seconds = ttl_seconds
    request = access_token_pb2.CreateAccessTokenRequest(access_token_id=access_token_id, access_token=token)
    return Call("access_tokens", "CreateAccessToken", request, write=True)


def list_access_tokens(page_size: int) -> ListCall[access_token_pb2.AccessToken]:
    return ListCall(
        "access_tokens",
        "ListAccessTokens",
        lambda token: access_token_pb2.ListAccessTokensRequest(page_size=page_size, page_token=token),
        lambda page: page.access_tokens,
    )


def revoke_access_token(access_token_id: str) -> Call[access_token_pb2.AccessToken]:
    request = access_token_pb2.RevokeAccessTokenRequest(name=access_token_name(access_token_id))
    return Call("access_tokens", "RevokeAccessToken", request, write=True)


def list_audit_events(filter: str, page_size: int) -> ListCall[audit_pb2.AuditEvent]:
    return ListCall(
        "audit",
        "ListAuditEvents",
        lambda token: audit_pb2.ListAuditEventsRequest(filter=filter, page_size=page_size, page_token=token),
        lambda page: page.audit_events,
    )


# ------------------------------------------------------------------ enum names


def _enum_value(enum: Any, prefix: str, kind: tuple[str, str], text: str) -> int:
    """An enum value from its name, case-insensitively, with or without the prefix, `-` or `_` alike."""
    cleaned = text.strip().upper().replace("-", "_").removeprefix(prefix)
    valid = [v.name.removeprefix(prefix) for v in enum.DESCRIPTOR.values if v.number != 0]
    if cleaned not in valid:
        names = ", ".join(v.lower().replace("_", "-") for v in valid)
        raise ValueError(f"unknown {kind[0]} {text!r}; valid {kind[1]}: {names}")
    return int(enum.Value(prefix + cleaned))


def role_from_name(text: str) -> access_token_pb2.Role.ValueType:
    """Case-insensitive: `user-keys`, `USER_KEYS` or `ROLE_USER_KEYS`."""
    return access_token_pb2.Role.ValueType(_enum_value(access_token_pb2.Role, "ROLE_", ("role", "roles"), text))


def family_name(family: int) -> str:
    """`FAMILY_OPENAI_COMPAT` -> `openai-compat`: the name `family_from_name` reads back."""
    return common_pb2.Family.Name(family).removeprefix("FAMILY_").lower().replace("_", "-")  # type: ignore[arg-type]


def family_from_name(text: str) -> common_pb2.Family.ValueType:
    """Case-insensitive: `openai-compat`, `OPENAI_COMPAT` or `FAMILY_OPENAI_COMPAT`."""
    return common_pb2.Family.ValueType(_enum_value(common_pb2.Family, "FAMILY_", ("family", "families"), text))
