"""Page tokens, update-mask resolution and list filters (pure edge logic)."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from modelroute_server.adapters.notifications import parse_change_payload
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.domain.families import Family
from modelroute_server.entrypoints.convert import model_filter, provider_filter, resolve_mask
from modelroute_server.service_layer.paging import MAX_PAGE_SIZE, PageTokens, page_size

TOKENS = PageTokens([b"k" * 32])


def test_page_token_round_trip_and_binding_to_the_query() -> None:
    token = TOKENS.encode("openai-2", "q=1")
    assert TOKENS.decode(token, "q=1") == "openai-2"
    assert TOKENS.decode("", "q=1") is None
    with pytest.raises(DomainError) as other_query:
        TOKENS.decode(token, "q=2")
    assert other_query.value.reason is Reason.PAGE_TOKEN_INVALID


@pytest.mark.parametrize(
    "mutate", [lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), lambda t: "x" + t, lambda t: "!!"]
)
def test_tampered_page_tokens_are_rejected(mutate: object) -> None:
    token = TOKENS.encode("openai-2", "q")
    with pytest.raises(DomainError) as caught:
        TOKENS.decode(mutate(token), "q")  # type: ignore[operator]
    assert caught.value.reason is Reason.PAGE_TOKEN_INVALID
    assert caught.value.field_violations[0].field == "page_token"


def test_a_token_signed_with_another_key_is_rejected() -> None:
    with pytest.raises(DomainError):
        PageTokens([b"other" * 8]).decode(TOKENS.encode("a", "q"), "q")


def test_tokens_survive_a_key_rotation_across_replicas() -> None:
    old, new = b"o" * 32, b"n" * 32
    before_rotation = PageTokens([old])  # a replica that has not restarted yet
    after_rotation = PageTokens([new, old])  # new primary, old key kept
    assert after_rotation.decode(before_rotation.encode("a", "q"), "q") == "a"
    assert PageTokens([old, new]).decode(after_rotation.encode("b", "q"), "q") == "b"


def test_page_size_defaults_caps_and_rejects_negative() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(DomainError):
        page_size(-1)


ALLOWED = frozenset({"display_name", "enabled", "policy.c", "policy.u"})
GROUPS = {"policy": frozenset({"policy.c", "policy.u"})}


@pytest.mark.parametrize(
    ("paths", "populated", "expected"),
    [
        (None, ["display_name"], {"display_name"}),
        ([], ["enabled", "family"], {"enabled", "family"}),
        (["enabled"], ["display_name"], {"enabled"}),
        (["policy"], [], {"policy.c", "policy.u"}),
        (["*"], [], set(ALLOWED)),
        (["*"], ["family"], set(ALLOWED) | {"family"}),
        (["family"], [], {"family"}),
    ],
)
def test_update_mask_resolution(paths: list[str] | None, populated: list[str], expected: set[str]) -> None:
    mask = None if paths is None else field_mask_pb2.FieldMask(paths=paths)
    assert resolve_mask(mask, populated, ALLOWED, GROUPS, immutable=frozenset({"family"})) == expected


@pytest.mark.parametrize("bad", ["nope", "has_api_key", "policy.x", "display_name.inner"])
def test_unknown_mask_paths_are_rejected_by_name(bad: str) -> None:
    with pytest.raises(DomainError) as caught:
        resolve_mask(field_mask_pb2.FieldMask(paths=["enabled", bad]), [], ALLOWED, GROUPS)
    assert caught.value.reason is Reason.UPDATE_MASK_INVALID
    assert bad in caught.value.field_violations[0].description


def test_filters_parse_families_and_booleans() -> None:
    assert provider_filter("").family is None
    parsed = provider_filter('family = "FAMILY_OPENAI_COMPAT" AND enabled = false')
    assert (parsed.family, parsed.enabled) == (Family.OPENAI_COMPAT, False)
    assert provider_filter("family=openai-compat").family is Family.OPENAI_COMPAT
    listed = model_filter("is_default = true", show_deleted=True)
    assert (listed.is_default, listed.show_deleted) == (True, True)


@pytest.mark.parametrize(
    "bad", ["family = mistral", "enabled = maybe", "family = openai OR enabled = true", "colour = red", "family"]
)
def test_bad_filters_are_rejected(bad: str) -> None:
    with pytest.raises(DomainError) as caught:
        provider_filter(bad)
    assert caught.value.reason is Reason.FILTER_INVALID


@pytest.mark.parametrize(("payload", "sequence"), [("7", 7), ("123456789012", 123456789012)])
def test_a_notification_carries_the_change_sequence(payload: str, sequence: int) -> None:
    assert parse_change_payload(payload) == sequence


@pytest.mark.parametrize("payload", ["", "x", "7 user-key only-two", "token a b"])
def test_an_unexpected_payload_means_catching_up_from_the_log(payload: str) -> None:
    assert parse_change_payload(payload) is None
