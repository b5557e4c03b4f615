"""`modelroute-server`: run the service, migrate its database, and the commands that talk to the database
directly (bootstrap tokens, audit pruning, key rotation), also while a server runs on the same data."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from ..adapters import database
from ..adapters.crypto import KeyringError, generate_keyring_spec
from ..adapters.key_rotation import rotate_keys
from ..adapters.repositories import WriteTimeouts
from ..domain.access import ROLE_NAMES
from ..domain.audit import AuditEntry, Caller, FieldChange
from ..domain.errors import DomainError
from ..service_layer import access_tokens, audit
from ..service_layer.context import ServiceContext
from ..settings import URL_SCHEMES, Settings, SettingsError, parse_duration, settings_from_env
from .logs import configure_logging, route_native_stderr
from .server import check_schema_served, load_keyring, serve, sql_context

log = logging.getLogger("modelroute")


def _parser() -> argparse.ArgumentParser:
    database_options = argparse.ArgumentParser(add_help=False)
    database_options.add_argument(
        "--database-url", help="PostgreSQL URL (env MODELROUTE_DATABASE_URL); omit for the embedded one"
    )
    database_options.add_argument(
        "--data-dir", type=Path, help="embedded mode's data directory (env MODELROUTE_DATA_DIR, default .modelroute)"
    )
    parser = argparse.ArgumentParser(prog="modelroute-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", parents=[database_options], help="run the gRPC service")
    run.add_argument("--listen", help="host:port (env MODELROUTE_LISTEN, default 127.0.0.1:50051)")
    run.add_argument(
        "--migrate", action="store_true", help="upgrade the schema before serving (always done when embedded)"
    )
    migrate = commands.add_parser("migrate", parents=[database_options], help="upgrade (or downgrade) the schema")
    migrate.add_argument("--to", default="head", help="target revision (default head)")
    migrate.add_argument("--downgrade", action="store_true", help="go down to --to")
    migrate.add_argument(
        "--allow-data-loss", action="store_true", help="let a downgrade drop tables that still hold rows"
    )
    commands.add_parser("generate-key", help="print a fresh keyring entry for MODELROUTE_KEYRING")
    commands.add_parser(
        "rotate-keys",
        parents=[database_options],
        help="re-encrypt every stored key under the keyring's primary (first) key; safe while serving",
    )
    tokens = commands.add_parser("tokens", help="bootstrap access tokens (the database directly)").add_subparsers(
        dest="verb", required=True
    )
    create = tokens.add_parser(
        "create", parents=[database_options], help="create a token and print its secret (shown this once)"
    )
    create.add_argument("--name", required=True, help="the token's id: a lower-case slug")
    create.add_argument(
        "--role", action="append", required=True, choices=ROLE_NAMES, help="a role it holds; repeat for several"
    )
    create.add_argument("--expires-in", type=_duration, help="lifetime such as 90d, 12h or 30m (default: none)")
    tokens.add_parser("list", parents=[database_options], help="every token, with its roles and state")
    revoke = tokens.add_parser("revoke", parents=[database_options], help="revoke a token on every replica")
    revoke.add_argument("name", help="the token's id (or accessTokens/ID)")
    audit_log = commands.add_parser("audit", help="the audit log").add_subparsers(dest="verb", required=True)
    prune = audit_log.add_parser("prune", parents=[database_options], help="remove events older than a date")
    prune.add_argument("--before", required=True, type=_moment, help="an ISO date or time (UTC unless it says)")
    return parser


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text, "the duration")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time such as 2026-11-01") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _apply_flags(settings: Settings, options: argparse.Namespace) -> Settings:
    changes: dict[str, object] = {}
    if getattr(options, "database_url", None):
        if not options.database_url.startswith(URL_SCHEMES):
            raise SettingsError("--database-url must be a PostgreSQL URL (postgresql://user@host:port/dbname)")
        changes["database_url"] = options.database_url
    if getattr(options, "data_dir", None):
        changes["data_dir"] = options.data_dir
    if getattr(options, "listen", None):
        changes["listen"] = options.listen
    if getattr(options, "migrate", False):
        changes["migrate"] = True
    return replace(settings, **changes)  # type: ignore[arg-type]


def _refuse(message: str, **details: object) -> None:
    """One line, and nothing else: the operator reads it before any log (JSON, as every line is)."""
    log.error(f"modelroute-server: {message}", extra=details)


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    route_native_stderr()
    configure_logging("INFO")
    try:
        settings = _apply_flags(settings_from_env(), options)
    except SettingsError as exc:
        _refuse(str(exc))
        return 2
    configure_logging(settings.log_level)
    command = options.command
    try:
        if command == "generate-key":
            print(generate_keyring_spec())
        elif command == "migrate":
            _migrate(settings, options.to, options.downgrade, options.allow_data_loss)
        elif command == "rotate-keys":
            return _rotate_keys(settings)
        elif command == "tokens":
            return _tokens(settings, options)
        elif command == "audit":
            return _prune_audit(settings, options.before)
        else:
            asyncio.run(serve(settings))
    except (SettingsError, KeyringError, RuntimeError) as exc:
        _refuse(str(exc))
        return 2
    except DomainError as error:
        violations = {v.field: v.description for v in error.field_violations}
        _refuse(error.message + "".join(f"; {f}: {d}" for f, d in violations.items()), reason=error.reason.value)
        return 1
    return 0


def _migrate(settings: Settings, target: str, downgrade: bool, allow_data_loss: bool) -> None:
    with database.engine_for(settings.database_url, settings.data_dir) as engine:
        if downgrade:
            database.downgrade(engine, target, allow_data_loss)
        else:
            database.upgrade(engine, target)
        log.info("schema migrated", extra={"revision": database.current_revision(engine)})


@contextmanager
def _service_context(settings: Settings) -> Iterator[tuple[sa.Engine, ServiceContext]]:
    """The use cases on the configured (or embedded) database, for a one-off command."""
    keyring = load_keyring(settings)
    with database.engine_for(settings.database_url, settings.data_dir) as engine:
        if settings.embedded:
            database.upgrade(engine)  # as `serve` does: embedded mode manages its own schema
        else:
            check_schema_served(engine, wait=False)
        timeouts = WriteTimeouts(settings.write_lock_timeout, settings.write_statement_timeout)
        yield engine, sql_context(engine, keyring, settings.deployment_keys, write_timeouts=timeouts)


def _tokens(settings: Settings, options: argparse.Namespace) -> int:
    actor = f"cli:tokens {options.verb}"
    with _service_context(settings) as (_, ctx):
        if options.verb == "create":
            request = access_tokens.AccessTokenInput(
                roles=access_tokens.parse_roles(options.role), ttl=options.expires_in
            )
            created = access_tokens.create_access_token(ctx, Caller(actor, "CreateAccessToken"), options.name, request)
            # A warning, so that it shows at every log level: the secret is never shown again.
            log.warning(
                f"created {created.token.name} ({', '.join(created.token.role_names)}); "
                "its secret is on standard output, shown this once: store it now"
            )
            print(created.secret)
        elif options.verb == "revoke":
            token_id = options.name.removeprefix("accessTokens/")
            revoked = access_tokens.revoke_access_token(ctx, Caller(actor, "RevokeAccessToken"), token_id)
            print(f"revoked {revoked.name}")
        else:
            now = datetime.now(UTC)
            rows = [("NAME", "ROLES", "STATE", "CREATED", "EXPIRES")]
            token = ""
            while True:
                page = access_tokens.list_access_tokens(ctx, 200, token)
                for t in page.items:
                    state = "revoked" if t.revoke_time else ("active" if t.active(now) else "expired")
                    rows.append(
                        (
                            t.id,
                            ",".join(t.role_names),
                            state,
                            _short_time(t.create_time),
                            _short_time(t.expire_time) or "never",
                        )
                    )
                token = page.next_page_token
                if not token:
                    break
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _short_time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


def _prune_audit(settings: Settings, before: datetime) -> int:
    with _service_context(settings) as (_, ctx):
        removed = audit.prune_audit_events(ctx, Caller("cli:audit prune", "PruneAuditEvents"), before)
    print(f"removed {removed} audit event(s) older than {before.isoformat()}")
    return 0


def _rotate_keys(settings: Settings) -> int:
    with _service_context(settings) as (engine, ctx):
        keyring = ctx.keyring
        report = rotate_keys(engine, keyring)
        with ctx.write(Caller("cli:rotate-keys", "RotateKeys"), takes_revision=False) as write:
            changes: tuple[FieldChange, ...] = (
                FieldChange("primary_key_id", None, keyring.primary_key_id),
                FieldChange("resealed", None, report.resealed),
            )
            if report.undecryptable:
                changes += (FieldChange("undecryptable", None, len(report.undecryptable)),)
            if report.resealed:  # a rotation that rewrote nothing changed nothing: no event
                write.record(AuditEntry("keyring", changes))
    log.info(
        "keys re-encrypted",
        extra={
            "resealed": report.resealed,
            "primary_key_id": keyring.primary_key_id,
            "undecryptable": report.undecryptable,
        },
    )
    print(f"re-encrypted {report.resealed} key(s) under {keyring.primary_key_id!r}")
    for label in report.undecryptable:
        log.error("cannot decrypt with this keyring (left as is)", extra={"key": label})
    return 1 if report.undecryptable else 0


if __name__ == "__main__":
    sys.exit(main())
