"""The pure resolver against the resolution rules of docs/behaviour.md, written out row by row.

Every expectation below is written by hand from the rule order in docs/behaviour.md; nothing
here re-implements the rules. The integration tests reuse `TRUTH_TABLE`.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pytest

from modelroute_server.domain.families import Family
from modelroute_server.domain.models import Attachment, ModelConfig
from modelroute_server.domain.providers import CredentialPolicy, KeySource, ProviderConfig, StoredKey
from modelroute_server.domain.resolver import (
    AttachmentOutcome,
    FixableBy,
    ModelUnusableReason,
    Resolution,
    SkipReason,
    WhatIf,
    prepare_provider,
    resolve,
    resolve_prepared,
)

STORED_KEY = "sk-stored-central"
DEPLOYMENT_KEY = "sk-deployment-env"
USER_KEY = "sk-user-own"

STORED = KeySource.STORED
DEPLOYMENT = KeySource.DEPLOYMENT
USER = KeySource.USER
AMBIENT = KeySource.AMBIENT
USER_KEY_REQUIRED = SkipReason.USER_KEY_REQUIRED
CENTRAL_KEY_MISSING = SkipReason.CENTRAL_KEY_MISSING


@dataclass(frozen=True)
class Row:
    """One truth-table row: the inputs and the hand-written expected outcome."""

    policy: str  # "CUF", e.g. "110"
    central: str  # "stored" | "deployment" | "none"
    user_key: bool  # the user has a key for this very provider config
    family: str  # "bedrock" | "other"
    expected: KeySource | SkipReason
    secret: str | None  # the key string handed out; None when skipped or ambient

    @property
    def id(self) -> str:
        user = "user" if self.user_key else "nouser"
        return f"{self.policy}-{self.central}-{user}-{self.family}"

    @property
    def credential_policy(self) -> CredentialPolicy:
        c, u, f = (flag == "1" for flag in self.policy)
        return CredentialPolicy(c, u, f)

    @property
    def usable(self) -> bool:
        return isinstance(self.expected, KeySource)


# fmt: off
TRUTH_TABLE: tuple[Row, ...] = (
    # (1,0,0) central key only: a user key is never looked at.
    Row("100", "stored",     True,  "bedrock", STORED,              STORED_KEY),
    Row("100", "stored",     True,  "other",   STORED,              STORED_KEY),
    Row("100", "stored",     False, "bedrock", STORED,              STORED_KEY),
    Row("100", "stored",     False, "other",   STORED,              STORED_KEY),
    Row("100", "deployment", True,  "bedrock", DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("100", "deployment", True,  "other",   DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("100", "deployment", False, "bedrock", DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("100", "deployment", False, "other",   DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("100", "none",       True,  "bedrock", AMBIENT,             None),
    Row("100", "none",       True,  "other",   CENTRAL_KEY_MISSING, None),
    Row("100", "none",       False, "bedrock", AMBIENT,             None),
    Row("100", "none",       False, "other",   CENTRAL_KEY_MISSING, None),
    # (0,1,0) user keys only: a stored or deployment key exists but C=0 never uses it.
    Row("010", "stored",     True,  "bedrock", USER,                USER_KEY),
    Row("010", "stored",     True,  "other",   USER,                USER_KEY),
    Row("010", "stored",     False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("010", "stored",     False, "other",   USER_KEY_REQUIRED,   None),
    Row("010", "deployment", True,  "bedrock", USER,                USER_KEY),
    Row("010", "deployment", True,  "other",   USER,                USER_KEY),
    Row("010", "deployment", False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("010", "deployment", False, "other",   USER_KEY_REQUIRED,   None),
    Row("010", "none",       True,  "bedrock", USER,                USER_KEY),
    Row("010", "none",       True,  "other",   USER,                USER_KEY),
    Row("010", "none",       False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("010", "none",       False, "other",   USER_KEY_REQUIRED,   None),
    # (1,1,0) user key required: the central key (or ambient) never serves a user.
    Row("110", "stored",     True,  "bedrock", USER,                USER_KEY),
    Row("110", "stored",     True,  "other",   USER,                USER_KEY),
    Row("110", "stored",     False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("110", "stored",     False, "other",   USER_KEY_REQUIRED,   None),
    Row("110", "deployment", True,  "bedrock", USER,                USER_KEY),
    Row("110", "deployment", True,  "other",   USER,                USER_KEY),
    Row("110", "deployment", False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("110", "deployment", False, "other",   USER_KEY_REQUIRED,   None),
    Row("110", "none",       True,  "bedrock", USER,                USER_KEY),
    Row("110", "none",       True,  "other",   USER,                USER_KEY),
    Row("110", "none",       False, "bedrock", USER_KEY_REQUIRED,   None),
    Row("110", "none",       False, "other",   USER_KEY_REQUIRED,   None),
    # (1,1,1) user key preferred, central key (stored, else deployment, else ambient) when the user has none.
    Row("111", "stored",     True,  "bedrock", USER,                USER_KEY),
    Row("111", "stored",     True,  "other",   USER,                USER_KEY),
    Row("111", "stored",     False, "bedrock", STORED,              STORED_KEY),
    Row("111", "stored",     False, "other",   STORED,              STORED_KEY),
    Row("111", "deployment", True,  "bedrock", USER,                USER_KEY),
    Row("111", "deployment", True,  "other",   USER,                USER_KEY),
    Row("111", "deployment", False, "bedrock", DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("111", "deployment", False, "other",   DEPLOYMENT,          DEPLOYMENT_KEY),
    Row("111", "none",       True,  "bedrock", USER,                USER_KEY),
    Row("111", "none",       True,  "other",   USER,                USER_KEY),
    Row("111", "none",       False, "bedrock", AMBIENT,             None),
    Row("111", "none",       False, "other",   USER_KEY_REQUIRED,   None),
)
# fmt: on

# Who can fix each skip reason (written out, not derived).
FIXABLE_BY: Mapping[SkipReason, FixableBy] = {
    SkipReason.PROVIDER_DISABLED: FixableBy.ADMIN,
    SkipReason.USER_KEY_REQUIRED: FixableBy.USER,
    SkipReason.CENTRAL_KEY_MISSING: FixableBy.ADMIN,
    SkipReason.INVALID_CONFIG: FixableBy.ADMIN,
    # KEY_UNDECRYPTABLE depends on whose key it is: see the two undecryptable tables.
}

# Every non-bedrock family stands in for "other"; these two need a base URL to be a working config.
OTHER_FAMILIES: tuple[Family, ...] = tuple(f for f in Family if f is not Family.BEDROCK)
BASE_URLS: Mapping[Family, str] = {
    Family.AZURE: "https://example-resource.openai.azure.com",
    Family.OPENAI_COMPAT: "https://llm-proxy.internal.example/v1",
}


def make_provider(
    provider_id: str,
    family: Family,
    policy: CredentialPolicy,
    *,
    api_key: StoredKey | None = None,
    enabled: bool = True,
    base_url: str | None = None,
) -> ProviderConfig:
    return ProviderConfig(
        id=provider_id,
        family=family,
        display_name=provider_id,
        base_url=base_url if base_url is not None else BASE_URLS.get(family),
        enabled=enabled,
        policy=policy,
        api_key=api_key,
    )


def make_model(family: Family, attachments: tuple[str, ...], enabled: bool = True) -> ModelConfig:
    return ModelConfig(
        id="m",
        family=family,
        model="upstream-model",
        display_name="M",
        context_limit=100_000,
        attachments=attachments,
        enabled=enabled,
    )


def row_inputs(
    row: Row, family: Family
) -> tuple[ModelConfig, dict[str, ProviderConfig], dict[str, StoredKey], dict[Family, str]]:
    provider = make_provider(
        "p",
        family,
        row.credential_policy,
        api_key=StoredKey(STORED_KEY) if row.central == "stored" else None,
    )
    deployment_keys = {family: DEPLOYMENT_KEY} if row.central == "deployment" else {}
    user_keys = {"p": StoredKey(USER_KEY)} if row.user_key else {}
    return make_model(family, ("p",)), {"p": provider}, user_keys, deployment_keys


def only(resolution: Resolution) -> AttachmentOutcome:
    assert len(resolution.outcomes) == 1
    return resolution.outcomes[0]


def assert_usable(outcome: AttachmentOutcome, source: KeySource, secret: str | None) -> None:
    assert outcome.skip_reason is None, outcome.message
    assert outcome.fixable_by is None
    assert outcome.key_source is source
    assert outcome.secret == secret


def assert_skipped(outcome: AttachmentOutcome, reason: SkipReason, fixable_by: FixableBy) -> None:
    assert outcome.skip_reason is reason, (outcome.skip_reason, outcome.key_source)
    assert outcome.fixable_by is fixable_by
    assert outcome.key_source is None
    assert outcome.secret is None
    assert outcome.message


def test_truth_table_is_complete() -> None:
    combos = {(r.policy, r.central, r.user_key, r.family) for r in TRUTH_TABLE}
    expected = set(
        itertools.product(
            ("100", "010", "110", "111"), ("stored", "deployment", "none"), (True, False), ("bedrock", "other")
        )
    )
    assert len(TRUTH_TABLE) == 48
    assert combos == expected


# How the attachment sits in its model: (the model's family is the provider config's, the override). An
# attachment of another family exists only with an override; the verdict never depends on either.
ATTACHMENT_SHAPES = {
    "same-family": (True, ""),
    "same-family-override": (True, "deployment-7"),
    "cross-family-override": (False, "vendor/upstream-7"),
}


def shaped(model: ModelConfig, provider_family: Family, shape: str) -> ModelConfig:
    same_family, override = ATTACHMENT_SHAPES[shape]
    other = Family.OPENROUTER if provider_family is not Family.OPENROUTER else Family.OPENAI
    family = provider_family if same_family else other
    return replace(model, family=family).with_attachments([Attachment(a, override) for a in model.attachments])


@pytest.mark.parametrize("shape", ATTACHMENT_SHAPES)
@pytest.mark.parametrize("row", TRUTH_TABLE, ids=lambda r: r.id)
def test_truth_table(row: Row, shape: str) -> None:
    families = (Family.BEDROCK,) if row.family == "bedrock" else OTHER_FAMILIES
    override = ATTACHMENT_SHAPES[shape][1]
    for family in families:
        model, providers, user_keys, deployment_keys = row_inputs(row, family)
        model = shaped(model, family, shape)
        resolution = resolve(model, providers, user_keys, deployment_keys)
        outcome = only(resolution)
        assert outcome.provider_config_id == "p"
        assert outcome.position == 0
        assert outcome.family is family  # the provider config's own, whatever the model's
        assert outcome.base_url == BASE_URLS.get(family)
        # The name it carries is the only difference an override makes.
        assert outcome.model_override == override
        assert resolution.upstream_model(outcome) == (override or "upstream-model")
        if isinstance(row.expected, KeySource):
            assert_usable(outcome, row.expected, row.secret)
            assert resolution.selected == outcome
            assert resolution.skipped == ()
            assert resolution.unusable_reason is None
        else:
            assert row.secret is None
            assert_skipped(outcome, row.expected, FIXABLE_BY[row.expected])
            assert resolution.selected is None
            assert resolution.skipped == (outcome,)
            assert resolution.unusable_reason is ModelUnusableReason.NO_USABLE_ATTACHMENT
        assert resolution.fallbacks == ()


def test_stored_key_wins_over_deployment_key() -> None:
    provider = make_provider("p", Family.OPENAI, CredentialPolicy(), api_key=StoredKey(STORED_KEY))
    outcome = only(resolve(make_model(Family.OPENAI, ("p",)), {"p": provider}, {}, {Family.OPENAI: DEPLOYMENT_KEY}))
    assert_usable(outcome, STORED, STORED_KEY)


def test_deployment_key_of_another_family_never_applies() -> None:
    provider = make_provider("p", Family.OPENAI, CredentialPolicy())
    deployment_keys = {Family.ANTHROPIC: DEPLOYMENT_KEY, Family.OPENROUTER: DEPLOYMENT_KEY}
    outcome = only(resolve(make_model(Family.OPENAI, ("p",)), {"p": provider}, {}, deployment_keys))
    assert_skipped(outcome, CENTRAL_KEY_MISSING, FixableBy.ADMIN)


def test_user_key_of_another_config_never_applies() -> None:
    """Keys are per provider config id: a key for the sibling `q` never serves `p` (trap 3)."""
    p = make_provider("p", Family.OPENAI, CredentialPolicy(False, True, False))
    q = make_provider("q", Family.OPENAI, CredentialPolicy(False, True, False), base_url="https://proxy.example")
    resolution = resolve(make_model(Family.OPENAI, ("p", "q")), {"p": p, "q": q}, {"q": StoredKey(USER_KEY)}, {})
    assert_skipped(resolution.outcomes[0], USER_KEY_REQUIRED, FixableBy.USER)
    assert_usable(resolution.outcomes[1], USER, USER_KEY)
    assert resolution.selected is not None
    assert resolution.selected.provider_config_id == "q"
    assert resolution.selected.base_url == "https://proxy.example"


# ---------------------------------------------------------------- disabled provider

POLICIES = {"100": CredentialPolicy(True, False, False), "010": CredentialPolicy(False, True, False)}
POLICIES |= {"110": CredentialPolicy(True, True, False), "111": CredentialPolicy(True, True, True)}


@pytest.mark.parametrize("family", [Family.BEDROCK, Family.OPENAI, Family.AZURE])
@pytest.mark.parametrize("policy", ["100", "010", "110", "111"])
def test_disabled_provider_is_skipped_whatever_its_keys(policy: str, family: Family) -> None:
    provider = make_provider("p", family, POLICIES[policy], api_key=StoredKey(STORED_KEY), enabled=False)
    resolution = resolve(
        make_model(family, ("p",)), {"p": provider}, {"p": StoredKey(USER_KEY)}, {family: DEPLOYMENT_KEY}
    )
    assert_skipped(only(resolution), SkipReason.PROVIDER_DISABLED, FixableBy.ADMIN)
    assert resolution.unusable_reason is ModelUnusableReason.NO_USABLE_ATTACHMENT


# ---------------------------------------------------------------- undecryptable keys

UNDECRYPTABLE = StoredKey(None)

# policy, family, user key present, deployment key configured -> expected (source, secret) or (reason, fixable_by)
# fmt: off
UNDECRYPTABLE_CENTRAL_TABLE: tuple[tuple[str, Family, bool, bool, object, object], ...] = (
    ("100", Family.OPENAI,  False, False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.ADMIN),
    ("100", Family.OPENAI,  True,  False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.ADMIN),
    # The stored key is the central key; a deployment key never silently replaces a broken one.
    ("100", Family.OPENAI,  False, True,  SkipReason.KEY_UNDECRYPTABLE, FixableBy.ADMIN),
    # Nor does ambient: a stored key exists for the bedrock config.
    ("100", Family.BEDROCK, False, False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.ADMIN),
    ("111", Family.OPENAI,  False, False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.ADMIN),
    ("111", Family.OPENAI,  True,  False, USER,                         USER_KEY),
    ("110", Family.OPENAI,  False, False, USER_KEY_REQUIRED,            FixableBy.USER),
    ("110", Family.OPENAI,  True,  False, USER,                         USER_KEY),
    # C=0: the broken stored key is never chosen, so it never matters.
    ("010", Family.OPENAI,  False, False, USER_KEY_REQUIRED,            FixableBy.USER),
    ("010", Family.OPENAI,  True,  False, USER,                         USER_KEY),
)
# fmt: on


@pytest.mark.parametrize(
    ("policy", "family", "user_key", "deployment", "expected", "detail"), UNDECRYPTABLE_CENTRAL_TABLE
)
def test_undecryptable_stored_key(
    policy: str, family: Family, user_key: bool, deployment: bool, expected: object, detail: object
) -> None:
    provider = make_provider("p", family, POLICIES[policy], api_key=UNDECRYPTABLE)
    assert provider.has_api_key  # the admin must see a key is stored, even a broken one
    user_keys = {"p": StoredKey(USER_KEY)} if user_key else {}
    deployment_keys = {family: DEPLOYMENT_KEY} if deployment else {}
    outcome = only(resolve(make_model(family, ("p",)), {"p": provider}, user_keys, deployment_keys))
    if isinstance(expected, KeySource):
        assert isinstance(detail, str)
        assert_usable(outcome, expected, detail)
    else:
        assert isinstance(expected, SkipReason) and isinstance(detail, FixableBy)
        assert_skipped(outcome, expected, detail)


# policy, central stored key -> expected (source, secret) or (reason, fixable_by)
# fmt: off
UNDECRYPTABLE_USER_TABLE: tuple[tuple[str, bool, object, object], ...] = (
    ("010", False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.USER),
    ("110", True,  SkipReason.KEY_UNDECRYPTABLE, FixableBy.USER),
    ("110", False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.USER),
    # The user has a key (rule 1 chooses it); it cannot be decrypted, so the user must set it again.
    ("111", True,  SkipReason.KEY_UNDECRYPTABLE, FixableBy.USER),
    ("111", False, SkipReason.KEY_UNDECRYPTABLE, FixableBy.USER),
    # U=0: the user's key is never looked at.
    ("100", True,  STORED,                       STORED_KEY),
)
# fmt: on


@pytest.mark.parametrize(("policy", "stored", "expected", "detail"), UNDECRYPTABLE_USER_TABLE)
def test_undecryptable_user_key(policy: str, stored: bool, expected: object, detail: object) -> None:
    provider = make_provider("p", Family.OPENAI, POLICIES[policy], api_key=StoredKey(STORED_KEY) if stored else None)
    outcome = only(resolve(make_model(Family.OPENAI, ("p",)), {"p": provider}, {"p": UNDECRYPTABLE}, {}))
    if isinstance(expected, KeySource):
        assert isinstance(detail, str)
        assert_usable(outcome, expected, detail)
    else:
        assert isinstance(expected, SkipReason) and isinstance(detail, FixableBy)
        assert_skipped(outcome, expected, detail)


# ---------------------------------------------------------------- configs that cannot produce a client


# first attachment's base URL, family -> the first attachment is skipped INVALID_CONFIG, the walk goes on
# fmt: off
INVALID_CONFIG_TABLE: tuple[tuple[Family, str], ...] = (
    (Family.AZURE,         ""),
    (Family.OPENAI_COMPAT, ""),
    (Family.AZURE,         "ftp://example-resource.openai.azure.com"),
    (Family.OPENAI,        "not a url"),
    (Family.OPENROUTER,    "https://"),
)
# fmt: on


@pytest.mark.parametrize(("family", "base_url"), INVALID_CONFIG_TABLE)
def test_invalid_config_is_skipped_and_the_walk_goes_on(family: Family, base_url: str) -> None:
    broken = make_provider("broken", family, CredentialPolicy(), api_key=StoredKey("sk-broken"), base_url=base_url)
    working = make_provider(
        "working", family, CredentialPolicy(), api_key=StoredKey(STORED_KEY), base_url="https://ok.example"
    )
    providers = {"broken": broken, "working": working}
    resolution = resolve(make_model(family, ("broken", "working")), providers, {}, {})
    first, second = resolution.outcomes
    assert_skipped(first, SkipReason.INVALID_CONFIG, FixableBy.ADMIN)
    assert "base_url" in first.message
    assert "sk-broken" not in first.message
    assert_usable(second, STORED, STORED_KEY)
    assert resolution.selected == second
    assert resolution.selected.base_url == "https://ok.example"
    assert resolution.skipped == (first,)


def test_invalid_config_comes_after_the_key_rules() -> None:
    """The rule order of docs/behaviour.md: disabled, then the key, then the client check."""
    disabled = make_provider("a", Family.AZURE, CredentialPolicy(), api_key=StoredKey("k"), base_url="", enabled=False)
    keyless = make_provider("b", Family.AZURE, CredentialPolicy(), base_url="")
    user_only = make_provider("c", Family.AZURE, CredentialPolicy(False, True, False), base_url="")
    providers = {"a": disabled, "b": keyless, "c": user_only}
    resolution = resolve(make_model(Family.AZURE, ("a", "b", "c")), providers, {}, {})
    assert [o.skip_reason for o in resolution.outcomes] == [
        SkipReason.PROVIDER_DISABLED,
        SkipReason.CENTRAL_KEY_MISSING,
        SkipReason.USER_KEY_REQUIRED,
    ]
    with_user_key = resolve(make_model(Family.AZURE, ("c",)), providers, {"c": StoredKey(USER_KEY)}, {})
    assert_skipped(only(with_user_key), SkipReason.INVALID_CONFIG, FixableBy.ADMIN)


# ---------------------------------------------------------------- fixable_by


@pytest.mark.parametrize(
    ("provider", "user_keys", "reason", "fixable_by"),
    [
        (
            make_provider("p", Family.OPENAI, CredentialPolicy(), api_key=StoredKey("k"), enabled=False),
            {},
            SkipReason.PROVIDER_DISABLED,
            FixableBy.ADMIN,
        ),
        (
            make_provider("p", Family.OPENAI, CredentialPolicy(True, True, False), api_key=StoredKey("k")),
            {},
            SkipReason.USER_KEY_REQUIRED,
            FixableBy.USER,
        ),
        (
            make_provider("p", Family.OPENAI, CredentialPolicy()),
            {},
            SkipReason.CENTRAL_KEY_MISSING,
            FixableBy.ADMIN,
        ),
        (
            make_provider("p", Family.OPENAI, CredentialPolicy(), api_key=UNDECRYPTABLE),
            {},
            SkipReason.KEY_UNDECRYPTABLE,
            FixableBy.ADMIN,
        ),
        (
            make_provider("p", Family.OPENAI, CredentialPolicy(False, True, False)),
            {"p": UNDECRYPTABLE},
            SkipReason.KEY_UNDECRYPTABLE,
            FixableBy.USER,
        ),
        (
            make_provider("p", Family.AZURE, CredentialPolicy(), api_key=StoredKey("k"), base_url=""),
            {},
            SkipReason.INVALID_CONFIG,
            FixableBy.ADMIN,
        ),
    ],
    ids=["disabled", "user-key-required", "central-missing", "undecryptable-stored", "undecryptable-user", "invalid"],
)
def test_fixable_by_for_each_reason(
    provider: ProviderConfig, user_keys: dict[str, StoredKey], reason: SkipReason, fixable_by: FixableBy
) -> None:
    outcome = only(resolve(make_model(provider.family, ("p",)), {"p": provider}, user_keys, {}))
    assert_skipped(outcome, reason, fixable_by)


# ---------------------------------------------------------------- order, fallbacks, disabled model


def five_attachments() -> tuple[ModelConfig, dict[str, ProviderConfig], dict[str, StoredKey]]:
    providers = {
        "a-user-only": make_provider("a-user-only", Family.OPENAI, CredentialPolicy(False, True, False)),
        "b-disabled": make_provider(
            "b-disabled", Family.OPENAI, CredentialPolicy(), api_key=StoredKey("k-b"), enabled=False
        ),
        "c-stored": make_provider("c-stored", Family.OPENAI, CredentialPolicy(), api_key=StoredKey("k-c")),
        "d-keyless": make_provider("d-keyless", Family.OPENAI, CredentialPolicy()),
        "e-user": make_provider("e-user", Family.OPENAI, CredentialPolicy(True, True, True), api_key=StoredKey("k-e")),
        "f-stored": make_provider("f-stored", Family.OPENAI, CredentialPolicy(), api_key=StoredKey("k-f")),
    }
    order = ("a-user-only", "b-disabled", "c-stored", "d-keyless", "e-user", "f-stored")
    return make_model(Family.OPENAI, order), providers, {"e-user": StoredKey("k-user-e")}


def test_first_usable_is_selected_and_the_rest_are_fallbacks_in_order() -> None:
    model, providers, user_keys = five_attachments()
    resolution = resolve(model, providers, user_keys, {})
    assert [(o.provider_config_id, o.position, o.skip_reason) for o in resolution.outcomes] == [
        ("a-user-only", 0, SkipReason.USER_KEY_REQUIRED),
        ("b-disabled", 1, SkipReason.PROVIDER_DISABLED),
        ("c-stored", 2, None),
        ("d-keyless", 3, SkipReason.CENTRAL_KEY_MISSING),
        ("e-user", 4, None),
        ("f-stored", 5, None),
    ]
    assert resolution.selected is not None
    assert (resolution.selected.provider_config_id, resolution.selected.secret) == ("c-stored", "k-c")
    assert [(o.provider_config_id, o.key_source, o.secret) for o in resolution.fallbacks] == [
        ("e-user", USER, "k-user-e"),
        ("f-stored", STORED, "k-f"),
    ]
    assert [o.provider_config_id for o in resolution.skipped] == ["a-user-only", "b-disabled", "d-keyless"]


def test_disabled_model_selects_nothing_but_still_explains_every_attachment() -> None:
    model, providers, user_keys = five_attachments()
    disabled = replace(model, enabled=False)
    resolution = resolve(disabled, providers, user_keys, {})
    assert resolution.selected is None
    assert resolution.fallbacks == ()
    assert resolution.unusable_reason is ModelUnusableReason.MODEL_DISABLED
    assert [o.usable for o in resolution.outcomes] == [False, False, True, False, True, True]


# ---------------------------------------------------------------- what-if overrides


def test_what_if_overrides_change_the_outcome_without_mutating_inputs() -> None:
    model, providers, user_keys = five_attachments()
    deployment_keys: dict[Family, str] = {}
    before = (copy.deepcopy(model), copy.deepcopy(providers), copy.deepcopy(user_keys), dict(deployment_keys))
    baseline = resolve(model, providers, user_keys, deployment_keys)

    what_if = WhatIf(
        user_has_key={"a-user-only": True, "e-user": False},
        provider_enabled={"b-disabled": True, "c-stored": False},
    )
    changed = resolve(model, providers, user_keys, deployment_keys, what_if)
    outcomes = {o.provider_config_id: o for o in changed.outcomes}
    assert outcomes["a-user-only"].key_source is USER
    assert outcomes["b-disabled"].key_source is STORED
    assert outcomes["b-disabled"].secret == "k-b"
    assert_skipped(outcomes["c-stored"], SkipReason.PROVIDER_DISABLED, FixableBy.ADMIN)
    assert_usable(outcomes["e-user"], STORED, "k-e")  # lacks the user key: falls back to the central key
    assert changed.selected is not None and changed.selected.provider_config_id == "a-user-only"

    assert (model, providers, user_keys, deployment_keys) == before
    assert providers["b-disabled"].enabled is False and providers["c-stored"].enabled is True
    assert resolve(model, providers, user_keys, deployment_keys) == baseline
    assert baseline.selected is not None and baseline.selected.provider_config_id == "c-stored"


@pytest.mark.parametrize(
    ("policy", "has_key", "expected"),
    [
        ("010", True, USER),
        ("010", False, USER_KEY_REQUIRED),
        ("110", True, USER),
        ("110", False, USER_KEY_REQUIRED),
        ("111", True, USER),
        ("111", False, STORED),
        # U=0: a what-if user key changes nothing.
        ("100", True, STORED),
        ("100", False, STORED),
    ],
)
def test_what_if_user_key(policy: str, has_key: bool, expected: KeySource | SkipReason) -> None:
    provider = make_provider("p", Family.OPENAI, POLICIES[policy], api_key=StoredKey(STORED_KEY))
    real_user_keys = {} if has_key else {"p": StoredKey(USER_KEY)}
    outcome = only(
        resolve(
            make_model(Family.OPENAI, ("p",)),
            {"p": provider},
            real_user_keys,
            {},
            WhatIf(user_has_key={"p": has_key}),
        )
    )
    if isinstance(expected, KeySource):
        assert outcome.key_source is expected
        if expected is STORED:
            assert outcome.secret == STORED_KEY
    else:
        assert_skipped(outcome, expected, FixableBy.USER)
    assert real_user_keys == ({} if has_key else {"p": StoredKey(USER_KEY)})


def test_what_if_for_a_provider_not_attached_changes_nothing() -> None:
    provider = make_provider("p", Family.OPENAI, CredentialPolicy(), api_key=StoredKey(STORED_KEY))
    what_if = WhatIf(user_has_key={"other": True}, provider_enabled={"other": False})
    outcome = only(resolve(make_model(Family.OPENAI, ("p",)), {"p": provider}, {}, {}, what_if))
    assert_usable(outcome, STORED, STORED_KEY)


# ---------------------------------------------------------------- white-space keys never count


WHITE_SPACE = ("   ", "\t", " \n ")


@pytest.mark.parametrize("blank", WHITE_SPACE)
def test_white_space_stored_key_is_no_key(blank: str) -> None:
    assert not StoredKey(blank).present
    openai = make_provider("o", Family.OPENAI, CredentialPolicy(), api_key=StoredKey(blank))
    bedrock = make_provider("b", Family.BEDROCK, CredentialPolicy(), api_key=StoredKey(blank))
    fallback = make_provider("f", Family.OPENAI, CredentialPolicy(True, True, True), api_key=StoredKey(blank))
    assert not openai.has_api_key and not bedrock.has_api_key
    providers = {"o": openai, "b": bedrock, "f": fallback}
    assert_skipped(
        only(resolve(make_model(Family.OPENAI, ("o",)), providers, {}, {})), CENTRAL_KEY_MISSING, FixableBy.ADMIN
    )
    assert_usable(
        only(resolve(make_model(Family.OPENAI, ("o",)), providers, {}, {Family.OPENAI: DEPLOYMENT_KEY})),
        DEPLOYMENT,
        DEPLOYMENT_KEY,
    )
    assert_usable(only(resolve(make_model(Family.BEDROCK, ("b",)), providers, {}, {})), AMBIENT, None)
    assert_skipped(
        only(resolve(make_model(Family.OPENAI, ("f",)), providers, {}, {})), USER_KEY_REQUIRED, FixableBy.USER
    )


@pytest.mark.parametrize("blank", WHITE_SPACE)
def test_white_space_user_key_is_no_key(blank: str) -> None:
    user_only = make_provider("u", Family.OPENAI, CredentialPolicy(False, True, False))
    preferred = make_provider("p", Family.OPENAI, CredentialPolicy(True, True, True), api_key=StoredKey(STORED_KEY))
    providers = {"u": user_only, "p": preferred}
    user_keys = {"u": StoredKey(blank), "p": StoredKey(blank)}
    resolution = resolve(make_model(Family.OPENAI, ("u", "p")), providers, user_keys, {})
    assert_skipped(resolution.outcomes[0], USER_KEY_REQUIRED, FixableBy.USER)
    assert_usable(resolution.outcomes[1], STORED, STORED_KEY)


@pytest.mark.parametrize("blank", ["", *WHITE_SPACE])
def test_white_space_deployment_key_is_no_key(blank: str) -> None:
    provider = make_provider("p", Family.OPENAI, CredentialPolicy())
    outcome = only(resolve(make_model(Family.OPENAI, ("p",)), {"p": provider}, {}, {Family.OPENAI: blank}))
    assert_skipped(outcome, CENTRAL_KEY_MISSING, FixableBy.ADMIN)


# ---------------------------------------------------------------- overrides through the prepared verdicts


def test_models_sharing_a_prepared_verdict_each_carry_their_own_override() -> None:
    """One verdict per provider config serves every model; the name stays each model's (what-if too)."""
    provider = make_provider("p", Family.AZURE, CredentialPolicy(True, True, True), api_key=StoredKey(STORED_KEY))
    verdicts = {"p": prepare_provider(provider, {})}
    names = []
    for override in ("", "deployment-a", "deployment-b", ""):
        model = make_model(Family.OPENAI, ()).with_attachments([Attachment("p", override)])
        for user_keys, what_if in (({}, None), ({"p": StoredKey(USER_KEY)}, None), ({}, WhatIf({"p": True}))):
            resolution = resolve_prepared(model, verdicts, user_keys, what_if)
            assert resolution.selected is not None
            names.append(resolution.upstream_model(resolution.selected))
    assert names == ["upstream-model"] * 3 + ["deployment-a"] * 3 + ["deployment-b"] * 3 + ["upstream-model"] * 3
