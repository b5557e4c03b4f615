"""Who may call what: roles, access tokens, and the checks on a caller's credentials.

Tokens are 256 random bits in base62 behind the `mrt_` prefix (so secret
scanners recognise a leaked one), followed by a CRC-32 checksum that tells
a mistyped or truncated token from an unknown one without any lookup. Only
the SHA-256 of a token is ever stored: it is random, so a slow password
hash would add cost and no strength.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import secrets
import string
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .errors import DomainError, Reason

TOKEN_PREFIX = "mrt_"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_SECRET_BYTES = 32
_BODY_CHARS = 43  # 62**43 > 2**256
_CHECKSUM_CHARS = 6  # 62**6 > 2**32
TOKEN_CHARS = len(TOKEN_PREFIX) + _BODY_CHARS + _CHECKSUM_CHARS
BEARER = "bearer"


class Role(enum.Enum):
    ADMIN = "admin"
    READER = "reader"
    RESOLVER = "resolver"
    USER_KEYS = "user-keys"


ROLE_NAMES = tuple(r.value for r in Role)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_CHARS)


def new_token_secret() -> str:
    body = _base62(int.from_bytes(secrets.token_bytes(_SECRET_BYTES)), _BODY_CHARS)
    return TOKEN_PREFIX + body + _checksum(body)


def token_is_well_formed(secret: str) -> bool:
    if len(secret) != TOKEN_CHARS or not secret.startswith(TOKEN_PREFIX):
        return False
    body, checksum = secret[len(TOKEN_PREFIX) : -_CHECKSUM_CHARS], secret[-_CHECKSUM_CHARS:]
    return all(c in _BASE62 for c in body) and secrets.compare_digest(checksum, _checksum(body))


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class AccessToken:
    id: str
    roles: frozenset[Role]
    token_hash: bytes = field(repr=False)
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    creator: str = ""

    @property
    def name(self) -> str:
        return access_token_name(self.id)

    @functools.cached_property
    def principal(self) -> Principal:
        return Principal(self.id, self.roles)

    @property
    def role_names(self) -> list[str]:
        return sorted(r.value for r in self.roles)

    @property
    def live_whatever_the_time(self) -> bool:
        """Not revoked and never expiring: accepted without reading the clock."""
        return self.revoke_time is None and self.expire_time is None

    def active(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or now < self.expire_time)


def access_token_name(access_token_id: str) -> str:
    return f"accessTokens/{access_token_id}"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token's name or a client certificate's identity, and its roles."""

    name: str
    roles: frozenset[Role]


def bearer_token(header: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header; None when there is no header."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != BEARER or not token.strip():
        raise DomainError(Reason.CREDENTIALS_MALFORMED, "the authorization metadata must be `Bearer <token>`")
    return token.strip()


def authenticate_token(secret: str, tokens: Mapping[bytes, AccessToken], clock: Callable[[], datetime]) -> Principal:
    """The principal a bearer token stands for; UNAUTHENTICATED for anything but a live token.

    The lookup comes first (every stored token is well formed), so a live token costs one hash and one
    dictionary read; the clock is read only for a token that can expire. The messages never echo the
    token: a caller who pasted the wrong secret must not see it logged back.
    """
    token = tokens.get(token_hash(secret))
    if token is None:
        if not token_is_well_formed(secret):
            raise DomainError(
                Reason.CREDENTIALS_MALFORMED, f"the bearer token is not a modelroute access token ({TOKEN_PREFIX}...)"
            )
        raise DomainError(Reason.TOKEN_UNKNOWN, "the bearer token is not known to this service")
    if token.revoke_time is not None:
        raise DomainError(Reason.TOKEN_REVOKED, f"the access token {token.id!r} has been revoked")
    if token.expire_time is not None and clock() >= token.expire_time:
        raise DomainError(Reason.TOKEN_EXPIRED, f"the access token {token.id!r} has expired")
    return token.principal


def authenticate_certificate(
    identities: Iterable[str], identity_roles: Mapping[str, frozenset[Role]]
) -> Principal | None:
    """The first of a client certificate's identities (URI SANs, DNS SANs, CN, in that order) that is mapped."""
    for identity in identities:
        roles = identity_roles.get(identity)
        if roles is not None:
            return Principal(identity, roles)
    return None


def no_credentials() -> DomainError:
    return DomainError(
        Reason.CREDENTIALS_MISSING,
        "this call needs credentials: send `authorization: Bearer <token>` metadata "
        "(or a client certificate mapped to a role)",
    )


def authorize(principal: Principal, allowed: Collection[Role], method: str) -> None:
    """PERMISSION_DENIED naming the role(s) needed; says nothing about any resource."""
    if principal.roles.isdisjoint(allowed):
        needed = sorted(r.value for r in allowed)
        raise DomainError(
            Reason.ROLE_REQUIRED,
            f"{method} needs the role {' or '.join(needed)}; {principal.name!r} has "
            f"{', '.join(sorted(r.value for r in principal.roles)) or 'no role'}",
            metadata={"required_roles": ",".join(needed), "method": method},
        )


def roles_problem(roles: Sequence[Role | None]) -> str | None:
    """Why a requested list of roles is unusable (None stands for an unknown one); None when it is fine."""
    if not roles:
        return f"at least one role is required ({', '.join(ROLE_NAMES)})"
    if any(r is None for r in roles):
        return f"names an unknown role; valid roles: {', '.join(ROLE_NAMES)}"
    if len(set(roles)) != len(roles):
        return "names a role twice"
    return None


def role_from_name(text: str) -> Role | None:
    """`user-keys`, `USER_KEYS` or `ROLE_USER_KEYS`, case-insensitively; None when no role has that name."""
    cleaned = text.strip().lower().replace("_", "-").removeprefix("role-")
    return next((r for r in Role if r.value == cleaned), None)
