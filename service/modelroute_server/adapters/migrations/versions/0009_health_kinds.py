"""The contract step of 0008: health changes get kinds of their own in the change log.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

From here a config's cooldowns and central key mark are logged as `health`,
a user's key mark as `key_mark`, so a replica re-reads only the health state
they name. The build with head 0007 cannot read these kinds, so the
compatibility record stops naming it: run this once every replica runs this
build (a fresh database goes through it at its first migration).
"""

from __future__ import annotations

from alembic import op

from modelroute_server.adapters.migrations.compatibility import forget_served_by, record_served_by
from modelroute_server.adapters.migrations.health_triggers import create_health_triggers, drop_health_triggers

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SERVED_BY = ["0009"]


def upgrade() -> None:
    drop_health_triggers()
    create_health_triggers("health", "key_mark")
    record_served_by(revision, SERVED_BY)


def downgrade() -> None:
    forget_served_by(revision)
    drop_health_triggers()
    create_health_triggers("provider", "user_key")
    # The build before this one must not meet kinds it cannot read.
    op.execute(
        "INSERT INTO change_log (sequence, kind, entity_id, user_id, change_time) "
        "SELECT sequence, CASE kind WHEN 'health' THEN 'provider' ELSE 'user_key' END, entity_id, user_id, "
        "change_time FROM change_log WHERE kind IN ('health', 'key_mark') ON CONFLICT DO NOTHING"
    )
    op.execute("DELETE FROM change_log WHERE kind IN ('health', 'key_mark')")
