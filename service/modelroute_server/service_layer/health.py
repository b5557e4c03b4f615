"""Attempt reports and provider health (docs/behaviour.md, "Provider health").

A batch of reports is validated whole (nothing of a bad batch is recorded),
then applied in one transaction: the (provider config, upstream model) rows it
names are locked in key order, the pure rule of `domain.health` gives each its
next state, and only what changed is written. A batch of successes about
healthy attachments writes nothing. The database logs only what other replicas
must learn (a cooldown that starts or ends, a key mark), and this replica
applies it before answering.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..domain import rules
from ..domain.audit import AuditEntry, Caller, FieldChange
from ..domain.errors import ViolationCollector
from ..domain.health import (
    HEALTHY,
    MAX_RETRY_AFTER,
    AttachmentHealth,
    AttemptOutcome,
    HealthPolicy,
    KeyMark,
    Transition,
    after_reports,
    mark_applies,
    transition,
)
from ..domain.providers import KeySource, ProviderConfig, central_credential, provider_config_name
from .context import ServiceContext
from .resources import provider_not_found
from .unit_of_work import HealthKey, UnitOfWork
from .views import NO_HEALTH, ProviderConfigView, ProviderHealthView, provider_view

MAX_REPORTS_PER_BATCH = 1000
MAX_MODEL_CHARS = 256


@dataclass(slots=True)
class AttemptReport:
    """One report, off the wire. `provider_config_id` is None when the name did not parse.

    Not frozen: a batch makes up to a thousand of these on the server's busiest write path, and a frozen
    dataclass costs five times as much to make. Nothing changes one once made."""

    provider_config_id: str | None
    model: str
    user: str
    key_source: KeySource | None
    config_revision: int
    outcome: AttemptOutcome | None
    retry_after: timedelta | None = None


@dataclass
class ReportsApplied:
    recorded: int = 0
    # KEY_REJECTED reports about a key replaced (or removed) since: they change nothing.
    ignored: int = 0
    transitions: list[Transition] = field(default_factory=list)
    # The key source of each key this batch marked rejected.
    marked: list[str] = field(default_factory=list)


def check_reports(reports: Sequence[AttemptReport], known_providers: Mapping[str, ProviderConfig]) -> None:
    """Every problem of the batch as one INVALID_ARGUMENT (SPEC: nothing of a bad batch is recorded)."""
    violations = ViolationCollector()
    if not reports:
        violations.add("attempts", "must hold at least one report")
    if len(reports) > MAX_REPORTS_PER_BATCH:
        violations.add("attempts", f"holds {len(reports)} reports; at most {MAX_REPORTS_PER_BATCH} per call")
        violations.raise_if_any()
    user_problems: dict[str, str | None] = {}  # a batch names few users, many times each
    for index, report in enumerate(reports):
        for field_name, description in _report_problems(report, known_providers, user_problems):
            violations.add(f"attempts[{index}].{field_name}", description)
    violations.raise_if_any()


def _report_problems(
    report: AttemptReport, known_providers: Mapping[str, ProviderConfig], user_problems: dict[str, str | None]
) -> list[tuple[str, str]]:
    problems = []
    if report.provider_config_id is None:
        problems.append(("provider_config", "must be a provider config name `providerConfigs/{id}`"))
    elif report.provider_config_id not in known_providers:
        problems.append(("provider_config", f"names no provider config ({report.provider_config_id})"))
    if not report.model.strip():
        problems.append(("model", "must name the upstream model the attempt sent"))
    elif len(report.model) > MAX_MODEL_CHARS:
        problems.append(("model", f"must be at most {MAX_MODEL_CHARS} characters"))
    elif problem := rules.control_character_problem(report.model):
        problems.append(("model", problem))  # no upstream name holds one, and PostgreSQL text cannot hold NUL
    if report.outcome is None:
        problems.append(("outcome", "must be set"))
    if report.user:
        problem = user_problems.get(report.user, "")
        if problem == "":
            problem = user_problems[report.user] = rules.user_id_problem(report.user)
        if problem:
            problems.append(("user", problem))
    elif report.key_source is KeySource.USER:
        problems.append(("user", "is required for a report about a user's key (key_source USER)"))
    if report.outcome is AttemptOutcome.KEY_REJECTED:
        if report.key_source is None:
            problems.append(("key_source", "is required for KEY_REJECTED: which key was rejected"))
        elif report.key_source is KeySource.AMBIENT:
            problems.append(("key_source", "AMBIENT holds no key to reject; KEY_REJECTED needs a key"))
    if report.retry_after is not None:
        if report.retry_after < _ZERO:
            problems.append(("retry_after", "must not be negative"))
        elif report.retry_after > MAX_RETRY_AFTER:
            problems.append(("retry_after", "must be at most 24 hours"))
    if report.config_revision < 0:
        problems.append(("config_revision", "must not be negative"))
    return problems


_ZERO = timedelta(0)


def policy_of(ctx: ServiceContext, provider: ProviderConfig) -> HealthPolicy:
    return provider.health_policy.over(ctx.health_policy)


def report_attempts(
    ctx: ServiceContext,
    caller: Caller,
    reports: Sequence[AttemptReport],
    known_providers: Mapping[str, ProviderConfig],
) -> ReportsApplied:
    check_reports(reports, known_providers)
    applied = ReportsApplied()
    by_key: dict[HealthKey, list[tuple[AttemptOutcome, timedelta | None]]] = {}
    failed: set[HealthKey] = set()
    rejections = []
    for report in reports:
        assert report.provider_config_id is not None and report.outcome is not None
        if report.outcome is AttemptOutcome.KEY_REJECTED:
            rejections.append(report)
        else:
            key = (report.provider_config_id, report.model)
            by_key.setdefault(key, []).append((report.outcome, report.retry_after))
            if report.outcome.is_failure:
                failed.add(key)
    # The database's clock decides cooldowns (every replica compares them with its own); a batch of
    # successes writes nothing unless some row had failures.
    with ctx.unit_of_work() as uow:
        now = uow.now
        # Whether the change log took this transaction's writes (a cooldown that moved, a mark set): only
        # then is there a sequence for this replica to apply before answering.
        logged = False
        if by_key:
            applied.transitions, logged = _apply_health(ctx, uow, by_key, failed, known_providers, now)
        for report in rejections:
            marked = _mark_rejected_key(ctx, uow, caller, report, now)
            if marked is None:
                applied.ignored += 1
            elif marked and report.key_source is not None:
                applied.marked.append(report.key_source.value)
                logged = True
        applied.recorded = len(reports) - applied.ignored
        sequence = uow.changes.sequence_taken() if logged else None
        uow.commit()
    if sequence is not None:
        for callback in ctx.on_commit:
            callback(sequence)
    return applied


def _apply_health(
    ctx: ServiceContext,
    uow: UnitOfWork,
    by_key: Mapping[HealthKey, list[tuple[AttemptOutcome, timedelta | None]]],
    failed: Collection[HealthKey],
    providers: Mapping[str, ProviderConfig],
    now: datetime,
) -> tuple[list[Transition], bool]:
    """The transitions the reports caused, and whether the change log took any write: the database logs a
    row whose `cooldown_until` changed (migrations/health_triggers.py), which is what other replicas read."""
    transitions: list[Transition] = []
    logged = False
    pending = set(by_key)
    policies: dict[str, HealthPolicy] = {}
    for _ in range(3):  # a row another writer inserted meanwhile is locked and decided again
        stored = uow.health.locked(pending)
        states: dict[HealthKey, AttachmentHealth] = {}
        for key in pending:
            before = stored.get(key)
            if before is None:
                if key not in failed:
                    continue  # no failure leaves a healthy attachment healthy: most of a batch ends here
                before = HEALTHY
            policy = policies.get(key[0])
            if policy is None:
                policy = policies[key[0]] = policy_of(ctx, providers[key[0]])
            after = after_reports(before, by_key[key], policy, now)
            if after != before:
                states[key] = after
        lost = uow.health.save(states, stored.keys())
        for key, after in states.items():
            if key not in lost:
                before = stored.get(key, HEALTHY)
                logged = logged or after.cooldown_until != before.cooldown_until
                moved = transition(before, after, now)
                if moved is not None:
                    transitions.append(moved)
        if not lost:
            break
        pending = lost
    return transitions, logged


def _mark_rejected_key(
    ctx: ServiceContext, uow: UnitOfWork, caller: Caller, report: AttemptReport, now: datetime
) -> bool | None:
    """Marks the key the report is about; None when it is about a key replaced since (or gone), False
    when the mark was there already."""
    provider_id = report.provider_config_id
    assert provider_id is not None and report.key_source is not None
    user = report.user if report.key_source is KeySource.USER else ""
    if user:
        found = uow.user_keys.with_revision(user, provider_id)
        if found is None or report.config_revision < found[1]:
            return None
        secret = found[0].secret
    else:
        provider = uow.providers.get(provider_id)
        if provider is None or report.config_revision < provider.revision:
            return None
        central = central_credential(provider, ctx.deployment_keys)
        if central.source is not report.key_source:
            return None  # the config no longer uses the kind of key the caller was given
        secret = central.secret
    if not secret:
        return None
    if mark_applies(uow.health.marks([provider_id], user).get(provider_id), secret, ctx.keyring):
        return False
    uow.health.put_mark(provider_id, user, KeyMark(report.key_source.value, ctx.keyring.fingerprint(secret), now))
    uow.audit.add(
        caller,
        AuditEntry(
            provider_config_name(provider_id),
            (FieldChange("key_rejected", None, report.key_source.value),),
            user=user or None,
        ),
        None,
    )
    return True


# -- what admins see


def health_views(
    ctx: ServiceContext, uow: UnitOfWork, providers: Iterable[ProviderConfig]
) -> dict[str, ProviderHealthView]:
    """Each config's health, read in `uow`: its rows, and its central key's mark when it is about the key
    the config uses now (a new key clears it by itself)."""
    by_id = {p.id: p for p in providers}
    rows = uow.health.of_providers(by_id)
    marks = uow.health.marks(by_id)
    views = {}
    for provider_id, provider in by_id.items():
        mark = marks.get(provider_id)
        secret = central_credential(provider, ctx.deployment_keys).secret
        rejected = mark.rejected_time if mark is not None and mark_applies(mark, secret, ctx.keyring) else None
        models = tuple(rows.get(provider_id, ()))
        views[provider_id] = ProviderHealthView(models, rejected) if models or rejected else NO_HEALTH
    return views


def reset_provider_health(ctx: ServiceContext, caller: Caller, provider_config_id: str) -> ProviderConfigView:
    """Ends every cooldown of the config and clears its central key's mark (audited when there was any)."""
    with ctx.write(caller, takes_revision=False) as write:
        provider = write.uow.providers.get(provider_config_id)
        if provider is None:
            raise provider_not_found(provider_config_id)
        if write.uow.health.reset(provider_config_id):
            write.record(AuditEntry(provider.name, (FieldChange("health", "reported", "reset"),)))
        health = health_views(ctx, write.uow, [provider])[provider.id]
    return provider_view(provider, ctx.deployment_keys, health)
