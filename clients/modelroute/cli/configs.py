"""`providers` and `models`: provider configs, model configs and their ordered attachments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from google.protobuf.message import Message
from rich.console import Console

from ..calls import Written, family_from_name, health_policy, model_config_name, provider_config_name
from ..v1 import common_pb2, model_config_pb2, provider_config_pb2
from . import render
from .session import CommandFailed, ExitCode, Session, failures, read_secret

providers = typer.Typer(
    help="Provider configs: a family, a base URL, a credential policy and a key.", no_args_is_help=True
)
models = typer.Typer(
    help="Model configs and their priority lists (attachments); positions count from 0, as in the API.",
    no_args_is_help=True,
)

ADMIN, READER = "admin", "reader"


def parse_family(text: str) -> common_pb2.Family.ValueType:
    try:
        return family_from_name(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_attachment(text: str) -> model_config_pb2.Attachment:
    """`ID` or `ID=UPSTREAM`: a provider config, and the upstream model name to send it instead of the model's."""
    provider_config_id, _, upstream = text.partition("=")
    if not provider_config_id:
        raise typer.BadParameter(f"{text!r}: expected ID or ID=UPSTREAM_MODEL")
    return model_config_pb2.Attachment(provider_config=provider_config_name(provider_config_id), model=upstream)


def policy(name: str) -> common_pb2.CredentialPolicy:
    central, user, fallback = render.POLICIES[name]
    return common_pb2.CredentialPolicy(
        central_api_key_enabled=central, allow_user_api_key=user, allow_central_api_key_fallback=fallback
    )


Family = Annotated[
    str,
    typer.Option(
        "--family", help="openai, openai-compat, azure, anthropic, bedrock, google, openrouter or vercel (any case)"
    ),
]
Policy = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="central-only (the stored key), user-only (users' own keys), user-required (a user key, the "
        "central key enabled for nobody else) or user-preferred (a user key, else the central key)",
    ),
]
KeyEnv = Annotated[
    str | None, typer.Option("--api-key-env", metavar="VAR", help="read the key from this environment variable")
]
Etag = Annotated[str, typer.Option("--etag", help="refuse unless the resource still has this etag (from get)")]
FailureThreshold = Annotated[
    int | None,
    typer.Option("--failure-threshold", metavar="N", help="health policy: failure reports that start a cooldown"),
]
FailureWindow = Annotated[
    float | None,
    typer.Option("--failure-window", metavar="SECONDS", help="health policy: the failures must fall within this"),
]
BaseCooldown = Annotated[
    float | None,
    typer.Option("--base-cooldown", metavar="SECONDS", help="health policy: the first cooldown (each trip doubles it)"),
]
MaxCooldown = Annotated[
    float | None, typer.Option("--max-cooldown", metavar="SECONDS", help="health policy: the longest cooldown")
]
ATTACHMENT_HELP = (
    "provider config id, in priority order; ID=UPSTREAM sends that provider UPSTREAM instead of the model's "
    "name (needed for a provider of another family)"
)


def given(message: Message, **values: object) -> list[str]:
    """Sets the options that were given (not None) on `message`; their names are the update mask."""
    paths = [name for name, value in values.items() if value is not None]
    for name in paths:
        setattr(message, name, values[name])
    return paths


def _health_policy(
    failure_threshold: int | None, failure_window: float | None, base_cooldown: float | None, max_cooldown: float | None
) -> provider_config_pb2.HealthPolicy | None:
    """The health policy the options give, or None when none was given."""
    if (failure_threshold, failure_window, base_cooldown, max_cooldown) == (None, None, None, None):
        return None
    return health_policy(failure_threshold, failure_window, base_cooldown, max_cooldown)


def _policy_choice(value: str | None) -> str | None:
    if value is not None and value not in render.POLICIES:
        raise typer.BadParameter(f"unknown policy {value!r}; valid: {', '.join(render.POLICIES)}")
    return value


# ------------------------------------------------------------------ providers


def _show_provider(session: Session, provider: provider_config_pb2.ProviderConfig) -> None:
    session.emit(render.as_dict(provider), render.provider_detail(provider))


def _provider_written(session: Session, written: Written[provider_config_pb2.ProviderConfig]) -> None:
    session.emit(render.written_dict("provider_config", written), render.provider_detail(written.value))


@providers.command("list")
def providers_list(
    ctx: typer.Context, filter: Annotated[str, typer.Option(help='AIP-160 filter, e.g. family = "FAMILY_AZURE"')] = ""
) -> None:
    """Every provider config."""
    session: Session = ctx.obj
    with failures(session):
        items = list(session.client(READER).list_provider_configs(filter=filter))
        session.emit({"provider_configs": [render.as_dict(p) for p in items]}, render.providers_table(items))


@providers.command("get")
def providers_get(
    ctx: typer.Context, provider_config: Annotated[str, typer.Argument(help="provider config id")]
) -> None:
    """One provider config (its key is never shown: only whether one is stored)."""
    session: Session = ctx.obj
    with failures(session):
        _show_provider(session, session.client(READER).get_provider_config(provider_config))


@providers.command("create")
def providers_create(
    ctx: typer.Context,
    provider_config: Annotated[str, typer.Argument(help="the new id: a lower-case slug")],
    family: Family,
    display_name: Annotated[str, typer.Option(help="a name for people")] = "",
    base_url: Annotated[str, typer.Option(help="the provider's endpoint (required for azure and openai-compat)")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="create it disabled")] = False,
    credential_policy: Policy = "central-only",
    api_key_env: KeyEnv = None,
    api_key_stdin: Annotated[
        bool, typer.Option("--api-key-stdin", help="read the key from stdin (no echo at a terminal)")
    ] = False,
    failure_threshold: FailureThreshold = None,
    failure_window: FailureWindow = None,
    base_cooldown: BaseCooldown = None,
    max_cooldown: MaxCooldown = None,
) -> None:
    """Create a provider config; its key comes from --api-key-env or --api-key-stdin, never the command line.
    Health policy options not given take the service's defaults."""
    session: Session = ctx.obj
    with failures(session):
        message = provider_config_pb2.ProviderConfig(
            family=parse_family(family),
            display_name=display_name,
            base_url=base_url,
            enabled=not disabled,
            credential_policy=policy(_policy_choice(credential_policy) or "central-only"),
            health_policy=_health_policy(failure_threshold, failure_window, base_cooldown, max_cooldown),
        )
        if api_key_env or api_key_stdin:
            message.api_key = read_secret(api_key_env, "API key")
        _provider_written(session, session.client(ADMIN).create_provider_config(provider_config, message))


@providers.command("update")
def providers_update(
    ctx: typer.Context,
    provider_config: Annotated[str, typer.Argument(help="provider config id")],
    display_name: Annotated[str | None, typer.Option(help="rename it (for people; the id stays)")] = None,
    base_url: Annotated[str | None, typer.Option(help="a new endpoint; '' clears it")] = None,
    credential_policy: Policy = None,
    failure_threshold: FailureThreshold = None,
    failure_window: FailureWindow = None,
    base_cooldown: BaseCooldown = None,
    max_cooldown: MaxCooldown = None,
    clear_health_policy: Annotated[
        bool, typer.Option("--clear-health-policy", help="drop its own health policy: the service's defaults apply")
    ] = False,
    etag: Etag = "",
) -> None:
    """Change a provider config's display name, base URL, credential policy or health policy (only the options
    given). The health policy options replace the whole policy: those not given take the service's defaults."""
    session: Session = ctx.obj
    with failures(session):
        chosen = _policy_choice(credential_policy)
        health = _health_policy(failure_threshold, failure_window, base_cooldown, max_cooldown)
        if health is not None and clear_health_policy:
            raise CommandFailed("--clear-health-policy takes no other health policy option")
        if clear_health_policy:
            health = provider_config_pb2.HealthPolicy()
        message = provider_config_pb2.ProviderConfig(
            name=provider_config_name(provider_config),
            etag=etag,
            credential_policy=policy(chosen) if chosen else None,
            health_policy=health,
        )
        paths = given(message, display_name=display_name, base_url=base_url)
        paths += ["credential_policy"] if chosen else []
        paths += ["health_policy"] if health is not None else []
        if not paths:
            raise CommandFailed(
                "nothing to change: give --display-name, --base-url, --policy, a health policy option "
                "(--failure-threshold, --failure-window, --base-cooldown, --max-cooldown) or --clear-health-policy"
            )
        _provider_written(session, session.client(ADMIN).update_provider_config(message, paths))


def _set_provider_enabled(ctx: typer.Context, provider_config: str, enabled: bool) -> None:
    session: Session = ctx.obj
    with failures(session):
        message = provider_config_pb2.ProviderConfig(name=provider_config_name(provider_config), enabled=enabled)
        _provider_written(session, session.client(ADMIN).update_provider_config(message, ["enabled"]))


@providers.command("enable")
def providers_enable(
    ctx: typer.Context, provider_config: Annotated[str, typer.Argument(help="provider config id")]
) -> None:
    """Enable a provider config: resolution may select it again."""
    _set_provider_enabled(ctx, provider_config, True)


@providers.command("disable")
def providers_disable(
    ctx: typer.Context, provider_config: Annotated[str, typer.Argument(help="provider config id")]
) -> None:
    """Disable a provider config: resolution skips it (PROVIDER_DISABLED) and falls back."""
    _set_provider_enabled(ctx, provider_config, False)


@providers.command("set-key")
def providers_set_key(
    ctx: typer.Context,
    provider_config: Annotated[str, typer.Argument(help="provider config id")],
    api_key_env: KeyEnv = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the stored key instead")] = False,
) -> None:
    """Store a new central key: typed with no echo at a terminal, piped on stdin, or from --api-key-env."""
    session: Session = ctx.obj
    with failures(session):
        message = provider_config_pb2.ProviderConfig(name=provider_config_name(provider_config))
        if not clear:
            message.api_key = read_secret(api_key_env, f"API key for {provider_config}")
        _provider_written(session, session.client(ADMIN).update_provider_config(message, ["api_key"]))


@providers.command("reset-health")
def providers_reset_health(
    ctx: typer.Context, provider_config: Annotated[str, typer.Argument(help="provider config id")]
) -> None:
    """End every cooldown of a provider config and clear its central key's rejected mark (a user's rejected
    key stays until the user sets a new one). Safe to run twice."""
    session: Session = ctx.obj
    with failures(session):
        _provider_written(session, session.client(ADMIN).reset_provider_health(provider_config))


@providers.command("delete")
def providers_delete(
    ctx: typer.Context,
    provider_config: Annotated[str, typer.Argument(help="provider config id")],
    force: Annotated[
        bool, typer.Option("--force", help="detach it from every model first (models left with none are deleted)")
    ] = False,
    etag: Etag = "",
) -> None:
    """Delete a provider config (and its user keys); refused while models use it, unless --force."""
    session: Session = ctx.obj
    with failures(session):
        written = session.client(ADMIN).delete_provider_config(provider_config, force=force, etag=etag)
        document = render.written_dict(None, written)

        def show(console: Console) -> None:
            response = written.value
            console.print(f"deleted {provider_config}")
            for label, names in (
                ("detached from", response.touched_model_configs),
                ("deleted", response.deleted_model_configs),
            ):
                if names:
                    console.print(f"  {label}: {', '.join(render.short(n) for n in names)}")
            if written.default_changed:
                console.print(f"  default model is now {render.short(written.default_model_config) or '(none)'}")

        session.emit(document, show)


# ------------------------------------------------------------------ models


def _model_written(session: Session, written: Written[model_config_pb2.ModelConfig]) -> None:
    session.emit(render.written_dict("model_config", written), render.model_detail(written.value))
    if written.default_changed and not session.json:
        session.note(f"default model is now {render.short(written.default_model_config) or '(none)'}")


@models.command("list")
def models_list(
    ctx: typer.Context,
    show_deleted: Annotated[bool, typer.Option("--show-deleted", help="include soft-deleted models")] = False,
    filter: Annotated[str, typer.Option(help='AIP-160 filter, e.g. family = "FAMILY_OPENAI"')] = "",
) -> None:
    """Every model config, with its attachments in priority order."""
    session: Session = ctx.obj
    with failures(session):
        items = list(session.client(READER).list_model_configs(filter=filter, show_deleted=show_deleted))
        session.emit({"model_configs": [render.as_dict(m) for m in items]}, render.models_table(items))


@models.command("get")
def models_get(ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")]) -> None:
    """One model config and its attachments."""
    session: Session = ctx.obj
    with failures(session):
        model = session.client(READER).get_model_config(model_config)
        session.emit(render.as_dict(model), render.model_detail(model))


@models.command("create")
def models_create(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="the new id: a lower-case slug")],
    family: Family,
    model: Annotated[str, typer.Option(help="the upstream model name sent to providers")],
    context_limit: Annotated[int, typer.Option(help="the model's context window, in tokens")],
    provider: Annotated[
        list[str] | None, typer.Option("--provider", metavar="ID[=UPSTREAM]", help=ATTACHMENT_HELP)
    ] = None,
    display_name: Annotated[str, typer.Option(help="a name for people")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="create it disabled")] = False,
    default: Annotated[bool, typer.Option("--default", help="make it the default model")] = False,
) -> None:
    """Create a model config. Without --provider, the one provider config of its family is attached."""
    session: Session = ctx.obj
    with failures(session):
        message = model_config_pb2.ModelConfig(
            family=parse_family(family),
            model=model,
            context_limit=context_limit,
            display_name=display_name,
            enabled=not disabled,
            attachments=[parse_attachment(p) for p in provider or ()],
        )
        if default:
            message.is_default = True
        _model_written(session, session.client(ADMIN).create_model_config(model_config, message))


@models.command("update")
def models_update(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="model config id")],
    model: Annotated[str | None, typer.Option(help="a new upstream model name")] = None,
    display_name: Annotated[str | None, typer.Option(help="rename it (for people; the id stays)")] = None,
    context_limit: Annotated[int | None, typer.Option(help="a new context window, in tokens")] = None,
    etag: Etag = "",
) -> None:
    """Change a model config's upstream name, display name or context limit (only the options given)."""
    session: Session = ctx.obj
    with failures(session):
        message = model_config_pb2.ModelConfig(name=model_config_name(model_config), etag=etag)
        paths = given(message, model=model, display_name=display_name, context_limit=context_limit)
        if not paths:
            raise CommandFailed("nothing to change: give --model, --display-name or --context-limit")
        _model_written(session, session.client(ADMIN).update_model_config(message, paths))


def _update_model(ctx: typer.Context, model_config: str, paths: list[str], **fields: object) -> None:
    session: Session = ctx.obj
    with failures(session):
        message = model_config_pb2.ModelConfig(name=model_config_name(model_config), **fields)  # type: ignore[arg-type]
        _model_written(session, session.client(ADMIN).update_model_config(message, paths))


@models.command("enable")
def models_enable(ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")]) -> None:
    """Enable a model config."""
    _update_model(ctx, model_config, ["enabled"], enabled=True)


@models.command("disable")
def models_disable(ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")]) -> None:
    """Disable a model config (a disabled default hands the default on)."""
    _update_model(ctx, model_config, ["enabled"], enabled=False)


@models.command("set-default")
def models_set_default(
    ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")]
) -> None:
    """Make this model the default (resolution without a model name serves it)."""
    _update_model(ctx, model_config, ["is_default"], is_default=True)


def _edit_attachments(
    ctx: typer.Context,
    model_config: str,
    edit: Callable[[list[model_config_pb2.Attachment]], list[model_config_pb2.Attachment]],
) -> None:
    """Reads the list, edits it and writes it back under the etag read, so a concurrent change is refused
    (ABORTED: run the command again) rather than lost."""
    session: Session = ctx.obj
    with failures(session):
        client = session.client(ADMIN)
        current = client.get_model_config(model_config)
        entries = [
            model_config_pb2.Attachment(provider_config=a.provider_config, model=a.model) for a in current.attachments
        ]
        message = model_config_pb2.ModelConfig(name=current.name, etag=current.etag, attachments=edit(entries))
        _model_written(session, client.update_model_config(message, ["attachments"]))


def _index_of(entries: list[model_config_pb2.Attachment], provider_config: str) -> int:
    name = provider_config_name(provider_config)
    for index, entry in enumerate(entries):
        if entry.provider_config == name:
            return index
    raise CommandFailed(f"{provider_config} is not attached to this model", ExitCode.NOT_FOUND)


@models.command("attach")
def models_attach(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="model config id")],
    provider: Annotated[str, typer.Argument(metavar="ID[=UPSTREAM]", help=ATTACHMENT_HELP)],
    position: Annotated[
        int | None, typer.Option("--position", help="its place (0 = tried first); default: last")
    ] = None,
) -> None:
    """Attach a provider config to a model, last or at --position."""
    entry = parse_attachment(provider)

    def edit(entries: list[model_config_pb2.Attachment]) -> list[model_config_pb2.Attachment]:
        entries.insert(len(entries) if position is None else position, entry)
        return entries

    _edit_attachments(ctx, model_config, edit)


@models.command("detach")
def models_detach(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="model config id")],
    provider_config: Annotated[str, typer.Argument(help="provider config id")],
) -> None:
    """Detach a provider config from a model (the rest keep their order)."""

    def edit(entries: list[model_config_pb2.Attachment]) -> list[model_config_pb2.Attachment]:
        del entries[_index_of(entries, provider_config)]
        return entries

    _edit_attachments(ctx, model_config, edit)


@models.command("move")
def models_move(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="model config id")],
    provider_config: Annotated[str, typer.Argument(help="provider config id")],
    up: Annotated[bool, typer.Option("--up", help="one place earlier")] = False,
    down: Annotated[bool, typer.Option("--down", help="one place later")] = False,
    to: Annotated[int | None, typer.Option("--to", metavar="N", help="to position N (0 = tried first)")] = None,
) -> None:
    """Move an attachment one place up or down, or to position N."""
    if [up, down, to is not None].count(True) != 1:
        raise typer.BadParameter("give exactly one of --up, --down or --to N")

    def edit(entries: list[model_config_pb2.Attachment]) -> list[model_config_pb2.Attachment]:
        index = _index_of(entries, provider_config)
        target = index - 1 if up else index + 1 if down else to if to is not None else index
        if not 0 <= target < len(entries):
            raise CommandFailed(f"position {target} is outside 0..{len(entries) - 1}")
        entries.insert(target, entries.pop(index))
        return entries

    _edit_attachments(ctx, model_config, edit)


@models.command("set-providers")
def models_set_providers(
    ctx: typer.Context,
    model_config: Annotated[str, typer.Argument(help="model config id")],
    providers: Annotated[list[str], typer.Argument(metavar="ID[=UPSTREAM]...", help=ATTACHMENT_HELP)],
) -> None:
    """Replace a model's whole priority list."""
    entries = [parse_attachment(p) for p in providers]
    _edit_attachments(ctx, model_config, lambda _: entries)


@models.command("delete")
def models_delete(
    ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")], etag: Etag = ""
) -> None:
    """Soft-delete a model config (undelete brings it back)."""
    session: Session = ctx.obj
    with failures(session):
        _model_written(session, session.client(ADMIN).delete_model_config(model_config, etag))


@models.command("undelete")
def models_undelete(
    ctx: typer.Context, model_config: Annotated[str, typer.Argument(help="model config id")], etag: Etag = ""
) -> None:
    """Restore a soft-deleted model config."""
    session: Session = ctx.obj
    with failures(session):
        _model_written(session, session.client(ADMIN).undelete_model_config(model_config, etag))
