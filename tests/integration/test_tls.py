"""TLS on the real server: server-only TLS under bearer tokens, mutual TLS whose SPIFFE identity maps to roles,
client certificates from an unknown CA refused at the handshake, and certificate files replaced on disk served
to new connections without a restart. Every certificate is made here, for the test that uses it."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute import TLS, ModelrouteClient, ModelrouteError
from modelroute.v1 import common_pb2
from modelroute.v1.provider_config_pb2 import ProviderConfig
from modelroute_server.adapters.crypto import Keyring
from modelroute_server.domain.access import Role
from modelroute_server.entrypoints.server import Application, check_before_start
from modelroute_server.entrypoints.transport import CertificateFiles
from modelroute_server.settings import Settings, SettingsError

from ..conftest import RunningServer, all_roles_token, build_app
from ..helpers import create_model, create_provider, stubs

TIMEOUT = 15.0
SPIFFE_API = "spiffe://example.org/ns/prod/sa/api"
SPIFFE_BATCH = "spiffe://example.org/ns/prod/sa/batch"  # signed by the trusted CA, mapped to nothing

# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM for grpc and the files the server reads."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def issue(
    name: str,
    issuer: Issued | None = None,
    sans: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> Issued:
    """A fresh P-256 key's certificate: a self-signed CA without `issuer`, else a leaf that `issuer` signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    signer = key if issuer is None else issuer.key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def server_certificate(ca: Issued, name: str = "tls-test-server") -> Issued:
    """Valid for `localhost` and 127.0.0.1; `name` (the CN) tells one served certificate from another."""
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return issue(name, ca, sans, ExtendedKeyUsageOID.SERVER_AUTH)


def client_certificate(ca: Issued, uri: str) -> Issued:
    return issue("tls-test-client", ca, [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH)


def replace_file(path: Path, data: bytes) -> None:
    """Written beside, then renamed over: a reader sees the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o600)
    os.replace(temporary, path)


def install(directory: Path, server: Issued, client_ca: Issued | None = None) -> CertificateFiles:
    """The server's certificate and key (and the client CA, for mutual TLS) at fixed paths, as a rotation does."""
    files = CertificateFiles(
        directory / "server.crt", directory / "server.key", directory / "client-ca.crt" if client_ca else None
    )
    replace_file(files.cert_file, server.cert_pem)
    replace_file(files.key_file, server.key_pem)
    if client_ca is not None and files.client_ca_file is not None:
        replace_file(files.client_ca_file, client_ca.cert_pem)
    return files


# ---------------------------------------------------------------- servers and clients


@contextmanager
def tls_server(
    app: Application,
    keyring: Keyring,
    files: CertificateFiles,
    identity_roles: Mapping[str, frozenset[Role]] | None = None,
) -> Iterator[RunningServer]:
    """The real server on the session's database, listening with `files`; stopped and closed however it ends."""
    settings = Settings(
        database_url=app.database_url,
        tls_cert_file=files.cert_file,
        tls_key_file=files.key_file,
        tls_client_ca_file=files.client_ca_file,
        client_identity_roles=dict(identity_roles or {}),
    )
    tls_app = build_app(app.database_url, keyring, settings)
    try:
        server = RunningServer(tls_app, certificates=files)
        try:
            yield server
        finally:
            server.stop()
    finally:
        tls_app.close()


@contextmanager
def connect(
    server: RunningServer, root: Issued | None, client: Issued | None = None, token: str = ""
) -> Iterator[ModelrouteClient]:
    """A client on a channel of its own (so a new connection and handshake): TLS trusting `root` only, presenting
    `client` when given; plaintext when `root` is None. `localhost` is the name checked against the certificate."""
    tls = None
    if root is not None:
        tls = TLS(
            root_certificates=root.cert_pem,
            certificate_chain=client.cert_pem if client else None,
            private_key=client.key_pem if client else None,
            server_name="localhost",
        )
    # The loopback address itself: `localhost` also resolves to ::1, where nothing listens, and the client's
    # round robin would report that address's refusal instead of the handshake's.
    with ModelrouteClient(f"127.0.0.1:{server.port}", TIMEOUT, token=token, tls=tls) as modelroute:
        yield modelroute


def check_health(client: ModelrouteClient) -> None:
    """Health is open to every caller, so an answer (SERVING or not yet) proves only the transport."""
    health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)


def list_models_error(client: ModelrouteClient) -> ModelrouteError:
    """ListAvailableModels is open to all four roles: what refuses it is the transport or the credentials."""
    with pytest.raises(ModelrouteError) as caught:
        list(client.available_models())
    return caught.value


def handshake_refused(client: ModelrouteClient) -> str:
    """Even the open health check fails when no TLS session comes about; the details say why, when the client
    is the side that refused (a server that refuses just closes the socket)."""
    with pytest.raises(grpc.RpcError) as caught:
        check_health(client)
    call: grpc.Call = caught.value
    assert call.code() is grpc.StatusCode.UNAVAILABLE, call
    return str(call.details())


def served_certificate(server: RunningServer) -> x509.Certificate:
    """The certificate a new handshake is given, read without verifying it (whichever CA signed it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# ---------------------------------------------------------------- tests


def test_server_tls_carries_bearer_tokens_and_refuses_plaintext(
    app: Application, keyring: Keyring, tmp_path: Path
) -> None:
    ca = issue("tls-test-ca")
    # A mapped identity without a client CA: no certificate is asked for, so none may stand in for a token.
    with tls_server(app, keyring, install(tmp_path, server_certificate(ca)), {SPIFFE_API: frozenset(Role)}) as server:
        with connect(server, ca, token=all_roles_token(server.app)) as client:
            s = stubs(client.channel)
            create_provider(s, "tls-openai", api_key="sk-tls-server-only")
            create_model(s, "tls-gpt", providers=("tls-openai",))
            assert client.resolve("tls-gpt").selected.api_key == "sk-tls-server-only"

        with connect(server, None, token=all_roles_token(server.app)) as plaintext:
            assert list_models_error(plaintext).code is grpc.StatusCode.UNAVAILABLE

        with connect(server, ca) as anonymous:
            error = list_models_error(anonymous)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")

        with connect(server, ca, client_certificate(ca, SPIFFE_API)) as unasked:
            error = list_models_error(unasked)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")


def test_mutual_tls_maps_the_spiffe_identity_to_its_roles(app: Application, keyring: Keyring, tmp_path: Path) -> None:
    ca = issue("tls-test-ca")
    files = install(tmp_path, server_certificate(ca), client_ca=ca)
    api, batch = client_certificate(ca, SPIFFE_API), client_certificate(ca, SPIFFE_BATCH)
    with tls_server(app, keyring, files, {SPIFFE_API: frozenset({Role.RESOLVER})}) as server:
        # A token, when sent, wins over the certificate: the unmapped certificate configures with the admin token.
        with connect(server, ca, batch, token=all_roles_token(server.app)) as admin:
            s = stubs(admin.channel)
            create_provider(s, "tls-mtls-openai", api_key="sk-tls-mutual")
            create_model(s, "tls-mtls-gpt", providers=("tls-mtls-openai",))

        with connect(server, ca, api) as resolver:
            assert resolver.resolve("tls-mtls-gpt").selected.api_key == "sk-tls-mutual"
            with pytest.raises(ModelrouteError) as caught:
                resolver.create_provider_config("tls-mtls-other", ProviderConfig(family=common_pb2.FAMILY_OPENAI))
        error = caught.value
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
        assert "admin" in error.message and SPIFFE_API in error.message
        assert error.metadata["required_roles"] == "admin"

        with connect(server, ca, batch) as unmapped:
            error = list_models_error(unmapped)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
        assert SPIFFE_BATCH in error.message and "no role" in error.message


def test_mutual_tls_refuses_an_unknown_client_ca_and_a_missing_certificate(
    app: Application, keyring: Keyring, tmp_path: Path
) -> None:
    ca, rogue_ca = issue("tls-test-ca"), issue("tls-test-rogue-ca")
    files = install(tmp_path, server_certificate(ca), client_ca=ca)
    with tls_server(app, keyring, files, {SPIFFE_API: frozenset(Role)}) as server:
        with connect(server, ca, client_certificate(ca, SPIFFE_API)) as trusted:
            check_health(trusted)  # the server answers a client it can verify

        # The mapped identity itself, but signed by a CA the server does not trust: the handshake is refused,
        # and a valid token does not get past it.
        with connect(server, ca, client_certificate(rogue_ca, SPIFFE_API), all_roles_token(server.app)) as rogue:
            handshake_refused(rogue)
            assert list_models_error(rogue).code is grpc.StatusCode.UNAVAILABLE

        with connect(server, ca, token=all_roles_token(server.app)) as without_certificate:
            handshake_refused(without_certificate)
            assert list_models_error(without_certificate).code is grpc.StatusCode.UNAVAILABLE


def test_certificates_replaced_on_disk_reach_new_connections_without_restart(
    app: Application, keyring: Keyring, tmp_path: Path
) -> None:
    ca_one, ca_two = issue("tls-test-ca-one"), issue("tls-test-ca-two")
    files = install(tmp_path, server_certificate(ca_one, "tls-server-one"))
    with tls_server(app, keyring, files) as server:
        assert common_name(served_certificate(server)) == "tls-server-one"
        with connect(server, ca_two) as early:
            assert "CERTIFICATE_VERIFY_FAILED" in handshake_refused(early)

        with connect(server, ca_one) as established:
            check_health(established)
            install(tmp_path, server_certificate(ca_two, "tls-server-two"))

            served = served_certificate(server)
            assert common_name(served) == "tls-server-two"
            assert served.issuer == ca_two.certificate.subject
            with connect(server, ca_two) as fresh:
                check_health(fresh)
            with connect(server, ca_one) as stale:
                assert "CERTIFICATE_VERIFY_FAILED" in handshake_refused(stale)
            check_health(established)  # a connection made before the change keeps its session


def test_a_half_replaced_pair_keeps_the_last_good_certificate(
    app: Application, keyring: Keyring, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca_one, ca_two = issue("tls-test-ca-one"), issue("tls-test-ca-two")
    files = install(tmp_path, server_certificate(ca_one, "tls-server-one"))
    replacement = server_certificate(ca_two, "tls-server-two")
    with tls_server(app, keyring, files) as server, caplog.at_level(logging.WARNING):
        replace_file(files.cert_file, replacement.cert_pem)  # its key has not followed yet

        assert common_name(served_certificate(server)) == "tls-server-one"
        with connect(server, ca_one) as still_one:
            check_health(still_one)
        with connect(server, ca_two) as too_early:
            assert "CERTIFICATE_VERIFY_FAILED" in handshake_refused(too_early)
        assert "cannot be used yet" in caplog.text

        replace_file(files.key_file, replacement.key_pem)
        assert common_name(served_certificate(server)) == "tls-server-two"
        with connect(server, ca_two) as now_two:
            check_health(now_two)


@pytest.mark.parametrize("problem", ["encrypted key", "key of another certificate", "not PEM"])
def test_unusable_certificate_files_are_one_clear_refusal(tmp_path: Path, problem: str) -> None:
    ca = issue("tls-test-ca")
    server = server_certificate(ca)
    files = install(tmp_path, server)
    if problem == "encrypted key":
        replace_file(
            files.key_file,
            server.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
        )
    elif problem == "key of another certificate":
        replace_file(files.key_file, server_certificate(ca).key_pem)
    else:
        replace_file(files.cert_file, b"not a certificate")
    with pytest.raises(SettingsError) as caught:
        check_before_start(Settings(listen="127.0.0.1:0", tls_cert_file=files.cert_file, tls_key_file=files.key_file))
    message = str(caught.value)
    assert str(files.key_file) in message and "\n" not in message
