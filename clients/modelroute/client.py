"""The synchronous typed client (`modelroute.Client`); `modelroute.aio.Client` is its asyncio twin.

    with modelroute.Client("modelroute.internal:50051", tls=TLS.from_files("ca.pem")) as client:
        answer = client.resolve("gpt-4o", user="alice")

Every method takes ids or resource names, a per-call `timeout` (seconds; the client's default otherwise),
and raises a `modelroute.errors.ModelrouteError` subclass: the class of the error's reason, below the class
of its status code. Writes return `Written` (the resource, the config revision produced, and whether the
default model moved). Lists return pagers that follow `next_page_token` to the end.

`call_with_failover(model, user, fn)` resolves, calls `fn(attempt)` on the selected attachment, then on
each fallback while the failure is one another provider may not have, and reports every attempt in the
background (`modelroute.failover`, `modelroute.attempts`; docs/clients.md, "The failover helper").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2

from . import calls, failover
from .attempts import AttemptReport, Reporter, Reporting, ReportingStatistics
from .calls import (
    Call,
    ListCall,
    Written,
    family_from_name,
    health_policy,
    model_config_name,
    provider_config_name,
    role_from_name,
)
from .channel import DEFAULT_TARGET, DEFAULT_TIMEOUT, open_channel
from .credentials import TLS, authenticated, token_from_env
from .errors import ModelrouteError
from .v1 import (
    access_token_pb2,
    access_token_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    provider_config_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
    user_key_pb2,
    user_key_pb2_grpc,
)

__all__ = [
    "Client",
    "ModelrouteClient",
    "Pager",
    "Written",
    "family_from_name",
    "health_policy",
    "model_config_name",
    "provider_config_name",
    "role_from_name",
]

R = TypeVar("R")
Item = TypeVar("Item")
# Pass as `timeout` to use the client's default.
_DEFAULT: Any = object()


def stubs_for(channel: Any) -> dict[str, Any]:
    """The generated stubs on a channel (sync or asyncio alike), by the names `calls` uses."""
    return {
        "providers": provider_config_pb2_grpc.ProviderConfigServiceStub(channel),
        "models": model_config_pb2_grpc.ModelConfigServiceStub(channel),
        "user_keys": user_key_pb2_grpc.UserKeyServiceStub(channel),
        "resolver": resolver_pb2_grpc.ResolverServiceStub(channel),
        "access_tokens": access_token_pb2_grpc.AccessTokenServiceStub(channel),
        "audit": audit_pb2_grpc.AuditServiceStub(channel),
    }


class Pager(Generic[Item]):
    """Every item of a List, page after page (each page one call); `pages()` gives the responses."""

    def __init__(self, client: Client, call: ListCall[Item], timeout: float | None) -> None:
        self._client, self._call, self._timeout = client, call, timeout

    def pages(self) -> Iterator[Any]:
        token = ""
        while True:
            page: Any = self._client._send(
                Call(self._call.stub, self._call.method, self._call.request_for(token)), self._timeout
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    def __iter__(self) -> Iterator[Item]:
        for page in self.pages():
            yield from self._call.items_of(page)


class Client:
    """A client of every modelroute service.

    `target`: `host:port` (every address the name resolves to shares the calls, round robin) or an open
    channel. `token`: the bearer token; else MODELROUTE_TOKEN, else the file MODELROUTE_TOKEN_FILE names.
    `tls`: verify the server (with a certificate and key, mutual TLS); without it the channel is plaintext.
    `timeout`: the default deadline of every call, in seconds. `options`: more gRPC channel options.
    `reporting`: how `call_with_failover` reports attempts (a background thread, started with the first).
    """

    def __init__(
        self,
        target: str | grpc.Channel = DEFAULT_TARGET,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        options: Sequence[tuple[str, Any]] = (),
        reporting: Reporting | None = None,
    ) -> None:
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            base = open_channel(target, tls, options)
            token = token if token is not None else token_from_env()
        else:
            base = target
        self._base_channel = base
        self.channel: grpc.Channel = authenticated(base, token)
        self.timeout = timeout
        self._stubs = stubs_for(self.channel)
        self._reporting = reporting or Reporting()
        self._reporter = Reporter(self._send_reports, self._reporting)

    def close(self) -> None:
        """Sends the attempt reports still queued (for at most `reporting.close_timeout`), then closes the
        channel if the client opened it."""
        self._reporter.close()
        if self._owns_channel:
            self._base_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: Call[R], timeout: float | None) -> R:
        return self._sent(call, timeout)[0]

    def _sent(self, call: Call[R], timeout: float | None) -> tuple[R, Any]:
        method = getattr(self._stubs[call.stub], call.method)
        try:
            response, rpc = method.with_call(call.request, timeout=self.timeout if timeout is _DEFAULT else timeout)
        except grpc.RpcError as error:
            raise ModelrouteError.from_rpc_error(error) from None
        return response, rpc

    def _write(self, call: Call[R], timeout: float | None) -> Written[R]:
        response, rpc = self._sent(call, timeout)
        return calls.written(response, rpc.trailing_metadata())

    def _pager(self, call: ListCall[Item], timeout: float | None) -> Pager[Item]:
        return Pager(self, call, self.timeout if timeout is _DEFAULT else timeout)

    # ------------------------------------------------------------ resolution

    def resolve(
        self, model: str = "", user: str = "", min_revision: int = 0, *, timeout: float | None = _DEFAULT
    ) -> resolver_pb2.ResolveModelResponse:
        """The provider config to use for `model` (the default model when empty), its fallbacks in order, and
        why every other attachment was skipped. Waits for a ready replica up to the deadline."""
        return self._send(calls.resolve(model, user, min_revision), timeout)

    def available_models(
        self, user: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[resolver_pb2.AvailableModel]:
        return self._pager(calls.available_models(user, page_size), timeout)

    def explain(
        self,
        model: str = "",
        user: str = "",
        user_has_key: Mapping[str, bool] | None = None,
        provider_enabled: Mapping[str, bool] | None = None,
        *,
        ignore_health: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> resolver_pb2.ExplainResolutionResponse:
        """The resolution walk without secrets; `user_has_key` and `provider_enabled` are what-ifs, and
        `ignore_health` resolves as if no attachment were cooling down."""
        return self._send(calls.explain(model, user, user_has_key, provider_enabled, ignore_health), timeout)

    def report_attempts(
        self, reports: Iterable[AttemptReport | resolver_pb2.AttemptReport], *, timeout: float | None = _DEFAULT
    ) -> resolver_pb2.ReportAttemptsResponse:
        """What came of attempts to call provider configs (at most 1000 per call). Sent once, never retried:
        a repeat would count the failures twice. `call_with_failover` reports on its own, in the background."""
        return self._send(calls.report_attempts(reports), timeout)

    # ------------------------------------------------------------ failover

    def call_with_failover(
        self,
        model: str,
        user: str,
        fn: Callable[[failover.Attempt], R],
        *,
        budget: float | None = None,
        classify: failover.Classifier | None = None,
        max_attempts: int | None = None,
    ) -> R:
        """Resolves `model` for `user`, then calls `fn(attempt)` on the selected attachment and on each
        fallback while the failure is a provider's (rate limit, server error, timeout, connection failure,
        rejected key); returns what `fn` returned. A caller's own mistake is raised at once; once `fn` has
        started delivering (`attempt.started()`, or the first chunk of the iterator it returned) nothing fails
        over. `budget`: seconds for the whole call (no attempt starts after). `classify`: tried before
        `failover.classify_http` (return None to defer to it). Every attempt is reported in the background.
        Raises `failover.FailoverExhausted` when no attempt succeeded."""

        def resolve(remaining: float | None) -> resolver_pb2.ResolveModelResponse:
            return self.resolve(model, user, timeout=failover.resolution_timeout(self.timeout, remaining))

        return failover.run(
            resolve,
            fn,
            user=user,
            report=self._reporter.report if self._reporting.enabled else None,
            budget=budget,
            classify=classify,
            max_attempts=max_attempts,
        )

    @property
    def failover_statistics(self) -> ReportingStatistics:
        """The attempt reports so far: reported, ignored, dropped, send failures, queued."""
        return self._reporter.statistics()

    def _send_reports(self, batch: list[AttemptReport], timeout: float) -> resolver_pb2.ReportAttemptsResponse:
        return self.report_attempts(batch, timeout=timeout)

    # ------------------------------------------------------------ provider configs

    def create_provider_config(
        self,
        provider_config_id: str,
        provider_config: provider_config_pb2.ProviderConfig,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[provider_config_pb2.ProviderConfig]:
        return self._write(calls.create_provider_config(provider_config_id, provider_config), timeout)

    def get_provider_config(
        self, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> provider_config_pb2.ProviderConfig:
        return self._send(calls.get_provider_config(provider_config_id), timeout)

    def list_provider_configs(
        self, filter: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[provider_config_pb2.ProviderConfig]:
        return self._pager(calls.list_provider_configs(filter, page_size), timeout)

    def update_provider_config(
        self,
        provider_config: provider_config_pb2.ProviderConfig,
        paths: Sequence[str] = (),
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[provider_config_pb2.ProviderConfig]:
        """`paths`: the update mask (empty: every field given). A health policy is written as a whole:
        `provider_config.health_policy = health_policy(failure_threshold=5)` with `health_policy` in `paths`."""
        return self._write(calls.update_provider_config(provider_config, paths), timeout)

    def delete_provider_config(
        self, provider_config_id: str, force: bool = False, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[provider_config_pb2.DeleteProviderConfigResponse]:
        """`force`: detach it from every model first (models left with no attachment are deleted)."""
        return self._write(calls.delete_provider_config(provider_config_id, force, etag), timeout)

    def reset_provider_health(
        self, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[provider_config_pb2.ProviderConfig]:
        """Ends every cooldown of the provider config and clears its central key's rejected mark (users' marks
        stay: a new key clears one). Safe to repeat."""
        return self._write(calls.reset_provider_health(provider_config_id), timeout)

    # ------------------------------------------------------------ model configs

    def create_model_config(
        self, model_config_id: str, model_config: model_config_pb2.ModelConfig, *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        return self._write(calls.create_model_config(model_config_id, model_config), timeout)

    def get_model_config(
        self, model_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> model_config_pb2.ModelConfig:
        return self._send(calls.get_model_config(model_config_id), timeout)

    def list_model_configs(
        self, filter: str = "", show_deleted: bool = False, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[model_config_pb2.ModelConfig]:
        return self._pager(calls.list_model_configs(filter, show_deleted, page_size), timeout)

    def update_model_config(
        self, model_config: model_config_pb2.ModelConfig, paths: Sequence[str] = (), *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        """`paths`: the update mask (empty: every field given)."""
        return self._write(calls.update_model_config(model_config, paths), timeout)

    def delete_model_config(
        self, model_config_id: str, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        """A soft delete (undelete brings it back)."""
        return self._write(calls.delete_model_config(model_config_id, etag), timeout)

    def undelete_model_config(
        self, model_config_id: str, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        return self._write(calls.undelete_model_config(model_config_id, etag), timeout)

    # ------------------------------------------------------------ user keys

    def set_user_key(
        self, user: str, provider_config_id: str, api_key: str, *, timeout: float | None = _DEFAULT
    ) -> Written[user_key_pb2.UserProviderConfig]:
        return self._write(calls.set_user_key(user, provider_config_id, api_key), timeout)

    def delete_user_key(
        self, user: str, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[empty_pb2.Empty]:
        return self._write(calls.delete_user_key(user, provider_config_id), timeout)

    def user_provider_configs(
        self, user: str, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[user_key_pb2.UserProviderConfig]:
        return self._pager(calls.user_provider_configs(user, page_size), timeout)

    # ------------------------------------------------------------ access tokens and the audit log

    def create_access_token(
        self,
        access_token_id: str,
        roles: Sequence[str],
        ttl_seconds: int | None = None,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[access_token_pb2.CreateAccessTokenResponse]:
        """The response carries the secret (`token`) this once."""
        return self._write(calls.create_access_token(access_token_id, roles, ttl_seconds), timeout)

    def list_access_tokens(
        self, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[access_token_pb2.AccessToken]:
        return self._pager(calls.list_access_tokens(page_size), timeout)

    def revoke_access_token(
        self, access_token_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[access_token_pb2.AccessToken]:
        return self._write(calls.revoke_access_token(access_token_id), timeout)

    def list_audit_events(
        self, filter: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> Pager[audit_pb2.AuditEvent]:
        """Newest first."""
        return self._pager(calls.list_audit_events(filter, page_size), timeout)


# The name this client had before the asyncio twin arrived.
ModelrouteClient = Client
