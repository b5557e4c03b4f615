"""The change log: one change sequence, and (sequence, kind, id) for every entity a change touched.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Triggers write the log, so every path that changes a logged table (the service,
a migration, a hand edit in psql) is seen by every replica. A transaction takes
one sequence number the first time it changes a logged row and reuses it for the
rest of the transaction (a transaction-local setting, so it is safe behind a
transaction-pooling PgBouncer). The singleton row's lock serialises writers
until commit, so sequence order is commit order and the log has no gaps.

`config_revision.revision` (what callers see) moves only with configuration
and user-key changes; `sequence` moves with every logged change; the log
reaches back to `pruned_through` (a replica whose position is older reloads in
full). TRUNCATE of a logged table cannot say which rows it removed, so it marks
the whole log as pruned: every replica reloads in full.

The log is derived data: the downgrade drops it without losing anything else.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "modelroute_config_changed"
# table -> (kind, entity id column, user id column or "")
LOGGED_TABLES = {
    "provider_configs": ("provider", "id", ""),
    "model_configs": ("model", "id", ""),
    "model_attachments": ("model", "model_config_id", ""),
    "user_provider_keys": ("user_key", "provider_config_id", "user_id"),
    "access_tokens": ("token", "id", ""),
}
KINDS = ("provider", "model", "user_key", "token")
# Kinds that move the config revision callers see (section "Consistency" of docs/architecture.md).
REVISION_KINDS = ("provider", "model", "user_key")

TAKE_SEQUENCE = f"""
CREATE FUNCTION modelroute_take_sequence(moves_revision boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    taken text := current_setting('modelroute.change_sequence', true);
    seq bigint;
BEGIN
    IF taken IS NULL OR taken = '' THEN
        UPDATE config_revision SET sequence = sequence + 1 RETURNING sequence INTO seq;
        PERFORM set_config('modelroute.change_sequence', seq::text, true);
        -- Delivered at commit, in commit order; the listener reads the log from its own position.
        PERFORM pg_notify('{CHANNEL}', seq::text);
    ELSE
        seq := taken::bigint;
    END IF;
    IF moves_revision THEN
        UPDATE config_revision SET revision = seq WHERE revision < seq;
    END IF;
    RETURN seq;
END $$
"""

LOG_CHANGES = f"""
CREATE FUNCTION modelroute_log_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text := TG_ARGV[0];
    entity_column text := TG_ARGV[1];
    user_expression text := CASE WHEN TG_ARGV[2] = '' THEN '''''' ELSE quote_ident(TG_ARGV[2]) END;
    sources text[] := CASE TG_OP
        WHEN 'INSERT' THEN ARRAY['new_rows']
        WHEN 'DELETE' THEN ARRAY['old_rows']
        ELSE ARRAY['new_rows', 'old_rows'] END;
    source text;
    touched boolean;
    seq bigint;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', sources[1]) INTO touched;
    IF NOT touched THEN
        RETURN NULL;  -- a statement that changed no row is no change
    END IF;
    seq := modelroute_take_sequence(kind IN ({", ".join(f"'{k}'" for k in REVISION_KINDS)}));
    FOREACH source IN ARRAY sources LOOP
        EXECUTE format(
            'INSERT INTO change_log (sequence, kind, entity_id, user_id) '
            'SELECT DISTINCT $1, $2, %I, %s FROM %I ON CONFLICT DO NOTHING',
            entity_column, user_expression, source
        ) USING seq, kind;
    END LOOP;
    RETURN NULL;
END $$
"""

LOG_TRUNCATE = """
CREATE FUNCTION modelroute_log_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    seq bigint := modelroute_take_sequence(true);
BEGIN
    UPDATE config_revision SET pruned_through = seq;
    RETURN NULL;
END $$
"""

_REFERENCING = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.add_column("config_revision", sa.Column("sequence", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("config_revision", sa.Column("pruned_through", sa.BigInteger, nullable=False, server_default="0"))
    # The log starts empty: nothing before today's revision can be read from it.
    op.execute("UPDATE config_revision SET sequence = revision, pruned_through = revision")
    op.create_check_constraint(
        "config_revision_within_sequence", "config_revision", "revision <= sequence AND pruned_through <= sequence"
    )
    op.create_table(
        "change_log",
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False, server_default=""),
        sa.Column("change_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("sequence", "kind", "entity_id", "user_id", name="change_log_pkey"),
        sa.CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")", name="change_log_known_kind"),
    )
    op.create_index("change_log_time", "change_log", ["change_time"])
    op.execute(TAKE_SEQUENCE)
    op.execute(LOG_CHANGES)
    op.execute(LOG_TRUNCATE)
    for table, (kind, entity_column, user_column) in LOGGED_TABLES.items():
        for event, referencing in _REFERENCING.items():
            op.execute(
                f"CREATE TRIGGER {table}_log_{event.lower()} AFTER {event} ON {table} {referencing} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION modelroute_log_changes('{kind}', '{entity_column}', "
                f"'{user_column}')"
            )
        op.execute(
            f"CREATE TRIGGER {table}_log_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION modelroute_log_truncate()"
        )


def downgrade() -> None:
    for table in LOGGED_TABLES:
        for event in (*_REFERENCING, "TRUNCATE"):
            op.execute(f"DROP TRIGGER {table}_log_{event.lower()} ON {table}")
    op.execute("DROP FUNCTION modelroute_log_truncate()")
    op.execute("DROP FUNCTION modelroute_log_changes()")
    op.execute("DROP FUNCTION modelroute_take_sequence(boolean)")
    op.drop_index("change_log_time", table_name="change_log")
    op.drop_table("change_log")
    op.drop_constraint("config_revision_within_sequence", "config_revision", type_="check")
    op.drop_column("config_revision", "pruned_through")
    op.drop_column("config_revision", "sequence")
