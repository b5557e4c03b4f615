"""The in-memory configuration every resolution reads, and how each change is applied to it.

Every change replicas must see takes the next number of one change sequence
and is recorded in a change log (sequence, kind, id) in its own transaction. A
replica holds a `Snapshot` at one position of that sequence; to move on it
asks its `ChangeSource` for what changed after its position, re-reads only
those entities, and builds the next snapshot from the current one (persistent
maps: a change to one of a million entries copies almost nothing). A full load
happens only at start, when asked (`invalidate`), or when the log no longer
reaches back to the replica's position.

Snapshots are immutable and replaced whole, so readers never lock and never
wait, except for a caller that asks for a revision this replica has not
applied yet (`min_revision`), or for this replica's own write when applying it
right after its commit failed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import immutables

from ..adapters.crypto import Keyring, SealedKey, open_user_key, unpack_sealed_keys
from ..domain.access import AccessToken
from ..domain.changes import ChangeBatch, FullState
from ..domain.errors import DomainError, PreconditionViolation, Reason
from ..domain.families import Family
from ..domain.health import KeyMark, ProviderHealthState, mark_applies
from ..domain.models import ModelConfig
from ..domain.providers import ProviderConfig, central_credential
from ..domain.resolver import ProviderVerdict, prepare_provider

log = logging.getLogger(__name__)


class ChangeSource(Protocol):
    """Where the configuration and its change log live (PostgreSQL in production)."""

    def load_all(self) -> FullState: ...

    def changes_since(self, sequence: int) -> ChangeBatch | None:
        """What changed after `sequence`; None when the log no longer reaches back that far."""
        ...

    def prune_log(self, older_than: timedelta) -> None: ...


class TokenSink(Protocol):
    """Receives the access tokens the snapshot's source read (the authenticator's cache)."""

    def replace_all(self, tokens: Sequence[AccessToken]) -> None: ...

    def apply(self, changes: Mapping[str, AccessToken | None]) -> None: ...


# -- the snapshot


@dataclass(frozen=True, eq=False)
class Snapshot:
    sequence: int
    revision: int
    # Every provider config, with what resolution needs of it prepared once per change.
    verdicts: Mapping[str, ProviderVerdict]
    models: immutables.Map[str, ModelConfig]
    default_model_id: str | None
    user_keys: immutables.Map[str, bytes] = field(repr=False)
    # Live model ids in order, for paging through a hundred thousand models without sorting them.
    model_ids: Sequence[str] = field(default=(), repr=False)
    # Provider health by provider config id (only those with any), and its cooldowns as the resolver
    # reads them (by provider config id, then upstream model); empty in the common case.
    health: Mapping[str, ProviderHealthState] = field(default_factory=dict, repr=False)
    cooldowns: Mapping[str, Mapping[str, datetime]] = field(default_factory=dict, repr=False)
    # Users' key marks, by user then provider config id; and, decided from them once per change, the
    # provider configs whose rejected key is the very key the user holds now (what resolution reads).
    user_marks: immutables.Map[str, Mapping[str, KeyMark]] = field(default_factory=immutables.Map, repr=False)
    rejected_user_keys: immutables.Map[str, frozenset[str]] = field(default_factory=immutables.Map, repr=False)

    def models_after(self, after: str | None) -> Iterator[ModelConfig]:
        """Live models in id order, starting after `after` (None: from the first)."""
        start = 0 if after is None else bisect.bisect_right(self.model_ids, after)
        for index in range(start, len(self.model_ids)):
            yield self.models[self.model_ids[index]]

    @property
    def providers(self) -> Mapping[str, ProviderConfig]:
        return _ProviderView(self.verdicts)

    def sealed_user_keys(self, user: str, wanted: Container[str] | None = None) -> dict[str, SealedKey]:
        """The user's keys by provider config id (only those `wanted`), still sealed: opened only when a
        resolution needs one."""
        packed = self.user_keys.get(user)
        return unpack_sealed_keys(packed, wanted) if packed else {}


class _ProviderView(Mapping[str, ProviderConfig]):
    __slots__ = ("_verdicts",)

    def __init__(self, verdicts: Mapping[str, ProviderVerdict]) -> None:
        self._verdicts = verdicts

    def __getitem__(self, provider_id: str) -> ProviderConfig:
        return self._verdicts[provider_id].provider

    def __iter__(self) -> Iterator[str]:
        return iter(self._verdicts)

    def __len__(self) -> int:
        return len(self._verdicts)

    def __contains__(self, provider_id: object) -> bool:
        return provider_id in self._verdicts


def _prepared(
    provider: ProviderConfig,
    deployment_keys: Mapping[Family, str],
    health: ProviderHealthState | None,
    keyring: Keyring | None,
) -> ProviderVerdict:
    """The provider's verdict, with its central key rejected when its mark is about the key it would use
    now (a new stored key, or a new deployment key, clears the mark by itself)."""
    mark = health.central_mark if health is not None else None
    # Only a config with a mark has its central key looked at (the deployment key, or a decrypted one).
    rejected = (
        mark is not None
        and keyring is not None
        and mark_applies(mark, central_credential(provider, deployment_keys).secret, keyring)
    )
    return prepare_provider(provider, deployment_keys, rejected)


def _cooldowns(health: Mapping[str, ProviderHealthState]) -> dict[str, Mapping[str, datetime]]:
    return {pid: state.cooldowns for pid, state in health.items() if state.cooldowns}


def _rejected_keys(
    user: str, packed: bytes | None, marks: Mapping[str, KeyMark] | None, keyring: Keyring | None
) -> frozenset[str]:
    """The provider configs whose mark is about the key `user` holds for them now: each such key is
    opened here, once per change (and dropped at once), so that no resolution takes a fingerprint."""
    if not marks or not packed or keyring is None:
        return frozenset()
    sealed = unpack_sealed_keys(packed, marks)
    return frozenset(
        pid
        for pid, key in sealed.items()
        if mark_applies(marks[pid], open_user_key(keyring, user, pid, key).secret, keyring)
    )


def build_snapshot(state: FullState, deployment_keys: Mapping[Family, str], keyring: Keyring | None = None) -> Snapshot:
    models = immutables.Map({m.id: m for m in state.models})
    default = next((m.id for m in state.models if m.is_default), None)
    health = dict(state.health)
    user_keys = immutables.Map(state.user_keys)
    rejected = {
        user: found
        for user, marks in state.user_marks.items()
        if (found := _rejected_keys(user, user_keys.get(user), marks, keyring))
    }
    return Snapshot(
        state.sequence,
        state.revision,
        {p.id: _prepared(p, deployment_keys, health.get(p.id), keyring) for p in state.providers},
        models,
        default,
        user_keys,
        sorted(models.keys()),
        health,
        _cooldowns(health),
        immutables.Map(state.user_marks),
        immutables.Map(rejected),
    )


def apply_changes(
    snapshot: Snapshot,
    batch: ChangeBatch,
    deployment_keys: Mapping[Family, str],
    keyring: Keyring | None = None,
) -> Snapshot:
    """The next snapshot: `snapshot` with the batch's entities replaced; nothing else is touched."""
    verdicts: Mapping[str, ProviderVerdict] = snapshot.verdicts
    health, cooldowns = snapshot.health, snapshot.cooldowns
    if batch.health:
        health = dict(health)
        for provider_id, state in batch.health.items():
            if state is None or state.empty:
                health.pop(provider_id, None)
            else:
                health[provider_id] = state
        cooldowns = _cooldowns(health)
    # A verdict changes with its config, or with its central key's mark.
    central_marks_changed = {
        pid
        for pid, state in batch.health.items()
        if (state.central_mark if state else None) != (h.central_mark if (h := snapshot.health.get(pid)) else None)
    }
    if batch.providers or central_marks_changed:
        changed = dict(verdicts)  # about a thousand entries at most: a copy costs microseconds
        for provider_id, provider in batch.providers.items():
            if provider is None:
                changed.pop(provider_id, None)
            else:
                changed[provider_id] = _prepared(provider, deployment_keys, health.get(provider_id), keyring)
        for provider_id in central_marks_changed - batch.providers.keys():
            if provider_id in changed:
                provider = changed[provider_id].provider
                changed[provider_id] = _prepared(provider, deployment_keys, health.get(provider_id), keyring)
        verdicts = changed
    models, default, model_ids = snapshot.models, snapshot.default_model_id, snapshot.model_ids
    if batch.models:
        added = [i for i, m in batch.models.items() if m is not None and i not in models]
        removed = [i for i, m in batch.models.items() if m is None and i in models]
        if added or removed:
            model_ids = _updated_ids(model_ids, added, removed)
        with models.mutate() as mutation:
            for model_id, model in batch.models.items():
                if model is None:
                    mutation.pop(model_id, None)
                else:
                    mutation[model_id] = model
                # At most one live default: whichever changed model holds the flag now, or none.
                if model is not None and model.is_default:
                    default = model_id
                elif default == model_id:
                    default = None
            models = mutation.finish()
    user_keys = snapshot.user_keys
    if batch.user_keys:
        with user_keys.mutate() as keys:
            for user, packed in batch.user_keys.items():
                if packed:
                    keys[user] = packed
                else:
                    keys.pop(user, None)
            user_keys = keys.finish()
    user_marks = snapshot.user_marks
    if batch.user_marks:
        with user_marks.mutate() as marks:
            for user, by_provider in batch.user_marks.items():
                if by_provider:
                    marks[user] = by_provider
                else:
                    marks.pop(user, None)
            user_marks = marks.finish()
    rejected = snapshot.rejected_user_keys
    if batch.user_marks or batch.user_keys:
        # Only a user whose keys or marks changed is decided again.
        with rejected.mutate() as decided:
            for user in batch.user_marks.keys() | batch.user_keys.keys():
                found = _rejected_keys(user, user_keys.get(user), user_marks.get(user), keyring)
                if found:
                    decided[user] = found
                else:
                    decided.pop(user, None)
            rejected = decided.finish()
    return Snapshot(
        batch.sequence,
        batch.revision,
        verdicts,
        models,
        default,
        user_keys,
        model_ids,
        health,
        cooldowns,
        user_marks,
        rejected,
    )


def _updated_ids(ids: Sequence[str], added: list[str], removed: list[str]) -> Sequence[str]:
    """The sorted id list with a few ids added and removed: one copy of the list (a memcpy, under a
    millisecond at 100,000 models) and a binary search each; a bulk change sorts once instead."""
    if len(added) + len(removed) > 1000:
        return sorted((set(ids) | set(added)) - set(removed))
    updated = list(ids)
    for model_id in removed:
        del updated[bisect.bisect_left(updated, model_id)]
    for model_id in added:
        bisect.insort(updated, model_id)
    return updated


def revision_not_reached(snapshot: Snapshot, min_revision: int) -> DomainError:
    return DomainError(
        Reason.REVISION_NOT_REACHED,
        f"the configuration is at revision {snapshot.revision}; revision {min_revision} does not exist yet",
        metadata={"config_revision": str(snapshot.revision)},
        precondition_violations=[
            PreconditionViolation(
                "REVISION_NOT_REACHED", "config_revision", f"at {snapshot.revision}, asked for {min_revision}"
            )
        ],
    )


def configuration_stale(seconds_cut_off: float, max_age: timedelta | None) -> DomainError | None:
    """The refusal of a replica cut off from its database for longer than `max_age` (None: never refused)."""
    if max_age is None or seconds_cut_off <= max_age.total_seconds():
        return None
    return DomainError(
        Reason.CONFIGURATION_STALE,
        f"this replica has not reached its database for {seconds_cut_off:.0f} s, longer than "
        f"MODELROUTE_MAX_SNAPSHOT_AGE allows ({max_age.total_seconds():.0f} s): its configuration and access "
        "tokens may be out of date; ask another replica",
    )


def database_unavailable() -> DomainError:
    return DomainError(Reason.DATABASE_UNAVAILABLE, "the configuration database is not answering")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """A full load allocates millions of objects that all stay alive: the cyclic collector's passes over
    them, triggered by the allocations themselves, find nothing and cost a third of the load's time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- the store that keeps a snapshot current


@dataclass(eq=False)
class _Waiter:
    """A call waiting for a revision (or for this replica's own write) to be applied."""

    min_revision: int
    min_sequence: int
    # Rounds started before the call asked: only a later round can tell that its revision does not exist.
    after_round: int
    deliver: Callable[[Snapshot | DomainError], None]


@dataclass
class StoreStatistics:
    full_loads: int = 0
    applied_batches: int = 0
    # Time spent in each kind of catch-up (for the metrics), and when one last succeeded.
    full_load_seconds: float = 0.0
    apply_seconds: float = 0.0
    caught_up_at: float | None = None  # time.monotonic()

    def seconds_since_caught_up(self) -> float:
        return 0.0 if self.caught_up_at is None else time.monotonic() - self.caught_up_at


class SnapshotStore:
    """Holds the current snapshot and applies changes to it in one background thread.

    - `changed(sequence)` (from NOTIFY; None after a reconnect) wakes the applier, which reads the
      change log from this replica's position, so lost announcements cost nothing but a catch-up.
    - `committed(sequence)` (this replica's own write) applies it at once in the writer's thread,
      so the writer's next call sees it; readers keep the old snapshot until the swap.
    - With the database away the last snapshot keeps answering; the applier retries with backoff.
    """

    WAIT_SECONDS = 5.0
    POLL_SECONDS = 30.0
    PRUNE_SECONDS = 600.0
    MAX_RETRY_SECONDS = 5.0

    def __init__(
        self,
        source: ChangeSource,
        deployment_keys: Mapping[Family, str],
        tokens: TokenSink | None = None,
        *,
        log_retention: timedelta = timedelta(hours=24),
        keyring: Keyring | None = None,
    ) -> None:
        self._source = source
        self._deployment_keys = deployment_keys
        self._keyring = keyring
        self._tokens = tokens
        self._log_retention = log_retention
        self._snapshot: Snapshot | None = None
        self._apply_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._round = 0
        self._committed_sequence = 0
        self._full_load_needed = True
        self._failing_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.statistics = StoreStatistics()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    # -- signals

    def changed(self, sequence: int | None = None) -> None:
        """Another replica (or a hand edit) changed something; None: announcements may have been lost."""
        snapshot = self._snapshot
        if sequence is None or snapshot is None:
            self._wake.set()
        elif sequence > snapshot.sequence and sequence > self._committed_sequence:
            # At or below this replica's own last commit: its writer applies it (and wakes us if that fails).
            self._wake.set()

    def committed(self, sequence: int) -> None:
        """This replica committed `sequence`: apply it before the writer answers its caller."""
        self._committed_sequence = max(self._committed_sequence, sequence)
        try:
            self.catch_up()
        except Exception as exc:  # the applier retries; readers wait for it briefly
            log.warning("applying this replica's own change failed: %s", type(exc).__name__)
            self._wake.set()

    def invalidate(self) -> None:
        """Reload in full now (and, if that fails, at the applier's next round)."""
        self._full_load_needed = True
        self.catch_up()

    def seconds_cut_off(self) -> float:
        """How long this replica has been finding its database away: since the first catch-up that failed
        after one that succeeded (0 while it reaches it; the change listener's losing its connection starts
        a catch-up at once, so this is also about how long the database has been gone)."""
        if self._failing_since is None or self._snapshot is None:
            return 0.0
        return time.monotonic() - self._failing_since

    # -- reads

    def fresh(self, min_revision: int = 0) -> Snapshot | None:
        """The snapshot when it may answer now without waiting, else None (then `wait` or `current`)."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.revision < min_revision:
            return None
        if snapshot.sequence < self._committed_sequence and self._failing_since is None:
            return None
        return snapshot

    async def wait(self, min_revision: int = 0) -> Snapshot:
        """A snapshot at `min_revision` (and this replica's own writes) or later; waits on the event loop."""
        snapshot = self.fresh(min_revision)
        if snapshot is not None:
            return snapshot
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Snapshot | DomainError] = loop.create_future()

        def settle(value: Snapshot | DomainError) -> None:
            if not future.done():
                future.set_result(value)

        def deliver(value: Snapshot | DomainError) -> None:
            loop.call_soon_threadsafe(settle, value)

        waiter = self._register(min_revision, deliver)
        try:
            value = await asyncio.wait_for(future, self.WAIT_SECONDS)
        except TimeoutError:
            value = self._timed_out(min_revision)
        finally:
            self._unregister(waiter)
        if isinstance(value, DomainError):
            raise value
        return value

    def current(self, min_revision: int = 0) -> Snapshot:
        """`wait` for threads (commands, tests, benchmarks): blocks the calling thread."""
        snapshot = self.fresh(min_revision)
        if snapshot is not None:
            return snapshot
        done = threading.Event()
        result: list[Snapshot | DomainError] = []

        def deliver(value: Snapshot | DomainError) -> None:
            if not result:
                result.append(value)
                done.set()

        waiter = self._register(min_revision, deliver)
        try:
            value = result[0] if done.wait(self.WAIT_SECONDS) else self._timed_out(min_revision)
        finally:
            self._unregister(waiter)
        if isinstance(value, DomainError):
            raise value
        return value

    def _register(self, min_revision: int, deliver: Callable[[Snapshot | DomainError], None]) -> _Waiter:
        waiter = _Waiter(min_revision, self._committed_sequence, self._round, deliver)
        with self._waiters_lock:
            self._waiters.append(waiter)
        snapshot = self._snapshot
        if snapshot is not None and self._satisfies(snapshot, waiter):
            deliver(snapshot)  # applied between `fresh` and registering
        else:
            self._wake.set()
        return waiter

    def _unregister(self, waiter: _Waiter) -> None:
        with self._waiters_lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _timed_out(self, min_revision: int) -> Snapshot | DomainError:
        # A catch-up stuck on a slow or lost database: answer from what there is.
        snapshot = self._snapshot
        if snapshot is not None and snapshot.revision >= min_revision:
            return snapshot
        return database_unavailable()

    @staticmethod
    def _satisfies(snapshot: Snapshot, waiter: _Waiter) -> bool:
        return snapshot.revision >= waiter.min_revision and snapshot.sequence >= waiter.min_sequence

    def _settle_waiters(self, round_number: int, failed: bool) -> None:
        snapshot = self._snapshot
        with self._waiters_lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            if snapshot is not None and self._satisfies(snapshot, waiter):
                waiter.deliver(snapshot)
            elif round_number > waiter.after_round:
                if snapshot is None:
                    waiter.deliver(database_unavailable())
                elif snapshot.revision < waiter.min_revision:
                    # A round that began after the call asked found no such revision (or no database).
                    waiter.deliver(
                        database_unavailable() if failed else revision_not_reached(snapshot, waiter.min_revision)
                    )
                else:
                    waiter.deliver(snapshot)  # own write not applied, database away: the last snapshot

    # -- applying

    def catch_up(self) -> Snapshot:
        """Bring the snapshot to the source's latest position (in full when needed); raises on failure."""
        with self._apply_lock:
            self._round += 1
            round_number = self._round
            failed = True
            try:
                snapshot = self._advance()
                self._snapshot = snapshot
                self.statistics.caught_up_at = time.monotonic()
                self._failing_since = None
                failed = False
                return snapshot
            except Exception:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                raise
            finally:
                self._settle_waiters(round_number, failed)

    def _advance(self) -> Snapshot:
        current = self._snapshot
        if current is not None and not self._full_load_needed:
            batch = self._source.changes_since(current.sequence)
            if batch is not None and batch.sequence == current.sequence:
                return current
            if batch is not None:
                started = time.perf_counter()
                try:
                    snapshot = apply_changes(current, batch, self._deployment_keys, self._keyring)
                except Exception:
                    # A fault in applying (pure code, no database): never retry the same batch forever.
                    log.exception("applying a change failed; loading in full instead")
                else:
                    if self._tokens is not None and batch.tokens:
                        self._tokens.apply(batch.tokens)
                    self.statistics.applied_batches += 1
                    self.statistics.apply_seconds += time.perf_counter() - started
                    return snapshot
            else:
                log.info("the change log no longer reaches this replica's position: loading in full")
        self._full_load_needed = False
        started = time.perf_counter()
        with _collector_paused():
            try:
                state = self._source.load_all()
            except Exception:
                self._full_load_needed = True
                raise
            snapshot = build_snapshot(state, self._deployment_keys, self._keyring)
        if self._tokens is not None:
            self._tokens.replace_all(state.tokens)
        self.statistics.full_loads += 1
        self.statistics.full_load_seconds += time.perf_counter() - started
        return snapshot

    # -- the applier thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modelroute-snapshot-applier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        retry = 0.0
        next_prune = time.monotonic() + self.PRUNE_SECONDS
        while not self._stop.is_set():
            self._wake.wait(retry or self.POLL_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.catch_up()
                retry = 0.0
            except Exception as exc:
                # Rate-limited by the backoff itself: one line per attempt, at most every few seconds.
                log.warning("snapshot catch-up failed (%s); answering from the last snapshot", type(exc).__name__)
                retry = min(max(retry * 2, 0.25), self.MAX_RETRY_SECONDS)
                continue
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.PRUNE_SECONDS
                try:
                    self._source.prune_log(self._log_retention)
                except Exception as exc:
                    log.warning("change log pruning failed: %s", type(exc).__name__)

    def load_before_serving(self, stopping: threading.Event | None = None) -> Snapshot:
        """The first full load, retried with backoff (and logged) until it succeeds or `stopping` is set."""
        delay = 0.5
        while True:
            try:
                return self.catch_up()
            except Exception as exc:
                log.warning("cannot load the configuration yet (%s); retrying in %.1f s", type(exc).__name__, delay)
                if stopping is not None and stopping.wait(delay):
                    raise
                if stopping is None:
                    time.sleep(delay)
                delay = min(delay * 2, self.MAX_RETRY_SECONDS)
