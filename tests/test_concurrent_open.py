"""Several processes on one database file from its first moment (the chain-state issue).

Regressions: six processes opening a fresh database at once failed 10 of 10 trials with
``table meta already exists`` (the schema version was read outside the write lock); two
processes publishing checkpoints wrote the sidecar through one shared ``.tmp`` name and
could tear it.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from lineage.ledger.checkpoints import write_atomic
from lineage.ledger.store import SCHEMA_VERSION, SQLiteStore

PROCESSES = 8

pytestmark = pytest.mark.slow  # spawns processes: make test runs it, make test-fast does not


def _open(path: str, start, results) -> None:
    start.wait(30)
    try:
        store = SQLiteStore(path, create=True)
        results.put(("ok", store.size()))
        store.close()
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("trial", range(5))
def test_six_or_more_processes_open_a_fresh_database_at_once(tmp_path: Path, trial: int):
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    path = tmp_path / f"fresh-{trial}.db"
    procs = [ctx.Process(target=_open, args=(str(path), start, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert outcomes == [("ok", 0)] * PROCESSES, outcomes
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert sorted(tables) == sorted(set(tables)) and "leaves" in tables
    conn.close()


def _publish(path: str, tag: int, start, results) -> None:
    start.wait(30)
    try:
        for n in range(200):
            write_atomic(Path(path), f"{tag}:{n}\n".encode() * 50)
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_sidecar_writes_never_tear(tmp_path: Path):
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    sidecar = tmp_path / "lineage.db.checkpoint"
    procs = [ctx.Process(target=_publish, args=(str(sidecar), t, start, results)) for t in range(4)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert outcomes == ["ok"] * 4
    lines = sidecar.read_text().splitlines()
    assert len(lines) == 50 and len(set(lines)) == 1, "a torn sidecar"
    assert [p.name for p in tmp_path.iterdir()] == [sidecar.name], "a temporary file was left"
    assert oct(sidecar.stat().st_mode & 0o777) == "0o644"


def _checkpoints(db: str, keys: str, start, stop, results) -> None:
    from lineage.ledger.ledger import open_ledger

    log = open_ledger(db, keys)
    start.wait(30)
    try:
        sizes = []
        while not stop.is_set():
            sizes.append(open_checkpoint_size(log.checkpoint(), log))
        results.put(("ok", sizes))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        log.close()


def open_checkpoint_size(note: bytes, log) -> int:
    from lineage.verifier.checkpoint import open_checkpoint

    return open_checkpoint(note, log.log_key, log.origin).checkpoint.size


def test_processes_publishing_checkpoints_at_once_never_collide(tmp_path: Path):
    """Regression (chain-state issue): checkpoints were published outside any transaction,
    so two processes could sign and store the same size, or an older one after a newer."""
    from lineage.ledger.audit import audit
    from lineage.ledger.ledger import init_ledger
    from tests.conftest import key_add

    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin="test.example/checkpoints")
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_checkpoints, args=(str(db), str(keys), start, stop, results))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    start.set()
    for n in range(300):
        log.append(key_add(log, n))
    stop.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    for _, sizes in outcomes:
        assert sizes == sorted(sizes), sizes  # each process saw the log only grow
    log.checkpoint()
    stored = [size for size, _, _ in log.store.checkpoints()]
    assert stored == sorted(set(stored))
    size = log.size
    log.close()
    assert audit(db, log.log_key).size == size
