"""The listening port: loopback-only plaintext, TLS and mutual TLS with certificates re-read on change,
and a port that belongs to this process alone."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Calls that have arrived but that the server has not taken up yet wait in gRPC's core. Past 1,000 of them
# its default sheds at random, and after 30 s unclaimed it drops them, both answered CANCELLED although
# no client cancelled (2,000 concurrent calls from one client are enough). The service takes calls up
# as fast as they come and sheds by class itself, with RESOURCE_EXHAUSTED and a retry delay
# (entrypoints/executors.py); the core's queue is only a backstop, far above what that lets build up.
MAX_PENDING_CALLS = 20_000
SERVER_OPTIONS = (
    # grpc's Linux default (1) lets a second server bind the same port and silently take part of its traffic.
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
    # The typed clients ping every 30 s, also between calls, to find dead connections; a server that
    # allowed less would answer their pings with GOAWAY (too_many_pings).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise SettingsError(f"cannot listen on {address!r}: expected HOST:PORT, for example 127.0.0.1:50051")
    return host.strip("[]"), int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to any interface


def check_plaintext_allowed(settings: Settings) -> None:
    """Plaintext only on loopback, unless the operator says a mesh provides TLS (then a warning)."""
    if settings.tls:
        return
    host, _ = split_address(settings.listen)
    if is_loopback(host):
        return
    if not settings.allow_plaintext:
        raise SettingsError(
            f"refusing to listen on {settings.listen} without TLS (tokens and keys would cross the network in "
            "clear): set MODELROUTE_TLS_CERT_FILE and MODELROUTE_TLS_KEY_FILE, or MODELROUTE_ALLOW_PLAINTEXT=true "
            "when a service mesh provides TLS"
        )
    log.warning(
        "listening beyond loopback without TLS (MODELROUTE_ALLOW_PLAINTEXT=true): a mesh must provide it",
        extra={"address": settings.listen},
    )


def check_port_free(address: str) -> None:
    """Fails with one clear line when something already listens there (before anything is started)."""
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SettingsError(f"cannot listen on {address}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As grpc binds: address reuse (TIME_WAIT is no obstacle), but no port sharing.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise SettingsError(
                    f"cannot listen on {address}: {exc.strerror} (is another server running?)"
                ) from None


@dataclass(frozen=True)
class CertificateFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


def certificate_files(settings: Settings) -> CertificateFiles | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read {path} ({exc.strerror})") from None


def _load(files: CertificateFiles) -> grpc.ServerCertificateConfiguration:
    """The certificate configuration from disk, checked (a key that does not match its certificate is refused)."""
    chain, key = _read(files.cert_file), _read(files.key_file)
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key (no passphrase can be given); UnsupportedAlgorithm: a key type TLS cannot use.
        raise SettingsError(
            f"{files.cert_file} / {files.key_file}: not a PEM certificate and an unencrypted PEM key ({exc})"
        ) from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*public) != private_key.public_key().public_bytes(*public):
        raise SettingsError(f"{files.key_file} is not the key of the certificate in {files.cert_file}")
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read(files.client_ca_file)
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError as exc:
            raise SettingsError(f"{files.client_ca_file}: not a PEM certificate ({exc})") from None
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)


def _fingerprint(files: CertificateFiles) -> tuple[tuple[int, int, int], ...]:
    paths = [files.cert_file, files.key_file, *([files.client_ca_file] if files.client_ca_file else [])]
    stats = [os.stat(p) for p in paths]  # follows links: a rotated secret volume swaps the link's target
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


class ReloadingCertificates:
    """grpc asks before every new connection's handshake; the files are re-read when they changed.

    A half-written or mismatched pair is not taken: the last good one keeps serving, with a warning.
    """

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self.initial = _load(files)
        self._seen = _fingerprint(files)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            seen = _fingerprint(self.files)
            if seen == self._seen:
                return None
            configuration = _load(self.files)
        except (OSError, SettingsError) as exc:
            log.warning("TLS certificate files changed but cannot be used yet: %s", exc)
            return None
        self._seen = seen
        log.info("TLS certificates reloaded", extra={"cert_file": str(self.files.cert_file)})
        return configuration


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    fetcher = ReloadingCertificates(files)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetcher, require_client_authentication=files.client_ca_file is not None
    )


def bind(server: grpc.aio.Server, address: str, certificates: CertificateFiles | None) -> int:
    try:
        if certificates is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(certificates))
    except RuntimeError:
        port = 0
    if port == 0:
        raise SettingsError(f"cannot listen on {address}: the address is in use or not available")
    return int(port)
