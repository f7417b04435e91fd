"""The log: durable, idempotent, group-committed appends; proofs; checkpoints.

One ``Log`` sequences the writes of a ledger. ``append`` hands the entry to a
single writer thread and waits; the writer takes every append that is queued,
validates each against the replayed state of the log (the same
``lineage.verifier.chain.Replay`` an auditor runs), and writes the batch as one
transaction, one fsync. Nothing is acknowledged before its transaction
commits. An entry already in the log returns its original index.

Opening a log checks that the stored checkpoints verify under the log key and
that the database is not behind the last checkpoint the log published (kept in
a sidecar file beside the database too, so that an older copy of the file put
back is caught): a log is never silently forked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineage.verifier.chain import DEFAULT_INVOCATION_WINDOW, ChainView, Rules
from lineage.verifier.checkpoint import open_checkpoint
from lineage.verifier.entry import Entry, Leaf, parse_entry, sign_entry
from lineage.verifier.errors import (
    ChainError,
    FormatError,
    LineageError,
    ProofError,
    SignatureError,
)
from lineage.verifier.kinds import Access
from lineage.verifier.merkle import (
    Coord,
    consistency_proof,
    inclusion_proof,
    inclusion_proof_coords,
    leaf_hash,
    nodes_completed_by_append,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from lineage.verifier.note import Signer, Verifier
from lineage.verifier.receipt import Receipt

from .checkpoints import (
    check_published,
    checkpoint_of,
    publish,
    publish_locked,
    write_atomic,
    write_sidecar,
)
from .errors import Busy, Damaged, NotFound, RejectedEntry, RollbackError, StorageError
from .keys import KeyRing
from .refs import Ref, ref_of
from .state import RecordCache, SQLiteState
from .store import ACCESS_REFS_DONE, Store, StoredLeaf

__all__ = ["MAX_BATCH", "Appended", "Log"]

logger = logging.getLogger("lineage")

MAX_BATCH = 512
CATCH_UP = 2000  # leaves replayed into the chain state per transaction after an upgrade
ACCESS_CATCH_UP = 2000  # access rows back-filled per transaction after migration 10
SIDECAR_EVERY = 1.0  # seconds between the writer's sidecar writes (the thread does the rest)

# Called inside the write transaction with (entry, chain state, index, time) before the
# entry is checked; raises RejectedEntry to refuse it.
Admit = Callable[[Entry, ChainView, int, int], None]


@dataclass(frozen=True)
class Built:
    """What a ``Builder`` returns: the entry, and the (entry id, kid) signature pairs it
    already checked (its own signature; ``"inv:" + kid`` for an invocation it verified)."""

    entry: Entry
    verified: frozenset[tuple[str, str]] = frozenset()


# Builds an entry inside the write transaction from the state at (index, time): how a
# decision sees every earlier use of a credential, whichever process appended it.
Builder = Callable[[ChainView, int, int], "Entry | Built"]


@dataclass(frozen=True)
class Appended:
    """An acknowledged append: durable, and (when the log signs) with its receipt."""

    id: str
    index: int
    existing: bool = False  # True when the entry was already in the log
    entry: Entry | None = None  # the entry, when this append wrote it
    time: int | None = None  # its integrated time, when this append wrote it
    receipt: Receipt | None = None  # FORMAT.md §9.4: checkpoint and inclusion proof

    def to_json(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "index": self.index}
        if self.receipt is not None:
            out["receipt"] = self.receipt.to_json()
        return out


class _Overlay:
    """Nodes of the batch being written, over the stored ones (a HashReader)."""

    def __init__(self, store: Store):
        self.store = store
        self.pending: dict[Coord, bytes] = {}

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
        missing = [c for c in coords if c not in self.pending]
        stored = dict(zip(missing, self.store.read_nodes(missing), strict=True))
        return [self.pending.get(c) or stored[c] for c in coords]


class _Prefetched:
    """Nodes read once for many proofs (a HashReader)."""

    def __init__(self, nodes: dict[Coord, bytes]):
        self.nodes = nodes

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
        return [self.nodes[c] for c in coords]


class Log:
    """A transparency log over a ``Store``: appends, reads, proofs and checkpoints."""

    def __init__(
        self,
        store: Store,
        log_key: Verifier,
        *,
        signer: Signer | None = None,
        sidecar: Path | None = None,
        clock: Callable[[], float] = _time.time,
        keys: KeyRing | None = None,
        key_dir: Path | None = None,
        admit: Admit | None = None,
        invocation_window: int = DEFAULT_INVOCATION_WINDOW,
    ):
        if signer is not None and signer.verifier != log_key:
            raise StorageError("the signer is not the log key")
        self.store = store
        self.log_key = log_key
        self.origin = log_key.name
        self.signer = signer
        self._keys = keys  # the ledger's KeyRing, when opened with its keys
        self._key_dir = key_dir  # where rotated keys appear (``keys`` reloads from it)
        self.admit = admit  # the operator's rules on top of the format's (ceilings, policy)
        # Appends are checked in complete mode (FORMAT.md §8): the log is the whole log,
        # so an access names the policy in force, is fresh and carries a new nonce, with
        # or without ``admit`` (which says the same in the operator's words first).
        self.invocation_window = invocation_window
        self.counters: dict[str, int] = {}  # appends, decisions, invalid invocations, ...
        self.checkpoint_error: str | None = None  # why the last publication failed, if it did
        self.damaged: str | None = None  # why a proof or leaf did not verify, if one did not
        self._roots: dict[int, bytes] = {}  # tree sizes whose stored root a checkpoint proved
        self._sidecar_written = float("-inf")  # when the writer last wrote the sidecar
        self._appended = False  # whether this Log wrote a leaf (close then publishes)
        self._counters_lock = threading.Lock()
        self.sidecar = sidecar
        self.clock = clock
        self._cache = RecordCache()  # parsed credential records, shared by every view
        self._caught_up = False  # the chain state has applied every leaf (once per process)
        self._access_indexed = False  # every access has its access_refs row (once per process)
        self._access_from = 0  # below it, every access has its row (this process's resume point)
        self._state_lock = threading.RLock()  # the writer holds it across a commit
        self._checkpoint_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()
        self._finished = False  # close() has run
        self._check_open()

    @property
    def has_keys(self) -> bool:
        """Whether this log was opened with its keys (it can sign), without reading state."""
        return self._keys is not None

    @property
    def keys(self) -> KeyRing | None:
        """The keys this process signs with, checked against the log as it is now."""
        return self.keys_for(self.state()) if self._keys is not None else None

    def keys_for(self, state: ChainView) -> KeyRing | None:
        """The keys to sign with against ``state``: operator and decision keys active in it.

        ``lineage key rotate`` (in this process or another) retires a key in the log and
        moves the new key file into place; the next use here notices the retirement and
        reloads the key directory, so no process goes on signing with a retired key. The
        writer passes its own state (``decide``), which spares a second read of the log.
        """
        ring = self._keys
        if ring is None or self._key_dir is None or _usable(state, ring):
            return ring
        try:
            fresh = KeyRing.load(self._key_dir)
        except LineageError:
            return ring
        if fresh.log.verifier != ring.log.verifier:
            return ring  # never another log's keys
        if _usable(state, fresh):
            self._keys = fresh
            logger.info("reloaded the operator and decision keys from %s", self._key_dir)
        return self._keys

    # -- opening ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        for key, expected in (("origin", self.origin), ("log_key", self.log_key.vkey)):
            stored = self.store.get_meta(key)
            if stored is not None and stored != expected:
                raise StorageError(f"this ledger's {key} is {stored!r}, not {expected!r}")
        latest = self.store.latest_checkpoint()
        if latest is not None:
            check_published(self.store, self.log_key, latest[1], "the latest stored checkpoint")
        if self.sidecar is not None and self.sidecar.exists():
            check_published(self.store, self.log_key, self.sidecar.read_bytes(), f"{self.sidecar}")
        # A ledger that has published checkpoints but has no sidecar may be an older copy
        # put back (a restore onto a new host): the database alone cannot tell how far the
        # log had grown. It can be read, but it neither appends nor publishes until a
        # checkpoint from outside it is trusted (``trust``).
        self.untrusted = (
            latest is not None and self.sidecar is not None and not self.sidecar.exists()
        )

    def refuse_untrusted(self) -> None:
        """Raise ``RollbackError`` if this ledger must not append (see ``trust``)."""
        if self.untrusted:
            raise RollbackError(
                f"{self.sidecar} is missing, but this ledger has published checkpoints: "
                "it may be an older copy put back, and appending would fork the log. Give "
                "the latest checkpoint the log published (from a monitor, an auditor or a "
                "mirror): `lineage log trust FILE` or `lineage serve --trust-checkpoint FILE`"
            )

    def trust(self, note: bytes) -> int:
        """Take ``note``, a checkpoint this log published, as the latest: refuse the
        database if it is behind it or disagrees with it, then write it (or the stored
        latest, if newer) as the sidecar and record the restore. Returns its size."""
        check_published(self.store, self.log_key, note, "the trusted checkpoint")
        cp = open_checkpoint(note, self.log_key, self.origin).checkpoint
        size = cp.size
        latest = self.store.latest_checkpoint()
        newest = latest[1] if latest is not None and latest[0] > size else note
        if latest is None or latest[0] < size:  # the database holds what the sidecar names
            self.store.add_checkpoint(size, cp.root_hash, note, int(self.clock()))
        if self.sidecar is not None:
            write_atomic(self.sidecar, newest)
        self.store.meta_once(f"trusted_checkpoint:{int(self.clock())}:{size}", str(size))
        logger.warning("trusted a checkpoint of size %d from outside the database", size)
        self.untrusted = False
        return size

    # -- reads -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.store.size()

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self.size if size is None else size, self.store)

    def leaf(self, index: int) -> Leaf:
        return self._leaf(self._stored(index))

    def _stored(self, index: int) -> StoredLeaf:
        try:
            stored = self.store.leaf(index)
        except NotFound:
            size = self.size
            if 0 <= index < size:  # a hole below the size: the file lost a leaf
                raise self._damage(f"the leaf at index {index} is missing (size {size})") from None
            raise
        if type(stored.entry) is not bytes or type(stored.time) is not int:
            raise self._damage(f"the leaf at index {index} is stored with the wrong types")
        return stored

    def _leaf(self, stored: StoredLeaf) -> Leaf:
        if type(stored.entry) is not bytes or type(stored.time) is not int:
            raise self._damage(f"the leaf at index {stored.index} is stored with the wrong types")
        try:
            return Leaf(parse_entry(stored.entry), stored.time)
        except FormatError as exc:
            raise self._damage(f"the entry at index {stored.index} is corrupt: {exc}") from None

    def leaves(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, Leaf]]:
        end = self.size if end is None else end
        expected = start
        for stored in self.store.leaves(start, end):
            if stored.index != expected:
                raise self._damage(f"the leaf at index {expected} is missing")
            yield stored.index, self._leaf(stored)
            expected += 1
        if expected < end:
            raise self._damage(f"the leaf at index {expected} is missing")

    def _damage(self, reason: str) -> Damaged:
        """Record that the file disagrees with what the log signed; the error to raise.

        The alarm: an error in the log, ``proof_failures`` in the metrics, and ``/healthz``
        answering ``damaged`` with the reason (``lineage verify --db`` says the rest).
        """
        self.note_damage(reason)
        err = Damaged(f"the ledger is damaged: {reason}")
        err.noted = True  # the service's error handler need not raise the alarm again
        return err

    def note_damage(self, reason: str) -> None:
        """Raise the alarm: the ledger is damaged (``/healthz``, metric, log)."""
        reason = reason.removeprefix("the ledger is damaged: ")
        self.damaged = reason
        self.count("proof_failures")
        logger.error("the ledger is damaged: %s", reason)

    def _opened(self, note: bytes) -> Any:
        try:
            return checkpoint_of(note, self.log_key)
        except (FormatError, SignatureError) as exc:
            raise self._damage(f"a stored checkpoint does not verify: {exc}") from None

    def _covering(self, size: int) -> tuple[bytes, Any]:
        """The latest signed checkpoint (note, body), published first if it does not cover
        ``size`` leaves and this log can sign; ``NotFound`` if none covers them."""
        note = self.latest_checkpoint()
        cp = self._opened(note) if note is not None else None
        if (cp is None or cp.size < size) and self.signer is not None and not self.untrusted:
            note = self.checkpoint()
            cp = self._opened(note)
        if note is None or cp is None or cp.size < size:
            raise NotFound(f"no signed checkpoint covers {size} leaves yet")
        return note, cp

    def trusted_root(self, size: int) -> bytes:
        """The root of the first ``size`` leaves as stored, proved consistent with the
        latest signed checkpoint (``Damaged`` if it is not). Every proof served is checked
        against such a root: the server never hands out a proof that fails."""
        root = self._roots.get(size)
        if root is not None:
            return root
        _, cp = self._covering(size)
        root = tree_root(size, self.store)
        try:
            if size == cp.size:
                if root != cp.root_hash:
                    raise ProofError("the roots differ")
            else:
                proof = consistency_proof(size, cp.size, self.store)
                verify_consistency(size, cp.size, root, cp.root_hash, proof)
        except ProofError as exc:
            raise self._damage(
                f"the stored tree of size {size} disagrees with the checkpoint of size "
                f"{cp.size}: {exc}"
            ) from None
        if len(self._roots) >= 256:
            self._roots.clear()
        self._roots[size] = root  # stored nodes never change: a proved root stays proved
        return root

    def receipt(self, index: int, note: bytes | None = None, leaf: Leaf | None = None) -> Receipt:
        """The receipt of the leaf at ``index`` (FORMAT.md §9.4): ``note`` (by default the
        latest checkpoint) and the leaf's inclusion proof against it, verified before it is
        returned."""
        cp = self._opened(note) if note is not None else None
        if cp is None or cp.size <= index:
            note, cp = self._covering(index + 1)
        leaf = leaf if leaf is not None else self.leaf(index)
        proof = inclusion_proof(index, cp.size, self.store)
        try:
            verify_inclusion(index, cp.size, leaf.hash, proof, cp.root_hash)
        except ProofError as exc:
            raise self._damage(
                f"entry {leaf.entry.id} is at index {index}, but its inclusion proof does not "
                f"verify against the checkpoint of size {cp.size}: {exc}"
            ) from None
        return Receipt(note.decode(), index, leaf, tuple(proof))

    def _receipted(self, appended: Appended) -> Appended:
        """``appended`` with its receipt, verified, when this log signs checkpoints.

        The writer builds the receipts of a group commit (one read of the nodes they
        need); each caller verifies its own here, in its thread, before answering.
        """
        if self.signer is None:
            return appended
        r = appended.receipt
        if r is None:
            return dataclasses.replace(appended, receipt=self.receipt(appended.index))
        cp = self._opened(r.checkpoint.encode())
        try:
            verify_inclusion(r.index, cp.size, r.leaf.hash, r.inclusion, cp.root_hash)
        except ProofError as exc:
            raise self._damage(
                f"entry {appended.id} is at index {r.index}, but its inclusion proof does not "
                f"verify against the checkpoint of size {cp.size}: {exc}"
            ) from None
        return appended

    def _build_receipts(
        self, done: list[tuple[Future, Appended]], note: bytes
    ) -> list[tuple[Future, Appended]]:
        """The unverified receipts of a committed batch, all proofs from one node read.

        If they cannot be built, the appends are still acknowledged; each caller then
        builds its own (``receipt``), which says what is damaged."""
        written = [r for _, r in done if not r.existing]
        try:
            size = self._opened(note).size
            coords = sorted({c for r in written for c in inclusion_proof_coords(r.index, size)})
            reader = _Prefetched(dict(zip(coords, self.store.read_nodes(coords), strict=True)))
            text = note.decode()
            out = []
            for future, r in done:
                if not r.existing and r.entry is not None and r.time is not None:
                    proof = tuple(inclusion_proof(r.index, size, reader))
                    r = dataclasses.replace(
                        r, receipt=Receipt(text, r.index, Leaf(r.entry, r.time), proof)
                    )
                out.append((future, r))
            return out
        except (LineageError, KeyError) as exc:
            logger.error("receipts not built for a committed batch: %s", exc)
            return done

    def find(self, entry_id: str) -> int:
        index = self.store.find(entry_id)
        if index is None:
            raise NotFound(f"no entry {entry_id}")
        return index

    def _check_size(self, tree_size: int) -> None:
        if not 0 < tree_size <= self.size:
            raise NotFound(f"tree size {tree_size} is not between 1 and {self.size}")

    def inclusion_proof(
        self, index: int, tree_size: int, leaf_hash: bytes | None = None
    ) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree of ``tree_size``, checked against a
        signed checkpoint before it is returned (``leaf_hash``: the caller's, if it has it)."""
        self._check_size(tree_size)
        if not 0 <= index < tree_size:
            raise NotFound(f"leaf index {index} is not below tree size {tree_size}")
        root = self.trusted_root(tree_size)
        proof = inclusion_proof(index, tree_size, self.store)
        if leaf_hash is None:
            leaf_hash = _stored_leaf_hash(self._stored(index))
        try:
            verify_inclusion(index, tree_size, leaf_hash, proof, root)
        except ProofError as exc:
            raise self._damage(
                f"the inclusion proof of index {index} in {tree_size} does not verify: {exc}"
            ) from None
        return proof

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The proof that the tree of ``second`` extends that of ``first``, checked against
        a signed checkpoint before it is returned."""
        self._check_size(second)
        if not 0 < first <= second:
            raise NotFound(f"first size {first} is not between 1 and {second}")
        root = self.trusted_root(second)
        proof = consistency_proof(first, second, self.store)
        try:
            verify_consistency(first, second, tree_root(first, self.store), root, proof)
        except ProofError as exc:
            raise self._damage(
                f"the consistency proof from {first} to {second} does not verify: {exc}"
            ) from None
        return proof

    # -- appends ---------------------------------------------------------------------------

    def append(self, entry: Entry | bytes, timeout: float | None = 30.0) -> Appended:
        """Append ``entry`` durably; returns its id and index (the original one if present)."""
        if isinstance(entry, bytes | bytearray):
            entry = parse_entry(bytes(entry))
        if entry.body.log != self.origin:
            raise RejectedEntry(
                f"entry is for log {entry.body.log!r}, not {self.origin!r}", "origin", "log"
            )
        existing = self._find(entry)
        if existing is not None:
            return self._receipted(Appended(entry.id, existing, existing=True))
        future: Future[Appended] = Future()
        self._submit(entry, future, self.presign(entry))
        return self._receipted(_outcome(future, timeout))

    def _find(self, entry: Entry) -> int | None:
        """Where ``entry`` already is, if it is: idempotency that trusts no index alone
        (``find_confirmed``), since a repeated grant would reset its budget."""
        body, kind = entry.body, entry.kind
        credential = getattr(body, "credential", None) if kind == "revocation" else None
        holder = body.holder.kid if kind == "revocation" and body.holder else None
        kid = body.key.kid if kind == "key" else None
        access = body.access if kind == "result" else None
        try:
            return self.store.find_confirmed(
                entry.id, kind, credential=credential, holder=holder, kid=kid, access=access
            )
        except Damaged as exc:
            self.note_damage(str(exc))
            exc.noted = True
            raise

    def presign(self, entry: Entry) -> frozenset[tuple[str, str]]:
        """Check ``entry``'s signatures in the caller's thread, against the keys the
        committed state knows by their kids: the (entry id, kid) pairs that verify.

        The writer then checks only what depends on the state at the entry's index (is
        the key active, in the right role, ...); a signature by a key the state does not
        know yet is checked by the writer itself. A kid is its key's hash, so a pair
        stays true whatever the state.
        """
        state = self.state()
        out: set[tuple[str, str]] = set()
        body = entry.body
        for sig in entry.sigs:
            key = None
            rec = state.key(sig.kid)
            if rec is not None:
                key = rec.key
            elif getattr(body, "holder", None) is not None and body.holder.kid == sig.kid:
                key = body.holder  # a holder revoking its own key
            else:
                held = state.credentials_where(holder=sig.kid, limit=1)
                key = held[0].holder if held else None
            if key is not None and entry.signed_by(key):
                out.add((entry.id, sig.kid))
        if isinstance(body, Access):
            rec = state.credential(body.invocation.credential)
            if rec is not None:
                try:
                    body.invocation.verify(rec.holder)
                    out.add((entry.id, "inv:" + rec.holder.kid))
                except SignatureError:
                    pass  # the writer refuses it, naming the check
        return frozenset(out)

    def _submit(
        self, work: Entry | Builder, future: Future, pre: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        """Queue work for the writer; refused at once if the log is closed or untrusted."""
        self.refuse_untrusted()
        with self._writer_lock:
            if self._closed.is_set():
                raise StorageError("the log is closed")
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="lineage-writer", daemon=True
                )
                self._writer.start()
            self._queue.put((work, future, pre))

    def append_many(
        self, entries: Sequence[Entry], timeout: float | None = 300.0, receipts: bool = True
    ) -> list[Appended | Exception]:
        """Queue many appends at once (they share transactions); results in order.

        Each result is the ``Appended`` (with its receipt unless ``receipts`` is false: a
        bulk load) or the exception that entry raised.
        """
        futures: list[Future | Appended | Exception] = []
        pres = [self.presign(entry) for entry in entries]  # first, so the batches stay whole
        for entry, pre in zip(entries, pres, strict=True):
            if entry.body.log != self.origin:
                futures.append(RejectedEntry(f"entry is for log {entry.body.log!r}", "origin"))
                continue
            future: Future[Appended] = Future()
            self._submit(entry, future, pre)
            futures.append(future)
        out: list[Appended | Exception] = []
        for f in futures:
            if isinstance(f, Future):
                try:
                    done = _outcome(f, timeout)
                    out.append(self._receipted(done) if receipts else done)
                except Exception as exc:  # this entry's own refusal, or Busy
                    out.append(exc)
            else:
                out.append(f)
        return out

    def build_many(
        self, builders: Sequence[Builder], timeout: float | None = 60.0
    ) -> list[Appended | Exception]:
        """Queue many builders at once, so that they share transactions (one group commit
        for a batch, not one each); results in order: the ``Appended``, with its receipt,
        or the exception that builder raised (nothing appended for it)."""
        self.state()
        futures: list[Future[Appended]] = []
        for builder in builders:
            future: Future[Appended] = Future()
            self._submit(builder, future)
            futures.append(future)
        out: list[Appended | Exception] = []
        for f in futures:
            try:
                out.append(self._receipted(_outcome(f, timeout)))
            except Exception as exc:  # this builder's own refusal, or Busy
                out.append(exc)
        return out

    def build(self, builder: Builder, timeout: float | None = 30.0) -> Appended:
        """Run ``builder`` in the writer, on the current state, and append what it returns.

        Exceptions from the builder (a refused invocation, say) reach the caller and
        nothing is appended.
        """
        self.state()  # a ledger from before the state tables catches up in bounded steps first
        future: Future[Appended] = Future()
        self._submit(builder, future)
        return self._receipted(_outcome(future, timeout))

    def append_as(
        self, role: str, body: Mapping[str, Any], timeout: float | None = 30.0
    ) -> Appended:
        """Sign ``body`` with this process's ``role`` key (``operator`` or ``decision``) in
        the writer, against the state at the entry's own index, and append it.

        Signed there, an entry is never made with a key that a rotation (in this process
        or another) retired between signing and appending.
        """
        if role not in ("operator", "decision") or self._keys is None:
            raise StorageError(f"this log cannot sign as {role}")

        def build(state: ChainView, index: int, time: int) -> Built:
            key = getattr(self.keys_for(state), role)
            entry = sign_entry(body, [key])
            return Built(entry, frozenset({(entry.id, key.kid)}))

        return self.build(build, timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            # Work whose caller gave up waiting is dropped here, before it is written;
            # from here on a caller waits for the outcome (see ``_outcome``).
            batch = [item for item in batch if item[1].set_running_or_notify_cancel()]
            if batch:
                self._commit(batch)

    def index_refs(self) -> None:
        """Bring the query index up to the log (a ledger from before it existed), and
        give every access it indexed before migration 10 its decision and resource."""
        state = self.state()
        if self.store.refs_size() < state.size:
            with self._state_lock, self.store.transaction():
                self._backfill_refs(self.store.state(self._cache))
        if not self._access_indexed:
            self._backfill_access_refs()

    def _backfill_refs(self, state: ChainView) -> None:
        """Index leaves appended before the refs table existed (inside the write lock),
        their accesses' ``access_refs`` rows with them, as an append writes them."""
        have, size = self.store.refs_size(), state.size
        if have < size:
            self.store.add_refs([ref_of(state, i, leaf) for i, leaf in self.leaves(have, size)])

    def _backfill_access_refs(self, batches: int | None = None) -> bool:
        """Write the ``access_refs`` row of every access ``refs`` indexed before that table
        existed (a ledger from before migration 10); True once none is missing.

        ``ACCESS_CATCH_UP`` rows a transaction, each under the write lock for that
        transaction only (appends go on in between), each reading what is missing afresh:
        any number of threads or processes may do it at once, or stop half-way, and every
        row is written once. ``batches``: at most that many transactions now (the
        checkpoint thread does one a tick, so ``lineage serve`` indexes an upgraded ledger
        in the background); a query does all that is left. The last transaction records
        that none is missing (``ACCESS_REFS_DONE``), so later opens only read that key.
        The rows come from the stored leaves alone (``_access_ref``); no state is replayed.
        """
        if self._access_indexed:
            return True
        if self.store.get_meta(ACCESS_REFS_DONE) is not None:
            self._access_indexed = True
            return True
        done = 0
        while batches is None or done < batches:
            with self._state_lock, self.store.transaction():
                if self.store.get_meta(ACCESS_REFS_DONE) is not None:
                    break  # another thread or process finished it
                missing = self.store.access_refs_missing(self._access_from, ACCESS_CATCH_UP)
                self.store.add_access_refs([self._access_ref(i) for i in missing])
                if len(missing) < ACCESS_CATCH_UP:
                    self.store.set_meta(ACCESS_REFS_DONE, str(self.store.refs_size()))
                    break
            self._access_from = max(self._access_from, missing[-1] + 1)
            done += 1
        else:
            return False
        self._access_indexed = True
        return True

    def _access_ref(self, index: int) -> Ref:
        """The access row of the stored leaf at ``index``, read with ``json.loads`` alone:
        the leaf was checked when it was appended, and its resource is canonical text
        (``access_of`` reads the same two fields through the full parse; the audit
        compares the two). No decision if it is not an access, which ``refs`` said it
        was: nothing is written, and the audit says why."""
        stored = self._stored(index)
        obj = json.loads(stored.entry)
        decision = resource = None
        if isinstance(obj, dict) and obj.get("kind") == "access":
            decision = obj.get("decision")
            resource = obj.get("invocation", {}).get("request", {}).get("resource")
        return Ref(index, "access", stored.time, decision=decision, resource=resource)

    def state(self) -> SQLiteState:
        """The chain state as committed (ledger/state.py): loads nothing, reads on demand.

        A ledger written before the state was kept in the database replays its leaves
        into it once, on first use, in transactions of ``CATCH_UP`` leaves.
        """
        if not self._caught_up:
            view = self.store.state(self._cache)
            self._caught_up = view.size == self.store.size()  # a read: no write lock
        if not self._caught_up:
            with self._state_lock:
                while not self._caught_up:
                    with self.store.transaction():
                        view = self.store.state(self._cache)
                        done = self._replay_tail(view, CATCH_UP)
                    view.committed()
                    self._caught_up = done  # only once its transaction has committed
        return self.store.state(self._cache)

    def _replay_tail(self, view: SQLiteState, limit: int | None = None) -> bool:
        """Inside a write transaction: apply up to ``limit`` leaves the state has not
        (none, unless the ledger predates it). True when the state is up to date."""
        have, size = view.size, self.store.size()
        if have > size:
            raise StorageError(f"the chain state has {have} leaves but the log {size}")
        end = size if limit is None else min(size, have + limit)
        rules = Rules(self.log_key)
        for index, leaf in self.leaves(have, end):
            try:
                view.apply(rules.check(view, index, leaf))
            except ChainError as exc:
                raise StorageError(f"the stored log does not replay: {exc}") from None
        return end == size

    def _commit(self, batch: list[tuple[Entry | Builder, Future, frozenset]]) -> None:
        with self._state_lock:
            try:
                with self.store.transaction():
                    view = self.store.state(self._cache)
                    done, note = self._commit_locked(view, batch)
            except BaseException as exc:  # nothing was written; the futures must never hang
                if isinstance(exc, Damaged):
                    self.note_damage(str(exc))
                    exc.noted = True
                err = exc if isinstance(exc, StorageError) else StorageError(f"append: {exc}")
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(err)
                return
            view.committed()
        if note is not None:  # the batch's checkpoint, in each of its appends' receipt
            self._write_sidecar(note, every=SIDECAR_EVERY)
            done = self._build_receipts(done, note)
        written = sum(1 for _, r in done if not r.existing)
        self._appended = self._appended or written > 0
        self.count("appends", written)
        for future, result in done:  # acknowledged only once durable
            future.set_result(result)

    def _write_sidecar(self, note: bytes, every: float = 0.0) -> None:
        """Write ``note`` to the sidecar (if it is newer), unless the last write was less
        than ``every`` seconds ago (the checkpoint thread, or ``close``, writes it then).

        The receipt is durable in the database whatever the sidecar says; the sidecar is
        the copy outside the file that an older database put back is checked against,
        and two fsyncs for every group commit would cost more than it protects. A
        failure leaves the entries acknowledged: it is counted, shown in ``/healthz``,
        retried.
        """
        if self.sidecar is None:
            return
        now = _time.monotonic()
        if every and now - self._sidecar_written < every:
            return
        try:
            write_sidecar(self.sidecar, note)
            self._sidecar_written = now
        except OSError as exc:
            self.count("checkpoint_failures")
            self.checkpoint_error = f"sidecar not written: {exc}"
            logger.warning("the sidecar %s was not written (retrying): %s", self.sidecar, exc)

    def _commit_locked(
        self, view: SQLiteState, batch: list[tuple[Entry | Builder, Future, frozenset]]
    ) -> tuple[list[tuple[Future, Appended]], bytes | None]:
        """Inside the write transaction: check, sequence and write one batch, and sign
        its checkpoint (one signature per group commit); returns the results and it."""
        size = self.store.size()
        if view.size != size:  # only after an upgrade, if ``state()`` was not asked first
            self._replay_tail(view)
        self._backfill_refs(view)
        last_time = view.time
        rules = Rules(
            self.log_key,
            set().union(*(pre for _, _, pre in batch)),
            complete=True,
            invocation_window=self.invocation_window,
        )
        overlay = _Overlay(self.store)
        rows: list[StoredLeaf] = []
        refs: list[Ref] = []
        nodes: list[tuple[Coord, bytes]] = []
        done: list[tuple[Future, Appended]] = []
        seen: dict[str, int] = {}
        for work, future, _ in batch:
            now = max(int(self.clock()), last_time)
            if isinstance(work, Entry):
                entry = work
            else:
                try:
                    built = work(view, size, now)
                except LineageError as exc:
                    future.set_exception(exc)
                    continue
                if isinstance(built, Built):
                    entry = built.entry
                    rules.verified |= built.verified
                else:
                    entry = built
            index = seen.get(entry.id)
            if index is None:
                index = self._find(entry)
            if index is not None:
                done.append((future, Appended(entry.id, index, existing=True)))
                continue
            try:
                leaf = Leaf.build(entry, now)
                if self.admit is not None:
                    self.admit(entry, view, size, now)
                effects = rules.check(view, size, leaf)
            except ChainError as exc:
                future.set_exception(RejectedEntry(str(exc), exc.check or "chain", exc.field))
                continue
            except FormatError as exc:
                future.set_exception(RejectedEntry(str(exc), "format"))
                continue
            except RejectedEntry as exc:
                future.set_exception(exc)
                continue
            view.apply(effects)  # a refused entry never gets here: it changed nothing
            new = nodes_completed_by_append(size, leaf.hash, overlay)
            overlay.pending.update(new)
            nodes.extend(new)
            rows.append(StoredLeaf(size, entry.id, entry.kind, leaf.time, entry.raw))
            refs.append(ref_of(view, size, leaf))
            seen[entry.id] = size
            done.append((future, Appended(entry.id, size, entry=entry, time=leaf.time)))
            last_time = leaf.time
            size += 1
        note = None
        if rows:
            self.store.append(rows, nodes)  # durable when the transaction commits
            self.store.add_refs(refs)
            if self.signer is not None:  # the receipts' checkpoint, committed with them
                note = publish_locked(self.store, self.signer, overlay, size, int(self.clock()))
        return done, note

    def count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self.counters[name] = self.counters.get(name, 0) + n

    # -- checkpoints -----------------------------------------------------------------------

    def latest_checkpoint(self) -> bytes | None:
        latest = self.store.latest_checkpoint()
        return latest[1] if latest else None

    def checkpoint(self) -> bytes:
        """Sign and publish a checkpoint of the current size (or return the latest if current)."""
        if self.signer is None:
            raise StorageError("this log was opened without its signing key")
        self.refuse_untrusted()
        with self._checkpoint_lock:
            return publish(self.store, self.signer, self.sidecar, int(self.clock()))

    def start_checkpointing(self, interval: float = 1.0) -> None:
        """Publish a checkpoint every ``interval`` seconds when there are new leaves.

        On a ledger from before migration 10 it also back-fills ``access_refs``, a batch a
        tick (``_backfill_access_refs``). Whatever a publication raises, the thread logs
        it, counts it
        (``checkpoint_failures``, ``checkpoint_error``: what ``/healthz`` shows) and
        tries again, waiting twice as long each time up to 30 s; it never dies.
        """

        def tick() -> None:
            wait = interval
            while not self._closed.wait(wait):
                try:
                    more = not self._backfill_access_refs(batches=1)  # an upgraded ledger's
                    latest = self.store.latest_checkpoint()
                    if latest is None or latest[0] < self.store.size():
                        self.checkpoint()
                    elif self.sidecar is not None:  # the latest group commit's, if newer
                        write_sidecar(self.sidecar, latest[1])
                except Exception as exc:  # any failure (a full disk, ...): say so, try again
                    self.count("checkpoint_failures")
                    self.checkpoint_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("checkpoint not published (retrying): %s", exc)
                    wait = min(max(wait, interval) * 2, 30.0)
                else:
                    self.checkpoint_error = None
                    wait = min(interval, 0.05) if more else interval  # back-fill: soon again

        self._ticker = threading.Thread(target=tick, name="lineage-checkpoints", daemon=True)
        self._ticker.start()

    @property
    def checkpointing(self) -> bool:
        """Is the checkpoint thread running?"""
        return self._ticker is not None and self._ticker.is_alive()

    def close(self) -> None:
        """Finish what is queued, stop the writer and ticker, publish a final checkpoint
        (when this log signs and appended something), release the database. Closing
        twice does nothing the second time."""
        with self._writer_lock:
            if self._finished:
                return
            self._finished = True
            self._closed.set()  # from here on _submit refuses; nothing more is queued
            if self._writer is not None:
                self._queue.put(None)
                self._writer.join()
                self._writer = None
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.signer is not None and self._appended:  # its last appends are covered too
            try:
                self.checkpoint()  # and the sidecar, if the writer's last one is older
            except Exception as exc:  # a full disk too: closing goes on, and says so
                logger.warning("no final checkpoint published: %s", exc)
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def _usable(state: ChainView, ring: KeyRing) -> bool:
    """Both of ``ring``'s entry keys are active, in their role, for the next entry.

    Before the genesis is replayed no key is active; the ring is taken as it is.
    """
    if state.size == 0:
        return True
    for role in ("operator", "decision"):
        rec = state.key(getattr(ring, role).kid)
        if rec is None or role not in rec.roles or not rec.active(state.size):
            return False
    return True


def _outcome(future: Future, timeout: float | None) -> Appended:
    """The append's result: never "failed" for an entry that is, or will be, in the log.

    If the writer has not taken the work up within ``timeout``, it is withdrawn (the
    writer skips cancelled work) and ``Busy`` says nothing was written. If the writer
    has taken it up, its outcome is decided within one transaction: wait for it.
    """
    try:
        return future.result(timeout)
    except FutureTimeout:
        if future.cancel():
            raise Busy(
                f"the ledger did not take the entry up within {timeout} s; nothing was written"
            ) from None
        return future.result()


def _stored_leaf_hash(stored: StoredLeaf) -> bytes:
    """The leaf hash of a stored leaf, from its bytes as stored (``Leaf.raw``, unparsed)."""
    raw = b'{"entry":' + stored.entry + b',"time":' + str(stored.time).encode() + b"}"
    return leaf_hash(raw)
