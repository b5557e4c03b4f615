"""Provider configs through gRPC against real PostgreSQL (docs/behaviour.md: families, provider configs, errors).

Every rejected request is checked to change nothing: every table and the
revision counter are compared before and after the call. Keys used here are
dummies, and no assertion ever renders one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.server import Application

from ..helpers import (
    FAMILIES,
    RichError,
    Stubs,
    call_error,
    create_model,
    create_provider,
    policy,
    provider_request,
    stubs,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
STATE_TABLES = ("config_revision", "provider_configs", "model_configs", "model_attachments", "user_provider_keys")
FAMILY_NAMES = ("anthropic", "azure", "bedrock", "google", "openai", "openai-compat", "openrouter", "vercel")
STORED = common_pb2.KEY_SOURCE_STORED
DEPLOYMENT = common_pb2.KEY_SOURCE_DEPLOYMENT
AMBIENT = common_pb2.KEY_SOURCE_AMBIENT
NO_SOURCE = common_pb2.KEY_SOURCE_UNSPECIFIED
AZURE_URL = "https://example-resource.openai.azure.com"
POLICY_PATH = "provider_config.credential_policy"
KEY_PATH = "provider_config.api_key"
URL_PATH = "provider_config.base_url"
ProviderConfig = provider_config_pb2.ProviderConfig


# ---------------------------------------------------------------- helpers


def pc(provider_id: str) -> str:
    return f"providerConfigs/{provider_id}"


def db_state(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in STATE_TABLES
        }


def rejected(
    engine: sa.Engine,
    method: Callable[..., Any],
    request: Any,
    code: grpc.StatusCode = INVALID,
    reason: str | None = None,
) -> RichError:
    """Calls `method`, expects `code` (never INTERNAL/UNKNOWN), and checks that nothing changed."""
    before = db_state(engine)
    error = call_error(method, request)
    assert error.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.reason
    assert error.code == code, (error.code, error.reason, error.message)
    if reason is not None:
        assert error.reason == reason, (error.reason, error.message)
    if code == INVALID:
        assert error.field_violations, "INVALID_ARGUMENT must carry BadRequest field violations"
    assert db_state(engine) == before, "a rejected request changed the configuration"
    return error


def assert_no_key(message: ProviderConfig) -> None:
    # Raised by hand so that a failure never renders the key.
    if message.api_key:
        raise AssertionError(f"{message.name}: a read returned api_key")


def get(s: Stubs, provider_id: str) -> ProviderConfig:
    got = s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name=pc(provider_id)))
    assert_no_key(got)
    return got


def list_page(
    s: Stubs, filter: str = "", page_size: int = 0, page_token: str = ""
) -> provider_config_pb2.ListProviderConfigsResponse:
    return s.providers.ListProviderConfigs(
        provider_config_pb2.ListProviderConfigsRequest(filter=filter, page_size=page_size, page_token=page_token)
    )


def list_all(s: Stubs, filter: str = "", page_size: int = 0) -> list[ProviderConfig]:
    items: list[ProviderConfig] = []
    token = ""
    for _ in range(100):
        page = list_page(s, filter, page_size, token)
        for item in page.provider_configs:
            assert_no_key(item)
        items.extend(page.provider_configs)
        token = page.next_page_token
        if not token:
            return items
    raise AssertionError("paging never ended")


def ids(items: list[ProviderConfig]) -> list[str]:
    return [item.name.removeprefix("providerConfigs/") for item in items]


def update_request(
    provider_id: str, paths: list[str] | None = None, **fields: Any
) -> provider_config_pb2.UpdateProviderConfigRequest:
    message = ProviderConfig(name=pc(provider_id), **fields)
    if paths is None:
        return provider_config_pb2.UpdateProviderConfigRequest(provider_config=message)
    return provider_config_pb2.UpdateProviderConfigRequest(
        provider_config=message, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def update(s: Stubs, provider_id: str, paths: list[str] | None = None, **fields: Any) -> ProviderConfig:
    updated = s.providers.UpdateProviderConfig(update_request(provider_id, paths, **fields))
    assert_no_key(updated)
    return updated


def create(s: Stubs, provider_id: str, family: str = "openai", **fields: Any) -> ProviderConfig:
    created = create_provider(s, provider_id, family, **fields)
    assert_no_key(created)
    return created


def delete_request(provider_id: str, etag: str = "") -> provider_config_pb2.DeleteProviderConfigRequest:
    return provider_config_pb2.DeleteProviderConfigRequest(name=pc(provider_id), etag=etag)


def policy_of(message: ProviderConfig) -> tuple[bool, bool, bool]:
    p = message.credential_policy
    return (p.central_api_key_enabled, p.allow_user_api_key, p.allow_central_api_key_fallback)


def facts(message: ProviderConfig) -> tuple[bool, bool, int]:
    return (message.has_api_key, message.central_credential_usable, message.central_credential_source)


def resolved_key_matches(s: Stubs, provider_id: str, expected: str) -> bool:
    """Whether resolution hands out exactly `expected` for `provider_id` (never rendered on failure)."""
    model_id = f"m-{provider_id}"
    known = {m.name for m in s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest()).model_configs}
    if f"modelConfigs/{model_id}" not in known:
        create_model(s, model_id, providers=(provider_id,))
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model=f"m-{provider_id}"))
    return answer.selected.provider_config == pc(provider_id) and answer.selected.api_key == expected


# ---------------------------------------------------------------- create / get / list / update / delete


def test_create_get_list_update_delete_round_trip(channel: grpc.Channel) -> None:
    s = stubs(channel)
    created = create(s, "openai-main", display_name="OpenAI main", api_key="sk-main")
    assert created.name == "providerConfigs/openai-main"
    assert created.family == common_pb2.FAMILY_OPENAI
    assert created.display_name == "OpenAI main"
    assert created.base_url == ""
    assert created.HasField("enabled") and created.enabled
    assert policy_of(created) == (True, False, False)
    assert facts(created) == (True, True, STORED)
    assert created.HasField("create_time") and created.HasField("update_time")
    assert created.etag

    assert get(s, "openai-main") == created
    assert list_all(s) == [created]

    updated = update(s, "openai-main", display_name="Renamed")
    assert updated.display_name == "Renamed"
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    assert updated.etag != created.etag
    assert get(s, "openai-main") == updated

    deleted = s.providers.DeleteProviderConfig(delete_request("openai-main"))
    assert deleted.config_revision > 0
    assert list(deleted.touched_model_configs) == []
    error = call_error(
        s.providers.GetProviderConfig, provider_config_pb2.GetProviderConfigRequest(name=pc("openai-main"))
    )
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PROVIDER_CONFIG_NOT_FOUND")
    assert list_all(s) == []


def test_every_family_is_accepted_and_display_name_defaults_to_the_familys_name(channel: grpc.Channel) -> None:
    s = stubs(channel)
    expected = {
        "anthropic": "Anthropic",
        "azure": "Azure OpenAI",
        "bedrock": "Amazon Bedrock",
        "google": "Google",
        "openai": "OpenAI",
        "openai-compat": "OpenAI-compatible",
        "openrouter": "OpenRouter",
        "vercel": "Vercel AI Gateway",
    }
    for family in FAMILY_NAMES:
        fields: dict[str, Any] = {"base_url": AZURE_URL} if family in ("azure", "openai-compat") else {}
        created = create(s, f"p-{family}", family, **fields)
        assert created.family == FAMILIES[family]
        assert created.display_name == expected[family]
    assert [p.display_name for p in list_all(s)] == [expected[f] for f in FAMILY_NAMES]


def test_several_configs_of_one_family_coexist(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "openai-org-a", api_key="sk-a")
    create(s, "openai-proxy", api_key="sk-b", base_url="https://proxy.example.com/v1")
    assert ids(list_all(s, "family = openai")) == ["openai-org-a", "openai-proxy"]


# ---------------------------------------------------------------- credential policy


INVALID_POLICIES = {
    (False, False, False): ["no credential source"],
    (False, False, True): ["no credential source", "needs the central key", "needs user keys"],
    (False, True, True): ["needs the central key"],
    (True, False, True): ["needs user keys"],
}


def test_each_invalid_policy_is_rejected_with_its_own_message(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "existing")
    messages: set[str] = set()
    descriptions: set[str] = set()
    for (c, u, f), rules in INVALID_POLICIES.items():
        request = provider_request("bad-policy", credential_policy=policy(c, u, f))
        error = rejected(app.engine, s.providers.CreateProviderConfig, request, reason="CREDENTIAL_POLICY_INVALID")
        assert error.fields == [POLICY_PATH]
        description = error.field_violations[0][1]
        for rule in rules:
            assert rule in description, ((c, u, f), description)
        assert f"({int(c)}, {int(u)}, {int(f)})" in error.message
        messages.add(error.message)
        descriptions.add(description)
    assert len(messages) == len(descriptions) == 4, "every invalid tuple needs its own message"
    # Rules that a tuple does not break are not claimed.
    assert (
        "no credential source"
        not in call_error(
            s.providers.CreateProviderConfig, provider_request("x", credential_policy=policy(True, False, True))
        ).message
    )


def test_each_invalid_policy_is_rejected_on_update(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    for c, u, f in INVALID_POLICIES:
        error = rejected(
            app.engine,
            s.providers.UpdateProviderConfig,
            update_request("p", ["credential_policy"], credential_policy=policy(c, u, f)),
            reason="CREDENTIAL_POLICY_INVALID",
        )
        assert error.fields == [POLICY_PATH]
    assert policy_of(get(s, "p")) == (True, False, False)


@pytest.mark.parametrize(
    ("flags", "key", "expected_facts"),
    [
        ((True, False, False), "sk-c", (True, True, STORED)),
        ((False, True, False), "", (False, False, NO_SOURCE)),
        ((True, True, False), "", (False, False, NO_SOURCE)),
        ((True, True, True), "sk-c", (True, True, STORED)),
    ],
)
def test_the_four_valid_policies_are_accepted(
    channel: grpc.Channel, flags: tuple[bool, bool, bool], key: str, expected_facts: tuple[bool, bool, int]
) -> None:
    s = stubs(channel)
    created = create(s, "p", api_key=key, credential_policy=policy(*flags))
    assert policy_of(created) == flags
    assert facts(created) == expected_facts
    assert get(s, "p") == created


def test_policy_flags_default_to_central_key_only(channel: grpc.Channel) -> None:
    s = stubs(channel)
    partial = common_pb2.CredentialPolicy(allow_user_api_key=True)
    created = create(s, "p", api_key="sk-p", credential_policy=partial)
    assert policy_of(created) == (True, True, False)
    assert policy_of(create(s, "q", api_key="sk-q")) == (True, False, False)


# ---------------------------------------------------------------- keys at the edge


def test_a_10240_byte_key_is_accepted_and_10241_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    ascii_key = "k" * 10_240
    assert create(s, "ascii", api_key=ascii_key).has_api_key
    multibyte = "é" * 5_120  # 10,240 bytes in UTF-8, 5,120 characters
    assert create(s, "multibyte", api_key=multibyte).has_api_key
    assert resolved_key_matches(s, "ascii", ascii_key), "a maximal key must be stored whole"

    for too_long in ("k" * 10_241, "é" * 5_120 + "k"):
        error = rejected(app.engine, s.providers.CreateProviderConfig, provider_request("long", api_key=too_long))
        assert error.fields == [KEY_PATH]
        assert "10240 bytes" in error.field_violations[0][1]
        error = rejected(
            app.engine, s.providers.UpdateProviderConfig, update_request("ascii", ["api_key"], api_key=too_long)
        )
        assert error.fields == [KEY_PATH]
    assert update(s, "multibyte", ["api_key"], api_key="x" * 10_240).has_api_key


@pytest.mark.parametrize("key", [" sk-lead", "sk-trail ", "\tsk-tab", "sk-newline\n", "sk-crlf\r\n", "\u00a0sk-nbsp"])
def test_keys_with_surrounding_white_space_are_rejected(app: Application, channel: grpc.Channel, key: str) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    for request, method in (
        (provider_request("q", api_key=key), s.providers.CreateProviderConfig),
        (
            provider_request("q", api_key=key, credential_policy=policy(True, True, False)),
            s.providers.CreateProviderConfig,
        ),
        (update_request("p", ["api_key"], api_key=key), s.providers.UpdateProviderConfig),
        (update_request("p", None, api_key=key), s.providers.UpdateProviderConfig),
    ):
        error = rejected(app.engine, method, request, reason="FIELD_INVALID")
        assert error.fields == [KEY_PATH]
        assert "white space" in error.field_violations[0][1]


@pytest.mark.parametrize("flags", [(True, False, False), (True, True, False), (False, True, False)])
def test_a_white_space_only_key_is_rejected_never_treated_as_present(
    app: Application, channel: grpc.Channel, flags: tuple[bool, bool, bool]
) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    for blank in (" ", "   ", "\t\n"):
        request = provider_request("q", api_key=blank, credential_policy=policy(*flags))
        error = rejected(app.engine, s.providers.CreateProviderConfig, request)
        assert error.fields == [KEY_PATH]
        error = rejected(app.engine, s.providers.UpdateProviderConfig, update_request("p", ["api_key"], api_key=blank))
        assert error.fields == [KEY_PATH]
    assert get(s, "p").has_api_key


def test_an_empty_key_on_create_means_no_key(channel: grpc.Channel) -> None:
    s = stubs(channel)
    created = create(s, "p", api_key="", credential_policy=policy(True, True, False))
    assert facts(created) == (False, False, NO_SOURCE)


# ---------------------------------------------------------------- base URL


@pytest.mark.parametrize("family", ["azure", "openai-compat"])
def test_azure_and_openai_compat_need_a_base_url(app: Application, channel: grpc.Channel, family: str) -> None:
    s = stubs(channel)
    error = rejected(app.engine, s.providers.CreateProviderConfig, provider_request("p", family))
    assert error.fields == [URL_PATH]
    assert f"required for the {family} family" in error.field_violations[0][1]

    created = create(s, "p", family, base_url=AZURE_URL)
    assert created.base_url == AZURE_URL
    # Clearing it by update is rejected, whether named in the mask or under `*`.
    for request in (
        update_request("p", ["base_url"]),
        update_request("p", ["*"], api_key="sk-new"),
    ):
        error = rejected(app.engine, s.providers.UpdateProviderConfig, request)
        assert error.fields == [URL_PATH]
        assert "required" in error.field_violations[0][1]
    # An omitted mask leaves an unpopulated base URL alone.
    assert update(s, "p", display_name="Still has its URL").base_url == AZURE_URL
    assert update(s, "p", ["base_url"], base_url="https://other.example.com/").base_url == "https://other.example.com/"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://files.example.com/v1", "scheme http or https"),
        ("file:///etc/passwd", "scheme http or https"),
        ("api.example.com/v1", "scheme http or https"),
        ("/relative/path", "scheme http or https"),
        ("//example.com/v1", "scheme http or https"),
        ("http://", "with a host"),
        ("https:///path-only", "with a host"),
        ("https://example.com:99999", "not a valid URL"),
        ("https://user:secret-token@proxy.example.com", "must not contain user info"),
        (" https://example.com", "white space"),
        ("https://example.com/a b", "white space"),
        ("https://exa\nmple.com", "control characters"),
    ],
)
def test_base_url_must_be_absolute_http_with_a_host(
    app: Application, channel: grpc.Channel, url: str, rule: str
) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p", base_url="https://ok.example.com")
    for family in ("openai", "azure", "openrouter"):
        error = rejected(app.engine, s.providers.CreateProviderConfig, provider_request("q", family, base_url=url))
        assert error.fields == [URL_PATH]
        assert rule in error.field_violations[0][1], (url, error.field_violations)
        assert "secret-token" not in error.message + repr(error.field_violations)  # never echoed
    error = rejected(app.engine, s.providers.UpdateProviderConfig, update_request("p", None, base_url=url))
    assert rule in error.field_violations[0][1]
    assert get(s, "p").base_url == "https://ok.example.com"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_base_url_is_passed_through_for_every_family(channel: grpc.Channel, family: str) -> None:
    s = stubs(channel)
    url = "http://gateway.internal:8080/prefix/v1?tenant=a"
    created = create(s, "p", family, base_url=url)
    assert created.base_url == url
    assert get(s, "p").base_url == url


def test_base_url_can_be_cleared_where_not_required(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", "openrouter", base_url="https://openrouter.example.com/api")
    assert update(s, "p", ["base_url"]).base_url == ""
    assert get(s, "p").base_url == ""


# ---------------------------------------------------------------- central-key requirement


def test_central_key_only_without_a_key_is_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    for family in ("openai", "anthropic", "azure"):
        fields: dict[str, Any] = {"base_url": AZURE_URL} if family == "azure" else {}
        for flags in ((True, False, False), (True, True, True)):
            request = provider_request("p", family, api_key="", credential_policy=policy(*flags), **fields)
            error = rejected(app.engine, s.providers.CreateProviderConfig, request, reason="FIELD_INVALID")
            assert error.fields == [KEY_PATH]
            assert "required" in error.field_violations[0][1]
    # The default policy is (1,0,0): omitting it changes nothing.
    rejected(app.engine, s.providers.CreateProviderConfig, provider_request("p", api_key=""))


def test_bedrock_needs_no_key_it_uses_ambient_credentials(channel: grpc.Channel) -> None:
    s = stubs(channel)
    for provider_id, flags in (("b1", (True, False, False)), ("b2", (True, True, True)), ("b3", (True, True, False))):
        created = create(s, provider_id, "bedrock", api_key="", credential_policy=policy(*flags))
        assert facts(created) == (False, True, AMBIENT)
        assert facts(get(s, provider_id)) == (False, True, AMBIENT)
    stored = create(s, "b4", "bedrock", api_key="sk-bedrock")
    assert facts(stored) == (True, True, STORED)
    user_only = create(s, "b5", "bedrock", api_key="", credential_policy=policy(False, True, False))
    assert facts(user_only) == (False, False, NO_SOURCE)


def test_a_deployment_key_for_the_family_satisfies_the_requirement(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    app.ctx.deployment_keys[Family.OPENAI] = "dk-openai"  # type: ignore[index]
    created = create(s, "p", api_key="")
    assert facts(created) == (False, True, DEPLOYMENT)
    assert facts(get(s, "p")) == (False, True, DEPLOYMENT)
    assert [facts(p) for p in list_all(s)] == [(False, True, DEPLOYMENT)]
    # A stored key wins over the deployment key.
    assert facts(create(s, "q", api_key="sk-q")) == (True, True, STORED)
    # Never another family's deployment key, and never where C=0.
    rejected(app.engine, s.providers.CreateProviderConfig, provider_request("a", "anthropic", api_key=""))
    user_only = create(s, "u", api_key="", credential_policy=policy(False, True, False))
    assert facts(user_only) == (False, False, NO_SOURCE)
    # The facts follow the environment: without the deployment key the config is not usable.
    del app.ctx.deployment_keys[Family.OPENAI]  # type: ignore[attr-defined]
    assert facts(get(s, "p")) == (False, False, NO_SOURCE)


def test_a_config_that_lost_its_deployment_key_can_still_be_renamed_or_disabled(
    app: Application, channel: grpc.Channel
) -> None:
    s = stubs(channel)
    app.ctx.deployment_keys[Family.OPENAI] = "dk-openai"  # type: ignore[index]
    create(s, "p", api_key="")
    del app.ctx.deployment_keys[Family.OPENAI]  # type: ignore[attr-defined]
    renamed = update(s, "p", ["display_name", "enabled"], display_name="Renamed", enabled=False)
    assert (renamed.display_name, renamed.enabled, facts(renamed)) == ("Renamed", False, (False, False, NO_SOURCE))
    # A change to the credentials themselves is still held to the requirement.
    error = rejected(
        app.engine,
        s.providers.UpdateProviderConfig,
        update_request("p", ["credential_policy"], credential_policy=policy(True, False, False)),
    )
    assert error.fields == [KEY_PATH]
    assert facts(update(s, "p", ["api_key"], api_key="sk-now")) == (True, True, STORED)


def test_user_key_required_and_user_only_policies_need_no_central_key(channel: grpc.Channel) -> None:
    s = stubs(channel)
    assert facts(create(s, "p110", api_key="", credential_policy=policy(True, True, False))) == (
        False,
        False,
        NO_SOURCE,
    )
    assert facts(create(s, "p010", api_key="", credential_policy=policy(False, True, False))) == (
        False,
        False,
        NO_SOURCE,
    )
    # A key may still be stored; with C=0 it is never a usable central credential.
    assert facts(create(s, "p010k", api_key="sk-x", credential_policy=policy(False, True, False))) == (
        True,
        False,
        NO_SOURCE,
    )


def test_switching_to_a_policy_that_uses_the_central_key_needs_one(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="", credential_policy=policy(True, True, False))
    for flags in ((True, True, True), (True, False, False)):
        error = rejected(
            app.engine,
            s.providers.UpdateProviderConfig,
            update_request("p", ["credential_policy"], credential_policy=policy(*flags)),
        )
        assert error.fields == [KEY_PATH]
    # Supplying the key in the same request makes it valid.
    updated = update(s, "p", ["credential_policy", "api_key"], credential_policy=policy(True, True, True), api_key="k")
    assert (policy_of(updated), facts(updated)) == ((True, True, True), (True, True, STORED))


def test_clearing_the_key_is_allowed_only_when_not_required(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "central", api_key="sk-c")
    create(s, "fallback", api_key="sk-f", credential_policy=policy(True, True, True))
    create(s, "user-required", api_key="sk-u", credential_policy=policy(True, True, False))
    create(s, "user-only", api_key="sk-o", credential_policy=policy(False, True, False))
    create(s, "bedrock", "bedrock", api_key="sk-b")

    for provider_id in ("central", "fallback"):
        error = rejected(app.engine, s.providers.UpdateProviderConfig, update_request(provider_id, ["api_key"]))
        assert error.fields == [KEY_PATH]
        assert get(s, provider_id).has_api_key
    assert facts(update(s, "user-required", ["api_key"])) == (False, False, NO_SOURCE)
    assert facts(update(s, "user-only", ["api_key"])) == (False, False, NO_SOURCE)
    assert facts(update(s, "bedrock", ["api_key"])) == (False, True, AMBIENT)
    # With a deployment key for the family, the stored key may go.
    app.ctx.deployment_keys[Family.OPENAI] = "dk-openai"  # type: ignore[index]
    assert facts(update(s, "central", ["api_key"])) == (False, True, DEPLOYMENT)
    # An empty key under an omitted mask is "not populated": the key stays.
    assert update(s, "fallback", None, display_name="Fallback").has_api_key


def test_a_replaced_key_is_the_one_resolution_hands_out(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-old")
    update(s, "p", ["api_key"], api_key="sk-new")
    assert resolved_key_matches(s, "p", "sk-new")


# ---------------------------------------------------------------- display name, family, ids


def test_display_name_can_change_but_not_be_blanked(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    assert update(s, "p", display_name="Primary OpenAI").display_name == "Primary OpenAI"
    for blank in (" ", "   ", "\t"):
        for request in (
            update_request("p", None, display_name=blank),
            update_request("p", ["display_name"], display_name=blank),
        ):
            error = rejected(app.engine, s.providers.UpdateProviderConfig, request, reason="FIELD_INVALID")
            assert error.fields == ["provider_config.display_name"]
            assert "blank" in error.field_violations[0][1]
        error = rejected(app.engine, s.providers.CreateProviderConfig, provider_request("q", display_name=blank))
        assert error.fields == ["provider_config.display_name"]
    assert get(s, "p").display_name == "Primary OpenAI"
    # Naming it in the mask with no value restores the default (AIP-134): it is never left blank.
    assert update(s, "p", ["display_name"]).display_name == "OpenAI"
    error = rejected(app.engine, s.providers.UpdateProviderConfig, update_request("p", None, display_name="x" * 257))
    assert error.fields == ["provider_config.display_name"]


def test_family_is_immutable(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    anthropic = common_pb2.FAMILY_ANTHROPIC
    for request in (
        update_request("p", None, family=anthropic),
        update_request("p", ["family"], family=anthropic),
        update_request("p", ["family", "display_name"], family=anthropic, display_name="x"),
        update_request("p", ["*"], family=anthropic, api_key="sk-p"),
        update_request("p", ["family"]),
    ):
        error = rejected(app.engine, s.providers.UpdateProviderConfig, request, reason="FAMILY_IMMUTABLE")
        assert error.fields == ["provider_config.family"]
    # Naming the family with its current value is harmless.
    assert (
        update(s, "p", ["family", "display_name"], family=common_pb2.FAMILY_OPENAI, display_name="y").display_name
        == "y"
    )
    assert get(s, "p").family == common_pb2.FAMILY_OPENAI


@pytest.mark.parametrize("value", [0, 9, 42, -1])
def test_unknown_family_is_rejected_listing_the_valid_ones(app: Application, channel: grpc.Channel, value: int) -> None:
    s = stubs(channel)
    message = ProviderConfig(family=value, api_key="sk-x")  # type: ignore[arg-type]
    request = provider_config_pb2.CreateProviderConfigRequest(provider_config=message, provider_config_id="p")
    error = rejected(app.engine, s.providers.CreateProviderConfig, request, reason="FIELD_INVALID")
    assert error.fields == ["provider_config.family"]
    for name in FAMILY_NAMES:
        assert name in error.field_violations[0][1]


@pytest.mark.parametrize(
    "bad_id",
    ["", "Upper", "1abc", "-abc", "abc-", "a_b", "a.b", "a/b", "ab ", "é", "a" * 64, "providerConfigs/abc"],
)
def test_bad_id_slugs_are_rejected(app: Application, channel: grpc.Channel, bad_id: str) -> None:
    s = stubs(channel)
    error = rejected(app.engine, s.providers.CreateProviderConfig, provider_request(bad_id), reason="FIELD_INVALID")
    assert error.fields == ["provider_config_id"]


def test_good_id_slugs_are_accepted(channel: grpc.Channel) -> None:
    s = stubs(channel)
    for good in ("a", "a1", "openai-org-2", "x" * 63):
        assert create(s, good).name == pc(good)


@pytest.mark.parametrize(
    "bad_name", ["", "abc", "providerConfigs/", "providerConfigs/Bad", "models/abc", "providerConfigs/a/b"]
)
def test_bad_resource_names_are_rejected(app: Application, channel: grpc.Channel, bad_name: str) -> None:
    s = stubs(channel)
    create(s, "abc")
    for method, request, field in (
        (s.providers.GetProviderConfig, provider_config_pb2.GetProviderConfigRequest(name=bad_name), "name"),
        (s.providers.DeleteProviderConfig, provider_config_pb2.DeleteProviderConfigRequest(name=bad_name), "name"),
        (
            s.providers.UpdateProviderConfig,
            provider_config_pb2.UpdateProviderConfigRequest(
                provider_config=ProviderConfig(name=bad_name, display_name="x")
            ),
            "provider_config.name",
        ),
    ):
        error = rejected(app.engine, method, request, reason="FIELD_INVALID")
        assert error.fields == [field]


def test_duplicate_id_is_already_exists_and_changes_nothing(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    original = create(s, "dup", display_name="First", api_key="sk-first")
    for request in (
        provider_request("dup", display_name="Second", api_key="sk-second"),
        provider_request("dup", "anthropic", api_key="sk-other"),
    ):
        error = rejected(
            app.engine,
            s.providers.CreateProviderConfig,
            request,
            code=grpc.StatusCode.ALREADY_EXISTS,
            reason="PROVIDER_CONFIG_ALREADY_EXISTS",
        )
        assert error.resource_name == pc("dup")
    assert get(s, "dup") == original
    assert resolved_key_matches(s, "dup", "sk-first")


def test_unknown_ids_are_not_found(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "present")
    for method, request in (
        (s.providers.GetProviderConfig, provider_config_pb2.GetProviderConfigRequest(name=pc("ghost"))),
        (s.providers.DeleteProviderConfig, delete_request("ghost")),
        (s.providers.DeleteProviderConfig, delete_request("ghost", etag='"1"')),
        (s.providers.UpdateProviderConfig, update_request("ghost", None, display_name="x")),
    ):
        error = rejected(
            app.engine, method, request, code=grpc.StatusCode.NOT_FOUND, reason="PROVIDER_CONFIG_NOT_FOUND"
        )
        assert error.resource_name == pc("ghost")
        assert "ghost" in error.message


# ---------------------------------------------------------------- etags


def test_stale_etags_are_aborted_and_current_ones_work(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    first = create(s, "p", api_key="sk-p")
    second = update(s, "p", None, display_name="Second", etag=first.etag)
    assert second.etag != first.etag
    assert get(s, "p").etag == second.etag

    error = rejected(
        app.engine,
        s.providers.UpdateProviderConfig,
        update_request("p", None, display_name="Third", etag=first.etag),
        code=grpc.StatusCode.ABORTED,
        reason="ETAG_MISMATCH",
    )
    assert error.metadata.get("current_etag") == second.etag
    for stale in (first.etag, '"999999"', "garbage"):
        rejected(
            app.engine,
            s.providers.DeleteProviderConfig,
            delete_request("p", stale),
            code=grpc.StatusCode.ABORTED,
            reason="ETAG_MISMATCH",
        )
    # Another config's write moves the revision counter but not this config's etag.
    create(s, "other")
    assert get(s, "p").etag == second.etag
    third = update(s, "p", ["display_name"], display_name="Third", etag=second.etag)
    assert third.display_name == "Third"
    s.providers.DeleteProviderConfig(delete_request("p", third.etag))
    assert ids(list_all(s)) == ["other"]


# ---------------------------------------------------------------- update masks


def test_an_omitted_mask_changes_only_populated_fields(channel: grpc.Channel) -> None:
    s = stubs(channel)
    before = create(
        s,
        "p",
        display_name="Before",
        base_url="https://before.example.com",
        api_key="sk-p",
        credential_policy=policy(True, True, True),
    )
    after = update(s, "p", None, display_name="After")
    assert after.display_name == "After"
    assert (after.base_url, after.enabled, policy_of(after), facts(after)) == (
        before.base_url,
        True,
        (True, True, True),
        (True, True, STORED),
    )
    # An explicit false in an optional field is populated.
    disabled = update(s, "p", None, enabled=False)
    assert (disabled.enabled, disabled.display_name) == (False, "After")
    # A single policy flag that is present changes only that flag.
    narrowed = update(s, "p", None, credential_policy=common_pb2.CredentialPolicy(allow_central_api_key_fallback=False))
    assert policy_of(narrowed) == (True, True, False)
    assert narrowed.has_api_key and narrowed.base_url == before.base_url and not narrowed.enabled


def test_explicit_paths_change_named_fields_only_and_clear_empty_ones(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(
        s,
        "p",
        display_name="Named",
        base_url="https://p.example.com",
        enabled=False,
        api_key="sk-p",
        credential_policy=policy(True, True, True),
    )
    # Populated but unnamed fields are ignored.
    renamed = update(
        s, "p", ["display_name"], display_name="Renamed", base_url="https://ignored.example.com", enabled=True
    )
    assert (renamed.display_name, renamed.base_url, renamed.enabled) == ("Renamed", "https://p.example.com", False)
    # Named but empty fields go back to their defaults.
    cleared = update(s, "p", ["base_url", "enabled", "display_name"])
    assert (cleared.base_url, cleared.enabled, cleared.display_name) == ("", True, "OpenAI")
    leaf = update(s, "p", ["credential_policy.allow_central_api_key_fallback"])
    assert policy_of(leaf) == (True, True, False)
    leaf = update(
        s, "p", ["credential_policy.allow_central_api_key_fallback"], credential_policy=policy(False, False, True)
    )
    assert policy_of(leaf) == (True, True, True), "only the named flag may change"
    assert leaf.has_api_key


def test_the_credential_policy_group_path_sets_all_three_flags(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p", credential_policy=policy(True, True, True))
    assert policy_of(update(s, "p", ["credential_policy"], credential_policy=policy(False, True, False))) == (
        False,
        True,
        False,
    )
    # The group with no flags set restores the default (1,0,0); the stored key satisfies it.
    assert policy_of(update(s, "p", ["credential_policy"])) == (True, False, False)
    partial = common_pb2.CredentialPolicy(allow_user_api_key=True)
    assert policy_of(update(s, "p", ["credential_policy"], credential_policy=partial)) == (True, True, False)


def test_the_star_mask_replaces_every_updatable_field(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(
        s,
        "p",
        display_name="Old",
        base_url="https://old.example.com",
        enabled=False,
        api_key="sk-old",
        credential_policy=policy(True, True, True),
    )
    replaced = update(s, "p", ["*"], display_name="New", api_key="sk-new")
    assert (replaced.display_name, replaced.base_url, replaced.enabled) == ("New", "", True)
    assert (policy_of(replaced), facts(replaced)) == ((True, False, False), (True, True, STORED))
    assert resolved_key_matches(s, "p", "sk-new")
    # The key is write-only, so `*` leaves it alone unless it is sent: a read-modify-write keeps it.
    kept = update(s, "p", ["*"], display_name="New")
    assert facts(kept) == (True, True, STORED)
    assert resolved_key_matches(s, "p", "sk-new")
    user_keys = update(s, "p", ["*"], credential_policy=policy(True, True, False))
    assert (user_keys.display_name, facts(user_keys)) == ("OpenAI", (True, True, STORED))
    # Clearing it takes naming it.
    cleared = update(s, "p", ["api_key"])
    assert facts(cleared) == (False, False, NO_SOURCE)
    # The current family may be restated under `*`.
    restated = update(s, "p", ["*"], family=common_pb2.FAMILY_OPENAI, api_key="sk-3", display_name="Three")
    assert restated.display_name == "Three"


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "has_api_key",
        "central_credential_usable",
        "central_credential_source",
        "create_time",
        "update_time",
        "name",
        "etag",
        "credential_policy.nope",
        "display_name.inner",
        "Display_Name",
        "",
        "credential_policy.",
    ],
)
def test_unknown_and_output_only_mask_paths_are_rejected_by_name(
    app: Application, channel: grpc.Channel, path: str
) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    error = rejected(
        app.engine,
        s.providers.UpdateProviderConfig,
        update_request("p", ["display_name", path], display_name="x"),
        reason="UPDATE_MASK_INVALID",
    )
    assert error.fields == ["update_mask"]
    assert repr(path) in error.field_violations[0][1]
    assert path in error.message


def test_an_update_that_changes_nothing_still_validates_and_succeeds(channel: grpc.Channel) -> None:
    s = stubs(channel)
    created = create(s, "p", api_key="sk-p")
    same = update(s, "p", None)
    assert (same.display_name, policy_of(same), facts(same)) == (
        created.display_name,
        policy_of(created),
        facts(created),
    )


# ---------------------------------------------------------------- api_key is never returned; credential facts


def test_api_key_is_never_returned_and_facts_agree_across_reads(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    app.ctx.deployment_keys[Family.ANTHROPIC] = "dk-anthropic"  # type: ignore[index]
    responses = [
        create(s, "stored", api_key="sk-stored"),
        create(s, "deploy", "anthropic", api_key=""),
        create(s, "ambient", "bedrock", api_key=""),
        create(s, "none", api_key="", credential_policy=policy(True, True, False)),
        create(s, "off", api_key="sk-off", credential_policy=policy(False, True, False)),
        update(s, "stored", ["api_key"], api_key="sk-stored-2"),
    ]
    expected = {
        "stored": (True, True, STORED),
        "deploy": (False, True, DEPLOYMENT),
        "ambient": (False, True, AMBIENT),
        "none": (False, False, NO_SOURCE),
        "off": (True, False, NO_SOURCE),
    }
    listed = {p.name.removeprefix("providerConfigs/"): p for p in list_all(s)}
    for provider_id, wanted in expected.items():
        assert facts(get(s, provider_id)) == wanted, provider_id
        assert facts(listed[provider_id]) == wanted, provider_id
        assert listed[provider_id] == get(s, provider_id)
    for response in responses:
        assert_no_key(response)
        assert facts(response) == expected[response.name.removeprefix("providerConfigs/")]
    for raw in (list_page(s).SerializeToString(), *(r.SerializeToString() for r in responses)):
        for secret in (b"sk-stored", b"sk-stored-2", b"sk-off", b"dk-anthropic"):
            if secret in raw:
                raise AssertionError("a read carried key material")


# ---------------------------------------------------------------- listing


def test_paging_with_page_size_one_visits_every_config_once_in_order(channel: grpc.Channel) -> None:
    s = stubs(channel)
    wanted = ["a-1", "a-10", "a-2", "b", "m-mid", "z-last", "zz"]
    for provider_id in reversed(wanted):
        create(s, provider_id)
    pages = 0
    seen: list[str] = []
    token = ""
    while True:
        page = list_page(s, page_size=1, page_token=token)
        pages += 1
        assert len(page.provider_configs) == 1
        seen.extend(ids(list(page.provider_configs)))
        token = page.next_page_token
        if not token:
            break
        assert pages < 20
    assert seen == sorted(wanted) == wanted
    assert pages == len(wanted)
    assert ids(list_all(s, page_size=3)) == wanted
    assert ids(list_all(s, page_size=1000)) == wanted
    assert list_page(s, page_size=7).next_page_token == ""
    assert ids(list(list_page(s, page_size=10_000).provider_configs)) == wanted


def test_paging_survives_inserts_and_deletes_between_pages(channel: grpc.Channel) -> None:
    s = stubs(channel)
    for provider_id in ("b", "d", "f"):
        create(s, provider_id)
    first = list_page(s, page_size=2)
    assert ids(list(first.provider_configs)) == ["b", "d"]
    create(s, "a")  # before the cursor: not seen again
    create(s, "e")  # after the cursor: seen
    s.providers.DeleteProviderConfig(delete_request("f"))
    rest = list_page(s, page_size=2, page_token=first.next_page_token)
    assert ids(list(rest.provider_configs)) == ["e"]
    assert rest.next_page_token == ""


def test_an_empty_list_has_no_next_page(channel: grpc.Channel) -> None:
    page = list_page(stubs(channel), page_size=1)
    assert (list(page.provider_configs), page.next_page_token) == ([], "")


def _flip(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def test_tampered_or_foreign_page_tokens_are_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    for provider_id in ("a", "b", "c"):
        create(s, provider_id)
    token = list_page(s, page_size=1).next_page_token
    assert token
    family_token = list_page(s, "family = openai", page_size=1).next_page_token
    cases = [
        ("", _flip(token, 0)),
        ("", _flip(token, len(token) // 2)),
        ("", token[:-2]),
        ("", token + "AA"),
        ("", "not a token"),
        ("", "é"),
        ("", "AAAA"),
        ("family = openai", token),  # reused with another filter
        ("enabled = true", family_token),
        ("", family_token),
    ]
    for filter_text, bad in cases:
        request = provider_config_pb2.ListProviderConfigsRequest(filter=filter_text, page_size=1, page_token=bad)
        error = rejected(app.engine, s.providers.ListProviderConfigs, request, reason="PAGE_TOKEN_INVALID")
        assert error.fields == ["page_token"]
    # The genuine tokens still work, also with another page size (AIP-158).
    assert ids(list(list_page(s, page_size=5, page_token=token).provider_configs)) == ["b", "c"]
    assert ids(list(list_page(s, "family = openai", 1, family_token).provider_configs)) == ["b"]


def test_negative_page_size_is_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    request = provider_config_pb2.ListProviderConfigsRequest(page_size=-1)
    error = rejected(app.engine, s.providers.ListProviderConfigs, request, reason="FIELD_INVALID")
    assert error.fields == ["page_size"]


def test_filters_on_family_and_enabled(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "oa-on")
    create(s, "oa-off", enabled=False)
    create(s, "an-on", "anthropic")
    create(s, "an-off", "anthropic", enabled=False)
    create(s, "compat", "openai-compat", base_url=AZURE_URL)
    cases = {
        "": ["an-off", "an-on", "compat", "oa-off", "oa-on"],
        "family = openai": ["oa-off", "oa-on"],
        'family = "openai"': ["oa-off", "oa-on"],
        'family = "FAMILY_OPENAI"': ["oa-off", "oa-on"],
        "family = FAMILY_OPENAI": ["oa-off", "oa-on"],
        "family=OpenAI": ["oa-off", "oa-on"],
        "family = openai-compat": ["compat"],
        "family = FAMILY_OPENAI_COMPAT": ["compat"],
        "family = vercel": [],
        "enabled = false": ["an-off", "oa-off"],
        "enabled = true": ["an-on", "compat", "oa-on"],
        "family = openai AND enabled = false": ["oa-off"],
        'enabled = true AND family = "FAMILY_ANTHROPIC"': ["an-on"],
        "  family = anthropic   AND   enabled = false  ": ["an-off"],
    }
    for filter_text, wanted in cases.items():
        assert ids(list_all(s, filter_text)) == wanted, filter_text
        assert ids(list_all(s, filter_text, page_size=1)) == wanted, filter_text


@pytest.mark.parametrize(
    "bad",
    [
        "family = mistral",
        "family = FAMILY_UNSPECIFIED",
        "enabled = maybe",
        "enabled = 1",
        "family = openai OR enabled = true",
        "family = openai and enabled = true",
        "family = openai AND family = anthropic",
        "colour = red",
        "display_name = x",
        "family",
        "family != openai",
        "AND",
        "family = openai AND",
        'family = "openai',
        'family = openai"',
        'enabled = "true',
    ],
)
def test_bad_filters_are_rejected(app: Application, channel: grpc.Channel, bad: str) -> None:
    s = stubs(channel)
    create(s, "p")
    error = rejected(
        app.engine,
        s.providers.ListProviderConfigs,
        provider_config_pb2.ListProviderConfigsRequest(filter=bad),
        reason="FILTER_INVALID",
    )
    assert error.fields == ["filter"]


# ---------------------------------------------------------------- deletion


def test_delete_removes_the_config_and_its_key_for_good(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    s.providers.DeleteProviderConfig(delete_request("p"))
    with app.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM provider_configs")).scalar_one() == 0
    # The id is free again, and the new config does not inherit the old key.
    recreated = create(s, "p", api_key="", credential_policy=policy(True, True, False))
    assert facts(recreated) == (False, False, NO_SOURCE)


def test_deleting_an_attached_config_needs_force(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p", api_key="sk-p")
    create_model(s, "m", providers=("p",))
    error = rejected(
        app.engine,
        s.providers.DeleteProviderConfig,
        delete_request("p"),
        code=grpc.StatusCode.FAILED_PRECONDITION,
        reason="PROVIDER_CONFIG_IN_USE",
    )
    assert [v[1] for v in error.precondition_violations] == ["modelConfigs/m"]
    outcome = s.providers.DeleteProviderConfig(
        provider_config_pb2.DeleteProviderConfigRequest(name=pc("p"), force=True)
    )
    assert list(outcome.touched_model_configs) == ["modelConfigs/m"]


def test_the_default_page_size_is_50(channel: grpc.Channel) -> None:
    s = stubs(channel)
    wanted = [f"p-{i:02d}" for i in range(51)]
    for provider_id in wanted:
        create(s, provider_id)
    first = list_page(s)
    assert ids(list(first.provider_configs)) == wanted[:50]
    rest = list_page(s, page_token=first.next_page_token)
    assert (ids(list(rest.provider_configs)), rest.next_page_token) == (wanted[50:], "")


def test_a_model_list_token_is_not_a_provider_list_token(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p")
    create(s, "q")
    create_model(s, "m-1", providers=("p",))
    create_model(s, "m-2", providers=("p",))
    model_token = s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(page_size=1)).next_page_token
    assert model_token
    request = provider_config_pb2.ListProviderConfigsRequest(page_size=1, page_token=model_token)
    rejected(app.engine, s.providers.ListProviderConfigs, request, reason="PAGE_TOKEN_INVALID")


def test_create_ignores_the_name_and_output_only_fields(channel: grpc.Channel) -> None:
    s = stubs(channel)
    created = create(
        s,
        "p",
        api_key="",
        credential_policy=policy(True, True, False),
        name="providerConfigs/other",
        has_api_key=True,
        central_credential_usable=True,
        central_credential_source=STORED,
        etag='"12345"',
    )
    assert created.name == pc("p")
    assert facts(created) == (False, False, NO_SOURCE)
    assert created.etag != '"12345"'
    assert ids(list_all(s)) == ["p"]


def test_control_characters_are_rejected_before_reaching_the_database(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p")
    for request, method, field in (
        (
            provider_request("q", display_name="a\x00b"),
            s.providers.CreateProviderConfig,
            "provider_config.display_name",
        ),
        (
            update_request("p", None, display_name="a\x00b"),
            s.providers.UpdateProviderConfig,
            "provider_config.display_name",
        ),
        (provider_request("q", base_url="https://a.example.com/\x00"), s.providers.CreateProviderConfig, URL_PATH),
    ):
        error = rejected(app.engine, method, request, reason="FIELD_INVALID")
        assert error.fields == [field]


def test_an_unknown_family_on_update_is_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create(s, "p")
    error = rejected(
        app.engine, s.providers.UpdateProviderConfig, update_request("p", None, family=42), reason="FIELD_INVALID"
    )
    assert error.fields == ["provider_config.family"]
    assert "openai-compat" in error.field_violations[0][1]
