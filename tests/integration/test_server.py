"""The server around the services: reflection, health, the CLI, embedded mode and graceful shutdown."""

from __future__ import annotations

import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelroute import ModelrouteClient, ModelrouteError
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.entrypoints.health import ADMIN_SERVICES, RESOLVER_SERVICE
from modelroute_server.entrypoints.server import Application
from modelroute_server.settings import settings_from_env

from ..conftest import PostgresForTests, RunningServer, ServerProcesses, build_app, migrated_database
from ..helpers import (
    ADMIN_BINARY,
    SERVER_BINARY,
    clean_env,
    decode,
    free_port,
    health_status,
    run_server_command,
    wait_for_health,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODELROUTE_SERVICES = {
    "modelroute.v1.ProviderConfigService",
    "modelroute.v1.ModelConfigService",
    "modelroute.v1.UserKeyService",
    "modelroute.v1.ResolverService",
}


# ---------------------------------------------------------------- helpers


def list_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return {service.name for response in responses for service in response.list_services_response.service}


# ---------------------------------------------------------------- reflection and health (in-process server)


def test_reflection_lists_every_service(running_server: RunningServer) -> None:
    services = list_services(running_server.channel)
    assert services >= MODELROUTE_SERVICES
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services


def test_reflection_serves_the_provider_config_descriptor(running_server: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running_server.channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="modelroute.v1.ProviderConfigService")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert response.WhichOneof("message_response") == "file_descriptor_response"
    names = set()
    for serialized in response.file_descriptor_response.file_descriptor_proto:
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        names.add(file_proto.name)
        if file_proto.name == "modelroute/v1/provider_config.proto":
            methods = {m.name for s in file_proto.service for m in s.method}
            assert methods == {
                "CreateProviderConfig",
                "GetProviderConfig",
                "ListProviderConfigs",
                "UpdateProviderConfig",
                "DeleteProviderConfig",
                "ResetProviderHealth",
            }
    assert "modelroute/v1/provider_config.proto" in names


def test_health_is_serving_for_the_server_and_every_service(running_server: RunningServer) -> None:
    for service in ("", *MODELROUTE_SERVICES):
        wait_for_health(running_server.channel, SERVING, timeout=10, service=service)


def test_nothing_is_served_until_the_snapshot_loads(postgres: PostgresForTests, keyring: Keyring) -> None:
    url = postgres.create_database()
    built: list[Application] = []
    # The database answers, but has no schema yet: the load is retried, and no port opens meanwhile.
    loading = threading.Thread(target=lambda: built.append(build_app(url, keyring)), daemon=True)
    loading.start()
    loading.join(1.5)
    assert not built and loading.is_alive()
    engine = database.create_engine(url)
    database.upgrade(engine)
    engine.dispose()
    loading.join(30)
    (app,) = built
    server = RunningServer(app)
    try:
        for service in ("", *MODELROUTE_SERVICES):
            wait_for_health(server.channel, SERVING, timeout=10, service=service)
        # A schema this build does not serve turns the administration services to NOT_SERVING; the
        # resolver (and the overall name that follows it) still answers from its snapshot.
        database.downgrade(app.engine, "0001")
        for service in ADMIN_SERVICES:
            wait_for_health(server.channel, NOT_SERVING, timeout=10, service=service)
        assert health_status(server.channel, RESOLVER_SERVICE) == SERVING
        assert health_status(server.channel) == SERVING
    finally:
        server.stop()
        app.close()


def test_unknown_health_service_is_not_found(running_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(running_server.channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        # provider_config_id (field 2) holding bytes that are not UTF-8
        ("/modelroute.v1.ProviderConfigService/CreateProviderConfig", bytes([0x12, 0x02, 0xFF, 0xFE])),
        # a length prefix promising more bytes than follow
        ("/modelroute.v1.ProviderConfigService/GetProviderConfig", bytes([0x0A, 0x05]) + b"ab"),
        ("/modelroute.v1.ResolverService/ResolveModel", bytes([0x0A, 0x01, 0x80])),
        ("/modelroute.v1.ModelConfigService/ListModelConfigs", bytes([0xFF, 0xFF, 0xFF])),
    ],
)
def test_an_undecodable_request_is_invalid_argument_not_unknown(
    running_server: RunningServer, method: str, payload: bytes
) -> None:
    call = running_server.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(payload, timeout=10)
    error = decode(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    assert error.fields == ["request"]
    assert method in error.message
    # The server is unharmed: a well-formed call right after works.
    wait_for_health(running_server.channel, SERVING, timeout=10)


def test_the_default_listen_address_is_loopback() -> None:
    settings = settings_from_env({})
    assert settings.listen.startswith("127.0.0.1:")
    assert settings.embedded


# ---------------------------------------------------------------- the CLI


def _serve_once(url: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`serve` on `url`, run until it exits (every caller expects a refusal); a fresh keyring unless `env`
    sets MODELROUTE_KEYRING (empty: none)."""
    return run_server_command(
        [str(SERVER_BINARY), "serve", "--listen", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=clean_env(MODELROUTE_DATABASE_URL=url, **{"MODELROUTE_KEYRING": generate_keyring_spec(), **env}),
        capture_output=True,
        timeout=120,
        check=False,
    )


UNREACHABLE = "postgresql://modelroute@127.0.0.1:1/modelroute"


def test_serve_without_a_keyring_refuses_to_start_and_says_what_to_set(tmp_path: Path) -> None:
    started = time.monotonic()
    done = _serve_once(UNREACHABLE, tmp_path, MODELROUTE_KEYRING="")
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    stderr = done.stderr.decode()
    assert "MODELROUTE_KEYRING" in stderr
    assert "KEY_ID:BASE64_32_BYTES" in stderr
    # Nothing was created: no embedded database, no generated key.
    assert list(tmp_path.iterdir()) == []


def test_serve_with_a_malformed_keyring_refuses_to_start(tmp_path: Path) -> None:
    done = _serve_once(UNREACHABLE, tmp_path, MODELROUTE_KEYRING="k1")
    assert done.returncode != 0
    assert "MODELROUTE_KEYRING" in done.stderr.decode()


def test_generate_key_prints_a_usable_keyring_entry() -> None:
    done = run_server_command(
        [str(SERVER_BINARY), "generate-key"], env=clean_env(), capture_output=True, timeout=60, check=True
    )
    keyring = Keyring.parse(done.stdout.decode().strip())
    assert len(keyring.key_ids) == 1


def test_the_migrate_command_upgrades_and_downgrades(fresh_database_url: str, tmp_path: Path) -> None:
    engine = database.create_engine(fresh_database_url)
    try:
        for arguments, expected in (
            (["migrate"], database.head_revision()),
            (["migrate", "--downgrade", "--to", "0001"], "0001"),
            (["migrate", "--to", "head"], database.head_revision()),
            (["migrate", "--downgrade", "--to", "base"], None),
        ):
            done = run_server_command(
                [str(SERVER_BINARY), *arguments],
                cwd=tmp_path,
                env=clean_env(MODELROUTE_DATABASE_URL=fresh_database_url),
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            assert database.current_revision(engine) == expected, arguments
    finally:
        engine.dispose()
    # A real database URL never starts an embedded one.
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- embedded mode end to end


def test_embedded_mode_end_to_end_with_graceful_shutdown(tmp_path: Path, server_process: ServerProcesses) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    process = server_process.start(
        tmp_path, f"127.0.0.1:{port}", data_dir, MODELROUTE_DEPLOYMENT_KEY_OPENAI="dk-from-the-environment"
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        keyring_file = data_dir / "keyring"
        assert keyring_file.is_file()
        assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
        assert Keyring.parse(keyring_file.read_text().strip()).primary_key_id
        assert (data_dir / "pgdata").is_dir()
        assert list_services(channel) >= MODELROUTE_SERVICES
        # One token per role, readable by the owner only.
        tokens = {role: data_dir / f"{role}.token" for role in ("admin", "reader", "resolver", "user-keys")}
        for path in tokens.values():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.read_text().startswith("mrt_")
        admin_token, resolver_token = tokens["admin"].read_text().strip(), tokens["resolver"].read_text().strip()

        # The README's example: create and read a provider config through the client package.
        with ModelrouteClient(channel, token=admin_token) as client:
            created = client.create_provider_config(
                "openai-main",
                provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-embedded"),
            ).value
            got = client.get_provider_config("openai-main")
        assert (got.name, got.has_api_key, got.api_key) == ("providerConfigs/openai-main", True, "")
        assert got == created

        # The admin CLI finds the token of the role each command needs in the data directory.
        listed = subprocess.run(
            [str(ADMIN_BINARY), "--target", f"127.0.0.1:{port}", "providers", "list"],
            cwd=tmp_path,
            env=clean_env(MODELROUTE_DATA_DIR=str(data_dir)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr.decode()[-2000:]
        assert "openai-main" in listed.stdout.decode().splitlines()[-1]  # the table's one row

        # The deployment key from the environment serves a keyless config of its family.
        with ModelrouteClient(channel, token=admin_token) as client:
            keyless = client.create_provider_config(
                "openai-env", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI)
            ).value
            assert (keyless.has_api_key, keyless.central_credential_source) == (False, common_pb2.KEY_SOURCE_DEPLOYMENT)
            client.create_model_config(
                "env-model",
                model_config_pb2.ModelConfig(
                    family=common_pb2.FAMILY_OPENAI, model="gpt", context_limit=10, provider_configs=[keyless.name]
                ),
            )
            # Only the resolver role is ever handed a secret.
            with pytest.raises(ModelrouteError) as denied:
                client.resolve("env-model")
            assert (denied.value.code, denied.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
        with ModelrouteClient(channel, token=resolver_token) as client:
            answer = client.resolve("env-model")
        assert answer.selected.key_source == common_pb2.KEY_SOURCE_DEPLOYMENT
        if answer.selected.api_key != "dk-from-the-environment":
            raise AssertionError("the deployment key from the environment was not handed out")
    finally:
        channel.close()

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        returncode = process.wait(timeout=15)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the service did not stop within 15 s of SIGTERM") from exc
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert returncode == 0, stderr[-2000:]
    assert time.monotonic() - started < 15
    assert "shutting down" in stderr
    assert f"wrote access tokens (one per role) to {data_dir}/" in stderr
    # No token secret reaches the log.
    assert admin_token not in stderr and resolver_token not in stderr
    # The embedded PostgreSQL was stopped with it.
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    # The logs are structured and never carry the key.
    assert "sk-embedded" not in stderr

    # Restarting without the keyring file would make every stored key unreadable: refused.
    keyring_file.rename(tmp_path / "keyring.saved")
    done = run_server_command(
        [str(SERVER_BINARY), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "keyring is missing" in done.stderr.decode() and "MODELROUTE_KEYRING" in done.stderr.decode()
    assert not keyring_file.exists()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MODELROUTE_DATABASE_URL", "mysql://x", "MODELROUTE_DATABASE_URL must be a PostgreSQL URL"),
        ("MODELROUTE_LOG_LEVEL", "verbose", "MODELROUTE_LOG_LEVEL must be one of"),
        ("MODELROUTE_DEPLOYMENT_KEY_MISTRAL", "k", "names no family"),
        ("MODELROUTE_METRICS_LISTEN", "everywhere", "MODELROUTE_METRICS_LISTEN must be HOST:PORT"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, variable: str, value: str, says: str) -> None:
    done = run_server_command(
        [str(SERVER_BINARY), "serve", "--listen", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=clean_env(**{variable: value}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert says in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


def test_serve_refuses_a_database_without_the_schema_in_one_line(postgres: PostgresForTests, tmp_path: Path) -> None:
    done = _serve_once(postgres.create_database(), tmp_path)
    assert done.returncode != 0
    (line,) = done.stderr.decode().splitlines()  # one line, and no "listening" before it
    assert "no modelroute schema" in line and "modelroute-server migrate" in line and "--migrate" in line


def test_serve_refuses_a_schema_newer_than_it_serves(postgres: PostgresForTests, tmp_path: Path) -> None:
    url = migrated_database(postgres)
    engine = database.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    finally:
        engine.dispose()
    done = _serve_once(url, tmp_path)
    assert done.returncode != 0
    (line,) = done.stderr.decode().splitlines()
    assert "9999_from_the_future" in line and "newer build" in line
    assert f"--downgrade --to {database.head_revision()}" in line


def test_serve_refuses_an_older_schema_naming_the_migration(postgres: PostgresForTests, tmp_path: Path) -> None:
    url = postgres.create_database()
    engine = database.create_engine(url)
    try:
        database.upgrade(engine, "0001")
    finally:
        engine.dispose()
    done = _serve_once(url, tmp_path)
    assert done.returncode != 0
    (line,) = done.stderr.decode().splitlines()
    assert "revision 0001" in line and "older" in line and "modelroute-server migrate" in line
