"""ledger/audit.py and the checks at open: tampering with the file behind the ledger's back.

Each case builds a real ledger (genesis and 20 policy entries; checkpoints at sizes 1, 11
and 21), closes it, changes the SQLite file through a raw connection with the append-only
triggers dropped, and expects ``audit`` to fail naming the check (and the leaf when there
is one), and ``open_ledger`` either to refuse or, where open does not look, to still open.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import lineage.ledger.audit as audit_module
from lineage.ledger.audit import AuditFailure, AuditReport, audit
from lineage.ledger.errors import RollbackError, StorageError
from lineage.ledger.ledger import init_ledger, open_ledger, sidecar_path
from lineage.ledger.log import Log
from lineage.ledger.refs import Ref
from lineage.ledger.store import SQLiteStore, StoredLeaf
from lineage.verifier.chain import Replay
from lineage.verifier.checkpoint import Checkpoint, sign_checkpoint
from lineage.verifier.entry import Entry, Leaf, parse_entry, sign_entry
from lineage.verifier.keys import SigningKey
from lineage.verifier.merkle import nodes_completed_by_append
from lineage.verifier.note import Signer, Verifier
from tests.conftest import (
    ORIGIN,
    close,
    drop_triggers,
    policy,
    raw_connection,
)
from tests.issuance_helpers import world

SIZE = 21


@dataclass
class Ledger:
    db: Path
    keys: Path
    log_key: Verifier
    root: bytes
    entry: Callable[[int], bytes]  # a fresh policy entry (raw) of a given version


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin=ORIGIN, clock=lambda: 1767225600)
    log.append_many([policy(log, v) for v in range(1, 11)])
    log.checkpoint()
    log.append_many([policy(log, v) for v in range(11, SIZE)])
    log.checkpoint()
    assert log.size == SIZE
    root, key = log.root(), log.log_key
    operator = log.keys.operator

    def entry(v: int) -> bytes:
        body = {"kind": "policy", "v": 1, "log": ORIGIN, "version": v, "document": {}}
        return sign_entry(body, [operator]).raw

    close(log)
    return Ledger(db, keys, key, root, entry)


def _tamper(db: Path, *statements: tuple[str, tuple]) -> None:
    conn = raw_connection(db)
    drop_triggers(conn)
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


def _one(db: Path, sql: str, params: tuple = ()):
    conn = raw_connection(db)
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _opens(led: Ledger) -> None:
    log = open_ledger(led.db, led.keys)
    close(log)


# -- a clean ledger ------------------------------------------------------------------------------


def test_a_clean_ledger_passes(ledger: Ledger):
    stages: dict[str, tuple[int, int]] = {}
    report = audit(
        ledger.db, ledger.log_key, progress=lambda s, d, t: stages.__setitem__(s, (d, t))
    )
    assert isinstance(report, AuditReport)
    assert (report.size, report.root) == (SIZE, ledger.root)
    # every stored checkpoint (one per group commit that appended), and the sidecar copy
    conn = sqlite3.connect(ledger.db)
    stored = conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    conn.close()
    assert stored >= 3 and report.checkpoints == stored + 1
    assert (report.credentials, report.accesses) == (0, 0)
    assert stages["leaves"] == (SIZE, SIZE)
    assert stages["replay"] == (SIZE, SIZE)
    assert stages["tree"][0] == stages["tree"][1]
    _opens(ledger)


@pytest.mark.slow
def test_a_large_ledger_is_audited_in_parallel(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(audit_module, "PARALLEL_FROM", 64)
    monkeypatch.setattr(audit_module, "CHUNK", 50)
    db = tmp_path / "l.db"
    log = init_ledger(db, tmp_path / "keys", origin=ORIGIN)
    log.append_many([policy(log, v) for v in range(1, 300)])
    log.checkpoint()
    key, root, bad = log.log_key, log.root(), policy(log, 9999, SigningKey.generate())
    close(log)
    serial = audit(db, key, workers=1)
    parallel = audit(db, key, workers=2)
    assert serial == parallel
    assert (parallel.size, parallel.root) == (300, root)
    # a leaf signed by nobody, written with consistent nodes, in the last chunk
    _write_behind(db, bad.raw)
    with pytest.raises(AuditFailure) as info:
        audit(db, key, workers=2)
    assert (info.value.what, info.value.index) == ("replay", 300)


# -- tampering -----------------------------------------------------------------------------------


def _entry_byte_still_parses(led: Ledger) -> None:
    (raw,) = _one(led.db, "SELECT entry FROM leaves WHERE idx = 5")
    at = raw.index(b'"version":5') + len('"version":')
    _tamper(
        led.db, ("UPDATE leaves SET entry = ? WHERE idx = 5", (raw[:at] + b"6" + raw[at + 1 :],))
    )


def _entry_byte_breaks_parse(led: Ledger) -> None:
    (raw,) = _one(led.db, "SELECT entry FROM leaves WHERE idx = 5")
    _tamper(led.db, ("UPDATE leaves SET entry = ? WHERE idx = 5", (b"[" + raw[1:],)))


def _entry_replaced_with_its_id(led: Ledger) -> None:
    """A different valid entry, with its id: only the tree can tell."""
    raw = led.entry(500)
    _tamper(
        led.db,
        (
            "UPDATE leaves SET entry = ?, entry_id = ? WHERE idx = 5",
            (raw, hashlib.sha256(raw).hexdigest()),
        ),
    )


def _entry_id_column(led: Ledger) -> None:
    _tamper(led.db, ("UPDATE leaves SET entry_id = ? WHERE idx = 5", ("0" * 64,)))


def _node_hash(level: int, idx: int) -> Callable[[Ledger], None]:
    def tamper(led: Ledger) -> None:
        (digest,) = _one(led.db, "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, idx))
        _tamper(
            led.db,
            (
                "UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?",
                (_flip(digest, 7), level, idx),
            ),
        )

    return tamper


def _checkpoint_note_byte(size: int) -> Callable[[Ledger], None]:
    def tamper(led: Ledger) -> None:
        (note,) = _one(led.db, "SELECT note FROM checkpoints WHERE size = ?", (size,))
        at = note.index(b"\n\n") - 3  # a byte of the root hash line
        _tamper(led.db, ("UPDATE checkpoints SET note = ? WHERE size = ?", (_flip(note, at), size)))

    return tamper


def _checkpoint_signature_byte(led: Ledger) -> None:
    (note,) = _one(led.db, "SELECT note FROM checkpoints WHERE size = 11")
    _tamper(
        led.db, ("UPDATE checkpoints SET note = ? WHERE size = 11", (_flip(note, len(note) - 5),))
    )


def _checkpoint_root_column(led: Ledger) -> None:
    _tamper(led.db, ("UPDATE checkpoints SET root = zeroblob(32) WHERE size = 11", ()))


def _leaf_time(led: Ledger) -> None:
    _tamper(led.db, ("UPDATE leaves SET time = time + 1 WHERE idx = 7", ()))


def _deleted_leaf(index: int) -> Callable[[Ledger], None]:
    return lambda led: _tamper(led.db, ("DELETE FROM leaves WHERE idx = ?", (index,)))


def _inserted_leaf(led: Ledger) -> None:
    raw = led.entry(SIZE)  # a valid next entry, but no tree nodes for it
    _tamper(
        led.db,
        (
            "INSERT INTO leaves VALUES (?, ?, 'policy', 1767225600, ?)",
            (SIZE, hashlib.sha256(raw).hexdigest(), raw),
        ),
    )


def _inserted_node(led: Ledger) -> None:
    _tamper(led.db, ("INSERT INTO nodes VALUES (9, 0, zeroblob(32))", ()))


def _inserted_node_in_a_level(led: Ledger) -> None:
    _tamper(led.db, ("INSERT INTO nodes VALUES (1, 10, zeroblob(32))", ()))


def _inserted_checkpoint(size: int) -> Callable[[Ledger], None]:
    def tamper(led: Ledger) -> None:
        forger = Signer.generate(ORIGIN)
        note = sign_checkpoint(Checkpoint(ORIGIN, size, b"\7" * 32), forger)
        _tamper(led.db, ("INSERT INTO checkpoints VALUES (?, ?, ?, 0)", (size, b"\7" * 32, note)))

    return tamper


def _sidecar_byte(led: Ledger) -> None:
    side = sidecar_path(led.db)
    note = side.read_bytes()
    side.write_bytes(_flip(note, note.index(b"\n\n") - 3))


def _write_behind(db: Path, raw: bytes) -> None:
    """Append a leaf the way the log would, nodes and all, but without the log's checks."""
    store = SQLiteStore(db)
    try:
        index = store.size()
        leaf = Leaf.build(parse_entry(raw), store.leaf(index - 1).time)
        nodes = nodes_completed_by_append(index, leaf.hash, store)
        store.append([StoredLeaf(index, leaf.entry.id, leaf.entry.kind, leaf.time, raw)], nodes)
    finally:
        store.close()


def _forged_leaf_with_nodes(led: Ledger) -> None:
    body = {"kind": "policy", "v": 1, "log": ORIGIN, "version": 99, "document": {}}
    _write_behind(led.db, sign_entry(body, [SigningKey.generate()]).raw)


CASES = {
    # name: (tamper, audit check, leaf index or None, what open does: None = opens)
    "entry-byte-still-parses": (_entry_byte_still_parses, "entry", 5, None),
    "entry-byte-breaks-parse": (_entry_byte_breaks_parse, "entry", 5, None),
    "entry-replaced-with-matching-id": (_entry_replaced_with_its_id, "tree", 5, None),
    "entry-id-column": (_entry_id_column, "entry", 5, None),
    "node-hash-off-the-root-path": (_node_hash(1, 3), "tree", None, None),
    "node-hash-on-the-root-path": (_node_hash(4, 0), "tree", None, StorageError),
    "leaf-hash-node": (_node_hash(0, 12), "tree", 12, None),
    "old-checkpoint-note-byte": (_checkpoint_note_byte(11), "checkpoint", None, None),
    "old-checkpoint-signature-byte": (_checkpoint_signature_byte, "checkpoint", None, None),
    "latest-checkpoint-note-byte": (_checkpoint_note_byte(SIZE), "checkpoint", None, StorageError),
    "checkpoint-root-column": (_checkpoint_root_column, "checkpoint", None, None),
    "leaf-time": (_leaf_time, "tree", 7, None),
    "deleted-leaf-in-the-middle": (_deleted_leaf(10), "leaves", None, None),
    "deleted-last-leaf": (_deleted_leaf(SIZE - 1), "tree", None, RollbackError),
    "deleted-genesis": (_deleted_leaf(0), "leaves", None, None),
    "inserted-leaf": (_inserted_leaf, "tree", None, None),
    "inserted-node-above-the-top": (_inserted_node, "tree", None, None),
    "inserted-node-in-a-level": (_inserted_node_in_a_level, "tree", None, None),
    "inserted-old-checkpoint": (_inserted_checkpoint(5), "checkpoint", None, None),
    "inserted-newer-checkpoint": (_inserted_checkpoint(40), "checkpoint", None, StorageError),
    "sidecar-byte": (_sidecar_byte, "checkpoint", None, StorageError),
    "forged-leaf-with-nodes": (_forged_leaf_with_nodes, "replay", SIZE, None),
}


@pytest.mark.parametrize("case", CASES)
def test_tampering_is_caught(ledger: Ledger, case: str):
    tamper, check, index, at_open = CASES[case]
    tamper(ledger)
    with pytest.raises(AuditFailure) as info:
        audit(ledger.db, ledger.log_key)
    failure = info.value
    assert failure.what == check, str(failure)
    assert str(failure).startswith(f"{check}: ")
    assert failure.index == index
    if at_open is None:
        _opens(ledger)
    else:
        with pytest.raises(at_open):
            open_ledger(ledger.db, ledger.keys)


@pytest.mark.parametrize("case", [c for c, (_, _, index, _) in CASES.items() if index is not None])
def test_the_failure_message_names_the_leaf(ledger: Ledger, case: str):
    """``lineage verify --db`` prints only the message: it must say which leaf broke."""
    tamper, _, index, _ = CASES[case]
    tamper(ledger)
    with pytest.raises(AuditFailure) as info:
        audit(ledger.db, ledger.log_key)
    assert re.search(rf"\b{index}\b", str(info.value)), str(info.value)


def test_a_forged_leaf_stops_further_appends(ledger: Ledger):
    _forged_leaf_with_nodes(ledger)
    log = open_ledger(ledger.db, ledger.keys)
    try:
        with pytest.raises(StorageError, match="does not replay"):
            log.append(policy(log, 100))
        assert log.size == SIZE + 1
    finally:
        close(log)


def test_a_node_moved_to_another_index_is_caught(ledger: Ledger):
    """Each level's nodes are checked by index, not only by position."""
    _tamper(ledger.db, ("UPDATE nodes SET idx = 99 WHERE level = 2 AND idx = 4", ()))
    with pytest.raises(StorageError):
        _opens(ledger)  # the ledger itself cannot use the file ...
    with pytest.raises(AuditFailure):  # ... so the audit must not pass it
        audit(ledger.db, ledger.log_key)


def test_a_changed_log_key_in_meta_is_caught(ledger: Ledger):
    """A file the ledger would refuse to open with the trusted key does not pass."""
    other = Signer.generate(ORIGIN).verifier.vkey
    _tamper(ledger.db, ("UPDATE meta SET value = ? WHERE key = 'log_key'", (other,)))
    with pytest.raises(StorageError):
        _opens(ledger)
    with pytest.raises(AuditFailure) as info:
        audit(ledger.db, ledger.log_key)
    assert info.value.what == "meta"


def test_an_older_copy_put_back_is_a_rollback(tmp_path: Path):
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin=ORIGIN)
    log.append_many([policy(log, v) for v in range(1, 10)])
    log.checkpoint()
    busy, _, _ = log.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    saved = {p.name: p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()}
    log.append_many([policy(log, v) for v in range(10, 20)])
    log.checkpoint()
    key = log.log_key
    close(log)
    assert audit(db, key).size == 20

    for p in tmp_path.glob("lineage.db-*"):  # put the old copy back: its files only
        p.unlink()
    for name, data in saved.items():
        (tmp_path / name).write_bytes(data)
    assert SQLiteStore(db).size() == 10  # the old copy is itself a sound log ...

    with pytest.raises(RollbackError, match="rolled back") as info:
        open_ledger(db, keys)
    assert "10" in str(info.value) and "20" in str(info.value)
    with pytest.raises(RollbackError):
        open_ledger(db, log_key=key.vkey)
    with pytest.raises(AuditFailure, match="rolled back") as failure:
        audit(db, key)
    assert failure.value.what == "checkpoint"


def test_a_rolled_back_log_that_grew_again_is_a_fork(tmp_path: Path):
    """Same size as the published checkpoint, different entries: not the log we published."""
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin=ORIGIN)
    log.append_many([policy(log, v) for v in range(1, 5)])
    close(log)
    old = db.read_bytes()
    log = open_ledger(db, keys)
    log.append_many([policy(log, v) for v in range(5, 8)])
    log.checkpoint()
    close(log)
    for p in tmp_path.glob("lineage.db-*"):
        p.unlink()
    db.write_bytes(old)
    sidecar = sidecar_path(db).read_bytes()
    sidecar_path(db).unlink()  # open without the sidecar to grow the old copy
    log = open_ledger(db, keys)
    log.trust(log.latest_checkpoint())  # an operator wrongly taking the copy's own word
    log.append_many([policy(log, v) for v in range(50, 53)])
    key = log.log_key
    close(log)
    sidecar_path(db).write_bytes(sidecar)
    with pytest.raises(StorageError, match="disagrees"):
        open_ledger(db, keys)
    with pytest.raises(AuditFailure) as info:
        audit(db, key)
    assert info.value.what == "checkpoint"


# -- what the audit is given -------------------------------------------------------------------


def test_the_wrong_trusted_key_fails(ledger: Ledger):
    with pytest.raises(AuditFailure) as info:
        audit(ledger.db, Signer.generate(ORIGIN).verifier)
    assert info.value.what in ("meta", "checkpoint", "replay")
    with pytest.raises(AuditFailure):
        audit(ledger.db, Signer.generate("other.example/log").verifier)


def test_no_database_or_not_a_database(tmp_path: Path, ledger: Ledger):
    with pytest.raises(AuditFailure) as info:
        audit(tmp_path / "absent.db", ledger.log_key)
    assert info.value.what == "database"
    assert not (tmp_path / "absent.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all " * 200)
    with pytest.raises(AuditFailure) as info:
        audit(junk, ledger.log_key)
    assert info.value.what == "database"


def test_an_empty_ledger_fails(tmp_path: Path, ledger: Ledger):
    store = SQLiteStore(tmp_path / "empty.db", create=True)
    store.set_meta("origin", ledger.log_key.name)
    store.set_meta("log_key", ledger.log_key.vkey)
    store.close()
    with pytest.raises(AuditFailure, match="empty") as info:
        audit(tmp_path / "empty.db", ledger.log_key)
    assert info.value.what == "leaves"


def test_audit_does_not_write(ledger: Ledger):
    before = ledger.db.read_bytes()
    audit(ledger.db, ledger.log_key)
    assert ledger.db.read_bytes() == before
    conn = sqlite3.connect(ledger.db)
    assert conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0] == SIZE
    conn.close()


def test_the_audit_reads_the_file_not_a_copy(ledger: Ledger):
    shutil.copy(ledger.db, ledger.db.with_name("copy.db"))
    _leaf_time(ledger)
    assert audit(ledger.db.with_name("copy.db"), ledger.log_key).size == SIZE
    with pytest.raises(AuditFailure):
        audit(ledger.db, ledger.log_key)


def test_the_replay_runs_for_a_ledger_with_state(tmp_path: Path):
    """Key changes replay: adding then retiring a decision key."""
    db = tmp_path / "l.db"
    log: Log = init_ledger(db, tmp_path / "keys", origin=ORIGIN)
    extra = SigningKey.generate()
    for op in ("add", "retire"):
        body = {"kind": "key", "v": 1, "log": ORIGIN, "op": op, "key": extra.public.b64}
        if op == "add":
            body["roles"] = ["decision"]
        log.append(sign_entry(body, [log.keys.operator]))
    key = log.log_key
    close(log)
    assert audit(db, key).size == 3


# -- the replay is of the whole log: an entry once, the policy in force, fresh invocations ------


@dataclass
class Spent:
    """A ledger whose single-use grant was used once (and a second use denied by the ledger)."""

    db: Path
    log_key: Verifier
    grant: Entry
    forge: Callable[..., Entry]  # an access entry as decide writes it, signed by the decision key


def _spent(tmp_path: Path) -> Spent:
    w = world(tmp_path)
    grant = w.grant(max_uses=1, expires_at=w.now + 60)
    w.append(grant)
    assert w.decide(w.invoke(w.agent, grant.id)).allowed
    w.clock.advance(1)
    second = w.decide(w.invoke(w.agent, grant.id))
    assert (second.allowed, second.check) == (False, "budget")  # the ledger itself refuses
    decision_key, time = w.log.keys.decision, w.now

    def forge(*, policy: int = 0, iat: int = time, nonce: str | None = None) -> Entry:
        inv = w.invoke(w.agent, grant.id, iat=iat, n=nonce)
        body = {
            "kind": "access",
            "v": 1,
            "log": w.log.origin,
            "invocation": dict(inv.obj),
            "context": {},
            "enforcement": "gw-1",
            "decision": "allow",
            "reason": "permitted by every credential in the chain",
            "policy": policy,
        }
        return sign_entry(body, [decision_key])

    spent = Spent(w.db, w.log.log_key, grant, forge)
    close(w.log)
    assert audit(spent.db, spent.log_key).accesses == 2
    return spent


def _drop_unique_entry_id(db: Path) -> None:
    """Rebuild ``leaves`` without its UNIQUE entry_id column (and with no triggers)."""
    conn = raw_connection(db)
    drop_triggers(conn)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'leaves'").fetchone()
    assert "UNIQUE" in sql
    conn.executescript(
        "BEGIN;"
        + sql.replace("UNIQUE", "").replace("CREATE TABLE leaves", "CREATE TABLE leaves_copy", 1)
        + ";INSERT INTO leaves_copy SELECT * FROM leaves; DROP TABLE leaves;"
        + "ALTER TABLE leaves_copy RENAME TO leaves; COMMIT;"
    )
    conn.close()


def _verify_db(db: Path, log_key: Verifier) -> dict:
    from typer.testing import CliRunner

    from lineage.ledger.cli import app

    result = CliRunner().invoke(
        app, ["verify", "--db", str(db), "--log-key", log_key.vkey, "--json"]
    )
    assert result.exit_code != 0, result.output
    return json.loads(result.output.splitlines()[0])


def _index_like_the_grant(db: Path, grant_id: str, *indexes: int) -> None:
    """refs rows for leaves written behind the ledger's back, all about the grant."""
    store = SQLiteStore(db)
    try:
        (row,) = [
            r
            for r in store.conn.execute("SELECT * FROM refs WHERE credential = ?", (grant_id,))
            if r[1] == "grant"
        ]
        refs = [Ref(i, store.leaf(i).kind, store.leaf(i).time, *row[3:]) for i in indexes]
        store.add_refs(refs)
    finally:
        store.close()


def test_a_repeated_grant_does_not_reset_its_budget_in_the_file(tmp_path: Path, monkeypatch):
    """The grant's leaf written again (UNIQUE dropped), then a second allow: the repeat is
    refused. Its twin, the same allow without the repeat, is refused for the budget; and
    so is the file with the rule switched off, as uses are kept by credential id."""
    spent = _spent(tmp_path)
    twin = tmp_path / "twin" / "l.db"
    twin.parent.mkdir()
    shutil.copy(spent.db, twin)
    size = SQLiteStore(spent.db).size()
    forged = spent.forge()

    _drop_unique_entry_id(spent.db)
    _write_behind(spent.db, spent.grant.raw)
    _write_behind(spent.db, forged.raw)
    _index_like_the_grant(spent.db, spent.grant.id, size, size + 1)
    with monkeypatch.context() as m:  # without the rule, uses are still counted by id
        m.setattr(Replay, "ids", property(lambda self: {}, lambda self, v: None), raising=False)
        with pytest.raises(AuditFailure, match="budget"):
            audit(spent.db, spent.log_key)
    with pytest.raises(AuditFailure) as info:
        audit(spent.db, spent.log_key)
    assert (info.value.what, info.value.index) == ("replay", size)
    assert "duplicate" in str(info.value)
    out = _verify_db(spent.db, spent.log_key)
    assert (out["ok"], out["check"], out["index"]) == (False, "replay", size)
    assert "duplicate" in out["error"]

    _write_behind(twin, forged.raw)
    with pytest.raises(AuditFailure) as info:
        audit(twin, spent.log_key)
    assert (info.value.what, info.value.index) == ("replay", size)
    assert "budget" in str(info.value)


def test_an_access_naming_a_policy_never_set_fails_the_audit(tmp_path: Path):
    spent = _spent(tmp_path)
    size = SQLiteStore(spent.db).size()
    _write_behind(spent.db, spent.forge(policy=7).raw)  # a bundle of it would pass
    with pytest.raises(AuditFailure) as info:
        audit(spent.db, spent.log_key)
    assert (info.value.what, info.value.index) == ("replay", size)
    assert "policy: names policy 7, but version 0 was in force" in str(info.value)


@pytest.mark.parametrize("skew, ok", [(-61, False), (-60, True), (60, True), (61, False)])
def test_the_audit_checks_iat_against_the_leaf_time(tmp_path: Path, skew: int, ok: bool):
    spent = _spent(tmp_path)
    time = SQLiteStore(spent.db).leaf(SQLiteStore(spent.db).size() - 1).time
    forged = spent.forge(iat=time + skew)
    _write_behind(spent.db, forged.raw)  # at the previous leaf's time
    with pytest.raises(AuditFailure) as info:
        audit(spent.db, spent.log_key)
    # within the window the allow still breaks the budget; outside it, freshness comes first
    assert ("budget" if ok else "freshness") in str(info.value), str(info.value)
    if not ok:
        with pytest.raises(AuditFailure, match="budget"):  # a wider window: then the budget
            audit(spent.db, spent.log_key, invocation_window=abs(skew))


def test_an_audit_failure_message_is_escaped():
    failure = AuditFailure("replay", "entry for log 'x\x1b[2J'\nOK")
    assert "\x1b" not in str(failure) and "\n" not in str(failure)
    assert "\\x1b[2J" in str(failure)
