"""Attempt reports and provider health across replicas: cooldowns, rejected keys, reset, and bad batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import duration_pb2

from modelroute.v1 import audit_pb2, audit_pb2_grpc, common_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

from ..conftest import RunningServer
from ..helpers import Stubs, call_error, create_model, create_provider, policy, stubs

OUTCOME = resolver_pb2.AttemptOutcome
FAST = provider_config_pb2.HealthPolicy(base_cooldown=duration_pb2.Duration(seconds=2))


def report(
    s: Stubs,
    provider: str,
    outcome: int,
    *,
    model: str = "gpt-4o",
    times: int = 1,
    **fields: Any,
) -> resolver_pb2.ReportAttemptsResponse:
    attempt = resolver_pb2.AttemptReport(
        provider_config=f"providerConfigs/{provider}", model=model, outcome=outcome, **fields
    )
    answer: resolver_pb2.ReportAttemptsResponse = s.resolver.ReportAttempts(
        resolver_pb2.ReportAttemptsRequest(attempts=[attempt] * times)
    )
    return answer


def resolve(s: Stubs, model: str, user: str = "") -> resolver_pb2.ResolveModelResponse:
    answer: resolver_pb2.ResolveModelResponse = s.resolver.ResolveModel(
        resolver_pb2.ResolveModelRequest(model=model, user=user)
    )
    return answer


def order(answer: resolver_pb2.ResolveModelResponse) -> list[str]:
    return [a.provider_config.split("/")[1] for a in (answer.selected, *answer.fallbacks)]


def eventually(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_failures_reported_through_one_replica_demote_the_attachment_on_the_other(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    one, two = stubs(channel), stubs(second_replica.channel)
    create_provider(one, "a", api_key="sk-health-a", health_policy=FAST)
    create_provider(one, "b", api_key="sk-health-b")
    create_model(one, "m", providers=("a", "b"), upstream="gpt-4o")
    create_model(one, "mini", providers=("a", "b"), upstream="gpt-4o-mini")
    eventually(lambda: order(resolve(two, "m")) == ["a", "b"])

    two_failures = report(one, "a", OUTCOME.ATTEMPT_OUTCOME_SERVER_ERROR, times=2)
    assert (two_failures.recorded, two_failures.ignored) == (2, 0)
    assert order(resolve(one, "m")) == ["a", "b"]  # below the threshold: nothing moves
    report(one, "a", OUTCOME.ATTEMPT_OUTCOME_SERVER_ERROR)

    # Replica 2 learns it without min_revision: B first, A last with its cooldown.
    eventually(lambda: order(resolve(two, "m")) == ["b", "a"])
    demoted = resolve(two, "m")
    assert demoted.fallbacks[0].HasField("cooldown_until") and not demoted.selected.HasField("cooldown_until")
    # The config revision callers see does not move with health.
    assert demoted.config_revision == resolve(one, "mini").config_revision
    # Another upstream model through A has its own health.
    mini = resolve(two, "mini")
    assert order(mini) == ["a", "b"] and not mini.selected.HasField("cooldown_until")
    # Admins see it; the available models list is not degraded (B serves).
    health = one.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name="providerConfigs/a"))
    [state] = health.health.models
    assert (state.model, state.consecutive_failures, state.trips) == ("gpt-4o", 3, 1)
    assert state.HasField("cooldown_until")

    # After the cooldown (2 s) A is back in place, on both replicas.
    eventually(lambda: order(resolve(two, "m")) == ["a", "b"] and order(resolve(one, "m")) == ["a", "b"])
    assert not resolve(two, "m").selected.HasField("cooldown_until")
    # A success clears the count: two failures more do not trip it again.
    report(one, "a", OUTCOME.ATTEMPT_OUTCOME_SUCCESS)
    cleared = one.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name="providerConfigs/a"))
    assert list(cleared.health.models) == []
    report(one, "a", OUTCOME.ATTEMPT_OUTCOME_SERVER_ERROR, times=2)
    time.sleep(0.3)
    assert order(resolve(two, "m")) == ["a", "b"]


def test_when_every_attachment_cools_down_the_one_recovering_first_serves(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    one, two = stubs(channel), stubs(second_replica.channel)
    create_provider(one, "a", api_key="sk-health-a")
    create_provider(one, "b", api_key="sk-health-b")
    create_model(one, "m", providers=("a", "b"), upstream="gpt-4o")
    limited = OUTCOME.ATTEMPT_OUTCOME_RATE_LIMITED
    report(one, "a", limited, retry_after=duration_pb2.Duration(seconds=300))
    report(one, "b", limited, retry_after=duration_pb2.Duration(seconds=120))

    eventually(lambda: order(resolve(two, "m")) == ["b", "a"])
    answer = resolve(two, "m")
    assert answer.selected.HasField("cooldown_until") and answer.fallbacks[0].HasField("cooldown_until")
    assert answer.selected.cooldown_until.ToDatetime() < answer.fallbacks[0].cooldown_until.ToDatetime()
    available = two.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest())
    [model] = available.models
    assert model.usable and model.degraded and model.selected_provider_config == "providerConfigs/b"
    # The what-if without health shows the configured order, and each outcome's cooldown otherwise.
    explained = two.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m"))
    assert explained.selected_position == 1 and all(o.HasField("cooldown_until") for o in explained.outcomes)
    ignoring = two.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m", ignore_health=True))
    assert ignoring.selected_position == 0 and not any(o.HasField("cooldown_until") for o in ignoring.outcomes)

    # An admin resets A: it serves again at once, on the other replica too.
    reset = one.providers.ResetProviderHealth(provider_config_pb2.ResetProviderHealthRequest(name="providerConfigs/a"))
    assert list(reset.health.models) == []
    eventually(lambda: order(resolve(two, "m")) == ["a", "b"])


def test_a_rejected_user_key_is_skipped_for_that_user_until_a_new_key_is_set(
    channel: grpc.Channel, second_replica: RunningServer, engine: sa.Engine
) -> None:
    one, two = stubs(channel), stubs(second_replica.channel)
    create_provider(one, "byok", credential_policy=policy(False, True, False), api_key="")
    create_provider(one, "pref", credential_policy=policy(True, True, True), api_key="sk-health-central")
    create_model(one, "m", providers=("byok",), upstream="gpt-4o")
    create_model(one, "p", providers=("pref",), upstream="gpt-4o")
    for user in ("alice", "bob"):
        for provider in ("byok", "pref"):
            one.user_keys.SetUserProviderKey(
                user_key_pb2.SetUserProviderKeyRequest(
                    user=user, provider_config=f"providerConfigs/{provider}", api_key=f"uk-{user}-{provider}-1"
                )
            )
    given = resolve(one, "m", "alice")
    rejected = OUTCOME.ATTEMPT_OUTCOME_KEY_REJECTED
    user_key = common_pb2.KEY_SOURCE_USER
    for provider in ("byok", "pref"):
        answer = report(
            one, provider, rejected, user="alice", key_source=user_key, config_revision=given.config_revision
        )
        assert (answer.recorded, answer.ignored) == (1, 0)

    def alice_is_refused() -> bool:
        try:
            resolve(two, "m", "alice")
        except grpc.RpcError:
            return True
        return False

    eventually(alice_is_refused)
    error = call_error(two.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="alice"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_USABLE_ATTACHMENT")
    assert [v[0] for v in error.precondition_violations] == ["USER_KEY_REJECTED"]
    assert "fixable by user" in error.precondition_violations[0][2]
    # Under (1,1,1) the central key serves her instead; bob keeps his own keys.
    assert resolve(two, "p", "alice").selected.key_source == common_pb2.KEY_SOURCE_STORED
    assert resolve(two, "m", "bob").selected.api_key == "uk-bob-byok-1"
    listed = one.user_keys.ListUserProviderConfigs(user_key_pb2.ListUserProviderConfigsRequest(user="alice"))
    assert {c.provider_config: c.HasField("key_rejected_time") for c in listed.user_provider_configs} == {
        "providerConfigs/byok": True,
        "providerConfigs/pref": True,
    }

    # A new key clears the mark by itself; a late report about the old key changes nothing.
    one.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(
            user="alice", provider_config="providerConfigs/byok", api_key="uk-alice-2"
        )
    )
    eventually(lambda: not alice_is_refused())
    assert resolve(two, "m", "alice").selected.api_key == "uk-alice-2"
    late = report(one, "byok", rejected, user="alice", key_source=user_key, config_revision=given.config_revision)
    assert (late.recorded, late.ignored) == (0, 1)
    time.sleep(0.3)
    assert resolve(two, "m", "alice").selected.api_key == "uk-alice-2"

    # The audit log shows the marks (actor: the reporting token) and the new key, never a key.
    events = audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(filter='user = "alice"')
    )
    methods = [(e.method, e.resource) for e in events.audit_events]
    assert ("ReportAttempts", "providerConfigs/byok") in methods
    assert ("SetUserProviderKey", "providerConfigs/byok") in methods
    assert "uk-alice" not in str(events)


def test_a_rejected_central_key_is_skipped_until_a_new_key_or_a_reset(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    one, two = stubs(channel), stubs(second_replica.channel)
    created = create_provider(one, "c", api_key="sk-health-central-1")
    create_provider(one, "d", api_key="sk-health-central-2")
    create_model(one, "m", providers=("c", "d"), upstream="gpt-4o")
    revision = resolve(one, "m").config_revision
    stored = common_pb2.KEY_SOURCE_STORED
    rejected = OUTCOME.ATTEMPT_OUTCOME_KEY_REJECTED
    report(one, "c", rejected, key_source=stored, config_revision=revision)
    eventually(lambda: order(resolve(two, "m")) == ["d"])
    [skipped] = resolve(two, "m").skipped
    assert (skipped.reason, skipped.fixable_by) == (
        common_pb2.SKIP_REASON_CENTRAL_KEY_REJECTED,
        common_pb2.FIXABLE_BY_ADMIN,
    )
    read = one.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name=created.name))
    assert read.health.HasField("central_key_rejected_time")

    one.providers.ResetProviderHealth(provider_config_pb2.ResetProviderHealthRequest(name=created.name))
    eventually(lambda: order(resolve(two, "m")) == ["c", "d"])

    report(one, "c", rejected, key_source=stored, config_revision=resolve(one, "m").config_revision)
    eventually(lambda: order(resolve(two, "m")) == ["d"])
    one.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=created.name, api_key="sk-health-central-3")
        )
    )
    eventually(lambda: order(resolve(two, "m")) == ["c", "d"])
    assert resolve(two, "m").selected.api_key == "sk-health-central-3"


def test_a_bad_batch_is_refused_whole_and_records_nothing(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-health-a", health_policy=provider_config_pb2.HealthPolicy(failure_threshold=1))
    create_model(s, "m", providers=("a",), upstream="gpt-4o")
    good = resolver_pb2.AttemptReport(
        provider_config="providerConfigs/a", model="gpt-4o", outcome=OUTCOME.ATTEMPT_OUTCOME_SERVER_ERROR
    )
    bad = [
        resolver_pb2.AttemptReport(provider_config="providerConfigs/nope", model="gpt-4o", outcome=1),
        resolver_pb2.AttemptReport(provider_config="providerConfigs/a", model="gpt-4o"),
        resolver_pb2.AttemptReport(
            provider_config="providerConfigs/a", model="gpt-4o", outcome=1, key_source=common_pb2.KEY_SOURCE_USER
        ),
        resolver_pb2.AttemptReport(
            provider_config="providerConfigs/a",
            model="gpt-4o",
            outcome=OUTCOME.ATTEMPT_OUTCOME_KEY_REJECTED,
            key_source=common_pb2.KEY_SOURCE_AMBIENT,
        ),
        resolver_pb2.AttemptReport(
            provider_config="providerConfigs/a",
            model="gpt-4o",
            outcome=OUTCOME.ATTEMPT_OUTCOME_RATE_LIMITED,
            retry_after=duration_pb2.Duration(seconds=25 * 3600),
        ),
        resolver_pb2.AttemptReport(
            provider_config="providerConfigs/a",
            model="gpt-4o",
            outcome=OUTCOME.ATTEMPT_OUTCOME_RATE_LIMITED,
            retry_after=duration_pb2.Duration(seconds=-1),
        ),
        resolver_pb2.AttemptReport(provider_config="providerConfigs/a", model="", outcome=1),
    ]
    error = call_error(s.resolver.ReportAttempts, resolver_pb2.ReportAttemptsRequest(attempts=[good, *bad]))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert error.fields == [
        "attempts[1].provider_config",
        "attempts[2].outcome",
        "attempts[3].user",
        "attempts[4].key_source",
        "attempts[5].retry_after",
        "attempts[6].retry_after",
        "attempts[7].model",
    ]
    empty = call_error(s.resolver.ReportAttempts, resolver_pb2.ReportAttemptsRequest())
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT
    # The valid failure in the refused batch was not counted (threshold 1 would have tripped it).
    read = s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name="providerConfigs/a"))
    assert list(read.health.models) == []
    # A retry-after above the config's max cooldown is capped, not refused.
    capped = resolver_pb2.AttemptReport(
        provider_config="providerConfigs/a",
        model="gpt-4o",
        outcome=OUTCOME.ATTEMPT_OUTCOME_RATE_LIMITED,
        retry_after=duration_pb2.Duration(seconds=23 * 3600),
    )
    s.resolver.ReportAttempts(resolver_pb2.ReportAttemptsRequest(attempts=[capped]))
    answer = resolve(s, "m")
    until = answer.selected.cooldown_until.ToDatetime()
    assert 0 < (until - answer.selected.cooldown_until.ToDatetime().now()).total_seconds() <= 600 + 5


def test_a_health_policy_is_validated_and_read_back(channel: grpc.Channel) -> None:
    s = stubs(channel)
    bad = provider_config_pb2.HealthPolicy(
        failure_threshold=0,
        base_cooldown=duration_pb2.Duration(seconds=60),
        max_cooldown=duration_pb2.Duration(seconds=30),
    )
    error = call_error(
        s.providers.CreateProviderConfig,
        provider_config_pb2.CreateProviderConfigRequest(
            provider_config_id="a",
            provider_config=provider_config_pb2.ProviderConfig(
                family=common_pb2.FAMILY_OPENAI, api_key="sk-health-a", health_policy=bad
            ),
        ),
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == ["provider_config.health_policy.failure_threshold"]
    created = create_provider(s, "a", api_key="sk-health-a", health_policy=FAST)
    assert created.health_policy.base_cooldown.seconds == 2 and not created.health_policy.HasField("failure_threshold")
    updated = s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/a"),
            update_mask={"paths": ["health_policy"]},
        )
    )
    assert not updated.HasField("health_policy")
