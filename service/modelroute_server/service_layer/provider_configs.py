"""Provider config use cases (docs/behaviour.md, "Provider families" and "Provider configs")."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..domain import rules
from ..domain.audit import AuditEntry, Caller, FieldChange, diff, provider_record, provider_secret, secret_change
from ..domain.errors import (
    DomainError,
    FieldViolation,
    PreconditionViolation,
    Reason,
    ViolationCollector,
)
from ..domain.families import FAMILY_NAMES, Family
from ..domain.health import NO_OVERRIDE, health_policy_problems
from ..domain.models import model_config_name
from ..domain.providers import (
    CredentialPolicy,
    ProviderConfig,
    StoredKey,
    validate_provider_config,
)
from .audit import default_move
from .context import ServiceContext
from .default_model import DefaultChange, settle_default
from .health import health_views
from .inputs import ProviderConfigInput
from .paging import page_size
from .resources import check_etag, provider_not_found, provider_resource
from .views import ProviderConfigView, provider_view

PREFIX = "provider_config."


@dataclass(frozen=True)
class ProviderListFilter:
    family: Family | None = None
    enabled: bool | None = None

    @property
    def canonical(self) -> str:
        return f"family={self.family.value if self.family else ''};enabled={self.enabled}"


@dataclass(frozen=True)
class ProviderConfigPage:
    items: list[ProviderConfigView]
    next_page_token: str


@dataclass(frozen=True)
class ProviderDeletion:
    touched_model_ids: list[str]
    deleted_model_ids: list[str]
    default_change: DefaultChange
    revision: int


def _check_new_key(api_key: str) -> None:
    problem = rules.api_key_problem(api_key)
    if problem:
        collector = ViolationCollector()
        collector.add(f"{PREFIX}api_key", problem)
        collector.raise_if_any()


def _changes(before: ProviderConfig | None, after: ProviderConfig | None) -> tuple[FieldChange, ...]:
    return diff(provider_record(before) if before else None, provider_record(after) if after else None) + secret_change(
        "api_key", provider_secret(before), provider_secret(after)
    )


def create_provider_config(
    ctx: ServiceContext, caller: Caller, provider_config_id: str, request: ProviderConfigInput
) -> ProviderConfigView:
    violations = ViolationCollector()
    id_problem = rules.slug_problem(provider_config_id)
    if id_problem:
        violations.add("provider_config_id", id_problem)
    if request.family is None:
        violations.add(f"{PREFIX}family", f"must be one of {', '.join(FAMILY_NAMES)}")
    if request.api_key:
        key_problem = rules.api_key_problem(request.api_key)
        if key_problem:
            violations.add(f"{PREFIX}api_key", key_problem)
    health_policy = request.health_policy or NO_OVERRIDE
    violations.violations += health_policy_problems(
        health_policy, ctx.health_policy, f"{PREFIX}health_policy"
    ).violations
    violations.raise_if_any()
    assert request.family is not None
    config = ProviderConfig(
        id=provider_config_id,
        family=request.family,
        display_name=request.display_name or request.family.default_display_name,
        base_url=request.base_url or None,
        enabled=True if request.enabled is None else request.enabled,
        policy=CredentialPolicy(
            True if request.central_api_key_enabled is None else request.central_api_key_enabled,
            bool(request.allow_user_api_key),
            bool(request.allow_central_api_key_fallback),
        ),
        api_key=StoredKey(request.api_key) if request.api_key else None,
        health_policy=health_policy,
    )
    validate_provider_config(config, ctx.deployment_keys, PREFIX)
    with ctx.write(caller) as write:
        uow = write.uow
        if uow.providers.get(provider_config_id) is not None:
            raise DomainError(
                Reason.PROVIDER_CONFIG_ALREADY_EXISTS,
                f"{config.name} already exists",
                resource=provider_resource(config.id),
            )
        uow.providers.add(config, write.config_revision)
        stored = uow.providers.get(provider_config_id)
        write.record(AuditEntry(config.name, _changes(None, config)))
    assert stored is not None
    return provider_view(stored, ctx.deployment_keys)


def get_provider_config(ctx: ServiceContext, provider_config_id: str) -> ProviderConfigView:
    with ctx.read() as uow:
        config = uow.providers.get(provider_config_id)
        if config is None:
            raise provider_not_found(provider_config_id)
        health = health_views(ctx, uow, [config])[config.id]
    return provider_view(config, ctx.deployment_keys, health)


def list_provider_configs(
    ctx: ServiceContext, list_filter: ProviderListFilter, requested_page_size: int, page_token: str
) -> ProviderConfigPage:
    size = page_size(requested_page_size)
    after = ctx.page_tokens.decode(page_token, "providerConfigs?" + list_filter.canonical)
    with ctx.read() as uow:
        configs = uow.providers.list(
            family=list_filter.family, enabled=list_filter.enabled, after_id=after, limit=size + 1
        )
        page, next_token = ctx.page_tokens.cut(configs, size, "providerConfigs?" + list_filter.canonical)
        health = health_views(ctx, uow, page)
    return ProviderConfigPage([provider_view(c, ctx.deployment_keys, health[c.id]) for c in page], next_token)


def update_provider_config(
    ctx: ServiceContext, caller: Caller, provider_config_id: str, request: ProviderConfigInput
) -> ProviderConfigView:
    paths = request.paths
    if not paths:
        # Nothing to change: answer like a read (still honouring the etag); no revision is taken.
        view = get_provider_config(ctx, provider_config_id)
        check_etag(request.etag, view.config.revision, provider_resource(provider_config_id))
        return view
    if "api_key" in paths and request.api_key:
        _check_new_key(request.api_key)
    if "health_policy" in paths:
        health_policy_problems(
            request.health_policy or NO_OVERRIDE, ctx.health_policy, f"{PREFIX}health_policy"
        ).raise_if_any()
    with ctx.write(caller) as write:
        uow = write.uow
        current = uow.providers.get(provider_config_id)
        if current is None:
            raise provider_not_found(provider_config_id)
        check_etag(request.etag, current.revision, provider_resource(current.id))
        if "family" in paths and request.family is not current.family:
            raise DomainError(
                Reason.FAMILY_IMMUTABLE,
                f"{PREFIX}family: the family of a provider config cannot change "
                f"(it is {current.family.value}); create a new provider config instead",
                field_violations=[FieldViolation(f"{PREFIX}family", "is immutable")],
            )
        updated = _apply(current, request)
        touches_credentials = any(p == "api_key" or p.startswith("credential_policy.") for p in paths)
        validate_provider_config(updated, ctx.deployment_keys, PREFIX, check_central_key=touches_credentials)
        changes = _changes(current, updated)
        if not changes:
            # The same values (the same key included, compared here): no revision, no event, no write.
            return provider_view(current, ctx.deployment_keys, health_views(ctx, uow, [current])[current.id])
        key_changed = any(c.field == "api_key" for c in changes)
        uow.providers.update(updated, write.config_revision, key_changed=key_changed)
        if key_changed:
            uow.health.delete_mark(provider_config_id, "")  # the mark was about the key replaced
        stored = uow.providers.get(provider_config_id)
        assert stored is not None
        health = health_views(ctx, uow, [stored])[stored.id]
        write.record(AuditEntry(current.name, changes))
    return provider_view(stored, ctx.deployment_keys, health)


def _apply(current: ProviderConfig, request: ProviderConfigInput) -> ProviderConfig:
    paths = request.paths
    changes: dict[str, object] = {}
    if "display_name" in paths:
        # Named but empty: back to the default, as on create (AIP-134); white space alone is still rejected.
        changes["display_name"] = request.display_name or current.family.default_display_name
    if "base_url" in paths:
        changes["base_url"] = request.base_url or None
    if "enabled" in paths:
        changes["enabled"] = True if request.enabled is None else request.enabled
    policy = current.policy
    if "credential_policy.central_api_key_enabled" in paths:
        policy = replace(policy, central_api_key_enabled=request.central_api_key_enabled is not False)
    if "credential_policy.allow_user_api_key" in paths:
        policy = replace(policy, allow_user_api_key=bool(request.allow_user_api_key))
    if "credential_policy.allow_central_api_key_fallback" in paths:
        policy = replace(policy, allow_central_api_key_fallback=bool(request.allow_central_api_key_fallback))
    changes["policy"] = policy
    if "api_key" in paths:
        changes["api_key"] = StoredKey(request.api_key) if request.api_key else None
    if "health_policy" in paths:
        changes["health_policy"] = request.health_policy or NO_OVERRIDE
    return replace(current, **changes)  # type: ignore[arg-type]


def delete_provider_config(
    ctx: ServiceContext, caller: Caller, provider_config_id: str, etag: str, force: bool
) -> ProviderDeletion:
    with ctx.write(caller) as write:
        uow, revision = write.uow, write.config_revision
        current = uow.providers.get(provider_config_id)
        if current is None:
            raise provider_not_found(provider_config_id)
        check_etag(etag, current.revision, provider_resource(current.id))
        attached = uow.models.attached_to(provider_config_id)
        if attached and not force:
            # Soft-deleted models count too: an undelete must find its list intact.
            listed = [m.name + (" (deleted)" if m.deleted else "") for m in attached]
            raise DomainError(
                Reason.PROVIDER_CONFIG_IN_USE,
                f"{current.name} is attached to {len(attached)} model(s): "
                + ", ".join(listed)
                + "; detach it first or delete with force",
                precondition_violations=[
                    PreconditionViolation(
                        "ATTACHED", m.name, f"{'deleted model ' if m.deleted else ''}{m.name} lists {current.name}"
                    )
                    for m in attached
                ],
            )
        default = uow.models.default()
        before = default.id if default is not None else None
        emptied = []
        for model in attached:
            # The same list replacement an update does: the rest keep their order (and overrides), renumbered.
            model = model.without_provider(provider_config_id)
            if model.live and not model.attachments:
                # A model left with no attachment cannot serve: soft-delete it.
                model = replace(model, delete_time=uow.now, is_default=False)
                emptied.append(model.id)
            uow.models.update(model, revision, attachments_changed=True)
        change = settle_default(uow, revision, before, leaving=emptied)
        user_keys_deleted = uow.user_keys.delete_for_provider(provider_config_id)
        uow.providers.delete(provider_config_id)
        cascade = diff(
            None,
            {
                "touched_model_configs": [m.name for m in attached] or None,
                "deleted_model_configs": [model_config_name(i) for i in emptied] or None,
                "user_keys_deleted": user_keys_deleted or None,
            },
        )
        write.record(AuditEntry(current.name, _changes(current, None) + cascade + default_move(change)))
    return ProviderDeletion([m.id for m in attached], emptied, change, revision)
