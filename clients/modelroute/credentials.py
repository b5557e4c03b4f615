"""Caller credentials: the bearer token (argument, MODELROUTE_TOKEN, MODELROUTE_TOKEN_FILE) and TLS material."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc

TOKEN_ENV = "MODELROUTE_TOKEN"
TOKEN_FILE_ENV = "MODELROUTE_TOKEN_FILE"
AUTHORIZATION_METADATA = "authorization"


class CredentialsError(ValueError):
    """Credentials were asked for but cannot be had; the message says where they were looked for."""


def read_token_file(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise CredentialsError(f"cannot read the token file {path} ({exc.strerror})") from None
    if not token:
        raise CredentialsError(f"the token file {path} is empty")
    return token


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """MODELROUTE_TOKEN, else the file MODELROUTE_TOKEN_FILE names, else None."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    if env.get(TOKEN_FILE_ENV):
        return read_token_file(env[TOKEN_FILE_ENV])
    return None


@dataclass(frozen=True)
class TLS:
    """Server verification (`root_certificates`, None: the system's roots) and, for mutual TLS, this client's
    certificate chain and key. `server_name` overrides the name checked against the server's certificate."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLS:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca_file), read(cert_file), read(key_file), server_name)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def _with_token(details: grpc.ClientCallDetails, header: str) -> grpc.ClientCallDetails:
    metadata = list(details.metadata or ())
    if any(key == AUTHORIZATION_METADATA for key, _ in metadata):
        return details  # credentials given with the call itself win
    metadata.append((AUTHORIZATION_METADATA, header))
    return _CallDetails(  # type: ignore[return-value]
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call (plaintext and TLS channels alike)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def intercept_unary_unary(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_with_token(client_call_details, self._header), request)


def authenticated(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
