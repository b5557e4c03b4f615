"""The resolution contract: the order of attachments, the reason and the fixer of every skip, user keys and
central keys by policy, explain with what-ifs, the available models, and the asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from modelroute import Client, aio, errors
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from .support import CENTRAL_KEY, ContractTarget, make_model, make_provider, policy, raised, short


def test_the_order_of_the_list_with_skips_explained(client: Client, new_id: Callable[[str], str]) -> None:
    disabled, user_only, central, fallback_ok = (new_id(n) for n in ("disabled", "user-only", "central", "fallback"))
    make_provider(client, disabled, enabled=False)
    make_provider(client, user_only, api_key="", credential_policy=policy(False, True, False))
    make_provider(client, central, family=common_pb2.FAMILY_AZURE, base_url="https://contract.openai.azure.com")
    make_provider(client, fallback_ok, api_key="sk-contract-fallback", credential_policy=policy(True, True, True))
    model_id = new_id("m")
    make_model(client, model_id, [disabled, user_only, (central, "gpt4o-contract"), fallback_ok])

    answer = client.resolve(model_id, user="contract-dave")
    assert answer.model_config == f"modelConfigs/{model_id}"
    assert (short(answer.selected.provider_config), answer.selected.position) == (central, 2)
    assert (answer.selected.model, answer.selected.api_key) == ("gpt4o-contract", CENTRAL_KEY)
    assert answer.selected.base_url == "https://contract.openai.azure.com"
    assert answer.selected.key_source == common_pb2.KEY_SOURCE_STORED
    assert answer.selected.family == common_pb2.FAMILY_AZURE
    assert [(short(f.provider_config), f.position, f.model, f.api_key) for f in answer.fallbacks] == [
        (fallback_ok, 3, "gpt-4o", "sk-contract-fallback")
    ]
    assert [(short(s.provider_config), s.position, s.reason, s.fixable_by) for s in answer.skipped] == [
        (disabled, 0, common_pb2.SKIP_REASON_PROVIDER_DISABLED, common_pb2.FIXABLE_BY_ADMIN),
        (user_only, 1, common_pb2.SKIP_REASON_USER_KEY_REQUIRED, common_pb2.FIXABLE_BY_USER),
    ]
    assert all(s.message for s in answer.skipped)

    # The user sets a key: the user-only attachment now comes first, with the user's key.
    client.set_user_key("contract-dave", user_only, "uk-contract-dave")
    answer = client.resolve(model_id, user="contract-dave")
    assert (short(answer.selected.provider_config), answer.selected.api_key) == (user_only, "uk-contract-dave")
    assert answer.selected.key_source == common_pb2.KEY_SOURCE_USER
    # Another user is not affected; and under (1,1,1) a user's own key is preferred to the central one.
    assert short(client.resolve(model_id, user="contract-erin").selected.provider_config) == central
    client.set_user_key("contract-erin", fallback_ok, "uk-contract-erin")
    erin = client.resolve(model_id, user="contract-erin")
    assert [(short(f.provider_config), f.api_key, f.key_source) for f in erin.fallbacks] == [
        (fallback_ok, "uk-contract-erin", common_pb2.KEY_SOURCE_USER)
    ]
    client.delete_user_key("contract-dave", user_only)
    assert short(client.resolve(model_id, user="contract-dave").selected.provider_config) == central


def test_a_model_with_nothing_usable_lists_every_skip(client: Client, new_id: Callable[[str], str]) -> None:
    off, user_only = new_id("off"), new_id("user-only")
    make_provider(client, off, enabled=False)
    make_provider(client, user_only, api_key="", credential_policy=policy(False, True, False))
    model_id = new_id("m")
    make_model(client, model_id, [off, user_only])
    error = raised(lambda: client.resolve(model_id, user="contract-frank"))
    assert isinstance(error, errors.NoUsableAttachmentError)
    assert [(kind, short(subject)) for kind, subject, _ in error.precondition_violations] == [
        ("PROVIDER_DISABLED", off),
        ("USER_KEY_REQUIRED", user_only),
    ]


def test_explain_walks_the_same_list_without_secrets_and_answers_what_ifs(
    client: Client, new_id: Callable[[str], str]
) -> None:
    off, user_only = new_id("off"), new_id("user-only")
    make_provider(client, off, enabled=False)
    make_provider(client, user_only, api_key="", credential_policy=policy(False, True, False))
    model_id = new_id("m")
    make_model(client, model_id, [off, user_only])
    explained = client.explain(model_id, user="contract-gina")
    assert not explained.usable and len(explained.outcomes) == 2
    assert "sk-" not in str(explained) and "uk-" not in str(explained)
    with_key = client.explain(model_id, user="contract-gina", user_has_key={user_only: True})
    assert with_key.usable and with_key.selected_position == 1
    enabled = client.explain(model_id, user="contract-gina", provider_enabled={off: True})
    assert enabled.usable and enabled.selected_position == 0
    # The what-ifs changed nothing.
    assert isinstance(raised(lambda: client.resolve(model_id, user="contract-gina")), errors.NoUsableAttachmentError)


def test_available_models_say_which_a_user_can_use(client: Client, new_id: Callable[[str], str]) -> None:
    user_only = new_id("user-only")
    make_provider(client, user_only, api_key="", credential_policy=policy(False, True, False))
    model_id = new_id("m")
    make_model(client, model_id, [user_only], display_name="Contract model")
    by_name = {m.model_config: m for m in client.available_models(user="contract-hana", page_size=50)}
    listed = by_name[f"modelConfigs/{model_id}"]
    assert (listed.display_name, listed.usable) == ("Contract model", False)
    client.set_user_key("contract-hana", user_only, "uk-contract-hana")
    by_name = {m.model_config: m for m in client.available_models(user="contract-hana", page_size=50)}
    assert by_name[f"modelConfigs/{model_id}"].usable


def test_a_write_is_resolved_at_once_with_its_revision(client: Client, new_id: Callable[[str], str]) -> None:
    first, second = new_id("p"), new_id("p")
    make_provider(client, first), make_provider(client, second)
    model_id = new_id("m")
    make_model(client, model_id, [first, second])
    moved = client.update_model_config(
        model_config_pb2.ModelConfig(
            name=f"modelConfigs/{model_id}",
            provider_configs=[f"providerConfigs/{second}", f"providerConfigs/{first}"],
        ),
        ["provider_configs"],
    )
    answer = client.resolve(model_id, min_revision=moved.config_revision)
    assert short(answer.selected.provider_config) == second


def test_the_asyncio_client_speaks_the_same_contract(
    client: Client, contract_target: ContractTarget, new_id: Callable[[str], str]
) -> None:
    provider_id, model_id = new_id("p"), new_id("m")

    async def scenario() -> None:
        async with aio.Client(contract_target.address, 30.0, token=contract_target.token, tls=contract_target.tls) as c:
            created = await c.create_provider_config(
                provider_id,
                provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-contract-aio"),
            )
            assert created.config_revision > 0 and created.value.has_api_key
            model = model_config_pb2.ModelConfig(
                family=common_pb2.FAMILY_OPENAI,
                model="gpt-4o-mini",
                context_limit=128_000,
                provider_configs=[f"providerConfigs/{provider_id}"],
            )
            written = await c.create_model_config(model_id, model)
            answers = await asyncio.gather(
                *(c.resolve(model_id, min_revision=written.config_revision) for _ in range(20))
            )
            assert {(a.selected.api_key, a.selected.model) for a in answers} == {("sk-contract-aio", "gpt-4o-mini")}
            names = [short(p.name) async for p in c.list_provider_configs(page_size=1)]
            assert provider_id in names and len(names) == len(set(names))
            try:
                await c.get_model_config(new_id("missing"))
            except errors.ModelConfigNotFoundError as error:
                assert error.resource_name.startswith("modelConfigs/")
            else:
                raise AssertionError("expected MODEL_CONFIG_NOT_FOUND")

    asyncio.run(scenario())
    assert client.get_model_config(model_id).model == "gpt-4o-mini"
