"""Several processes on one database file from its first moment (the chain-state issue).

Regressions: six processes opening a fresh database at once failed 10 of 10 trials with
``table meta already exists`` (the schema version was read outside the write lock); two
processes publishing checkpoints wrote the sidecar through one shared ``.tmp`` name and
could tear it, and published checkpoints outside any transaction.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lineage.ledger.audit import audit
from lineage.ledger.checkpoints import write_atomic
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.store import SCHEMA_VERSION, SQLiteStore
from lineage.verifier.checkpoint import open_checkpoint
from tests.conftest import key_add

PROCESSES = 8

pytestmark = pytest.mark.slow  # spawns processes: make test runs it, make test-fast does not


def _child(target: Callable, args: tuple, start, stop, results) -> None:
    """Wait for the start, run ``target(*args, stop)``, report ("ok", value) or the error."""
    start.wait(30)
    try:
        results.put(("ok", target(*args, stop)))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def together(
    target: Callable, arg_lists: Sequence[tuple], meanwhile: Callable[[], None] = lambda: None
) -> list[tuple[str, Any]]:
    """Run ``target`` in one spawned process per argument tuple, all released at once;
    ``meanwhile`` runs here before they are told to stop. Their outcomes, in any order."""
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(target, a, start, stop, results)) for a in arg_lists]
    for p in procs:
        p.start()
    start.set()
    meanwhile()
    stop.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return outcomes


def _open(path: str, stop) -> int:
    store = SQLiteStore(path, create=True)
    try:
        return store.size()
    finally:
        store.close()


@pytest.mark.parametrize("trial", range(5))
def test_six_or_more_processes_open_a_fresh_database_at_once(tmp_path: Path, trial: int):
    path = tmp_path / f"fresh-{trial}.db"
    outcomes = together(_open, [(str(path),)] * PROCESSES)
    assert outcomes == [("ok", 0)] * PROCESSES, outcomes
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert sorted(tables) == sorted(set(tables)) and "leaves" in tables
    conn.close()


def _publish(path: str, tag: int, stop) -> None:
    for n in range(200):
        write_atomic(Path(path), f"{tag}:{n}\n".encode() * 50)


def test_concurrent_sidecar_writes_never_tear(tmp_path: Path):
    sidecar = tmp_path / "lineage.db.checkpoint"
    outcomes = together(_publish, [(str(sidecar), t) for t in range(4)])
    assert outcomes == [("ok", None)] * 4
    lines = sidecar.read_text().splitlines()
    assert len(lines) == 50 and len(set(lines)) == 1, "a torn sidecar"
    assert [p.name for p in tmp_path.iterdir()] == [sidecar.name], "a temporary file was left"
    assert oct(sidecar.stat().st_mode & 0o777) == "0o644"


def _checkpoints(db: str, keys: str, stop) -> list[int]:
    log = open_ledger(db, keys)
    try:
        sizes = []
        while not stop.is_set():
            note = log.checkpoint()
            sizes.append(open_checkpoint(note, log.log_key, log.origin).checkpoint.size)
        return sizes
    finally:
        log.close()


def test_processes_publishing_checkpoints_at_once_never_collide(tmp_path: Path):
    """Regression (chain-state issue): checkpoints were published outside any transaction,
    so two processes could sign and store the same size, or an older one after a newer."""
    db, keys = tmp_path / "lineage.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin="test.example/checkpoints")

    def append() -> None:
        for n in range(300):
            log.append(key_add(log, n))

    outcomes = together(_checkpoints, [(str(db), str(keys))] * 4, meanwhile=append)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    for _, sizes in outcomes:
        assert sizes == sorted(sizes), sizes  # each process saw the log only grow
    log.checkpoint()
    stored = [size for size, _, _ in log.store.checkpoints()]
    assert stored == sorted(set(stored))
    size = log.size
    log.close()
    assert audit(db, log.log_key).size == size
