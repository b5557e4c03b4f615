"""Storage: migrations on a real database, the constraints the database itself enforces, and keys at rest.

Keys used here are dummies; assertions never render one (failures say which check failed, not the key).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pgserver
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from modelroute.v1 import provider_config_pb2, user_key_pb2
from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, provider_key_binding
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import Attachment
from modelroute_server.entrypoints.server import Application, sql_context
from modelroute_server.service_layer import model_configs, provider_configs
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput

from ..conftest import TEST_DATABASE_URL_ENV, build_app, migrated_database
from ..helpers import TEST_CALLER, create_provider, policy, stubs
from .test_model_configs import attachment_rows

PROVIDER_COLUMNS = (
    "id",
    "family",
    "display_name",
    "enabled",
    "central_api_key_enabled",
    "allow_user_api_key",
    "allow_central_api_key_fallback",
    "revision",
)
VALID_TUPLES = [(True, False, False), (False, True, False), (True, True, False), (True, True, True)]
INVALID_TUPLES = [(False, False, False), (False, False, True), (False, True, True), (True, False, True)]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def fresh_engine(fresh_database_url: str) -> Iterator[sa.Engine]:
    engine = database.create_engine(fresh_database_url)
    yield engine
    engine.dispose()


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def rows(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]


def stored_secret(ctx: ServiceContext, provider_id: str) -> str | None:
    with ctx.read() as uow:
        config = uow.providers.get(provider_id)
    assert config is not None and config.api_key is not None
    return config.api_key.secret


SEEDED = {
    # id: (input, key)
    "openai-main": (ProviderConfigInput(family=Family.OPENAI, api_key="sk-openai-main-0001"), "sk-openai-main-0001"),
    "anthropic-byok": (
        ProviderConfigInput(
            family=Family.ANTHROPIC,
            display_name="Anthropic BYOK",
            central_api_key_enabled=True,
            allow_user_api_key=True,
            allow_central_api_key_fallback=True,
            api_key="sk-anthropic-0002",
        ),
        "sk-anthropic-0002",
    ),
    "azure-eu": (
        ProviderConfigInput(
            family=Family.AZURE, base_url="https://eu.openai.azure.com", enabled=False, api_key="az-key-0003"
        ),
        "az-key-0003",
    ),
    "bedrock-ambient": (ProviderConfigInput(family=Family.BEDROCK), None),
}


def seed(ctx: ServiceContext) -> None:
    for provider_id, (request, _) in SEEDED.items():
        provider_configs.create_provider_config(ctx, TEST_CALLER, provider_id, request)


def seed_as_0002_did(engine: sa.Engine, keyring: Keyring) -> None:
    """The seeded providers as the build before 0003 wrote them: keys under the row-only binding."""
    with engine.begin() as conn:
        for revision, (provider_id, (request, key)) in enumerate(SEEDED.items(), start=1):
            assert request.family is not None
            sealed = keyring.seal(key, provider_key_binding(provider_id, None)) if key else None
            conn.execute(
                sa.text(
                    "INSERT INTO provider_configs (id, family, display_name, base_url, enabled, "
                    "central_api_key_enabled, allow_user_api_key, allow_central_api_key_fallback, "
                    "api_key_ciphertext, api_key_key_id, revision) VALUES (:id, :family, :name, :url, :enabled, "
                    ":c, :u, :f, :ciphertext, :key_id, :revision)"
                ),
                {
                    "id": provider_id,
                    "family": request.family.value,
                    "name": request.display_name or request.family.default_display_name,
                    "url": request.base_url or None,
                    "enabled": request.enabled is not False,
                    "c": request.central_api_key_enabled is not False,
                    "u": bool(request.allow_user_api_key),
                    "f": bool(request.allow_central_api_key_fallback),
                    "ciphertext": sealed.ciphertext if sealed else None,
                    "key_id": sealed.key_id if sealed else None,
                    "revision": revision,
                },
            )
        conn.execute(sa.text("UPDATE config_revision SET revision = :r"), {"r": len(SEEDED)})


def check_seeded_keys(ctx: ServiceContext) -> None:
    for provider_id, (_, key) in SEEDED.items():
        if key is None:
            continue
        if stored_secret(ctx, provider_id) != key:
            raise AssertionError(f"{provider_id}: the stored key no longer decrypts to what was written")


# ---------------------------------------------------------------- migrations


# The provider config columns added after 0002, as a row written before them reads: key_incarnation
# (0003) and the health policy (0008).
ADDED_SINCE_0002 = (None, None, None, None, None)


def test_upgrade_downgrade_to_0001_and_back_keeps_provider_configs(fresh_engine: sa.Engine, keyring: Keyring) -> None:
    assert database.current_revision(fresh_engine) is None
    database.upgrade(fresh_engine, "0002")
    seed_as_0002_did(fresh_engine, keyring)
    providers_before = rows(fresh_engine, "provider_configs")
    revision_before = rows(fresh_engine, "config_revision")
    database.upgrade(fresh_engine)
    assert database.current_revision(fresh_engine) == database.head_revision()
    assert served(fresh_engine)
    # 0003 only adds key_incarnation, and 0008 the four health policy columns (the last ones): NULL for
    # rows written before them.
    assert rows(fresh_engine, "provider_configs") == [(*row, *ADDED_SINCE_0002) for row in providers_before]
    ctx = sql_context(fresh_engine, keyring)
    check_seeded_keys(ctx)
    assert len(providers_before) == len(SEEDED)
    assert revision_before == [(True, len(SEEDED))]

    database.downgrade(fresh_engine, "0001")
    assert database.current_revision(fresh_engine) == "0001"
    assert not served(fresh_engine)
    assert {"provider_configs", "config_revision"} <= table_names(fresh_engine)
    assert "model_configs" not in table_names(fresh_engine)
    assert rows(fresh_engine, "provider_configs") == providers_before
    assert rows(fresh_engine, "config_revision") == revision_before

    database.upgrade(fresh_engine)
    assert database.current_revision(fresh_engine) == database.head_revision()
    assert rows(fresh_engine, "provider_configs") == [(*row, *ADDED_SINCE_0002) for row in providers_before]
    # 0004 starts the change sequence at the revision, with an empty log (pruned through it).
    assert rows(fresh_engine, "config_revision") == [(*revision_before[0], len(SEEDED), len(SEEDED))]
    check_seeded_keys(ctx)
    # The upgraded schema is fully usable: a model can be attached to the surviving configs.
    model = model_configs.create_model_config(
        ctx, TEST_CALLER, "gpt", ModelConfigInput(family=Family.OPENAI, model="gpt-4.1", context_limit=1000)
    )
    assert [a.provider.id for a in model.attachments] == ["openai-main"]
    # Upgrading an up-to-date schema is a no-op.
    database.upgrade(fresh_engine)
    assert rows(fresh_engine, "provider_configs") == [(*row, *ADDED_SINCE_0002) for row in providers_before]


def test_a_downgrade_that_would_drop_rows_is_refused_unless_allowed(fresh_engine: sa.Engine, keyring: Keyring) -> None:
    database.upgrade(fresh_engine)
    ctx = sql_context(fresh_engine, keyring)
    seed(ctx)
    model_configs.create_model_config(
        ctx, TEST_CALLER, "gpt", ModelConfigInput(family=Family.OPENAI, model="gpt-4.1", context_limit=1000)
    )
    models_before = rows(fresh_engine, "model_configs")
    events_before = rows(fresh_engine, "audit_events")
    assert len(events_before) == len(SEEDED) + 1
    with pytest.raises(RuntimeError, match="audit_events"):
        database.downgrade(fresh_engine, "0001")
    assert database.current_revision(fresh_engine) == database.head_revision()
    assert rows(fresh_engine, "model_configs") == models_before
    assert rows(fresh_engine, "audit_events") == events_before
    with fresh_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE audit_events"))
    # Keys sealed to their row's incarnation would not open under 0002's binding: refused too.
    with pytest.raises(RuntimeError, match=r"would make 3 key\(s\) in provider_configs undecryptable"):
        database.downgrade(fresh_engine, "0002")
    assert database.current_revision(fresh_engine) == database.head_revision()
    check_seeded_keys(ctx)
    database.downgrade(fresh_engine, "0002", allow_data_loss=True)
    with pytest.raises(RuntimeError, match="model_configs"):
        database.downgrade(fresh_engine, "0001")
    assert rows(fresh_engine, "model_configs") == models_before

    database.downgrade(fresh_engine, "0001", allow_data_loss=True)
    assert database.current_revision(fresh_engine) == "0001"
    with pytest.raises(RuntimeError, match="provider config"):
        database.downgrade(fresh_engine, "base")
    assert database.current_revision(fresh_engine) == "0001"
    database.downgrade(fresh_engine, "base", allow_data_loss=True)
    assert database.current_revision(fresh_engine) is None


def _with_overrides(ctx: ServiceContext, model_id: str, *entries: tuple[str, str]) -> None:
    model_configs.create_model_config(
        ctx,
        TEST_CALLER,
        model_id,
        ModelConfigInput(
            family=Family.OPENAI,
            model="gpt-4o",
            context_limit=1000,
            attachments=tuple(Attachment(p, o) for p, o in entries),
            attachments_field="model_config.attachments",
            overrides_given=True,
        ),
    )


def _models(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = "SELECT id, is_default, delete_time IS NOT NULL FROM model_configs ORDER BY id"
        return [tuple(r) for r in conn.execute(sa.text(query))]


def test_a_downgrade_below_overrides_is_refused_unless_allowed_then_drops_only_them(
    fresh_engine: sa.Engine, keyring: Keyring
) -> None:
    database.upgrade(fresh_engine)
    ctx = sql_context(fresh_engine, keyring)
    seed(ctx)  # openai-main, anthropic-byok, azure-eu (disabled), ...
    provider_configs.create_provider_config(
        ctx, TEST_CALLER, "openai-eu", ProviderConfigInput(family=Family.OPENAI, api_key="sk-openai-eu-0005")
    )
    _with_overrides(ctx, "only-claude", ("anthropic-byok", "claude-sonnet-4.5"))  # the first: the default
    _with_overrides(ctx, "chain", ("azure-eu", "gpt4o-eu"), ("openai-main", ""), ("anthropic-byok", "claude-x"))
    _with_overrides(ctx, "pinned", ("openai-eu", "gpt-4o-2024-08-06"), ("openai-main", ""))
    attachments_before, models_before = attachment_rows(fresh_engine), _models(fresh_engine)
    for target in ("0006", "0005"):
        with pytest.raises(RuntimeError, match="would drop every upstream model name override"):
            database.downgrade(fresh_engine, target)
        assert database.current_revision(fresh_engine) == database.head_revision()
        assert (attachment_rows(fresh_engine), _models(fresh_engine)) == (attachments_before, models_before)

    database.downgrade(fresh_engine, "0005", allow_data_loss=True)
    assert database.current_revision(fresh_engine) == "0005"
    # Cross-family attachments went with their overrides, the rest renumbered; a same-family override is
    # dropped and its attachment kept. The model left with nothing is soft-deleted, the default moved on.
    assert attachment_rows(fresh_engine) == [
        ("chain", "openai-main", "openai", 0),
        ("pinned", "openai-eu", "openai", 0),
        ("pinned", "openai-main", "openai", 1),
    ]
    assert _models(fresh_engine) == [("chain", True, False), ("only-claude", False, True), ("pinned", False, False)]
    # Back up again: the rows are the schema's, and usable.
    database.upgrade(fresh_engine)
    _with_overrides(ctx, "again", ("anthropic-byok", "claude-x"))


def test_downgrade_to_base_and_upgrade_again(fresh_engine: sa.Engine, keyring: Keyring) -> None:
    database.upgrade(fresh_engine)
    database.downgrade(fresh_engine, "base")
    assert database.current_revision(fresh_engine) is None
    assert table_names(fresh_engine) <= {"alembic_version"}
    database.upgrade(fresh_engine)
    assert served(fresh_engine)
    assert {"provider_configs", "config_revision", "model_configs", "model_attachments", "user_provider_keys"} <= (
        table_names(fresh_engine)
    )
    ctx = sql_context(fresh_engine, keyring)
    seed(ctx)
    check_seeded_keys(ctx)
    # One change sequence per write, each a config revision; the log reaches back to the start.
    assert rows(fresh_engine, "config_revision") == [(True, len(SEEDED), len(SEEDED), 0)]


def test_step_by_step_migration_matches_a_direct_upgrade(fresh_engine: sa.Engine, postgres: Any) -> None:
    database.upgrade(fresh_engine, "0001")
    assert database.current_revision(fresh_engine) == "0001"
    database.upgrade(fresh_engine, "head")
    direct = database.create_engine(postgres.create_database())
    try:
        database.upgrade(direct)
        inspect_a, inspect_b = sa.inspect(fresh_engine), sa.inspect(direct)
        assert table_names(fresh_engine) == table_names(direct)
        for table in table_names(direct):
            assert [c["name"] for c in inspect_a.get_columns(table)] == [
                c["name"] for c in inspect_b.get_columns(table)
            ]
            assert sorted(c["name"] or "" for c in inspect_a.get_check_constraints(table)) == sorted(
                c["name"] or "" for c in inspect_b.get_check_constraints(table)
            )
    finally:
        direct.dispose()


# ---------------------------------------------------------------- constraints the database enforces


def insert_provider(engine: sa.Engine, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "id": "p",
        "family": "openai",
        "display_name": "P",
        "enabled": True,
        "central_api_key_enabled": True,
        "allow_user_api_key": False,
        "allow_central_api_key_fallback": False,
        "revision": 1,
    }
    values.update(overrides)
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO provider_configs ({columns}) VALUES ({params})"), values)


def violated_constraint(engine: sa.Engine, **overrides: Any) -> str:
    with pytest.raises(sa.exc.IntegrityError) as caught:
        insert_provider(engine, **overrides)
    return str(caught.value.orig.diag.constraint_name)  # type: ignore[union-attr]


def test_the_database_accepts_exactly_the_four_valid_policies(engine: sa.Engine) -> None:
    for index, (c, u, f) in enumerate(VALID_TUPLES):
        insert_provider(
            engine, id=f"ok-{index}", central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
        )
    for c, u, f in INVALID_TUPLES:
        constraint = violated_constraint(
            engine, id="bad", central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
        )
        assert constraint == "provider_configs_valid_credential_policy", (c, u, f)
    assert [r[0] for r in rows(engine, "provider_configs")] == ["ok-0", "ok-1", "ok-2", "ok-3"]


@pytest.mark.parametrize("family", ["mistral", "OpenAI", "OPENAI", "openai_compat", "", "openai "])
def test_the_database_rejects_unknown_families(engine: sa.Engine, family: str) -> None:
    assert violated_constraint(engine, family=family) == "provider_configs_family_known"


def test_the_database_accepts_every_known_family(engine: sa.Engine) -> None:
    for family in Family:
        insert_provider(engine, id=f"f-{family.value}", family=family.value)
    assert len(rows(engine, "provider_configs")) == len(Family)


@pytest.mark.parametrize("bad_id", ["", "Upper", "1abc", "-abc", "abc-", "a_b", "a.b", "a/b", "a b", "a" * 64])
def test_the_database_rejects_bad_id_slugs(engine: sa.Engine, bad_id: str) -> None:
    assert violated_constraint(engine, id=bad_id) == "provider_configs_id_slug"


def test_the_database_rejects_duplicate_ids(engine: sa.Engine) -> None:
    insert_provider(engine, id="dup")
    assert violated_constraint(engine, id="dup", family="anthropic") == "provider_configs_pkey"
    assert rows(engine, "provider_configs")[0][:2] == ("dup", "openai")


def test_the_database_rejects_a_blank_display_name_and_a_ciphertext_without_key_id(engine: sa.Engine) -> None:
    assert violated_constraint(engine, display_name="  ") == "provider_configs_display_name_not_blank"
    assert violated_constraint(engine, api_key_ciphertext=b"x" * 40) == "provider_configs_key_id_with_ciphertext"
    assert violated_constraint(engine, api_key_key_id="k1") == "provider_configs_key_id_with_ciphertext"
    assert rows(engine, "provider_configs") == []


# ---------------------------------------------------------------- keys at rest


def pg_dump_binary() -> Path:
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    system = Path("/usr/bin/pg_dump")
    if os.environ.get(TEST_DATABASE_URL_ENV) and system.exists():
        return system
    return bundled


def pg_dump(database_url: str) -> str:
    url = make_url(database.sqlalchemy_url(database_url))
    host = url.query.get("host") or url.host or "127.0.0.1"
    assert isinstance(host, str)
    command = [str(pg_dump_binary()), "--no-owner", "--host", host, "--dbname", str(url.database)]
    if url.port:
        command += ["--port", str(url.port)]
    if url.username:
        command += ["--username", url.username]
    env = {"PATH": os.environ.get("PATH", ""), "PGCONNECT_TIMEOUT": "10"}
    if url.password:
        env["PGPASSWORD"] = url.password
    done = subprocess.run(command, capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


def encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def test_a_pg_dump_holds_no_plaintext_key(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    marker = uuid.uuid4().hex
    central = f"sk-CENTRAL-plaintext-{marker}"
    fallback = f"sk-FALLBACK-plaintext-{marker}"
    user = f"sk-USER-plaintext-{marker}"
    create_provider(s, "dump-central", api_key=central)
    create_provider(s, "dump-byok", "anthropic", api_key=fallback, credential_policy=policy(True, True, True))
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="alice", provider_config="providerConfigs/dump-byok", api_key=user)
    )
    # A replaced key must not linger either.
    replaced = f"sk-REPLACED-plaintext-{marker}"
    create_provider(s, "dump-replaced", api_key=replaced)
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/dump-replaced", api_key=central)
        )
    )

    dump = pg_dump(app.database_url)
    # The dump really holds the rows and their sealed keys...
    for provider_id in ("dump-central", "dump-byok", "dump-replaced", "alice"):
        assert provider_id in dump
    assert dump.count(app.ctx.keyring.primary_key_id) >= 4
    # ...and no key in any plain encoding.
    for secret in (central, fallback, user, replaced):
        for encoded in encodings(secret):
            if encoded in dump:
                raise AssertionError("a pg_dump of the database contains key material in plaintext")
    if marker in dump:
        raise AssertionError("a pg_dump of the database contains part of a key")
    with app.engine.connect() as conn:
        sealed = conn.execute(sa.text("SELECT api_key_ciphertext, api_key_key_id FROM provider_configs")).all()
        sealed += conn.execute(sa.text("SELECT api_key_ciphertext, api_key_key_id FROM user_provider_keys")).all()
    assert len(sealed) == 4
    assert all(ciphertext is not None and key_id == app.ctx.keyring.primary_key_id for ciphertext, key_id in sealed)


def served(engine: sa.Engine) -> bool:
    with engine.connect() as connection:
        return database.schema_is_served(connection)


# ---------------------------------------------------------------- pooled connections


def _backend_pids(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
        )


def test_a_pooled_connection_the_server_dropped_is_replaced_without_an_error(postgres: Any, keyring: Keyring) -> None:
    """The admin pools ping no connection before use; the unit of work replaces a dead one by itself."""
    url = migrated_database(postgres)
    app = build_app(url, keyring)
    observer = sa.create_engine(database.sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        provider_configs.create_provider_config(
            app.ctx, TEST_CALLER, "before", ProviderConfigInput(family=Family.OPENAI, api_key="sk-before")
        )
        assert provider_configs.get_provider_config(app.ctx, "before").config.id == "before"
        pooled = _backend_pids(observer)
        assert pooled  # the write's and the read's connections wait in their pools
        with observer.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                {"pids": list(pooled)},
            )
        deadline = time.monotonic() + 30
        while _backend_pids(observer) & pooled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _backend_pids(observer) & pooled

        provider_configs.create_provider_config(
            app.ctx, TEST_CALLER, "after", ProviderConfigInput(family=Family.OPENAI, api_key="sk-after")
        )
        assert provider_configs.get_provider_config(app.ctx, "after").config.id == "after"
    finally:
        observer.dispose()
        app.close()
