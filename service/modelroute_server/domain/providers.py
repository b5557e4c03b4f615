"""Provider configs, their credential policy and the central-credential facts.

`central_credential` is the ONE helper every read shape (provider read, model
attachment read, user listing) and the resolver use to say whether and how a
provider config's central credential is usable (guarantee 7 in docs/behaviour.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from . import rules
from .errors import DomainError, FieldViolation, Reason, ViolationCollector
from .families import Family
from .health import NO_OVERRIDE, HealthPolicyOverride


class KeySource(enum.Enum):
    STORED = "STORED"
    DEPLOYMENT = "DEPLOYMENT"
    USER = "USER"
    AMBIENT = "AMBIENT"


@dataclass(frozen=True)
class StoredKey:
    """A key read back from storage: its plaintext, or None when it cannot be decrypted."""

    secret: str | None = field(repr=False)
    # The provider refused this very key (an attempt report): resolution treats it as absent.
    rejected: bool = False

    @property
    def undecryptable(self) -> bool:
        return self.secret is None

    @property
    def present(self) -> bool:
        # An undecryptable key is still a stored key: the admin must see it exists.
        return self.secret is None or rules.key_is_present(self.secret)


@dataclass(frozen=True)
class CredentialPolicy:
    central_api_key_enabled: bool = True
    allow_user_api_key: bool = False
    allow_central_api_key_fallback: bool = False

    @property
    def as_tuple(self) -> tuple[bool, bool, bool]:
        return (self.central_api_key_enabled, self.allow_user_api_key, self.allow_central_api_key_fallback)

    @property
    def central_key_serves_users(self) -> bool:
        """The central key can serve a request: C and (not U or F)."""
        return self.central_api_key_enabled and (not self.allow_user_api_key or self.allow_central_api_key_fallback)

    def problem(self) -> str | None:
        """Every rule an invalid tuple breaks (so each invalid tuple has its own message); None when valid."""
        c, u, f = self.as_tuple
        broken = []
        if not c and not u:
            broken.append("no credential source: enable the central key or allow user keys")
        if f and not c:
            broken.append("central key fallback needs the central key enabled")
        if f and not u:
            broken.append("central key fallback needs user keys allowed")
        return "; ".join(broken) or None


@dataclass(frozen=True)
class ProviderConfig:
    id: str
    family: Family
    display_name: str
    base_url: str | None = None
    enabled: bool = True
    policy: CredentialPolicy = CredentialPolicy()
    api_key: StoredKey | None = field(default=None, repr=False)
    create_time: datetime | None = None
    update_time: datetime | None = None
    revision: int = 0
    health_policy: HealthPolicyOverride = NO_OVERRIDE

    @property
    def name(self) -> str:
        return provider_config_name(self.id)

    @property
    def has_api_key(self) -> bool:
        return self.api_key is not None and self.api_key.present


def provider_config_name(provider_config_id: str) -> str:
    return f"providerConfigs/{provider_config_id}"


@dataclass(frozen=True)
class CentralCredential:
    """Where a config's central credential comes from, if anywhere."""

    source: KeySource | None
    secret: str | None = field(default=None, repr=False)
    undecryptable: bool = False

    @property
    def usable(self) -> bool:
        return self.source is not None and not self.undecryptable


def central_credential(config: ProviderConfig, deployment_keys: Mapping[Family, str]) -> CentralCredential:
    """The central credential of `config`: stored key, else deployment key, else ambient (bedrock).

    A deployment key applies only to configs of its own family with C=1 and no
    stored key (docs/behaviour.md, "Deployment keys"); nothing is ever borrowed from a sibling config.
    """
    if not config.policy.central_api_key_enabled:
        return CentralCredential(None)
    if config.has_api_key:
        assert config.api_key is not None
        return CentralCredential(KeySource.STORED, config.api_key.secret, undecryptable=config.api_key.undecryptable)
    deployment_key = deployment_keys.get(config.family)
    if rules.key_is_present(deployment_key):
        return CentralCredential(KeySource.DEPLOYMENT, deployment_key)
    if config.family.supports_ambient_credentials:
        return CentralCredential(KeySource.AMBIENT)
    return CentralCredential(None)


@dataclass(frozen=True)
class CredentialFacts:
    """What every read shows about a config's credentials, from one helper (trap 7)."""

    has_api_key: bool
    central_credential_usable: bool
    central_credential_source: KeySource | None


def credential_facts(config: ProviderConfig, deployment_keys: Mapping[Family, str]) -> CredentialFacts:
    central = central_credential(config, deployment_keys)
    return CredentialFacts(
        has_api_key=config.has_api_key,
        central_credential_usable=central.usable,
        central_credential_source=central.source,
    )


def validate_provider_config(
    config: ProviderConfig,
    deployment_keys: Mapping[Family, str],
    prefix: str = "",
    *,
    check_central_key: bool = True,
) -> None:
    """All the rules of docs/behaviour.md's "Provider families" and "Provider configs" for a config about to be stored.

    `check_central_key=False` skips the central-key requirement, for updates
    that touch neither the policy nor the key: a config that lost its
    deployment key can still be renamed or disabled (resolution reports it
    as CENTRAL_KEY_MISSING meanwhile).
    """
    violations = ViolationCollector()
    name_problem = rules.display_name_problem(config.display_name)
    if name_problem:
        violations.add(f"{prefix}display_name", name_problem)
    if config.base_url:
        url_problem = rules.base_url_problem(config.base_url)
        if url_problem:
            violations.add(f"{prefix}base_url", url_problem)
    requirement = rules.base_url_requirement_problem(config.family, config.base_url)
    if requirement:
        violations.add(f"{prefix}base_url", requirement)
    violations.raise_if_any()

    policy_problem = config.policy.problem()
    if policy_problem:
        raise DomainError(
            Reason.CREDENTIAL_POLICY_INVALID,
            f"invalid credential policy {tuple(int(b) for b in config.policy.as_tuple)}: {policy_problem}",
            field_violations=[
                FieldViolation(f"{prefix}credential_policy", policy_problem),
            ],
        )
    # A central key is needed where it can ever serve, C and (not U or F), so never under (1,1,0);
    # a deployment key of the family or bedrock's ambient chain stands in for a stored one.
    if (
        check_central_key
        and config.policy.central_key_serves_users
        and central_credential(config, deployment_keys).source is None
    ):
        raise DomainError(
            Reason.FIELD_INVALID,
            f"{prefix}api_key: a central key is required by this credential policy for the "
            f"{config.family.value} family (no deployment key is configured for it)",
            field_violations=[
                FieldViolation(
                    f"{prefix}api_key",
                    "is required: the credential policy uses the central key and no deployment key "
                    f"is configured for the {config.family.value} family",
                )
            ],
        )
