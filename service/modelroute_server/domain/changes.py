"""What changed, as replicas learn it from the change log (domain events, no storage types)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .access import AccessToken
from .health import KeyMark, ProviderHealthState
from .models import ModelConfig
from .providers import ProviderConfig


@dataclass(frozen=True)
class FullState:
    """Everything a replica holds, read in one consistent view at `sequence`."""

    sequence: int
    revision: int
    providers: Sequence[ProviderConfig]
    # Live models only: deleted models are never resolved.
    models: Sequence[ModelConfig]
    # Each user's sealed keys, packed into one value (`adapters.crypto.pack_sealed_keys`).
    user_keys: Iterable[tuple[str, bytes]]
    tokens: Sequence[AccessToken]
    # Provider health by provider config id (only those with any), and users' key marks by user.
    health: Mapping[str, ProviderHealthState] = field(default_factory=dict)
    user_marks: Mapping[str, Mapping[str, KeyMark]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeBatch:
    """What changed after a replica's position up to `sequence`, re-read in one consistent view.

    Each map holds the entity as it is now, or None where it is gone (a deleted provider, a deleted
    or soft-deleted model, a user left with no key, a token row removed).
    """

    sequence: int
    revision: int
    providers: Mapping[str, ProviderConfig | None] = field(default_factory=dict)
    models: Mapping[str, ModelConfig | None] = field(default_factory=dict)
    # By user: all of that user's keys, packed.
    user_keys: Mapping[str, bytes | None] = field(default_factory=dict)
    tokens: Mapping[str, AccessToken | None] = field(default_factory=dict)
    # A provider config's health as it is now (None: healthy, or the config is gone).
    health: Mapping[str, ProviderHealthState | None] = field(default_factory=dict)
    # By user: all of that user's key marks by provider config id (None: none left).
    user_marks: Mapping[str, Mapping[str, KeyMark] | None] = field(default_factory=dict)
