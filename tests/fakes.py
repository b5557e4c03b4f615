"""An in-memory unit of work with the contract of the PostgreSQL one, for fast table tests of use cases.

Each unit of work works on a copy of the store's state and puts it back on commit, so an exception or
a missing commit changes nothing, as a rolled-back transaction does.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from modelroute_server.domain.access import AccessToken
from modelroute_server.domain.audit import AuditEntry, AuditEvent, AuditFilter, Caller
from modelroute_server.domain.families import Family
from modelroute_server.domain.health import AttachmentHealth, KeyMark
from modelroute_server.domain.models import ModelConfig, next_default
from modelroute_server.domain.providers import ProviderConfig, StoredKey


@dataclass
class State:
    sequence: int = 0
    revision: int = 0
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    user_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    user_key_revisions: dict[tuple[str, str], int] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    health: dict[tuple[str, str], AttachmentHealth] = field(default_factory=dict)
    marks: dict[tuple[str, str], KeyMark] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    clock: int = 0  # every write happens one second after the last


class FakeStore:
    """What the database holds, shared by every unit of work made from it."""

    def __init__(self) -> None:
        self.state = State()

    def __call__(self, read_only: bool = False) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeUnitOfWork:
    def __init__(self, store: FakeStore) -> None:
        self._store = store

    def __enter__(self) -> FakeUnitOfWork:
        self._state = copy.deepcopy(self._store.state)
        self._taken: int | None = None
        self._state.clock += 1
        self.changes = _Changes(self)
        self.providers = _Providers(self)
        self.models = _Models(self)
        self.user_keys = _UserKeys(self)
        self.access_tokens = _Tokens(self)
        self.audit = _Audit(self)
        self.health = _Health(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass  # not committed: the copy is dropped

    def commit(self) -> None:
        self._store.state = self._state

    @property
    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self._state.clock)

    def changed(self, moves_revision: bool = True) -> int:
        """What the triggers do in PostgreSQL: one sequence number per transaction."""
        if self._taken is None:
            self._state.sequence += 1
            self._taken = self._state.sequence
        if moves_revision:
            self._state.revision = self._taken
        return self._taken


class _Changes:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def current_revision(self) -> int:
        return self._uow._state.revision

    def take_revision(self) -> int:
        return self._uow.changed()

    def sequence_taken(self) -> int | None:
        return self._uow._taken


class _Providers:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[str, ProviderConfig]:
        return self._uow._state.providers

    def get(self, provider_config_id: str) -> ProviderConfig | None:
        return self._rows.get(provider_config_id)

    def get_many(self, provider_config_ids: Iterable[str]) -> dict[str, ProviderConfig]:
        return {i: self._rows[i] for i in set(provider_config_ids) if i in self._rows}

    def list(
        self,
        *,
        family: Family | None = None,
        enabled: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ProviderConfig]:
        rows = [
            p
            for _, p in sorted(self._rows.items())
            if (family is None or p.family is family)
            and (enabled is None or p.enabled == enabled)
            and (after_id is None or p.id > after_id)
        ]
        return rows[:limit] if limit is not None else rows

    def add(self, config: ProviderConfig, revision: int) -> None:
        now = self._uow.now
        self._rows[config.id] = replace(config, revision=revision, create_time=now, update_time=now)
        self._uow.changed()

    def update(self, config: ProviderConfig, revision: int, *, key_changed: bool) -> None:
        current = self._rows[config.id]
        api_key = config.api_key if key_changed else current.api_key
        self._rows[config.id] = replace(config, api_key=api_key, revision=revision, update_time=self._uow.now)
        self._uow.changed()

    def delete(self, provider_config_id: str) -> None:
        self._rows.pop(provider_config_id, None)
        self._uow.changed()


class _Models:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[str, ModelConfig]:
        return self._uow._state.models

    def get(self, model_config_id: str) -> ModelConfig | None:
        return self._rows.get(model_config_id)

    def list(
        self,
        *,
        show_deleted: bool = False,
        family: Family | None = None,
        enabled: bool | None = None,
        is_default: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ModelConfig]:
        rows = [
            m
            for _, m in sorted(self._rows.items())
            if (show_deleted or m.live)
            and (family is None or m.family is family)
            and (enabled is None or m.enabled == enabled)
            and (is_default is None or m.is_default == is_default)
            and (after_id is None or m.id > after_id)
        ]
        return rows[:limit] if limit is not None else rows

    def attached_to(self, provider_config_id: str) -> builtins.list[ModelConfig]:
        return [m for _, m in sorted(self._rows.items()) if provider_config_id in m.attachments]

    def default(self) -> ModelConfig | None:
        return next((m for m in self._rows.values() if m.is_default and m.live), None)

    def promotion_candidate(self, excluding: Collection[str]) -> ModelConfig | None:
        return next_default(self._rows.values(), excluding)

    def add(self, model: ModelConfig, revision: int) -> None:
        now = self._uow.now
        self._put(replace(model, revision=revision, create_time=now, update_time=now))

    def update(self, model: ModelConfig, revision: int, *, attachments_changed: bool) -> None:
        attachments = model.attachments if attachments_changed else self._rows[model.id].attachments
        self._put(replace(model, attachments=attachments, revision=revision, update_time=self._uow.now))

    def set_default_flag(self, model_config_id: str, is_default: bool, revision: int) -> None:
        current = self._rows[model_config_id]
        self._put(replace(current, is_default=is_default, revision=revision, update_time=self._uow.now))

    def overrides_accepted(self) -> bool:
        return True

    def _put(self, model: ModelConfig) -> None:
        # The database's partial unique index: at most one live default, at every statement.
        others = [m.id for m in self._rows.values() if m.is_default and m.live and m.id != model.id]
        if model.is_default and model.live and others:
            raise AssertionError(f"a second live default: {model.id} besides {others}")
        self._rows[model.id] = model
        self._uow.changed()


class _UserKeys:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[tuple[str, str], str]:
        return self._uow._state.user_keys

    def for_user(self, user: str) -> dict[str, StoredKey]:
        return {p: StoredKey(secret) for (u, p), secret in self._rows.items() if u == user}

    def get(self, user: str, provider_config_id: str) -> StoredKey | None:
        secret = self._rows.get((user, provider_config_id))
        return StoredKey(secret) if secret is not None else None

    def exists(self, user: str, provider_config_id: str) -> bool:
        return (user, provider_config_id) in self._rows

    def with_revision(self, user: str, provider_config_id: str) -> tuple[StoredKey, int] | None:
        secret = self._rows.get((user, provider_config_id))
        if secret is None:
            return None
        return StoredKey(secret), self._uow._state.user_key_revisions.get((user, provider_config_id), 0)

    def put(self, user: str, provider_config_id: str, api_key: str, revision: int) -> None:
        self._rows[(user, provider_config_id)] = api_key
        self._uow._state.user_key_revisions[(user, provider_config_id)] = revision
        self._uow.changed()

    def delete(self, user: str, provider_config_id: str) -> bool:
        found = self._rows.pop((user, provider_config_id), None) is not None
        if found:
            self._uow.changed()
        return found

    def delete_for_provider(self, provider_config_id: str) -> int:
        gone = [pair for pair in self._rows if pair[1] == provider_config_id]
        for pair in gone:
            del self._rows[pair]
        if gone:
            self._uow.changed()
        return len(gone)


class _Tokens:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[str, AccessToken]:
        return self._uow._state.tokens

    def get(self, access_token_id: str) -> AccessToken | None:
        return self._rows.get(access_token_id)

    def list(self, *, after_id: str | None = None, limit: int | None = None) -> builtins.list[AccessToken]:
        rows = [t for _, t in sorted(self._rows.items()) if after_id is None or t.id > after_id]
        return rows[:limit] if limit is not None else rows

    def add(self, token: AccessToken) -> None:
        self._rows[token.id] = token
        self._uow.changed(moves_revision=False)

    def set_hash(self, access_token_id: str, token_hash: bytes) -> None:
        self._rows[access_token_id] = replace(self._rows[access_token_id], token_hash=token_hash)
        self._uow.changed(moves_revision=False)

    def revoke(self, access_token_id: str) -> None:
        token = self._rows[access_token_id]
        if token.revoke_time is None:
            self._rows[access_token_id] = replace(token, revoke_time=self._uow.now)
            self._uow.changed(moves_revision=False)


class _Audit:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def add(self, caller: Caller, entry: AuditEntry, revision: int | None) -> None:
        events = self._uow._state.audit
        events.append(
            AuditEvent(
                len(events) + 1,
                self._uow.now,
                caller.actor,
                caller.method,
                entry.resource,
                revision,
                entry.changes,
                entry.user,
            )
        )

    def list(
        self, query: AuditFilter, *, before_id: int | None = None, limit: int | None = None
    ) -> builtins.list[AuditEvent]:
        rows = [
            e
            for e in reversed(self._uow._state.audit)
            if (query.resource is None or e.resource == query.resource)
            and (query.actor is None or e.actor == query.actor)
            and (query.method is None or e.method == query.method)
            and (before_id is None or e.id < before_id)
        ]
        return rows[:limit] if limit is not None else rows

    def prune(self, before: datetime) -> int:
        events = self._uow._state.audit
        kept = [e for e in events if e.event_time >= before]
        self._uow._state.audit = kept
        return len(events) - len(kept)


class _Health:
    """Provider health rows and key marks; as the row triggers do, only a cooldown that moves, or a mark,
    takes a sequence number (without moving the revision)."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[tuple[str, str], AttachmentHealth]:
        return self._uow._state.health

    @property
    def _marks(self) -> dict[tuple[str, str], KeyMark]:
        return self._uow._state.marks

    def locked(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], AttachmentHealth]:
        return {k: self._rows[k] for k in keys if k in self._rows}

    def save(
        self, states: Mapping[tuple[str, str], AttachmentHealth], stored: Collection[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        for key, state in states.items():
            if key[0] not in self._uow._state.providers:
                continue
            before = self._rows.get(key)
            if state.healthy:
                self._rows.pop(key, None)
            else:
                self._rows[key] = state
            if (before.cooldown_until if before else None) != state.cooldown_until:
                self._uow.changed(moves_revision=False)
        return set()

    def of_providers(
        self, provider_config_ids: Iterable[str]
    ) -> dict[str, builtins.list[tuple[str, AttachmentHealth]]]:
        wanted = set(provider_config_ids)
        found: dict[str, list[tuple[str, AttachmentHealth]]] = {}
        for (pid, model), state in sorted(self._rows.items()):
            if pid in wanted:
                found.setdefault(pid, []).append((model, state))
        return found

    def reset(self, provider_config_id: str) -> bool:
        gone = [k for k in self._rows if k[0] == provider_config_id]
        for key in gone:
            del self._rows[key]
        mark = self._marks.pop((provider_config_id, ""), None)
        if gone or mark:
            self._uow.changed(moves_revision=False)
        return bool(gone or mark)

    def marks(self, provider_config_ids: Iterable[str], user: str = "") -> dict[str, KeyMark]:
        return {pid: self._marks[(pid, user)] for pid in provider_config_ids if (pid, user) in self._marks}

    def user_marks(self, user: str) -> dict[str, KeyMark]:
        return {pid: mark for (pid, u), mark in self._marks.items() if u == user}

    def put_mark(self, provider_config_id: str, user: str, mark: KeyMark) -> None:
        self._marks[(provider_config_id, user)] = mark
        self._uow.changed(moves_revision=False)

    def delete_mark(self, provider_config_id: str, user: str) -> bool:
        found = self._marks.pop((provider_config_id, user), None) is not None
        if found:
            self._uow.changed(moves_revision=False)
        return found
