"""The channel every modelroute client opens: TLS or plaintext, round robin, keepalives, retries.

Retries and `wait_for_ready` live in the gRPC service config, so gRPC's core does them: it backs off
exponentially with jitter and honours the server's `grpc-retry-pushback-ms` trailer (sent with
RESOURCE_EXHAUSTED TOO_MANY_CALLS and UNAVAILABLE DATABASE_BUSY), and stops at the call's deadline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from .credentials import TLS

DEFAULT_TARGET = "127.0.0.1:50051"
# A default deadline that outlasts a replica restart (wait_for_ready resolution waits through it).
DEFAULT_TIMEOUT = 10.0
PACKAGE = "modelroute.v1"

# Methods gRPC may send again after UNAVAILABLE, RESOURCE_EXHAUSTED or a server's CANCELLED: every read,
# and the writes whose repetition leaves the same state (an update sets values; a user key set or deleted
# twice is the same key or none; a provider config's health reset twice is reset). Creates, deletes and
# undeletes are not retried: a repeat after a lost answer would fail with ALREADY_EXISTS or NOT_FOUND
# although the first attempt succeeded.
RESOLUTION_METHODS = (("ResolverService", "ResolveModel"),)
READ_METHODS = (
    ("ResolverService", "ListAvailableModels"),
    ("ResolverService", "ExplainResolution"),
    ("ProviderConfigService", "GetProviderConfig"),
    ("ProviderConfigService", "ListProviderConfigs"),
    ("ModelConfigService", "GetModelConfig"),
    ("ModelConfigService", "ListModelConfigs"),
    ("UserKeyService", "ListUserProviderConfigs"),
    ("AccessTokenService", "ListAccessTokens"),
    ("AuditService", "ListAuditEvents"),
)
REPEATABLE_WRITES = (
    ("ProviderConfigService", "UpdateProviderConfig"),
    ("ProviderConfigService", "ResetProviderHealth"),
    ("ModelConfigService", "UpdateModelConfig"),
    ("UserKeyService", "SetUserProviderKey"),
    ("UserKeyService", "DeleteUserProviderKey"),
)
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    # CANCELLED too: a server shutting down cancels the calls it had received but not yet handed to a
    # handler (grpc/grpc#41785), so they were never processed. A caller's own cancellation ends its call
    # for good; gRPC never retries that.
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"],
}


def _names(methods: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"service": f"{PACKAGE}.{service}", "method": method} for service, method in methods]


def service_config() -> dict[str, Any]:
    """Round robin over every address the target resolves to; retries; resolution waits for a replica
    to be ready instead of failing while none is (a restart of a few seconds costs no failed call)."""
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": _names(RESOLUTION_METHODS), "waitForReady": True, "retryPolicy": RETRY_POLICY},
            {"name": _names(READ_METHODS + REPEATABLE_WRITES), "retryPolicy": RETRY_POLICY},
        ],
    }


def channel_options(tls: TLS | None = None, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(service_config())),
        # The service config above is the client's; none is taken from DNS.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # A ping every 30 s finds a dead connection (a replica gone without a FIN) within 40 s.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect to a restarted replica within a second or two, not gRPC's default of up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    if tls is not None:
        options += tls.channel_options()
    return [*options, *extra]


def open_channel(target: str, tls: TLS | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    settings = channel_options(tls, options)
    if tls is not None:
        return grpc.secure_channel(target, tls.channel_credentials(), options=settings)
    return grpc.insecure_channel(target, options=settings)


def open_aio_channel(target: str, tls: TLS | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    settings = channel_options(tls, options)
    if tls is not None:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options=settings)
    return grpc.aio.insecure_channel(target, options=settings)
