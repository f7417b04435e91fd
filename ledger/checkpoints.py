"""Publishing checkpoints, and refusing to open a log that contradicts one it published.

A checkpoint (C2SP tlog-checkpoint, signed by the log key) is published only
after a consistency proof from the previous one checks against the stored
tree, so the log never signs two inconsistent tree heads. Each is kept in the
database and, atomically, in a sidecar file beside it: the sidecar is the
witness outside the file that catches an older copy of the database put back.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from lineage.verifier.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    open_checkpoint,
    sign_checkpoint,
)
from lineage.verifier.errors import FormatError, ProofError, SignatureError
from lineage.verifier.merkle import HashReader, consistency_proof, tree_root, verify_consistency
from lineage.verifier.note import Signer, Verifier

from .errors import Damaged, RollbackError, StorageError
from .store import Store

__all__ = [
    "check_published",
    "checkpoint_of",
    "opened",
    "publish",
    "publish_locked",
    "write_atomic",
    "write_sidecar",
]


def check_published(store: Store, log_key: Verifier, note: bytes, what: str) -> None:
    """Refuse a store that contradicts ``note``, a checkpoint the log published."""
    size = store.size()
    try:
        cp = open_checkpoint(note, log_key, log_key.name).checkpoint
    except (FormatError, SignatureError) as exc:
        raise StorageError(f"{what} does not verify under the log key: {exc}") from None
    if cp.size > size:
        raise RollbackError(
            f"the database holds {size} leaves but {what} published {cp.size}: "
            "it was rolled back; refusing to fork the log"
        )
    if cp.size and tree_root(cp.size, store) != cp.root_hash:
        raise StorageError(f"the stored tree disagrees with {what} at size {cp.size}")


def publish(store: Store, signer: Signer, sidecar: Path | None, now: int) -> bytes:
    """Sign, store and publish a checkpoint of the store's size; the latest if unchanged.

    The size is read, the checkpoint signed and stored in one write transaction, so two
    processes publishing at once never sign the same size twice nor store a checkpoint
    older than one already stored. The sidecar is written after the commit: it never
    names a checkpoint the database does not hold.
    """
    with store.transaction():
        note = publish_locked(store, signer, store, store.size(), now)
    if sidecar is not None:
        write_sidecar(sidecar, note)
    return note


def publish_locked(store: Store, signer: Signer, reader: HashReader, size: int, now: int) -> bytes:
    """Inside a write transaction: sign and store a checkpoint of ``size`` (the tree as
    ``reader`` holds it), or return the latest stored one if it already covers ``size``.

    The new tree must extend the latest checkpoint (a consistency proof, checked): the
    log never signs two inconsistent tree heads, and a stored node that was changed
    shows here, before anything built on it is acknowledged.
    """
    latest = store.latest_checkpoint()
    if latest is not None and latest[0] >= size:
        return latest[1]
    root = tree_root(size, reader)
    if latest is not None and latest[0] > 0:
        old = checkpoint_of(latest[1], signer.verifier)
        proof = consistency_proof(old.size, size, reader)
        try:
            verify_consistency(old.size, size, old.root_hash, root, proof)
        except ProofError as exc:
            raise Damaged(
                f"the stored tree does not extend the checkpoint of size {old.size}: {exc}"
            ) from None
    body = Checkpoint(signer.name, size, root)
    note = sign_checkpoint(body, signer)
    store.add_checkpoint(size, root, note, now)
    with _signed_lock:  # this process made it: its body needs no verifying
        _signed[(note, signer.verifier.vkey)] = body
        while len(_signed) > 64:
            _signed.popitem(last=False)
    return note


_signed: OrderedDict[tuple[bytes, str], Checkpoint] = OrderedDict()
_signed_lock = threading.Lock()


def checkpoint_of(note: bytes, log_key: Verifier) -> Checkpoint:
    """The body of ``note``, a checkpoint of the log: one this process just signed as it
    signed it, any other once its signature verifies under ``log_key``."""
    body = _signed.get((note, log_key.vkey))
    if body is not None:
        return body
    return opened(note, log_key).checkpoint


@functools.lru_cache(maxsize=64)
def opened(note: bytes, log_key: Verifier) -> SignedCheckpoint:
    """``open_checkpoint`` for the log's own notes, remembered: each is verified once."""
    return open_checkpoint(note, log_key, log_key.name)


def sidecar_size(data: bytes) -> int:
    """The tree size a sidecar's note names (its second line), -1 if unreadable."""
    lines = data.split(b"\n", 2)
    try:
        return int(lines[1]) if len(lines) > 2 and lines[1].isdigit() else -1
    except ValueError:
        return -1


def write_sidecar(path: Path, note: bytes) -> None:
    """Write ``note`` as the sidecar unless it already names a larger tree.

    Several processes publish; each writes after its own commit, and the one that
    committed the larger tree may write first. Under an exclusive lock beside the
    sidecar, the sidecar only ever grows.
    """
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = b""
        if sidecar_size(current) >= sidecar_size(note):
            return
        write_atomic(path, note)
    finally:
        os.close(fd)  # releases the lock


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably: a reader sees the old or the new, whole.

    The temporary file has a name of its own (several processes may publish at once,
    and a shared name let two writers tear it), and the directory is synced after the
    rename so that the new name survives a crash too.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # public data (mkstemp creates 0600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
