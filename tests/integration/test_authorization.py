"""Who may call what, through the real server: every RPC against every kind of credential, tokens end to end,
and a revocation on one replica refused by another."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute import ModelrouteClient, ModelrouteError
from modelroute.v1 import access_token_pb2, access_token_pb2_grpc, provider_config_pb2, resolver_pb2
from modelroute_server.domain.access import Role, new_token_secret
from modelroute_server.entrypoints.authorization import METHOD_ROLES
from modelroute_server.entrypoints.server import Application
from modelroute_server.service_layer import access_tokens
from modelroute_server.service_layer.access_tokens import AccessTokenInput

from ..conftest import RunningServer
from ..helpers import TEST_CALLER, create_provider, decode, stubs

AUTH_FAILURES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class Credentials:
    """Secrets of tokens in every state, made once for this module."""

    by_role: dict[Role, str]
    expired: str
    revoked: str


@pytest.fixture(scope="module")
def credentials(running_server: RunningServer) -> Credentials:
    app = running_server.app
    by_role = {
        role: access_tokens.create_access_token(
            app.ctx, TEST_CALLER, f"matrix-{role.value}", AccessTokenInput(roles=(role,))
        ).secret
        for role in Role
    }
    expired = access_tokens.create_access_token(
        app.ctx, TEST_CALLER, "matrix-expired", AccessTokenInput(roles=tuple(Role), ttl=timedelta(hours=1))
    ).secret
    with app.engine.begin() as conn:  # an hour has passed
        conn.execute(
            sa.text(
                "UPDATE access_tokens SET create_time = now() - interval '2 hours', "
                "expire_time = now() - interval '1 second' WHERE id = 'matrix-expired'"
            )
        )
    app.snapshots.catch_up()
    revoked = access_tokens.create_access_token(
        app.ctx, TEST_CALLER, "matrix-revoked", AccessTokenInput(roles=tuple(Role))
    ).secret
    access_tokens.revoke_access_token(app.ctx, TEST_CALLER, "matrix-revoked")
    return Credentials(by_role, expired, revoked)


def raw_call(channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError | None:
    """Calls `method` with an empty request (valid for every message); the error, or None on success."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(b"", metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error
    return None


CASES = ("none", "malformed-scheme", "malformed-token", "unknown", "expired", "revoked", *(r.value for r in Role))
UNAUTHENTICATED_REASONS = {
    "none": "CREDENTIALS_MISSING",
    "malformed-scheme": "CREDENTIALS_MALFORMED",
    "malformed-token": "CREDENTIALS_MALFORMED",
    "unknown": "TOKEN_UNKNOWN",
    "expired": "TOKEN_EXPIRED",
    "revoked": "TOKEN_REVOKED",
}


def metadata_for(case: str, credentials: Credentials) -> tuple[tuple[str, str], ...]:
    header = {
        "none": None,
        "malformed-scheme": "Basic dXNlcjpwYXNzd29yZA==",
        "malformed-token": "Bearer not-a-modelroute-token",
        "unknown": f"Bearer {new_token_secret()}",
        "expired": f"Bearer {credentials.expired}",
        "revoked": f"Bearer {credentials.revoked}",
    }.get(case, "")
    if header == "":
        header = f"Bearer {credentials.by_role[Role(case)]}"
    return () if header is None else (("authorization", header),)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", sorted(METHOD_ROLES))
def test_every_rpc_against_every_kind_of_credential(
    running_server: RunningServer, credentials: Credentials, method: str, case: str
) -> None:
    error = raw_call(running_server.plain_channel, method, metadata_for(case, credentials))
    if case in UNAUTHENTICATED_REASONS:
        assert error is not None
        decoded = decode(error)
        assert (decoded.code, decoded.reason) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_REASONS[case])
        return
    role = Role(case)
    if role in METHOD_ROLES[method]:
        # Past authorization: the empty request gets the servicer's own answer.
        assert error is None or error.code() not in AUTH_FAILURES, decode(error)
        return
    assert error is not None
    decoded = decode(error)
    assert (decoded.code, decoded.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    for needed in METHOD_ROLES[method]:
        assert needed.value in decoded.message
    assert decoded.metadata["required_roles"] == ",".join(sorted(r.value for r in METHOD_ROLES[method]))


def test_health_and_reflection_need_no_credentials(running_server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(running_server.plain_channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    error = raw_call(running_server.plain_channel, "/grpc.reflection.v1alpha.ServerReflection/Unknown", ())
    assert error is not None and error.code() is grpc.StatusCode.UNIMPLEMENTED


def test_refusals_do_not_tell_whether_a_resource_exists(
    app: Application, channel: grpc.Channel, running_server: RunningServer, credentials: Credentials
) -> None:
    create_provider(stubs(channel), "exists")
    for case in ("none", "unknown", "revoked", "resolver"):
        answers = []
        for name in ("providerConfigs/exists", "providerConfigs/missing"):
            get = running_server.plain_channel.unary_unary(
                "/modelroute.v1.ProviderConfigService/GetProviderConfig",
                request_serializer=provider_config_pb2.GetProviderConfigRequest.SerializeToString,
                response_deserializer=provider_config_pb2.ProviderConfig.FromString,
            )
            with pytest.raises(grpc.RpcError) as caught:
                get(provider_config_pb2.GetProviderConfigRequest(name=name), metadata=metadata_for(case, credentials))
            error = decode(caught.value)
            answers.append((error.code, error.reason, error.message, error.metadata, error.resource_name))
        assert answers[0] == answers[1], case
        assert answers[0][0] in AUTH_FAILURES


def test_a_token_shown_once_and_never_read_back(
    app: Application, channel: grpc.Channel, running_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    caplog.set_level(logging.DEBUG)
    created = tokens.CreateAccessToken(
        access_token_pb2.CreateAccessTokenRequest(
            access_token_id="shown-once",
            access_token=access_token_pb2.AccessToken(
                roles=[access_token_pb2.ROLE_READER, access_token_pb2.ROLE_RESOLVER],
                ttl=duration_pb2.Duration(seconds=3600),
            ),
        )
    )
    secret = created.token
    assert secret.startswith("mrt_")
    assert created.access_token.name == "accessTokens/shown-once"
    assert list(created.access_token.roles) == [access_token_pb2.ROLE_READER, access_token_pb2.ROLE_RESOLVER]
    assert created.access_token.active and created.access_token.creator == "tests-all-roles"
    assert created.access_token.HasField("expire_time")
    listed = tokens.ListAccessTokens(access_token_pb2.ListAccessTokensRequest(page_size=200))
    assert "accessTokens/shown-once" in [t.name for t in listed.access_tokens]
    # The secret works for its roles at once on this replica.
    answer = stubs(running_server.plain_channel).resolver.ListAvailableModels(
        resolver_pb2.ListAvailableModelsRequest(), metadata=(("authorization", f"Bearer {secret}"),)
    )
    assert answer.config_revision >= 0
    with app.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_sha256 FROM access_tokens WHERE id = 'shown-once'")).scalar_one()
    if secret.encode() in bytes(stored) or secret in str(listed) or secret in caplog.text:
        raise AssertionError("an access token secret was stored, listed or logged")


@pytest.mark.parametrize(
    ("token_id", "token", "field"),
    [
        ("Bad Name", access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_READER]), "access_token_id"),
        ("no-roles", access_token_pb2.AccessToken(), "access_token.roles"),
        ("unspecified", access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_UNSPECIFIED]), "access_token.roles"),
        ("unknown-role", access_token_pb2.AccessToken(roles=[99]), "access_token.roles"),
        (
            "twice",
            access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_ADMIN, access_token_pb2.ROLE_ADMIN]),
            "access_token.roles",
        ),
        (
            "past",
            access_token_pb2.AccessToken(
                roles=[access_token_pb2.ROLE_ADMIN], expire_time=timestamp_pb2.Timestamp(seconds=1_000_000)
            ),
            "access_token.expire_time",
        ),
        (
            "zero-ttl",
            access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_ADMIN], ttl=duration_pb2.Duration(seconds=0)),
            "access_token.ttl",
        ),
    ],
)
def test_bad_token_requests_are_invalid_arguments_naming_the_field(
    app: Application, channel: grpc.Channel, token_id: str, token: access_token_pb2.AccessToken, field: str
) -> None:
    tokens = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        tokens.CreateAccessToken(
            access_token_pb2.CreateAccessTokenRequest(access_token_id=token_id, access_token=token)
        )
    error = decode(caught.value)
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert access_tokens.get_access_token(app.ctx, token_id) is None


def test_names_stay_reserved_and_revocation_is_idempotent(app: Application, channel: grpc.Channel) -> None:
    tokens = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    request = access_token_pb2.CreateAccessTokenRequest(
        access_token_id="reserved", access_token=access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_READER])
    )
    tokens.CreateAccessToken(request)
    first = tokens.RevokeAccessToken(access_token_pb2.RevokeAccessTokenRequest(name="accessTokens/reserved"))
    assert first.HasField("revoke_time") and not first.active
    again = tokens.RevokeAccessToken(access_token_pb2.RevokeAccessTokenRequest(name="accessTokens/reserved"))
    assert again == first
    for call, message, code, reason in (
        (tokens.CreateAccessToken, request, grpc.StatusCode.ALREADY_EXISTS, "ACCESS_TOKEN_ALREADY_EXISTS"),
        (
            tokens.RevokeAccessToken,
            access_token_pb2.RevokeAccessTokenRequest(name="accessTokens/never-made"),
            grpc.StatusCode.NOT_FOUND,
            "ACCESS_TOKEN_NOT_FOUND",
        ),
        (
            tokens.RevokeAccessToken,
            access_token_pb2.RevokeAccessTokenRequest(name="providerConfigs/x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_INVALID",
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(message)
        assert (decode(caught.value).code, decode(caught.value).reason) == (code, reason)


def test_a_token_with_a_short_lifetime_expires(
    app: Application, channel: grpc.Channel, running_server: RunningServer
) -> None:
    tokens = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    created = tokens.CreateAccessToken(
        access_token_pb2.CreateAccessTokenRequest(
            access_token_id="short-lived",
            access_token=access_token_pb2.AccessToken(
                roles=[access_token_pb2.ROLE_READER], ttl=duration_pb2.Duration(seconds=1)
            ),
        )
    )
    metadata = (("authorization", f"Bearer {created.token}"),)
    resolver = stubs(running_server.plain_channel).resolver
    deadline = time.monotonic() + 30
    while True:
        try:
            resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(), metadata=metadata)
        except grpc.RpcError as error:
            assert decode(error).reason == "TOKEN_EXPIRED"
            break
        assert time.monotonic() < deadline, "a token with a one-second lifetime kept working"
        time.sleep(0.1)


def wait_for_refusal(channel: grpc.Channel, token: str, timeout: float) -> str:
    metadata = (("authorization", f"Bearer {token}"),)
    deadline = time.monotonic() + timeout
    while True:
        try:
            stubs(channel).resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(), metadata=metadata)
        except grpc.RpcError as error:
            return decode(error).reason
        assert time.monotonic() < deadline, "the token kept working"
        time.sleep(0.01)


def test_a_token_revoked_through_one_replica_is_refused_by_another(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    replica_a = access_token_pb2_grpc.AccessTokenServiceStub(channel)
    created = replica_a.CreateAccessToken(
        access_token_pb2.CreateAccessTokenRequest(
            access_token_id="crosses-replicas",
            access_token=access_token_pb2.AccessToken(roles=[access_token_pb2.ROLE_USER_KEYS]),
        )
    )
    metadata = (("authorization", f"Bearer {created.token}"),)
    # Created on A: B learns of it through the change announcement.
    deadline = time.monotonic() + 10
    while True:
        try:
            stubs(second_replica.plain_channel).resolver.ListAvailableModels(
                resolver_pb2.ListAvailableModelsRequest(), metadata=metadata
            )
            break
        except grpc.RpcError as error:
            assert decode(error).reason == "TOKEN_UNKNOWN"
            assert time.monotonic() < deadline, "the other replica never accepted a new token"
            time.sleep(0.01)
    replica_a.RevokeAccessToken(access_token_pb2.RevokeAccessTokenRequest(name="accessTokens/crosses-replicas"))
    assert wait_for_refusal(second_replica.plain_channel, created.token, timeout=10) == "TOKEN_REVOKED"


def test_the_typed_client_sends_its_token_and_reports_refusals(running_server: RunningServer) -> None:
    with (
        ModelrouteClient(running_server.address, token=new_token_secret()) as client,
        pytest.raises(ModelrouteError) as caught,
    ):
        client.get_provider_config("anything")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_UNKNOWN")
