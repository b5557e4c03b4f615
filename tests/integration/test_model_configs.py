"""Model configs through gRPC against real PostgreSQL (docs/behaviour.md, "Model configs").

Every rejected request is checked to change nothing: the whole configuration
(every table, and the revision counter) is compared before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.server import Application

from ..helpers import RichError, Stubs, call_error, create_model, create_provider, model_request, policy, stubs

DEFAULT_KEY = "modelroute-default-model-config"
STATE_TABLES = ("config_revision", "provider_configs", "model_configs", "model_attachments", "user_provider_keys")
OPENAI = common_pb2.FAMILY_OPENAI
ANTHROPIC = common_pb2.FAMILY_ANTHROPIC
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------- helpers


def pc(provider_id: str) -> str:
    return f"providerConfigs/{provider_id}"


def mc(model_id: str) -> str:
    return f"modelConfigs/{model_id}"


def db_state(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in STATE_TABLES
        }


def rejected(engine: sa.Engine, method: Callable[..., Any], request: Any) -> RichError:
    """Calls `method`, expects a failure, and checks that nothing at all changed."""
    before = db_state(engine)
    error = call_error(method, request)
    assert db_state(engine) == before, "a rejected request changed the configuration"
    return error


def attachment_rows(engine: sa.Engine, model_id: str | None = None) -> list[tuple[str, str, str, int]]:
    query = "SELECT model_config_id, provider_config_id, family, position FROM model_attachments"
    params: dict[str, str] = {}
    if model_id is not None:
        query += " WHERE model_config_id = :model"
        params["model"] = model_id
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query + " ORDER BY model_config_id, position"), params)
        return [(r[0], r[1], r[2], r[3]) for r in rows]


def default_report(call: Any) -> str | None:
    """The trailing `modelroute-default-model-config` value, or None when the call did not move the default."""
    values = [item.value for item in call.trailing_metadata() or () if item.key == DEFAULT_KEY]
    assert len(values) <= 1
    return values[0] if values else None


def check_attachments(s: Stubs, model: model_config_pb2.ModelConfig) -> None:
    """Every read shows each attachment with the provider config's own facts, in list order."""
    assert [a.provider_config for a in model.attachments] == list(model.provider_configs)
    for position, attachment in enumerate(model.attachments):
        provider = s.providers.GetProviderConfig(
            provider_config_pb2.GetProviderConfigRequest(name=attachment.provider_config)
        )
        assert attachment.position == position
        assert (
            attachment.family,
            attachment.display_name,
            attachment.enabled,
            attachment.has_api_key,
            attachment.central_credential_usable,
            attachment.central_credential_source,
            attachment.allow_user_api_key,
        ) == (
            provider.family,
            provider.display_name,
            provider.enabled,
            provider.has_api_key,
            provider.central_credential_usable,
            provider.central_credential_source,
            provider.credential_policy.allow_user_api_key,
        )


def create(s: Stubs, request: model_config_pb2.CreateModelConfigRequest) -> tuple[Any, str | None]:
    response, call = s.models.CreateModelConfig.with_call(request)
    check_attachments(s, response)
    return response, default_report(call)


def update_request(
    model_id: str, paths: Sequence[str] | None, etag: str = "", **fields: Any
) -> model_config_pb2.UpdateModelConfigRequest:
    if "providers" in fields:
        fields["provider_configs"] = [pc(p) for p in fields.pop("providers")]
    message = model_config_pb2.ModelConfig(name=mc(model_id), etag=etag, **fields)
    request = model_config_pb2.UpdateModelConfigRequest(model_config=message)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(paths)))
    return request


def update(
    s: Stubs, model_id: str, paths: Sequence[str] | None, etag: str = "", **fields: Any
) -> tuple[Any, str | None]:
    response, call = s.models.UpdateModelConfig.with_call(update_request(model_id, paths, etag, **fields))
    check_attachments(s, response)
    return response, default_report(call)


def get(s: Stubs, model_id: str) -> model_config_pb2.ModelConfig:
    model = s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name=mc(model_id)))
    check_attachments(s, model)
    return model


def delete(s: Stubs, model_id: str, etag: str = "") -> tuple[Any, str | None]:
    response, call = s.models.DeleteModelConfig.with_call(
        model_config_pb2.DeleteModelConfigRequest(name=mc(model_id), etag=etag)
    )
    check_attachments(s, response)
    return response, default_report(call)


def undelete(s: Stubs, model_id: str, etag: str = "") -> tuple[Any, str | None]:
    response, call = s.models.UndeleteModelConfig.with_call(
        model_config_pb2.UndeleteModelConfigRequest(name=mc(model_id), etag=etag)
    )
    check_attachments(s, response)
    return response, default_report(call)


def delete_provider(s: Stubs, provider_id: str, force: bool) -> tuple[Any, str | None]:
    response, call = s.providers.DeleteProviderConfig.with_call(
        provider_config_pb2.DeleteProviderConfigRequest(name=pc(provider_id), force=force)
    )
    return response, default_report(call)


def list_models(s: Stubs, show_deleted: bool = False, filter_text: str = "") -> list[model_config_pb2.ModelConfig]:
    models: list[model_config_pb2.ModelConfig] = []
    token = ""
    while True:
        page = s.models.ListModelConfigs(
            model_config_pb2.ListModelConfigsRequest(
                show_deleted=show_deleted, page_token=token, filter=filter_text, page_size=2
            )
        )
        for model in page.model_configs:
            check_attachments(s, model)
        models.extend(page.model_configs)
        token = page.next_page_token
        if not token:
            return models


def default_models(s: Stubs, engine: sa.Engine) -> list[str]:
    """The live default(s), read through List and checked against the table."""
    listed = [m.name for m in list_models(s, show_deleted=True) if m.is_default]
    with engine.connect() as conn:
        stored = [mc(r[0]) for r in conn.execute(sa.text("SELECT id FROM model_configs WHERE is_default ORDER BY id"))]
    assert listed == stored
    assert len(listed) <= 1
    return listed


def reset(app: Application) -> None:
    """An empty configuration again (the same as the `app` fixture does before each test)."""
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE key_rejections, provider_health, user_provider_keys, model_attachments, model_configs, "
                "provider_configs"
            )
        )
    app.snapshots.invalidate()


def set_create_time(engine: sa.Engine, table: str, ids: Sequence[str], stamp: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {table} SET create_time = CAST(:stamp AS timestamptz) WHERE id = ANY(:ids)"),
            {"stamp": stamp, "ids": list(ids)},
        )


# ---------------------------------------------------------------- CRUD and attachment facts


def test_create_get_list_update_show_attachment_facts(channel: grpc.Channel, app: Application) -> None:
    engine = app.engine
    s = stubs(channel)
    create_provider(s, "oa-main", display_name="OpenAI main", api_key="sk-main-central")
    create_provider(s, "oa-byok", display_name="OpenAI BYOK", api_key="", credential_policy=policy(True, True, False))
    create_provider(s, "oa-off", display_name="OpenAI off", enabled=False)
    options = model_config_pb2.ModelCallOptions(
        max_output_tokens=4096, temperature=0.5, input_price_per_mtok=2.0, output_price_per_mtok=8.0
    )
    request = model_request(
        "gpt",
        providers=("oa-main", "oa-byok", "oa-off"),
        upstream="gpt-4.1",
        context_limit=1_000_000,
        display_name="GPT 4.1",
        options=options,
    )
    created, report = create(s, request)
    assert report == mc("gpt")
    assert created.name == mc("gpt")
    assert (created.family, created.model, created.display_name) == (OPENAI, "gpt-4.1", "GPT 4.1")
    assert (created.enabled, created.is_default, created.context_limit) == (True, True, 1_000_000)
    assert created.compression_threshold == 70
    assert created.options == options
    assert not created.options.HasField("top_p")
    assert list(created.provider_configs) == [pc("oa-main"), pc("oa-byok"), pc("oa-off")]
    facts = [
        (
            a.provider_config,
            a.position,
            a.family,
            a.display_name,
            a.enabled,
            a.has_api_key,
            a.central_credential_usable,
            a.central_credential_source,
            a.allow_user_api_key,
        )
        for a in created.attachments
    ]
    assert facts == [
        (pc("oa-main"), 0, OPENAI, "OpenAI main", True, True, True, common_pb2.KEY_SOURCE_STORED, False),
        (pc("oa-byok"), 1, OPENAI, "OpenAI BYOK", True, False, False, common_pb2.KEY_SOURCE_UNSPECIFIED, True),
        (pc("oa-off"), 2, OPENAI, "OpenAI off", False, True, True, common_pb2.KEY_SOURCE_STORED, False),
    ]
    assert created.HasField("create_time") and created.HasField("update_time")
    assert not created.HasField("delete_time")
    assert created.etag
    assert attachment_rows(app.engine) == [
        ("gpt", "oa-main", "openai", 0),
        ("gpt", "oa-byok", "openai", 1),
        ("gpt", "oa-off", "openai", 2),
    ]

    assert get(s, "gpt") == created
    assert list_models(s) == [created]

    # A deployment key makes the keyless config's central credential usable: every read says so.
    app.ctx.deployment_keys[Family.OPENAI] = "sk-deployment-openai"  # type: ignore[index]
    got = get(s, "gpt")
    assert (got.attachments[1].has_api_key, got.attachments[1].central_credential_usable) == (False, True)
    assert got.attachments[1].central_credential_source == common_pb2.KEY_SOURCE_DEPLOYMENT
    assert list_models(s) == [got]

    # Provider changes show on the model's reads at once.
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(
                name=pc("oa-main"), display_name="OpenAI primary", enabled=False
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "enabled"]),
        )
    )
    got = get(s, "gpt")
    assert (got.attachments[0].display_name, got.attachments[0].enabled) == ("OpenAI primary", False)
    assert got.etag == created.etag  # the model row itself did not change

    updated, report = update(s, "gpt", ["display_name", "context_limit"], display_name="GPT", context_limit=64_000)
    assert report is None
    assert (updated.display_name, updated.context_limit) == ("GPT", 64_000)
    assert updated.model == "gpt-4.1" and updated.options == options and updated.is_default
    assert list(updated.provider_configs) == list(created.provider_configs)
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert get(s, "gpt") == updated
    # A named, empty display name goes back to its default (the upstream name); white space alone is refused.
    reset, _ = update(s, "gpt", ["display_name"], display_name="")
    assert reset.display_name == "gpt-4.1"
    error = rejected(engine, s.models.UpdateModelConfig, update_request("gpt", ["display_name"], display_name="  "))
    assert error.fields == ["model_config.display_name"]


def test_get_and_update_of_unknown_model_are_not_found(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    error = rejected(engine, s.models.GetModelConfig, model_config_pb2.GetModelConfigRequest(name=mc("ghost")))
    assert (error.code, error.reason, error.resource_name) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_CONFIG_NOT_FOUND",
        mc("ghost"),
    )
    error = rejected(engine, s.models.UpdateModelConfig, update_request("ghost", ["display_name"], display_name="x"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_CONFIG_NOT_FOUND")
    error = rejected(engine, s.models.GetModelConfig, model_config_pb2.GetModelConfigRequest(name="models/x"))
    assert (error.code, error.fields) == (INVALID, ["name"])
    error = rejected(engine, s.models.CreateModelConfig, model_request("Bad_Id", providers=("p-a",)))
    assert (error.code, error.fields) == (INVALID, ["model_config_id"])


# ---------------------------------------------------------------- forced provider deletion: the cascade


def _build_cascade(s: Stubs) -> None:
    for provider_id in ("p-a", "p-b", "p-c"):
        create_provider(s, provider_id)
    create_model(s, "m-first", providers=("p-a", "p-b"))  # the default
    create_model(s, "m-second", providers=("p-b", "p-a"))
    create_model(s, "m-off", providers=("p-c",), enabled=False)  # older than m-third, but disabled
    create_model(s, "m-third", providers=("p-a", "p-c"))  # older than m-fourth, whose id sorts first
    create_model(s, "m-fourth", providers=("p-c",))


def _end_state(s: Stubs, engine: sa.Engine) -> dict[str, Any]:
    providers = s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest())
    return {
        "models": [
            (
                m.name,
                m.enabled,
                m.is_default,
                m.HasField("delete_time"),
                list(m.provider_configs),
                [(a.provider_config, a.position) for a in m.attachments],
            )
            for m in list_models(s, show_deleted=True)
        ],
        "live": [m.name for m in list_models(s)],
        "attachments": attachment_rows(engine),
        "providers": [p.name for p in providers.provider_configs],
        "default": default_models(s, engine),
    }


EXPECTED_CASCADE_END = {
    "models": [
        (mc("m-first"), True, False, True, [], []),
        (mc("m-fourth"), True, False, False, [pc("p-c")], [(pc("p-c"), 0)]),
        (mc("m-off"), False, False, False, [pc("p-c")], [(pc("p-c"), 0)]),
        (mc("m-second"), True, False, True, [], []),
        (mc("m-third"), True, True, False, [pc("p-c")], [(pc("p-c"), 0)]),
    ],
    "live": [mc("m-fourth"), mc("m-off"), mc("m-third")],
    "attachments": [
        ("m-fourth", "p-c", "openai", 0),
        ("m-off", "p-c", "openai", 0),
        ("m-third", "p-c", "openai", 0),
    ],
    "providers": [pc("p-c")],
    "default": [mc("m-third")],
}


def test_force_delete_a_then_b_renumbers_then_soft_deletes_and_moves_default(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    _build_cascade(s)
    fourth_before = get(s, "m-fourth")

    first, report = delete_provider(s, "p-a", force=True)
    assert report is None
    assert list(first.touched_model_configs) == [mc("m-first"), mc("m-second"), mc("m-third")]
    assert list(first.deleted_model_configs) == []
    assert (first.default_changed, first.default_model_config) == (False, mc("m-first"))
    assert attachment_rows(engine) == [
        ("m-first", "p-b", "openai", 0),
        ("m-fourth", "p-c", "openai", 0),
        ("m-off", "p-c", "openai", 0),
        ("m-second", "p-b", "openai", 0),
        ("m-third", "p-c", "openai", 0),
    ]
    kept = get(s, "m-first")
    assert list(kept.provider_configs) == [pc("p-b")]
    assert kept.attachments[0].position == 0
    assert kept.is_default and not kept.HasField("delete_time")
    assert get(s, "m-fourth") == fourth_before  # untouched models are not rewritten

    second, report = delete_provider(s, "p-b", force=True)
    assert report == mc("m-third")
    assert list(second.touched_model_configs) == [mc("m-first"), mc("m-second")]
    assert list(second.deleted_model_configs) == [mc("m-first"), mc("m-second")]
    assert (second.default_changed, second.default_model_config) == (True, mc("m-third"))
    assert second.config_revision > first.config_revision
    gone = get(s, "m-first")
    assert gone.HasField("delete_time") and not gone.is_default and list(gone.attachments) == []
    assert _end_state(s, engine) == EXPECTED_CASCADE_END
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(min_revision=second.config_revision))
    assert answer.model_config == mc("m-third")


def test_force_delete_order_does_not_change_the_outcome(channel: grpc.Channel, app: Application) -> None:
    s = stubs(channel)
    engine = app.engine
    _build_cascade(s)
    delete_provider(s, "p-a", force=True)
    delete_provider(s, "p-b", force=True)
    a_then_b = _end_state(s, engine)

    reset(app)
    _build_cascade(s)
    first, report = delete_provider(s, "p-b", force=True)
    assert report is None
    assert list(first.touched_model_configs) == [mc("m-first"), mc("m-second")]
    assert list(first.deleted_model_configs) == []
    assert [list(get(s, m).provider_configs) for m in ("m-first", "m-second")] == [[pc("p-a")], [pc("p-a")]]
    second, report = delete_provider(s, "p-a", force=True)
    assert report == mc("m-third")
    assert list(second.touched_model_configs) == [mc("m-first"), mc("m-second"), mc("m-third")]
    assert list(second.deleted_model_configs) == [mc("m-first"), mc("m-second")]
    assert (second.default_changed, second.default_model_config) == (True, mc("m-third"))
    b_then_a = _end_state(s, engine)

    assert a_then_b == b_then_a == EXPECTED_CASCADE_END


def test_force_delete_of_the_last_provider_of_the_only_model_leaves_no_default(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_model(s, "m-only", providers=("p-a",))
    create_model(s, "m-off", providers=("p-b",), enabled=False)
    outcome, report = delete_provider(s, "p-a", force=True)
    assert report == ""
    assert list(outcome.deleted_model_configs) == [mc("m-only")]
    assert (outcome.default_changed, outcome.default_model_config) == (True, "")
    assert default_models(s, engine) == []
    # A model emptied by the cascade comes back attached as a create would attach it (every enabled
    # config of its family), and fills the empty default slot; with no such config it cannot come back.
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=pc("p-b"), enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    error = rejected(
        engine, s.models.UndeleteModelConfig, model_config_pb2.UndeleteModelConfigRequest(name=mc("m-only"))
    )
    assert (error.code, error.reason) == (PRECONDITION, "NO_PROVIDER_CONFIG_TO_ATTACH")
    create_provider(s, "p-c")
    restored = s.models.UndeleteModelConfig(model_config_pb2.UndeleteModelConfigRequest(name=mc("m-only")))
    assert (list(restored.provider_configs), restored.is_default) == ([pc("p-c")], True)


def test_force_delete_of_an_unattached_provider_touches_nothing(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    model = create_model(s, "m", providers=("p-a",))
    outcome, report = delete_provider(s, "p-b", force=True)
    assert report is None
    assert (list(outcome.touched_model_configs), list(outcome.deleted_model_configs)) == ([], [])
    assert outcome.default_changed is False
    assert get(s, "m") == model


# ---------------------------------------------------------------- non-forced provider deletion


def test_trap_1_replaced_list_does_not_block_deleting_the_old_provider(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_model(s, "m", providers=("p-a",))
    replaced, _ = update(s, "m", ["provider_configs"], providers=("p-b",))
    assert list(replaced.provider_configs) == [pc("p-b")]

    outcome, report = delete_provider(s, "p-a", force=False)
    assert report is None
    assert (list(outcome.touched_model_configs), list(outcome.deleted_model_configs)) == ([], [])
    assert outcome.default_changed is False
    after = get(s, "m")
    assert after == replaced  # same etag, same update time, same list
    assert not after.HasField("delete_time") and after.is_default
    assert attachment_rows(engine) == [("m", "p-b", "openai", 0)]


def test_delete_of_an_attached_provider_without_force_names_the_models(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_model(s, "m-one", providers=("p-a", "p-b"))
    create_model(s, "m-two", providers=("p-b", "p-a"), enabled=False)
    create_model(s, "m-three", providers=("p-b",))
    create_model(s, "m-gone", providers=("p-a",))
    delete(s, "m-gone")

    request = provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-a"))
    error = rejected(engine, s.providers.DeleteProviderConfig, request)
    assert (error.code, error.reason) == (PRECONDITION, "PROVIDER_CONFIG_IN_USE")
    assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [
        ("ATTACHED", mc("m-gone")),
        ("ATTACHED", mc("m-one")),
        ("ATTACHED", mc("m-two")),
    ]
    assert mc("m-one") in error.message and mc("m-two") in error.message
    assert f"{mc('m-gone')} (deleted)" in error.message

    error = rejected(
        engine, s.providers.DeleteProviderConfig, provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-b"))
    )
    assert [subject for _, subject, _ in error.precondition_violations] == [
        mc("m-one"),
        mc("m-three"),
        mc("m-two"),
    ]

    # A soft-deleted model still holds its list (an undelete must find it intact), so it blocks too.
    update(s, "m-one", ["provider_configs"], providers=("p-b",))
    update(s, "m-two", ["provider_configs"], providers=("p-b",))
    request = provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-a"))
    error = rejected(engine, s.providers.DeleteProviderConfig, request)
    assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [("ATTACHED", mc("m-gone"))]
    assert f"{mc('m-gone')} (deleted)" in error.message
    # Forced, it goes; the soft-deleted model loses it and keeps its delete time.
    outcome, report = delete_provider(s, "p-a", force=True)
    assert report is None
    assert (list(outcome.touched_model_configs), list(outcome.deleted_model_configs)) == ([mc("m-gone")], [])
    gone = get(s, "m-gone")
    assert gone.HasField("delete_time") and list(gone.provider_configs) == []
    assert [m.name for m in list_models(s)] == [mc("m-one"), mc("m-three"), mc("m-two")]


# ---------------------------------------------------------------- replacing the list


def test_update_stores_exactly_the_given_order(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in ("p-a", "p-b", "p-c"):
        create_provider(s, provider_id)
    create_model(s, "m", providers=("p-a", "p-b", "p-c"))

    swapped, _ = update(s, "m", ["provider_configs"], providers=("p-b", "p-a"))
    assert list(swapped.provider_configs) == [pc("p-b"), pc("p-a")]
    assert attachment_rows(engine, "m") == [("m", "p-b", "openai", 0), ("m", "p-a", "openai", 1)]
    assert get(s, "m") == swapped

    reversed_list, _ = update(s, "m", None, providers=("p-c", "p-a", "p-b"))  # no mask: the populated list
    assert list(reversed_list.provider_configs) == [pc("p-c"), pc("p-a"), pc("p-b")]
    assert attachment_rows(engine, "m") == [
        ("m", "p-c", "openai", 0),
        ("m", "p-a", "openai", 1),
        ("m", "p-b", "openai", 2),
    ]


def test_update_whose_mask_does_not_name_the_list_leaves_it_unchanged(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in ("p-a", "p-b", "p-c"):
        create_provider(s, provider_id)
    create_model(s, "m", providers=("p-b", "p-a"))
    rows = attachment_rows(engine)

    renamed, _ = update(s, "m", ["display_name"], display_name="Renamed", providers=("p-c",))
    assert renamed.display_name == "Renamed"
    assert list(renamed.provider_configs) == [pc("p-b"), pc("p-a")]
    assert attachment_rows(engine) == rows

    tuned, _ = update(s, "m", None, compression_threshold=40)  # no mask, no list populated
    assert tuned.compression_threshold == 40
    assert list(tuned.provider_configs) == [pc("p-b"), pc("p-a")]
    assert attachment_rows(engine) == rows


def test_update_naming_the_list_with_no_entries_is_rejected(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_model(s, "m", providers=("p-a",))
    error = rejected(engine, s.models.UpdateModelConfig, update_request("m", ["provider_configs"]))
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    assert error.fields == ["model_config.provider_configs"]
    assert list(get(s, "m").provider_configs) == [pc("p-a")]


CROSS = ": an attachment of another family needs its own upstream model name (model)"


def _attachment_cases() -> list[tuple[tuple[str, ...], list[tuple[str, str]]]]:
    field = "model_config.provider_configs"
    return [
        (("p-a", "p-b", "p-a"), [(f"{field}[0]", "providerConfigs/p-a is listed 2 times")]),
        (
            ("p-a", "an-1"),
            [(f"{field}[1]", "providerConfigs/an-1 is of family anthropic, the model is openai" + CROSS)],
        ),
        (("p-a", "ghost"), [(f"{field}[1]", "providerConfigs/ghost does not exist")]),
        (
            ("ghost", "p-a", "ghost", "an-1"),
            [
                (f"{field}[0]", "providerConfigs/ghost is listed 2 times"),
                (f"{field}[0]", "providerConfigs/ghost does not exist"),
                (f"{field}[2]", "providerConfigs/ghost does not exist"),
                (f"{field}[3]", "providerConfigs/an-1 is of family anthropic, the model is openai" + CROSS),
            ],
        ),
    ]


def test_invalid_lists_on_create_are_rejected_naming_the_ids(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_provider(s, "an-1", "anthropic")
    for providers, violations in _attachment_cases():
        error = rejected(engine, s.models.CreateModelConfig, model_request("m", providers=providers))
        assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID"), providers
        assert error.field_violations == violations
        for _, description in violations:
            assert description in error.message
    # A bare id (not a `providerConfigs/{id}` name) is named too.
    bare = model_request("m")
    bare.model_config.provider_configs[:] = ["p-a"]
    error = rejected(engine, s.models.CreateModelConfig, bare)
    assert (error.reason, error.fields) == ("ATTACHMENTS_INVALID", ["model_config.provider_configs[0]"])
    assert "'p-a'" in error.field_violations[0][1]
    assert list_models(s, show_deleted=True) == []


def test_invalid_lists_on_update_are_rejected_naming_the_ids(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_provider(s, "an-1", "anthropic")
    model = create_model(s, "m", providers=("p-b",))
    for providers, violations in _attachment_cases():
        request = update_request("m", ["provider_configs"], providers=providers)
        error = rejected(engine, s.models.UpdateModelConfig, request)
        assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID"), providers
        assert error.field_violations == violations
    assert get(s, "m") == model


# ---------------------------------------------------------------- family changes (trap 8)


def test_family_change_needs_a_new_list_or_overrides(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "oa-1")
    create_provider(s, "oa-2")
    create_provider(s, "an-1", "anthropic")
    create_provider(s, "an-2", "anthropic")
    model = create_model(s, "m", providers=("oa-1", "oa-2"))

    for paths in (["family"], None, ["family", "model"]):
        request = update_request("m", paths, family=ANTHROPIC, model="claude-sonnet-4.5")
        error = rejected(engine, s.models.UpdateModelConfig, request)
        assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID"), paths
        # Each attachment that would be of another family without an override is named.
        assert error.fields == ["model_config.attachments[0]", "model_config.attachments[1]"], paths
        assert error.field_violations[0][1] == (
            "providerConfigs/oa-1 is of family openai, the model is anthropic" + CROSS
        )

    request = update_request("m", ["family", "provider_configs"], family=ANTHROPIC, providers=("an-1", "oa-1"))
    error = rejected(engine, s.models.UpdateModelConfig, request)
    assert (error.code, error.reason) == (INVALID, "ATTACHMENTS_INVALID")
    assert error.field_violations == [
        ("model_config.provider_configs[1]", "providerConfigs/oa-1 is of family openai, the model is anthropic" + CROSS)
    ]
    assert get(s, "m") == model

    changed, _ = update(
        s,
        "m",
        ["family", "provider_configs", "model"],
        family=ANTHROPIC,
        model="claude-sonnet-4.5",
        providers=("an-2", "an-1"),
    )
    assert (changed.family, changed.model) == (ANTHROPIC, "claude-sonnet-4.5")
    assert list(changed.provider_configs) == [pc("an-2"), pc("an-1")]
    assert [a.family for a in changed.attachments] == [ANTHROPIC, ANTHROPIC]
    assert attachment_rows(engine) == [("m", "an-2", "anthropic", 0), ("m", "an-1", "anthropic", 1)]
    # The openai configs are free again.
    outcome, _ = delete_provider(s, "oa-1", force=False)
    assert list(outcome.touched_model_configs) == []


# ---------------------------------------------------------------- auto-attachment (trap 11)


def test_omitted_list_attaches_every_enabled_config_by_create_time_then_id(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-c")
    create_provider(s, "p-a")
    create_provider(s, "p-e", enabled=False)
    create_provider(s, "p-b")
    create_provider(s, "an-1", "anthropic")

    expected = [pc("p-c"), pc("p-a"), pc("p-b")]  # creation order, not id order; p-e is disabled
    for run in range(5):
        model, _ = create(s, model_request(f"auto-{run}"))
        assert list(model.provider_configs) == expected
        assert [a.position for a in model.attachments] == [0, 1, 2]
        assert [r[1] for r in attachment_rows(engine, f"auto-{run}")] == ["p-c", "p-a", "p-b"]
    anthropic, _ = create(s, model_request("claude", "anthropic", upstream="claude-sonnet-4.5"))
    assert list(anthropic.provider_configs) == [pc("an-1")]

    # Equal creation times fall back to the id; the same answer every time.
    with engine.connect() as conn:
        stamp = conn.execute(sa.text("SELECT create_time FROM provider_configs WHERE id = 'p-c'")).scalar_one()
    set_create_time(engine, "provider_configs", ["p-b"], stamp.isoformat())
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=pc("p-e"), enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    for run in range(3):
        model, _ = create(s, model_request(f"tie-{run}"))
        assert list(model.provider_configs) == [pc("p-b"), pc("p-c"), pc("p-a"), pc("p-e")]
    # Models created earlier keep their own lists.
    assert list(get(s, "auto-0").provider_configs) == expected


def test_omitted_list_with_no_enabled_config_of_the_family_fails(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "oa-1")
    create_provider(s, "gg-off", "google", enabled=False)
    for family in ("google", "vercel"):
        error = rejected(engine, s.models.CreateModelConfig, model_request("m", family, upstream="some-model"))
        assert (error.code, error.reason) == (PRECONDITION, "NO_PROVIDER_CONFIG_TO_ATTACH")
        assert family in error.message
    assert list_models(s, show_deleted=True) == []


# ---------------------------------------------------------------- the default model


def test_first_model_is_default_and_making_another_default_moves_it(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    first, report = create(s, model_request("m-one", providers=("p-a",)))
    assert (first.is_default, report) == (True, mc("m-one"))
    second, report = create(s, model_request("m-two", providers=("p-a",)))
    assert (second.is_default, report) == (False, None)
    third, report = create(s, model_request("m-three", providers=("p-a",), is_default=True))
    assert (third.is_default, report) == (True, mc("m-three"))
    assert default_models(s, engine) == [mc("m-three")]
    assert get(s, "m-one").is_default is False

    promoted, report = update(s, "m-two", ["is_default"], is_default=True)
    assert (promoted.is_default, report) == (True, mc("m-two"))
    assert default_models(s, engine) == [mc("m-two")]
    assert [m.name for m in list_models(s, filter_text="is_default = true")] == [mc("m-two")]

    again, report = update(s, "m-two", ["is_default"], is_default=True)
    assert (again.is_default, report) == (True, None)
    untouched, report = update(s, "m-one", ["is_default"], is_default=False)
    assert (untouched.is_default, report) == (False, None)
    assert default_models(s, engine) == [mc("m-two")]
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest())
    assert answer.model_config == mc("m-two")


def test_a_disabled_model_cannot_be_made_default_and_is_never_promoted(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    off_first, report = create(s, model_request("m-off", providers=("p-a",), enabled=False))
    assert (off_first.is_default, report) == (False, None)  # the first model, but disabled
    on, report = create(s, model_request("m-on", providers=("p-a",)))
    assert (on.is_default, report) == (True, mc("m-on"))

    error = rejected(
        engine, s.models.CreateModelConfig, model_request("m-x", providers=("p-a",), enabled=False, is_default=True)
    )
    assert (error.code, error.reason) == (PRECONDITION, "DISABLED_MODEL_CANNOT_BE_DEFAULT")
    error = rejected(engine, s.models.UpdateModelConfig, update_request("m-off", ["is_default"], is_default=True))
    assert (error.code, error.reason) == (PRECONDITION, "DISABLED_MODEL_CANNOT_BE_DEFAULT")
    error = rejected(
        engine,
        s.models.UpdateModelConfig,
        update_request("m-on", ["enabled", "is_default"], enabled=False, is_default=True),
    )
    assert (error.code, error.reason) == (PRECONDITION, "DISABLED_MODEL_CANNOT_BE_DEFAULT")

    # Deleting the default with only a disabled model left: nobody is promoted.
    deleted, report = delete(s, "m-on")
    assert (deleted.is_default, report) == (False, "")
    assert default_models(s, engine) == []
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest())
    assert (error.code, error.reason) == (PRECONDITION, "NO_DEFAULT_MODEL")

    # Enabling and making default in one update works.
    enabled, report = update(s, "m-off", ["enabled", "is_default"], enabled=True, is_default=True)
    assert (enabled.enabled, enabled.is_default, report) == (True, True, mc("m-off"))


def test_disabling_the_default_promotes_the_oldest_enabled_model(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    for model_id, enabled in (("m-b", True), ("m-off", False), ("m-c", True), ("m-a", True)):
        create_model(s, model_id, providers=("p-a",), enabled=enabled)
    assert default_models(s, engine) == [mc("m-b")]

    disabled, report = update(s, "m-b", ["enabled"], enabled=False)
    assert (disabled.enabled, disabled.is_default) == (False, False)
    assert report == mc("m-c")  # created before m-a; m-off is older still but disabled
    assert default_models(s, engine) == [mc("m-c")]

    disabled, report = update(s, "m-c", ["enabled"], enabled=False)
    assert report == mc("m-a")
    disabled, report = update(s, "m-a", ["enabled"], enabled=False)
    assert (disabled.is_default, report) == (False, "")
    assert default_models(s, engine) == []


def test_un_defaulting_promotes_the_next_or_leaves_none_and_says_so(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_model(s, "m-one", providers=("p-a",))
    create_model(s, "m-two", providers=("p-a",))
    create_model(s, "m-off", providers=("p-a",), enabled=False)

    stepped_down, report = update(s, "m-one", ["is_default"], is_default=False)
    assert (stepped_down.is_default, report) == (False, mc("m-two"))
    assert default_models(s, engine) == [mc("m-two")]

    delete(s, "m-one")
    only, report = update(s, "m-two", ["is_default"], is_default=False)
    assert (only.is_default, report) == (False, "")
    assert default_models(s, engine) == []
    assert list_models(s, filter_text="is_default = true") == []
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest())
    assert (error.code, error.reason) == (PRECONDITION, "NO_DEFAULT_MODEL")


def test_deleting_the_default_promotes_by_create_time_then_id(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    for model_id in ("m-z", "m-y", "m-x", "m-w"):
        create_model(s, model_id, providers=("p-a",))
    deleted, report = delete(s, "m-z")
    assert deleted.HasField("delete_time") and not deleted.is_default
    assert report == mc("m-y")
    assert default_models(s, engine) == [mc("m-y")]

    set_create_time(engine, "model_configs", ["m-y", "m-x", "m-w"], "2030-01-01T00:00:00+00:00")
    _, report = delete(s, "m-y")
    assert report == mc("m-w")
    assert default_models(s, engine) == [mc("m-w")]

    # Deleting a model that is not the default moves nothing.
    _, report = delete(s, "m-x")
    assert report is None
    assert default_models(s, engine) == [mc("m-w")]


def test_an_eligible_model_fills_an_empty_default_slot(channel: grpc.Channel, engine: sa.Engine) -> None:
    """With no default at all, a model that becomes eligible (created, enabled, undeleted) becomes the default,
    just as the first model created does (docs/behaviour.md, "The default model")."""
    s = stubs(channel)
    create_provider(s, "p-a")
    create_model(s, "m-one", providers=("p-a",))
    create_model(s, "m-two", providers=("p-a",), enabled=False)
    delete(s, "m-one")
    assert default_models(s, engine) == []

    # Asked not to be the default: it is not.
    update(s, "m-two", ["enabled"], enabled=False)
    enabled, report = update(s, "m-two", ["enabled", "is_default"], enabled=True, is_default=False)
    assert (enabled.is_default, report) == (False, None)
    update(s, "m-two", ["enabled"], enabled=False)
    enabled, report = update(s, "m-two", ["enabled"], enabled=True)
    assert (enabled.is_default, report) == (True, mc("m-two"))
    delete(s, "m-two")
    assert default_models(s, engine) == []
    restored, report = undelete(s, "m-one")
    assert (restored.is_default, report) == (True, mc("m-one"))
    # With a default in place, undelete and enable leave it alone.
    restored, report = undelete(s, "m-two")
    assert (restored.is_default, report) == (False, None)
    assert default_models(s, engine) == [mc("m-one")]


# ---------------------------------------------------------------- soft delete


def test_soft_delete_list_show_deleted_get_and_undelete(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_model(s, "m-one", providers=("p-a",))
    two = create_model(s, "m-two", providers=("p-b", "p-a"), display_name="Two")

    deleted, report = delete(s, "m-two")
    assert report is None
    assert deleted.HasField("delete_time")
    assert (deleted.display_name, list(deleted.provider_configs)) == ("Two", [pc("p-b"), pc("p-a")])
    assert get(s, "m-two") == deleted
    assert [m.name for m in list_models(s)] == [mc("m-one")]
    listed = list_models(s, show_deleted=True)
    assert [(m.name, m.HasField("delete_time")) for m in listed] == [(mc("m-one"), False), (mc("m-two"), True)]
    assert listed[1] == deleted
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m-two"))
    assert error.code == grpc.StatusCode.NOT_FOUND

    error = rejected(engine, s.models.DeleteModelConfig, model_config_pb2.DeleteModelConfigRequest(name=mc("m-two")))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_CONFIG_NOT_FOUND")
    error = rejected(engine, s.models.UpdateModelConfig, update_request("m-two", ["display_name"], display_name="x"))
    assert (error.code, error.reason) == (PRECONDITION, "MODEL_CONFIG_DELETED")
    error = rejected(engine, s.models.CreateModelConfig, model_request("m-two", providers=("p-a",)))
    assert (error.code, error.reason, error.resource_name) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "MODEL_CONFIG_ALREADY_EXISTS",
        mc("m-two"),
    )

    restored, report = undelete(s, "m-two")
    assert report is None
    assert not restored.HasField("delete_time")
    assert (restored.is_default, restored.display_name) == (False, "Two")
    assert list(restored.provider_configs) == list(two.provider_configs)
    assert [m.name for m in list_models(s)] == [mc("m-one"), mc("m-two")]
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m-two"))
    assert answer.selected.provider_config == pc("p-b")

    error = rejected(
        engine, s.models.UndeleteModelConfig, model_config_pb2.UndeleteModelConfigRequest(name=mc("m-two"))
    )
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_CONFIG_NOT_DELETED")
    error = rejected(engine, s.models.CreateModelConfig, model_request("m-two", providers=("p-a",)))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    for method, request in (
        (s.models.UndeleteModelConfig, model_config_pb2.UndeleteModelConfigRequest(name=mc("ghost"))),
        (s.models.DeleteModelConfig, model_config_pb2.DeleteModelConfigRequest(name=mc("ghost"))),
    ):
        error = rejected(engine, method, request)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_CONFIG_NOT_FOUND")


# ---------------------------------------------------------------- field validation


def test_field_validation_on_create(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    prices = (
        "input_price_per_mtok",
        "output_price_per_mtok",
        "cache_read_price_per_mtok",
        "cache_write_price_per_mtok",
    )
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"context_limit": 0}, ["model_config.context_limit"]),
        ({"context_limit": -5}, ["model_config.context_limit"]),
        ({"compression_threshold": 101}, ["model_config.compression_threshold"]),
        ({"compression_threshold": -1}, ["model_config.compression_threshold"]),
        ({"upstream": ""}, ["model_config.model"]),
        ({"upstream": "   "}, ["model_config.model"]),
        ({"display_name": "   "}, ["model_config.display_name"]),
        (
            {"context_limit": 0, "compression_threshold": 101},
            ["model_config.context_limit", "model_config.compression_threshold"],
        ),
    ]
    cases += [
        ({"options": model_config_pb2.ModelCallOptions(**{price: -0.01})}, [f"model_config.options.{price}"])
        for price in prices
    ]
    for fields, expected in cases:
        error = rejected(engine, s.models.CreateModelConfig, model_request("m", providers=("p-a",), **fields))
        assert (error.code, error.reason, error.fields) == (INVALID, "FIELD_INVALID", expected), fields
    assert list_models(s, show_deleted=True) == []

    zero_prices = model_config_pb2.ModelCallOptions(**{price: 0.0 for price in prices})
    low, _ = create(
        s,
        model_request(
            "m-low", providers=("p-a",), upstream="  gpt-4o-mini  ", compression_threshold=0, options=zero_prices
        ),
    )
    assert (low.model, low.display_name, low.compression_threshold) == ("gpt-4o-mini", "gpt-4o-mini", 0)
    assert all(low.options.HasField(price) and getattr(low.options, price) == 0.0 for price in prices)
    high, _ = create(s, model_request("m-high", providers=("p-a",), upstream="claude-3.5.x", compression_threshold=100))
    assert (high.model, high.compression_threshold, high.context_limit) == ("claude-3.5.x", 100, 128_000)
    plain, _ = create(s, model_request("m-plain", providers=("p-a",), context_limit=1))
    assert (plain.compression_threshold, plain.context_limit) == (70, 1)


def test_field_validation_on_update(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_model(s, "m", providers=("p-a",), compression_threshold=30)
    cases: list[tuple[list[str], dict[str, Any], list[str]]] = [
        (["context_limit"], {"context_limit": 0}, ["model_config.context_limit"]),
        (["compression_threshold"], {"compression_threshold": 101}, ["model_config.compression_threshold"]),
        (["model"], {"model": "  "}, ["model_config.model"]),
        (["model"], {}, ["model_config.model"]),
        (
            ["options.output_price_per_mtok"],
            {"options": model_config_pb2.ModelCallOptions(output_price_per_mtok=-1.0)},
            ["model_config.options.output_price_per_mtok"],
        ),
    ]
    for paths, fields, expected in cases:
        error = rejected(engine, s.models.UpdateModelConfig, update_request("m", paths, **fields))
        assert (error.code, error.reason, error.fields) == (INVALID, "FIELD_INVALID", expected), paths
    error = rejected(engine, s.models.UpdateModelConfig, update_request("m", ["create_time"]))
    assert (error.code, error.reason) == (INVALID, "UPDATE_MASK_INVALID")

    trimmed, _ = update(s, "m", ["model"], model="  gpt-5  ")
    assert trimmed.model == "gpt-5"
    reset_threshold, _ = update(s, "m", ["compression_threshold"])
    assert reset_threshold.compression_threshold == 70


# ---------------------------------------------------------------- etags


def test_stale_etag_is_aborted_and_changes_nothing(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    created = create_model(s, "m", providers=("p-a",))
    first, _ = update(s, "m", ["display_name"], etag=created.etag, display_name="First")
    assert first.etag != created.etag

    stale = update_request("m", ["provider_configs"], etag=created.etag, providers=("p-b",))
    error = rejected(engine, s.models.UpdateModelConfig, stale)
    assert (error.code, error.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert error.metadata == {"current_etag": first.etag}
    request = model_config_pb2.DeleteModelConfigRequest(name=mc("m"), etag=created.etag)
    error = rejected(engine, s.models.DeleteModelConfig, request)
    assert error.code == grpc.StatusCode.ABORTED
    assert get(s, "m") == first

    deleted, _ = delete(s, "m", etag=first.etag)
    error = rejected(
        engine, s.models.UndeleteModelConfig, model_config_pb2.UndeleteModelConfigRequest(name=mc("m"), etag=first.etag)
    )
    assert error.code == grpc.StatusCode.ABORTED
    restored, _ = undelete(s, "m", etag=deleted.etag)
    assert not restored.HasField("delete_time")


# ---------------------------------------------------------------- paging


def test_paging_one_at_a_time(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "an-1", "anthropic")
    for model_id in ("m-c", "m-a", "m-d", "m-b"):
        create_model(s, model_id, providers=("p-a",))
    create_model(s, "m-e", "anthropic", providers=("an-1",), upstream="claude")
    delete(s, "m-d")

    def walk(show_deleted: bool, filter_text: str = "") -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            page = s.models.ListModelConfigs(
                model_config_pb2.ListModelConfigsRequest(
                    page_size=1, page_token=token, show_deleted=show_deleted, filter=filter_text
                )
            )
            assert len(page.model_configs) == 1
            names.append(page.model_configs[0].name)
            token = page.next_page_token
            if not token:
                return names

    assert walk(False) == [mc("m-a"), mc("m-b"), mc("m-c"), mc("m-e")]
    assert walk(True) == [mc("m-a"), mc("m-b"), mc("m-c"), mc("m-d"), mc("m-e")]
    assert walk(False, "family = anthropic") == [mc("m-e")]
    assert walk(True, "family = openai AND enabled = true") == [mc("m-a"), mc("m-b"), mc("m-c"), mc("m-d")]

    first = s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(page_size=1))
    other_query = model_config_pb2.ListModelConfigsRequest(
        page_size=1, page_token=first.next_page_token, show_deleted=True
    )
    error = call_error(s.models.ListModelConfigs, other_query)
    assert (error.code, error.reason) == (INVALID, "PAGE_TOKEN_INVALID")
    error = call_error(s.models.ListModelConfigs, model_config_pb2.ListModelConfigsRequest(page_size=-1))
    assert (error.code, error.fields) == (INVALID, ["page_size"])


# ---------------------------------------------------------------- the database enforces the invariants too


def test_database_refuses_a_second_default_duplicate_positions_and_cross_family_rows(
    channel: grpc.Channel, engine: sa.Engine
) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    create_provider(s, "p-b")
    create_provider(s, "an-1", "anthropic")
    create_model(s, "m-one", providers=("p-a",))
    create_model(s, "m-two", providers=("p-a",))
    create_model(s, "m-off", providers=("p-a",), enabled=False)
    before = db_state(engine)
    statements = [
        # one live default
        ("UPDATE model_configs SET is_default = true WHERE id = 'm-two'", "model_configs_one_live_default"),
        # only an enabled live model
        ("UPDATE model_configs SET is_default = true WHERE id = 'm-off'", "model_configs_default_is_live_enabled"),
        # (model, position) is unique (checked at commit) ...
        ("INSERT INTO model_attachments VALUES ('m-one', 'p-b', 'openai', 0)", "model_attachments_model_position"),
        # ... and (model, provider config).
        ("INSERT INTO model_attachments VALUES ('m-one', 'p-a', 'openai', 1)", "model_attachments_pkey"),
        # An attachment's family is its provider config's, and without an override its model's too.
        (
            "INSERT INTO model_attachments VALUES ('m-one', 'an-1', 'anthropic', 1)",
            "model_attachments_same_family_or_override",
        ),
        ("INSERT INTO model_attachments VALUES ('m-one', 'an-1', 'openai', 1)", "model_attachments_provider_fk"),
        (
            "INSERT INTO model_attachments VALUES ('m-one', 'p-b', 'openai', -1)",
            "model_attachments_position_non_negative",
        ),
    ]
    for statement, constraint in statements:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))
        except sa.exc.IntegrityError as error:
            assert error.orig is not None and error.orig.diag.constraint_name == constraint, statement
        else:
            raise AssertionError(f"the database accepted: {statement}")
    assert db_state(engine) == before
