"""What every use case needs: the database, the keyring, deployment keys, and the write protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..adapters.crypto import Keyring
from ..adapters.repositories import DatabaseUnreachable, UnitOfWork
from ..domain.audit import AuditEntry, Caller
from ..domain.errors import DomainError, Reason
from ..domain.families import Family
from .paging import PageTokens

log = logging.getLogger(__name__)


class Write:
    """One write transaction: its unit of work, the config revision it holds (None for a change that
    takes none), and the one audit event that says what it changed.

    The event is the commit's ticket: a write that records none changed nothing and is rolled back,
    so it takes no revision and announces nothing (a no-op update, a delete that found nothing).
    """

    def __init__(self, uow: UnitOfWork, revision: int | None) -> None:
        self.uow = uow
        self.revision = revision
        self.entry: AuditEntry | None = None

    @property
    def config_revision(self) -> int:
        if self.revision is None:
            raise AssertionError("this write takes no config revision")
        return self.revision

    def record(self, entry: AuditEntry) -> None:
        if self.entry is not None:
            raise AssertionError(f"a call records one audit event; {self.entry.resource} was recorded already")
        self.entry = entry


@dataclass
class ServiceContext:
    engine: sa.Engine
    keyring: Keyring
    deployment_keys: Mapping[Family, str] = field(default_factory=dict, repr=False)
    # Called with the change sequence of every commit that changed something replicas read.
    on_commit: list[Callable[[int], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page_tokens = PageTokens(self.keyring.derive("page-token"))

    def unit_of_work(self, read_only: bool = False) -> UnitOfWork:
        return UnitOfWork(self.engine, self.keyring, read_only=read_only)

    @contextmanager
    def write(self, caller: Caller, *, takes_revision: bool = True) -> Iterator[Write]:
        """A write transaction; commits, with its audit event, when the block succeeds and recorded one.

        `takes_revision`: the change is to the configuration replicas resolve from, so it holds the
        next config revision (which also serialises such writers). Whatever else the transaction
        changes (an access token, say) is recorded in the change log by the database itself, which
        also announces it to every replica.
        """
        with translate_database_errors(), self.unit_of_work() as uow:
            write = Write(uow, uow.changes.take_revision() if takes_revision else None)
            yield write
            if write.entry is None:
                return  # nothing changed: the transaction rolls back
            uow.audit.add(caller, write.entry, write.revision)
            sequence = uow.changes.sequence_taken()
            uow.commit()
        if sequence is not None:
            for callback in self.on_commit:
                callback(sequence)

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
