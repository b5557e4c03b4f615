"""Shared fixtures: a real PostgreSQL (embedded by default, or MODELROUTE_TEST_DATABASE_URL),
and the real gRPC server on 127.0.0.1:0 talking to it. Nothing is mocked."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from modelroute.credentials import authenticated
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.domain.access import Role
from modelroute_server.entrypoints.health import mark_not_serving, watch_health
from modelroute_server.entrypoints.server import Application, admin_context, create_server, wire_application
from modelroute_server.entrypoints.transport import CertificateFiles
from modelroute_server.service_layer import access_tokens
from modelroute_server.settings import Settings

from .audit_support import Api, make_api
from .helpers import SERVER_BINARY, TEST_CALLER, clean_env, server_log, stop_process, wait_until_serving

TEST_DATABASE_URL_ENV = "MODELROUTE_TEST_DATABASE_URL"


def _admin_url(url: str, dbname: str) -> str:
    return make_url(database.sqlalchemy_url(url)).set(database=dbname).render_as_string(hide_password=False)


class PostgresForTests:
    """Hands out fresh, empty databases on one PostgreSQL server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._admin = sa.create_engine(_admin_url(base_url, "postgres"), isolation_level="AUTOCOMMIT")
        self._created: list[str] = []

    def create_database(self) -> str:
        name = f"modelroute_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return make_url(database.sqlalchemy_url(self.base_url)).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for name in self._created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresForTests]:
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    embedded = None
    if not url:
        embedded = database.EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
        url = embedded.start()
    server = PostgresForTests(url)
    yield server
    server.drop_all()
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring.parse(generate_keyring_spec("test-1"))


def migrated_database(postgres: PostgresForTests) -> str:
    """A new database of its own on the test PostgreSQL, migrated to head; its URL."""
    url = postgres.create_database()
    engine = database.create_engine(url)
    database.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def migrated_url(postgres: PostgresForTests) -> str:
    return migrated_database(postgres)


ALL_ROLES_TOKEN = "tests-all-roles"
_all_roles_secrets: dict[str, str] = {}


def all_roles_token(app: Application) -> str:
    """A token holding every role, created once per database, so every existing test runs authenticated."""
    secret = _all_roles_secrets.get(app.database_url)
    if secret is None:
        created = access_tokens.create_access_token(
            app.ctx, TEST_CALLER, ALL_ROLES_TOKEN, access_tokens.AccessTokenInput(roles=tuple(Role))
        )
        secret = _all_roles_secrets[app.database_url] = created.secret
    app.snapshots.catch_up()  # a replica built before the token existed learns of it now
    return secret


class RunningServer:
    """The real aio server, on its own event loop thread, bound to 127.0.0.1:0.

    `channel` carries `token` (when given); `plain_channel` carries no credentials.
    """

    def __init__(
        self, app: Application, token: str | None = None, certificates: CertificateFiles | None = None
    ) -> None:
        self.app = app
        self._certificates = certificates
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server, self.port = self._call(self._start())
        self.address = f"127.0.0.1:{self.port}"
        self.plain_channel = grpc.insecure_channel(self.address)
        self.channel = authenticated(self.plain_channel, token)

    async def _start(self) -> tuple[grpc.aio.Server, int]:
        server, port = create_server(self.app, "127.0.0.1:0", self._certificates)
        await mark_not_serving(self.app.health)
        await server.start()
        self._health_task = asyncio.ensure_future(
            watch_health(self.app.health, self.app.start_probe(), self.app.resolver_serving)
        )
        return server, port

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.plain_channel.close()

        async def _stop() -> None:
            self._health_task.cancel()
            await self.server.stop(grace=None)

        self._call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def build_app(url: str, keyring: Keyring, settings: Settings | None = None) -> Application:
    """An application on `url` wired as the server wires it (admin reads and writes on their own threads
    and connection pools), without a change listener (tests that need one start it)."""
    settings = settings or Settings(database_url=url)
    engine = database.create_engine(url)
    ctx, work, admin_engines = admin_context(url, keyring, settings)
    return wire_application(settings, engine, ctx, url, listen=False, work=work, admin_engines=admin_engines)


@pytest.fixture(scope="session")
def running_server(migrated_url: str, keyring: Keyring) -> Iterator[RunningServer]:
    app = build_app(migrated_url, keyring)
    server = RunningServer(app, all_roles_token(app))
    yield server
    server.stop()
    app.close()


# Access tokens survive: the session's all-roles token is one of them.
TABLES = (
    "key_rejections",
    "provider_health",
    "user_provider_keys",
    "model_attachments",
    "model_configs",
    "provider_configs",
    "audit_events",
)


@pytest.fixture
def app(running_server: RunningServer) -> Iterator[Application]:
    """The session's application, with an empty configuration and no deployment keys."""
    application = running_server.app
    with application.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)}"))
    application.ctx.deployment_keys.clear()  # type: ignore[attr-defined]
    application.snapshots.invalidate()
    yield application
    application.ctx.deployment_keys.clear()  # type: ignore[attr-defined]


@pytest.fixture
def channel(app: Application, running_server: RunningServer) -> grpc.Channel:
    return running_server.channel


@pytest.fixture
def engine(app: Application) -> sa.Engine:
    return app.engine


class ServerProcesses:
    """`modelroute-server serve` processes a test starts; none outlives the test."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, cwd: Path, listen: str, data_dir: Path, **env: str) -> subprocess.Popen[bytes]:
        """Starts an embedded-mode server and returns once its health service says SERVING."""
        process = subprocess.Popen(
            [str(SERVER_BINARY), "serve", "--data-dir", str(data_dir), "--listen", listen],
            cwd=cwd,
            env=clean_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.started.append(process)
        port = int(listen.rsplit(":", 1)[1])
        wait_until_serving(port, process, lambda: process.stderr.read().decode() if process.stderr else "")
        return process

    def stop_all(self) -> None:
        for process in self.started:
            stop_process(process)
            # Whatever the test did not read itself: every line must be JSON too.
            if process.stderr is not None and not process.stderr.closed:
                server_log(process.stderr.read())


@pytest.fixture
def server_process() -> Iterator[ServerProcesses]:
    processes = ServerProcesses()
    yield processes
    processes.stop_all()


@pytest.fixture
def second_replica(app: Application, keyring: Keyring) -> Iterator[RunningServer]:
    """Another replica on the session's database, listening for the first one's announcements."""
    replica = build_app(app.database_url, keyring)
    listener = replica.start_listener()
    assert listener.connected.wait(10), "the change listener never connected"
    server = RunningServer(replica, all_roles_token(replica))
    yield server
    server.stop()
    replica.close()


@pytest.fixture
def api(channel: grpc.Channel, engine: sa.Engine) -> Api:
    """The audit tests' stubs on the all-roles channel, and the database behind them."""
    return make_api(channel, engine)


@pytest.fixture
def fresh_database_url(postgres: PostgresForTests) -> str:
    """An empty database of its own (for migration tests)."""
    return postgres.create_database()


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# Test keys follow these shapes (sk-..., uk-..., dk-..., az-...), access tokens start mrt_; a failure report
# never shows one.
_KEY_LIKE = re.compile(r"\b(?:(?:sk|uk|dk|az)-[A-Za-z0-9_.-]+|mrt_[A-Za-z0-9]+)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Scrub key-like strings from failure reports and captured output, so no key reaches test output."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.longrepr is not None:
        report.longrepr = _KEY_LIKE.sub("<redacted key>", str(report.longrepr))
    report.sections = [(name, _KEY_LIKE.sub("<redacted key>", content)) for name, content in report.sections]


# ---------------------------------------------------------------- the fault suite's own PostgreSQL


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


class OwnPostgres:
    """An embedded PostgreSQL this test may stop, kill and start again on the same data, kept by a process of
    its own (tests/postgres_keeper.py says why)."""

    def __init__(self, pgdata: Path) -> None:
        self._keeper = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("postgres_keeper.py")), str(pgdata)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self._command("start")

    def _command(self, command: str) -> str:
        assert self._keeper.stdin is not None and self._keeper.stdout is not None
        self._keeper.stdin.write(command + "\n")
        self._keeper.stdin.flush()
        answer = self._keeper.stdout.readline().strip()
        assert answer.startswith("ok"), f"PostgreSQL keeper, {command}: {answer or 'no answer'}"
        return answer[3:]

    def stop(self) -> None:
        self._command("stop")

    def kill(self) -> None:
        """SIGKILL to every PostgreSQL process."""
        self._command("kill")

    def start(self) -> None:
        assert self._command("start") == self.url

    def close(self) -> None:
        self._command("exit")
        self._keeper.wait(timeout=60)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    postgres = OwnPostgres(tmp_path / "pgdata")
    engine = database.create_engine(postgres.url)
    database.upgrade(engine)
    engine.dispose()
    try:
        yield postgres
    finally:
        postgres.close()
