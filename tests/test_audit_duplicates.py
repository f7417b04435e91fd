"""``lineage verify --db`` finds an entry logged twice, whatever let it in.

Regression (fault campaign): one flipped byte in the entry-id index let a client's
retry of an old grant be appended a second time, resetting its budget, and the audit
was said to stay green. The audit reads the leaves by their index (the table's own
key), never through the entry-id index, and its replay refuses a repeat of any kind
(``duplicate``); when SQLite's integrity check finds the index corrupt, the audit
stops there, and now reads the leaves once more without the index to name the
duplicate it let in. A stored id column that is not the entry's own id cannot hide
one either: every stored id is checked against the entry's bytes.

Each case copies one ledger holding an entry of every kind, gets a repeat of one of
them into the file (the UNIQUE constraint rebuilt away, or a byte of the index
flipped so that the constraint and the triggers miss it), and runs the audit.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import pytest
from typer.testing import CliRunner

from lineage.ledger.audit import AuditFailure, audit, first_repeat
from lineage.ledger.cli import app
from lineage.ledger.errors import LedgerError, StorageError
from lineage.ledger.ledger import open_ledger, sidecar_path
from lineage.ledger.store import SQLiteStore, StoredLeaf
from lineage.verifier.entry import Leaf, parse_entry, sign_entry
from lineage.verifier.keys import SigningKey
from lineage.verifier.merkle import nodes_completed_by_append
from lineage.verifier.note import Verifier
from tests import issuance_helpers as ih
from tests.conftest import close, raw_connection
from tests.issuance_helpers import world

KINDS = ("genesis", "key", "grant", "delegation", "access", "revocation", "policy")


@dataclass(frozen=True)
class Base:
    db: Path
    keys: Path
    log_key: Verifier
    size: int
    leaves: dict[str, tuple[int, bytes]]  # kind -> (index, raw) of one leaf of that kind


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    """genesis, alice bound (key), a decision key added and retired, a grant with
    ``max_uses: 2`` used once, a delegation, a policy, the delegation revoked."""
    w = world(tmp_path_factory.mktemp("base"))
    extra = SigningKey.generate()
    body = {"kind": "key", "v": 1, "log": w.log.origin, "op": "add", "key": extra.public.b64}
    added = w.append(sign_entry({**body, "roles": ["decision"]}, [w.log.keys.operator]))
    w.append(sign_entry({**body, "op": "retire"}, [w.log.keys.operator]))
    grant = w.append(w.grant(max_uses=2))
    delegation = w.append(w.delegate(grant, w.agent, max_uses=2))
    assert w.decide(w.invoke(w.agent, grant.id)).allowed
    w.append(w.policy(1, {}))
    w.append(w.revoke(w.alice, credential=delegation.id))
    w.log.checkpoint()
    leaves = {}
    for index, leaf in w.log.leaves():
        leaves.setdefault(leaf.entry.kind, (index, leaf.entry.raw))
    assert leaves["key"][0] == 1 and added.index == 2  # alice's binding; the added key
    assert sorted(leaves) == sorted(KINDS)
    base = Base(w.db, w.keys, w.log.log_key, w.log.size, leaves)
    close(w.log)
    return base


def _copy(base: Base, to: Path) -> Path:
    db = to / base.db.name
    shutil.copy(base.db, db)
    shutil.copy(sidecar_path(base.db), sidecar_path(db))
    return db


def _drop_unique_entry_id(db: Path) -> None:
    """Rebuild ``leaves`` without the UNIQUE on ``entry_id`` (its index goes with it)."""
    conn = raw_connection(db)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'leaves'").fetchone()
    conn.executescript(
        "BEGIN;"
        + sql.replace("UNIQUE", "").replace("CREATE TABLE leaves", "CREATE TABLE copy", 1)
        + "; INSERT INTO copy SELECT * FROM leaves; DROP TABLE leaves;"
        + " ALTER TABLE copy RENAME TO leaves; COMMIT;"
    )
    conn.close()


def _flip_in_id_index(db: Path, entry_id: str) -> None:
    """Flip the last character of ``entry_id`` in the entry-id index's page: the index
    no longer finds that leaf; the table still holds it."""
    conn = raw_connection(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_leaves_1'"
    ).fetchone()
    conn.close()
    data = bytearray(db.read_bytes())
    page = (root - 1) * page_size
    assert data[page] == 0x0A  # a leaf page of an index b-tree: the whole (small) index
    at = data.index(entry_id.encode(), page, page + page_size) + len(entry_id) - 1
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    db.write_bytes(bytes(data))


def _append_behind(db: Path, raw: bytes, entry_id: str | None = None) -> int:
    """Append a leaf as the store would, nodes and all, without the log's checks (the
    triggers and the UNIQUE constraint stay, if the file still has them)."""
    store = SQLiteStore(db)
    try:
        index = store.size()
        leaf = Leaf.build(parse_entry(raw), store.leaf(index - 1).time)
        nodes = nodes_completed_by_append(index, leaf.hash, store)
        stored_id = entry_id or leaf.entry.id
        store.append([StoredLeaf(index, stored_id, leaf.entry.kind, leaf.time, raw)], nodes)
        return index
    finally:
        store.close()


def _verify_json(db: Path, log_key: Verifier) -> dict:
    result = CliRunner().invoke(
        app, ["verify", "--db", str(db), "--log-key", log_key.vkey, "--json"]
    )
    assert result.exit_code == 1, result.output
    return json.loads(result.output.splitlines()[0])


def _integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_repeat_of_any_kind_fails_the_replay(base: Base, tmp_path: Path, kind: str):
    """The UNIQUE constraint gone, SQLite's integrity check passes: the replay, reading
    each leaf by its index, refuses the repeat."""
    db = _copy(base, tmp_path)
    original, raw = base.leaves[kind]
    _drop_unique_entry_id(db)
    index = _append_behind(db, raw)
    assert _integrity(db) == ["ok"]
    with pytest.raises(AuditFailure) as info:
        audit(db, base.log_key)
    assert (info.value.what, info.value.index) == ("replay", index)
    assert f"duplicate: index {index} repeats the entry at index {original}" in str(info.value)
    out = _verify_json(db, base.log_key)
    assert (out["check"], out["index"]) == ("replay", index)
    assert "duplicate" in out["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_repeat_a_corrupt_id_index_let_in_is_named(base: Base, tmp_path: Path, kind: str):
    """A flipped byte in the entry-id index: the UNIQUE constraint and the triggers
    consult the index, miss the entry, and let its repeat in. The integrity check
    fails first; the audit names the duplicate, read without the index."""
    db = _copy(base, tmp_path)
    original, raw = base.leaves[kind]
    entry_id = parse_entry(raw).id
    _flip_in_id_index(db, entry_id)
    assert SQLiteStore(db).find(entry_id) is None  # the index no longer finds it
    index = _append_behind(db, raw)
    with pytest.raises(AuditFailure) as info:
        audit(db, base.log_key)
    assert (info.value.what, info.value.index) == ("duplicate", index)
    message = str(info.value)
    assert f"index {index} repeats the entry at index {original} ({entry_id[:16]})" in message
    assert "missing from index sqlite_autoindex_leaves_1" in message
    out = _verify_json(db, base.log_key)
    assert (out["ok"], out["check"], out["index"]) == (False, "duplicate", index)


def test_a_corrupt_id_index_without_a_repeat_fails_the_integrity_check(base: Base, tmp_path: Path):
    db = _copy(base, tmp_path)
    _flip_in_id_index(db, parse_entry(base.leaves["grant"][1]).id)
    with pytest.raises(AuditFailure, match="SQLite's integrity check: row") as info:
        audit(db, base.log_key)
    assert (info.value.what, info.value.index) == ("database", None)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert first_repeat(conn) is None
    conn.close()


def test_a_stored_id_other_than_the_entrys_cannot_hide_a_repeat(base: Base, tmp_path: Path):
    """The repeat stored under a made-up id: no index or constraint sees a duplicate, and
    the integrity check passes; every stored id is checked against its entry's bytes."""
    db = _copy(base, tmp_path)
    index = _append_behind(db, base.leaves["grant"][1], entry_id="0" * 64)
    assert _integrity(db) == ["ok"]
    with pytest.raises(AuditFailure, match="stored id 0000000000000000 is not the entry's"):
        audit(db, base.log_key)
    out = _verify_json(db, base.log_key)
    assert (out["check"], out["index"]) == ("entry", index)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "access"])
def test_a_retried_entry_after_the_id_index_is_corrupted_is_never_logged_twice(
    base: Base, tmp_path: Path, kind: str
):
    """The campaign's case through the real writer: the index corrupted, a client
    retries an entry already logged (a grant: its budget would start again). The writer
    refuses it (the index disagrees with a second b-tree, or the rules refuse a repeat)
    and nothing is written; the audit still passes on what is there."""
    db = _copy(base, tmp_path)
    shutil.copytree(base.keys, tmp_path / "keys")
    _, raw = base.leaves[kind]
    _flip_in_id_index(db, parse_entry(raw).id)
    log = open_ledger(db, tmp_path / "keys")
    size = log.size
    try:
        with pytest.raises(LedgerError):
            log.append(raw)
        assert log.size == size
    finally:
        close(log)


@pytest.mark.parametrize("kind", KINDS)
def test_find_confirmed_finds_each_entry_where_it_is(base: Base, kind: str):
    store = SQLiteStore(base.db)
    try:
        index, raw = base.leaves[kind]
        assert store.find_confirmed(parse_entry(raw).id, kind) == index
        assert store.find_confirmed("0" * 64, kind) is None
    finally:
        store.close()


# An access has its nonce, a policy its version: the rules refuse their repeats.
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("access", "policy")])
def test_find_confirmed_does_not_trust_a_corrupt_id_index(base: Base, tmp_path: Path, kind: str):
    """Where ``find`` says "not in the log" through a corrupt index, ``find_confirmed``
    asks a second b-tree and refuses to answer."""
    db = _copy(base, tmp_path)
    index, raw = base.leaves[kind]
    entry_id = parse_entry(raw).id
    _flip_in_id_index(db, entry_id)
    store = SQLiteStore(db)
    body = parse_entry(raw).body
    about = {}
    if kind == "key":  # a key entry among those that added or retired its key
        about = {"kid": body.key.kid}
    if kind == "revocation":  # a revocation is looked for among its target's
        about = {"credential": body.credential} if body.credential else {"holder": body.holder.kid}
    try:
        assert store.find(entry_id) is None
        with pytest.raises(
            StorageError, match=f"misses {entry_id[:16]}, which is at index {index}"
        ):
            store.find_confirmed(entry_id, kind, **about)
    finally:
        store.close()


def test_a_refs_row_beyond_the_last_leaf_fails_the_audit(base: Base, tmp_path: Path):
    """Regression (security review): one refs row at the next index made every append
    fail, and the audit passed, since it compared only rows of existing leaves."""
    db = _copy(base, tmp_path)
    conn = raw_connection(db)
    size = conn.execute("SELECT MAX(idx) + 1 FROM leaves").fetchone()[0]
    conn.execute("INSERT INTO refs (idx, kind, time) VALUES (?, 'policy', 0)", (size,))
    conn.commit()
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(db, base.log_key)
    assert info.value.what == "index" and f"index {size}, beyond" in str(info.value)


def test_find_confirmed_reads_one_snapshot_while_the_entry_is_committed(tmp_path: Path):
    """Regression: "is it already in the log?" read the id index, then a second b-tree,
    in two snapshots; an identical append committed by another thread in between made
    the two disagree, and an honest retry was refused as damage (seen under load)."""
    w = ih.world(tmp_path)
    grant = w.grant()
    other = ih.reopen(w)
    real_find = w.log.store.find
    committed: list[int] = []

    def find_then_commit(entry_id):
        out = real_find(entry_id)
        if out is None and entry_id == grant.id and not committed:
            t = threading.Thread(target=lambda: committed.append(other.append(grant).index))
            t.start()
            t.join(30)
        return out

    try:
        with patch.object(w.log.store, "find", find_then_commit):
            assert w.log.store.find_confirmed(grant.id, "grant") is None  # as of its snapshot
        assert committed and w.log.store.find_confirmed(grant.id, "grant") == committed[0]
    finally:
        other.close()
        w.close()
