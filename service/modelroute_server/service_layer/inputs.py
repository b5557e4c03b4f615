"""Use-case inputs: what a request asks for, already off the wire.

`paths` names the fields an update touches (the resolved update mask), in
the resource's own field names; a create ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..domain.families import Family
from ..domain.health import HealthPolicyOverride
from ..domain.models import Attachment, CallOptions

PROVIDER_UPDATABLE_PATHS = frozenset(
    {
        "display_name",
        "base_url",
        "enabled",
        "credential_policy.central_api_key_enabled",
        "credential_policy.allow_user_api_key",
        "credential_policy.allow_central_api_key_fallback",
        "api_key",
        # Replaced as a whole: every field it leaves unset takes the service's default.
        "health_policy",
    }
)
MODEL_OPTION_PATHS = frozenset(f"options.{name}" for name in CallOptions.__dataclass_fields__)
MODEL_UPDATABLE_PATHS = (
    frozenset(
        {
            "model",
            "display_name",
            "enabled",
            "is_default",
            "context_limit",
            "compression_threshold",
            # Both name the one list: `attachments` with overrides, `provider_configs` without.
            "attachments",
            "provider_configs",
            "family",
        }
    )
    | MODEL_OPTION_PATHS
)


@dataclass(frozen=True)
class ProviderConfigInput:
    family: Family | None = None
    display_name: str = ""
    base_url: str = ""
    enabled: bool | None = None
    central_api_key_enabled: bool | None = None
    allow_user_api_key: bool | None = None
    allow_central_api_key_fallback: bool | None = None
    api_key: str = field(default="", repr=False)
    health_policy: HealthPolicyOverride | None = None
    etag: str = ""
    paths: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelConfigInput:
    family: Family | None = None
    model: str = ""
    display_name: str = ""
    enabled: bool | None = None
    is_default: bool | None = None
    context_limit: int = 0
    compression_threshold: int | None = None
    options: CallOptions = field(default_factory=CallOptions)
    # The list asked for (path `attachments` in `paths`), from whichever of the two wire lists carried it.
    attachments: tuple[Attachment, ...] = ()
    # Where the list came from, for the errors that name its entries.
    attachments_field: str = "model_config.provider_configs"
    # False for the plain list of names, which carries no overrides: an update keeps those of the
    # provider configs it lists again.
    overrides_given: bool = False
    etag: str = ""
    paths: frozenset[str] = frozenset()
