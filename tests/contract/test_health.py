"""The attempt report contract: failures demote an attachment (with `cooldown_until`) and an admin's reset
restores it; a rejected user key is skipped for that user only; a bad batch is refused whole."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from modelroute import Client, ModelrouteError
from modelroute.attempts import AttemptReport, Outcome
from modelroute.v1 import common_pb2, provider_config_pb2

from .support import make_model, make_provider, policy, raised, short


def eventually(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def order(client: Client, model_id: str, user: str = "") -> list[str]:
    answer = client.resolve(model_id, user=user)
    return [short(a.provider_config) for a in (answer.selected, *answer.fallbacks)]


def test_failures_demote_and_a_reset_restores(client: Client, new_id: Callable[[str], str]) -> None:
    first, second = new_id("first"), new_id("second")
    make_provider(client, first)
    make_provider(client, second)
    model_id = new_id("m")
    make_model(client, model_id, [first, second])
    recorded = client.report_attempts([AttemptReport(first, "gpt-4o", Outcome.SERVER_ERROR)] * 3)
    assert (recorded.recorded, recorded.ignored) == (3, 0)

    eventually(lambda: order(client, model_id) == [second, first])
    answer = client.resolve(model_id)
    assert answer.fallbacks[0].HasField("cooldown_until")
    read = client.get_provider_config(first)
    assert [(m.model, m.trips) for m in read.health.models] == [("gpt-4o", 1)]
    assert read.health.models[0].HasField("cooldown_until")

    reset = client.reset_provider_health(first).value
    assert list(reset.health.models) == []
    eventually(lambda: order(client, model_id) == [first, second])


def test_a_rejected_user_key_is_skipped_for_its_user_only(client: Client, new_id: Callable[[str], str]) -> None:
    byok = new_id("byok")
    make_provider(client, byok, api_key="", credential_policy=policy(False, True, False))
    model_id = new_id("m")
    make_model(client, model_id, [byok])
    client.set_user_key("contract-frank", byok, "uk-contract-frank")
    client.set_user_key("contract-gina", byok, "uk-contract-gina")
    revision = client.resolve(model_id, user="contract-frank").config_revision
    client.report_attempts(
        [
            AttemptReport(
                byok,
                "gpt-4o",
                Outcome.KEY_REJECTED,
                user="contract-frank",
                key_source=common_pb2.KEY_SOURCE_USER,
                config_revision=revision,
            )
        ]
    )

    def frank_refused() -> bool:
        try:
            client.resolve(model_id, user="contract-frank")
        except ModelrouteError:
            return True
        return False

    eventually(frank_refused)
    error = raised(lambda: client.resolve(model_id, user="contract-frank"))
    assert error.reason == "NO_USABLE_ATTACHMENT"
    assert [v[0] for v in error.precondition_violations] == ["USER_KEY_REJECTED"]
    assert client.resolve(model_id, user="contract-gina").selected.api_key == "uk-contract-gina"
    client.set_user_key("contract-frank", byok, "uk-contract-frank-2")
    eventually(lambda: not frank_refused())


def test_a_bad_batch_is_refused_whole(client: Client, new_id: Callable[[str], str]) -> None:
    provider = new_id("p")
    make_provider(client, provider, health_policy=provider_config_pb2.HealthPolicy(failure_threshold=1))
    model_id = new_id("m")
    make_model(client, model_id, [provider])
    error = raised(
        lambda: client.report_attempts(
            [
                AttemptReport(provider, "gpt-4o", Outcome.SERVER_ERROR),
                AttemptReport(new_id("missing"), "gpt-4o", Outcome.SERVER_ERROR),
                AttemptReport(provider, "gpt-4o", Outcome.KEY_REJECTED, key_source=common_pb2.KEY_SOURCE_AMBIENT),
            ]
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert error.fields == ["attempts[1].provider_config", "attempts[2].key_source"]
    assert list(client.get_provider_config(provider).health.models) == []
    assert not client.resolve(model_id).selected.HasField("cooldown_until")
