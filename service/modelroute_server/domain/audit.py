"""Audit events: who changed what, field by field, with secrets reduced to set / cleared / replaced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from .access import AccessToken
from .models import CallOptions, ModelConfig
from .providers import ProviderConfig, StoredKey

SECRET_SET = "set"
SECRET_CLEARED = "cleared"
SECRET_REPLACED = "replaced"


@dataclass(frozen=True)
class Caller:
    """Who makes a call (a token name, a certificate identity or `cli:<command>`) and which method."""

    actor: str
    method: str


@dataclass(frozen=True)
class FieldChange:
    """One field's value before and after; None means absent. Values are JSON-ready scalars or lists."""

    field: str
    before: Any = None
    after: Any = None


@dataclass(frozen=True)
class AuditEntry:
    """What one state-changing call changed (the event before it is stored)."""

    resource: str
    changes: tuple[FieldChange, ...]
    user: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    id: int
    event_time: datetime
    actor: str
    method: str
    resource: str
    revision: int | None
    changes: tuple[FieldChange, ...]
    user: str | None = None

    @property
    def name(self) -> str:
        return f"auditEvents/{self.id}"


@dataclass(frozen=True)
class AuditFilter:
    """Equality terms and a time range over the audit log; None means no condition."""

    resource: str | None = None
    actor: str | None = None
    method: str | None = None
    user: str | None = None
    # (operator, time) pairs; operators ">=", ">", "<", "<=".
    time_terms: tuple[tuple[str, datetime], ...] = ()

    @property
    def canonical(self) -> str:
        times = ",".join(f"{op}{moment.isoformat()}" for op, moment in self.time_terms)
        return f"resource={self.resource};actor={self.actor};method={self.method};user={self.user};time={times}"


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> tuple[FieldChange, ...]:
    """Every field whose value differs, in the order the records list them (a missing record: all absent)."""
    old, new = before or {}, after or {}
    names = list(old) + [name for name in new if name not in old]
    return tuple(FieldChange(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n))


def secret_change(field_name: str, before: str | None, after: str | None) -> tuple[FieldChange, ...]:
    """A secret's change, never its value: set, cleared or replaced (nothing when it is the same)."""
    if before == after:
        return ()
    if before is None:
        return (FieldChange(field_name, None, SECRET_SET),)
    if after is None:
        return (FieldChange(field_name, SECRET_SET, SECRET_CLEARED),)
    return (FieldChange(field_name, SECRET_SET, SECRET_REPLACED),)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def provider_record(config: ProviderConfig) -> dict[str, Any]:
    """The provider's plain fields as audited; its key is audited through `secret_change` only."""
    return {
        "family": config.family.value,
        "display_name": config.display_name,
        "base_url": config.base_url,
        "enabled": config.enabled,
        "credential_policy.central_api_key_enabled": config.policy.central_api_key_enabled,
        "credential_policy.allow_user_api_key": config.policy.allow_user_api_key,
        "credential_policy.allow_central_api_key_fallback": config.policy.allow_central_api_key_fallback,
        **_health_policy_record(config),
    }


def _health_policy_record(config: ProviderConfig) -> dict[str, Any]:
    policy = config.health_policy
    return {} if policy.is_empty else {f"health_policy.{name}": v for name, v in policy.in_seconds().items()}


def comparable_secret(stored: StoredKey | None) -> str | None:
    """A stored key's plaintext, for telling set / replaced / unchanged apart; never recorded.

    An undecryptable key compares unequal to every key, so writing any key over it replaces it.
    """
    if stored is None:
        return None
    return stored.secret if stored.secret is not None else "\0undecryptable"


def provider_secret(config: ProviderConfig | None) -> str | None:
    return comparable_secret(config.api_key if config is not None else None)


def model_record(model: ModelConfig) -> dict[str, Any]:
    record: dict[str, Any] = {
        "family": model.family.value,
        "model": model.model,
        "display_name": model.display_name,
        "enabled": model.enabled,
        "is_default": model.is_default,
        "context_limit": model.context_limit,
        "compression_threshold": model.compression_threshold,
    }
    record.update({f"options.{f.name}": getattr(model.options, f.name) for f in fields(CallOptions)})
    record["provider_configs"] = [f"providerConfigs/{pid}" for pid in model.attachments]
    # Only the attachments that have one: a change of list without overrides records no override field.
    overrides = {f"providerConfigs/{pid}": model.override_at(i) for i, pid in enumerate(model.attachments)}
    record["model_overrides"] = {name: override for name, override in overrides.items() if override} or None
    record["delete_time"] = _time(model.delete_time)
    return record


def access_token_record(token: AccessToken) -> dict[str, Any]:
    return {
        "roles": token.role_names,
        "expire_time": _time(token.expire_time),
        "revoke_time": _time(token.revoke_time),
    }
