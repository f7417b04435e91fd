"""How the ledger's cost grows with its size, against baselines measured in the same run.

    .venv/bin/python bench/state_bench.py --sizes 10000,100000,1000000 \\
        --out /tmp/bench.json --plot /tmp/bench.svg [--cache DIR] [--only restart,rss]

Run by hand, never in the test suite. For each ledger size it builds (once, then
cached under ``--cache``, keyed by size and mix) a real ledger: principals bound by the
operator, a policy, chains of depth 4 (a grant and three delegations, each signed by the
party whose authority it exercises) appended with ``Log.append_many`` (group commit),
decisions made by ``lineage.ledger.decide.decide`` from a pool of threads (mostly allows;
some scope denials; some revocations followed by a denied use). About 85 % of the leaves
are ``access`` entries. Every measurement then runs on a scratch copy of the cached ledger
(the rows append to it), with the log's real clock, real fsyncs and real signatures.

Rows (``--only`` takes any of these names, run in this order whatever the order given;
all by default; ``--only build`` only builds and caches the ledgers):

    proof      inclusion-proof latency
    lineage    ``GET /v1/credentials/{id}/lineage``'s work (``export.credential_bundle``)
    bundle     ``verify_bundle`` on 1,000 links  vs  the one-core pynacl verify rate
    audit      ``lineage verify --db`` (``audit.audit``)  vs  verify rate x cores
    restart    fresh process: open -> first append -> first decision
    rss        fresh process: peak RSS (VmHWM) after reopen + 1,000 decisions + queries
    decisions  logged decisions, depth-4 chains, 32 threads  vs  biscuit 4-block authorize
    appends    32 threads of ``Log.append``  vs  verify rate, and raw SQLite inserts
    http       ``POST /v1/access``  vs  ``GET /healthz``, 16 connections, ``lineage serve``
    ratelimit  a decision on a chain with 20k uses in its rate window  vs  one with none

Ratios are what to quote: the machine is shared and noisy. The page cache is warm
(the scratch copy was just written), so "restart" is a warm restart. biscuit-python is
only a baseline here (``.venv/bin/pip install biscuit-python``); without it that ratio is
skipped with a message.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import itertools
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from lineage.ledger.decide import decide
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.log import Appended, Log
from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.entry import Entry, parse_entry, sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "state-bench.example/log"
MAIL = "https://mail.example.com:443"
SENDERS = ["a@vendor.example", "b@vendor.example"]
MIX = 1  # bump when the build's mix changes: cached ledgers of another mix are not reused
WAVE = 64  # chains per wave of the build
PER_CHAIN = 29  # leaves a chain brings, rounded up (4 credentials + 24 decisions + 1 in 10 revoked)
POLICY = {
    "rules": [
        {"id": "payments-shallow", "match": {"type": "payments"}, "max_chain_depth": 2},
        {"id": "fresh-deletes", "match": {"actions": ["delete"]}, "max_grant_age": 600},
    ]
}
ROWS = (
    "proof",
    "lineage",
    "bundle",
    "audit",
    "restart",
    "rss",
    "decisions",
    "appends",
    "http",
    "ratelimit",
)


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- keys, chains, requests -----------------------------------------------------------------


def fixed_key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"state bench key: " + name.encode()).digest())


def principal(i: int) -> tuple[str, SigningKey]:
    name = f"user{i}@corp.example"
    return name, fixed_key(name)


def scope(p: str, actions: Sequence[str], resource: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "email",
            "actions": list(actions),
            "locations": [MAIL],
            "resources": [resource],
            "constraints": {"sender": {"in": SENDERS}},
        }
    ]


def request(p: str, n: int, action: str = "read") -> dict[str, Any]:
    return {
        "type": "email",
        "action": action,
        "location": MAIL,
        "resource": f"mailbox:{p}/inbox/msg-{n}",
        "attributes": {"sender": SENDERS[n % 2]},
    }


@dataclass
class Chain:
    """A grant and three delegations: ``entries[i]`` is held by ``holders[i]``."""

    principal: str
    mailbox: str
    entries: list[Entry]
    holders: list[SigningKey]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    @property
    def leaf(self) -> str:
        return self.entries[-1].id


def sign_chain(
    p: int, task: str, now: int, ttl: int = 1800, limits: dict[str, Any] | None = None
) -> Chain:
    """A depth-4 chain under principal ``p``, signed link by link (nothing appended)."""
    name, pkey = principal(p)
    box = f"u{p}"
    holders = [SigningKey.generate() for _ in range(4)]
    limits = dict(limits or {})
    grant = sign_entry(
        grant_body(
            ORIGIN,
            name,
            holders[0].public,
            agent="planner",
            task={"id": task, "description": "Triage the inbox"},
            scope=scope(box, ["read", "send"], f"mailbox:{box}/*"),
            expires_at=now + ttl,
            max_depth=3,
            **limits,
        ),
        [pkey],
    )
    entries = [grant]
    for depth, (agent, sub) in enumerate(
        (("triage", "/read"), ("reader", "/read/invoices"), ("ocr", "/read/invoices/ocr")), 1
    ):
        actions = ["read", "send"] if depth < 3 else ["read"]
        resource = f"mailbox:{box}/*" if depth < 3 else f"mailbox:{box}/inbox/*"
        entries.append(
            sign_entry(
                delegation_body(
                    ORIGIN,
                    entries[-1].id,
                    holders[depth].public,
                    agent=agent,
                    task={"id": task + sub, "description": "sub-task"},
                    scope=scope(box, actions, resource),
                    expires_at=now + ttl - 10 * depth,
                    max_depth=3 - depth,
                    **limits,
                ),
                [holders[depth - 1]],
            )
        )
    return Chain(name, box, entries, holders)


def append_all(log: Log, entries: Sequence[Entry]) -> list[Appended]:
    """``Log.append_many``, raising the first refusal (a bench that appends nothing proves
    nothing)."""
    out = log.append_many(entries)
    for r in out:
        if isinstance(r, Exception):
            raise r
    return out  # type: ignore[return-value]


def append_chains(log: Log, chains: Sequence[Chain]) -> None:
    """Append chains level by level, so each link's parent is committed when it is presigned."""
    for level in range(4):
        append_all(log, [c.entries[level] for c in chains])


@dataclass
class Use:
    holder: SigningKey
    credential: str
    request: dict[str, Any]
    allow: bool  # what the ledger must answer


def run_decisions(log: Log, uses: Sequence[Use], threads: int, enforcement: str) -> float:
    """Decide ``uses`` from ``threads`` threads (each signs its invocation, then ``decide``);
    checks every answer; returns the seconds taken."""
    wrong: list[str] = []

    def one(use: Use) -> None:
        inv = sign_invocation(use.holder, use.credential, use.request, int(log.clock()))
        d = decide(log, inv, {}, enforcement)
        if d.allowed != use.allow:
            wrong.append(f"{'allowed' if d.allowed else 'denied'}: {d.reason}")

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(one, u) for u in uses]:
            f.result()
    took = time.perf_counter() - started
    if wrong:
        raise RuntimeError(f"{len(wrong)} decisions not as expected, e.g. {wrong[0]}")
    return took


# -- building and caching ledgers -----------------------------------------------------------


def cache_key(size: int, principals: int) -> str:
    return f"ledger-{size}-mix{MIX}-p{principals}"


def build(size: int, dest: Path, principals: int, threads: int) -> dict[str, Any]:
    """Build a ledger of exactly ``size`` leaves in ``dest`` (a new directory)."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    log = init_ledger(partial / "ledger.db", partial / "keys", origin=ORIGIN)
    binds = []
    for i in range(principals):
        name, key = principal(i)
        binds.append(bind_principal(ORIGIN, log.keys.operator, name, key.public))
    append_all(log, binds)
    policy = {"kind": "policy", "v": 1, "log": ORIGIN, "version": 1, "document": POLICY}
    append_all(log, [sign_entry(policy, [log.keys.operator])])
    counts = {"chains": 0, "decisions": 0, "denied": 0, "revocations": 0}
    phase = {"credentials": 0.0, "decisions": 0.0, "revocations": 0.0}
    last: Chain | None = None
    shown = time.monotonic()
    while log.size < size:
        remaining = size - log.size
        now = int(log.clock())
        if remaining < 4 and last is not None:  # top up with decisions on the last chain
            uses = [
                Use(last.holders[3], last.leaf, request(last.mailbox, 10_000 + i), True)
                for i in range(remaining)
            ]
            phase["decisions"] += run_decisions(log, uses, threads, "gw-build")
            counts["decisions"] += len(uses)
            continue
        n = max(1, min(WAVE, remaining // PER_CHAIN))
        base = counts["chains"]
        chains = [sign_chain((base + i) % principals, f"task-{base + i}", now) for i in range(n)]
        t = time.perf_counter()
        append_chains(log, chains)
        phase["credentials"] += time.perf_counter() - t
        budget = remaining - 4 * n
        uses = []
        for k in range(24):  # 20 uses of the leaf (one denied: it may only read), 2 + 2 above
            for c in chains:
                if k < 20:
                    action = "send" if k == 7 else "read"
                    uses.append(
                        Use(c.holders[3], c.leaf, request(c.mailbox, k, action), action == "read")
                    )
                elif k < 22:
                    uses.append(Use(c.holders[2], c.ids[2], request(c.mailbox, k), True))
                else:
                    uses.append(Use(c.holders[0], c.ids[0], request(c.mailbox, k), True))
        uses = uses[:budget]
        phase["decisions"] += run_decisions(log, uses, threads, "gw-build")
        budget -= len(uses)
        counts["decisions"] += len(uses)
        counts["denied"] += sum(not u.allow for u in uses)
        revoked = [(i, c) for i, c in enumerate(chains) if (base + i) % 10 == 9]
        revoked = revoked[: budget // 2]
        if revoked:  # the principal revokes the first delegation; the leaf's next use is denied
            t = time.perf_counter()
            append_all(
                log,
                [
                    sign_entry(
                        revocation_body(ORIGIN, credential=c.ids[1], reason="task done"),
                        [principal((base + i) % principals)[1]],
                    )
                    for i, c in revoked
                ],
            )
            after = [Use(c.holders[3], c.leaf, request(c.mailbox, 99), False) for _, c in revoked]
            run_decisions(log, after, threads, "gw-build")
            phase["revocations"] += time.perf_counter() - t
            counts["revocations"] += len(revoked)
            counts["decisions"] += len(after)
            counts["denied"] += len(after)
        counts["chains"] += n
        last = chains[-1]
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            rate = log.size / (time.perf_counter() - started)
            say(f"  build {size:,}: {log.size:,} leaves, {rate:,.0f}/s")
    log.checkpoint()
    final = log.size
    log.close()
    took = time.perf_counter() - started
    meta = {
        "size": final,
        "mix": MIX,
        "principals": principals,
        "build_seconds": round(took, 2),
        "build_rate": round(final / took, 1),
        "phase_seconds": {k: round(v, 2) for k, v in phase.items()},
        "counts": counts,
        "threads": threads,
        "built_at": int(time.time()),
        "db_bytes": (partial / "ledger.db").stat().st_size,
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    partial.rename(dest)
    return meta


def ensure_ledger(cache: Path, size: int, principals: int, threads: int) -> tuple[Path, dict]:
    dest = cache / cache_key(size, principals)
    if (dest / "meta.json").exists():
        meta = json.loads((dest / "meta.json").read_text())
        meta["cached"] = True
        return dest, meta
    cache.mkdir(parents=True, exist_ok=True)
    say(f"building a ledger of {size:,} leaves in {dest} ...")
    meta = build(size, dest, principals, threads)
    meta["cached"] = False
    say(
        f"built {size:,} leaves in {meta['build_seconds']:.1f} s "
        f"({meta['build_rate']:,.0f} leaves/s)"
    )
    return dest, meta


def scratch_copy(src: Path, work: Path) -> Path:
    """A copy of a cached ledger to measure on (the rows append to it)."""
    dst = Path(tempfile.mkdtemp(prefix="state-bench-", dir=work))
    for name in ("ledger.db", "ledger.db.checkpoint", "meta.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "keys", dst / "keys")
    return dst


# -- baselines --------------------------------------------------------------------------------


class Baselines:
    """Rates of the reference operations, measured once per run (per message size)."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.verify_runs: list[dict[str, float]] = []  # every measurement, for the JSON
        self.biscuit_runs: list[float] = []
        self._biscuit: Callable[[], None] | str | None = None

    def verify_rate(self, length: int, seconds: float = 1.0) -> float:
        """One core: ``nacl.signing.VerifyKey.verify`` of a ``length``-byte message, per s.

        Measured afresh next to each row that compares with it: the machine is shared, and
        its speed drifts within a run.
        """
        length = max(1, int(length))
        sk = nacl.signing.SigningKey.generate()
        vk = sk.verify_key
        signed = sk.sign(os.urandom(length))
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(200):
                vk.verify(signed)
            n += 200
        rate = n / (time.perf_counter() - started)
        self.verify_runs.append({"message_bytes": length, "per_s": rate})
        return rate

    def biscuit_rate(self, seconds: float = 2.0) -> float | str:
        """One thread: parse (with signature checks) and authorize a 4-block biscuit, per s;
        or why it cannot be measured. Measured afresh each time, like ``verify_rate``."""
        if self._biscuit is None:
            self._biscuit = self._biscuit_once()
        if isinstance(self._biscuit, str):
            return self._biscuit
        once = self._biscuit
        once()
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                once()
            n += 100
        rate = n / (time.perf_counter() - started)
        self.biscuit_runs.append(rate)
        return rate

    def _biscuit_once(self) -> Callable[[], None] | str:
        """One parse-and-authorize of a 4-block token, or why there is none."""
        try:
            import datetime as dt

            from biscuit_auth import AuthorizerBuilder, BiscuitBuilder, BlockBuilder, KeyPair
        except ImportError:
            return "biscuit-python is not installed (.venv/bin/pip install biscuit-python)"
        root = KeyPair()
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        token = BiscuitBuilder(
            'user("alice@corp"); right("mailbox:alice", "read"); '
            'right("mailbox:alice", "send"); check if time($t), $t < {exp};',
            {"exp": later},
        ).build(root.private_key)
        for sub in ("read", "read", "read"):  # three attenuations: four blocks, like the chain
            token = token.append(
                BlockBuilder(
                    f'check if operation("{sub}"); '
                    'check if resource($r), $r.starts_with("mailbox:alice/");'
                )
            )
        data = token.to_base64()
        public = root.public_key
        from biscuit_auth import Biscuit

        def once() -> None:
            t = Biscuit.from_base64(data, public)
            builder = AuthorizerBuilder(
                'time({now}); operation("read"); resource("mailbox:alice/inbox/1"); '
                'allow if right("mailbox:alice", "read");',
                {"now": dt.datetime.now(dt.UTC)},
            )
            # The default 1 ms run limit is a safety net that a busy machine trips now and
            # then; raising it changes nothing about the work measured.
            limits = builder.limits()
            limits.max_time = dt.timedelta(seconds=1)
            builder.set_limits(limits)
            builder.build(t).authorize()

        return once

    def sqlite_insert_rate(
        self, where: Path, rows: Sequence[tuple], batches: Sequence[int]
    ) -> float:
        """Raw SQLite (WAL, synchronous=FULL, the ledger's ``leaves`` columns): the same rows
        in the same batch sizes, one transaction each, per s."""
        path = where / "raw-baseline.db"
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(
            "CREATE TABLE leaves (idx INTEGER PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE, "
            "kind TEXT NOT NULL, time INTEGER NOT NULL, entry BLOB NOT NULL)"
        )
        it = iter(rows)
        started = time.perf_counter()
        for size in batches:
            chunk = list(itertools.islice(it, size))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO leaves VALUES (?, ?, ?, ?, ?)", chunk)
            conn.execute("COMMIT")
        took = time.perf_counter() - started
        conn.close()
        path.unlink(missing_ok=True)
        return sum(batches) / took


# -- one size -----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


@dataclass
class Size:
    """The scratch copy of one cached ledger, and what the rows share."""

    nominal: int
    dir: Path
    meta: dict[str, Any]
    base: Baselines
    args: argparse.Namespace
    _log: Log | None = None
    chains: dict[str, list[Chain]] = field(default_factory=dict)
    _task: itertools.count = field(default_factory=itertools.count)

    @property
    def db(self) -> Path:
        return self.dir / "ledger.db"

    @property
    def keys(self) -> Path:
        return self.dir / "keys"

    @property
    def log(self) -> Log:
        if self._log is None:
            self._log = open_ledger(self.db, self.keys)
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def fresh_chains(self, n: int, ttl: int = 3000, **limits: Any) -> list[Chain]:
        now = int(self.log.clock())
        chains = [
            sign_chain(i % self.meta["principals"], f"bench-{next(self._task)}", now, ttl, limits)
            for i in range(n)
        ]
        append_chains(self.log, chains)
        return chains


Row = Callable[[Size], dict[str, Any]]


def row_proof(s: Size) -> dict[str, Any]:
    log = s.log
    size = log.size
    rng = random.Random(1)
    lat = []
    for i in [rng.randrange(size) for _ in range(1000)]:
        t = time.perf_counter()
        log.inclusion_proof(i, size)
        lat.append(time.perf_counter() - t)
    return {
        "value": statistics.median(lat) * 1e6,
        "unit": "µs median",
        "detail": {"tree_size": size, "p99_us": pct(lat, 0.99) * 1e6, "proofs": len(lat)},
    }


def row_lineage(s: Size) -> dict[str, Any]:
    from lineage.ledger.export import credential_bundle
    from lineage.ledger.query import lineage, related

    log = s.log
    (chain,) = s.fresh_chains(1)
    cid = chain.leaf
    doc = credential_bundle(log, cid)  # the first signs a checkpoint covering the chain
    times: dict[str, list[float]] = {"bundle": [], "related": [], "chain": []}
    for _ in range(200):
        for name, call in (
            ("bundle", lambda: credential_bundle(log, cid)),
            ("related", lambda: related(log, [cid])),
            ("chain", lambda: lineage(log, cid)),
        ):
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    kinds: dict[str, int] = {}
    for e in doc["entries"]:
        k = e["leaf"]["entry"]["kind"]
        kinds[k] = kinds.get(k, 0) + 1
    return {
        "value": statistics.median(times["bundle"]) * 1e3,
        "unit": f"ms median ({len(doc['entries'])}-entry bundle)",
        "extra": [
            ("  query.related", statistics.median(times["related"]) * 1e3, "ms", None, ""),
            ("  query.lineage", statistics.median(times["chain"]) * 1e3, "ms", None, ""),
        ],
        "detail": {
            "credential_bundle_p99_ms": pct(times["bundle"], 0.99) * 1e3,
            "related_median_ms": statistics.median(times["related"]) * 1e3,
            "query_lineage_median_ms": statistics.median(times["chain"]) * 1e3,
            "chain_credentials": len(lineage(log, cid)),
            "bundle_entries": len(doc["entries"]),
            "bundle_kinds": kinds,
            "bundle_bytes": len(json.dumps(doc)),
            "note": "in process: the endpoint's work without HTTP; the bundle carries every "
            "key and policy entry of the log besides the chain",
        },
    }


def row_bundle(s: Size) -> dict[str, Any]:
    from lineage.ledger.export import bundle
    from lineage.verifier.bundle import verify_bundle

    log = s.log
    n = min(1000, log.size)
    doc = bundle(log, range(n))
    data = json.dumps(doc).encode()
    sigs = 0
    lengths = []
    for e in doc["entries"]:
        entry = e["leaf"]["entry"]
        sigs += len(entry["sigs"]) + (1 if entry["kind"] == "access" else 0)
        lengths.append(len(json.dumps(entry, separators=(",", ":"))))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        verified = verify_bundle(data, log.log_key)
        times.append(time.perf_counter() - t)
    assert len(verified.entries) == n
    rate = n / statistics.median(times)
    base = s.base.verify_rate(int(statistics.mean(lengths)))
    return {
        "value": rate,
        "unit": "links/s",
        "baseline": base,
        "baseline_name": "pynacl verify/s, 1 core",
        "ratio": rate / base,
        "target": ">= 0.8x",
        "ok": rate / base >= 0.8,
        "detail": {
            "links": n,
            "signatures": sigs,
            "signatures_per_s": sigs / statistics.median(times),
            "bundle_bytes": len(data),
            "seconds": statistics.median(times),
            "mean_entry_bytes": statistics.mean(lengths),
        },
    }


def row_audit(s: Size) -> dict[str, Any]:
    from lineage.ledger.audit import audit

    log = s.log
    log.checkpoint()
    key = log.log_key
    lengths = [len(stored.entry) for stored in log.store.leaves(0, min(2000, log.size))]
    s.close()  # the audit forks its workers: no writer thread in this process meanwhile
    t = time.perf_counter()
    report = audit(s.db, key)
    took = time.perf_counter() - t
    rate = report.size / took
    base = s.base.verify_rate(int(statistics.mean(lengths))) * s.base.cores
    return {
        "value": rate,
        "unit": "leaves/s",
        "baseline": base,
        "baseline_name": f"pynacl verify/s x {s.base.cores} cores",
        "ratio": rate / base,
        "target": "1M leaves < 120 s",
        "ok": 1_000_000 / rate < 120,
        "detail": {
            "leaves": report.size,
            "seconds": took,
            "projected_1M_seconds": 1_000_000 / rate,
            "accesses": report.accesses,
            "credentials": report.credentials,
        },
    }


def child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``mode`` in a fresh interpreter (this script, ``--child``); its JSON answer."""
    spec_file = Path(tempfile.mkstemp(suffix=".json")[1])
    spec_file.write_text(json.dumps(spec))
    started = time.time()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--child-spec", str(spec_file)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=spec["dir"],
        )
    finally:
        spec_file.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"the {mode} child failed:\n{out.stderr[-3000:]}")
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    answer["spawned_at"] = started
    return answer


def row_restart(s: Size) -> dict[str, Any]:
    runs = []
    chains = s.fresh_chains(3)
    for chain in chains:
        now = int(s.log.clock())
        _, pkey = principal(0)
        entry = sign_entry(
            grant_body(
                ORIGIN,
                principal(0)[0],
                SigningKey.generate().public,
                task={"id": f"restart-{now}-{len(runs)}", "description": "restart"},
                scope=scope("u0", ["read"], "mailbox:u0/*"),
                expires_at=now + 600,
                max_depth=0,
            ),
            [pkey],
        )
        s.close()
        answer = child(
            "restart",
            {
                "dir": str(s.dir),
                "entry": base64.b64encode(entry.raw).decode(),
                "holder": chain.holders[3].seed.hex(),
                "credential": chain.leaf,
                "request": request(chain.mailbox, 1),
            },
        )
        answer["process_to_open_s"] = answer["open_started_at"] - answer["spawned_at"]
        runs.append(answer)
    total = statistics.median(r["decision_s"] for r in runs)
    return {
        "value": total * 1e3,
        "unit": "ms open->append->decision",
        "target": "< 1000 ms",
        "ok": total < 1.0,
        "detail": {
            "runs": runs,
            "open_ms_median": statistics.median(r["open_s"] for r in runs) * 1e3,
            "first_append_ms_median": statistics.median(r["append_s"] for r in runs) * 1e3,
            "first_decision_ms_median": total * 1e3,
            "process_start_to_open_ms_median": statistics.median(
                r["process_to_open_s"] for r in runs
            )
            * 1e3,
            "note": "times from the start of open_ledger, in a fresh interpreter; warm page cache",
        },
    }


def child_restart(spec: dict[str, Any]) -> dict[str, Any]:
    d = Path(spec["dir"])
    entry = parse_entry(base64.b64decode(spec["entry"]))
    holder = SigningKey(bytes.fromhex(spec["holder"]))
    t0 = time.perf_counter()
    started_at = time.time()
    log = open_ledger(d / "ledger.db", d / "keys")
    t_open = time.perf_counter()
    appended = log.append(entry)
    t_append = time.perf_counter()
    inv = sign_invocation(holder, spec["credential"], spec["request"], int(log.clock()))
    t_signed = time.perf_counter()
    decision = decide(log, inv, {}, "gw-restart")
    t_decide = time.perf_counter()
    log.close()
    if appended.existing or not decision.allowed:
        raise RuntimeError(f"restart: append existing={appended.existing}, {decision.reason}")
    return {
        "open_started_at": started_at,
        "open_s": t_open - t0,
        "append_s": t_append - t0,
        "decision_s": t_decide - t0 - (t_signed - t_append),  # less the holder's signing
        "size": appended.index + 1,
    }


def row_rss(s: Size) -> dict[str, Any]:
    (chain,) = s.fresh_chains(1)
    s.close()
    answer = child(
        "rss",
        {
            "dir": str(s.dir),
            "holder": chain.holders[3].seed.hex(),
            "credential": chain.leaf,
            "mailbox": chain.mailbox,
            "principal": chain.principal,
            "decisions": 1000,
            "threads": 8,
        },
    )
    return {
        "value": answer["peak_rss_kb"] / 1024,
        "unit": "MiB peak RSS (VmHWM)",
        "target": "RSS(size)/RSS(10k) <= 1.3",
        "detail": answer,
    }


def _status_kb(field: str = "VmRSS") -> int:
    """A line of /proc/self/status in KiB: ``VmRSS`` now, ``VmHWM`` the peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_rss(spec: dict[str, Any]) -> dict[str, Any]:
    from lineage.ledger.export import credential_bundle
    from lineage.ledger.query import Filter, entries, lineage, related

    d = Path(spec["dir"])
    holder = SigningKey(bytes.fromhex(spec["holder"]))
    before = _status_kb()
    log = open_ledger(d / "ledger.db", d / "keys")
    log.state()
    after_open = _status_kb()
    uses = [
        Use(holder, spec["credential"], request(spec["mailbox"], i), True)
        for i in range(spec["decisions"])
    ]
    took = run_decisions(log, uses, spec["threads"], "gw-rss")
    after_decisions = _status_kb()
    size = log.size
    rng = random.Random(2)
    for i in (rng.randrange(size) for _ in range(200)):
        log.inclusion_proof(i, size)
        log.leaf(i)
    lineage(log, spec["credential"])
    related(log, [spec["credential"]])
    credential_bundle(log, spec["credential"])
    listed = sum(
        1 for _ in itertools.islice(entries(log, Filter(principal=spec["principal"])), 500)
    )
    listed += sum(1 for _ in itertools.islice(entries(log, Filter(kind="grant")), 500))
    log.close()
    return {
        # The peak of this process's own memory. ru_maxrss is not it: Linux carries the
        # high-water mark of the image that exec replaced (the bench, forking) into the
        # child, so it reports the parent's peak whenever that is higher.
        "peak_rss_kb": _status_kb("VmHWM"),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_before_open_kb": before,
        "rss_after_open_kb": after_open,
        "rss_after_decisions_kb": after_decisions,
        "decisions_per_s": len(uses) / took,
        "entries_listed": listed,
        "size": size,
    }


def row_decisions(s: Size) -> dict[str, Any]:
    threads = 32
    chains = s.fresh_chains(8)
    n = s.args.decisions
    uses = [
        Use(c.holders[3], c.leaf, request(c.mailbox, 1000 + i), True)
        for i, c in zip(range(n), itertools.cycle(chains), strict=False)
    ]
    run_decisions(s.log, uses[:64], threads, "gw-warm")  # warm the record cache
    uses = uses[64:]
    took = run_decisions(s.log, uses, threads, "gw-bench")
    rate = len(uses) / took
    base = s.base.biscuit_rate()
    out: dict[str, Any] = {
        "value": rate,
        "unit": "decisions/s",
        "target": ">= 1.5x",
        "detail": {"decisions": len(uses), "threads": threads, "seconds": took, "depth": 4},
    }
    if isinstance(base, str):
        out["skipped"] = base
    else:
        out.update(
            baseline=base,
            baseline_name="biscuit 4-block parse+authorize/s, 1 thread",
            ratio=rate / base,
            ok=rate / base >= 1.5,
        )
    return out


def row_appends(s: Size) -> dict[str, Any]:
    threads, n = 32, s.args.appends
    log = s.log
    now = int(log.clock())
    entries = []
    for i in range(n):
        name, pkey = principal(i % s.meta["principals"])
        box = f"u{i % s.meta['principals']}"
        entries.append(
            sign_entry(
                grant_body(
                    ORIGIN,
                    name,
                    SigningKey.generate().public,
                    agent="bench",
                    task={"id": f"append-{now}-{i}", "description": "Triage the inbox"},
                    scope=scope(box, ["read", "send"], f"mailbox:{box}/*"),
                    expires_at=now + 1800,
                    max_depth=3,
                ),
                [pkey],
            )
        )
    batches: list[int] = []
    original = log.store.append

    def counting(leaves, nodes):  # the writer's batches, to replay against raw SQLite
        batches.append(len(leaves))
        return original(leaves, nodes)

    log.store.append = counting  # type: ignore[method-assign]
    queue = list(entries)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                e = queue.pop()
            a = log.append(e)
            if a.existing:
                raise RuntimeError("an append found its entry already there")

    try:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(worker) for _ in range(threads)]:
                f.result()
        took = time.perf_counter() - started
    finally:
        del log.store.append
    rate = n / took
    mean_len = statistics.mean(len(e.raw) for e in entries)
    verify = s.base.verify_rate(int(mean_len))
    rows = [(i, e.id, e.kind, now, e.raw) for i, e in enumerate(entries)]
    raw = s.base.sqlite_insert_rate(s.dir, rows, batches)
    return {
        "value": rate,
        "unit": "appends/s",
        "baseline": verify,
        "baseline_name": "pynacl verify/s, 1 core",
        "ratio": rate / verify,
        "target": ">= 0.6x verify",
        "ok": rate / verify >= 0.6,
        "detail": {
            "appends": n,
            "threads": threads,
            "seconds": took,
            "mean_entry_bytes": mean_len,
            "batches": len(batches),
            "mean_batch": statistics.mean(batches),
            "raw_sqlite_inserts_per_s": raw,
            "ratio_vs_raw_sqlite": rate / raw,
        },
        "extra": [
            ("  appends vs raw SQLite", rate, "appends/s", raw, "raw inserts/s, same batches")
        ],
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def row_http(s: Size) -> dict[str, Any]:
    import httpx

    from lineage.ledger.tokens import TokenStore

    conns = 16
    n_access, n_health = s.args.http_requests, 2 * s.args.http_requests
    chains = s.fresh_chains(4)
    (quiet,) = s.fresh_chains(1)  # no accesses: its lineage is the chain and the anchors
    tokens = TokenStore(s.log.store)
    enforcement = tokens.create("enforcement", "gw-http")[1]
    auditor = tokens.create("auditor", "audit-http")[1]
    s.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lineage_bin = Path(sys.executable).with_name("lineage")
    server_log = (s.dir / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    command = [str(lineage_bin), "serve", "--db", str(s.db), "--keys", str(s.keys)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=s.dir,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lineage serve did not start (see {s.dir / 'serve.log'})")
            time.sleep(0.1)

        def blast(requests: list[tuple[str, str, Any]]) -> tuple[float, list[float], list[str]]:
            lat: list[float] = []
            bad: list[str] = []
            lock = threading.Lock()
            todo = list(requests)

            def worker() -> None:
                with httpx.Client(base_url=base, timeout=30) as client:
                    while True:
                        with lock:
                            if not todo:
                                return
                            method, path, body = todo.pop()
                        t = time.perf_counter()
                        if method == "GET":
                            r = client.get(path)
                        else:
                            r = client.post(
                                path,
                                json=body,
                                headers={"Authorization": f"Bearer {enforcement}"},
                            )
                        took = time.perf_counter() - t
                        with lock:
                            lat.append(took)
                            if r.status_code != 200 or (
                                method == "POST" and r.json()["decision"] != "allow"
                            ):
                                bad.append(f"{r.status_code} {r.text[:200]}")

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(conns) as pool:
                for f in [pool.submit(worker) for _ in range(conns)]:
                    f.result()
            return time.perf_counter() - started, lat, bad

        def access_requests(n: int, offset: int) -> list[tuple[str, str, Any]]:
            now = int(time.time())
            out = []
            for i, c in zip(range(n), itertools.cycle(chains), strict=False):
                inv = sign_invocation(c.holders[3], c.leaf, request(c.mailbox, offset + i), now)
                out.append(("POST", "/v1/access", {"invocation": dict(inv.to_json())}))
            return out

        blast([("GET", "/healthz", None)] * 64)  # warm up both paths
        blast(access_requests(64, 0))
        h_took, h_lat, h_bad = blast([("GET", "/healthz", None)] * n_health)
        a_took, a_lat, a_bad = blast(access_requests(n_access, 100_000))
        if h_bad or a_bad:
            raise RuntimeError(f"unexpected answers: {(h_bad + a_bad)[:3]}")
        lineage_lat = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(30):
                t = time.perf_counter()
                r = client.get(
                    f"/v1/credentials/{quiet.leaf}/lineage",
                    headers={"Authorization": f"Bearer {auditor}"},
                )
                lineage_lat.append(time.perf_counter() - t)
                r.raise_for_status()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server_log.close()
    access_rate, health_rate = n_access / a_took, n_health / h_took
    return {
        "value": access_rate,
        "unit": "POST /v1/access /s",
        "baseline": health_rate,
        "baseline_name": "GET /healthz /s, same server",
        "ratio": access_rate / health_rate,
        "target": ">= 0.5x",
        "ok": access_rate / health_rate >= 0.5,
        "extra": [
            (
                "  GET lineage (HTTP, 1 conn)",
                statistics.median(lineage_lat) * 1e3,
                "ms median",
                None,
                "",
            )
        ],
        "detail": {
            "connections": conns,
            "access_requests": n_access,
            "health_requests": n_health,
            "access_p50_ms": statistics.median(a_lat) * 1e3,
            "access_p99_ms": pct(a_lat, 0.99) * 1e3,
            "health_p50_ms": statistics.median(h_lat) * 1e3,
            "lineage_http_p50_ms": statistics.median(lineage_lat) * 1e3,
            "lineage_http_bundle_entries": len(r.json()["entries"]),
            "note": "client threads share the machine's cores with the server",
        },
    }


def row_ratelimit(s: Size) -> dict[str, Any]:
    uses_n = s.args.uses
    limits = {"rate": {"count": uses_n + 5000, "window": 3600}, "max_uses": 10 * uses_n}
    busy, idle = s.fresh_chains(2, **limits)
    log = s.log
    pump = [Use(busy.holders[3], busy.leaf, request(busy.mailbox, i), True) for i in range(uses_n)]
    pumped = run_decisions(log, pump, 64, "gw-pump")
    counted = log.store._query(
        "SELECT COUNT(*) FROM recent_uses WHERE credential = ?", (busy.ids[0],)
    )[0][0]
    lat: dict[str, list[float]] = {"busy": [], "idle": []}
    for i in range(300):
        for name, c in (("busy", busy), ("idle", idle)):
            inv = sign_invocation(
                c.holders[3], c.leaf, request(c.mailbox, 500_000 + i), int(log.clock())
            )
            t = time.perf_counter()
            d = decide(log, inv, {}, "gw-rate")
            lat[name].append(time.perf_counter() - t)
            if not d.allowed:
                raise RuntimeError(f"rate-limit row: {name} denied: {d.reason}")
    busy_ms = statistics.median(lat["busy"]) * 1e3
    idle_ms = statistics.median(lat["idle"]) * 1e3
    return {
        "value": busy_ms,
        "unit": f"ms/decision, {uses_n:,} uses",
        "baseline": idle_ms,
        "baseline_name": "ms/decision, no uses",
        "ratio": busy_ms / idle_ms,
        "target": "~1x",
        "ok": busy_ms / idle_ms <= 1.2,
        "detail": {
            "limits": limits,
            "recent_uses_rows_of_grant": counted,
            "busy_p90_ms": pct(lat["busy"], 0.9) * 1e3,
            "idle_p90_ms": pct(lat["idle"], 0.9) * 1e3,
            "pump_decisions_per_s": uses_n / pumped,
            "note": "every use is inside the rate window, so the rate check counts them all;"
            " latency is one decision at a time (each waits for its fsync)",
        },
    }


ROW_FUNCS: dict[str, Row] = {
    "proof": row_proof,
    "lineage": row_lineage,
    "bundle": row_bundle,
    "audit": row_audit,
    "restart": row_restart,
    "rss": row_rss,
    "decisions": row_decisions,
    "appends": row_appends,
    "http": row_http,
    "ratelimit": row_ratelimit,
}


# -- output -------------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(size: int, meta: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"## {size:,} leaves (built in {meta['build_seconds']:.1f} s at "
        f"{meta['build_rate']:,.0f} leaves/s{', cached' if meta.get('cached') else ''})",
        "",
        "| row | value | baseline (same run) | ratio | target | meets |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | |")
            continue
        baseline = ""
        if r.get("baseline") is not None:
            baseline = f"{fmt(r['baseline'])} {r.get('baseline_name', '')}"
        elif r.get("skipped"):
            baseline = f"skipped: {r['skipped']}"
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
        ok = {True: "yes", False: "NO", None: ""}[r.get("ok")]
        lines.append(
            f"| {name} | {fmt(r['value'])} {r['unit']} | {baseline} | {ratio} "
            f"| {r.get('target', '')} | {ok} |"
        )
        for label, value, unit, base, base_name in r.get("extra", ()):
            ratio = f"{value / base:.2f}x" if base else ""
            against = f"{fmt(base)} {base_name}" if base else ""
            lines.append(f"| {label} | {fmt(value)} {unit} | {against} | {ratio} | | |")
    return "\n".join(lines)


PANELS = (
    ("restart", "restart: open to first decision (ms)"),
    ("rss", "peak RSS (MiB)"),
    ("appends", "durable appends/s, 32 threads"),
    ("proof", "inclusion proof, median (µs)"),
)


def svg_plot(results: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    """Four panels against log size (log scale), hand-written SVG."""
    w, h, pad = 420, 260, 56
    sizes = sorted(results)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{2 * h + 30}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{2 * w}" height="{2 * h + 30}" fill="white"/>',
        '<text x="10" y="18" font-size="14">Lineage ledger: cost against log size '
        f"({platform.node()}, {time.strftime('%Y-%m-%d')})</text>",
    ]
    lo = math.log10(min(sizes)) if sizes else 0
    hi = math.log10(max(sizes)) if sizes else 1
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    for k, (row, title) in enumerate(PANELS):
        ox, oy = (k % 2) * w, 30 + (k // 2) * h
        pts = [
            (n, results[n][row]["value"])
            for n in sizes
            if row in results[n] and "value" in results[n][row]
        ]
        top = max([v for _, v in pts] + [1e-9]) * 1.15
        x0, x1, y0, y1 = ox + pad, ox + w - 50, oy + h - 40, oy + 24

        def X(n: float, x0: float = x0, x1: float = x1) -> float:
            return x0 + (math.log10(n) - lo) / (hi - lo) * (x1 - x0)

        def Y(v: float, y0: float = y0, y1: float = y1, top: float = top) -> float:
            return y0 - v / top * (y0 - y1)

        out.append(f'<text x="{ox + pad}" y="{oy + 14}" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for j in range(5):
            v = top * j / 4
            out.append(
                f'<line x1="{x0 - 4}" y1="{Y(v):.1f}" x2="{x1}" y2="{Y(v):.1f}" '
                'stroke="#ddd"/>'
                f'<text x="{x0 - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>'
            )
        for n in sizes:
            out.append(
                f'<line x1="{X(n):.1f}" y1="{y0}" x2="{X(n):.1f}" y2="{y0 + 4}" stroke="black"/>'
                f'<text x="{X(n):.1f}" y="{y0 + 16}" text-anchor="middle">{n:,}</text>'
            )
        out.append(
            f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle">'
            "leaves in the log (log scale)</text>"
        )
        if pts:
            line = " ".join(f"{X(n):.1f},{Y(v):.1f}" for n, v in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="#1f5fbf" stroke-width="2"/>')
            for n, v in pts:
                out.append(
                    f'<circle cx="{X(n):.1f}" cy="{Y(v):.1f}" r="3.5" fill="#1f5fbf"/>'
                    f'<text x="{X(n) + 5:.1f}" y="{Y(v) - 6:.1f}">{fmt(v)}</text>'
                )
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


# -- main ---------------------------------------------------------------------------------------


def git_rev() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated leaves")
    ap.add_argument(
        "--only",
        default=",".join(ROWS),
        help=f"rows to run: {', '.join(ROWS)}; 'build' only builds (and caches) the ledgers",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench.json"))
    ap.add_argument("--plot", type=Path, default=None, help="write an SVG plot here")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "lineage-state-bench",
        help="built ledgers, kept by size",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch copies (default: --cache)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
    ap.add_argument("--principals", type=int, default=8)
    ap.add_argument("--threads", type=int, default=64, help="deciding threads in the build")
    ap.add_argument("--uses", type=int, default=20000, help="past uses in the rate-limit row")
    ap.add_argument("--decisions", type=int, default=3000, help="decisions in that row")
    ap.add_argument("--appends", type=int, default=3200, help="appends in that row")
    ap.add_argument("--http-requests", type=int, default=1600, help="POST /v1/access count")
    ap.add_argument("--child", choices=("restart", "rss"), help=argparse.SUPPRESS)
    ap.add_argument("--child-spec", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child_spec.read_text())
        answer = {"restart": child_restart, "rss": child_rss}[args.child](spec)
        print(json.dumps(answer))
        return
    sizes = [int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip()]
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(ROWS) - {"build"}
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(ROWS)}")
    only = [r for r in ROWS if r in only]  # the order that keeps the copies close to nominal
    work = args.work or args.cache
    work.mkdir(parents=True, exist_ok=True)
    base = Baselines()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_rev(),
        "machine": {
            "node": platform.node(),
            "cores": base.cores,
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
        },
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "build": {},
        "sizes": {},
        "baselines": {},
    }
    report["settings"] = {k: str(v) for k, v in report["settings"].items()}
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        cached, meta = ensure_ledger(args.cache, size, args.principals, args.threads)
        report["build"][str(size)] = meta
        if not only:
            continue
        scratch = scratch_copy(cached, work)
        s = Size(size, scratch, meta, base, args)
        rows: dict[str, dict[str, Any]] = {}
        try:
            for name in only:
                say(f"[{size:,}] {name} ...")
                load = os.getloadavg()[0]
                t = time.perf_counter()
                try:
                    rows[name] = ROW_FUNCS[name](s)
                except Exception as exc:  # one failing row must not hide the others
                    rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    say(f"[{size:,}] {name} failed: {rows[name]['error']}")
                rows[name]["row_seconds"] = round(time.perf_counter() - t, 2)
                rows[name]["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        finally:
            s.close()
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
        results[size] = rows
        print(table(size, meta, rows), flush=True)
        print(flush=True)
    # RSS against the 10k ledger (or the smallest measured), from this run
    rss = {n: r["rss"]["value"] for n, r in results.items() if "value" in r.get("rss", {})}
    if rss:
        ref = 10000 if 10000 in rss else min(rss)
        for n, value in rss.items():
            r = results[n]["rss"]
            r.update(
                baseline=rss[ref],
                baseline_name=f"MiB at {ref:,}",
                ratio=value / rss[ref],
                ok=value / rss[ref] <= 1.3,
            )
        print(
            f"RSS against {ref:,} leaves: "
            + ", ".join(f"{n:,}: {v:.1f} MiB ({v / rss[ref]:.2f}x)" for n, v in sorted(rss.items()))
        )
    report["sizes"] = {str(n): r for n, r in results.items()}
    report["baselines"] = {
        "cores": base.cores,
        "pynacl_verify_runs": base.verify_runs,
        "biscuit_4_block_runs_per_s": base.biscuit_runs or base._biscuit,
    }
    if len(sizes) > 0:
        rates = [(int(k), v["build_rate"]) for k, v in report["build"].items()]
        slowest = min(r for _, r in rates)
        report["build_estimate_seconds"] = {
            str(n): round(n / slowest) for n in (100_000, 1_000_000)
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    if args.plot is not None:
        svg_plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
