"""The asyncio typed client: `modelroute.aio.Client`, with the methods of `modelroute.Client`, awaited.

    async with modelroute.aio.Client("modelroute.internal:50051") as client:
        answer = await client.resolve("gpt-4o", user="alice")
        async for model in client.list_model_configs():
            ...

Channel, retries, deadlines, errors and `Written` answers are those of the synchronous client, and so is
`call_with_failover` (here `fn` is a coroutine function, or an async generator function for a stream; the
attempt reports are sent by a task on the client's event loop).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

import grpc
from google.protobuf import empty_pb2

from . import calls, failover
from .attempts import AsyncReporter, AttemptReport, Reporting, ReportingStatistics
from .calls import Call, ListCall, Written
from .channel import DEFAULT_TARGET, DEFAULT_TIMEOUT, open_aio_channel
from .client import _DEFAULT, stubs_for
from .credentials import AUTHORIZATION_METADATA, TLS, token_from_env
from .errors import ModelrouteError
from .v1 import access_token_pb2, audit_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

__all__ = ["AsyncPager", "Client"]

R = TypeVar("R")
T = TypeVar("T")
Item = TypeVar("Item")


class AsyncPager(Generic[Item]):
    """Every item of a List (`async for`), page after page; `pages()` gives the responses."""

    def __init__(self, client: Client, call: ListCall[Item], timeout: float | None) -> None:
        self._client, self._call, self._timeout = client, call, timeout

    async def pages(self) -> AsyncIterator[Any]:
        token = ""
        while True:
            page: Any = await self._client._send(
                Call(self._call.stub, self._call.method, self._call.request_for(token)), self._timeout
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    async def __aiter__(self) -> AsyncIterator[Item]:
        async for page in self.pages():
            for item in self._call.items_of(page):
                yield item

    async def list(self) -> list[Item]:
        """Every item, gathered."""
        return [item async for item in self]


class Client:
    """See `modelroute.Client`; `target` may also be an open `grpc.aio.Channel`. Open it inside a running
    event loop (gRPC's asyncio channels belong to the loop they were made in)."""

    def __init__(
        self,
        target: str | grpc.aio.Channel = DEFAULT_TARGET,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        options: Sequence[tuple[str, Any]] = (),
        reporting: Reporting | None = None,
    ) -> None:
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = open_aio_channel(target, tls, options)
            token = token if token is not None else token_from_env()
        else:
            self.channel = target
        self._metadata = ((AUTHORIZATION_METADATA, f"Bearer {token}"),) if token else None
        self.timeout = timeout
        self._stubs = stubs_for(self.channel)
        self._reporting = reporting or Reporting()
        self._reporter = AsyncReporter(self._send_reports, self._reporting)

    async def close(self) -> None:
        """Sends the attempt reports still queued (for at most `reporting.close_timeout`), then closes the
        channel if the client opened it."""
        await self._reporter.close()
        if self._owns_channel:
            await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _sent(self, call: Call[R], timeout: float | None) -> tuple[R, Any]:
        method = getattr(self._stubs[call.stub], call.method)
        rpc = method(call.request, timeout=self.timeout if timeout is _DEFAULT else timeout, metadata=self._metadata)
        try:
            response = await rpc
        except grpc.RpcError as error:
            raise ModelrouteError.from_rpc_error(error) from None
        return response, rpc

    async def _send(self, call: Call[R], timeout: float | None) -> R:
        return (await self._sent(call, timeout))[0]

    async def _write(self, call: Call[R], timeout: float | None) -> Written[R]:
        response, rpc = await self._sent(call, timeout)
        return calls.written(response, await rpc.trailing_metadata())

    def _pager(self, call: ListCall[Item], timeout: float | None) -> AsyncPager[Item]:
        return AsyncPager(self, call, self.timeout if timeout is _DEFAULT else timeout)

    # ------------------------------------------------------------ resolution

    async def resolve(
        self, model: str = "", user: str = "", min_revision: int = 0, *, timeout: float | None = _DEFAULT
    ) -> resolver_pb2.ResolveModelResponse:
        """The provider config to use for `model` (the default model when empty), its fallbacks in order, and
        why every other attachment was skipped. Waits for a ready replica up to the deadline."""
        return await self._send(calls.resolve(model, user, min_revision), timeout)

    def available_models(
        self, user: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[resolver_pb2.AvailableModel]:
        return self._pager(calls.available_models(user, page_size), timeout)

    async def explain(
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
        return await self._send(calls.explain(model, user, user_has_key, provider_enabled, ignore_health), timeout)

    async def report_attempts(
        self, reports: Iterable[AttemptReport | resolver_pb2.AttemptReport], *, timeout: float | None = _DEFAULT
    ) -> resolver_pb2.ReportAttemptsResponse:
        """See `modelroute.Client.report_attempts`."""
        return await self._send(calls.report_attempts(reports), timeout)

    # ------------------------------------------------------------ failover

    @overload
    async def call_with_failover(
        self,
        model: str,
        user: str,
        fn: Callable[[failover.Attempt], AsyncIterator[T]],
        *,
        budget: float | None = None,
        classify: failover.Classifier | None = None,
        max_attempts: int | None = None,
    ) -> AsyncIterator[T]: ...

    @overload
    async def call_with_failover(
        self,
        model: str,
        user: str,
        fn: Callable[[failover.Attempt], Awaitable[R]],
        *,
        budget: float | None = None,
        classify: failover.Classifier | None = None,
        max_attempts: int | None = None,
    ) -> R: ...

    async def call_with_failover(
        self,
        model: str,
        user: str,
        fn: Callable[[failover.Attempt], Any],
        *,
        budget: float | None = None,
        classify: failover.Classifier | None = None,
        max_attempts: int | None = None,
    ) -> Any:
        """See `modelroute.Client.call_with_failover`. `fn` is a coroutine function (its result is awaited)
        or an async generator function (a stream: its first chunk is awaited inside the failover loop, and
        an async iterator of every chunk is returned)."""

        async def resolve(remaining: float | None) -> resolver_pb2.ResolveModelResponse:
            return await self.resolve(model, user, timeout=failover.resolution_timeout(self.timeout, remaining))

        return await failover.run_async(
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

    async def _send_reports(self, batch: list[AttemptReport], timeout: float) -> resolver_pb2.ReportAttemptsResponse:
        return await self.report_attempts(batch, timeout=timeout)

    # ------------------------------------------------------------ provider configs

    async def create_provider_config(
        self,
        provider_config_id: str,
        provider_config: provider_config_pb2.ProviderConfig,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[provider_config_pb2.ProviderConfig]:
        return await self._write(calls.create_provider_config(provider_config_id, provider_config), timeout)

    async def get_provider_config(
        self, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> provider_config_pb2.ProviderConfig:
        return await self._send(calls.get_provider_config(provider_config_id), timeout)

    def list_provider_configs(
        self, filter: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[provider_config_pb2.ProviderConfig]:
        return self._pager(calls.list_provider_configs(filter, page_size), timeout)

    async def update_provider_config(
        self,
        provider_config: provider_config_pb2.ProviderConfig,
        paths: Sequence[str] = (),
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[provider_config_pb2.ProviderConfig]:
        """`paths`: the update mask (empty: every field given); see `modelroute.Client.update_provider_config`."""
        return await self._write(calls.update_provider_config(provider_config, paths), timeout)

    async def delete_provider_config(
        self, provider_config_id: str, force: bool = False, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[provider_config_pb2.DeleteProviderConfigResponse]:
        """`force`: detach it from every model first (models left with no attachment are deleted)."""
        return await self._write(calls.delete_provider_config(provider_config_id, force, etag), timeout)

    async def reset_provider_health(
        self, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[provider_config_pb2.ProviderConfig]:
        """Ends every cooldown of the provider config and clears its central key's rejected mark (users' marks
        stay: a new key clears one). Safe to repeat."""
        return await self._write(calls.reset_provider_health(provider_config_id), timeout)

    # ------------------------------------------------------------ model configs

    async def create_model_config(
        self, model_config_id: str, model_config: model_config_pb2.ModelConfig, *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        return await self._write(calls.create_model_config(model_config_id, model_config), timeout)

    async def get_model_config(
        self, model_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> model_config_pb2.ModelConfig:
        return await self._send(calls.get_model_config(model_config_id), timeout)

    def list_model_configs(
        self, filter: str = "", show_deleted: bool = False, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[model_config_pb2.ModelConfig]:
        return self._pager(calls.list_model_configs(filter, show_deleted, page_size), timeout)

    async def update_model_config(
        self, model_config: model_config_pb2.ModelConfig, paths: Sequence[str] = (), *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        """`paths`: the update mask (empty: every field given)."""
        return await self._write(calls.update_model_config(model_config, paths), timeout)

    async def delete_model_config(
        self, model_config_id: str, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        """A soft delete (undelete brings it back)."""
        return await self._write(calls.delete_model_config(model_config_id, etag), timeout)

    async def undelete_model_config(
        self, model_config_id: str, etag: str = "", *, timeout: float | None = _DEFAULT
    ) -> Written[model_config_pb2.ModelConfig]:
        return await self._write(calls.undelete_model_config(model_config_id, etag), timeout)

    # ------------------------------------------------------------ user keys

    async def set_user_key(
        self, user: str, provider_config_id: str, api_key: str, *, timeout: float | None = _DEFAULT
    ) -> Written[user_key_pb2.UserProviderConfig]:
        return await self._write(calls.set_user_key(user, provider_config_id, api_key), timeout)

    async def delete_user_key(
        self, user: str, provider_config_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[empty_pb2.Empty]:
        return await self._write(calls.delete_user_key(user, provider_config_id), timeout)

    def user_provider_configs(
        self, user: str, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[user_key_pb2.UserProviderConfig]:
        return self._pager(calls.user_provider_configs(user, page_size), timeout)

    # ------------------------------------------------------------ access tokens and the audit log

    async def create_access_token(
        self,
        access_token_id: str,
        roles: Sequence[str],
        ttl_seconds: int | None = None,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Written[access_token_pb2.CreateAccessTokenResponse]:
        """The response carries the secret (`token`) this once."""
        return await self._write(calls.create_access_token(access_token_id, roles, ttl_seconds), timeout)

    def list_access_tokens(
        self, page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[access_token_pb2.AccessToken]:
        return self._pager(calls.list_access_tokens(page_size), timeout)

    async def revoke_access_token(
        self, access_token_id: str, *, timeout: float | None = _DEFAULT
    ) -> Written[access_token_pb2.AccessToken]:
        return await self._write(calls.revoke_access_token(access_token_id), timeout)

    def list_audit_events(
        self, filter: str = "", page_size: int = 0, *, timeout: float | None = _DEFAULT
    ) -> AsyncPager[audit_pb2.AuditEvent]:
        """Newest first."""
        return self._pager(calls.list_audit_events(filter, page_size), timeout)
