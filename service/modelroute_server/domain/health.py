"""Provider health: what attempt reports do to one (provider config, upstream model).

Pure: a state, one report, the policy and the time in; the next state out. The
service applies it to the rows it locks (`service_layer.health`); replicas see
only `cooldown_until`, and the resolver demotes an attachment while it is in the
future (docs/behaviour.md, "Provider health").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from .errors import ViolationCollector

MAX_RETRY_AFTER = timedelta(hours=24)


class AttemptOutcome(enum.Enum):
    SUCCESS = "SUCCESS"
    RATE_LIMITED = "RATE_LIMITED"
    SERVER_ERROR = "SERVER_ERROR"
    TIMEOUT = "TIMEOUT"
    CONNECTION_FAILED = "CONNECTION_FAILED"
    KEY_REJECTED = "KEY_REJECTED"

    @property
    def is_failure(self) -> bool:
        """Counts towards a cooldown: every outcome but a success and a rejected key (which marks the key)."""
        return self not in (AttemptOutcome.SUCCESS, AttemptOutcome.KEY_REJECTED)


@dataclass(frozen=True)
class HealthPolicy:
    """When failures start a cooldown. The service's settings give the defaults."""

    failure_threshold: int = 3
    failure_window: timedelta = timedelta(seconds=60)
    base_cooldown: timedelta = timedelta(seconds=30)
    max_cooldown: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class HealthPolicyOverride:
    """A provider config's own policy: every None takes the service's default."""

    failure_threshold: int | None = None
    failure_window: timedelta | None = None
    base_cooldown: timedelta | None = None
    max_cooldown: timedelta | None = None

    @property
    def is_empty(self) -> bool:
        return self == NO_OVERRIDE

    def in_seconds(self) -> dict[str, float | int | None]:
        """The policy as plain numbers (durations in seconds), as stored and as audited."""

        def seconds(value: timedelta | None) -> float | None:
            return value.total_seconds() if value is not None else None

        return {
            "failure_threshold": self.failure_threshold,
            "failure_window_seconds": seconds(self.failure_window),
            "base_cooldown_seconds": seconds(self.base_cooldown),
            "max_cooldown_seconds": seconds(self.max_cooldown),
        }

    def over(self, defaults: HealthPolicy) -> HealthPolicy:
        return HealthPolicy(
            self.failure_threshold if self.failure_threshold is not None else defaults.failure_threshold,
            self.failure_window if self.failure_window is not None else defaults.failure_window,
            self.base_cooldown if self.base_cooldown is not None else defaults.base_cooldown,
            self.max_cooldown if self.max_cooldown is not None else defaults.max_cooldown,
        )


NO_OVERRIDE = HealthPolicyOverride()


def health_policy_problems(policy: HealthPolicyOverride, defaults: HealthPolicy, prefix: str) -> ViolationCollector:
    """Every rule a provider config's policy breaks, as field violations under `prefix`."""
    violations = ViolationCollector()
    if policy.failure_threshold is not None and not 1 <= policy.failure_threshold <= 1000:
        violations.add(f"{prefix}.failure_threshold", "must be from 1 to 1000")
    for name, value, low, high in (
        ("failure_window", policy.failure_window, timedelta(seconds=1), timedelta(hours=1)),
        ("base_cooldown", policy.base_cooldown, timedelta(seconds=1), MAX_RETRY_AFTER),
        ("max_cooldown", policy.max_cooldown, timedelta(seconds=1), MAX_RETRY_AFTER),
    ):
        if value is not None and not low <= value <= high:
            violations.add(f"{prefix}.{name}", f"must be from {_seconds(low)} to {_seconds(high)}")
    if not violations.violations:
        effective = policy.over(defaults)
        if effective.max_cooldown < effective.base_cooldown:
            violations.add(
                f"{prefix}.max_cooldown",
                f"must be at least the base cooldown ({_seconds(effective.base_cooldown)})",
            )
    return violations


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


@dataclass(frozen=True)
class AttachmentHealth:
    """One (provider config, upstream model), as stored. The default is healthy (no row)."""

    # Failure reports since the last success (shown to admins).
    consecutive_failures: int = 0
    # The run of failures that counts towards the threshold: when it began, and how many.
    window_start: datetime | None = None
    window_failures: int = 0
    # Cooldowns since the last success, and the length of the last one (each trip doubles it).
    trips: int = 0
    last_cooldown: timedelta = timedelta(0)
    cooldown_until: datetime | None = None

    @property
    def healthy(self) -> bool:
        return self == HEALTHY

    def cooling_at(self, now: datetime) -> bool:
        return self.cooldown_until is not None and self.cooldown_until > now


HEALTHY = AttachmentHealth()


def after_report(
    state: AttachmentHealth,
    outcome: AttemptOutcome,
    policy: HealthPolicy,
    now: datetime,
    retry_after: timedelta | None = None,
) -> AttachmentHealth:
    """The state after one report (SPEC of docs/behaviour.md, "Provider health").

    - A success clears everything: the count, the doubling, and a running cooldown.
    - A rejected key leaves the cooldown state alone (it marks the key instead).
    - A rate limit with a retry-after cools down at once for that long (capped).
    - While a cooldown runs, other failures change nothing but the count: they come from calls that
      were already under way, or from callers that had nothing better.
    - After a cooldown, before any success, the next failure trips again at double the last cooldown.
    - Otherwise `failure_threshold` failures within `failure_window` trip at `base_cooldown`.
    """
    if outcome is AttemptOutcome.SUCCESS:
        return HEALTHY
    if not outcome.is_failure:
        return state
    failures = state.consecutive_failures + 1
    if outcome is AttemptOutcome.RATE_LIMITED and retry_after is not None and retry_after > timedelta(0):
        length = min(retry_after, policy.max_cooldown)
        until = now + length
        if state.cooling_at(now):
            assert state.cooldown_until is not None
            # Told to wait longer than the cooldown in force: extend it; never shorten it.
            return replace(state, consecutive_failures=failures, cooldown_until=max(state.cooldown_until, until))
        return _tripped(state, failures, length, now)
    if state.cooling_at(now):
        return replace(state, consecutive_failures=failures)
    if state.trips > 0:
        return _tripped(
            state, failures, min(max(state.last_cooldown * 2, policy.base_cooldown), policy.max_cooldown), now
        )
    if state.window_start is None or now - state.window_start > policy.failure_window:
        window_start, window_failures = now, 1
    else:
        window_start, window_failures = state.window_start, state.window_failures + 1
    if window_failures >= policy.failure_threshold:
        return _tripped(state, failures, min(policy.base_cooldown, policy.max_cooldown), now)
    return replace(state, consecutive_failures=failures, window_start=window_start, window_failures=window_failures)


def _tripped(state: AttachmentHealth, failures: int, length: timedelta, now: datetime) -> AttachmentHealth:
    return AttachmentHealth(
        consecutive_failures=failures,
        window_start=None,
        window_failures=0,
        trips=state.trips + 1,
        last_cooldown=length,
        cooldown_until=now + length,
    )


def after_reports(
    state: AttachmentHealth,
    reports: Iterable[tuple[AttemptOutcome, timedelta | None]],
    policy: HealthPolicy,
    now: datetime,
) -> AttachmentHealth:
    for outcome, retry_after in reports:
        state = after_report(state, outcome, policy, now, retry_after)
    return state


class Transition(enum.Enum):
    """What a report changed that other replicas must learn (only these are announced)."""

    TRIP = "TRIP"
    RECOVERY = "RECOVERY"


def transition(before: AttachmentHealth, after: AttachmentHealth, now: datetime) -> Transition | None:
    if after.cooldown_until != before.cooldown_until and after.cooling_at(now):
        return Transition.TRIP
    if before.cooldown_until is not None and after.cooldown_until is None:
        return Transition.RECOVERY
    return None


@dataclass(frozen=True)
class KeyMark:
    """A key the provider refused: a keyed fingerprint of it (never the key), and when."""

    key_source: str  # "USER", "STORED" or "DEPLOYMENT"
    fingerprint: bytes = field(repr=False)
    rejected_time: datetime


class KeyFingerprints(Protocol):
    """Tells whether a fingerprint was taken of this very key (the keyring, in production)."""

    def fingerprint_matches(self, plaintext: str, fingerprint: bytes) -> bool: ...


def mark_applies(mark: KeyMark | None, secret: str | None, fingerprints: KeyFingerprints) -> bool:
    """A rejected key's mark counts only while the key in use is that very key: a new key clears it by
    itself."""
    return mark is not None and bool(secret) and fingerprints.fingerprint_matches(secret or "", mark.fingerprint)


@dataclass(frozen=True)
class ProviderHealthState:
    """What every replica holds of one provider config's health: the cooldowns set (by upstream model;
    one that has ended is harmless) and the central key's mark."""

    cooldowns: Mapping[str, datetime] = field(default_factory=dict)
    central_mark: KeyMark | None = None

    @property
    def empty(self) -> bool:
        return not self.cooldowns and self.central_mark is None
