"""Resolution use cases over an in-memory snapshot of the configuration.

Steady-state resolution does no database round trip (SPEC trap 9): it reads a
snapshot that is reloaded only after a write (this replica's, or another's
announced through NOTIFY) or when a caller demands a newer revision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..adapters.crypto import SealedKey
from ..adapters.repositories import open_user_key
from ..domain.changes import UserKeyChange
from ..domain.errors import DomainError, PreconditionViolation, Reason
from ..domain.models import ModelConfig
from ..domain.providers import ProviderConfig, StoredKey, provider_config_name
from ..domain.resolver import AttachmentOutcome, Resolution, WhatIf, resolve
from .context import ServiceContext
from .paging import page_size
from .resources import model_not_found, model_resource, provider_not_found

log = logging.getLogger(__name__)
# Past this many pending user-key changes a full reload is as cheap as patching.
MAX_PATCHED_REVISIONS = 1000


@dataclass(frozen=True)
class ConfigSnapshot:
    revision: int
    providers: Mapping[str, ProviderConfig]
    # Live models only: deleted models are never resolved.
    models: Mapping[str, ModelConfig]
    default_model_id: str | None
    user_keys: Mapping[tuple[str, str], SealedKey]


class SnapshotStore:
    """The configuration snapshot every resolution reads; thread-safe.

    - A write committed by this replica (`committed`) is seen by this
      replica's very next call: calls wait until the snapshot reaches it.
    - A write announced by another replica (`announced`, from NOTIFY) is
      loaded in the background; calls answer from the current snapshot
      meanwhile, and a caller that must see it passes `min_revision`.
    - After a (re)connect, when announcements may have been lost, one cheap
      revision query decides whether anything needs loading at all.
    - With the database away, calls answer from the last snapshot, and
      reload attempts back off instead of queueing behind a dead connection.
    - A change that touched one user key only (set or delete) is patched
      into the snapshot from that one row instead of a full reload, as long
      as every revision between the snapshot and the database is such a
      change; anything else (or a gap) means a full reload.
    - `invalidate` forces a full reload (for out-of-band edits of the tables).
    """

    RETRY_SECONDS = 1.0
    # How long a call waits for a load in progress before answering from the last snapshot.
    LOCK_WAIT_SECONDS = 1.0

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()  # one load at a time
        self._signals = threading.Lock()  # guards the revision counters' read-modify-write
        self._snapshot: ConfigSnapshot | None = None
        self._committed_revision = 0
        self._announced_revision = 0
        self._unknown_change = True
        self._force_reload = True
        self._retry_after = 0.0
        self._refreshing = False
        # Revisions known to have changed one user key only (from commits and announcements).
        self._user_key_changes: dict[int, UserKeyChange] = {}

    # -- signals

    def committed(self, revision: int, change: UserKeyChange | None = None) -> None:
        with self._signals:
            self._committed_revision = max(self._committed_revision, revision)
            self._note(revision, change)

    def announced(self, revision: int | None, change: UserKeyChange | None = None) -> None:
        """A change by any replica; None when its revision is unknown (start-up, reconnect)."""
        with self._signals:
            if revision is None:
                self._unknown_change = True
            else:
                self._announced_revision = max(self._announced_revision, revision)
                self._note(revision, change)

    def _note(self, revision: int, change: UserKeyChange | None) -> None:
        snapshot = self._snapshot
        if change is not None and (snapshot is None or revision > snapshot.revision):
            self._user_key_changes[revision] = change

    def invalidate(self) -> None:
        self._force_reload = True

    # -- reads

    def fresh(self, min_revision: int = 0) -> ConfigSnapshot | None:
        """The snapshot when it may answer now, else None (the caller then calls `current`)."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.revision < min_revision:
            return None
        behind_own_writes = self._force_reload or snapshot.revision < self._committed_revision
        if behind_own_writes and not self._database_away():
            return None
        if self._unknown_change or snapshot.revision < self._announced_revision:
            self._refresh_in_background()
        return snapshot

    def current(self, min_revision: int = 0) -> ConfigSnapshot:
        """A snapshot at `min_revision` or later, loading one if needed (blocking, briefly)."""
        snapshot = self.fresh(min_revision)
        if snapshot is None:
            if not self._lock.acquire(timeout=self.LOCK_WAIT_SECONDS):
                # A load is stuck on a slow or lost database: answer from what there is.
                last = self._snapshot
                if last is not None and last.revision >= min_revision:
                    return last
                raise DomainError(Reason.DATABASE_UNAVAILABLE, "the configuration database is not answering")
            try:
                snapshot = self.fresh(min_revision) or self._reload(min_revision)
            finally:
                self._lock.release()
        if snapshot.revision < min_revision:
            raise DomainError(
                Reason.REVISION_NOT_REACHED,
                f"the configuration is at revision {snapshot.revision}; revision {min_revision} does not exist yet",
                metadata={"config_revision": str(snapshot.revision)},
                precondition_violations=[
                    PreconditionViolation(
                        "REVISION_NOT_REACHED", "config_revision", f"at {snapshot.revision}, asked for {min_revision}"
                    )
                ],
            )
        return snapshot

    # -- loading

    def _database_away(self) -> bool:
        return time.monotonic() < self._retry_after

    def _reload(self, min_revision: int = 0) -> ConfigSnapshot:
        """Load if anything changed; with the database away, the last snapshot. Holds `_lock`."""
        last = self._snapshot
        force, unknown = self._force_reload, self._unknown_change
        # Cleared first: a signal that arrives during the load is kept for the next one.
        self._force_reload = self._unknown_change = False
        try:
            snapshot = self._load(None if force else last)
        except DomainError as error:
            self._force_reload, self._unknown_change = self._force_reload or force, self._unknown_change or unknown
            if error.reason is not Reason.DATABASE_UNAVAILABLE:
                raise
            self._retry_after = time.monotonic() + self.RETRY_SECONDS
            if last is None or last.revision < min_revision:
                raise
            return last
        self._retry_after = 0.0
        self._snapshot = snapshot
        with self._signals:
            for revision in [r for r in self._user_key_changes if r <= snapshot.revision]:
                del self._user_key_changes[revision]
        return snapshot

    def _load(self, unless_at: ConfigSnapshot | None) -> ConfigSnapshot:
        """A new snapshot, or `unless_at` itself when the revision shows nothing changed."""
        with self._ctx.read() as uow:
            revision = uow.revisions.current()
            if unless_at is not None and unless_at.revision == revision:
                return unless_at
            patch = self._user_key_patch(unless_at, revision)
            if unless_at is not None and patch is not None:
                # Only user keys changed: re-read just those rows, in this same consistent view.
                found = uow.user_keys.sealed(patch)
                user_keys = dict(unless_at.user_keys)
                for pair in patch:
                    if pair in found:
                        user_keys[pair] = found[pair]
                    else:
                        user_keys.pop(pair, None)
                return replace(unless_at, revision=revision, user_keys=user_keys)
            providers = {p.id: p for p in uow.providers.list()}
            models = {m.id: m for m in uow.models.list()}
            user_keys = uow.user_keys.all_sealed()
        default = next((m.id for m in models.values() if m.is_default), None)
        return ConfigSnapshot(revision, providers, models, default, user_keys)

    def _user_key_patch(self, last: ConfigSnapshot | None, revision: int) -> set[tuple[str, str]] | None:
        """The user keys to re-read when every revision after `last` up to `revision` changed one user key."""
        if last is None or revision - last.revision > MAX_PATCHED_REVISIONS:
            return None
        with self._signals:
            changes = [self._user_key_changes.get(r) for r in range(last.revision + 1, revision + 1)]
        if any(change is None for change in changes):
            return None
        return {(c.user, c.provider_config_id) for c in changes if c is not None}

    def _refresh_in_background(self) -> None:
        if self._refreshing or self._database_away():
            return
        self._refreshing = True

        def refresh() -> None:
            try:
                with self._lock:
                    self._reload()
            except Exception:
                log.warning("background snapshot reload failed", exc_info=True)
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="modelroute-snapshot-refresh", daemon=True).start()


def _find_model(snapshot: ConfigSnapshot, model_config_id: str | None) -> ModelConfig:
    if model_config_id is None:
        if snapshot.default_model_id is None:
            raise DomainError(
                Reason.NO_DEFAULT_MODEL,
                "no model was named and there is no default model (no enabled live model)",
                precondition_violations=[PreconditionViolation("NO_DEFAULT_MODEL", "modelConfigs", "no default model")],
            )
        model_config_id = snapshot.default_model_id
    model = snapshot.models.get(model_config_id)
    if model is None:
        raise model_not_found(model_config_id)  # deleted models are not in the snapshot
    return model


def _user_keys(ctx: ServiceContext, snapshot: ConfigSnapshot, model: ModelConfig, user: str) -> dict[str, StoredKey]:
    """The user's keys for this model's attachments only, keyed by provider config id (never by family)."""
    if not user:
        return {}
    keys = {}
    for provider_id in model.attachments:
        sealed = snapshot.user_keys.get((user, provider_id))
        if sealed is not None:
            keys[provider_id] = open_user_key(ctx.keyring, user, provider_id, sealed)
    return keys


def resolution_for(
    ctx: ServiceContext, snapshot: ConfigSnapshot, model: ModelConfig, user: str, what_if: WhatIf | None = None
) -> Resolution:
    return resolve(model, snapshot.providers, _user_keys(ctx, snapshot, model, user), ctx.deployment_keys, what_if)


def resolve_model(ctx: ServiceContext, snapshot: ConfigSnapshot, model_config_id: str | None, user: str) -> Resolution:
    model = _find_model(snapshot, model_config_id)
    if not model.enabled:
        raise DomainError(Reason.MODEL_CONFIG_DISABLED, f"{model.name} is disabled", resource=model_resource(model.id))
    resolution = resolution_for(ctx, snapshot, model, user)
    if resolution.selected is None:
        raise DomainError(
            Reason.NO_USABLE_ATTACHMENT,
            f"{model.name} has no usable provider config for this caller: "
            f"{len(resolution.skipped)} attachment(s) skipped ("
            + ", ".join(sorted({o.skip_reason.value for o in resolution.skipped if o.skip_reason is not None}))
            + "); the details list each one",
            precondition_violations=[
                PreconditionViolation(
                    o.skip_reason.value,
                    provider_config_name(o.provider_config_id),
                    _violation_text(o),
                )
                for o in resolution.skipped
                if o.skip_reason is not None
            ],
            metadata={"model_config": model.name, "config_revision": str(snapshot.revision)},
        )
    return resolution


def _violation_text(outcome: AttachmentOutcome) -> str:
    # Short on purpose: every attachment must fit in the status trailer.
    fixable_by = outcome.fixable_by.value.lower() if outcome.fixable_by else "admin"
    return f"position {outcome.position}; fixable by {fixable_by}"


@dataclass(frozen=True)
class AvailableModelsPage:
    resolutions: list[Resolution]
    next_page_token: str


def list_available_models(
    ctx: ServiceContext, snapshot: ConfigSnapshot, user: str, requested_page_size: int = 0, page_token: str = ""
) -> AvailableModelsPage:
    size = page_size(requested_page_size)
    query = f"availableModels?user={user}"
    after = ctx.page_tokens.decode(page_token, query)
    models = sorted(
        (m for m in snapshot.models.values() if m.enabled and (after is None or m.id > after)), key=lambda m: m.id
    )
    page, next_token = ctx.page_tokens.cut(models, size, query)
    return AvailableModelsPage([resolution_for(ctx, snapshot, m, user) for m in page], next_token)


def explain_resolution(
    ctx: ServiceContext, snapshot: ConfigSnapshot, model_config_id: str | None, user: str, what_if: WhatIf
) -> Resolution:
    for provider_id in (*what_if.user_has_key, *what_if.provider_enabled):
        if provider_id not in snapshot.providers:
            raise provider_not_found(provider_id, context="a what-if override names ")
    return resolution_for(ctx, snapshot, _find_model(snapshot, model_config_id), user, what_if)
