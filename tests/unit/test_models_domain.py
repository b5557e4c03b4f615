"""Pure model-config rules: attachment validation, auto-attachment order, default promotion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import (
    Attachment,
    CallOptions,
    ModelConfig,
    auto_attachments,
    next_default,
    validate_attachments,
    validate_model_fields,
)
from modelroute_server.domain.providers import ProviderConfig

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def provider(pid: str, family: Family = Family.OPENAI, enabled: bool = True, minute: int = 0) -> ProviderConfig:
    return ProviderConfig(pid, family, pid, enabled=enabled, create_time=T0 + timedelta(minutes=minute))


def model(mid: str, *, enabled: bool = True, minute: int = 0, deleted: bool = False, **kw: object) -> ModelConfig:
    return ModelConfig(
        id=mid,
        family=Family.OPENAI,
        model="gpt",
        display_name=mid,
        context_limit=1000,
        attachments=("a",),
        enabled=enabled,
        create_time=T0 + timedelta(minutes=minute),
        delete_time=T0 if deleted else None,
        **kw,  # type: ignore[arg-type]
    )


PROVIDERS = {"a": provider("a"), "b": provider("b"), "claude": provider("claude", Family.ANTHROPIC)}


def entries(*ids: str) -> list[Attachment]:
    """`id` or `id=override` for each attachment."""
    return [Attachment(*i.split("=", 1)) for i in ids]


@pytest.mark.parametrize(
    ("ids", "expected_fields", "expected_text"),
    [
        ((), ["p"], "a model needs at least one provider config"),
        (("a", "a"), ["p[0]"], "providerConfigs/a is listed 2 times"),
        (("a", "a=other"), ["p[0]"], "providerConfigs/a is listed 2 times"),
        (("a", "ghost"), ["p[1]"], "providerConfigs/ghost does not exist"),
        (("ghost=x",), ["p[0]"], "providerConfigs/ghost does not exist"),
        (("claude",), ["p[0]"], "providerConfigs/claude is of family anthropic, the model is openai"),
        (("a", "b", "claude"), ["p[2]"], "an attachment of another family needs its own upstream model name"),
        (("ghost", "claude", "b", "b"), ["p[0]", "p[1]", "p[2]"], "providerConfigs/ghost does not exist"),
    ],
)
def test_bad_attachment_lists_name_the_offending_entries(
    ids: tuple[str, ...], expected_fields: list[str], expected_text: str
) -> None:
    with pytest.raises(DomainError) as caught:
        validate_attachments(Family.OPENAI, entries(*ids), PROVIDERS, "p")
    assert caught.value.reason is Reason.ATTACHMENTS_INVALID
    assert [v.field for v in caught.value.field_violations] == expected_fields
    assert expected_text in caught.value.message


@pytest.mark.parametrize("ids", [("b", "a"), ("claude=claude-sonnet-4.5", "a"), ("a=gpt-4o-eu", "b=gpt-4o-us")])
def test_good_lists_pass_an_attachment_of_another_family_only_with_an_override(ids: tuple[str, ...]) -> None:
    validate_attachments(Family.OPENAI, entries(*ids), PROVIDERS, "p")


@pytest.mark.parametrize(
    ("ids", "new_family", "expected_fields"),
    [
        (("a", "b"), Family.ANTHROPIC, ["p[0]", "p[1]"]),
        (("a=gpt", "b"), Family.ANTHROPIC, ["p[1]"]),
        (("a", "claude=claude-x"), Family.ANTHROPIC, ["p[0]"]),
        (("a=gpt", "b=gpt"), Family.ANTHROPIC, []),
        (("a=gpt", "claude"), Family.ANTHROPIC, []),
        (("a", "claude"), Family.OPENAI, ["p[1]"]),  # a hand-made row; the same rule whatever changed
    ],
)
def test_a_family_change_keeping_the_list_needs_an_override_on_each_attachment_of_another_family(
    ids: tuple[str, ...], new_family: Family, expected_fields: list[str]
) -> None:
    changed = replace(model("m").with_attachments(entries(*ids)), family=new_family)
    if not expected_fields:
        validate_attachments(changed.family, changed.attachment_entries, PROVIDERS, "p")
        return
    with pytest.raises(DomainError) as caught:
        validate_attachments(changed.family, changed.attachment_entries, PROVIDERS, "p")
    assert caught.value.reason is Reason.ATTACHMENTS_INVALID
    assert [v.field for v in caught.value.field_violations] == expected_fields
    assert f"the model is {new_family.value}" in caught.value.field_violations[0].description


def test_the_two_tuples_hold_overrides_only_when_an_attachment_has_one() -> None:
    plain = model("m").with_attachments(entries("a", "b"))
    assert (plain.attachments, plain.overrides) == (("a", "b"), ())
    assert [plain.upstream_model_at(i) for i in range(2)] == ["gpt", "gpt"]
    mixed = plain.with_attachments(entries("a", "claude=claude-x", "b"))
    assert mixed.overrides == ("", "claude-x", "")
    assert [mixed.upstream_model_at(i) for i in range(3)] == ["gpt", "claude-x", "gpt"]
    assert mixed.attachment_entries == tuple(entries("a", "claude=claude-x", "b"))
    # Removing a provider keeps the others' overrides at their new positions; the last override gone, none.
    assert mixed.without_provider("a").attachment_entries == tuple(entries("claude=claude-x", "b"))
    assert mixed.without_provider("claude").overrides == ()


def test_auto_attachment_is_enabled_same_family_by_create_time_then_id() -> None:
    providers = [
        provider("zeta", minute=0),
        provider("alpha", minute=5),
        provider("beta", minute=0),
        provider("off", enabled=False, minute=1),
        provider("claude", Family.ANTHROPIC, minute=0),
    ]
    assert auto_attachments(Family.OPENAI, providers) == ("beta", "zeta", "alpha")
    assert auto_attachments(Family.OPENAI, list(reversed(providers))) == ("beta", "zeta", "alpha")
    assert auto_attachments(Family.GOOGLE, providers) == ()


def test_next_default_skips_disabled_deleted_and_excluded_models() -> None:
    models = [
        model("old-disabled", enabled=False, minute=0),
        model("old-deleted", deleted=True, minute=0),
        model("b", minute=2),
        model("a", minute=2),
        model("current", minute=1),
    ]
    assert next_default(models, excluding=["current"]) is models[3]
    assert next_default(models) is models[4]
    assert next_default([model("x", enabled=False)]) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"context_limit": 0}, "context_limit"),
        ({"compression_threshold": 101}, "compression_threshold"),
        ({"compression_threshold": -1}, "compression_threshold"),
        ({"options": CallOptions(input_price_per_mtok=-0.01)}, "options.input_price_per_mtok"),
        ({"options": CallOptions(cache_write_price_per_mtok=float("nan"))}, "options.cache_write_price_per_mtok"),
        ({"options": CallOptions(temperature=2.5)}, "options.temperature"),
        ({"options": CallOptions(top_p=1.5)}, "options.top_p"),
        ({"options": CallOptions(max_output_tokens=0)}, "options.max_output_tokens"),
        ({"model": "  "}, "model"),
        ({"model": "gpt\x00"}, "model"),
        ({"display_name": " "}, "display_name"),
    ],
)
def test_model_field_rules(changes: dict[str, object], field: str) -> None:
    base = model("m")
    with pytest.raises(DomainError) as caught:
        validate_model_fields(replace(base, **changes), "model_config.")  # type: ignore[arg-type]
    assert [v.field for v in caught.value.field_violations] == [f"model_config.{field}"]


def test_valid_edges_pass() -> None:
    base = model("m", compression_threshold=0, options=CallOptions(input_price_per_mtok=0.0, temperature=2.0))
    validate_model_fields(base)
    validate_model_fields(replace(base, compression_threshold=100))
