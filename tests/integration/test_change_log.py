"""The change log (docs/architecture.md): every change takes one sequence number, replicas re-read only what it
names, catch up after missed announcements, and reload in full only when the log no longer reaches back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import model_config_pb2, resolver_pb2
from modelroute_server.adapters.change_source import PostgresChangeSource
from modelroute_server.entrypoints.server import Application

from ..helpers import create_model, create_provider, stubs

LARGE_CATALOGUE = 100_000


def seed_models(engine: sa.Engine, first: int, last: int) -> None:
    """Models m{first}..m{last - 1}, each attached to provider config `a`, written straight in SQL."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO model_configs (id, family, model, display_name, enabled, is_default, context_limit, "
                "compression_threshold, create_time, update_time, revision) "
                "SELECT 'm' || i, 'openai', 'gpt', 'm' || i, true, false, 1000, 70, now(), now(), 1 "
                "FROM generate_series(:first, :last - 1) AS i"
            ),
            {"first": first, "last": last},
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_attachments (model_config_id, provider_config_id, family, position) "
                "SELECT 'm' || i, 'a', 'openai', 0 FROM generate_series(:first, :last - 1) AS i"
            ),
            {"first": first, "last": last},
        )


@contextmanager
def recorded(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "alembic_version" not in statement and "pg_catalog" not in statement:  # the health watcher
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def rename(channel: grpc.Channel, model_id: str, display_name: str) -> None:
    stubs(channel).models.UpdateModelConfig(
        model_config_pb2.UpdateModelConfigRequest(
            model_config=model_config_pb2.ModelConfig(name=f"modelConfigs/{model_id}", display_name=display_name),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )


def test_every_change_takes_one_sequence_and_logs_what_it_touched(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    with app.engine.connect() as conn:
        start = conn.execute(sa.text("SELECT sequence FROM config_revision")).scalar_one()
    create_provider(s, "a")
    create_model(s, "m")
    with app.engine.connect() as conn:
        log = conn.execute(
            sa.text("SELECT sequence, kind, entity_id FROM change_log WHERE sequence > :s ORDER BY sequence"),
            {"s": start},
        ).all()
        position = conn.execute(sa.text("SELECT sequence, revision FROM config_revision")).one()
    provider_sequence = next(seq for seq, kind, entity in log if (kind, entity) == ("provider", "a"))
    model_sequences = {seq for seq, kind, entity in log if (kind, entity) == ("model", "m")}
    assert len(model_sequences) == 1 and provider_sequence < min(model_sequences)  # one sequence per write
    assert position.sequence == position.revision == max(seq for seq, _, _ in log)
    assert app.snapshots.current().sequence == position.sequence


def test_a_write_at_100000_models_rereads_only_the_changed_rows(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a")
    seed_models(app.engine, 0, 10)
    app.snapshots.invalidate()
    rename(channel, "m1", "first")
    with recorded(app.engine) as small:
        rename(channel, "m1", "small catalogue")
    seed_models(app.engine, 10, LARGE_CATALOGUE)
    app.snapshots.invalidate()
    assert len(app.snapshots.current().models) == LARGE_CATALOGUE
    loads = app.snapshots.statistics.full_loads
    with recorded(app.engine) as large:
        rename(channel, "m1", "large catalogue")
    assert app.snapshots.statistics.full_loads == loads
    # The same statements, of the same size, whatever the size of the catalogue.
    assert [normalized(st) for st in large] == [normalized(st) for st in small]
    assert all(len(st) < 4000 for st in large)
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m1"))
    assert answer.config_revision == app.snapshots.current().revision


def normalized(statement: str) -> str:
    return re.sub(r"\s+", " ", statement)


def test_a_replica_that_missed_announcements_catches_up_from_the_log(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a")
    create_model(s, "m")
    before = app.snapshots.current()
    loads, batches = app.snapshots.statistics.full_loads, app.snapshots.statistics.applied_batches
    # Writes this replica is never told about (its listener was away): hand edits, logged by the triggers.
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE model_configs SET display_name = 'one'"))
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_configs SET display_name = 'two'"))
    assert app.snapshots.current() is before
    app.snapshots.changed(None)  # the listener reconnected
    with app.engine.connect() as conn:
        revision = conn.execute(sa.text("SELECT revision FROM config_revision")).scalar_one()
    after = app.snapshots.current(min_revision=revision)
    assert (after.models["m"].display_name, after.providers["a"].display_name) == ("one", "two")
    assert app.snapshots.statistics.full_loads == loads
    assert app.snapshots.statistics.applied_batches > batches


def test_a_position_older_than_the_pruned_log_reloads_in_full(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a")
    create_model(s, "m")
    loads = app.snapshots.statistics.full_loads
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE model_configs SET display_name = 'while away'"))
    source = PostgresChangeSource(app.engine, app.ctx.keyring)
    source.prune_log(timedelta(0))
    with app.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM change_log")).scalar_one() == 0
        position = conn.execute(sa.text("SELECT sequence, pruned_through FROM config_revision")).one()
    assert position.pruned_through == position.sequence
    assert source.changes_since(app.snapshots.current().sequence) is None
    snapshot = app.snapshots.catch_up()
    assert snapshot.models["m"].display_name == "while away"
    assert app.snapshots.statistics.full_loads == loads + 1


def test_a_rolled_back_write_leaves_no_trace_in_the_log(app: Application) -> None:
    with app.engine.connect() as conn:
        before = conn.execute(sa.text("SELECT sequence FROM config_revision")).scalar_one()
        conn.rollback()
        with conn.begin() as transaction:
            conn.execute(
                sa.text(
                    "INSERT INTO access_tokens (id, token_sha256, roles, create_time, creator) "
                    "VALUES ('gone', sha256('x'), '{admin}', now(), 'test')"
                )
            )
            transaction.rollback()
        assert conn.execute(sa.text("SELECT sequence FROM config_revision")).scalar_one() == before
        assert conn.execute(sa.text("SELECT count(*) FROM change_log WHERE entity_id = 'gone'")).scalar_one() == 0


@pytest.mark.parametrize("statement", ["UPDATE model_configs SET enabled = enabled WHERE false"])
def test_a_statement_that_changes_no_row_takes_no_sequence(app: Application, statement: str) -> None:
    with app.engine.begin() as conn:
        before = conn.execute(sa.text("SELECT sequence FROM config_revision")).scalar_one()
        conn.execute(sa.text(statement))
        assert conn.execute(sa.text("SELECT sequence FROM config_revision")).scalar_one() == before


def test_the_snapshot_reads_models_as_the_repository_does(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    start = app.snapshots.current().sequence
    create_provider(s, "a")
    create_provider(s, "b")
    create_model(s, "plain", providers=("b", "a"))
    create_model(s, "tuned", providers=("a",), options=model_config_pb2.ModelCallOptions(temperature=0.5, top_k=3))
    source = PostgresChangeSource(app.engine, app.ctx.keyring)
    with app.ctx.read() as uow:
        expected = {m.id: m for m in uow.models.list()}
    assert {m.id: m for m in source.load_all().models} == expected
    batch = source.changes_since(start)
    assert batch is not None and {i: m for i, m in batch.models.items() if m is not None} == expected
