"""The one place where failures become gRPC statuses with rich details.

Every status carries a `google.rpc.ErrorInfo` (reason from the catalogue in
domain/errors.py, domain `modelroute.internal`), plus `BadRequest`,
`PreconditionFailure` or `ResourceInfo` where they apply.
"""

from __future__ import annotations

import collections
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain.errors import ERROR_DOMAIN, DomainError, ErrorCode, Reason

log = logging.getLogger(__name__)

GRPC_CODES: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}
RPC_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorCode.ABORTED: code_pb2.ABORTED,
    ErrorCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorCode.INTERNAL: code_pb2.INTERNAL,
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: DomainError) -> grpc.Status:
    status = status_pb2.Status(code=RPC_CODES[error.code], message=error.message)
    status.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.metadata))
    )
    if error.field_violations:
        status.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.precondition_violations:
        status.details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in error.precondition_violations
                    ]
                )
            )
        )
    if error.resource is not None:
        status.details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource.resource_type, resource_name=error.resource.resource_name
                )
            )
        )
    if error.retry_delay is not None:
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromTimedelta(error.retry_delay)
        status.details.append(_pack(retry_info))
    converted = rpc_status.to_status(status)
    if error.retry_delay is None:
        return converted
    # gRPC's own retry policy reads the delay from this trailer (and stops retrying on a negative one).
    pushback = (RETRY_PUSHBACK_METADATA_KEY, str(int(error.retry_delay.total_seconds() * 1000)))
    return _Status(converted.code, converted.details, (*converted.trailing_metadata, pushback))


RETRY_PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms"


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):  # type: ignore[misc]
    pass


def internal_error() -> DomainError:
    # Unexpected failures say nothing about their cause on the wire: it may hold a secret.
    return DomainError(Reason.INTERNAL_ERROR, "internal error; the service log has the details")


async def abort(context: grpc.aio.ServicerContext, error: DomainError) -> None:
    await context.abort_with_status(to_status(error))
