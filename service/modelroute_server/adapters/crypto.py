"""AES-GCM encryption of API keys under a keyring of named keys.

Each ciphertext is stored beside the id of the key that sealed it, and is
bound through associated data to its row and to the row's incarnation: a
random id drawn when the row is created and again at every key write, stored
beside the key. So a ciphertext copied into another row does not decrypt, nor
one written back onto a row that was deleted and created again under the same
id (or onto the same row after its key changed). Rows written before
incarnations existed (incarnation NULL) keep their old binding until
`rotate-keys` reseals them.

`MemorySeal` is the other seal: the one a replica keeps secrets under in its
own memory, for repeated use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import struct
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..domain.providers import StoredKey

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NONCE_BYTES = 12
KEYRING_ENV = "MODELROUTE_KEYRING"
KEYRING_FORMAT = "KEY_ID:BASE64_32_BYTES[,KEY_ID:BASE64_32_BYTES...] (the first key is the primary)"


class KeyringError(ValueError):
    """The configured key material is unusable; the message says how to fix it."""


INCARNATION_BYTES = 16


@dataclass(frozen=True)
class SealedKey:
    key_id: str
    ciphertext: bytes = field(repr=False)
    # The incarnation the ciphertext is bound to; None: sealed before incarnations existed.
    incarnation: bytes | None = None


class Keyring:
    def __init__(self, keys: dict[str, bytes], primary_key_id: str) -> None:
        # Keys that did not open (unknown key id, or data that does not match its row), for the metrics.
        self.open_failures = 0
        if primary_key_id not in keys:
            raise KeyringError(f"primary key id {primary_key_id!r} is not in the keyring")
        self._ciphers = {key_id: AESGCM(material) for key_id, material in keys.items()}
        # Primary first: derived keys sign with it and verify with any.
        self._materials = [keys[primary_key_id], *(m for k, m in keys.items() if k != primary_key_id)]
        self.primary_key_id = primary_key_id
        self._fingerprint_keys = self.derive("key-fingerprint")

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self._ciphers)}, primary={self.primary_key_id!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        if not entries:
            raise KeyringError(f"{KEYRING_ENV} is empty; expected {KEYRING_FORMAT}")
        for entry in entries:
            key_id, sep, encoded = entry.partition(":")
            if not sep or not KEY_ID_PATTERN.fullmatch(key_id):
                raise KeyringError(f"{KEYRING_ENV}: bad entry (expected {KEYRING_FORMAT})")
            try:
                material = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise KeyringError(f"{KEYRING_ENV}: key {key_id!r} is not valid base64") from exc
            if len(material) != 32:
                raise KeyringError(f"{KEYRING_ENV}: key {key_id!r} must be 32 bytes (AES-256)")
            if key_id in keys:
                raise KeyringError(f"{KEYRING_ENV}: key id {key_id!r} appears twice")
            keys[key_id] = material
        return cls(keys, primary_key_id=entries[0].partition(":")[0])

    def derive(self, label: str) -> list[bytes]:
        """Purpose-bound secrets, one per key, the primary's first; every replica derives the same."""
        return [hmac.new(m, b"modelroute/derive/" + label.encode(), hashlib.sha256).digest() for m in self._materials]

    def fingerprint(self, plaintext: str) -> bytes:
        """A keyed fingerprint of a key (a rejected key's mark): tells the same key apart from a new one,
        and reveals nothing of it without the keyring."""
        return self._fingerprints(plaintext)[0]

    def fingerprint_matches(self, plaintext: str, fingerprint: bytes) -> bool:
        """`plaintext` is the key `fingerprint` was taken of, under any key of the ring (so a rotation
        does not clear a mark)."""
        return any(hmac.compare_digest(f, fingerprint) for f in self._fingerprints(plaintext))

    def _fingerprints(self, plaintext: str) -> list[bytes]:
        return [hmac.new(k, plaintext.encode(), hashlib.sha256).digest()[:16] for k in self._fingerprint_keys]

    def seal(self, plaintext: str, row_binding: bytes) -> SealedKey:
        nonce = secrets.token_bytes(NONCE_BYTES)
        cipher = self._ciphers[self.primary_key_id]
        return SealedKey(self.primary_key_id, nonce + cipher.encrypt(nonce, plaintext.encode(), row_binding))

    def open(self, sealed: SealedKey, row_binding: bytes) -> str | None:
        """The plaintext, or None when the key id is unknown or the data/binding do not match."""
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is not None and len(sealed.ciphertext) > NONCE_BYTES:
            nonce, body = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
            try:
                return cipher.decrypt(nonce, body, row_binding).decode()
            except (InvalidTag, UnicodeDecodeError):
                pass
        self.open_failures += 1
        return None


class MemorySeal:
    """Secrets a replica keeps for repeated use (a caller's key in a kept answer), never as plaintext.

    Each is XORed with a keystream of keyed BLAKE2b (a pseudorandom function) over a fresh random nonce
    and a block counter, under a key drawn when this `MemorySeal` is made, which lives only in this
    process's memory, as the keyring does. Nothing sealed here is stored or accepted from outside, so it
    needs no tag. Opening one costs one BLAKE2b per 64 bytes and no call into OpenSSL: measured in a
    loaded server, an AES-GCM decryption per ResolveModel cost about 10 µs of its CPU, this about 1 µs
    (docs/security.md, "Keys in a replica's memory").
    """

    BLOCK = 64  # BLAKE2b's largest digest

    def __init__(self) -> None:
        # BLAKE2b with the key absorbed: each block's keystream starts from a copy.
        self._keyed = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=self.BLOCK)

    def __repr__(self) -> str:
        return "MemorySeal()"

    def seal(self, plaintext: bytes) -> Callable[[], bytes]:
        """A function that returns `plaintext`, holding it only masked."""
        length = len(plaintext)
        nonce = secrets.token_bytes(16)
        blocks = [nonce + _U32.pack(number) for number in range(-(-length // self.BLOCK))]
        keyed, from_bytes = self._keyed, int.from_bytes

        def keystream() -> int:
            stream = []
            for block in blocks:
                state = keyed.copy()
                state.update(block)
                stream.append(state.digest())
            return from_bytes(b"".join(stream)[:length], "little")

        masked = from_bytes(plaintext, "little") ^ keystream()

        def opened() -> bytes:
            return (masked ^ keystream()).to_bytes(length, "little")

        return opened


def _bound(base: bytes, incarnation: bytes | None) -> bytes:
    return base if incarnation is None else base + b"#" + incarnation.hex().encode()


def provider_key_binding(provider_config_id: str, incarnation: bytes | None) -> bytes:
    return _bound(b"modelroute/provider_config/" + provider_config_id.encode(), incarnation)


def user_key_binding(user: str, provider_config_id: str, incarnation: bytes | None) -> bytes:
    # The provider id is a slug (no '/' or '#'), so this split is unambiguous.
    return _bound(b"modelroute/user_key/" + provider_config_id.encode() + b"/" + user.encode(), incarnation)


def new_incarnation() -> bytes:
    return secrets.token_bytes(INCARNATION_BYTES)


def seal_bound(keyring: Keyring, plaintext: str, binding: Callable[[bytes | None], bytes]) -> SealedKey:
    """Seals under the primary key, bound to `binding(incarnation)` for a freshly drawn incarnation."""
    incarnation = new_incarnation()
    sealed = keyring.seal(plaintext, binding(incarnation))
    return SealedKey(sealed.key_id, sealed.ciphertext, incarnation)


def open_bound(keyring: Keyring, sealed: SealedKey, binding: Callable[[bytes | None], bytes]) -> str | None:
    return keyring.open(sealed, binding(sealed.incarnation))


def generate_keyring_spec(key_id: str = "k1") -> str:
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def load_or_create_keyring_file(path: Path) -> str:
    """The embedded-mode keyring: generated on first start, readable by the owner only."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = generate_keyring_spec()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(spec + "\n")
    return spec


# One user's sealed keys packed into one bytes value, so that a million keys stay small in memory.
# Entry: provider id (u16 length + UTF-8), key id (u16 + UTF-8), incarnation (i16 length, -1 for
# none, + bytes), ciphertext (u32 length + bytes); big-endian, as PostgreSQL's int2send/int4send
# write them (the snapshot load packs them in SQL, in the change source).
_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")


def pack_sealed_keys(keys: Mapping[str, SealedKey]) -> bytes:
    parts = []
    for provider_config_id, sealed in sorted(keys.items()):
        for text in (provider_config_id, sealed.key_id):
            encoded = text.encode()
            parts += [_U16.pack(len(encoded)), encoded]
        if sealed.incarnation is None:
            parts.append(_I16.pack(-1))
        else:
            parts += [_I16.pack(len(sealed.incarnation)), sealed.incarnation]
        parts += [_U32.pack(len(sealed.ciphertext)), sealed.ciphertext]
    return b"".join(parts)


def unpack_sealed_keys(packed: bytes, wanted: Container[str] | None = None) -> dict[str, SealedKey]:
    """The packed keys (only those whose provider config is `wanted`, when given)."""
    keys = {}
    offset = 0
    while offset < len(packed):
        (length,) = _U16.unpack_from(packed, offset)
        provider_config_id = packed[offset + 2 : offset + 2 + length].decode()
        offset += 2 + length
        if wanted is not None and provider_config_id not in wanted:
            (length,) = _U16.unpack_from(packed, offset)
            offset += 2 + length
            (length,) = _I16.unpack_from(packed, offset)
            offset += 2 + max(length, 0)
            (length,) = _U32.unpack_from(packed, offset)
            offset += 4 + length
            continue
        (length,) = _U16.unpack_from(packed, offset)
        key_id = packed[offset + 2 : offset + 2 + length].decode()
        offset += 2 + length
        (length,) = _I16.unpack_from(packed, offset)
        offset += 2
        incarnation = None
        if length >= 0:
            incarnation = packed[offset : offset + length]
            offset += length
        (length,) = _U32.unpack_from(packed, offset)
        keys[provider_config_id] = SealedKey(key_id, packed[offset + 4 : offset + 4 + length], incarnation)
        offset += 4 + length
    return keys


def open_user_key(keyring: Keyring, user: str, provider_config_id: str, sealed: SealedKey) -> StoredKey:
    """A user key decrypted now (also used on keys held sealed in the snapshot): the one way one is opened."""
    return StoredKey(keyring.open(sealed, user_key_binding(user, provider_config_id, sealed.incarnation)))
