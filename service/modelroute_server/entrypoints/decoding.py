"""A request that cannot be decoded is the caller's mistake: INVALID_ARGUMENT with an ErrorInfo.

Without this, grpc answers a corrupt body (bad wire format, a string that is
not UTF-8) with a bare UNKNOWN before any servicer runs (docs/behaviour.md, "Errors").
The same wrapper, the one every unary call passes through, counts each call's
status code and latency for the metrics: one layer, not two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..domain.errors import DomainError, FieldViolation, Reason
from .errors import abort
from .metrics import MethodMetrics, Metrics


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decodes unary requests itself so that a decoding failure gets a catalogued status, and counts
    every call in `metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        wrapped = _decoding(method, handler, self._metrics.method(method))
        self._handlers[method] = wrapped  # only methods that exist: the cache stays bounded
        return wrapped


def _decoding(method: str, handler: grpc.RpcMethodHandler, metrics: MethodMetrics) -> grpc.RpcMethodHandler:
    parse: Callable[[bytes], Any] = handler.request_deserializer  # type: ignore[assignment]
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary  # type: ignore[assignment]

    async def decoded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            try:
                request = parse(raw)
            except DecodeError:
                # The decoder's own text is not echoed: it could quote request bytes.
                description = "could not be decoded (corrupt wire format or a string field that is not UTF-8)"
                await abort(
                    context,
                    DomainError(
                        Reason.REQUEST_MALFORMED,
                        f"the request to {method} {description}",
                        field_violations=[FieldViolation("request", description)],
                    ),
                )
            response = await behavior(request, context)
        except grpc.aio.AbortError:
            metrics.observe(context.code() or grpc.StatusCode.UNKNOWN, started)
            raise
        except asyncio.CancelledError:
            metrics.observe(grpc.StatusCode.CANCELLED, started)
            raise
        except BaseException:
            metrics.observe(grpc.StatusCode.UNKNOWN, started)
            raise
        metrics.observe(grpc.StatusCode.OK, started)
        return response

    serialize: Callable[[Any], bytes] = handler.response_serializer  # type: ignore[assignment]

    def encoded(response: Any) -> bytes:
        # A servicer may answer with its response already encoded (ResolveModel keeps encoded answers).
        return response if type(response) is bytes else serialize(response)

    return grpc.unary_unary_rpc_method_handler(decoded, request_deserializer=None, response_serializer=encoded)
