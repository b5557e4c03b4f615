"""Where the contract suite runs, and the credentials it carries.

The test modules beside this file talk to the service only through the `modelroute` client package (and
`grpc` itself); this conftest picks the server:

- `MODELROUTE_CONTRACT_TARGET=host:port` (with `MODELROUTE_CONTRACT_TOKEN`, an admin or all-roles token,
  and optionally `MODELROUTE_CONTRACT_CA_FILE` for TLS): any running deployment. The suite creates configs
  whose ids start with `ct-`, moves the default model, and creates two access tokens it revokes at the end:
  point it at a test deployment.
- `MODELROUTE_CONTRACT_SERVE=/path/to/modelroute-server`: a server started by that entry point
  (`serve`, as `make run` does) on a temporary data directory and a free port, with its embedded token.
- neither: an in-process server on a database of its own.

No test relies on an empty service: every id is unique to the run, and each test reads only what it made.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from modelroute import TLS, Client, ModelrouteError

from ..conftest import PostgresForTests, RunningServer, all_roles_token, build_app, migrated_database
from ..helpers import clean_env, free_port, stop_process, wait_until_serving
from .support import ContractTarget

TARGET_ENV, TOKEN_ENV, CA_FILE_ENV = (
    "MODELROUTE_CONTRACT_TARGET",
    "MODELROUTE_CONTRACT_TOKEN",
    "MODELROUTE_CONTRACT_CA_FILE",
)
SERVE_ENV = "MODELROUTE_CONTRACT_SERVE"
ALL_ROLES = ("admin", "reader", "resolver", "user-keys")


def _prepare(target: ContractTarget, given_token: str) -> None:
    """Tokens of its own (all roles, and reader only) made with the token given, and the first probe."""
    with Client(target.address, 30.0, token=given_token, tls=target.tls) as setup:
        target.token = setup.create_access_token(f"ct-{target.run_id}-all", ALL_ROLES).value.token
        target.reader_token = setup.create_access_token(f"ct-{target.run_id}-reader", ["reader"]).value.token
    with Client(target.address, 30.0, token=target.token, tls=target.tls) as probe:
        # A new token reaches the replica that answers within the propagation bound: wait for it.
        deadline = time.monotonic() + 30
        while True:
            try:
                probe.resolve("", timeout=10)
                break
            except ModelrouteError as error:
                if error.reason == "TOKEN_UNKNOWN" and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                if error.reason == "NO_DEFAULT_MODEL":
                    target.default_probe = error
                break


def _revoke_own_tokens(target: ContractTarget) -> None:
    with Client(target.address, 30.0, token=target.token, tls=target.tls) as cleanup:
        for suffix in ("reader", "all"):  # the all-roles token last: it revokes the other
            # Already revoked by a test, or the service is gone: nothing is left to clean then.
            with contextlib.suppress(ModelrouteError):
                cleanup.revoke_access_token(f"ct-{target.run_id}-{suffix}")


@pytest.fixture(scope="session")
def contract_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContractTarget]:
    if os.environ.get(TARGET_ENV):
        ca_file = os.environ.get(CA_FILE_ENV)
        target = ContractTarget(os.environ[TARGET_ENV], TLS.from_files(ca_file) if ca_file else None, "external")
        _prepare(target, os.environ.get(TOKEN_ENV, ""))
        yield target
        _revoke_own_tokens(target)
        target.close()
    elif os.environ.get(SERVE_ENV):
        yield from _served(Path(os.environ[SERVE_ENV]), tmp_path_factory.mktemp("contract-served"))
    else:
        postgres: PostgresForTests = request.getfixturevalue("postgres")
        app = build_app(migrated_database(postgres), request.getfixturevalue("keyring"))
        server = RunningServer(app)
        target = ContractTarget(server.address, None, "in-process")
        _prepare(target, all_roles_token(app))
        yield target
        target.close()
        server.stop()
        app.close()


def _served(binary: Path, workdir: Path) -> Iterator[ContractTarget]:
    data_dir, port = workdir / "data", free_port()
    log = (workdir / "server.log").open("wb")  # a file, not a pipe: a long run must not fill a pipe buffer
    process = subprocess.Popen(
        [str(binary), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        cwd=workdir,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(port, process, lambda: (workdir / "server.log").read_text()[-4000:])
        target = ContractTarget(f"127.0.0.1:{port}", None, "served")
        _prepare(target, (data_dir / "admin.token").read_text().strip())
        yield target
        target.close()
    finally:
        stop_process(process, timeout=30)
        log.close()


@pytest.fixture(scope="session")
def client(contract_target: ContractTarget) -> Client:
    """The suite's all-roles client."""
    return contract_target.client()


_ids = itertools.count(1)


@pytest.fixture
def new_id(contract_target: ContractTarget) -> Callable[[str], str]:
    """Ids unique to this run (its random id, then one counter for the whole run): `new_id("openai")` ->
    `ct-1a2b3c4d-17-openai`."""

    def make(name: str) -> str:
        return f"ct-{contract_target.run_id}-{next(_ids)}-{name}"[:63].rstrip("-")

    return make


@pytest.fixture(scope="session")
def served_descriptors(contract_target: ContractTarget) -> Callable[[str], descriptor_pb2.FileDescriptorProto]:
    """The file descriptors the server serves through reflection, by file name (with their dependencies)."""
    channel = (
        grpc.secure_channel(contract_target.address, contract_target.tls.channel_credentials())
        if contract_target.tls
        else grpc.insecure_channel(contract_target.address)
    )
    database = ProtoReflectionDescriptorDatabase(channel)

    def served(file_name: str) -> descriptor_pb2.FileDescriptorProto:
        return database.FindFileByName(file_name)

    return served
