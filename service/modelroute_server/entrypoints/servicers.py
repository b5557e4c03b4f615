"""Thin gRPC servicers: request -> use case -> response.

Use cases that touch the database run in a worker thread so the event loop
keeps serving; resolution answers from the in-memory snapshot inline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from modelroute.metadata import CONFIG_REVISION_KEY, DEFAULT_MODEL_KEY
from modelroute.v1 import (
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

from ..domain.errors import DomainError, invalid_field
from ..domain.models import model_config_name
from ..domain.resolver import WhatIf
from ..service_layer import access_tokens, audit, health, model_configs, provider_configs, resolution, user_keys
from ..service_layer.context import ServiceContext, WriteReceipt
from ..service_layer.default_model import DefaultChange
from ..service_layer.snapshot import Snapshot, SnapshotStore, configuration_stale
from ..service_layer.views import ModelConfigView
from . import convert, convert_security
from .authorization import current_caller
from .errors import abort, internal_error
from .executors import MAX_WAITING_RESOLUTIONS, AdminWork, CallBound
from .metrics import Metrics

log = logging.getLogger(__name__)
Response = TypeVar("Response")


def rpc(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Maps every failure to a status in one place; unexpected ones become a bare INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except DomainError as error:
            await abort(context, error)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unexpected failure in %s", method.__name__)
            await abort(context, internal_error())
        raise AssertionError("unreachable: abort raises")

    return wrapper


def encoded(response: Callable[[], Message]) -> bytes:
    """A List answer built and encoded where it is called: in a worker thread, since a 200-item page
    costs milliseconds that the event loop owes to resolution (`RequestDecoding` passes bytes on)."""
    return response().SerializeToString()


def _default_name(change: DefaultChange) -> str:
    return model_config_name(change.model_config_id) if change.model_config_id else ""


class _WritingServicer:
    """A servicer whose writes report their side effects in one channel: trailing metadata."""

    def __init__(self, ctx: ServiceContext, work: AdminWork) -> None:
        self._ctx = ctx
        self._work = work

    async def _write(
        self,
        context: grpc.aio.ServicerContext,
        default_change_of: Callable[[Any], DefaultChange] | None,
        work: Callable[..., Response],
        *args: Any,
    ) -> Response:
        """Runs a write use case; sets `modelroute-config-revision`, and `modelroute-default-model-config`
        when the default model moved (the response fields that also carry these stay)."""
        receipt = WriteReceipt()
        result: Response = await self._work.write(receipt.run, work, *args)
        trailers: list[tuple[str, str]] = []
        if receipt.config_revision is not None:
            trailers.append((CONFIG_REVISION_KEY, str(receipt.config_revision)))
        change = default_change_of(result) if default_change_of is not None else None
        if change is not None and change.changed:
            trailers.append((DEFAULT_MODEL_KEY, _default_name(change)))
        context.set_trailing_metadata(tuple(trailers))
        return result


def _view_default_change(view: ModelConfigView) -> DefaultChange:
    return view.default_change


class ProviderConfigServicer(_WritingServicer, provider_config_pb2_grpc.ProviderConfigServiceServicer):
    @rpc
    async def CreateProviderConfig(
        self, request: provider_config_pb2.CreateProviderConfigRequest, context: grpc.aio.ServicerContext
    ) -> provider_config_pb2.ProviderConfig:
        view = await self._write(
            context,
            None,
            provider_configs.create_provider_config,
            self._ctx,
            current_caller(),
            request.provider_config_id,
            convert.provider_input(request.provider_config),
        )
        return convert.provider_to_proto(view)

    @rpc
    async def GetProviderConfig(
        self, request: provider_config_pb2.GetProviderConfigRequest, context: grpc.aio.ServicerContext
    ) -> provider_config_pb2.ProviderConfig:
        provider_id = convert.provider_id_from_name(request.name, "name")
        view = await self._work.read(provider_configs.get_provider_config, self._ctx, provider_id)
        return convert.provider_to_proto(view)

    @rpc
    async def ListProviderConfigs(  # type: ignore[override]
        self, request: provider_config_pb2.ListProviderConfigsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        filter_ = convert.provider_filter(request.filter)

        def response() -> provider_config_pb2.ListProviderConfigsResponse:
            page = provider_configs.list_provider_configs(self._ctx, filter_, request.page_size, request.page_token)
            return provider_config_pb2.ListProviderConfigsResponse(
                provider_configs=[convert.provider_to_proto(v) for v in page.items],
                next_page_token=page.next_page_token,
            )

        return await self._work.read(encoded, response)

    @rpc
    async def UpdateProviderConfig(
        self, request: provider_config_pb2.UpdateProviderConfigRequest, context: grpc.aio.ServicerContext
    ) -> provider_config_pb2.ProviderConfig:
        provider_id = convert.provider_id_from_name(request.provider_config.name, "provider_config.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        view = await self._write(
            context,
            None,
            provider_configs.update_provider_config,
            self._ctx,
            current_caller(),
            provider_id,
            convert.provider_input(request.provider_config, mask),
        )
        return convert.provider_to_proto(view)

    @rpc
    async def DeleteProviderConfig(
        self, request: provider_config_pb2.DeleteProviderConfigRequest, context: grpc.aio.ServicerContext
    ) -> provider_config_pb2.DeleteProviderConfigResponse:
        provider_id = convert.provider_id_from_name(request.name, "name")
        outcome = await self._write(
            context,
            lambda outcome: outcome.default_change,
            provider_configs.delete_provider_config,
            self._ctx,
            current_caller(),
            provider_id,
            request.etag,
            request.force,
        )
        return provider_config_pb2.DeleteProviderConfigResponse(
            touched_model_configs=[model_config_name(i) for i in outcome.touched_model_ids],
            deleted_model_configs=[model_config_name(i) for i in outcome.deleted_model_ids],
            default_changed=outcome.default_change.changed,
            default_model_config=_default_name(outcome.default_change),
            config_revision=outcome.revision,
        )

    @rpc
    async def ResetProviderHealth(
        self, request: provider_config_pb2.ResetProviderHealthRequest, context: grpc.aio.ServicerContext
    ) -> provider_config_pb2.ProviderConfig:
        provider_id = convert.provider_id_from_name(request.name, "name")
        view = await self._write(context, None, health.reset_provider_health, self._ctx, current_caller(), provider_id)
        return convert.provider_to_proto(view)


class ModelConfigServicer(_WritingServicer, model_config_pb2_grpc.ModelConfigServiceServicer):
    @rpc
    async def CreateModelConfig(
        self, request: model_config_pb2.CreateModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_config_pb2.ModelConfig:
        view = await self._write(
            context,
            _view_default_change,
            model_configs.create_model_config,
            self._ctx,
            current_caller(),
            request.model_config_id,
            convert.model_input(request.model_config),
        )
        return convert.model_to_proto(view)

    @rpc
    async def GetModelConfig(
        self, request: model_config_pb2.GetModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_config_pb2.ModelConfig:
        model_id = convert.model_id_from_name(request.name, "name")
        return convert.model_to_proto(await self._work.read(model_configs.get_model_config, self._ctx, model_id))

    @rpc
    async def ListModelConfigs(  # type: ignore[override]
        self, request: model_config_pb2.ListModelConfigsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        filter_ = convert.model_filter(request.filter, request.show_deleted)

        def response() -> model_config_pb2.ListModelConfigsResponse:
            page = model_configs.list_model_configs(self._ctx, filter_, request.page_size, request.page_token)
            return model_config_pb2.ListModelConfigsResponse(
                model_configs=[convert.model_to_proto(v) for v in page.items], next_page_token=page.next_page_token
            )

        return await self._work.read(encoded, response)

    @rpc
    async def UpdateModelConfig(
        self, request: model_config_pb2.UpdateModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_config_pb2.ModelConfig:
        model_id = convert.model_id_from_name(request.model_config.name, "model_config.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        view = await self._write(
            context,
            _view_default_change,
            model_configs.update_model_config,
            self._ctx,
            current_caller(),
            model_id,
            convert.model_input(request.model_config, mask),
        )
        return convert.model_to_proto(view)

    @rpc
    async def DeleteModelConfig(
        self, request: model_config_pb2.DeleteModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_config_pb2.ModelConfig:
        model_id = convert.model_id_from_name(request.name, "name")
        view = await self._write(
            context,
            _view_default_change,
            model_configs.delete_model_config,
            self._ctx,
            current_caller(),
            model_id,
            request.etag,
        )
        return convert.model_to_proto(view)

    @rpc
    async def UndeleteModelConfig(
        self, request: model_config_pb2.UndeleteModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_config_pb2.ModelConfig:
        model_id = convert.model_id_from_name(request.name, "name")
        view = await self._write(
            context,
            _view_default_change,
            model_configs.undelete_model_config,
            self._ctx,
            current_caller(),
            model_id,
            request.etag,
        )
        return convert.model_to_proto(view)


class UserKeyServicer(_WritingServicer, user_key_pb2_grpc.UserKeyServiceServicer):
    @rpc
    async def SetUserProviderKey(
        self, request: user_key_pb2.SetUserProviderKeyRequest, context: grpc.aio.ServicerContext
    ) -> user_key_pb2.UserProviderConfig:
        provider_id = convert.provider_id_from_name(request.provider_config, "provider_config")
        view = await self._write(
            context,
            None,
            user_keys.set_user_provider_key,
            self._ctx,
            current_caller(),
            request.user,
            provider_id,
            request.api_key,
        )
        return convert.user_provider_to_proto(view)

    @rpc
    async def DeleteUserProviderKey(
        self, request: user_key_pb2.DeleteUserProviderKeyRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        provider_id = convert.provider_id_from_name(request.provider_config, "provider_config")
        await self._write(
            context, None, user_keys.delete_user_provider_key, self._ctx, current_caller(), request.user, provider_id
        )
        return empty_pb2.Empty()

    @rpc
    async def ListUserProviderConfigs(  # type: ignore[override]
        self, request: user_key_pb2.ListUserProviderConfigsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        def response() -> user_key_pb2.ListUserProviderConfigsResponse:
            page = user_keys.list_user_provider_configs(self._ctx, request.user, request.page_size, request.page_token)
            return user_key_pb2.ListUserProviderConfigsResponse(
                user_provider_configs=[convert.user_provider_to_proto(v) for v in page.items],
                next_page_token=page.next_page_token,
            )

        return await self._work.read(encoded, response)


def _reject_duplicate_overrides(request: resolver_pb2.ExplainResolutionRequest) -> None:
    for field_name, names in (
        ("user_key_overrides", [o.provider_config for o in request.user_key_overrides]),
        ("provider_enabled_overrides", [o.provider_config for o in request.provider_enabled_overrides]),
    ):
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise invalid_field(
                    f"{field_name}[{index}].provider_config", "names a provider config an earlier override names"
                )
            seen.add(name)


class ResolverServicer(resolver_pb2_grpc.ResolverServiceServicer):
    def __init__(
        self,
        ctx: ServiceContext,
        snapshots: SnapshotStore,
        kept_answers: int = 10_000,
        max_snapshot_age: timedelta | None = None,
        metrics: Metrics | None = None,
        work: AdminWork | None = None,
    ) -> None:
        self._ctx = ctx
        self._snapshots = snapshots
        self._work = work or AdminWork()
        self._max_snapshot_age = max_snapshot_age
        self._metrics = metrics or Metrics()
        self._responses = convert.ResolveResponses(kept_answers, self._metrics.resolution_tally)
        self.waiting = CallBound("resolutions waiting for a revision", MAX_WAITING_RESOLUTIONS)

    def _refuse_if_stale(self) -> None:
        stale = configuration_stale(self._snapshots.seconds_cut_off(), self._max_snapshot_age)
        if stale is not None:
            raise stale

    async def _snapshot(self, min_revision: int = 0) -> Snapshot:
        if self._max_snapshot_age is not None:
            self._refuse_if_stale()
        return self._snapshots.fresh(min_revision) or await self._wait(min_revision)

    async def _wait(self, min_revision: int) -> Snapshot:
        """Waits (on the event loop, holding no thread) for a revision not applied here yet; a bounded number
        of calls at once."""
        self.waiting.acquire()
        try:
            return await self._snapshots.wait(min_revision)
        finally:
            self.waiting.release()

    def _check_user(self, user: str) -> None:
        if user:
            user_keys.check_user(user)

    @rpc
    async def ResolveModel(  # type: ignore[override]
        self, request: resolver_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Answers with the response already encoded (kept per snapshot; `RequestDecoding` passes it on)."""
        asked = (request.model, request.user)
        min_revision = request.min_revision
        try:
            if self._max_snapshot_age is not None:  # opt-in: one comparison on the hot path otherwise
                self._refuse_if_stale()
            snapshot = self._snapshots.fresh(min_revision) if min_revision >= 0 else None
            if snapshot is not None:
                # Only an answer that was given is kept, so these very strings passed every check below.
                kept = self._responses.kept(snapshot, asked)
                if kept is not None:
                    return kept
            model_id = convert.model_ref(request.model, "model")
            self._check_user(request.user)
            if min_revision < 0:
                raise invalid_field("min_revision", "must not be negative")
            snapshot = snapshot or await self._wait(min_revision)
            outcome = resolution.resolve_model(self._ctx, snapshot, model_id, request.user)
        except DomainError as error:
            self._metrics.resolution_refused(error)
            raise
        return self._responses.response(outcome, snapshot, asked)

    @rpc
    async def ListAvailableModels(
        self, request: resolver_pb2.ListAvailableModelsRequest, context: grpc.aio.ServicerContext
    ) -> resolver_pb2.ListAvailableModelsResponse:
        self._check_user(request.user)
        snapshot = await self._snapshot()
        page = resolution.list_available_models(
            self._ctx, snapshot, request.user, request.page_size, request.page_token
        )
        return resolver_pb2.ListAvailableModelsResponse(
            models=[convert.available_model(o) for o in page.resolutions],
            config_revision=snapshot.revision,
            next_page_token=page.next_page_token,
        )

    @rpc
    async def ExplainResolution(
        self, request: resolver_pb2.ExplainResolutionRequest, context: grpc.aio.ServicerContext
    ) -> resolver_pb2.ExplainResolutionResponse:
        model_id = convert.model_ref(request.model, "model")
        self._check_user(request.user)
        _reject_duplicate_overrides(request)
        what_if = WhatIf(
            user_has_key={
                convert.provider_id_from_name(
                    o.provider_config, f"user_key_overrides[{i}].provider_config"
                ): o.has_user_api_key
                for i, o in enumerate(request.user_key_overrides)
            },
            provider_enabled={
                convert.provider_id_from_name(
                    o.provider_config, f"provider_enabled_overrides[{i}].provider_config"
                ): o.enabled
                for i, o in enumerate(request.provider_enabled_overrides)
            },
        )
        snapshot = await self._snapshot()
        outcome = resolution.explain_resolution(
            self._ctx, snapshot, model_id, request.user, what_if, request.ignore_health
        )
        return convert.explain_response(outcome, snapshot.revision)

    @rpc
    async def ReportAttempts(
        self, request: resolver_pb2.ReportAttemptsRequest, context: grpc.aio.ServicerContext
    ) -> resolver_pb2.ReportAttemptsResponse:
        snapshot = self._snapshots.snapshot
        known = snapshot.providers if snapshot is not None else {}
        caller = current_caller()

        def report() -> resolver_pb2.ReportAttemptsResponse:
            # All of it in the reports' own thread: a batch is a hundred reports, and the event loop owes its
            # time to resolution.
            reports = convert.attempt_reports(request)
            applied = health.report_attempts(self._ctx, caller, reports, known)
            self._metrics.attempts_reported(reports, applied)
            return resolver_pb2.ReportAttemptsResponse(recorded=applied.recorded, ignored=applied.ignored)

        return await self._work.report(report)


class AccessTokenServicer(_WritingServicer, access_token_pb2_grpc.AccessTokenServiceServicer):
    @rpc
    async def CreateAccessToken(
        self, request: access_token_pb2.CreateAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> access_token_pb2.CreateAccessTokenResponse:
        created = await self._write(
            context,
            None,
            access_tokens.create_access_token,
            self._ctx,
            current_caller(),
            request.access_token_id,
            convert_security.access_token_input(request.access_token),
        )
        return access_token_pb2.CreateAccessTokenResponse(
            access_token=convert_security.access_token_to_proto(created.token, datetime.now(UTC)),
            token=created.secret,
        )

    @rpc
    async def ListAccessTokens(  # type: ignore[override]
        self, request: access_token_pb2.ListAccessTokensRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        def response() -> access_token_pb2.ListAccessTokensResponse:
            page = access_tokens.list_access_tokens(self._ctx, request.page_size, request.page_token)
            now = datetime.now(UTC)
            return access_token_pb2.ListAccessTokensResponse(
                access_tokens=[convert_security.access_token_to_proto(t, now) for t in page.items],
                next_page_token=page.next_page_token,
            )

        return await self._work.read(encoded, response)

    @rpc
    async def RevokeAccessToken(
        self, request: access_token_pb2.RevokeAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> access_token_pb2.AccessToken:
        token_id = convert_security.access_token_id_from_name(request.name, "name")
        token = await self._write(
            context, None, access_tokens.revoke_access_token, self._ctx, current_caller(), token_id
        )
        return convert_security.access_token_to_proto(token, datetime.now(UTC))


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, ctx: ServiceContext, work: AdminWork) -> None:
        self._ctx = ctx
        self._work = work

    @rpc
    async def ListAuditEvents(  # type: ignore[override]
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        filter_ = convert_security.audit_filter(request.filter)

        def response() -> audit_pb2.ListAuditEventsResponse:
            page = audit.list_audit_events(self._ctx, filter_, request.page_size, request.page_token)
            return audit_pb2.ListAuditEventsResponse(
                audit_events=[convert_security.audit_event_to_proto(e) for e in page.items],
                next_page_token=page.next_page_token,
            )

        return await self._work.read(encoded, response)
