"""`modelroute-admin` through a whole scenario, as an operator types it: tables for people, one JSON
document per command for scripts, and exit codes by class."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from modelroute.cli import main as admin_main
from modelroute.v1 import common_pb2, resolver_pb2, resolver_pb2_grpc

from ..conftest import RunningServer, all_roles_token
from ..helpers import free_port


class Admin:
    def __init__(self, server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
        self._target = ["--target", server.address]
        self._capsys = capsys
        self.err = ""

    def table(self, *args: str, code: int = 0) -> str:
        """The command's table output (stdout); asserts its exit code."""
        exit_code = admin_main([*self._target, *args])
        captured = self._capsys.readouterr()
        self.err = captured.err
        assert exit_code == code, captured.err
        return captured.out

    def json(self, *args: str, code: int = 0) -> Any:
        """The command's one JSON document (stdout; the error document on stderr when it failed)."""
        exit_code = admin_main([*self._target, *args, "--output", "json"])
        captured = self._capsys.readouterr()
        assert exit_code == code, captured.err
        return json.loads(captured.out if code == 0 else captured.err)


def row(table: str, first_cell: str) -> str:
    """The table line whose first cell is `first_cell`."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells and cells[0] == first_cell:
            return line
    raise AssertionError(f"no row {first_cell!r} in:\n{table}")


def positions(model: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(a["position"], a["provider_config"].split("/")[1], a["effective_model"]) for a in model["attachments"]]


def test_a_full_scenario_with_tables_json_and_exit_codes(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    monkeypatch.setenv("OPENAI_KEY", "sk-cli-openai")
    monkeypatch.setenv("AZURE_KEY", "az-cli-azure")
    monkeypatch.setenv("OPENROUTER_KEY", "sk-cli-openrouter")
    admin = Admin(running_server, capsys)

    # Providers: three families, one of which takes users' own keys.
    created = admin.json("providers", "create", "openai-main", "--family", "openai", "--api-key-env", "OPENAI_KEY")
    assert created["provider_config"]["has_api_key"] is True and created["config_revision"] > 0
    azure = admin.table(
        "providers",
        "create",
        "azure-eu",
        "--family",
        "Azure",
        "--base-url",
        "https://eu.openai.azure.com",
        "--api-key-env",
        "AZURE_KEY",
    )
    assert "https://eu.openai.azure.com" in row(azure, "base url") and "[enabled]" in row(azure, "status")
    openrouter = admin.json(
        "providers",
        "create",
        "openrouter",
        "--family",
        "openrouter",
        "--policy",
        "user-preferred",
        "--api-key-env",
        "OPENROUTER_KEY",
    )["provider_config"]
    assert openrouter["credential_policy"]["allow_central_api_key_fallback"] is True
    listed = admin.table("providers", "list")
    assert "user-preferred" in row(listed, "openrouter") and "central-only" in row(listed, "openai-main")

    # A model with three attachments, two of them sent another upstream name.
    model = admin.json(
        "models",
        "create",
        "gpt-4o",
        "--family",
        "openai",
        "--model",
        "gpt-4o",
        "--context-limit",
        "128000",
        "--provider",
        "openai-main",
        "--provider",
        "azure-eu=gpt4o-eu-prod",
        "--provider",
        "openrouter=openai/gpt-4o",
    )
    # The first model becomes the default, and the write says so.
    assert (model["default_changed"], model["default_model_config"]) == (True, "modelConfigs/gpt-4o")
    assert positions(model["model_config"]) == [
        (0, "openai-main", "gpt-4o"),
        (1, "azure-eu", "gpt4o-eu-prod"),
        (2, "openrouter", "openai/gpt-4o"),
    ]

    # Move Azure first: the table shows the new order, overrides kept.
    moved = admin.table("models", "move", "gpt-4o", "azure-eu", "--up")
    assert "gpt4o-eu-prod (override)" in row(moved, "0") and "azure-eu" in row(moved, "0")
    assert "openai-main" in row(moved, "1") and "[default]" in row(moved, "status")
    assert positions(admin.json("models", "get", "gpt-4o")) == [
        (0, "azure-eu", "gpt4o-eu-prod"),
        (1, "openai-main", "gpt-4o"),
        (2, "openrouter", "openai/gpt-4o"),
    ]
    models_table = admin.table("models", "list")
    assert "azure-eu=gpt4o-eu-prod > openai-main > openrouter=openai/gpt-4o" in row(models_table, "gpt-4o")

    # Disable Azure: resolution skips it and says who can fix that.
    assert admin.json("providers", "disable", "azure-eu")["provider_config"]["enabled"] is False
    resolved = admin.table("resolve", "gpt-4o")
    assert "[disabled]" in row(resolved, "0") and "admin" in row(resolved, "0")
    assert "[selected]" in row(resolved, "1") and "openai-main" in row(resolved, "1")
    assert "[fallback]" in row(resolved, "2") and "openai/gpt-4o" in row(resolved, "2")
    answer = admin.json("resolve", "gpt-4o")
    assert answer["selected"]["provider_config"] == "providerConfigs/openai-main"
    assert answer["selected"]["api_key"] == "<redacted>"  # keys only with --show-secrets
    [skipped] = answer["skipped"]
    # Zero and false values are present for scripts.
    assert (skipped["position"], skipped["reason"], skipped["fixable_by"]) == (
        0,
        "SKIP_REASON_PROVIDER_DISABLED",
        "FIXABLE_BY_ADMIN",
    )

    explained = admin.table("explain", "gpt-4o", "--user", "alice")
    assert "[usable]" in explained and "[disabled]" in row(explained, "0") and "[selected]" in row(explained, "1")
    explanation = admin.json("explain", "gpt-4o", "--user", "alice", "--provider-enabled", "azure-eu=true")
    assert (explanation["usable"], explanation["selected_position"]) == (True, 0)
    assert [o["usable"] for o in explanation["outcomes"]] == [True, True, True]
    assert all("api_key" not in o for o in explanation["outcomes"])

    # Alice brings her own OpenRouter key: her resolution uses it.
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-alice-own-key\n"))
    assert admin.json("user-keys", "set", "alice", "openrouter")["user_provider_config"]["has_user_api_key"] is True
    assert "[user key]" in row(admin.table("user-keys", "list", "alice"), "openrouter")
    hers = admin.json("resolve", "gpt-4o", "--user", "alice", "--show-secrets")
    [fallback] = hers["fallbacks"]
    assert (fallback["provider_config"], fallback["key_source"]) == ("providerConfigs/openrouter", "KEY_SOURCE_USER")
    if fallback["api_key"] != "sk-alice-own-key":
        raise AssertionError("alice's own key was not handed out")
    deleted = admin.json("user-keys", "delete", "alice", "openrouter")
    assert deleted["config_revision"] > 0
    entries = admin.json("user-keys", "list", "alice")["user_provider_configs"]
    assert [(e["provider_config"], e["has_user_api_key"]) for e in entries] == [("providerConfigs/openrouter", False)]

    # A provider in use is refused (precondition), then force-deleted: the model keeps the other two.
    refused = admin.json("providers", "delete", "openai-main", code=4)["error"]
    assert refused["reason"] == "PROVIDER_CONFIG_IN_USE"
    forced = admin.json("providers", "delete", "openai-main", "--force")
    assert forced["touched_model_configs"] == ["modelConfigs/gpt-4o"] and forced["deleted_model_configs"] == []
    assert positions(admin.json("models", "get", "gpt-4o")) == [
        (0, "azure-eu", "gpt4o-eu-prod"),
        (1, "openrouter", "openai/gpt-4o"),
    ]
    after = admin.table("resolve", "gpt-4o")
    assert "[selected]" in row(after, "1") and "openrouter" in row(after, "1")

    # Exit codes by class, each error printed once.
    admin.table("providers", "get", "openai-main", code=3)
    assert admin.err.count("PROVIDER_CONFIG_NOT_FOUND") == 1
    admin.table("models", "create", "bad", "--family", "openai", "--model", "m", "--context-limit", "0", code=2)
    assert "model_config.context_limit" in admin.err
    admin.table("models", "frobnicate", code=2)
    admin.table("models", "move", "gpt-4o", "openrouter", code=2)  # neither --up, --down nor --to


def test_exit_codes_for_permission_and_unavailable(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    admin = Admin(running_server, capsys)
    secret = admin.json("tokens", "create", "only-reads", "--role", "reader")["token"]
    monkeypatch.setenv("MODELROUTE_TOKEN", secret)
    denied = admin.json("providers", "create", "p", "--family", "openai", code=6)["error"]
    assert (denied["code"], denied["reason"]) == ("PERMISSION_DENIED", "ROLE_REQUIRED")
    monkeypatch.delenv("MODELROUTE_TOKEN")
    monkeypatch.setenv("MODELROUTE_DATA_DIR", "/nonexistent")  # no embedded token file either
    admin.table("providers", "list", code=6)
    assert "UNAUTHENTICATED CREDENTIALS_MISSING" in admin.err and "MODELROUTE_TOKEN" in admin.err
    # Nobody listens: reads fail fast as unavailable (only resolution waits for a replica).
    assert admin_main(["--target", f"127.0.0.1:{free_port()}", "--timeout", "3", "providers", "list"]) == 5
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_help_on_every_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    from typer.main import get_command

    from modelroute.cli import app

    root = get_command(app)
    commands: list[tuple[str, Any]] = []
    for name, group in root.commands.items():  # type: ignore[attr-defined]
        children = getattr(group, "commands", None)
        commands += [(f"{name} {child}", c) for child, c in children.items()] if children else [(name, group)]
    assert len(commands) >= 30
    for path, command in commands:
        assert command.help, f"{path} has no help"
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{path} {param.opts} has no help"
        assert admin_main([*path.split(), "--help"]) == 0
        assert "Usage: modelroute-admin" in capsys.readouterr().out


def test_the_other_writes_update_attach_detach_default_and_keys(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    monkeypatch.setenv("FIRST_KEY", "sk-cli-first")
    admin = Admin(running_server, capsys)
    for provider in ("p-one", "p-two"):
        admin.json("providers", "create", provider, "--family", "openai", "--api-key-env", "FIRST_KEY")
    renamed = admin.json("providers", "update", "p-two", "--display-name", "Second", "--policy", "user-preferred")
    assert renamed["provider_config"]["display_name"] == "Second"
    assert renamed["provider_config"]["credential_policy"]["allow_user_api_key"] is True
    admin.json("providers", "update", "p-two", code=2)  # nothing to change
    # A new key from stdin; clearing it is refused while the policy needs it, and changes nothing.
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-cli-rotated\n"))
    rotated = admin.json("providers", "set-key", "p-one")
    assert rotated["provider_config"]["has_api_key"] is True and rotated["config_revision"] > 0
    refused = admin.json("providers", "set-key", "p-one", "--clear", code=2)["error"]
    assert refused["field_violations"][0]["field"] == "provider_config.api_key"
    assert admin.json("providers", "get", "p-one")["etag"] == rotated["provider_config"]["etag"]
    monkeypatch.setenv("NEW_KEY", "sk-cli-new")
    assert admin.json("providers", "set-key", "p-one", "--api-key-env", "NEW_KEY")["provider_config"]["has_api_key"]

    create = ["models", "create", "--family", "openai", "--model", "gpt", "--context-limit", "10"]
    admin.json(*create[:2], "first", *create[2:], "--provider", "p-one")
    admin.json(*create[:2], "second", *create[2:], "--provider", "p-one")
    attached = admin.json("models", "attach", "second", "p-two=gpt-alt", "--position", "0")["model_config"]
    assert positions(attached) == [(0, "p-two", "gpt-alt"), (1, "p-one", "gpt")]
    assert positions(admin.json("models", "detach", "second", "p-two")["model_config"]) == [(0, "p-one", "gpt")]
    admin.json("models", "detach", "second", "p-two", code=3)
    updated = admin.json("models", "update", "second", "--model", "gpt-2", "--context-limit", "20")["model_config"]
    assert (updated["model"], updated["context_limit"]) == ("gpt-2", 20)

    moved = admin.json("models", "set-default", "second")
    assert (moved["default_changed"], moved["default_model_config"]) == (True, "modelConfigs/second")
    disabled = admin.json("models", "disable", "second")
    assert (disabled["default_changed"], disabled["default_model_config"]) == (True, "modelConfigs/first")
    assert admin.json("models", "enable", "second")["model_config"]["enabled"] is True
    deleted = admin.json("models", "delete", "first")
    assert deleted["model_config"]["delete_time"] and deleted["default_model_config"] == "modelConfigs/second"
    assert [m["name"] for m in admin.json("models", "list")["model_configs"]] == ["modelConfigs/second"]
    listed = admin.table("models", "list", "--show-deleted")
    assert "[deleted]" in row(listed, "first")
    assert admin.json("models", "undelete", "first")["model_config"]["enabled"] is True
    admin.json("models", "undelete", "first", code=4)  # not deleted: a precondition (ALREADY_EXISTS)
    stale = admin.json("models", "delete", "first", "--etag", '"1"', code=4)["error"]
    assert stale["reason"] == "ETAG_MISMATCH"


def eventually(probe: Callable[[], str], accept: Callable[[str], bool], what: str, timeout: float = 10) -> str:
    """`probe()` again until `accept` takes what it printed: replicas learn of attempt reports a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if accept(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}; last:\n{seen}")
        time.sleep(0.05)


def report(
    server: RunningServer, provider: str, model: str, outcome: int, times: int = 1, **fields: Any
) -> resolver_pb2.ReportAttemptsResponse:
    """What a caller of ResolveModel reports after trying an attachment (the session's token has every role)."""
    attempt = resolver_pb2.AttemptReport(
        provider_config=f"providerConfigs/{provider}",
        model=model,
        outcome=outcome,
        **fields,
    )
    stub = resolver_pb2_grpc.ResolverServiceStub(server.channel)
    response: resolver_pb2.ReportAttemptsResponse = stub.ReportAttempts(
        resolver_pb2.ReportAttemptsRequest(attempts=[attempt] * times), timeout=10
    )
    return response


def test_a_cooling_provider_is_badged_everywhere_until_its_health_is_reset(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    monkeypatch.setenv("HEALTH_KEY", "sk-cli-health")
    admin = Admin(running_server, capsys)
    for provider in ("hot", "cool"):
        admin.json("providers", "create", provider, "--family", "openai", "--api-key-env", "HEALTH_KEY")
    create = ["--family", "openai", "--context-limit", "1000"]
    admin.json("models", "create", "gpt-4o", *create, "--model", "gpt-4o", "--provider", "hot", "--provider", "cool")
    admin.json("models", "create", "solo", *create, "--model", "gpt-solo", "--provider", "hot")
    assert "[selected]" in row(admin.table("resolve", "gpt-4o"), "0")

    # Three server errors within the window (the service's default threshold): both models of `hot` cool down.
    assert report(running_server, "hot", "gpt-4o", resolver_pb2.ATTEMPT_OUTCOME_SERVER_ERROR, 3).recorded == 3
    assert report(running_server, "hot", "gpt-solo", resolver_pb2.ATTEMPT_OUTCOME_SERVER_ERROR, 3).recorded == 3

    listed = admin.table("providers", "list")
    assert "[cooling down]" in row(listed, "hot") and "cooling" not in row(listed, "cool")
    detail = admin.table("providers", "get", "hot")
    assert "[cooling down]" in row(detail, "status")
    [failures, trips] = [c.strip() for c in row(detail, "gpt-4o").split("│")[1:3]]
    assert (failures, trips) == ("3", "1") and "s left)" in row(detail, "gpt-4o")
    health = admin.json("providers", "get", "hot")["health"]
    assert sorted(m["model"] for m in health["models"]) == ["gpt-4o", "gpt-solo"]
    assert all(m["cooldown_until"] for m in health["models"])

    # Resolution demotes it behind the healthy attachment, and says until when.
    resolved = eventually(
        lambda: admin.table("resolve", "gpt-4o"), lambda t: "[selected]" in row(t, "1"), "demoted the cooling `hot`"
    )
    assert "[fallback] [cooling down until " in row(resolved, "0") and "cooling" not in row(resolved, "1")
    answer = admin.json("resolve", "gpt-4o")
    selected = answer["selected"]
    assert selected["provider_config"] == "providerConfigs/cool" and "cooldown_until" not in selected
    assert [f["provider_config"] for f in answer["fallbacks"]] == ["providerConfigs/hot"]
    [gpt_4o] = [m for m in health["models"] if m["model"] == "gpt-4o"]
    assert answer["fallbacks"][0]["cooldown_until"] == gpt_4o["cooldown_until"]
    explained = admin.table("explain", "gpt-4o")
    assert "[fallback] [cooling down until " in row(explained, "0") and "[selected]" in row(explained, "1")
    ignoring = admin.json("explain", "gpt-4o", "--ignore-health")
    assert ignoring["selected_position"] == 0 and not any("cooldown_until" in o for o in ignoring["outcomes"])
    available = admin.table("available")
    assert "[degraded]" in row(available, "solo") and "degraded" not in row(available, "gpt-4o")

    # The reset ends the cooldowns: a write (a revision to read it at), safe to repeat.
    reset = admin.json("providers", "reset-health", "hot")
    assert reset["config_revision"] > 0
    assert not any("cooldown_until" in m for m in reset["provider_config"].get("health", {}).get("models", []))
    assert "[cooling down]" not in row(admin.table("providers", "reset-health", "hot"), "status")
    assert "cooling" not in row(admin.table("providers", "list"), "hot")
    after = eventually(
        lambda: admin.table("resolve", "gpt-4o", "--min-revision", str(reset["config_revision"])),
        lambda t: "[selected]" in row(t, "0"),
        "selected `hot` again after the reset",
    )
    assert "cooling" not in after
    assert "degraded" not in row(admin.table("available"), "solo")
    admin.table("providers", "reset-health", "no-such-provider", code=3)
    assert admin.err.count("PROVIDER_CONFIG_NOT_FOUND") == 1


def test_rejected_keys_are_badged_for_admins_and_users(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    monkeypatch.setenv("HEALTH_KEY", "sk-cli-health")
    admin = Admin(running_server, capsys)
    admin.json("providers", "create", "central", "--family", "openai", "--api-key-env", "HEALTH_KEY")
    admin.json("providers", "create", "byok", "--family", "openai", "--policy", "user-only")
    admin.json("providers", "create", "spare", "--family", "openai", "--api-key-env", "HEALTH_KEY")
    providers = ["--provider", "central", "--provider", "byok", "--provider", "spare"]
    admin.json(
        "models", "create", "gpt-4o", "--family", "openai", "--model", "gpt-4o", "--context-limit", "9", *providers
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-alice-own\n"))
    admin.json("user-keys", "set", "alice", "byok")
    hers = admin.json("resolve", "gpt-4o", "--user", "alice")
    revision = hers["config_revision"]

    central = report(
        running_server,
        "central",
        "gpt-4o",
        resolver_pb2.ATTEMPT_OUTCOME_KEY_REJECTED,
        key_source=common_pb2.KEY_SOURCE_STORED,
        config_revision=revision,
    )
    user = report(
        running_server,
        "byok",
        "gpt-4o",
        resolver_pb2.ATTEMPT_OUTCOME_KEY_REJECTED,
        key_source=common_pb2.KEY_SOURCE_USER,
        user="alice",
        config_revision=revision,
    )
    assert (central.recorded, user.recorded) == (1, 1)

    listed = admin.table("providers", "list")
    assert "[central key rejected]" in row(listed, "central") and "rejected" not in row(listed, "spare")
    assert admin.json("providers", "get", "central")["health"]["central_key_rejected_time"]
    assert "[key rejected]" in row(admin.table("user-keys", "list", "alice"), "byok")
    resolved = eventually(
        lambda: admin.table("resolve", "gpt-4o", "--user", "alice"),
        lambda t: "[selected]" in row(t, "2"),
        "skipped both rejected keys",
    )
    assert "[central key rejected]" in row(resolved, "0") and "admin" in row(resolved, "0")
    assert "[key rejected]" in row(resolved, "1") and "user" in row(resolved, "1")
    explained = admin.table("explain", "gpt-4o", "--user", "alice")
    assert "[central key rejected]" in row(explained, "0") and "[key rejected]" in row(explained, "1")

    # The reset clears the central key's mark; alice's stays until she sets a new key.
    reset = admin.json("providers", "reset-health", "central")
    assert "central_key_rejected_time" not in reset["provider_config"].get("health", {})
    assert "rejected" not in row(admin.table("providers", "list"), "central")
    after = eventually(
        lambda: admin.table("resolve", "gpt-4o", "--user", "alice", "--min-revision", str(reset["config_revision"])),
        lambda t: "[selected]" in row(t, "0"),
        "used the central key again",
    )
    assert "[key rejected]" in row(after, "1")
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-alice-new\n"))
    admin.json("user-keys", "set", "alice", "byok")
    assert "rejected" not in row(admin.table("user-keys", "list", "alice"), "byok")


def test_the_health_policy_is_written_as_a_whole_and_checked_by_the_service(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    monkeypatch.setenv("HEALTH_KEY", "sk-cli-health")
    admin = Admin(running_server, capsys)
    create = ["providers", "create", "p", "--family", "openai", "--api-key-env", "HEALTH_KEY"]
    created = admin.json(*create, "--failure-threshold", "2")
    assert created["provider_config"]["health_policy"] == {"failure_threshold": 2}
    updated = admin.json("providers", "update", "p", "--base-cooldown", "5", "--max-cooldown", "120")
    # As a whole: the threshold not given again is the service's default now.
    assert updated["provider_config"]["health_policy"] == {"base_cooldown": "5s", "max_cooldown": "120s"}
    detail = admin.table("providers", "get", "p")
    assert "5s" in row(detail, "base cooldown") and "default" in row(detail, "failure threshold")
    refused = admin.json("providers", "update", "p", "--failure-threshold", "0", code=2)["error"]
    assert [v["field"] for v in refused["field_violations"]] == ["provider_config.health_policy.failure_threshold"]
    too_short = admin.json("providers", "update", "p", "--base-cooldown", "60", "--max-cooldown", "30", code=2)
    assert too_short["error"]["field_violations"][0]["field"] == "provider_config.health_policy.max_cooldown"
    cleared = admin.json("providers", "update", "p", "--clear-health-policy")
    assert cleared["provider_config"].get("health_policy", {}) == {}
    assert cleared["config_revision"] > updated["config_revision"]
