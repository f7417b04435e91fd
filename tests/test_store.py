"""ledger/store.py: the SQLite store, its append-only triggers, and proofs read from it.

Proofs are checked against the naive RFC 9162 reference (tests/merkle_reference.py) and
``lineage.verifier.merkle``'s verifiers, at every tree size up to 300 on a real ledger, and at
random sizes of a 100,000-leaf store, where one proof must read O(log n) nodes in one query.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from lineage.ledger.errors import NotFound, StorageError
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.log import Log
from lineage.ledger.store import SCHEMA_VERSION, SQLiteStore, StoredLeaf, db_files
from lineage.verifier.merkle import (
    Coord,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_completed_by_append,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from tests import merkle_reference as ref
from tests.conftest import TABLES, close, policy, raw_connection


def _leaf(i: int, entry: bytes = b"{}") -> StoredLeaf:
    return StoredLeaf(i, f"id-{i}", "policy", 1000 + i, entry)


def _fill(store: SQLiteStore, hashes: Sequence[bytes], batch: int = 20000) -> None:
    """Write leaves and their completed nodes straight through ``SQLiteStore.append``."""
    nodes: dict[Coord, bytes] = {}

    class Reader:
        def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
            return [nodes[c] for c in coords]

    start = store.size()
    for lo in range(0, len(hashes), batch):
        rows, new = [], []
        for i, h in enumerate(hashes[lo : lo + batch], start + lo):
            done = nodes_completed_by_append(i, h, Reader())
            nodes.update(done)
            new.extend(done)
            rows.append(_leaf(i, b""))
        store.append(rows, new)


class Counting:
    """A store wrapper that records every ``read_nodes`` call."""

    def __init__(self, store: SQLiteStore):
        self.store = store
        self.calls: list[list[Coord]] = []

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
        self.calls.append(list(coords))
        return self.store.read_nodes(coords)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


# -- the schema and its triggers ------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "store.db", create=True)
    s.append([_leaf(0), _leaf(1)], [((0, 0), b"\0" * 32), ((0, 1), b"\1" * 32)])
    s.add_checkpoint(1, b"\2" * 32, b"note", 5)
    s.set_meta("origin", "test.example/store")
    yield s
    s.close()


def test_new_store_has_the_current_schema(store: SQLiteStore):
    version = store.conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION >= 1
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.size() == 2


def test_a_missing_file_is_not_created_unless_asked(tmp_path: Path):
    with pytest.raises(StorageError, match="no ledger"):
        SQLiteStore(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        SQLiteStore(path)


def test_a_database_from_a_newer_lineage_is_refused(tmp_path: Path):
    path = tmp_path / "future.db"
    SQLiteStore(path, create=True).close()
    conn = raw_connection(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="upgrade Lineage"):
        SQLiteStore(path)


def test_reopening_runs_no_migration_twice(tmp_path: Path):
    path = tmp_path / "s.db"
    SQLiteStore(path, create=True).close()
    again = SQLiteStore(path)  # re-running migration 1 would fail on CREATE TABLE
    assert again.size() == 0
    again.close()


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET {column} = {column}",
        "DELETE FROM {table}",
        "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} LIMIT 1)",
    ],
)
def test_update_and_delete_are_refused_by_the_database(store, table, statement):
    column = {"leaves": "time", "nodes": "hash", "checkpoints": "note", "meta": "value"}[table]
    if "rowid" in statement and table in ("nodes", "meta"):  # WITHOUT ROWID tables
        statement = "DELETE FROM {table} WHERE 1"
    conn = raw_connection(store.path)
    before = conn.execute(f"SELECT * FROM {table}").fetchall()
    with pytest.raises(sqlite3.IntegrityError, match=f"lineage: {table} is append-only"):
        conn.execute(statement.format(table=table, column=column))
    assert conn.execute(f"SELECT * FROM {table}").fetchall() == before
    conn.close()


@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("nodes", "INSERT OR REPLACE INTO nodes VALUES (0, 0, zeroblob(32))"),
        ("meta", "INSERT OR REPLACE INTO meta VALUES ('origin', 'evil.example/log')"),
        ("checkpoints", "INSERT OR REPLACE INTO checkpoints VALUES (1, zeroblob(32), x'00', 0)"),
        ("leaves", "INSERT OR REPLACE INTO leaves VALUES (2, 'id-0', 'policy', 9, x'00')"),
        (
            "nodes",
            "INSERT INTO nodes VALUES (0, 1, zeroblob(32)) ON CONFLICT DO UPDATE SET hash = 1",
        ),
    ],
)
def test_insert_or_replace_cannot_overwrite_a_row(store, table, statement):
    """REPLACE deletes the old row without firing DELETE triggers (recursive_triggers is
    off), so the tables need triggers that refuse an INSERT on an existing key."""
    conn = raw_connection(store.path)
    before = conn.execute(f"SELECT * FROM {table}").fetchall()
    with pytest.raises(sqlite3.IntegrityError, match="lineage: "):
        conn.execute(statement)
    assert conn.execute(f"SELECT * FROM {table}").fetchall() == before
    conn.close()


@pytest.mark.parametrize("index", [0, 1, 3, -1, 100])
def test_a_leaf_out_of_order_is_refused(store: SQLiteStore, index: int):
    refused = "lineage: leaves (are appended in index order|is append-only)"
    with pytest.raises(StorageError, match=refused):
        store.append([_leaf(index)], [])
    conn = raw_connection(store.path)
    with pytest.raises(sqlite3.IntegrityError, match=refused):
        conn.execute("INSERT INTO leaves VALUES (?, 'raw', 'policy', 0, x'00')", (index,))
    conn.close()
    assert store.size() == 2


def test_a_failed_append_writes_nothing(store: SQLiteStore):
    """One transaction: a bad second leaf rolls back the first, and the nodes."""
    with pytest.raises(StorageError):
        store.append([_leaf(2), _leaf(4)], [((0, 2), b"\3" * 32)])
    assert store.size() == 2
    with pytest.raises(StorageError, match="missing"):
        store.read_nodes([(0, 2)])
    store.append([_leaf(2)], [((0, 2), b"\3" * 32)])  # the store is still usable
    assert store.size() == 3


def test_duplicates_are_refused(store: SQLiteStore):
    with pytest.raises(StorageError):
        store.append([StoredLeaf(2, "id-0", "policy", 0, b"")], [])  # entry_id is unique
    with pytest.raises(StorageError):
        store.append([_leaf(2)], [((0, 0), b"\5" * 32)])  # node already stored
    with pytest.raises(StorageError):
        store.add_checkpoint(1, b"\2" * 32, b"other", 6)
    with pytest.raises(StorageError):
        store.set_meta("origin", "other.example/log")
    with pytest.raises(StorageError):
        store.append([_leaf(2)], [((0, 2), b"short")])  # a hash is 32 bytes
    assert store.get_meta("origin") == "test.example/store"
    assert store.size() == 2


def test_reads(store: SQLiteStore):
    assert store.leaf(1) == _leaf(1)
    with pytest.raises(NotFound):
        store.leaf(2)
    assert store.find("id-1") == 1
    assert store.find("nope") is None
    assert store.get_meta("absent") is None
    assert store.latest_checkpoint() == (1, b"note")
    assert list(store.checkpoints()) == [(1, b"\2" * 32, b"note")]
    assert store.read_nodes([(0, 1), (0, 0), (0, 1)]) == [b"\1" * 32, b"\0" * 32, b"\1" * 32]
    assert store.read_nodes([]) == []
    with pytest.raises(StorageError, match=r"\(1, 0\)"):
        store.read_nodes([(0, 0), (1, 0)])


def test_many_leaves_and_nodes_read_in_pages(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db", create=True)
    hashes = [leaf_hash(b"%d" % i) for i in range(2500)]
    _fill(store, hashes, batch=1000)
    assert store.size() == 2500
    got = list(store.leaves(0, 2500))
    assert [x.index for x in got] == list(range(2500))
    assert [x.index for x in store.leaves(998, 1003)] == [998, 999, 1000, 1001, 1002]
    assert [x.index for x in store.leaves(2499, 9999)] == [2499]
    assert list(store.leaves(5, 5)) == []
    coords = [(0, i) for i in range(2499, -1, -3)]  # more than one 400-coordinate query
    assert store.read_nodes(coords) == [hashes[i] for _, i in coords]
    store.close()


# -- proofs at every size up to 300, from a real ledger -------------------------------------

SMALL = 300


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Log:
    from lineage.ledger.ledger import init_ledger

    path = tmp_path_factory.mktemp("small")
    log = init_ledger(path / "l.db", path / "keys", origin="test.example/small", clock=lambda: 7)
    results = log.append_many([policy(log, v) for v in range(1, SMALL)])
    assert [r.index for r in results] == list(range(1, SMALL))
    yield log
    close(log)


@pytest.fixture(scope="module")
def small_leaves(small_log: Log) -> tuple[bytes, ...]:
    """D[n] of RFC 9162: the leaf inputs, read back from the store and parsed."""
    return tuple(leaf.raw for _, leaf in small_log.leaves())


def test_stored_roots_match_the_reference_at_every_size(small_log: Log, small_leaves):
    assert len(small_leaves) == small_log.size == SMALL
    for n in range(1, SMALL + 1):
        assert small_log.root(n) == ref.mth(small_leaves[:n]), n


@pytest.mark.slow
def test_every_inclusion_proof_at_every_size_verifies(small_log: Log, small_leaves):
    hashes = [leaf_hash(d) for d in small_leaves]
    for n in range(1, SMALL + 1):
        root = ref.mth(small_leaves[:n])
        for i in range(n):
            proof = small_log.inclusion_proof(i, n)
            verify_inclusion(i, n, hashes[i], proof, root)


def test_inclusion_proofs_equal_the_reference_path(small_log: Log, small_leaves):
    rng = random.Random(1)
    sizes = [*range(1, 70), *rng.sample(range(70, SMALL + 1), 20), SMALL]
    for n in sizes:
        for i in range(n) if n < 70 else rng.sample(range(n), 12):
            assert small_log.inclusion_proof(i, n) == ref.path(i, small_leaves[:n]), (i, n)


@pytest.mark.slow
def test_every_consistency_pair_verifies(small_log: Log, small_leaves):
    roots = [b""] + [ref.mth(small_leaves[:n]) for n in range(1, SMALL + 1)]
    pairs = 0
    for second in range(1, SMALL + 1):
        for first in range(1, second + 1):
            proof = small_log.consistency_proof(first, second)
            verify_consistency(first, second, roots[first], roots[second], proof)
            pairs += 1
    assert pairs == SMALL * (SMALL + 1) // 2


def test_consistency_proofs_equal_the_reference(small_log: Log, small_leaves):
    rng = random.Random(2)
    for _ in range(400):
        second = rng.randrange(1, SMALL + 1)
        first = rng.randrange(1, second + 1)
        d = small_leaves[:second]
        assert small_log.consistency_proof(first, second) == ref.proof(first, d), (first, second)


def test_a_proof_for_a_size_the_log_does_not_have_is_refused(small_log: Log):
    for index, size in [(0, SMALL + 1), (SMALL, SMALL), (-1, 5), (0, 0)]:
        with pytest.raises(NotFound):
            small_log.inclusion_proof(index, size)
    for first, second in [(0, 5), (6, 5), (1, SMALL + 1)]:
        with pytest.raises(NotFound):
            small_log.consistency_proof(first, second)


# -- a 100,000-leaf store: random proofs, and what one proof reads ---------------------------

BIG = 100_000


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[SQLiteStore, list[bytes]]:
    rng = random.Random(100_000)
    hashes = [rng.randbytes(32) for _ in range(BIG)]
    store = SQLiteStore(tmp_path_factory.mktemp("big") / "big.db", create=True)
    _fill(store, hashes)
    yield store, hashes
    store.close()


def _root_of(hashes: list[bytes]):
    """MTH over leaf hashes, memoised per range: sizes share their complete subtrees."""

    @cache
    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return hashes[lo]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return lambda n: mth(0, n)


@pytest.mark.slow
def test_random_proofs_at_100k_verify(big):
    store, hashes = big
    root = _root_of(hashes)
    assert store.size() == BIG
    assert tree_root(BIG, store) == root(BIG)
    rng = random.Random(3)
    for _ in range(300):
        n = rng.randrange(1, BIG + 1)
        i = rng.randrange(n)
        verify_inclusion(i, n, hashes[i], inclusion_proof(i, n, store), root(n))
        m = rng.randrange(1, n + 1)
        verify_consistency(m, n, root(m), root(n), consistency_proof(m, n, store))
    for m, n in [(1, BIG), (BIG - 1, BIG), (65536, BIG), (65535, 65537), (BIG, BIG)]:
        verify_consistency(m, n, root(m), root(n), consistency_proof(m, n, store))


def test_one_proof_at_100k_is_one_query_for_o_log_n_nodes(big):
    store, _ = big
    bound = 2 * math.log2(BIG) + 2
    counting = Counting(store)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        rng = random.Random(4)
        for _ in range(200):
            n = rng.randrange(2, BIG + 1)
            i, m = rng.randrange(n), rng.randrange(1, n)
            for make, args in ((inclusion_proof, (i, n)), (consistency_proof, (m, n))):
                counting.calls.clear()
                statements.clear()
                make(*args, counting)
                assert len(counting.calls) == 1
                assert 1 <= len(counting.calls[0]) <= bound, (i, m, n, counting.calls[0])
                node_reads = [s for s in statements if "FROM nodes" in s]
                assert len(node_reads) == 1, statements
    finally:
        store.conn.set_trace_callback(None)


def test_a_missing_node_is_a_storage_error_not_a_wrong_proof(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db", create=True)
    hashes = [leaf_hash(b"%d" % i) for i in range(8)]
    store.append([_leaf(i) for i in range(8)], [((0, i), h) for i, h in enumerate(hashes)])
    with pytest.raises(StorageError, match=r"tree node \(1, 0\) is missing"):
        inclusion_proof(3, 8, store)
    store.close()


# -- file modes: the database and its -wal and -shm are owner-only -------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(db: Path) -> dict[str, int]:
    """The mode of each of the database's files that exists now."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in db_files(db) if p.exists()}


def _owner_only(db: Path, expect: Sequence[str] = ("", "-wal", "-shm")) -> None:
    modes = _modes(db)
    assert {db.name + suffix for suffix in expect} <= set(modes), modes
    assert all(mode == 0o600 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_the_database_and_its_wal_and_shm_are_owner_only_under_a_permissive_umask(tmp_path: Path):
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    with umask(0):
        log = init_ledger(db, keys, origin="modes.example/log")
        log.append(policy(log, 1))
        _owner_only(db)  # open: the WAL and shared memory hold entry bodies
        close(log)
        assert not (tmp_path / "lineage.db-wal").exists()  # checkpointed into the file
        # restart: new -wal and -shm files, made by SQLite with the database's mode
        log = open_ledger(db, keys)
        log.append(policy(log, 2))
        _owner_only(db)
        close(log)


def test_a_bare_store_is_created_owner_only(tmp_path: Path):
    with umask(0):
        s = SQLiteStore(tmp_path / "bare.db", create=True)
        s.set_meta("origin", "x")
        _owner_only(tmp_path / "bare.db")
        s.close()


def test_group_readable_database_files_are_made_owner_only_on_open(tmp_path: Path):
    """A ledger from before this fix, or loosened by hand, is tightened when opened."""
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin="modes.example/log")
    log.append(policy(log, 1))
    for path in db_files(db):
        if path.exists():
            path.chmod(0o644)
    assert set(_modes(db).values()) == {0o644}
    other = open_ledger(db, keys)  # a second opener, while the first still holds the files
    _owner_only(db)
    close(other)
    close(log)


SECOND_PROCESS = """
import os, stat, sys
from pathlib import Path
os.umask(0)
from lineage.ledger.ledger import open_ledger
from lineage.ledger.store import db_files
from tests.conftest import policy
db, keys = Path(sys.argv[1]), Path(sys.argv[2])
log = open_ledger(db, keys)
log.append(policy(log, int(sys.argv[3])))
for p in db_files(db):
    if p.exists():
        print(p.name, oct(stat.S_IMODE(p.stat().st_mode)))
log.close()
"""


def test_a_second_process_with_a_permissive_umask_keeps_the_files_owner_only(tmp_path: Path):
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    close(init_ledger(db, keys, origin="modes.example/log"))
    root = Path(__file__).resolve().parent.parent
    for version, first_still_open in ((1, False), (2, True)):
        log = open_ledger(db, keys) if first_still_open else None
        done = subprocess.run(
            [sys.executable, "-c", SECOND_PROCESS, str(db), str(keys), str(version)],
            capture_output=True,
            text=True,
            cwd=root,
        )
        assert done.returncode == 0, done.stderr
        seen = dict(line.split() for line in done.stdout.splitlines())
        assert {"lineage.db", "lineage.db-wal", "lineage.db-shm"} <= set(seen), seen
        assert set(seen.values()) == {"0o600"}, seen
        if log is not None:
            _owner_only(db)
            close(log)


def test_short_lived_threads_do_not_leak_connections(tmp_path: Path):
    """Regression (chain-state issue): one connection per thread, never closed, so each
    idle gap of the server's thread pool leaked about 40. Connections are now pooled."""
    import threading

    from lineage.ledger.store import MAX_IDLE

    store = SQLiteStore(tmp_path / "s.db", create=True)
    for _ in range(20):  # twenty generations of eight threads, like a pool that comes and goes
        threads = [threading.Thread(target=store.size) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert store.open_connections() <= MAX_IDLE
    store.close()
    assert store.open_connections() == 0
