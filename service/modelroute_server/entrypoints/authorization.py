"""Who may call what: the method-to-role table and the one interceptor that enforces it.

Every modelroute method needs a caller with one of its roles; the standard
health and reflection services stay open. A caller is the bearer token in
`authorization` metadata or, under mutual TLS, the client certificate's
identity mapped to roles by configuration (a token, when sent, wins).
Checks read memory only: no database round trip per call.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ..domain.access import (
    TOKEN_PREFIX,
    Principal,
    Role,
    authenticate_certificate,
    authorize,
    bearer_token,
    no_credentials,
)
from ..domain.audit import Caller
from ..domain.errors import DomainError
from ..service_layer.access_tokens import AccessTokenCache
from .errors import GRPC_CODES, abort

if TYPE_CHECKING:
    from .metrics import MethodMetrics, Metrics

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
    _P + "ResetProviderHealth": frozenset({ADMIN}),
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
    _R + "ReportAttempts": frozenset({RESOLVER}),
    _A + "ListAuditEvents": frozenset({ADMIN, READER}),
    _T + "CreateAccessToken": frozenset({ADMIN}),
    _T + "ListAccessTokens": frozenset({ADMIN}),
    _T + "RevokeAccessToken": frozenset({ADMIN}),
}
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
AUTHORIZATION_METADATA = "authorization"
_BEARER_TOKEN = "Bearer " + TOKEN_PREFIX

# The caller of the call being served, for the audit log (set only around an authorized call).
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("modelroute_caller")


def current_caller() -> Caller:
    caller = _CALLER.get(None)
    if caller is None:
        raise AssertionError("no authorized caller: the authorization interceptor is not in front of this call")
    return caller


def current_caller_or_none() -> Caller | None:
    return _CALLER.get(None)


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

    # Callers a replica remembers by a keyed digest of their header; beyond it the memo starts again.
    MEMO_SIZE = 10_000

    def __init__(self, tokens: AccessTokenCache, identity_roles: Mapping[str, frozenset[Role]] | None = None) -> None:
        self._tokens = tokens
        self._identity_roles = dict(identity_roles or {})
        # hashlib's SHA-256 goes through OpenSSL, whose per-call set-up costs a busy server about 13 us of CPU;
        # the built-in BLAKE2 costs a third of that. So a header already found among the live tokens is
        # remembered by its BLAKE2 MAC under a key of this process (never the token itself), for as long as
        # the token set it was found in is the one published.
        # (BLAKE2b with the key absorbed: each MAC starts from a copy.)
        self._memo_mac = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=32)
        self._memo: dict[bytes, Principal] = {}
        self._memo_of: Mapping[bytes, Principal] | None = None

    def from_metadata(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal | None:
        """The bearer token's principal; None when the call carries no `authorization` metadata."""
        header = None
        for key, value in metadata or ():
            if key == AUTHORIZATION_METADATA:
                header = value if isinstance(value, str) else ""
                break
        if header is None:
            return None
        if header.startswith(_BEARER_TOKEN):
            # What every client sends, for a token that is live whatever the time: one MAC, one lookup.
            unconditional = self._tokens.unconditional
            if unconditional is not self._memo_of:  # tokens changed (one revoked, say): nothing remembered holds
                self._memo, self._memo_of = {}, unconditional
            state = self._memo_mac.copy()
            state.update(header.encode())
            mac = state.digest()
            known = self._memo.get(mac)
            if known is not None:
                return known
            known = unconditional.get(hashlib.sha256(header[7:].encode()).digest())
            if known is not None:
                if len(self._memo) >= self.MEMO_SIZE:
                    self._memo.clear()
                self._memo[mac] = known
                return known
        # Anything else (a token that may expire or was revoked, an unknown or malformed one): the full rules.
        secret = bearer_token(header)
        return None if secret is None else self._tokens.authenticate(secret)

    def from_certificate(self, auth_context: Mapping[str, list[bytes]]) -> Principal:
        # Only a handshake that verified the certificate against the client CA yields these properties.
        identities = certificate_identities(auth_context)
        if not identities:
            raise no_credentials()
        # A verified certificate with no mapped identity is authenticated but holds no role.
        return authenticate_certificate(identities, self._identity_roles) or Principal(identities[0], frozenset())


class _Guard:
    """One method's door: its roles, its handler, and the callers already let through."""

    def __init__(
        self, method: str, handler: grpc.RpcMethodHandler, authenticator: Authenticator, metrics: Metrics
    ) -> None:
        if handler.unary_unary is None:
            # Every modelroute method is unary; a streaming one would need its own guard. Fail closed.
            raise AssertionError(f"{method} is not unary: no guard for it")
        self.name = short_method(method)
        # A method without a row is refused to everyone: a new method is closed until it is given roles.
        self.roles = METHOD_ROLES.get(method, frozenset())
        self.handler = handler
        self._authenticator = authenticator
        self._metrics = metrics
        self._method_metrics: MethodMetrics = metrics.method(method)
        # One Caller per principal that passed the role check: nothing is built per call. Keyed by name: a
        # token's roles never change, names are never reused, and token names (slugs) and certificate
        # identities (`spiffe://`, `dns:`, `cn:`) cannot collide.
        self._callers: dict[str, Caller] = {}
        self.by_certificate = self._certificate_handler()

    def caller(self, principal: Principal) -> Caller:
        caller = self._callers.get(principal.name)
        if caller is None:
            authorize(principal, self.roles, self.name)
            caller = self._callers.setdefault(principal.name, Caller(principal.name, self.name))
        return caller

    def refused(self, error: DomainError, started: float) -> None:
        """Counts a call refused here (it never reaches the handler that counts the others)."""
        self._metrics.authentication_failed(error)
        self._method_metrics.observe(GRPC_CODES[error.code], started)

    def refusal(self, error: DomainError) -> grpc.RpcMethodHandler:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.refused(error, time.perf_counter())
            await abort(context, error)

        return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=self.handler.response_serializer)

    def _certificate_handler(self) -> grpc.RpcMethodHandler:
        """For calls without a token: the client certificate is known only once the call runs."""
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = self.handler.unary_unary  # type: ignore[assignment]

        async def by_certificate(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                caller = self.caller(self._authenticator.from_certificate(context.auth_context()))
            except DomainError as error:
                self.refused(error, time.perf_counter())
                await abort(context, error)
                raise AssertionError("unreachable: abort raises") from error
            _CALLER.set(caller)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            by_certificate,
            request_deserializer=self.handler.request_deserializer,
            response_serializer=self.handler.response_serializer,
        )


class Authorization(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks every call against METHOD_ROLES before it reaches a servicer (or even its request's decoding).

    A bearer token is checked here, on the metadata grpc has already read for this call, and the caller is
    put in a context variable of the call's own task; the method's handler then runs as it is, unwrapped.
    Only a call without a token waits for its handler, where the client certificate can be read.
    """

    def __init__(self, authenticator: Authenticator, metrics: Metrics) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        self._guards: dict[str, _Guard] = {}  # only methods that exist: bounded

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        guard = self._guards.get(method)
        if guard is None:
            handler = await continuation(handler_call_details)
            if handler is None or method.startswith(OPEN_SERVICES):
                return handler
            guard = self._guards.setdefault(method, _Guard(method, handler, self._authenticator, self._metrics))
        try:
            principal = self._authenticator.from_metadata(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
            if principal is None:
                return guard.by_certificate
            caller = guard.caller(principal)
        except DomainError as error:
            return guard.refusal(error)
        # The call's task runs its handler next, in this same context.
        _CALLER.set(caller)
        return guard.handler
