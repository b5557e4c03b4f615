"""One model behind several families: attachments with their own upstream model names (docs/behaviour.md,
"Attachments"), through the API, the database, the snapshot on a second replica, and the audit log."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from google.protobuf.json_format import MessageToDict

from modelroute.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.entrypoints.server import Application

from ..conftest import RunningServer, all_roles_token, build_app, wait_for
from ..helpers import RichError, Stubs, call_error, create_provider, policy, stubs
from .test_model_configs import db_state, default_report, delete_provider, get, mc, pc, undelete

INVALID = grpc.StatusCode.INVALID_ARGUMENT
AZURE_EU_URL = "https://eu-resource.openai.azure.com"
AZURE_US_URL = "https://us-resource.openai.azure.com"
OPENROUTER_URL = "https://openrouter.ai/api/v1"


def attachment(provider_id: str, override: str = "") -> model_config_pb2.Attachment:
    return model_config_pb2.Attachment(provider_config=pc(provider_id), model=override)


def model_message(family: str, upstream: str, *entries: tuple[str, str]) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(
        family=common_pb2.Family.Value("FAMILY_" + family.upper().replace("-", "_")),
        model=upstream,
        context_limit=128_000,
        attachments=[attachment(p, o) for p, o in entries],
    )


def create(s: Stubs, model_id: str, message: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    request = model_config_pb2.CreateModelConfigRequest(model_config=message, model_config_id=model_id)
    created: model_config_pb2.ModelConfig = s.models.CreateModelConfig(request)
    return created


def update(s: Stubs, message: model_config_pb2.ModelConfig, paths: list[str] | None) -> model_config_pb2.ModelConfig:
    request = model_config_pb2.UpdateModelConfigRequest(model_config=message)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    updated: model_config_pb2.ModelConfig = s.models.UpdateModelConfig(request)
    return updated


def rejected(engine: sa.Engine, method: Any, request: Any) -> RichError:
    before = db_state(engine)
    error = call_error(method, request)
    assert db_state(engine) == before, "a rejected request changed the configuration"
    return error


def shown(model: model_config_pb2.ModelConfig) -> list[tuple[str, str, str]]:
    """Each attachment as a read shows it: (provider config, override, effective upstream name)."""
    return [(a.provider_config.removeprefix("providerConfigs/"), a.model, a.effective_model) for a in model.attachments]


def stored(engine: sa.Engine, model_id: str) -> list[tuple[str, str, str, int, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT provider_config_id, family, model_family, position, model_override FROM model_attachments "
                "WHERE model_config_id = :m ORDER BY position"
            ),
            {"m": model_id},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def resolve(s: Stubs, model_id: str, user: str = "") -> resolver_pb2.ResolveModelResponse:
    answer: resolver_pb2.ResolveModelResponse = s.resolver.ResolveModel(
        resolver_pb2.ResolveModelRequest(model=model_id, user=user)
    )
    return answer


def served(answer: resolver_pb2.ResolveModelResponse) -> list[tuple[str, str, str, str, str]]:
    """(provider config, family, upstream name, base URL, key) of the selected attachment and each fallback."""
    return [
        (
            a.provider_config.removeprefix("providerConfigs/"),
            common_pb2.Family.Name(a.family),
            a.model,
            a.base_url,
            a.api_key,
        )
        for a in (answer.selected, *answer.fallbacks)
    ]


def three_families(s: Stubs) -> None:
    create_provider(s, "azure-eu", "azure", base_url=AZURE_EU_URL, api_key="sk-azure-eu")
    create_provider(s, "openai-main", "openai", api_key="sk-openai-main")
    create_provider(s, "openrouter", "openrouter", base_url=OPENROUTER_URL, api_key="sk-openrouter")


CHAIN = (("azure-eu", "gpt4o-eu-prod"), ("openai-main", ""), ("openrouter", "openai/gpt-4o"))


def test_azure_then_openai_then_openrouter_is_one_model(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    model = create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    assert shown(model) == [
        ("azure-eu", "gpt4o-eu-prod", "gpt4o-eu-prod"),
        ("openai-main", "", "gpt-4o"),
        ("openrouter", "openai/gpt-4o", "openai/gpt-4o"),
    ]
    assert [common_pb2.Family.Name(a.family) for a in model.attachments] == [
        "FAMILY_AZURE",
        "FAMILY_OPENAI",
        "FAMILY_OPENROUTER",
    ]
    assert list(model.provider_configs) == [pc("azure-eu"), pc("openai-main"), pc("openrouter")]
    # The database holds each row's own provider family beside the model's, and NULL for no override.
    assert stored(engine, "gpt-4o") == [
        ("azure-eu", "azure", "openai", 0, "gpt4o-eu-prod"),
        ("openai-main", "openai", "openai", 1, None),
        ("openrouter", "openrouter", "openai", 2, "openai/gpt-4o"),
    ]

    answer = resolve(s, "gpt-4o")
    assert served(answer) == [
        ("azure-eu", "FAMILY_AZURE", "gpt4o-eu-prod", AZURE_EU_URL, "sk-azure-eu"),
        ("openai-main", "FAMILY_OPENAI", "gpt-4o", "", "sk-openai-main"),
        ("openrouter", "FAMILY_OPENROUTER", "openai/gpt-4o", OPENROUTER_URL, "sk-openrouter"),
    ]
    # Explain and the catalogue say the same.
    explained = s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="gpt-4o"))
    assert [o.model for o in explained.outcomes] == ["gpt4o-eu-prod", "gpt-4o", "openai/gpt-4o"]
    catalogue = s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest())
    assert [(m.selected_provider_config, m.selected_model) for m in catalogue.models] == [
        (pc("azure-eu"), "gpt4o-eu-prod")
    ]

    # Disabling azure-eu selects openai-main; the skipped one still says the name it would have been sent.
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=pc("azure-eu"), enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    answer = resolve(s, "gpt-4o")
    assert [a[:3] for a in served(answer)] == [
        ("openai-main", "FAMILY_OPENAI", "gpt-4o"),
        ("openrouter", "FAMILY_OPENROUTER", "openai/gpt-4o"),
    ]
    assert [(k.provider_config, k.model) for k in answer.skipped] == [(pc("azure-eu"), "gpt4o-eu-prod")]
    catalogue = s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest())
    assert [(m.selected_provider_config, m.selected_model) for m in catalogue.models] == [(pc("openai-main"), "gpt-4o")]


def test_two_azure_deployments_with_different_names_serve_one_model(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "azure-eu", "azure", base_url=AZURE_EU_URL, api_key="sk-azure-eu")
    create_provider(s, "azure-us", "azure", base_url=AZURE_US_URL, api_key="sk-azure-us")
    create(s, "gpt-4o", model_message("azure", "gpt-4o", ("azure-eu", "gpt4o-eu-prod"), ("azure-us", "gpt4o-us-2")))
    assert served(resolve(s, "gpt-4o")) == [
        ("azure-eu", "FAMILY_AZURE", "gpt4o-eu-prod", AZURE_EU_URL, "sk-azure-eu"),
        ("azure-us", "FAMILY_AZURE", "gpt4o-us-2", AZURE_US_URL, "sk-azure-us"),
    ]


def test_a_user_key_is_sent_with_its_attachments_override(channel: grpc.Channel) -> None:
    """The caller's own key takes the path that encodes it per call: the override travels with it."""
    s = stubs(channel)
    create_provider(s, "openai-main", "openai", api_key="sk-openai-main")
    create_provider(
        s, "openrouter", "openrouter", base_url=OPENROUTER_URL, api_key="", credential_policy=policy(False, True, False)
    )
    create(s, "gpt-4o", model_message("openai", "gpt-4o", ("openrouter", "openai/gpt-4o"), ("openai-main", "")))
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="ann", provider_config=pc("openrouter"), api_key="sk-ann-own")
    )
    for _ in range(2):  # decided, then from the answer kept for (model, user)
        assert served(resolve(s, "gpt-4o", "ann")) == [
            ("openrouter", "FAMILY_OPENROUTER", "openai/gpt-4o", OPENROUTER_URL, "sk-ann-own"),
            ("openai-main", "FAMILY_OPENAI", "gpt-4o", "", "sk-openai-main"),
        ]
    answer = resolve(s, "gpt-4o", "bob")
    assert [(k.provider_config, k.reason, k.model) for k in answer.skipped] == [
        (pc("openrouter"), common_pb2.SKIP_REASON_USER_KEY_REQUIRED, "openai/gpt-4o")
    ]


def test_another_family_without_an_override_is_rejected_naming_the_position(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    three_families(s)
    expected_text = "providerConfigs/openrouter is of family openrouter, the model is openai"
    message = model_message("openai", "gpt-4o", ("azure-eu", "gpt4o-eu-prod"), ("openai-main", ""), ("openrouter", ""))
    request = model_config_pb2.CreateModelConfigRequest(model_config=message, model_config_id="gpt-4o")
    error = rejected(engine, s.models.CreateModelConfig, request)
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    assert [f for f, _ in error.field_violations] == ["model_config.attachments[2]"]
    assert expected_text in error.field_violations[0][1]

    # The plain list carries no override: each entry of another family is named, in that list's terms.
    plain = model_config_pb2.ModelConfig(
        family=common_pb2.FAMILY_OPENAI, model="gpt-4o", context_limit=1000, provider_configs=[pc("openai-main")]
    )
    plain.provider_configs.append(pc("azure-eu"))
    request = model_config_pb2.CreateModelConfigRequest(model_config=plain, model_config_id="gpt-4o")
    error = rejected(engine, s.models.CreateModelConfig, request)
    assert [f for f, _ in error.field_violations] == ["model_config.provider_configs[1]"]

    create(s, "gpt-4o", model_message("openai", "gpt-4o", ("openai-main", "")))
    for paths in (["attachments"], None, ["*"]):
        bad = model_message("openai", "gpt-4o", ("openai-main", ""), ("azure-eu", ""))
        bad.name = mc("gpt-4o")
        request = model_config_pb2.UpdateModelConfigRequest(model_config=bad)
        if paths is not None:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        error = rejected(engine, s.models.UpdateModelConfig, request)
        assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID"), paths
        assert [f for f, _ in error.field_violations] == ["model_config.attachments[1]"], paths


@pytest.mark.parametrize(
    ("entries", "field", "text"),
    [
        ((("openai-main", "   "),), "model_config.attachments[0].model", "must not be blank"),
        ((("openai-main", "x" * 257),), "model_config.attachments[0].model", "at most 256 characters"),
        ((("openai-main", "gpt\n4o"),), "model_config.attachments[0].model", "control characters"),
        ((("openai-main", ""), ("openai-main", "other")), "model_config.attachments[0]", "listed 2 times"),
        ((("ghost", "name"),), "model_config.attachments[0]", "providerConfigs/ghost does not exist"),
    ],
)
def test_bad_overrides_and_entries_are_named(
    channel: grpc.Channel, engine: sa.Engine, entries: tuple[tuple[str, str], ...], field: str, text: str
) -> None:
    s = stubs(channel)
    create_provider(s, "openai-main", "openai")
    request = model_config_pb2.CreateModelConfigRequest(
        model_config=model_message("openai", "gpt-4o", *entries), model_config_id="m"
    )
    error = rejected(engine, s.models.CreateModelConfig, request)
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    assert [f for f, _ in error.field_violations] == [field]
    assert text in error.field_violations[0][1]


def test_an_override_is_trimmed(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "openai-main", "openai")
    model = create(s, "m", model_message("openai", "gpt-4o", ("openai-main", "  gpt-4o-2024-08-06 ")))
    assert shown(model) == [("openai-main", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06")]


def test_both_lists_must_agree(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    message = model_message("openai", "gpt-4o", *CHAIN)
    message.provider_configs[:] = [pc("openai-main"), pc("azure-eu"), pc("openrouter")]
    request = model_config_pb2.CreateModelConfigRequest(model_config=message, model_config_id="m")
    error = rejected(engine, s.models.CreateModelConfig, request)
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    assert [f for f, _ in error.field_violations] == ["model_config.provider_configs"]
    # The same ones in the same order: accepted, the overrides from `attachments`.
    message.provider_configs[:] = [pc("azure-eu"), pc("openai-main"), pc("openrouter")]
    assert shown(create(s, "m", message))[0] == ("azure-eu", "gpt4o-eu-prod", "gpt4o-eu-prod")


def test_a_read_written_back_whole_leaves_every_attachment_as_it_was(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    rows = stored(engine, "gpt-4o")
    for paths in (None, ["*"]):
        read = get(s, "gpt-4o")
        read.display_name = f"GPT-4o {paths}"
        written = update(s, read, paths)
        assert shown(written) == shown(read), paths
        # No inherited name became a pinned override: openai-main's row still holds NULL.
        assert stored(engine, "gpt-4o") == rows, paths
    # Neither does a new model name: the attachment without an override follows it.
    read = get(s, "gpt-4o")
    read.model = "gpt-4o-2024-11-20"
    written = update(s, read, ["model"])
    assert [a.effective_model for a in written.attachments] == ["gpt4o-eu-prod", "gpt-4o-2024-11-20", "openai/gpt-4o"]
    assert resolve(s, "gpt-4o").fallbacks[0].model == "gpt-4o-2024-11-20"


def test_the_plain_list_sets_the_order_and_keeps_the_overrides(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    create_provider(s, "openai-backup", "openai")
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    message = model_config_pb2.ModelConfig(
        name=mc("gpt-4o"), provider_configs=[pc("openrouter"), pc("openai-backup"), pc("azure-eu")]
    )
    written = update(s, message, ["provider_configs"])
    assert shown(written) == [
        ("openrouter", "openai/gpt-4o", "openai/gpt-4o"),
        ("openai-backup", "", "gpt-4o"),
        ("azure-eu", "gpt4o-eu-prod", "gpt4o-eu-prod"),
    ]
    # `attachments` replaces them: an override left empty is gone, one of another family must stay.
    message = model_config_pb2.ModelConfig(
        name=mc("gpt-4o"), attachments=[attachment("openai-backup"), attachment("azure-eu", "eu-2")]
    )
    written = update(s, message, ["attachments"])
    assert shown(written) == [("openai-backup", "", "gpt-4o"), ("azure-eu", "eu-2", "eu-2")]
    assert stored(engine, "gpt-4o") == [
        ("openai-backup", "openai", "openai", 0, None),
        ("azure-eu", "azure", "openai", 1, "eu-2"),
    ]


def test_a_family_change_keeping_the_list_needs_an_override_for_each_other_family(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    three_families(s)
    create_provider(s, "azure-us", "azure", base_url=AZURE_US_URL)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    change = model_config_pb2.ModelConfig(name=mc("gpt-4o"), family=common_pb2.FAMILY_AZURE)
    request = model_config_pb2.UpdateModelConfigRequest(
        model_config=change, update_mask=field_mask_pb2.FieldMask(paths=["family"])
    )
    error = rejected(engine, s.models.UpdateModelConfig, request)
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    # openai-main has no override and would be of another family; the other two keep theirs.
    assert [f for f, _ in error.field_violations] == ["model_config.attachments[1]"]
    assert "the model is azure" in error.field_violations[0][1]

    # Every attachment of another family has its override: the family changes and the list stays.
    create(s, "multi", model_message("openai", "gpt-4o", ("azure-eu", "eu"), ("openrouter", "openai/gpt-4o")))
    change.name = mc("multi")
    written = update(s, change, ["family"])
    assert written.family == common_pb2.FAMILY_AZURE
    assert shown(written) == [("azure-eu", "eu", "eu"), ("openrouter", "openai/gpt-4o", "openai/gpt-4o")]
    # The database followed the family (its foreign key cascades) and still checks the rule.
    assert [r[2] for r in stored(engine, "multi")] == ["azure", "azure"]


def test_the_database_refuses_another_family_without_an_override(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", ("openai-main", ""), ("azure-eu", "eu")))
    before = db_state(engine)
    same_family, not_blank = "same_family_or_override", "override_not_blank"
    statements = [
        # Written by hand as the build before wrote them (the model's family is filled in by a trigger).
        ("INSERT INTO model_attachments VALUES ('gpt-4o', 'openrouter', 'openrouter', 2)", same_family),
        ("UPDATE model_attachments SET model_override = NULL WHERE provider_config_id = 'azure-eu'", same_family),
        ("UPDATE model_configs SET family = 'anthropic' WHERE id = 'gpt-4o'", same_family),
        ("UPDATE model_attachments SET model_override = ' eu' WHERE provider_config_id = 'azure-eu'", not_blank),
        ("UPDATE model_attachments SET model_override = '' WHERE provider_config_id = 'azure-eu'", not_blank),
        # The model's family is the model's: a row cannot claim another.
        ("UPDATE model_attachments SET model_family = 'azure' WHERE provider_config_id = 'azure-eu'", "model_fk"),
    ]
    for statement, constraint in statements:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))
        except sa.exc.IntegrityError as error:
            assert error.orig is not None
            assert error.orig.diag.constraint_name == f"model_attachments_{constraint}", statement
        else:
            raise AssertionError(f"the database accepted: {statement}")
    assert db_state(engine) == before
    # With an override, by hand too.
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO model_attachments VALUES ('gpt-4o', 'openrouter', 'openrouter', 2, 'openai', 'x/y')")
        )


def test_forced_delete_auto_attach_undelete_and_the_default_with_overrides(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    three_families(s)
    create_provider(s, "openai-backup", "openai")
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))  # the first model: the default
    create(s, "only-router", model_message("openai", "gpt-4o-mini", ("openrouter", "openai/gpt-4o-mini")))
    # Auto-attachment on create: every enabled config of the family, no overrides.
    auto = create(s, "auto", model_config_pb2.ModelConfig(family=common_pb2.FAMILY_OPENAI, model="o3", context_limit=1))
    assert shown(auto) == [("openai-main", "", "o3"), ("openai-backup", "", "o3")]

    # Forced delete of openrouter: gpt-4o keeps the others' overrides, renumbered; only-router is left
    # with nothing and is soft-deleted.
    outcome, _ = delete_provider(s, "openrouter", force=True)
    assert sorted(outcome.touched_model_configs) == [mc("gpt-4o"), mc("only-router")]
    assert stored(engine, "gpt-4o") == [
        ("azure-eu", "azure", "openai", 0, "gpt4o-eu-prod"),
        ("openai-main", "openai", "openai", 1, None),
    ]
    assert get(s, "only-router").HasField("delete_time")
    # The default moves on when its model loses its last attachment; overrides change nothing there.
    _, moved = delete_provider(s, "azure-eu", force=True)
    assert moved is None
    assert get(s, "gpt-4o").is_default
    assert shown(get(s, "gpt-4o")) == [("openai-main", "", "gpt-4o")]
    _, moved = delete_provider(s, "openai-main", force=True)
    assert moved == mc("auto")
    assert get(s, "gpt-4o").HasField("delete_time")

    # Undelete: a model whose attachments were all removed attaches as a create would.
    s.models.UndeleteModelConfig(model_config_pb2.UndeleteModelConfigRequest(name=mc("gpt-4o")))
    assert shown(get(s, "gpt-4o")) == [("openai-backup", "", "gpt-4o")]


def test_undelete_keeps_the_overrides(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    three_families(s)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    s.models.DeleteModelConfig(model_config_pb2.DeleteModelConfigRequest(name=mc("gpt-4o")))
    restored, moved = undelete(s, "gpt-4o")
    assert moved == mc("gpt-4o")
    assert shown(restored)[0] == ("azure-eu", "gpt4o-eu-prod", "gpt4o-eu-prod")
    assert resolve(s, "gpt-4o").selected.model == "gpt4o-eu-prod"


def test_overrides_reach_another_replica_and_a_fresh_load(
    channel: grpc.Channel, app: Application, second_replica: RunningServer, keyring: Keyring
) -> None:
    s = stubs(channel)
    three_families(s)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    other = stubs(second_replica.channel)
    # The second replica applies the change from the log (re-reading only that model).
    wait_for(lambda: resolve_or_none(other, "gpt-4o") is not None)
    answer = resolve_or_none(other, "gpt-4o")
    assert answer is not None and [a[2] for a in served(answer)] == ["gpt4o-eu-prod", "gpt-4o", "openai/gpt-4o"]
    message = model_config_pb2.ModelConfig(
        name=mc("gpt-4o"), attachments=[attachment("openrouter", "openai/gpt-4o-2"), attachment("openai-main")]
    )
    update(s, message, ["attachments"])
    wait_for(lambda: [a[2] for a in served(resolve(other, "gpt-4o"))] == ["openai/gpt-4o-2", "gpt-4o"])
    # A replica starting now loads everything at once, overrides included.
    fresh = build_app(app.database_url, keyring)
    server = RunningServer(fresh, all_roles_token(fresh))
    try:
        assert [a[2] for a in served(resolve(stubs(server.channel), "gpt-4o"))] == ["openai/gpt-4o-2", "gpt-4o"]
    finally:
        server.stop()
        fresh.close()


def resolve_or_none(s: Stubs, model_id: str) -> resolver_pb2.ResolveModelResponse | None:
    try:
        return resolve(s, model_id)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


def test_an_override_change_is_audited(channel: grpc.Channel) -> None:
    s = stubs(channel)
    three_families(s)
    create(s, "gpt-4o", model_message("openai", "gpt-4o", *CHAIN))
    message = model_config_pb2.ModelConfig(
        name=mc("gpt-4o"), attachments=[attachment("azure-eu", "eu-2"), attachment("openai-main")]
    )
    update(s, message, ["attachments"])
    audit_filter = f'resource = "{mc("gpt-4o")}" AND method = "UpdateModelConfig"'
    audit = audit_pb2_grpc.AuditServiceStub(channel)
    events = audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(filter=audit_filter)).audit_events
    assert len(events) == 1
    changes = {c.field: (MessageToDict(c.before), MessageToDict(c.after)) for c in events[0].changes}
    assert changes["model_overrides"] == (
        {"providerConfigs/azure-eu": "gpt4o-eu-prod", "providerConfigs/openrouter": "openai/gpt-4o"},
        {"providerConfigs/azure-eu": "eu-2"},
    )


def test_default_report_is_unchanged_by_overrides(channel: grpc.Channel) -> None:
    s = stubs(channel)
    three_families(s)
    request = model_config_pb2.CreateModelConfigRequest(
        model_config=model_message("openai", "gpt-4o", *CHAIN), model_config_id="gpt-4o"
    )
    _, call = s.models.CreateModelConfig.with_call(request)
    assert default_report(call) == mc("gpt-4o")
