"""`modelroute-admin` and provider health, from protobuf messages alone (no gRPC, no database): the badges
of cooldowns and rejected keys, the provider detail's health section, and the requests the health commands
and options send."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from modelroute import calls
from modelroute.calls import Written
from modelroute.cli import main as admin_main
from modelroute.cli import render
from modelroute.cli.session import Session, console_for
from modelroute.v1 import common_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def drawn(draw: render.Render) -> str:
    out = io.StringIO()
    draw(console_for(out))
    return out.getvalue()


def row(table: str, first_cell: str) -> str:
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells and cells[0] == first_cell:
            return line
    raise AssertionError(f"no row {first_cell!r} in:\n{table}")


def provider(name: str, **fields: Any) -> provider_config_pb2.ProviderConfig:
    return provider_config_pb2.ProviderConfig(
        name=f"providerConfigs/{name}",
        family=common_pb2.FAMILY_OPENAI,
        enabled=True,
        credential_policy=common_pb2.CredentialPolicy(central_api_key_enabled=True),
        has_api_key=True,
        central_credential_usable=True,
        central_credential_source=common_pb2.KEY_SOURCE_STORED,
        **fields,
    )


def cooling(model: str, until: datetime, failures: int = 3, trips: int = 1) -> provider_config_pb2.ModelHealth:
    return provider_config_pb2.ModelHealth(
        model=model, consecutive_failures=failures, trips=trips, cooldown_until=stamp(until)
    )


# ------------------------------------------------------------------ provider configs


def test_the_providers_table_badges_a_cooldown_in_force_and_a_rejected_central_key() -> None:
    now = datetime.now(UTC)
    items = [
        provider("healthy"),
        provider(
            "hot", health=provider_config_pb2.ProviderHealth(models=[cooling("gpt-4o", now + timedelta(seconds=60))])
        ),
        # A cooldown that has ended is no badge (the read may be a moment old).
        provider(
            "cooled", health=provider_config_pb2.ProviderHealth(models=[cooling("gpt-4o", now - timedelta(seconds=1))])
        ),
        provider("refused", health=provider_config_pb2.ProviderHealth(central_key_rejected_time=stamp(now))),
    ]
    table = drawn(render.providers_table(items))
    assert "[enabled]" in row(table, "healthy") and "cooling" not in row(table, "healthy")
    assert "[cooling down]" in row(table, "hot") and "rejected" not in row(table, "hot")
    assert "cooling" not in row(table, "cooled")
    assert "[central key rejected]" in row(table, "refused") and "cooling" not in row(table, "refused")


def test_the_provider_detail_lists_each_models_health_and_the_policy() -> None:
    p = provider(
        "hot",
        health=provider_config_pb2.ProviderHealth(
            models=[
                cooling("gpt-4o", NOW + timedelta(seconds=45), failures=4, trips=2),
                cooling("gpt-4o-mini", NOW - timedelta(seconds=5), failures=3, trips=1),
                provider_config_pb2.ModelHealth(model="o1", consecutive_failures=1),
            ],
            central_key_rejected_time=stamp(NOW - timedelta(minutes=1)),
        ),
        health_policy=calls.health_policy(failure_threshold=5, base_cooldown=30, max_cooldown=600),
    )
    detail = drawn(render.provider_detail(p, NOW))
    assert "2026-12-01T11:59:00Z" in row(detail, "central key rejected")
    assert "5" in row(detail, "failure threshold") and "default" in row(detail, "failure window")
    assert "30s" in row(detail, "base cooldown") and "600s" in row(detail, "max cooldown")
    status = row(detail, "status")
    assert "[cooling down]" in status and "[central key rejected]" in status
    hot = row(detail, "gpt-4o").split("│")
    assert [c.strip() for c in hot[1:3]] == ["4", "2"]
    assert "2026-12-01T12:00:45Z (45s left)" in hot[3] and "[cooling down]" in hot[4]
    assert "(ended)" in row(detail, "gpt-4o-mini") and "[failing]" in row(detail, "gpt-4o-mini")
    assert "-" in row(detail, "o1").split("│")[3] and "[failing]" in row(detail, "o1")


def test_a_provider_without_health_has_no_health_section_and_default_policy() -> None:
    detail = drawn(render.provider_detail(provider("quiet"), NOW))
    assert "UPSTREAM MODEL" not in detail and "central key rejected" not in detail
    for label in ("failure threshold", "failure window", "base cooldown", "max cooldown"):
        assert "default" in row(detail, label)


def test_json_carries_health_and_policy_in_proto_field_names() -> None:
    p = provider(
        "hot",
        health=provider_config_pb2.ProviderHealth(models=[cooling("gpt-4o", NOW)]),
        health_policy=calls.health_policy(failure_threshold=2, failure_window=1.5),
    )
    document = render.as_dict(p)
    assert document["health"]["models"] == [
        {"model": "gpt-4o", "consecutive_failures": 3, "trips": 1, "cooldown_until": "2026-12-01T12:00:00Z"}
    ]
    assert document["health_policy"] == {"failure_threshold": 2, "failure_window": "1.500s"}


# ------------------------------------------------------------------ resolution


def test_resolve_shows_a_fallback_cooling_down_and_the_rejected_key_skips() -> None:
    answer = resolver_pb2.ResolveModelResponse(
        model_config="modelConfigs/gpt-4o",
        config_revision=9,
        selected=resolver_pb2.ResolvedAttachment(provider_config="providerConfigs/good", position=2, model="gpt-4o"),
        fallbacks=[
            resolver_pb2.ResolvedAttachment(
                provider_config="providerConfigs/hot",
                position=0,
                model="gpt-4o",
                cooldown_until=stamp(NOW + timedelta(seconds=30)),
            )
        ],
        skipped=[
            resolver_pb2.SkippedAttachment(
                provider_config="providerConfigs/byok",
                position=1,
                reason=common_pb2.SKIP_REASON_USER_KEY_REJECTED,
                fixable_by=common_pb2.FIXABLE_BY_USER,
            ),
            resolver_pb2.SkippedAttachment(
                provider_config="providerConfigs/central",
                position=3,
                reason=common_pb2.SKIP_REASON_CENTRAL_KEY_REJECTED,
                fixable_by=common_pb2.FIXABLE_BY_ADMIN,
            ),
        ],
    )
    table = drawn(render.resolution_table(answer))
    assert "[fallback] [cooling down until 12:00:30Z]" in row(table, "0")
    assert "[key rejected]" in row(table, "1") and "user" in row(table, "1")
    assert "[selected]" in row(table, "2") and "cooling" not in row(table, "2")
    assert "[central key rejected]" in row(table, "3") and "admin" in row(table, "3")


def test_explain_shows_the_cooldown_of_usable_outcomes() -> None:
    answer = resolver_pb2.ExplainResolutionResponse(
        model_config="modelConfigs/gpt-4o",
        usable=True,
        selected_position=0,
        outcomes=[
            resolver_pb2.AttachmentOutcome(
                provider_config="providerConfigs/only",
                position=0,
                usable=True,
                key_source=common_pb2.KEY_SOURCE_STORED,
                cooldown_until=stamp(NOW + timedelta(minutes=5)),
            ),
            resolver_pb2.AttachmentOutcome(
                provider_config="providerConfigs/refused",
                position=1,
                reason=common_pb2.SKIP_REASON_CENTRAL_KEY_REJECTED,
                fixable_by=common_pb2.FIXABLE_BY_ADMIN,
            ),
        ],
    )
    table = drawn(render.explain_table(answer))
    assert "[selected] [cooling down until 12:05:00Z]" in row(table, "0")
    assert "[central key rejected]" in row(table, "1")


def test_available_models_badge_degraded_and_user_keys_badge_a_rejected_key() -> None:
    models = [
        resolver_pb2.AvailableModel(model_config="modelConfigs/hot", usable=True, degraded=True, is_default=True),
        resolver_pb2.AvailableModel(model_config="modelConfigs/fine", usable=True),
    ]
    table = drawn(render.available_table(models))
    assert "[usable] [degraded] [default]" in row(table, "hot") and "degraded" not in row(table, "fine")

    entries = [
        user_key_pb2.UserProviderConfig(
            provider_config="providerConfigs/byok", has_user_api_key=True, key_rejected_time=stamp(NOW)
        ),
        user_key_pb2.UserProviderConfig(provider_config="providerConfigs/fine", has_user_api_key=True),
    ]
    keys = drawn(render.user_keys_table("alice", entries))
    assert "[user key] [key rejected]" in row(keys, "byok") and "rejected" not in row(keys, "fine")


# ------------------------------------------------------------------ requests


def test_the_request_builders() -> None:
    reset = calls.reset_provider_health("openai-main")
    assert (reset.stub, reset.method, reset.write) == ("providers", "ResetProviderHealth", True)
    assert reset.request == provider_config_pb2.ResetProviderHealthRequest(name="providerConfigs/openai-main")
    assert calls.explain("m", "u", None, None, True).request.ignore_health is True
    assert calls.explain("m", "u", None, None).request.ignore_health is False
    assert calls.health_policy() == provider_config_pb2.HealthPolicy()
    assert calls.health_policy(failure_threshold=3, failure_window=60, base_cooldown=0.25, max_cooldown=86400) == (
        provider_config_pb2.HealthPolicy(
            failure_threshold=3,
            failure_window=duration_pb2.Duration(seconds=60),
            base_cooldown=duration_pb2.Duration(nanos=250_000_000),
            max_cooldown=duration_pb2.Duration(seconds=86400),
        )
    )


class Recorder:
    """Stands in for the typed client: records what a command sends, answers with what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def update_provider_config(self, message: provider_config_pb2.ProviderConfig, paths: list[str]) -> Written[Any]:
        self.sent.append(("update_provider_config", (message, list(paths)), {}))
        return Written(message, 7)

    def create_provider_config(self, id_: str, message: provider_config_pb2.ProviderConfig) -> Written[Any]:
        self.sent.append(("create_provider_config", (id_, message), {}))
        return Written(message, 6)

    def reset_provider_health(self, id_: str) -> Written[Any]:
        self.sent.append(("reset_provider_health", (id_,), {}))
        return Written(provider(id_), 8)

    def explain(self, *args: Any, **kwargs: Any) -> resolver_pb2.ExplainResolutionResponse:
        self.sent.append(("explain", args, kwargs))
        return resolver_pb2.ExplainResolutionResponse(model_config="modelConfigs/m", selected_position=-1)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder()
    monkeypatch.setattr(Session, "client", lambda self, role: fake)
    return fake


def test_update_writes_the_health_policy_as_a_whole(recorder: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["providers", "update", "p", "--failure-threshold", "5", "--base-cooldown", "30", "--output", "json"]
    assert admin_main(argv) == 0
    [(_, (message, paths), _)] = recorder.sent
    assert paths == ["health_policy"] and message.name == "providerConfigs/p"
    assert message.health_policy == calls.health_policy(failure_threshold=5, base_cooldown=30)
    document = json.loads(capsys.readouterr().out)
    assert document["provider_config"]["health_policy"] == {"failure_threshold": 5, "base_cooldown": "30s"}
    assert document["config_revision"] == 7

    recorder.sent.clear()
    assert admin_main(["providers", "update", "p", "--display-name", "P", "--clear-health-policy"]) == 0
    [(_, (message, paths), _)] = recorder.sent
    assert paths == ["display_name", "health_policy"]
    assert message.HasField("health_policy") and message.health_policy == provider_config_pb2.HealthPolicy()
    assert "default" in row(capsys.readouterr().out, "failure threshold")

    recorder.sent.clear()
    assert admin_main(["providers", "update", "p", "--clear-health-policy", "--max-cooldown", "60"]) == 2
    assert "--clear-health-policy" in capsys.readouterr().err and recorder.sent == []
    assert admin_main(["providers", "update", "p"]) == 2  # nothing to change
    assert "--failure-threshold" in capsys.readouterr().err


def test_create_sends_a_health_policy_only_when_given(recorder: Recorder) -> None:
    assert admin_main(["providers", "create", "a", "--family", "openai", "--failure-window", "120"]) == 0
    assert admin_main(["providers", "create", "b", "--family", "openai"]) == 0
    [(_, (_, first), _), (_, (_, second), _)] = recorder.sent
    assert first.health_policy == calls.health_policy(failure_window=120)
    assert not second.HasField("health_policy")


def test_reset_health_prints_the_provider_or_the_written_document(
    recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin_main(["providers", "reset-health", "openai-main"]) == 0
    assert recorder.sent == [("reset_provider_health", ("openai-main",), {})]
    assert "[enabled]" in row(capsys.readouterr().out, "status")
    assert admin_main(["providers", "reset-health", "openai-main", "--output", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["provider_config"]["name"] == "providerConfigs/openai-main"
    assert (document["config_revision"], document["default_changed"]) == (8, False)


def test_explain_passes_ignore_health(recorder: Recorder) -> None:
    assert admin_main(["explain", "m", "--ignore-health", "--output", "json"]) == 0
    assert admin_main(["explain", "m", "--output", "json"]) == 0
    assert [call[2] for call in recorder.sent] == [{"ignore_health": True}, {"ignore_health": False}]
