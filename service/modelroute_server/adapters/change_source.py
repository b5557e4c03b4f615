"""The snapshot's change source on PostgreSQL: a full load, and what the change log names since a position.

Every statement here has a fixed size, whatever the size of the catalogue: the
ids to re-read travel as one array parameter each (`= ANY(...)`), never as a
list of bind parameters (PostgreSQL takes at most 65,535 in one statement).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..domain.changes import ChangeBatch, FullState
from ..domain.families import Family
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

# Past this many changed entities since a position, one full load is as cheap as re-reading them.
MAX_BATCH_ENTRIES = 20_000

# Each user's keys packed into one bytea, in the format of `crypto.unpack_sealed_keys`; built by
# PostgreSQL, so a million keys load as one row per user.
_PACKED_USER_KEYS = """
SELECT user_id, string_agg(
    int2send(octet_length(convert_to(provider_config_id, 'UTF8'))::int2) || convert_to(provider_config_id, 'UTF8')
    || int2send(octet_length(convert_to(api_key_key_id, 'UTF8'))::int2) || convert_to(api_key_key_id, 'UTF8')
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
# cursor into tuples (a hundred thousand rows: a snapshot load is mostly this).
_MODEL_COLUMNS = (
    "id, family, model, display_name, context_limit, "
    "coalesce((SELECT array_agg(a.provider_config_id ORDER BY a.position) FROM model_attachments a "
    "WHERE a.model_config_id = m.id), '{}') AS attachment_ids, "
    "enabled, is_default, compression_threshold, "
    + ", ".join(OPTION_COLUMNS)
    + ", create_time, update_time, delete_time, revision"
)
LIVE_MODELS = f"SELECT {_MODEL_COLUMNS} FROM model_configs m WHERE m.delete_time IS NULL"
LIVE_MODELS_OF = LIVE_MODELS + " AND m.id = ANY(%s::text[])"
_FAMILIES = {family.value: family for family in Family}
_OPTIONS_AT = slice(9, 9 + len(OPTION_COLUMNS))

PRUNE_LOG = sa.text(
    """
    WITH pruned AS (DELETE FROM change_log WHERE change_time < now() - CAST(:older_than AS interval)
                    RETURNING sequence)
    UPDATE config_revision SET pruned_through = greatest(pruned_through, (SELECT max(sequence) FROM pruned))
    WHERE EXISTS (SELECT 1 FROM pruned)
    """
)


def _fetch_models(connection: sa.Connection, query: str, params: Sequence[Any] = ()) -> list[ModelConfig]:
    """`repositories.model_from_row`'s result, built from plain tuples (about ten times faster)."""
    intern = sys.intern  # a hundred thousand models name a thousand provider configs, and few families
    models = []
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(query, params or None)
        for row in cursor:
            values = row[_OPTIONS_AT]
            options = CallOptions(*values) if any(v is not None for v in values) else NO_OPTIONS
            models.append(
                ModelConfig(
                    row[0],
                    _FAMILIES[row[1]],
                    intern(row[2]),
                    row[3],
                    row[4],
                    tuple([intern(p) for p in row[5]]),
                    row[6],
                    row[7],
                    row[8],
                    options,
                    *row[_OPTIONS_AT.stop :],
                )
            )
    return models


def _fetch_user_keys(connection: sa.Connection, query: str, params: Sequence[Any] = ()) -> list[tuple[str, bytes]]:
    # Binary results: the packed keys arrive as bytes, with no hex text to decode.
    with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        cursor.execute(query, params or None)
        return [(user, bytes(packed)) for user, packed in cursor]


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
        with self._consistent_read() as connection:
            position = connection.execute(sa.select(config_revision.c.sequence, config_revision.c.revision)).one()
            providers = [provider_from_row(r, self._keyring) for r in connection.execute(sa.select(provider_configs))]
            models = _fetch_models(connection, LIVE_MODELS)
            user_keys = _fetch_user_keys(connection, ALL_USER_KEYS)
            tokens = [access_token_from_row(r) for r in connection.execute(sa.select(access_tokens))]
        return FullState(position.sequence, position.revision, providers, models, user_keys, tokens)

    def changes_since(self, sequence: int) -> ChangeBatch | None:
        with self._consistent_read() as connection:
            position = connection.execute(
                sa.select(config_revision.c.sequence, config_revision.c.revision, config_revision.c.pruned_through)
            ).one()
            if position.pruned_through > sequence:
                return None
            if position.sequence == sequence:
                return ChangeBatch(sequence, position.revision)
            entries = connection.execute(
                sa.select(change_log.c.kind, change_log.c.entity_id, change_log.c.user_id)
                .where(change_log.c.sequence > sequence)
                .distinct()
                .limit(MAX_BATCH_ENTRIES + 1)
            ).all()
            if len(entries) > MAX_BATCH_ENTRIES:
                return None
            named: dict[str, set[str]] = {"provider": set(), "model": set(), "user_key": set(), "token": set()}
            for kind, entity_id, user_id in entries:
                named[kind].add(user_id if kind == "user_key" else entity_id)
            return ChangeBatch(
                position.sequence,
                position.revision,
                providers=self._providers(connection, named["provider"]),
                models=self._models(connection, named["model"]),
                user_keys=self._user_keys(connection, named["user_key"]),
                tokens=self._tokens(connection, named["token"]),
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
