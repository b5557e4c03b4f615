"""A forced provider delete is one transaction: a failure at its last steps leaves everything as it was."""

from __future__ import annotations

import grpc
import sqlalchemy as sa

from modelroute.v1 import provider_config_pb2, user_key_pb2
from modelroute_server.entrypoints.server import Application

from ..helpers import call_error, create_model, create_provider, policy, stubs

TABLES = ("config_revision", "provider_configs", "model_configs", "model_attachments", "user_provider_keys")


def state(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1, 2"))] for t in TABLES}


def test_a_failure_mid_cascade_changes_nothing(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", credential_policy=policy(True, True, True))
    create_provider(s, "b")
    create_model(s, "only-a", providers=("a",))  # the default; the cascade would delete it and promote
    create_model(s, "both", providers=("a", "b"))
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="u", provider_config="providerConfigs/a", api_key="uk")
    )
    before = state(app.engine)
    # A real failure inside PostgreSQL at the cascade's user-key step (after the attachments,
    # the emptied model and the default have already been rewritten in the transaction).
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            )
        )
        conn.execute(
            sa.text("CREATE TRIGGER refuse BEFORE DELETE ON user_provider_keys FOR EACH ROW EXECUTE FUNCTION refuse()")
        )
    try:
        error = call_error(
            s.providers.DeleteProviderConfig,
            provider_config_pb2.DeleteProviderConfigRequest(name="providerConfigs/a", force=True),
        )
        assert error.code is grpc.StatusCode.INTERNAL  # the server's fault, and it says nothing more
        assert "injected" not in error.message
        assert state(app.engine) == before
    finally:
        with app.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse ON user_provider_keys"))
            conn.execute(sa.text("DROP FUNCTION refuse()"))
    outcome = s.providers.DeleteProviderConfig(
        provider_config_pb2.DeleteProviderConfigRequest(name="providerConfigs/a", force=True)
    )
    assert list(outcome.deleted_model_configs) == ["modelConfigs/only-a"]
    assert outcome.default_model_config == "modelConfigs/both"
