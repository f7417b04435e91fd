"""Evidence bundles: a checkpoint, leaves with inclusion proofs, and the chains they prove.

FORMAT.md §9. A bundle is one JSON document:

    {"origin": <log origin>,
     "log_key": <the log's verifier-key string>,
     "checkpoint": <C2SP signed note text>,
     "entries": [{"index": i, "leaf": {"entry": {...}, "time": t},
                  "inclusion": [<base64 hash>, ...]}, ...],      increasing index, from 0
     "consistency": {"from_size": m, "proof": [<base64 hash>, ...]}}   optional

``parse_bundle`` checks the schema only (``format``). ``verify_bundle`` checks, in
order, and raises at the first failure:
 1. the bundle's ``log_key`` is the key the auditor trusts, and ``origin`` is its name;
 2. the checkpoint is signed by that key (C2SP signed-note) for that origin;
 3. the indexes strictly increase (``order``), and every entry's leaf hash is
    included in the checkpoint's tree at its index (``proof``);
 4. replaying the entries (``chain.Replay``) holds: genesis first, every
    signature by a key entitled to make it, every link, every attenuation step;
 5. ``consistency`` has the shape of a proof from ``from_size`` (at most the
    checkpoint's size) and, given an older checkpoint (``since``), shows the
    log grew from it to this checkpoint by appends only.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .chain import CredentialRecord, Replay
from .checkpoint import SignedCheckpoint, open_checkpoint
from .entry import Entry, Leaf, leaf_from_json
from .errors import ChainError, EntryFormatError, FormatError, ProofError, SignatureError
from .fields import Fields
from .jcs import MAX_DEPTH, parse
from .keys import PublicKey
from .kinds import Access, Delegation, Genesis, Grant, KeyChange, Revocation
from .merkle import consistency_proof_size, verify_consistency, verify_inclusion
from .note import Verifier, parse_vkey

__all__ = ["MAX_BUNDLE_SIZE", "BundleEntry", "VerifiedBundle", "parse_bundle", "verify_bundle"]

MAX_BUNDLE_SIZE = 256 * 1024 * 1024
MAX_PROOF = 64
# Nesting is counted from each entry (FORMAT.md §2); in a bundle an entry sits at depth 4:
# bundle -> "entries" -> [i] -> "leaf" -> "entry".
BUNDLE_DEPTH = MAX_DEPTH + 4


def _hashes(value: Any, path: str = "") -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF:
        raise EntryFormatError(f"must be a list of at most {MAX_PROOF} hashes", path)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) != 44:
            raise EntryFormatError("must be a base64 SHA-256 hash", f"{path}[{i}]")
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise EntryFormatError("is not base64", f"{path}[{i}]") from None
        if len(raw) != 32 or base64.b64encode(raw).decode() != item:
            raise EntryFormatError("must be a canonical base64 SHA-256 hash", f"{path}[{i}]")
        out.append(raw)
    return tuple(out)


def encode_hashes(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@dataclass(frozen=True)
class BundleEntry:
    index: int
    leaf: Leaf
    inclusion: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "leaf": self.leaf.to_json(),
            "inclusion": encode_hashes(self.inclusion),
        }


@dataclass(frozen=True)
class Bundle:
    """A parsed, unverified bundle."""

    origin: str
    log_key: str
    checkpoint: str
    entries: tuple[BundleEntry, ...]
    consistency: tuple[int, tuple[bytes, ...]] | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "origin": self.origin,
            "log_key": self.log_key,
            "checkpoint": self.checkpoint,
            "entries": [e.to_json() for e in self.entries],
        }
        if self.consistency is not None:
            out["consistency"] = {
                "from_size": self.consistency[0],
                "proof": encode_hashes(self.consistency[1]),
            }
        return out


def parse_bundle(data: bytes | Mapping[str, Any]) -> Bundle:
    """Parse a bundle's JSON (bytes, or an already-decoded object) strictly."""
    if isinstance(data, bytes | bytearray):
        obj = parse(data, max_size=MAX_BUNDLE_SIZE, max_depth=BUNDLE_DEPTH)
    else:
        obj = data
    f = Fields(obj)
    origin = f.str("origin", max_len=255)
    log_key = f.str("log_key", max_len=512)
    checkpoint = f.str("checkpoint", max_len=65536)
    raw_entries = f.raw("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise EntryFormatError("must be a non-empty list", "entries")
    entries = []
    for i, item in enumerate(raw_entries):
        e = Fields(item, f"entries[{i}]")
        index = e.int("index")
        leaf = e.parsed("leaf", leaf_from_json)
        inclusion = e.parsed("inclusion", _hashes)
        e.done()
        entries.append(BundleEntry(index, leaf, inclusion))
    consistency = None
    c = f.object("consistency", required=False)
    if c is not None:
        cf = Fields(c, "consistency")
        consistency = (cf.int("from_size", 1), cf.parsed("proof", _hashes))
        cf.done()
    f.done()
    return Bundle(origin, log_key, checkpoint, tuple(entries), consistency)


@dataclass(frozen=True)
class VerifiedBundle:
    """What a bundle proved: only ``verify_bundle`` makes one."""

    checkpoint: SignedCheckpoint
    entries: tuple[BundleEntry, ...]
    replay: Replay
    since: SignedCheckpoint | None

    def chains(self) -> list[list[CredentialRecord]]:
        """Each credential that no other bundled credential extends, as its chain, human first."""
        recs = list(self.replay.credentials.values())
        parents = {r.parent.id for r in recs if r.parent is not None}
        return [r.chain() for r in recs if r.id not in parents]


def presign(entries: Sequence[Entry], log_key: Verifier) -> set[tuple[str, str]]:
    """The (entry id, kid) pairs (``"inv:" + kid`` for an access's invocation) whose
    signatures verify under a key these entries introduce, checked in threads.

    A kid is its key's hash, so a verified pair is a fact whatever the replay then
    decides about the key's authority; ``Replay`` checks anything not in the set
    itself. Ed25519 verification releases the GIL, so the threads use every core.
    """
    keys: dict[str, PublicKey] = {}
    log = PublicKey(log_key.public_key)
    keys[log.kid] = log
    for entry in entries:
        body = entry.body
        if isinstance(body, Genesis):
            keys.update((k.key.kid, k.key) for k in body.keys)
        elif isinstance(body, KeyChange):
            keys[body.key.kid] = body.key
        elif isinstance(body, Grant | Delegation | Revocation) and body.holder is not None:
            keys[body.holder.kid] = body.holder  # a holder key, or one revoked
    jobs: list[tuple[tuple[str, str], PublicKey, bytes, bytes]] = []
    for entry in entries:
        message = entry.signed_message()
        for sig in entry.sigs:
            if sig.kid in keys:
                jobs.append(((entry.id, sig.kid), keys[sig.kid], message, sig.sig))
        if isinstance(entry.body, Access):
            inv = entry.body.invocation
            if inv.sig.kid in keys:
                pair = (entry.id, "inv:" + inv.sig.kid)
                jobs.append((pair, keys[inv.sig.kid], inv.message(), inv.sig.sig))
    if len(jobs) < 64:
        return {pair for pair, key, msg, sig in jobs if key.verify(b"", msg, sig)}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        ok = pool.map(lambda job: job[1].verify(b"", job[2], job[3]), jobs, chunksize=64)
        return {job[0] for job, good in zip(jobs, ok, strict=True) if good}


def _trusted(log_key: Verifier | str) -> Verifier:
    return log_key if isinstance(log_key, Verifier) else parse_vkey(log_key)


def verify_bundle(
    data: bytes | Mapping[str, Any] | Bundle,
    log_key: Verifier | str,
    since: bytes | None = None,
) -> VerifiedBundle:
    """Verify a bundle offline against the trusted ``log_key`` (and an older checkpoint)."""
    trusted = _trusted(log_key)
    bundle = data if isinstance(data, Bundle) else parse_bundle(data)
    # 1. the trust anchor
    if bundle.log_key != trusted.vkey:
        raise SignatureError(
            f"bundle is for log key {bundle.log_key}, not the trusted {trusted.vkey}"
        )
    if bundle.origin != trusted.name:
        raise SignatureError(f"bundle origin {bundle.origin!r} is not the log key's name")
    # 2. the checkpoint
    try:
        cp = open_checkpoint(bundle.checkpoint.encode("utf-8"), trusted, bundle.origin)
    except UnicodeEncodeError:
        raise EntryFormatError("is not valid text", "checkpoint") from None
    size, root = cp.checkpoint.size, cp.checkpoint.root_hash
    # 3. order, then inclusion
    for before, e in zip(bundle.entries, bundle.entries[1:], strict=False):
        if e.index <= before.index:
            raise ChainError(
                f"entry {e.leaf.entry.id[:16]} ({e.leaf.entry.kind}): order: "
                f"index {e.index} follows index {before.index}",
                e.leaf.entry.id,
                "order",
            )
    for e in bundle.entries:
        if e.index >= size:
            raise ProofError(f"entry {e.index} is beyond the checkpoint's tree size {size}")
        try:
            verify_inclusion(e.index, size, e.leaf.hash, e.inclusion, root)
        except ProofError as exc:
            err = ProofError(f"entry {e.index}: inclusion proof: {exc}")
            err.expected, err.computed = exc.expected, exc.computed
            raise err from None
    # 4. the chains, with the signatures checked first on every core
    replay = Replay(trusted, presign([e.leaf.entry for e in bundle.entries], trusted))
    replay.apply_all((e.index, e.leaf) for e in bundle.entries)
    # 5. consistency: its shape against this checkpoint, then with an older checkpoint
    if bundle.consistency is not None:
        from_size, proof = bundle.consistency
        if from_size > size:
            raise ProofError(
                f"consistency.from_size {from_size} exceeds the checkpoint's size {size}"
            )
        want = consistency_proof_size(from_size, size)
        if len(proof) != want:
            raise ProofError(
                f"a consistency proof from size {from_size} to {size} has {want} hashes, "
                f"not {len(proof)}"
            )
    old = None
    if since is not None:
        try:
            old = open_checkpoint(since, trusted, bundle.origin)
        except FormatError as exc:
            raise EntryFormatError(f"the --since checkpoint: {exc}") from None
        m = old.checkpoint.size
        if m > size:
            raise ProofError(f"the older checkpoint's size {m} exceeds this one's {size}")
        if m == 0:
            pass  # every tree extends the empty tree
        elif bundle.consistency is None or bundle.consistency[0] != m:
            if m != size:
                raise ProofError(f"bundle has no consistency proof from size {m}")
            verify_consistency(m, size, old.checkpoint.root_hash, root, ())
        else:
            verify_consistency(m, size, old.checkpoint.root_hash, root, bundle.consistency[1])
    return VerifiedBundle(cp, bundle.entries, replay, old)
