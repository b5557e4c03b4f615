"""`user-keys`, `tokens` and `audit`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ..calls import role_from_name
from . import render
from .session import Session, failures, read_secret

user_keys = typer.Typer(help="Users' own keys for provider configs that accept them.", no_args_is_help=True)
tokens = typer.Typer(help="Access tokens (admin): who may call what.", no_args_is_help=True)
audit = typer.Typer(help="The audit log: every change, who made it, field by field.", no_args_is_help=True)

User = Annotated[str, typer.Argument(help="the user id, as callers pass it to ResolveModel")]
Provider = Annotated[str, typer.Argument(help="provider config id")]


@user_keys.command("list")
def user_keys_list(ctx: typer.Context, user: User) -> None:
    """The provider configs that accept user keys, and whether this user has one for each."""
    session: Session = ctx.obj
    with failures(session):
        entries = list(session.client("user-keys").user_provider_configs(user))
        document = {"user": user, "user_provider_configs": [render.as_dict(e) for e in entries]}
        session.emit(document, render.user_keys_table(user, entries))


@user_keys.command("set")
def user_keys_set(
    ctx: typer.Context,
    user: User,
    provider_config: Provider,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", metavar="VAR", help="read the key from this environment variable")
    ] = None,
) -> None:
    """Store a user's own key: typed with no echo at a terminal, piped on stdin, or from --api-key-env."""
    session: Session = ctx.obj
    with failures(session):
        key = read_secret(api_key_env, f"{user}'s key for {provider_config}")
        written = session.client("user-keys").set_user_key(user, provider_config, key)
        session.emit(
            render.written_dict("user_provider_config", written), render.user_keys_table(user, [written.value])
        )


@user_keys.command("delete")
def user_keys_delete(ctx: typer.Context, user: User, provider_config: Provider) -> None:
    """Delete a user's key (nothing happens if there is none)."""
    session: Session = ctx.obj
    with failures(session):
        written = session.client("user-keys").delete_user_key(user, provider_config)
        document = {"user": user, "provider_config": provider_config, "config_revision": written.config_revision}
        session.emit(document, lambda console: console.print(f"deleted {user}'s key for {provider_config}"))


def parse_role(text: str) -> str:
    try:
        role_from_name(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    access_token: Annotated[str, typer.Argument(help="the token's name: a lower-case slug")],
    role: Annotated[
        list[str], typer.Option("--role", help="admin, reader, resolver or user-keys; repeatable", parser=parse_role)
    ],
    ttl_seconds: Annotated[int | None, typer.Option(help="lifetime in seconds (default: none)")] = None,
) -> None:
    """Create a token; its secret is printed this once."""
    session: Session = ctx.obj
    with failures(session):
        written = session.client("admin").create_access_token(access_token, role, ttl_seconds)
        document = render.written_dict(None, written)

        def show(console: Console) -> None:
            render.tokens_table([written.value.access_token])(console)
            console.print("the token's secret, shown this once:")
            console.print(written.value.token, markup=False)

        session.emit(document, show)


@tokens.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every token, revoked and expired ones included."""
    session: Session = ctx.obj
    with failures(session):
        items = list(session.client("admin").list_access_tokens())
        session.emit({"access_tokens": [render.as_dict(t) for t in items]}, render.tokens_table(items))


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, access_token: Annotated[str, typer.Argument(help="the token's name")]) -> None:
    """Revoke a token on every replica."""
    session: Session = ctx.obj
    with failures(session):
        written = session.client("admin").revoke_access_token(access_token)
        session.emit(render.written_dict("access_token", written), render.tokens_table([written.value]))


@audit.command("list")
def audit_list(
    ctx: typer.Context,
    filter: Annotated[
        str, typer.Option(help='e.g. resource = "providerConfigs/openai-main" AND event_time >= "2026-12-01T00:00:00Z"')
    ] = "",
    limit: Annotated[int, typer.Option(help="at most this many events, newest first (0: all)")] = 100,
) -> None:
    """Audit events, newest first."""
    session: Session = ctx.obj
    with failures(session):
        events = []
        for event in session.client("reader").list_audit_events(filter):
            events.append(event)
            if limit and len(events) >= limit:
                break
        session.emit({"audit_events": [render.as_dict(e) for e in events]}, render.audit_table(events))
