"""The server process and its security settings: refusals before anything starts (one clear line each), and
the bootstrap token commands working beside a running embedded server."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from modelroute import ModelrouteClient, ModelrouteError
from modelroute.v1 import common_pb2, provider_config_pb2
from modelroute_server.adapters.crypto import generate_keyring_spec

from ..conftest import ServerProcesses
from ..helpers import SERVER_BINARY, clean_env, free_port, run_server_command

SERVING = health_pb2.HealthCheckResponse.SERVING


def refusal(args: list[str], cwd: Path, **env: str) -> str:
    """Runs `modelroute-server serve ...` expecting a refusal; returns its one line of output."""
    done = run_server_command(
        [str(SERVER_BINARY), "serve", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert done.stdout == b""
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_plaintext_beyond_loopback_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    line = refusal(["--listen", f"0.0.0.0:{free_port()}"], tmp_path)
    assert "without TLS" in line and "MODELROUTE_ALLOW_PLAINTEXT=true" in line and "MODELROUTE_TLS_CERT_FILE" in line
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


@pytest.mark.parametrize("where", ["keyring-file-variable", "embedded-data-dir"])
def test_a_keyring_readable_by_others_is_refused_with_one_clear_line(tmp_path: Path, where: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keyring_file = data_dir / "keyring"
    keyring_file.write_text(generate_keyring_spec() + "\n")
    keyring_file.chmod(0o644)
    env = {"MODELROUTE_DATA_DIR": str(data_dir)}
    if where == "keyring-file-variable":
        env = {"MODELROUTE_KEYRING_FILE": str(keyring_file), "MODELROUTE_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    line = refusal(["--listen", f"127.0.0.1:{free_port()}"], tmp_path, **env)
    assert "readable by group or others (mode 0644)" in line and f"chmod 600 {keyring_file}" in line
    assert sorted(p.name for p in data_dir.iterdir()) == ["keyring"]  # no database was started


def test_the_bootstrap_commands_work_beside_a_running_server_and_the_port_is_its_own(
    tmp_path: Path, server_process: ServerProcesses
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    process = server_process.start(tmp_path, f"0.0.0.0:{port}", data_dir, MODELROUTE_ALLOW_PLAINTEXT="true")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        # A second server on the same port is refused before it starts anything.
        other_dir = tmp_path / "other"
        line = refusal(["--listen", f"127.0.0.1:{port}", "--data-dir", str(other_dir)], tmp_path)
        assert f"cannot listen on 127.0.0.1:{port}" in line
        assert not other_dir.exists()

        def server_command(*args: str) -> subprocess.CompletedProcess[bytes]:
            done = run_server_command(
                [str(SERVER_BINARY), *args, "--data-dir", str(data_dir)],
                cwd=tmp_path,
                env=clean_env(MODELROUTE_LOG_LEVEL="WARNING"),
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            return done

        created = server_command("tokens", "create", "--name", "ci", "--role", "reader", "--role", "resolver")
        secret = created.stdout.decode().strip()
        assert secret.startswith("mrt_") and "\n" not in secret
        assert "accessTokens/ci" in created.stderr.decode()
        with ModelrouteClient(channel, token=secret) as client:
            assert list(client.available_models()) == []
            with pytest.raises(ModelrouteError) as denied:
                client.create_provider_config(
                    "p", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-x")
                )
            assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED and "admin" in denied.value.message

        listed = server_command("tokens", "list").stdout.decode()
        assert "ci" in listed and "reader,resolver" in listed and "embedded-admin" in listed
        if secret in listed:
            raise AssertionError("`tokens list` printed a token secret")

        server_command("tokens", "revoke", "ci")
        deadline = time.monotonic() + 10
        with ModelrouteClient(channel, token=secret) as client:
            while True:
                try:
                    client.get_provider_config("p")
                except ModelrouteError as error:
                    if error.reason == "TOKEN_REVOKED":
                        break
                assert time.monotonic() < deadline, "the running server kept accepting a revoked token"
                time.sleep(0.05)

        # The server commands were audited under their own actor.
        admin = (data_dir / "admin.token").read_text().strip()
        with ModelrouteClient(channel, token=admin) as client:
            events = list(client.list_audit_events('resource = "accessTokens/ci"'))
        assert [(e.actor, e.method) for e in events] == [
            ("cli:tokens revoke", "RevokeAccessToken"),
            ("cli:tokens create", "CreateAccessToken"),
        ]
    finally:
        channel.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    stderr = process.stderr.read().decode() if process.stderr else ""
    warnings = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("without TLS" in w["message"] and w["level"] == "WARNING" for w in warnings)
    if secret in stderr or admin in stderr:
        raise AssertionError("a token secret reached the server's log")
