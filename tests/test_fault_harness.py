"""The fault harness at CI sizes: the ledger's file mutated, its disk full, its sidecar lost,
its server killed.

The harness is bench/fault_bench.py (loaded here by path: bench/ is not a package); this
runs its short sizes, and the checks are its own. ``.venv/bin/python bench/fault_bench.py``
is the long run; docs/RELIABILITY.md describes both and holds a long run's figures.

The defects the harness found are the tests at the end, each reproducing one exactly;
all are fixed, and they guard against their return.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from lineage.ledger.audit import AuditFailure, audit
from lineage.ledger.errors import StorageError
from lineage.ledger.ledger import open_ledger
from tests import issuance_helpers as ih
from tests.api_server import running
from tests.bench_modules import load_bench
from tests.conftest import policy

ROOT = Path(__file__).resolve().parent.parent


fb = load_bench("fault_bench")
SEED = 20261130


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    """A ledger with every kind of entry (fault_bench.build_ledger), built once."""
    return fb.build_ledger(tmp_path_factory.mktemp("faults"), fb.SHORT["rounds"], SEED)


# -- the harness itself ----------------------------------------------------------------------


def test_the_ledger_under_test_has_every_kind_of_row(base):
    mix = base.mix
    for kind in ("genesis", "key", "policy", "grant", "delegation", "access", "revocation"):
        assert mix.get(f"leaf: {kind}", 0) > 0, mix
    assert mix["decision: allow"] > 0 and any(k.startswith("decision: deny") for k in mix), mix
    for table in fb.TABLES:  # every table the mutations edit has rows to edit
        assert mix.get(f"rows: {table}", 0) > 0, (table, mix)
    assert mix["free pages"] > 0, mix  # the DPoP replay cache freed pages: a freelist to flip
    assert len(base.older) == 3 and base.later.wal


def test_the_byte_classifier_tells_no_effect_from_unsigned_from_schema_from_data(base, tmp_path):
    db = base.main.put(tmp_path)
    before = fb.content(db)
    where = fb.regions(db)
    assert where.ranges["freelist"] and where.ranges["leaves"]
    unused = [
        at
        for at in range(where.size)
        if where.owner.get(at // where.page_size + 1) == "leaves"
        and where.where(at).endswith("(unused space)")
    ]
    assert fb.effect(before, fb.content(db)) == "none"
    for table, expected in (("api_tokens", "unsigned"), ("credentials", "changed")):
        conn = sqlite3.connect(db, isolation_level=None)
        column = {"api_tokens": "name", "credentials": "principal"}[table]
        conn.execute(f"UPDATE {table} SET {column} = 'x' WHERE id = (SELECT MIN(id) FROM {table})")
        conn.close()
        assert fb.effect(before, fb.content(db)) == expected
        base.main.put(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    fb._drop_triggers(conn)
    conn.close()
    assert fb.effect(before, fb.content(db)) == "schema"
    if unused:  # a byte of a leaves page that no cell uses
        base.main.put(tmp_path)
        db.write_bytes(fb.Ctx(tmp_path, base, fb.random.Random(1)).flip(base.main.db, unused[0]))
        assert fb.effect(before, fb.content(db)) == "none"


# -- the mutation campaign -------------------------------------------------------------------


def test_every_mutation_class_is_detected_or_documented_out_of_reach(base):
    """Each class twice on a fresh copy; the control (untouched copies) is never refused."""
    results = fb.run_mutations(
        base, instances=fb.SHORT["instances"], flips=0, anywhere=0, seed=SEED
    )
    table = fb.mutation_table(results)
    classes = [c for c in fb.mutation_classes() if c.when(base)]
    assert len(results) == len(classes) >= 40, table
    for r in results:
        assert r.instances == fb.SHORT["instances"], table
        if r.expect == "clean":
            assert r.detected == 0, f"{r.name}: {r.examples}"
        elif r.expect == "detected":
            assert r.detected == r.instances, f"{r.name}: {r.undetected}\n{table}"
        else:
            assert r.expect == "out of reach" and r.why, r.name  # documented, with the reason
    by_name = {r.name: r for r in results}
    # what docs/RELIABILITY.md says of particular classes
    assert by_name["API token row added"].detected == 0  # unsigned: out of reach
    assert by_name["older copy and its sidecar put back together"].detected == 0
    rollback = by_name["older copy put back, no sidecar"]
    assert rollback.at_open == rollback.instances  # `lineage log trust LATEST` refuses it
    assert by_name["older copy put back, sidecar kept"].at_open == rollback.instances
    assert by_name["-wal deleted (last appends in it)"].at_open == rollback.instances


def test_byte_flips_are_detected_unless_they_change_nothing_signed(base):
    """Flips in every b-tree, the header and the free pages: detected, or no row read
    changed, or only what docs/RELIABILITY.md names (``fault_bench.IGNORED``) changed."""
    results = fb.run_mutations(
        base,
        instances=0,
        flips=fb.SHORT["flips"],
        anywhere=fb.SHORT["anywhere"],
        seed=SEED,
        only=lambda name: name.startswith("flip: "),
    )
    table = fb.mutation_table(results)
    names = {r.name for r in results}
    for region in ("leaves", "nodes", "checkpoints", "refs", "credentials", "freelist"):
        assert f"flip: {region}" in names, table
    assert "flip: file header" in names and "flip: anywhere in the file" in names
    assert [p for r in results for p in r.problems()] == [], table
    for name in ("flip: leaves", "flip: nodes", "flip: credentials", "flip: refs"):
        r = next(r for r in results if r.name == name)
        assert r.detected == r.effective, table  # signed or derived: every change is seen
    freelist = next(r for r in results if r.name == "flip: freelist")
    assert freelist.missed == 0 and freelist.ignored == {}, table


# -- full disk, restore, SIGKILL -------------------------------------------------------------


def test_a_full_disk_answers_503_and_loses_nothing(tmp_path: Path):
    report = fb.full_disk(tmp_path)
    if report.skipped is not None:
        pytest.skip(f"no small file system to fill: {report.skipped}")
    assert report.problems() == [], report
    assert report.full_at is not None and report.acked > 5, report  # it did fill
    assert any(k.startswith("503") for k in report.status), report.status
    assert set(report.while_full) == {"a small append", "POST /oauth/token", "POST /v1/access"}
    assert report.thread_alive_full and report.thread_alive_after
    assert report.health_answered > 0 and report.health_failed == 0
    assert report.audit["ok"] and report.audit["size"] >= report.acked


def test_a_restore_without_the_sidecar_appends_nothing_until_trusted(tmp_path: Path):
    report = fb.restore_without_sidecar(tmp_path, quick=True)
    assert report.problems() == [], report.steps
    assert report.old_size < report.latest_size
    assert len(report.steps) == 8


@pytest.mark.slow
def test_acknowledged_receipts_survive_sigkill(tmp_path: Path):
    result = fb.run_kills(
        tmp_path,
        kills=fb.SHORT["kills"],
        clients=fb.SHORT["clients"],
        seed=None,
        proof_sample=fb.SHORT["proof_sample"],  # every receipt is checked against the leaves
        uptime=(0.3, 1.2),
        startup_kill_rate=0.25,
        settle=1.0,
    )
    assert result.problems == [], result.summary
    assert result.kills == fb.SHORT["kills"] and result.restarts_checked >= 2, result.summary
    assert result.acked_entries >= 20, result.summary
    if result.receipts:  # the append answers carry receipts: each was checked after each restart
        assert result.receipt_checks >= result.receipts and result.proofs_checked > 0


# -- what the harness found ----------------------------------------------------------------
#
# Each was an exception that is not the ledger's own, found by a byte flip: a traceback
# from `lineage verify --db` or `lineage serve`, or a 500. All are fixed now and these are
# their regression tests.


def _closed_world(tmp_path: Path) -> ih.World:
    w = ih.world(tmp_path)
    w.close()
    return w


def _roles_not_json(db: Path) -> None:
    """What a flip inside ``chain_keys.roles`` leaves: text that is not JSON."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("""UPDATE chain_keys SET roles = '["oper' WHERE roles LIKE '%operator%'""")
    conn.close()


def test_a_chain_keys_row_that_is_not_json_fails_the_audit_by_name(tmp_path: Path):
    w = _closed_world(tmp_path)
    _roles_not_json(w.db)
    with pytest.raises(AuditFailure) as info:  # was json.JSONDecodeError: a traceback
        audit(w.db, w.log.log_key)
    assert info.value.what == "state"


def test_an_append_over_a_chain_keys_row_that_is_not_json_is_a_503(tmp_path: Path):
    with running(tmp_path) as srv:
        entry = policy(srv.log, 1)  # operator-signed: its signature check reads the row
        _roles_not_json(tmp_path / "lineage.db")
        r = httpx.post(
            srv.url("/v1/entries"),
            content=entry.raw,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 503, r.text  # was a 500


def test_a_schema_that_is_not_utf8_is_refused_by_name(tmp_path: Path):
    """A flip in ``sqlite_master`` that breaks a table's SQL with a byte that is not
    UTF-8: SQLite's error message quotes it; decoding that message raised
    ``UnicodeDecodeError`` out of the audit and out of opening the ledger."""
    w = _closed_world(tmp_path)
    conn = sqlite3.connect(w.db, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = CAST(X'435245B7544520' || CAST(substr(sql, 8) AS BLOB) "
        "AS TEXT) WHERE name = 'revoked_holders'"
    )
    conn.close()
    with pytest.raises(AuditFailure):
        audit(w.db, w.log.log_key)
    with pytest.raises(StorageError):
        open_ledger(w.db, w.keys)


def test_a_negative_chain_state_size_fails_the_audit(tmp_path: Path):
    """The one miss of a long run (at 88ab5c5): a flip of the high byte of
    ``chain_state.size`` made the 2-byte integer negative, and the audit, which compares
    the state when the replay reaches that size, never compared it."""
    w = ih.world(tmp_path)
    w.append(w.grant())
    w.close()
    conn = sqlite3.connect(w.db, isolation_level=None)
    conn.execute("UPDATE chain_state SET size = -32519")
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(w.db, w.log.log_key)
    assert info.value.what == "state"


def _entry_as_text(db: Path, index: int) -> None:
    """What a flip of a record's serial type does: the entry read back as TEXT."""
    conn = sqlite3.connect(db, isolation_level=None)
    fb._drop_triggers(conn)
    conn.execute("UPDATE leaves SET entry = CAST(entry AS TEXT) WHERE idx = ?", (index,))
    conn.close()


def test_an_entry_stored_as_text_fails_the_audit_by_name(tmp_path: Path):
    """A flip in a leaf's record header can make its entry TEXT: the audit raised
    ``TypeError`` (``leaf data must be bytes, not str``)."""
    w = _closed_world(tmp_path)
    _entry_as_text(w.db, 1)
    with pytest.raises(AuditFailure) as info:
        audit(w.db, w.log.log_key)
    assert info.value.what == "entry"


def test_an_inclusion_proof_over_an_entry_stored_as_text_is_not_a_500(tmp_path: Path):
    """The same leaf under a running server: ``GET /v1/log/entries/1`` answered 503
    ``ledger_damaged``, but ``GET /v1/log/proof/inclusion`` answered 500 (``TypeError``)."""
    with running(tmp_path) as srv:
        _entry_as_text(tmp_path / "lineage.db", 1)
        r = httpx.get(srv.url("/v1/log/proof/inclusion"), params={"index": 1, "tree_size": 2})
        assert r.status_code == 503, r.text


def test_a_first_append_over_a_chain_state_row_read_as_nulls_is_a_503(tmp_path: Path):
    """A flip in the cell pointer of ``chain_state``'s page: SQLite reads the row as NULLs
    (the audit fails ``database``). A server started on the file answered its first
    append 500 (``TypeError`` comparing None with an int, catching the state up)."""
    w = _closed_world(tmp_path)
    conn = sqlite3.connect(w.db, isolation_level=None)
    page = conn.execute("SELECT pageno FROM dbstat WHERE name = 'chain_state'").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with w.db.open("r+b") as f:
        f.seek((page - 1) * size + 8)  # the first cell pointer's high byte
        byte = f.read(1)[0]
        f.seek((page - 1) * size + 8)
        f.write(bytes([byte ^ 1]))
    now = fb.time.time()
    with fb.serving(w.db, w.keys, fb.Settings(), lambda: now) as (base, _):
        entry = w.grant(expires_at=int(now) + 600)
        r = httpx.post(
            base + "/v1/entries",
            content=entry.raw,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 503, r.text
