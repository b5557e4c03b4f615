"""The resource contract: update masks, etags, pagination, soft delete and undelete, the default-model rule,
and the trailers every write sets."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from modelroute import Client, errors
from modelroute.client import stubs_for
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from .support import attachment, make_model, make_provider, model_message, policy, raised, short


def test_an_update_changes_what_its_mask_names_and_nothing_else(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id = new_id("p")
    created = make_provider(client, provider_id, display_name="Before", base_url="https://before.example.com")
    sent = provider_config_pb2.ProviderConfig(
        name=created.name, display_name="After", base_url="https://ignored.example.com"
    )
    updated = client.update_provider_config(sent, ["display_name"]).value
    assert (updated.display_name, updated.base_url) == ("After", "https://before.example.com")
    assert updated.etag != created.etag and updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # Without a mask: every populated field (AIP-134); output-only fields are ignored, not refused.
    sent = provider_config_pb2.ProviderConfig(
        name=created.name, base_url="https://after.example.com", has_api_key=False
    )
    updated = client.update_provider_config(sent).value
    assert (updated.display_name, updated.base_url, updated.has_api_key) == ("After", "https://after.example.com", True)

    # A named field sent empty clears it (the display name goes back to the family's default).
    updated = client.update_provider_config(provider_config_pb2.ProviderConfig(name=created.name), ["display_name"])
    assert updated.value.display_name == "OpenAI"

    # Nested paths of the credential policy, and the write-only key: named with an empty value, it is cleared.
    sent = provider_config_pb2.ProviderConfig(name=created.name, credential_policy=policy(False, True, False))
    updated = client.update_provider_config(
        sent,
        [
            "credential_policy.central_api_key_enabled",
            "credential_policy.allow_user_api_key",
            "api_key",
        ],
    ).value
    assert (updated.credential_policy.central_api_key_enabled, updated.credential_policy.allow_user_api_key) == (
        False,
        True,
    )
    assert not updated.has_api_key and not updated.api_key  # never returned


def test_a_model_update_mask_with_options_and_attachments(client: Client, new_id: Callable[[str], str]) -> None:
    first, second = new_id("p"), new_id("p")
    make_provider(client, first), make_provider(client, second)
    model_id = new_id("m")
    make_model(client, model_id, [first], options=model_config_pb2.ModelCallOptions(temperature=0.5, top_p=0.9))
    sent = model_config_pb2.ModelConfig(
        name=f"modelConfigs/{model_id}",
        options=model_config_pb2.ModelCallOptions(temperature=0.1, top_p=0.1),
        attachments=[attachment(second), attachment(first, "gpt-4o-2024-08-06")],
    )
    updated = client.update_model_config(sent, ["options.temperature", "attachments"]).value
    assert (updated.options.temperature, updated.options.top_p) == (0.1, 0.9)
    assert [(short(a.provider_config), a.position, a.effective_model) for a in updated.attachments] == [
        (second, 0, "gpt-4o"),
        (first, 1, "gpt-4o-2024-08-06"),
    ]
    assert updated.provider_configs == [f"providerConfigs/{second}", f"providerConfigs/{first}"]
    error = raised(lambda: client.update_model_config(sent, ["options.no_such_option"]))
    assert isinstance(error, errors.UpdateMaskInvalidError)


def test_etags_guard_updates_and_deletes(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id = new_id("p")
    created = make_provider(client, provider_id)
    fresh = provider_config_pb2.ProviderConfig(name=created.name, etag=created.etag, display_name="One")
    updated = client.update_provider_config(fresh, ["display_name"]).value
    assert updated.etag != created.etag
    # The old etag no longer matches: ABORTED, with the current one for a retry; nothing changed.
    stale = provider_config_pb2.ProviderConfig(name=created.name, etag=created.etag, display_name="Two")
    error = raised(lambda: client.update_provider_config(stale, ["display_name"]))
    assert isinstance(error, errors.EtagMismatchError) and error.code is grpc.StatusCode.ABORTED
    assert error.metadata["current_etag"] == updated.etag
    assert client.get_provider_config(provider_id).display_name == "One"
    assert isinstance(
        raised(lambda: client.delete_provider_config(provider_id, etag=created.etag)), errors.AbortedError
    )
    client.delete_provider_config(provider_id, etag=updated.etag)
    assert isinstance(raised(lambda: client.get_provider_config(provider_id)), errors.ProviderConfigNotFoundError)


def test_an_update_that_changes_nothing_keeps_the_etag_and_the_revision(
    client: Client, new_id: Callable[[str], str]
) -> None:
    provider_id = new_id("p")
    created = client.create_provider_config(
        provider_id, provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-contract-same")
    )
    again = provider_config_pb2.ProviderConfig(
        name=created.value.name, display_name=created.value.display_name, api_key="sk-contract-same"
    )
    written = client.update_provider_config(again, ["display_name", "api_key"])
    assert (written.value.etag, written.value.update_time) == (created.value.etag, created.value.update_time)
    assert client.get_provider_config(provider_id) == created.value
    # The latest revision the write saw (another client may have written meanwhile): never none.
    assert written.config_revision >= created.config_revision


def test_pagination_visits_every_item_once_in_pages_of_the_size_asked(
    client: Client, new_id: Callable[[str], str]
) -> None:
    made = {new_id("page") for _ in range(5)}
    for provider_id in made:
        make_provider(client, provider_id, family=common_pb2.FAMILY_ANTHROPIC)
    pages = list(client.list_provider_configs(filter="family = anthropic", page_size=2).pages())
    assert all(len(page.provider_configs) <= 2 for page in pages) and not pages[-1].next_page_token
    names = [short(p.name) for page in pages for p in page.provider_configs]
    assert len(names) == len(set(names)) and made <= set(names)
    assert all(p.family == common_pb2.FAMILY_ANTHROPIC for page in pages for p in page.provider_configs)
    assert names == sorted(names)  # a stable order, so that pages neither skip nor repeat

    # A page token belongs to its query: another filter with it is refused.
    token = pages[0].next_page_token
    other_query = provider_config_pb2.ListProviderConfigsRequest(
        page_size=2, page_token=token, filter="family = openai"
    )
    stub_error = raised(lambda: stubs_for(client.channel)["providers"].ListProviderConfigs(other_query, timeout=30))
    assert isinstance(stub_error, errors.PageTokenInvalidError)


def test_a_negative_page_size_is_refused_and_a_large_one_is_capped(client: Client) -> None:
    error = raised(lambda: list(client.list_model_configs(page_size=-1)))
    assert isinstance(error, errors.FieldInvalidError) and error.fields == ["page_size"]
    first_page = next(iter(client.list_provider_configs(page_size=10_000).pages()))
    assert len(first_page.provider_configs) <= 200  # AIP-158: above the maximum means the maximum


def test_soft_delete_and_undelete(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id, model_id = new_id("p"), new_id("m")
    make_provider(client, provider_id)
    make_model(client, model_id, [provider_id])
    deleted = client.delete_model_config(model_id).value
    assert deleted.HasField("delete_time")
    # Gone from lists and resolution, still readable by name, its id reserved.
    assert model_id not in {short(m.name) for m in client.list_model_configs()}
    assert model_id in {short(m.name) for m in client.list_model_configs(show_deleted=True)}
    assert client.get_model_config(model_id).HasField("delete_time")
    assert isinstance(raised(lambda: client.resolve(model_id)), errors.ModelConfigNotFoundError)
    assert isinstance(raised(lambda: make_model(client, model_id, [provider_id])), errors.ModelConfigAlreadyExistsError)
    # Deleting it again is NOT_FOUND (AIP-164); undelete brings it back as it was.
    assert isinstance(raised(lambda: client.delete_model_config(model_id)), errors.ModelConfigNotFoundError)
    restored = client.undelete_model_config(model_id).value
    assert not restored.HasField("delete_time") and [short(p) for p in restored.provider_configs] == [provider_id]
    assert client.resolve(model_id).selected.provider_config == f"providerConfigs/{provider_id}"


def test_the_default_model_rule(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id = new_id("p")
    make_provider(client, provider_id)
    first, second = new_id("m"), new_id("m")
    make_model(client, first, [provider_id])
    # Claiming the default takes it from whoever held it, and the write says so in its trailers.
    claimed = client.create_model_config(second, model_message([provider_id], is_default=True))
    assert claimed.default_changed and claimed.default_model_config == f"modelConfigs/{second}"
    assert claimed.value.is_default and client.resolve("").model_config == f"modelConfigs/{second}"
    taken = client.update_model_config(
        model_config_pb2.ModelConfig(name=f"modelConfigs/{first}", is_default=True), ["is_default"]
    )
    assert taken.default_changed and taken.default_model_config == f"modelConfigs/{first}"
    assert not client.get_model_config(second).is_default
    # A write that leaves the default where it was says nothing about it.
    renamed = client.update_model_config(
        model_config_pb2.ModelConfig(name=f"modelConfigs/{second}", display_name="renamed"), ["display_name"]
    )
    assert not renamed.default_changed and renamed.default_model_config == ""
    # The default may not be disabled into place; disabling or deleting it hands it on to another model.
    refused = raised(
        lambda: client.create_model_config(new_id("m"), model_message([provider_id], enabled=False, is_default=True))
    )
    assert isinstance(refused, errors.DisabledModelCannotBeDefaultError)
    disabled = client.update_model_config(
        model_config_pb2.ModelConfig(name=f"modelConfigs/{first}", enabled=False), ["enabled"]
    )
    assert disabled.default_changed and disabled.default_model_config not in ("", f"modelConfigs/{first}")
    holder = disabled.default_model_config
    assert client.get_model_config(short(holder)).is_default and client.resolve("").model_config == holder


def test_every_write_reports_the_revision_it_made_and_reads_can_wait_for_it(
    client: Client, new_id: Callable[[str], str]
) -> None:
    provider_id, model_id = new_id("p"), new_id("m")
    created = client.create_provider_config(
        provider_id, provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-contract-rev")
    )
    model = client.create_model_config(model_id, model_message([provider_id]))
    revisions = [created.config_revision, model.config_revision]
    assert all(r > 0 for r in revisions) and revisions == sorted(revisions) and len(set(revisions)) == 2
    answer = client.resolve(model_id, min_revision=model.config_revision)
    assert answer.config_revision >= model.config_revision
    deleted = client.delete_model_config(model_id)
    assert deleted.config_revision > model.config_revision
    forced = client.delete_provider_config(provider_id, force=True)
    assert forced.config_revision > deleted.config_revision
    assert forced.value.config_revision == forced.config_revision  # the response field and the trailer agree


def test_user_key_writes_report_a_revision_too(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id = new_id("p")
    make_provider(client, provider_id, credential_policy=policy(True, True, True))
    written = client.set_user_key("contract-carol", provider_id, "uk-contract-carol")
    assert written.config_revision > 0 and written.value.has_user_api_key
    listed = {short(u.provider_config): u for u in client.user_provider_configs("contract-carol")}
    assert listed[provider_id].has_user_api_key
    removed = client.delete_user_key("contract-carol", provider_id)
    assert removed.config_revision >= written.config_revision
    listed = {short(u.provider_config): u for u in client.user_provider_configs("contract-carol")}
    assert not listed[provider_id].has_user_api_key
