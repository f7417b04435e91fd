"""C2SP transparency-log checkpoints (c2sp.org/tlog-checkpoint), signed as C2SP signed notes.

The note text of a checkpoint (tlog-checkpoint §Note text)::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeroes>\\n
    <base64 of the 32-byte RFC 9162 root hash>\\n
    [<extension line>\\n ...]

Our rule (tlog-checkpoint §Signatures says SHOULD): the log's key name equals the origin.
Parsing yields an unverified :class:`Checkpoint`; only :func:`open_checkpoint` yields a
:class:`SignedCheckpoint`. docs/CHECKPOINT.md describes the format and what is rejected.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lineage.verifier.errors import CheckpointFormatError, SignatureError
from lineage.verifier.note import (
    MAX_LINE_BYTES,
    MAX_NOTE_BYTES,
    Signer,
    VerifiedNote,
    Verifier,
    open_note,
    sign_note,
)

__all__ = [
    "MAX_TREE_SIZE",
    "Checkpoint",
    "SignedCheckpoint",
    "format_checkpoint",
    "open_checkpoint",
    "parse_checkpoint",
    "sign_checkpoint",
]

MAX_TREE_SIZE = (1 << 63) - 1  # sizes are below 2**63, as in every int64-based log
_SIZE = re.compile("0|[1-9][0-9]{0,18}")  # ASCII digits only, no sign, no leading zeroes
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # every Cc character, newline included
_OPENED = object()  # capability: only open_checkpoint builds a SignedCheckpoint


def _check_line(value: object, what: str) -> None:
    """A non-empty line: no control characters, valid UTF-8, at most MAX_LINE_BYTES."""
    if not isinstance(value, str) or not value:
        raise CheckpointFormatError(f"the {what} must be a non-empty string")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointFormatError(f"the {what} must be valid UTF-8") from None
    if len(encoded) > MAX_LINE_BYTES:
        raise CheckpointFormatError(f"the {what} is longer than {MAX_LINE_BYTES} bytes")
    if m := _CONTROL.search(value):
        raise CheckpointFormatError(f"control character U+{ord(m.group()):04X} in the {what}")


@dataclass(frozen=True)
class Checkpoint:
    """An UNVERIFIED checkpoint: origin, tree size, 32-byte root hash, extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # tlog-checkpoint §Note text, lines 1-4.
        _check_line(self.origin, "origin")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointFormatError(f"the tree size is an int in [0, {MAX_TREE_SIZE}]")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise CheckpointFormatError("the root hash is 32 bytes")
        if not isinstance(self.extensions, (tuple, list)):
            raise CheckpointFormatError("the extensions are a tuple of str")
        extensions = tuple(self.extensions)
        for line in extensions:
            _check_line(line, "extension line")
        object.__setattr__(self, "extensions", extensions)


def format_checkpoint(cp: Checkpoint) -> str:
    """origin\\n size\\n base64(root)\\n then each extension line and a newline."""
    if not isinstance(cp, Checkpoint):
        raise TypeError("format_checkpoint() takes a Checkpoint")
    root = base64.b64encode(cp.root_hash).decode("ascii")
    return "".join(f"{line}\n" for line in (cp.origin, str(cp.size), root, *cp.extensions))


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text strictly; format_checkpoint(result) == text."""
    if not isinstance(text, str):
        raise CheckpointFormatError("a checkpoint is a str")
    if len(text) > MAX_NOTE_BYTES:
        raise CheckpointFormatError(f"a checkpoint is at most {MAX_NOTE_BYTES} bytes")
    if not text.endswith("\n"):
        raise CheckpointFormatError("a checkpoint ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointFormatError("a checkpoint has at least three lines")
    origin, size_line, root_line, *extensions = lines
    if not _SIZE.fullmatch(size_line):
        raise CheckpointFormatError(f"tree size {size_line[:40]!r} is not canonical decimal")
    size = int(size_line)  # at most 19 ASCII digits: int() sees nothing else
    if size > MAX_TREE_SIZE:
        raise CheckpointFormatError(f"tree size {size} is 2**63 or more")
    try:
        root = base64.b64decode(root_line, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointFormatError("the root hash is not standard padded base64") from None
    if len(root) != 32 or base64.b64encode(root).decode("ascii") != root_line:
        raise CheckpointFormatError("the root hash is not the canonical base64 of 32 bytes")
    cp = Checkpoint(origin, size, root, tuple(extensions))  # checks origin and extensions
    if format_checkpoint(cp) != text:  # compute, then compare
        raise CheckpointFormatError("checkpoint does not round-trip")
    return cp


@dataclass(frozen=True)
class SignedCheckpoint:
    """A VERIFIED checkpoint: its body, the opened note, and the note's bytes as received.

    Made only by open_checkpoint: the log key signed ``raw`` and ``checkpoint.origin`` is
    that key's name.
    """

    checkpoint: Checkpoint
    note: VerifiedNote
    raw: bytes
    _token: object = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if self._token is not _OPENED:
            raise TypeError("a SignedCheckpoint is made only by open_checkpoint()")


def sign_checkpoint(cp: Checkpoint, signer: Signer, extra_signers: Sequence[Signer] = ()) -> bytes:
    """The signed note of cp: the log's signature first, then any extra (witness) ones.

    The log signer's key name must be cp.origin (our rule), else CheckpointFormatError.
    """
    if not isinstance(cp, Checkpoint) or not isinstance(signer, Signer):
        raise TypeError("sign_checkpoint() takes a Checkpoint and a Signer")
    if signer.name != cp.origin:
        raise CheckpointFormatError(
            f"origin {cp.origin!r} is not the log key's name {signer.name!r}"
        )
    return sign_note(format_checkpoint(cp), [signer, *extra_signers])


def open_checkpoint(
    data: bytes, log_verifier: Verifier, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a signed checkpoint against the log's key and return the verified type.

    1. The note must carry a valid signature by log_verifier (signed-note §Signatures);
       other signatures are kept unverified in ``.note.unverified``. Else SignatureError.
    2. The text must be a well-formed checkpoint. Else CheckpointFormatError.
    3. Its origin must be the log key's name and, if given, ``origin``. Else SignatureError:
       the log key did not sign a checkpoint of this log.
    """
    if not isinstance(log_verifier, Verifier):
        raise TypeError("open_checkpoint() takes the log's Verifier")
    if origin is not None and origin != log_verifier.name:
        raise SignatureError(f"log key {log_verifier.name!r} is not the key of origin {origin!r}")
    note = open_note(data, [log_verifier])
    cp = parse_checkpoint(note.text)
    if cp.origin != log_verifier.name:
        raise SignatureError(
            f"checkpoint origin {cp.origin!r} is not the log key's name {log_verifier.name!r}"
        )
    return SignedCheckpoint(cp, note, bytes(data), _token=_OPENED)
