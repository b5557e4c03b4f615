"""`resolve`, `explain`, `available`, and `import litellm`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from . import render
from .session import CommandFailed, ExitCode, Session, failures

importing = typer.Typer(help="Bring an existing configuration into modelroute.", no_args_is_help=True)

Model = Annotated[str, typer.Argument(help="model config id; empty: the default model")]
UserOption = Annotated[str, typer.Option("--user", help="the user to resolve for (their own keys count)")]


def _what_if(entries: list[str] | None, option: str) -> dict[str, bool]:
    parsed: dict[str, bool] = {}
    for entry in entries or ():
        provider, _, value = entry.partition("=")
        if not provider or value.lower() not in ("true", "false"):
            raise typer.BadParameter(f"{entry!r}: expected PROVIDER=true or PROVIDER=false", param_hint=option)
        parsed[provider] = value.lower() == "true"
    return parsed


def register(app: typer.Typer) -> None:
    app.command("resolve")(resolve)
    app.command("explain")(explain)
    app.command("available")(available)


def resolve(
    ctx: typer.Context,
    model: Model = "",
    user: UserOption = "",
    min_revision: Annotated[int, typer.Option(help="answer from at least this config revision")] = 0,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="print the keys (redacted otherwise)")] = False,
) -> None:
    """ResolveModel: the provider config to use, its fallbacks in order, and why the others were skipped."""
    session: Session = ctx.obj
    with failures(session):
        answer = session.client("resolver").resolve(model, user, min_revision)
        shown = answer if show_secrets else render.redacted(answer)
        session.emit(render.as_dict(shown), render.resolution_table(answer))


def explain(
    ctx: typer.Context,
    model: Model = "",
    user: UserOption = "",
    user_has_key: Annotated[
        list[str] | None,
        typer.Option("--user-has-key", metavar="PROVIDER=BOOL", help="what if the user had (or lacked) a key"),
    ] = None,
    provider_enabled: Annotated[
        list[str] | None,
        typer.Option("--provider-enabled", metavar="PROVIDER=BOOL", help="what if this provider were enabled"),
    ] = None,
    ignore_health: Annotated[
        bool, typer.Option("--ignore-health", help="what if no attachment were cooling down")
    ] = False,
) -> None:
    """ExplainResolution: the same walk for admins, never with secrets, with what-ifs."""
    session: Session = ctx.obj
    keys, enabled = _what_if(user_has_key, "--user-has-key"), _what_if(provider_enabled, "--provider-enabled")
    with failures(session):
        answer = session.client("reader").explain(model, user, keys, enabled, ignore_health=ignore_health)
        session.emit(render.as_dict(answer), render.explain_table(answer))


def available(ctx: typer.Context, user: UserOption = "") -> None:
    """ListAvailableModels: every enabled model and whether it is usable for the user."""
    session: Session = ctx.obj
    with failures(session):
        models = list(session.client("reader").available_models(user))
        session.emit({"models": [render.as_dict(m) for m in models]}, render.available_table(models))


@importing.command("litellm")
def import_litellm(
    ctx: typer.Context,
    config: Annotated[str, typer.Argument(help="a LiteLLM proxy config.yaml (its model_list)")],
    apply: Annotated[bool, typer.Option("--apply", help="write the plan (without it: a dry run)")] = False,
) -> None:
    """Plan (and with --apply, write) provider and model configs from a LiteLLM model_list.

    Deployments are grouped by model_name; `order` sets the priority; keys given as os.environ/NAME are read
    from this environment. Whatever cannot be mapped is listed, never dropped silently. Applying the same file
    again changes nothing.
    """
    from .. import litellm_import  # pyyaml is imported only by the command that needs it

    session: Session = ctx.obj
    with failures(session):
        try:
            plan = litellm_import.plan_import(litellm_import.load_config(config), os.environ)
        except litellm_import.LiteLLMImportError as error:
            raise CommandFailed(str(error), ExitCode.FAILED) from None
        document = {"plan": plan.to_dict(), "applied": apply, "changes": []}
        changes = litellm_import.apply_plan(plan, session.client("admin")) if apply else []
        document["changes"] = [{"kind": c.kind, "id": c.id, "action": c.action} for c in changes]

        session.emit(document, render.import_plan(plan, changes, apply))
