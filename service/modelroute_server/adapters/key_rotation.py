"""Re-seals every stored API key under the keyring's primary key, bound to a fresh row incarnation.

Rows sealed before incarnations existed (key_incarnation NULL) are rewritten
too, even when they already use the primary key: afterwards no key is left
under the old row-only binding.

Runs beside live replicas: each batch is its own short transaction over rows
locked with SKIP LOCKED, the plaintext never leaves this process, and a
replica holding the old key id keeps decrypting until it restarts with the
new keyring (the old key stays in the keyring until rotation is done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa

from .crypto import Keyring, open_bound, provider_key_binding, seal_bound, user_key_binding
from .repositories import sealed_from_row
from .schema import provider_configs, user_provider_keys


@dataclass
class RotationReport:
    resealed: int = 0
    # Rows whose key no key in the keyring opens; left untouched for an operator.
    undecryptable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _KeyTable:
    table: sa.Table
    key_columns: tuple[sa.Column[Any], ...]
    # The binding of a row's key, for a given incarnation.
    binding: Callable[[sa.Row[Any]], Callable[[bytes | None], bytes]]
    label: Callable[[sa.Row[Any]], str]


_TABLES = (
    _KeyTable(
        provider_configs,
        (provider_configs.c.id,),
        lambda row: partial(provider_key_binding, row.id),
        lambda row: f"providerConfigs/{row.id}",
    ),
    _KeyTable(
        user_provider_keys,
        (user_provider_keys.c.user_id, user_provider_keys.c.provider_config_id),
        lambda row: partial(user_key_binding, row.user_id, row.provider_config_id),
        lambda row: f"user key of providerConfigs/{row.provider_config_id}",
    ),
)


def rotate_keys(engine: sa.Engine, keyring: Keyring, batch_size: int = 200) -> RotationReport:
    report = RotationReport()
    for key_table in _TABLES:
        skipped: set[tuple[Any, ...]] = set()
        while _reseal_batch(engine, keyring, key_table, batch_size, skipped, report):
            pass
    return report


def _reseal_batch(
    engine: sa.Engine,
    keyring: Keyring,
    key_table: _KeyTable,
    batch_size: int,
    skipped: set[tuple[Any, ...]],
    report: RotationReport,
) -> bool:
    table = key_table.table
    stale = table.c.api_key_ciphertext.is_not(None) & (
        (table.c.api_key_key_id != keyring.primary_key_id) | table.c.key_incarnation.is_(None)
    )
    if skipped:
        stale &= sa.not_(sa.tuple_(*key_table.key_columns).in_(list(skipped)))
    with engine.begin() as connection:
        rows = list(
            connection.execute(sa.select(table).where(stale).limit(batch_size).with_for_update(skip_locked=True))
        )
        for row in rows:
            key = tuple(getattr(row, c.name) for c in key_table.key_columns)
            binding = key_table.binding(row)
            plaintext = open_bound(keyring, sealed_from_row(row), binding)
            if plaintext is None:
                skipped.add(key)
                report.undecryptable.append(key_table.label(row))
                continue
            sealed = seal_bound(keyring, plaintext, binding)
            connection.execute(
                sa.update(table)
                .where(*(c == v for c, v in zip(key_table.key_columns, key, strict=True)))
                .values(
                    api_key_ciphertext=sealed.ciphertext,
                    api_key_key_id=sealed.key_id,
                    key_incarnation=sealed.incarnation,
                )
            )
            report.resealed += 1
    return bool(rows)
