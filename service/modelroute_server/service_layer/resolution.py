"""Resolution use cases over the in-memory configuration snapshot (`snapshot.py`).

Steady-state resolution does no database round trip (guarantee 9 in docs/behaviour.md) and repeats
no work that depends only on the configuration: each provider config's verdict
is prepared once per change; a call decrypts only the caller's own keys that
can change a verdict.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ..adapters.crypto import open_user_key
from ..domain.errors import DomainError, PreconditionViolation, Reason
from ..domain.models import ModelConfig
from ..domain.providers import StoredKey, provider_config_name
from ..domain.resolver import AttachmentOutcome, Resolution, WhatIf, resolve_prepared
from .context import ServiceContext
from .paging import page_size
from .resources import model_not_found, model_resource, provider_not_found
from .snapshot import Snapshot


def _find_model(snapshot: Snapshot, model_config_id: str | None) -> ModelConfig:
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


def _user_keys(
    ctx: ServiceContext, snapshot: Snapshot, model: ModelConfig, user: str, what_if: WhatIf | None
) -> dict[str, StoredKey]:
    """The user's keys that can change this model's verdicts, opened, by provider config id (never by
    family). A key for a config that is disabled or takes no user keys stays sealed (unless a what-if
    may enable it)."""
    if not user or user not in snapshot.user_keys:
        return {}
    verdicts = snapshot.verdicts
    keys = {
        provider_id: open_user_key(ctx.keyring, user, provider_id, key)
        for provider_id, key in snapshot.sealed_user_keys(user, model.attachments).items()
        if what_if is not None or verdicts[provider_id].user_key_matters
    }
    # Keys the provider rejected, as the snapshot decided when the keys or marks last changed.
    for provider_id in snapshot.rejected_user_keys.get(user, ()):
        if provider_id in keys:
            keys[provider_id] = replace(keys[provider_id], rejected=True)
    return keys


def resolution_for(
    ctx: ServiceContext,
    snapshot: Snapshot,
    model: ModelConfig,
    user: str,
    what_if: WhatIf | None = None,
    *,
    ignore_health: bool = False,
) -> Resolution:
    cooldowns = None if ignore_health else snapshot.cooldowns
    # The clock is read only while some attachment is cooling down somewhere (rare).
    now = datetime.now(UTC) if cooldowns else None
    return resolve_prepared(
        model, snapshot.verdicts, _user_keys(ctx, snapshot, model, user, what_if), what_if, cooldowns, now
    )


def resolve_model(ctx: ServiceContext, snapshot: Snapshot, model_config_id: str | None, user: str) -> Resolution:
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
    ctx: ServiceContext, snapshot: Snapshot, user: str, requested_page_size: int = 0, page_token: str = ""
) -> AvailableModelsPage:
    size = page_size(requested_page_size)
    query = f"availableModels?user={user}"
    after = ctx.page_tokens.decode(page_token, query)
    models = list(itertools.islice((m for m in snapshot.models_after(after) if m.enabled), size + 1))
    page, next_token = ctx.page_tokens.cut(models, size, query)
    return AvailableModelsPage([resolution_for(ctx, snapshot, m, user) for m in page], next_token)


def explain_resolution(
    ctx: ServiceContext,
    snapshot: Snapshot,
    model_config_id: str | None,
    user: str,
    what_if: WhatIf,
    ignore_health: bool = False,
) -> Resolution:
    for provider_id in (*what_if.user_has_key, *what_if.provider_enabled):
        if provider_id not in snapshot.providers:
            raise provider_not_found(provider_id, context="a what-if override names ")
    model = _find_model(snapshot, model_config_id)
    return resolution_for(ctx, snapshot, model, user, what_if, ignore_health=ignore_health)
