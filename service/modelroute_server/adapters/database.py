"""Engines, migrations and the embedded PostgreSQL."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def sqlalchemy_url(url: str) -> str:
    """Accept plain libpq URLs (`postgresql://...`) and use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError("the database URL must start with postgresql:// (or postgres://)")


def libpq_url(url: str) -> str:
    """The same URL for psycopg/libpq directly (no SQLAlchemy driver suffix)."""
    return "postgresql://" + sqlalchemy_url(url).removeprefix("postgresql+psycopg://")


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    # hide_parameters: a logged or raised database error never carries bound values.
    # connect_timeout: a lost database fails a call in seconds instead of hanging it.
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 10,
        "hide_parameters": True,
        # Keepalives notice a vanished server. No session state and no server-side prepared statements,
        # so the pool may go through a transaction-pooling PgBouncer: timeouts are set per transaction
        # (`SET LOCAL`, in the unit of work), never as start-up options.
        "connect_args": {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "prepare_threshold": None,
        },
    }
    options.update(kwargs)
    return sa.create_engine(sqlalchemy_url(url), **options)


def alembic_config(connection: sa.Connection | None = None, allow_data_loss: bool = False) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["allow_data_loss"] = allow_data_loss
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache  # the migrations are part of the build; the health probe asks every few seconds
def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migration history has several heads: {heads}"
    return heads[0]


def upgrade(engine: sa.Engine, target: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), target)


def downgrade(engine: sa.Engine, target: str, allow_data_loss: bool = False) -> None:
    """Refuses (RuntimeError) to drop tables that hold rows unless `allow_data_loss`."""
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection, allow_data_loss), target)


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


# The revisions before this build's head that it still serves: each later migration up to the head only
# changed what the code does not need (0009 only renames the change log's kinds for health changes,
# which this build reads under both names).
OLDER_REVISIONS_SERVED = frozenset({"0008"})


def served_schema_revisions() -> frozenset[str]:
    """The schema revisions this build knows it can serve: its own head and OLDER_REVISIONS_SERVED. A newer
    revision is served too when the database's compatibility record names this build's head
    (`schema_problem`)."""
    return frozenset({head_revision()}) | OLDER_REVISIONS_SERVED


def newer_schema_serves_this_build(connection: sa.Connection, current: str) -> bool:
    """A revision this build does not know, whose migrations say this build can still serve it."""
    present = connection.exec_driver_sql("SELECT to_regclass('schema_compatibility') IS NOT NULL").scalar()
    if not present:
        return False
    served_by = connection.execute(
        sa.text("SELECT served_by FROM schema_compatibility WHERE revision = :revision"), {"revision": current}
    ).scalar()
    return served_by is not None and head_revision() in served_by


def schema_is_served(connection: sa.Connection) -> bool:
    """The database's schema is one this build serves."""
    return schema_problem(connection) is None


def schema_problem(connection: sa.Connection) -> str | None:
    """Why this build cannot serve the database's schema, saying what to do; None when it can."""
    current = MigrationContext.configure(connection).get_current_revision()
    served = served_schema_revisions()
    if current in served:
        return None
    serves = ", ".join(sorted(served))
    if current is None:
        return "the database has no modelroute schema yet; run `modelroute-server migrate` (or serve --migrate)"
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current in known:
        return (
            f"the database schema is at revision {current}, older than this build serves ({serves}); "
            "run `modelroute-server migrate` (or serve --migrate)"
        )
    if newer_schema_serves_this_build(connection, current):
        return None
    return (
        f"the database schema is at revision {current}, which this build does not know and cannot serve (it "
        f"serves {serves}): a newer build has migrated it past what this one understands; run that build, or "
        f"downgrade with its `modelroute-server migrate --downgrade --to {head_revision()}`"
    )


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL (pgserver) living in a local data directory."""

    pgdata: Path
    _server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns about an unset XDG_RUNTIME_DIR while pgserver imports; harmless here.
            warnings.simplefilter("ignore")
            import pgserver  # imported lazily: only embedded mode needs it

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode="stop"
        )
        log.info("embedded PostgreSQL running", extra={"pgdata": str(self.pgdata)})
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def open_database(database_url: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use: the configured one, or a started embedded server's (returned to be stopped)."""
    if database_url is not None:
        return database_url, None
    embedded = EmbeddedPostgres(data_dir / "pgdata")
    return embedded.start(), embedded


@contextmanager
def engine_for(database_url: str | None, data_dir: Path) -> Iterator[sa.Engine]:
    """An engine for a one-off command, on the configured or the embedded database; closed after."""
    url, embedded = open_database(database_url, data_dir)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        if embedded is not None:
            embedded.stop()
