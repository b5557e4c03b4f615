"""The snapshot's change source on PostgreSQL: a full load, and what the change log names since a position.

Every statement here has a fixed size, whatever the size of the catalogue: the
ids to re-read travel as one array parameter each (`= ANY(...)`), never as a
list of bind parameters (PostgreSQL takes at most 65,535 in one statement).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..domain.changes import ChangeBatch, FullState
from .crypto import Keyring
from .repositories import (
    ATTACHMENT_LIST,
    STATEMENT_TIMEOUT,
    access_token_from_row,
    any_of,
    connect,
    database_unavailable,
    lost_connection,
    model_from_row,
    provider_from_row,
)
from .schema import access_tokens, change_log, config_revision, model_configs, provider_configs

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
ALL_USER_KEYS = sa.text(_PACKED_USER_KEYS.format(where=""))
USER_KEYS_OF = sa.text(_PACKED_USER_KEYS.format(where="WHERE user_id = ANY(CAST(:users AS text[]))"))

LIVE_MODELS = sa.select(model_configs).add_columns(ATTACHMENT_LIST).where(model_configs.c.delete_time.is_(None))

PRUNE_LOG = sa.text(
    """
    WITH pruned AS (DELETE FROM change_log WHERE change_time < now() - CAST(:older_than AS interval)
                    RETURNING sequence)
    UPDATE config_revision SET pruned_through = greatest(pruned_through, (SELECT max(sequence) FROM pruned))
    WHERE EXISTS (SELECT 1 FROM pruned)
    """
)


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
            models = [model_from_row(r) for r in connection.execute(LIVE_MODELS)]
            user_keys = [(r.user_id, bytes(r.packed)) for r in connection.execute(ALL_USER_KEYS)]
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
            rows = connection.execute(LIVE_MODELS.where(any_of(model_configs.c.id, ids)))
            found.update({r.id: model_from_row(r) for r in rows})
        return found

    def _user_keys(self, connection: sa.Connection, users: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(users)  # no key left: None
        if users:
            rows = connection.execute(USER_KEYS_OF, {"users": list(users)})
            found.update({r.user_id: bytes(r.packed) for r in rows})
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
