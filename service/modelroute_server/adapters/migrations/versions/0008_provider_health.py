"""Provider health: cooldowns per (provider config, upstream model), rejected-key marks, and health policies.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

An expand step (docs/operations.md, "Rolling upgrades"): only new tables and
nullable columns. `provider_health` holds what attempt reports did to one
(provider config, upstream model); `key_rejections` holds the keyed fingerprint
of a key the provider refused (user '' for the central key). A failure report
below the threshold updates its row without announcing anything: the row
trigger logs a change only when `cooldown_until` moves (a trip, a recovery, a
reset), and every change of a mark. These changes take the next change
sequence but not the config revision callers see.

Until 0009, the log names them with kinds the build before this one knows
(`provider` for a config's health, `user_key` for a user's mark), so that a
replica of that build keeps catching up: it re-reads the config, or the
user's keys, and ignores the rest. 0009 gives them kinds of their own.

`user_provider_keys.revision` is the config revision of a key's last change,
so that a report about a key that was replaced since can be told apart.

Downgrading drops the health state (derived from reports; callers report
again), and refuses to drop a configured health policy unless allowed to lose data.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelroute_server.adapters.migrations.compatibility import forget_served_by, record_served_by
from modelroute_server.adapters.migrations.health_triggers import (
    HEALTH_TABLES,
    LOG_HEALTH,
    create_health_triggers,
    drop_health_triggers,
)

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The build before this one (head 0007) serves it too: expand only.
SERVED_BY = ["0007", "0008"]
KINDS = ("provider", "model", "user_key", "token", "health", "key_mark")
POLICY_COLUMNS = (
    ("health_failure_threshold", sa.Integer),
    ("health_failure_window_seconds", sa.Float),
    ("health_base_cooldown_seconds", sa.Float),
    ("health_max_cooldown_seconds", sa.Float),
)


def upgrade() -> None:
    op.create_table(
        "provider_health",
        sa.Column("provider_config_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("trips", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_cooldown_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("cooldown_until", sa.DateTime(timezone=True)),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("provider_config_id", "model", name="provider_health_pkey"),
        sa.ForeignKeyConstraint(
            ["provider_config_id"], ["provider_configs.id"], ondelete="CASCADE", name="provider_health_provider_fk"
        ),
    )
    op.create_table(
        "key_rejections",
        sa.Column("provider_config_id", sa.Text, nullable=False),
        # '' for the provider config's central key (stored or deployment).
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("key_source", sa.Text, nullable=False),
        sa.Column("key_fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("rejected_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("provider_config_id", "user_id", name="key_rejections_pkey"),
        sa.ForeignKeyConstraint(
            ["provider_config_id"], ["provider_configs.id"], ondelete="CASCADE", name="key_rejections_provider_fk"
        ),
        sa.CheckConstraint("key_source IN ('USER', 'STORED', 'DEPLOYMENT')", name="key_rejections_known_source"),
        sa.CheckConstraint("(user_id = '') = (key_source <> 'USER')", name="key_rejections_user_matches_source"),
    )
    op.add_column("user_provider_keys", sa.Column("revision", sa.BigInteger))
    for name, column_type in POLICY_COLUMNS:
        op.add_column("provider_configs", sa.Column(name, column_type))
    op.drop_constraint("change_log_known_kind", "change_log", type_="check")
    op.create_check_constraint(
        "change_log_known_kind", "change_log", "kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")"
    )
    op.execute(LOG_HEALTH)
    create_health_triggers("provider", "user_key")
    for table in HEALTH_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_log_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION modelroute_log_truncate()"
        )
    record_served_by(revision, SERVED_BY)


def downgrade() -> None:
    bind = op.get_bind()
    configured = " OR ".join(f"{name} IS NOT NULL" for name, _ in POLICY_COLUMNS)
    if bind.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM provider_configs WHERE {configured})")).scalar():
        config = op.get_context().config
        if not (config is not None and config.attributes.get("allow_data_loss")):
            raise RuntimeError(
                "downgrading below 0008 would drop the health policies of provider configs; run "
                "`modelroute-server migrate --downgrade --allow-data-loss` to do it anyway"
            )
    forget_served_by(revision)
    for table in HEALTH_TABLES:
        op.execute(f"DROP TRIGGER {table}_log_truncate ON {table}")
    drop_health_triggers()
    op.execute("DROP FUNCTION modelroute_log_health()")
    op.execute("DELETE FROM change_log WHERE kind IN ('health', 'key_mark')")
    op.drop_constraint("change_log_known_kind", "change_log", type_="check")
    op.create_check_constraint(
        "change_log_known_kind", "change_log", "kind IN ('provider', 'model', 'user_key', 'token')"
    )
    for name, _ in POLICY_COLUMNS:
        op.drop_column("provider_configs", name)
    op.drop_column("user_provider_keys", "revision")
    op.drop_table("key_rejections")
    op.drop_table("provider_health")
