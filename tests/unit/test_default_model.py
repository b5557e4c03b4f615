"""The default-model rule (at most one live default; the first model takes it; a model that gives it up
hands it to the next enabled live model), as a table over the real use cases on an in-memory unit of
work: no database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.domain.families import Family
from modelroute_server.service_layer import model_configs, provider_configs
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput
from modelroute_server.service_layer.views import ModelConfigView

from ..fakes import FakeStore
from ..helpers import TEST_CALLER

KEYRING = Keyring.parse(generate_keyring_spec())


@pytest.fixture
def ctx() -> ServiceContext:
    context = ServiceContext(KEYRING, FakeStore())
    provider_configs.create_provider_config(
        context, TEST_CALLER, "p", ProviderConfigInput(family=Family.OPENAI, api_key="sk-p")
    )
    return context


def create(ctx: ServiceContext, model_id: str, *, enabled: bool = True) -> ModelConfigView:
    return model_configs.create_model_config(
        ctx,
        TEST_CALLER,
        model_id,
        ModelConfigInput(family=Family.OPENAI, model="gpt", context_limit=1000, enabled=enabled),
    )


def update(ctx: ServiceContext, model_id: str, **fields: bool) -> ModelConfigView:
    return model_configs.update_model_config(
        ctx,
        TEST_CALLER,
        model_id,
        ModelConfigInput(paths=frozenset(fields), **fields),  # type: ignore[arg-type]
    )


def delete(ctx: ServiceContext, model_id: str) -> ModelConfigView:
    return model_configs.delete_model_config(ctx, TEST_CALLER, model_id, "")


def undelete(ctx: ServiceContext, model_id: str) -> ModelConfigView:
    return model_configs.undelete_model_config(ctx, TEST_CALLER, model_id, "")


def default_of(ctx: ServiceContext) -> str | None:
    with ctx.read() as uow:
        held = [m.id for m in uow.models.list(is_default=True)]
    assert len(held) <= 1
    return held[0] if held else None


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[ServiceContext], object]
    action: Callable[[ServiceContext], ModelConfigView]
    default_after: str | None
    # What the response reports: whether the default moved, and to where.
    reported: tuple[bool, str | None]


def three_models(ctx: ServiceContext) -> None:
    for model_id in ("a", "b", "c"):
        create(ctx, model_id)


CASES = [
    Case("the first model takes the default", lambda ctx: None, lambda ctx: create(ctx, "a"), "a", (True, "a")),
    Case("a second model leaves it", lambda ctx: create(ctx, "a"), lambda ctx: create(ctx, "b"), "a", (False, "a")),
    Case(
        "a disabled first model does not take it",
        lambda ctx: None,
        lambda ctx: create(ctx, "a", enabled=False),
        None,
        (False, None),
    ),
    Case(
        "making another the default moves it",
        three_models,
        lambda ctx: update(ctx, "c", is_default=True),
        "c",
        (True, "c"),
    ),
    Case(
        "asking again changes nothing", three_models, lambda ctx: update(ctx, "a", is_default=True), "a", (False, "a")
    ),
    Case("deleting the default promotes the oldest", three_models, lambda ctx: delete(ctx, "a"), "b", (True, "b")),
    Case(
        "un-defaulting promotes the next",
        three_models,
        lambda ctx: update(ctx, "a", is_default=False),
        "b",
        (True, "b"),
    ),
    Case(
        "disabling the default promotes the next",
        three_models,
        lambda ctx: update(ctx, "a", enabled=False),
        "b",
        (True, "b"),
    ),
    Case("deleting another model leaves it", three_models, lambda ctx: delete(ctx, "b"), "a", (False, "a")),
    Case(
        "a disabled model is never promoted",
        lambda ctx: (three_models(ctx), update(ctx, "b", enabled=False)),
        lambda ctx: delete(ctx, "a"),
        "c",
        (True, "c"),
    ),
    Case(
        "with no enabled live model there is no default",
        lambda ctx: (create(ctx, "a"), create(ctx, "b", enabled=False)),
        lambda ctx: delete(ctx, "a"),
        None,
        (True, None),
    ),
    Case(
        "a model enabled while there is no default takes it",
        lambda ctx: create(ctx, "a", enabled=False),
        lambda ctx: update(ctx, "a", enabled=True),
        "a",
        (True, "a"),
    ),
    Case(
        "an undeleted model fills an empty slot",
        lambda ctx: (create(ctx, "a"), delete(ctx, "a")),
        lambda ctx: undelete(ctx, "a"),
        "a",
        (True, "a"),
    ),
    Case(
        "an undeleted model leaves a held default alone",
        lambda ctx: (create(ctx, "a"), create(ctx, "b"), delete(ctx, "a")),
        lambda ctx: undelete(ctx, "a"),
        "b",
        (False, "b"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_default_model_rule(ctx: ServiceContext, case: Case) -> None:
    case.setup(ctx)
    view = case.action(ctx)
    assert default_of(ctx) == case.default_after
    change = view.default_change
    assert (change.changed, change.model_config_id if change.changed else default_of(ctx)) == case.reported


def test_a_disabled_model_cannot_be_made_the_default(ctx: ServiceContext) -> None:
    three_models(ctx)
    update(ctx, "b", enabled=False)
    with pytest.raises(DomainError) as refused:
        update(ctx, "b", is_default=True)
    assert refused.value.reason is Reason.DISABLED_MODEL_CANNOT_BE_DEFAULT
    assert default_of(ctx) == "a"  # a refused write changes nothing


def test_a_refused_write_leaves_the_store_as_it_was(ctx: ServiceContext) -> None:
    three_models(ctx)
    store = ctx.unit_of_work
    assert isinstance(store, FakeStore)
    before = store.state
    with pytest.raises(DomainError):
        update(ctx, "missing", is_default=True)
    assert store.state is before
