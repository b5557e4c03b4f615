"""Read shapes handed to the edge: domain objects plus their derived facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..domain.families import Family
from ..domain.health import AttachmentHealth
from ..domain.models import ModelConfig
from ..domain.providers import CredentialFacts, ProviderConfig, credential_facts
from .default_model import UNCHANGED, DefaultChange


@dataclass(frozen=True)
class ProviderHealthView:
    """What attempt reports say of a provider config now: each upstream model's state, and since when its
    central key (the one it uses now) is marked rejected."""

    models: tuple[tuple[str, AttachmentHealth], ...] = ()
    central_key_rejected_time: datetime | None = None


NO_HEALTH = ProviderHealthView()


@dataclass(frozen=True)
class ProviderConfigView:
    config: ProviderConfig
    facts: CredentialFacts
    health: ProviderHealthView = NO_HEALTH


@dataclass(frozen=True)
class AttachmentView:
    position: int
    provider: ProviderConfig
    facts: CredentialFacts
    model_override: str
    # The upstream name the attachment is sent: the override, else the model's own.
    effective_model: str


@dataclass(frozen=True)
class ModelConfigView:
    model: ModelConfig
    attachments: tuple[AttachmentView, ...]
    # Whether the call that produced this view moved the default model.
    default_change: DefaultChange = UNCHANGED


def provider_view(
    config: ProviderConfig, deployment_keys: Mapping[Family, str], health: ProviderHealthView = NO_HEALTH
) -> ProviderConfigView:
    return ProviderConfigView(config, credential_facts(config, deployment_keys), health)


def model_view(
    model: ModelConfig,
    providers: Mapping[str, ProviderConfig],
    deployment_keys: Mapping[Family, str],
    default_change: DefaultChange = UNCHANGED,
) -> ModelConfigView:
    attachments = tuple(
        AttachmentView(
            i,
            providers[pid],
            credential_facts(providers[pid], deployment_keys),
            model.override_at(i),
            model.upstream_model_at(i),
        )
        for i, pid in enumerate(model.attachments)
    )
    return ModelConfigView(model, attachments, default_change)
