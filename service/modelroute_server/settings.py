"""Configuration from the environment, overridable by command-line flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from .domain import rules
from .domain.access import ROLE_NAMES, Role, role_from_name
from .domain.families import Family
from .domain.health import HealthPolicy, HealthPolicyOverride, health_policy_problems

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
METRICS_OFF = "off"
DEFAULT_DATA_DIR = ".modelroute"
DEPLOYMENT_KEY_PREFIX = "MODELROUTE_DEPLOYMENT_KEY_"


class SettingsError(ValueError):
    """A configuration problem; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    # None: run an embedded PostgreSQL in `data_dir`.
    database_url: str | None = None
    # The change listener's own connection (LISTEN cannot go through a transaction-pooling PgBouncer);
    # None: the database URL.
    listen_database_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    keyring: str | None = field(default=None, repr=False)
    deployment_keys: Mapping[Family, str] = field(default_factory=dict, repr=False)
    migrate: bool = False
    log_level: str = "INFO"
    # TLS: a certificate and its key; a client CA turns on mutual TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # A verified client certificate's identity (`spiffe://...`, `dns:NAME`, `cn:NAME`) -> its roles.
    client_identity_roles: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    # Plaintext beyond loopback, for a mesh that provides TLS itself.
    allow_plaintext: bool = False
    # How long the change log keeps a change: a replica away for longer reloads in full when it returns.
    change_log_retention: timedelta = timedelta(hours=24)
    # ResolveModel answers kept per replica, by (model, user) as asked, each given again while what it was
    # decided from is unchanged (a caller's key stays sealed in it, opened per call). 0 keeps none.
    kept_answers: int = 10_000
    # A write waits at most this long for a row lock, and runs no statement longer than the second; past
    # either it fails as UNAVAILABLE DATABASE_BUSY with a retry delay (set per transaction: PgBouncer-safe).
    write_lock_timeout: timedelta = timedelta(seconds=5)
    write_statement_timeout: timedelta = timedelta(seconds=15)
    # Opt-in: a replica cut off from PostgreSQL for longer stops answering resolutions (and says so in its
    # health) rather than serve a configuration, or tokens, that may have been revoked since.
    max_snapshot_age: timedelta | None = None
    # Prometheus metrics over HTTP (host:port; port 0 takes any free one); None: no metrics server.
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN
    # One JSON line per call (method, status code, duration, actor) on the `modelroute.access` logger.
    access_log: bool = False
    # When attempt reports start a cooldown (a provider config's `health_policy` may override each).
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


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


def private_file_problem(path: Path) -> str | None:
    """Why a file holding secrets is too open (as ssh judges private keys); None when only its owner can read it.

    The mode is that of the file a symbolic link leads to, as Kubernetes secret volumes use links.
    """
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror})"
    if mode & 0o044:
        return (
            f"{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path.resolve()}` "
            "(for a Kubernetes secret volume, set defaultMode: 0400)"
        )
    return None


def _read_keyring_file(path: str | None) -> str | None:
    """The keyring from a file (a mounted secret), so it never sits in the environment or argv."""
    if not path:
        return None
    problem = private_file_problem(Path(path))
    if problem:
        raise SettingsError(f"MODELROUTE_KEYRING_FILE: {problem}")
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise SettingsError(f"MODELROUTE_KEYRING_FILE: cannot read {path} ({exc.strerror})") from None


TRUE_VALUES = ("1", "true", "yes")


def parse_identity_roles(text: str, variable: str = "MODELROUTE_TLS_CLIENT_ROLES") -> dict[str, frozenset[Role]]:
    """`IDENTITY=ROLE[,ROLE...]` entries separated by `;` or new lines, for example
    `spiffe://example.org/ns/prod/sa/api=resolver; dns:ops.internal=admin,reader; cn:break-glass=admin`."""
    mapping: dict[str, frozenset[Role]] = {}
    for entry in (e.strip() for e in text.replace("\n", ";").split(";")):
        if not entry:
            continue
        identity, sep, names = entry.rpartition("=")
        identity = identity.strip()
        roles = [role_from_name(n) for n in names.split(",") if n.strip()]
        if not sep or not identity or not roles or None in roles:
            raise SettingsError(
                f"{variable}: expected IDENTITY=ROLE[,ROLE...] entries separated by ';' "
                f"(roles: {', '.join(ROLE_NAMES)}), got an entry for {identity or '(nothing)'!r}"
            )
        if not identity.startswith(("dns:", "cn:")) and "://" not in identity:
            raise SettingsError(
                f"{variable}: {identity!r} is no certificate identity; use a SAN URI (spiffe://...), "
                "dns:NAME or cn:NAME"
            )
        mapping[identity] = frozenset(r for r in roles if r is not None)
    return mapping


_DURATION = re.compile(r"^(\d+)([dhms])$")
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str, variable: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s`."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise SettingsError(f"{variable} must be a positive duration such as 24h, 30m or 7d, got {text!r}")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def _count(value: str, variable: str) -> int:
    if not value.strip().isdigit():
        raise SettingsError(f"{variable} must be a whole number (0 or more), got {value!r}")
    return int(value)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _check_transport(settings: Settings) -> Settings:
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise SettingsError("MODELROUTE_TLS_CERT_FILE and MODELROUTE_TLS_KEY_FILE must be set together")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise SettingsError("MODELROUTE_TLS_CLIENT_CA_FILE (mutual TLS) needs MODELROUTE_TLS_CERT_FILE and _KEY_FILE")
    if settings.client_identity_roles and settings.tls_client_ca_file is None:
        raise SettingsError("MODELROUTE_TLS_CLIENT_ROLES needs mutual TLS: set MODELROUTE_TLS_CLIENT_CA_FILE")
    return settings


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    url = env.get("MODELROUTE_DATABASE_URL") or None
    if url is not None and not url.startswith(URL_SCHEMES):
        raise SettingsError("MODELROUTE_DATABASE_URL must be a PostgreSQL URL (postgresql://user@host:port/dbname)")
    listen_url = env.get("MODELROUTE_LISTEN_DATABASE_URL") or None
    if listen_url is not None and not listen_url.startswith(URL_SCHEMES):
        raise SettingsError(
            "MODELROUTE_LISTEN_DATABASE_URL must be a PostgreSQL URL (postgresql://user@host:port/dbname)"
        )
    if listen_url is not None and url is None:
        raise SettingsError(
            "MODELROUTE_LISTEN_DATABASE_URL needs MODELROUTE_DATABASE_URL (embedded mode has one database)"
        )
    level = env.get("MODELROUTE_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"MODELROUTE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    return _check_transport(
        Settings(
            listen=env.get("MODELROUTE_LISTEN", DEFAULT_LISTEN),
            database_url=url,
            listen_database_url=listen_url,
            data_dir=Path(env.get("MODELROUTE_DATA_DIR", DEFAULT_DATA_DIR)),
            keyring=env.get("MODELROUTE_KEYRING") or _read_keyring_file(env.get("MODELROUTE_KEYRING_FILE")),
            deployment_keys=deployment_keys_from_env(env),
            migrate=env.get("MODELROUTE_MIGRATE", "").lower() in TRUE_VALUES,
            log_level=level,
            tls_cert_file=_optional_path(env.get("MODELROUTE_TLS_CERT_FILE")),
            tls_key_file=_optional_path(env.get("MODELROUTE_TLS_KEY_FILE")),
            tls_client_ca_file=_optional_path(env.get("MODELROUTE_TLS_CLIENT_CA_FILE")),
            client_identity_roles=parse_identity_roles(env.get("MODELROUTE_TLS_CLIENT_ROLES", "")),
            allow_plaintext=env.get("MODELROUTE_ALLOW_PLAINTEXT", "").lower() in TRUE_VALUES,
            change_log_retention=parse_duration(
                env.get("MODELROUTE_CHANGE_LOG_RETENTION", "24h"), "MODELROUTE_CHANGE_LOG_RETENTION"
            ),
            kept_answers=_count(env.get("MODELROUTE_KEPT_ANSWERS", "10000"), "MODELROUTE_KEPT_ANSWERS"),
            write_lock_timeout=parse_duration(
                env.get("MODELROUTE_WRITE_LOCK_TIMEOUT", "5s"), "MODELROUTE_WRITE_LOCK_TIMEOUT"
            ),
            write_statement_timeout=parse_duration(
                env.get("MODELROUTE_WRITE_STATEMENT_TIMEOUT", "15s"), "MODELROUTE_WRITE_STATEMENT_TIMEOUT"
            ),
            max_snapshot_age=(
                parse_duration(env["MODELROUTE_MAX_SNAPSHOT_AGE"], "MODELROUTE_MAX_SNAPSHOT_AGE")
                if env.get("MODELROUTE_MAX_SNAPSHOT_AGE")
                else None
            ),
            access_log=env.get("MODELROUTE_ACCESS_LOG", "").lower() in TRUE_VALUES,
            metrics_listen=_metrics_listen(env.get("MODELROUTE_METRICS_LISTEN") or DEFAULT_METRICS_LISTEN),
            health_policy=_health_policy(env),
        )
    )


def _health_policy(env: Mapping[str, str]) -> HealthPolicy:
    defaults = HealthPolicy()
    policy = HealthPolicy(
        _count(
            env.get("MODELROUTE_HEALTH_FAILURE_THRESHOLD", str(defaults.failure_threshold)),
            "MODELROUTE_HEALTH_FAILURE_THRESHOLD",
        ),
        parse_duration(env.get("MODELROUTE_HEALTH_FAILURE_WINDOW", "60s"), "MODELROUTE_HEALTH_FAILURE_WINDOW"),
        parse_duration(env.get("MODELROUTE_HEALTH_BASE_COOLDOWN", "30s"), "MODELROUTE_HEALTH_BASE_COOLDOWN"),
        parse_duration(env.get("MODELROUTE_HEALTH_MAX_COOLDOWN", "10m"), "MODELROUTE_HEALTH_MAX_COOLDOWN"),
    )
    problems = health_policy_problems(
        HealthPolicyOverride(
            policy.failure_threshold, policy.failure_window, policy.base_cooldown, policy.max_cooldown
        ),
        defaults,
        "MODELROUTE_HEALTH",
    )
    if problems.violations:
        raise SettingsError("; ".join(f"{v.field}: {v.description}" for v in problems.violations))
    return policy


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$")


def _metrics_listen(value: str) -> str | None:
    """HOST:PORT, or `off` for no metrics server."""
    if value.strip().lower() == METRICS_OFF:
        return None
    match = _ADDRESS.match(value.strip())
    if not match or int(match.group(2)) > 65535:
        raise SettingsError(
            f"MODELROUTE_METRICS_LISTEN must be HOST:PORT (for example {DEFAULT_METRICS_LISTEN}) or {METRICS_OFF}, "
            f"got {value!r}"
        )
    return value.strip()
