"""The authenticator's memo of callers it has already found among the live tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelroute_server.domain.access import AccessToken, Role, new_token_secret, token_hash
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.entrypoints.authorization import Authenticator
from modelroute_server.service_layer.access_tokens import AccessTokenCache


def _header(secret: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")]


def _cache(*tokens: tuple[str, str]) -> AccessTokenCache:
    cache = AccessTokenCache()
    cache.replace_all([AccessToken(name, frozenset({Role.RESOLVER}), token_hash(secret)) for name, secret in tokens])
    return cache


def test_a_remembered_caller_is_forgotten_once_its_token_is_revoked() -> None:
    secret = new_token_secret()
    cache = _cache(("svc", secret))
    authenticator = Authenticator(cache)
    for _ in range(2):  # the second call is answered from the memo
        principal = authenticator.from_metadata(_header(secret))
        assert principal is not None and principal.name == "svc"
    revoked = AccessToken("svc", frozenset({Role.RESOLVER}), token_hash(secret), revoke_time=datetime.now(UTC))
    cache.apply({"svc": revoked})
    with pytest.raises(DomainError) as refused:
        authenticator.from_metadata(_header(secret))
    assert refused.value.reason is Reason.TOKEN_REVOKED


def test_a_deleted_token_is_unknown_although_it_was_remembered() -> None:
    secret = new_token_secret()
    cache = _cache(("svc", secret))
    authenticator = Authenticator(cache)
    assert authenticator.from_metadata(_header(secret)) is not None
    cache.apply({"svc": None})
    with pytest.raises(DomainError) as refused:
        authenticator.from_metadata(_header(secret))
    assert refused.value.reason is Reason.TOKEN_UNKNOWN


def test_the_memo_holds_no_token_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Authenticator, "MEMO_SIZE", 3)
    secrets = [new_token_secret() for _ in range(5)]
    authenticator = Authenticator(_cache(*((f"svc-{n}", s) for n, s in enumerate(secrets))))
    for n, secret in enumerate(secrets):
        principal = authenticator.from_metadata(_header(secret))
        assert principal is not None and principal.name == f"svc-{n}"
    memo = authenticator._memo
    assert 0 < len(memo) <= 3
    held = b"".join(memo)
    assert not any(s.encode() in held or token_hash(s) in memo for s in secrets)


def test_an_unknown_token_is_never_remembered() -> None:
    authenticator = Authenticator(_cache(("svc", new_token_secret())))
    stranger = new_token_secret()
    for _ in range(2):
        with pytest.raises(DomainError) as refused:
            authenticator.from_metadata(_header(stranger))
        assert refused.value.reason is Reason.TOKEN_UNKNOWN
    assert authenticator._memo == {}


def test_before_its_first_load_a_replica_says_credentials_not_loaded_not_token_unknown() -> None:
    secret = new_token_secret()
    cache = AccessTokenCache()
    authenticator = Authenticator(cache)
    with pytest.raises(DomainError) as refused:
        authenticator.from_metadata(_header(secret))
    assert refused.value.reason is Reason.CREDENTIALS_NOT_LOADED
    assert refused.value.reason.code.name == "UNAVAILABLE"  # retryable: the client's retry policy waits it out
    cache.replace_all([AccessToken("svc", frozenset({Role.RESOLVER}), token_hash(secret))])
    assert authenticator.from_metadata(_header(secret)) is not None
