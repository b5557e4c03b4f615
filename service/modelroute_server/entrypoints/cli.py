"""`modelroute-server`: run the service or migrate its database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path

from ..adapters import database
from ..adapters.crypto import KeyringError, generate_keyring_spec
from ..adapters.key_rotation import rotate_keys
from ..settings import URL_SCHEMES, Settings, SettingsError, settings_from_env
from .logs import configure_logging
from .server import load_keyring, serve

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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    try:
        settings = _apply_flags(settings_from_env(), options)
    except SettingsError as exc:
        print(f"modelroute-server: {exc}", file=sys.stderr)
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
        else:
            asyncio.run(serve(settings))
    except (SettingsError, KeyringError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        print(f"modelroute-server: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(settings: Settings, target: str, downgrade: bool, allow_data_loss: bool) -> None:
    with database.engine_for(settings.database_url, settings.data_dir) as engine:
        if downgrade:
            database.downgrade(engine, target, allow_data_loss)
        else:
            database.upgrade(engine, target)
        log.info("schema migrated", extra={"revision": database.current_revision(engine)})


def _rotate_keys(settings: Settings) -> int:
    keyring = load_keyring(settings)
    with database.engine_for(settings.database_url, settings.data_dir) as engine:
        report = rotate_keys(engine, keyring)
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
        print(f"cannot decrypt with this keyring (left as is): {label}", file=sys.stderr)
    return 1 if report.undecryptable else 0


if __name__ == "__main__":
    sys.exit(main())
