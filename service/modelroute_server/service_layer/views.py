"""Read shapes handed to the edge: domain objects plus their derived facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..domain.families import Family
from ..domain.models import ModelConfig
from ..domain.providers import CredentialFacts, ProviderConfig, credential_facts


@dataclass(frozen=True)
class ProviderConfigView:
    config: ProviderConfig
    facts: CredentialFacts


@dataclass(frozen=True)
class AttachmentView:
    position: int
    provider: ProviderConfig
    facts: CredentialFacts


@dataclass(frozen=True)
class ModelConfigView:
    model: ModelConfig
    attachments: tuple[AttachmentView, ...]
    # Set when this call moved the default: (changed, new default id or None).
    default_changed: bool = False
    new_default_id: str | None = None


def provider_view(config: ProviderConfig, deployment_keys: Mapping[Family, str]) -> ProviderConfigView:
    return ProviderConfigView(config, credential_facts(config, deployment_keys))


def model_view(
    model: ModelConfig,
    providers: Mapping[str, ProviderConfig],
    deployment_keys: Mapping[Family, str],
    default_change: tuple[bool, str | None] = (False, None),
) -> ModelConfigView:
    attachments = tuple(
        AttachmentView(i, providers[pid], credential_facts(providers[pid], deployment_keys))
        for i, pid in enumerate(model.attachments)
    )
    return ModelConfigView(model, attachments, *default_change)
