"""The explorer's search (``GET /v1/entries``) on 10k, 100k and 1M leaves, against a
baseline measured beside it in the same run.

    .venv/bin/python bench/explorer_bench.py --sizes 10000,100000,1000000 \\
        --out /tmp/bench_explorer.json --md /tmp/bench_explorer.md [--cache DIR] [--work /tmp]

Run by hand, never in the test suite. It reuses the ledgers ``bench/state_bench.py``
built and cached (``--cache``, the same default; a size not cached is built first,
which takes about half an hour at 1M). Those predate migration 10 (``access_refs``,
an access's decision and resource), so each size is measured on scratch copies (under
``--work``, one at a time, deleted afterwards; the cache is never opened for writing):

    upgrade     copy 1: open (migrations 5 to 10), then the first
                ``entries(log, Filter(decision="deny"))`` page, which back-fills every
                access's ``access_refs`` row (``Log.index_refs``: all of it, 2,000 rows
                a transaction); then close, reopen, and the first page again (later
                opens only read that the back-fill is done)
    search      copy 1, through the real route (``TestClient(create_app(...))``, an
                auditor's bearer token: authentication, ``leaf_json`` and the JSON are
                in it), limit 100. Filters: decision=deny; deny with a principal; a
                resource exactly; a resource prefix (``...*``); a principal alone; and
                the baseline ``kind=access``. Two passes: the first page (no cursor,
                the explorer's search), then pages at random cursors in the first half
                of the log (what "More" asks for deep in it; each filter its own
                cursors). The filters take turns in a shuffled order; principals and
                resources come from the ledger's own access entries and vary from
                request to request. Then three sparse filters, whose matches are rare
                or absent (a rare resource prefix, deny on a resource never denied, a
                prefix nothing has), the worst case of a page bounded by matches. Each
                response is checked against a plain SQL count; ``find_refs`` alone (the
                SQL) is timed after each request, and each filter's EXPLAIN QUERY PLAN
                is kept
    parts       copy 1, in process, on windows of their own: ``query.entries`` for a
                page's rows, then ``credential_of`` for each (what ``leaf_json`` looks
                up before ``may_read``)
    sweeps      copy 1: following ``next_cursor`` from the start to the end
    lineage     copy 1: ``GET /v1/credentials/{id}/lineage`` of denied accesses'
                credentials
    background  copy 2: what ``lineage serve`` does with an upgraded ledger: the
                checkpoint thread back-fills a batch a tick; the time until done, and
                the latency of appends made meanwhile against appends after

Ratios are what to quote (the machine is shared): each filter against ``kind=access``
in the same size, and each filter's 1M latency against its 10k and 100k latency. The
page cache is warm (the copy was just written).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from lineage.api.main import create_app
from lineage.api.routers.entries import MAX_SCAN, PREFIX_WINDOW
from lineage.ledger.config import Settings
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import open_ledger
from lineage.ledger.log import ACCESS_CATCH_UP, Log
from lineage.ledger.query import Filter, entries
from lineage.ledger.refs import access_of, credential_of
from lineage.ledger.store import ACCESS_REFS_DONE
from lineage.ledger.tokens import TokenStore
from lineage.verifier.keys import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from state_bench import ORIGIN, ensure_ledger, git_rev, pct, say, scratch_copy

LIMIT = 100  # the explorer's page
FILTERS = (  # name, what it is, in the order of the tables
    ("kind=access", "kind=access (baseline)"),
    ("deny", "decision=deny"),
    ("deny+principal", "decision=deny&principal=P"),
    ("resource", "resource=R (exact)"),
    ("prefix", "resource=R* (prefix)"),
    ("principal", "principal=P"),
)
SPARSE = (
    ("rare-prefix", "resource=mailbox:uN/inbox/msg-99* (rare: a revoked chain's last use)"),
    ("deny+allowed-resource", "decision=deny&resource=mailbox:uN/inbox/msg-0 (never denied)"),
    ("no-match-prefix", "resource=mailbox:nobody/* (no match)"),
)
CURSORS = ("first", "random")
SWEEPS = ("deny+principal", "resource", "deny")


# -- the one-time upgrade ---------------------------------------------------------------------


def count(log: Log, sql: str, params: Sequence[Any] = ()) -> int:
    return log.store._query(sql, params)[0][0]


def db_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("ledger.db*") if p.is_file())


def first_deny_page(log: Log) -> tuple[float, int]:
    t = time.perf_counter()
    rows = list(itertools.islice(entries(log, Filter(decision="deny")), LIMIT))
    return time.perf_counter() - t, len(rows)


def upgrade(copy: Path) -> tuple[Log, dict[str, Any]]:
    """Open the copy (migrations), then the first deny page (the back-fill); close and do
    both again. Returns the reopened log."""
    out: dict[str, Any] = {"db_bytes_before": db_bytes(copy)}
    t = time.perf_counter()
    log = open_ledger(copy / "ledger.db", copy / "keys")
    out["open_s"] = time.perf_counter() - t
    out["size"] = log.size
    out["accesses"] = count(log, "SELECT COUNT(*) FROM refs WHERE kind = 'access'")
    out["access_refs_before"] = count(log, "SELECT COUNT(*) FROM access_refs")
    out["done_before"] = log.store.get_meta(ACCESS_REFS_DONE)
    out["first_page_s"], out["first_page_rows"] = first_deny_page(log)
    out["access_refs_after"] = count(log, "SELECT COUNT(*) FROM access_refs")
    out["done_after"] = log.store.get_meta(ACCESS_REFS_DONE)
    out["backfilled"] = out["access_refs_after"] - out["access_refs_before"]
    out["rows_per_s"] = out["backfilled"] / out["first_page_s"]
    out["transactions"] = -(-out["backfilled"] // ACCESS_CATCH_UP)
    log.close()
    out["db_bytes_after"] = db_bytes(copy)
    t = time.perf_counter()
    log = open_ledger(copy / "ledger.db", copy / "keys")
    out["reopen_s"] = time.perf_counter() - t
    out["reopen_first_page_s"], _ = first_deny_page(log)
    return log, out


def background(copy: Path, interval: float) -> dict[str, Any]:
    """The back-fill as ``lineage serve`` does it: the checkpoint thread, a batch a tick.
    Appends one at a time meanwhile (a principal bound), then as many after it is done."""
    log = open_ledger(copy / "ledger.db", copy / "keys")
    try:
        accesses = count(log, "SELECT COUNT(*) FROM refs WHERE kind = 'access'")
        op = log.keys.operator
        n = itertools.count()

        def one_append() -> float:
            i = next(n)
            key = SigningKey.generate()
            entry = bind_principal(ORIGIN, op, f"bench-bg-{i}@corp.example", key.public)
            t = time.perf_counter()
            log.append(entry)
            return time.perf_counter() - t

        during: list[float] = []
        started = time.perf_counter()
        log.start_checkpointing(interval)
        while not log._access_indexed:
            during.append(one_append())
            time.sleep(0.02)
        took = time.perf_counter() - started
        after = [one_append() for _ in range(max(20, len(during)))]
        ok = log.store.get_meta(ACCESS_REFS_DONE) is not None
        rows = count(log, "SELECT COUNT(*) FROM access_refs")
        first_page, _ = first_deny_page(log)
    finally:
        log.close()
    return {
        "interval_s": interval,
        "accesses": accesses,
        "access_refs_after": rows,
        "done": ok,
        "seconds_to_done": took,
        "rows_per_s": accesses / took,
        "appends_during": len(during),
        "append_during_median_ms": statistics.median(during) * 1e3 if during else None,
        "append_during_p95_ms": pct(during, 0.95) * 1e3 if during else None,
        "append_during_max_ms": max(during) * 1e3 if during else None,
        "append_after_median_ms": statistics.median(after) * 1e3,
        "append_after_p95_ms": pct(after, 0.95) * 1e3,
        "append_after_max_ms": max(after) * 1e3,
        "first_deny_page_after_ms": first_page * 1e3,
    }


# -- what to ask ------------------------------------------------------------------------------


def pick_arguments(log: Log, rng: random.Random, window: int) -> dict[str, list[str]]:
    """Principals and resources of real access entries (read from the leaves) in the first
    ``window`` leaves; the builder's mix repeats through the log, so they occur everywhere."""
    rows = log.store._query(
        "SELECT idx, principal FROM refs WHERE kind = 'access' AND idx < ? ORDER BY idx",
        (window,),
    )
    principals = sorted({p for _, p in rows if p})
    resources: set[str] = set()
    for index, _ in rng.sample(rows, min(300, len(rows))):
        _, resource = access_of(log.leaf(index)) or (None, None)
        if resource:
            resources.add(resource)
    res = sorted(resources)
    prefixes = sorted(
        {r.split("/", 1)[0] + "/*" for r in res}
        | {r.rsplit("/", 1)[0] + "/*" for r in res}
        | {r[: r.rindex("-") + 2] + "*" for r in res if "-" in r}  # mailbox:u3/inbox/msg-1*
    )
    boxes = sorted({r.split("/", 1)[0] for r in res})
    return {
        "principals": principals,
        "resources": res,
        "prefixes": prefixes,
        # the builder's mix (bench/state_bench.py): msg-99 is the one use of a revoked chain
        # (denied); msg-0 is a read every chain makes and every credential allows
        "rare_prefixes": [f"{b}/inbox/msg-99*" for b in boxes],
        "allowed_resources": [f"{b}/inbox/msg-0" for b in boxes],
    }


def params_for(name: str, args: dict[str, list[str]], i: int) -> dict[str, str]:
    def nth(key: str) -> str:
        return args[key][i % len(args[key])]

    return {
        "kind=access": lambda: {"kind": "access"},
        "deny": lambda: {"decision": "deny"},
        "deny+principal": lambda: {"decision": "deny", "principal": nth("principals")},
        "resource": lambda: {"resource": nth("resources")},
        "prefix": lambda: {"resource": nth("prefixes")},
        "principal": lambda: {"principal": nth("principals")},
        "rare-prefix": lambda: {"resource": nth("rare_prefixes")},
        "deny+allowed-resource": lambda: {
            "decision": "deny",
            "resource": nth("allowed_resources"),
        },
        "no-match-prefix": lambda: {"resource": "mailbox:nobody/*"},
    }[name]()


def find_refs_match(q: dict[str, str]) -> dict[str, Any]:
    """What ``query.entries`` passes to ``find_refs`` for these parameters."""
    kind = q.get("kind")
    if "decision" in q or "resource" in q:
        kind = "access"
    return {
        "principal": q.get("principal"),
        "holders": None,
        "task": None,
        "kind": kind,
        "since": None,
        "until": None,
        "decision": q.get("decision"),
        "resource": q.get("resource"),
    }


def expected(check: sqlite3.Connection, q: dict[str, str], start: int) -> int:
    """Matches from ``start`` on, up to a page and one, by plain SQL (no index hints); a
    resource prefix within the window one request walks (``PREFIX_WINDOW``)."""
    where, params = ["r.idx >= ?"], [start]
    if q.get("resource", "").endswith("*"):
        where.append("r.idx < ?")
        params.append(start + PREFIX_WINDOW)
    if "kind" in q or "decision" in q or "resource" in q:
        where.append("r.kind = 'access'")
    if "principal" in q:
        where.append("r.principal = ?")
        params.append(q["principal"])
    if "decision" in q:
        where.append("a.decision = ?")
        params.append(q["decision"])
    if "resource" in q:
        r = q["resource"]
        if r.endswith("*"):
            where.append("substr(a.resource, 1, ?) = ?")
            params += [len(r) - 1, r[:-1]]
        else:
            where.append("a.resource = ?")
            params.append(r)
    sql = (
        "SELECT COUNT(*) FROM (SELECT 1 FROM refs r LEFT JOIN access_refs a ON a.idx = r.idx "
        f"WHERE {' AND '.join(where)} LIMIT {LIMIT + 1})"
    )
    return check.execute(sql, params).fetchone()[0]


def plan_of(log: Log, start: int, match: dict[str, Any]) -> dict[str, Any]:
    """The SQL ``find_refs`` runs for ``match`` and SQLite's plan for it."""
    store = log.store
    seen: list[tuple[str, list[Any]]] = []
    original = store._query

    def spy(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        seen.append((sql, list(params)))
        return original(sql, params)

    store._query = spy  # type: ignore[method-assign]
    try:
        store.find_refs(start, log.size, 500, **match)
    finally:
        del store._query  # the class's method again
    sql, params = seen[-1]
    plan = [row[-1] for row in original("EXPLAIN QUERY PLAN " + sql, params)]
    return {"sql": sql, "params": params, "plan": plan}


# -- the search ------------------------------------------------------------------------------


class Searcher:
    """Requests through the route, each checked, with ``find_refs`` timed after it."""

    def __init__(
        self, log: Log, client: TestClient, headers: dict[str, str], check: sqlite3.Connection
    ):
        self.log, self.client, self.headers, self.check = log, client, headers, check
        self.wrong: list[str] = []

    def page(self, f: str, q: dict[str, str], start: int) -> dict[str, Any]:
        q = {**q, "limit": str(LIMIT), **({"cursor": str(start)} if start else {})}
        t = time.perf_counter()
        r = self.client.get("/v1/entries", params=q, headers=self.headers)
        took = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"{q}: {r.status_code} {r.text[:300]}")
        page = r.json()
        n = len(page["entries"])
        want = min(LIMIT, expected(self.check, q, start))
        if n != want:
            self.wrong.append(f"{f} {q}: {n} rows, SQL says {want}")
        window_end = start + PREFIX_WINDOW if q.get("resource", "").endswith("*") else None
        if want <= LIMIT - 1 and page["next_cursor"] not in (None, window_end):
            self.wrong.append(f"{f} {q}: the last page ({n} rows) has a next_cursor")
        for row in page["entries"]:
            self.check_row(f, q, row)
        t = time.perf_counter()
        self.log.store.find_refs(start, self.log.size, 500, **find_refs_match(q))
        sql = time.perf_counter() - t
        return {"seconds": took, "sql_seconds": sql, "rows": n, "next": page["next_cursor"]}

    def check_row(self, f: str, q: dict[str, str], row: dict[str, Any]) -> None:
        e = row.get("entry")
        if e is None:
            self.wrong.append(f"{f}: row {row['index']} has no entry for an auditor")
            return
        if "principal" not in q and e["kind"] != "access":
            self.wrong.append(f"{f}: row {row['index']} is a {e['kind']}")
        if "decision" in q and e.get("decision") != q["decision"]:
            self.wrong.append(f"{f}: row {row['index']} decided {e.get('decision')}")
        if "resource" in q:
            res = e["invocation"]["request"].get("resource", "")
            r = q["resource"]
            if not (res.startswith(r[:-1]) if r.endswith("*") else res == r):
                self.wrong.append(f"{f}: row {row['index']} is on {res}, not {r}")


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    v = [s["seconds"] for s in samples]
    sql = [s["sql_seconds"] for s in samples]
    return {
        "median_ms": statistics.median(v) * 1e3,
        "p95_ms": pct(v, 0.95) * 1e3,
        "sql_median_ms": statistics.median(sql) * 1e3,
        "sql_p95_ms": pct(sql, 0.95) * 1e3,
        "rows_mean": statistics.mean(s["rows"] for s in samples),
        "n": len(v),
    }


def measure_search(
    log: Log, s: Searcher, args: dict[str, list[str]], reps: int, rng: random.Random
) -> dict[str, Any]:
    size = log.size
    # random cursors: each filter its own, so that no request finds what another filter's
    # request at the same place just loaded; in the first half, so that most pages fill
    cursors = {f: [rng.randrange(max(1, size // 2)) for _ in range(reps)] for f, _ in FILTERS}
    for f, _ in FILTERS:  # warm up each path (and the ASGI portal)
        for i in range(5):
            s.page(f, params_for(f, args, i), 0)
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order = [f for f, _ in FILTERS]
    for c in CURSORS:  # one pass each: the first pages alone keep their caches warm
        for i in range(reps):
            rng.shuffle(order)
            for f in order:
                start = 0 if c == "first" else cursors[f][i]
                got.setdefault((f, c), []).append(s.page(f, params_for(f, args, i), start))
    sparse: dict[str, list[dict[str, Any]]] = {}
    sparse_reps = max(20, reps // 2)
    order = [f for f, _ in SPARSE]
    for i in range(sparse_reps):  # the first page, whose cursor is 0
        rng.shuffle(order)
        for f in order:
            sparse.setdefault(f, []).append(s.page(f, params_for(f, args, i), 0))
    out: dict[str, Any] = {"filters": {}, "sparse": {}}
    for f, label in FILTERS:
        out["filters"][f] = {"label": label, **{c: summary(got[f, c]) for c in CURSORS}}
        out["filters"][f]["plan"] = plan_of(log, 0, find_refs_match(params_for(f, args, 0)))
    for f, label in SPARSE:
        out["sparse"][f] = {"label": label, "first": summary(sparse[f])}
        out["sparse"][f]["plan"] = plan_of(log, 0, find_refs_match(params_for(f, args, 0)))
    for c in CURSORS:
        base = out["filters"]["kind=access"][c]["median_ms"]
        for f, _ in FILTERS:
            out["filters"][f][c]["vs_baseline"] = out["filters"][f][c]["median_ms"] / base
    base = out["filters"]["kind=access"]["first"]["median_ms"]
    for f, _ in SPARSE:
        out["sparse"][f]["first"]["vs_baseline"] = out["sparse"][f]["first"]["median_ms"] / base
    return out


def measure_parts(
    log: Log, args: dict[str, list[str]], reps: int, rng: random.Random
) -> dict[str, Any]:
    """Where a page's time goes, in process, on windows of its own: ``query.entries`` (the
    SQL, then reading and parsing each leaf) for the page's rows, then ``credential_of``
    for each row (what ``leaf_json`` looks up before ``may_read``, whoever asks)."""
    size = log.size
    got: dict[tuple[str, str, str], list[float]] = {}
    order = [f for f, _ in FILTERS]
    for c in CURSORS:
        for _ in range(reps):
            rng.shuffle(order)
            for f in order:
                start = 0 if c == "first" else rng.randrange(max(1, size // 2))
                q = params_for(f, args, rng.randrange(1000))
                t0 = time.perf_counter()
                rows = list(itertools.islice(entries(log, Filter(**q), start), LIMIT))
                t1 = time.perf_counter()
                state = log.state()
                for _, leaf in rows:
                    credential_of(state, leaf)
                t2 = time.perf_counter()
                got.setdefault(("entries", f, c), []).append(t1 - t0)
                got.setdefault(("credential_of", f, c), []).append(t2 - t1)
    return {
        c: {
            f: {
                "entries_median_ms": statistics.median(got["entries", f, c]) * 1e3,
                "credential_of_median_ms": statistics.median(got["credential_of", f, c]) * 1e3,
            }
            for f, _ in FILTERS
        }
        for c in CURSORS
    }


def measure_sweeps(
    client: TestClient, headers: dict[str, str], args: dict[str, list[str]]
) -> dict[str, Any]:
    """Follow ``next_cursor`` from the start to the end of the log ("More" until there is
    no more), once per filter: requests, rows found, and the time all of them took."""
    out: dict[str, Any] = {}
    for f in SWEEPS:
        q = {**params_for(f, args, 0), "limit": str(LIMIT)}  # the same at every size
        requests, found, cursor, most = 0, 0, None, 0.0
        t = time.perf_counter()
        while True:
            one = time.perf_counter()
            r = client.get(
                "/v1/entries",
                params={**q, **({"cursor": cursor} if cursor is not None else {})},
                headers=headers,
            )
            most = max(most, time.perf_counter() - one)
            if r.status_code != 200:
                raise RuntimeError(f"sweep {q}: {r.status_code} {r.text[:300]}")
            page = r.json()
            requests += 1
            found += len(page["entries"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        took = time.perf_counter() - t
        out[f] = {
            "params": q,
            "requests": requests,
            "rows": found,
            "seconds": took,
            "slowest_ms": most * 1e3,
        }
    return out


def measure_lineage(
    log: Log, client: TestClient, headers: dict[str, str], reps: int, rng: random.Random
) -> dict[str, Any]:
    """``GET /v1/credentials/{id}/lineage`` of the credentials of denied accesses (what
    "lineage" on a search row opens)."""
    creds = [
        r[0]
        for r in log.store._query(
            "SELECT DISTINCT r.credential FROM access_refs a INDEXED BY access_refs_decision "
            "JOIN refs r ON r.idx = a.idx WHERE a.decision = 'deny' LIMIT 2000"
        )
    ]
    rng.shuffle(creds)
    lat, sizes = [], []
    for i in range(reps + 5):
        cid = creds[i % len(creds)]
        t = time.perf_counter()
        r = client.get(f"/v1/credentials/{cid}/lineage", headers=headers)
        took = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"lineage {cid}: {r.status_code} {r.text[:300]}")
        if i >= 5:
            lat.append(took)
            sizes.append(len(r.json()["entries"]))
    return {
        "median_ms": statistics.median(lat) * 1e3,
        "p95_ms": pct(lat, 0.95) * 1e3,
        "bundle_entries_median": statistics.median(sizes),
        "n": len(lat),
    }


# -- one size, and the report ------------------------------------------------------------------


def one_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    cached, meta = ensure_ledger(args.cache, size, args.principals, 64)
    args.work.mkdir(parents=True, exist_ok=True)
    need = 2 * sum(p.stat().st_size for p in cached.glob("ledger.db*"))
    free = shutil.disk_usage(args.work).free
    if free < need:
        raise SystemExit(f"{args.work}: {free:,} bytes free, a copy needs about {need:,}")
    rng = random.Random(args.seed)
    load = [os.getloadavg()[0]]
    t = time.perf_counter()
    copy = scratch_copy(cached, args.work)
    out: dict[str, Any] = {"copy_s": time.perf_counter() - t, "build": meta}
    log = None
    try:
        say(f"[{size:,}] upgrade ...")
        log, out["upgrade"] = upgrade(copy)
        u = out["upgrade"]
        say(
            f"[{size:,}] back-filled {u['backfilled']:,} rows in {u['first_page_s']:.2f} s "
            f"({u['rows_per_s']:,.0f}/s); open {u['open_s'] * 1e3:.0f} ms"
        )
        load.append(os.getloadavg()[0])
        search_args = pick_arguments(log, rng, min(log.size, MAX_SCAN))
        out["arguments"] = search_args
        auditor = TokenStore(log.store).create("auditor", "explorer-bench")[1]
        headers = {"Authorization": f"Bearer {auditor}"}
        check = sqlite3.connect(f"file:{copy / 'ledger.db'}?mode=ro", uri=True)
        # one app and one client (one event-loop portal) for every request; leaving the
        # block runs the app's shutdown, which closes the log
        with TestClient(create_app(log, Settings(), checkpoints=False)) as client:
            s = Searcher(log, client, headers, check)
            say(f"[{size:,}] search, {args.reps} x {len(FILTERS)} filters x {len(CURSORS)} ...")
            out["search"] = measure_search(log, s, search_args, args.reps, rng)
            out["search"]["wrong"] = s.wrong[:20]
            out["search"]["wrong_count"] = len(s.wrong)
            load.append(os.getloadavg()[0])
            say(f"[{size:,}] parts ...")
            out["parts"] = measure_parts(log, search_args, args.reps // 2, rng)
            say(f"[{size:,}] sweeps ...")
            out["sweeps"] = measure_sweeps(client, headers, search_args)
            say(f"[{size:,}] lineage ...")
            reps = max(50, args.reps // 2)
            out["lineage"] = measure_lineage(log, client, headers, reps, rng)
        check.close()
        load.append(os.getloadavg()[0])
    finally:
        if log is not None:
            log.close()
        out["db_bytes_end"] = db_bytes(copy)
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)
    if args.background:
        copy = scratch_copy(cached, args.work)
        try:
            say(f"[{size:,}] background back-fill ...")
            out["background"] = background(copy, args.interval)
            b = out["background"]
            say(f"[{size:,}] background: done in {b['seconds_to_done']:.1f} s")
        finally:
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    load.append(os.getloadavg()[0])
    out["loadavg_1min"] = [round(x, 2) for x in load]
    return out


def ms(x: float) -> str:
    if x >= 1000:
        return f"{x / 1e3:.1f} s"
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def markdown(report: dict[str, Any]) -> str:
    sizes = [int(s) for s in report["sizes"]]
    R = {int(k): v for k, v in report["sizes"].items()}
    label = {n: f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M" for n in sizes}
    lo, hi = min(sizes), max(sizes)
    mid = sorted(sizes)[-2] if len(sizes) > 2 else None
    m = report["machine"]
    lines = [
        f"## {time.strftime('%Y-%m-%d')}, the explorer's search on "
        + ", ".join(label[n] for n in sizes)
        + " leaves (one run)",
        "",
        f"`{report['command']}` at {report['git']}, on the shared {m['cores']}-core machine "
        f"({m['arch']}, Python {m['python']}, SQLite {m['sqlite']}; load average "
        f"{report['loadavg_range'][0]} to {report['loadavg_range'][1]}).",
        "",
        "### The one-time upgrade",
        "",
        "| leaves | accesses back-filled | open (migrations 5 to 10) | first deny page "
        "(the whole back-fill) | rows/s | database grew | later open, its first deny page |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        u = R[n]["upgrade"]
        grew = (u["db_bytes_after"] - u["db_bytes_before"]) / 2**20
        lines.append(
            f"| {n:,} | {u['backfilled']:,} | {ms(u['open_s'] * 1e3)} | "
            f"{ms(u['first_page_s'] * 1e3)} | {u['rows_per_s']:,.0f} | {grew:,.1f} MiB | "
            f"{ms(u['reopen_s'] * 1e3)}, {ms(u['reopen_first_page_s'] * 1e3)} |"
        )
    if all("background" in R[n] for n in sizes):
        lines += [
            "",
            "In the background (the checkpoint thread, a batch a tick; appends one at a "
            "time meanwhile), time to done, and append latency median / p95 / max during "
            "it against after it:",
            "",
            "| leaves | done in | rows/s | appends during: median / p95 / max | "
            "after: median / p95 / max |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in sizes:
            b = R[n]["background"]
            during = (
                f"{b['append_during_median_ms']:.1f} / {b['append_during_p95_ms']:.1f} / "
                f"{b['append_during_max_ms']:.1f} ms ({b['appends_during']})"
                if b["appends_during"]
                else "none"
            )
            lines.append(
                f"| {n:,} | {b['seconds_to_done']:.1f} s | {b['rows_per_s']:,.0f} | {during} | "
                f"{b['append_after_median_ms']:.1f} / {b['append_after_p95_ms']:.1f} / "
                f"{b['append_after_max_ms']:.1f} ms |"
            )
    ratio_heads = f" {label[hi]}/{label[lo]} |" + (f" {label[hi]}/{label[mid]} |" if mid else "")
    ratio_rule = " ---: |" + (" ---: |" if mid else "")
    for c, title in (
        ("first", "The first page (no cursor: the explorer's search)"),
        ("random", 'A page at a random cursor in the first half of the log ("More")'),
    ):
        lines += [
            "",
            f"### {title}",
            "",
            "Median (p95) ms of `GET /v1/entries` through the route, limit 100, and x, "
            "against `kind=access` at the same size; rows: the mean returned, by size.",
            "",
            "| filter | " + " | ".join(f"{label[n]}" for n in sizes) + " | rows |" + ratio_heads,
            "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |" + ratio_rule,
        ]
        for f, text in FILTERS:
            x = {n: R[n]["search"]["filters"][f][c] for n in sizes}
            cells = [
                f"{x[n]['median_ms']:.1f} ({x[n]['p95_ms']:.1f}) {x[n]['vs_baseline']:.2f}x"
                for n in sizes
            ]
            rows = " / ".join(f"{x[n]['rows_mean']:.0f}" for n in sizes)
            ratios = f" {x[hi]['median_ms'] / x[lo]['median_ms']:.2f}x |"
            if mid:
                ratios += f" {x[hi]['median_ms'] / x[mid]['median_ms']:.2f}x |"
            lines.append(f"| `{text}` | " + " | ".join(cells) + f" | {rows} |" + ratios)
        lines += [
            "",
            "`find_refs` alone (the SQL, timed right after each request), median ms: "
            + "; ".join(
                f"`{f}` "
                + " / ".join(
                    f"{R[n]['search']['filters'][f][c]['sql_median_ms']:.2f}" for n in sizes
                )
                for f, _ in FILTERS
            )
            + f" ({' / '.join(label[n] for n in sizes)}).",
        ]
    lines += [
        "",
        "### Where a page spends its time",
        "",
        "In process, median ms, on windows of their own: `query.entries` for the page's "
        "rows (the SQL, then reading and parsing each leaf) / `credential_of` for each row "
        "(what `leaf_json` looks up before `may_read`, an auditor's request included).",
        "",
        "| filter | " + " | ".join(f"{label[n]} first | {label[n]} random" for n in sizes) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in sizes) + " |",
    ]
    for f, text in FILTERS:
        cells = []
        for n in sizes:
            for c in CURSORS:
                p = R[n]["parts"][c][f]
                cells.append(f"{p['entries_median_ms']:.1f} / {p['credential_of_median_ms']:.1f}")
        lines.append(f"| `{text}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Sparse filters (the first page)",
        "",
        "| filter | " + " | ".join(f"{label[n]} ms" for n in sizes) + " | rows |" + ratio_heads,
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |" + ratio_rule,
    ]
    for f, text in SPARSE:
        x = {n: R[n]["search"]["sparse"][f]["first"] for n in sizes}
        cells = [f"{x[n]['median_ms']:.1f} ({x[n]['p95_ms']:.1f})" for n in sizes]
        rows = " / ".join(f"{x[n]['rows_mean']:.0f}" for n in sizes)
        ratios = f" {x[hi]['median_ms'] / x[lo]['median_ms']:.2f}x |"
        if mid:
            ratios += f" {x[hi]['median_ms'] / x[mid]['median_ms']:.2f}x |"
        lines.append(f"| `{text}` | " + " | ".join(cells) + f" | {rows} |" + ratios)
    lines += ["", "Their plans (EXPLAIN QUERY PLAN of `find_refs`'s SQL):", ""]
    for f, _ in SPARSE:
        p = R[hi]["search"]["sparse"][f]["plan"]
        lines.append(f"- `{f}`: `{p['sql']}`: " + "; ".join(f"`{x}`" for x in p["plan"]))
    lines += [
        "",
        "The whole log, following `next_cursor` to the end (requests, rows, seconds, "
        "slowest request): "
        + "; ".join(
            "`"
            + "&".join(f"{k}={v}" for k, v in R[lo]["sweeps"][f]["params"].items() if k != "limit")
            + "` "
            + ", ".join(
                f"{label[n]} {R[n]['sweeps'][f]['requests']:,} req, "
                f"{R[n]['sweeps'][f]['rows']:,} rows, {R[n]['sweeps'][f]['seconds']:.2f} s, "
                f"{R[n]['sweeps'][f]['slowest_ms']:.0f} ms"
                for n in sizes
            )
            for f in SWEEPS
        )
        + ".",
        "",
        "`GET /v1/credentials/{id}/lineage` of a denied access's credential, median (p95): "
        + ", ".join(
            f"{label[n]} {R[n]['lineage']['median_ms']:.1f} ms ({R[n]['lineage']['p95_ms']:.1f})"
            for n in sizes
        )
        + ".",
    ]
    bad = {n: R[n]["search"]["wrong_count"] for n in sizes if R[n]["search"]["wrong_count"]}
    lines += [
        "",
        "Every response checked against a plain SQL count: "
        + ("all agreed." if not bad else f"DISAGREEMENTS: {bad} (see the JSON)."),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated leaves")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "lineage-state-bench",
        help="state_bench's cached ledgers (only read)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp"), help="scratch copies go here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
    ap.add_argument("--principals", type=int, default=8, help="of the cached ledgers")
    ap.add_argument("--reps", type=int, default=100, help="requests per filter and cursor")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-background", dest="background", action="store_false", help="skip copy 2")
    ap.add_argument("--interval", type=float, default=Settings().checkpoint_interval)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_explorer.json"))
    ap.add_argument("--md", type=Path, default=Path("/tmp/bench_explorer.md"))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reps < 50:
        raise SystemExit("--reps: at least 50")
    sizes = [int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip()]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([".venv/bin/python", "bench/explorer_bench.py", *sys.argv[1:]]),
        "git": git_rev(),
        "machine": {
            "node": platform.node(),
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
        },
        "max_scan": MAX_SCAN,
        "limit": LIMIT,
        "sizes": {},
    }
    results: dict[str, Any] = {}
    for size in sizes:
        results[str(size)] = one_size(size, args)
        report["sizes"] = results
        args.out.write_text(json.dumps(report, indent=1, default=str))  # what is done so far
    loads = [x for r in results.values() for x in r["loadavg_1min"]]
    report["loadavg_range"] = [min(loads), max(loads)]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["git_at_end"] = git_rev()
    args.out.write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    args.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
