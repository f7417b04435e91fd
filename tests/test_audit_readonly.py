"""``lineage verify --db`` on read-only media: the audit opens the file read-only and
never writes (no -wal or -shm created, no checkpoint, no chmod).

Regression: a read-only copy of a ledger could not be audited. A WAL-mode database is
read through its ``-wal`` and ``-shm``, which SQLite creates beside the file if they
are absent; on read-only media it cannot, and the audit failed with "unable to open
database file", printed as ``FAIL database: ...``, like tampering.

Each case copies a real ledger (and its checkpoint sidecar) to a directory with no
write bits (root ignores them: the audit must not) or to a tmpfs remounted read-only,
which needs root; without it those cases are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.ledger.audit import AuditFailure, CannotOpen, audit
from lineage.ledger.cli import app
from lineage.ledger.ledger import init_ledger, sidecar_path
from lineage.ledger.log import Log
from lineage.verifier.note import Verifier
from tests.conftest import ORIGIN, FixedClock, close, policy

SIZE = 9  # the genesis and 8 policy entries


@dataclass
class Media:
    path: Path
    seal: Callable[[], None]  # remount read-only


def _files(db: Path) -> list[Path]:
    return [db.with_name(db.name + s) for s in ("", "-wal", "-shm")] + [sidecar_path(db)]


def _snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file in ``directory``: its mode and bytes."""
    return {p.name: (p.stat().st_mode, p.read_bytes()) for p in sorted(directory.iterdir())}


def _open_ledger_with_wal(tmp_path: Path) -> Log:
    """A ledger still open: its last appends are frames in the -wal, not yet in the file."""
    (tmp_path / "live").mkdir()
    log = init_ledger(
        tmp_path / "live" / "l.db", tmp_path / "keys", origin=ORIGIN, clock=FixedClock()
    )
    log.append_many([policy(log, v) for v in range(1, SIZE)])
    log.checkpoint()
    return log


def _closed_ledger(tmp_path: Path) -> tuple[Path, Verifier]:
    log = _open_ledger_with_wal(tmp_path)
    db, key = log.store.path, log.log_key
    close(log)  # the last connection checkpoints the -wal into the file and removes it
    assert not db.with_name(db.name + "-wal").exists()
    assert sidecar_path(db).exists()
    return db, key


def _copy(db: Path, to: Path, *suffixes: str) -> Path:
    """Copy the database, its sidecar and the side files named by ``suffixes``."""
    to.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".checkpoint", *suffixes):
        shutil.copy2(db.with_name(db.name + suffix), to / (db.name + suffix))
    return to / db.name


def _verify(db: Path, key: Verifier, *extra: str):
    return CliRunner().invoke(app, ["verify", "--db", str(db), "--log-key", key.vkey, *extra])


def _passes(db: Path, key: Verifier) -> None:
    result = _verify(db, key)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK  {db}: {SIZE} leaves"), result.output


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "ro"
    directory.mkdir()
    yield directory
    for path in [directory, *directory.iterdir()]:  # let tmp_path be cleaned up
        path.chmod(path.stat().st_mode | 0o200)


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Media]:
    """A tmpfs to copy files to, then ``seal()`` (remount read-only)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("a read-only mount needs root and mount(8): not tested here")
    path = tmp_path / "media"
    path.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs was refused ({done.stderr.strip()}): not tested here")

    def seal() -> None:
        done = subprocess.run(
            [mount, "-o", "remount,ro", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"remounting read-only was refused ({done.stderr.strip()})")
        assert not os.access(path, os.W_OK)

    try:
        yield Media(path, seal)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_copy_in_a_directory_without_write_bits_is_audited_without_writing(
    tmp_path: Path, read_only_dir: Path
):
    db, key = _closed_ledger(tmp_path)
    copy = _copy(db, read_only_dir)
    for path in [*read_only_dir.iterdir(), read_only_dir]:
        path.chmod(path.stat().st_mode & ~0o222)  # chmod -R a-w
    before = _snapshot(read_only_dir)
    _passes(copy, key)
    assert _snapshot(read_only_dir) == before  # no -wal, no -shm, no chmod, same bytes


@pytest.mark.parametrize("side_files", [(), ("-wal",)], ids=["file-only", "empty-wal"])
def test_a_copy_on_a_read_only_mount_is_audited(
    tmp_path: Path, media: Media, side_files: tuple[str, ...]
):
    db, key = _closed_ledger(tmp_path)
    for suffix in side_files:  # a -wal that holds nothing: left by a clean checkpoint
        db.with_name(db.name + suffix).write_bytes(b"")
    copy = _copy(db, media.path, *side_files)
    media.seal()
    _passes(copy, key)
    assert audit(copy, key).size == SIZE


def test_a_live_copy_with_its_wal_and_shm_on_a_read_only_mount_is_audited(
    tmp_path: Path, media: Media
):
    """The -wal's frames are read (through the copied -shm), not skipped."""
    log = _open_ledger_with_wal(tmp_path)
    try:
        db, key = log.store.path, log.log_key
        copy = _copy(db, media.path, "-wal", "-shm")
    finally:
        close(log)
    assert copy.with_name("l.db-wal").stat().st_size > 0
    media.seal()
    _passes(copy, key)


def test_a_wal_with_commits_but_no_shm_on_a_read_only_mount_cannot_be_opened(
    tmp_path: Path, media: Media
):
    """Opening it immutable would skip the -wal's commits and fail the audit for them:
    the audit refuses to open it, and says so, not as a fault of the file."""
    log = _open_ledger_with_wal(tmp_path)
    try:
        db, key = log.store.path, log.log_key
        copy = _copy(db, media.path, "-wal")
    finally:
        close(log)
    media.seal()
    with pytest.raises(CannotOpen, match=r"cannot open .* read-only: l\.db-wal may hold commits"):
        audit(copy, key)
    result = _verify(copy, key)
    assert result.exit_code == 1
    assert "cannot open" in result.output and "FAIL" not in result.output, result.output
    out = json.loads(_verify(copy, key, "--json").output.splitlines()[0])
    assert (out["ok"], out["check"]) == (False, "open")


def test_the_audit_of_a_live_ledger_does_not_checkpoint_its_wal(tmp_path: Path):
    log = _open_ledger_with_wal(tmp_path)
    try:
        db, key = log.store.path, log.log_key
        before = {p: (p.stat().st_mode, p.read_bytes()) for p in _files(db)[:2]}
        assert audit(db, key).size == SIZE
        assert {p: (p.stat().st_mode, p.read_bytes()) for p in _files(db)[:2]} == before
    finally:
        close(log)


def test_a_path_that_cannot_be_opened_is_not_reported_as_tampering(tmp_path: Path):
    _, key = _closed_ledger(tmp_path)
    directory = tmp_path / "a-directory.db"
    directory.mkdir()
    with pytest.raises(CannotOpen, match=r"cannot open .* read-only: it is a directory"):
        audit(directory, key)
    result = _verify(directory, key)
    assert result.exit_code == 1 and "FAIL" not in result.output, result.output
    junk = tmp_path / "junk.db"  # readable, but not a database: that is a fault of the file
    junk.write_bytes(b"not sqlite at all " * 200)
    with pytest.raises(AuditFailure):
        audit(junk, key)
