"""Resolution use cases over an in-memory snapshot of the configuration.

Steady-state resolution does no database round trip (SPEC trap 9): it reads a
snapshot that is reloaded only after a write (this replica's, or another's
announced through NOTIFY) or when a caller demands a newer revision.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from ..adapters.crypto import SealedKey
from ..adapters.repositories import open_user_key
from ..domain.errors import DomainError, PreconditionViolation, Reason, ResourceRef
from ..domain.models import ModelConfig, model_config_name
from ..domain.providers import ProviderConfig, StoredKey, provider_config_name
from ..domain.resolver import AttachmentOutcome, Resolution, WhatIf, resolve
from .context import ServiceContext


@dataclass(frozen=True)
class ConfigSnapshot:
    revision: int
    providers: Mapping[str, ProviderConfig]
    # Live models only: deleted models are never resolved.
    models: Mapping[str, ModelConfig]
    default_model_id: str | None
    user_keys: Mapping[tuple[str, str], SealedKey]


class SnapshotStore:
    """The current snapshot; thread-safe, reloaded lazily once marked stale."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._snapshot: ConfigSnapshot | None = None
        self._stale = True

    def invalidate(self, _revision: int | None = None) -> None:
        self._stale = True

    def fresh(self, min_revision: int = 0) -> ConfigSnapshot | None:
        """The snapshot if it can answer without touching the database, else None."""
        snapshot = self._snapshot
        if snapshot is None or self._stale or snapshot.revision < min_revision:
            return None
        return snapshot

    def current(self, min_revision: int = 0) -> ConfigSnapshot:
        snapshot = self.fresh(min_revision)
        if snapshot is not None:
            return snapshot
        with self._lock:
            snapshot = self.fresh(min_revision)
            if snapshot is None:
                # Clear the flag first: a change announced during the load marks it stale again.
                self._stale = False
                try:
                    snapshot = self._load()
                except DomainError as error:
                    self._stale = True
                    last = self._snapshot
                    if error.reason is not Reason.DATABASE_UNAVAILABLE or last is None or last.revision < min_revision:
                        raise
                    # The database is away: keep answering from the last snapshot.
                    return last
                except BaseException:
                    self._stale = True
                    raise
                self._snapshot = snapshot
        if snapshot.revision < min_revision:
            raise DomainError(
                Reason.REVISION_NOT_REACHED,
                f"the configuration is at revision {snapshot.revision}; revision {min_revision} does not exist yet",
                metadata={"config_revision": str(snapshot.revision)},
            )
        return snapshot

    def _load(self) -> ConfigSnapshot:
        with self._ctx.read() as uow:
            revision = uow.revisions.current()
            providers = {p.id: p for p in uow.providers.list()}
            models = {m.id: m for m in uow.models.list()}
            user_keys = uow.user_keys.all_sealed()
        default = next((m.id for m in models.values() if m.is_default), None)
        return ConfigSnapshot(revision, providers, models, default, user_keys)


def _find_model(snapshot: ConfigSnapshot, model_config_id: str | None) -> ModelConfig:
    if model_config_id is None:
        if snapshot.default_model_id is None:
            raise DomainError(
                Reason.NO_DEFAULT_MODEL, "no model was named and there is no default model (no enabled live model)"
            )
        model_config_id = snapshot.default_model_id
    model = snapshot.models.get(model_config_id)
    if model is None:
        name = model_config_name(model_config_id)
        raise DomainError(
            Reason.MODEL_CONFIG_NOT_FOUND,
            f"{name} does not exist or is deleted",
            resource=ResourceRef("modelroute.internal/ModelConfig", name),
        )
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
    resolution = resolution_for(ctx, snapshot, model, user)
    if not model.enabled:
        raise DomainError(Reason.MODEL_CONFIG_DISABLED, f"{model.name} is disabled")
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


def list_available_models(ctx: ServiceContext, snapshot: ConfigSnapshot, user: str) -> list[Resolution]:
    models = sorted((m for m in snapshot.models.values() if m.enabled), key=lambda m: m.id)
    return [resolution_for(ctx, snapshot, m, user) for m in models]


def explain_resolution(
    ctx: ServiceContext, snapshot: ConfigSnapshot, model_config_id: str | None, user: str, what_if: WhatIf
) -> Resolution:
    for provider_id in (*what_if.user_has_key, *what_if.provider_enabled):
        if provider_id not in snapshot.providers:
            name = provider_config_name(provider_id)
            raise DomainError(
                Reason.PROVIDER_CONFIG_NOT_FOUND,
                f"what-if override names {name}, which does not exist",
                resource=ResourceRef("modelroute.internal/ProviderConfig", name),
            )
    return resolution_for(ctx, snapshot, _find_model(snapshot, model_config_id), user, what_if)
