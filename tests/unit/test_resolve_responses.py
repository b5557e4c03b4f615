"""ResolveModel's kept encodings decode to exactly the message built from the resolution."""

from __future__ import annotations

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
from modelroute_server.domain.changes import FullState
from modelroute_server.domain.families import Family
from modelroute_server.domain.models import ModelConfig
from modelroute_server.domain.providers import CredentialPolicy, ProviderConfig, StoredKey
from modelroute_server.entrypoints.convert import ResolveResponses, resolve_response
from modelroute_server.service_layer import resolution
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.snapshot import Snapshot, build_snapshot

KEYRING = Keyring.parse(generate_keyring_spec())
PREFERRED, USER_ONLY, CENTRAL = (
    CredentialPolicy(True, True, True),
    CredentialPolicy(False, True, False),
    CredentialPolicy(),
)


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
    }
    packed = [(user, pack_sealed_keys(k)) for user, k in keys.items()]
    return build_snapshot(FullState(7, 6, providers, models, packed, []), {})


@pytest.mark.parametrize("model", ["m", "n"])
@pytest.mark.parametrize("user", ["", "alice", "bob", "carol"])
def test_kept_encodings_decode_to_the_built_message(model: str, user: str) -> None:
    ctx = ServiceContext(KEYRING, None)  # type: ignore[arg-type]  # resolution needs no unit of work
    current = snapshot()
    responses = ResolveResponses()
    for _ in range(2):  # built, then from what was kept
        resolved = resolution.resolve_model(ctx, current, model, user)
        encoded = responses.response(resolved, current, current.revision)
        assert resolver_pb2.ResolveModelResponse.FromString(encoded) == resolve_response(resolved, current.revision)
    assert bool(resolved.decided_by_caller) == (user in ("alice", "bob"))


def test_a_callers_own_key_is_never_kept() -> None:
    ctx = ServiceContext(KEYRING, None)  # type: ignore[arg-type]
    current = snapshot()
    responses = ResolveResponses()
    for user in ("alice", "bob"):
        responses.response(resolution.resolve_model(ctx, current, "m", user), current, current.revision)
    assert not any(b"uk-" in encoded for encoded in responses._fields.values())
    assert not any(b"uk-" in encoded for encoded in responses._responses.values())


def test_a_new_snapshot_starts_afresh() -> None:
    ctx = ServiceContext(KEYRING, None)  # type: ignore[arg-type]
    first, second = snapshot(), snapshot()
    responses = ResolveResponses()
    responses.response(resolution.resolve_model(ctx, first, "m", ""), first, 6)
    encoded = responses.response(resolution.resolve_model(ctx, second, "m", ""), second, 9)
    assert resolver_pb2.ResolveModelResponse.FromString(encoded).config_revision == 9
