"""C2SP signed-note keys (c2sp.org/signed-note): key ids, verifier and signer keys.

Verifier-key strings are ``name+hex(key ID)+base64(0x01 || public key)`` and, for
key files, signer-key strings ``PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)``
(the encodings of golang.org/x/mod/sumdb/note). Ed25519 only (signature type
0x01); a public key must be a canonical point of prime order. Parsing is strict:
hex and base64 must be canonical and the stated key id must be the computed one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from lineage.verifier.errors import FormatError, KeyFormatError

__all__ = [
    "ALG_ED25519",
    "MAX_NAME_BYTES",
    "Signer",
    "Verifier",
    "format_skey",
    "key_id",
    "parse_skey",
    "parse_vkey",
]

ALG_ED25519 = 0x01  # signed-note §Signature types: "0x01 — Ed25519"
MAX_NAME_BYTES = 256  # a key name, UTF-8

_SKEY_PREFIX = "PRIVATE+KEY+"
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every Cc character except "\n"
_HEX8 = re.compile("[0-9a-f]{8}")
_KEY_B64_CHARS = 44  # base64 of 33 bytes
_MAX_VKEY_CHARS = MAX_NAME_BYTES + 1 + 8 + 1 + _KEY_B64_CHARS


def _utf8(text: str) -> bytes | None:
    """The UTF-8 bytes of text, or None if it holds a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _b64decode(s: str, error: type[FormatError], what: str) -> bytes:
    """Standard base64 with padding (RFC 4648 §4) that re-encodes to exactly s."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not standard padded base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise error(f"{what} is not canonical base64")
    return raw


def _check_name(name: object, error: type[FormatError]) -> bytes:
    """signed-note §Format: key names are non-empty, with no Unicode spaces and no '+'.

    We also refuse control characters and names over MAX_NAME_BYTES. Returns the UTF-8.
    """
    if not isinstance(name, str) or not name:
        raise error("a key name must be a non-empty string")
    encoded = _utf8(name)
    if encoded is None:
        raise error("a key name must be valid UTF-8")
    if len(encoded) > MAX_NAME_BYTES:
        raise error(f"a key name is at most {MAX_NAME_BYTES} bytes")
    if "+" in name or _CONTROL.search(name) or any(c.isspace() for c in name):
        raise error(f"key name {name!r} holds a '+', a space or a control character")
    return encoded


def key_id(name: str, public_key: bytes) -> bytes:
    """signed-note §Ed25519 signatures, the 4-byte key ID:

    key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]
    """
    encoded = _check_name(name, KeyFormatError)
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise KeyFormatError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(encoded + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 verification by libsodium, which refuses S >= L and small-order keys and R."""
    if not isinstance(message, bytes) or not isinstance(signature, bytes):
        return False
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, repr=False)
class Verifier:
    """A known Ed25519 key: its name, its key ID and its 32-byte public key."""

    name: str
    key_id: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        computed = key_id(self.name, self.public_key)  # checks the name and key length
        if not isinstance(self.key_id, bytes) or self.key_id != computed:
            stated = self.key_id.hex() if isinstance(self.key_id, bytes) else repr(self.key_id)
            raise KeyFormatError(f"key ID {stated} is not the key's ID {computed.hex()}")
        # Refuses non-canonical encodings and points of small or mixed order.
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(self.public_key):
            raise KeyFormatError("public key is not a canonical Ed25519 point of prime order")

    @property
    def vkey(self) -> str:
        """The verifier-key string: name+hex(key ID)+base64(0x01 || public key)."""
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def __repr__(self) -> str:
        return f"Verifier({self.vkey!r})"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether signature (64 bytes, no key-ID prefix) is this key's signature of message."""
        return _verify_ed25519(self.public_key, message, signature)


def _split_key(body: str) -> tuple[str, bytes, bytes]:
    """name+hex(key ID)+base64(0x01 || key) -> (name, key ID, 32-byte key)."""
    parts = body.split("+", 2)  # names hold no '+'; base64 may
    if len(parts) != 3:
        raise KeyFormatError("a key string is name+keyid+base64")
    name, hex_id, b64 = parts
    _check_name(name, KeyFormatError)
    if not _HEX8.fullmatch(hex_id):
        raise KeyFormatError("a key ID is exactly 8 lower-case hex digits")
    raw = _b64decode(b64, KeyFormatError, "key data")
    if len(raw) != 33:
        raise KeyFormatError("key data is a type byte and a 32-byte key")
    if raw[0] != ALG_ED25519:
        raise KeyFormatError(f"signature type 0x{raw[0]:02x} is not Ed25519 (0x01)")
    return name, bytes.fromhex(hex_id), raw[1:]


def parse_vkey(s: str) -> Verifier:
    """Parse a verifier-key string strictly; the stated key ID must be the computed one."""
    if not isinstance(s, str) or len(s) > _MAX_VKEY_CHARS:
        raise KeyFormatError("a verifier key is a str of bounded length")
    name, stated_id, public_key = _split_key(s)
    verifier = Verifier(name, stated_id, public_key)  # compares stated and computed key IDs
    if verifier.vkey != s:
        raise KeyFormatError("verifier key does not round-trip")
    return verifier


class Signer:
    """An Ed25519 signing key and its name. The seed never appears in repr or str."""

    __slots__ = ("_key", "_verifier")

    def __init__(self, name: str, seed: bytes):
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        public_key = bytes(self._key.verify_key)
        self._verifier = Verifier(name, key_id(name, public_key), public_key)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A new random key named name."""
        return cls(name, nacl.utils.random(32))

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def key_id(self) -> bytes:
        return self._verifier.key_id

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def seed(self) -> bytes:
        """The 32-byte Ed25519 seed. Secret: for key files only."""
        return self._key.encode()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte RFC 8032 signature of message."""
        if not isinstance(message, bytes):
            raise TypeError("sign() takes bytes")
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()!r})"

    __str__ = __repr__


def format_skey(signer: Signer) -> str:
    """The signer-key string PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed). Secret."""
    if not isinstance(signer, Signer):
        raise TypeError("format_skey() takes a Signer")
    b64 = base64.b64encode(bytes([ALG_ED25519]) + signer._key.encode()).decode("ascii")
    return f"{_SKEY_PREFIX}{signer.name}+{signer.key_id.hex()}+{b64}"


def parse_skey(s: str) -> Signer:
    """Parse a signer-key string strictly; the key ID must be that of the derived public key.

    Error messages never quote the input (it holds the seed).
    """
    if not isinstance(s, str) or len(s) > len(_SKEY_PREFIX) + _MAX_VKEY_CHARS:
        raise KeyFormatError("a signer key is a str of bounded length")
    if not s.startswith(_SKEY_PREFIX):
        raise KeyFormatError("a signer key starts with PRIVATE+KEY+")
    name, stated_id, seed = _split_key(s[len(_SKEY_PREFIX) :])
    signer = Signer(name, seed)
    if signer.key_id != stated_id:
        raise KeyFormatError(f"key ID {stated_id.hex()} is not the key's ID")
    if format_skey(signer) != s:
        raise KeyFormatError("signer key does not round-trip")
    return signer
