"""Who may call what: the method-to-role table and the one interceptor that enforces it.

Every modelroute method needs a caller with one of its roles; the standard
health and reflection services stay open. A caller is the bearer token in
`authorization` metadata or, under mutual TLS, the client certificate's
identity mapped to roles by configuration (a token, when sent, wins).
Checks read memory only: no database round trip per call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from ..domain.access import Principal, Role, authenticate_certificate, authorize, bearer_token, no_credentials
from ..domain.audit import Caller
from ..domain.errors import DomainError
from ..service_layer.access_tokens import AccessTokenCache
from .errors import abort
from .interceptors import WrappingInterceptor

ADMIN, READER, RESOLVER, USER_KEYS = Role.ADMIN, Role.READER, Role.RESOLVER, Role.USER_KEYS
_P = "/modelroute.v1.ProviderConfigService/"
_M = "/modelroute.v1.ModelConfigService/"
_U = "/modelroute.v1.UserKeyService/"
_R = "/modelroute.v1.ResolverService/"
_A = "/modelroute.v1.AuditService/"
_T = "/modelroute.v1.AccessTokenService/"

# One row per method. Only `resolver` reaches ResolveModel, the one method that returns secrets.
METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    _P + "CreateProviderConfig": frozenset({ADMIN}),
    _P + "UpdateProviderConfig": frozenset({ADMIN}),
    _P + "DeleteProviderConfig": frozenset({ADMIN}),
    _P + "GetProviderConfig": frozenset({ADMIN, READER}),
    _P + "ListProviderConfigs": frozenset({ADMIN, READER}),
    _M + "CreateModelConfig": frozenset({ADMIN}),
    _M + "UpdateModelConfig": frozenset({ADMIN}),
    _M + "DeleteModelConfig": frozenset({ADMIN}),
    _M + "UndeleteModelConfig": frozenset({ADMIN}),
    _M + "GetModelConfig": frozenset({ADMIN, READER}),
    _M + "ListModelConfigs": frozenset({ADMIN, READER}),
    _U + "SetUserProviderKey": frozenset({USER_KEYS}),
    _U + "DeleteUserProviderKey": frozenset({ADMIN, USER_KEYS}),
    _U + "ListUserProviderConfigs": frozenset({ADMIN, READER, USER_KEYS}),
    _R + "ResolveModel": frozenset({RESOLVER}),
    _R + "ListAvailableModels": frozenset({ADMIN, READER, RESOLVER, USER_KEYS}),
    _R + "ExplainResolution": frozenset({ADMIN, READER}),
    _A + "ListAuditEvents": frozenset({ADMIN, READER}),
    _T + "CreateAccessToken": frozenset({ADMIN}),
    _T + "ListAccessTokens": frozenset({ADMIN}),
    _T + "RevokeAccessToken": frozenset({ADMIN}),
}
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
AUTHORIZATION_METADATA = "authorization"

# The caller of the call being served, for the audit log (set only around an authorized call).
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("modelroute_caller")


def current_caller() -> Caller:
    caller = _CALLER.get(None)
    if caller is None:
        raise AssertionError("no authorized caller: the authorization interceptor is not in front of this call")
    return caller


def short_method(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def certificate_identities(auth_context: Mapping[str, list[bytes]]) -> list[str]:
    """A verified client certificate's identities, most specific first: SAN URIs (SPIFFE ids as they are),
    then `dns:` SANs, then `cn:` the common name."""
    identities = [uri.decode() for uri in auth_context.get("peer_uri", ())]
    identities += ["dns:" + name.decode() for name in auth_context.get("peer_dns", ())]
    identities += ["cn:" + name.decode() for name in auth_context.get("x509_common_name", ())]
    return identities


class Authenticator:
    """Turns a call's credentials into a principal, from memory only."""

    def __init__(self, tokens: AccessTokenCache, identity_roles: Mapping[str, frozenset[Role]] | None = None) -> None:
        self._tokens = tokens
        self._identity_roles = dict(identity_roles or {})

    def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION_METADATA:
                header = value if isinstance(value, str) else None
                break
        secret = bearer_token(header)
        if secret is not None:
            return self._tokens.authenticate(secret)
        # Only a handshake that verified the certificate against the client CA yields these properties.
        identities = certificate_identities(context.auth_context())
        if identities:
            # A verified certificate with no mapped identity is authenticated but holds no role.
            return authenticate_certificate(identities, self._identity_roles) or Principal(identities[0], frozenset())
        raise no_credentials()


class Authorization(WrappingInterceptor):
    """Checks every call against METHOD_ROLES before it reaches a servicer (or even its request's decoding)."""

    def __init__(self, authenticator: Authenticator) -> None:
        super().__init__()
        self._authenticator = authenticator

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        if method.startswith(OPEN_SERVICES):
            return None
        # A method without a row is refused to everyone: a new method is closed until it is given roles.
        return self._guard(method, handler, METHOD_ROLES.get(method, frozenset()))

    def _guard(self, method: str, handler: grpc.RpcMethodHandler, roles: frozenset[Role]) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            # Every modelroute method is unary; a streaming one would need its own guard. Fail closed.
            raise AssertionError(f"{method} is not unary: no guard for it")
        name = short_method(method)
        authenticator = self._authenticator
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary  # type: ignore[assignment]
        # One Caller per principal for this method: nothing is built per call on the way in.
        callers: dict[Principal, Caller] = {}

        async def authorized(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                principal = authenticator.principal(context)
                caller = callers.get(principal)
                if caller is None:
                    authorize(principal, roles, name)
                    caller = callers.setdefault(principal, Caller(principal.name, name))
            except DomainError as error:
                await abort(context, error)
                raise AssertionError("unreachable: abort raises") from error
            token = _CALLER.set(caller)
            try:
                return await behavior(request, context)
            finally:
                _CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            authorized,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
