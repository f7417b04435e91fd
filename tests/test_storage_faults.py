"""Storage faults: the checkpoint thread never dies silently, shutdown publishes a final
checkpoint, and a failed COMMIT is the ledger's own error.

Regressions (the faults issue): a full disk made ``COMMIT`` raise a raw
``sqlite3.OperationalError``; the checkpoint thread caught only the ledger's own
errors and died, and the log grew to 9,886 entries under a checkpoint of size 1.
Shutdown published no final checkpoint, so the last appends were never covered.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from lineage.ledger.audit import AuditFailure, audit
from lineage.ledger.errors import Damaged, StorageError
from lineage.ledger.ledger import open_ledger, sidecar_path
from lineage.ledger.state import RecordCache
from lineage.ledger.store import SQLiteStore
from lineage.verifier.receipt import verify_receipt
from tests import issuance_helpers as ih
from tests.api_server import running
from tests.conftest import policy


def _wait(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_raw_storage_error_does_not_kill_the_checkpoint_thread(tmp_path: Path, monkeypatch):
    with running(tmp_path, checkpoint_interval=0.02) as srv:
        log = srv.log
        publish = log.checkpoint
        failures = {"left": 2}

        def flaky() -> bytes:
            if failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return publish()

        monkeypatch.setattr(log, "checkpoint", flaky)
        # Something new to cover, appended by a process without the log key (whose group
        # commits sign nothing): the server's checkpoint thread must cover it.
        unsigned = open_ledger(log.store.path, log_key=log.log_key.vkey)
        unsigned.append(policy(log, 1))
        unsigned.close()
        assert _wait(lambda: log.counters.get("checkpoint_failures", 0) >= 1)
        health = httpx.get(srv.url("/healthz")).json()
        if failures["left"]:  # still failing: the health check says so, and why
            assert health["status"] == "degraded" and "disk is full" in health["checkpoint_error"]
        assert _wait(lambda: log.store.latest_checkpoint()[0] == log.size)  # it recovered
        assert log.checkpointing  # and it is still running
        health = httpx.get(srv.url("/healthz")).json()
        assert (health["status"], health["checkpoint_failures"]) == ("ok", 2)
        assert "lineage_checkpoint_failures 2.0" in httpx.get(srv.url("/metrics")).text


def test_every_acknowledged_append_is_covered_by_a_checkpoint_when_answered(tmp_path: Path):
    """Regression: an append was acknowledged with its index alone and covered by a
    checkpoint up to a second later, or never (none at shutdown, none after a failure).
    Now its group commit signs the checkpoint and the answer is the receipt."""
    w = ih.world(tmp_path)
    appended = w.log.append(w.grant())
    size = w.log.size
    assert w.log.store.latest_checkpoint()[0] == size
    assert appended.receipt is not None
    assert verify_receipt(appended.receipt.to_json(), w.log.log_key, appended.id).index == (
        appended.index
    )
    latest = w.log.latest_checkpoint()
    w.close()
    assert sidecar_path(w.log.store.path).read_bytes() == latest  # written by close at last
    log = ih.reopen(w)
    try:
        assert log.store.latest_checkpoint()[0] == size
    finally:
        log.close()


def test_shutdown_publishes_a_final_checkpoint(tmp_path: Path):
    """Leaves appended by a process that does not sign are covered when a signing
    process that appended closes."""
    w = ih.world(tmp_path)
    w.append(w.grant())
    unsigned = open_ledger(w.log.store.path, log_key=w.log.log_key.vkey, clock=w.clock)
    unsigned.append(w.grant(expires_at=w.now + 600))
    unsigned.close()
    size = w.log.size
    assert w.log.store.latest_checkpoint()[0] < size
    w.close()
    log = ih.reopen(w)
    try:
        assert log.store.latest_checkpoint()[0] == size
    finally:
        log.close()


def test_a_failed_commit_is_the_ledgers_own_error_and_writes_nothing(tmp_path: Path):
    """Regression: a COMMIT that fails (a full disk) raised a raw sqlite3 error, which
    the API answered with 500 where the docs promise 503. A deferred constraint makes
    the COMMIT itself fail here, as a full disk would."""

    store = SQLiteStore(tmp_path / "l.db", create=True)
    conn = store.conn  # the idle connection the next transaction borrows
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(StorageError, match="writing"), store.transaction():
        store._write_each([("INSERT INTO child (p) VALUES (?)", (7,))])
    assert store._query("SELECT COUNT(*) FROM child") == [(0,)]
    with store.transaction():  # and the store goes on
        store.set_meta("after", "ok")
    assert store.get_meta("after") == "ok"
    store.close()


def _audited_ledger(tmp_path: Path) -> tuple[Path, object]:
    w = ih.world(tmp_path)
    g = w.append(w.grant(max_uses=2))
    w.clock.advance(1)
    w.decide(w.invoke(w.agent, g.id))
    w.log.checkpoint()
    log_key = w.log.log_key
    w.close()
    return w.db, log_key


def test_the_audit_runs_sqlites_integrity_check(tmp_path: Path):
    """Regression: an index whose entries no longer match its table (what flipped bytes
    in an index page look like) passed the audit, while queries skipped rows and the
    writer's "already in the log?" lookup could miss an entry."""
    from lineage.ledger.audit import AuditFailure, audit

    db, log_key = _audited_ledger(tmp_path)
    assert audit(db, log_key).size > 3
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA writable_schema = ON")  # the index now claims another column
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX refs_kind ON refs (time, idx)' "
        "WHERE name = 'refs_kind'"
    )
    conn.commit()
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(db, log_key)
    assert info.value.what == "database" and "integrity check" in str(info.value)


def test_the_audit_checks_each_leafs_stored_kind_against_its_entry(tmp_path: Path):
    from lineage.ledger.audit import AuditFailure, audit
    from tests.conftest import drop_triggers, raw_connection

    db, log_key = _audited_ledger(tmp_path)
    conn = raw_connection(db)
    drop_triggers(conn)
    conn.execute("UPDATE leaves SET kind = 'policy' WHERE kind = 'grant'")
    conn.commit()
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(db, log_key)
    assert info.value.what == "entry" and "stored kind 'policy'" in str(info.value)


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ("UPDATE chain_state SET time = 'noon'", lambda state, cid: state.time),
        ("UPDATE chain_state SET size = 'x'", lambda state, cid: state.size),
        ("UPDATE credentials SET uses = 'many'", lambda state, cid: state.use_count(cid)),
        ("UPDATE credentials SET revoked = 'x'", lambda state, cid: state.revoked_at(cid)),
    ],
)
def test_a_state_row_of_the_wrong_type_is_damage_not_a_500(tmp_path: Path, sql: str, read):
    """Regression (fault harness): a byte flip in chain_state made a counter NULL and the
    next append raised TypeError in the request's thread (a 500); the audit raised too.
    Now the audit fails by name, and the rules see damage (503 ledger_damaged)."""
    w = ih.world(tmp_path)
    grant = w.append(w.grant())
    w.close()
    conn = sqlite3.connect(w.db, isolation_level=None)
    conn.execute(sql)
    conn.close()
    with pytest.raises(AuditFailure):
        audit(w.db, w.log.log_key)
    log = ih.reopen(w)
    try:
        with pytest.raises(Damaged):
            read(log.store.state(RecordCache()), grant.id)
    finally:
        log.close()


def test_an_entry_stored_as_text_fails_the_audit_by_name(tmp_path: Path):
    """Regression (fault harness): a byte flip turned a leaf's entry into TEXT and the
    audit raised TypeError (a traceback) instead of naming the leaf."""
    w = ih.world(tmp_path)
    w.append(w.grant())
    w.close()
    conn = sqlite3.connect(w.db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS leaves_no_update")
    conn.execute("UPDATE leaves SET entry = CAST(entry AS TEXT) WHERE idx = 1")
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(w.db, w.log.log_key)
    assert "index 1" in str(info.value)


def test_the_audit_refuses_a_sidecar_whose_checkpoint_row_was_deleted(tmp_path: Path):
    """Regression (fault harness, "latest checkpoint row deleted", 0 of 30): each
    checkpoint verifies alone, so a deleted row contradicted nothing. Publication
    stores a checkpoint before it writes the sidecar: the database must hold it."""
    w = ih.world(tmp_path)
    w.append(w.grant())
    w.close()
    audit(w.db, w.log.log_key)  # a clean ledger passes
    conn = sqlite3.connect(w.db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
    conn.execute("DELETE FROM checkpoints WHERE size = (SELECT MAX(size) FROM checkpoints)")
    conn.close()
    with pytest.raises(AuditFailure, match="does not hold: a checkpoint row was deleted"):
        audit(w.db, w.log.log_key)
