"""Model configs, their ordered attachments, and the default-model rule."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime

from . import rules
from .errors import DomainError, FieldViolation, Reason, ViolationCollector
from .families import Family
from .providers import ProviderConfig, provider_config_name

DEFAULT_COMPRESSION_THRESHOLD = 70
# Every attachment must fit in one error's details (docs/behaviour.md: the error lists them all).
MAX_ATTACHMENTS = 25
MAX_CONTEXT_LIMIT = 100_000_000


@dataclass(frozen=True, slots=True)
class CallOptions:
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None
    cache_read_price_per_mtok: float | None = None
    cache_write_price_per_mtok: float | None = None


# (low, high) inclusive bounds; None means unbounded on that side.
_OPTION_BOUNDS: Mapping[str, tuple[float | None, float | None]] = {
    "max_output_tokens": (1, None),
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "top_k": (1, None),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "input_price_per_mtok": (0.0, None),
    "output_price_per_mtok": (0.0, None),
    "cache_read_price_per_mtok": (0.0, None),
    "cache_write_price_per_mtok": (0.0, None),
}


@dataclass(frozen=True, slots=True)
class Attachment:
    """One entry of a model's priority list: a provider config, and the upstream model name to send it
    when it is not the model's own (an Azure deployment name, OpenRouter's `openai/gpt-4o`)."""

    provider_config_id: str
    model_override: str = ""


@dataclass(frozen=True, slots=True)  # slots: a replica holds a hundred thousand of these
class ModelConfig:
    id: str
    family: Family
    model: str
    display_name: str
    context_limit: int
    # The attachments' provider config ids, in order (position 0 first); `overrides` holds their upstream
    # model name overrides. Two flat tuples rather than one object per attachment: a hundred thousand
    # models share a few thousand id tuples, and a model without overrides holds none.
    attachments: tuple[str, ...]
    enabled: bool = True
    is_default: bool = False
    compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD
    options: CallOptions = field(default_factory=CallOptions)
    create_time: datetime | None = None
    update_time: datetime | None = None
    delete_time: datetime | None = None
    revision: int = 0
    # Per position, the attachment's override ('' for none); empty when no attachment has one.
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return model_config_name(self.id)

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @property
    def live(self) -> bool:
        return self.delete_time is None

    def override_at(self, position: int) -> str:
        return self.overrides[position] if self.overrides else ""

    def upstream_model_at(self, position: int) -> str:
        """The upstream model name the attachment at `position` is sent: its override, else the model's own."""
        return self.override_at(position) or self.model

    @property
    def attachment_entries(self) -> tuple[Attachment, ...]:
        return tuple(Attachment(pid, self.override_at(i)) for i, pid in enumerate(self.attachments))

    def with_attachments(self, entries: Sequence[Attachment]) -> ModelConfig:
        """The model with these attachments (and no overrides tuple when none has one)."""
        overrides = tuple(a.model_override for a in entries)
        return replace(
            self,
            attachments=tuple(a.provider_config_id for a in entries),
            overrides=overrides if any(overrides) else (),
        )

    def without_provider(self, provider_config_id: str) -> ModelConfig:
        """The model with that provider config's attachment removed, the rest renumbered in order."""
        return self.with_attachments([a for a in self.attachment_entries if a.provider_config_id != provider_config_id])


def model_config_name(model_config_id: str) -> str:
    return f"modelConfigs/{model_config_id}"


def validate_model_fields(model: ModelConfig, prefix: str = "") -> None:
    violations = ViolationCollector()
    model_problem = upstream_name_problem(model.model.strip())
    if model_problem:
        violations.add(f"{prefix}model", model_problem)
    name_problem = rules.display_name_problem(model.display_name)
    if name_problem:
        violations.add(f"{prefix}display_name", name_problem)
    if not 0 < model.context_limit <= MAX_CONTEXT_LIMIT:
        violations.add(f"{prefix}context_limit", f"must be between 1 and {MAX_CONTEXT_LIMIT}")
    if not 0 <= model.compression_threshold <= 100:
        violations.add(f"{prefix}compression_threshold", "must be between 0 and 100")
    for option in fields(CallOptions):
        value = getattr(model.options, option.name)
        if value is None:
            continue
        low, high = _OPTION_BOUNDS[option.name]
        path = f"{prefix}options.{option.name}"
        if isinstance(value, float) and not math.isfinite(value):
            violations.add(path, "must be a finite number")
        elif low is not None and value < low:
            violations.add(path, f"must be >= {low}")
        elif high is not None and value > high:
            violations.add(path, f"must be <= {high}")
    violations.raise_if_any()


def check_attachment_count(count: int, field_path: str) -> None:
    if count > MAX_ATTACHMENTS:
        raise DomainError(
            Reason.ATTACHMENTS_INVALID,
            f"{field_path}: at most {MAX_ATTACHMENTS} provider configs, got {count}",
            field_violations=[FieldViolation(field_path, f"must name at most {MAX_ATTACHMENTS} provider configs")],
        )


def upstream_name_problem(value: str) -> str | None:
    """The rules of an upstream model name (the model's own or an attachment's override), after trimming."""
    if not value:
        return "is required"
    if len(value) > rules.MAX_TEXT:
        return f"must be at most {rules.MAX_TEXT} characters"
    return rules.control_character_problem(value)


def validate_attachments(
    family: Family,
    entries: Sequence[Attachment],
    providers: Mapping[str, ProviderConfig],
    field_path: str,
) -> None:
    """Unknown ids, an id of another family without an override, duplicates and an empty list are rejected,
    each entry named by its position (`field_path[i]`) and provider config. The same rule holds a family
    change that keeps the list: nothing becomes cross-family implicitly."""
    if not entries:
        raise DomainError(
            Reason.ATTACHMENTS_INVALID,
            f"{field_path}: a model needs at least one provider config",
            field_violations=[FieldViolation(field_path, "must name at least one provider config")],
        )
    check_attachment_count(len(entries), field_path)
    violations: list[FieldViolation] = []
    counts = Counter(a.provider_config_id for a in entries)
    reported_duplicates: set[str] = set()
    for index, attachment in enumerate(entries):
        provider_id = attachment.provider_config_id
        path = f"{field_path}[{index}]"
        name = provider_config_name(provider_id)
        provider = providers.get(provider_id)
        if counts[provider_id] > 1 and provider_id not in reported_duplicates:
            reported_duplicates.add(provider_id)
            violations.append(FieldViolation(path, f"{name} is listed {counts[provider_id]} times"))
        if provider is None:
            violations.append(FieldViolation(path, f"{name} does not exist"))
        elif provider.family is not family and not attachment.model_override:
            violations.append(
                FieldViolation(
                    path,
                    f"{name} is of family {provider.family.value}, the model is {family.value}: an attachment of "
                    "another family needs its own upstream model name (model)",
                )
            )
    if violations:
        raise DomainError(
            Reason.ATTACHMENTS_INVALID,
            f"{field_path}: " + "; ".join(v.description for v in violations),
            field_violations=violations,
        )


def auto_attachments(family: Family, providers: Iterable[ProviderConfig]) -> tuple[str, ...]:
    """Every enabled config of the family, by (create time, id): the same on every run (trap 11)."""
    candidates = [p for p in providers if p.family is family and p.enabled]
    candidates.sort(key=lambda p: (p.create_time or datetime.min, p.id))
    return tuple(p.id for p in candidates)


def default_order_key(model: ModelConfig) -> tuple[datetime, str]:
    return (model.create_time or datetime.min, model.id)


def next_default(models: Iterable[ModelConfig], excluding: Iterable[str] = ()) -> ModelConfig | None:
    """The model to promote: the oldest enabled live model, ties broken by id."""
    excluded = set(excluding)
    candidates = [m for m in models if m.live and m.enabled and m.id not in excluded]
    return min(candidates, key=default_order_key, default=None)
