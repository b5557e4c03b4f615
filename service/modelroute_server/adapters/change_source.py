"""The snapshot's change source on PostgreSQL: a full load, and what the change log names since a position.

Every statement here has a fixed size, whatever the size of the catalogue: the
ids to re-read travel as one array parameter each (`= ANY(...)`), never as a
list of bind parameters (PostgreSQL takes at most 65,535 in one statement).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from ..domain.changes import ChangeBatch, FullState
from ..domain.families import Family
from ..domain.health import KeyMark, ProviderHealthState
from ..domain.models import CallOptions, ModelConfig
from .crypto import Keyring
from .repositories import (
    NO_OPTIONS,
    OPTION_COLUMNS,
    STATEMENT_TIMEOUT,
    access_token_from_row,
    any_of,
    connect,
    database_unavailable,
    lost_connection,
    provider_from_row,
)
from .schema import access_tokens, change_log, config_revision, provider_configs

_T = TypeVar("_T")

# Past this many changed entities since a position, one full load is as cheap as re-reading them.
MAX_BATCH_ENTRIES = 20_000

# Each user's keys packed into one bytea, in the format of `crypto.unpack_sealed_keys`; built by
# PostgreSQL, so a million keys load as one row per user. `textsend` gives a text's bytes as stored:
# provider config ids and key ids are ASCII slugs, the same bytes in every server encoding.
_PACKED_USER_KEYS = """
SELECT user_id, string_agg(
    int2send(octet_length(provider_config_id)::int2) || textsend(provider_config_id)
    || int2send(octet_length(api_key_key_id)::int2) || textsend(api_key_key_id)
    || int2send(coalesce(octet_length(key_incarnation), -1)::int2) || coalesce(key_incarnation, ''::bytea)
    || int4send(octet_length(api_key_ciphertext)) || api_key_ciphertext,
    ''::bytea ORDER BY provider_config_id
) AS packed
FROM user_provider_keys
{where}
GROUP BY user_id
"""
ALL_USER_KEYS = _PACKED_USER_KEYS.format(where="")
USER_KEYS_OF = _PACKED_USER_KEYS.format(where="WHERE user_id = ANY(%s::text[])")

# The columns in `ModelConfig`'s field order, options in `CallOptions`' order; read with the driver's own
# cursor into tuples (a hundred thousand rows: a snapshot load is mostly this). A model's attachments
# arrive as one comma-separated string (provider config ids are slugs), and models with the same list
# share one tuple. Overrides arrive as a text array, NULL for the models that have none (most).
# A full load reads the lists in a statement of their own, beside the models (one ordered pass over the
# attachments instead of a lookup per model).
_ATTACHMENT_LIST = "string_agg(a.provider_config_id, ',' ORDER BY a.position)"
_OVERRIDE_LIST = (
    "CASE WHEN bool_or(a.model_override IS NOT NULL) "
    "THEN array_agg(coalesce(a.model_override, '') ORDER BY a.position) END"
)
_MODEL_COLUMNS = (
    "id, family, model, display_name, context_limit, {attachments} AS attachment_ids, "
    "enabled, is_default, compression_threshold, "
    + ", ".join(OPTION_COLUMNS)
    + ", create_time, update_time, delete_time, revision, {overrides} AS overrides"
)
_LIVE = " FROM model_configs m WHERE m.delete_time IS NULL"
_OF_MODEL = " FROM model_attachments a WHERE a.model_config_id = m.id"
LIVE_MODELS = "SELECT " + _MODEL_COLUMNS.format(attachments="NULL", overrides="NULL") + _LIVE
LIVE_MODELS_OF = (
    "SELECT "
    + _MODEL_COLUMNS.format(
        attachments=f"(SELECT {_ATTACHMENT_LIST}{_OF_MODEL})", overrides=f"(SELECT {_OVERRIDE_LIST}{_OF_MODEL})"
    )
    + _LIVE
    + " AND m.id = ANY(%s::text[])"
)
ALL_ATTACHMENT_LISTS = (
    f"SELECT model_config_id, {_ATTACHMENT_LIST}, {_OVERRIDE_LIST} FROM model_attachments a GROUP BY model_config_id"
)
_FAMILIES = {family.value: family for family in Family}
_OPTIONS_AT = slice(9, 9 + len(OPTION_COLUMNS))
_TIMES_AT = _OPTIONS_AT.stop

# Provider health as replicas hold it: the cooldowns in force and the marks of rejected keys.
_COOLDOWNS = "SELECT provider_config_id, model, cooldown_until FROM provider_health WHERE cooldown_until > now()"
_CENTRAL_MARKS = (
    "SELECT provider_config_id, key_source, key_fingerprint, rejected_time FROM key_rejections WHERE user_id = ''"
)
_USER_MARKS = (
    "SELECT user_id, provider_config_id, key_source, key_fingerprint, rejected_time FROM key_rejections "
    "WHERE user_id <> ''"
)
_OF_PROVIDERS = " AND provider_config_id = ANY(%s::text[])"
_OF_USERS = " AND user_id = ANY(%s::text[])"


def _fetch_health(connection: sa.Connection, ids: Sequence[str] | None = None) -> dict[str, ProviderHealthState]:
    """Each provider config's health that is not empty (of `ids` only, when given)."""
    params = [list(ids)] if ids is not None else None
    cooldowns: dict[str, dict[str, Any]] = {}
    marks: dict[str, KeyMark] = {}
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(_COOLDOWNS + (_OF_PROVIDERS if ids is not None else ""), params)
        for provider_id, model, until in cursor.fetchall():
            cooldowns.setdefault(provider_id, {})[model] = until
        cursor.execute(_CENTRAL_MARKS + (_OF_PROVIDERS if ids is not None else ""), params)
        for provider_id, source, fingerprint, rejected_time in cursor.fetchall():
            marks[provider_id] = KeyMark(source, bytes(fingerprint), rejected_time)
    return {pid: ProviderHealthState(cooldowns.get(pid, {}), marks.get(pid)) for pid in cooldowns.keys() | marks.keys()}


def _fetch_user_marks(connection: sa.Connection, users: Sequence[str] | None = None) -> dict[str, dict[str, KeyMark]]:
    found: dict[str, dict[str, KeyMark]] = {}
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(_USER_MARKS + (_OF_USERS if users is not None else ""), [list(users)] if users else None)
        for user, provider_id, source, fingerprint, rejected_time in cursor.fetchall():
            found.setdefault(user, {})[provider_id] = KeyMark(source, bytes(fingerprint), rejected_time)
    return found


# Run at every catch-up (after every write, on every replica): built once.
_POSITION = sa.select(config_revision.c.sequence, config_revision.c.revision, config_revision.c.pruned_through)
_ENTRIES_AFTER = (
    sa.select(change_log.c.kind, change_log.c.entity_id, change_log.c.user_id)
    .where(change_log.c.sequence > sa.bindparam("after"))
    .distinct()
    .limit(MAX_BATCH_ENTRIES + 1)
)

PRUNE_LOG = sa.text(
    """
    WITH pruned AS (DELETE FROM change_log WHERE change_time < now() - CAST(:older_than AS interval)
                    RETURNING sequence)
    UPDATE config_revision SET pruned_through = greatest(pruned_through, (SELECT max(sequence) FROM pruned))
    WHERE EXISTS (SELECT 1 FROM pruned)
    """
)


def _fetch_models(
    connection: sa.Connection,
    query: str,
    params: Sequence[Any] = (),
    attachment_lists: Future[dict[str, tuple[str, list[str] | None]]] | None = None,
) -> list[ModelConfig]:
    """`repositories.model_from_row`'s result, built from plain tuples (about ten times faster). The
    attachment lists are the rows' own, or (a full load) those read beside them."""
    intern = sys.intern  # a hundred thousand models name a thousand provider configs, and few families
    shared: dict[str, tuple[str, ...]] = {}
    models = []
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(query, params or None)
        rows = cursor.fetchall()
    lists = attachment_lists.result() if attachment_lists is not None else {}
    for row in rows:
        values = row[_OPTIONS_AT]
        options = CallOptions(*values) if any(v is not None for v in values) else NO_OPTIONS
        if attachment_lists is not None:
            listed, overrides = lists.get(row[0], ("", None))
        else:
            listed, overrides = row[5] or "", row[-1]
        attachments = shared.get(listed)
        if attachments is None:
            attachments = shared[listed] = tuple([intern(p) for p in listed.split(",") if p])
        models.append(
            ModelConfig(
                row[0],
                _FAMILIES[row[1]],
                intern(row[2]),
                row[3],
                row[4],
                attachments,
                row[6],
                row[7],
                row[8],
                options,
                create_time=row[_TIMES_AT],
                update_time=row[_TIMES_AT + 1],
                delete_time=row[_TIMES_AT + 2],
                revision=row[_TIMES_AT + 3],
                overrides=tuple(overrides) if overrides else (),
            )
        )
    return models


def _fetch_attachment_lists(connection: sa.Connection) -> dict[str, tuple[str, list[str] | None]]:
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(ALL_ATTACHMENT_LISTS)
        return {model_id: (listed, overrides) for model_id, listed, overrides in cursor.fetchall()}


def _fetch_user_keys(connection: sa.Connection, query: str, params: Sequence[Any] = ()) -> list[tuple[str, bytes]]:
    # Binary results: the packed keys arrive as bytes, with no hex text to decode, and rows as tuples.
    with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        cursor.execute(query, params or None)
        keys: list[tuple[str, bytes]] = cursor.fetchall()
        return keys


def _snapshot_id(exported: str) -> str:
    # pg_export_snapshot()'s own output (hex digits and dashes); SET TRANSACTION SNAPSHOT takes no parameter.
    if not all(c in "0123456789ABCDEFabcdef-" for c in exported):
        raise ValueError("unexpected snapshot id from pg_export_snapshot()")
    return exported


class PostgresChangeSource:
    def __init__(self, engine: sa.Engine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring

    @contextmanager
    def _consistent_read(self) -> Iterator[sa.Connection]:
        """One read-only transaction that sees one snapshot of the database across all its statements."""
        with connect(self._engine) as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            try:
                with connection.begin():
                    connection.execute(STATEMENT_TIMEOUT)
                    yield connection
            except sa.exc.SQLAlchemyError as exc:
                if lost_connection(exc):
                    raise database_unavailable(exc) from exc
                raise

    def load_all(self) -> FullState:
        # The user keys are read on a second connection that shares this transaction's snapshot, so that
        # PostgreSQL packs them while this process builds the models (the two largest parts of a load).
        with self._consistent_read() as connection, ThreadPoolExecutor(2, "modelroute-load") as beside:
            exported = _snapshot_id(connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
            keys = beside.submit(self._in_snapshot, exported, _fetch_user_keys, ALL_USER_KEYS)
            lists = beside.submit(self._in_snapshot, exported, _fetch_attachment_lists)
            try:
                position = connection.execute(sa.select(config_revision.c.sequence, config_revision.c.revision)).one()
                providers = [
                    provider_from_row(r, self._keyring) for r in connection.execute(sa.select(provider_configs))
                ]
                tokens = [access_token_from_row(r) for r in connection.execute(sa.select(access_tokens))]
                health = _fetch_health(connection)
                user_marks = _fetch_user_marks(connection)
                models = _fetch_models(connection, LIVE_MODELS, attachment_lists=lists)
            finally:
                # Also when this side failed: the exporting transaction stays open until both have read.
                user_keys = keys.result()
                lists.result()
        return FullState(position.sequence, position.revision, providers, models, user_keys, tokens, health, user_marks)

    def _in_snapshot(self, exported_snapshot: str, read: Callable[..., _T], *arguments: Any) -> _T:
        """`read` in a transaction of its own that sees the exported snapshot of another."""
        with self._consistent_read() as connection:
            connection.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{exported_snapshot}'")
            return read(connection, *arguments)

    def changes_since(self, sequence: int) -> ChangeBatch | None:
        with self._consistent_read() as connection:
            position = connection.execute(_POSITION).one()
            if position.pruned_through > sequence:
                return None
            if position.sequence == sequence:
                return ChangeBatch(sequence, position.revision)
            entries = connection.execute(_ENTRIES_AFTER, {"after": sequence}).all()
            if len(entries) > MAX_BATCH_ENTRIES:
                return None
            named: dict[str, set[str]] = {"provider": set(), "model": set(), "user_key": set(), "token": set()}
            health_of: set[str] = set()
            marks_of: set[str] = set()
            for kind, entity_id, user_id in entries:
                if kind == "health" or (kind == "key_mark" and not user_id):
                    health_of.add(entity_id)
                elif kind == "key_mark":
                    marks_of.add(user_id)
                else:
                    named[kind].add(user_id if kind == "user_key" else entity_id)
            # Before migration 0009 health changes are logged as the config's, and a user's key mark as
            # a change of their keys: both are re-read with them.
            health_of |= named["provider"]
            marks_of |= named["user_key"]
            return ChangeBatch(
                position.sequence,
                position.revision,
                providers=self._providers(connection, named["provider"]),
                models=self._models(connection, named["model"]),
                user_keys=self._user_keys(connection, named["user_key"]),
                tokens=self._tokens(connection, named["token"]),
                health=self._health(connection, health_of),
                user_marks=self._user_marks(connection, marks_of),
            )

    def _providers(self, connection: sa.Connection, ids: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(ids)
        if ids:
            rows = connection.execute(sa.select(provider_configs).where(any_of(provider_configs.c.id, ids)))
            found.update({r.id: provider_from_row(r, self._keyring) for r in rows})
        return found

    def _models(self, connection: sa.Connection, ids: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(ids)  # gone or soft-deleted: None
        if ids:
            found.update({m.id: m for m in _fetch_models(connection, LIVE_MODELS_OF, [list(ids)])})
        return found

    def _user_keys(self, connection: sa.Connection, users: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(users)  # no key left: None
        if users:
            found.update(_fetch_user_keys(connection, USER_KEYS_OF, [list(users)]))
        return found

    def _health(self, connection: sa.Connection, ids: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(ids)  # healthy, or gone: None
        if ids:
            found.update(_fetch_health(connection, list(ids)))
        return found

    def _user_marks(self, connection: sa.Connection, users: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(users)
        if users:
            found.update(_fetch_user_marks(connection, list(users)))
        return found

    def _tokens(self, connection: sa.Connection, ids: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(ids)
        if ids:
            rows = connection.execute(sa.select(access_tokens).where(any_of(access_tokens.c.id, ids)))
            found.update({r.id: access_token_from_row(r) for r in rows})
        return found

    def prune_log(self, older_than: timedelta) -> None:
        with self._engine.begin() as connection:
            connection.execute(STATEMENT_TIMEOUT)
            connection.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            connection.execute(PRUNE_LOG, {"older_than": f"{int(older_than.total_seconds())} seconds"})
