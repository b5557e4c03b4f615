"""Opaque, tamper-evident page tokens (AIP-158).

A token carries the last id of the page and a digest of the query it belongs
to, signed with a key derived from the keyring's primary key and accepted
under any key of the keyring, so every replica accepts the tokens of every
other (also mid-rotation, while keyrings differ only in their order) and a
token edited or reused with another filter is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Protocol, TypeVar

from ..domain.errors import DomainError, Reason, invalid_field


class _Identified(Protocol):
    @property
    def id(self) -> object: ...


T = TypeVar("T", bound=_Identified)

DEFAULT_PAGE_SIZE = 50
# A page of the largest models (25 attachments each) stays well under gRPC's 4 MiB message limit.
MAX_PAGE_SIZE = 200
MAX_TOKEN_CHARS = 512


class PageTokens:
    def __init__(self, signing_keys: list[bytes]) -> None:
        self._signing_keys = signing_keys

    def encode(self, last_id: str, query: str) -> str:
        body = json.dumps({"after": last_id, "query": _digest(query)}, separators=(",", ":")).encode()
        mac = hmac.new(self._signing_keys[0], body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def cut(self, items: Sequence[T], size: int, query: str) -> tuple[Sequence[T], str]:
        """The first `size` of `items` (in id order, fetched with one extra) and the token for the rest."""
        if len(items) <= size:
            return items, ""
        return items[:size], self.encode(str(items[size - 1].id), query)

    def decode(self, token: str, query: str) -> str | None:
        """The id to continue after; None for the first page."""
        if not token:
            return None
        if len(token) > MAX_TOKEN_CHARS:
            raise _bad_token("is not a token this service issued")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _bad_token("is not a token this service issued") from None
        body, mac = raw[:-16], raw[-16:]
        signed = any(
            hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:16]) for key in self._signing_keys
        )
        if len(raw) <= 16 or not signed:
            raise _bad_token("is not a token this service issued")
        payload = json.loads(body)
        if payload.get("query") != _digest(query):
            raise _bad_token("belongs to a request with another filter")
        after = payload.get("after")
        if not isinstance(after, str):
            raise _bad_token("is not a token this service issued")
        return after


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _digest(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _bad_token(description: str) -> DomainError:
    return invalid_field("page_token", description, Reason.PAGE_TOKEN_INVALID)
