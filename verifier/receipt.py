"""Receipts: the evidence an append is acknowledged with (FORMAT.md §9.4).

A receipt is one JSON object::

    {"checkpoint": "<signed checkpoint note text>",
     "index": <leaf index>,
     "leaf": {"entry": <entry object>, "time": <integrated time>},
     "inclusion": [<base64 hash>, ...]}

The log signs the checkpoint in the group commit that wrote the leaf, so the
receipt is evidence from the moment the append is acknowledged: whoever holds
it can show, offline, that the log key committed to this leaf at this index.
If the log later drops or changes the leaf, no consistency proof from the
receipt's checkpoint to a later one exists, and the two signed checkpoints are
the proof that the log forked.

A receipt proves inclusion only: that the entry is valid in its chain is what
replay (§8) proves, from a bundle or the whole log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bundle import _hashes, encode_hashes
from .checkpoint import SignedCheckpoint, open_checkpoint
from .entry import LEAF_DEPTH, Leaf, leaf_from_json
from .errors import EntryFormatError, ProofError, SignatureError
from .fields import Fields
from .jcs import parse
from .merkle import verify_consistency, verify_inclusion
from .note import Verifier, parse_vkey

__all__ = [
    "MAX_RECEIPT_SIZE",
    "Receipt",
    "VerifiedReceipt",
    "parse_receipt",
    "verify_receipt",
    "verify_receipt_still_included",
]

MAX_RECEIPT_SIZE = 256 * 1024
# Nesting is counted from the entry (FORMAT.md §2): receipt -> "leaf" -> "entry".
RECEIPT_DEPTH = LEAF_DEPTH + 1


@dataclass(frozen=True)
class Receipt:
    """A parsed, unverified receipt."""

    checkpoint: str
    index: int
    leaf: Leaf
    inclusion: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "index": self.index,
            "leaf": self.leaf.to_json(),
            "inclusion": encode_hashes(self.inclusion),
        }


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a receipt proved: only ``verify_receipt`` makes one."""

    checkpoint: SignedCheckpoint
    index: int
    leaf: Leaf


def parse_receipt(data: bytes | Mapping[str, Any]) -> Receipt:
    """Parse a receipt's JSON (bytes, or an already-decoded object) strictly."""
    if isinstance(data, bytes | bytearray):
        obj = parse(bytes(data), max_size=MAX_RECEIPT_SIZE, max_depth=RECEIPT_DEPTH)
    else:
        obj = data
    f = Fields(obj)
    checkpoint = f.str("checkpoint", max_len=65536)
    index = f.int("index")
    leaf = f.parsed("leaf", leaf_from_json)
    inclusion = f.parsed("inclusion", _hashes)
    f.done()
    return Receipt(checkpoint, index, leaf, inclusion)


def verify_receipt(
    data: bytes | Mapping[str, Any] | Receipt,
    log_key: Verifier | str,
    entry_id: str | None = None,
) -> VerifiedReceipt:
    """Verify a receipt offline against the trusted ``log_key`` (FORMAT.md §9.4).

    ``entry_id``, when given, is the id of the entry the caller appended: the receipt
    must be for that entry.
    """
    trusted = log_key if isinstance(log_key, Verifier) else parse_vkey(log_key)
    receipt = data if isinstance(data, Receipt) else parse_receipt(data)
    # 1. the checkpoint, signed by the log key
    try:
        cp = open_checkpoint(receipt.checkpoint.encode("utf-8"), trusted, trusted.name)
    except UnicodeEncodeError:
        raise EntryFormatError("is not valid text", "checkpoint") from None
    entry = receipt.leaf.entry
    # 2. the entry is this log's, and the one expected
    if entry.body.log != trusted.name:
        raise SignatureError(f"the entry is for log {entry.body.log!r}, not {trusted.name!r}")
    if entry_id is not None and entry.id != entry_id:
        raise ProofError(f"the receipt is for entry {entry.id}, not {entry_id}")
    # 3. inclusion at index in the checkpoint's tree
    size, root = cp.checkpoint.size, cp.checkpoint.root_hash
    if receipt.index >= size:
        raise ProofError(f"index {receipt.index} is beyond the checkpoint's tree size {size}")
    verify_inclusion(receipt.index, size, receipt.leaf.hash, list(receipt.inclusion), root)
    return VerifiedReceipt(cp, receipt.index, receipt.leaf)


def verify_receipt_still_included(
    receipt: VerifiedReceipt, later: SignedCheckpoint, proof: list[bytes]
) -> None:
    """Check that ``later``, a checkpoint of the same log, still holds the receipt's leaf:
    ``proof`` must be RFC 9162's consistency proof from the receipt's tree to ``later``'s.

    A log that dropped or changed the leaf cannot give one; the receipt and ``later`` (both
    signed by the log key) are then the evidence that it forked.
    """
    old, new = receipt.checkpoint.checkpoint, later.checkpoint
    if old.origin != new.origin:
        raise SignatureError(f"the later checkpoint is for log {new.origin!r}, not {old.origin!r}")
    if new.size < old.size:
        raise ProofError(f"the later checkpoint ({new.size}) is smaller than the receipt's")
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
