"""A private PgBouncer in transaction pooling mode in front of the test PostgreSQL.

It listens on a free loopback port, forwards every database name to the same database upstream
(a `*` entry), trusts its clients, and lives in a temporary directory with its ini, user list and log.
PgBouncer refuses to run as root: as root it is started with `-u USER`, the owner of the upstream's
socket directory (the embedded PostgreSQL's `pgserver` user, the only one who may enter it) or else
the `postgres` system user (or `nobody`), which only needs the upstream's TCP port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from modelroute_server.adapters import database

from .helpers import free_port

# Debian puts it in /usr/sbin, which is not on every user's PATH.
PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer")
DEFAULT_POOL_SIZE = 4
MAX_CLIENT_CONN = 60
START_TIMEOUT_SECONDS = 15.0
# Users PgBouncer may run as, when this process is root and the upstream is reached over TCP.
FALLBACK_SYSTEM_USERS = ("postgres", "nobody")


def pgbouncer_binary() -> str:
    """The installed pgbouncer; a missing one fails the test (CI installs it), it never skips."""
    found = shutil.which("pgbouncer") or next((p for p in PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(
            "pgbouncer is not installed (looked on PATH and in "
            f"{', '.join(PGBOUNCER_PATHS)}); install it with `apt-get install -y pgbouncer` "
            "(.ci/run does so on CI)",
            pytrace=False,
        )
    return found


@dataclass(frozen=True)
class Upstream:
    """Where PgBouncer's server connections go, as libpq actually reached it."""

    host: str  # a host name or address, or a unix socket directory
    port: int
    user: str
    password: str

    @classmethod
    def of(cls, url: str) -> Upstream:
        with psycopg.connect(database.libpq_url(url), connect_timeout=5) as connection:
            info = connection.info
            return cls(info.host, info.port, info.user, info.password)

    @property
    def is_unix_socket(self) -> bool:
        return self.host.startswith("/")


@dataclass(frozen=True)
class Totals:
    """SHOW STATS counters of one database."""

    xacts: int
    queries: int


def _quote(value: str) -> str:
    """An auth_file field: double quotes, inner ones doubled."""
    return '"' + value.replace('"', '""') + '"'


def _system_user(upstream: Upstream) -> str | None:
    """Who pgbouncer runs as (`-u`); None when this process is not root and it simply runs as us."""
    if os.geteuid() != 0:
        return None
    if upstream.is_unix_socket:
        owner = pwd.getpwuid(Path(upstream.host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    for name in FALLBACK_SYSTEM_USERS:
        with suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    pytest.fail(f"no user to run pgbouncer as (it refuses root): none of {FALLBACK_SYSTEM_USERS} exists")


class PgBouncer:
    """One pgbouncer process; `url_for` turns a direct database URL into the same database through it."""

    def __init__(self, upstream_url: str) -> None:
        binary = pgbouncer_binary()
        self.upstream = Upstream.of(upstream_url)
        self.system_user = _system_user(self.upstream)
        self.port = free_port()
        # Not under pytest's base temp: that is private to root, and pgbouncer may run as another user.
        self.directory = Path(tempfile.mkdtemp(prefix="modelroute-pgbouncer-"))
        self.logfile = self.directory / "pgbouncer.log"
        self.ini = self.directory / "pgbouncer.ini"
        self._write_config()
        self._output = (self.directory / "pgbouncer.out").open("wb")
        command = [binary, *(["-u", self.system_user] if self.system_user else []), str(self.ini)]
        self.process = subprocess.Popen(command, stdout=self._output, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _write_config(self) -> None:
        upstream = self.upstream
        server = f"host={upstream.host} port={upstream.port}"
        self.ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {server}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "pool_mode = transaction",
                    "auth_type = trust",
                    f"auth_file = {self.directory / 'userlist.txt'}",
                    f"admin_users = {upstream.user}",
                    f"max_client_conn = {MAX_CLIENT_CONN}",
                    f"default_pool_size = {DEFAULT_POOL_SIZE}",
                    f"logfile = {self.logfile}",
                    "",
                ]
            )
        )
        # With trust, clients send no password; pgbouncer logs into the upstream with this one (if any).
        (self.directory / "userlist.txt").write_text(f"{_quote(upstream.user)} {_quote(upstream.password)}\n")
        self.directory.chmod(0o700)
        if self.system_user is not None:
            entry = pwd.getpwnam(self.system_user)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert self.process.poll() is None, f"pgbouncer exited with {self.process.returncode}:\n{self.log()}"
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError as error:
                assert time.monotonic() < deadline, f"pgbouncer never answered on {self.port}: {error}\n{self.log()}"
                time.sleep(0.1)

    def url_for(self, direct_url: str) -> str:
        """The same database and user, through this pgbouncer (which needs no password from clients)."""
        direct = make_url(database.sqlalchemy_url(direct_url))
        through = direct.set(host="127.0.0.1", port=self.port, password=None, query={})
        return through.render_as_string(hide_password=False)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """A command on the admin console (the `pgbouncer` database; simple query protocol only)."""
        conninfo = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.upstream.user} connect_timeout=5"
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, row_factory=dict_row) as connection:
            return connection.execute(command.encode()).fetchall()

    def _row(self, command: str, dbname: str) -> dict[str, Any] | None:
        return next((row for row in self.admin(command) if row["database"] == dbname), None)

    def totals(self, dbname: str) -> Totals:
        """Transactions and queries carried for `dbname` (zero before its first client)."""
        row = self._row("SHOW STATS", dbname)
        if row is None:
            return Totals(0, 0)
        return Totals(int(row["total_xact_count"]), int(row["total_query_count"]))

    def pool(self, dbname: str) -> dict[str, Any]:
        row = self._row("SHOW POOLS", dbname)
        assert row is not None, f"pgbouncer has no pool for {dbname}"
        return row

    def server_connections(self, dbname: str) -> int:
        """Server connections pgbouncer holds to the upstream `dbname`, in any state."""
        return sum(1 for row in self.admin("SHOW SERVERS") if row["database"] == dbname)

    def log(self) -> str:
        parts = []
        for path in (self.logfile, self.directory / "pgbouncer.out"):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts) or "(pgbouncer wrote no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._output.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running_pgbouncer(upstream_url: str) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(upstream_url)
    try:
        yield bouncer
    finally:
        bouncer.stop()
