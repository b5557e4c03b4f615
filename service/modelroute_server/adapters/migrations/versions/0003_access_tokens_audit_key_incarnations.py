"""Access tokens, the audit log, and keys sealed to the incarnation of their row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Expand only: the new key_incarnation columns are nullable and existing rows
keep NULL, which means "written before incarnations existed" (their keys keep
the old row-only binding), until `modelroute-server rotate-keys` rewrites them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SLUG_REGEX = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
ROLES = ("admin", "reader", "resolver", "user-keys")
KEY_TABLES = ("provider_configs", "user_provider_keys")


def upgrade() -> None:
    for table in KEY_TABLES:
        op.add_column(table, sa.Column("key_incarnation", sa.LargeBinary))
        op.create_check_constraint(
            f"{table}_key_incarnation_length", table, "key_incarnation IS NULL OR length(key_incarnation) = 16"
        )
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("token_sha256", sa.LargeBinary, nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expire_time", sa.DateTime(timezone=True)),
        sa.Column("revoke_time", sa.DateTime(timezone=True)),
        sa.Column("creator", sa.Text, nullable=False),
        sa.CheckConstraint(f"id ~ '{SLUG_REGEX}'", name="access_tokens_id_slug"),
        sa.CheckConstraint("length(token_sha256) = 32", name="access_tokens_sha256_length"),
        sa.CheckConstraint(
            "cardinality(roles) >= 1 AND roles <@ ARRAY[" + ", ".join(f"'{r}'" for r in ROLES) + "]::text[]",
            name="access_tokens_known_roles",
        ),
        sa.CheckConstraint(
            "expire_time IS NULL OR expire_time > create_time", name="access_tokens_expiry_after_create"
        ),
        sa.UniqueConstraint("token_sha256", name="access_tokens_sha256_unique"),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger),
        sa.Column("user_id", sa.Text),
        sa.Column("changes", postgresql.JSONB, nullable=False),
    )
    # Newest first, by each filterable column.
    op.create_index("audit_events_time", "audit_events", ["event_time"])
    for column in ("resource", "actor", "method", "user_id"):
        op.create_index(f"audit_events_{column}", "audit_events", [column, "id"])


def downgrade() -> None:
    config = op.get_context().config
    if not (config is not None and config.attributes.get("allow_data_loss")):
        bind = op.get_bind()
        for table in ("access_tokens", "audit_events"):
            if bind.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar():
                raise RuntimeError(
                    f"downgrading below 0003 would delete every row of {table}; "
                    "run `modelroute-server migrate --downgrade --allow-data-loss` to do it anyway"
                )
        for table in KEY_TABLES:
            sealed = bind.execute(
                sa.text(
                    f"SELECT count(*) FROM {table} WHERE key_incarnation IS NOT NULL AND api_key_ciphertext IS NOT NULL"
                )
            ).scalar()
            if sealed:
                raise RuntimeError(
                    f"downgrading below 0003 would make {sealed} key(s) in {table} undecryptable "
                    "(they are sealed to their row's incarnation, which 0002 cannot hold); "
                    "run `modelroute-server migrate --downgrade --allow-data-loss` to do it anyway"
                )
    for index in ("audit_events_user_id", "audit_events_method", "audit_events_actor", "audit_events_resource"):
        op.drop_index(index, table_name="audit_events")
    op.drop_index("audit_events_time", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("access_tokens")
    for table in KEY_TABLES:
        op.drop_constraint(f"{table}_key_incarnation_length", table, type_="check")
        op.drop_column(table, "key_incarnation")
