"""Attachments of another family, with an upstream model name override of their own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Until now one `family` column on model_attachments was checked against both the
model and the provider config, so an attachment of another family could not
exist (trap 8). Now `family` is the provider config's (its foreign key, as
before), the new `model_family` is the model's (a foreign key that follows a
family change, ON UPDATE CASCADE), and `model_override` is the upstream name
sent to that provider config. The check that replaces the shared column: same
family, or an override is present. A family change that would leave an
attachment of another family without an override fails on that check.

An expand: the build before this one (head 0005) keeps serving it. It inserts
attachments without `model_family`, which a trigger fills from the model. It
ignores overrides, so this build writes none until revision 0007 says no such
build serves the database any more.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelroute_server.adapters.migrations.compatibility import forget_served_by, record_served_by
from modelroute_server.adapters.migrations.override_removal import remove_overrides_or_refuse

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SERVED_BY = ["0005", "0006"]

FILL_MODEL_FAMILY = """
CREATE FUNCTION modelroute_fill_model_family() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.model_family IS NULL THEN
        SELECT family INTO NEW.model_family FROM model_configs WHERE id = NEW.model_config_id;
    END IF;
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.add_column("model_attachments", sa.Column("model_family", sa.Text))
    op.add_column("model_attachments", sa.Column("model_override", sa.Text))
    op.execute("UPDATE model_attachments SET model_family = family")
    op.alter_column("model_attachments", "model_family", nullable=False)
    op.execute(FILL_MODEL_FAMILY)
    op.execute(
        "CREATE TRIGGER model_attachments_fill_model_family BEFORE INSERT ON model_attachments "
        "FOR EACH ROW EXECUTE FUNCTION modelroute_fill_model_family()"
    )
    op.drop_constraint("model_attachments_model_fk", "model_attachments", type_="foreignkey")
    op.create_foreign_key(
        "model_attachments_model_fk",
        "model_attachments",
        "model_configs",
        ["model_config_id", "model_family"],
        ["id", "family"],
        ondelete="CASCADE",
        onupdate="CASCADE",
    )
    op.create_check_constraint(
        "model_attachments_same_family_or_override",
        "model_attachments",
        "family = model_family OR model_override IS NOT NULL",
    )
    op.create_check_constraint(
        "model_attachments_override_not_blank",
        "model_attachments",
        "model_override IS NULL OR (btrim(model_override) = model_override AND model_override <> '')",
    )
    record_served_by(revision, SERVED_BY)


def downgrade() -> None:
    remove_overrides_or_refuse(revision)
    forget_served_by(revision)
    op.drop_constraint("model_attachments_override_not_blank", "model_attachments", type_="check")
    op.drop_constraint("model_attachments_same_family_or_override", "model_attachments", type_="check")
    op.drop_constraint("model_attachments_model_fk", "model_attachments", type_="foreignkey")
    op.create_foreign_key(
        "model_attachments_model_fk",
        "model_attachments",
        "model_configs",
        ["model_config_id", "family"],
        ["id", "family"],
        ondelete="CASCADE",
    )
    op.execute("DROP TRIGGER model_attachments_fill_model_family ON model_attachments")
    op.execute("DROP FUNCTION modelroute_fill_model_family()")
    op.drop_column("model_attachments", "model_override")
    op.drop_column("model_attachments", "model_family")
