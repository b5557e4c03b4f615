"""Model config use cases: ordered attachments, the default model, soft delete (docs/behaviour.md, "Model configs")."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..domain import rules
from ..domain.audit import AuditEntry, Caller, diff, model_record
from ..domain.errors import (
    DomainError,
    FieldViolation,
    PreconditionViolation,
    Reason,
    ViolationCollector,
)
from ..domain.families import FAMILY_NAMES, Family
from ..domain.models import (
    DEFAULT_COMPRESSION_THRESHOLD,
    MAX_ATTACHMENTS,
    Attachment,
    CallOptions,
    ModelConfig,
    auto_attachments,
    validate_attachments,
    validate_model_fields,
)
from .audit import default_move
from .context import ServiceContext, Write
from .default_model import UNCHANGED, DefaultChange, settle_default
from .inputs import ModelConfigInput
from .paging import page_size
from .resources import check_etag, model_not_found, model_resource
from .unit_of_work import UnitOfWork
from .views import ModelConfigView, model_view

PREFIX = "model_config."
ATTACHMENTS_FIELD = f"{PREFIX}attachments"


@dataclass(frozen=True)
class ModelListFilter:
    family: Family | None = None
    enabled: bool | None = None
    is_default: bool | None = None
    show_deleted: bool = False

    @property
    def canonical(self) -> str:
        family = self.family.value if self.family else ""
        return f"family={family};enabled={self.enabled};is_default={self.is_default};deleted={self.show_deleted}"


@dataclass(frozen=True)
class ModelConfigPage:
    items: list[ModelConfigView]
    next_page_token: str


def _view(
    ctx: ServiceContext, uow: UnitOfWork, model: ModelConfig, change: DefaultChange = UNCHANGED
) -> ModelConfigView:
    providers = uow.providers.get_many(model.attachments)
    return model_view(model, providers, ctx.deployment_keys, change)


def _reload(uow: UnitOfWork, model_config_id: str) -> ModelConfig:
    model = uow.models.get(model_config_id)
    assert model is not None
    return model


def _finish(
    ctx: ServiceContext, write: Write, before: ModelConfig | None, model_config_id: str, change: DefaultChange
) -> ModelConfigView:
    """The written model's view; records what the call changed (nothing: the write is rolled back)."""
    after = _reload(write.uow, model_config_id)
    changes = diff(model_record(before) if before else None, model_record(after)) + default_move(change)
    if not changes:
        assert before is not None
        return _view(ctx, write.uow, before, change)  # as it was: the write is rolled back
    write.record(AuditEntry(after.name, changes))
    return _view(ctx, write.uow, after, change)


def create_model_config(
    ctx: ServiceContext, caller: Caller, model_config_id: str, request: ModelConfigInput
) -> ModelConfigView:
    violations = ViolationCollector()
    id_problem = rules.slug_problem(model_config_id)
    if id_problem:
        violations.add("model_config_id", id_problem)
    if request.family is None:
        violations.add(f"{PREFIX}family", f"must be one of {', '.join(FAMILY_NAMES)}")
    violations.raise_if_any()
    assert request.family is not None
    model = ModelConfig(
        id=model_config_id,
        family=request.family,
        model=request.model.strip(),
        display_name=request.display_name or request.model.strip() or model_config_id,
        context_limit=request.context_limit,
        attachments=(),
        enabled=True if request.enabled is None else request.enabled,
        is_default=bool(request.is_default),
        compression_threshold=(
            DEFAULT_COMPRESSION_THRESHOLD if request.compression_threshold is None else request.compression_threshold
        ),
        options=request.options,
    ).with_attachments(request.attachments)
    validate_model_fields(model, PREFIX)
    if model.is_default and not model.enabled:
        raise _disabled_default(model)
    with ctx.write(caller) as write:
        uow, revision = write.uow, write.config_revision
        if uow.models.get(model_config_id) is not None:
            raise DomainError(
                Reason.MODEL_CONFIG_ALREADY_EXISTS,
                f"{model.name} already exists (deleted models keep their id reserved)",
                resource=model_resource(model.id),
            )
        if model.attachments:
            providers = uow.providers.get_many(model.attachments)
            validate_attachments(model.family, model.attachment_entries, providers, request.attachments_field)
            _check_overrides_accepted(uow, model)
        else:
            model = replace(model, attachments=_auto_attachments_or_fail(uow, model.family))
        before = _default_id(uow)
        uow.models.add(replace(model, is_default=False), revision)
        # Asked for, or the first model (any created while there is no default): it becomes the default.
        change = settle_default(
            uow,
            revision,
            before,
            claimant=model.id if model.is_default else None,
            filler=model.id if model.enabled else None,
        )
        return _finish(ctx, write, None, model_config_id, change)


def _auto_attachments_or_fail(uow: UnitOfWork, family: Family) -> tuple[str, ...]:
    ids = auto_attachments(family, uow.providers.list(family=family, enabled=True))
    if not ids:
        raise DomainError(
            Reason.NO_PROVIDER_CONFIG_TO_ATTACH,
            f"no enabled provider config of family {family.value} exists to attach; "
            f"create one or list {ATTACHMENTS_FIELD} explicitly",
            precondition_violations=[
                PreconditionViolation("NO_PROVIDER_CONFIG", f"family/{family.value}", "no enabled provider config")
            ],
        )
    if len(ids) > MAX_ATTACHMENTS:
        raise DomainError(
            Reason.TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH,
            f"{len(ids)} enabled provider configs of family {family.value} exist, more than the "
            f"{MAX_ATTACHMENTS} a model may hold; list {ATTACHMENTS_FIELD} explicitly",
            precondition_violations=[
                PreconditionViolation(
                    "TOO_MANY_PROVIDER_CONFIGS", f"family/{family.value}", f"{len(ids)} > {MAX_ATTACHMENTS}"
                )
            ],
        )
    return ids


def get_model_config(ctx: ServiceContext, model_config_id: str) -> ModelConfigView:
    with ctx.read() as uow:
        model = uow.models.get(model_config_id)
        if model is None:
            raise model_not_found(model_config_id)
        return _view(ctx, uow, model)


def list_model_configs(
    ctx: ServiceContext, list_filter: ModelListFilter, requested_page_size: int, page_token: str
) -> ModelConfigPage:
    size = page_size(requested_page_size)
    query = "modelConfigs?" + list_filter.canonical
    after = ctx.page_tokens.decode(page_token, query)
    with ctx.read() as uow:
        fetched = uow.models.list(
            show_deleted=list_filter.show_deleted,
            family=list_filter.family,
            enabled=list_filter.enabled,
            is_default=list_filter.is_default,
            after_id=after,
            limit=size + 1,
        )
        models, next_token = ctx.page_tokens.cut(fetched, size, query)
        providers = uow.providers.get_many(pid for m in models for pid in m.attachments)
    return ModelConfigPage([model_view(m, providers, ctx.deployment_keys) for m in models], next_token)


def update_model_config(
    ctx: ServiceContext, caller: Caller, model_config_id: str, request: ModelConfigInput
) -> ModelConfigView:
    paths = request.paths
    if not paths:
        # Nothing to change: answer like a read (still honouring the etag); no revision is taken.
        view = get_model_config(ctx, model_config_id)
        check_etag(request.etag, view.model.revision, model_resource(model_config_id))
        return view
    with ctx.write(caller) as write:
        uow, revision = write.uow, write.config_revision
        current = uow.models.get(model_config_id)
        if current is None:
            raise model_not_found(model_config_id)
        if current.deleted:
            raise DomainError(
                Reason.MODEL_CONFIG_DELETED,
                f"{current.name} is deleted; undelete it before changing it",
                resource=model_resource(current.id),
            )
        check_etag(request.etag, current.revision, model_resource(current.id))
        updated = _apply(current, request)
        validate_model_fields(updated, PREFIX)
        attachments_changed = "attachments" in paths
        if attachments_changed or updated.family is not current.family:
            # A family change that keeps the list meets the same rule as a new list.
            providers = uow.providers.get_many(updated.attachments)
            field_path = request.attachments_field if attachments_changed else ATTACHMENTS_FIELD
            validate_attachments(updated.family, updated.attachment_entries, providers, field_path)
            _check_overrides_accepted(uow, updated)
        asks_default = "is_default" in paths and bool(request.is_default)
        declines_default = "is_default" in paths and not request.is_default
        if asks_default and not updated.enabled:
            # Refused even when echoing a read back without a mask: name the fields to change (AIP-134).
            raise _disabled_default(updated)
        gives_up = current.is_default and (declines_default or not updated.enabled)
        # Enabled while there is no default: it fills the slot, as a model created now would.
        fills = updated.enabled and not current.enabled and not declines_default
        # Most updates (a name, a limit, the list) cannot move the default: they skip its two reads.
        moves_default = asks_default or fills or gives_up
        before = _default_id(uow) if moves_default else None
        uow.models.update(
            replace(updated, is_default=current.is_default and not gives_up),
            revision,
            attachments_changed=attachments_changed,
        )
        change = UNCHANGED
        if moves_default:
            change = settle_default(
                uow,
                revision,
                before,
                claimant=updated.id if asks_default else None,
                filler=updated.id if fills else None,
                leaving=[updated.id] if gives_up else [],
            )
        return _finish(ctx, write, current, model_config_id, change)


def _apply(current: ModelConfig, request: ModelConfigInput) -> ModelConfig:
    paths = request.paths
    changes: dict[str, object] = {}
    if "family" in paths:
        if request.family is None:
            raise DomainError(
                Reason.FIELD_INVALID,
                f"{PREFIX}family: must be one of {', '.join(FAMILY_NAMES)}",
                field_violations=[FieldViolation(f"{PREFIX}family", f"must be one of {', '.join(FAMILY_NAMES)}")],
            )
        changes["family"] = request.family
    if "model" in paths:
        changes["model"] = request.model.strip()
    if "display_name" in paths:
        # Named but empty: back to the default (the upstream model name), as on create.
        changes["display_name"] = request.display_name or changes.get("model", current.model)
    if "enabled" in paths:
        changes["enabled"] = request.enabled is not False
    if "is_default" in paths:
        changes["is_default"] = bool(request.is_default)
    if "context_limit" in paths:
        changes["context_limit"] = request.context_limit
    if "compression_threshold" in paths:
        changes["compression_threshold"] = (
            DEFAULT_COMPRESSION_THRESHOLD if request.compression_threshold is None else request.compression_threshold
        )
    option_changes = {
        f.name: getattr(request.options, f.name) for f in fields(CallOptions) if f"options.{f.name}" in paths
    }
    if option_changes:
        changes["options"] = replace(current.options, **option_changes)
    updated = replace(current, **changes)  # type: ignore[arg-type]
    if "attachments" not in paths:
        return updated
    entries = request.attachments
    if not request.overrides_given:
        # The plain list names the order only: each provider config listed again keeps its override.
        kept = {a.provider_config_id: a.model_override for a in current.attachment_entries}
        entries = tuple(Attachment(a.provider_config_id, kept.get(a.provider_config_id, "")) for a in entries)
    return updated.with_attachments(entries)


def _check_overrides_accepted(uow: UnitOfWork, model: ModelConfig) -> None:
    """Overrides wait for the schema's contract step: while a build that ignores them may still serve the
    database, it would send their providers the model's own name."""
    if model.overrides and not uow.models.overrides_accepted():
        raise DomainError(
            Reason.SCHEMA_UPGRADE_PENDING,
            f"{model.name}: upstream model name overrides are accepted once every replica runs a build that "
            "knows them; after the rolling upgrade, run `modelroute-server migrate` to finish it",
            precondition_violations=[
                PreconditionViolation(
                    "SCHEMA_UPGRADE_PENDING", "schema", "a build without overrides may still serve this database"
                )
            ],
        )


def _default_id(uow: UnitOfWork) -> str | None:
    default = uow.models.default()
    return default.id if default is not None else None


def _disabled_default(model: ModelConfig) -> DomainError:
    return DomainError(
        Reason.DISABLED_MODEL_CANNOT_BE_DEFAULT,
        f"{model.name} is disabled and cannot be the default model; enable it first",
        resource=model_resource(model.id),
    )


def delete_model_config(ctx: ServiceContext, caller: Caller, model_config_id: str, etag: str) -> ModelConfigView:
    with ctx.write(caller) as write:
        uow, revision = write.uow, write.config_revision
        current = uow.models.get(model_config_id)
        if current is None or current.deleted:
            # AIP-164: deleting a soft-deleted resource is NOT_FOUND.
            raise model_not_found(model_config_id)
        check_etag(etag, current.revision, model_resource(current.id))
        before = _default_id(uow)
        uow.models.update(replace(current, delete_time=uow.now, is_default=False), revision, attachments_changed=False)
        change = settle_default(uow, revision, before, leaving=[current.id])
        return _finish(ctx, write, current, model_config_id, change)


def undelete_model_config(ctx: ServiceContext, caller: Caller, model_config_id: str, etag: str) -> ModelConfigView:
    with ctx.write(caller) as write:
        uow, revision = write.uow, write.config_revision
        current = uow.models.get(model_config_id)
        if current is None:
            raise model_not_found(model_config_id)
        if current.live:
            raise DomainError(
                Reason.MODEL_CONFIG_NOT_DELETED, f"{current.name} is not deleted", resource=model_resource(current.id)
            )
        check_etag(etag, current.revision, model_resource(current.id))
        attachments = current.attachments
        if not attachments:
            # Its providers were force-deleted while it was deleted: attach as a create would.
            attachments = _auto_attachments_or_fail(uow, current.family)
        before = _default_id(uow)
        restored = replace(current, delete_time=None, is_default=False, attachments=attachments)
        uow.models.update(restored, revision, attachments_changed=attachments != current.attachments)
        # Back while there is no default: it fills the slot, as a model created now would.
        change = settle_default(uow, revision, before, filler=current.id if current.enabled else None)
        return _finish(ctx, write, current, model_config_id, change)
