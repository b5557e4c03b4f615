"""The contract step of 0006: no build that ignores upstream model name overrides serves the schema.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Nothing in the tables changes. The compatibility record stops naming the build
with head 0005, which would send an override's provider config the model's
own name; from here this build accepts overrides (`ModelConfigs.overrides_accepted`).
Run it once every replica runs this build (docs/operations.md, "Rolling
upgrades"); a fresh database goes through it at its first migration.
"""

from __future__ import annotations

from modelroute_server.adapters.migrations.compatibility import forget_served_by, record_served_by
from modelroute_server.adapters.migrations.override_removal import remove_overrides_or_refuse

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SERVED_BY = ["0007"]


def upgrade() -> None:
    record_served_by(revision, SERVED_BY)


def downgrade() -> None:
    # Below here the build with head 0005 may serve again, and it would ignore the overrides.
    remove_overrides_or_refuse(revision)
    forget_served_by(revision)
