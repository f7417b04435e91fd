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
from collections.abc import Sequence
from dataclasses import dataclass, field

from lineage.verifier.errors import KeyFormatError, NoteFormatError, SignatureError
from lineage.verifier.note_keys import (
    _CONTROL,
    ALG_ED25519,
    MAX_NAME_BYTES,
    Signer,
    Verifier,
    _b64decode,
    _check_name,
    _utf8,
    format_skey,
    key_id,
    parse_skey,
    parse_vkey,
)

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

MAX_NOTE_BYTES = 1 << 20  # a whole signed note, UTF-8
MAX_SIGNATURES = 100  # signed-note §Format: SHOULD limit, MUST accept 16; Go stops at 100
MAX_LINE_BYTES = 8192  # any line, text or signature (fits a ~5 kB post-quantum signature)

_SIG_PREFIX = "\u2014 "  # em dash, space (signed-note §Format)
_OPENED = object()  # capability: only open_note builds a VerifiedNote


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
