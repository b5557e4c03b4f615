"""A served replica's stderr (docs/operations.md, "Logs"): JSON lines only, the gRPC runtime's own lines
included, and the optional access log with method, code, duration and actor, never a secret."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from modelroute import ModelrouteClient, ModelrouteError

from ..conftest import ServerProcesses
from ..helpers import free_port, server_log


def test_the_access_log_writes_one_json_line_per_call(tmp_path: Path, server_process: ServerProcesses) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    # At INFO the gRPC core writes lines of its own on stderr (one says INFO is verbose): JSON too.
    process = server_process.start(
        tmp_path, f"127.0.0.1:{port}", data_dir, MODELROUTE_ACCESS_LOG="true", GRPC_VERBOSITY="INFO"
    )
    admin_token = (data_dir / "admin.token").read_text().strip()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with ModelrouteClient(channel, token=admin_token) as client:
            assert list(client.list_provider_configs()) == []
        with ModelrouteClient(channel) as anonymous:
            try:
                list(anonymous.list_provider_configs())
            except ModelrouteError as error:
                assert error.code == grpc.StatusCode.UNAUTHENTICATED
            else:
                raise AssertionError("a call without a token was answered")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.stderr is not None
    stderr = process.stderr.read()
    entries = server_log(stderr)  # every line JSON
    assert any(e["logger"] == "grpc" for e in entries), "the gRPC core wrote nothing: the test proves nothing"
    calls = [e for e in entries if e["logger"] == "modelroute.access" and e["method"] == "ListProviderConfigs"]
    assert [(e["code"], bool(e["actor"])) for e in calls] == [("OK", True), ("UNAUTHENTICATED", False)]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in calls)
    assert any(e["logger"] == "modelroute.access" and e["method"] == "Check" for e in entries)
    assert admin_token.encode() not in stderr
