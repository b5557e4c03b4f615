"""`modelroute-admin import litellm` against the real server: the resolution order the file's `order` fields
express, each deployment with its own upstream name and key, idempotence, and nothing written on an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelroute import ModelrouteClient, errors
from modelroute.cli import main as admin_main
from modelroute.litellm_import import LiteLLMImportError, apply_plan, load_config, plan_import
from modelroute.v1 import common_pb2, provider_config_pb2
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.server import Application

from ..conftest import RunningServer, all_roles_token

CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/IMPORT_OPENAI_KEY
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt4o-eu-prod
      api_base: https://eu.openai.azure.com
      api_key: os.environ/IMPORT_AZURE_KEY
      api_version: "2024-06-01"
      order: 1
  - model_name: gpt-4o
    litellm_params:
      model: openrouter/openai/gpt-4o
      api_key: os.environ/IMPORT_OPENROUTER_KEY
      order: 2
  - model_name: Claude Sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4
      api_key: os.environ/IMPORT_ANTHROPIC_KEY
    model_info:
      max_input_tokens: 200000
  - model_name: llama
    litellm_params:
      model: groq/llama-3.1-70b
router_settings:
  routing_strategy: simple-shuffle
"""
KEYS = {
    "IMPORT_OPENAI_KEY": "sk-import-openai",
    "IMPORT_AZURE_KEY": "az-import-azure",
    "IMPORT_OPENROUTER_KEY": "sk-import-openrouter",
    "IMPORT_ANTHROPIC_KEY": "sk-import-anthropic",
}


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


class ImportCommand:
    """`modelroute-admin import litellm CONFIG` with `--output json`, on the session's server, all roles."""

    def __init__(self, server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.server, self.config, self.capsys = server, config, capsys

    def _run(self, args: tuple[str, ...], code: int) -> tuple[str, str]:
        command = ["--target", self.server.address, "import", "litellm", str(self.config), *args]
        exit_code = admin_main(command)
        captured = self.capsys.readouterr()
        assert exit_code == code, captured.err
        assert "sk-import" not in captured.out + captured.err and "az-import" not in captured.out + captured.err
        return captured.out, captured.err

    def json(self, *args: str, code: int = 0) -> Any:
        out, err = self._run((*args, "--output", "json"), code)
        return json.loads(out if code == 0 else err)

    def table(self, *args: str) -> str:
        return self._run(args, 0)[0]


@pytest.fixture
def import_command(
    app: object,
    running_server: RunningServer,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> ImportCommand:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    return ImportCommand(running_server, config_file, capsys)


def attempt_order(answer: Any) -> list[tuple[str, str, str]]:
    attempts = [answer.selected, *answer.fallbacks]
    return [(a.provider_config.split("/")[1], a.model, a.api_key) for a in attempts]


def test_the_order_fields_give_the_resolution_order_with_upstream_names_and_keys(
    app: object, channel: grpc.Channel, config_file: Path
) -> None:
    client = ModelrouteClient(channel)
    plan = plan_import(load_config(config_file), dict(KEYS))
    changes = apply_plan(plan, client)
    assert {(c.kind, c.action) for c in changes} == {("provider_config", "created"), ("model_config", "created")}

    answer = client.resolve("gpt-4o")
    assert attempt_order(answer) == [
        ("azure-eu-openai-azure-com", "gpt4o-eu-prod", "az-import-azure"),
        ("openrouter", "openai/gpt-4o", "sk-import-openrouter"),
        ("openai", "gpt-4o", "sk-import-openai"),
    ]
    assert answer.selected.base_url == "https://eu.openai.azure.com"
    claude = client.get_model_config("claude-sonnet")
    assert (claude.display_name, claude.model, claude.context_limit) == ("Claude Sonnet", "claude-sonnet-4", 200000)
    assert attempt_order(client.resolve("claude-sonnet")) == [("anthropic", "claude-sonnet-4", "sk-import-anthropic")]
    assert [c for c in changes if c.id == "llama"] == []  # groq/ has no family: reported, not imported
    assert any(n.what == "groq/llama-3.1-70b" for n in plan.not_imported)


def test_a_second_apply_changes_nothing_and_the_revision_does_not_move(
    import_command: ImportCommand, running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dry_run = import_command.json()
    assert dry_run["applied"] is False and dry_run["changes"] == []
    assert [p["id"] for p in dry_run["plan"]["providers"]] == [
        "openai",
        "azure-eu-openai-azure-com",
        "openrouter",
        "anthropic",
    ]
    assert list(ModelrouteClient(running_server.channel).list_model_configs()) == []  # a dry run writes nothing

    first = import_command.json("--apply")
    assert {c["action"] for c in first["changes"]} == {"created"} and len(first["changes"]) == 6
    revision = ModelrouteClient(running_server.channel).resolve("gpt-4o").config_revision

    second = import_command.json("--apply")
    assert {c["action"] for c in second["changes"]} == {"unchanged"} and len(second["changes"]) == 6
    assert ModelrouteClient(running_server.channel).resolve("gpt-4o").config_revision == revision

    # The table for people: the plan, what applying did, and what was left out.
    table = import_command.table("--apply")
    assert "azure-eu-openai-azure-com > openrouter=openai/gpt-4o > openai=gpt-4o" in table and "unchanged" in table
    assert "router_settings" in table and "litellm_params.api_version" in table

    # A changed file moves what it changes, and only that.
    monkeypatch.setenv("IMPORT_OPENAI_KEY", "sk-import-openai-rotated")
    rotated = import_command.json("--apply")
    actions = {c["id"]: c["action"] for c in rotated["changes"]}
    assert actions.pop("openai") == "updated" and set(actions.values()) == {"unchanged"}
    answer = ModelrouteClient(running_server.channel).resolve("gpt-4o")
    assert answer.config_revision > revision and answer.fallbacks[1].api_key == "sk-import-openai-rotated"


def test_a_missing_environment_variable_is_an_error_naming_it_with_nothing_written(
    import_command: ImportCommand, running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMPORT_AZURE_KEY")
    monkeypatch.delenv("IMPORT_ANTHROPIC_KEY")
    client = ModelrouteClient(running_server.channel)
    before = list(client.list_audit_events())
    failed = import_command.json("--apply", code=1)
    assert "IMPORT_AZURE_KEY, IMPORT_ANTHROPIC_KEY" in failed["error"]["message"]
    assert list(client.list_provider_configs()) == [] and list(client.list_model_configs(show_deleted=True)) == []
    assert list(client.list_audit_events()) == list(before)


def test_an_existing_provider_config_of_another_family_stops_the_import_before_any_write(
    app: object, channel: grpc.Channel, config_file: Path
) -> None:
    client = ModelrouteClient(channel)
    client.create_provider_config(
        "openrouter", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-existing")
    )
    with pytest.raises(LiteLLMImportError, match="openrouter exists with family openai"):
        apply_plan(plan_import(load_config(config_file), dict(KEYS)), client)
    assert [p.name for p in client.list_provider_configs()] == ["providerConfigs/openrouter"]
    assert list(client.list_model_configs()) == []


def test_a_keyless_deployment_uses_the_services_deployment_key_and_is_written_first(
    app: Application, channel: grpc.Channel, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - {model_name: a, litellm_params: {model: anthropic/claude, api_key: sk-inline-anthropic}}\n"
        "  - {model_name: b, litellm_params: {model: openai/gpt-4o}}\n"
    )
    client = ModelrouteClient(channel)
    plan = plan_import(load_config(path), {})
    assert [(p.id, p.key_reference) for p in plan.providers] == [("anthropic", "inline"), ("openai", "")]
    # This service has no deployment key for openai: the keyless config is refused before anything is written.
    with pytest.raises(errors.FieldInvalidError, match="central key is required"):
        apply_plan(plan, client)
    assert list(client.list_provider_configs()) == [] and list(client.list_model_configs()) == []

    app.ctx.deployment_keys[Family.OPENAI] = "dk-import-openai"  # type: ignore[index]
    apply_plan(plan, client)
    selected = client.resolve("b").selected
    assert (selected.provider_config, selected.api_key) == ("providerConfigs/openai", "dk-import-openai")
    assert selected.key_source == common_pb2.KEY_SOURCE_DEPLOYMENT
