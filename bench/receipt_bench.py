"""What receipts cost an append, run by hand: ``.venv/bin/python bench/receipt_bench.py``.

Each group commit of a log that signs also signs a checkpoint, stores it, writes the
sidecar (two fsyncs) and builds its appends' inclusion proofs; each caller verifies
its own receipt. The baseline, in the same run on the same files, is the same code
opened without the log key (its commits sign nothing, as every commit did before
receipts). Ratios are what to quote; the machine is shared.

    appends one at a time       (each waits for its own group commit: the worst case)
    appends from 16 threads     (group commits of a few entries: a busy server)
    append_many of 5,000        (group commits of up to 512)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.verifier.entry import sign_entry


def policies(log, start: int, n: int):
    return [
        sign_entry(
            {"kind": "policy", "v": 1, "log": log.origin, "version": v, "document": {}},
            [log.keys.operator],
        )
        for v in range(start, start + n)
    ]


def one_at_a_time(log, entries) -> float:
    t = time.perf_counter()
    for e in entries:
        log.append(e)
    return len(entries) / (time.perf_counter() - t)


def threaded(log, entries, threads: int = 16) -> float:
    # Policy versions must be appended in order: each thread takes the next entry and
    # queues it under a lock, then waits for its group commit outside it.
    lock = threading.Lock()
    it = iter(entries)

    def work() -> None:
        while True:
            with lock:
                e = next(it, None)
                if e is None:
                    return
                fut = log_submit(log, e)
            fut()

    t = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return len(entries) / (time.perf_counter() - t)


def log_submit(log, entry):
    """Queue ``entry`` in order (under the caller's lock) and return a waiter: the
    writer then batches whatever the threads queued, as a busy server's would."""
    from concurrent.futures import Future

    future: Future = Future()
    log._submit(entry, future, log.presign(entry))

    def wait():
        from lineage.ledger.log import _outcome

        return log._receipted(_outcome(future, 60))

    return wait


def run(tmp: Path, single: int, bulk: int, rounds: int) -> dict[str, list[float]]:
    db, keys = tmp / "r.db", tmp / "keys"
    signing = init_ledger(db, keys, origin="bench.example/receipts")
    vkey = signing.log_key.vkey
    out: dict[str, list[float]] = {}
    version = 1
    for _ in range(rounds):
        for mode in ("receipts", "baseline"):
            log = signing if mode == "receipts" else open_ledger(db, log_key=vkey)
            ops = signing  # the operator key signs the policies either way
            e = policies(ops, version, single)
            version += single
            out.setdefault(f"{mode} one at a time", []).append(one_at_a_time(log, e))
            e = policies(ops, version, single * 4)
            version += single * 4
            out.setdefault(f"{mode} 16 threads", []).append(threaded(log, e))
            e = policies(ops, version, bulk)
            version += bulk
            t = time.perf_counter()
            log.append_many(e)
            out.setdefault(f"{mode} append_many", []).append(bulk / (time.perf_counter() - t))
            if log is not signing:
                log.close()
    signing.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", type=int, default=300)
    ap.add_argument("--bulk", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = run(Path(d), args.single, args.bulk, args.rounds)
    print(f"appends/s, median of {args.rounds} interleaved rounds (receipts vs baseline):")
    for shape in ("one at a time", "16 threads", "append_many"):
        r = statistics.median(res[f"receipts {shape}"])
        b = statistics.median(res[f"baseline {shape}"])
        print(f"  {shape:<14} receipts {r:9,.0f}   baseline {b:9,.0f}   ratio {r / b:.2f}x")


if __name__ == "__main__":
    main()
