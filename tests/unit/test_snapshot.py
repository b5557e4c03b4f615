"""The snapshot and its store, driven by an in-memory change source: no database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from modelroute_server.adapters.crypto import SealedKey, pack_sealed_keys, unpack_sealed_keys
from modelroute_server.domain.access import AccessToken, Role
from modelroute_server.domain.changes import ChangeBatch, FullState
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import ModelConfig
from modelroute_server.domain.providers import ProviderConfig, StoredKey
from modelroute_server.domain.resolver import SkipReason
from modelroute_server.service_layer.snapshot import SnapshotStore, apply_changes, build_snapshot

MODEL = "m"


def provider(provider_id: str, *, enabled: bool = True) -> ProviderConfig:
    return ProviderConfig(provider_id, Family.OPENAI, provider_id, enabled=enabled, api_key=StoredKey("sk-x"))


def model(model_id: str, *attachments: str, is_default: bool = False) -> ModelConfig:
    return ModelConfig(model_id, Family.OPENAI, "gpt", model_id, 1000, attachments, is_default=is_default)


def token(token_id: str) -> AccessToken:
    return AccessToken(token_id, frozenset({Role.ADMIN}), token_id.encode().ljust(32, b"-"))


class FakeChangeSource:
    """A configuration and its change log in memory, with the same contract as PostgreSQL's."""

    def __init__(self) -> None:
        self.sequence = 0
        self.revision = 0
        self.pruned_through = 0
        self.providers: dict[str, ProviderConfig] = {}
        self.models: dict[str, ModelConfig] = {}
        self.user_keys: dict[str, dict[str, SealedKey]] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.log: list[tuple[int, str, str]] = []
        self.full_loads = 0
        self.batches_read = 0
        self.available = True
        self.gate: threading.Event | None = None  # when set, reads wait for it (a slow database)

    # -- writes, each one change of the sequence

    def _change(self, kind: str, entity_id: str, *, moves_revision: bool = True) -> None:
        self.sequence += 1
        if moves_revision:
            self.revision = self.sequence
        self.log.append((self.sequence, kind, entity_id))

    def put_provider(self, config: ProviderConfig) -> None:
        self.providers[config.id] = config
        self._change("provider", config.id)

    def put_model(self, config: ModelConfig | None, model_id: str = "") -> None:
        if config is None:
            self.models.pop(model_id, None)
        else:
            self.models[config.id] = config
        self._change("model", config.id if config else model_id)

    def put_user_key(self, user: str, provider_id: str, sealed: SealedKey | None) -> None:
        keys = self.user_keys.setdefault(user, {})
        if sealed is None:
            keys.pop(provider_id, None)
        else:
            keys[provider_id] = sealed
        self._change("user_key", user)

    def put_token(self, access_token: AccessToken) -> None:
        self.tokens[access_token.id] = access_token
        self._change("token", access_token.id, moves_revision=False)

    # -- the ChangeSource protocol

    def _read(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if not self.available:
            raise DomainError(Reason.DATABASE_UNAVAILABLE, "away")

    def load_all(self) -> FullState:
        self._read()
        self.full_loads += 1
        packed = [(u, pack_sealed_keys(k)) for u, k in self.user_keys.items() if k]
        return FullState(
            self.sequence,
            self.revision,
            list(self.providers.values()),
            list(self.models.values()),
            packed,
            list(self.tokens.values()),
        )

    def changes_since(self, sequence: int) -> ChangeBatch | None:
        self._read()
        if self.pruned_through > sequence:
            return None
        self.batches_read += 1
        named: dict[str, set[str]] = {"provider": set(), "model": set(), "user_key": set(), "token": set()}
        for entry_sequence, kind, entity_id in self.log:
            if entry_sequence > sequence:
                named[kind].add(entity_id)
        return ChangeBatch(
            self.sequence,
            self.revision,
            providers={i: self.providers.get(i) for i in named["provider"]},
            models={i: self.models.get(i) for i in named["model"]},
            user_keys={u: pack_sealed_keys(self.user_keys.get(u, {})) or None for u in named["user_key"]},
            tokens={i: self.tokens.get(i) for i in named["token"]},
        )

    def prune_log(self, older_than: timedelta) -> None:
        if self.log:
            self.pruned_through = self.log[-1][0]
            self.log.clear()


class RecordingTokens:
    def __init__(self) -> None:
        self.by_id: dict[str, AccessToken] = {}
        self.full_replacements = 0

    def replace_all(self, tokens: Sequence[AccessToken]) -> None:
        self.by_id = {t.id: t for t in tokens}
        self.full_replacements += 1

    def apply(self, changes: Mapping[str, AccessToken | None]) -> None:
        for token_id, changed in changes.items():
            if changed is None:
                self.by_id.pop(token_id, None)
            else:
                self.by_id[token_id] = changed


@pytest.fixture
def source() -> FakeChangeSource:
    fake = FakeChangeSource()
    fake.put_provider(provider("a"))
    fake.put_provider(provider("b"))
    fake.put_model(model(MODEL, "a", "b", is_default=True))
    return fake


@pytest.fixture
def tokens() -> RecordingTokens:
    return RecordingTokens()


@pytest.fixture
def store(source: FakeChangeSource, tokens: RecordingTokens) -> SnapshotStore:
    snapshots = SnapshotStore(source, {}, tokens)
    snapshots.load_before_serving()
    return snapshots


def test_the_first_load_is_in_full(store: SnapshotStore, source: FakeChangeSource) -> None:
    snapshot = store.current()
    assert (snapshot.sequence, snapshot.revision, snapshot.default_model_id) == (3, 3, MODEL)
    assert set(snapshot.providers) == {"a", "b"} and list(snapshot.models) == [MODEL]
    assert source.full_loads == 1


def test_a_change_is_applied_from_the_log_without_a_full_load(store: SnapshotStore, source: FakeChangeSource) -> None:
    before = store.current()
    source.put_provider(provider("a", enabled=False))
    store.committed(source.sequence)
    after = store.current()
    assert after.sequence == source.sequence and after is not before
    assert after.verdicts["a"].without_user_key.skip_reason is SkipReason.PROVIDER_DISABLED
    assert after.models is before.models  # untouched parts are shared, not copied
    assert before.verdicts["a"].without_user_key.usable  # a snapshot never changes once published
    assert (source.full_loads, source.batches_read) == (1, 1)


def test_nothing_new_keeps_the_same_snapshot(store: SnapshotStore) -> None:
    before = store.current()
    assert store.catch_up() is before


@pytest.mark.parametrize(
    ("changes", "default"),
    [
        # (model id, is_default after, live after)
        ([("n", False, True)], MODEL),
        ([("n", True, True), (MODEL, False, True)], "n"),
        ([(MODEL, False, True), ("n", True, True)], "n"),
        ([(MODEL, False, False)], None),
        ([(MODEL, False, False), ("n", True, True)], "n"),
        ([("n", True, True), (MODEL, False, False)], "n"),
    ],
)
def test_the_default_model_follows_the_changed_rows(
    store: SnapshotStore, source: FakeChangeSource, changes: list[tuple[str, bool, bool]], default: str | None
) -> None:
    for model_id, is_default, live in changes:
        source.put_model(model(model_id, "a", is_default=is_default) if live else None, model_id)
    store.committed(source.sequence)
    assert store.current().default_model_id == default


def test_models_page_in_id_order_through_additions_and_removals(store: SnapshotStore, source: FakeChangeSource) -> None:
    for model_id in ("z", "c", "k"):
        source.put_model(model(model_id, "a"))
    source.put_model(None, "c")
    store.committed(source.sequence)
    snapshot = store.current()
    assert [m.id for m in snapshot.models_after(None)] == ["k", MODEL, "z"]
    assert [m.id for m in snapshot.models_after("k")] == [MODEL, "z"]
    assert [m.id for m in snapshot.models_after("zz")] == []


def test_user_keys_are_held_packed_and_sealed(store: SnapshotStore, source: FakeChangeSource) -> None:
    sealed = SealedKey("k1", b"\x00ciphertext", b"i" * 16)
    legacy = SealedKey("k0", b"old", None)
    source.put_user_key("alice", "a", sealed)
    source.put_user_key("alice", "b", legacy)
    store.committed(source.sequence)
    snapshot = store.current()
    assert isinstance(snapshot.user_keys["alice"], bytes)
    assert snapshot.sealed_user_keys("alice") == {"a": sealed, "b": legacy}
    assert snapshot.sealed_user_keys("bob") == {}
    source.put_user_key("alice", "a", None)
    source.put_user_key("alice", "b", None)
    store.committed(source.sequence)
    assert "alice" not in store.current().user_keys


def test_packed_keys_round_trip_any_id() -> None:
    keys = {"p-1": SealedKey("key.1", bytes(range(256)), bytes(16)), "é-unicode": SealedKey("k", b"", None)}
    assert unpack_sealed_keys(pack_sealed_keys(keys)) == keys


def test_tokens_arrive_with_the_snapshot(
    store: SnapshotStore, source: FakeChangeSource, tokens: RecordingTokens
) -> None:
    source.put_token(token("ops"))
    revision = store.current().revision
    store.committed(source.sequence)
    assert "ops" in tokens.by_id and tokens.full_replacements == 1
    assert store.current().revision == revision  # a token change moves the sequence, not the config revision


def test_announcements_lost_are_caught_up_from_the_log(store: SnapshotStore, source: FakeChangeSource) -> None:
    store.start()
    try:
        for i in range(5):
            source.put_model(model(f"n{i}", "a"))
        store.changed(None)  # what the listener says after a reconnect
        waited = store.current(min_revision=source.revision)
        assert len(waited.models) == 6
        assert source.full_loads == 1  # caught up from the log, not reloaded
    finally:
        store.stop()


def test_a_position_older_than_the_pruned_log_means_a_full_load(store: SnapshotStore, source: FakeChangeSource) -> None:
    source.put_model(model("n", "a"))
    source.prune_log(timedelta(0))
    store.catch_up()
    assert source.full_loads == 2 and "n" in store.current().models


def test_a_revision_that_does_not_exist_yet_is_refused(store: SnapshotStore) -> None:
    store.start()
    try:
        with pytest.raises(DomainError) as refused:
            store.current(min_revision=99)
        assert refused.value.reason is Reason.REVISION_NOT_REACHED
    finally:
        store.stop()


def test_with_the_database_away_the_last_snapshot_answers(store: SnapshotStore, source: FakeChangeSource) -> None:
    last = store.current()
    source.available = False
    source.put_model(model("n", "a"))
    store.committed(source.sequence)  # the write committed; applying it failed
    assert store.fresh() is last  # readers are not held up by a catch-up that cannot run
    store.start()
    try:
        with pytest.raises(DomainError) as away:
            store.current(min_revision=source.revision)
        assert away.value.reason is Reason.DATABASE_UNAVAILABLE
        source.available = True
        store.changed(None)
        assert "n" in store.current(min_revision=source.revision).models  # recovered by itself
    finally:
        store.stop()


def test_readers_wait_for_this_replicas_own_write_only(store: SnapshotStore, source: FakeChangeSource) -> None:
    before = store.current()
    source.put_model(model("n", "a"))
    source.gate = threading.Event()
    writer = threading.Thread(target=store.committed, args=(source.sequence,))
    writer.start()
    try:
        # The write committed and is being applied: a reader must not see the old snapshot now.
        assert wait_until(lambda: store.fresh() is None)

        async def resolve_like_a_call() -> bool:
            snapshot = await store.wait()
            return "n" in snapshot.models

        source.gate.set()
        assert asyncio.run(resolve_like_a_call())
    finally:
        source.gate.set()
        writer.join(5)
    assert before.sequence < store.current().sequence


def test_another_replicas_change_never_blocks_readers(store: SnapshotStore, source: FakeChangeSource) -> None:
    before = store.current()
    source.put_model(model("n", "a"))
    store.changed(source.sequence)  # announced, not yet applied: no applier is running
    assert store.fresh() is before


def test_a_provider_change_reprepares_only_that_provider(store: SnapshotStore, source: FakeChangeSource) -> None:
    before = store.current()
    source.put_provider(replace(provider("b"), display_name="renamed"))
    store.committed(source.sequence)
    after = store.current()
    assert after.verdicts["a"] is before.verdicts["a"]
    assert after.providers["b"].display_name == "renamed"


def test_apply_changes_is_pure(source: FakeChangeSource) -> None:
    snapshot = build_snapshot(source.load_all(), {})
    batch = ChangeBatch(snapshot.sequence + 1, snapshot.revision + 1, models={MODEL: None})
    applied = apply_changes(snapshot, batch, {})
    assert MODEL in snapshot.models and MODEL not in applied.models
    assert applied.default_model_id is None and snapshot.default_model_id == MODEL


def wait_until(condition: object, seconds: float = 5.0) -> bool:
    deadline = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():  # type: ignore[operator]
            return True
        deadline.wait(0.01)
    return False


@pytest.mark.parametrize("count", [3, 1500])  # a few ids inserted one by one; a bulk change sorted at once
def test_the_id_order_holds_for_small_and_bulk_changes(source: FakeChangeSource, count: int) -> None:
    snapshot = build_snapshot(source.load_all(), {})
    added = {f"x{i:05d}": model(f"x{i:05d}", "a") for i in reversed(range(count))}
    batch = ChangeBatch(snapshot.sequence + 1, snapshot.revision + 1, models={**added, MODEL: None})
    applied = apply_changes(snapshot, batch, {})
    assert list(applied.model_ids) == sorted(added)
    assert [m.id for m in applied.models_after(None)] == sorted(added)


def test_only_the_wanted_keys_are_unpacked() -> None:
    keys = {p: SealedKey("k", p.encode() * 3, None if p == "b" else bytes(16)) for p in ("a", "b", "c")}
    packed = pack_sealed_keys(keys)
    assert unpack_sealed_keys(packed, {"c"}) == {"c": keys["c"]}
    assert unpack_sealed_keys(packed, {"b", "zzz"}) == {"b": keys["b"]}
    assert unpack_sealed_keys(packed, set()) == {}


def test_a_fault_in_applying_a_change_means_a_full_load(
    store: SnapshotStore, source: FakeChangeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelroute_server.service_layer import snapshot as snapshot_module

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in applying")

    monkeypatch.setattr(snapshot_module, "apply_changes", broken)
    source.put_model(model("n", "a"))
    store.committed(source.sequence)
    assert "n" in store.current().models and source.full_loads == 2
