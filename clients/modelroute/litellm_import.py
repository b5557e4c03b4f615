"""Provider and model configs from a LiteLLM proxy `config.yaml` (its `model_list`).

`plan_import` turns the file into a plan without touching the service: deployments grouped by `model_name`
into one model config each, one provider config per distinct (family, `api_base`, key reference), and a list
of everything it could not map, so that nothing is dropped silently. `apply_plan` writes the plan: it reads
every config it targets first, then creates what is missing and updates the rest with update masks limited
to what the file says, so that applying the same file twice changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .calls import family_name, model_config_name, provider_config_name
from .errors import NotFoundError
from .v1 import common_pb2, model_config_pb2, provider_config_pb2

if TYPE_CHECKING:
    from .client import Client

ENV_PREFIX = "os.environ/"
INLINE_KEY = "inline"
DEFAULT_CONTEXT_LIMIT = 128_000
_ID_LENGTH = 63
_VALID_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")

# LiteLLM's provider prefix -> (family without api_base, family with api_base).
_FAMILIES: dict[str, tuple[common_pb2.Family.ValueType, common_pb2.Family.ValueType]] = {
    "openai": (common_pb2.FAMILY_OPENAI, common_pb2.FAMILY_OPENAI_COMPAT),
    "azure": (common_pb2.FAMILY_AZURE, common_pb2.FAMILY_AZURE),
    "anthropic": (common_pb2.FAMILY_ANTHROPIC, common_pb2.FAMILY_ANTHROPIC),
    "bedrock": (common_pb2.FAMILY_BEDROCK, common_pb2.FAMILY_BEDROCK),
    "gemini": (common_pb2.FAMILY_GOOGLE, common_pb2.FAMILY_GOOGLE),
    "vertex_ai": (common_pb2.FAMILY_GOOGLE, common_pb2.FAMILY_GOOGLE),
    "openrouter": (common_pb2.FAMILY_OPENROUTER, common_pb2.FAMILY_OPENROUTER),
    "vercel_ai_gateway": (common_pb2.FAMILY_VERCEL, common_pb2.FAMILY_VERCEL),
}
_NEEDS_BASE_URL = (common_pb2.FAMILY_AZURE, common_pb2.FAMILY_OPENAI_COMPAT)

# litellm_params that become a model config's call options (modelroute keeps them per model, not per deployment).
_PARAM_OPTIONS = {
    "max_tokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# model_info prices are per token; modelroute's are per million tokens.
_PRICE_OPTIONS = {
    "input_cost_per_token": "input_price_per_mtok",
    "output_cost_per_token": "output_price_per_mtok",
    "cache_read_input_token_cost": "cache_read_price_per_mtok",
    "cache_creation_input_token_cost": "cache_write_price_per_mtok",
}
_INT_OPTIONS = {"max_output_tokens", "top_k"}
_MAPPED_PARAMS = {"model", "api_key", "api_base", "order", *_PARAM_OPTIONS}
_MAPPED_INFO = {"max_input_tokens", *_PRICE_OPTIONS}


class LiteLLMImportError(Exception):
    """The file cannot be imported as it is; nothing was written."""


@dataclass(frozen=True)
class PlannedProvider:
    id: str
    family: common_pb2.Family.ValueType
    base_url: str
    # `os.environ/NAME`, `inline` for a key written in the file, or "" for none: then the provider config
    # relies on the service's deployment key for its family (where LiteLLM reads the family's variable).
    key_reference: str
    api_key: str = field(default="", repr=False, compare=False)

    @property
    def key_label(self) -> str:
        """What a person is shown of the key: its variable, `inline key` or `deployment key`; never the key."""
        if self.key_reference.startswith(ENV_PREFIX):
            return self.key_reference
        return "inline key" if self.key_reference else "deployment key"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": family_name(self.family),
            "base_url": self.base_url,
            "key_reference": self.key_reference,
        }


@dataclass(frozen=True)
class PlannedAttachment:
    provider_config_id: str
    # The upstream model name for this provider config when it is not the model's own; "" for none.
    model_override: str

    def to_dict(self) -> dict[str, Any]:
        return {"provider_config_id": self.provider_config_id, "model_override": self.model_override}


@dataclass(frozen=True)
class PlannedModel:
    id: str
    display_name: str
    family: common_pb2.Family.ValueType
    model: str
    # None: the file gives none (a new model gets DEFAULT_CONTEXT_LIMIT; an existing one keeps its own).
    context_limit: int | None
    options: Mapping[str, float | int]
    attachments: tuple[PlannedAttachment, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "family": family_name(self.family),
            "model": self.model,
            "context_limit": self.context_limit if self.context_limit is not None else DEFAULT_CONTEXT_LIMIT,
            "options": dict(self.options),
            "attachments": [a.to_dict() for a in self.attachments],
        }


@dataclass(frozen=True)
class NotImported:
    """Something in the file the import does not carry over: where it is, what it is, and why."""

    source: str
    what: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "what": self.what, "reason": self.reason}


@dataclass(frozen=True)
class ImportPlan:
    providers: tuple[PlannedProvider, ...]
    models: tuple[PlannedModel, ...]
    not_imported: tuple[NotImported, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "providers": [p.to_dict() for p in self.providers],
            "models": [m.to_dict() for m in self.models],
            "not_imported": [n.to_dict() for n in self.not_imported],
        }


@dataclass(frozen=True)
class Change:
    """What applying did to one config: `created`, `updated`, `restored` (undeleted) or `unchanged`."""

    kind: str  # provider_config or model_config
    id: str
    action: str


def slug(text: str) -> str:
    """Lower case, every other character `-`; dashes trimmed at both ends (an id starts and ends alphanumeric)."""
    return re.sub(r"[^a-z0-9]", "-", text.lower()).strip("-")


def load_config(path: str | Path) -> Mapping[str, Any]:
    import yaml  # only the import command needs pyyaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise LiteLLMImportError(f"{path}: {error.strerror or error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        # Only where and what: PyYAML's own text quotes the offending line, which may hold an inline key.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise LiteLLMImportError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(document, dict):
        raise LiteLLMImportError(f"{path}: expected a mapping with a model_list")
    return document


# ------------------------------------------------------------------ planning


@dataclass
class _Deployment:
    index: int
    model_name: str
    family: common_pb2.Family.ValueType
    upstream: str
    base_url: str
    key_reference: str
    api_key: str
    order: int | None
    options: dict[str, float | int]
    context_limit: int | None

    @property
    def source(self) -> str:
        return f"model_list[{self.index}] ({self.model_name})"

    @property
    def provider_identity(self) -> tuple[int, str, str]:
        """What makes one provider config: family, base URL and key (an inline key by its digest, so that
        the secret itself is never a dictionary key of the plan)."""
        key = self.key_reference
        if key == INLINE_KEY:
            key = "inline:" + hashlib.sha256(self.api_key.encode()).hexdigest()
        return (self.family, self.base_url, key)


class _Environment:
    """Reads `os.environ/NAME` values, and remembers every name that is missing."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.missing: list[str] = []

    def value(self, raw: object) -> tuple[str, str]:
        """(the value, its reference as the plan shows it)."""
        text = "" if raw is None else str(raw)
        if not text.startswith(ENV_PREFIX):
            return text, text
        name = text.removeprefix(ENV_PREFIX)
        if name not in self.environ:
            if name not in self.missing:
                self.missing.append(name)
            return "", text
        return self.environ[name], text


def plan_import(config: Mapping[str, Any], environ: Mapping[str, str]) -> ImportPlan:
    """The plan for a LiteLLM proxy config; raises LiteLLMImportError for what would make it wrong."""
    model_list = config.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise LiteLLMImportError("the file has no model_list (a list of deployments) to import")
    not_imported = [
        NotImported(section, "the whole section", "modelroute has no equivalent; configure it in modelroute by hand")
        for section in config
        if section != "model_list"
    ]
    env = _Environment(environ)
    deployments: list[_Deployment] = []
    for index, entry in enumerate(model_list):
        deployment = _deployment(index, entry, env, not_imported)
        if deployment is not None:
            deployments.append(deployment)
    if env.missing:
        raise LiteLLMImportError(
            "environment variables not set: "
            + ", ".join(env.missing)
            + " (named as os.environ/NAME in the file); nothing was written"
        )
    groups = _groups(deployments)
    providers = _providers(deployments)
    models = tuple(_model(model_id, group, providers, not_imported) for model_id, group in groups.items())
    return ImportPlan(tuple(providers.values()), models, tuple(not_imported))


def _deployment(index: int, entry: object, env: _Environment, not_imported: list[NotImported]) -> _Deployment | None:
    source = f"model_list[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
        not_imported.append(NotImported(source, "the entry", "expected model_name and litellm_params"))
        return None
    model_name = str(entry.get("model_name") or "")
    params: dict[str, Any] = entry["litellm_params"]
    raw_info = entry.get("model_info")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    source = f"{source} ({model_name or 'no model_name'})"
    litellm_model = str(params.get("model") or "")
    prefix, _, upstream = litellm_model.partition("/")
    if not model_name or not litellm_model:
        not_imported.append(NotImported(source, "the deployment", "model_name and litellm_params.model are required"))
        return None
    if "*" in model_name or "*" in upstream:
        not_imported.append(NotImported(source, litellm_model, "wildcard routing has no equivalent in modelroute"))
        return None
    if prefix not in _FAMILIES or not upstream:
        not_imported.append(
            NotImported(
                source,
                litellm_model,
                "no provider family for this prefix (known: " + ", ".join(f"{p}/" for p in _FAMILIES) + ")",
            )
        )
        return None
    base_url, _ = env.value(params.get("api_base"))
    if base_url and not _is_base_url(base_url):
        raise LiteLLMImportError(f"{source}: api_base must be an absolute http(s) URL with a host")
    family = _FAMILIES[prefix][1 if base_url else 0]
    if family in _NEEDS_BASE_URL and not base_url:
        not_imported.append(NotImported(source, litellm_model, f"a {family_name(family)} deployment needs api_base"))
        return None
    api_key, key_reference = env.value(params.get("api_key"))
    if api_key and not key_reference.startswith(ENV_PREFIX):
        key_reference = INLINE_KEY
    order = params.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
        raise LiteLLMImportError(f"{source}: order must be an integer, not {order!r}")
    options: dict[str, float | int] = {}
    for param, option in _PARAM_OPTIONS.items():
        if params.get(param) is not None:
            options[option] = _number(params[param], option, source)
    for cost, option in _PRICE_OPTIONS.items():
        if info.get(cost) is not None:
            options[option] = round(_number(info[cost], option, source) * 1_000_000, 6)
    context_limit = info.get("max_input_tokens")
    if context_limit is not None and (
        isinstance(context_limit, bool) or not isinstance(context_limit, int) or context_limit <= 0
    ):
        raise LiteLLMImportError(f"{source}: model_info.max_input_tokens must be a positive integer")
    unmapped = [f"litellm_params.{k}" for k in params if k not in _MAPPED_PARAMS]
    unmapped += [f"model_info.{k}" for k in info if k not in _MAPPED_INFO]
    if unmapped:
        not_imported.append(NotImported(source, ", ".join(unmapped), "no per-attachment equivalent in modelroute"))
    return _Deployment(
        index, model_name, family, upstream, base_url, key_reference, api_key, order, options, context_limit
    )


def _is_base_url(text: str) -> bool:
    # Checked here, before anything is written, so that applying is not refused halfway through.
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _number(value: object, option: str, source: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LiteLLMImportError(f"{source}: {option} must be a number, not {value!r}")
    return int(value) if option in _INT_OPTIONS else float(value)


def _groups(deployments: Sequence[_Deployment]) -> dict[str, list[_Deployment]]:
    """Deployments by model id, each group in attachment order (by `order`, then the unordered; ties by file)."""
    groups: dict[str, list[_Deployment]] = {}
    names: dict[str, str] = {}
    for deployment in deployments:
        model_id = slug(deployment.model_name)
        other = names.setdefault(model_id, deployment.model_name)
        if other != deployment.model_name:
            raise LiteLLMImportError(
                f"model_name {other!r} and {deployment.model_name!r} both become the model id {model_id!r}; "
                "rename one of them"
            )
        if not _VALID_ID.match(model_id):
            raise LiteLLMImportError(
                f"model_name {deployment.model_name!r} gives {model_id!r}, not a valid model config id "
                "(a letter first, at most 63 letters, digits and dashes)"
            )
        groups.setdefault(model_id, []).append(deployment)
    for group in groups.values():
        group.sort(key=lambda d: (d.order is None, d.order or 0, d.index))
    return groups


def _providers(deployments: Sequence[_Deployment]) -> dict[tuple[int, str, str], PlannedProvider]:
    """One provider config per distinct (family, api_base, key), named after the family and the base URL's host."""
    providers: dict[tuple[int, str, str], PlannedProvider] = {}
    taken: set[str] = set()
    for d in deployments:
        identity = d.provider_identity
        if identity in providers:
            continue
        host = (urlsplit(d.base_url).hostname or "") if d.base_url else ""
        stem = slug(f"{family_name(d.family)}-{host}")[:_ID_LENGTH].rstrip("-")
        provider_id, n = stem, 1
        while provider_id in taken:
            n += 1
            provider_id = f"{stem[: _ID_LENGTH - len(str(n)) - 1].rstrip('-')}-{n}"
        taken.add(provider_id)
        providers[identity] = PlannedProvider(provider_id, d.family, d.base_url, d.key_reference, d.api_key)
    return providers


def _model(
    model_id: str,
    group: Sequence[_Deployment],
    providers: Mapping[tuple[int, str, str], PlannedProvider],
    not_imported: list[NotImported],
) -> PlannedModel:
    first = group[0]
    attachments: list[PlannedAttachment] = []
    attached: dict[str, _Deployment] = {}
    for d in group:
        provider = providers[d.provider_identity]
        if provider.id in attached:
            not_imported.append(
                NotImported(
                    d.source,
                    f"a second deployment through provider config {provider.id}",
                    f"a model attaches a provider config once; kept {attached[provider.id].source}",
                )
            )
            continue
        attached[provider.id] = d
        same = d.upstream == first.upstream and d.family == first.family
        attachments.append(PlannedAttachment(provider.id, "" if same else d.upstream))
    for d in group[1:]:
        differing = sorted(k for k in {*d.options, *first.options} if d.options.get(k) != first.options.get(k))
        if d.context_limit != first.context_limit:
            differing.append("context_limit")
        if differing:
            not_imported.append(
                NotImported(
                    d.source,
                    ", ".join(differing),
                    f"modelroute keeps these per model config; took those of {first.source}",
                )
            )
    return PlannedModel(
        model_id,
        first.model_name,
        first.family,
        first.upstream,
        first.context_limit,
        dict(first.options),
        tuple(attachments),
    )


# ------------------------------------------------------------------ applying


def apply_plan(plan: ImportPlan, client: Client) -> list[Change]:
    """Write the plan: read every target first (a conflict found then writes nothing), then create or update."""
    current_providers = {p.id: _get(client.get_provider_config, p.id) for p in plan.providers}
    current_models = {m.id: _get(client.get_model_config, m.id) for m in plan.models}
    for p in plan.providers:
        existing = current_providers[p.id]
        if existing is not None and existing.family != p.family:
            raise LiteLLMImportError(
                f"provider config {p.id} exists with family {family_name(existing.family)}, "
                f"the file needs {family_name(p.family)}; rename or delete it; nothing was written"
            )
    # Keyless provider configs first: each relies on the service's deployment key for its family, which only
    # the service knows; when it has none, the first write is the one refused and nothing else is written.
    keyless_first = sorted(plan.providers, key=lambda p: bool(p.key_reference))
    changes = [_apply_provider(client, p, current_providers[p.id]) for p in keyless_first]
    changes += [_apply_model(client, m, current_models[m.id]) for m in plan.models]
    return changes


def _get(read: Any, config_id: str) -> Any:
    try:
        return read(config_id)
    except NotFoundError:
        return None


def _apply_provider(
    client: Client, planned: PlannedProvider, current: provider_config_pb2.ProviderConfig | None
) -> Change:
    message = provider_config_pb2.ProviderConfig(
        name=provider_config_name(planned.id), family=planned.family, base_url=planned.base_url, api_key=planned.api_key
    )
    if current is None:
        client.create_provider_config(planned.id, message)
        return Change("provider_config", planned.id, "created")
    message.etag = current.etag
    # The stored key is compared by the service: the same key again is no change.
    paths = ["base_url", *(["api_key"] if planned.api_key else [])]
    written = client.update_provider_config(message, paths)
    return Change("provider_config", planned.id, "unchanged" if written.value.etag == current.etag else "updated")


def _apply_model(client: Client, planned: PlannedModel, current: model_config_pb2.ModelConfig | None) -> Change:
    message = model_config_pb2.ModelConfig(
        name=model_config_name(planned.id),
        family=planned.family,
        model=planned.model,
        display_name=planned.display_name,
        context_limit=planned.context_limit if planned.context_limit is not None else DEFAULT_CONTEXT_LIMIT,
        options=model_config_pb2.ModelCallOptions(**planned.options),  # type: ignore[arg-type]
        attachments=[
            model_config_pb2.Attachment(
                provider_config=provider_config_name(a.provider_config_id), model=a.model_override
            )
            for a in planned.attachments
        ],
    )
    if current is None:
        client.create_model_config(planned.id, message)
        return Change("model_config", planned.id, "created")
    action = "updated"
    if current.HasField("delete_time"):
        current = client.undelete_model_config(planned.id, current.etag).value
        action = "restored"
    message.etag = current.etag
    paths = ["family", "model", "display_name", "attachments", *(f"options.{o}" for o in planned.options)]
    if planned.context_limit is not None:
        paths.append("context_limit")
    written = client.update_model_config(message, paths)
    if action == "updated" and written.value.etag == current.etag:
        action = "unchanged"
    return Change("model_config", planned.id, action)
