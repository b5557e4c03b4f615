"""Server wiring: database, keyring, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelroute.v1 import (
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    provider_config_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
    user_key_pb2,
    user_key_pb2_grpc,
)

from ..adapters import database
from ..adapters.crypto import KEYRING_ENV, KEYRING_FORMAT, Keyring, load_or_create_keyring_file
from ..adapters.notifications import ChangeListener
from ..service_layer.context import ServiceContext
from ..service_layer.resolution import SnapshotStore
from ..settings import Settings, SettingsError
from .decoding import RequestDecoding
from .servicers import ModelConfigServicer, ProviderConfigServicer, ResolverServicer, UserKeyServicer

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    provider_config_pb2.DESCRIPTOR.services_by_name["ProviderConfigService"].full_name,
    model_config_pb2.DESCRIPTOR.services_by_name["ModelConfigService"].full_name,
    user_key_pb2.DESCRIPTOR.services_by_name["UserKeyService"].full_name,
    resolver_pb2.DESCRIPTOR.services_by_name["ResolverService"].full_name,
)
HEALTH_INTERVAL_SECONDS = 2.0


@dataclass
class Application:
    """Everything a running service holds; built once, closed once."""

    settings: Settings
    ctx: ServiceContext
    snapshots: SnapshotStore
    database_url: str
    embedded: database.EmbeddedPostgres | None = None
    listener: ChangeListener | None = None
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.ctx.engine.dispose()
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
        return Keyring.parse(load_or_create_keyring_file(keyring_file))
    raise SettingsError(
        f"no encryption key: set {KEYRING_ENV} to {KEYRING_FORMAT}, for example "
        f"{KEYRING_ENV}=k1:$(python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')"
    )


def build_application(settings: Settings) -> Application:
    keyring = load_keyring(settings)
    url, embedded = database.open_database(settings.database_url, settings.data_dir)
    engine = database.create_engine(url)
    if settings.embedded or settings.migrate:
        database.upgrade(engine)
    ctx = ServiceContext(engine=engine, keyring=keyring, deployment_keys=dict(settings.deployment_keys))
    snapshots = SnapshotStore(ctx)
    ctx.on_commit.append(snapshots.committed)
    app = Application(settings, ctx, snapshots, url, embedded)
    app.listener = ChangeListener(url, snapshots.announced)
    app.listener.start()
    return app


def create_server(app: Application, address: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[RequestDecoding()])
    provider_config_pb2_grpc.add_ProviderConfigServiceServicer_to_server(ProviderConfigServicer(app.ctx), server)
    model_config_pb2_grpc.add_ModelConfigServiceServicer_to_server(ModelConfigServicer(app.ctx), server)
    user_key_pb2_grpc.add_UserKeyServiceServicer_to_server(UserKeyServicer(app.ctx), server)
    resolver_pb2_grpc.add_ResolverServiceServicer_to_server(ResolverServicer(app.ctx, app.snapshots), server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise SettingsError(f"cannot listen on {address}")
    return server, port


def database_ready(engine: sa.Engine) -> bool:
    """The database answers and its schema is the one this build expects."""
    try:
        return database.schema_is_current(engine)
    except sa.exc.SQLAlchemyError:
        return False


async def mark_not_serving(app: Application) -> None:
    """The health servicer starts out SERVING; nothing is served before the first database check."""
    for name in ("", *SERVICE_NAMES):
        await app.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def watch_health(app: Application) -> None:
    """SERVING only while the database answers with a current schema."""
    await mark_not_serving(app)
    last = False
    while True:
        ready = await asyncio.to_thread(database_ready, app.ctx.engine)
        if ready != last:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                await app.health.set(name, status)
            log.info("health changed", extra={"serving": ready})
            last = ready
        await asyncio.sleep(HEALTH_INTERVAL_SECONDS)


async def serve(settings: Settings) -> None:
    app = await asyncio.to_thread(build_application, settings)
    server, port = create_server(app, settings.listen)
    await mark_not_serving(app)
    await server.start()
    watcher = asyncio.create_task(watch_health(app))
    log.info(
        "modelroute listening",
        extra={"address": settings.listen, "port": port, "embedded_database": settings.embedded},
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await app.health.enter_graceful_shutdown()
    await server.stop(grace=5)
    watcher.cancel()
    await asyncio.to_thread(app.close)
