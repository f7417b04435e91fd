"""Signed entries, their ids, and the log leaves that wrap them (FORMAT.md §4, §7).

    entry     = JCS(body + {"sigs": [...]})            at most MAX_ENTRY_SIZE bytes
    entry id  = hex(SHA-256(entry))                     lower-case, 64 digits
    signed    = ENTRY_CONTEXT || JCS(body)              what each signature covers
    leaf      = JCS({"entry": <entry object>, "time": <integrated time>})
    leaf hash = SHA-256(0x00 || leaf)                   RFC 9162 §2.1.1

Parsing checks the schema (``kinds``) and the encoding, not who signed: that
takes the key state of the log (``chain``). An id covers the signatures, and
libsodium's strict verification means one entry cannot have two valid ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import EntryFormatError
from .fields import Fields
from .jcs import MAX_DEPTH, MAX_SAFE_INTEGER, canonical, checked_canonical, parse_canonical
from .keys import ENTRY_CONTEXT, PublicKey, SigningKey
from .kinds import Access, Body, parse_body
from .merkle import leaf_hash
from .signed import Sig, parse_sigs, sign_object

__all__ = [
    "LEAF_DEPTH",
    "MAX_ENTRY_SIZE",
    "MAX_LEAF_SIZE",
    "Entry",
    "Leaf",
    "entry_from_json",
    "leaf_from_json",
    "parse_entry",
    "parse_leaf",
    "sign_entry",
]

# C2SP tlog-tiles stores each leaf behind a uint16 length, so a leaf, and with
# it the entry it wraps, is at most 65,535 bytes.
MAX_ENTRY_SIZE = 65535
MAX_LEAF_SIZE = 65535
# Nesting is counted from the entry (FORMAT.md §2): in a leaf the entry sits at depth 1.
LEAF_DEPTH = MAX_DEPTH + 1


@dataclass(frozen=True)
class Entry:
    """A well-formed signed entry. Its signatures are not yet checked against any key."""

    raw: bytes  # the canonical bytes
    obj: Mapping[str, Any]  # the JSON object, ``sigs`` included
    body: Body
    sigs: tuple[Sig, ...]

    @cached_property
    def id(self) -> str:  # hashed once per entry: replay, the writer and queries all ask
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    def signed_message(self) -> bytes:
        return self._message

    @cached_property
    def _message(self) -> bytes:  # ``obj`` came from a checked parse or ``canonical``
        return ENTRY_CONTEXT + checked_canonical({k: v for k, v in self.obj.items() if k != "sigs"})

    def signed_by(self, key: PublicKey) -> bool:
        """True iff one of the signatures names ``key`` by kid and verifies under it."""
        message = self._message
        return any(s.kid == key.kid and key.verify(b"", message, s.sig) for s in self.sigs)


def entry_from_json(obj: Any, known: Access | None = None) -> Entry:
    """Parse an entry given as a JSON value (e.g. nested in a leaf or bundle);
    ``known``: see ``kinds.Access.parse``."""
    if not isinstance(obj, Mapping):
        raise EntryFormatError("an entry must be an object")
    raw = canonical(obj)
    if len(raw) > MAX_ENTRY_SIZE:
        raise EntryFormatError(f"entry is {len(raw)} bytes, more than {MAX_ENTRY_SIZE}")
    obj = json.loads(raw)  # a private copy: later edits to the caller's object change nothing
    sigs = parse_sigs(obj.get("sigs"))
    body = parse_body({k: v for k, v in obj.items() if k != "sigs"}, known)
    return Entry(raw, obj, body, sigs)


def parse_entry(data: bytes) -> Entry:
    """Parse an entry's canonical bytes; anything not canonical is rejected, not re-encoded."""
    if isinstance(data, bytes | bytearray) and len(data) > MAX_ENTRY_SIZE:
        raise EntryFormatError(f"entry is {len(data)} bytes, more than {MAX_ENTRY_SIZE}")
    obj = parse_canonical(data, max_size=MAX_ENTRY_SIZE)
    if not isinstance(obj, Mapping):
        raise EntryFormatError("an entry must be an object")
    # ``data`` is the canonical encoding of ``obj`` (checked), and ``obj`` is a private
    # value just parsed: what ``entry_from_json`` would re-encode and copy.
    sigs = parse_sigs(obj.get("sigs"))
    body = parse_body({k: v for k, v in obj.items() if k != "sigs"})
    return Entry(bytes(data), obj, body, sigs)


def parse_checked_entry(data: bytes) -> Entry:
    """Parse bytes ``parse_entry`` has already accepted (an audit's second reading of the
    same snapshot): the same entry, without checking the encoding again."""
    obj = json.loads(data)
    sigs = parse_sigs(obj.get("sigs"))
    body = parse_body({k: v for k, v in obj.items() if k != "sigs"})
    return Entry(bytes(data), obj, body, sigs)


def sign_entry(
    body: Mapping[str, Any], signers: Sequence[SigningKey], known: Access | None = None
) -> Entry:
    """Sign a body (an entry object without ``sigs``) and return the parsed entry.

    The signed object is parsed as any verifier parses it, once: a body no verifier
    would accept raises, and its signatures are never returned. ``known``: an access
    whose parsed invocation and context may be reused (``kinds.Access.parse``).
    """
    return entry_from_json(sign_object(ENTRY_CONTEXT, body, signers), known)


@dataclass(frozen=True)
class Leaf:
    """One log leaf: a signed entry and the integrated time the log gave it."""

    entry: Entry
    time: int

    @property
    def raw(self) -> bytes:
        # JCS({"entry": e, "time": t}): "entry" sorts before "time", and e is already canonical.
        return b'{"entry":' + self.entry.raw + b',"time":' + str(self.time).encode() + b"}"

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.raw)

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry.obj, "time": self.time}

    @classmethod
    def build(cls, entry: Entry, time: int) -> Leaf:
        leaf = cls(entry, time)
        if type(time) is not int or not 0 <= time <= MAX_SAFE_INTEGER:
            raise EntryFormatError("must be a non-negative integer", "time")
        if len(leaf.raw) > MAX_LEAF_SIZE:
            raise EntryFormatError(f"leaf is more than {MAX_LEAF_SIZE} bytes")
        return leaf


def leaf_from_json(obj: Any) -> Leaf:
    f = Fields(obj)
    entry = f.parsed("entry", entry_from_json)
    time = f.int("time")
    f.done()
    return Leaf.build(entry, time)


def parse_leaf(data: bytes) -> Leaf:
    """Parse a leaf's canonical bytes."""
    return leaf_from_json(parse_canonical(data, max_size=MAX_LEAF_SIZE, max_depth=LEAF_DEPTH))
