"""Storage: the log's leaves, tree nodes and checkpoints, behind a small interface.

``Store`` is what the log needs from a database; ``SQLiteStore`` is the
default (one file, WAL). The proof code never sees SQL: it asks for node
hashes through ``read_nodes`` (``lineage.verifier.merkle.HashReader``).

Append-only is enforced by the database itself: triggers abort any UPDATE or
DELETE on leaves, nodes, checkpoints and meta, and any leaf inserted out of
index order. Schema changes are numbered migrations recorded in
``PRAGMA user_version``.

The database holds every entry body, including those the API shows only to
some callers, so it is owner-only (0600), and so are its ``-wal``, ``-shm``
and ``-journal`` files: the store creates the database file 0600 whatever the
umask (SQLite gives the files beside it the database file's own mode), and on
every open tightens any of these files that group or others may read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lineage.verifier.merkle import Coord

from .errors import Damaged, NotFound, StorageError
from .refs import Ref
from .state import MIGRATION as STATE_MIGRATION
from .state import RESULTS_MIGRATION, RecordCache, SQLiteState

__all__ = [
    "ACCESS_REFS_DONE",
    "FILE_MODE",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "Store",
    "StoredLeaf",
    "db_files",
]

logger = logging.getLogger("lineage")

FILE_MODE = 0o600  # the database and every file SQLite keeps beside it
SIDE_FILES = ("-wal", "-shm", "-journal")


def db_files(path: Path) -> list[Path]:
    """The database file and the files SQLite keeps beside it (which may not exist)."""
    return [path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILES)]


def _create_owner_only(path: Path) -> None:
    """Create an empty database file 0600, whatever the umask (an empty file is a new
    SQLite database); SQLite then creates its -wal, -shm and -journal files with the
    database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return  # another process created it first; tightened below like any existing file
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _tighten(path: Path) -> None:
    """Take every permission for group and others off the database and its side files."""
    for file in db_files(path):
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except OSError:
            continue  # absent (the usual case for -journal, and for -wal once closed)
        if mode & 0o077:
            try:
                os.chmod(file, mode & 0o700)
            except OSError as exc:
                msg = "%s (mode %o) is readable by others and cannot be made owner-only: %s"
                logger.warning(msg, file, mode, exc.strerror)


@dataclass(frozen=True)
class StoredLeaf:
    index: int
    entry_id: str
    kind: str
    time: int
    entry: bytes  # the entry's canonical bytes


class Store(Protocol):
    """What the log asks of a database. Leaves are written only through ``append``; the
    chain state (``state``) only through its ``apply``, in the same transaction.

    Nothing above this interface assumes SQLite: a PostgreSQL store implements these,
    and a ``ChainView`` with ``apply``/``committed`` over its own tables.
    """

    def size(self) -> int: ...
    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]: ...
    def leaf(self, index: int) -> StoredLeaf: ...
    def leaves(self, start: int, end: int) -> Iterator[StoredLeaf]: ...
    def find(self, entry_id: str) -> int | None: ...
    def find_confirmed(
        self,
        entry_id: str,
        kind: str | None = None,
        *,
        credential: str | None = None,
        holder: str | None = None,
        kid: str | None = None,
        access: str | None = None,
    ) -> int | None: ...
    def append(
        self, leaves: Sequence[StoredLeaf], nodes: Sequence[tuple[Coord, bytes]]
    ) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def add_refs(self, refs: Sequence[Ref]) -> None: ...
    def add_access_refs(self, refs: Sequence[Ref]) -> None: ...
    def access_refs_missing(self, start: int, limit: int) -> list[int]: ...
    def refs_size(self) -> int: ...
    def find_refs(self, start: int, end: int, limit: int, **match: object) -> list[int]: ...
    def add_checkpoint(self, size: int, root: bytes, note: bytes, created: int) -> None: ...
    def latest_checkpoint(self) -> tuple[int, bytes] | None: ...
    def checkpoints(self) -> Iterator[tuple[int, bytes, bytes]]: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def meta_once(self, key: str, value: str) -> str: ...
    def remember_jti(self, jti: str, expires: int, now: int) -> bool: ...
    def in_transaction(self) -> bool: ...
    def state(self, cache: RecordCache) -> SQLiteState: ...
    def snapshot(self) -> AbstractContextManager[None]: ...
    def anchor_indexes(self, size: int) -> list[int]: ...
    def ref_indexes(self, size: int, kind: str, **about: object) -> list[int]: ...


def _append_only(table: str, key: str, *, again: bool = False) -> str:
    """Refuse UPDATE, DELETE, and an INSERT that would replace a row (``INSERT OR
    REPLACE`` deletes the old row without firing DELETE triggers). ``again``: written
    so that running it a second time changes nothing (``IF NOT EXISTS``)."""
    match = " AND ".join(f"{c} = NEW.{c}" for c in key.split(","))
    create = "CREATE TRIGGER IF NOT EXISTS" if again else "CREATE TRIGGER"
    return f"""
    {create} {table}_no_update BEFORE UPDATE ON {table}
        BEGIN SELECT RAISE(ABORT, 'lineage: {table} is append-only'); END;
    {create} {table}_no_delete BEFORE DELETE ON {table}
        BEGIN SELECT RAISE(ABORT, 'lineage: {table} is append-only'); END;
    {create} {table}_no_replace BEFORE INSERT ON {table}
        WHEN EXISTS (SELECT 1 FROM {table} WHERE {match})
        BEGIN SELECT RAISE(ABORT, 'lineage: {table} is append-only'); END;
    """


# The meta key saying every access leaf indexed in ``refs`` has its ``access_refs`` row
# (migration 10). Set by the migration itself when ``refs`` is empty then (every refs row
# written since has come with its access row), else by ``Log.index_refs`` once it has
# back-filled the accesses indexed before the table existed.
ACCESS_REFS_DONE = "access_refs_indexed"


MIGRATIONS: list[str] = [
    # 1: the log
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE leaves (
        idx      INTEGER PRIMARY KEY,
        entry_id TEXT    NOT NULL UNIQUE,
        kind     TEXT    NOT NULL,
        time     INTEGER NOT NULL,
        entry    BLOB    NOT NULL
    );
    CREATE TABLE nodes (
        level INTEGER NOT NULL,
        idx   INTEGER NOT NULL,
        hash  BLOB    NOT NULL CHECK (length(hash) = 32),
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        size    INTEGER PRIMARY KEY,
        root    BLOB    NOT NULL CHECK (length(root) = 32),
        note    BLOB    NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TRIGGER leaves_contiguous BEFORE INSERT ON leaves
        WHEN NEW.idx IS NOT (SELECT IFNULL(MAX(idx) + 1, 0) FROM leaves)
        BEGIN SELECT RAISE(ABORT, 'lineage: leaves are appended in index order'); END;
    """
    + _append_only("meta", "key")
    + _append_only("leaves", "idx")
    + """
    CREATE TRIGGER leaves_no_replace_id BEFORE INSERT ON leaves
        WHEN EXISTS (SELECT 1 FROM leaves WHERE entry_id = NEW.entry_id)
        BEGIN SELECT RAISE(ABORT, 'lineage: leaves is append-only'); END;
    """
    + _append_only("nodes", "level,idx")
    + _append_only("checkpoints", "size"),
    # 2: the service's own state, outside the log: API tokens (stored hashed) and the
    #    DPoP proof replay cache, shared by every process serving the ledger
    """
    CREATE TABLE api_tokens (
        id      TEXT PRIMARY KEY,
        name    TEXT NOT NULL,
        role    TEXT NOT NULL CHECK (role IN ('operator', 'auditor', 'enforcement')),
        hash    BLOB NOT NULL CHECK (length(hash) = 32),
        created INTEGER NOT NULL,
        revoked INTEGER
    );
    CREATE TABLE dpop_jti (jti TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX dpop_jti_expires ON dpop_jti (expires);
    """,
    # 3: what each leaf is about, for queries (ledger/refs.py); filled in with each append
    """
    CREATE TABLE refs (
        idx        INTEGER PRIMARY KEY,
        kind       TEXT    NOT NULL,
        time       INTEGER NOT NULL,
        principal  TEXT,
        holder     TEXT,
        task       TEXT,
        credential TEXT
    );
    CREATE INDEX refs_principal ON refs (principal, idx);
    CREATE INDEX refs_holder ON refs (holder, idx);
    CREATE INDEX refs_task ON refs (task, idx);
    CREATE INDEX refs_credential ON refs (credential, idx);
    CREATE INDEX refs_kind ON refs (kind, idx);
    CREATE INDEX refs_time ON refs (time, idx);
    """
    + _append_only("refs", "idx"),
    # 4: the chain state the format's rules read, written with each leaf (ledger/state.py)
    STATE_MIGRATION,
    # 5: which access entries have a result entry (ledger/state.py)
    RESULTS_MIGRATION,
    # 6: enrolment invitations (ledger/invites.py), stored hashed; outside the log
    """
    CREATE TABLE IF NOT EXISTS invites (
        id        TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        roles     TEXT NOT NULL,
        hash      BLOB NOT NULL CHECK (length(hash) = 32),
        created   INTEGER NOT NULL,
        expires   INTEGER NOT NULL,
        used      INTEGER,
        kid       TEXT
    );
    """,
    # 7: OAuth authorisation (ledger/authz.py): registered clients, pending consents, codes
    """
    CREATE TABLE IF NOT EXISTS oauth_clients (
        id       TEXT PRIMARY KEY,
        metadata TEXT NOT NULL,
        created  INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS oauth_pending (
        id      TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        csrf    BLOB NOT NULL CHECK (length(csrf) = 32),
        expires INTEGER NOT NULL,
        done    INTEGER
    );
    CREATE TABLE IF NOT EXISTS oauth_codes (
        hash      BLOB PRIMARY KEY CHECK (length(hash) = 32),
        grant_id  TEXT NOT NULL,
        client_id TEXT NOT NULL,
        redirect  TEXT NOT NULL,
        challenge TEXT NOT NULL,
        holder    TEXT NOT NULL,
        expires   INTEGER NOT NULL,
        used      INTEGER
    );
    """,
    # 8: step-up approvals waiting for a person (ledger/approvals.py); outside the log
    """
    CREATE TABLE IF NOT EXISTS approvals (
        id          TEXT PRIMARY KEY,
        digest      TEXT NOT NULL UNIQUE,
        credential  TEXT NOT NULL,
        principal   TEXT NOT NULL,
        rule        TEXT NOT NULL,
        request     TEXT NOT NULL,
        csrf        BLOB NOT NULL CHECK (length(csrf) = 32),
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        status      TEXT NOT NULL DEFAULT 'pending',
        answer      TEXT,
        answered    INTEGER
    );
    CREATE INDEX IF NOT EXISTS approvals_credential ON approvals (credential, status);
    """,
    # 9: the holder seed of a client that cannot sign (ledger/authz.py, CONSENT.md §6),
    # sealed under a key derived from a secret the database never holds: the consent's
    # CSRF token while the person decides ("pending:" + its id), then the code ("code:" +
    # its hash); deleted once opened. A table, not columns: a migration may run twice
    """
    CREATE TABLE IF NOT EXISTS oauth_seals (
        ref     TEXT PRIMARY KEY,
        sealed  BLOB NOT NULL,
        expires INTEGER NOT NULL
    );
    """,
    # 10: an access leaf's decision and resource, for queries (ledger/refs.py): written
    # with the leaf and its refs row. A table of its own, not columns of refs: refs rows
    # are append-only (no UPDATE), so the rows of a ledger from before this migration can
    # only be added, not filled in (``Log.index_refs`` back-fills them, a bounded
    # transaction at a time). ``resource`` is NULL for a request that names only a
    # location. Idempotent, like 6 to 9: a process that read a stale version may run it
    # again.
    """
    CREATE TABLE IF NOT EXISTS access_refs (
        idx      INTEGER PRIMARY KEY,
        decision TEXT    NOT NULL CHECK (decision IN ('allow', 'deny')),
        resource TEXT
    );
    CREATE INDEX IF NOT EXISTS access_refs_decision ON access_refs (decision, idx);
    CREATE INDEX IF NOT EXISTS access_refs_resource ON access_refs (resource, idx);
    """
    + _append_only("access_refs", "idx", again=True)
    + f"""
    INSERT INTO meta (key, value) SELECT '{ACCESS_REFS_DONE}', '0'
        WHERE NOT EXISTS (SELECT 1 FROM refs)
        AND NOT EXISTS (SELECT 1 FROM meta WHERE key = '{ACCESS_REFS_DONE}');
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
MAX_IDLE = 8  # idle connections a store keeps for the next use; more are closed


class SQLiteStore:
    """The default store: a SQLite file in WAL mode, each append one durable transaction."""

    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise StorageError(f"no ledger at {self.path} (run `lineage init`)")
            _create_owner_only(self.path)
        _tighten(self.path)
        self._local = threading.local()  # .tx: the connection of this thread's transaction
        self._write_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []  # every open connection
        self._pool: list[sqlite3.Connection] = []  # the idle ones
        self._conns_lock = threading.Lock()
        self._idle = threading.Condition()
        self._active = 0
        self._closed = False
        self._migrate()

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # an acknowledged append survives power loss
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from None
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection the next statement uses when no other is busy (a peek into the
        pool, for migrations and tests); inside a transaction, that transaction's."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx
        with self._conns_lock:
            if not self._pool:
                self._pool.append(self._open_pooled())
            return self._pool[-1]

    def _open_pooled(self) -> sqlite3.Connection:
        conn = self._connect()
        self._conns.append(conn)  # the caller holds _conns_lock
        return conn

    def _borrow(self) -> sqlite3.Connection:
        with self._conns_lock:
            if self._pool:
                return self._pool.pop()
            return self._open_pooled()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Return ``conn`` to the pool; past ``MAX_IDLE`` idle ones, close it instead.

        Connections belong to the store, not to threads: a server whose thread pool
        comes and goes keeps at most ``MAX_IDLE`` idle connections open, not one per
        thread it ever ran.
        """
        if conn.in_transaction:  # never hand on a transaction left open by a failure
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        with self._conns_lock:
            if not self._closed and len(self._pool) < MAX_IDLE:
                self._pool.append(conn)
                return
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """A connection for one use (this thread's transaction's, if it is in one),
        counted so that ``close`` waits for it."""
        with self._idle:
            if self._closed:
                raise StorageError(f"{self.path} is closed")
            self._active += 1
        tx = getattr(self._local, "tx", None) or getattr(self._local, "snap", None)
        conn = tx if tx is not None else self._borrow()
        try:
            yield conn
        finally:
            if tx is None:
                self._give_back(conn)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, wait for work in flight, then close every connection
        (which checkpoints the WAL into the database file)."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout)
            with self._conns_lock:
                conns, self._conns, self._pool = self._conns, [], []
            for conn in conns:
                conn.close()

    def open_connections(self) -> int:
        """How many connections the store holds open (idle and in use)."""
        with self._conns_lock:
            return len(self._conns)

    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION``, safely against other processes.

        Each migration runs in one ``BEGIN IMMEDIATE`` transaction with the version bump.
        Several processes may open a fresh file at once: the version read before a
        migration can be stale, so a migration that fails is rolled back and the version
        read again; if another process applied it meanwhile, this one goes on.
        """
        conn = self.conn
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                with self._write_lock:
                    try:
                        conn.executescript(
                            f"BEGIN IMMEDIATE; {MIGRATIONS[version]}; "
                            f"PRAGMA user_version = {version + 1}; COMMIT;"
                        )
                    except sqlite3.Error:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        now = conn.execute("PRAGMA user_version").fetchone()[0]
                        if now <= version:
                            raise
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}; this Lineage knows "
                    f"{SCHEMA_VERSION}: upgrade Lineage"
                )
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # SQLite quotes a corrupt schema's bytes in its message, which may not be UTF-8
            raise StorageError(f"{self.path} is not a usable Lineage ledger: {exc}") from None

    # -- reads -----------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._using() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise StorageError(f"reading {self.path}: {exc}") from None

    def size(self) -> int:
        return self._query("SELECT IFNULL(MAX(idx) + 1, 0) FROM leaves")[0][0]

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
        """The stored hashes at ``coords`` (level, index), in order, in one query."""
        if not coords:
            return []
        found: dict[Coord, bytes] = {}
        for chunk in range(0, len(coords), 400):
            part = coords[chunk : chunk + 400]
            where = " OR ".join("(level = ? AND idx = ?)" for _ in part)
            params = [x for c in part for x in c]
            for level, idx, digest in self._query(
                f"SELECT level, idx, hash FROM nodes WHERE {where}", params
            ):
                found[(level, idx)] = digest
        try:
            return [found[c] for c in coords]
        except KeyError as exc:
            raise Damaged(f"tree node {exc.args[0]} is missing from {self.path}") from None

    def leaf(self, index: int) -> StoredLeaf:
        rows = self._query(
            "SELECT idx, entry_id, kind, time, entry FROM leaves WHERE idx = ?", (index,)
        )
        if not rows:
            raise NotFound(f"no leaf at index {index}")
        return StoredLeaf(*rows[0])

    def leaves(self, start: int, end: int) -> Iterator[StoredLeaf]:
        """Leaves with start <= index < end, in index order, streamed in pages."""
        while start < end:
            rows = self._query(
                "SELECT idx, entry_id, kind, time, entry FROM leaves "
                "WHERE idx >= ? AND idx < ? ORDER BY idx LIMIT 1000",
                (start, end),
            )
            if not rows:
                return
            for row in rows:
                yield StoredLeaf(*row)
            start = rows[-1][0] + 1

    def find(self, entry_id: str) -> int | None:
        rows = self._query("SELECT idx FROM leaves WHERE entry_id = ?", (entry_id,))
        return rows[0][0] if rows else None

    def find_confirmed(
        self,
        entry_id: str,
        kind: str | None = None,
        *,
        credential: str | None = None,
        holder: str | None = None,
        kid: str | None = None,
        access: str | None = None,
    ) -> int | None:
        """``find``, trusting no index alone: the index of the leaf holding the entry
        ``entry_id`` (of ``kind``, if given), or None.

        The entry-id index answers, and a leaf it names counts only if the leaf's bytes,
        read by its index (the table's own key), hash to ``entry_id``. A second b-tree
        answers too, for the kinds whose repeat would change what the ledger allows: a
        ``grant`` or ``delegation`` by the chain state's ``credentials`` key (its id);
        the ``genesis`` at index 0; a ``key`` entry among the entries that added or
        retired its key (``kid``) in ``chain_keys``; a ``revocation`` among the
        revocations of its target (``credential`` or ``holder`` kid) in ``refs``; a
        ``result`` by the chain state's ``results`` key (the ``access`` it answers). A
        ``policy`` needs none: a repeat does not follow the version in force, and the
        rules refuse it. Each is one indexed lookup, whatever the size of the log.
        An ``access`` has none: the ``nonces`` key refuses its invocation twice.

        Raises ``StorageError`` if the entry-id index names a leaf that is not this
        entry, or misses one the second answer finds: the file is corrupt, nothing should
        be appended to it, and ``lineage verify --db`` says where. The second answer may
        lag behind (a ledger whose chain state or refs are catching up): its silence
        alone is not a fault.
        """
        with self.snapshot():  # both answers from one committed state, or they race
            return self._find_confirmed(entry_id, kind, credential, holder, kid, access)

    def _find_confirmed(
        self,
        entry_id: str,
        kind: str | None,
        credential: str | None,
        holder: str | None,
        kid: str | None,
        access: str | None = None,
    ) -> int | None:
        found = self.find(entry_id)
        if found is not None and not self._holds(found, entry_id):
            raise Damaged(
                f"{self.path}: the entry-id index puts {entry_id[:16]} at index {found}, "
                "which holds another entry: the index is corrupt (run lineage verify --db)"
            )
        if kind in ("grant", "delegation"):
            sql, params = "SELECT idx FROM credentials WHERE id = ?", (entry_id,)
        elif kind == "revocation" and (credential or holder):
            column, value = ("credential", credential) if credential else ("holder", holder)
            sql = f"SELECT idx FROM refs WHERE kind = 'revocation' AND {column} = ?"
            params = (value,)
        elif kind == "key" and kid:
            sql = (
                "SELECT added FROM chain_keys WHERE kid = ? UNION "
                "SELECT retired FROM chain_keys WHERE kid = ? AND retired IS NOT NULL"
            )
            params = (kid, kid)
        elif kind == "result" and access:
            sql, params = "SELECT idx FROM results WHERE access = ?", (access,)
        elif kind == "genesis":
            sql, params = "SELECT 0", ()
        else:
            return found
        others = [i for (i,) in self._query(sql, params) if self._holds(i, entry_id)]
        if others and found not in others:
            raise Damaged(
                f"{self.path}: the entry-id index misses {entry_id[:16]}, which is at index "
                f"{others[0]}: the index is corrupt (run lineage verify --db)"
            )
        return found

    def _holds(self, index: int, entry_id: str) -> bool:
        """Does the leaf at ``index`` (read by the table's own key) hold ``entry_id``?"""
        rows = self._query("SELECT entry FROM leaves NOT INDEXED WHERE idx = ?", (index,))
        return bool(rows) and hashlib.sha256(rows[0][0]).hexdigest() == entry_id

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        rows = self._query("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else None

    def checkpoints(self) -> Iterator[tuple[int, bytes, bytes]]:
        yield from self._query("SELECT size, root, note FROM checkpoints ORDER BY size")

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # -- writes ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: the database's single writer lock).

        Reads inside it see the latest committed state, so a process that appends
        after reading within one transaction cannot race another process.
        """
        with self._write_lock, self._using() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"locking {self.path}: {exc}") from None
            self._local.tx = conn  # every statement of this thread joins the transaction
            try:
                yield
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):  # a full disk fails the COMMIT itself
                    raise StorageError(f"writing {self.path}: {exc}") from None
                raise
            finally:
                self._local.tx = None

    def in_transaction(self) -> bool:
        """Is this thread inside one of this store's write transactions?"""
        return getattr(self._local, "tx", None) is not None

    def _write_each(self, statements: Sequence[tuple[str, Sequence]]) -> None:
        """Run each statement once, in this thread's write transaction."""
        if not self.in_transaction():
            raise StorageError("the chain state is written only with its leaf")
        with self._using() as conn:
            try:
                for sql, params in statements:
                    conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StorageError(f"writing {self.path}: {exc}") from None

    def state(self, cache: RecordCache) -> SQLiteState:
        """The chain state (ledger/state.py): this thread's transaction's, or committed."""
        return SQLiteState(self, cache)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read of this thread inside sees one committed snapshot of the file.

        A WAL read transaction: writers go on, and none of their later commits is seen
        until it ends. Inside a write transaction, that transaction is the snapshot.
        """
        if self.in_transaction() or getattr(self._local, "snap", None) is not None:
            yield
            return
        with self._using() as conn:
            try:
                conn.execute("BEGIN DEFERRED")
                conn.execute("SELECT 1 FROM leaves LIMIT 1").fetchall()  # the snapshot starts
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"reading {self.path}: {exc}") from None
            self._local.snap = conn
            try:
                yield
            finally:
                self._local.snap = None
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    def _write(self, statements: Sequence[tuple[str, Sequence]]) -> None:
        """Run ``statements`` in the current transaction, or in one of their own."""
        if getattr(self._local, "tx", None) is None:
            with self.transaction():
                self._write(statements)
            return
        with self._using() as conn:
            try:
                for sql, params in statements:
                    if not params:
                        continue
                    if isinstance(params[0], tuple | list):
                        conn.executemany(sql, params)
                    else:
                        conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StorageError(f"writing {self.path}: {exc}") from None

    def append(self, leaves: Sequence[StoredLeaf], nodes: Sequence[tuple[Coord, bytes]]) -> None:
        self._write(
            [
                (
                    "INSERT INTO leaves (idx, entry_id, kind, time, entry) VALUES (?, ?, ?, ?, ?)",
                    [(x.index, x.entry_id, x.kind, x.time, x.entry) for x in leaves],
                ),
                (
                    "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
                    [(level, idx, digest) for (level, idx), digest in nodes],
                ),
            ]
        )

    def add_refs(self, refs: Sequence[Ref]) -> None:
        """Write each ref's ``refs`` row and, for an access, its ``access_refs`` row (in
        the caller's transaction: the leaf's). A row already there is refused, as any
        rewrite of an append-only table is."""
        self._write(
            [
                (
                    "INSERT INTO refs (idx, kind, time, principal, holder, task, credential) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.index, r.kind, r.time, r.principal, r.holder, r.task, r.credential)
                        for r in refs
                    ],
                ),
                (
                    "INSERT INTO access_refs (idx, decision, resource) VALUES (?, ?, ?)",
                    [(r.index, r.decision, r.resource) for r in refs if r.decision is not None],
                ),
            ]
        )

    def add_access_refs(self, refs: Sequence[Ref]) -> None:
        """Back-fill: write the ``access_refs`` row of each access among ``refs`` whose
        leaf has none yet (a row already there is kept, and audited like any other)."""
        self._write(
            [
                (
                    "INSERT INTO access_refs (idx, decision, resource) SELECT ?, ?, ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM access_refs WHERE idx = ?)",
                    [
                        (r.index, r.decision, r.resource, r.index)
                        for r in refs
                        if r.decision is not None
                    ],
                )
            ]
        )

    def access_refs_missing(self, start: int, limit: int) -> list[int]:
        """Up to ``limit`` indexes from ``start`` on, in order, of leaves ``refs`` says are
        accesses that have no ``access_refs`` row (a ledger from before migration 10)."""
        return [
            row[0]
            for row in self._query(
                "SELECT idx FROM refs INDEXED BY refs_kind WHERE kind = 'access' AND idx >= ? "
                "AND NOT EXISTS (SELECT 1 FROM access_refs a WHERE a.idx = refs.idx) "
                "ORDER BY idx LIMIT ?",
                (start, limit),
            )
        ]

    def refs_size(self) -> int:
        return self._query("SELECT IFNULL(MAX(idx) + 1, 0) FROM refs")[0][0]

    def find_refs(self, start: int, end: int, limit: int, **match: object) -> list[int]:
        """Indexes in [start, end) whose refs match: equality on principal, kind and
        credential; ``holders``, any of these kids; ``task`` (a "prefix/" also matches its
        sub-tasks); ``since``/``until`` on time; and on an access's ``access_refs`` row,
        equality on ``decision``, and ``resource`` (ending in "*", a prefix: the text
        before the "*", compared with ``substr``, so no other character is special).
        Given either of these, only accesses match."""
        where, params = [], []
        for column in ("principal", "kind", "credential"):
            if match.get(column) is not None:
                where.append(f"refs.{column} = ?")
                params.append(match[column])
        holders = match.get("holders")
        if holders:
            where.append(f"refs.holder IN ({', '.join('?' for _ in holders)})")
            params += list(holders)
        task = match.get("task")
        if isinstance(task, str):
            if task.endswith("/"):
                where.append("(refs.task = ? OR substr(refs.task, 1, ?) = ?)")
                params += [task[:-1], len(task), task]
            else:
                where.append("refs.task = ?")
                params.append(task)
        if match.get("since") is not None:
            where.append("refs.time >= ?")
            params.append(match["since"])
        if match.get("until") is not None:
            where.append("refs.time < ?")
            params.append(match["until"])
        decision, resource = match.get("decision"), match.get("resource")
        if decision is not None:
            where.append("a.decision = ?")
            params.append(decision)
        prefix = isinstance(resource, str) and resource.endswith("*")
        if isinstance(resource, str):
            if not prefix:
                where.append("a.resource = ?")
                params.append(resource)
            elif len(resource) > 1:
                where.append("substr(a.resource, 1, ?) = ?")
                params += [len(resource) - 1, resource[:-1]]
            else:  # "*" alone: any access that names a resource
                where.append("a.resource IS NOT NULL")
        # The most selective equality's (column, idx) index reads matches in index order;
        # left to itself, with no statistics, SQLite may walk a far larger one. A resource
        # prefix is not an equality: its index would read every match of the log in
        # resource order, to be sorted, whatever [start, end).
        given = {
            "credential": match.get("credential"),
            "resource": resource if not prefix else None,
            "principal": match.get("principal"),
            "holder": holders,
            "task": task if not str(task).endswith("/") else None,
            "decision": decision,
            "kind": match.get("kind"),
        }
        chosen = next((column for column, value in given.items() if value), None)
        if decision is None and resource is None:
            table = f"refs INDEXED BY refs_{chosen}" if chosen else "refs"
            key = "refs.idx"
        elif chosen in ("resource", "decision", "kind", None):
            # from access_refs, in index order, each row's refs row read by its key
            # (CROSS JOIN keeps this loop order)
            using = (
                f"INDEXED BY access_refs_{chosen}"
                if chosen in ("resource", "decision")
                else "NOT INDEXED"  # by its key, idx: a range of the log, in order
            )
            table = f"access_refs AS a {using} CROSS JOIN refs ON refs.idx = a.idx"
            key = "a.idx"
        else:
            table = f"refs INDEXED BY refs_{chosen} CROSS JOIN access_refs AS a ON a.idx = refs.idx"
            key = "refs.idx"
        where = [f"{key} >= ?", f"{key} < ?", *where]
        sql = f"SELECT {key} FROM {table} WHERE {' AND '.join(where)} ORDER BY {key} LIMIT ?"
        return [row[0] for row in self._query(sql, [start, end, *params, limit])]

    def anchor_indexes(self, size: int) -> list[int]:
        """Indexes below ``size`` of the genesis, key and policy entries."""
        return [
            row[0]
            for row in self._query(
                "SELECT idx FROM refs WHERE kind IN ('genesis', 'key', 'policy') AND idx < ?",
                (size,),
            )
        ]

    def ref_indexes(
        self,
        size: int,
        kind: str,
        *,
        credentials: Sequence[str] = (),
        holders: Sequence[str] = (),
    ) -> list[int]:
        """Indexes below ``size`` of leaves of ``kind`` about any of ``credentials``, or
        about none but held by one of these kids (``holders``: a holder key's revocation)."""
        column, values = ("credential", credentials) if credentials else ("holder", holders)
        out: list[int] = []
        for chunk in range(0, len(values), 400):
            part = list(values[chunk : chunk + 400])
            # Without table statistics SQLite would walk the kind index (every access of
            # the log); the credential or holder index reads only the answer's rows.
            sql = (
                f"SELECT idx FROM refs INDEXED BY refs_{column} WHERE {column} IN "
                f"({', '.join('?' for _ in part)}) AND kind = ? AND idx < ?"
            )
            if not credentials:
                sql += " AND credential IS NULL"
            out += [row[0] for row in self._query(sql, (*part, kind, size))]
        return out

    def add_checkpoint(self, size: int, root: bytes, note: bytes, created: int) -> None:
        self._write(
            [
                (
                    "INSERT INTO checkpoints (size, root, note, created) VALUES (?, ?, ?, ?)",
                    (size, root, note, created),
                )
            ]
        )

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))])

    def meta_once(self, key: str, value: str) -> str:
        """The value stored under ``key``, storing ``value`` first if there is none.

        One transaction, so every process sharing the file gets the same answer.
        """
        with self.transaction():
            rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
            if rows:
                return rows[0][0]
            self._write([("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))])
            return value

    def remember_jti(self, jti: str, expires: int, now: int) -> bool:
        """Record a DPoP proof's ``jti`` until ``expires``; False if it is already recorded.

        Expired ones are dropped in the same transaction. A replay is told by the
        insert changing no row, not by the wording of an error.
        """
        with self.transaction(), self._using() as conn:
            try:
                conn.execute("DELETE FROM dpop_jti WHERE expires < ?", (now,))
                cur = conn.execute(
                    "INSERT INTO dpop_jti (jti, expires) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (jti, expires),
                )
            except sqlite3.Error as exc:
                raise StorageError(f"writing {self.path}: {exc}") from None
            return cur.rowcount == 1
