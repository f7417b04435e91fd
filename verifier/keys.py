"""Ed25519 keys, key ids, and domain-separated signatures for entries and invocations.

FORMAT.md §3. Every public key travels as base64url (RFC 4648 §5, no padding)
of its 32 raw bytes. A key's id (``kid``) is its RFC 7638 JWK thumbprint:

    kid = base64url(SHA-256('{"crv":"Ed25519","kty":"OKP","x":"' || base64url(key) || '"}'))

so the ``kid`` that signs an entry is also the ``cnf.jkt`` a DPoP proof binds
(RFC 9449 §6.1). A signature covers a fixed context string, then the message:

    signed bytes = context || message
    ENTRY_CONTEXT      = "lineage.entry.v1" || 0x00
    INVOCATION_CONTEXT = "lineage.invocation.v1" || 0x00
    APPROVAL_CONTEXT   = "lineage.approval.v1" || 0x00

Checkpoints are C2SP signed notes, whose signed text never holds a NUL byte,
so no signature of one purpose verifies as another.

Verification is libsodium's (through pynacl): it rejects non-canonical
signatures (S >= L) and small-order keys. Keys are also checked when parsed,
so a key that could never verify is refused up front.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import KeyFormatError

__all__ = [
    "APPROVAL_CONTEXT",
    "ENTRY_CONTEXT",
    "INVOCATION_CONTEXT",
    "KEY_FILE_PREFIX",
    "PublicKey",
    "SigningKey",
    "b64u_decode",
    "b64u_encode",
    "jwk_thumbprint",
    "key_file_text",
    "load_key_file",
    "parse_key_file",
    "read_owner_only",
]

KEY_FILE_PREFIX = "lineage-ed25519-seed:"
ENTRY_CONTEXT = b"lineage.entry.v1\x00"
INVOCATION_CONTEXT = b"lineage.invocation.v1\x00"
APPROVAL_CONTEXT = b"lineage.approval.v1\x00"


def b64u_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5, RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Strict base64url without padding: the result must re-encode to ``text``."""
    if not isinstance(text, str) or not text.isascii():
        raise KeyFormatError(f"{what} is not a base64url string")
    if "=" in text or len(text) % 4 == 1:
        raise KeyFormatError(f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not base64url") from None
    if b64u_encode(data) != text:
        raise KeyFormatError(f"{what} is not canonical base64url")
    if length is not None and len(data) != length:
        raise KeyFormatError(f"{what} is {len(data)} bytes, not {length}")
    return data


def jwk_thumbprint(public_key: bytes) -> str:
    """RFC 7638 §3 thumbprint of the Ed25519 OKP JWK (RFC 8037 §2) for ``public_key``."""
    members = '{"crv":"Ed25519","kty":"OKP","x":"' + b64u_encode(public_key) + '"}'
    return b64u_encode(hashlib.sha256(members.encode("ascii")).digest())


@lru_cache(maxsize=4096)
def _valid_point(raw: bytes) -> bool:
    """A point check costs ~40 µs; the same few keys sign most entries."""
    return bool(nacl.bindings.crypto_core_ed25519_is_valid_point(raw))


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key that is a valid point of prime order."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise KeyFormatError("an Ed25519 public key is 32 bytes")
        if not _valid_point(self.raw):
            raise KeyFormatError("not a valid Ed25519 public key (small order or off-curve)")

    @classmethod
    def from_b64(cls, text: str, what: str = "key") -> PublicKey:
        return cls(b64u_decode(text, length=32, what=what))

    @property
    def b64(self) -> str:
        return b64u_encode(self.raw)

    @cached_property
    def kid(self) -> str:  # computed once per key object
        return jwk_thumbprint(self.raw)

    def verify(self, context: bytes, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is this key's strict Ed25519 signature of context || message."""
        if len(signature) != 64:
            return False
        try:
            nacl.signing.VerifyKey(self.raw).verify(context + message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True


class SigningKey:
    """An Ed25519 private key. Its seed never appears in repr() or str()."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes):
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public = PublicKey(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def kid(self) -> str:
        return self.public.kid

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(context + message).signature

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    __str__ = __repr__


def key_file_text(key: SigningKey) -> str:
    """A key file (FORMAT.md §3.1): ``lineage-ed25519-seed:`` base64url(seed), then a newline."""
    return KEY_FILE_PREFIX + b64u_encode(key.seed) + "\n"


def parse_key_file(text: str, what: str = "key file") -> SigningKey:
    """The signing key in a key file's text (surrounding whitespace ignored)."""
    text = text.strip()
    if not text.startswith(KEY_FILE_PREFIX):
        raise KeyFormatError(f"{what} is not a Lineage key file (it starts {KEY_FILE_PREFIX!r})")
    try:
        return SigningKey(b64u_decode(text[len(KEY_FILE_PREFIX) :], length=32, what="seed"))
    except KeyFormatError:
        raise KeyFormatError(f"{what} holds a malformed key") from None


def read_owner_only(path: str | Path) -> str:
    """A private file's text; KeyFormatError if group or others may read it.

    FileNotFoundError and other OSErrors pass through for the caller to word.
    """
    path = Path(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFormatError(
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):o});"
            f" run: chmod 600 {path}"
        )
    return path.read_text()


def load_key_file(path: str | Path) -> SigningKey:
    """A principal's or agent's key from its owner-only key file (``lineage principal add``)."""
    return parse_key_file(read_owner_only(path), str(path))
