"""Settings that guard secrets and the network: keyring file modes, client certificate roles, transport."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelroute_server.adapters.crypto import generate_keyring_spec
from modelroute_server.domain.access import Role
from modelroute_server.entrypoints.transport import check_plaintext_allowed, is_loopback, split_address
from modelroute_server.settings import (
    Settings,
    SettingsError,
    parse_identity_roles,
    private_file_problem,
    settings_from_env,
)


@pytest.mark.parametrize(
    ("mode", "refused"),
    [(0o600, False), (0o400, False), (0o700, False), (0o640, True), (0o644, True), (0o604, True), (0o660, True)],
)
def test_a_keyring_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int, refused: bool) -> None:
    keyring_file = tmp_path / "keyring"
    keyring_file.write_text(generate_keyring_spec() + "\n")
    keyring_file.chmod(mode)
    env = {"MODELROUTE_KEYRING_FILE": str(keyring_file)}
    if not refused:
        assert settings_from_env(env).keyring
        return
    with pytest.raises(SettingsError) as caught:
        settings_from_env(env)
    message = str(caught.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {keyring_file}" in message
    assert "\n" not in message


def test_the_mode_checked_is_that_of_the_file_a_link_leads_to(tmp_path: Path) -> None:
    # Kubernetes secret volumes present each key as a symbolic link into a hidden directory.
    target = tmp_path / "..data" / "keyring"
    target.parent.mkdir()
    target.write_text(generate_keyring_spec() + "\n")
    link = tmp_path / "keyring"
    link.symlink_to(target)
    target.chmod(0o644)
    problem = private_file_problem(link)
    assert problem is not None and "0644" in problem and str(target) in problem
    target.chmod(0o400)
    assert private_file_problem(link) is None
    assert settings_from_env({"MODELROUTE_KEYRING_FILE": str(link)}).keyring


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        (
            "spiffe://example.org/ns/prod/sa/api=resolver",
            {"spiffe://example.org/ns/prod/sa/api": frozenset({Role.RESOLVER})},
        ),
        (
            "dns:ops.internal=admin,reader; cn:break-glass=ADMIN",
            {"dns:ops.internal": frozenset({Role.ADMIN, Role.READER}), "cn:break-glass": frozenset({Role.ADMIN})},
        ),
        ("cn:a=b=user-keys\n", {"cn:a=b": frozenset({Role.USER_KEYS})}),
    ],
)
def test_client_certificate_roles_parse(text: str, expected: dict[str, frozenset[Role]]) -> None:
    assert parse_identity_roles(text) == expected


@pytest.mark.parametrize(
    "text", ["spiffe://x", "spiffe://x=", "spiffe://x=owner", "=admin", "plain-name=admin", "dns:x=admin,,nobody"]
)
def test_bad_client_certificate_roles_are_one_clear_error(text: str) -> None:
    with pytest.raises(SettingsError, match="MODELROUTE_TLS_CLIENT_ROLES"):
        parse_identity_roles(text)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MODELROUTE_TLS_CERT_FILE": "c.pem"}, "must be set together"),
        ({"MODELROUTE_TLS_CLIENT_CA_FILE": "ca.pem"}, "needs MODELROUTE_TLS_CERT_FILE"),
        ({"MODELROUTE_TLS_CLIENT_ROLES": "cn:x=admin"}, "needs mutual TLS"),
    ],
)
def test_incomplete_tls_settings_are_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        settings_from_env(env)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.7", False),
        ("api.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listen_addresses_split_into_host_and_port() -> None:
    assert split_address("[::1]:50051") == ("::1", 50051)
    assert split_address("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("50051", "host:port", "host:70000"):
        with pytest.raises(SettingsError, match="HOST:PORT"):
            split_address(bad)


def test_plaintext_beyond_loopback_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    check_plaintext_allowed(Settings(listen="127.0.0.1:50051"))
    with pytest.raises(SettingsError, match="without TLS") as caught:
        check_plaintext_allowed(Settings(listen="0.0.0.0:50051"))
    assert "MODELROUTE_ALLOW_PLAINTEXT=true" in str(caught.value)
    with caplog.at_level(logging.WARNING):
        check_plaintext_allowed(Settings(listen="0.0.0.0:50051", allow_plaintext=True))
    assert any("without TLS" in r.getMessage() for r in caplog.records)
    check_plaintext_allowed(Settings(listen="0.0.0.0:50051", tls_cert_file=Path("c"), tls_key_file=Path("k")))
