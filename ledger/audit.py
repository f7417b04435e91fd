"""``lineage verify --db``: a full audit of a ledger file, trusting nothing in it but the key.

0. SQLite's own integrity check (pages, and every index against its table). If it
   fails, the leaves are read once more without the entry-id index, so that a
   duplicate entry the corrupt index let in is named as such (``duplicate``).
1. Leaves: indexes contiguous from 0; every entry parses strictly (FORMAT.md),
   its stored id is SHA-256 of its bytes and its stored kind is its kind.
2. Tree: every complete-subtree hash is recomputed from the leaves, level by
   level, and compared with the stored node; no node is missing or extra.
3. Checkpoints: every stored checkpoint (and the sidecar copy of the last one
   published) verifies under the log key and matches the recomputed root at
   its size; so all of them are consistent with each other and with the data.
4. Replay: the whole log through ``lineage.verifier.chain.Replay`` in complete mode
   (FORMAT.md §8): every signature by a key entitled to make it, every key change by
   an operator, every chain, attenuation step, revocation, budget and decision; no
   entry twice; each access naming the policy version in force, its invocation's
   ``iat`` within ``invocation_window`` of the leaf's time and its nonce new; and the
   query index (``refs``, and ``access_refs`` for accesses: decision and resource) says
   of each leaf what the leaf itself says. An access may lack its ``access_refs`` row
   only while a ledger from before that table has yet to back-fill it (no
   ``access_refs_indexed`` in meta); a row that is there must be right.
5. State: the chain state tables the ledger decides from (ledger/state.py) hold
   exactly what the replay gives at the size they record (the whole log, unless a
   ledger from before them has yet to replay into them): keys, credentials and
   their counters, revocations, nonces, the uses kept for each rate window, and
   which accesses have a result.

The file is opened read-only and never written: no schema, no chmod, no WAL
checkpoint. On read-only media (a directory that cannot be written, or has no write
bit even for root) SQLite cannot create the ``-wal`` and ``-shm`` files a WAL
database is read through; the file is then opened ``immutable`` if its ``-wal`` is
absent or holds no frame (the database file is then the whole ledger), and through
the ``-wal`` and ``-shm`` copied with it if both are there. A file that cannot be
opened so raises ``CannotOpen``, which says nothing about its content.

The first fault found raises ``AuditFailure`` naming what broke; its message is
escaped (``printable``), as it may quote what the file holds. On large
logs the parsing, hashing and Ed25519 verification run in a process pool (all
cores); the replay itself is sequential, with each chunk's signatures checked
in the pool while the chunk before it is replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lineage.verifier.chain import DEFAULT_INVOCATION_WINDOW, Replay
from lineage.verifier.checkpoint import open_checkpoint
from lineage.verifier.entry import Entry, Leaf, parse_checked_entry, parse_entry
from lineage.verifier.errors import ChainError, FormatError, SignatureError, printable
from lineage.verifier.keys import PublicKey
from lineage.verifier.kinds import Access, Delegation, Genesis, Grant, KeyChange
from lineage.verifier.merkle import leaf_hash, node_hash, tree_root
from lineage.verifier.note import Verifier, parse_vkey

from .errors import LedgerError
from .ledger import sidecar_path
from .refs import Ref, ref_of
from .store import ACCESS_REFS_DONE

__all__ = ["AuditFailure", "AuditReport", "CannotOpen", "audit", "first_repeat"]

PARALLEL_FROM = 4096  # leaves; below this a process pool costs more than it saves
CHECKPOINT_CHUNK = 2048  # stored checkpoints opened per job
CHUNK = 2048

Progress = Callable[[str, int, int], None]


class AuditFailure(LedgerError):
    """The ledger failed its audit; ``what`` names the check, ``index`` the leaf if any."""

    def __init__(self, what: str, message: str, index: int | None = None):
        super().__init__(printable(f"{what}: {message}"))
        self.what = what
        self.index = index


class CannotOpen(LedgerError):
    """The file could not be opened read-only: nothing was checked, and nothing is known
    about its content (this is not an audit failure)."""


@dataclass(frozen=True)
class AuditReport:
    size: int
    root: bytes
    checkpoints: int
    credentials: int
    accesses: int


# What opening the file can say about its bytes; anything else (cannot open, permission,
# I/O error, busy) says only that it could not be read.
CONTENT_FAULTS = ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_FORMAT")
WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def _side(db: Path, suffix: str) -> Path:
    return db.with_name(db.name + suffix)


def _writable(directory: Path) -> bool:
    """Can files be created in ``directory``? Not on a read-only mount, nor (taken as
    read-only media, even by root, whom permissions do not stop) without write bits."""
    try:
        return os.access(directory, os.W_OK) and bool(directory.stat().st_mode & 0o222)
    except OSError:
        return False


def _wal_has_frames(wal: Path) -> bool:
    """Might ``wal`` hold a commit the database file lacks? Its 32-byte header carries a
    salt that every frame of the current log repeats (bytes 8-16 of the frame's 24-byte
    header); after a checkpoint resets the log, frames left from before have an older
    salt and SQLite reads none of them. An unreadable file might hold frames."""
    try:
        with wal.open("rb") as f:
            head, frame = f.read(32), f.read(24)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if len(head) < 32 or len(frame) < 24 or head[:4] not in WAL_MAGIC:
        return False
    return frame[8:16] == head[16:24]


def _connect(db: Path) -> sqlite3.Connection:
    """A read-only connection to ``db``, the file opened: see the module's docstring."""
    if not db.exists():
        raise AuditFailure("database", f"{db} does not exist")
    wal, shm = _side(db, "-wal"), _side(db, "-shm")
    uri = f"file:{quote(str(db.absolute()))}?mode=ro"
    if not _writable(db.parent) and not (wal.exists() and shm.exists()):
        if _wal_has_frames(wal):
            raise CannotOpen(
                f"cannot open {db} read-only: {wal.name} may hold commits not yet in the "
                f"database file, and SQLite reads them only through a {shm.name}, which "
                f"it cannot create in {db.parent} (read-only); audit a copy on writable "
                f"storage, or one made with {shm.name} or after a checkpoint"
            )
        uri += "&immutable=1"  # nothing can change the file: no locks, no -shm needed
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file
    except UnicodeDecodeError as exc:  # SQLite quoted bytes of a corrupt schema in its message
        if conn is not None:
            conn.close()
        raise AuditFailure("database", f"{db}: the schema is corrupt ({exc.reason})") from None
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if (exc.sqlite_errorname or "").startswith(CONTENT_FAULTS):
            raise AuditFailure("database", f"{db}: {exc}") from None  # not a database
        if db.is_dir():
            why = "it is a directory"
        elif not os.access(db, os.R_OK):
            why = "permission denied"
        else:
            why = f"{exc} (SQLite cannot create or read {wal.name} and {shm.name} beside it)"
        raise CannotOpen(f"cannot open {db} read-only: {why}") from None
    return conn


# -- pass 1 (parallel): parse, hash, introduce keys -----------------------------------------


def _introduced(entry: Entry) -> list[PublicKey]:
    body = entry.body
    if isinstance(body, Genesis):
        return [k.key for k in body.keys]
    if isinstance(body, KeyChange | Grant | Delegation):
        return [body.key if isinstance(body, KeyChange) else body.holder]
    return []


def _scan(rows: Sequence[tuple[int, str, str, int, bytes]]) -> tuple[list[bytes], dict, list]:
    """Parse a chunk of leaves: their leaf hashes, the keys they introduce, faults."""
    hashes, keys, faults = [], {}, []
    for index, entry_id, kind, time, raw in rows:
        if not isinstance(raw, bytes):  # a byte changed the column's storage class
            faults.append((index, f"index {index}: the stored entry is {type(raw).__name__}"))
            hashes.append(leaf_hash(str(raw).encode()))
            continue
        try:
            entry = parse_entry(raw)
            leaf = Leaf.build(entry, time)
        except FormatError as exc:
            faults.append((index, f"index {index}: entry does not parse: {exc}"))
            hashes.append(leaf_hash(raw))
            continue
        if entry.id != entry_id:
            faults.append(
                (
                    index,
                    f"index {index}: stored id {entry_id[:16]} is not the entry's {entry.id[:16]}",
                )
            )
        elif entry.kind != kind:  # unsigned bookkeeping, checked against the entry itself
            faults.append((index, f"index {index}: stored kind {kind!r} is not {entry.kind!r}"))
        hashes.append(leaf.hash)
        for key in _introduced(entry):
            keys[key.kid] = key.raw
    return hashes, keys, faults


# -- pass 2 (parallel): verify signatures against the known keys ----------------------------


def _open_notes(args: tuple[str, Sequence[tuple[Any, Any, bytes]]]) -> list[tuple]:
    """Open each stored checkpoint note under the log key: (size, root, the checkpoint's
    body, or why it does not verify), in order."""
    vkey, rows = args
    key = parse_vkey(vkey)
    out = []
    for size, root, note in rows:
        try:
            out.append((size, root, open_checkpoint(note, key, key.name).checkpoint))
        except (FormatError, SignatureError) as exc:
            out.append((size, root, str(exc)))
    return out


def _verify(args: tuple[Sequence[tuple[int, int, bytes]], dict[str, bytes]]) -> set:
    rows, keys = args
    ok = set()
    for _index, _time, raw in rows:
        entry = parse_checked_entry(raw)  # pass 1 parsed these bytes strictly
        for sig in entry.sigs:
            key = keys.get(sig.kid)
            if key is not None and entry.signed_by(PublicKey(key)):
                ok.add((entry.id, sig.kid))
        if isinstance(entry.body, Access):
            inv = entry.body.invocation
            key = keys.get(inv.sig.kid)
            if key is not None:
                try:
                    inv.verify(PublicKey(key))
                    ok.add((entry.id, "inv:" + inv.sig.kid))
                except SignatureError:
                    pass
    return ok


def _chunks(conn: sqlite3.Connection, size: int, columns: str) -> Iterable[list[tuple]]:
    for start in range(0, size, CHUNK):
        yield conn.execute(
            f"SELECT {columns} FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, start + CHUNK),
        ).fetchall()


class _Levels:
    """The recomputed tree, level by level, as a HashReader."""

    def __init__(self, leaves: list[bytes]):
        self.levels = [leaves]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    def read_nodes(self, coords):
        return [self.levels[level][idx] for level, idx in coords]


def audit(
    db: str | Path,
    log_key: Verifier,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    invocation_window: int = DEFAULT_INVOCATION_WINDOW,
) -> AuditReport:
    """Audit the ledger file ``db`` against the trusted ``log_key``.

    ``invocation_window`` is the ledger's setting of that name: how far (seconds) an
    invocation's ``iat`` may be from the time its access was logged.
    """
    db = Path(db)
    tick = progress or (lambda stage, done, total: None)
    conn = _connect(db)
    # The sidecar is written after the database commits its checkpoint, so read it before
    # the snapshot: then it never covers more than the snapshot holds.
    side = sidecar_path(db)
    try:
        sidecar = side.read_bytes() if side.exists() else None
    except OSError as exc:
        conn.close()
        raise CannotOpen(f"cannot read {side}: {exc.strerror}") from None
    try:
        # One read transaction for the whole audit: a ledger being written to is audited
        # as one consistent snapshot (WAL readers never block, nor are blocked by, writers).
        conn.execute("BEGIN")
        return _audit(conn, db, log_key, tick, workers, invocation_window, sidecar)
    except sqlite3.DatabaseError as exc:
        raise AuditFailure("database", f"{db}: {exc}") from None
    finally:
        conn.close()


def _audit(
    conn,
    db: Path,
    log_key: Verifier,
    tick: Progress,
    workers: int | None,
    window: int,
    sidecar: bytes | None,
) -> AuditReport:
    # SQLite's own check first: a corrupt index would let queries skip rows and lookups
    # (the writer's "is this entry already in the log?") miss them.
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
    if problems != ["ok"]:
        checked = f"SQLite's integrity check: {'; '.join(problems)}"
        repeat = None
        with contextlib.suppress(sqlite3.DatabaseError):  # the table may be corrupt too
            repeat = first_repeat(conn)
        if repeat is not None:
            earlier, later, entry_id = repeat
            raise AuditFailure(
                "duplicate",
                f"index {later} repeats the entry at index {earlier} ({entry_id[:16]}): an "
                f"entry appears once (the leaves read without the entry-id index; {checked})",
                later,
            )
        raise AuditFailure("database", checked)
    size = conn.execute(
        "SELECT COUNT(*), IFNULL(MAX(idx) + 1, 0) FROM leaves NOT INDEXED"
    ).fetchone()
    if size[0] != size[1]:
        raise AuditFailure(
            "leaves", f"{size[0]} leaves but indexes run to {size[1] - 1}: a leaf is missing"
        )
    size = size[0]
    for key, expected in (("origin", log_key.name), ("log_key", log_key.vkey)):
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] != expected:
            raise AuditFailure(
                "meta", f"the ledger records {key} {row and row[0]!r}, not the trusted {expected!r}"
            )
    if size == 0:
        raise AuditFailure("leaves", "the log is empty (no genesis entry)")
    parallel = size >= PARALLEL_FROM and (workers or os.cpu_count() or 1) > 1
    pool = ProcessPoolExecutor(workers or os.cpu_count()) if parallel else None
    try:
        # 1. leaves
        hashes: list[bytes] = []
        keys: dict[str, bytes] = {log_key_kid(log_key): log_key.public_key}
        chunks = _chunks(conn, size, "idx, entry_id, kind, time, entry")
        results = pool.map(_scan, chunks) if pool else map(_scan, chunks)
        for h, k, faults in results:
            if faults:
                index, message = faults[0]
                raise AuditFailure("entry", message, index)
            hashes.extend(h)
            keys.update(k)
            tick("leaves", len(hashes), size)
        # 2. tree
        tree = _Levels(hashes)
        for level, expected in enumerate(tree.levels):
            stored = conn.execute(
                "SELECT idx, hash FROM nodes WHERE level = ? ORDER BY idx", (level,)
            ).fetchall()
            if len(stored) != len(expected):
                raise AuditFailure(
                    "tree",
                    f"level {level} has {len(stored)} stored nodes, expected {len(expected)}",
                )
            for position, ((idx, digest), want) in enumerate(zip(stored, expected, strict=True)):
                if idx != position:
                    raise AuditFailure(
                        "tree",
                        f"level {level} has no node {position} (found node {idx} in its place)",
                    )
                if digest != want:
                    raise AuditFailure(
                        "tree",
                        f"stored node ({level}, {idx}) is {digest.hex()}, recomputed {want.hex()}",
                        idx if level == 0 else None,
                    )
            tick("tree", level + 1, len(tree.levels))
        extra = conn.execute(
            "SELECT COUNT(*) FROM nodes WHERE level >= ?", (len(tree.levels),)
        ).fetchone()[0]
        if extra:
            raise AuditFailure("tree", f"{extra} stored nodes above the top of the tree")
        # 3. checkpoints: every group commit signs one, so there may be as many as
        # leaves; their signatures are checked in the pool, a chunk at a time, ahead
        count = 0
        rows = conn.execute("SELECT size, root, note FROM checkpoints ORDER BY size")
        chunks = iter(lambda: rows.fetchmany(CHECKPOINT_CHUNK), [])
        opened = _ahead(pool, _open_notes, ((log_key.vkey, chunk) for chunk in chunks))
        stored = ((s, r, o, f"checkpoint of size {s}") for chunk in opened for s, r, o in chunk)
        if sidecar is not None:
            side = _open_notes((log_key.vkey, [(None, None, sidecar)]))
            stored = itertools.chain(
                stored, [(None, None, side[0][2], f"sidecar {sidecar_path(db).name}")]
            )
        held: dict[int, bytes] = {}  # the stored checkpoints' sizes and roots
        for stored_size, stored_root, cp, what in stored:
            if isinstance(cp, str):
                raise AuditFailure("checkpoint", f"{what} does not verify: {cp}")
            if stored_size is None and cp.size <= size and held.get(cp.size) != cp.root_hash:
                # publication stores a checkpoint before it writes the sidecar
                raise AuditFailure(
                    "checkpoint",
                    f"{what} names a checkpoint of size {cp.size} the database does not "
                    "hold: a checkpoint row was deleted",
                )
            if stored_size is not None:
                held[stored_size] = stored_root
            if stored_size is not None and (cp.size != stored_size or cp.root_hash != stored_root):
                raise AuditFailure("checkpoint", f"{what}: stored size/root differ from its note")
            if cp.size > size:
                raise AuditFailure(
                    "checkpoint",
                    f"{what} covers {cp.size} leaves; the database "
                    f"holds {size}: it was rolled back",
                )
            root = tree_root(cp.size, tree)
            if cp.root_hash != root:
                raise AuditFailure(
                    "checkpoint",
                    f"{what} has root {cp.root_hash.hex()}, the leaves give {root.hex()}",
                )
            count += 1
        # 4. replay, with each chunk's signatures checked in parallel ahead of it
        replay = Replay(log_key, complete=True, invocation_window=window, keep_entries=False)
        jobs = ((rows, keys) for rows in _chunks(conn, size, "idx, time, entry"))
        done, policy_at = 0, None
        # The chain state is compared with the replay at the size it records: the whole
        # log, unless a ledger from before the state tables has not yet replayed into them.
        state_size = _state_size(conn)
        access_refs = _access_refs(conn)
        if state_size is not None and state_size > size:
            raise AuditFailure("state", f"the chain state has {state_size} leaves, the log {size}")
        if state_size == 0:
            check_state(conn, replay, None)
        for ok, rows in zip(
            _ahead(pool, _verify, jobs), _chunks(conn, size, "idx, time, entry"), strict=True
        ):
            replay.verified.clear()  # pairs are per entry: keep only this chunk's
            replay.verified.update(ok)
            stored = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT idx, kind, time, principal, holder, task, credential FROM refs "
                    "WHERE idx >= ? AND idx < ?",
                    (rows[0][0], rows[-1][0] + 1),
                )
            }
            access_stored = (
                {
                    r[0]: r[1:]
                    for r in conn.execute(
                        "SELECT idx, decision, resource FROM access_refs "
                        "WHERE idx >= ? AND idx < ?",
                        (rows[0][0], rows[-1][0] + 1),
                    )
                }
                if access_refs is not None
                else {}
            )
            for index, time, raw in rows:
                leaf = Leaf(parse_checked_entry(raw), time)  # pass 1 parsed it strictly
                try:
                    replay.apply(index, leaf)
                except ChainError as exc:
                    raise AuditFailure("replay", f"index {index}: {exc}", index) from None
                if leaf.entry.kind == "policy":
                    policy_at = index
                if index + 1 == state_size:
                    check_state(conn, replay, policy_at)
                ref = ref_of(replay, index, leaf)
                want = (ref.kind, ref.time, ref.principal, ref.holder, ref.task, ref.credential)
                if stored.get(index) != want:  # the query index must say what the leaf says
                    raise AuditFailure(
                        "index",
                        f"index {index}: the refs row is "
                        f"{stored.get(index)}, the leaf gives {want}",
                        index,
                    )
                if access_refs is not None:
                    _check_access_ref(index, ref, access_stored.get(index), access_refs)
            done += len(rows)
            tick("replay", done, size)
        # A refs row beyond the last leaf would refuse every later append at its index
        # (the writer writes refs with their leaf), a denial of service no leaf shows.
        stray = conn.execute("SELECT MIN(idx) FROM refs WHERE idx >= ?", (size,)).fetchone()[0]
        if stray is not None:
            raise AuditFailure(
                "index", f"the refs table has a row at index {stray}, beyond the last leaf"
            )
        if access_refs is not None:
            stray = conn.execute(
                "SELECT MIN(idx) FROM access_refs WHERE idx >= ?", (size,)
            ).fetchone()[0]
            if stray is not None:
                raise AuditFailure(
                    "index",
                    f"the access_refs table has a row at index {stray}, beyond the last leaf",
                )
        return AuditReport(
            size, tree_root(size, tree), count, len(replay.credentials), replay.access_count
        )
    finally:
        if pool is not None:
            pool.shutdown()


def first_repeat(conn: sqlite3.Connection) -> tuple[int, int, str] | None:
    """The first leaf whose entry an earlier leaf holds: (earlier, later, id), or None.

    Read from the leaves table itself (``NOT INDEXED``: in index order, never through
    the entry-id index, which may be what let the repeat in), keeping one 64-bit hash
    per leaf; each match is confirmed from the entries' bytes (their SHA-256), not the
    stored ids. The replay refuses a repeated entry of any kind too (``duplicate``);
    this names one when the index is corrupt and the audit stops before the replay.
    """
    seen: set[int] = set()
    rows = conn.execute("SELECT idx, entry_id FROM leaves NOT INDEXED ORDER BY idx")
    for later, entry_id in rows:
        key = hash(entry_id)
        if key not in seen:
            seen.add(key)
            continue
        same = [
            idx
            for idx, raw in conn.execute(
                "SELECT idx, entry FROM leaves NOT INDEXED WHERE entry_id = ? AND idx <= ? "
                "ORDER BY idx",
                (entry_id, later),
            )
            if isinstance(raw, bytes) and hashlib.sha256(raw).hexdigest() == entry_id
        ]
        if len(same) > 1 and same[-1] == later:
            return same[0], later, entry_id
    return None


def _ahead(pool, fn, jobs: Iterable, depth: int = 4) -> Iterator:
    """``map(fn, jobs)`` in order, with up to ``depth`` jobs running ahead in ``pool``
    (all of them would hold the whole log in memory at once)."""
    if pool is None:
        yield from map(fn, jobs)
        return
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _state_size(conn: sqlite3.Connection) -> int | None:
    """The size the chain state has applied; None for a ledger from before the tables."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "chain_state" not in tables:
        return None
    row = conn.execute("SELECT size FROM chain_state").fetchone()
    if row is None:
        raise AuditFailure("state", "the chain_state table is empty")
    if type(row[0]) is not int or row[0] < 0:
        raise AuditFailure("state", f"the chain_state size is {row[0]!r}, not a leaf count")
    return row[0]


def _access_refs(conn: sqlite3.Connection) -> bool | None:
    """Whether every access must have its ``access_refs`` row (the back-fill of a ledger
    from before the table is done); None for a ledger from before the table."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "access_refs" not in tables:
        return None
    done = conn.execute("SELECT 1 FROM meta WHERE key = ?", (ACCESS_REFS_DONE,)).fetchone()
    return done is not None


def _check_access_ref(index: int, ref: Ref, stored: tuple | None, complete: bool) -> None:
    """The ``access_refs`` row of the leaf at ``index`` says what the leaf says: an access's
    decision and resource; no row for any other kind."""
    want = (ref.decision, ref.resource) if ref.decision is not None else None
    if stored == want or (stored is None and not complete):
        return
    if want is None:
        why = f"a {ref.kind} leaf has the access_refs row {stored}"
    elif stored is None:
        why = "the access has no access_refs row (its back-fill was recorded as done)"
    else:
        why = f"the access_refs row is {stored}, the leaf gives {want}"
    raise AuditFailure("index", f"index {index}: {why}", index)


def _roles(text: object) -> object:
    """A chain_keys row's roles as the replay holds them; what is not a JSON list of names
    is kept as it is, so the comparison names the row instead of raising."""
    try:
        roles = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text
    return tuple(roles) if isinstance(roles, list) else text


def check_state(conn: sqlite3.Connection, replay: Replay, policy_at: int | None) -> None:
    """The ledger's chain state tables (ledger/state.py) hold exactly what ``replay`` gives
    at the size they record: a counter edited in the file (a use forgotten, a revocation
    dropped) would change what the ledger allows next, so it fails like a bad leaf."""
    head = conn.execute("SELECT size, time, policy_version, policy_idx FROM chain_state")
    want = (replay.size, replay.time, replay.policy_version, policy_at)
    _same("chain_state", head.fetchall(), [want])
    keys = conn.execute("SELECT kid, key, roles, principal, added, retired FROM chain_keys")
    _same(
        "chain_keys",
        [(k, bytes(raw), _roles(roles), p, a, r) for k, raw, roles, p, a, r in keys],
        [
            (kid, k.key.raw, k.roles, k.principal, k.added, k.retired)
            for kid, k in replay.keys.items()
        ],
    )
    _same(
        "credentials",
        conn.execute(
            "SELECT id, idx, parent, principal, holder, rate_window, children, uses, revoked "
            "FROM credentials"
        ),
        [
            (
                cid,
                rec.index,
                rec.parent.id if rec.parent else None,
                rec.principal,
                rec.holder.kid,
                rec.credential.limits.rate.window if rec.credential.limits.rate else None,
                replay.children(cid),
                replay.use_count(cid),
                replay.revoked_at(cid),
            )
            for cid, rec in replay.credentials.items()
        ],
    )
    _same(
        "revoked_holders",
        conn.execute("SELECT kid, idx FROM revoked_holders"),
        list(replay.revoked_holders.items()),
    )
    _same(
        "nonces",
        conn.execute("SELECT credential, nonce, allowed FROM nonces"),
        [(c, n, int((c, n) in replay.nonces)) for c, n in replay.invocations],
    )
    recent = []
    for cid, times in replay.use_times.items():
        rate = replay.credentials[cid].credential.limits.rate
        if rate is None or not times:
            continue
        # kept: the uses inside the latest one's window, and the last use before it
        boundary = times[-1] - rate.window
        seqs = list(enumerate(times, start=1))
        before = [(seq, t) for seq, t in seqs if t <= boundary]
        recent += [(cid, t, seq) for seq, t in seqs if t > boundary]
        if before:
            recent.append((cid, before[-1][1], before[-1][0]))
    _same("recent_uses", conn.execute("SELECT credential, time, seq FROM recent_uses"), recent)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # a ledger of schema 4, never opened by a Lineage that knows results, holds none
    stored = conn.execute("SELECT access, idx FROM results") if "results" in tables else []
    _same("results", stored, list(replay.results.items()))


def _same(table: str, stored: Iterable[tuple], replayed: list[tuple]) -> None:
    got, want = Counter(map(tuple, stored)), Counter(replayed)
    if got != want:
        extra = next(iter(got - want), None)
        missing = next(iter(want - got), None)
        raise AuditFailure(
            "state",
            f"the {table} table disagrees with the replay: it holds {extra} "
            f"where the log gives {missing}",
        )


def log_key_kid(log_key: Verifier) -> str:
    return PublicKey(log_key.public_key).kid
