"""Which builds can serve this schema: the record that lets replicas one version apart run side by side.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Migrations are written expand-then-contract (docs/operations.md, "Rolling
upgrades"): a revision that only adds (a table, a nullable column, a relaxed
constraint) leaves the schema servable by the build before it. A build knows
the revisions it was written for, but not the ones after it, so the database
says it: `schema_compatibility` holds, for the current revision, the head
revisions of every build that can serve it. Each later migration rewrites the
row: an expand keeps the previous build's head in the list, a contract drops
it.

This revision only adds the table, so the build before it (head 0004) serves
it too. Downgrading drops the table: it holds nothing but this record.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The heads of the builds that can serve this revision (this build's own, and the one before: expand only).
SERVED_BY = ["0004", "0005"]


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("revision", sa.Text(), primary_key=True),
        sa.Column("served_by", sa.ARRAY(sa.Text()), nullable=False),
    )
    op.execute(
        sa.text("INSERT INTO schema_compatibility (revision, served_by) VALUES (:revision, :served_by)").bindparams(
            revision=revision, served_by=SERVED_BY
        )
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
