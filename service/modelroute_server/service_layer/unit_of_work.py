"""The unit of work the use cases need, as a port they own: PostgreSQL implements it in
`adapters.repositories`, and an in-memory fake in the tests, so rules such as the default model get
fast table tests without a database.

A unit of work is one transaction. Nothing is written unless `commit` is called; leaving the block
without it rolls back. A database that cannot be reached raises `DomainError(DATABASE_UNAVAILABLE)`.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Protocol

from ..domain.access import AccessToken
from ..domain.audit import AuditEntry, AuditEvent, AuditFilter, Caller
from ..domain.families import Family
from ..domain.health import AttachmentHealth, KeyMark
from ..domain.models import ModelConfig
from ..domain.providers import ProviderConfig, StoredKey


class ChangeSequencePort(Protocol):
    def current_revision(self) -> int: ...

    def take_revision(self) -> int:
        """The next change sequence number, as the config revision this transaction produces."""
        ...

    def sequence_taken(self) -> int | None:
        """The sequence this transaction holds, if it changed anything replicas read."""
        ...


class ProviderConfigs(Protocol):
    def get(self, provider_config_id: str) -> ProviderConfig | None: ...

    def get_many(self, provider_config_ids: Iterable[str]) -> dict[str, ProviderConfig]: ...

    def list(
        self,
        *,
        family: Family | None = None,
        enabled: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ProviderConfig]: ...

    def add(self, config: ProviderConfig, revision: int) -> None: ...

    def update(self, config: ProviderConfig, revision: int, *, key_changed: bool) -> None: ...

    def delete(self, provider_config_id: str) -> None: ...


class ModelConfigs(Protocol):
    def get(self, model_config_id: str) -> ModelConfig | None: ...

    def list(
        self,
        *,
        show_deleted: bool = False,
        family: Family | None = None,
        enabled: bool | None = None,
        is_default: bool | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[ModelConfig]: ...

    def attached_to(self, provider_config_id: str) -> builtins.list[ModelConfig]: ...

    def default(self) -> ModelConfig | None: ...

    def promotion_candidate(self, excluding: Collection[str]) -> ModelConfig | None:
        """The enabled live model, not among `excluding`, that comes first in the promotion order."""
        ...

    def add(self, model: ModelConfig, revision: int) -> None: ...

    def update(self, model: ModelConfig, revision: int, *, attachments_changed: bool) -> None: ...

    def set_default_flag(self, model_config_id: str, is_default: bool, revision: int) -> None: ...

    def overrides_accepted(self) -> bool:
        """Whether the schema takes upstream model name overrides (no build that ignores them serves it)."""
        ...


class UserKeys(Protocol):
    def for_user(self, user: str) -> dict[str, StoredKey]: ...

    def get(self, user: str, provider_config_id: str) -> StoredKey | None: ...

    def exists(self, user: str, provider_config_id: str) -> bool: ...

    def with_revision(self, user: str, provider_config_id: str) -> tuple[StoredKey, int] | None:
        """The key and the config revision of its last change (0 when unknown)."""
        ...

    def put(self, user: str, provider_config_id: str, api_key: str, revision: int) -> None: ...

    def delete(self, user: str, provider_config_id: str) -> bool: ...

    def delete_for_provider(self, provider_config_id: str) -> int: ...


class AccessTokens(Protocol):
    def get(self, access_token_id: str) -> AccessToken | None: ...

    def list(self, *, after_id: str | None = None, limit: int | None = None) -> builtins.list[AccessToken]: ...

    def add(self, token: AccessToken) -> None: ...

    def set_hash(self, access_token_id: str, token_hash: bytes) -> None: ...

    def revoke(self, access_token_id: str) -> None: ...


class AuditEvents(Protocol):
    def add(self, caller: Caller, entry: AuditEntry, revision: int | None) -> None: ...

    def list(
        self, query: AuditFilter, *, before_id: int | None = None, limit: int | None = None
    ) -> builtins.list[AuditEvent]: ...

    def prune(self, before: datetime) -> int: ...


HealthKey = tuple[str, str]  # (provider config id, upstream model)


class ProviderHealthStore(Protocol):
    def locked(self, keys: Iterable[HealthKey]) -> dict[HealthKey, AttachmentHealth]:
        """The stored state of the keys that have one, locked until commit; the others are healthy."""
        ...

    def save(self, states: Mapping[HealthKey, AttachmentHealth], stored: Collection[HealthKey]) -> set[HealthKey]:
        """Writes the states (`stored`: the keys that had a row); returns the keys another writer created
        meanwhile, whose state must be decided again."""
        ...

    def of_providers(
        self, provider_config_ids: Iterable[str]
    ) -> dict[str, builtins.list[tuple[str, AttachmentHealth]]]: ...

    def reset(self, provider_config_id: str) -> bool: ...

    def marks(self, provider_config_ids: Iterable[str], user: str = "") -> dict[str, KeyMark]: ...

    def user_marks(self, user: str) -> dict[str, KeyMark]: ...

    def put_mark(self, provider_config_id: str, user: str, mark: KeyMark) -> None: ...

    def delete_mark(self, provider_config_id: str, user: str) -> bool: ...


class UnitOfWork(Protocol):
    @property
    def changes(self) -> ChangeSequencePort: ...

    @property
    def providers(self) -> ProviderConfigs: ...

    @property
    def models(self) -> ModelConfigs: ...

    @property
    def user_keys(self) -> UserKeys: ...

    @property
    def access_tokens(self) -> AccessTokens: ...

    @property
    def audit(self) -> AuditEvents: ...

    @property
    def health(self) -> ProviderHealthStore: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None: ...

    def commit(self) -> None: ...

    @property
    def now(self) -> datetime: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, read_only: bool = False) -> UnitOfWork: ...
