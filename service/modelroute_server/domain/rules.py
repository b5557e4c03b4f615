"""Field rules shared by every write path and by the resolver's config check."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from .families import Family

MAX_KEY_BYTES = 10_240
# Query parameters that carry credentials: those belong in api_key, never in a URL every read returns.
_CREDENTIAL_QUERY_KEY = re.compile(r"key|token|secret|passw|signature|\bsig\b|auth|credential", re.IGNORECASE)
SLUG_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
SLUG_RULE = "must be a lower-case slug: a letter, then letters, digits or '-', at most 63 characters, not ending in '-'"
MAX_TEXT = 256
MAX_USER_ID = 256


def slug_problem(value: str) -> str | None:
    if not value:
        return "is required"
    if not SLUG_PATTERN.fullmatch(value):
        return SLUG_RULE
    return None


def api_key_problem(value: str) -> str | None:
    """Why `value` cannot be stored as an API key; None when it can. Never echoes the key."""
    if value == "":
        return "must not be empty"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes"
    if value != value.strip():
        return "must not have leading or trailing white space"
    return None


def key_is_present(value: str | None) -> bool:
    """A key counts only when it has content: white space alone is no key."""
    return value is not None and value.strip() != ""


def base_url_problem(value: str) -> str | None:
    if value != value.strip():
        return "must not have leading or trailing white space"
    if len(value) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    if control_character_problem(value):
        return "must not contain control characters"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        # urlsplit's own text can quote part of the URL: say which rule, not what it saw.
        return "is not a valid URL (malformed host or port)"
    del port
    if parts.scheme not in ("http", "https"):
        return "must be an absolute URL with scheme http or https"
    if not parts.hostname:
        return "must be an absolute URL with a host"
    if parts.username is not None or parts.password is not None:
        # A credential here would be stored in clear and shown by every read: keys go in api_key.
        return "must not contain user info (user:password@); put the credential in api_key"
    if parts.fragment:
        return "must not have a fragment (#...)"
    if any(_CREDENTIAL_QUERY_KEY.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return "must not carry a credential in its query (key, token, secret, password, signature...); use api_key"
    if any(c.isspace() for c in value):
        return "must not contain white space"
    return None


def base_url_requirement_problem(family: Family, base_url: str | None) -> str | None:
    if family.requires_base_url and not base_url:
        return f"is required for the {family.value} family"
    return None


MAX_URL = 2048


def control_character_problem(value: str) -> str | None:
    # PostgreSQL text cannot hold NUL, and no name or URL needs a control character.
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters"
    return None


def display_name_problem(value: str) -> str | None:
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_TEXT:
        return f"must be at most {MAX_TEXT} characters"
    return control_character_problem(value)


# Printable ASCII without white space: most user ids, settled by one match instead of a look at each character.
_PLAIN_USER_ID = re.compile(f"[!-~]{{1,{MAX_USER_ID}}}")


def user_id_problem(value: str) -> str | None:
    if _PLAIN_USER_ID.fullmatch(value):
        return None
    if not value:
        return "is required"
    if len(value) > MAX_USER_ID:
        return f"must be at most {MAX_USER_ID} characters"
    if value != value.strip() or any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain white space or control characters"
    return None
