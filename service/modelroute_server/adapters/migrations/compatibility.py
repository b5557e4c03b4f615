"""The `schema_compatibility` record a migration leaves (revision 0005 explains it): which builds, by their
head revision, can serve the schema at that revision."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def record_served_by(revision: str, served_by: list[str]) -> None:
    op.execute(
        sa.text("INSERT INTO schema_compatibility (revision, served_by) VALUES (:revision, :served_by)").bindparams(
            revision=revision, served_by=served_by
        )
    )


def forget_served_by(revision: str) -> None:
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = :revision").bindparams(revision=revision))
