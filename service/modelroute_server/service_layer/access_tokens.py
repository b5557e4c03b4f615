"""Access tokens: create (the secret shown once), list, revoke; and the in-memory set every call is checked
against, kept current through the same change announcements as the configuration snapshot."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ..domain import rules
from ..domain.access import (
    AccessToken,
    Principal,
    Role,
    authenticate_token,
    new_token_secret,
    role_from_name,
    roles_problem,
    token_hash,
)
from ..domain.audit import AuditEntry, Caller, FieldChange, access_token_record, diff, secret_change
from ..domain.errors import DomainError, Reason, ViolationCollector
from .context import ServiceContext
from .paging import page_size
from .resources import access_token_not_found, access_token_resource

log = logging.getLogger(__name__)

PREFIX = "access_token."
MAX_TTL = timedelta(days=3650)


@dataclass(frozen=True)
class AccessTokenInput:
    roles: tuple[Role | None, ...] = ()
    expire_time: datetime | None = None
    ttl: timedelta | None = None


@dataclass(frozen=True)
class CreatedAccessToken:
    token: AccessToken
    # Shown once: the caller hands it on and it is never readable again.
    secret: str


@dataclass(frozen=True)
class AccessTokenPage:
    items: list[AccessToken]
    next_page_token: str


def _token_changes(before: AccessToken | None, after: AccessToken) -> tuple[FieldChange, ...]:
    # The secret, like every secret, only as set or replaced; its hash stands for it in the comparison.
    return diff(access_token_record(before) if before else None, access_token_record(after)) + secret_change(
        "token", before.token_hash.hex() if before else None, after.token_hash.hex()
    )


def create_access_token(
    ctx: ServiceContext, caller: Caller, access_token_id: str, request: AccessTokenInput
) -> CreatedAccessToken:
    violations = ViolationCollector()
    id_problem = rules.slug_problem(access_token_id)
    if id_problem:
        violations.add("access_token_id", id_problem)
    problem = roles_problem(request.roles)
    if problem:
        violations.add(f"{PREFIX}roles", problem)
    now = datetime.now(UTC)
    expire_time = request.expire_time
    if request.ttl is not None:
        if request.ttl <= timedelta(0) or request.ttl > MAX_TTL:
            violations.add(f"{PREFIX}ttl", "must be positive and at most 10 years")
        else:
            expire_time = now + request.ttl
    elif expire_time is not None and expire_time <= now:
        violations.add(f"{PREFIX}expire_time", "must be in the future")
    violations.raise_if_any()
    secret = new_token_secret()
    token = AccessToken(
        id=access_token_id,
        roles=frozenset(r for r in request.roles if r is not None),
        token_hash=token_hash(secret),
        create_time=now,
        expire_time=expire_time,
        creator=caller.actor,
    )
    with ctx.write(caller, takes_revision=False) as write:
        if write.uow.access_tokens.get(access_token_id) is not None:
            raise DomainError(
                Reason.ACCESS_TOKEN_ALREADY_EXISTS,
                f"{token.name} already exists (names of revoked tokens stay reserved)",
                resource=access_token_resource(access_token_id),
            )
        write.uow.access_tokens.add(token)
        write.record(AuditEntry(token.name, _token_changes(None, token)))
    return CreatedAccessToken(token, secret)


def reissue_access_token(ctx: ServiceContext, caller: Caller, access_token_id: str) -> CreatedAccessToken:
    """A new secret for an existing live token (the old one stops working); for the embedded bootstrap."""
    secret = new_token_secret()
    with ctx.write(caller, takes_revision=False) as write:
        current = write.uow.access_tokens.get(access_token_id)
        if current is None:
            raise access_token_not_found(access_token_id)
        write.uow.access_tokens.set_hash(access_token_id, token_hash(secret))
        reissued = replace(current, token_hash=token_hash(secret))
        write.record(AuditEntry(current.name, _token_changes(current, reissued)))
    return CreatedAccessToken(reissued, secret)


def get_access_token(ctx: ServiceContext, access_token_id: str) -> AccessToken | None:
    with ctx.read() as uow:
        return uow.access_tokens.get(access_token_id)


def list_access_tokens(ctx: ServiceContext, requested_page_size: int = 0, page_token: str = "") -> AccessTokenPage:
    size = page_size(requested_page_size)
    query = "accessTokens"
    after = ctx.page_tokens.decode(page_token, query)
    with ctx.read() as uow:
        tokens = uow.access_tokens.list(after_id=after, limit=size + 1)
    page, next_token = ctx.page_tokens.cut(tokens, size, query)
    return AccessTokenPage(list(page), next_token)


def revoke_access_token(ctx: ServiceContext, caller: Caller, access_token_id: str) -> AccessToken:
    """Idempotent: revoking a revoked token returns it unchanged (no event)."""
    with ctx.write(caller, takes_revision=False) as write:
        current = write.uow.access_tokens.get(access_token_id)
        if current is None:
            raise access_token_not_found(access_token_id)
        if current.revoke_time is not None:
            return current
        write.uow.access_tokens.revoke(access_token_id)
        revoked = write.uow.access_tokens.get(access_token_id)
        assert revoked is not None
        write.record(AuditEntry(current.name, _token_changes(current, revoked)))
    return revoked


class AccessTokenCache:
    """Every access token, by the hash of its secret, in memory: checking a caller costs no round trip.

    Filled by the configuration snapshot's store, which reads tokens with everything else: in full
    at start (and whenever it reloads in full), else the tokens the change log names. The maps are
    replaced whole, never mutated, so readers need no lock.
    """

    def __init__(self) -> None:
        self._by_hash: dict[bytes, AccessToken] = {}
        self._by_id: dict[str, AccessToken] = {}
        # The tokens that are live whatever the time (not revoked, no expiry), by hash: a caller holding one
        # is known with one hash and one lookup. Everything else takes `authenticate`.
        self.unconditional: Mapping[bytes, Principal] = {}
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def authenticate(self, secret: str) -> Principal:
        if not self._loaded:  # checked first: an empty set before the first load would say TOKEN_UNKNOWN
            raise DomainError(
                Reason.CREDENTIALS_NOT_LOADED, "this replica has not loaded its access tokens yet; retry shortly"
            )
        return authenticate_token(secret, self._by_hash, _now)

    def replace_all(self, tokens: Sequence[AccessToken]) -> None:
        self._publish({t.id: t for t in tokens})
        self._loaded = True

    def apply(self, changes: Mapping[str, AccessToken | None]) -> None:
        by_id = dict(self._by_id)
        for access_token_id, token in changes.items():
            if token is None:
                by_id.pop(access_token_id, None)
            else:
                by_id[access_token_id] = token
        self._publish(by_id)

    def _publish(self, by_id: dict[str, AccessToken]) -> None:
        self._by_hash = {t.token_hash: t for t in by_id.values()}
        self.unconditional = {t.token_hash: t.principal for t in by_id.values() if t.live_whatever_the_time}
        self._by_id = by_id


def _now() -> datetime:
    return datetime.now(UTC)


def parse_roles(names: Sequence[str]) -> tuple[Role | None, ...]:
    return tuple(role_from_name(n) for n in names)
