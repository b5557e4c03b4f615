"""Tables with status badges for people, and JSON documents (zero and false values included) for scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..calls import Written
from ..calls import family_name as family
from ..v1 import (
    access_token_pb2,
    audit_pb2,
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

Render = Callable[[Console], None]
REDACTED = "<redacted>"

# Badge texts and styles: what a person scans a table for.
BADGE_STYLES = {
    "selected": "bold green",
    "fallback": "cyan",
    "enabled": "green",
    "disabled": "red",
    "deleted": "red",
    "default": "bold magenta",
    "no key": "yellow",
    "user key required": "yellow",
    "user key": "green",
    "key undecryptable": "red",
    "invalid config": "red",
    "revoked": "red",
    "expired": "red",
    "active": "green",
    "usable": "green",
    "unusable": "red",
    "cooling down": "yellow",
    "failing": "yellow",
    "degraded": "yellow",
    "key rejected": "red",
    "central key rejected": "red",
}
SKIP_BADGES = {
    common_pb2.SKIP_REASON_PROVIDER_DISABLED: "disabled",
    common_pb2.SKIP_REASON_USER_KEY_REQUIRED: "user key required",
    common_pb2.SKIP_REASON_CENTRAL_KEY_MISSING: "no key",
    common_pb2.SKIP_REASON_KEY_UNDECRYPTABLE: "key undecryptable",
    common_pb2.SKIP_REASON_INVALID_CONFIG: "invalid config",
    common_pb2.SKIP_REASON_USER_KEY_REJECTED: "key rejected",
    common_pb2.SKIP_REASON_CENTRAL_KEY_REJECTED: "central key rejected",
}
POLICIES = {
    "central-only": (True, False, False),
    "user-only": (False, True, False),
    "user-required": (True, True, False),
    "user-preferred": (True, True, True),
}


def as_dict(message: Message) -> dict[str, Any]:
    """Every field, zero and false ones included, with the names of the protos, in the protos' order."""
    document = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
    return _in_field_order(message.DESCRIPTOR, document)


def _in_field_order(descriptor: Any, document: dict[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {}
    for field_descriptor in descriptor.fields:
        if field_descriptor.name not in document:
            continue
        value = document[field_descriptor.name]
        nested = field_descriptor.message_type
        # Well-known types (timestamps, values) render as JSON scalars; map entries are left as they are.
        if (
            nested is not None
            and not nested.full_name.startswith("google.protobuf.")
            and not nested.GetOptions().map_entry
        ):
            if isinstance(value, list):
                value = [_in_field_order(nested, v) for v in value]
            elif isinstance(value, dict):
                value = _in_field_order(nested, value)
        ordered[field_descriptor.name] = value
    return ordered


def written_dict(key: str | None, written: Written[Any]) -> dict[str, Any]:
    """A write's document: the resource under `key` (None: the response's own fields), and its side effects."""
    return {
        **({key: as_dict(written.value)} if key else as_dict(written.value)),
        "config_revision": written.config_revision,
        "default_changed": written.default_changed,
        "default_model_config": written.default_model_config,
    }


def badges(*names: str) -> Text:
    text = Text()
    for name in names:
        if text:
            text.append(" ")
        # `cooling down until 14:03:07Z` takes the style of `cooling down`.
        style = BADGE_STYLES.get(name) or BADGE_STYLES.get(name.partition(" until ")[0], "")
        text.append(f"[{name}]", style=style)
    return text


def _when(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def clock(stamp: timestamp_pb2.Timestamp) -> str:
    """`14:03:07Z`: the time of day in UTC (a cooldown lasts at most 24 hours; JSON has the whole time)."""
    return _when(stamp).strftime("%H:%M:%SZ")


def cooldown_badges(attachment: resolver_pb2.ResolvedAttachment | resolver_pb2.AttachmentOutcome) -> list[str]:
    """`cooling down until HH:MM:SSZ` for an attachment the answer says is cooling down, else nothing."""
    if not attachment.HasField("cooldown_until"):
        return []
    return [f"cooling down until {clock(attachment.cooldown_until)}"]


def seconds(duration: duration_pb2.Duration) -> str:
    return f"{duration.ToTimedelta().total_seconds():g}s"


def short(name: str) -> str:
    """`providerConfigs/openai-main` -> `openai-main`."""
    return name.rpartition("/")[2]


def key_source(value: int) -> str:
    if value == common_pb2.KEY_SOURCE_UNSPECIFIED:
        return ""
    return common_pb2.KeySource.Name(value).removeprefix("KEY_SOURCE_").lower()  # type: ignore[arg-type]


def fixable_by(value: int) -> str:
    if value == common_pb2.FIXABLE_BY_UNSPECIFIED:
        return ""
    return common_pb2.FixableBy.Name(value).removeprefix("FIXABLE_BY_").lower()  # type: ignore[arg-type]


def policy_name(policy: common_pb2.CredentialPolicy) -> str:
    flags = (policy.central_api_key_enabled, policy.allow_user_api_key, policy.allow_central_api_key_fallback)
    return next((name for name, value in POLICIES.items() if value == flags), "custom")


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _printed(*renderables: Any) -> Render:
    def render(console: Console) -> None:
        for renderable in renderables:
            console.print(renderable)

    return render


# ------------------------------------------------------------------ provider configs


def cooling_models(
    health: provider_config_pb2.ProviderHealth, now: datetime | None = None
) -> list[provider_config_pb2.ModelHealth]:
    """The upstream models whose cooldown ends after `now` (default: the present)."""
    moment = now or datetime.now(UTC)
    return [m for m in health.models if m.HasField("cooldown_until") and _when(m.cooldown_until) > moment]


def provider_badges(provider: provider_config_pb2.ProviderConfig, now: datetime | None = None) -> Text:
    names = ["enabled" if provider.enabled else "disabled"]
    if not provider.central_credential_usable and provider.credential_policy.central_api_key_enabled:
        names.append("no key")
    if provider.credential_policy.allow_user_api_key and not provider.credential_policy.central_api_key_enabled:
        names.append("user key required")
    if provider.health.HasField("central_key_rejected_time"):
        names.append("central key rejected")
    if cooling_models(provider.health, now):
        names.append("cooling down")
    return badges(*names)


def health_policy_rows(policy: provider_config_pb2.HealthPolicy) -> list[tuple[str, str]]:
    """The provider config's own cooldown rule, field by field; `default` where the service's applies."""
    return [
        ("failure threshold", str(policy.failure_threshold) if policy.HasField("failure_threshold") else "default"),
        ("failure window", seconds(policy.failure_window) if policy.HasField("failure_window") else "default"),
        ("base cooldown", seconds(policy.base_cooldown) if policy.HasField("base_cooldown") else "default"),
        ("max cooldown", seconds(policy.max_cooldown) if policy.HasField("max_cooldown") else "default"),
    ]


def health_table(provider: provider_config_pb2.ProviderConfig, now: datetime | None = None) -> Table:
    """One row per upstream model with failures, trips or a cooldown: what attempt reports said."""
    moment = now or datetime.now(UTC)
    table = _table("UPSTREAM MODEL", "FAILURES", "TRIPS", "COOLDOWN UNTIL", "STATUS", title="health")
    for m in provider.health.models:
        until, status = "-", badges("failing") if m.consecutive_failures else Text("")
        if m.HasField("cooldown_until"):
            left = (_when(m.cooldown_until) - moment).total_seconds()
            until = m.cooldown_until.ToJsonString() + (f" ({left:.0f}s left)" if left > 0 else " (ended)")
            status = badges("cooling down") if left > 0 else status
        table.add_row(m.model, str(m.consecutive_failures), str(m.trips), until, status)
    return table


def providers_table(providers: Iterable[provider_config_pb2.ProviderConfig]) -> Render:
    table = _table("ID", "FAMILY", "DISPLAY NAME", "BASE URL", "POLICY", "CREDENTIAL", "STATUS")
    for p in providers:
        credential = key_source(p.central_credential_source) if p.central_credential_usable else "-"
        table.add_row(
            short(p.name),
            family(p.family),
            p.display_name,
            p.base_url or "-",
            policy_name(p.credential_policy),
            credential,
            provider_badges(p),
        )
    return _printed(table)


def provider_detail(p: provider_config_pb2.ProviderConfig, now: datetime | None = None) -> Render:
    table = _table("FIELD", "VALUE", title=f"provider config {short(p.name)}")
    health = p.health
    rejected = health.central_key_rejected_time.ToJsonString() if health.HasField("central_key_rejected_time") else ""
    for label, value in (
        ("family", family(p.family)),
        ("display name", p.display_name),
        ("base url", p.base_url or "-"),
        ("policy", policy_name(p.credential_policy)),
        ("stored key", "set" if p.has_api_key else "none"),
        ("central credential", key_source(p.central_credential_source) if p.central_credential_usable else "-"),
        *([("central key rejected", rejected)] if rejected else []),
        *health_policy_rows(p.health_policy),
        ("etag", p.etag),
    ):
        table.add_row(label, value)
    table.add_row("status", provider_badges(p, now))
    return _printed(table, *([health_table(p, now)] if p.health.models else []))


# ------------------------------------------------------------------ model configs


def model_badges(m: model_config_pb2.ModelConfig) -> Text:
    names = []
    if m.HasField("delete_time"):
        names.append("deleted")
    names.append("enabled" if m.enabled else "disabled")
    if m.is_default:
        names.append("default")
    return badges(*names)


def models_table(models: Iterable[model_config_pb2.ModelConfig]) -> Render:
    table = _table("ID", "FAMILY", "MODEL", "ATTACHMENTS (in order)", "STATUS")
    for m in models:
        order = " > ".join(short(a.provider_config) + (f"={a.model}" if a.model else "") for a in m.attachments)
        table.add_row(short(m.name), family(m.family), m.model, order or "-", model_badges(m))
    return _printed(table)


def attachment_badges(a: model_config_pb2.Attachment) -> Text:
    names = ["enabled" if a.enabled else "disabled"]
    if not a.central_credential_usable:
        names.append("user key required" if a.allow_user_api_key else "no key")
    return badges(*names)


def model_detail(m: model_config_pb2.ModelConfig) -> Render:
    facts = _table("FIELD", "VALUE", title=f"model config {short(m.name)}")
    for label, value in (
        ("family", family(m.family)),
        ("model", m.model),
        ("display name", m.display_name),
        ("context limit", str(m.context_limit)),
        ("etag", m.etag),
    ):
        facts.add_row(label, value)
    facts.add_row("status", model_badges(m))
    attachments = _table("POS", "PROVIDER", "FAMILY", "UPSTREAM MODEL", "STATUS", title="attachments")
    for a in m.attachments:
        upstream = a.effective_model + (" (override)" if a.model else "")
        attachments.add_row(str(a.position), short(a.provider_config), family(a.family), upstream, attachment_badges(a))
    return _printed(facts, attachments)


# ------------------------------------------------------------------ resolution


def resolution_table(answer: resolver_pb2.ResolveModelResponse) -> Render:
    table = _table(
        "POS",
        "PROVIDER",
        "FAMILY",
        "UPSTREAM MODEL",
        "KEY",
        "STATUS",
        "FIX BY",
        title=f"{short(answer.model_config)} at revision {answer.config_revision}",
    )
    rows: list[tuple[int, Sequence[Any]]] = []
    for index, a in enumerate((answer.selected, *answer.fallbacks)):
        status = badges("selected" if index == 0 else "fallback", *cooldown_badges(a))
        rows.append(
            (
                a.position,
                (
                    str(a.position),
                    short(a.provider_config),
                    family(a.family),
                    a.model,
                    key_source(a.key_source),
                    status,
                    "",
                ),
            )
        )
    for s in answer.skipped:
        rows.append(
            (
                s.position,
                (
                    str(s.position),
                    short(s.provider_config),
                    family(s.family),
                    s.model,
                    "-",
                    badges(SKIP_BADGES.get(s.reason, "skipped")),
                    fixable_by(s.fixable_by),
                ),
            )
        )
    for _, row in sorted(rows, key=lambda r: r[0]):
        table.add_row(*row)
    return _printed(table)


def redacted(answer: resolver_pb2.ResolveModelResponse) -> resolver_pb2.ResolveModelResponse:
    copy = resolver_pb2.ResolveModelResponse()
    copy.CopyFrom(answer)
    for attachment in (copy.selected, *copy.fallbacks):
        if attachment.api_key:
            attachment.api_key = REDACTED
    return copy


def explain_table(answer: resolver_pb2.ExplainResolutionResponse) -> Render:
    verdict = "usable" if answer.usable else "unusable"
    table = _table(
        "POS",
        "PROVIDER",
        "FAMILY",
        "UPSTREAM MODEL",
        "KEY",
        "STATUS",
        "FIX BY",
        "WHY",
        title=f"{short(answer.model_config)} at revision {answer.config_revision}",
    )
    fallback = False
    for o in answer.outcomes:
        if o.usable:
            selected = o.position == answer.selected_position
            status = badges("selected" if selected else "fallback", *cooldown_badges(o))
            fallback = fallback or not selected
        else:
            status = badges(SKIP_BADGES.get(o.reason, "skipped"))
        table.add_row(
            str(o.position),
            short(o.provider_config),
            family(o.family),
            o.model,
            key_source(o.key_source) or "-",
            status,
            fixable_by(o.fixable_by),
            o.message,
        )
    return _printed(badges(verdict), table)


def available_table(models: Iterable[resolver_pb2.AvailableModel]) -> Render:
    table = _table("MODEL CONFIG", "FAMILY", "MODEL", "SELECTED", "UPSTREAM MODEL", "STATUS")
    for m in models:
        names = ["usable" if m.usable else "unusable"] + (["degraded"] if m.degraded else [])
        names += ["default"] if m.is_default else []
        table.add_row(
            short(m.model_config),
            family(m.family),
            m.model,
            short(m.selected_provider_config) or "-",
            m.selected_model or "-",
            badges(*names),
        )
    return _printed(table)


# ------------------------------------------------------------------ user keys, tokens, audit


def user_keys_table(user: str, entries: Iterable[user_key_pb2.UserProviderConfig]) -> Render:
    table = _table("PROVIDER", "FAMILY", "DISPLAY NAME", "USER KEY", "STATUS", title=f"provider configs of {user}")
    for e in entries:
        names = ["user key" if e.has_user_api_key else "no key"]
        if e.user_api_key_required and not e.has_user_api_key:
            names.append("user key required")
        if e.HasField("key_rejected_time"):
            names.append("key rejected")
        table.add_row(
            short(e.provider_config),
            family(e.family),
            e.display_name,
            "set" if e.has_user_api_key else "-",
            badges(*names),
        )
    return _printed(table)


def role(value: int) -> str:
    return access_token_pb2.Role.Name(value).removeprefix("ROLE_").lower().replace("_", "-")  # type: ignore[arg-type]


def token_state(t: access_token_pb2.AccessToken) -> Text:
    if t.HasField("revoke_time"):
        return badges("revoked")
    return badges("active" if t.active else "expired")


def tokens_table(tokens: Iterable[access_token_pb2.AccessToken]) -> Render:
    table = _table("ID", "ROLES", "CREATED", "EXPIRES", "CREATOR", "STATUS")
    for t in tokens:
        expires = t.expire_time.ToJsonString() if t.HasField("expire_time") else "never"
        table.add_row(
            short(t.name),
            ", ".join(role(r) for r in t.roles),
            t.create_time.ToJsonString(),
            expires,
            t.creator,
            token_state(t),
        )
    return _printed(table)


def _value(value: Any) -> str:
    if value is None:
        return ""
    return json_format.MessageToJson(value, indent=None) if isinstance(value, Message) else str(value)


def audit_table(events: Iterable[audit_pb2.AuditEvent]) -> Render:
    table = _table("TIME", "ACTOR", "METHOD", "RESOURCE", "REVISION", "CHANGES")
    for e in events:
        changes = "; ".join(
            f"{c.field}: {_value(c.before) if c.HasField('before') else '-'} -> "
            f"{_value(c.after) if c.HasField('after') else '-'}"
            for c in e.changes
        )
        resource = e.resource + (f" (user {e.user})" if e.user else "")
        revision = str(e.config_revision) if e.config_revision else "-"
        table.add_row(e.event_time.ToJsonString(), e.actor, e.method, resource, revision, changes)
    return _printed(table)


# ------------------------------------------------------------------ the LiteLLM import


def import_plan(plan: Any, changes: Sequence[Any], applied: bool) -> Render:
    """The plan of `import litellm` (a `litellm_import.ImportPlan`), what applying it did, and what it left out."""
    actions = {(c.kind, c.id): c.action for c in changes}

    def action(kind: str, id_: str) -> str:
        return actions.get((kind, id_), "-") if applied else "planned"

    providers = _table("PROVIDER CONFIG", "FAMILY", "BASE URL", "KEY", "ACTION", title="provider configs")
    for p in plan.providers:
        providers.add_row(p.id, family(p.family), p.base_url or "-", p.key_label, action("provider_config", p.id))
    models = _table("MODEL CONFIG", "FAMILY", "MODEL", "ATTACHMENTS (in order)", "ACTION", title="model configs")
    for m in plan.models:
        order = " > ".join(
            a.provider_config_id + (f"={a.model_override}" if a.model_override else "") for a in m.attachments
        )
        models.add_row(m.id, family(m.family), m.model, order, action("model_config", m.id))
    left_out = _table("FROM", "WHAT", "WHY", title="not imported")
    for n in plan.not_imported:
        left_out.add_row(n.source, n.what, n.reason)
    footer = "applied" if applied else "dry run: nothing was written; --apply writes this plan"
    return _printed(providers, models, *([left_out] if plan.not_imported else []), footer)
