"""Repositories over SQLAlchemy Core: domain objects in, domain objects out.

Every read of key material goes through `_open_provider_key` or
`_open_user_key`, the one decrypting path (guarantee 2 in docs/behaviour.md): no query hands a
ciphertext to a caller.
"""

from __future__ import annotations

import builtins
import json
import logging
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert

from ..domain.access import AccessToken, Role
from ..domain.audit import AuditEntry, AuditEvent, AuditFilter, Caller, FieldChange
from ..domain.errors import DomainError, Reason
from ..domain.families import Family
from ..domain.health import NO_OVERRIDE, AttachmentHealth, HealthPolicyOverride, KeyMark
from ..domain.models import CallOptions, ModelConfig
from ..domain.providers import CredentialPolicy, ProviderConfig, StoredKey
from .crypto import (
    Keyring,
    SealedKey,
    new_incarnation,
    open_bound,
    open_user_key,
    provider_key_binding,
    seal_bound,
    user_key_binding,
)
from .schema import (
    access_tokens,
    audit_events,
    config_revision,
    key_rejections,
    model_attachments,
    model_configs,
    provider_configs,
    provider_health,
    user_provider_keys,
)

log = logging.getLogger(__name__)
OPTION_COLUMNS = tuple(f.name for f in fields(CallOptions))


def any_of(column: sa.ColumnElement[str], values: Iterable[str]) -> sa.ColumnElement[bool]:
    """`column = ANY(array)`: one bind parameter however many values (PostgreSQL takes at most 65,535)."""
    return column == sa.any_(sa.literal(list(values), type_=postgresql.ARRAY(sa.Text)))


# Statements every write runs, built once (building and keying one anew costs about as much as running it).
_CURRENT_REVISION = sa.select(config_revision.c.revision)
_TAKE_SEQUENCE = sa.select(sa.func.modelroute_take_sequence(True))
_SEQUENCE_TAKEN = sa.select(sa.func.current_setting("modelroute.change_sequence", True))


class ChangeSequence:
    """The change sequence of this transaction. The database's triggers record every changed row in the
    change log under it and announce it at commit (migration 0004)."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def current_revision(self) -> int:
        return int(self._connection.execute(_CURRENT_REVISION).scalar_one())

    def take_revision(self) -> int:
        """The next sequence number, as the config revision this transaction produces. Its row lock
        serialises every writer until commit, so sequence order is commit order."""
        return int(self._connection.execute(_TAKE_SEQUENCE).scalar_one())

    def sequence_taken(self) -> int | None:
        """The sequence this transaction holds, if it changed anything replicas read."""
        taken = self._connection.execute(_SEQUENCE_TAKEN).scalar_one()
        return int(taken) if taken else None


class ProviderConfigRepository:
    def __init__(self, connection: sa.Connection, keyring: Keyring) -> None:
        self._connection = connection
        self._keyring = keyring

    def get(self, provider_config_id: str) -> ProviderConfig | None:
        row = self._connection.execute(
            sa.select(provider_configs).where(provider_configs.c.id == provider_config_id)
        ).one_or_none()
        return self._to_domain(row) if row else None

    def get_many(self, provider_config_ids: Iterable[str]) -> dict[str, ProviderConfig]:
        ids = list(set(provider_config_ids))
        if not ids:
            return {}
        rows = self._connection.execute(sa.select(provider_configs).where(any_of(provider_configs.c.id, ids)))
        return {row.id: self._to_domain(row) for row in rows}

    def list(
        self,
        *,
        family: Family | None = None,
        enabled: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ProviderConfig]:
        query = sa.select(provider_configs).order_by(provider_configs.c.id)
        if family is not None:
            query = query.where(provider_configs.c.family == family.value)
        if enabled is not None:
            query = query.where(provider_configs.c.enabled == enabled)
        if after_id is not None:
            query = query.where(provider_configs.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        return [self._to_domain(row) for row in self._connection.execute(query)]

    def add(self, config: ProviderConfig, revision: int) -> None:
        """Stores `config`, sealing the plaintext key it carries."""
        self._connection.execute(
            sa.insert(provider_configs).values(
                id=config.id,
                revision=revision,
                create_time=sa.func.now(),
                update_time=sa.func.now(),
                **self._columns(config),
                **self._sealed_columns(config),
            )
        )

    def update(self, config: ProviderConfig, revision: int, *, key_changed: bool) -> None:
        """Rewrites `config`; its key (a plaintext to seal, or None to clear) only when `key_changed`."""
        values: dict[str, Any] = dict(self._columns(config), revision=revision, update_time=sa.func.now())
        if key_changed:
            values.update(self._sealed_columns(config))
        self._connection.execute(sa.update(provider_configs).where(provider_configs.c.id == config.id).values(**values))

    def delete(self, provider_config_id: str) -> None:
        self._connection.execute(sa.delete(provider_configs).where(provider_configs.c.id == provider_config_id))

    def _columns(self, config: ProviderConfig) -> dict[str, Any]:
        return {
            "family": config.family.value,
            "display_name": config.display_name,
            "base_url": config.base_url,
            "enabled": config.enabled,
            "central_api_key_enabled": config.policy.central_api_key_enabled,
            "allow_user_api_key": config.policy.allow_user_api_key,
            "allow_central_api_key_fallback": config.policy.allow_central_api_key_fallback,
            **health_policy_columns(config.health_policy),
        }

    def _sealed_columns(self, config: ProviderConfig) -> dict[str, Any]:
        if config.api_key is None or config.api_key.secret is None:
            # A keyless row is a new incarnation too: no earlier ciphertext may be written back onto it.
            return {"api_key_ciphertext": None, "api_key_key_id": None, "key_incarnation": new_incarnation()}
        sealed = seal_bound(self._keyring, config.api_key.secret, partial(provider_key_binding, config.id))
        return {
            "api_key_ciphertext": sealed.ciphertext,
            "api_key_key_id": sealed.key_id,
            "key_incarnation": sealed.incarnation,
        }

    def _to_domain(self, row: sa.Row[Any]) -> ProviderConfig:
        return provider_from_row(row, self._keyring)


def provider_from_row(row: sa.Row[Any], keyring: Keyring) -> ProviderConfig:
    return ProviderConfig(
        id=row.id,
        family=Family(row.family),
        display_name=row.display_name,
        base_url=row.base_url,
        enabled=row.enabled,
        policy=CredentialPolicy(
            row.central_api_key_enabled, row.allow_user_api_key, row.allow_central_api_key_fallback
        ),
        api_key=_open_provider_key(row, keyring),
        create_time=row.create_time,
        update_time=row.update_time,
        revision=row.revision,
        health_policy=_health_policy_from_row(row),
    )


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value is not None else None


def _health_policy_from_row(row: sa.Row[Any]) -> HealthPolicyOverride:
    mapping = row._mapping
    if "health_failure_threshold" not in mapping:  # a row read without the columns (a narrower select)
        return NO_OVERRIDE
    policy = HealthPolicyOverride(
        row.health_failure_threshold,
        _seconds(row.health_failure_window_seconds),
        _seconds(row.health_base_cooldown_seconds),
        _seconds(row.health_max_cooldown_seconds),
    )
    return NO_OVERRIDE if policy.is_empty else policy


def health_policy_columns(policy: HealthPolicyOverride) -> dict[str, Any]:
    return {f"health_{name}": value for name, value in policy.in_seconds().items()}


def sealed_from_row(row: sa.Row[Any]) -> SealedKey:
    incarnation = bytes(row.key_incarnation) if row.key_incarnation is not None else None
    return SealedKey(row.api_key_key_id, bytes(row.api_key_ciphertext), incarnation)


def _open_provider_key(row: sa.Row[Any], keyring: Keyring) -> StoredKey | None:
    if row.api_key_ciphertext is None:
        return None
    return StoredKey(open_bound(keyring, sealed_from_row(row), partial(provider_key_binding, row.id)))


def _open_user_key(row: sa.Row[Any], keyring: Keyring) -> StoredKey:
    return open_user_key(keyring, row.user_id, row.provider_config_id, sealed_from_row(row))


class ModelConfigRepository:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def get(self, model_config_id: str) -> ModelConfig | None:
        row = self._connection.execute(_MODEL_BY_ID, {"id": model_config_id}).first()
        return model_from_row(row) if row is not None else None

    def list(
        self,
        *,
        show_deleted: bool = False,
        family: Family | None = None,
        enabled: bool | None = None,
        is_default: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ModelConfig]:
        query = sa.select(model_configs).order_by(model_configs.c.id)
        if not show_deleted:
            query = query.where(model_configs.c.delete_time.is_(None))
        if family is not None:
            query = query.where(model_configs.c.family == family.value)
        if enabled is not None:
            query = query.where(model_configs.c.enabled == enabled)
        if is_default is not None:
            query = query.where(model_configs.c.is_default == is_default)
        if after_id is not None:
            query = query.where(model_configs.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        return self._load(query)

    def attached_to(self, provider_config_id: str) -> builtins.list[ModelConfig]:
        attached = sa.select(model_attachments.c.model_config_id).where(
            model_attachments.c.provider_config_id == provider_config_id
        )
        return self._load(sa.select(model_configs).where(model_configs.c.id.in_(attached)).order_by(model_configs.c.id))

    def promotion_candidate(self, excluding: Collection[str]) -> ModelConfig | None:
        """The oldest enabled live model not among `excluding`, ties broken by id (`next_default`'s order)."""
        query = (
            sa.select(model_configs)
            .where(model_configs.c.enabled, model_configs.c.delete_time.is_(None))
            .order_by(model_configs.c.create_time, model_configs.c.id)
            .limit(1)
        )
        if excluding:
            query = query.where(sa.not_(any_of(model_configs.c.id, excluding)))
        models = self._load(query)
        return models[0] if models else None

    def default(self) -> ModelConfig | None:
        models = self._load(
            sa.select(model_configs).where(model_configs.c.is_default, model_configs.c.delete_time.is_(None))
        )
        return models[0] if models else None

    def add(self, model: ModelConfig, revision: int) -> None:
        self._connection.execute(
            sa.insert(model_configs).values(
                id=model.id,
                revision=revision,
                create_time=sa.func.now(),
                update_time=sa.func.now(),
                **self._columns(model),
            )
        )
        self._insert_attachments(model)

    def update(self, model: ModelConfig, revision: int, *, attachments_changed: bool) -> None:
        if attachments_changed:
            # Delete first: the family check on attachments must hold at every statement.
            self._connection.execute(
                sa.delete(model_attachments).where(model_attachments.c.model_config_id == model.id)
            )
        self._connection.execute(
            sa.update(model_configs)
            .where(model_configs.c.id == model.id)
            .values(revision=revision, update_time=sa.func.now(), **self._columns(model))
        )
        if attachments_changed:
            self._insert_attachments(model)

    def set_default_flag(self, model_config_id: str, is_default: bool, revision: int) -> None:
        self._connection.execute(
            sa.update(model_configs)
            .where(model_configs.c.id == model_config_id)
            .values(is_default=is_default, revision=revision, update_time=sa.func.now())
        )

    def _columns(self, model: ModelConfig) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "family": model.family.value,
            "model": model.model,
            "display_name": model.display_name,
            "enabled": model.enabled,
            "is_default": model.is_default,
            "context_limit": model.context_limit,
            "compression_threshold": model.compression_threshold,
            "delete_time": model.delete_time,
        }
        columns.update({name: getattr(model.options, name) for name in OPTION_COLUMNS})
        return columns

    def _insert_attachments(self, model: ModelConfig) -> None:
        if not model.attachments:  # a model emptied by a forced provider delete
            return
        # Each row carries its provider config's family (from that row: the database checks it against
        # the model's, unless the attachment has an override).
        inserted = self._connection.execute(
            _INSERT_ATTACHMENTS,
            {
                "model_config_id": model.id,
                "model_family": model.family.value,
                "provider_config_ids": list(model.attachments),
                "overrides": [model.override_at(i) or None for i in range(len(model.attachments))],
            },
        )
        if inserted.rowcount != len(model.attachments):
            raise RuntimeError(f"{model.name}: a listed provider config vanished while its list was written")

    def overrides_accepted(self) -> bool:
        served_by = self._connection.execute(_SERVED_BY).scalar()
        return served_by is not None and not set(served_by) & BUILDS_WITHOUT_OVERRIDES

    def _load(self, query: sa.Select[Any]) -> builtins.list[ModelConfig]:
        rows = self._connection.execute(query.add_columns(ATTACHMENT_LIST, OVERRIDE_LIST))
        return [model_from_row(row) for row in rows]


_INSERT_ATTACHMENTS = sa.text(
    """
    INSERT INTO model_attachments (model_config_id, provider_config_id, family, position, model_family, model_override)
    SELECT :model_config_id, p.id, p.family, listed.ordinality - 1, :model_family, listed.model_override
    FROM unnest(CAST(:provider_config_ids AS text[]), CAST(:overrides AS text[]))
         WITH ORDINALITY AS listed (provider_config_id, model_override, ordinality)
    JOIN provider_configs p ON p.id = listed.provider_config_id
    """
)
# The heads of the builds that predate overrides: they would send an override's provider config the model's
# own name, so no override is written while the schema says one of them may serve it (migration 0007).
BUILDS_WITHOUT_OVERRIDES = frozenset({"0004", "0005"})
_SERVED_BY = sa.text(
    "SELECT served_by FROM schema_compatibility WHERE revision = (SELECT version_num FROM alembic_version)"
)
# Each model's attachments in order, read with the model's own row (no second query, no id list).
ATTACHMENT_LIST = (
    sa.select(
        sa.func.coalesce(
            sa.func.array_agg(
                postgresql.aggregate_order_by(model_attachments.c.provider_config_id, model_attachments.c.position)
            ),
            sa.literal([], type_=postgresql.ARRAY(sa.Text)),
        )
    )
    .where(model_attachments.c.model_config_id == model_configs.c.id)
    .scalar_subquery()
    .label("attachment_ids")
)
# Their overrides, '' where one has none; NULL when none has one.
OVERRIDE_LIST = (
    sa.select(
        sa.case(
            (
                sa.func.bool_or(model_attachments.c.model_override.is_not(None)),
                sa.func.array_agg(
                    postgresql.aggregate_order_by(
                        sa.func.coalesce(model_attachments.c.model_override, ""), model_attachments.c.position
                    )
                ),
            ),
        )
    )
    .where(model_attachments.c.model_config_id == model_configs.c.id)
    .scalar_subquery()
    .label("attachment_overrides")
)
# Built once: a write reads its model twice, and building (and keying) the statement anew each time
# cost more than running it.
_MODEL_BY_ID = sa.select(model_configs, ATTACHMENT_LIST, OVERRIDE_LIST).where(model_configs.c.id == sa.bindparam("id"))
# Shared by every model without call options.
NO_OPTIONS = CallOptions()


def model_from_row(row: sa.Row[Any]) -> ModelConfig:
    """`row` carries ATTACHMENT_LIST and OVERRIDE_LIST. Provider ids are interned and option-less models share one
    CallOptions: a hundred thousand models hold a thousand distinct ids."""
    options = CallOptions(**{name: getattr(row, name) for name in OPTION_COLUMNS})
    return ModelConfig(
        id=row.id,
        family=Family(row.family),
        model=row.model,
        display_name=row.display_name,
        context_limit=row.context_limit,
        attachments=tuple(sys.intern(p) for p in row.attachment_ids),
        enabled=row.enabled,
        is_default=row.is_default,
        compression_threshold=row.compression_threshold,
        options=NO_OPTIONS if options == NO_OPTIONS else options,
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        revision=row.revision,
        overrides=tuple(row.attachment_overrides or ()),
    )


class UserKeyRepository:
    def __init__(self, connection: sa.Connection, keyring: Keyring) -> None:
        self._connection = connection
        self._keyring = keyring

    def for_user(self, user: str) -> dict[str, StoredKey]:
        rows = self._connection.execute(sa.select(user_provider_keys).where(user_provider_keys.c.user_id == user))
        return {row.provider_config_id: _open_user_key(row, self._keyring) for row in rows}

    def get(self, user: str, provider_config_id: str) -> StoredKey | None:
        row = self._connection.execute(
            sa.select(user_provider_keys).where(
                user_provider_keys.c.user_id == user, user_provider_keys.c.provider_config_id == provider_config_id
            )
        ).one_or_none()
        return _open_user_key(row, self._keyring) if row is not None else None

    def exists(self, user: str, provider_config_id: str) -> bool:
        """Whether the key exists (without decrypting it)."""
        return (
            self._connection.execute(
                sa.select(sa.literal(True)).where(
                    user_provider_keys.c.user_id == user,
                    user_provider_keys.c.provider_config_id == provider_config_id,
                )
            ).first()
            is not None
        )

    def with_revision(self, user: str, provider_config_id: str) -> tuple[StoredKey, int] | None:
        """The key, opened, and the config revision of its last change (0: set before that was kept)."""
        row = self._connection.execute(
            sa.select(user_provider_keys).where(
                user_provider_keys.c.user_id == user, user_provider_keys.c.provider_config_id == provider_config_id
            )
        ).one_or_none()
        return (_open_user_key(row, self._keyring), row.revision or 0) if row is not None else None

    def put(self, user: str, provider_config_id: str, api_key: str, revision: int) -> None:
        sealed = seal_bound(self._keyring, api_key, partial(user_key_binding, user, provider_config_id))
        statement = insert(user_provider_keys).values(
            user_id=user,
            provider_config_id=provider_config_id,
            api_key_ciphertext=sealed.ciphertext,
            api_key_key_id=sealed.key_id,
            key_incarnation=sealed.incarnation,
            create_time=sa.func.now(),
            update_time=sa.func.now(),
            revision=revision,
        )
        self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=[user_provider_keys.c.user_id, user_provider_keys.c.provider_config_id],
                set_={
                    "api_key_ciphertext": statement.excluded.api_key_ciphertext,
                    "api_key_key_id": statement.excluded.api_key_key_id,
                    "key_incarnation": statement.excluded.key_incarnation,
                    "update_time": sa.func.now(),
                    "revision": statement.excluded.revision,
                },
            )
        )

    def delete(self, user: str, provider_config_id: str) -> bool:
        result = self._connection.execute(
            sa.delete(user_provider_keys).where(
                user_provider_keys.c.user_id == user,
                user_provider_keys.c.provider_config_id == provider_config_id,
            )
        )
        return bool(result.rowcount)

    def delete_for_provider(self, provider_config_id: str) -> int:
        result = self._connection.execute(
            sa.delete(user_provider_keys).where(user_provider_keys.c.provider_config_id == provider_config_id)
        )
        return int(result.rowcount)


class AccessTokenRepository:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def get(self, access_token_id: str) -> AccessToken | None:
        row = self._connection.execute(
            sa.select(access_tokens).where(access_tokens.c.id == access_token_id)
        ).one_or_none()
        return access_token_from_row(row) if row is not None else None

    def list(self, *, after_id: str | None = None, limit: int | None = None) -> builtins.list[AccessToken]:
        query = sa.select(access_tokens).order_by(access_tokens.c.id)
        if after_id is not None:
            query = query.where(access_tokens.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        return [access_token_from_row(row) for row in self._connection.execute(query)]

    def add(self, token: AccessToken) -> None:
        self._connection.execute(
            sa.insert(access_tokens).values(
                id=token.id,
                token_sha256=token.token_hash,
                roles=sorted(r.value for r in token.roles),
                create_time=token.create_time or sa.func.now(),
                expire_time=token.expire_time,
                creator=token.creator,
            )
        )

    def set_hash(self, access_token_id: str, token_hash: bytes) -> None:
        """A new secret for a token (the embedded bootstrap re-issuing a lost token file)."""
        self._connection.execute(
            sa.update(access_tokens).where(access_tokens.c.id == access_token_id).values(token_sha256=token_hash)
        )

    def revoke(self, access_token_id: str) -> None:
        self._connection.execute(
            sa.update(access_tokens)
            .where(access_tokens.c.id == access_token_id, access_tokens.c.revoke_time.is_(None))
            .values(revoke_time=sa.func.now())
        )


def access_token_from_row(row: sa.Row[Any]) -> AccessToken:
    return AccessToken(
        id=row.id,
        roles=frozenset(Role(r) for r in row.roles),
        token_hash=bytes(row.token_sha256),
        create_time=row.create_time,
        expire_time=row.expire_time,
        revoke_time=row.revoke_time,
        creator=row.creator,
    )


_TIME_OPERATORS = {
    ">=": lambda column, value: column >= value,
    ">": lambda column, value: column > value,
    "<": lambda column, value: column < value,
    "<=": lambda column, value: column <= value,
}


class AuditRepository:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def add(self, caller: Caller, entry: AuditEntry, revision: int | None) -> None:
        self._connection.execute(
            sa.insert(audit_events).values(
                event_time=sa.func.now(),
                actor=caller.actor,
                method=caller.method,
                resource=entry.resource,
                revision=revision,
                user_id=entry.user,
                changes=[{"field": c.field, "before": c.before, "after": c.after} for c in entry.changes],
            )
        )

    def list(
        self, query: AuditFilter, *, before_id: int | None = None, limit: int | None = None
    ) -> builtins.list[AuditEvent]:
        """Newest first."""
        statement = sa.select(audit_events).order_by(audit_events.c.id.desc())
        for column, value in (
            (audit_events.c.resource, query.resource),
            (audit_events.c.actor, query.actor),
            (audit_events.c.method, query.method),
            (audit_events.c.user_id, query.user),
        ):
            if value is not None:
                statement = statement.where(column == value)
        for operator, moment in query.time_terms:
            statement = statement.where(_TIME_OPERATORS[operator](audit_events.c.event_time, moment))
        if before_id is not None:
            statement = statement.where(audit_events.c.id < before_id)
        if limit is not None:
            statement = statement.limit(limit)
        return [audit_event_from_row(row) for row in self._connection.execute(statement)]

    def prune(self, before: datetime) -> int:
        result = self._connection.execute(sa.delete(audit_events).where(audit_events.c.event_time < before))
        return int(result.rowcount)


def audit_event_from_row(row: sa.Row[Any]) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        event_time=row.event_time,
        actor=row.actor,
        method=row.method,
        resource=row.resource,
        revision=row.revision,
        changes=tuple(FieldChange(c["field"], c.get("before"), c.get("after")) for c in row.changes),
        user=row.user_id,
    )


def database_unavailable(exc: BaseException) -> DomainError:
    """A lost database is UNAVAILABLE to the caller, never INTERNAL (logged without any bound value)."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    log.warning("database unreachable: %s", type(cause).__name__)
    return DomainError(Reason.DATABASE_UNAVAILABLE, "the configuration database is unreachable")


# SQLSTATE classes of a server that is gone or going: connection exceptions, operator intervention.
_CONNECTION_SQLSTATES = ("08", "57P")


def lost_connection(exc: BaseException) -> bool:
    """A connection that broke mid-use (retryable later), not a statement the server refused.

    SQLAlchemy marks disconnects it recognises as `connection_invalidated`; a server going
    away reports SQLSTATE class 08 or 57P. Anything else is a real fault and stays one.
    """
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate is not None and sqlstate.startswith(_CONNECTION_SQLSTATES)


def connect(engine: sa.Engine) -> sa.Connection:
    try:
        return engine.connect()
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise database_unavailable(exc) from exc


# Bounds any one query; per transaction, so it holds behind a transaction-pooling PgBouncer too.
STATEMENT_TIMEOUT = sa.text("SET LOCAL statement_timeout = '60s'")
# An admin read is a page of indexed rows; one that runs longer would hold the one thread admin reads get
# (entrypoints/executors.py) from every other, so it ends sooner, as DATABASE_BUSY.
READ_STATEMENT_TIMEOUT = timedelta(seconds=10)
READ_TIMEOUT = sa.text("SELECT set_config('statement_timeout', :statement_ms, true)")
# A write's own timeouts, also per transaction (set_config(..., true) is SET LOCAL with bound values).
# With the transaction's own clock (now() is fixed for a transaction), so that asking for it costs nothing.
WRITE_TIMEOUTS = sa.text(
    "SELECT set_config('lock_timeout', :lock_ms, true), set_config('statement_timeout', :statement_ms, true), now()"
)
# SQLSTATEs of a transaction that waited too long or lost a race: lock_not_available (lock_timeout),
# query_canceled (statement_timeout), deadlock_detected, serialization_failure. Trying again shortly
# is the remedy for each.
_BUSY_SQLSTATES = frozenset({"55P03", "57014", "40P01", "40001"})
BUSY_RETRY_DELAY = timedelta(seconds=1)


def milliseconds(delta: timedelta) -> str:
    """A timeout as PostgreSQL's settings take it through set_config."""
    return str(int(delta.total_seconds() * 1000))


@dataclass(frozen=True)
class WriteTimeouts:
    lock: timedelta = timedelta(seconds=5)
    statement: timedelta = timedelta(seconds=15)


DEFAULT_WRITE_TIMEOUTS = WriteTimeouts()


def database_busy(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.DBAPIError) and getattr(exc.orig, "sqlstate", None) in _BUSY_SQLSTATES


def busy_error(exc: BaseException) -> DomainError:
    """A write that ran past its lock or statement timeout (or lost a deadlock): UNAVAILABLE with a retry
    delay, since the same call is likely to succeed once the lock holder is done."""
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    log.warning("database busy", extra={"sqlstate": sqlstate})
    return DomainError(
        Reason.DATABASE_BUSY,
        "the configuration database is busy (a lock or a statement took too long); retry shortly",
        retry_delay=BUSY_RETRY_DELAY,
    )


HealthKey = tuple[str, str]  # (provider config id, upstream model)

# Keys and states travel as one JSON document each: one parameter however many rows, and a small fraction
# of the client's CPU that a PostgreSQL array per column costs to encode (a batch of attempt reports names
# up to a thousand keys, on the server's busiest write path).
_LOCK_HEALTH = sa.text(
    """
    SELECT h.* FROM provider_health h
    JOIN json_array_elements(CAST(:keys AS json)) AS k
      ON h.provider_config_id = k->>0 AND h.model = k->>1
    ORDER BY h.provider_config_id, h.model
    FOR UPDATE OF h
    """
)
# Every write of a batch in one statement: deletes (a state healthy again), updates and inserts, by `op`.
# A row for a config that is gone is not inserted (the config's delete removed its health); an insert that
# another writer made first is not returned.
_SAVE_HEALTH = sa.text(
    """
    WITH v AS (
        SELECT * FROM json_to_recordset(CAST(:states AS json)) AS v (
            op text, provider_config_id text, model text, consecutive_failures integer,
            window_start timestamptz, window_failures integer, trips integer,
            last_cooldown_seconds double precision, cooldown_until timestamptz)
    ), deleted AS (
        DELETE FROM provider_health h USING v
        WHERE v.op = 'delete' AND h.provider_config_id = v.provider_config_id AND h.model = v.model
    ), updated AS (
        UPDATE provider_health h SET consecutive_failures = v.consecutive_failures,
            window_start = v.window_start, window_failures = v.window_failures, trips = v.trips,
            last_cooldown_seconds = v.last_cooldown_seconds, cooldown_until = v.cooldown_until,
            update_time = now()
        FROM v WHERE v.op = 'update' AND h.provider_config_id = v.provider_config_id AND h.model = v.model
    )
    INSERT INTO provider_health (provider_config_id, model, consecutive_failures, window_start,
        window_failures, trips, last_cooldown_seconds, cooldown_until)
    SELECT v.provider_config_id, v.model, v.consecutive_failures, v.window_start, v.window_failures,
        v.trips, v.last_cooldown_seconds, v.cooldown_until
    FROM v JOIN provider_configs p ON p.id = v.provider_config_id
    WHERE v.op = 'insert'
    ORDER BY v.provider_config_id, v.model
    ON CONFLICT DO NOTHING
    RETURNING provider_config_id, model
    """
)


def _keys_document(keys: Iterable[HealthKey]) -> str:
    return json.dumps(sorted(set(keys)))


def _state_record(op: str, key: HealthKey, state: AttachmentHealth) -> dict[str, Any]:
    return {
        "op": op,
        "provider_config_id": key[0],
        "model": key[1],
        "consecutive_failures": state.consecutive_failures,
        "window_start": _iso(state.window_start),
        "window_failures": state.window_failures,
        "trips": state.trips,
        "last_cooldown_seconds": state.last_cooldown.total_seconds(),
        "cooldown_until": _iso(state.cooldown_until),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _health_from_row(row: sa.Row[Any]) -> AttachmentHealth:
    return AttachmentHealth(
        row.consecutive_failures,
        row.window_start,
        row.window_failures,
        row.trips,
        timedelta(seconds=row.last_cooldown_seconds),
        row.cooldown_until,
    )


class ProviderHealthRepository:
    """Provider health rows and rejected-key marks (migration 0008). Every statement has a fixed size."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def locked(self, keys: Iterable[HealthKey]) -> dict[HealthKey, AttachmentHealth]:
        """The stored state of those `keys` that have a row, locked until commit (in key order, so two
        writers never wait on each other in a cycle); a key with no row is healthy."""
        rows = self._connection.execute(_LOCK_HEALTH, {"keys": _keys_document(keys)})
        return {(r.provider_config_id, r.model): _health_from_row(r) for r in rows}

    def save(self, states: Mapping[HealthKey, AttachmentHealth], stored: Collection[HealthKey]) -> set[HealthKey]:
        """Writes each state, in one statement: a healthy one deletes its row; `stored` are the keys that
        have one. Returns the keys whose new row could not be inserted because another writer inserted it
        first."""
        records = []
        inserts = set()
        for key, state in states.items():
            if key in stored:
                records.append(_state_record("delete" if state.healthy else "update", key, state))
            elif not state.healthy:
                records.append(_state_record("insert", key, state))
                inserts.add(key)
        if not records:
            return set()
        inserted = {tuple(r) for r in self._connection.execute(_SAVE_HEALTH, {"states": json.dumps(records)})}
        return {k for k in inserts if k not in inserted}

    def of_providers(self, provider_config_ids: Iterable[str]) -> dict[str, list[tuple[str, AttachmentHealth]]]:
        """Every upstream model's state with any failure, trip or cooldown, by provider config id."""
        ids = list(set(provider_config_ids))
        found: dict[str, list[tuple[str, AttachmentHealth]]] = {}
        if ids:
            rows = self._connection.execute(
                sa.select(provider_health)
                .where(any_of(provider_health.c.provider_config_id, ids))
                .order_by(provider_health.c.provider_config_id, provider_health.c.model)
            )
            for row in rows:
                found.setdefault(row.provider_config_id, []).append((row.model, _health_from_row(row)))
        return found

    def reset(self, provider_config_id: str) -> bool:
        """Ends every cooldown of the config and clears its central key's mark; whether anything was there."""
        health = self._connection.execute(
            sa.delete(provider_health).where(provider_health.c.provider_config_id == provider_config_id)
        )
        mark = self._connection.execute(
            sa.delete(key_rejections).where(
                key_rejections.c.provider_config_id == provider_config_id, key_rejections.c.user_id == ""
            )
        )
        return bool(health.rowcount or mark.rowcount)

    def marks(self, provider_config_ids: Iterable[str], user: str = "") -> dict[str, KeyMark]:
        """The marks of `user`'s keys ('' for the central keys) for those configs, by provider config id."""
        ids = list(set(provider_config_ids))
        if not ids:
            return {}
        rows = self._connection.execute(
            sa.select(key_rejections).where(
                any_of(key_rejections.c.provider_config_id, ids), key_rejections.c.user_id == user
            )
        )
        return {r.provider_config_id: KeyMark(r.key_source, bytes(r.key_fingerprint), r.rejected_time) for r in rows}

    def user_marks(self, user: str) -> dict[str, KeyMark]:
        rows = self._connection.execute(sa.select(key_rejections).where(key_rejections.c.user_id == user))
        return {r.provider_config_id: KeyMark(r.key_source, bytes(r.key_fingerprint), r.rejected_time) for r in rows}

    def put_mark(self, provider_config_id: str, user: str, mark: KeyMark) -> None:
        statement = insert(key_rejections).values(
            provider_config_id=provider_config_id,
            user_id=user,
            key_source=mark.key_source,
            key_fingerprint=mark.fingerprint,
            rejected_time=mark.rejected_time,
        )
        self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=[key_rejections.c.provider_config_id, key_rejections.c.user_id],
                set_={
                    "key_source": statement.excluded.key_source,
                    "key_fingerprint": statement.excluded.key_fingerprint,
                    "rejected_time": statement.excluded.rejected_time,
                },
            )
        )

    def delete_mark(self, provider_config_id: str, user: str) -> bool:
        result = self._connection.execute(
            sa.delete(key_rejections).where(
                key_rejections.c.provider_config_id == provider_config_id, key_rejections.c.user_id == user
            )
        )
        return bool(result.rowcount)


class UnitOfWork:
    """One transaction per use case; nothing is written unless `commit` is called (the service layer's
    `unit_of_work.UnitOfWork` port). A database that is unreachable or goes away raises
    DomainError(DATABASE_UNAVAILABLE)."""

    def __init__(
        self,
        engine: sa.Engine,
        keyring: Keyring,
        *,
        read_only: bool = False,
        write_timeouts: WriteTimeouts = DEFAULT_WRITE_TIMEOUTS,
        read_timeout: timedelta = READ_STATEMENT_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._keyring = keyring
        self._read_only = read_only
        self._write_timeouts = write_timeouts
        self._read_timeout = read_timeout
        self._now: datetime | None = None

    def __enter__(self) -> UnitOfWork:
        self._now = None
        # A pooled connection is not pinged before use (that is a round trip on every call): one the server
        # dropped fails its first statement, before anything was done, and a new one takes its place once.
        try:
            try:
                self._begin()
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                self._connection.close()
                if not lost_connection(exc):
                    raise
                self._begin()
        except sa.exc.SQLAlchemyError as exc:
            self._connection.close()
            if lost_connection(exc):
                raise database_unavailable(exc) from exc
            if database_busy(exc):
                raise busy_error(exc) from exc
            raise
        self.changes = ChangeSequence(self._connection)
        self.providers = ProviderConfigRepository(self._connection, self._keyring)
        self.models = ModelConfigRepository(self._connection)
        self.user_keys = UserKeyRepository(self._connection, self._keyring)
        self.access_tokens = AccessTokenRepository(self._connection)
        self.audit = AuditRepository(self._connection)
        self.health = ProviderHealthRepository(self._connection)
        return self

    def _begin(self) -> None:
        """A transaction on a connection of the pool, with its timeouts set (and a write's clock read)."""
        self._connection = connect(self._engine)
        if self._read_only:
            # One consistent view across several queries.
            self._connection = self._connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        self._transaction = self._connection.begin()
        if self._read_only:
            self._connection.execute(READ_TIMEOUT, {"statement_ms": milliseconds(self._read_timeout)})
        else:
            timeouts = self._write_timeouts
            self._now = self._connection.execute(
                WRITE_TIMEOUTS,
                {"lock_ms": milliseconds(timeouts.lock), "statement_ms": milliseconds(timeouts.statement)},
            ).one()[2]

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        except sa.exc.SQLAlchemyError:
            if exc is None:
                raise
        finally:
            self._connection.close()
        if exc is not None and lost_connection(exc):
            raise database_unavailable(exc) from exc
        if exc is not None and database_busy(exc):
            raise busy_error(exc) from exc

    def commit(self) -> None:
        self._transaction.commit()

    @property
    def now(self) -> datetime:
        """The transaction's time (PostgreSQL's now(): the same for every statement of the transaction)."""
        if self._now is None:
            self._now = self._connection.execute(sa.select(sa.func.now())).scalar_one()
        return self._now
