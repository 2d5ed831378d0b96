"""Secret encryption: AES-256-GCM envelopes and the data-key ring (pure computation).

Two levels, as Vault's barrier does: a master key (from CONFIG_ENCRYPTION_KEY, a
keyring file, or a generated dev key) wraps random data keys; data keys encrypt
secret values. Rotation adds a data key and rewraps values; changing the master key
only rewraps data keys. Every encryption takes a fresh 96-bit random nonce, and the
AAD binds a ciphertext to its place (`service\\0environment\\0name\\0version`), so a
ciphertext copied to another row fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets as random
from collections import Counter
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

NONCE_BYTES = 12
KEY_BYTES = 32


class Secret:
    """A plaintext that does not show itself: repr, str and format print a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and random.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


class TamperedError(Exception):
    """A ciphertext, nonce or AAD does not authenticate: edited or moved data."""


class KeyMismatch(Exception):
    """The master key cannot unwrap the stored data keys."""


def secret_aad(service: str, environment: str, name: str, version: int) -> bytes:
    return f"{service}\0{environment}\0{name}\0{version}".encode()


def data_key_aad(key_id: str) -> bytes:
    return f"fpcd-data-key\0{key_id}".encode()


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_key_id() -> str:
    return "k-" + random.token_hex(6)


def seal(key: AESGCM, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) under a fresh random nonce."""
    nonce = random.token_bytes(NONCE_BYTES)
    return nonce, key.encrypt(nonce, plaintext, aad)


def open_sealed(key: AESGCM, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return key.decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError, TypeError):  # also a nonce of a wrong length or type
        raise TamperedError("ciphertext, nonce or AAD failed authentication") from None


# -- master key --------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class MasterKeySource:
    """What the operator gave: raw 32 bytes, or a passphrase to derive them from."""

    raw: bytes | None = None
    passphrase: str | None = field(default=None, repr=False)

    @property
    def needs_salt(self) -> bool:
        return self.raw is None


def parse_master_key(text: str) -> MasterKeySource:
    """32 bytes as base64 or hex, or else a passphrase (derived later with a stored salt)."""
    text = text.strip()
    if _HEX.fullmatch(text):
        return MasterKeySource(raw=bytes.fromhex(text))
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return MasterKeySource(raw=decoded)
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES and re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
        return MasterKeySource(raw=decoded)
    if len(text) < 12:
        raise ValueError(
            "the encryption key must be 32 bytes as base64 or hex, or a passphrase of at"
            " least 12 characters"
        )
    return MasterKeySource(passphrase=text)


#: The value shipped in deploy/kubernetes/secret.yaml: public, so never a key.
PLACEHOLDER_KEYS = frozenset({"REPLACE-WITH-THE-OUTPUT-OF-fpcd-keygen"})
#: A passphrase shorter than this, or with less estimated entropy, is refused.
MIN_PASSPHRASE_CHARS = 16
MIN_PASSPHRASE_BITS = 64.0
#: A random 32-byte key has about 30 distinct byte values; fewer than this is a pattern.
MIN_DISTINCT_KEY_BYTES = 16


def passphrase_bits(text: str) -> float:
    """A conservative entropy estimate: length times the per-character Shannon entropy of
    the text itself (repeats and small alphabets score low)."""
    if not text:
        return 0.0
    counts = Counter(text)
    per_char = -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())
    return max(per_char * len(text), 0.0)


def weak_key_reason(text: str, source: MasterKeySource) -> str | None:
    """Why the key given as `text` must not be used, or None when it may."""
    if text.strip() in PLACEHOLDER_KEYS or text.strip().upper().startswith("REPLACE-WITH"):
        return "it is the placeholder shipped in deploy/kubernetes/secret.yaml"
    if source.raw is not None:
        if len(set(source.raw)) < MIN_DISTINCT_KEY_BYTES:
            return "its 32 bytes are a pattern, not random"
        return None
    assert source.passphrase is not None
    if len(source.passphrase) < MIN_PASSPHRASE_CHARS:
        return f"a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters"
    if passphrase_bits(source.passphrase) < MIN_PASSPHRASE_BITS:
        return "the passphrase is too predictable (repeated or few distinct characters)"
    return None


def derive_master_key(source: MasterKeySource, salt: bytes) -> AESGCM:
    """scrypt (n=2^15, r=8, p=1) for a passphrase; the raw key as it is otherwise."""
    if source.raw is not None:
        return AESGCM(source.raw)
    assert source.passphrase is not None
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=2**15, r=8, p=1)
    return AESGCM(kdf.derive(source.passphrase.encode()))


def wrap_data_key(master: AESGCM, key_id: str, key: bytes) -> tuple[bytes, bytes]:
    return seal(master, key, data_key_aad(key_id))


def unwrap_data_key(master: AESGCM, key_id: str, nonce: bytes, wrapped: bytes) -> bytes:
    try:
        return open_sealed(master, nonce, wrapped, data_key_aad(key_id))
    except TamperedError:
        raise KeyMismatch(f"the master key cannot unwrap data key {key_id}") from None


@dataclass
class Keyring:
    """Unwrapped data keys by id, and which one encrypts new values."""

    keys: dict[str, AESGCM] = field(default_factory=dict)
    primary: str | None = None

    def encrypt(self, plaintext: Secret, aad: bytes) -> tuple[str, bytes, bytes]:
        """(key id, nonce, ciphertext) under the primary key."""
        assert self.primary is not None, "the keyring has no primary key"
        nonce, ciphertext = seal(self.keys[self.primary], plaintext.reveal().encode(), aad)
        return self.primary, nonce, ciphertext

    def decrypt(self, key_id: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> Secret:
        key = self.keys.get(key_id)
        if key is None:
            raise TamperedError(f"data key {key_id} is not in the keyring")
        return Secret(open_sealed(key, nonce, ciphertext, aad).decode())
