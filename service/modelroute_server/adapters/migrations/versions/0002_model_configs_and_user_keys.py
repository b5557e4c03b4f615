"""Model configs, their ordered attachments, and user keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SLUG_REGEX = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
FAMILIES = ("anthropic", "azure", "bedrock", "google", "openai", "openai-compat", "openrouter", "vercel")
FAMILY_CHECK = "family IN (" + ", ".join(f"'{f}'" for f in FAMILIES) + ")"
PRICES = ("input_price_per_mtok", "output_price_per_mtok", "cache_read_price_per_mtok", "cache_write_price_per_mtok")


def upgrade() -> None:
    op.create_table(
        "model_configs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("family", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("context_limit", sa.Integer, nullable=False),
        sa.Column("compression_threshold", sa.Integer, nullable=False, server_default="70"),
        sa.Column("max_output_tokens", sa.Integer),
        sa.Column("temperature", sa.Float),
        sa.Column("top_p", sa.Float),
        sa.Column("top_k", sa.Integer),
        sa.Column("presence_penalty", sa.Float),
        sa.Column("frequency_penalty", sa.Float),
        *(sa.Column(price, sa.Float) for price in PRICES),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("delete_time", sa.DateTime(timezone=True)),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"id ~ '{SLUG_REGEX}'", name="model_configs_id_slug"),
        sa.CheckConstraint(FAMILY_CHECK, name="model_configs_family_known"),
        sa.CheckConstraint("btrim(model) <> ''", name="model_configs_model_not_blank"),
        sa.CheckConstraint("btrim(display_name) <> ''", name="model_configs_display_name_not_blank"),
        sa.CheckConstraint("context_limit > 0", name="model_configs_context_limit_positive"),
        sa.CheckConstraint("compression_threshold BETWEEN 0 AND 100", name="model_configs_compression_threshold_range"),
        *(sa.CheckConstraint(f"{price} >= 0", name=f"model_configs_{price}_non_negative") for price in PRICES),
        # Only an enabled live model can be the default.
        sa.CheckConstraint(
            "NOT is_default OR (enabled AND delete_time IS NULL)", name="model_configs_default_is_live_enabled"
        ),
        sa.UniqueConstraint("id", "family", name="model_configs_id_family"),
    )
    op.create_index(
        "model_configs_one_live_default",
        "model_configs",
        ["is_default"],
        unique=True,
        postgresql_where=sa.text("is_default AND delete_time IS NULL"),
    )
    op.create_table(
        "model_attachments",
        sa.Column("model_config_id", sa.Text, nullable=False),
        sa.Column("provider_config_id", sa.Text, nullable=False),
        sa.Column("family", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("model_config_id", "provider_config_id", name="model_attachments_pkey"),
        sa.UniqueConstraint(
            "model_config_id",
            "position",
            name="model_attachments_model_position",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.CheckConstraint("position >= 0", name="model_attachments_position_non_negative"),
        # The family appears on both sides: an attachment of another family cannot exist (trap 8).
        sa.ForeignKeyConstraint(
            ["model_config_id", "family"],
            ["model_configs.id", "model_configs.family"],
            name="model_attachments_model_fk",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provider_config_id", "family"],
            ["provider_configs.id", "provider_configs.family"],
            name="model_attachments_provider_fk",
        ),
    )
    op.create_index("model_attachments_provider", "model_attachments", ["provider_config_id"])
    op.create_table(
        "user_provider_keys",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column(
            "provider_config_id",
            sa.Text,
            sa.ForeignKey("provider_configs.id", name="user_provider_keys_provider_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("api_key_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("api_key_key_id", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", "provider_config_id", name="user_provider_keys_pkey"),
        sa.CheckConstraint("user_id <> ''", name="user_provider_keys_user_not_empty"),
    )
    op.create_index("user_provider_keys_provider", "user_provider_keys", ["provider_config_id"])


def downgrade() -> None:
    # 0001 has nowhere to keep these rows: refuse rather than drop them, unless told to.
    config = op.get_context().config
    if not (config is not None and config.attributes.get("allow_data_loss")):
        bind = op.get_bind()
        for table in ("model_configs", "user_provider_keys"):
            if bind.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar():
                raise RuntimeError(
                    f"downgrading below 0002 would delete every row of {table}; "
                    "run `modelroute-server migrate --downgrade --allow-data-loss` to do it anyway"
                )
    op.drop_index("user_provider_keys_provider", table_name="user_provider_keys")
    op.drop_table("user_provider_keys")
    op.drop_index("model_attachments_provider", table_name="model_attachments")
    op.drop_table("model_attachments")
    op.drop_index("model_configs_one_live_default", table_name="model_configs")
    op.drop_table("model_configs")
