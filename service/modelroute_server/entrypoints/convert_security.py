"""Translation for access tokens and the audit log (the rest of the API is in convert.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from modelroute.v1 import access_token_pb2, audit_pb2

from ..domain.access import AccessToken, Role
from ..domain.audit import AuditEvent, AuditFilter
from ..domain.errors import DomainError, Reason, invalid_field, quoted
from ..domain.rules import SLUG_PATTERN
from ..service_layer.access_tokens import AccessTokenInput
from .convert import MAX_FILTER_CHARS, to_timestamp

ROLE_TO_PROTO = {role: access_token_pb2.Role.Value("ROLE_" + role.name) for role in Role}
PROTO_TO_ROLE = {value: role for role, value in ROLE_TO_PROTO.items()}


def access_token_id_from_name(name: str, field_path: str) -> str:
    token_id = name.removeprefix("accessTokens/")
    if token_id == name or not SLUG_PATTERN.fullmatch(token_id):
        raise invalid_field(field_path, "must be accessTokens/{access_token} with a slug id")
    return token_id


def access_token_input(message: access_token_pb2.AccessToken) -> AccessTokenInput:
    expiration = message.WhichOneof("expiration")
    return AccessTokenInput(
        roles=tuple(PROTO_TO_ROLE.get(access_token_pb2.Role.ValueType(r)) for r in message.roles),
        expire_time=message.expire_time.ToDatetime(tzinfo=UTC) if expiration == "expire_time" else None,
        ttl=timedelta(seconds=message.ttl.seconds, microseconds=message.ttl.nanos // 1000)
        if expiration == "ttl"
        else None,
    )


def access_token_to_proto(token: AccessToken, now: datetime) -> access_token_pb2.AccessToken:
    return access_token_pb2.AccessToken(
        name=token.name,
        roles=sorted(ROLE_TO_PROTO[r] for r in token.roles),
        create_time=to_timestamp(token.create_time),
        expire_time=to_timestamp(token.expire_time),
        revoke_time=to_timestamp(token.revoke_time),
        creator=token.creator,
        active=token.active(now),
    )


def _value(value: Any) -> struct_pb2.Value | None:
    if value is None:
        return None
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def audit_event_to_proto(event: AuditEvent) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        name=event.name,
        event_time=to_timestamp(event.event_time),
        actor=event.actor,
        method=event.method,
        resource=event.resource,
        config_revision=event.revision or 0,
        changes=[
            audit_pb2.FieldChange(field=c.field, before=_value(c.before), after=_value(c.after)) for c in event.changes
        ],
        user=event.user or "",
    )


# ---------------------------------------------------------------- the audit filter (AIP-160 subset)

_AUDIT_TERM = re.compile(r'\s*([a-z_]+)\s*(>=|<=|=|>|<)\s*("(?:[^"\\]|\\.)*"|[^\s"()]+)\s*')
_AND = re.compile(r"AND(?=\s)")
_EQUALITY_FIELDS = ("resource", "actor", "method", "user")
_FILTER_HELP = (
    'terms joined by AND: resource, actor, method or user = "..." and event_time >=, >, <, <= "RFC 3339 time"'
)


def _unquoted(token: str) -> str:
    if token.startswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def _bad_filter(description: str) -> DomainError:
    return invalid_field("filter", f"{description}; use {_FILTER_HELP}", Reason.FILTER_INVALID)


def audit_filter(text: str) -> AuditFilter:
    if len(text) > MAX_FILTER_CHARS:
        raise invalid_field("filter", f"must be at most {MAX_FILTER_CHARS} characters", Reason.FILTER_INVALID)
    equal: dict[str, str] = {}
    times: list[tuple[str, datetime]] = []
    position, text = 0, text.strip()
    while position < len(text):
        match = _AUDIT_TERM.match(text, position)
        if match is None:
            raise _bad_filter(f"cannot parse {quoted(text[position:])}")
        name, operator, raw = match.groups()
        value = _unquoted(raw)
        if any(not c.isprintable() for c in value):
            raise _bad_filter(f"the value for {name} holds a control character")
        if name in _EQUALITY_FIELDS:
            if operator != "=" or name in equal:
                raise _bad_filter(f"{name} takes one `=` term")
            equal[name] = value
        elif name == "event_time" and operator != "=":
            times.append((operator, _time(value)))
        else:
            raise _bad_filter(f"cannot filter on {quoted(name)} with {operator}")
        position = match.end()
        if position < len(text):
            separator = _AND.match(text, position)
            if separator is None:
                raise _bad_filter(f"expected AND before {quoted(text[position:])}")
            position = separator.end()
            if position >= len(text.rstrip()):
                raise _bad_filter("a term must follow AND")
    return AuditFilter(
        resource=equal.get("resource"),
        actor=equal.get("actor"),
        method=equal.get("method"),
        user=equal.get("user"),
        time_terms=tuple(times),
    )


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE)


def _time(value: str) -> datetime:
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise _bad_filter(f"{quoted(value)} is not an RFC 3339 time with a zone, such as 2026-12-01T09:00:00Z")
    date, clock, fraction, zone = match.groups()
    # Python keeps microseconds: a longer fraction is cut, never rounded up past the time given.
    text = f"{date}T{clock}" + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    try:
        return datetime.fromisoformat(text + ("+00:00" if zone.upper() == "Z" else zone))
    except ValueError:
        raise _bad_filter(f"{quoted(value)} is not a valid time") from None
