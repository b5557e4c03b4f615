"""User keys (bring your own key) through gRPC against real PostgreSQL (docs/behaviour.md, "User keys").

The keys used here are fake; assertions compare them without printing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status

from modelroute.v1 import (
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)
from modelroute_server.entrypoints.server import Application

from ..helpers import RichError, Stubs, call_error, create_model, create_provider, decode, policy, stubs

ALICE_KEY = "uk-alice-7f3a9c2e5b8d4a1f"
ALICE_KEY_2 = "uk-alice-second-0c4e8a2b6d"
BOB_KEY = "uk-bob-91b7d3f5a2c8e6"
CENTRAL_KEY = "sk-central-pref-5d2a"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def pc(provider_id: str) -> str:
    return f"providerConfigs/{provider_id}"


def set_key(s: Stubs, user: str, provider_id: str, api_key: str) -> user_key_pb2.UserProviderConfig:
    return s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user=user, provider_config=pc(provider_id), api_key=api_key)
    )


def set_request(user: str, provider: str, api_key: str) -> user_key_pb2.SetUserProviderKeyRequest:
    return user_key_pb2.SetUserProviderKeyRequest(user=user, provider_config=provider, api_key=api_key)


def delete_key(s: Stubs, user: str, provider_id: str) -> Any:
    return s.user_keys.DeleteUserProviderKey(
        user_key_pb2.DeleteUserProviderKeyRequest(user=user, provider_config=pc(provider_id))
    )


def listing(s: Stubs, user: str) -> list[tuple[str, int, str, bool, bool, bool]]:
    response = s.user_keys.ListUserProviderConfigs(user_key_pb2.ListUserProviderConfigsRequest(user=user))
    return [
        (
            c.provider_config,
            c.family,
            c.display_name,
            c.has_user_api_key,
            c.central_fallback_available,
            c.user_api_key_required,
        )
        for c in response.user_provider_configs
    ]


def shown(s: Stubs, user: str) -> dict[str, bool]:
    """provider config name -> has_user_api_key, for the configs the user is shown."""
    return {name: has_key for name, _, _, has_key, _, _ in listing(s, user)}


def stored_keys(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT user_id, provider_config_id FROM user_provider_keys ORDER BY user_id, provider_config_id")
        )
        return [(r[0], r[1]) for r in rows]


def db_state(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in ("config_revision", "provider_configs", "user_provider_keys")
        }


def rejected(engine: sa.Engine, method: Callable[..., Any], request: Any) -> RichError:
    before = db_state(engine)
    error = call_error(method, request)
    assert db_state(engine) == before, "a rejected request changed the configuration"
    return error


def update_provider(s: Stubs, provider_id: str, paths: list[str], **fields: Any) -> Any:
    return s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=pc(provider_id), **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )


def resolve(s: Stubs, model: str, user: str) -> resolver_pb2.ResolveModelResponse:
    return s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model=model, user=user))


def standard_providers(s: Stubs) -> None:
    create_provider(s, "p-user", api_key="", credential_policy=policy(False, True, False))
    create_provider(s, "p-pref", api_key=CENTRAL_KEY, credential_policy=policy(True, True, True))
    create_provider(s, "p-req", "anthropic", api_key="", credential_policy=policy(True, True, False))
    create_provider(s, "p-central")
    create_provider(s, "p-off", enabled=False, credential_policy=policy(True, True, True))
    create_provider(s, "p-amb", "bedrock", api_key="", credential_policy=policy(True, True, True))


# ---------------------------------------------------------------- set


def test_set_is_refused_on_disabled_disallowing_or_unknown_providers(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    cases = [
        ("p-off", PRECONDITION, "PROVIDER_CONFIG_DISABLED"),
        ("p-central", PRECONDITION, "USER_KEYS_NOT_ALLOWED"),
        ("ghost", grpc.StatusCode.NOT_FOUND, "PROVIDER_CONFIG_NOT_FOUND"),
    ]
    for provider_id, code, reason in cases:
        error = rejected(engine, s.user_keys.SetUserProviderKey, set_request("alice", pc(provider_id), ALICE_KEY))
        assert (error.code, error.reason) == (code, reason), provider_id
        assert pc(provider_id) in error.message
    error = rejected(engine, s.user_keys.SetUserProviderKey, set_request("alice", "p-user", ALICE_KEY))
    assert (error.code, error.fields) == (INVALID, ["provider_config"])
    assert stored_keys(engine) == []


def test_bad_keys_and_users_are_invalid(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    for bad_key in ("", " uk-lead", "uk-trail ", "uk-newline\n", "\tuk-tab", "k" * 10_241, "é" * 5_121):
        error = rejected(engine, s.user_keys.SetUserProviderKey, set_request("alice", pc("p-user"), bad_key))
        assert (error.code, error.fields) == (INVALID, ["api_key"]), len(bad_key)
        if bad_key.strip():
            assert bad_key.strip() not in error.message
    for bad_user in ("", " alice", "al ice", "a" * 257):
        error = rejected(engine, s.user_keys.SetUserProviderKey, set_request(bad_user, pc("p-user"), ALICE_KEY))
        assert (error.code, error.fields) == (INVALID, ["user"]), bad_user
    for method, request in (
        (s.user_keys.DeleteUserProviderKey, user_key_pb2.DeleteUserProviderKeyRequest(provider_config=pc("p-user"))),
        (s.user_keys.ListUserProviderConfigs, user_key_pb2.ListUserProviderConfigsRequest(user="")),
    ):
        error = rejected(engine, method, request)
        assert (error.code, error.fields) == (INVALID, ["user"])
    assert stored_keys(engine) == []

    # The limits are in bytes and inclusive.
    set_key(s, "alice", "p-user", "k" * 10_240)
    set_key(s, "bob", "p-user", "é" * 5_120)
    assert stored_keys(engine) == [("alice", "p-user"), ("bob", "p-user")]


def test_set_twice_replaces_the_key(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-user",))
    first = set_key(s, "alice", "p-user", ALICE_KEY)
    assert (first.provider_config, first.has_user_api_key, first.user_api_key_required) == (pc("p-user"), True, True)
    assert resolve(s, "m", "alice").selected.api_key == ALICE_KEY
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT api_key_ciphertext FROM user_provider_keys")).scalar_one()

    second = set_key(s, "alice", "p-user", ALICE_KEY_2)
    assert second == first
    assert stored_keys(engine) == [("alice", "p-user")]
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT api_key_ciphertext FROM user_provider_keys")).scalar_one()
    assert bytes(after) != bytes(before)
    answer = resolve(s, "m", "alice")
    assert answer.selected.key_source == common_pb2.KEY_SOURCE_USER
    assert answer.selected.api_key == ALICE_KEY_2


# ---------------------------------------------------------------- delete


def test_delete_is_idempotent(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    delete_key(s, "alice", "p-user")  # nothing there
    delete_key(s, "alice", "ghost")  # no such provider config
    set_key(s, "alice", "p-user", ALICE_KEY)
    set_key(s, "alice", "p-pref", ALICE_KEY)
    delete_key(s, "alice", "p-user")
    with engine.connect() as conn:
        revision = conn.execute(sa.text("SELECT revision FROM config_revision")).scalar_one()
    delete_key(s, "alice", "p-user")
    with engine.connect() as conn:  # a no-op delete takes no revision: no replica reloads for it
        assert conn.execute(sa.text("SELECT revision FROM config_revision")).scalar_one() == revision
    assert stored_keys(engine) == [("alice", "p-pref")]
    assert shown(s, "alice") == {pc("p-amb"): False, pc("p-pref"): True, pc("p-req"): False, pc("p-user"): False}
    error = call_error(
        s.user_keys.DeleteUserProviderKey, user_key_pb2.DeleteUserProviderKeyRequest(user="alice", provider_config="x")
    )
    assert (error.code, error.fields) == (INVALID, ["provider_config"])


# ---------------------------------------------------------------- list


def test_list_shows_enabled_configs_allowing_user_keys_with_the_users_state(
    channel: grpc.Channel, app: Application
) -> None:
    s = stubs(channel)
    standard_providers(s)
    bedrock, openai, anthropic = common_pb2.FAMILY_BEDROCK, common_pb2.FAMILY_OPENAI, common_pb2.FAMILY_ANTHROPIC
    assert listing(s, "alice") == [
        (pc("p-amb"), bedrock, "Amazon Bedrock", False, True, False),  # ambient fallback
        (pc("p-pref"), openai, "OpenAI", False, True, False),
        (pc("p-req"), anthropic, "Anthropic", False, False, True),
        (pc("p-user"), openai, "OpenAI", False, False, True),
    ]
    response = set_key(s, "alice", "p-req", ALICE_KEY)
    assert (response.provider_config, response.family, response.display_name) == (pc("p-req"), anthropic, "Anthropic")
    assert (response.has_user_api_key, response.central_fallback_available, response.user_api_key_required) == (
        True,
        False,
        True,
    )
    set_key(s, "alice", "p-amb", ALICE_KEY)
    assert shown(s, "alice") == {pc("p-amb"): True, pc("p-pref"): False, pc("p-req"): True, pc("p-user"): False}
    assert listing(s, "nobody") == [
        (pc("p-amb"), bedrock, "Amazon Bedrock", False, True, False),
        (pc("p-pref"), openai, "OpenAI", False, True, False),
        (pc("p-req"), anthropic, "Anthropic", False, False, True),
        (pc("p-user"), openai, "OpenAI", False, False, True),
    ]


def test_disabled_provider_hides_but_keeps_the_key(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-pref",))
    set_key(s, "alice", "p-pref", ALICE_KEY)

    update_provider(s, "p-pref", ["enabled"], enabled=False)
    assert pc("p-pref") not in shown(s, "alice")
    assert stored_keys(engine) == [("alice", "p-pref")]
    error = rejected(engine, s.user_keys.SetUserProviderKey, set_request("alice", pc("p-pref"), ALICE_KEY_2))
    assert (error.code, error.reason) == (PRECONDITION, "PROVIDER_CONFIG_DISABLED")

    update_provider(s, "p-pref", ["enabled"], enabled=True)
    assert shown(s, "alice")[pc("p-pref")] is True
    answer = resolve(s, "m", "alice")
    assert (answer.selected.key_source, answer.selected.api_key) == (common_pb2.KEY_SOURCE_USER, ALICE_KEY)

    # A user may remove their key while the provider is hidden.
    update_provider(s, "p-pref", ["enabled"], enabled=False)
    delete_key(s, "alice", "p-pref")
    update_provider(s, "p-pref", ["enabled"], enabled=True)
    assert shown(s, "alice")[pc("p-pref")] is False
    assert stored_keys(engine) == []


def test_policy_without_user_keys_hides_but_keeps_the_key(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-pref",))
    set_key(s, "alice", "p-pref", ALICE_KEY)
    policy_paths = ["credential_policy"]

    update_provider(s, "p-pref", policy_paths, credential_policy=policy(True, False, False))
    assert pc("p-pref") not in shown(s, "alice")
    assert stored_keys(engine) == [("alice", "p-pref")]
    answer = resolve(s, "m", "alice")  # the central key serves: the user key is not used while U is off
    assert answer.selected.key_source == common_pb2.KEY_SOURCE_STORED
    error = rejected(engine, s.user_keys.SetUserProviderKey, set_request("alice", pc("p-pref"), ALICE_KEY_2))
    assert (error.code, error.reason) == (PRECONDITION, "USER_KEYS_NOT_ALLOWED")

    update_provider(s, "p-pref", policy_paths, credential_policy=policy(True, True, True))
    assert listing(s, "alice")[1] == (pc("p-pref"), common_pb2.FAMILY_OPENAI, "OpenAI", True, True, False)
    answer = resolve(s, "m", "alice")
    assert (answer.selected.key_source, answer.selected.api_key) == (common_pb2.KEY_SOURCE_USER, ALICE_KEY)


def test_keys_are_deleted_with_their_provider(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-user", "p-pref"))
    for user, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
        set_key(s, user, "p-user", key)
        set_key(s, user, "p-pref", key)
        set_key(s, user, "p-amb", key)

    outcome = s.providers.DeleteProviderConfig(
        provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-user"), force=True)
    )
    assert list(outcome.touched_model_configs) == ["modelConfigs/m"]
    assert stored_keys(engine) == [("alice", "p-amb"), ("alice", "p-pref"), ("bob", "p-amb"), ("bob", "p-pref")]
    # An unattached provider goes without force, and takes its keys along.
    s.providers.DeleteProviderConfig(provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-amb")))
    assert stored_keys(engine) == [("alice", "p-pref"), ("bob", "p-pref")]

    # A new provider config with the same id starts with no user keys.
    create_provider(s, "p-user", api_key="", credential_policy=policy(False, True, False))
    assert shown(s, "alice") == {pc("p-pref"): True, pc("p-req"): False, pc("p-user"): False}


def test_keys_are_never_visible_to_another_user(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-user",))
    set_key(s, "alice", "p-user", ALICE_KEY)

    assert shown(s, "bob")[pc("p-user")] is False
    assert shown(s, "alice")[pc("p-user")] is True
    delete_key(s, "bob", "p-user")
    assert stored_keys(engine) == [("alice", "p-user")]
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="bob"))
    assert (error.code, error.reason) == (PRECONDITION, "NO_USABLE_ATTACHMENT")
    assert [kind for kind, _, _ in error.precondition_violations] == ["USER_KEY_REQUIRED"]
    assert resolve(s, "m", "alice").selected.api_key == ALICE_KEY
    # A user id that merely extends another is another user.
    assert shown(s, "alice2")[pc("p-user")] is False

    set_key(s, "bob", "p-user", BOB_KEY)
    assert resolve(s, "m", "bob").selected.api_key == BOB_KEY
    assert resolve(s, "m", "alice").selected.api_key == ALICE_KEY


# ---------------------------------------------------------------- secrecy


def test_no_response_carries_key_material(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    standard_providers(s)
    create_model(s, "m", providers=("p-user", "p-pref"))
    secrets = [ALICE_KEY.encode(), ALICE_KEY_2.encode(), CENTRAL_KEY.encode()]

    def check(message: Message) -> None:
        data = message.SerializeToString()
        assert not any(secret in data for secret in secrets), type(message).__name__

    check(set_key(s, "alice", "p-user", ALICE_KEY))
    check(set_key(s, "alice", "p-pref", ALICE_KEY_2))
    check(delete_key(s, "alice", "p-pref"))
    check(s.user_keys.ListUserProviderConfigs(user_key_pb2.ListUserProviderConfigsRequest(user="alice")))
    check(s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name=pc("p-user"))))
    check(s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()))
    check(s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m")))
    check(s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest()))
    check(s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user="alice")))
    check(s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m", user="alice")))

    # Refusals do not echo the key either.
    update_provider(s, "p-pref", ["enabled"], enabled=False)
    for request in (
        set_request("alice", pc("p-pref"), ALICE_KEY),
        set_request("alice", pc("p-central"), ALICE_KEY),
        set_request("alice", pc("ghost"), ALICE_KEY),
        set_request("alice", pc("p-user"), ALICE_KEY + " "),
    ):
        try:
            s.user_keys.SetUserProviderKey(request)
        except grpc.RpcError as error:
            decode(error)
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None
            check(status)
            assert ALICE_KEY not in (error.details() or "")  # type: ignore[attr-defined]
        else:
            raise AssertionError("expected a refusal")


def test_keys_are_stored_encrypted_and_bound_to_their_row(channel: grpc.Channel, app: Application) -> None:
    s = stubs(channel)
    engine = app.engine
    standard_providers(s)
    create_model(s, "m", providers=("p-user",))
    set_key(s, "alice", "p-user", ALICE_KEY)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM user_provider_keys")).one()
        as_text = conn.execute(sa.text("SELECT CAST(t AS text) FROM user_provider_keys AS t")).scalar_one()
    assert row.api_key_key_id == app.ctx.keyring.primary_key_id
    assert ALICE_KEY.encode() not in bytes(row.api_key_ciphertext)
    assert ALICE_KEY not in as_text
    assert ALICE_KEY.encode().hex() not in as_text

    # The ciphertext is bound to (user, provider config): copied to bob's row it does not open.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO user_provider_keys (user_id, provider_config_id, api_key_ciphertext, api_key_key_id) "
                "SELECT 'bob', provider_config_id, api_key_ciphertext, api_key_key_id FROM user_provider_keys"
            )
        )
    app.snapshots.invalidate()
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="bob"))
    assert (error.code, error.reason) == (PRECONDITION, "NO_USABLE_ATTACHMENT")
    assert [kind for kind, _, _ in error.precondition_violations] == ["KEY_UNDECRYPTABLE"]
    assert resolve(s, "m", "alice").selected.api_key == ALICE_KEY


def test_central_fallback_in_the_listing_is_the_resolvers_verdict(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "az", "azure", base_url="https://eu.example.com", credential_policy=policy(True, True, True))
    create_model(s, "m", "azure", providers=("az",))
    assert shown(s, "alice") == {pc("az"): False}
    assert [row[4] for row in listing(s, "alice")] == [True]
    # A row an older version wrote without the base URL azure needs: the resolver skips it, and the
    # listing must not promise a central fallback that resolution would refuse.
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_configs SET base_url = NULL WHERE id = 'az'"))
    app.snapshots.invalidate()
    assert [row[4] for row in listing(s, "alice")] == [False]
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", user="alice"))
    assert [kind for kind, _, _ in error.precondition_violations] == ["INVALID_CONFIG"]


def test_the_user_listing_pages_to_the_end(channel: grpc.Channel) -> None:
    from modelroute import ModelrouteClient

    s = stubs(channel)
    for provider_id in ("u-c", "u-a", "u-b"):
        create_provider(s, provider_id, credential_policy=policy(False, True, False), api_key="")
    create_provider(s, "central-only")
    listed = [c.provider_config for c in ModelrouteClient(channel).user_provider_configs("alice", page_size=1)]
    assert listed == [pc("u-a"), pc("u-b"), pc("u-c")]
    first = s.user_keys.ListUserProviderConfigs(user_key_pb2.ListUserProviderConfigsRequest(user="alice", page_size=2))
    assert [c.provider_config for c in first.user_provider_configs] == [pc("u-a"), pc("u-b")]
    error = call_error(
        s.user_keys.ListUserProviderConfigs,
        user_key_pb2.ListUserProviderConfigsRequest(user="bob", page_size=2, page_token=first.next_page_token),
    )
    assert (error.code, error.reason) == (INVALID, "PAGE_TOKEN_INVALID")
