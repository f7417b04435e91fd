"""The verifier's exceptions, rooted by whose fault a failure is.

    LineageError                      every error this package raises
    ├── FormatError                   bad input: bytes that are not a well-formed object
    │   ├── EncodingError             outside the canonical JSON subset (FORMAT.md §2)
    │   ├── NoteFormatError           not a C2SP signed note
    │   ├── CheckpointFormatError     not a C2SP tlog-checkpoint
    │   ├── KeyFormatError            not a verifier-key string or Ed25519 key
    │   ├── ResourceError             a non-canonical resource name (FORMAT.md §6.1)
    │   └── EntryFormatError          an entry, invocation or bundle that breaks its schema
    ├── VerificationError             well-formed, but not what it claims to be
    │   ├── SignatureError            a signature that does not verify, or an unknown signer
    │   ├── ProofError                an inclusion or consistency proof that does not hold
    │   ├── AttenuationError          a derived scope or limit wider than its parent's
    │   └── ChainError                a chain of authority that does not hold together
    └── (subclasses elsewhere: ledger/ roots its storage and policy errors here too)

Every error carries a message fit for a user. Errors that compare carry both
sides: ``ProofError.expected``/``.computed``, ``AttenuationError.field``.
Parsers raise FormatError subclasses, never a raw ValueError, KeyError or IndexError.
"""

from __future__ import annotations

__all__ = [
    "AttenuationError",
    "ChainError",
    "CheckpointFormatError",
    "EncodingError",
    "EntryFormatError",
    "FormatError",
    "KeyFormatError",
    "LineageError",
    "NoteFormatError",
    "ProofError",
    "ResourceError",
    "SignatureError",
    "VerificationError",
    "printable",
]


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: every character that is not printable
    (``str.isprintable``: controls, format characters such as bidi overrides, line and
    paragraph separators, unassigned code points, any space but U+0020) is written as a
    Python-style escape (``\\x1b``, ``\\u202e``), and a backslash as ``\\\\``, so that
    what a bundle holds can neither move the cursor nor pass for another line."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ascii(ch)[1:-1])  # \\uNNNN or \\UNNNNNNNN
    return "".join(out)


class LineageError(Exception):
    """Base of every error raised by Lineage."""


class FormatError(LineageError, ValueError):
    """Input that is not a well-formed object of the expected kind."""


class EncodingError(FormatError):
    """JSON outside the canonical subset: floats, big integers, duplicate keys, ..."""


class NoteFormatError(FormatError):
    """Text that is not a well-formed C2SP signed note."""


class CheckpointFormatError(FormatError):
    """A note body that is not a well-formed C2SP tlog-checkpoint."""


class KeyFormatError(FormatError):
    """A malformed verifier-key string, signer-key string or raw key."""


class ResourceError(FormatError):
    """A resource name or pattern that is not canonical."""


class EntryFormatError(FormatError):
    """An entry, invocation, leaf or bundle that breaks its schema.

    ``field`` names the offending field as a dotted path when one is known.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class VerificationError(LineageError):
    """Well-formed input that fails a cryptographic or semantic check."""


class SignatureError(VerificationError):
    """A signature that does not verify, or that no trusted key made."""


class ProofError(VerificationError):
    """A Merkle proof that does not hold.

    When the failure is a root mismatch, ``expected`` is the root the caller
    trusts and ``computed`` the root the proof leads to (both raw bytes).
    """

    def __init__(self, message: str, expected: bytes | None = None, computed: bytes | None = None):
        if expected is not None and computed is not None:
            message = f"{message} (expected root {expected.hex()}, computed {computed.hex()})"
        super().__init__(message)
        self.expected = expected
        self.computed = computed


class AttenuationError(VerificationError):
    """A derived credential that does not narrow its parent; ``field`` names where."""

    def __init__(self, message: str, field: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ChainError(VerificationError):
    """A chain of authority that does not hold: a broken link, a bad signer, a lapsed window.

    ``entry_id`` names the entry, ``check`` the rule it broke (FORMAT.md §8), and
    ``field`` the widened field when the check is ``attenuation``.
    """

    def __init__(
        self,
        message: str,
        entry_id: str | None = None,
        check: str | None = None,
        field: str | None = None,
    ):
        super().__init__(message)
        self.entry_id = entry_id
        self.check = check
        self.field = field
