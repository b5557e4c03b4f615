"""Small helpers for talking to the real server and reading rich errors back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute import ModelrouteError
from modelroute.v1 import (
    common_pb2,
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    provider_config_pb2_grpc,
    resolver_pb2_grpc,
    user_key_pb2_grpc,
)
from modelroute_server.domain.audit import Caller


@dataclass
class Stubs:
    providers: provider_config_pb2_grpc.ProviderConfigServiceStub
    models: model_config_pb2_grpc.ModelConfigServiceStub
    user_keys: user_key_pb2_grpc.UserKeyServiceStub
    resolver: resolver_pb2_grpc.ResolverServiceStub


def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        provider_config_pb2_grpc.ProviderConfigServiceStub(channel),
        model_config_pb2_grpc.ModelConfigServiceStub(channel),
        user_key_pb2_grpc.UserKeyServiceStub(channel),
        resolver_pb2_grpc.ResolverServiceStub(channel),
    )


# The actor of use cases that tests call directly (no RPC, so no token).
TEST_CALLER = Caller("cli:tests", "Test")

# The client distribution's decoder is the one under test here too.
RichError = ModelrouteError


def call_error(method: Callable[..., Any], request: Any) -> RichError:
    """Calls `method`, expects it to fail, and returns the decoded status."""
    try:
        method(request)
    except grpc.RpcError as error:
        return decode(error)
    raise AssertionError(f"expected {method} to fail, it succeeded")


def decode(error: grpc.RpcError) -> RichError:
    decoded = ModelrouteError.from_rpc_error(error)
    assert decoded.reason, f"every error must carry an ErrorInfo reason: {decoded}"
    assert decoded.domain == "modelroute.internal"
    return decoded


FAMILIES = {
    "anthropic": common_pb2.FAMILY_ANTHROPIC,
    "azure": common_pb2.FAMILY_AZURE,
    "bedrock": common_pb2.FAMILY_BEDROCK,
    "google": common_pb2.FAMILY_GOOGLE,
    "openai": common_pb2.FAMILY_OPENAI,
    "openai-compat": common_pb2.FAMILY_OPENAI_COMPAT,
    "openrouter": common_pb2.FAMILY_OPENROUTER,
    "vercel": common_pb2.FAMILY_VERCEL,
}


def policy(c: bool, u: bool, f: bool) -> common_pb2.CredentialPolicy:
    return common_pb2.CredentialPolicy(
        central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
    )


def provider_request(
    provider_id: str,
    family: str = "openai",
    api_key: str = "sk-test-central",
    **fields: Any,
) -> provider_config_pb2.CreateProviderConfigRequest:
    message = provider_config_pb2.ProviderConfig(family=FAMILIES[family], api_key=api_key, **fields)
    return provider_config_pb2.CreateProviderConfigRequest(provider_config=message, provider_config_id=provider_id)


def create_provider(s: Stubs, provider_id: str, family: str = "openai", **fields: Any) -> Any:
    return s.providers.CreateProviderConfig(provider_request(provider_id, family, **fields))


def model_request(
    model_id: str,
    family: str = "openai",
    providers: tuple[str, ...] | None = None,
    upstream: str = "gpt-4.1",
    context_limit: int = 128_000,
    **fields: Any,
) -> model_config_pb2.CreateModelConfigRequest:
    message = model_config_pb2.ModelConfig(
        family=FAMILIES[family],
        model=upstream,
        context_limit=context_limit,
        provider_configs=[f"providerConfigs/{p}" for p in providers or ()],
        **fields,
    )
    return model_config_pb2.CreateModelConfigRequest(model_config=message, model_config_id=model_id)


def create_model(
    s: Stubs, model_id: str, family: str = "openai", providers: tuple[str, ...] | None = None, **kw: Any
) -> Any:
    return s.models.CreateModelConfig(model_request(model_id, family, providers, **kw))


# ---------------------------------------------------------------- server processes

SERVER_BINARY = Path(sys.executable).parent / "modelroute-server"
ADMIN_BINARY = Path(sys.executable).parent / "modelroute-admin"


def health_status(channel: grpc.Channel, service: str = "") -> int | None:
    """The reported status, or None while the server does not answer yet."""
    try:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        )
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise


def wait_for_health(channel: grpc.Channel, wanted: int, timeout: float, service: str = "") -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = health_status(channel, service)
        if last == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"health of {service!r} stayed {last}, wanted {wanted}")


def wait_until_serving(port: int, process: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    """Returns once the server on `port` says SERVING; fails with `output()` if `process` ends first."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        deadline = time.monotonic() + 120
        while health_status(channel) != health_pb2.HealthCheckResponse.SERVING:
            assert process.poll() is None, output()
            assert time.monotonic() < deadline, "the service never became SERVING"
            time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, as an orchestrator stops a replica; SIGKILL if it has not ended within `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    assert port != 50051
    return port


def server_log(stderr: bytes | str) -> list[dict[str, Any]]:
    """What a `modelroute-server` process wrote to stderr, line by line: every line is one JSON object
    (the service writes nothing else there, the gRPC runtime's own lines included)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"a stderr line of modelroute-server is not JSON: {line[:300]!r}") from None
        assert isinstance(entry, dict), f"a stderr line of modelroute-server is not a JSON object: {line[:300]!r}"
        entries.append(entry)
    return entries


def run_server_command(arguments: list[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
    """`subprocess.run` of a `modelroute-server` command, checking that every stderr line it wrote is JSON."""
    done: subprocess.CompletedProcess[bytes] = subprocess.run(arguments, **options)
    if done.stderr is not None:
        server_log(done.stderr)
    return done


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any modelroute setting, plus `extra`; metrics on any free port
    (servers that tests start side by side would otherwise all want the default one)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MODELROUTE_")}
    env["MODELROUTE_METRICS_LISTEN"] = "127.0.0.1:0"
    env.update(extra)
    return env


class DeploymentKeys:
    """Deployment keys changed under a running replica, as a restart with other environment variables
    would: the replica's snapshot, which prepared every verdict with the old ones, is reloaded."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._keys: dict[Any, str] = app.ctx.deployment_keys

    def __setitem__(self, family: Any, key: str) -> None:
        self._keys[family] = key
        self._app.snapshots.invalidate()

    def __delitem__(self, family: Any) -> None:
        del self._keys[family]
        self._app.snapshots.invalidate()
