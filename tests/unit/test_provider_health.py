"""Provider health without a database: the cooldown rule as a table, the resolver with health, the
snapshot applying health changes, and the report use case over the in-memory unit of work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from modelroute_server.adapters.crypto import (
    Keyring,
    generate_keyring_spec,
    pack_sealed_keys,
    seal_bound,
    user_key_binding,
)
from modelroute_server.domain.audit import Caller
from modelroute_server.domain.changes import ChangeBatch, FullState
from modelroute_server.domain.errors import DomainError
from modelroute_server.domain.families import Family
from modelroute_server.domain.health import (
    HEALTHY,
    AttachmentHealth,
    AttemptOutcome,
    HealthPolicy,
    KeyMark,
    ProviderHealthState,
    Transition,
    after_report,
    after_reports,
    transition,
)
from modelroute_server.domain.models import ModelConfig
from modelroute_server.domain.providers import CredentialPolicy, KeySource, ProviderConfig, StoredKey
from modelroute_server.domain.resolver import FixableBy, SkipReason, prepare_provider, resolve, resolve_prepared
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.health import AttemptReport, report_attempts, reset_provider_health
from modelroute_server.service_layer.snapshot import apply_changes, build_snapshot

from ..fakes import FakeStore

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = HealthPolicy()  # 3 failures in 60 s; 30 s doubling to 10 min
S, R, E, K = (
    AttemptOutcome.SUCCESS,
    AttemptOutcome.RATE_LIMITED,
    AttemptOutcome.SERVER_ERROR,
    AttemptOutcome.KEY_REJECTED,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(steps: list[tuple[float, AttemptOutcome] | tuple[float, AttemptOutcome, float]]) -> AttachmentHealth:
    state = HEALTHY
    for step in steps:
        retry_after = timedelta(seconds=step[2]) if len(step) == 3 else None  # type: ignore[misc]
        state = after_report(state, step[1], POLICY, at(step[0]), retry_after)
    return state


# (steps: (second, outcome[, retry-after]), then: consecutive failures, trips, cooldown end in seconds or None)
RULE_TABLE = [
    ("two failures stay below the threshold", [(0, E), (1, E)], 2, 0, None),
    ("the third failure within the window trips", [(0, E), (1, E), (2, E)], 3, 1, 2 + 30),
    ("failures spread past the window start again", [(0, E), (1, E), (70, E)], 3, 0, None),
    ("a success between failures clears the count", [(0, E), (1, E), (2, S), (3, E)], 1, 0, None),
    ("a rejected key counts neither way", [(0, E), (1, E), (2, K), (3, E)], 3, 1, 3 + 30),
    ("failures during a cooldown do not extend it", [(0, E), (1, E), (2, E), (10, E)], 4, 1, 32),
    ("after the cooldown one failure trips at double", [(0, E), (1, E), (2, E), (40, E)], 4, 2, 40 + 60),
    (
        "each trip doubles again",
        [(0, E), (1, E), (2, E), (40, E), (110, E)],
        5,
        3,
        110 + 120,
    ),
    ("a success ends a running cooldown", [(0, E), (1, E), (2, E), (5, S)], 0, 0, None),
    ("a success after the cooldown ends the doubling", [(0, E), (1, E), (2, E), (40, S), (41, E)], 1, 0, None),
    ("a retry-after trips at once for that long", [(0, R, 5)], 1, 1, 5),
    ("a retry-after above the max cooldown is capped", [(0, R, 3600)], 1, 1, 600),
    ("a longer retry-after extends a running cooldown", [(0, R, 5), (1, R, 100)], 2, 1, 101),
    ("a shorter retry-after never shortens it", [(0, R, 100), (1, R, 5)], 2, 1, 100),
    ("a rate limit without retry-after counts as a failure", [(0, R), (1, R), (2, R)], 3, 1, 32),
]


@pytest.mark.parametrize(
    ("steps", "failures", "trips", "until"), [row[1:] for row in RULE_TABLE], ids=[r[0] for r in RULE_TABLE]
)
def test_the_cooldown_rule(steps: list, failures: int, trips: int, until: float | None) -> None:  # type: ignore[type-arg]
    state = run(steps)
    assert (state.consecutive_failures, state.trips) == (failures, trips)
    assert state.cooldown_until == (at(until) if until is not None else None)


def test_doubling_stops_at_the_max_cooldown() -> None:
    state = run([(0, E), (1, E), (2, E)])
    now = 2.0
    for _ in range(8):
        assert state.cooldown_until is not None
        now = (state.cooldown_until - T0).total_seconds() + 1
        state = after_report(state, E, POLICY, at(now))
    assert state.last_cooldown == POLICY.max_cooldown
    assert state.cooldown_until == at(now + 600)


def test_only_trips_and_recoveries_are_transitions() -> None:
    tripped = run([(0, E), (1, E), (2, E)])
    assert transition(HEALTHY, run([(0, E)]), at(0)) is None
    assert transition(run([(0, E), (1, E)]), tripped, at(2)) is Transition.TRIP
    assert transition(tripped, HEALTHY, at(3)) is Transition.RECOVERY
    assert transition(tripped, after_report(tripped, E, POLICY, at(5)), at(5)) is None
    assert after_reports(HEALTHY, [(S, None), (S, None)], POLICY, at(0)) == HEALTHY


@pytest.mark.parametrize("outcome", list(AttemptOutcome))
@pytest.mark.parametrize("retry_after", [None, timedelta(seconds=30)])
def test_only_a_failure_changes_a_healthy_attachment(outcome: AttemptOutcome, retry_after: timedelta | None) -> None:
    # The report use case leans on this: reports without a failure about an attachment with no stored
    # state are not looked at further.
    after = after_report(HEALTHY, outcome, POLICY, at(0), retry_after)
    assert (after != HEALTHY) is outcome.is_failure


# -- the resolver with health

CENTRAL_ONLY = CredentialPolicy()


def provider(
    provider_id: str, policy: CredentialPolicy = CENTRAL_ONLY, key: str | None = "sk-central"
) -> ProviderConfig:
    return ProviderConfig(
        provider_id, Family.OPENAI, provider_id, policy=policy, api_key=StoredKey(key) if key else None
    )


def model(*attachments: str, overrides: tuple[str, ...] = ()) -> ModelConfig:
    return ModelConfig("m", Family.OPENAI, "gpt-4o", "m", 1000, attachments, overrides=overrides)


def order(resolution: object) -> list[tuple[str, datetime | None]]:
    selected = resolution.selected  # type: ignore[attr-defined]
    return [(o.provider_config_id, o.cooldown_until) for o in (selected, *resolution.fallbacks)]  # type: ignore[attr-defined]


PROVIDERS = {p: provider(p) for p in ("a", "b", "c")}


@pytest.mark.parametrize(
    ("cooldowns", "expected"),
    [
        ({}, [("a", None), ("b", None), ("c", None)]),
        ({"a": {"gpt-4o": at(30)}}, [("b", None), ("c", None), ("a", at(30))]),
        ({"a": {"gpt-4o": at(30)}, "b": {"gpt-4o": at(20)}}, [("c", None), ("a", at(30)), ("b", at(20))]),
        # Every one cooling down: the first to recover leads, the others keep their order.
        (
            {"a": {"gpt-4o": at(30)}, "b": {"gpt-4o": at(20)}, "c": {"gpt-4o": at(40)}},
            [("b", at(20)), ("a", at(30)), ("c", at(40))],
        ),
        # A cooldown that has ended, or of another upstream model, is no cooldown.
        ({"a": {"gpt-4o": at(-1)}, "b": {"gpt-4o-mini": at(30)}}, [("a", None), ("b", None), ("c", None)]),
    ],
)
def test_cooling_attachments_are_demoted_never_skipped(
    cooldowns: dict[str, dict[str, datetime]], expected: list[tuple[str, datetime | None]]
) -> None:
    resolution = resolve(model("a", "b", "c"), PROVIDERS, {}, {}, cooldowns=cooldowns, now=T0)
    assert order(resolution) == expected
    assert resolution.degraded == all(until is not None for _, until in expected)
    assert [o.position for o in resolution.outcomes] == [0, 1, 2]


def test_a_cooldown_follows_the_upstream_name_the_attachment_sends() -> None:
    overridden = model("a", "b", overrides=("gpt-4o-mini", ""))
    resolution = resolve(overridden, PROVIDERS, {}, {}, cooldowns={"a": {"gpt-4o": at(30)}}, now=T0)
    assert order(resolution) == [("a", None), ("b", None)]
    resolution = resolve(overridden, PROVIDERS, {}, {}, cooldowns={"a": {"gpt-4o-mini": at(30)}}, now=T0)
    assert order(resolution) == [("b", None), ("a", at(30))]


U_ONLY, REQUIRED, PREFERRED = (
    CredentialPolicy(False, True, False),
    CredentialPolicy(True, True, False),
    CredentialPolicy(True, True, True),
)


@pytest.mark.parametrize(
    ("policy", "central", "user_key", "expected"),
    [
        (U_ONLY, None, StoredKey("uk-1", rejected=True), (SkipReason.USER_KEY_REJECTED, FixableBy.USER)),
        (REQUIRED, "sk-c", StoredKey("uk-1", rejected=True), (SkipReason.USER_KEY_REJECTED, FixableBy.USER)),
        (PREFERRED, "sk-c", StoredKey("uk-1", rejected=True), KeySource.STORED),
        (U_ONLY, None, StoredKey("uk-1"), KeySource.USER),
    ],
)
def test_a_rejected_user_key_counts_as_absent(
    policy: CredentialPolicy, central: str | None, user_key: StoredKey, expected: object
) -> None:
    providers = {"a": provider("a", policy, central)}
    [outcome] = resolve(model("a"), providers, {"a": user_key}, {}).outcomes
    if isinstance(expected, KeySource):
        assert outcome.key_source is expected
    else:
        assert (outcome.skip_reason, outcome.fixable_by) == expected


@pytest.mark.parametrize(
    ("family", "policy", "user_key", "expected"),
    [
        (Family.OPENAI, CredentialPolicy(), None, SkipReason.CENTRAL_KEY_REJECTED),
        (Family.OPENAI, PREFERRED, StoredKey("uk-1"), KeySource.USER),
        (Family.OPENAI, PREFERRED, None, SkipReason.USER_KEY_REQUIRED),
        # Bedrock falls back to the caller's ambient credentials once its stored key is refused.
        (Family.BEDROCK, CredentialPolicy(), None, KeySource.AMBIENT),
    ],
)
def test_a_rejected_central_key_counts_as_absent(
    family: Family, policy: CredentialPolicy, user_key: StoredKey | None, expected: object
) -> None:
    config = ProviderConfig("a", family, "a", policy=policy, api_key=StoredKey("sk-central"))
    verdict = prepare_provider(config, {}, central_rejected=True)
    keys = {"a": user_key} if user_key else {}
    [outcome] = resolve_prepared(ModelConfig("m", family, "x", "m", 1000, ("a",)), {"a": verdict}, keys).outcomes
    if isinstance(expected, KeySource):
        assert outcome.key_source is expected
    else:
        assert outcome.skip_reason is expected
        assert outcome.fixable_by is (
            FixableBy.ADMIN if expected is SkipReason.CENTRAL_KEY_REJECTED else FixableBy.USER
        )


# -- the snapshot


def test_the_snapshot_applies_health_without_moving_the_revision() -> None:
    keyring = Keyring.parse(generate_keyring_spec())
    providers = [provider("a", key="sk-central-a"), provider("b")]
    state = FullState(5, 5, providers, [model("a", "b")], [], [])
    snapshot = build_snapshot(state, {}, keyring)
    assert snapshot.cooldowns == {} and not snapshot.verdicts["a"].central_rejected

    mark = KeyMark("STORED", keyring.fingerprint("sk-central-a"), T0)
    health = ProviderHealthState({"gpt-4o": at(30)}, mark)
    changed = apply_changes(snapshot, ChangeBatch(6, 5, health={"a": health}), {}, keyring)
    assert (changed.sequence, changed.revision) == (6, 5)
    assert changed.cooldowns == {"a": {"gpt-4o": at(30)}}
    assert changed.verdicts["a"].central_rejected and changed.verdicts["b"] is snapshot.verdicts["b"]
    assert snapshot.cooldowns == {}  # the old snapshot is untouched

    # A new central key does not match the mark: it clears it by itself.
    rekeyed = apply_changes(
        changed, ChangeBatch(7, 7, providers={"a": provider("a", key="sk-central-new")}), {}, keyring
    )
    assert not rekeyed.verdicts["a"].central_rejected
    recovered = apply_changes(rekeyed, ChangeBatch(8, 7, health={"a": None}), {}, keyring)
    assert recovered.cooldowns == {} and recovered.health == {}


def test_the_snapshot_decides_once_which_user_keys_are_rejected() -> None:
    keyring = Keyring.parse(generate_keyring_spec())

    def packed(key: str) -> bytes:
        return pack_sealed_keys({"a": seal_bound(keyring, key, partial(user_key_binding, "alice", "a"))})

    mark = {"a": KeyMark("USER", keyring.fingerprint("uk-alice-1"), T0)}
    state = FullState(5, 5, [provider("a")], [model("a")], [("alice", packed("uk-alice-1"))], [], {}, {"alice": mark})
    snapshot = build_snapshot(state, {}, keyring)
    assert dict(snapshot.rejected_user_keys) == {"alice": frozenset({"a"})}
    # A new key (the mark still there, as after a hand edit) is not the rejected one.
    rekeyed = apply_changes(snapshot, ChangeBatch(6, 6, user_keys={"alice": packed("uk-alice-2")}), {}, keyring)
    assert dict(rekeyed.rejected_user_keys) == {}
    # The same key marked again: rejected again; the mark gone: not.
    remarked = apply_changes(rekeyed, ChangeBatch(7, 6, user_keys={"alice": packed("uk-alice-1")}), {}, keyring)
    assert dict(remarked.rejected_user_keys) == {"alice": frozenset({"a"})}
    cleared = apply_changes(remarked, ChangeBatch(8, 6, user_marks={"alice": None}), {}, keyring)
    assert dict(cleared.rejected_user_keys) == {} and dict(cleared.user_marks) == {}


# -- the report use case, over the in-memory unit of work


REPORTER = Caller("token:resolver", "ReportAttempts")


def context() -> tuple[ServiceContext, FakeStore, list[int]]:
    store = FakeStore()
    ctx = ServiceContext(Keyring.parse(generate_keyring_spec()), store)
    committed: list[int] = []
    ctx.on_commit.append(committed.append)
    store.state.providers["a"] = provider("a")
    return ctx, store, committed


def failure(outcome: AttemptOutcome = E, **fields: object) -> AttemptReport:
    values: dict[str, object] = {
        "provider_config_id": "a",
        "model": "gpt-4o",
        "user": "",
        "key_source": KeySource.STORED,
        "config_revision": 0,
        "outcome": outcome,
    }
    values.update(fields)
    return AttemptReport(**values)  # type: ignore[arg-type]


def test_successes_on_a_healthy_attachment_write_nothing() -> None:
    ctx, store, committed = context()
    applied = report_attempts(ctx, REPORTER, [failure(S)] * 100, store.state.providers)
    assert applied.recorded == 100 and committed == [] and store.state.sequence == 0


def test_a_success_clears_a_failing_attachment_among_healthy_ones() -> None:
    ctx, store, committed = context()
    store.state.providers["b"] = provider("b")
    report_attempts(ctx, REPORTER, [failure(), failure(model="gpt-4o-mini")], store.state.providers)
    assert set(store.state.health) == {("a", "gpt-4o"), ("a", "gpt-4o-mini")}
    successes = [failure(S), failure(S, provider_config_id="b"), failure(S, model="o3")]
    applied = report_attempts(ctx, REPORTER, [*successes, failure(provider_config_id="b")], store.state.providers)
    assert applied.recorded == 4 and applied.transitions == [] and committed == []
    assert {k: v.consecutive_failures for k, v in store.state.health.items()} == {
        ("a", "gpt-4o-mini"): 1,
        ("b", "gpt-4o"): 1,
    }


def test_a_failure_below_the_threshold_is_written_but_not_announced() -> None:
    ctx, store, committed = context()
    report_attempts(ctx, REPORTER, [failure(), failure()], store.state.providers)
    assert store.state.health[("a", "gpt-4o")].consecutive_failures == 2
    assert committed == []
    applied = report_attempts(ctx, REPORTER, [failure()], store.state.providers)
    assert applied.transitions == [Transition.TRIP] and committed == [1]
    assert store.state.revision == 0  # health moves the sequence, not the revision


def test_reset_ends_the_cooldown_and_is_audited() -> None:
    ctx, store, _ = context()
    report_attempts(ctx, REPORTER, [failure()] * 3, store.state.providers)
    view = reset_provider_health(ctx, REPORTER, "a")
    assert view.health.models == () and store.state.health == {}
    assert [e.method for e in store.state.audit] == ["ReportAttempts"]


def test_a_rejected_central_key_is_marked_once_and_a_late_report_is_ignored() -> None:
    ctx, store, _ = context()
    store.state.providers["a"] = provider("a", key="sk-central")
    marked = report_attempts(ctx, REPORTER, [failure(K), failure(K)], store.state.providers)
    assert (marked.recorded, marked.ignored, marked.marked) == (2, 0, ["STORED"])
    [(key, mark)] = store.state.marks.items()
    assert key == ("a", "") and ctx.keyring.fingerprint_matches("sk-central", mark.fingerprint)
    store.state.providers["a"] = ProviderConfig("a", Family.OPENAI, "a", api_key=StoredKey("sk-new"), revision=9)
    late = report_attempts(ctx, REPORTER, [failure(K, config_revision=8)], store.state.providers)
    assert (late.recorded, late.ignored) == (0, 1)


@pytest.mark.parametrize("model", ["gpt-4o\x00", "gpt\n4o", ""])
def test_a_report_names_a_plain_upstream_model(model: str) -> None:
    ctx, store, committed = context()
    with pytest.raises(DomainError) as raised:
        report_attempts(ctx, REPORTER, [failure(), failure(model=model)], store.state.providers)
    assert [v.field for v in raised.value.field_violations] == ["attempts[1].model"]
    assert store.state.health == {} and committed == []


def test_a_bad_report_refuses_the_whole_batch() -> None:
    ctx, store, committed = context()
    with pytest.raises(DomainError) as raised:
        report_attempts(ctx, REPORTER, [failure(), failure(provider_config_id="gone")], store.state.providers)
    assert [v.field for v in raised.value.field_violations] == ["attempts[1].provider_config"]
    assert store.state.health == {} and committed == []
