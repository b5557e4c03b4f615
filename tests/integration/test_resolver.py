"""ResolverService end to end over gRPC against a real PostgreSQL (docs/behaviour.md: deployment keys,
resolution, guarantees 3 to 7)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.adapters.crypto import Keyring, provider_key_binding
from modelroute_server.domain.families import Family
from modelroute_server.domain.providers import KeySource
from modelroute_server.domain.resolver import SkipReason
from modelroute_server.entrypoints.server import Application

from ..helpers import (
    FAMILIES,
    DeploymentKeys,
    RichError,
    Stubs,
    call_error,
    create_model,
    create_provider,
    policy,
    provider_request,
    stubs,
)
from ..unit.test_resolver_truth_table import DEPLOYMENT_KEY, STORED_KEY, TRUTH_TABLE, USER_KEY, Row

USER = "alice"
OTHER_BASE_URL = "https://api.openai.example/v1"

KEY_SOURCE = {
    KeySource.STORED: common_pb2.KEY_SOURCE_STORED,
    KeySource.DEPLOYMENT: common_pb2.KEY_SOURCE_DEPLOYMENT,
    KeySource.USER: common_pb2.KEY_SOURCE_USER,
    KeySource.AMBIENT: common_pb2.KEY_SOURCE_AMBIENT,
}
SKIP = {
    SkipReason.PROVIDER_DISABLED: common_pb2.SKIP_REASON_PROVIDER_DISABLED,
    SkipReason.USER_KEY_REQUIRED: common_pb2.SKIP_REASON_USER_KEY_REQUIRED,
    SkipReason.CENTRAL_KEY_MISSING: common_pb2.SKIP_REASON_CENTRAL_KEY_MISSING,
    SkipReason.KEY_UNDECRYPTABLE: common_pb2.SKIP_REASON_KEY_UNDECRYPTABLE,
    SkipReason.INVALID_CONFIG: common_pb2.SKIP_REASON_INVALID_CONFIG,
}
# Hand-written: who fixes each reason the truth table can produce.
ROW_FIXABLE_BY = {
    SkipReason.USER_KEY_REQUIRED: common_pb2.FIXABLE_BY_USER,
    SkipReason.CENTRAL_KEY_MISSING: common_pb2.FIXABLE_BY_ADMIN,
}

# ---------------------------------------------------------------- small request helpers


def env_keys(app: Application) -> DeploymentKeys:
    """The deployment keys (MODELROUTE_DEPLOYMENT_KEY_<FAMILY> in production, fixed for a process)."""
    return DeploymentKeys(app)


def resolve(s: Stubs, model: str = "m", user: str = USER, min_revision: int = 0) -> Any:
    return s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model=model, user=user, min_revision=min_revision))


def resolve_error(s: Stubs, model: str = "m", user: str = USER, min_revision: int = 0) -> RichError:
    request = resolver_pb2.ResolveModelRequest(model=model, user=user, min_revision=min_revision)
    return call_error(s.resolver.ResolveModel, request)


def explain(s: Stubs, model: str = "m", user: str = USER, **overrides: Any) -> Any:
    return s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model=model, user=user, **overrides))


def available(s: Stubs, user: str = USER) -> Any:
    return s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user=user))


def set_user_key(s: Stubs, provider_id: str, api_key: str, user: str = USER) -> None:
    s.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(
            user=user, provider_config=f"providerConfigs/{provider_id}", api_key=api_key
        )
    )


def update_provider(s: Stubs, provider_id: str, paths: list[str], **fields: Any) -> Any:
    return s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=f"providerConfigs/{provider_id}", **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )


def set_policy(s: Stubs, provider_id: str, c: bool, u: bool, f: bool) -> Any:
    return update_provider(s, provider_id, ["credential_policy"], credential_policy=policy(c, u, f))


def update_model(s: Stubs, model_id: str, paths: list[str], **fields: Any) -> Any:
    return s.models.UpdateModelConfig(
        model_config_pb2.UpdateModelConfigRequest(
            model_config=model_config_pb2.ModelConfig(name=f"modelConfigs/{model_id}", **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )


def get_provider(s: Stubs, provider_id: str) -> Any:
    return s.providers.GetProviderConfig(
        provider_config_pb2.GetProviderConfigRequest(name=f"providerConfigs/{provider_id}")
    )


def skipped_summary(response: Any) -> list[tuple[str, int, int, int]]:
    return [(k.provider_config, k.position, k.reason, k.fixable_by) for k in response.skipped]


def attachment_summary(attachment: Any) -> tuple[str, int, int, str, str, int, str]:
    a = attachment
    return (a.provider_config, a.position, a.family, a.model, a.base_url, a.key_source, a.api_key)


# ---------------------------------------------------------------- truth-table rows through the real service


def row_family(row: Row) -> tuple[str, Family]:
    return ("bedrock", Family.BEDROCK) if row.family == "bedrock" else ("openai", Family.OPENAI)


def setup_row(
    s: Stubs, app: Application, row: Row, provider_id: str = "p", model_id: str = "m", upstream: str = "up-model"
) -> None:
    """Builds one truth-table row through the public API only.

    The deployment key is configured while the config is set up (a policy that uses the central key needs
    a credential to be created); for rows without one it is removed afterwards, as an operator does when the
    service restarts with another environment. The user key of a (1,0,0) row was stored while the config
    still allowed user keys; turning U off keeps it (docs/behaviour.md, "User keys"), so the resolver must ignore it.
    """
    family_name, family = row_family(row)
    deployment_keys = env_keys(app)
    deployment_keys[family] = DEPLOYMENT_KEY
    c, u, f = (flag == "1" for flag in row.policy)
    create_provider(
        s,
        provider_id,
        family_name,
        api_key=STORED_KEY if row.central == "stored" else "",
        credential_policy=policy(c, u, f),
        base_url=OTHER_BASE_URL if row.family == "other" else "",
    )
    if row.user_key:
        if not u:
            set_policy(s, provider_id, True, True, False)
        set_user_key(s, provider_id, USER_KEY)
        if not u:
            set_policy(s, provider_id, c, u, f)
    create_model(s, model_id, family_name, providers=(provider_id,), upstream=upstream)
    if row.central != "deployment":
        del deployment_keys[family]


SAMPLE_IDS = (
    "111-stored-user-other",  # USER
    "010-stored-user-bedrock",  # USER, the unused stored key ignored
    "100-stored-user-other",  # STORED: U=0, the user's kept key ignored
    "100-stored-nouser-other",  # STORED
    "100-deployment-nouser-other",  # DEPLOYMENT
    "111-deployment-nouser-bedrock",  # DEPLOYMENT beats ambient
    "100-none-nouser-bedrock",  # AMBIENT
    "111-none-nouser-bedrock",  # AMBIENT as the fallback
    "110-stored-nouser-other",  # USER_KEY_REQUIRED, the stored key never used
    "111-none-nouser-other",  # USER_KEY_REQUIRED
    "010-deployment-nouser-other",  # USER_KEY_REQUIRED, the deployment key never used for C=0
    "100-none-nouser-other",  # CENTRAL_KEY_MISSING
)
SAMPLE = [r for r in TRUTH_TABLE if r.id in SAMPLE_IDS]


def test_sample_covers_every_outcome() -> None:
    assert len(SAMPLE) == len(SAMPLE_IDS)
    assert {r.expected for r in SAMPLE} == {
        KeySource.USER,
        KeySource.STORED,
        KeySource.DEPLOYMENT,
        KeySource.AMBIENT,
        SkipReason.USER_KEY_REQUIRED,
        SkipReason.CENTRAL_KEY_MISSING,
    }


@pytest.mark.parametrize("row", SAMPLE, ids=lambda r: r.id)
def test_truth_table_sample_end_to_end(app: Application, channel: grpc.Channel, row: Row) -> None:
    s = stubs(channel)
    setup_row(s, app, row)
    family_name, _ = row_family(row)
    if isinstance(row.expected, KeySource):
        answer = resolve(s)
        assert answer.model_config == "modelConfigs/m"
        assert attachment_summary(answer.selected) == (
            "providerConfigs/p",
            0,
            FAMILIES[family_name],
            "up-model",
            OTHER_BASE_URL if row.family == "other" else "",
            KEY_SOURCE[row.expected],
            row.secret or "",
        )
        assert list(answer.fallbacks) == []
        assert list(answer.skipped) == []
        assert answer.config_revision > 0
    else:
        error = resolve_error(s)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "NO_USABLE_ATTACHMENT"
        assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
            (row.expected.value, "providerConfigs/p")
        ]
        fixable = "user" if ROW_FIXABLE_BY[row.expected] == common_pb2.FIXABLE_BY_USER else "admin"
        assert f"fixable by {fixable}" in error.precondition_violations[0][2]
        for secret in (STORED_KEY, DEPLOYMENT_KEY, USER_KEY):
            assert secret not in error.message
            assert all(secret not in d for _, _, d in error.precondition_violations)


# ---------------------------------------------------------------- the full response shape


def build_priority_list(s: Stubs, app: Application) -> None:
    """Six openai configs, each showing one behaviour, attached in this order to model `m`."""
    env_keys(app)[Family.OPENAI] = "sk-env-openai"
    create_provider(s, "a-user-only", api_key="", credential_policy=policy(False, True, False))
    create_provider(s, "b-disabled", api_key="sk-b", enabled=False)
    create_provider(s, "c-stored", api_key="sk-c", base_url="https://c.example/v1")
    create_provider(
        s, "d-user", api_key="sk-d", base_url="https://d.example", credential_policy=policy(True, True, True)
    )
    create_provider(s, "e-deploy", api_key="")
    create_provider(s, "f-required", api_key="sk-f", credential_policy=policy(True, True, False))
    set_user_key(s, "d-user", "uk-d")
    order = ("a-user-only", "b-disabled", "c-stored", "d-user", "e-deploy", "f-required")
    create_model(s, "m", providers=order, upstream="gpt-4.1-2025-04-14")


def test_resolve_returns_selected_fallbacks_skipped_and_revision(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    start = available(s).config_revision
    build_priority_list(s, app)
    answer = resolve(s)
    openai = common_pb2.FAMILY_OPENAI
    upstream = "gpt-4.1-2025-04-14"
    assert answer.model_config == "modelConfigs/m"
    assert attachment_summary(answer.selected) == (
        "providerConfigs/c-stored",
        2,
        openai,
        upstream,
        "https://c.example/v1",
        common_pb2.KEY_SOURCE_STORED,
        "sk-c",
    )
    assert [attachment_summary(f) for f in answer.fallbacks] == [
        ("providerConfigs/d-user", 3, openai, upstream, "https://d.example", common_pb2.KEY_SOURCE_USER, "uk-d"),
        ("providerConfigs/e-deploy", 4, openai, upstream, "", common_pb2.KEY_SOURCE_DEPLOYMENT, "sk-env-openai"),
    ]
    assert skipped_summary(answer) == [
        ("providerConfigs/a-user-only", 0, common_pb2.SKIP_REASON_USER_KEY_REQUIRED, common_pb2.FIXABLE_BY_USER),
        ("providerConfigs/b-disabled", 1, common_pb2.SKIP_REASON_PROVIDER_DISABLED, common_pb2.FIXABLE_BY_ADMIN),
        ("providerConfigs/f-required", 5, common_pb2.SKIP_REASON_USER_KEY_REQUIRED, common_pb2.FIXABLE_BY_USER),
    ]
    assert all(k.family == openai and k.message for k in answer.skipped)
    # Eight writes since `start`: six provider creates, the user key, the model create.
    assert answer.config_revision == start + 8

    # Another user has no key for d-user: it falls back to d-user's own central key.
    bob = resolve(s, user="bob")
    assert [(f.provider_config, f.key_source, f.api_key) for f in bob.fallbacks] == [
        ("providerConfigs/d-user", common_pb2.KEY_SOURCE_STORED, "sk-d"),
        ("providerConfigs/e-deploy", common_pb2.KEY_SOURCE_DEPLOYMENT, "sk-env-openai"),
    ]
    # No user at all: the same as a user without keys.
    anonymous = resolve(s, user="")
    assert [f.api_key for f in anonymous.fallbacks] == ["sk-d", "sk-env-openai"]


def test_no_usable_attachment_lists_every_attachment_with_its_reason(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    env_keys(app)[Family.OPENAI] = "sk-env-openai"
    create_provider(s, "a-user-only", api_key="", credential_policy=policy(False, True, False))
    create_provider(s, "b-disabled", api_key="sk-b", enabled=False)
    create_provider(s, "c-keyless", api_key="")
    create_provider(s, "d-required", api_key="sk-d", credential_policy=policy(True, True, False))
    create_model(s, "m", providers=("a-user-only", "b-disabled", "c-keyless", "d-required"))
    del env_keys(app)[Family.OPENAI]
    error = resolve_error(s)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "NO_USABLE_ATTACHMENT"
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("USER_KEY_REQUIRED", "providerConfigs/a-user-only"),
        ("PROVIDER_DISABLED", "providerConfigs/b-disabled"),
        ("CENTRAL_KEY_MISSING", "providerConfigs/c-keyless"),
        ("USER_KEY_REQUIRED", "providerConfigs/d-required"),
    ]
    descriptions = [d for _, _, d in error.precondition_violations]
    assert [d.startswith(f"position {i}") for i, d in enumerate(descriptions)] == [True] * 4
    assert ["fixable by user" in d for d in descriptions] == [True, False, False, True]
    assert "sk-b" not in error.message and "sk-d" not in error.message
    assert error.metadata["model_config"] == "modelConfigs/m"


# ---------------------------------------------------------------- naming the model


def test_empty_model_means_the_default_and_names_or_ids_are_accepted(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-p")
    first = create_model(s, "first", upstream="gpt-first")
    create_model(s, "second", upstream="gpt-second")
    assert first.is_default
    default = resolve(s, model="")
    assert (default.model_config, default.selected.model) == ("modelConfigs/first", "gpt-first")
    for name in ("second", "modelConfigs/second"):
        answer = resolve(s, model=name)
        assert (answer.model_config, answer.selected.model, answer.selected.api_key) == (
            "modelConfigs/second",
            "gpt-second",
            "sk-p",
        )
    update_model(s, "second", ["is_default"], is_default=True)
    assert resolve(s, model="").model_config == "modelConfigs/second"


def test_no_default_model_is_a_precondition_error(channel: grpc.Channel) -> None:
    error = resolve_error(stubs(channel), model="")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "NO_DEFAULT_MODEL"


def test_unknown_and_deleted_models_are_not_found(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-p")
    create_model(s, "gone")
    assert resolve(s, model="gone").selected.api_key == "sk-p"
    s.models.DeleteModelConfig(model_config_pb2.DeleteModelConfigRequest(name="modelConfigs/gone"))
    for name in ("nope", "modelConfigs/nope", "gone", "modelConfigs/gone"):
        error = resolve_error(s, model=name)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_CONFIG_NOT_FOUND"), name
    # The deleted default is gone from resolution too.
    assert resolve_error(s, model="").reason == "NO_DEFAULT_MODEL"
    assert [m.model_config for m in available(s).models] == []
    error = call_error(s.resolver.ExplainResolution, resolver_pb2.ExplainResolutionRequest(model="gone"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_CONFIG_NOT_FOUND")
    # Undeleted, it resolves again.
    s.models.UndeleteModelConfig(model_config_pb2.UndeleteModelConfigRequest(name="modelConfigs/gone"))
    assert resolve(s, model="gone").selected.api_key == "sk-p"


def test_malformed_model_name_is_invalid_argument(channel: grpc.Channel) -> None:
    error = resolve_error(stubs(channel), model="providerConfigs/x")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == ["model"]


def test_disabled_model_is_a_precondition_error(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-p")
    create_model(s, "m")
    create_model(s, "other")
    update_model(s, "m", ["enabled"], enabled=False)
    error = resolve_error(s, model="m")
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_CONFIG_DISABLED")
    assert "sk-p" not in error.message
    explained = explain(s, model="m")
    assert (explained.usable, explained.unusable_reason, explained.selected_position) == (
        False,
        resolver_pb2.MODEL_UNUSABLE_REASON_MODEL_DISABLED,
        -1,
    )
    assert [(o.provider_config, o.usable) for o in explained.outcomes] == [("providerConfigs/p", True)]
    assert [m.model_config for m in available(s).models] == ["modelConfigs/other"]


# ---------------------------------------------------------------- revisions and the snapshot


def test_min_revision_from_a_completed_write_is_honoured(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-a")
    create_provider(s, "b", api_key="sk-b")
    create_model(s, "m", providers=("a", "b"))
    before = resolve(s)
    assert before.selected.provider_config == "providerConfigs/a"
    assert resolve(s, min_revision=before.config_revision).config_revision == before.config_revision

    # Another replica's write: it lands in PostgreSQL, this replica (no listener) hears nothing about it.
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_configs SET enabled = false WHERE id = 'a'"))
        written = conn.execute(sa.text("SELECT revision FROM config_revision")).scalar_one()
    assert written == before.config_revision + 1
    after = resolve(s, min_revision=written)
    assert after.config_revision == written
    assert after.selected.provider_config == "providerConfigs/b"
    assert skipped_summary(after) == [
        ("providerConfigs/a", 0, common_pb2.SKIP_REASON_PROVIDER_DISABLED, common_pb2.FIXABLE_BY_ADMIN)
    ]


def test_min_revision_in_the_future_is_revision_not_reached(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-p")
    create_model(s, "m")
    current = resolve(s).config_revision
    error = resolve_error(s, min_revision=current + 1_000_000)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REVISION_NOT_REACHED")
    assert error.metadata["config_revision"] == str(current)
    negative = resolve_error(s, min_revision=-1)
    assert (negative.code, negative.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["min_revision"])
    assert resolve(s, min_revision=current).selected.api_key == "sk-p"


def test_the_snapshot_reflects_writes_immediately(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-a")
    create_provider(s, "b", api_key="sk-b")
    first_model_error = resolve_error(s, model="m")
    assert first_model_error.reason == "MODEL_CONFIG_NOT_FOUND"
    create_model(s, "m", providers=("a", "b"))
    first = resolve(s)
    assert (first.selected.provider_config, first.selected.api_key) == ("providerConfigs/a", "sk-a")
    update_provider(s, "a", ["enabled"], enabled=False)
    second = resolve(s)
    assert second.config_revision == first.config_revision + 1
    assert (second.selected.provider_config, second.selected.api_key) == ("providerConfigs/b", "sk-b")
    assert skipped_summary(second) == [
        ("providerConfigs/a", 0, common_pb2.SKIP_REASON_PROVIDER_DISABLED, common_pb2.FIXABLE_BY_ADMIN)
    ]
    update_provider(s, "a", ["enabled"], enabled=True)
    assert resolve(s).selected.provider_config == "providerConfigs/a"


# ---------------------------------------------------------------- ListAvailableModels


def test_list_available_models(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "central", api_key="sk-central")
    create_provider(s, "byok", api_key="sk-byok", credential_policy=policy(True, True, False))
    create_provider(s, "bedrock-ambient", "bedrock", api_key="")
    create_model(s, "a-central", providers=("central",), display_name="Central")
    create_model(s, "b-byok", providers=("byok",), upstream="gpt-byok")
    create_model(s, "c-bedrock", "bedrock", providers=("bedrock-ambient",), upstream="anthropic.claude-v2")
    create_model(s, "d-disabled", providers=("central",))
    create_model(s, "e-deleted", providers=("central",))
    update_model(s, "d-disabled", ["enabled"], enabled=False)
    s.models.DeleteModelConfig(model_config_pb2.DeleteModelConfigRequest(name="modelConfigs/e-deleted"))

    listing = available(s)
    assert listing.config_revision == resolve(s, model="a-central").config_revision
    rows = [
        (m.model_config, m.family, m.model, m.is_default, m.usable, m.selected_provider_config, skipped_summary(m))
        for m in listing.models
    ]
    assert rows == [
        ("modelConfigs/a-central", common_pb2.FAMILY_OPENAI, "gpt-4.1", True, True, "providerConfigs/central", []),
        (
            "modelConfigs/b-byok",
            common_pb2.FAMILY_OPENAI,
            "gpt-byok",
            False,
            False,
            "",
            [("providerConfigs/byok", 0, common_pb2.SKIP_REASON_USER_KEY_REQUIRED, common_pb2.FIXABLE_BY_USER)],
        ),
        (
            "modelConfigs/c-bedrock",
            common_pb2.FAMILY_BEDROCK,
            "anthropic.claude-v2",
            False,
            True,
            "providerConfigs/bedrock-ambient",
            [],
        ),
    ]
    assert listing.models[0].display_name == "Central"

    set_user_key(s, "byok", "uk-byok")
    mine = {m.model_config: m for m in available(s).models}
    assert (mine["modelConfigs/b-byok"].usable, mine["modelConfigs/b-byok"].selected_provider_config) == (
        True,
        "providerConfigs/byok",
    )
    # Another user's catalogue is unaffected by alice's key.
    theirs = {m.model_config: m for m in available(s, user="bob").models}
    assert theirs["modelConfigs/b-byok"].usable is False
    assert "uk-byok" not in str(available(s)) and "sk-central" not in str(available(s))


# ---------------------------------------------------------------- ExplainResolution


def test_explain_never_returns_secrets_and_honours_what_if(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    build_priority_list(s, app)
    real = resolve(s)
    response = explain(s)
    assert (response.model_config, response.usable, response.selected_position) == ("modelConfigs/m", True, 2)
    assert response.unusable_reason == resolver_pb2.MODEL_UNUSABLE_REASON_UNSPECIFIED
    assert response.config_revision == real.config_revision
    assert [(o.position, o.usable, o.key_source, o.reason, o.fixable_by) for o in response.outcomes] == [
        (
            0,
            False,
            common_pb2.KEY_SOURCE_UNSPECIFIED,
            common_pb2.SKIP_REASON_USER_KEY_REQUIRED,
            common_pb2.FIXABLE_BY_USER,
        ),
        (
            1,
            False,
            common_pb2.KEY_SOURCE_UNSPECIFIED,
            common_pb2.SKIP_REASON_PROVIDER_DISABLED,
            common_pb2.FIXABLE_BY_ADMIN,
        ),
        (2, True, common_pb2.KEY_SOURCE_STORED, common_pb2.SKIP_REASON_UNSPECIFIED, common_pb2.FIXABLE_BY_UNSPECIFIED),
        (3, True, common_pb2.KEY_SOURCE_USER, common_pb2.SKIP_REASON_UNSPECIFIED, common_pb2.FIXABLE_BY_UNSPECIFIED),
        (
            4,
            True,
            common_pb2.KEY_SOURCE_DEPLOYMENT,
            common_pb2.SKIP_REASON_UNSPECIFIED,
            common_pb2.FIXABLE_BY_UNSPECIFIED,
        ),
        (
            5,
            False,
            common_pb2.KEY_SOURCE_UNSPECIFIED,
            common_pb2.SKIP_REASON_USER_KEY_REQUIRED,
            common_pb2.FIXABLE_BY_USER,
        ),
    ]

    what_if = explain(
        s,
        user_key_overrides=[
            resolver_pb2.UserKeyOverride(provider_config="providerConfigs/a-user-only", has_user_api_key=True),
            resolver_pb2.UserKeyOverride(provider_config="providerConfigs/d-user", has_user_api_key=False),
        ],
        provider_enabled_overrides=[
            resolver_pb2.ProviderEnabledOverride(provider_config="providerConfigs/b-disabled", enabled=True),
            resolver_pb2.ProviderEnabledOverride(provider_config="providerConfigs/c-stored", enabled=False),
        ],
    )
    assert what_if.selected_position == 0
    assert [(o.usable, o.key_source, o.reason) for o in what_if.outcomes] == [
        (True, common_pb2.KEY_SOURCE_USER, common_pb2.SKIP_REASON_UNSPECIFIED),
        (True, common_pb2.KEY_SOURCE_STORED, common_pb2.SKIP_REASON_UNSPECIFIED),
        (False, common_pb2.KEY_SOURCE_UNSPECIFIED, common_pb2.SKIP_REASON_PROVIDER_DISABLED),
        (True, common_pb2.KEY_SOURCE_STORED, common_pb2.SKIP_REASON_UNSPECIFIED),  # d-user without the user key
        (True, common_pb2.KEY_SOURCE_DEPLOYMENT, common_pb2.SKIP_REASON_UNSPECIFIED),
        (False, common_pb2.KEY_SOURCE_UNSPECIFIED, common_pb2.SKIP_REASON_USER_KEY_REQUIRED),
    ]
    # Everything disabled: the explanation says so, position -1.
    all_off = explain(
        s,
        provider_enabled_overrides=[
            resolver_pb2.ProviderEnabledOverride(provider_config=f"providerConfigs/{p}", enabled=False)
            for p in ("c-stored", "d-user", "e-deploy")
        ],
    )
    assert (all_off.usable, all_off.selected_position, all_off.unusable_reason) == (
        False,
        -1,
        resolver_pb2.MODEL_UNUSABLE_REASON_NO_USABLE_ATTACHMENT,
    )

    for answer in (response, what_if, all_off):
        text = answer.SerializeToString()
        for secret in (b"sk-b", b"sk-c", b"sk-d", b"sk-f", b"uk-d", b"sk-env-openai", b"what-if"):
            assert secret not in text

    # Nothing real changed.
    after = resolve(s)
    assert after == real
    assert get_provider(s, "b-disabled").enabled is False
    assert get_provider(s, "c-stored").enabled is True


def test_explain_override_naming_an_unknown_provider_is_not_found(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-p")
    create_model(s, "m")
    for overrides in (
        {"user_key_overrides": [resolver_pb2.UserKeyOverride(provider_config="providerConfigs/ghost")]},
        {"provider_enabled_overrides": [resolver_pb2.ProviderEnabledOverride(provider_config="providerConfigs/ghost")]},
    ):
        request = resolver_pb2.ExplainResolutionRequest(model="m", **overrides)
        error = call_error(s.resolver.ExplainResolution, request)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PROVIDER_CONFIG_NOT_FOUND")
        assert error.resource_name == "providerConfigs/ghost"
    malformed = resolver_pb2.ExplainResolutionRequest(
        model="m", user_key_overrides=[resolver_pb2.UserKeyOverride(provider_config="ghost")]
    )
    error = call_error(s.resolver.ExplainResolution, malformed)
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["user_key_overrides[0].provider_config"])


# ---------------------------------------------------------------- guarantees 3 to 7 (docs/behaviour.md)


def test_trap3_no_key_borrowed_from_sibling_config(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    # `keyless` was created while a deployment key was configured; the environment no longer has one.
    env_keys(app)[Family.OPENAI] = "sk-env-gone"
    create_provider(s, "keyless", api_key="", base_url="https://keyless.example/v1")
    del env_keys(app)[Family.OPENAI]
    create_provider(s, "keyed", api_key="sk-keyed", base_url="https://keyed.example/v1")
    create_model(s, "m", providers=("keyless", "keyed"))
    create_model(s, "only-keyless", providers=("keyless",))

    answer = resolve(s)
    assert attachment_summary(answer.selected) == (
        "providerConfigs/keyed",
        1,
        common_pb2.FAMILY_OPENAI,
        "gpt-4.1",
        "https://keyed.example/v1",
        common_pb2.KEY_SOURCE_STORED,
        "sk-keyed",
    )
    assert skipped_summary(answer) == [
        ("providerConfigs/keyless", 0, common_pb2.SKIP_REASON_CENTRAL_KEY_MISSING, common_pb2.FIXABLE_BY_ADMIN)
    ]
    error = resolve_error(s, model="only-keyless")
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("CENTRAL_KEY_MISSING", "providerConfigs/keyless")
    ]
    assert get_provider(s, "keyless").has_api_key is False
    assert get_provider(s, "keyless").central_credential_usable is False


def test_trap3_user_key_for_one_config_never_serves_a_sibling(channel: grpc.Channel) -> None:
    s = stubs(channel)
    user_only = policy(False, True, False)
    create_provider(s, "x", api_key="", credential_policy=user_only, base_url="https://x.example/v1")
    create_provider(s, "y", api_key="", credential_policy=user_only, base_url="https://y.example/v1")
    set_user_key(s, "x", "uk-for-x")
    create_model(s, "m", providers=("y", "x"))
    create_model(s, "only-y", providers=("y",))

    answer = resolve(s)
    assert attachment_summary(answer.selected) == (
        "providerConfigs/x",
        1,
        common_pb2.FAMILY_OPENAI,
        "gpt-4.1",
        "https://x.example/v1",
        common_pb2.KEY_SOURCE_USER,
        "uk-for-x",
    )
    assert skipped_summary(answer) == [
        ("providerConfigs/y", 0, common_pb2.SKIP_REASON_USER_KEY_REQUIRED, common_pb2.FIXABLE_BY_USER)
    ]
    error = resolve_error(s, model="only-y")
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("USER_KEY_REQUIRED", "providerConfigs/y")
    ]

    # With a key of its own for y, each config gets its own key with its own base URL.
    set_user_key(s, "y", "uk-for-y")
    both = resolve(s)
    pairs = [(a.provider_config, a.base_url, a.api_key) for a in (both.selected, *both.fallbacks)]
    assert pairs == [
        ("providerConfigs/y", "https://y.example/v1", "uk-for-y"),
        ("providerConfigs/x", "https://x.example/v1", "uk-for-x"),
    ]


def test_trap4_policy_flags_honoured_at_run_time(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p", api_key="sk-central", credential_policy=policy(True, True, False))
    create_model(s, "m")
    # (1,1,0) with a stored key and no user key: the central key is never used for users.
    error = resolve_error(s)
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("USER_KEY_REQUIRED", "providerConfigs/p")
    ]
    assert "sk-central" not in error.message

    set_policy(s, "p", True, True, True)  # fallback allowed now
    assert (resolve(s).selected.key_source, resolve(s).selected.api_key) == (common_pb2.KEY_SOURCE_STORED, "sk-central")

    set_user_key(s, "p", "uk-alice")
    assert (resolve(s).selected.key_source, resolve(s).selected.api_key) == (common_pb2.KEY_SOURCE_USER, "uk-alice")

    set_policy(s, "p", True, False, False)  # central only: alice's kept key is ignored
    assert (resolve(s).selected.key_source, resolve(s).selected.api_key) == (common_pb2.KEY_SOURCE_STORED, "sk-central")

    set_policy(s, "p", False, True, False)  # user keys only: the stored key is never used
    assert (resolve(s).selected.key_source, resolve(s).selected.api_key) == (common_pb2.KEY_SOURCE_USER, "uk-alice")
    bob = resolve_error(s, user="bob")
    assert [t for t, _, _ in bob.precondition_violations] == ["USER_KEY_REQUIRED"]
    assert "sk-central" not in bob.message


def test_trap5_config_that_cannot_build_a_client_is_skipped_and_the_walk_goes_on(
    app: Application, channel: grpc.Channel
) -> None:
    s = stubs(channel)
    create_provider(s, "az-old", "azure", api_key="sk-old", base_url="https://old.openai.azure.com")
    create_provider(s, "az-new", "azure", api_key="sk-new", base_url="https://new.openai.azure.com")
    create_model(s, "m", "azure", providers=("az-old", "az-new"), upstream="gpt-4o")
    create_model(s, "only-old", "azure", providers=("az-old",), upstream="gpt-4o")
    assert resolve(s).selected.provider_config == "providerConfigs/az-old"

    # An older version (or a hand edit) left a row that today's validation rejects.
    with app.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_configs SET base_url = NULL WHERE id = 'az-old'"))
    app.snapshots.invalidate()

    answer = resolve(s)
    assert attachment_summary(answer.selected) == (
        "providerConfigs/az-new",
        1,
        common_pb2.FAMILY_AZURE,
        "gpt-4o",
        "https://new.openai.azure.com",
        common_pb2.KEY_SOURCE_STORED,
        "sk-new",
    )
    assert skipped_summary(answer) == [
        ("providerConfigs/az-old", 0, common_pb2.SKIP_REASON_INVALID_CONFIG, common_pb2.FIXABLE_BY_ADMIN)
    ]
    assert "base_url" in answer.skipped[0].message and "sk-old" not in answer.skipped[0].message

    error = resolve_error(s, model="only-old")
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_USABLE_ATTACHMENT")
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("INVALID_CONFIG", "providerConfigs/az-old")
    ]
    explained = explain(s)
    assert [(o.usable, o.reason) for o in explained.outcomes] == [
        (False, common_pb2.SKIP_REASON_INVALID_CONFIG),
        (True, common_pb2.SKIP_REASON_UNSPECIFIED),
    ]
    listing = {m.model_config: m.usable for m in available(s).models}
    assert listing == {"modelConfigs/m": True, "modelConfigs/only-old": False}
    # The broken row is still readable, so an admin can see and fix it.
    assert get_provider(s, "az-old").base_url == ""


def test_trap6_deployment_key_only_setup_resolves(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    env_keys(app)[Family.ANTHROPIC] = "sk-env-anthropic"
    created = create_provider(s, "claude", "anthropic", api_key="")
    assert (created.has_api_key, created.central_credential_usable, created.central_credential_source) == (
        False,
        True,
        common_pb2.KEY_SOURCE_DEPLOYMENT,
    )
    create_provider(s, "claude-byok", "anthropic", api_key="", credential_policy=policy(True, True, True))
    create_model(s, "sonnet", "anthropic", providers=("claude",), upstream="claude-sonnet-4")
    create_model(s, "sonnet-byok", "anthropic", providers=("claude-byok",), upstream="claude-sonnet-4")

    answer = resolve(s, model="sonnet")
    assert attachment_summary(answer.selected) == (
        "providerConfigs/claude",
        0,
        common_pb2.FAMILY_ANTHROPIC,
        "claude-sonnet-4",
        "",
        common_pb2.KEY_SOURCE_DEPLOYMENT,
        "sk-env-anthropic",
    )
    fallback = resolve(s, model="sonnet-byok")
    assert (fallback.selected.key_source, fallback.selected.api_key) == (
        common_pb2.KEY_SOURCE_DEPLOYMENT,
        "sk-env-anthropic",
    )
    assert [m.usable for m in available(s).models] == [True, True]
    # A deployment key never stands in for another family: an openai config still needs its own key.
    error = call_error(s.providers.CreateProviderConfig, provider_request("gpt", "openai", api_key=""))
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["provider_config.api_key"])
    assert explain(s, model="sonnet").outcomes[0].key_source == common_pb2.KEY_SOURCE_DEPLOYMENT


def test_trap7_white_space_key_never_counts_as_present(
    app: Application, channel: grpc.Channel, keyring: Keyring
) -> None:
    s = stubs(channel)
    for blank in ("   ", " \t"):
        error = call_error(
            s.providers.CreateProviderConfig,
            provider_config_pb2.CreateProviderConfigRequest(
                provider_config=provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key=blank),
                provider_config_id="blank",
            ),
        )
        assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["provider_config.api_key"])
    assert (
        list(s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()).provider_configs) == []
    )

    create_provider(s, "p", api_key="sk-p", credential_policy=policy(True, True, False))
    create_model(s, "m")
    error = call_error(
        s.user_keys.SetUserProviderKey,
        user_key_pb2.SetUserProviderKeyRequest(user=USER, provider_config="providerConfigs/p", api_key="   "),
    )
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["api_key"])
    error = call_error(
        s.providers.UpdateProviderConfig,
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/p", api_key="   "),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        ),
    )
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["provider_config.api_key"])
    assert get_provider(s, "p").has_api_key is True

    # Clearing the key: every read shape agrees that no key is stored.
    cleared = update_provider(s, "p", ["api_key"], api_key="")
    assert cleared.has_api_key is False
    assert get_provider(s, "p").has_api_key is False
    listed = s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()).provider_configs
    assert [(p.name, p.has_api_key) for p in listed] == [("providerConfigs/p", False)]
    model = s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"))
    assert [(a.provider_config, a.has_api_key) for a in model.attachments] == [("providerConfigs/p", False)]

    # A white-space key written straight into the table (by an older version) is no key either.
    with app.engine.connect() as conn:
        incarnation = conn.execute(sa.text("SELECT key_incarnation FROM provider_configs WHERE id = 'p'")).scalar()
    sealed = keyring.seal("   ", provider_key_binding("p", incarnation))
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE provider_configs SET api_key_ciphertext = :c, api_key_key_id = :k, "
                "central_api_key_enabled = true, allow_user_api_key = false WHERE id = 'p'"
            ),
            {"c": sealed.ciphertext, "k": sealed.key_id},
        )
    app.snapshots.invalidate()
    got = get_provider(s, "p")
    assert (got.has_api_key, got.central_credential_usable) == (False, False)
    error = resolve_error(s)
    assert [(t, subject) for t, subject, _ in error.precondition_violations] == [
        ("CENTRAL_KEY_MISSING", "providerConfigs/p")
    ]
    model = s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"))
    assert [(a.has_api_key, a.central_credential_usable) for a in model.attachments] == [(False, False)]


# ---------------------------------------------------------------- keys that no longer decrypt, base URLs


def test_undecryptable_keys_are_skipped_with_who_can_fix_them(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-a")
    create_provider(s, "b", api_key="sk-b")
    create_provider(s, "u", api_key="", credential_policy=policy(False, True, False))
    set_user_key(s, "u", "uk-alice")
    create_model(s, "m", providers=("a", "b"))
    create_model(s, "byok", providers=("u", "b"))
    # Ciphertexts moved to another row (trap 2's cousin): bound to their row, they no longer decrypt.
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE provider_configs SET (api_key_ciphertext, api_key_key_id) = "
                "(SELECT api_key_ciphertext, api_key_key_id FROM provider_configs WHERE id = 'b') WHERE id = 'a'"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO user_provider_keys (user_id, provider_config_id, api_key_ciphertext, api_key_key_id, "
                "create_time, update_time) SELECT 'bob', provider_config_id, api_key_ciphertext, api_key_key_id, "
                "now(), now() FROM user_provider_keys WHERE user_id = :u AND provider_config_id = 'u'"
            ),
            {"u": USER},
        )
    app.snapshots.invalidate()

    answer = resolve(s)
    assert (answer.selected.provider_config, answer.selected.api_key) == ("providerConfigs/b", "sk-b")
    assert skipped_summary(answer) == [
        ("providerConfigs/a", 0, common_pb2.SKIP_REASON_KEY_UNDECRYPTABLE, common_pb2.FIXABLE_BY_ADMIN)
    ]
    assert get_provider(s, "a").has_api_key is True  # the admin sees a key is stored, and must replace it
    assert get_provider(s, "a").central_credential_usable is False

    assert resolve(s, model="byok").selected.api_key == "uk-alice"
    bob = resolve(s, model="byok", user="bob")
    assert (bob.selected.provider_config, bob.selected.api_key) == ("providerConfigs/b", "sk-b")
    assert skipped_summary(bob) == [
        ("providerConfigs/u", 0, common_pb2.SKIP_REASON_KEY_UNDECRYPTABLE, common_pb2.FIXABLE_BY_USER)
    ]
    for text in (str(answer), str(bob)):
        assert "sk-a" not in text and "uk-alice" not in text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_base_url_is_passed_through_for_every_family(channel: grpc.Channel, family: str) -> None:
    s = stubs(channel)
    create_provider(s, "p", family, api_key="sk-p", base_url="https://gateway.example:8443/v1/")
    create_model(s, "m", family, providers=("p",), upstream="some.model-v1:0")
    answer = resolve(s)
    assert (answer.selected.family, answer.selected.base_url, answer.selected.model) == (
        FAMILIES[family],
        "https://gateway.example:8443/v1/",
        "some.model-v1:0",
    )


def test_list_available_models_pages_to_the_end(app: Application, channel: grpc.Channel) -> None:
    from modelroute import ModelrouteClient

    s = stubs(channel)
    create_provider(s, "p")
    for i in range(5):
        create_model(s, f"m{i}", providers=("p",))
    client = ModelrouteClient(channel)
    assert [m.model_config for m in client.available_models("u", page_size=2)] == [
        f"modelConfigs/m{i}" for i in range(5)
    ]
    first = s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user="u", page_size=2))
    assert first.next_page_token
    error = call_error(
        s.resolver.ListAvailableModels,
        resolver_pb2.ListAvailableModelsRequest(user="someone-else", page_size=2, page_token=first.next_page_token),
    )
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")


def test_duplicate_what_if_overrides_are_rejected(app: Application, channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "p")
    create_model(s, "m", providers=("p",))
    error = call_error(
        s.resolver.ExplainResolution,
        resolver_pb2.ExplainResolutionRequest(
            model="m",
            provider_enabled_overrides=[
                resolver_pb2.ProviderEnabledOverride(provider_config="providerConfigs/p", enabled=True),
                resolver_pb2.ProviderEnabledOverride(provider_config="providerConfigs/p", enabled=False),
            ],
        ),
    )
    assert (error.code, error.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["provider_enabled_overrides[1].provider_config"],
    )


def test_an_update_that_changes_nothing_takes_no_revision(app: Application, channel: grpc.Channel) -> None:
    from modelroute.v1 import model_config_pb2, provider_config_pb2

    s = stubs(channel)
    provider = create_provider(s, "p")
    model = create_model(s, "m", providers=("p",))
    before = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")).config_revision
    same_provider = s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=provider.name, etag=provider.etag)
        )
    )
    same_model = s.models.UpdateModelConfig(
        model_config_pb2.UpdateModelConfigRequest(model_config=model_config_pb2.ModelConfig(name=model.name))
    )
    assert (same_provider, same_model) == (provider, model)
    assert s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m")).config_revision == before
    stale = call_error(
        s.providers.UpdateProviderConfig,
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name=provider.name, etag='"999999"')
        ),
    )
    assert stale.code is grpc.StatusCode.ABORTED
