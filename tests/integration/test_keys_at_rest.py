"""Keys at rest in the database: bound to their row and its incarnation, readable across a key rotation and
across the upgrade that introduced incarnations.

Keys here are dummies; assertions never render one.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from modelroute.v1 import model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import (
    Keyring,
    SealedKey,
    generate_keyring_spec,
    provider_key_binding,
    user_key_binding,
)
from modelroute_server.adapters.key_rotation import rotate_keys
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.server import Application, sql_context
from modelroute_server.service_layer import provider_configs
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.inputs import ProviderConfigInput

from ..conftest import RunningServer, all_roles_token, build_app
from ..helpers import TEST_CALLER, call_error, create_model, create_provider, policy, stubs


def stored_secret(ctx: ServiceContext, provider_id: str) -> str | None:
    with ctx.read() as uow:
        config = uow.providers.get(provider_id)
    assert config is not None and config.api_key is not None
    return config.api_key.secret


def key_columns(engine: sa.Engine, table: str, where: str) -> sa.Row[tuple[bytes, str, bytes | None]]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT api_key_ciphertext, api_key_key_id, key_incarnation FROM {table} WHERE {where}")
        ).one()


def write_back(engine: sa.Engine, table: str, where: str, saved: sa.Row[tuple[bytes, str, bytes | None]]) -> None:
    """What a careless restore or backfill does: put saved key columns back onto a row (not its incarnation)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {table} SET api_key_ciphertext = :c, api_key_key_id = :k WHERE {where}"),
            {"c": saved[0], "k": saved[1]},
        )


def test_repository_reads_a_moved_ciphertext_as_undecryptable(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-a-row")
    create_provider(s, "b", api_key="sk-b-row")
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE provider_configs SET (api_key_ciphertext, api_key_key_id) = "
                "(SELECT api_key_ciphertext, api_key_key_id FROM provider_configs WHERE id = 'a') WHERE id = 'b'"
            )
        )
    assert stored_secret(app.ctx, "a") == "sk-a-row"
    with app.ctx.read() as uow:
        moved = uow.providers.get("b")
    assert moved is not None and moved.api_key is not None
    assert moved.api_key.undecryptable
    # An undecryptable key still counts as stored for the admin, but is not a usable credential.
    assert moved.has_api_key
    got = s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name="providerConfigs/b"))
    assert (got.has_api_key, got.central_credential_usable, got.api_key) == (True, False, "")


def test_repository_reads_old_keys_after_rotation_and_writes_under_the_new_primary(engine: sa.Engine) -> None:
    old_spec = generate_keyring_spec("rotated-1")
    old_ctx = sql_context(engine, Keyring.parse(old_spec))
    provider_configs.create_provider_config(
        old_ctx, TEST_CALLER, "before", ProviderConfigInput(family=Family.OPENAI, api_key="sk-before")
    )
    rotated = Keyring.parse(f"{generate_keyring_spec('rotated-2')},{old_spec}")
    new_ctx = sql_context(engine, rotated)
    assert stored_secret(new_ctx, "before") == "sk-before"
    provider_configs.create_provider_config(
        new_ctx, TEST_CALLER, "after", ProviderConfigInput(family=Family.OPENAI, api_key="sk-after")
    )
    assert stored_secret(new_ctx, "after") == "sk-after"
    with engine.connect() as conn:
        key_ids = dict(conn.execute(sa.text("SELECT id, api_key_key_id FROM provider_configs")).all())
    assert key_ids == {"before": "rotated-1", "after": "rotated-2"}
    # The old keyring alone cannot read what the new primary sealed.
    assert stored_secret(old_ctx, "after") is None


def test_a_recreated_provider_does_not_accept_its_predecessors_ciphertext(
    app: Application, channel: grpc.Channel
) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-predecessor")
    create_model(s, "m", providers=("p",))
    saved = key_columns(app.engine, "provider_configs", "id = 'p'")
    s.providers.DeleteProviderConfig(
        provider_config_pb2.DeleteProviderConfigRequest(name="providerConfigs/p", force=True)
    )
    create_provider(s, "p", api_key="sk-successor")
    # The model lost its only attachment with the forced delete; back with the new provider.
    s.models.UndeleteModelConfig(model_config_pb2.UndeleteModelConfigRequest(name="modelConfigs/m"))
    assert s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")).selected.api_key == "sk-successor"

    write_back(app.engine, "provider_configs", "id = 'p'", saved)
    app.snapshots.invalidate()
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m"))
    assert error.reason == "NO_USABLE_ATTACHMENT"
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("KEY_UNDECRYPTABLE", "providerConfigs/p")
    ]
    # Nor onto the same row after its key changed.
    create_provider(s, "q", api_key="sk-q-first")
    first = key_columns(app.engine, "provider_configs", "id = 'q'")
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/q", api_key="sk-q-second")
        )
    )
    write_back(app.engine, "provider_configs", "id = 'q'", first)
    assert stored_secret(app.ctx, "q") is None


def test_a_recreated_user_key_row_does_not_accept_a_saved_ciphertext(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "byok", api_key="sk-central", credential_policy=policy(True, True, True))
    create_model(s, "m", providers=("byok",))
    set_key = user_key_pb2.SetUserProviderKeyRequest(user="alice", provider_config="providerConfigs/byok")
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(
            user="alice", provider_config="providerConfigs/byok", api_key="uk-alice-first"
        )
    )
    saved = key_columns(app.engine, "user_provider_keys", "user_id = 'alice'")
    s.user_keys.DeleteUserProviderKey(
        user_key_pb2.DeleteUserProviderKeyRequest(user="alice", provider_config=set_key.provider_config)
    )
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(
            user="alice", provider_config="providerConfigs/byok", api_key="uk-alice-second"
        )
    )
    write_back(app.engine, "user_provider_keys", "user_id = 'alice'", saved)
    app.snapshots.invalidate()
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="alice"))
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("KEY_UNDECRYPTABLE", "providerConfigs/byok")
    ]
    with app.ctx.read() as uow:
        assert uow.user_keys.for_user("alice")["byok"].undecryptable


@pytest.fixture
def database_at_0002(fresh_database_url: str) -> Iterator[sa.Engine]:
    engine = database.create_engine(fresh_database_url)
    database.upgrade(engine, "0002")
    yield engine
    engine.dispose()


def test_keys_stored_before_the_upgrade_resolve_after_it_and_after_rotate_keys(
    database_at_0002: sa.Engine, fresh_database_url: str, keyring: Keyring
) -> None:
    engine = database_at_0002
    central = keyring.seal("sk-stored-before", provider_key_binding("legacy", None))
    user = keyring.seal("uk-stored-before", user_key_binding("alice", "legacy", None))
    with engine.begin() as conn:  # as the previous build wrote them: the row-only binding
        conn.execute(
            sa.text(
                "INSERT INTO provider_configs (id, family, display_name, enabled, central_api_key_enabled, "
                "allow_user_api_key, allow_central_api_key_fallback, api_key_ciphertext, api_key_key_id, revision) "
                "VALUES ('legacy', 'openai', 'Legacy', true, true, true, true, :c, :k, 1)"
            ),
            {"c": central.ciphertext, "k": central.key_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO user_provider_keys (user_id, provider_config_id, api_key_ciphertext, api_key_key_id) "
                "VALUES ('alice', 'legacy', :c, :k)"
            ),
            {"c": user.ciphertext, "k": user.key_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_configs (id, family, model, display_name, context_limit, revision, is_default) "
                "VALUES ('m', 'openai', 'gpt', 'gpt', 10, 1, true)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_attachments (model_config_id, provider_config_id, family, position) "
                "VALUES ('m', 'legacy', 'openai', 0)"
            )
        )
        conn.execute(sa.text("UPDATE config_revision SET revision = 1"))
    database.upgrade(engine)

    def resolved() -> tuple[str, str]:
        app = build_app(fresh_database_url, keyring)
        server = RunningServer(app, all_roles_token(app))
        try:
            resolver = stubs(server.channel).resolver
            return (
                resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")).selected.api_key,
                resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="alice")).selected.api_key,
            )
        finally:
            server.stop()
            app.close()

    if resolved() != ("sk-stored-before", "uk-stored-before"):
        raise AssertionError("keys stored before the upgrade no longer resolve")
    report = rotate_keys(engine, keyring)
    assert (report.resealed, report.undecryptable) == (2, [])
    with engine.connect() as conn:
        incarnations = (
            conn.execute(
                sa.text(
                    "SELECT key_incarnation FROM provider_configs "
                    "UNION ALL SELECT key_incarnation FROM user_provider_keys"
                )
            )
            .scalars()
            .all()
        )
    assert len(incarnations) == 2 and all(i is not None and len(i) == 16 for i in incarnations)
    if resolved() != ("sk-stored-before", "uk-stored-before"):
        raise AssertionError("keys stored before the upgrade no longer resolve after rotate-keys")
    # Rotated: the old row-only binding no longer opens them.
    legacy_binding = provider_key_binding("legacy", None)
    sealed = key_columns(engine, "provider_configs", "id = 'legacy'")
    assert keyring.open(SealedKey(sealed[1], bytes(sealed[0])), legacy_binding) is None
    assert rotate_keys(engine, keyring).resealed == 0
