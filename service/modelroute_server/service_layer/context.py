"""What every use case needs: the database, the keyring and deployment keys."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..adapters.crypto import Keyring
from ..adapters.repositories import DatabaseUnreachable, UnitOfWork, UserKeyChange
from ..domain.errors import DomainError, Reason
from ..domain.families import Family
from .paging import PageTokens

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    engine: sa.Engine
    keyring: Keyring
    deployment_keys: Mapping[Family, str] = field(default_factory=dict, repr=False)
    # Called with the new revision (and what it changed, when that is one user key) after every commit.
    on_commit: list[Callable[[int, UserKeyChange | None], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page_tokens = PageTokens(self.keyring.derive("page-token"))

    def unit_of_work(self, read_only: bool = False) -> UnitOfWork:
        return UnitOfWork(self.engine, self.keyring, read_only=read_only)

    @contextmanager
    def write(self, change: UserKeyChange | None = None) -> Iterator[tuple[UnitOfWork, int]]:
        """A write transaction holding the next config revision; commits when the block succeeds.

        `change` says the write touches exactly that one user key (and nothing else).
        """
        with translate_database_errors(), self.unit_of_work() as uow:
            revision = uow.revisions.bump()
            yield uow, revision
            uow.notify_change(revision, change)
            uow.commit()
        for callback in self.on_commit:
            callback(revision, change)

    @contextmanager
    def read(self) -> Iterator[UnitOfWork]:
        """A read-only transaction that sees one snapshot across all its queries.

        A read is several statements (models, then attachments, then providers);
        under READ COMMITTED a concurrent forced delete could slip between them.
        """
        with translate_database_errors(), self.unit_of_work(read_only=True) as uow:
            yield uow


@contextmanager
def translate_database_errors() -> Iterator[None]:
    """A lost database is UNAVAILABLE to the caller, never INTERNAL."""
    try:
        yield
    except DatabaseUnreachable as exc:
        log.warning("database unreachable: %s", exc)
        raise DomainError(Reason.DATABASE_UNAVAILABLE, "the configuration database is unreachable") from exc
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if not _lost_connection(exc):
            raise
        log.warning("database connection lost: %s", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        raise DomainError(Reason.DATABASE_UNAVAILABLE, "the configuration database is unreachable") from exc


# SQLSTATE classes of a server that is gone or going: connection exceptions, operator intervention.
_CONNECTION_SQLSTATES = ("08", "57P")


def _lost_connection(exc: sa.exc.DBAPIError) -> bool:
    """A connection that broke mid-use (retryable later), not a statement the server refused.

    SQLAlchemy marks disconnects it recognises as `connection_invalidated`; a server going
    away reports SQLSTATE class 08 or 57P. Anything else is a real fault and stays one.
    """
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate is not None and sqlstate.startswith(_CONNECTION_SQLSTATES)
