"""Rolling upgrades (docs/operations.md, "Rolling upgrades"): this build serves the previous schema
revision and its own head, side by side with a replica on the other; and a newer schema whose
compatibility record names this build's head is served, one that does not is refused."""

from __future__ import annotations

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.entrypoints.health import ADMIN_SERVICES, SERVING

from ..conftest import PostgresForTests, RunningServer, all_roles_token, build_app, migrated_database, wait_for
from ..helpers import call_error, create_model, create_provider, stubs

# The revision before the head, which this build serves too (health changes logged under older kinds).
PREVIOUS = "0008"
# The head of the build before this one, which 0008 (an expand) names as serving it and 0009 does not.
PREVIOUS_BUILD = "0007"


def test_this_build_serves_its_head_and_the_previous_revision() -> None:
    head = database.head_revision()
    assert head != PREVIOUS
    assert database.served_schema_revisions() == {head, PREVIOUS}


def admin_serving(channel: grpc.Channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=ADMIN_SERVICES[0]), timeout=10)
    return bool(answer.status == SERVING)


def provider_names(channel: grpc.Channel) -> list[str]:
    page = stubs(channel).providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest())
    return [p.name for p in page.provider_configs]


def test_replicas_run_side_by_side_while_the_schema_moves_to_head(postgres: PostgresForTests, keyring: Keyring) -> None:
    url = postgres.create_database()
    engine = database.create_engine(url)
    try:
        database.upgrade(engine, PREVIOUS)
        with engine.connect() as connection:
            assert database.schema_problem(connection) is None
        old = build_app(url, keyring)  # a replica started before the migration
        old.start_listener(retry_seconds=0.2)
        old_server = RunningServer(old, all_roles_token(old))
        try:
            wait_for(lambda: admin_serving(old_server.channel))
            create_provider(stubs(old_server.channel), "before", api_key="sk-rolling-1")
            create_model(stubs(old_server.channel), "m", providers=("before",))

            database.upgrade(engine)  # the migration runs while the replica serves
            assert database.current_revision(engine) == database.head_revision()

            new = build_app(url, keyring)  # a replica of the new schema, beside the old one
            new_server = RunningServer(new, all_roles_token(new))
            try:
                wait_for(lambda: admin_serving(new_server.channel))
                assert admin_serving(old_server.channel)
                # Writes on either are seen by the other (the change log works across the migration).
                create_provider(stubs(old_server.channel), "from-old", api_key="sk-rolling-2")
                create_provider(stubs(new_server.channel), "from-new", api_key="sk-rolling-3")
                expected = ["providerConfigs/before", "providerConfigs/from-new", "providerConfigs/from-old"]
                assert provider_names(old_server.channel) == expected
                assert provider_names(new_server.channel) == expected
                for channel in (old_server.channel, new_server.channel):
                    answer = stubs(channel).resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
                    assert answer.selected.provider_config == "providerConfigs/before"
            finally:
                new_server.stop()
                new.close()
        finally:
            old_server.stop()
            old.close()
    finally:
        engine.dispose()


def _pretend_a_newer_migration(url: str, served_by: list[str]) -> None:
    engine = database.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_from_a_newer_build'")
            connection.execute(
                sa.text("INSERT INTO schema_compatibility (revision, served_by) VALUES (:revision, :served_by)"),
                {"revision": "0099_from_a_newer_build", "served_by": served_by},
            )
    finally:
        engine.dispose()


def schema_problem(url: str) -> str | None:
    engine = database.create_engine(url)
    try:
        with engine.connect() as connection:
            return database.schema_problem(connection)
    finally:
        engine.dispose()


def test_a_newer_expand_only_schema_is_served_when_its_record_names_this_build(postgres: PostgresForTests) -> None:
    url = migrated_database(postgres)
    _pretend_a_newer_migration(url, [database.head_revision(), "0099_from_a_newer_build"])
    assert schema_problem(url) is None


def test_a_newer_schema_that_contracted_past_this_build_is_refused(postgres: PostgresForTests) -> None:
    url = migrated_database(postgres)
    _pretend_a_newer_migration(url, ["0099_from_a_newer_build"])
    problem = schema_problem(url)
    assert problem is not None
    assert "0099_from_a_newer_build" in problem and "cannot serve" in problem
    assert f"--downgrade --to {database.head_revision()}" in problem


def test_the_compatibility_record_goes_down_and_up_again(postgres: PostgresForTests) -> None:
    url = migrated_database(postgres)
    engine = database.create_engine(url)
    try:
        database.downgrade(engine, PREVIOUS)  # no health policy exists: no --allow-data-loss needed
        with engine.connect() as connection:
            assert served_by(connection, database.head_revision()) is None
            # The expand step names the build before this one; this build still serves it.
            assert served_by(connection, PREVIOUS) == [PREVIOUS_BUILD, PREVIOUS]
            assert database.schema_problem(connection) is None
        database.upgrade(engine)
        with engine.connect() as connection:
            # The contract step names this build alone: the build before it cannot read the new kinds.
            assert served_by(connection, database.head_revision()) == [database.head_revision()]
    finally:
        engine.dispose()


def served_by(connection: sa.Connection, revision: str) -> list[str] | None:
    value = connection.execute(
        sa.text("SELECT served_by FROM schema_compatibility WHERE revision = :revision"), {"revision": revision}
    ).scalar()
    return list(value) if value is not None else None


def test_overrides_are_refused_while_a_build_without_them_may_serve(
    postgres: PostgresForTests, keyring: Keyring
) -> None:
    """While the schema's record says a build that predates overrides may serve it, that build would send an
    override's provider config the model's own name: this build refuses overrides then, and only then."""
    url = migrated_database(postgres)
    _pretend_a_newer_migration(url, [database.head_revision(), "0005"])
    app = build_app(url, keyring)
    server = RunningServer(app, all_roles_token(app))
    try:
        s = stubs(server.channel)
        create_provider(s, "openai-main", api_key="sk-rolling-1")
        create_provider(s, "openai-eu", api_key="sk-rolling-2")
        create_model(s, "m", providers=("openai-main",))  # no override: fine
        with_override = model_config_pb2.ModelConfig(
            family=common_pb2.FAMILY_OPENAI,
            model="gpt-4o",
            context_limit=1000,
            attachments=[model_config_pb2.Attachment(provider_config="providerConfigs/openai-eu", model="eu-1")],
        )
        request = model_config_pb2.CreateModelConfigRequest(model_config=with_override, model_config_id="o")
        error = call_error(s.models.CreateModelConfig, request)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCHEMA_UPGRADE_PENDING")
        assert "modelroute-server migrate" in error.message
    finally:
        server.stop()
        app.close()
