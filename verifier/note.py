"""C2SP signed notes (c2sp.org/signed-note), Ed25519 keys only (signature type 0x01).

A signed note is a text ending in a newline, a blank line, then one or more
signature lines ``— <key name> base64(key ID || signature)``. Parsing yields an
unverified :class:`Note`; only :func:`open_note` yields a :class:`VerifiedNote`.
Keys travel as verifier-key strings ``name+hex(key ID)+base64(0x01 || public key)``
and, for key files, signer-key strings ``PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)``
(the encodings of golang.org/x/mod/sumdb/note). docs/CHECKPOINT.md describes both.

Stricter than the spec, on purpose (each rejection is a NoteFormatError or KeyFormatError):
every control character but newline is refused (the spec names only those below
U+0020; we add DEL and U+0080-U+009F); the last line of the text must be non-empty,
so exactly one blank line separates text and signatures; lines are at most
MAX_LINE_BYTES, names at most MAX_NAME_BYTES, the note at most MAX_NOTE_BYTES with at
most MAX_SIGNATURES signatures; base64 and hex must be canonical; an Ed25519 public key
must be a canonical point of prime order (no small-order or mixed-order keys).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from verifier.errors import FormatError, KeyFormatError, NoteFormatError, SignatureError

__all__ = [
    "ALG_ED25519",
    "MAX_LINE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Note",
    "Signature",
    "Signer",
    "VerifiedNote",
    "Verifier",
    "format_note",
    "format_skey",
    "key_id",
    "open_note",
    "parse_note",
    "parse_skey",
    "parse_vkey",
    "sign_note",
]

ALG_ED25519 = 0x01  # signed-note §Signature types: "0x01 — Ed25519"
MAX_NOTE_BYTES = 1 << 20  # a whole signed note, UTF-8
MAX_SIGNATURES = 100  # signed-note §Format: SHOULD limit, MUST accept 16; Go stops at 100
MAX_LINE_BYTES = 8192  # any line, text or signature (fits a ~5 kB post-quantum signature)
MAX_NAME_BYTES = 256  # a key name, UTF-8

_SIG_PREFIX = "\u2014 "  # em dash, space (signed-note §Format)
_SKEY_PREFIX = "PRIVATE+KEY+"
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every Cc character except "\n"
_HEX8 = re.compile("[0-9a-f]{8}")
_KEY_B64_CHARS = 44  # base64 of 33 bytes
_MAX_VKEY_CHARS = MAX_NAME_BYTES + 1 + 8 + 1 + _KEY_B64_CHARS
_OPENED = object()  # capability: only open_note builds a VerifiedNote


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


def _check_lines(data: bytes) -> None:
    if any(len(line) > MAX_LINE_BYTES for line in data.split(b"\n")):
        raise NoteFormatError(f"a line is longer than {MAX_LINE_BYTES} bytes")


def _check_text(text: object) -> bytes:
    """The rules on a note's text (signed-note §Format, plus ours); returns its UTF-8."""
    if not isinstance(text, str):
        raise NoteFormatError("note text must be a str")
    encoded = _utf8(text)
    if encoded is None:
        raise NoteFormatError("note text must be valid UTF-8")
    if len(encoded) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"note text is over {MAX_NOTE_BYTES} bytes")
    if not text.endswith("\n"):
        raise NoteFormatError("note text must end with a newline")
    if text == "\n" or text.endswith("\n\n"):
        raise NoteFormatError("the last line of the note text must not be empty")
    if m := _CONTROL.search(text):
        raise NoteFormatError(f"control character U+{ord(m.group()):04X} in note text")
    _check_lines(encoded)
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


@dataclass(frozen=True)
class Signature:
    """One signature line: the key name, the 4-byte key ID, the signature proper (n >= 1 bytes)."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        encoded = _check_name(self.name, NoteFormatError)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != 4:
            raise NoteFormatError("a signature's key ID is 4 bytes")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise NoteFormatError("a signature is non-empty bytes")
        b64_len = 4 * ((4 + len(self.signature) + 2) // 3)
        if len(_SIG_PREFIX.encode()) + len(encoded) + 1 + b64_len > MAX_LINE_BYTES:
            raise NoteFormatError(f"a signature line is longer than {MAX_LINE_BYTES} bytes")

    def _line(self) -> str:
        """signed-note §Signatures: — <key name> base64(32-bit key ID || signature)"""
        b64 = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {b64}\n"


@dataclass(frozen=True)
class Note:
    """An UNVERIFIED signed note: its text (ending in a newline) and its signatures."""

    text: str
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text)
        if not isinstance(self.signatures, (tuple, list)):
            raise NoteFormatError("signatures must be a tuple of Signature")
        sigs = tuple(self.signatures)
        if not 1 <= len(sigs) <= MAX_SIGNATURES:
            raise NoteFormatError(f"a note has 1 to {MAX_SIGNATURES} signatures")
        if not all(isinstance(sig, Signature) for sig in sigs):
            raise NoteFormatError("signatures must be a tuple of Signature")
        object.__setattr__(self, "signatures", sigs)


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteFormatError("a signature line starts with an em dash (U+2014) and a space")
    name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not space:
        raise NoteFormatError("a signature line is '— <name> <base64>'")
    _check_name(name, NoteFormatError)
    raw = _b64decode(b64, NoteFormatError, "signature")
    if len(raw) < 5:
        raise NoteFormatError("a signature is a 4-byte key ID and at least one byte")
    return Signature(name, raw[:4], raw[4:])


def parse_note(data: bytes) -> Note:
    """Parse a signed note (signed-note §Format) without verifying anything.

    The text ends at the LAST blank line; every line after it is a signature line.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise NoteFormatError("a signed note is bytes")
    if len(data) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"a signed note is at most {MAX_NOTE_BYTES} bytes")
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteFormatError("a signed note must be valid UTF-8") from None
    if m := _CONTROL.search(s):
        raise NoteFormatError(f"control character U+{ord(m.group()):04X} in note")
    _check_lines(data)
    split = s.rfind("\n\n")
    if split < 0:
        raise NoteFormatError("no blank line separates the text from the signatures")
    text, block = s[: split + 1], s[split + 2 :]
    if not block.endswith("\n"):
        raise NoteFormatError("the signatures must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteFormatError(f"a note has at most {MAX_SIGNATURES} signatures")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def format_note(note: Note) -> bytes:
    """text || "\\n" || one line per signature: the exact inverse of parse_note."""
    if not isinstance(note, Note):
        raise TypeError("format_note() takes a Note")
    data = (note.text + "\n" + "".join(sig._line() for sig in note.signatures)).encode("utf-8")
    if len(data) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"a signed note is at most {MAX_NOTE_BYTES} bytes")
    return data


def sign_note(text: str, signers: Sequence[Signer]) -> bytes:
    """Sign text with each signer, in order, and return the signed note."""
    message = _check_text(text)
    signers = tuple(signers)
    if not all(isinstance(s, Signer) for s in signers):
        raise TypeError("sign_note() takes Signers")
    if not 1 <= len(signers) <= MAX_SIGNATURES:
        raise NoteFormatError(f"a note has 1 to {MAX_SIGNATURES} signatures")
    if len({(s.name, s.key_id) for s in signers}) != len(signers):
        raise NoteFormatError("two signers share a key name and key ID")
    note = Note(text, tuple(Signature(s.name, s.key_id, s.sign(message)) for s in signers))
    data = format_note(note)
    if parse_note(data) != note:  # compute, then compare: the output must parse back
        raise NoteFormatError("signed note does not round-trip")
    return data


@dataclass(frozen=True)
class VerifiedNote:
    """A note whose text at least one known key signed. Made only by open_note.

    ``verified``: valid signatures by known keys, one per key. ``unverified``: signatures
    by keys the caller did not name, kept apart and never trusted (duplicates dropped).
    """

    text: str
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]
    _token: object = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if self._token is not _OPENED:
            raise TypeError("a VerifiedNote is made only by open_note()")


def open_note(data: bytes, verifiers: Sequence[Verifier]) -> VerifiedNote:
    """Parse data and check its signatures against verifiers (signed-note §Signatures).

    A signature whose (name, key ID) is a known key's must verify, or SignatureError; the
    others are kept in ``unverified``. No valid signature by a known key: SignatureError.
    Two different verifiers with one (name, key ID): KeyFormatError.
    """
    known: dict[tuple[str, bytes], Verifier] = {}
    for v in verifiers:
        if not isinstance(v, Verifier):
            raise TypeError("open_note() takes Verifiers")
        if known.setdefault((v.name, v.key_id), v) != v:
            raise KeyFormatError(f"two verifiers are named {v.name}+{v.key_id.hex()}")
    note = parse_note(data)
    message = note.text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if not verifier.verify(message, sig.signature):
            raise SignatureError(f"invalid signature by key {sig.name}+{sig.key_id.hex()}")
        if all((s.name, s.key_id) != (sig.name, sig.key_id) for s in verified):
            verified.append(sig)
    if not verified:
        names = ", ".join(sorted(f"{n}+{k.hex()}" for n, k in known)) or "none"
        raise SignatureError(f"no signature by a known key (known: {names})")
    return VerifiedNote(note.text, tuple(verified), tuple(unverified), _token=_OPENED)
