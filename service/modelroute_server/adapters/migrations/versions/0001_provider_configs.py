"""Provider configs and the config revision counter.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SLUG_REGEX = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
FAMILIES = ("anthropic", "azure", "bedrock", "google", "openai", "openai-compat", "openrouter", "vercel")
FAMILY_CHECK = "family IN (" + ", ".join(f"'{f}'" for f in FAMILIES) + ")"


def upgrade() -> None:
    op.create_table(
        "config_revision",
        sa.Column("singleton", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.CheckConstraint("singleton", name="config_revision_single_row"),
        sa.CheckConstraint("revision >= 0", name="config_revision_non_negative"),
    )
    op.execute("INSERT INTO config_revision (singleton, revision) VALUES (true, 0)")
    op.create_table(
        "provider_configs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("family", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("base_url", sa.Text),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("central_api_key_enabled", sa.Boolean, nullable=False),
        sa.Column("allow_user_api_key", sa.Boolean, nullable=False),
        sa.Column("allow_central_api_key_fallback", sa.Boolean, nullable=False),
        sa.Column("api_key_ciphertext", sa.LargeBinary),
        sa.Column("api_key_key_id", sa.Text),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"id ~ '{SLUG_REGEX}'", name="provider_configs_id_slug"),
        sa.CheckConstraint(FAMILY_CHECK, name="provider_configs_family_known"),
        sa.CheckConstraint("btrim(display_name) <> ''", name="provider_configs_display_name_not_blank"),
        sa.CheckConstraint(
            "(central_api_key_enabled, allow_user_api_key, allow_central_api_key_fallback) IN "
            "((true, false, false), (false, true, false), (true, true, false), (true, true, true))",
            name="provider_configs_valid_credential_policy",
        ),
        sa.CheckConstraint(
            "(api_key_ciphertext IS NULL) = (api_key_key_id IS NULL)",
            name="provider_configs_key_id_with_ciphertext",
        ),
        # Lets attachments reference (id, family) so a cross-family attachment cannot exist.
        sa.UniqueConstraint("id", "family", name="provider_configs_id_family"),
    )
    op.create_index("provider_configs_family_created", "provider_configs", ["family", "create_time", "id"])


def downgrade() -> None:
    # Refuse rather than drop configured providers (and their keys), unless told to.
    config = op.get_context().config
    allowed = config is not None and config.attributes.get("allow_data_loss")
    if not allowed and op.get_bind().execute(sa.text("SELECT EXISTS (SELECT 1 FROM provider_configs)")).scalar():
        raise RuntimeError(
            "downgrading below 0001 would delete every provider config; "
            "run `modelroute-server migrate --downgrade --allow-data-loss` to do it anyway"
        )
    op.drop_index("provider_configs_family_created", table_name="provider_configs")
    op.drop_table("provider_configs")
    op.drop_table("config_revision")
