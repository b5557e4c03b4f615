"""Failed calls as exceptions: one class per status class, and one per error reason below it.

    try:
        client.get_model_config("gpt-4o")
    except modelroute.errors.ModelConfigNotFoundError:
        ...
    except modelroute.errors.UnavailableError as error:  # any reason with this status, or none
        ...

The reason classes are generated from `protos/modelroute/v1/error_reason.proto` (`modelroute.v1.reasons`),
so the list callers branch on is the server's own; an error with a reason this client does not know yet
(a newer server) or with none (a transport failure) is an instance of its status class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "modelroute.internal"


@dataclass
class ModelrouteError(Exception):
    """A failed call with its `google.rpc` details decoded.

    `retry_delay`: seconds the server asked to wait before retrying (RetryInfo), if it said.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)
    resource_name: str = ""
    retry_delay: float | None = None

    # The status code of the class (None on the base class); the reason, on reason classes.
    STATUS: ClassVar[grpc.StatusCode | None] = None
    REASON: ClassVar[str] = ""

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}" if self.reason else f"{self.code.name}: {self.message}"

    @property
    def fields(self) -> list[str]:
        """The request fields named by the BadRequest details."""
        return [field_path for field_path, _ in self.field_violations]

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ModelrouteError:
        """The most specific class for the call's status: its reason's class, else its status class."""
        call: Any = error
        return decoded(call.code(), call.details() or "", rpc_status.from_call(call))


class CancelledError(ModelrouteError):
    STATUS = grpc.StatusCode.CANCELLED


class UnknownError(ModelrouteError):
    STATUS = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(ModelrouteError):
    STATUS = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(ModelrouteError):
    STATUS = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(ModelrouteError):
    STATUS = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ModelrouteError):
    STATUS = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(ModelrouteError):
    STATUS = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(ModelrouteError):
    STATUS = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(ModelrouteError):
    STATUS = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(ModelrouteError):
    STATUS = grpc.StatusCode.ABORTED


class UnimplementedError(ModelrouteError):
    STATUS = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ModelrouteError):
    STATUS = grpc.StatusCode.INTERNAL


class UnavailableError(ModelrouteError):
    STATUS = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(ModelrouteError):
    STATUS = grpc.StatusCode.UNAUTHENTICATED


STATUS_CLASSES: dict[grpc.StatusCode, type[ModelrouteError]] = {
    c.STATUS: c
    for c in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        UnauthenticatedError,
    )
    if c.STATUS is not None
}


def error_class(code: grpc.StatusCode, reason: str) -> type[ModelrouteError]:
    """The reason's class when it belongs to this status (it always does from a modelroute server),
    else the status class, else the base class."""
    by_reason = REASON_CLASSES.get(reason)
    if by_reason is not None and by_reason.STATUS is code:
        return by_reason
    return STATUS_CLASSES.get(code, ModelrouteError)


def decoded(code: grpc.StatusCode, message: str, status: Any) -> ModelrouteError:
    """An exception from a status and its `google.rpc.Status` details (None when it has none)."""
    details: dict[str, Any] = {}
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            details.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            details["field_violations"] = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            details["precondition_violations"] = [(v.type, v.subject, v.description) for v in failure.violations]
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            resource = error_details_pb2.ResourceInfo()
            detail.Unpack(resource)
            details["resource_name"] = resource.resource_name
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            details["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
    return error_class(code, details.get("reason", ""))(code=code, message=message, **details)


# The generated reason classes subclass the status classes above, hence the import at the end.
from .v1.reasons import *  # noqa: E402, F403
from .v1.reasons import REASON_CLASSES  # noqa: E402
