"""What a committed write changed, as far as other replicas must know (domain events)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserKeyChange:
    """A write that changed exactly one user key: replicas may patch their snapshot instead of reloading."""

    user: str
    provider_config_id: str


@dataclass(frozen=True)
class AccessTokenChange:
    """A write that created or revoked one access token (it takes no config revision)."""

    access_token_id: str


Change = UserKeyChange | AccessTokenChange
