"""What every use case needs: the database, the keyring, deployment keys, and the write protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from ..adapters.crypto import Keyring
from ..domain.audit import AuditEntry, Caller
from ..domain.families import Family
from ..domain.health import HealthPolicy
from .paging import PageTokens
from .unit_of_work import UnitOfWork, UnitOfWorkFactory

P = ParamSpec("P")
T = TypeVar("T")


class WriteReceipt:
    """What a call's write produced, for the edge to report (the `modelroute-config-revision` trailer).

    `config_revision`: the revision the write took; for a write that took none (a no-op, a token
    change) the latest config revision committed when it ran, which covers everything it saw, so a
    caller may pass either as `min_revision` to read its write on any replica.
    """

    def __init__(self) -> None:
        self.config_revision: int | None = None

    def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `work` with this receipt collecting what its writes produce."""
        token = _receipt.set(self)
        try:
            return work(*args, **kwargs)
        finally:
            _receipt.reset(token)


_receipt: ContextVar[WriteReceipt | None] = ContextVar("modelroute_write_receipt", default=None)


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
    keyring: Keyring
    # Opens one transaction (PostgreSQL in production, an in-memory fake in table tests).
    unit_of_work: UnitOfWorkFactory
    deployment_keys: Mapping[Family, str] = field(default_factory=dict, repr=False)
    # Called with the change sequence of every commit that changed something replicas read.
    on_commit: list[Callable[[int], None]] = field(default_factory=list)
    # The service's cooldown rule (settings); a provider config's `health_policy` overrides parts of it.
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)

    def __post_init__(self) -> None:
        self.page_tokens = PageTokens(self.keyring.derive("page-token"))

    @contextmanager
    def write(self, caller: Caller, *, takes_revision: bool = True) -> Iterator[Write]:
        """A write transaction; commits, with its audit event, when the block succeeds and recorded one.

        `takes_revision`: the change is to the configuration replicas resolve from, so it holds the
        next config revision (which also serialises such writers). Whatever else the transaction
        changes (an access token, say) is recorded in the change log by the database itself, which
        also announces it to every replica.
        """
        with self.unit_of_work() as uow:
            write = Write(uow, uow.changes.take_revision() if takes_revision else None)
            yield write
            receipt = _receipt.get()
            if write.entry is None:
                if receipt is not None:
                    receipt.config_revision = uow.changes.current_revision()
                return  # nothing changed: the transaction rolls back
            uow.audit.add(caller, write.entry, write.revision)
            sequence = uow.changes.sequence_taken()
            if receipt is not None:
                receipt.config_revision = write.revision or uow.changes.current_revision()
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
        with self.unit_of_work(read_only=True) as uow:
            yield uow
