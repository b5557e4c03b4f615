"""Pure, table-driven tests of the field rules, the families, the credential policy and the credential facts."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from modelroute_server.domain import rules
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.domain.families import FAMILY_NAMES, Family
from modelroute_server.domain.providers import (
    CredentialFacts,
    CredentialPolicy,
    KeySource,
    ProviderConfig,
    StoredKey,
    central_credential,
    credential_facts,
    validate_provider_config,
)

NO_SOURCE = "no credential source: enable the central key or allow user keys"
NEEDS_CENTRAL = "central key fallback needs the central key enabled"
NEEDS_USERS = "central key fallback needs user keys allowed"

# ---------------------------------------------------------------- credential policy

POLICY_PROBLEMS: dict[tuple[bool, bool, bool], str | None] = {
    (True, False, False): None,
    (False, True, False): None,
    (True, True, False): None,
    (True, True, True): None,
    (False, False, False): NO_SOURCE,
    (False, False, True): f"{NO_SOURCE}; {NEEDS_CENTRAL}; {NEEDS_USERS}",
    (False, True, True): NEEDS_CENTRAL,
    (True, False, True): NEEDS_USERS,
}


def test_the_table_covers_all_eight_tuples() -> None:
    assert set(POLICY_PROBLEMS) == set(itertools.product((False, True), repeat=3))


@pytest.mark.parametrize(("flags", "problem"), POLICY_PROBLEMS.items())
def test_policy_problem_for_every_tuple(flags: tuple[bool, bool, bool], problem: str | None) -> None:
    assert CredentialPolicy(*flags).problem() == problem


def test_invalid_tuples_have_distinct_problems() -> None:
    problems = [CredentialPolicy(*flags).problem() for flags in POLICY_PROBLEMS if POLICY_PROBLEMS[flags] is not None]
    assert len(problems) == len(set(problems)) == 4


def test_the_default_policy_is_central_key_only() -> None:
    assert CredentialPolicy().as_tuple == (True, False, False)
    assert CredentialPolicy().problem() is None


@pytest.mark.parametrize(
    ("flags", "serves_users"),
    [
        ((True, False, False), True),
        ((False, True, False), False),
        ((True, True, False), False),  # trap 12: (1,1,0) never uses the central key
        ((True, True, True), True),
    ],
)
def test_central_key_required_only_where_it_can_be_used(flags: tuple[bool, bool, bool], serves_users: bool) -> None:
    policy = CredentialPolicy(*flags)
    assert policy.central_key_serves_users is serves_users


# ---------------------------------------------------------------- field rules


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk-normal", None),
        ("k" * 10_240, None),
        ("é" * 5_120, None),
        ("inner white space is kept", None),
        ("", "must not be empty"),
        ("k" * 10_241, "must be at most 10240 bytes"),
        ("é" * 5_120 + "k", "must be at most 10240 bytes"),
        ("€" * 3_414, "must be at most 10240 bytes"),  # 10,242 bytes in only 3,414 characters
        (" sk", "must not have leading or trailing white space"),
        ("sk ", "must not have leading or trailing white space"),
        ("sk\n", "must not have leading or trailing white space"),
        ("\tsk", "must not have leading or trailing white space"),
        ("\u00a0sk", "must not have leading or trailing white space"),
        ("sk\u2003", "must not have leading or trailing white space"),
        ("   ", "must not have leading or trailing white space"),
    ],
)
def test_api_key_problem(key: str, problem: str | None) -> None:
    assert rules.api_key_problem(key) == problem
    if problem is not None:
        assert key.strip() == "" or key.strip() not in problem, "a problem must never echo the key"


@pytest.mark.parametrize(
    ("value", "present"), [(None, False), ("", False), (" ", False), ("\t\n", False), ("k", True), (" k ", True)]
)
def test_key_is_present(value: str | None, present: bool) -> None:
    assert rules.key_is_present(value) is present


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a", None),
        ("openai-main", None),
        ("a1-b2", None),
        ("x" * 63, None),
        ("", "is required"),
        ("x" * 64, rules.SLUG_RULE),
        ("Upper", rules.SLUG_RULE),
        ("1abc", rules.SLUG_RULE),
        ("-abc", rules.SLUG_RULE),
        ("abc-", rules.SLUG_RULE),
        ("a_b", rules.SLUG_RULE),
        ("a.b", rules.SLUG_RULE),
        ("a/b", rules.SLUG_RULE),
        ("a b", rules.SLUG_RULE),
        ("abc\n", rules.SLUG_RULE),
        ("é", rules.SLUG_RULE),
    ],
)
def test_slug_problem(value: str, problem: str | None) -> None:
    assert rules.slug_problem(value) == problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.openai.com/v1", None),
        ("http://localhost:8080", None),
        ("http://10.0.0.1/v1?x=1", None),
        ("https://[::1]:8443/v1", None),
        ("ftp://files.example.com", "must be an absolute URL with scheme http or https"),
        ("file:///etc/passwd", "must be an absolute URL with scheme http or https"),
        ("api.example.com/v1", "must be an absolute URL with scheme http or https"),
        ("/v1", "must be an absolute URL with scheme http or https"),
        ("//example.com", "must be an absolute URL with scheme http or https"),
        ("HTTPS://example.com", None),
        ("http://", "must be an absolute URL with a host"),
        ("https:///v1", "must be an absolute URL with a host"),
        (" https://example.com", "must not have leading or trailing white space"),
        ("https://example.com/a b", "must not contain white space"),
        ("https://exa\tmple.com", "must not contain control characters"),
        ("https://example.com\x00", "must not contain control characters"),
        ("https://example.com/" + "a" * 2048, "must be at most 2048 characters"),
        (
            "https://user:tok3n@proxy.example.com/v1",
            "must not contain user info (user:password@); put the credential in api_key",
        ),
        (
            "https://tok3n@proxy.example.com/v1",
            "must not contain user info (user:password@); put the credential in api_key",
        ),
        ("https://example.com:99999", "is not a valid URL (malformed host or port)"),
        ("https://x.openai.azure.com/openai?api-version=2024-06-01", None),
        ("https://example.com/v1#frag", "must not have a fragment (#...)"),
        (
            "https://example.com/v1?api_key=sk-x",
            "must not carry a credential in its query (key, token, secret, password, signature...); use api_key",
        ),
        (
            "https://example.com/v1?Token=abc",
            "must not carry a credential in its query (key, token, secret, password, signature...); use api_key",
        ),
        (
            "https://example.com/v1?sig=abc&x=1",
            "must not carry a credential in its query (key, token, secret, password, signature...); use api_key",
        ),
        ("https://example.com:tok3n", "is not a valid URL (malformed host or port)"),
    ],
)
def test_base_url_problem(url: str, problem: str | None) -> None:
    assert rules.base_url_problem(url) == problem


def test_a_malformed_port_is_reported_as_not_a_valid_url() -> None:
    problem = rules.base_url_problem("https://example.com:99999")
    assert problem is not None and problem.startswith("is not a valid URL")


@pytest.mark.parametrize(
    ("family", "url", "problem"),
    [
        (Family.AZURE, None, "is required for the azure family"),
        (Family.AZURE, "", "is required for the azure family"),
        (Family.OPENAI_COMPAT, None, "is required for the openai-compat family"),
        (Family.AZURE, "https://x.example.com", None),
        (Family.OPENAI, None, None),
        (Family.OPENROUTER, None, None),
        (Family.BEDROCK, None, None),
    ],
)
def test_base_url_requirement(family: Family, url: str | None, problem: str | None) -> None:
    assert rules.base_url_requirement_problem(family, url) == problem


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("OpenAI", None),
        ("x" * 256, None),
        ("Ünïcödé name", None),
        ("", "must not be blank"),
        ("   ", "must not be blank"),
        ("\t", "must not be blank"),
        ("x" * 257, "must be at most 256 characters"),
        ("a\x00b", "must not contain control characters"),
        ("a\nb", "must not contain control characters"),
    ],
)
def test_display_name_problem(name: str, problem: str | None) -> None:
    assert rules.display_name_problem(name) == problem


SPACE_OR_CONTROL = "must not contain white space or control characters"


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        ("alice", None),
        ("alice@example.com", None),
        ("!" + "~" * 255, None),
        ("u" * 256, None),
        ("Zoë", None),  # printable beyond ASCII takes the long way, with the same answer
        ("用户-7", None),
        ("", "is required"),
        ("u" * 257, "must be at most 256 characters"),
        ("ü" * 257, "must be at most 256 characters"),
        ("al ice", SPACE_OR_CONTROL),
        (" alice", SPACE_OR_CONTROL),
        ("alice\n", SPACE_OR_CONTROL),
        ("a\x7fb", SPACE_OR_CONTROL),
        ("a\u00a0b", SPACE_OR_CONTROL),  # no-break space
        ("a\u200bb", SPACE_OR_CONTROL),  # zero-width space is not printable
        ("Zoë\tx", SPACE_OR_CONTROL),
    ],
)
def test_user_id_problem(user: str, problem: str | None) -> None:
    assert rules.user_id_problem(user) == problem


# ---------------------------------------------------------------- families


def test_there_are_exactly_eight_families() -> None:
    assert FAMILY_NAMES == (
        "anthropic",
        "azure",
        "bedrock",
        "google",
        "openai",
        "openai-compat",
        "openrouter",
        "vercel",
    )


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ("openai", Family.OPENAI),
        ("OpenAI", Family.OPENAI),
        (" OPENAI ", Family.OPENAI),
        ("openai-compat", Family.OPENAI_COMPAT),
        ("OPENAI_COMPAT", Family.OPENAI_COMPAT),
        ("Bedrock", Family.BEDROCK),
        ("mistral", None),
        ("", None),
        ("open ai", None),
    ],
)
def test_family_parse_is_case_insensitive(text: str, family: Family | None) -> None:
    assert Family.parse(text) is family


def test_family_properties() -> None:
    assert {f for f in Family if f.requires_base_url} == {Family.AZURE, Family.OPENAI_COMPAT}
    assert {f for f in Family if f.supports_ambient_credentials} == {Family.BEDROCK}
    assert Family.OPENAI.default_display_name == "OpenAI"
    assert all(f.default_display_name.strip() for f in Family)


# ---------------------------------------------------------------- validate_provider_config


def config(
    family: Family = Family.OPENAI,
    flags: tuple[bool, bool, bool] = (True, False, False),
    key: str | None = None,
    base_url: str | None = None,
    display_name: str = "P",
) -> ProviderConfig:
    return ProviderConfig(
        id="p",
        family=family,
        display_name=display_name,
        base_url=base_url,
        policy=CredentialPolicy(*flags),
        api_key=StoredKey(key) if key is not None else None,
    )


DK = {Family.OPENAI: "dk-openai"}

VALIDATION_CASES: list[tuple[str, ProviderConfig, Mapping[Family, str], tuple[Reason, list[str]] | None]] = [
    ("central key only with a key", config(key="sk"), {}, None),
    ("central key only without", config(), {}, (Reason.FIELD_INVALID, ["pc.api_key"])),
    ("white-space key is no key", config(key="  "), {}, (Reason.FIELD_INVALID, ["pc.api_key"])),
    ("deployment key of the family", config(), DK, None),
    ("white-space deployment key", config(), {Family.OPENAI: " "}, (Reason.FIELD_INVALID, ["pc.api_key"])),
    ("deployment key of another family", config(Family.ANTHROPIC), DK, (Reason.FIELD_INVALID, ["pc.api_key"])),
    ("bedrock is ambient", config(Family.BEDROCK), {}, None),
    ("(1,1,1) without a key", config(flags=(True, True, True)), {}, (Reason.FIELD_INVALID, ["pc.api_key"])),
    ("(1,1,1) with a key", config(flags=(True, True, True), key="sk"), {}, None),
    ("(1,1,0) needs no key", config(flags=(True, True, False)), {}, None),
    ("(0,1,0) needs no key", config(flags=(False, True, False)), {}, None),
    (
        "(0,0,0)",
        config(flags=(False, False, False), key="sk"),
        {},
        (Reason.CREDENTIAL_POLICY_INVALID, ["pc.credential_policy"]),
    ),
    (
        "(1,0,1)",
        config(flags=(True, False, True), key="sk"),
        {},
        (Reason.CREDENTIAL_POLICY_INVALID, ["pc.credential_policy"]),
    ),
    ("azure without URL", config(Family.AZURE, key="sk"), {}, (Reason.FIELD_INVALID, ["pc.base_url"])),
    ("azure with URL", config(Family.AZURE, key="sk", base_url="https://a.example.com"), {}, None),
    ("bad URL", config(key="sk", base_url="ftp://x"), {}, (Reason.FIELD_INVALID, ["pc.base_url"])),
    ("bad URL for azure", config(Family.AZURE, key="sk", base_url="x"), {}, (Reason.FIELD_INVALID, ["pc.base_url"])),
    ("blank name", config(key="sk", display_name=" "), {}, (Reason.FIELD_INVALID, ["pc.display_name"])),
    (
        "field problems are reported together",
        config(Family.AZURE, key="sk", display_name=""),
        {},
        (Reason.FIELD_INVALID, ["pc.display_name", "pc.base_url"]),
    ),
]


@pytest.mark.parametrize(("label", "candidate", "deployment_keys", "expected"), VALIDATION_CASES)
def test_validate_provider_config(
    label: str,
    candidate: ProviderConfig,
    deployment_keys: Mapping[Family, str],
    expected: tuple[Reason, list[str]] | None,
) -> None:
    if expected is None:
        validate_provider_config(candidate, deployment_keys, "pc.")
        return
    with pytest.raises(DomainError) as caught:
        validate_provider_config(candidate, deployment_keys, "pc.")
    reason, fields = expected
    assert caught.value.reason is reason, label
    assert [v.field for v in caught.value.field_violations] == fields, label


def test_the_missing_key_message_names_the_family_and_the_deployment_key() -> None:
    with pytest.raises(DomainError) as caught:
        validate_provider_config(config(Family.ANTHROPIC), {}, "")
    assert "anthropic" in caught.value.message
    assert "deployment key" in caught.value.message


# ---------------------------------------------------------------- credential facts (the one helper)


FACT_CASES: list[tuple[str, ProviderConfig, Mapping[Family, str], CredentialFacts]] = [
    ("stored", config(key="sk"), {}, CredentialFacts(True, True, KeySource.STORED)),
    ("stored beats deployment", config(key="sk"), DK, CredentialFacts(True, True, KeySource.STORED)),
    ("deployment", config(), DK, CredentialFacts(False, True, KeySource.DEPLOYMENT)),
    ("white-space deployment key", config(), {Family.OPENAI: "  "}, CredentialFacts(False, False, None)),
    ("another family's deployment", config(Family.ANTHROPIC), DK, CredentialFacts(False, False, None)),
    ("nothing", config(flags=(True, True, False)), {}, CredentialFacts(False, False, None)),
    ("white-space stored key is no key", config(key=" "), {}, CredentialFacts(False, False, None)),
    (
        "C=0 ignores the stored key",
        config(flags=(False, True, False), key="sk"),
        {},
        CredentialFacts(True, False, None),
    ),
    ("C=0 ignores the deployment key", config(flags=(False, True, False)), DK, CredentialFacts(False, False, None)),
    ("bedrock ambient", config(Family.BEDROCK), {}, CredentialFacts(False, True, KeySource.AMBIENT)),
    (
        "bedrock deployment",
        config(Family.BEDROCK),
        {Family.BEDROCK: "dk"},
        CredentialFacts(False, True, KeySource.DEPLOYMENT),
    ),
    ("bedrock C=0", config(Family.BEDROCK, flags=(False, True, False)), {}, CredentialFacts(False, False, None)),
]


@pytest.mark.parametrize(("label", "candidate", "deployment_keys", "expected"), FACT_CASES)
def test_credential_facts(
    label: str, candidate: ProviderConfig, deployment_keys: Mapping[Family, str], expected: CredentialFacts
) -> None:
    assert credential_facts(candidate, deployment_keys) == expected, label


def test_an_undecryptable_stored_key_is_stored_but_not_usable() -> None:
    candidate = ProviderConfig(id="p", family=Family.OPENAI, display_name="P", api_key=StoredKey(None))
    assert credential_facts(candidate, DK) == CredentialFacts(True, False, KeySource.STORED)
    central = central_credential(candidate, DK)
    assert central.undecryptable and not central.usable and central.secret is None


def test_central_credential_carries_the_secret_of_its_source() -> None:
    assert central_credential(config(key="sk-stored"), DK).secret == "sk-stored"
    assert central_credential(config(), DK).secret == "dk-openai"
    assert central_credential(config(Family.BEDROCK), {}).secret is None


def test_secrets_stay_out_of_reprs() -> None:
    candidate = config(key="sk-hidden-in-repr")
    assert "sk-hidden-in-repr" not in repr(candidate)
    assert "sk-hidden-in-repr" not in repr(StoredKey("sk-hidden-in-repr"))
    assert "dk-openai" not in repr(central_credential(config(), DK))


def test_the_keyring_can_come_from_a_file(tmp_path: Path) -> None:
    from modelroute_server.adapters.crypto import generate_keyring_spec
    from modelroute_server.settings import SettingsError, settings_from_env

    spec = generate_keyring_spec("from-file")
    keyring_file = tmp_path / "keyring"
    keyring_file.write_text(spec + "\n")
    keyring_file.chmod(0o600)
    assert settings_from_env({"MODELROUTE_KEYRING_FILE": str(keyring_file)}).keyring == spec
    # The variable itself wins over the file.
    other = generate_keyring_spec("from-env")
    assert (
        settings_from_env({"MODELROUTE_KEYRING": other, "MODELROUTE_KEYRING_FILE": str(keyring_file)}).keyring == other
    )
    with pytest.raises(SettingsError, match="MODELROUTE_KEYRING_FILE: cannot read"):
        settings_from_env({"MODELROUTE_KEYRING_FILE": str(tmp_path / "missing")})


def test_deployment_keys_come_from_the_environment() -> None:
    from modelroute_server.settings import SettingsError, deployment_keys_from_env

    keys = deployment_keys_from_env(
        {"MODELROUTE_DEPLOYMENT_KEY_OPENAI": "dk-a", "MODELROUTE_DEPLOYMENT_KEY_OPENAI_COMPAT": "dk-b", "OTHER": "x"}
    )
    assert keys == {Family.OPENAI: "dk-a", Family.OPENAI_COMPAT: "dk-b"}
    with pytest.raises(SettingsError, match="white space"):
        deployment_keys_from_env({"MODELROUTE_DEPLOYMENT_KEY_GOOGLE": " dk "})
