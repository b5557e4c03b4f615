"""The error catalogue: every reason has one code, client mistakes are never INTERNAL, and the
gRPC edge turns a DomainError into a status whose rich details round-trip."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from modelroute_server.domain.errors import (
    ERROR_DOMAIN,
    REASON_CODES,
    DomainError,
    ErrorCode,
    FieldViolation,
    PreconditionViolation,
    Reason,
    ResourceRef,
    ViolationCollector,
    invalid_field,
)
from modelroute_server.entrypoints.errors import GRPC_CODES, RPC_CODES, internal_error, to_status

# Reasons that describe the server's state, not a mistake of the caller.
SERVER_SIDE = {
    Reason.INTERNAL_ERROR,
    Reason.DATABASE_UNAVAILABLE,
    Reason.DATABASE_BUSY,
    Reason.TOO_MANY_CALLS,
    Reason.CONFIGURATION_STALE,
    Reason.CREDENTIALS_NOT_LOADED,
}
CLIENT_CODES = {
    ErrorCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION,
    ErrorCode.ABORTED,
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED,
}
DETAILS_KEY = "grpc-status-details-bin"


def test_every_reason_maps_to_a_code() -> None:
    assert set(REASON_CODES) == set(Reason)
    for reason in Reason:
        assert isinstance(reason.code, ErrorCode)


def test_reasons_are_stable_upper_snake_names() -> None:
    for reason in Reason:
        assert reason.value == reason.name
        assert reason.value.replace("_", "").isalnum() and reason.value.isupper()


@pytest.mark.parametrize("reason", sorted(set(Reason) - SERVER_SIDE, key=lambda r: r.value))
def test_client_reasons_never_map_to_internal(reason: Reason) -> None:
    assert reason.code in CLIENT_CODES


def test_only_the_internal_reason_is_internal() -> None:
    assert [r for r in Reason if r.code is ErrorCode.INTERNAL] == [Reason.INTERNAL_ERROR]
    assert Reason.DATABASE_UNAVAILABLE.code is ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.FIELD_INVALID, ErrorCode.INVALID_ARGUMENT),
        (Reason.CREDENTIAL_POLICY_INVALID, ErrorCode.INVALID_ARGUMENT),
        (Reason.FAMILY_IMMUTABLE, ErrorCode.INVALID_ARGUMENT),
        (Reason.UPDATE_MASK_INVALID, ErrorCode.INVALID_ARGUMENT),
        (Reason.FILTER_INVALID, ErrorCode.INVALID_ARGUMENT),
        (Reason.PAGE_TOKEN_INVALID, ErrorCode.INVALID_ARGUMENT),
        (Reason.PROVIDER_CONFIG_NOT_FOUND, ErrorCode.NOT_FOUND),
        (Reason.PROVIDER_CONFIG_ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS),
        (Reason.ETAG_MISMATCH, ErrorCode.ABORTED),
        (Reason.PROVIDER_CONFIG_IN_USE, ErrorCode.FAILED_PRECONDITION),
    ],
)
def test_provider_config_reasons_have_the_aip_codes(reason: Reason, code: ErrorCode) -> None:
    assert reason.code is code


def test_every_code_has_a_grpc_and_an_rpc_status_that_agree() -> None:
    assert set(GRPC_CODES) == set(ErrorCode) == set(RPC_CODES)
    for code in ErrorCode:
        assert GRPC_CODES[code].name == code.value
        assert GRPC_CODES[code].value[0] == RPC_CODES[code]
        assert code_pb2.Code.Name(RPC_CODES[code]) == code.value


def decode_status(status: grpc.Status) -> status_pb2.Status:
    details = [value for key, value in status.trailing_metadata if key == DETAILS_KEY]
    assert len(details) == 1
    raw = details[0]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


def unpack(status: status_pb2.Status, kind: type) -> list:  # type: ignore[type-arg]
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def test_to_status_round_trips_every_detail() -> None:
    error = DomainError(
        Reason.PROVIDER_CONFIG_IN_USE,
        "providerConfigs/p is attached to 1 model(s)",
        field_violations=[FieldViolation("name", "is attached"), FieldViolation("force", "is not set")],
        precondition_violations=[PreconditionViolation("ATTACHED", "modelConfigs/m", "m lists p")],
        resource=ResourceRef("modelroute.internal/ProviderConfig", "providerConfigs/p"),
        metadata={"current_etag": '"7"'},
    )
    status = to_status(error)
    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
    assert status.details == error.message
    decoded = decode_status(status)
    assert (decoded.code, decoded.message) == (code_pb2.FAILED_PRECONDITION, error.message)

    (info,) = unpack(decoded, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "PROVIDER_CONFIG_IN_USE",
        "modelroute.internal",
        {"current_etag": '"7"'},
    )
    (bad,) = unpack(decoded, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("name", "is attached"),
        ("force", "is not set"),
    ]
    (failure,) = unpack(decoded, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("ATTACHED", "modelConfigs/m", "m lists p")
    ]
    (resource,) = unpack(decoded, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == (
        "modelroute.internal/ProviderConfig",
        "providerConfigs/p",
    )


def test_a_retry_delay_becomes_retry_info_and_the_pushback_trailer() -> None:
    error = DomainError(Reason.DATABASE_BUSY, "busy", retry_delay=timedelta(milliseconds=1500))
    status = to_status(error)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    (retry,) = unpack(decode_status(status), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(milliseconds=1500)
    assert ("grpc-retry-pushback-ms", "1500") in status.trailing_metadata
    # Without a delay there is neither.
    plain = to_status(DomainError(Reason.DATABASE_BUSY, "busy"))
    assert unpack(decode_status(plain), error_details_pb2.RetryInfo) == []
    assert all(key != "grpc-retry-pushback-ms" for key, _ in plain.trailing_metadata)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_every_reason_becomes_a_status_with_its_error_info(reason: Reason) -> None:
    status = to_status(DomainError(reason, f"message for {reason.value}"))
    assert status.code is GRPC_CODES[reason.code]
    decoded = decode_status(status)
    assert decoded.code == RPC_CODES[reason.code]
    (info,) = unpack(decoded, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason.value, ERROR_DOMAIN)
    assert ERROR_DOMAIN == "modelroute.internal"
    # Only what applies is attached; a failed precondition always names what failed.
    assert unpack(decoded, error_details_pb2.BadRequest) == []
    preconditions = unpack(decoded, error_details_pb2.PreconditionFailure)
    if reason.code is ErrorCode.FAILED_PRECONDITION:
        (failure,) = preconditions
        assert [(v.type, v.description) for v in failure.violations] == [(reason.value, f"message for {reason.value}")]
    else:
        assert preconditions == []
    assert unpack(decoded, error_details_pb2.ResourceInfo) == []


def test_invalid_field_carries_one_violation_and_its_reason() -> None:
    error = invalid_field("page_token", "is not a token this service issued", Reason.PAGE_TOKEN_INVALID)
    assert error.reason is Reason.PAGE_TOKEN_INVALID and error.code is ErrorCode.INVALID_ARGUMENT
    assert error.field_violations == (FieldViolation("page_token", "is not a token this service issued"),)
    assert error.message == "page_token: is not a token this service issued"
    (bad,) = unpack(decode_status(to_status(error)), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["page_token"]


def test_the_violation_collector_fails_once_with_every_violation() -> None:
    collector = ViolationCollector()
    collector.raise_if_any()  # nothing collected: no failure
    collector.add("a", "is wrong")
    collector.add("b", "is also wrong")
    with pytest.raises(DomainError) as caught:
        collector.raise_if_any(Reason.UPDATE_MASK_INVALID)
    assert caught.value.reason is Reason.UPDATE_MASK_INVALID
    assert [v.field for v in caught.value.field_violations] == ["a", "b"]
    assert "a: is wrong" in caught.value.message and "b: is also wrong" in caught.value.message


def test_an_internal_error_says_nothing_about_its_cause() -> None:
    error = internal_error()
    assert error.reason is Reason.INTERNAL_ERROR
    assert error.code is ErrorCode.INTERNAL
    assert "service log" in error.message
    status = to_status(error)
    assert status.code is grpc.StatusCode.INTERNAL
    (info,) = unpack(decode_status(status), error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INTERNAL_ERROR", ERROR_DOMAIN, {})


def test_the_behaviour_reference_lists_every_reason_with_its_code() -> None:
    """docs/behaviour.md's error table is for the service's users: it must not fall behind the catalogue."""
    reference = (Path(__file__).resolve().parents[2] / "docs" / "behaviour.md").read_text()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    for reason in Reason:
        (row,) = [line for line in rows if f"`{reason.value}`" in line]
        assert f"| {reason.code.value} |" in row, row


def test_the_protos_export_exactly_the_catalogue_with_its_codes() -> None:
    """Callers branch on the ErrorReason enum the client package ships: it must be this catalogue."""
    from modelroute.v1 import error_reason_pb2

    exported = {}
    for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values:
        if value.number == 0:
            continue
        code = value.GetOptions().Extensions[error_reason_pb2.status_code]
        exported[value.name.removeprefix("ERROR_REASON_")] = code_pb2.Code.Name(code)
    assert exported == {reason.value: code.value for reason, code in REASON_CODES.items()}


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_the_client_raises_the_class_of_every_reason(reason: Reason) -> None:
    from modelroute import errors

    status = to_status(DomainError(reason, "m"))
    raised = errors.decoded(status.code, status.details, decode_status(status))
    assert raised.reason == reason.value and isinstance(raised, errors.STATUS_CLASSES[status.code])
    assert type(raised) is errors.REASON_CLASSES[reason.value]
