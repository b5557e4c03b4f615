"""A thin typed client over the generated stubs, with rich errors decoded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .credentials import TLS, authenticated, token_from_env
from .v1 import (
    access_token_pb2,
    access_token_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    provider_config_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
    user_key_pb2,
    user_key_pb2_grpc,
)

DEFAULT_MODEL_METADATA_KEY = "modelroute-default-model-config"
Response = TypeVar("Response")


@dataclass
class ModelrouteError(Exception):
    """A failed call with its `google.rpc` details decoded."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)
    resource_name: str = ""

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    @property
    def fields(self) -> list[str]:
        """The request fields named by the BadRequest details."""
        return [field_path for field_path, _ in self.field_violations]

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ModelrouteError:
        call: Any = error
        decoded = cls(code=call.code(), message=call.details() or "")
        status = rpc_status.from_call(call)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                decoded.reason, decoded.domain, decoded.metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                decoded.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                decoded.precondition_violations = [(v.type, v.subject, v.description) for v in failure.violations]
            elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                resource = error_details_pb2.ResourceInfo()
                detail.Unpack(resource)
                decoded.resource_name = resource.resource_name
        return decoded


def _call(method: Callable[..., Response], request: Any, timeout: float | None) -> Response:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise ModelrouteError.from_rpc_error(error) from None


@dataclass(frozen=True)
class ModelMutation:
    """A model write's result, and whether it moved the default model (and to which; "" for none)."""

    model_config: model_config_pb2.ModelConfig
    default_changed: bool = False
    default_model_config: str = ""


def _mutate_model(method: Any, request: Any, timeout: float | None) -> ModelMutation:
    try:
        response, call = method.with_call(request, timeout=timeout)
    except grpc.RpcError as error:
        raise ModelrouteError.from_rpc_error(error) from None
    for key, value in call.trailing_metadata() or ():
        if key == DEFAULT_MODEL_METADATA_KEY:
            return ModelMutation(response, True, str(value))
    return ModelMutation(response)


def _paged(
    method: Callable[..., Any], request_for: Callable[[str], Any], items_of: Callable[[Any], Any], timeout: float | None
) -> Iterator[Any]:
    """Every item of a paginated List, following next_page_token to the end."""
    token = ""
    while True:
        page = _call(method, request_for(token), timeout)
        yield from items_of(page)
        token = page.next_page_token
        if not token:
            return


def provider_config_name(provider_config_id: str) -> str:
    return provider_config_id if "/" in provider_config_id else f"providerConfigs/{provider_config_id}"


def model_config_name(model_config_id: str) -> str:
    return model_config_id if "/" in model_config_id else f"modelConfigs/{model_config_id}"


class ModelrouteClient:
    """Every method takes ids or resource names and raises ModelrouteError on failure.

    `token`: the bearer token; when the client opens the channel itself and none is given, it takes
    MODELROUTE_TOKEN, else the file MODELROUTE_TOKEN_FILE names. `tls`: verify the server (and, with a
    certificate and key, authenticate this client by mutual TLS); without it the channel is plaintext.
    """

    def __init__(
        self,
        target: str | grpc.Channel = "127.0.0.1:50051",
        timeout: float | None = 10.0,
        *,
        token: str | None = None,
        tls: TLS | None = None,
    ) -> None:
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            if tls is not None:
                base = grpc.secure_channel(target, tls.channel_credentials(), options=tls.channel_options())
            else:
                base = grpc.insecure_channel(target)
            token = token if token is not None else token_from_env()
        else:
            base = target
        self._base_channel = base
        self.channel: grpc.Channel = authenticated(base, token)
        self.timeout = timeout
        self.providers = provider_config_pb2_grpc.ProviderConfigServiceStub(self.channel)
        self.models = model_config_pb2_grpc.ModelConfigServiceStub(self.channel)
        self.user_keys = user_key_pb2_grpc.UserKeyServiceStub(self.channel)
        self.resolver = resolver_pb2_grpc.ResolverServiceStub(self.channel)
        self.access_tokens = access_token_pb2_grpc.AccessTokenServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)

    def close(self) -> None:
        if self._owns_channel:
            self._base_channel.close()

    def __enter__(self) -> ModelrouteClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ resolution

    def resolve(self, model: str = "", user: str = "", min_revision: int = 0) -> resolver_pb2.ResolveModelResponse:
        request = resolver_pb2.ResolveModelRequest(model=model, user=user, min_revision=min_revision)
        return _call(self.resolver.ResolveModel, request, self.timeout)

    def available_models(self, user: str = "", page_size: int = 0) -> Iterator[resolver_pb2.AvailableModel]:
        return _paged(
            self.resolver.ListAvailableModels,
            lambda token: resolver_pb2.ListAvailableModelsRequest(user=user, page_size=page_size, page_token=token),
            lambda page: page.models,
            self.timeout,
        )

    def explain(
        self,
        model: str = "",
        user: str = "",
        user_has_key: dict[str, bool] | None = None,
        provider_enabled: dict[str, bool] | None = None,
    ) -> resolver_pb2.ExplainResolutionResponse:
        request = resolver_pb2.ExplainResolutionRequest(
            model=model,
            user=user,
            user_key_overrides=[
                resolver_pb2.UserKeyOverride(provider_config=provider_config_name(p), has_user_api_key=v)
                for p, v in (user_has_key or {}).items()
            ],
            provider_enabled_overrides=[
                resolver_pb2.ProviderEnabledOverride(provider_config=provider_config_name(p), enabled=v)
                for p, v in (provider_enabled or {}).items()
            ],
        )
        return _call(self.resolver.ExplainResolution, request, self.timeout)

    # ------------------------------------------------------------ provider configs

    def create_provider_config(
        self, provider_config_id: str, provider_config: provider_config_pb2.ProviderConfig
    ) -> provider_config_pb2.ProviderConfig:
        request = provider_config_pb2.CreateProviderConfigRequest(
            provider_config_id=provider_config_id, provider_config=provider_config
        )
        return _call(self.providers.CreateProviderConfig, request, self.timeout)

    def get_provider_config(self, provider_config_id: str) -> provider_config_pb2.ProviderConfig:
        request = provider_config_pb2.GetProviderConfigRequest(name=provider_config_name(provider_config_id))
        return _call(self.providers.GetProviderConfig, request, self.timeout)

    def list_provider_configs(
        self, filter: str = "", page_size: int = 0
    ) -> Iterator[provider_config_pb2.ProviderConfig]:
        return _paged(
            self.providers.ListProviderConfigs,
            lambda token: provider_config_pb2.ListProviderConfigsRequest(
                filter=filter, page_size=page_size, page_token=token
            ),
            lambda page: page.provider_configs,
            self.timeout,
        )

    def update_provider_config(
        self, provider_config: provider_config_pb2.ProviderConfig, paths: Sequence[str] = ()
    ) -> provider_config_pb2.ProviderConfig:
        request = provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)) if paths else None,
        )
        return _call(self.providers.UpdateProviderConfig, request, self.timeout)

    def delete_provider_config(
        self, provider_config_id: str, force: bool = False, etag: str = ""
    ) -> provider_config_pb2.DeleteProviderConfigResponse:
        request = provider_config_pb2.DeleteProviderConfigRequest(
            name=provider_config_name(provider_config_id), force=force, etag=etag
        )
        return _call(self.providers.DeleteProviderConfig, request, self.timeout)

    # ------------------------------------------------------------ model configs

    def create_model_config(self, model_config_id: str, model_config: model_config_pb2.ModelConfig) -> ModelMutation:
        request = model_config_pb2.CreateModelConfigRequest(model_config_id=model_config_id, model_config=model_config)
        return _mutate_model(self.models.CreateModelConfig, request, self.timeout)

    def get_model_config(self, model_config_id: str) -> model_config_pb2.ModelConfig:
        request = model_config_pb2.GetModelConfigRequest(name=model_config_name(model_config_id))
        return _call(self.models.GetModelConfig, request, self.timeout)

    def list_model_configs(
        self, filter: str = "", show_deleted: bool = False, page_size: int = 0
    ) -> Iterator[model_config_pb2.ModelConfig]:
        return _paged(
            self.models.ListModelConfigs,
            lambda token: model_config_pb2.ListModelConfigsRequest(
                filter=filter, show_deleted=show_deleted, page_size=page_size, page_token=token
            ),
            lambda page: page.model_configs,
            self.timeout,
        )

    def update_model_config(
        self, model_config: model_config_pb2.ModelConfig, paths: Sequence[str] = ()
    ) -> ModelMutation:
        request = model_config_pb2.UpdateModelConfigRequest(
            model_config=model_config,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)) if paths else None,
        )
        return _mutate_model(self.models.UpdateModelConfig, request, self.timeout)

    def delete_model_config(self, model_config_id: str, etag: str = "") -> ModelMutation:
        request = model_config_pb2.DeleteModelConfigRequest(name=model_config_name(model_config_id), etag=etag)
        return _mutate_model(self.models.DeleteModelConfig, request, self.timeout)

    def undelete_model_config(self, model_config_id: str, etag: str = "") -> ModelMutation:
        request = model_config_pb2.UndeleteModelConfigRequest(name=model_config_name(model_config_id), etag=etag)
        return _mutate_model(self.models.UndeleteModelConfig, request, self.timeout)

    # ------------------------------------------------------------ user keys

    def set_user_key(self, user: str, provider_config_id: str, api_key: str) -> user_key_pb2.UserProviderConfig:
        request = user_key_pb2.SetUserProviderKeyRequest(
            user=user, provider_config=provider_config_name(provider_config_id), api_key=api_key
        )
        return _call(self.user_keys.SetUserProviderKey, request, self.timeout)

    def delete_user_key(self, user: str, provider_config_id: str) -> None:
        request = user_key_pb2.DeleteUserProviderKeyRequest(
            user=user, provider_config=provider_config_name(provider_config_id)
        )
        _call(self.user_keys.DeleteUserProviderKey, request, self.timeout)

    def user_provider_configs(self, user: str, page_size: int = 0) -> list[user_key_pb2.UserProviderConfig]:
        return list(
            _paged(
                self.user_keys.ListUserProviderConfigs,
                lambda token: user_key_pb2.ListUserProviderConfigsRequest(
                    user=user, page_size=page_size, page_token=token
                ),
                lambda page: page.user_provider_configs,
                self.timeout,
            )
        )

    # ------------------------------------------------------------ access tokens and the audit log

    def create_access_token(
        self, access_token_id: str, roles: Sequence[str], ttl_seconds: int | None = None
    ) -> access_token_pb2.CreateAccessTokenResponse:
        """The response carries the secret (`token`) this once."""
        token = access_token_pb2.AccessToken(roles=[role_from_name(r) for r in roles])
        if ttl_seconds is not None:
            token.ttl.seconds = ttl_seconds
        request = access_token_pb2.CreateAccessTokenRequest(access_token_id=access_token_id, access_token=token)
        return _call(self.access_tokens.CreateAccessToken, request, self.timeout)

    def list_access_tokens(self, page_size: int = 0) -> Iterator[access_token_pb2.AccessToken]:
        return _paged(
            self.access_tokens.ListAccessTokens,
            lambda token: access_token_pb2.ListAccessTokensRequest(page_size=page_size, page_token=token),
            lambda page: page.access_tokens,
            self.timeout,
        )

    def revoke_access_token(self, access_token_id: str) -> access_token_pb2.AccessToken:
        name = access_token_id if "/" in access_token_id else f"accessTokens/{access_token_id}"
        return _call(
            self.access_tokens.RevokeAccessToken, access_token_pb2.RevokeAccessTokenRequest(name=name), self.timeout
        )

    def list_audit_events(self, filter: str = "", page_size: int = 0) -> Iterator[audit_pb2.AuditEvent]:
        """Newest first."""
        return _paged(
            self.audit.ListAuditEvents,
            lambda token: audit_pb2.ListAuditEventsRequest(filter=filter, page_size=page_size, page_token=token),
            lambda page: page.audit_events,
            self.timeout,
        )


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


def family_from_name(text: str) -> common_pb2.Family.ValueType:
    """Case-insensitive: `openai-compat`, `OPENAI_COMPAT` or `FAMILY_OPENAI_COMPAT`."""
    return common_pb2.Family.ValueType(_enum_value(common_pb2.Family, "FAMILY_", ("family", "families"), text))
