"""User keys: one per (user, provider config), encrypted like central keys (docs/behaviour.md, "User keys")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..domain import rules
from ..domain.audit import SECRET_SET, AuditEntry, Caller, comparable_secret, secret_change
from ..domain.errors import DomainError, Reason, ViolationCollector
from ..domain.families import Family
from ..domain.health import mark_applies
from ..domain.providers import ProviderConfig, provider_config_name
from ..domain.resolver import provider_outcome
from .context import ServiceContext
from .paging import page_size
from .resources import provider_not_found, provider_resource


@dataclass(frozen=True)
class UserProviderView:
    provider: ProviderConfig
    has_user_api_key: bool
    central_fallback_available: bool
    # Since when the provider has been refusing the user's current key (an attempt report).
    key_rejected_time: datetime | None = None

    @property
    def user_api_key_required(self) -> bool:
        return not self.central_fallback_available


def check_user(user: str, field_path: str = "user") -> None:
    problem = rules.user_id_problem(user)
    if problem:
        collector = ViolationCollector()
        collector.add(field_path, problem)
        collector.raise_if_any()


def _user_view(
    provider: ProviderConfig,
    has_key: bool,
    deployment_keys: Mapping[Family, str],
    key_rejected_time: datetime | None = None,
) -> UserProviderView:
    # The resolver decides whether the central credential serves a user without a key.
    fallback = provider_outcome(provider, None, deployment_keys).usable
    return UserProviderView(provider, has_key, fallback, key_rejected_time)


def _key_entry(provider: str, user: str, before: str | None, after: str | None) -> AuditEntry:
    return AuditEntry(provider, secret_change("api_key", before, after), user=user)


def set_user_provider_key(
    ctx: ServiceContext, caller: Caller, user: str, provider_config_id: str, api_key: str
) -> UserProviderView:
    collector = ViolationCollector()
    user_problem = rules.user_id_problem(user)
    if user_problem:
        collector.add("user", user_problem)
    key_problem = rules.api_key_problem(api_key)
    if key_problem:
        collector.add("api_key", key_problem)
    collector.raise_if_any()
    with ctx.write(caller) as write:
        uow = write.uow
        provider = uow.providers.get(provider_config_id)
        if provider is None:
            raise provider_not_found(provider_config_id)
        if not provider.enabled:
            raise DomainError(
                Reason.PROVIDER_CONFIG_DISABLED,
                f"{provider.name} is disabled; it takes no user keys",
                resource=provider_resource(provider.id),
            )
        if not provider.policy.allow_user_api_key:
            raise DomainError(
                Reason.USER_KEYS_NOT_ALLOWED,
                f"{provider.name} does not allow user keys (its credential policy)",
                resource=provider_resource(provider.id),
            )
        before = comparable_secret(uow.user_keys.get(user, provider_config_id))
        if before != api_key:  # the same key again changes nothing (compared here, never logged)
            uow.user_keys.put(user, provider_config_id, api_key, write.config_revision)
            # A new key clears a rejected one's mark (resolution would not match it anyway).
            uow.health.delete_mark(provider_config_id, user)
            write.record(_key_entry(provider.name, user, before, api_key))
    return _user_view(provider, True, ctx.deployment_keys)


def delete_user_provider_key(ctx: ServiceContext, caller: Caller, user: str, provider_config_id: str) -> None:
    check_user(user)
    # Idempotent: deleting a key that is not there (or of a provider that is gone) succeeds, and
    # takes no revision, so a retried delete does not make every replica reload.
    with ctx.read() as uow:
        if not uow.user_keys.exists(user, provider_config_id):
            return
    with ctx.write(caller) as write:
        if write.uow.user_keys.delete(user, provider_config_id):
            write.uow.health.delete_mark(provider_config_id, user)
            # Whatever the key was, it is now cleared: no need to decrypt it to say so.
            write.record(_key_entry(provider_config_name(provider_config_id), user, SECRET_SET, None))


@dataclass(frozen=True)
class UserProviderPage:
    items: list[UserProviderView]
    next_page_token: str


def list_user_provider_configs(
    ctx: ServiceContext, user: str, requested_page_size: int = 0, page_token: str = ""
) -> UserProviderPage:
    check_user(user)
    size = page_size(requested_page_size)
    query = f"userProviderConfigs?user={user}"
    after = ctx.page_tokens.decode(page_token, query)
    with ctx.read() as uow:
        providers = [p for p in uow.providers.list(enabled=True, after_id=after) if p.policy.allow_user_api_key]
        keys = uow.user_keys.for_user(user)
        marks = uow.health.user_marks(user)
    page, next_token = ctx.page_tokens.cut(providers, size, query)
    views = []
    for p in page:
        key, mark = keys.get(p.id), marks.get(p.id)
        secret = key.secret if key is not None else None
        rejected = mark.rejected_time if mark is not None and mark_applies(mark, secret, ctx.keyring) else None
        views.append(_user_view(p, key is not None and key.present, ctx.deployment_keys, rejected))
    return UserProviderPage(views, next_token)
