"""ledger/log.py, ledger/ledger.py and ledger/keys.py: appends, checkpoints, keys, reopening.

Every test runs a real ledger on a SQLite file under tmp_path (conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lineage.ledger.errors import ConfigError, LedgerError, RejectedEntry, StorageError
from lineage.ledger.keys import KeyRing
from lineage.ledger.ledger import init_ledger, open_ledger, sidecar_path
from lineage.ledger.log import Appended, Log
from lineage.verifier.chain import Replay
from lineage.verifier.checkpoint import open_checkpoint
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import SigningKey
from lineage.verifier.merkle import leaf_hash, verify_consistency, verify_inclusion
from lineage.verifier.note import Signer
from lineage.verifier.receipt import verify_receipt
from tests.conftest import ORIGIN, T0, FixedClock, close, key_add, policy, raw_connection


def _rows(db: Path) -> dict[str, int]:
    conn = raw_connection(db)
    try:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("leaves", "nodes", "checkpoints", "meta")
        }
    finally:
        conn.close()


# -- the genesis ----------------------------------------------------------------------------


def test_a_new_ledger_holds_its_genesis_and_first_checkpoint(log: Log, db: Path):
    assert log.size == 1
    genesis = log.leaf(0)
    assert genesis.entry.kind == "genesis"
    assert genesis.time == T0
    assert genesis.entry.obj["log_key"] == log.log_key.vkey
    assert genesis.entry.signed_by(log.keys.log_entry_key.public)
    cp = open_checkpoint(log.latest_checkpoint(), log.log_key, ORIGIN).checkpoint
    assert (cp.size, cp.root_hash) == (1, leaf_hash(genesis.raw))
    assert sidecar_path(db).read_bytes() == log.latest_checkpoint()
    assert log.store.get_meta("origin") == ORIGIN
    assert log.store.get_meta("log_key") == log.log_key.vkey
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_init_refuses_a_database_that_already_holds_a_ledger(log: Log, db: Path, keys: Path):
    with pytest.raises(StorageError, match="already holds a ledger"):
        init_ledger(db, keys, origin=ORIGIN)
    assert log.size == 1


def test_init_refuses_keys_of_another_origin(log: Log, tmp_path: Path, keys: Path):
    with pytest.raises(ConfigError, match="holds keys for"):
        init_ledger(tmp_path / "other.db", keys, origin="other.example/log")


# -- appends ----------------------------------------------------------------------------------


def test_appends_get_consecutive_indexes_and_read_back(log: Log, clock: FixedClock):
    first = log.append(policy(log, 1))
    clock.now += 10
    second = log.append(policy(log, 2).raw)  # the canonical bytes work too
    assert (first.index, second.index) == (1, 2)
    assert not first.existing and not second.existing
    assert log.size == 3
    assert log.leaf(2).entry.id == second.id
    assert log.leaf(2).time == T0 + 10
    assert log.find(first.id) == 1
    assert [i for i, _ in log.leaves()] == [0, 1, 2]
    assert {k: first.to_json()[k] for k in ("id", "index")} == {"id": first.id, "index": 1}
    assert first.receipt is not None and first.to_json()["receipt"]["index"] == 1


def test_integrated_time_never_goes_backwards(log: Log, clock: FixedClock):
    clock.now = T0 + 100
    log.append(policy(log, 1))
    clock.now = T0 + 50  # the clock steps back
    log.append(policy(log, 2))
    assert [leaf.time for _, leaf in log.leaves()] == [T0, T0 + 100, T0 + 100]


def test_an_entry_already_in_the_log_returns_its_original_index(log: Log, clock: FixedClock):
    entry = policy(log, 1)
    original = log.append(entry)
    log.append(policy(log, 2))
    before = (log.size, log.root(), _rows(log.store.path))
    clock.now += 1000
    again = log.append(entry)
    assert (again.id, again.index, again.existing) == (entry.id, original.index, True)
    assert again.receipt is not None and again.receipt.leaf == original.receipt.leaf
    assert log.append(entry.raw) == again  # as bytes too
    assert (log.size, log.root(), _rows(log.store.path)) == before  # nothing written
    in_batch = log.append_many([entry, policy(log, 3), entry])
    # (each repeat's receipt names the latest checkpoint when it was answered: the same
    # one, or a later one if the queue split the three into two group commits)
    for repeat in (in_batch[0], in_batch[2]):
        assert (repeat.id, repeat.index, repeat.existing) == (entry.id, 1, True)
        assert verify_receipt(repeat.receipt.to_json(), log.log_key, entry.id).index == 1
    assert in_batch[1].index == 3
    assert log.leaf(1).time == T0  # not re-timed
    assert log.size == before[0] + 1


def test_duplicates_within_one_batch_share_one_index(log: Log):
    entry = key_add(log, 1)
    results = log.append_many([entry, entry, key_add(log, 2), entry])
    assert [r.index for r in results] == [1, 1, 2, 1]
    assert [r.existing for r in results] == [False, True, False, True]
    assert log.size == 3


def _other_origin(log: Log):
    body = {"kind": "policy", "v": 1, "log": "other.example/log", "version": 1, "document": {}}
    return sign_entry(body, [log.keys.operator])


def _flipped(log: Log) -> bytes:
    raw = bytearray(policy(log, 1).raw)
    raw[raw.index(b'"version":1') + len('"version":')] = ord("7")
    return bytes(raw)  # parses, but the signature no longer matches


@pytest.mark.parametrize(
    ("make", "error", "check"),
    [
        (_other_origin, RejectedEntry, "origin"),
        (lambda log: policy(log, 1, SigningKey.generate()), RejectedEntry, "signature"),
        (lambda log: policy(log, 1, log.keys.decision), RejectedEntry, "signature"),
        (_flipped, RejectedEntry, "signature"),
        (lambda log: policy(log, 1).raw[:-1], FormatError, None),
        (lambda log: b'{"kind":"policy"}', FormatError, None),
        (lambda log: b" " + policy(log, 1).raw, FormatError, None),  # not canonical
        (lambda log: b"\xff\xfe", FormatError, None),
        (lambda log: b"", FormatError, None),
        (lambda log: key_add(log, 1), None, None),  # control: this one is fine
    ],
    ids=[
        "other-origin",
        "unknown-signer",
        "decision-key-signs-policy",
        "altered-after-signing",
        "truncated",
        "missing-fields",
        "leading-space",
        "not-utf8",
        "empty",
        "control",
    ],
)
def test_a_refused_entry_changes_nothing(log: Log, make, error, check):
    log.append(policy(log, 5))
    before = (log.size, log.root(), _rows(log.store.path))
    entry = make(log)
    if error is None:
        assert log.append(entry).index == 2
        return
    with pytest.raises(error) as info:
        log.append(entry)
    if check is not None:
        assert info.value.check == check
    assert (log.size, log.root(), _rows(log.store.path)) == before
    if not isinstance(entry, bytes):
        result = log.append_many([entry, policy(log, 6)])
        assert isinstance(result[0], error)
        assert result[1].index == 2  # the rest of the batch goes in


def test_a_policy_version_that_does_not_increase_is_refused(log: Log):
    log.append(policy(log, 3))
    for version in (3, 2):
        body = {
            "kind": "policy",
            "v": 1,
            "log": log.origin,
            "version": version,
            "document": {"x": 1},
        }
        with pytest.raises(RejectedEntry) as info:
            log.append(sign_entry(body, [log.keys.operator]))
        assert info.value.check == "policy"
    assert log.size == 2
    assert log.append(policy(log, 4)).index == 2


def test_append_many_keeps_results_in_order(log: Log):
    entries = [policy(log, 1), _other_origin(log), policy(log, 1, SigningKey.generate())]
    entries += [policy(log, v) for v in range(2, 40)]
    results = log.append_many(entries)
    assert results[0].index == 1
    assert isinstance(results[1], RejectedEntry)
    assert isinstance(results[2], RejectedEntry)
    assert [r.index for r in results[3:]] == list(range(2, 40))
    assert log.size == 40


def test_append_many_is_one_transaction_per_batch(log: Log):
    calls = _count_store_appends(log)
    results = log.append_many([policy(log, v) for v in range(1, 2001)])
    assert [r.index for r in results] == list(range(1, 2001))
    assert len(calls) < 20  # 2000 entries, at most 512 a batch
    assert sum(calls) == 2000


def test_a_closed_log_refuses_appends(log: Log, db: Path, keys: Path):
    entries = [policy(log, 1), policy(log, 2)]
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(entries[0])
    with pytest.raises(StorageError, match="closed"):
        log.append_many(entries)
    again = open_ledger(db, keys)
    assert again.size == 1
    close(again)


RACE = r"""
import json, sys, threading, time
from pathlib import Path
from lineage.ledger.errors import StorageError
from lineage.ledger.ledger import init_ledger, open_ledger
from tests.conftest import close, key_add

base, rounds = Path(sys.argv[1]), int(sys.argv[2])
for r in range(rounds):
    db, keys = base / f"race{r}.db", base / f"keys{r}"
    log = init_ledger(db, keys, origin="race.example/log")
    entries = [key_add(log, r * 1000 + n) for n in range(240)]
    genesis = log.leaf(0).entry.id
    acked, refused, bad, stop = {}, [], [], threading.Event()

    def append(t):
        for entry in entries[t::8]:
            try:
                acked[entry.id] = log.append(entry, timeout=10).index
            except StorageError:
                refused.append(entry.id)
            except BaseException as exc:
                bad.append(repr(exc))

    def read():
        while not stop.is_set():
            try:
                log.size, log.leaf(0), log.find(genesis)
            except StorageError:
                pass
            except BaseException as exc:
                bad.append(repr(exc))
                return

    threads = [threading.Thread(target=append, args=(t,)) for t in range(8)]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while len(acked) < 30 and time.monotonic() < deadline:
        time.sleep(0.002)
    started = time.monotonic()
    log.close()
    stop.set()
    for th in threads:
        th.join(30)
    took = time.monotonic() - started
    close(log)
    again = open_ledger(db, keys)
    missing = [i for i, n in acked.items() if again.find(i) != n]
    size = again.size
    close(again)
    print(json.dumps({"acked": len(acked), "refused": len(refused), "bad": bad,
                      "missing": missing, "size": size, "took": took}), flush=True)
"""


def test_close_while_other_threads_use_the_log(tmp_path: Path):
    """Appends and reads racing close(): each append is acknowledged (and durable) or
    refused at once with a StorageError; nothing hangs, nothing is lost, nothing crashes.
    Run in a child process, since the failure this guards against is a crash."""
    child = subprocess.run(
        [sys.executable, "-c", RACE, str(tmp_path), "5"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    rounds = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(rounds) == 5
    for r in rounds:
        assert r["bad"] == [] and r["missing"] == []
        assert r["acked"] + r["refused"] == 240
        assert r["size"] == 1 + r["acked"]
        assert r["took"] < 8
    assert any(r["refused"] for r in rounds), "close() never raced an append"


def test_close_releases_the_database(db: Path, keys: Path):
    """close() closes the store's connections in every thread: the WAL is checkpointed, so
    the .db file alone holds every acknowledged append."""
    log = init_ledger(db, keys, origin=ORIGIN)
    log.append_many([policy(log, v) for v in range(1, 50)])
    log.close()
    wal = db.with_name(db.name + "-wal")
    try:
        assert not wal.exists() or wal.stat().st_size == 0
    finally:
        close(log)


# -- concurrency and group commit --------------------------------------------------------------


def _count_store_appends(log: Log, delay: float = 0.0) -> list[int]:
    """Wrap the store's append; record the number of leaves each call writes."""
    calls: list[int] = []
    append = log.store.append

    def counted(leaves, nodes):
        calls.append(len(leaves))
        if delay:
            time.sleep(delay)  # a slow disk: fsync takes a while
        return append(leaves, nodes)

    log.store.append = counted
    return calls


def test_concurrent_appends(log: Log, db: Path, keys: Path):
    threads_n, per_thread, shared_n = 16, 50, 20
    shared = [key_add(log, 10_000 + k) for k in range(shared_n)]
    work = []
    for t in range(threads_n):
        own = [key_add(log, t * 100 + j) for j in range(per_thread - 10)]
        dups = [shared[(t * 3 + j) % shared_n] for j in range(10)]  # overlap other threads'
        work.append(own[:20] + dups[:5] + own[20:] + dups[5:])
    calls = _count_store_appends(log, delay=0.002)
    results: list[list[Appended]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def run(t: int) -> None:
        try:
            barrier.wait()
            for entry in work[t]:
                results[t].append(log.append(entry))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    acknowledged = [r for rs in results for r in rs]
    assert len(acknowledged) == threads_n * per_thread
    index_of: dict[str, int] = {}
    for r in acknowledged:
        assert index_of.setdefault(r.id, r.index) == r.index  # a duplicate gets the same index
    distinct = threads_n * (per_thread - 10) + shared_n
    assert len(index_of) == distinct
    assert sorted(index_of.values()) == list(range(1, distinct + 1))  # contiguous, no repeats
    assert sum(not r.existing for r in acknowledged) == distinct
    assert sum(calls) == distinct
    assert len(calls) < distinct  # the group commit batched
    size, root = log.size, log.root()
    assert size == distinct + 1

    close(log)
    reopened = open_ledger(db, keys)
    try:
        assert (reopened.size, reopened.root()) == (size, root)
        for entry_id, index in index_of.items():
            assert reopened.find(entry_id) == index
            assert reopened.leaf(index).entry.id == entry_id
        assert reopened.state().size == size  # the chain state is the log's
        replay = Replay(reopened.log_key)
        replay.apply_all(reopened.leaves())
        assert len(replay.keys) == 2 + distinct  # and the log replays
    finally:
        close(reopened)


# -- checkpoints ------------------------------------------------------------------------------


def _verified(log: Log, note: bytes):
    return open_checkpoint(note, log.log_key, log.origin).checkpoint


def test_checkpoint_is_signed_stored_and_verifies(log: Log, db: Path):
    log.append_many([policy(log, v) for v in range(1, 8)])
    note = log.checkpoint()
    cp = _verified(log, note)
    assert (cp.origin, cp.size, cp.root_hash) == (ORIGIN, 8, log.root())
    assert log.latest_checkpoint() == note
    assert list(log.store.checkpoints())[-1] == (8, log.root(), note)
    assert sidecar_path(db).read_bytes() == note
    with pytest.raises(Exception):  # noqa: B017 - any failure: another key must not verify
        open_checkpoint(note, Signer.generate(ORIGIN).verifier, ORIGIN)


def test_no_new_checkpoint_when_the_size_has_not_changed(log: Log):
    log.append(policy(log, 1))
    note = log.checkpoint()
    count = len(list(log.store.checkpoints()))
    assert log.checkpoint() == note
    assert len(list(log.store.checkpoints())) == count


def test_a_read_only_log_cannot_sign(log: Log, db: Path):
    reader = open_ledger(db, log_key=log.log_key.vkey)
    try:
        assert reader.size == 1
        with pytest.raises(StorageError, match="signing key"):
            reader.checkpoint()
    finally:
        close(reader)


def test_periodic_checkpoints_are_kept_and_consistent(log: Log):
    log.start_checkpointing(interval=0.05)
    for round_ in range(4):
        log.append_many([policy(log, round_ * 10 + v) for v in range(1, 1 + 3 * round_ + 1)])
        deadline = time.monotonic() + 5
        while _verified(log, log.latest_checkpoint()).size != log.size:
            assert time.monotonic() < deadline, "no checkpoint published after appends"
            time.sleep(0.01)
    stored = list(log.store.checkpoints())
    sizes = [size for size, _, _ in stored]
    assert sizes == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == log.size
    assert len(sizes) >= 5
    checkpoints = [_verified(log, note) for _, _, note in stored]
    for (size, root, _), cp in zip(stored, checkpoints, strict=True):
        assert (cp.size, cp.root_hash) == (size, root) == (size, log.root(size))
    for i, old in enumerate(checkpoints):
        for new in checkpoints[i:]:
            proof = log.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    for index, leaf in log.leaves():
        last = checkpoints[-1]
        proof = log.inclusion_proof(index, last.size)
        verify_inclusion(index, last.size, leaf.hash, proof, last.root_hash)


# -- reopening ------------------------------------------------------------------------------


def test_reopen_with_keys_and_read_only(log: Log, db: Path, keys: Path):
    log.append_many([policy(log, v) for v in range(1, 5)])
    log.checkpoint()
    size, root = log.size, log.root()
    close(log)
    again = open_ledger(db, keys)
    assert (again.size, again.root(), again.origin) == (size, root, ORIGIN)
    assert again.append(policy(again, 5)).index == size
    close(again)
    reader = open_ledger(db, log_key=again.log_key.vkey)
    assert reader.size == size + 1
    close(reader)


def test_keys_from_the_environment(log: Log, db: Path, keys: Path, monkeypatch):
    monkeypatch.setenv("LINEAGE_KEYS", str(keys))
    again = open_ledger(db)
    assert again.log_key == log.log_key
    close(again)


@pytest.mark.parametrize("same_origin", [True, False])
def test_opening_with_another_log_key_is_refused(log: Log, db, tmp_path, same_origin: bool):
    other = init_ledger(
        tmp_path / "other.db",
        tmp_path / "other-keys",
        origin=ORIGIN if same_origin else "other.example/log",
    )
    close(other)
    with pytest.raises(StorageError, match="log_key" if same_origin else "origin"):
        open_ledger(db, tmp_path / "other-keys")
    with pytest.raises(StorageError):
        open_ledger(db, log_key=other.log_key.vkey)
    assert _rows(db)["leaves"] == 1


def test_opening_a_missing_ledger(tmp_path: Path, keys: Path, log: Log):
    with pytest.raises(StorageError, match="no ledger"):
        open_ledger(tmp_path / "absent.db", keys)


# -- keys -----------------------------------------------------------------------------------

KEY_FILES = ("log.key", "operator.key", "decision.key")


def test_key_files_are_owner_only(tmp_path: Path):
    old = os.umask(0)  # even with a permissive umask
    try:
        log = init_ledger(tmp_path / "l.db", tmp_path / "k", origin=ORIGIN)
    finally:
        os.umask(old)
    close(log)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    for name in KEY_FILES:
        assert stat.S_IMODE((tmp_path / "k" / name).stat().st_mode) == 0o600


def test_an_existing_key_directory_is_tightened(tmp_path: Path):
    (tmp_path / "k").mkdir(mode=0o755)
    close(init_ledger(tmp_path / "l.db", tmp_path / "k", origin=ORIGIN))
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700


@pytest.mark.parametrize("name", KEY_FILES)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_key_file_others_can_access_is_refused(log: Log, db, keys: Path, name, mode):
    os.chmod(keys / name, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        open_ledger(db, keys)


@pytest.mark.parametrize("name", KEY_FILES)
def test_a_missing_or_malformed_key_is_a_config_error(log: Log, db, keys: Path, name):
    text = (keys / name).read_text()
    (keys / name).unlink()
    with pytest.raises(ConfigError, match="not found"):
        open_ledger(db, keys)
    fd = os.open(keys / name, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text[: len(text) // 2].encode())
    os.close(fd)
    with pytest.raises(ConfigError) as info:
        open_ledger(db, keys)
    assert text.strip()[-10:] not in str(info.value)


def test_a_key_is_never_overwritten(log: Log, keys: Path):
    before = {n: (keys / n).read_bytes() for n in KEY_FILES}
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        KeyRing.create(keys, ORIGIN)
    assert {n: (keys / n).read_bytes() for n in KEY_FILES} == before


def seed_spellings(seed: bytes) -> list[str]:
    """The ways a 32-byte seed could leak into text."""
    return [
        seed.hex(),
        seed.hex().upper(),
        base64.b64encode(seed).decode().rstrip("="),
        base64.urlsafe_b64encode(seed).decode().rstrip("="),
        repr(seed)[2:-1],
    ]


def test_no_seed_in_repr(log: Log, keys: Path):
    ring = KeyRing.load(keys)
    seeds = [ring.log.seed, ring.operator.seed, ring.decision.seed]
    shown = " ".join(
        f(x)
        for x in (ring, ring.log, ring.operator, ring.decision, ring.log_entry_key, log.keys)
        for f in (repr, str)
    )
    shown += repr(log.signer) + repr(vars(log).get("keys"))
    for seed in seeds:
        for spelling in seed_spellings(seed):
            assert spelling not in shown
    assert ring.operator.kid in repr(ring)  # it does show which key


def test_errors_from_a_tampered_key_directory_are_all_ledger_errors(log: Log, db, keys: Path):
    (keys / "log.key").unlink()
    fd = os.open(keys / "log.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"PRIVATE+KEY+not+a+key")
    os.close(fd)
    with pytest.raises(LedgerError):
        open_ledger(db, keys)


def test_the_checkpoint_ticker_survives_a_failed_publish(tmp_path, caplog):
    import time as _t

    from lineage.ledger.errors import StorageError
    from lineage.ledger.ledger import init_ledger
    from lineage.verifier.entry import sign_entry

    log = init_ledger(tmp_path / "t.db", tmp_path / "keys", origin="tick.example/log")
    real = log.store.add_checkpoint
    failures = []

    def flaky(*args, **kw):
        if not failures:
            failures.append(1)
            raise StorageError("disk busy")
        return real(*args, **kw)

    # An append by a process that does not sign (its group commit publishes nothing)
    # leaves the checkpoint to the ticker of one that does.
    unsigned = open_ledger(tmp_path / "t.db", log_key=log.log_key.vkey)
    unsigned.append(
        sign_entry(
            {"kind": "policy", "v": 1, "log": log.origin, "version": 1, "document": {}},
            [log.keys.operator],
        )
    )
    unsigned.close()
    log.store.add_checkpoint = flaky
    log.start_checkpointing(0.05)
    deadline = _t.monotonic() + 5
    while _t.monotonic() < deadline and log.store.latest_checkpoint()[0] < log.size:
        _t.sleep(0.02)
    assert failures and log.store.latest_checkpoint()[0] == log.size
    assert "checkpoint not published" in caplog.text
    log.close()
