"""The client distribution: the typed client and the admin CLI against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import grpc
import pytest

from modelroute import ModelrouteClient, ModelrouteError, errors
from modelroute.cli import main as admin_main
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from ..conftest import RunningServer, all_roles_token, repo_root


def test_typed_client_round_trip_and_rich_errors(channel: grpc.Channel) -> None:
    client = ModelrouteClient(channel)
    created = client.create_provider_config(
        "openai-main", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-client")
    )
    assert created.config_revision > 0 and not created.default_changed
    assert client.get_provider_config("openai-main") == created.value
    assert [p.name for p in client.list_provider_configs(page_size=1)] == ["providerConfigs/openai-main"]
    with pytest.raises(ModelrouteError) as caught:
        client.create_provider_config("Bad Id", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "FIELD_INVALID"
    assert isinstance(caught.value, errors.FieldInvalidError) and isinstance(caught.value, errors.InvalidArgumentError)
    assert "provider_config_id" in [f for f, _ in caught.value.field_violations]
    with pytest.raises(errors.ProviderConfigNotFoundError) as missing:
        client.get_provider_config("missing")
    assert missing.value.resource_name == "providerConfigs/missing"


def test_admin_cli_creates_resolves_and_redacts(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = ["--target", f"127.0.0.1:{running_server.port}", "--output", "json"]
    monkeypatch.setenv("CLI_TEST_KEY", "sk-from-env-not-argv")
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    assert (
        admin_main(
            [
                *target,
                "providers",
                "create",
                "compat",
                "--family",
                "OpenAI-Compat",
                "--base-url",
                "https://proxy.example/v1",
                "--api-key-env",
                "CLI_TEST_KEY",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)["provider_config"]
    assert created["family"] == "FAMILY_OPENAI_COMPAT" and created["has_api_key"] is True
    assert (
        admin_main(
            [
                *target,
                "models",
                "create",
                "m",
                "--family",
                "openai-compat",
                "--model",
                "llama-3.1",
                "--context-limit",
                "8192",
                "--provider",
                "compat",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert admin_main([*target, "resolve", "m"]) == 0
    redacted = capsys.readouterr().out
    assert "sk-from-env-not-argv" not in redacted and "<redacted>" in redacted
    assert admin_main([*target, "resolve", "m", "--show-secrets"]) == 0
    selected = json.loads(capsys.readouterr().out)["selected"]
    assert selected["key_source"] == "KEY_SOURCE_STORED"
    if selected["api_key"] != "sk-from-env-not-argv":  # compared without rendering the key
        raise AssertionError("--show-secrets did not show the key")


def test_admin_cli_sets_attachments_with_upstream_name_overrides(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = ["--target", f"127.0.0.1:{running_server.port}", "--json"]
    monkeypatch.setenv("CLI_TEST_KEY", "sk-cli-override")
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    providers = (("azure-eu", "azure", "https://eu.openai.azure.com"), ("openai-main", "openai", ""))
    providers += (("openrouter", "openrouter", ""),)
    for provider_id, family, base_url in providers:
        arguments = [*target, "providers", "create", provider_id, "--family", family, "--api-key-env", "CLI_TEST_KEY"]
        assert admin_main([*arguments, "--base-url", base_url] if base_url else arguments) == 0
    capsys.readouterr()
    create = [*target, "models", "create", "gpt-4o", "--family", "openai", "--model", "gpt-4o", "--context-limit", "1"]
    assert admin_main([*create, "--provider", "azure-eu=gpt4o-eu-prod", "--provider", "openai-main"]) == 0
    created = json.loads(capsys.readouterr().out)["model_config"]
    assert [(a["provider_config"], a["model"], a["effective_model"]) for a in created["attachments"]] == [
        ("providerConfigs/azure-eu", "gpt4o-eu-prod", "gpt4o-eu-prod"),
        ("providerConfigs/openai-main", "", "gpt-4o"),
    ]
    assert admin_main([*target, "models", "set-providers", "gpt-4o", "openrouter=openai/gpt-4o", "openai-main"]) == 0
    updated = json.loads(capsys.readouterr().out)["model_config"]
    assert [a["effective_model"] for a in updated["attachments"]] == ["openai/gpt-4o", "gpt-4o"]
    # Another family without an override: the error names the entry, in one JSON document on stderr.
    assert admin_main([*target, "models", "set-providers", "gpt-4o", "azure-eu"]) == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["reason"] == "ATTACHMENTS_INVALID"
    assert "model_config.attachments[0]" in [v["field"] for v in error["field_violations"]]


def test_admin_cli_reports_errors_without_a_traceback(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    code = admin_main(["--target", f"127.0.0.1:{running_server.port}", "providers", "get", "missing"])
    assert code == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    # Once, and without a traceback.
    assert captured.err.count("PROVIDER_CONFIG_NOT_FOUND") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: NOT_FOUND PROVIDER_CONFIG_NOT_FOUND: providerConfigs/missing")


def test_admin_cli_rejects_an_unknown_family_listing_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert admin_main(["providers", "create", "x", "--family", "mistral"]) == 2
    err = capsys.readouterr().err
    assert "openai-compat" in err and "bedrock" in err


def test_client_distribution_needs_none_of_the_server_dependencies() -> None:
    project = tomllib.loads((repo_root() / "clients" / "pyproject.toml").read_text())
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["project"]["dependencies"]}
    assert names == {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
    blocked = ["sqlalchemy", "psycopg", "alembic", "cryptography", "pgserver", "modelroute_server"]
    script = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
        + ("import modelroute, modelroute.cli, modelroute.v1.resolver_pb2_grpc\nprint('ok')\n")
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_typed_client_reports_default_model_moves(channel: grpc.Channel, capsys: pytest.CaptureFixture[str]) -> None:
    client = ModelrouteClient(channel)
    client.create_provider_config("p", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="k"))
    model = model_config_pb2.ModelConfig(family=common_pb2.FAMILY_OPENAI, model="gpt", context_limit=10)
    first = client.create_model_config("first", model)
    assert (first.value.is_default, first.default_changed, first.default_model_config) == (
        True,
        True,
        "modelConfigs/first",
    )
    second = client.create_model_config("second", model)
    assert (second.value.is_default, second.default_changed) == (False, False)
    assert second.config_revision > first.config_revision
    deleted = client.delete_model_config("first")
    assert (deleted.default_changed, deleted.default_model_config) == (True, "modelConfigs/second")
    gone = client.delete_model_config("second")
    assert (gone.default_changed, gone.default_model_config) == (True, "")


def test_admin_cli_manages_tokens_and_reads_the_audit_log(
    app: object, running_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTE_TOKEN", all_roles_token(running_server.app))
    target = ["--target", running_server.address, "--output", "json"]
    assert admin_main([*target, "tokens", "create", "cli-made", "--role", "reader", "--role", "USER_KEYS"]) == 0
    created = json.loads(capsys.readouterr().out)
    secret = created["token"]
    assert created["access_token"]["roles"] == ["ROLE_READER", "ROLE_USER_KEYS"]
    with ModelrouteClient(running_server.address, token=secret) as client:
        assert list(client.available_models()) == []
    assert admin_main([*target, "tokens", "revoke", "cli-made"]) == 0
    assert json.loads(capsys.readouterr().out)["access_token"]["revoke_time"]
    assert admin_main([*target, "audit", "list", "--filter", 'resource = "accessTokens/cli-made"']) == 0
    out = capsys.readouterr().out
    methods = [e["method"] for e in json.loads(out)["audit_events"]]
    assert methods == ["RevokeAccessToken", "CreateAccessToken"]
    if secret in out:
        raise AssertionError("the audit log shows a token secret")
    assert admin_main([*target, "tokens", "create", "x", "--role", "owner"]) == 2
    assert "valid roles: admin, reader, resolver, user-keys" in capsys.readouterr().err
