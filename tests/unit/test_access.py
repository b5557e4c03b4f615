"""Access tokens and the checks on a caller's credentials, as tables (no gRPC, no database)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from modelroute_server.domain.access import (
    TOKEN_CHARS,
    TOKEN_PREFIX,
    AccessToken,
    Principal,
    Role,
    authenticate_certificate,
    authenticate_token,
    authorize,
    bearer_token,
    new_token_secret,
    role_from_name,
    roles_problem,
    token_hash,
    token_is_well_formed,
)
from modelroute_server.domain.errors import DomainError, ErrorCode, Reason

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_tokens_are_prefixed_random_base62_with_a_checksum() -> None:
    secrets = {new_token_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith(TOKEN_PREFIX) and len(secret) == TOKEN_CHARS
        assert secret[len(TOKEN_PREFIX) :].isalnum()
        assert token_is_well_formed(secret)
    # The body alone carries at least 256 bits.
    assert (TOKEN_CHARS - len(TOKEN_PREFIX) - 6) * math.log2(62) >= 256


def test_a_mistyped_token_is_malformed_not_unknown() -> None:
    secret = new_token_secret()
    position = len(TOKEN_PREFIX) + 5
    flipped = secret[:position] + ("a" if secret[position] != "a" else "b") + secret[position + 1 :]
    for bad in (flipped, secret[:-1], secret + "x", "mrx_" + secret[4:], secret.replace(secret[10], "-", 1), ""):
        assert not token_is_well_formed(bad)


def test_only_the_hash_identifies_a_token() -> None:
    secret = new_token_secret()
    assert len(token_hash(secret)) == 32
    assert token_hash(secret) == token_hash(secret) != token_hash(new_token_secret())


def _token(**fields: object) -> tuple[str, dict[bytes, AccessToken]]:
    secret = new_token_secret()
    values: dict[str, object] = {"id": "ci", "roles": frozenset({Role.READER}), "token_hash": token_hash(secret)}
    values.update(fields)
    token = AccessToken(**values)  # type: ignore[arg-type]
    return secret, {token.token_hash: token}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"expire_time": NOW + timedelta(seconds=1)}, None),
        ({"expire_time": NOW}, Reason.TOKEN_EXPIRED),
        ({"expire_time": NOW - timedelta(days=1)}, Reason.TOKEN_EXPIRED),
        ({"revoke_time": NOW - timedelta(seconds=1)}, Reason.TOKEN_REVOKED),
        ({"revoke_time": NOW, "expire_time": NOW - timedelta(days=1)}, Reason.TOKEN_REVOKED),
    ],
)
def test_authenticating_a_token(fields: dict[str, object], reason: Reason | None) -> None:
    secret, tokens = _token(**fields)
    if reason is None:
        assert authenticate_token(secret, tokens, lambda: NOW) == Principal("ci", frozenset({Role.READER}))
        return
    with pytest.raises(DomainError) as caught:
        authenticate_token(secret, tokens, lambda: NOW)
    assert (caught.value.reason, caught.value.code) == (reason, ErrorCode.UNAUTHENTICATED)
    assert secret not in caught.value.message


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("not-a-token", Reason.CREDENTIALS_MALFORMED), (new_token_secret(), Reason.TOKEN_UNKNOWN)],
)
def test_malformed_and_unknown_tokens(secret: str, reason: Reason) -> None:
    _, tokens = _token()
    with pytest.raises(DomainError) as caught:
        authenticate_token(secret, tokens, lambda: NOW)
    assert caught.value.reason is reason
    assert secret not in caught.value.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Bearer mrt_abc", "mrt_abc"),
        ("bearer   mrt_abc  ", "mrt_abc"),
        ("BEARER mrt_abc", "mrt_abc"),
        ("Basic dXNlcjpwYXNz", Reason.CREDENTIALS_MALFORMED),
        ("Bearer", Reason.CREDENTIALS_MALFORMED),
        ("Bearer ", Reason.CREDENTIALS_MALFORMED),
        ("mrt_abc", Reason.CREDENTIALS_MALFORMED),
        ("", Reason.CREDENTIALS_MALFORMED),
    ],
)
def test_the_authorization_header(header: str | None, expected: str | Reason | None) -> None:
    if isinstance(expected, Reason):
        with pytest.raises(DomainError) as caught:
            bearer_token(header)
        assert caught.value.reason is expected
    else:
        assert bearer_token(header) == expected


@pytest.mark.parametrize(
    ("held", "allowed", "denied"),
    [
        ({Role.ADMIN}, {Role.ADMIN}, False),
        ({Role.READER}, {Role.ADMIN, Role.READER}, False),
        ({Role.READER, Role.RESOLVER}, {Role.RESOLVER}, False),
        ({Role.READER}, {Role.ADMIN}, True),
        ({Role.ADMIN}, {Role.RESOLVER}, True),
        (set(), {Role.ADMIN, Role.READER}, True),
        ({Role.ADMIN}, set(), True),
    ],
)
def test_authorize(held: set[Role], allowed: set[Role], denied: bool) -> None:
    principal = Principal("ci", frozenset(held))
    if not denied:
        authorize(principal, allowed, "GetProviderConfig")
        return
    with pytest.raises(DomainError) as caught:
        authorize(principal, allowed, "GetProviderConfig")
    error = caught.value
    assert (error.reason, error.code) == (Reason.ROLE_REQUIRED, ErrorCode.PERMISSION_DENIED)
    for role in allowed:
        assert role.value in error.message
    assert error.metadata["required_roles"] == ",".join(sorted(r.value for r in allowed))


def test_certificate_identities_map_to_roles_most_specific_first() -> None:
    mapping = {
        "spiffe://example.org/ns/prod/sa/api": frozenset({Role.RESOLVER}),
        "dns:api.internal": frozenset({Role.ADMIN}),
        "cn:api": frozenset({Role.READER}),
    }
    identities = ["spiffe://example.org/ns/prod/sa/api", "dns:api.internal", "cn:api"]
    assert authenticate_certificate(identities, mapping) == Principal(identities[0], frozenset({Role.RESOLVER}))
    assert authenticate_certificate(identities[1:], mapping) == Principal("dns:api.internal", frozenset({Role.ADMIN}))
    assert authenticate_certificate(["dns:other", "cn:api"], mapping) == Principal("cn:api", frozenset({Role.READER}))
    assert authenticate_certificate(["cn:nobody"], mapping) is None


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        ((Role.ADMIN,), None),
        ((Role.READER, Role.RESOLVER), None),
        ((), "at least one role"),
        ((Role.ADMIN, None), "unknown role"),
        ((Role.ADMIN, Role.ADMIN), "twice"),
    ],
)
def test_requested_roles(roles: tuple[Role | None, ...], problem: str | None) -> None:
    found = roles_problem(roles)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("admin", Role.ADMIN),
        ("USER_KEYS", Role.USER_KEYS),
        ("user-keys", Role.USER_KEYS),
        ("ROLE_RESOLVER", Role.RESOLVER),
        (" Reader ", Role.READER),
        ("owner", None),
        ("", None),
    ],
)
def test_role_names(text: str, role: Role | None) -> None:
    assert role_from_name(text) is role
