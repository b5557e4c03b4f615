"""Configuration from the environment, overridable by command-line flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .domain import rules
from .domain.families import Family

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = ".modelroute"
DEPLOYMENT_KEY_PREFIX = "MODELROUTE_DEPLOYMENT_KEY_"


class SettingsError(ValueError):
    """A configuration problem; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    # None: run an embedded PostgreSQL in `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    keyring: str | None = field(default=None, repr=False)
    deployment_keys: Mapping[Family, str] = field(default_factory=dict, repr=False)
    migrate: bool = False
    log_level: str = "INFO"

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def deployment_key_variable(family: Family) -> str:
    return DEPLOYMENT_KEY_PREFIX + family.name


def deployment_keys_from_env(environ: Mapping[str, str]) -> dict[Family, str]:
    """One optional key per family: MODELROUTE_DEPLOYMENT_KEY_OPENAI, ..._OPENAI_COMPAT, ..."""
    keys: dict[Family, str] = {}
    known = {deployment_key_variable(f): f for f in Family}
    for name, value in environ.items():
        if not name.startswith(DEPLOYMENT_KEY_PREFIX) or value == "":
            continue
        family = known.get(name)
        if family is None:
            raise SettingsError(f"{name} names no family; use one of {', '.join(sorted(known))}")
        problem = rules.api_key_problem(value)
        if problem:
            raise SettingsError(f"{name} {problem}")
        keys[family] = value
    return keys


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def _read_keyring_file(path: str | None) -> str | None:
    """The keyring from a file (a mounted secret), so it never sits in the environment or argv."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise SettingsError(f"MODELROUTE_KEYRING_FILE: cannot read {path} ({exc.strerror})") from None


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    url = env.get("MODELROUTE_DATABASE_URL") or None
    if url is not None and not url.startswith(URL_SCHEMES):
        raise SettingsError("MODELROUTE_DATABASE_URL must be a PostgreSQL URL (postgresql://user@host:port/dbname)")
    level = env.get("MODELROUTE_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"MODELROUTE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    return Settings(
        listen=env.get("MODELROUTE_LISTEN", DEFAULT_LISTEN),
        database_url=url,
        data_dir=Path(env.get("MODELROUTE_DATA_DIR", DEFAULT_DATA_DIR)),
        keyring=env.get("MODELROUTE_KEYRING") or _read_keyring_file(env.get("MODELROUTE_KEYRING_FILE")),
        deployment_keys=deployment_keys_from_env(env),
        migrate=env.get("MODELROUTE_MIGRATE", "").lower() in ("1", "true", "yes"),
        log_level=level,
    )
