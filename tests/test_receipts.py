"""Receipts (FORMAT.md §9.4): every acknowledged append is evidence the client can keep.

Regression (the faults issue): an append was acknowledged with its index alone, covered
by a checkpoint up to a second later or never, so acknowledged entries could be deleted
or re-timed in the file unnoticed. Now the answer carries a checkpoint signed in the
group commit that wrote the entry, and the entry's inclusion proof against it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from lineage.ledger.checkpoints import write_sidecar
from lineage.ledger.errors import Damaged
from lineage.ledger.ledger import open_ledger, sidecar_path
from lineage.verifier.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from lineage.verifier.cli import main as verify_main
from lineage.verifier.errors import ProofError
from lineage.verifier.merkle import MemoryTree
from lineage.verifier.receipt import (
    parse_receipt,
    verify_receipt,
    verify_receipt_still_included,
)
from tests import issuance_helpers as ih
from tests.api_server import running
from tests.conftest import policy, raw_connection

ROOT = Path(__file__).resolve().parent.parent
RECEIPTS = ROOT / "fixtures" / "receipts"
EXPECTED = json.loads((RECEIPTS / "expected.json").read_text())
KEY = str(ROOT / "fixtures" / "log.vkey")


# -- the fixtures, through the command line ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in RECEIPTS.glob("valid-*.json")))
def test_valid_receipts_verify(name, capsys):
    assert verify_main([str(RECEIPTS / name), "--receipt", "--log-key", KEY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["origin"] == "lineage.example/fixtures"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_receipts_fail_for_the_expected_reason(name, capsys):
    assert verify_main([str(RECEIPTS / name), "--receipt", "--log-key", KEY, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert result["check"] == EXPECTED[name]["check"], result["error"]
    assert EXPECTED[name]["detail"] in result["error"]


def test_every_invalid_receipt_fixture_has_an_expectation():
    assert sorted(p.name for p in RECEIPTS.glob("invalid-*.json")) == sorted(EXPECTED)


def test_a_receipt_for_another_entry_is_refused(capsys):
    path = str(RECEIPTS / "valid-access.json")
    assert verify_main([path, "--receipt", "--log-key", KEY, "--entry-id", "0" * 64]) == 1
    assert "not " + "0" * 64 in capsys.readouterr().err


# -- the library: each append's receipt, built once per group commit ------------------------


def test_each_append_in_a_group_commit_shares_one_checkpoint(tmp_path: Path):
    w = ih.world(tmp_path)
    entries = [policy(w.log, v) for v in range(1, 41)]
    stored_before = sum(1 for _ in w.log.store.checkpoints())
    results = w.log.append_many(entries)
    notes = {r.receipt.checkpoint for r in results}
    stored_after = sum(1 for _ in w.log.store.checkpoints())
    # one signature per group commit: fewer checkpoints than appends
    assert len(notes) == stored_after - stored_before < len(entries)
    for r in results:
        v = verify_receipt(r.receipt.to_json(), w.log.log_key, r.id)
        assert v.index == r.index and v.leaf.entry.id == r.id
    w.close()


def test_concurrent_appends_each_get_a_receipt_that_verifies(tmp_path: Path):
    w = ih.world(tmp_path)
    out, errors = [], []

    def append(v: int) -> None:
        try:
            out.append(w.log.append(w.grant(expires_at=w.now + 100 + v)))
        except Exception as exc:  # pragma: no cover - a failure is what this test reports
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(v,)) for v in range(1, 33)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in out:
        verify_receipt(r.receipt.to_json(), w.log.log_key, r.id)
    # once closed, the sidecar names the largest tree any group commit signed
    size = w.log.size
    w.close()
    sidecar = open_checkpoint(sidecar_path(w.db).read_bytes(), w.log.log_key).checkpoint
    assert sidecar.size == size


def test_a_receipt_catches_a_log_that_dropped_its_entry(tmp_path: Path):
    """The receipt's whole point: the log deletes the acknowledged entry (and re-signs
    a tree without it, as an operator with the log key could); the client's receipt and
    the new checkpoint admit no consistency proof."""
    w = ih.world(tmp_path)
    kept = w.log.append(policy(w.log, 1)).receipt
    dropped = w.log.append(policy(w.log, 2))
    receipt = verify_receipt(dropped.receipt.to_json(), w.log.log_key, dropped.id)
    # An honest log: the later checkpoint extends the receipt's.
    w.log.append(policy(w.log, 3))
    later = open_checkpoint(w.log.checkpoint(), w.log.log_key)
    proof = w.log.consistency_proof(receipt.checkpoint.checkpoint.size, later.checkpoint.size)
    verify_receipt_still_included(receipt, later, proof)
    # A forked log, signed with the log key: the same leaves without the dropped one.
    leaves = [leaf for i, leaf in w.log.leaves() if i != dropped.index]
    tree = MemoryTree(leaf.hash for leaf in leaves)
    size = len(leaves)
    note = sign_checkpoint(Checkpoint(w.log.origin, size, tree.root(size)), w.log.keys.log)
    fork_cp = open_checkpoint(note, w.log.log_key)
    m = receipt.checkpoint.checkpoint.size
    assert size >= m
    with pytest.raises(ProofError):
        verify_receipt_still_included(receipt, fork_cp, tree.consistency_proof(m, size))
    # ... while the receipt of an entry the fork kept still proves it was acknowledged
    assert verify_receipt(kept.to_json(), w.log.log_key).index == kept.index
    w.close()


def test_a_receipt_that_does_not_verify_is_never_handed_out(tmp_path: Path):
    """A stored tree node changed under the writer: the group commit refuses to sign a
    tree that does not extend the last checkpoint (nothing is written, 503), and the
    ledger says it is damaged."""
    w = ih.world(tmp_path)
    w.log.append(policy(w.log, 1))
    conn = raw_connection(w.db)
    conn.execute("DROP TRIGGER IF EXISTS nodes_no_update")
    conn.execute("UPDATE nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 0")
    conn.commit()
    conn.close()
    size = w.log.size
    with pytest.raises(Damaged):
        w.log.append(policy(w.log, 2))
    assert w.log.size == size  # nothing written
    assert w.log.damaged and "does not extend" in w.log.damaged
    assert w.log.counters["proof_failures"] >= 1
    w.close()


# -- HTTP: the append's answer is the receipt -------------------------------------------------


def test_http_appends_answer_with_receipts_that_verify_offline(tmp_path: Path):
    with running(tmp_path) as srv:
        w_entry = policy(srv.log, 7)
        r = httpx.post(srv.url("/v1/entries"), content=w_entry.raw)
        assert r.status_code == 201, r.text
        body = r.json()
        receipt_file = tmp_path / "receipt.json"
        receipt_file.write_text(json.dumps(body["receipt"]))
        vkey = tmp_path / "log.vkey"
        vkey.write_text(srv.log.log_key.vkey + "\n")
        args = [str(receipt_file), "--receipt", "--log-key", str(vkey), "--entry-id", body["id"]]
        assert verify_main(args) == 0
        again = httpx.post(srv.url("/v1/entries"), content=w_entry.raw)
        assert again.status_code == 200
        assert parse_receipt(again.json()["receipt"]).index == body["index"]


def test_proofs_are_checked_before_they_are_served(tmp_path: Path):
    """Regression: with a corrupted tree node the server served inclusion proofs that
    did not verify. Now it refuses (503 ledger_damaged), counts it, and /healthz says
    the ledger is damaged."""
    with running(tmp_path) as srv:
        for v in range(1, 9):
            srv.log.append(policy(srv.log, v))
        size = srv.log.size
        db = srv.log.store.path
        conn = sqlite3.connect(db)
        conn.execute("DROP TRIGGER IF EXISTS nodes_no_update")
        conn.execute("UPDATE nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 2")
        conn.commit()
        conn.close()
        ok = httpx.get(srv.url("/v1/log/proof/inclusion"), params={"index": 6, "tree_size": 4})
        assert ok.status_code == 400  # index beyond the tree: the caller's mistake
        bad = httpx.get(srv.url("/v1/log/proof/inclusion"), params={"index": 3, "tree_size": size})
        assert bad.status_code == 503 and bad.json()["error"] == "ledger_damaged"
        health = httpx.get(srv.url("/healthz")).json()
        assert health["status"] == "damaged" and "does not verify" in health["damage"]
        metrics = httpx.get(srv.url("/metrics")).text
        assert "lineage_proof_failures_total 1.0" in metrics or "lineage_proof_failures 1.0" in (
            metrics
        )


def test_a_missing_leaf_below_the_size_is_damage_not_404(tmp_path: Path):
    w = ih.world(tmp_path)
    w.log.append(policy(w.log, 1))
    w.log.append(policy(w.log, 2))
    copy = tmp_path / "copy.db"
    w.close()
    shutil.copy(w.db, copy)
    shutil.copy(sidecar_path(w.db), sidecar_path(copy))
    conn = raw_connection(copy)
    conn.execute("DROP TRIGGER IF EXISTS leaves_no_delete")
    conn.execute("DELETE FROM leaves WHERE idx = 1")
    conn.commit()
    conn.close()
    log = open_ledger(copy, w.keys, clock=w.clock)
    try:
        with pytest.raises(Damaged, match="index 1 is missing"):
            log.leaf(1)
        assert log.damaged
    finally:
        log.close()


def test_the_sidecar_never_goes_back_to_a_smaller_tree(tmp_path: Path):
    """Regression: two processes write the sidecar after their own commits, and the one
    that committed the larger tree could write first; the sidecar then named an older
    checkpoint, and a database rolled back to between the two went unnoticed."""
    w = ih.world(tmp_path)
    small = w.log.checkpoint()
    w.log.append(policy(w.log, 1))
    large = w.log.checkpoint()
    path = tmp_path / "side.checkpoint"
    write_sidecar(path, large)
    write_sidecar(path, small)  # the slower writer, late
    assert path.read_bytes() == large
    w.close()
