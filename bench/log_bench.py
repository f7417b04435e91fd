"""Benchmarks of the durable log, run by hand: ``.venv/bin/python bench/log_bench.py``.

Measures, on one machine in one run (ratios are what to quote; absolute
numbers move with the machine):

- appends per second, one at a time (each waits for its own fsync) against
  many queued at once (group commit sharing transactions);
- proof latency at a large tree size, and rows read per proof;
- decision latency (``lineage.ledger.decide``) for a valid invocation;
- a full audit (``lineage verify --db``) with one worker against all cores.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from lineage.ledger.audit import audit
from lineage.ledger.decide import decide
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import init_ledger
from lineage.verifier.bodies import delegation_body, grant_body
from lineage.verifier.entry import sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey


def policies(log, start: int, n: int):
    return [
        sign_entry(
            {"kind": "policy", "v": 1, "log": log.origin, "version": v, "document": {}},
            [log.keys.operator],
        )
        for v in range(start, start + n)
    ]


def main(n: int = 20000) -> None:
    tmp = Path(tempfile.mkdtemp())
    log = init_ledger(tmp / "b.db", tmp / "keys", origin="bench.example/log")
    one = policies(log, 1, 200)
    t = time.perf_counter()
    for e in one:
        log.append(e)
    single = len(one) / (time.perf_counter() - t)
    many = policies(log, 201, n)
    t = time.perf_counter()
    log.append_many(many)
    grouped = len(many) / (time.perf_counter() - t)
    print(
        f"appends/s one at a time: {single:,.0f}; queued together: {grouped:,.0f} "
        f"({grouped / single:.1f}x)"
    )

    size = log.size
    reads = []

    class Counting:
        def read_nodes(self, coords):
            reads.append(len(coords))
            return log.store.read_nodes(coords)

    from lineage.verifier.merkle import inclusion_proof

    lat = []
    for i in range(0, size, max(1, size // 200)):
        t = time.perf_counter()
        inclusion_proof(i, size, Counting())
        lat.append(time.perf_counter() - t)
    print(
        f"inclusion proof at size {size:,}: median {statistics.median(lat) * 1e6:.0f} us, "
        f"{max(reads)} nodes read in one query at most"
    )

    alice, agent = SigningKey.generate(), SigningKey.generate()
    log.append(bind_principal(log.origin, log.keys.operator, "alice@corp", alice.public))
    now = int(time.time())
    mail = [{"type": "email", "actions": ["read"], "locations": ["https://m.example:443"]}]
    g = log.append(
        sign_entry(
            grant_body(
                log.origin,
                "alice@corp",
                agent.public,
                task={"id": "t", "description": ""},
                scope=mail,
                expires_at=now + 900,
                max_depth=1,
            ),
            [alice],
        )
    )
    sub = SigningKey.generate()
    d = log.append(
        sign_entry(
            delegation_body(
                log.origin,
                g.id,
                sub.public,
                task={"id": "t/x", "description": ""},
                scope=mail,
                expires_at=now + 600,
                max_depth=0,
            ),
            [agent],
        )
    )
    lat = []
    for _ in range(300):
        inv = sign_invocation(
            sub,
            d.id,
            {"type": "email", "action": "read", "location": "https://m.example:443"},
            int(time.time()),
        )
        t = time.perf_counter()
        decide(log, inv, {}, "bench")
        lat.append(time.perf_counter() - t)
    lat.sort()
    print(
        f"decision (chain of 2, logged, fsync): median {statistics.median(lat) * 1e3:.2f} ms, "
        f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms"
    )
    log.checkpoint()
    log.close()
    for workers in (1, None):
        t = time.perf_counter()
        report = audit(tmp / "b.db", log.log_key, workers=workers)
        took = time.perf_counter() - t
        print(
            f"audit of {report.size:,} leaves with {'1 worker' if workers == 1 else 'all cores'}:"
            f" {took:.2f} s"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
