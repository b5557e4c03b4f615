"""Server wiring: database, keyring, access tokens, servicers, authorization, transport, health, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelroute.v1 import (
    access_token_pb2_grpc,
    audit_pb2_grpc,
    error_reason_pb2,  # noqa: F401  no service imports it; loaded so that reflection serves the enum too
    model_config_pb2_grpc,
    provider_config_pb2_grpc,
    resolver_pb2_grpc,
    user_key_pb2_grpc,
)

from ..adapters import database
from ..adapters.change_source import PostgresChangeSource
from ..adapters.crypto import KEYRING_ENV, KEYRING_FORMAT, Keyring, load_or_create_keyring_file
from ..adapters.notifications import ChangeListener
from ..adapters.repositories import DEFAULT_WRITE_TIMEOUTS, UnitOfWork, WriteTimeouts
from ..domain.families import Family
from ..service_layer.access_tokens import AccessTokenCache
from ..service_layer.context import ServiceContext
from ..service_layer.snapshot import SnapshotStore, configuration_stale
from ..settings import Settings, SettingsError, private_file_problem
from . import transport
from .authorization import Authenticator, Authorization
from .bootstrap import ensure_role_tokens
from .decoding import RequestDecoding
from .executors import AdminWork, CallBound, database_executor
from .health import ADMIN_SERVICES, RESOLVER_SERVICE, DatabaseProbe, mark_not_serving, watch_health
from .metrics import Metrics, NamedPool, serve_metrics
from .servicers import (
    AccessTokenServicer,
    AuditServicer,
    ModelConfigServicer,
    ProviderConfigServicer,
    ResolverServicer,
    UserKeyServicer,
)

log = logging.getLogger(__name__)

SWITCH_INTERVAL_SECONDS = 0.00005
# Every modelroute service, as reflection lists them (health reports each by name too).
SERVICE_NAMES = (RESOLVER_SERVICE, *ADMIN_SERVICES)


@dataclass
class Application:
    """Everything a running service holds; built once, closed once."""

    settings: Settings
    engine: sa.Engine
    ctx: ServiceContext
    snapshots: SnapshotStore
    tokens: AccessTokenCache
    database_url: str
    embedded: database.EmbeddedPostgres | None = None
    listener: ChangeListener | None = None
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    probe: DatabaseProbe | None = None
    work: AdminWork = field(default_factory=AdminWork)
    # The admin reads' and writes' own connection pools (closed with the application).
    admin_engines: tuple[sa.Engine, ...] = ()
    metrics: Metrics = field(default_factory=Metrics)
    # The resolver's bound on calls waiting for a revision (set when the server is created).
    resolution_bound: CallBound | None = None

    def __post_init__(self) -> None:
        self.metrics.watch(self)

    def call_bounds(self) -> list[CallBound]:
        bounds = [self.work.reads.bound, self.work.writes.bound, self.work.reports.bound]
        return bounds if self.resolution_bound is None else [self.resolution_bound, *bounds]

    def named_pools(self) -> list[NamedPool]:
        """Every connection pool, named for the metrics: the snapshot's, then the admin reads' and writes'."""
        names = ("admin_reads", "writes")
        return [NamedPool("snapshot", self.engine)] + [
            NamedPool(name, engine) for name, engine in zip(names, self.admin_engines, strict=False)
        ]

    def resolver_serving(self) -> bool:
        """False only when MODELROUTE_MAX_SNAPSHOT_AGE is set and this replica has been cut off for longer."""
        return configuration_stale(self.snapshots.seconds_cut_off(), self.settings.max_snapshot_age) is None

    def start_probe(self) -> DatabaseProbe:
        self.probe = DatabaseProbe(self.database_url)
        return self.probe

    def start_listener(self, retry_seconds: float = 1.0) -> ChangeListener:
        """Every replica's announcements wake the snapshot's applier (which reads the change log)."""
        self.listener = ChangeListener(
            self.settings.listen_database_url or self.database_url, self.snapshots.changed, retry_seconds
        )
        self.listener.start()
        return self.listener

    def close(self) -> None:
        self.snapshots.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.probe is not None:
            self.probe.close()
        self.work.shutdown()
        for engine in self.admin_engines:
            engine.dispose()
        self.engine.dispose()
        if self.embedded is not None:
            self.embedded.stop()


def load_keyring(settings: Settings) -> Keyring:
    if settings.keyring:
        return Keyring.parse(settings.keyring)
    if settings.embedded:
        keyring_file = settings.data_dir / "keyring"
        if not keyring_file.exists() and (settings.data_dir / "pgdata" / "PG_VERSION").exists():
            # A new keyring would make every stored key undecryptable: refuse instead.
            raise SettingsError(
                f"{keyring_file} is missing but {settings.data_dir / 'pgdata'} holds data encrypted under it; "
                f"restore the file or set {KEYRING_ENV}"
            )
        if keyring_file.exists():
            problem = private_file_problem(keyring_file)
            if problem:
                raise SettingsError(f"the keyring file {problem}")
        return Keyring.parse(load_or_create_keyring_file(keyring_file))
    raise SettingsError(
        f"no encryption key: set {KEYRING_ENV} to {KEYRING_FORMAT}, for example "
        f"{KEYRING_ENV}=k1:$(python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')"
    )


def sql_context(
    engine: sa.Engine,
    keyring: Keyring,
    deployment_keys: Mapping[Family, str] | None = None,
    *,
    read_engine: sa.Engine | None = None,
    write_timeouts: WriteTimeouts = DEFAULT_WRITE_TIMEOUTS,
) -> ServiceContext:
    """The use cases on PostgreSQL: writes on `engine`, reads on `read_engine` (default: the same)."""
    reads = read_engine or engine

    def unit_of_work(read_only: bool = False) -> UnitOfWork:
        if read_only:
            return UnitOfWork(reads, keyring, read_only=True)
        return UnitOfWork(engine, keyring, write_timeouts=write_timeouts)

    return ServiceContext(keyring, unit_of_work, dict(deployment_keys or {}))


def wire_application(
    settings: Settings,
    engine: sa.Engine,
    ctx: ServiceContext,
    url: str,
    embedded: database.EmbeddedPostgres | None = None,
    *,
    listen: bool = True,
    stopping: threading.Event | None = None,
    work: AdminWork | None = None,
    admin_engines: tuple[sa.Engine, ...] = (),
) -> Application:
    """The snapshot (with the access tokens) every call reads, loaded before anything is served, and kept
    current by this replica's commits and every replica's announcements.

    The listener starts first, so that a change committed during the load is caught up at once.
    """
    tokens = AccessTokenCache()
    snapshots = SnapshotStore(
        PostgresChangeSource(engine, ctx.keyring),
        ctx.deployment_keys,
        tokens,
        log_retention=settings.change_log_retention,
        keyring=ctx.keyring,
    )
    ctx.health_policy = settings.health_policy
    ctx.on_commit.append(snapshots.committed)
    app = Application(
        settings,
        engine,
        ctx,
        snapshots,
        tokens,
        url,
        embedded,
        work=work or AdminWork(),
        admin_engines=admin_engines,
        metrics=Metrics(settings.access_log),
    )
    if listen:
        app.start_listener()
    try:
        snapshots.load_before_serving(stopping)
    except BaseException:
        app.close()
        raise
    snapshots.start()
    return app


def build_application(settings: Settings, stopping: threading.Event | None = None) -> Application:
    keyring = load_keyring(settings)
    url, embedded = database.open_database(settings.database_url, settings.data_dir)
    engine = database.create_engine(url)
    if settings.embedded or settings.migrate:
        database.upgrade(engine)
    else:
        check_schema_served(engine, stopping)
    ctx, work, admin_engines = admin_context(url, keyring, settings)
    if settings.embedded:
        announce_token_files(settings, ensure_role_tokens(ctx, settings.data_dir))
    return wire_application(
        settings, engine, ctx, url, embedded, stopping=stopping, work=work, admin_engines=admin_engines
    )


def check_schema_served(engine: sa.Engine, stopping: threading.Event | None = None, *, wait: bool = True) -> None:
    """Waits (with backoff, logged) for the database to answer, then refuses to start, in one line saying what
    to do, when its schema is not one this build serves: never a server answering every call INTERNAL.
    `wait=False` (a one-off command): a database that does not answer is refused at once too."""
    delay = 0.5
    while True:
        try:
            with engine.connect() as connection:
                problem = database.schema_problem(connection)
            break
        except sa.exc.OperationalError as exc:
            if not wait:
                raise SettingsError(f"the database does not answer ({type(exc).__name__})") from None
            log.warning("the database does not answer yet (%s); retrying in %.1f s", type(exc).__name__, delay)
            if stopping is not None and stopping.wait(delay):
                raise SettingsError("stopped before the database answered") from None
            if stopping is None:
                time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if problem is not None:
        engine.dispose()
        raise SettingsError(problem)


def admin_context(
    url: str, keyring: Keyring, settings: Settings
) -> tuple[ServiceContext, AdminWork, tuple[sa.Engine, ...]]:
    """The use cases as the servicers run them: reads and writes each on worker threads of their own,
    over a connection pool of their own with a connection for every thread, so that neither class ever
    waits for the other's connections."""
    work = AdminWork()
    # No ping before each use: the unit of work replaces a connection the server dropped by itself.
    reads = database.create_engine(url, pool_size=work.reads.workers, max_overflow=0, pool_pre_ping=False)
    writes = database.create_engine(url, pool_size=work.writes.workers, max_overflow=0, pool_pre_ping=False)
    timeouts = WriteTimeouts(settings.write_lock_timeout, settings.write_statement_timeout)
    ctx = sql_context(writes, keyring, settings.deployment_keys, read_engine=reads, write_timeouts=timeouts)
    return ctx, work, (reads, writes)


def announce_token_files(settings: Settings, written: list[Path]) -> None:
    """Says where the embedded tokens are, so the quick start needs no other step."""
    files = sorted(str(p) for p in settings.data_dir.glob("*.token"))
    message = "embedded access tokens"
    if written:
        message = (
            f"wrote access tokens (one per role) to {settings.data_dir}/"
            "{admin,reader,resolver,user-keys}.token; modelroute-admin finds them there"
        )
    log.info(message, extra={"token_files": files, "written": [str(p) for p in written]})


def create_server(
    app: Application,
    address: str,
    certificates: transport.CertificateFiles | None = None,
    *,
    authorization: bool = True,
) -> tuple[grpc.aio.Server, int]:
    """The server with every service; `authorization=False` exists for the benchmark that measures its cost."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if authorization:
        authenticator = Authenticator(app.tokens, app.settings.client_identity_roles)
        interceptors.append(Authorization(authenticator, app.metrics))
    interceptors.append(RequestDecoding(app.metrics))
    server = grpc.aio.server(interceptors=interceptors, options=transport.SERVER_OPTIONS)
    provider_configs = ProviderConfigServicer(app.ctx, app.work)
    provider_config_pb2_grpc.add_ProviderConfigServiceServicer_to_server(provider_configs, server)
    model_config_pb2_grpc.add_ModelConfigServiceServicer_to_server(ModelConfigServicer(app.ctx, app.work), server)
    user_key_pb2_grpc.add_UserKeyServiceServicer_to_server(UserKeyServicer(app.ctx, app.work), server)
    resolver = ResolverServicer(
        app.ctx, app.snapshots, app.settings.kept_answers, app.settings.max_snapshot_age, app.metrics, app.work
    )
    app.resolution_bound = resolver.waiting
    resolver_pb2_grpc.add_ResolverServiceServicer_to_server(resolver, server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(app.ctx, app.work), server)
    access_token_pb2_grpc.add_AccessTokenServiceServicer_to_server(AccessTokenServicer(app.ctx, app.work), server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server, transport.bind(server, address, certificates)


def check_before_start(settings: Settings) -> transport.CertificateFiles | None:
    """Everything that can refuse a start, checked before anything is started: one clear line each."""
    transport.check_plaintext_allowed(settings)
    certificates = transport.certificate_files(settings)
    if certificates is not None:
        transport.ReloadingCertificates(certificates)  # reads and checks them
    transport.check_port_free(settings.listen)
    if settings.metrics_listen is not None:
        transport.check_port_free(settings.metrics_listen)
    return certificates


async def serve(settings: Settings) -> None:
    certificates = check_before_start(settings)
    stopping = asyncio.Event()
    stop_loading = threading.Event()  # the load retries until the database answers, or until told to stop
    loop = asyncio.get_running_loop()

    def stop() -> None:
        stopping.set()
        stop_loading.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    # Every `asyncio.to_thread` (all database work) runs below the event loop's priority.
    loop.set_default_executor(database_executor())
    # Worker threads build and encode admin answers and apply attempt reports in Python, holding the
    # interpreter lock; the event loop takes it back only when the holder's switch interval ends. At the
    # default 5 ms, each step of a resolution or of a refusal could wait that long behind a busy admin read;
    # at 0.05 ms a steady flow of attempt report batches raises ResolveModel's p99 less than at 0.2 ms
    # (bench_health.py), and the admin flood of bench_overload.py stays within its bound. The interval costs
    # nothing while one thread alone runs.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    # The port was found free; it opens only once the snapshot is loaded.
    app = await asyncio.to_thread(build_application, settings, stop_loading)
    # The loaded snapshot is millions of long-lived objects: leave them out of the collector's full passes,
    # which would otherwise hold the interpreter for a large fraction of a second every so often. (No
    # collection first: the load makes next to no cyclic garbage, and a pass over it costs 0.3 s.)
    gc.freeze()
    try:
        server, port = create_server(app, settings.listen, certificates)
    except SettingsError:
        await asyncio.to_thread(app.close)
        raise
    stop_metrics = None
    if settings.metrics_listen is not None:
        try:
            metrics_port, stop_metrics = serve_metrics(app.metrics, settings.metrics_listen)
        except OSError as exc:
            await asyncio.to_thread(app.close)
            raise SettingsError(f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}") from None
        log.info("metrics listening", extra={"address": settings.metrics_listen, "port": metrics_port})
    await mark_not_serving(app.health)
    await server.start()
    watcher = asyncio.create_task(watch_health(app.health, app.start_probe(), app.resolver_serving))
    log.info(
        "modelroute listening",
        extra={
            "address": settings.listen,
            "port": port,
            "embedded_database": settings.embedded,
            "tls": "mutual" if settings.tls_client_ca_file else ("server" if settings.tls else "off"),
        },
    )
    await stopping.wait()
    log.info("shutting down")
    await app.health.enter_graceful_shutdown()
    await server.stop(grace=5)
    watcher.cancel()
    if stop_metrics is not None:
        await asyncio.to_thread(stop_metrics)
    await asyncio.to_thread(app.close)
