"""Key rotation: every stored key is re-sealed under the new primary key; old keys can then go."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa

from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.adapters.key_rotation import rotate_keys
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.server import sql_context
from modelroute_server.service_layer import provider_configs, user_keys
from modelroute_server.service_layer.inputs import ProviderConfigInput

from ..helpers import TEST_CALLER


def _key_ids(engine: sa.Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        providers = conn.execute(sa.text("SELECT id, api_key_key_id FROM provider_configs")).all()
        users = conn.execute(
            sa.text("SELECT user_id, provider_config_id, api_key_key_id FROM user_provider_keys")
        ).all()
    ids: dict[str, str | None] = {f"provider:{pid}": kid for pid, kid in providers}
    ids.update({f"user:{uid}:{pid}": kid for uid, pid, kid in users})
    return ids


def test_rotation_reseals_everything_it_can_and_reports_the_rest(fresh_database_url: str) -> None:
    engine = database.create_engine(fresh_database_url)
    database.upgrade(engine)
    old_spec, new_spec = generate_keyring_spec("old"), generate_keyring_spec("new")
    old_ctx = sql_context(engine, Keyring.parse(old_spec))
    byok = ProviderConfigInput(family=Family.OPENAI, api_key="sk-one", allow_user_api_key=True)
    provider_configs.create_provider_config(old_ctx, TEST_CALLER, "one", byok)
    provider_configs.create_provider_config(
        old_ctx, TEST_CALLER, "two", ProviderConfigInput(family=Family.OPENAI, api_key="sk-two")
    )
    provider_configs.create_provider_config(old_ctx, TEST_CALLER, "ambient", ProviderConfigInput(family=Family.BEDROCK))
    user_keys.set_user_provider_key(old_ctx, TEST_CALLER, "alice", "one", "uk-alice")
    with engine.begin() as conn:  # a ciphertext moved to another row: no key opens it any more
        conn.execute(
            sa.text(
                "UPDATE provider_configs SET api_key_ciphertext = "
                "(SELECT api_key_ciphertext FROM provider_configs WHERE id = 'one') WHERE id = 'two'"
            )
        )
    assert set(_key_ids(engine).values()) == {"old", None}

    report = rotate_keys(engine, Keyring.parse(f"{new_spec},{old_spec}"), batch_size=1)
    assert (report.resealed, report.undecryptable) == (2, ["providerConfigs/two"])
    assert _key_ids(engine) == {
        "provider:one": "new",
        "provider:two": "old",
        "provider:ambient": None,
        "user:alice:one": "new",
    }
    assert rotate_keys(engine, Keyring.parse(f"{new_spec},{old_spec}")).resealed == 0

    # The old key can now leave the keyring: everything rotated still decrypts.
    new_ctx = sql_context(engine, Keyring.parse(new_spec))
    with new_ctx.read() as uow:
        one = uow.providers.get("one")
        assert one is not None and one.api_key is not None and one.api_key.secret == "sk-one"
        assert uow.user_keys.for_user("alice")["one"].secret == "uk-alice"

    # The command says what it did and fails while something could not be rotated.
    env = dict(os.environ, MODELROUTE_KEYRING=f"{new_spec},{old_spec}", MODELROUTE_LOG_LEVEL="WARNING")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelroute_server.entrypoints.cli",
            "rotate-keys",
            "--database-url",
            fresh_database_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "re-encrypted 0 key(s) under 'new'" in result.stdout
    assert "providerConfigs/two" in result.stderr
    assert "sk-" not in result.stdout + result.stderr
    engine.dispose()
