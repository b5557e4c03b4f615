"""The catalogue of error reasons: one stable (reason, code) pair per failure.

Every error the service returns is a DomainError carrying one of these
reasons. The gRPC edge maps the reason's code to a status code and the
reason's name to `google.rpc.ErrorInfo.reason` in one place
(entrypoints/errors.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

ERROR_DOMAIN = "modelroute.internal"
T = TypeVar("T")


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


class Reason(enum.Enum):
    """Stable machine-readable reasons (the value is ErrorInfo.reason)."""

    FIELD_INVALID = "FIELD_INVALID"
    CREDENTIAL_POLICY_INVALID = "CREDENTIAL_POLICY_INVALID"
    FAMILY_IMMUTABLE = "FAMILY_IMMUTABLE"
    UPDATE_MASK_INVALID = "UPDATE_MASK_INVALID"
    FILTER_INVALID = "FILTER_INVALID"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    ATTACHMENTS_INVALID = "ATTACHMENTS_INVALID"
    PROVIDER_CONFIG_NOT_FOUND = "PROVIDER_CONFIG_NOT_FOUND"
    MODEL_CONFIG_NOT_FOUND = "MODEL_CONFIG_NOT_FOUND"
    PROVIDER_CONFIG_ALREADY_EXISTS = "PROVIDER_CONFIG_ALREADY_EXISTS"
    MODEL_CONFIG_ALREADY_EXISTS = "MODEL_CONFIG_ALREADY_EXISTS"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    PROVIDER_CONFIG_IN_USE = "PROVIDER_CONFIG_IN_USE"
    PROVIDER_CONFIG_DISABLED = "PROVIDER_CONFIG_DISABLED"
    USER_KEYS_NOT_ALLOWED = "USER_KEYS_NOT_ALLOWED"
    NO_PROVIDER_CONFIG_TO_ATTACH = "NO_PROVIDER_CONFIG_TO_ATTACH"
    TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH = "TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH"
    MODEL_CONFIG_DISABLED = "MODEL_CONFIG_DISABLED"
    MODEL_CONFIG_DELETED = "MODEL_CONFIG_DELETED"
    MODEL_CONFIG_NOT_DELETED = "MODEL_CONFIG_NOT_DELETED"
    DISABLED_MODEL_CANNOT_BE_DEFAULT = "DISABLED_MODEL_CANNOT_BE_DEFAULT"
    NO_DEFAULT_MODEL = "NO_DEFAULT_MODEL"
    NO_USABLE_ATTACHMENT = "NO_USABLE_ATTACHMENT"
    SCHEMA_UPGRADE_PENDING = "SCHEMA_UPGRADE_PENDING"
    REVISION_NOT_REACHED = "REVISION_NOT_REACHED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    DATABASE_BUSY = "DATABASE_BUSY"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    CONFIGURATION_STALE = "CONFIGURATION_STALE"
    ACCESS_TOKEN_NOT_FOUND = "ACCESS_TOKEN_NOT_FOUND"
    ACCESS_TOKEN_ALREADY_EXISTS = "ACCESS_TOKEN_ALREADY_EXISTS"
    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    CREDENTIALS_MALFORMED = "CREDENTIALS_MALFORMED"
    TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    ROLE_REQUIRED = "ROLE_REQUIRED"
    CREDENTIALS_NOT_LOADED = "CREDENTIALS_NOT_LOADED"
    INTERNAL_ERROR = "INTERNAL_ERROR"

    @property
    def code(self) -> ErrorCode:
        return REASON_CODES[self]


REASON_CODES: Mapping[Reason, ErrorCode] = {
    Reason.FIELD_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.CREDENTIAL_POLICY_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.FAMILY_IMMUTABLE: ErrorCode.INVALID_ARGUMENT,
    Reason.UPDATE_MASK_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.FILTER_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.PAGE_TOKEN_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.REQUEST_MALFORMED: ErrorCode.INVALID_ARGUMENT,
    Reason.ATTACHMENTS_INVALID: ErrorCode.INVALID_ARGUMENT,
    Reason.PROVIDER_CONFIG_NOT_FOUND: ErrorCode.NOT_FOUND,
    Reason.MODEL_CONFIG_NOT_FOUND: ErrorCode.NOT_FOUND,
    Reason.PROVIDER_CONFIG_ALREADY_EXISTS: ErrorCode.ALREADY_EXISTS,
    Reason.MODEL_CONFIG_ALREADY_EXISTS: ErrorCode.ALREADY_EXISTS,
    Reason.ETAG_MISMATCH: ErrorCode.ABORTED,
    Reason.PROVIDER_CONFIG_IN_USE: ErrorCode.FAILED_PRECONDITION,
    Reason.PROVIDER_CONFIG_DISABLED: ErrorCode.FAILED_PRECONDITION,
    Reason.USER_KEYS_NOT_ALLOWED: ErrorCode.FAILED_PRECONDITION,
    Reason.NO_PROVIDER_CONFIG_TO_ATTACH: ErrorCode.FAILED_PRECONDITION,
    Reason.TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH: ErrorCode.FAILED_PRECONDITION,
    Reason.MODEL_CONFIG_DISABLED: ErrorCode.FAILED_PRECONDITION,
    Reason.MODEL_CONFIG_DELETED: ErrorCode.FAILED_PRECONDITION,
    Reason.MODEL_CONFIG_NOT_DELETED: ErrorCode.ALREADY_EXISTS,  # AIP-164: undelete of a live resource
    Reason.DISABLED_MODEL_CANNOT_BE_DEFAULT: ErrorCode.FAILED_PRECONDITION,
    Reason.NO_DEFAULT_MODEL: ErrorCode.FAILED_PRECONDITION,
    Reason.NO_USABLE_ATTACHMENT: ErrorCode.FAILED_PRECONDITION,
    Reason.SCHEMA_UPGRADE_PENDING: ErrorCode.FAILED_PRECONDITION,
    Reason.REVISION_NOT_REACHED: ErrorCode.FAILED_PRECONDITION,
    Reason.DATABASE_UNAVAILABLE: ErrorCode.UNAVAILABLE,
    # A lock or a statement ran past its timeout: the same call is likely to succeed shortly.
    Reason.DATABASE_BUSY: ErrorCode.UNAVAILABLE,
    # This replica already has as many calls of the class in flight as it takes: refused at once.
    Reason.TOO_MANY_CALLS: ErrorCode.RESOURCE_EXHAUSTED,
    # This replica has been cut off from the database for longer than its operator allows.
    Reason.CONFIGURATION_STALE: ErrorCode.UNAVAILABLE,
    Reason.ACCESS_TOKEN_NOT_FOUND: ErrorCode.NOT_FOUND,
    Reason.ACCESS_TOKEN_ALREADY_EXISTS: ErrorCode.ALREADY_EXISTS,
    Reason.CREDENTIALS_MISSING: ErrorCode.UNAUTHENTICATED,
    Reason.CREDENTIALS_MALFORMED: ErrorCode.UNAUTHENTICATED,
    Reason.TOKEN_UNKNOWN: ErrorCode.UNAUTHENTICATED,
    Reason.TOKEN_EXPIRED: ErrorCode.UNAUTHENTICATED,
    Reason.TOKEN_REVOKED: ErrorCode.UNAUTHENTICATED,
    Reason.ROLE_REQUIRED: ErrorCode.PERMISSION_DENIED,
    # Token checks answer from memory; until the first load there is nothing to check against.
    Reason.CREDENTIALS_NOT_LOADED: ErrorCode.UNAVAILABLE,
    Reason.INTERNAL_ERROR: ErrorCode.INTERNAL,
}


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class ResourceRef:
    resource_type: str
    resource_name: str


# gRPC carries the status in trailers that peers cap at 8 KiB by default: an
# error that echoes a huge request must still arrive whole, details included.
MAX_MESSAGE_CHARS = 1024
MAX_FIELD_VIOLATIONS = 20
MAX_PRECONDITION_VIOLATIONS = 25
MAX_QUOTED_CHARS = 64


def quoted(value: str) -> str:
    """`value` for an error message: repr'd, and cut short when long."""
    if len(value) <= MAX_QUOTED_CHARS:
        return repr(value)
    return repr(value[:MAX_QUOTED_CHARS]) + f"... ({len(value)} characters)"


def _capped(items: tuple[T, ...], limit: int, more: Callable[[int], T]) -> tuple[T, ...]:
    if len(items) <= limit:
        return items
    return (*items[:limit], more(len(items) - limit))


class DomainError(Exception):
    """A failure with a catalogued reason. Messages never contain secrets."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        field_violations: Iterable[FieldViolation] = (),
        precondition_violations: Iterable[PreconditionViolation] = (),
        resource: ResourceRef | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 20] + " ... (shortened)"
        precondition_violations = tuple(precondition_violations)
        if REASON_CODES[reason] is ErrorCode.FAILED_PRECONDITION and not precondition_violations:
            # Every failed precondition names what failed (AIP-193), at the least its resource.
            subject = resource.resource_name if resource else ""
            precondition_violations = (PreconditionViolation(reason.value, subject, message),)
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field_violations = _capped(
            tuple(field_violations),
            MAX_FIELD_VIOLATIONS,
            lambda extra: FieldViolation("", f"... and {extra} more violation(s)"),
        )
        self.precondition_violations = _capped(
            tuple(precondition_violations),
            MAX_PRECONDITION_VIOLATIONS,
            lambda extra: PreconditionViolation("MORE", "", f"... and {extra} more"),
        )
        self.resource = resource
        self.metadata = dict(metadata or {})
        # When the caller may try again (google.rpc.RetryInfo, and gRPC's retry pushback).
        self.retry_delay = retry_delay

    @property
    def code(self) -> ErrorCode:
        return self.reason.code


@dataclass
class ViolationCollector:
    """Gathers every field violation of a request before failing once."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.violations.append(FieldViolation(field_path, description))

    def raise_if_any(self, reason: Reason = Reason.FIELD_INVALID) -> None:
        if self.violations:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
            raise DomainError(reason, f"invalid request: {summary}", field_violations=self.violations)


def invalid_field(field_path: str, description: str, reason: Reason = Reason.FIELD_INVALID) -> DomainError:
    return DomainError(
        reason, f"{field_path}: {description}", field_violations=[FieldViolation(field_path, description)]
    )
