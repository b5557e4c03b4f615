"""Concurrent writers against one model (issue 3, deliverable 2): nothing lost, duplicated or interleaved."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from modelroute.v1 import model_config_pb2, provider_config_pb2

from ..helpers import Stubs, create_model, create_provider, decode, stubs

WRITERS = 8
ROUNDS = 6
PROVIDERS = ("p-a", "p-b", "p-c", "p-d", "p-e")
T = TypeVar("T")


def pc(provider_id: str) -> str:
    return f"providerConfigs/{provider_id}"


def run_together(tasks: Sequence[Callable[[], T]]) -> list[T | grpc.RpcError]:
    """Starts every task at the same moment (a barrier) and returns each result or RPC error, in task order."""
    barrier = threading.Barrier(len(tasks))

    def run(task: Callable[[], T]) -> T | grpc.RpcError:
        barrier.wait(timeout=30)
        try:
            return task()
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        return list(pool.map(run, tasks))


def stored_list(engine: sa.Engine, model_id: str) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT provider_config_id, position FROM model_attachments "
                "WHERE model_config_id = :model ORDER BY position"
            ),
            {"model": model_id},
        )
        return [(r[0], r[1]) for r in rows]


def replace_list(s: Stubs, model_id: str, providers: Sequence[str], etag: str = "") -> Any:
    message = model_config_pb2.ModelConfig(
        name=f"modelConfigs/{model_id}", provider_configs=[pc(p) for p in providers], etag=etag
    )
    return s.models.UpdateModelConfig(
        model_config_pb2.UpdateModelConfigRequest(
            model_config=message, update_mask=field_mask_pb2.FieldMask(paths=["provider_configs"])
        )
    )


def revision_of(etag: str) -> int:
    return int(etag.strip('"'))


def test_concurrent_replacements_never_lose_duplicate_or_interleave(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in PROVIDERS:
        create_provider(s, provider_id)
    create_model(s, "m", providers=("p-a",))
    rng = random.Random(20261124)
    permutations = list(itertools.permutations(PROVIDERS))

    for round_number in range(ROUNDS):
        # Different lengths and orders, all distinct within a round.
        submitted = [tuple(p[: 2 + (i % 4)]) for i, p in enumerate(rng.sample(permutations, WRITERS))]
        assert len(set(submitted)) == WRITERS
        results = run_together([partial(replace_list, s, "m", ids) for ids in submitted])

        failures = [r for r in results if isinstance(r, grpc.RpcError)]
        assert failures == [], [decode(f).message for f in failures]
        stored = stored_list(engine, "m")
        providers_in_order = tuple(p for p, _ in stored)
        assert [position for _, position in stored] == list(range(len(stored))), round_number
        assert providers_in_order in submitted, (round_number, providers_in_order)
        # Writers are serialised: the last one to commit (the highest etag) is what is stored.
        last = max((r for r in results if not isinstance(r, grpc.RpcError)), key=lambda r: revision_of(r.etag))
        assert tuple(last.provider_configs) == tuple(pc(p) for p in providers_in_order)
        # Each writer's own response shows exactly its own list.
        for ids, response in zip(submitted, results, strict=True):
            assert not isinstance(response, grpc.RpcError)
            assert list(response.provider_configs) == [pc(p) for p in ids]
            assert [a.position for a in response.attachments] == list(range(len(ids)))
        got = s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"))
        assert got == last


def test_concurrent_updates_with_one_etag_let_exactly_one_through(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in PROVIDERS:
        create_provider(s, provider_id)
    model = create_model(s, "m", providers=("p-a",))

    for _ in range(3):
        # Every writer asks for a change: a request that changes nothing succeeds on any current etag.
        current = tuple(p for p, _ in stored_list(engine, "m"))
        permutations = [ids for ids in itertools.permutations(PROVIDERS) if ids != current][:WRITERS]
        results = run_together([partial(replace_list, s, "m", ids, etag=model.etag) for ids in permutations])
        winners = [(ids, r) for ids, r in zip(permutations, results, strict=True) if not isinstance(r, grpc.RpcError)]
        losers = [decode(r) for r in results if isinstance(r, grpc.RpcError)]
        assert len(winners) == 1
        assert [(e.code, e.reason) for e in losers] == [(grpc.StatusCode.ABORTED, "ETAG_MISMATCH")] * (WRITERS - 1)
        winning_ids, model = winners[0]
        assert stored_list(engine, "m") == [(p, i) for i, p in enumerate(winning_ids)]
        assert all(e.metadata == {"current_etag": model.etag} for e in losers)


def test_replacements_racing_a_forced_provider_delete_stay_consistent(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in PROVIDERS:
        create_provider(s, provider_id)
    create_model(s, "m", providers=("p-a", "p-b"))
    lists = [("p-a", "p-b", "p-c"), ("p-c", "p-a"), ("p-d", "p-a", "p-e"), ("p-b", "p-a"), ("p-e", "p-d")]
    tasks: list[Callable[[], Any]] = [partial(replace_list, s, "m", ids) for ids in lists]
    tasks.append(
        lambda: s.providers.DeleteProviderConfig(
            provider_config_pb2.DeleteProviderConfigRequest(name=pc("p-a"), force=True)
        )
    )
    results = run_together(tasks)
    assert not isinstance(results[-1], grpc.RpcError)  # the forced delete always goes through
    for ids, result in zip(lists, results, strict=False):
        if isinstance(result, grpc.RpcError):
            # Only a list naming the deleted provider, written after the delete, can fail; it names p-a.
            error = decode(result)
            assert "p-a" in ids
            assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ATTACHMENTS_INVALID")
            assert pc("p-a") in error.message

    stored = [p for p, _ in stored_list(engine, "m")]
    assert [i for _, i in stored_list(engine, "m")] == list(range(len(stored)))
    assert "p-a" not in stored
    # The stored list is one submitted list, with p-a removed if it was written before the delete.
    assert tuple(stored) in {tuple(p for p in ids if p != "p-a") for ids in lists}
    with engine.connect() as conn:
        dangling = conn.execute(sa.text("SELECT count(*) FROM model_attachments WHERE provider_config_id = 'p-a'"))
        assert dangling.scalar_one() == 0


def test_concurrent_creates_of_one_id_let_exactly_one_through(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    for provider_id in PROVIDERS:
        create_provider(s, provider_id)
    results = run_together([partial(create_model, s, "same", providers=(p,)) for p in PROVIDERS])
    winners = [r for r in results if not isinstance(r, grpc.RpcError)]
    losers = [decode(r) for r in results if isinstance(r, grpc.RpcError)]
    assert len(winners) == 1
    assert [(e.code, e.reason) for e in losers] == [(grpc.StatusCode.ALREADY_EXISTS, "MODEL_CONFIG_ALREADY_EXISTS")] * (
        len(PROVIDERS) - 1
    )
    assert stored_list(engine, "same") == [(winners[0].provider_configs[0].removeprefix("providerConfigs/"), 0)]


def test_concurrent_first_models_make_exactly_one_default(channel: grpc.Channel, engine: sa.Engine) -> None:
    s = stubs(channel)
    create_provider(s, "p-a")
    model_ids = [f"m-{i}" for i in range(WRITERS)]
    results = run_together([partial(create_model, s, m, providers=("p-a",)) for m in model_ids])
    created = [r for r in results if not isinstance(r, grpc.RpcError)]
    assert len(created) == WRITERS
    defaults = [r.name for r in created if r.is_default]
    assert len(defaults) == 1
    first = min(created, key=lambda r: revision_of(r.etag))
    assert defaults == [first.name]
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id FROM model_configs WHERE is_default")).scalars().all()
    assert ["modelConfigs/" + i for i in stored] == defaults
