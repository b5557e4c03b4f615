"""The resolver: the only code that decides whether a provider config is usable.

Pure: a model config, its attachments' provider configs, the user's keys and
the deployment keys in; one ordered outcome per attachment out. ResolveModel,
ListAvailableModels and ExplainResolution all call `resolve`, so they cannot
disagree (docs/behaviour.md, "Resolution").
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from . import rules
from .families import Family
from .models import ModelConfig
from .providers import CentralCredential, KeySource, ProviderConfig, StoredKey, central_credential


class SkipReason(enum.Enum):
    PROVIDER_DISABLED = "PROVIDER_DISABLED"
    USER_KEY_REQUIRED = "USER_KEY_REQUIRED"
    CENTRAL_KEY_MISSING = "CENTRAL_KEY_MISSING"
    KEY_UNDECRYPTABLE = "KEY_UNDECRYPTABLE"
    INVALID_CONFIG = "INVALID_CONFIG"
    USER_KEY_REJECTED = "USER_KEY_REJECTED"
    CENTRAL_KEY_REJECTED = "CENTRAL_KEY_REJECTED"


class FixableBy(enum.Enum):
    USER = "USER"
    ADMIN = "ADMIN"


class ModelUnusableReason(enum.Enum):
    MODEL_DISABLED = "MODEL_DISABLED"
    NO_USABLE_ATTACHMENT = "NO_USABLE_ATTACHMENT"


@dataclass(frozen=True)
class AttachmentOutcome:
    provider_config_id: str
    position: int
    family: Family
    base_url: str | None
    key_source: KeySource | None = None
    secret: str | None = field(default=None, repr=False)
    skip_reason: SkipReason | None = None
    fixable_by: FixableBy | None = None
    message: str = ""
    # The attachment's upstream model name override; '' sends the model's own (`Resolution.upstream_model`).
    model_override: str = ""
    # Usable, but cooling down until then (provider health): demoted behind the attachments that are not.
    cooldown_until: datetime | None = None

    @property
    def usable(self) -> bool:
        return self.skip_reason is None


@dataclass(frozen=True)
class Resolution:
    model: ModelConfig
    outcomes: tuple[AttachmentOutcome, ...]
    # The positions whose outcome a caller's key (or a what-if) decided; every other outcome, and the
    # whole answer when there is none, is the same for every caller.
    decided_by_caller: frozenset[int] = frozenset()
    # Some usable attachment is cooling down: `usable_outcomes` is then in health order.
    cooling: bool = False

    # Computed once per resolution (a call reads each several times).
    @functools.cached_property
    def usable_outcomes(self) -> tuple[AttachmentOutcome, ...]:
        """The usable attachments in the order to try them: those cooling down after all the others, in
        their order; when every one is cooling down, the one that recovers first leads (health never
        turns a working configuration into an outage)."""
        usable = tuple(o for o in self.outcomes if o.skip_reason is None)
        if not self.cooling:
            return usable
        ready = [o for o in usable if o.cooldown_until is None]
        cooling = [o for o in usable if o.cooldown_until is not None]
        if not ready and cooling:
            first = min(cooling, key=lambda o: (o.cooldown_until, o.position))
            cooling.remove(first)
            ready.append(first)
        return (*ready, *cooling)

    @property
    def degraded(self) -> bool:
        """Usable, but through an attachment that is cooling down."""
        selected = self.selected
        return selected is not None and selected.cooldown_until is not None

    @property
    def selected(self) -> AttachmentOutcome | None:
        usable = self.usable_outcomes
        return usable[0] if usable and self.model.enabled else None

    @property
    def fallbacks(self) -> tuple[AttachmentOutcome, ...]:
        return self.usable_outcomes[1:] if self.model.enabled else ()

    @functools.cached_property
    def skipped(self) -> tuple[AttachmentOutcome, ...]:
        return tuple(o for o in self.outcomes if o.skip_reason is not None)

    def upstream_model(self, outcome: AttachmentOutcome) -> str:
        """The upstream model name to send the outcome's provider config."""
        return outcome.model_override or self.model.model

    @property
    def unusable_reason(self) -> ModelUnusableReason | None:
        if not self.model.enabled:
            return ModelUnusableReason.MODEL_DISABLED
        if not self.usable_outcomes:
            return ModelUnusableReason.NO_USABLE_ATTACHMENT
        return None


@dataclass(frozen=True)
class WhatIf:
    """Admin what-if overrides for ExplainResolution; the real state is left alone."""

    user_has_key: Mapping[str, bool] = field(default_factory=dict)
    provider_enabled: Mapping[str, bool] = field(default_factory=dict)


# A stand-in secret for a what-if user key: explain never returns secrets.
_WHAT_IF_KEY = StoredKey("what-if")


@dataclass(frozen=True, eq=False)
class ProviderVerdict:
    """Everything about one provider config that does not depend on the caller, computed once per change.

    `without_user_key` is the resolver's verdict for a caller holding no user key
    for it (at position 0); a user key can change it only when `user_key_matters`
    (the config is enabled and accepts user keys). `config_problem` is the stored
    row's base URL check, so no call parses a URL. `central_rejected`: the provider
    refused the central key this config would use (its mark matches that key).
    """

    provider: ProviderConfig
    deployment_key: str | None = field(repr=False)
    config_problem: str | None
    without_user_key: AttachmentOutcome
    user_key_matters: bool
    central_rejected: bool = False
    # By override ('' for none), then position: string keys hash once, so no call builds a key.
    _outcomes: dict[str, dict[int, AttachmentOutcome]] = field(default_factory=lambda: {"": {}}, repr=False)

    def outcome_at(self, position: int, model_override: str = "") -> AttachmentOutcome:
        """`without_user_key` at `position` with that override, shared by every model that has it there (a
        race makes equal copies)."""
        by_position = self._outcomes.get(model_override)
        if by_position is None:
            by_position = self._outcomes[model_override] = {}
        outcome = by_position.get(position)
        if outcome is None:
            outcome = by_position[position] = replace(
                self.without_user_key, position=position, model_override=model_override
            )
        return outcome


def prepare_provider(
    provider: ProviderConfig, deployment_keys: Mapping[Family, str], central_rejected: bool = False
) -> ProviderVerdict:
    deployment_key = deployment_keys.get(provider.family)
    problem = runtime_config_problem(provider)
    keys = {provider.family: deployment_key} if deployment_key is not None else {}
    outcome = _attachment_outcome(provider, 0, provider.enabled, None, keys, problem, central_rejected)
    return ProviderVerdict(
        provider,
        deployment_key,
        problem,
        outcome,
        provider.enabled and provider.policy.allow_user_api_key,
        central_rejected,
    )


def resolve(
    model: ModelConfig,
    providers: Mapping[str, ProviderConfig],
    user_keys: Mapping[str, StoredKey],
    deployment_keys: Mapping[Family, str],
    what_if: WhatIf | None = None,
    cooldowns: Mapping[str, Mapping[str, datetime]] | None = None,
    now: datetime | None = None,
) -> Resolution:
    """Walk the attachments in order; record one outcome each.

    `user_keys` is keyed by provider config id: a key never leaks from one
    config to a sibling of the same family (guarantee 3 in docs/behaviour.md).
    """
    verdicts = {pid: prepare_provider(providers[pid], deployment_keys) for pid in model.attachments}
    return resolve_prepared(model, verdicts, user_keys, what_if, cooldowns, now)


def resolve_prepared(
    model: ModelConfig,
    verdicts: Mapping[str, ProviderVerdict],
    user_keys: Mapping[str, StoredKey],
    what_if: WhatIf | None = None,
    cooldowns: Mapping[str, Mapping[str, datetime]] | None = None,
    now: datetime | None = None,
) -> Resolution:
    """`resolve` over verdicts prepared when the configuration changed: only an attachment whose
    verdict the caller's key (or a what-if) can change is decided again.

    `cooldowns`: by provider config id, the upstream models cooling down until when (provider
    health); one that ends by `now` is over."""
    outcomes = []
    decided = []
    overrides = model.overrides
    for position, provider_id in enumerate(model.attachments):
        verdict = verdicts[provider_id]
        user_key = user_keys.get(provider_id)
        override = overrides[position] if overrides else ""
        if what_if is None and (user_key is None or not verdict.user_key_matters):
            outcomes.append(verdict.outcome_at(position, override))
            continue
        decided.append(position)
        provider = verdict.provider
        if (
            what_if is None
            and verdict.config_problem is None
            and user_key is not None
            and not user_key.rejected
            and rules.key_is_present(user_key.secret)
        ):
            # Rule 2's first case, the common one: the caller's own key, decrypted, for an enabled config
            # that takes user keys (`user_key_matters`) and can make a client (rule 4).
            outcomes.append(
                AttachmentOutcome(
                    provider_id,
                    position,
                    provider.family,
                    provider.base_url,
                    KeySource.USER,
                    user_key.secret,
                    model_override=override,
                )
            )
            continue
        enabled = provider.enabled
        if what_if is not None:
            enabled = what_if.provider_enabled.get(provider_id, enabled)
            if provider_id in what_if.user_has_key:
                user_key = _WHAT_IF_KEY if what_if.user_has_key[provider_id] else None
        keys = {provider.family: verdict.deployment_key} if verdict.deployment_key is not None else {}
        outcome = _attachment_outcome(
            provider, position, enabled, user_key, keys, verdict.config_problem, verdict.central_rejected
        )
        outcomes.append(replace(outcome, model_override=override) if override else outcome)
    if what_if is not None:
        decided = list(range(len(outcomes)))
    cooling = False
    if cooldowns:
        assert now is not None
        for index, outcome in enumerate(outcomes):
            by_model = cooldowns.get(outcome.provider_config_id)
            if by_model is None or outcome.skip_reason is not None:
                continue
            until = by_model.get(outcome.model_override or model.model)
            if until is not None and until > now:
                outcomes[index] = replace(outcome, cooldown_until=until)
                cooling = True
    return Resolution(model, tuple(outcomes), frozenset(decided), cooling)


def provider_outcome(
    provider: ProviderConfig, user_key: StoredKey | None, deployment_keys: Mapping[Family, str]
) -> AttachmentOutcome:
    """The same verdict `resolve` reaches for this config, outside any model (position 0)."""
    return _attachment_outcome(
        provider, 0, provider.enabled, user_key, deployment_keys, runtime_config_problem(provider)
    )


def _attachment_outcome(
    provider: ProviderConfig,
    position: int,
    enabled: bool,
    user_key: StoredKey | None,
    deployment_keys: Mapping[Family, str],
    config_problem: str | None,
    central_rejected: bool = False,
) -> AttachmentOutcome:
    def skipped(reason: SkipReason, fixable_by: FixableBy, message: str) -> AttachmentOutcome:
        return AttachmentOutcome(
            provider.id,
            position,
            provider.family,
            provider.base_url,
            skip_reason=reason,
            fixable_by=fixable_by,
            message=message,
        )

    # 1. A disabled provider is never used.
    if not enabled:
        return skipped(SkipReason.PROVIDER_DISABLED, FixableBy.ADMIN, "the provider config is disabled")

    # 2. The credential policy decides the key (first matching rule, docs/behaviour.md "Resolution").
    # A key the provider rejected counts as absent (docs/behaviour.md, "Rejected keys").
    policy = provider.policy
    central = central_credential(provider, deployment_keys)
    if central_rejected and central.source in (KeySource.STORED, KeySource.DEPLOYMENT):
        ambient = policy.central_api_key_enabled and provider.family.supports_ambient_credentials
        central = CentralCredential(KeySource.AMBIENT if ambient else None)
    has_central_key = central.source in (KeySource.STORED, KeySource.DEPLOYMENT)
    user_key_rejected = user_key is not None and user_key.rejected
    user_key_present = user_key is not None and user_key.present and not user_key_rejected
    source: KeySource
    secret: str | None
    if policy.allow_user_api_key and user_key_present:
        assert user_key is not None
        source, secret = KeySource.USER, user_key.secret
        if user_key.undecryptable:
            return skipped(
                SkipReason.KEY_UNDECRYPTABLE,
                FixableBy.USER,
                "the user's key cannot be decrypted; set it again",
            )
    elif has_central_key and policy.central_key_serves_users:
        assert central.source is not None
        source, secret = central.source, central.secret
        if central.undecryptable:
            return skipped(
                SkipReason.KEY_UNDECRYPTABLE,
                FixableBy.ADMIN,
                "the stored central key cannot be decrypted with the configured keyring",
            )
    elif has_central_key and policy.allow_user_api_key:
        if user_key_rejected:
            return skipped(SkipReason.USER_KEY_REJECTED, FixableBy.USER, _USER_KEY_REJECTED)
        return skipped(
            SkipReason.USER_KEY_REQUIRED,
            FixableBy.USER,
            "this provider config requires the user's own key and the user has none",
        )
    elif central.source is KeySource.AMBIENT and policy.central_key_serves_users:
        source, secret = KeySource.AMBIENT, None
    elif policy.allow_user_api_key:
        if user_key_rejected:
            return skipped(SkipReason.USER_KEY_REJECTED, FixableBy.USER, _USER_KEY_REJECTED)
        return skipped(
            SkipReason.USER_KEY_REQUIRED,
            FixableBy.USER,
            "this provider config accepts only the user's own key and the user has none",
        )
    elif central_rejected:
        return skipped(
            SkipReason.CENTRAL_KEY_REJECTED,
            FixableBy.ADMIN,
            "the provider rejected the central key; set a new key (or reset the provider config's health)",
        )
    else:
        return skipped(
            SkipReason.CENTRAL_KEY_MISSING,
            FixableBy.ADMIN,
            "no central key is stored and no deployment key is configured for the family",
        )

    # 4. A config that cannot produce a working client is skipped; the walk goes on (trap 5).
    if config_problem:
        return skipped(SkipReason.INVALID_CONFIG, FixableBy.ADMIN, config_problem)

    return AttachmentOutcome(provider.id, position, provider.family, provider.base_url, source, secret)


_USER_KEY_REJECTED = "the provider rejected the user's key for this provider config; the user must set a new one"


def runtime_config_problem(provider: ProviderConfig) -> str | None:
    """Today's validation applied to a stored row (it may predate a rule, or be written by hand)."""
    requirement = rules.base_url_requirement_problem(provider.family, provider.base_url)
    if requirement:
        return f"base_url {requirement}"
    if provider.base_url:
        url_problem = rules.base_url_problem(provider.base_url)
        if url_problem:
            return f"base_url {url_problem}"
    return None
