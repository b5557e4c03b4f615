"""Translation between protobuf messages and use-case inputs / read views.

Protobuf stops here: nothing below the entrypoints sees a message.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

from ..adapters.crypto import MemorySeal
from ..domain.errors import DomainError, FieldViolation, Reason, ViolationCollector, invalid_field, quoted
from ..domain.families import FAMILY_NAMES, Family
from ..domain.health import AttemptOutcome, HealthPolicyOverride
from ..domain.models import Attachment, CallOptions, ModelConfig, check_attachment_count, upstream_name_problem
from ..domain.providers import KeySource, provider_config_name
from ..domain.resolver import AttachmentOutcome, FixableBy, ModelUnusableReason, Resolution, SkipReason
from ..domain.rules import SLUG_PATTERN
from ..service_layer.health import AttemptReport
from ..service_layer.inputs import (
    MODEL_OPTION_PATHS,
    MODEL_UPDATABLE_PATHS,
    PROVIDER_UPDATABLE_PATHS,
    ModelConfigInput,
    ProviderConfigInput,
)
from ..service_layer.model_configs import ModelListFilter
from ..service_layer.provider_configs import ProviderListFilter
from ..service_layer.resources import etag_of
from ..service_layer.snapshot import Snapshot
from ..service_layer.user_keys import UserProviderView
from ..service_layer.views import AttachmentView, ModelConfigView, ProviderConfigView

FAMILY_TO_PROTO = {family: common_pb2.Family.Value("FAMILY_" + family.name) for family in Family}
PROTO_TO_FAMILY = {value: family for family, value in FAMILY_TO_PROTO.items()}
KEY_SOURCE_TO_PROTO = {source: common_pb2.KeySource.Value("KEY_SOURCE_" + source.name) for source in KeySource}
SKIP_REASON_TO_PROTO = {r: common_pb2.SkipReason.Value("SKIP_REASON_" + r.name) for r in SkipReason}
FIXABLE_BY_TO_PROTO = {f: common_pb2.FixableBy.Value("FIXABLE_BY_" + f.name) for f in FixableBy}
UNUSABLE_TO_PROTO = {
    r: resolver_pb2.ModelUnusableReason.Value("MODEL_UNUSABLE_REASON_" + r.name) for r in ModelUnusableReason
}
PROTO_TO_KEY_SOURCE = {value: source for source, value in KEY_SOURCE_TO_PROTO.items()}
PROTO_TO_OUTCOME = {resolver_pb2.AttemptOutcome.Value("ATTEMPT_OUTCOME_" + o.name): o for o in AttemptOutcome}
POLICY_FIELDS = (
    "central_api_key_enabled",
    "allow_user_api_key",
    "allow_central_api_key_fallback",
)


# ---------------------------------------------------------------- names


def _id_in(name: str, collection: str) -> str | None:
    """The slug id of `collection/{id}`, or None when `name` is not such a name."""
    resource_id = name.removeprefix(collection + "/")
    return resource_id if resource_id != name and SLUG_PATTERN.fullmatch(resource_id) else None


def provider_id_from_name(name: str, field_path: str) -> str:
    provider_config_id = _id_in(name, "providerConfigs")
    if provider_config_id is None:
        raise invalid_field(
            field_path, f"must be a provider config name `providerConfigs/{{id}}` with a slug id, got {quoted(name)}"
        )
    return provider_config_id


def model_id_from_name(name: str, field_path: str) -> str:
    model_config_id = _id_in(name, "modelConfigs")
    if model_config_id is None:
        raise invalid_field(
            field_path, f"must be a model config name `modelConfigs/{{id}}` with a slug id, got {quoted(name)}"
        )
    return model_config_id


def model_ref(value: str, field_path: str) -> str | None:
    """ResolveModel accepts `modelConfigs/{id}`, the bare id, or empty for the default model."""
    if not value:
        return None
    if "/" in value:
        return model_id_from_name(value, field_path)
    if not SLUG_PATTERN.fullmatch(value):
        raise invalid_field(
            field_path, f"must be a model config id (a slug) or name `modelConfigs/{{id}}`, got {quoted(value)}"
        )
    return value


def _has(message: Message, field_name: str) -> bool:
    """Presence of a field named at run time (generated stubs type HasField with literals)."""
    return message.HasField(field_name)


def family_from_proto(value: int) -> Family | None:
    return PROTO_TO_FAMILY.get(common_pb2.Family.ValueType(value))


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# ---------------------------------------------------------------- update masks


def resolve_mask(
    mask: field_mask_pb2.FieldMask | None,
    populated: Iterable[str],
    allowed: frozenset[str],
    groups: dict[str, frozenset[str]],
    immutable: frozenset[str] = frozenset(),
    write_only: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """The resource fields an update touches (AIP-134).

    No mask: every populated field. `*`: every updatable field. A group path
    (`credential_policy`, `options`) stands for all its leaves. Any other
    path is rejected by name.
    """
    populated = frozenset(populated)
    paths = list(mask.paths) if mask is not None else []
    if not paths:
        return populated
    if paths == ["*"]:
        # Full replacement of what a read returns. A write-only field (the key is
        # never read back) changes only when sent, so read-modify-write keeps it;
        # an immutable field is checked only when sent.
        return (allowed - write_only) | ((immutable | write_only) & populated)
    resolved: set[str] = set()
    violations = ViolationCollector()
    for path in paths:
        if path in allowed or path in immutable:
            resolved.add(path)
        elif path in groups:
            resolved |= groups[path]
        else:
            violations.add("update_mask", f"unknown or read-only field path {quoted(path)}")
    violations.raise_if_any(Reason.UPDATE_MASK_INVALID)
    return frozenset(resolved)


# ---------------------------------------------------------------- provider configs


def provider_input(
    message: provider_config_pb2.ProviderConfig, mask: field_mask_pb2.FieldMask | None = None
) -> ProviderConfigInput:
    policy = message.credential_policy
    populated = [
        name
        for name, present in (
            ("display_name", bool(message.display_name)),
            ("base_url", bool(message.base_url)),
            ("enabled", message.HasField("enabled")),
            ("api_key", bool(message.api_key)),
            ("family", message.family != common_pb2.FAMILY_UNSPECIFIED),
            ("health_policy", message.HasField("health_policy")),
        )
        if present
    ] + [f"credential_policy.{f}" for f in POLICY_FIELDS if _has(policy, f)]
    paths = resolve_mask(
        mask,
        populated,
        PROVIDER_UPDATABLE_PATHS,
        {"credential_policy": frozenset(f"credential_policy.{f}" for f in POLICY_FIELDS)},
        immutable=frozenset({"family"}),
        write_only=frozenset({"api_key"}),
    )
    if message.family != common_pb2.FAMILY_UNSPECIFIED and family_from_proto(message.family) is None:
        raise _unknown_family("provider_config.family", message.family)
    return ProviderConfigInput(
        family=family_from_proto(message.family),
        display_name=message.display_name,
        base_url=message.base_url,
        enabled=message.enabled if message.HasField("enabled") else None,
        central_api_key_enabled=(
            policy.central_api_key_enabled if policy.HasField("central_api_key_enabled") else None
        ),
        allow_user_api_key=policy.allow_user_api_key if policy.HasField("allow_user_api_key") else None,
        allow_central_api_key_fallback=(
            policy.allow_central_api_key_fallback if policy.HasField("allow_central_api_key_fallback") else None
        ),
        api_key=message.api_key,
        health_policy=health_policy_input(message.health_policy) if message.HasField("health_policy") else None,
        etag=message.etag,
        paths=paths,
    )


def _unknown_family(field_path: str, value: int) -> DomainError:
    return invalid_field(field_path, f"unknown family {value}; must be one of {', '.join(FAMILY_NAMES)}")


def provider_to_proto(view: ProviderConfigView) -> provider_config_pb2.ProviderConfig:
    config, facts = view.config, view.facts
    now = datetime.now(UTC)
    return provider_config_pb2.ProviderConfig(
        name=config.name,
        family=FAMILY_TO_PROTO[config.family],
        display_name=config.display_name,
        base_url=config.base_url or "",
        enabled=config.enabled,
        credential_policy=common_pb2.CredentialPolicy(
            central_api_key_enabled=config.policy.central_api_key_enabled,
            allow_user_api_key=config.policy.allow_user_api_key,
            allow_central_api_key_fallback=config.policy.allow_central_api_key_fallback,
        ),
        has_api_key=facts.has_api_key,
        central_credential_usable=facts.central_credential_usable,
        central_credential_source=_key_source(facts.central_credential_source),
        create_time=to_timestamp(config.create_time),
        update_time=to_timestamp(config.update_time),
        etag=etag_of(config.revision),
        health=provider_config_pb2.ProviderHealth(
            models=[
                provider_config_pb2.ModelHealth(
                    model=model,
                    consecutive_failures=state.consecutive_failures,
                    trips=state.trips,
                    cooldown_until=to_timestamp(state.cooldown_until if state.cooling_at(now) else None),
                )
                for model, state in view.health.models
            ],
            central_key_rejected_time=to_timestamp(view.health.central_key_rejected_time),
        ),
        health_policy=_health_policy_to_proto(config.health_policy),
    )


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def _health_policy_to_proto(policy: HealthPolicyOverride) -> provider_config_pb2.HealthPolicy | None:
    if policy.is_empty:
        return None
    return provider_config_pb2.HealthPolicy(
        failure_threshold=policy.failure_threshold,
        failure_window=_duration(policy.failure_window),
        base_cooldown=_duration(policy.base_cooldown),
        max_cooldown=_duration(policy.max_cooldown),
    )


def health_policy_input(message: provider_config_pb2.HealthPolicy) -> HealthPolicyOverride:
    def duration(name: str) -> timedelta | None:
        if not message.HasField(name):  # type: ignore[arg-type]
            return None
        value: duration_pb2.Duration = getattr(message, name)
        if value.nanos % 1000 or not -315_576_000_000 <= value.seconds <= 315_576_000_000:
            raise invalid_field(f"provider_config.health_policy.{name}", "must be a whole number of microseconds")
        return value.ToTimedelta()

    return HealthPolicyOverride(
        message.failure_threshold if message.HasField("failure_threshold") else None,
        duration("failure_window"),
        duration("base_cooldown"),
        duration("max_cooldown"),
    )


def _key_source(source: KeySource | None) -> common_pb2.KeySource.ValueType:
    return KEY_SOURCE_TO_PROTO[source] if source else common_pb2.KEY_SOURCE_UNSPECIFIED


# ---------------------------------------------------------------- filters


# A value is bare or wholly quoted; an unbalanced quote is a parse error.
MAX_FILTER_CHARS = 1024
_TERM = re.compile(r'^\s*([a-z_]+)\s*=\s*(?:"([A-Za-z0-9_-]+)"|([A-Za-z0-9_-]+))\s*$')


def _parse_filter(text: str, allowed: set[str]) -> dict[str, str]:
    """`a = x AND b = y`; each name at most once (AIP-160 subset)."""
    terms: dict[str, str] = {}
    if len(text) > MAX_FILTER_CHARS:
        raise invalid_field("filter", f"must be at most {MAX_FILTER_CHARS} characters", Reason.FILTER_INVALID)
    if not text.strip():
        return terms
    for raw in re.split(r"\s+AND\s+", text.strip()):
        match = _TERM.fullmatch(raw)
        if not match or match.group(1) not in allowed or match.group(1) in terms:
            raise invalid_field(
                "filter",
                f"cannot parse {quoted(raw.strip())}; use terms like "
                + " AND ".join(f"{name} = ..." for name in sorted(allowed)),
                Reason.FILTER_INVALID,
            )
        terms[match.group(1)] = match.group(2) or match.group(3)
    return terms


def _filter_family(value: str) -> Family:
    family = Family.parse(value.removeprefix("FAMILY_"))
    if family is None:
        raise invalid_field(
            "filter", f"unknown family {quoted(value)}; must be one of {', '.join(FAMILY_NAMES)}", Reason.FILTER_INVALID
        )
    return family


def _filter_bool(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise invalid_field("filter", f"{name} must be true or false, got {quoted(value)}", Reason.FILTER_INVALID)
    return value.lower() == "true"


def provider_filter(text: str) -> ProviderListFilter:
    terms = _parse_filter(text, {"family", "enabled"})
    return ProviderListFilter(
        family=_filter_family(terms["family"]) if "family" in terms else None,
        enabled=_filter_bool("enabled", terms["enabled"]) if "enabled" in terms else None,
    )


def model_filter(text: str, show_deleted: bool) -> ModelListFilter:
    terms = _parse_filter(text, {"family", "enabled", "is_default"})
    return ModelListFilter(
        family=_filter_family(terms["family"]) if "family" in terms else None,
        enabled=_filter_bool("enabled", terms["enabled"]) if "enabled" in terms else None,
        is_default=_filter_bool("is_default", terms["is_default"]) if "is_default" in terms else None,
        show_deleted=show_deleted,
    )


# ---------------------------------------------------------------- model configs


def model_input(
    message: model_config_pb2.ModelConfig, mask: field_mask_pb2.FieldMask | None = None
) -> ModelConfigInput:
    options_message = message.options
    option_names = [name.removeprefix("options.") for name in sorted(MODEL_OPTION_PATHS)]
    populated = [
        name
        for name, present in (
            ("family", message.family != common_pb2.FAMILY_UNSPECIFIED),
            ("model", bool(message.model)),
            ("display_name", bool(message.display_name)),
            ("enabled", message.HasField("enabled")),
            ("is_default", message.HasField("is_default")),
            ("context_limit", message.context_limit != 0),
            ("compression_threshold", message.HasField("compression_threshold")),
            ("provider_configs", len(message.provider_configs) > 0),
            ("attachments", len(message.attachments) > 0),
        )
        if present
    ] + [f"options.{name}" for name in option_names if _has(options_message, name)]
    paths = resolve_mask(mask, populated, MODEL_UPDATABLE_PATHS, {"options": MODEL_OPTION_PATHS})
    if message.family != common_pb2.FAMILY_UNSPECIFIED and family_from_proto(message.family) is None:
        raise _unknown_family("model_config.family", message.family)
    attachments, attachments_field, overrides_given = _attachments_input(message, paths)
    if "provider_configs" in paths:
        paths = (paths - {"provider_configs"}) | {"attachments"}  # one list, whichever form named it
    return ModelConfigInput(
        family=family_from_proto(message.family),
        model=message.model,
        display_name=message.display_name,
        enabled=message.enabled if message.HasField("enabled") else None,
        is_default=message.is_default if message.HasField("is_default") else None,
        context_limit=message.context_limit,
        compression_threshold=(message.compression_threshold if message.HasField("compression_threshold") else None),
        options=CallOptions(
            **{name: getattr(options_message, name) if _has(options_message, name) else None for name in option_names}
        ),
        attachments=attachments,
        attachments_field=attachments_field,
        overrides_given=overrides_given,
        etag=message.etag,
        paths=paths,
    )


_PLAIN_LIST = "model_config.provider_configs"
_ATTACHMENT_LIST = "model_config.attachments"


def _attachments_input(
    message: model_config_pb2.ModelConfig, paths: frozenset[str]
) -> tuple[tuple[Attachment, ...], str, bool]:
    """The list the request asks for, the field it came from, and whether it carries overrides.

    Both forms named (a read written back whole): an empty one gives way to the other, and two non-empty
    ones must agree, the overrides coming from `attachments`.
    """
    plain = "provider_configs" in paths
    full = "attachments" in paths
    if plain and full:
        if not message.attachments:
            full = False
        elif not message.provider_configs:
            plain = False
    # Before anything touches the database: the list's size and shape are the client's mistake.
    if full:
        entries = _attachment_entries(message.attachments)
        if plain:
            names = list(message.provider_configs)
            if names != [a.provider_config for a in message.attachments]:
                raise DomainError(
                    Reason.ATTACHMENTS_INVALID,
                    f"{_PLAIN_LIST} and {_ATTACHMENT_LIST} list different provider configs; give one, or the same "
                    "provider configs in the same order",
                    field_violations=[
                        FieldViolation(
                            _PLAIN_LIST, f"must list the provider configs of {_ATTACHMENT_LIST} in the same order"
                        )
                    ],
                )
        return entries, _ATTACHMENT_LIST, True
    if plain:
        check_attachment_count(len(message.provider_configs), _PLAIN_LIST)
        ids = _provider_ids(list(message.provider_configs), _PLAIN_LIST, "")
        return tuple(Attachment(pid) for pid in ids), _PLAIN_LIST, False
    return (), _PLAIN_LIST, False


def _attachment_entries(messages: Sequence[model_config_pb2.Attachment]) -> tuple[Attachment, ...]:
    check_attachment_count(len(messages), _ATTACHMENT_LIST)
    ids = _provider_ids([a.provider_config for a in messages], _ATTACHMENT_LIST, ".provider_config")
    violations: list[FieldViolation] = []
    overrides = []
    for index, attachment in enumerate(messages):
        override = attachment.model.strip()
        problem = upstream_name_problem(override) if attachment.model else None
        if problem:
            if not override:
                problem = "must not be blank: leave it empty to send the model's own name"
            violations.append(FieldViolation(f"{_ATTACHMENT_LIST}[{index}].model", problem))
        overrides.append(override)
    if violations:
        raise DomainError(
            Reason.ATTACHMENTS_INVALID,
            f"{_ATTACHMENT_LIST}: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
            field_violations=violations,
        )
    return tuple(Attachment(pid, override) for pid, override in zip(ids, overrides, strict=True))


def _provider_ids(names: Sequence[str], field_path: str, suffix: str) -> list[str]:
    violations: list[FieldViolation] = []
    ids = []
    for index, name in enumerate(names):
        provider_config_id = _id_in(name, "providerConfigs")
        if provider_config_id is not None:
            ids.append(provider_config_id)
        else:
            violations.append(
                FieldViolation(
                    f"{field_path}[{index}]{suffix}",
                    f"{quoted(name)} is not a provider config name `providerConfigs/{{id}}`",
                )
            )
    if violations:
        raise DomainError(
            Reason.ATTACHMENTS_INVALID,
            f"{field_path}: " + "; ".join(v.description for v in violations),
            field_violations=violations,
        )
    return ids


def _attachment_to_proto(attachment: AttachmentView) -> model_config_pb2.Attachment:
    provider, facts = attachment.provider, attachment.facts
    return model_config_pb2.Attachment(
        provider_config=provider.name,
        position=attachment.position,
        family=FAMILY_TO_PROTO[provider.family],
        display_name=provider.display_name,
        enabled=provider.enabled,
        has_api_key=facts.has_api_key,
        central_credential_usable=facts.central_credential_usable,
        central_credential_source=_key_source(facts.central_credential_source),
        allow_user_api_key=provider.policy.allow_user_api_key,
        model=attachment.model_override,
        effective_model=attachment.effective_model,
    )


def model_to_proto(view: ModelConfigView) -> model_config_pb2.ModelConfig:
    model = view.model
    options = model_config_pb2.ModelCallOptions(
        **{
            f.name: getattr(model.options, f.name)
            for f in fields(model.options)
            if getattr(model.options, f.name) is not None
        }
    )
    return model_config_pb2.ModelConfig(
        name=model.name,
        family=FAMILY_TO_PROTO[model.family],
        model=model.model,
        display_name=model.display_name,
        enabled=model.enabled,
        is_default=model.is_default,
        context_limit=model.context_limit,
        compression_threshold=model.compression_threshold,
        options=options,
        provider_configs=[provider_config_name(pid) for pid in model.attachments],
        attachments=[_attachment_to_proto(a) for a in view.attachments],
        create_time=to_timestamp(model.create_time),
        update_time=to_timestamp(model.update_time),
        delete_time=to_timestamp(model.delete_time),
        etag=etag_of(model.revision),
    )


# ---------------------------------------------------------------- user keys


def user_provider_to_proto(view: UserProviderView) -> user_key_pb2.UserProviderConfig:
    return user_key_pb2.UserProviderConfig(
        provider_config=view.provider.name,
        family=FAMILY_TO_PROTO[view.provider.family],
        display_name=view.provider.display_name,
        has_user_api_key=view.has_user_api_key,
        central_fallback_available=view.central_fallback_available,
        user_api_key_required=view.user_api_key_required,
        key_rejected_time=to_timestamp(view.key_rejected_time),
    )


# ---------------------------------------------------------------- resolution


def resolved_attachment(outcome: AttachmentOutcome, upstream_model: str) -> resolver_pb2.ResolvedAttachment:
    return resolver_pb2.ResolvedAttachment(
        provider_config=provider_config_name(outcome.provider_config_id),
        position=outcome.position,
        family=FAMILY_TO_PROTO[outcome.family],
        model=upstream_model,
        base_url=outcome.base_url or "",
        key_source=_key_source(outcome.key_source),
        api_key=outcome.secret or "",
        cooldown_until=to_timestamp(outcome.cooldown_until),
    )


def skipped_attachment(outcome: AttachmentOutcome, upstream_model: str) -> resolver_pb2.SkippedAttachment:
    assert outcome.skip_reason is not None and outcome.fixable_by is not None
    return resolver_pb2.SkippedAttachment(
        provider_config=provider_config_name(outcome.provider_config_id),
        position=outcome.position,
        family=FAMILY_TO_PROTO[outcome.family],
        reason=SKIP_REASON_TO_PROTO[outcome.skip_reason],
        fixable_by=FIXABLE_BY_TO_PROTO[outcome.fixable_by],
        message=outcome.message,
        model=upstream_model,
    )


def resolve_response(resolution: Resolution, revision: int) -> resolver_pb2.ResolveModelResponse:
    assert resolution.selected is not None
    upstream = resolution.upstream_model
    return resolver_pb2.ResolveModelResponse(
        model_config=resolution.model.name,
        selected=resolved_attachment(resolution.selected, upstream(resolution.selected)),
        fallbacks=[resolved_attachment(o, upstream(o)) for o in resolution.fallbacks],
        skipped=[skipped_attachment(o, upstream(o)) for o in resolution.skipped],
        config_revision=revision,
    )


_RESPONSE = resolver_pb2.ResolveModelResponse


def _varint(value: int) -> bytes:
    return bytes((value,)) if value < 0x80 else _varint_bytes(value)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A kept answer without its config_revision field: its encoding up to the first caller's own key, then
# each such key with the encoding that follows it. A key is held under the replica's `MemorySeal`, as
# a function that opens it (a plaintext key is never kept).
_Parts = tuple[bytes, tuple[tuple[Callable[[], bytes], bytes], ...]]


@dataclass(slots=True)
class _KeptAnswer:
    """An answer and everything it was decided from (immutable snapshot objects, compared by
    identity): while each is still the current snapshot's own, the answer is still right. Only
    `checked` changes."""

    model: ModelConfig
    verdicts: object
    user_keys: bytes | None
    parts: _Parts
    # Counts the answer in the metrics each time it is given.
    tally: Callable[[], None]
    # Provider health it was decided from: the cooldowns, the user's rejected keys, and when the first
    # cooldown it demoted ends (time.time(); infinity when it demoted none).
    cooldowns: object = None
    rejected_user_keys: object = None
    valid_until: float = math.inf
    # The generation of `ResolveResponses` (one per snapshot it has answered from) the answer was last
    # found right for: until the snapshot changes, it is not checked again.
    checked: int = -1


def _nothing() -> None:
    pass


def _uncounted(resolution: Resolution) -> Callable[[], None]:
    return _nothing


class ResolveResponses:
    """ResolveModel answers, encoded once: building and encoding messages is most of what a call
    costs. The answer is returned already encoded (the server passes bytes through).

    Every answer is kept by the request's (model, user) as asked, at most `kept_answers` of them (the
    oldest go first), and given again while the model, the provider configs and the user's keys it
    was decided from are unchanged, whatever else changed meanwhile: a repeated call is one lookup
    (those identity checks are made once per answer after each change of snapshot). A caller's own
    key is kept sealed in the answer and opened for each call, under the replica's `MemorySeal`
    rather than the keyring's AES-GCM; the central keys it carries are the snapshot's own.

    Beneath them, within one snapshot, an answer that no caller key decided is the same for every
    caller: it is kept whole, by model. One that a caller's key decided is assembled from kept
    encodings of each field, since protobuf's wire format is the concatenation of a message's fields
    (repeated ones in order); only an attachment holding the caller's own key is encoded anew. The
    config revision is the last field, added to each.
    """

    MAX_ENTRIES = 50_000  # bounds memory when callers walk a hundred thousand models

    def __init__(
        self,
        kept_answers: int = 10_000,
        tally_of: Callable[[Resolution], Callable[[], None]] | None = None,
    ) -> None:
        self._seal = MemorySeal()
        self._tally_of = tally_of or _uncounted
        self._answers: OrderedDict[tuple[str, str], _KeptAnswer] = OrderedDict()
        self._kept_answers = kept_answers
        self._snapshot: Snapshot | None = None
        self._generation = 0  # moves with `_snapshot`
        self._responses: dict[str, bytes] = {}
        self._fields: dict[tuple[object, ...], bytes] = {}
        self._revision_field = b""

    def _use(self, snapshot: Snapshot) -> None:
        if snapshot is not self._snapshot:
            self._snapshot, self._responses, self._fields = snapshot, {}, {}
            self._generation += 1
            self._revision_field = _RESPONSE(config_revision=snapshot.revision).SerializeToString()

    def kept(self, snapshot: Snapshot, asked: tuple[str, str]) -> bytes | None:
        """The answer kept for this (model, user), if `snapshot` would decide it the same."""
        entry = self._answers.get(asked)
        if entry is None:
            return None
        self._use(snapshot)
        if entry.checked != self._generation:
            model, user = entry.model, asked[1]
            if (
                snapshot.verdicts is not entry.verdicts
                or snapshot.models.get(model.id) is not model
                or (user and snapshot.user_keys.get(user) is not entry.user_keys)
                or (not asked[0] and snapshot.default_model_id != model.id)
                or snapshot.cooldowns is not entry.cooldowns
                or (user and snapshot.rejected_user_keys.get(user) is not entry.rejected_user_keys)
            ):
                return None
            entry.checked = self._generation
        if entry.valid_until != math.inf and time.time() >= entry.valid_until:
            return None
        entry.tally()
        return self._rendered(entry.parts)

    def response(self, resolution: Resolution, snapshot: Snapshot, asked: tuple[str, str]) -> bytes:
        """The encoded answer, decided over `snapshot`; kept for `asked` (the request's model and user
        as they were written)."""
        self._use(snapshot)
        user = asked[1]
        parts = self._parts(resolution)
        tally = self._tally_of(resolution)
        tally()
        if self._kept_answers > 0:
            if len(self._answers) >= self._kept_answers:
                self._answers.popitem(last=False)
            user_keys = snapshot.user_keys.get(user) if user else None
            rejected_user_keys = snapshot.rejected_user_keys.get(user) if user else None
            valid_until = (
                min(o.cooldown_until.timestamp() for o in resolution.usable_outcomes if o.cooldown_until)
                if resolution.cooling
                else math.inf
            )
            self._answers[asked] = _KeptAnswer(
                resolution.model,
                snapshot.verdicts,
                user_keys,
                parts,
                tally,
                snapshot.cooldowns,
                rejected_user_keys,
                valid_until,
                self._generation,
            )
        return self._rendered(parts)

    def _rendered(self, parts: _Parts) -> bytes:
        """The answer from its parts, each caller key opened."""
        head, keys = parts
        if not keys:
            return head + self._revision_field  # no caller key: the common case
        if len(keys) == 1:
            ((open_key, tail),) = keys
            return b"".join((head, open_key(), tail, self._revision_field))
        pieces = [head]
        for open_key, run in keys:
            pieces += (open_key(), run)
        pieces.append(self._revision_field)
        return b"".join(pieces)

    def _parts(self, resolution: Resolution) -> _Parts:
        """The answer without its config_revision field, from encodings kept per snapshot, with each
        caller key sealed in its place."""
        model, decided = resolution.model, resolution.decided_by_caller
        if resolution.cooling:
            # Health ordered it, for as long as a cooldown runs: nothing of it is shared with other answers.
            decided = frozenset(range(len(resolution.outcomes)))
        if not decided:
            encoded = self._responses.get(model.id)
            if encoded is None:
                encoded = resolve_response(resolution, 0).SerializeToString()  # a zero revision: no field
                self._keep(self._responses, model.id, encoded)
            return encoded, ()
        selected = resolution.selected
        assert selected is not None
        # The encoded fields between caller keys: one run before the first key, and one after each.
        runs: list[list[bytes]] = [[self._name(model)]]
        sealed: list[Callable[[], bytes]] = []
        for role, outcomes in (("selected", (selected,)), ("fallbacks", resolution.fallbacks)):
            for o in outcomes:
                upstream = resolution.upstream_model(o)
                if o.position in decided and o.key_source is KeySource.USER:
                    assert o.secret is not None  # a user key that does not open is skipped, never selected
                    without_key = resolved_attachment(replace(o, secret=None), upstream).SerializeToString()
                    key = o.secret.encode()
                    # The key goes last, after every other field of its attachment (protobuf takes fields in
                    # any order): the field up to the key's bytes, then the key.
                    key_head = _API_KEY_TAG + _varint(len(key))
                    size = len(without_key) + len(key_head) + len(key)
                    runs[-1] += (_FIELD_TAGS[role], _varint(size), without_key, key_head)
                    sealed.append(self._seal.seal(key))
                    runs.append([])
                else:
                    runs[-1].append(self._field(model.id, role, o, upstream, decided))
        runs[-1] += (
            self._field(model.id, "skipped", o, resolution.upstream_model(o), decided) for o in resolution.skipped
        )
        head, *after = (b"".join(run) for run in runs)
        return head, tuple(zip(sealed, after, strict=True))

    def _name(self, model: ModelConfig) -> bytes:
        name = self._fields.get((model.id, "name", 0))
        if name is None:
            name = self._keep(
                self._fields, (model.id, "name", 0), _RESPONSE(model_config=model.name).SerializeToString()
            )
        return name

    def _field(
        self, model_id: str, role: str, outcome: AttachmentOutcome, upstream: str, decided: frozenset[int]
    ) -> bytes:
        if outcome.position in decided:
            return _encoded_field(role, outcome, upstream)  # decided by this caller's key, holding no key of theirs
        # Within one snapshot, an outcome no caller decided follows from its model and position.
        key = (model_id, role, outcome.position)
        encoded = self._fields.get(key)
        if encoded is None:
            encoded = self._keep(self._fields, key, _encoded_field(role, outcome, upstream))
        return encoded

    def _keep(self, cache: dict[Any, bytes], key: Any, encoded: bytes) -> bytes:
        if len(cache) >= self.MAX_ENTRIES:
            cache.clear()
        cache[key] = encoded
        return encoded


def _encoded_field(role: str, outcome: AttachmentOutcome, upstream: str) -> bytes:
    """One field of a ResolveModelResponse holding this outcome, in protobuf's wire format: its tag
    (field number, length-delimited), the length as a varint, the encoded message."""
    part = resolved_attachment(outcome, upstream) if outcome.usable else skipped_attachment(outcome, upstream)
    payload = part.SerializeToString()
    return _FIELD_TAGS[role] + _varint(len(payload)) + payload


_FIELD_TAGS = {
    role: _varint_bytes(_RESPONSE.DESCRIPTOR.fields_by_name[role].number << 3 | 2)
    for role in ("selected", "fallbacks", "skipped")
}
_API_KEY_TAG = _varint_bytes(resolver_pb2.ResolvedAttachment.DESCRIPTOR.fields_by_name["api_key"].number << 3 | 2)


def available_model(resolution: Resolution) -> resolver_pb2.AvailableModel:
    model, selected = resolution.model, resolution.selected
    return resolver_pb2.AvailableModel(
        model_config=model.name,
        display_name=model.display_name,
        family=FAMILY_TO_PROTO[model.family],
        model=model.model,
        is_default=model.is_default,
        usable=selected is not None,
        selected_provider_config=provider_config_name(selected.provider_config_id) if selected else "",
        skipped=[skipped_attachment(o, resolution.upstream_model(o)) for o in resolution.skipped],
        selected_model=resolution.upstream_model(selected) if selected else "",
        degraded=resolution.degraded,
    )


def explain_response(resolution: Resolution, revision: int) -> resolver_pb2.ExplainResolutionResponse:
    selected, unusable = resolution.selected, resolution.unusable_reason
    return resolver_pb2.ExplainResolutionResponse(
        model_config=resolution.model.name,
        usable=selected is not None,
        unusable_reason=UNUSABLE_TO_PROTO[unusable] if unusable else resolver_pb2.MODEL_UNUSABLE_REASON_UNSPECIFIED,
        selected_position=selected.position if selected else -1,
        outcomes=[
            resolver_pb2.AttachmentOutcome(
                provider_config=provider_config_name(o.provider_config_id),
                position=o.position,
                family=FAMILY_TO_PROTO[o.family],
                usable=o.usable,
                key_source=_key_source(o.key_source),
                reason=SKIP_REASON_TO_PROTO[o.skip_reason] if o.skip_reason else common_pb2.SKIP_REASON_UNSPECIFIED,
                fixable_by=FIXABLE_BY_TO_PROTO[o.fixable_by] if o.fixable_by else common_pb2.FIXABLE_BY_UNSPECIFIED,
                message=o.message,
                model=resolution.upstream_model(o),
                cooldown_until=to_timestamp(o.cooldown_until),
            )
            for o in resolution.outcomes
        ],
        config_revision=revision,
    )


# ---------------------------------------------------------------- attempt reports


def attempt_reports(request: resolver_pb2.ReportAttemptsRequest) -> list[AttemptReport]:
    """The reports as the use case checks them: a name that does not parse, an unset enum or an
    unknown one arrive as None and are refused there, with every other problem of the batch."""
    reports = []
    ids: dict[str, str | None] = {}  # a batch names few provider configs, many times each
    for report in request.attempts:
        retry_after = None
        if report.HasField("retry_after"):
            value = report.retry_after
            retry_after = timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
        name = report.provider_config
        provider_config_id = ids.get(name, "")
        if provider_config_id == "":
            provider_config_id = ids[name] = _id_in(name, "providerConfigs")
        reports.append(
            AttemptReport(
                provider_config_id,
                report.model,
                report.user,
                PROTO_TO_KEY_SOURCE.get(report.key_source),
                report.config_revision,
                PROTO_TO_OUTCOME.get(report.outcome),
                retry_after,
            )
        )
    return reports
