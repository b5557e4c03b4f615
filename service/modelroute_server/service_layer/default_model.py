"""The default-model rule (docs/behaviour.md, "Model configs"), in one place for every write that can move it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .unit_of_work import UnitOfWork


@dataclass(frozen=True)
class DefaultChange:
    """Whether a write moved the default model, and where to (None: there is none now)."""

    changed: bool = False
    model_config_id: str | None = None
    previous_model_config_id: str | None = None


UNCHANGED = DefaultChange()


def settle_default(
    uow: UnitOfWork,
    revision: int,
    before: str | None,
    *,
    claimant: str | None = None,
    filler: str | None = None,
    leaving: Collection[str] = (),
) -> DefaultChange:
    """Settle the default after a write that left no row holding a default it may not hold.

    - `claimant` asked to be the default: it takes it from whoever holds it.
    - `filler` just became eligible (created, enabled, undeleted): it takes an empty slot.
    - `leaving` gave the default up (deleted, disabled, un-defaulted): if the slot is empty,
      the next enabled live model not among them is promoted (oldest, then by id).
    `before` is the default's id as the transaction found it.
    """
    holder = uow.models.default()
    holder_id = holder.id if holder is not None else None
    if claimant is not None and holder_id != claimant:
        if holder_id is not None:
            # Cleared first: the partial unique index allows one live default at every statement.
            uow.models.set_default_flag(holder_id, False, revision)
        holder_id = claimant
        uow.models.set_default_flag(claimant, True, revision)
    elif holder_id is None and filler is not None:
        holder_id = filler
        uow.models.set_default_flag(filler, True, revision)
    elif holder_id is None and before is not None and before in leaving:
        promoted = uow.models.promotion_candidate(leaving)
        if promoted is not None:
            holder_id = promoted.id
            uow.models.set_default_flag(promoted.id, True, revision)
    return DefaultChange(holder_id != before, holder_id, before)
