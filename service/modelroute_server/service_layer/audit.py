"""The audit log: listing and pruning, and the pieces every state-changing use case records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..domain.audit import AuditEntry, AuditEvent, AuditFilter, Caller, FieldChange
from ..domain.models import model_config_name
from .context import ServiceContext
from .default_model import DefaultChange
from .paging import page_size

AUDIT_EVENTS = "auditEvents"


@dataclass(frozen=True)
class AuditEventPage:
    items: list[AuditEvent]
    next_page_token: str


def default_move(change: DefaultChange) -> tuple[FieldChange, ...]:
    """The default model's move, as one more field of the event of the call that caused it."""
    if not change.changed:
        return ()
    before = model_config_name(change.previous_model_config_id) if change.previous_model_config_id else None
    after = model_config_name(change.model_config_id) if change.model_config_id else None
    return (FieldChange("default_model_config", before, after),)


def list_audit_events(
    ctx: ServiceContext, audit_filter: AuditFilter, requested_page_size: int, page_token: str
) -> AuditEventPage:
    size = page_size(requested_page_size)
    query = f"{AUDIT_EVENTS}?{audit_filter.canonical}"
    after = ctx.page_tokens.decode(page_token, query)
    with ctx.read() as uow:
        events = uow.audit.list(audit_filter, before_id=int(after) if after is not None else None, limit=size + 1)
    page, next_token = ctx.page_tokens.cut(events, size, query)
    return AuditEventPage(list(page), next_token)


def prune_audit_events(ctx: ServiceContext, caller: Caller, before: datetime) -> int:
    """Removes the events older than `before`; a pruning that removed any is itself an event (kept, being new)."""
    with ctx.write(caller, takes_revision=False) as write:
        removed = write.uow.audit.prune(before)
        if not removed:
            return 0  # nothing changed, nothing to record
        write.record(
            AuditEntry(
                AUDIT_EVENTS,
                (FieldChange("pruned_before", None, before.isoformat()), FieldChange("removed", None, removed)),
            )
        )
    return removed
