"""The keyring: AES-GCM sealing bound to a row and its incarnation, rotation, and the keyring's own format;
and the memory seal a replica keeps callers' keys under."""

from __future__ import annotations

import base64
import os
import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from modelroute_server.adapters.crypto import (
    INCARNATION_BYTES,
    Keyring,
    KeyringError,
    MemorySeal,
    SealedKey,
    generate_keyring_spec,
    load_or_create_keyring_file,
    open_bound,
    provider_key_binding,
    seal_bound,
    user_key_binding,
)


def test_a_ciphertext_is_bound_to_its_row(keyring: Keyring) -> None:
    secret = "sk-bound-to-row"
    sealed = keyring.seal(secret, provider_key_binding("row-a", None))
    assert sealed.key_id == keyring.primary_key_id
    assert secret.encode() not in sealed.ciphertext
    assert keyring.open(sealed, provider_key_binding("row-a", None)) == secret
    for other in (
        provider_key_binding("row-b", None),
        provider_key_binding("row-a-", None),
        user_key_binding("u", "row-a", None),
        b"",
    ):
        assert keyring.open(sealed, other) is None
    user_sealed = keyring.seal(secret, user_key_binding("alice", "p", None))
    assert keyring.open(user_sealed, user_key_binding("alice", "p", None)) == secret
    assert keyring.open(user_sealed, user_key_binding("bob", "p", None)) is None
    assert keyring.open(user_sealed, user_key_binding("alice", "q", None)) is None
    assert keyring.open(user_sealed, provider_key_binding("p", None)) is None


def test_unknown_key_ids_and_damaged_ciphertexts_do_not_open(keyring: Keyring) -> None:
    binding = provider_key_binding("p", None)
    sealed = keyring.seal("sk-x", binding)
    assert keyring.open(SealedKey("no-such-key", sealed.ciphertext), binding) is None
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 0x01
    assert keyring.open(SealedKey(sealed.key_id, bytes(flipped)), binding) is None
    assert keyring.open(SealedKey(sealed.key_id, sealed.ciphertext[:12]), binding) is None
    assert keyring.open(SealedKey(sealed.key_id, b""), binding) is None
    other = Keyring.parse(generate_keyring_spec(keyring.primary_key_id))  # same id, other material
    assert other.open(sealed, binding) is None


def test_sealing_twice_uses_fresh_nonces(keyring: Keyring) -> None:
    binding = provider_key_binding("p", None)
    first, second = keyring.seal("sk-same", binding), keyring.seal("sk-same", binding)
    assert first.ciphertext != second.ciphertext
    assert keyring.open(first, binding) == keyring.open(second, binding) == "sk-same"


def test_rotation_new_primary_still_opens_old_ciphertexts() -> None:
    old_spec, new_spec = generate_keyring_spec("old"), generate_keyring_spec("new")
    old = Keyring.parse(old_spec)
    rotated = Keyring.parse(f"{new_spec},{old_spec}")
    assert (rotated.primary_key_id, set(rotated.key_ids)) == ("new", {"new", "old"})
    binding = provider_key_binding("p", None)
    sealed_old = old.seal("sk-before-rotation", binding)
    assert rotated.open(sealed_old, binding) == "sk-before-rotation"
    sealed_new = rotated.seal("sk-after-rotation", binding)
    assert sealed_new.key_id == "new"
    assert old.open(sealed_new, binding) is None
    assert Keyring.parse(new_spec).open(sealed_old, binding) is None


@pytest.mark.parametrize(
    "spec",
    ["", " , ", "k1", "k1:not-base64!", "k1:" + base64.b64encode(b"short").decode(), "bad id:" + "A" * 44],
)
def test_bad_keyrings_are_refused_with_what_to_set(spec: str) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring.parse(spec)
    assert "MODELROUTE_KEYRING" in str(caught.value)


def test_a_keyring_with_a_repeated_key_id_is_refused() -> None:
    with pytest.raises(KeyringError, match="twice"):
        Keyring.parse(f"{generate_keyring_spec('k')},{generate_keyring_spec('k')}")


def test_the_embedded_keyring_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keyring"
    spec = load_or_create_keyring_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_keyring_file(path) == spec
    assert Keyring.parse(spec).primary_key_id


def test_a_key_sealed_to_an_incarnation_opens_only_in_that_incarnation(keyring: Keyring) -> None:
    binding = partial(provider_key_binding, "p")
    first = seal_bound(keyring, "sk-first", binding)
    second = seal_bound(keyring, "sk-first", binding)
    assert first.incarnation is not None and len(first.incarnation) == INCARNATION_BYTES
    assert first.incarnation != second.incarnation
    assert open_bound(keyring, first, binding) == "sk-first"
    # The same row id in another incarnation (deleted and created again), or under the old row-only binding.
    assert open_bound(keyring, SealedKey(first.key_id, first.ciphertext, second.incarnation), binding) is None
    assert open_bound(keyring, SealedKey(first.key_id, first.ciphertext, None), binding) is None
    assert open_bound(keyring, first, partial(provider_key_binding, "q")) is None
    user_sealed = seal_bound(keyring, "uk-1", partial(user_key_binding, "alice", "p"))
    assert open_bound(keyring, user_sealed, partial(user_key_binding, "alice", "p")) == "uk-1"
    assert open_bound(keyring, user_sealed, partial(user_key_binding, "bob", "p")) is None


def test_a_key_sealed_before_incarnations_keeps_opening_under_its_old_binding(keyring: Keyring) -> None:
    legacy = keyring.seal("sk-legacy", provider_key_binding("p", None))
    assert open_bound(keyring, SealedKey(legacy.key_id, legacy.ciphertext, None), partial(provider_key_binding, "p"))
    assert (
        open_bound(keyring, SealedKey(legacy.key_id, legacy.ciphertext, b"\0" * 16), partial(provider_key_binding, "p"))
        is None
    )


def held_values(opened: Any) -> list[Any]:
    """Every value a sealed secret's function holds, through the functions it holds."""
    held, pending = [], [opened]
    while pending:
        function = pending.pop()
        for cell in function.__closure__ or ():
            value = cell.cell_contents
            (pending if callable(value) and getattr(value, "__closure__", None) else held).append(value)
    return held


@pytest.mark.parametrize("length", [0, 1, 12, 63, 64, 65, 128, 129, 300, 4096])
def test_the_memory_seal_gives_back_what_it_sealed_and_holds_it_only_masked(length: int) -> None:
    seal = MemorySeal()
    plaintext = os.urandom(length)
    opened = seal.seal(plaintext)
    assert opened() == opened() == plaintext
    if length == 0:
        return
    as_int = int.from_bytes(plaintext, "little")
    for value in held_values(opened):
        assert value != plaintext
        # (Shorter, a masked value equals the plaintext by chance too often: a zero keystream byte.)
        assert length < 12 or (value != as_int and not (isinstance(value, bytes) and plaintext in value))
    assert repr(seal) == "MemorySeal()"


def test_the_memory_seals_keystream_is_fresh_for_each_secret_and_each_block() -> None:
    seal = MemorySeal()
    zeros = bytes(128)  # masked zeros are the keystream itself

    def masked(opened: Any) -> bytes:
        (value,) = [v for v in held_values(opened) if isinstance(v, int) and v.bit_length() > 64]
        return int(value).to_bytes(128, "little")

    first, second = masked(seal.seal(zeros)), masked(seal.seal(zeros))
    assert first != second  # a fresh nonce for each secret
    assert first[:64] != first[64:]  # a counter for each block
    assert masked(MemorySeal().seal(zeros)) != first  # a key of its own for each seal
