"""ResolveModel's kept encodings decode to exactly the message built from the resolution."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import pytest

from modelroute.v1 import resolver_pb2
from modelroute_server.adapters.crypto import (
    Keyring,
    generate_keyring_spec,
    pack_sealed_keys,
    seal_bound,
    user_key_binding,
)
from modelroute_server.domain.changes import ChangeBatch, FullState
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import ModelConfig
from modelroute_server.domain.providers import CredentialPolicy, ProviderConfig, StoredKey
from modelroute_server.entrypoints import convert
from modelroute_server.entrypoints.convert import ResolveResponses, resolve_response
from modelroute_server.service_layer import resolution
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.snapshot import Snapshot, apply_changes, build_snapshot

KEYRING = Keyring.parse(generate_keyring_spec())
PREFERRED, USER_ONLY, CENTRAL = (
    CredentialPolicy(True, True, True),
    CredentialPolicy(False, True, False),
    CredentialPolicy(),
)


# One of them longer than 127 bytes (a two-byte length) and than 64 (several blocks of the memory seal).
DAVES_KEYS = {"user-only": "uk-dave-u", "preferred": "uk-dave-p-" + "k" * 190}


def snapshot() -> Snapshot:
    providers = [
        ProviderConfig("user-only", Family.OPENAI, "u", policy=USER_ONLY),
        ProviderConfig(
            "preferred",
            Family.OPENAI,
            "p",
            base_url="https://p.example/" + "v" * 300,
            api_key=StoredKey("sk-p"),
            policy=PREFERRED,
        ),  # a field longer than 127 bytes: a two-byte length
        ProviderConfig("disabled", Family.OPENAI, "d", enabled=False, api_key=StoredKey("sk-d")),
        ProviderConfig("central", Family.OPENAI, "c", base_url="https://c.example/v1", api_key=StoredKey("sk-c")),
    ]
    ids = tuple(p.id for p in providers)
    models = [
        ModelConfig("m", Family.OPENAI, "gpt-4o", "M", 1000, ids),
        ModelConfig("n", Family.OPENAI, "o3", "N", 1000, ids[::-1]),
    ]
    keys = {
        "alice": {"user-only": seal_bound(KEYRING, "uk-alice", partial(user_key_binding, "alice", "user-only"))},
        "bob": {"preferred": seal_bound(KEYRING, "uk-bob", partial(user_key_binding, "bob", "preferred"))},
        "dave": {  # two caller keys in one answer
            provider: seal_bound(KEYRING, DAVES_KEYS[provider], partial(user_key_binding, "dave", provider))
            for provider in ("user-only", "preferred")
        },
    }
    packed = [(user, pack_sealed_keys(k)) for user, k in keys.items()]
    return build_snapshot(FullState(7, 6, providers, models, packed, []), {})


CTX = ServiceContext(KEYRING, None)  # type: ignore[arg-type]  # resolution needs no unit of work


def answer(responses: ResolveResponses, current: Snapshot, model: str, user: str) -> bytes:
    """What the servicer does: a kept answer, else one decided now (and kept)."""
    kept = responses.kept(current, (model, user))
    if kept is not None:
        return kept
    resolved = resolution.resolve_model(CTX, current, model or None, user)
    return responses.response(resolved, current, (model, user))


def decoded(encoded: bytes | None) -> resolver_pb2.ResolveModelResponse:
    assert encoded is not None
    return resolver_pb2.ResolveModelResponse.FromString(encoded)


@pytest.mark.parametrize("model", ["m", "n"])
@pytest.mark.parametrize("user", ["", "alice", "bob", "carol", "dave"])
def test_kept_encodings_decode_to_the_built_message(model: str, user: str) -> None:
    current = snapshot()
    responses = ResolveResponses()
    resolved = resolution.resolve_model(CTX, current, model, user)
    expected = resolve_response(resolved, current.revision)
    assert decoded(answer(responses, current, model, user)) == expected  # built
    responses._answers.clear()
    assert decoded(answer(responses, current, model, user)) == expected  # from the kept encodings of its fields
    assert decoded(answer(responses, current, model, user)) == expected  # the kept answer
    assert bool(resolved.decided_by_caller) == (user in ("alice", "bob", "dave"))


def kept_bytes(responses: ResolveResponses) -> list[bytes]:
    """Every encoding the responses keep, kept answers' parts included."""
    kept = [*responses._fields.values(), *responses._responses.values()]
    for entry in responses._answers.values():
        head, keys = entry.parts
        kept += [head, *(run for _, run in keys)]
    return kept


def test_a_callers_own_key_is_never_kept_decrypted() -> None:
    current = snapshot()
    responses = ResolveResponses()
    for user in ("alice", "bob", "dave"):
        answer(responses, current, "m", user)
    assert kept_bytes(responses) and not any(b"uk-" in encoded for encoded in kept_bytes(responses))
    assert not any(b"uk-" in repr(entry).encode() for entry in responses._answers.values())
    # A kept answer opens the caller's sealed key again, and carries it.
    assert decoded(responses.kept(current, ("m", "alice"))).selected.api_key == "uk-alice"
    assert decoded(responses.kept(current, ("m", "bob"))).selected.api_key == "uk-bob"
    assert b"uk-alice" not in (responses.kept(current, ("m", "bob")) or b"")
    daves = decoded(responses.kept(current, ("m", "dave")))
    assert [daves.selected.api_key, daves.fallbacks[0].api_key] == [DAVES_KEYS["user-only"], DAVES_KEYS["preferred"]]


def test_kept_answers_are_by_request_as_asked() -> None:
    current = snapshot()
    responses = ResolveResponses()
    answer(responses, current, "m", "bob")
    assert responses.kept(current, ("m", "bob")) is not None
    assert responses.kept(current, ("modelConfigs/m", "bob")) is None  # kept as asked, not as resolved
    assert responses.kept(current, ("m", "")) is None
    assert responses.kept(current, ("n", "bob")) is None


def test_a_kept_answer_outlives_changes_it_does_not_depend_on() -> None:
    current = snapshot()
    responses = ResolveResponses()
    for user in ("alice", "bob"):
        answer(responses, current, "m", user)
    other_model = apply_changes(current, ChangeBatch(8, 7, models={"n": replace(current.models["n"])}), {})
    kept = decoded(responses.kept(other_model, ("m", "bob")))
    assert (kept.config_revision, kept.selected.api_key) == (7, "uk-bob")
    reread = replace(current.models["m"])  # a change re-reads the row: a new object, equal or not
    same_model = apply_changes(current, ChangeBatch(8, 7, models={"m": reread}), {})
    assert responses.kept(same_model, ("m", "bob")) is None
    bobs_keys = apply_changes(current, ChangeBatch(8, 7, user_keys={"bob": None}), {})
    assert responses.kept(bobs_keys, ("m", "bob")) is None
    assert responses.kept(bobs_keys, ("m", "alice")) is not None
    provider = apply_changes(current, ChangeBatch(8, 7, providers={"central": current.providers["central"]}), {})
    assert responses.kept(provider, ("m", "alice")) is None
    assert decoded(answer(responses, bobs_keys, "m", "bob")).selected.api_key == "sk-p"  # decided again


def test_the_default_models_answer_follows_the_default() -> None:
    current = replace(snapshot(), default_model_id="m")
    responses = ResolveResponses()
    assert decoded(answer(responses, current, "", "")).model_config == "modelConfigs/m"
    moved = replace(current, default_model_id="n")
    assert responses.kept(moved, ("", "")) is None
    assert decoded(answer(responses, moved, "", "")).model_config == "modelConfigs/n"


def test_kept_answers_are_bounded_and_can_be_turned_off() -> None:
    current = snapshot()
    bounded, off = ResolveResponses(kept_answers=2), ResolveResponses(kept_answers=0)
    for user in ("alice", "bob", "carol"):
        for responses in (bounded, off):
            answer(responses, current, "m", user)
    assert [bounded.kept(current, ("m", u)) is not None for u in ("alice", "bob", "carol")] == [False, True, True]
    assert all(off.kept(current, ("m", u)) is None for u in ("alice", "bob", "carol"))


def test_a_new_snapshot_carries_its_own_revision() -> None:
    first = snapshot()
    second = replace(first, revision=9, sequence=10)
    responses = ResolveResponses()
    assert decoded(answer(responses, first, "m", "")).config_revision == 6
    assert decoded(answer(responses, second, "m", "")).config_revision == 9
    assert decoded(answer(responses, first, "n", "")).config_revision == 6


def test_a_kept_answer_is_checked_again_whenever_the_snapshot_changes() -> None:
    current = snapshot()
    responses = ResolveResponses()
    answer(responses, current, "m", "bob")
    assert responses.kept(current, ("m", "bob")) is not None  # checked for `current`
    bobs_keys = apply_changes(current, ChangeBatch(8, 7, user_keys={"bob": None}), {})
    assert responses.kept(bobs_keys, ("m", "bob")) is None
    assert responses.kept(current, ("m", "bob")) is not None  # back to the snapshot it was decided from
    assert responses.kept(bobs_keys, ("m", "bob")) is None  # and away from it again
    assert decoded(answer(responses, bobs_keys, "m", "bob")).selected.api_key == "sk-p"
    assert responses.kept(current, ("m", "bob")) is None  # now kept as decided over `bobs_keys`


def test_a_kept_answer_demoting_a_cooldown_ends_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    ends = datetime.fromtimestamp(now + 60, UTC)
    current = replace(snapshot(), cooldowns={"preferred": {"gpt-4o": ends}})
    responses = ResolveResponses()
    cooling = decoded(answer(responses, current, "m", "bob"))
    assert cooling.selected.provider_config == "providerConfigs/central"  # bob's own key cools down
    assert decoded(responses.kept(current, ("m", "bob"))) == cooling  # checked for `current`
    monkeypatch.setattr(convert.time, "time", lambda: now + 61)
    assert responses.kept(current, ("m", "bob")) is None  # same snapshot, but the cooldown is over
