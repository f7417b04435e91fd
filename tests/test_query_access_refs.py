"""Searching access entries by decision and resource, from the query index (access_refs).

Every access leaf gets an ``access_refs`` row (its ``decision``, its invocation's
``request.resource``) in the transaction that writes the leaf and its ``refs`` row
(schema migration 10). A ledger from before that migration back-fills the rows once, on
its first query, a bounded transaction at a time; several processes may do it at once,
or stop half-way. ``Filter(decision=..., resource=...)`` and ``GET
/v1/entries?decision=&resource=`` read the index, and ``lineage verify --db`` checks each
row against its leaf. Everything here runs on real SQLite ledgers.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lineage.ledger.log as log_module
import lineage.ledger.query as query_module
import lineage.ledger.store as store_module
from lineage.ledger.audit import AuditFailure, audit
from lineage.ledger.ledger import open_ledger
from lineage.ledger.log import Log
from lineage.ledger.query import Filter, entries
from lineage.ledger.store import ACCESS_REFS_DONE, MIGRATIONS, SQLiteStore
from lineage.verifier.kinds import Access
from tests import issuance_helpers as ih
from tests.api_server import MAIL, Server, running
from tests.budget import examples
from tests.conftest import drop_triggers, raw_connection

# the migration that made the table (a later one may follow it)
MIGRATION = next(i for i, sql in enumerate(MIGRATIONS) if "TABLE IF NOT EXISTS access_refs" in sql)

# inside alice's grant (mailbox:alice/*); "_" and "%" are LIKE's wildcards, never here
INSIDE = (
    "mailbox:alice/inbox/msg-1",
    "mailbox:alice/inbox/msg_2",
    "mailbox:alice/in%25box/3",
    "mailbox:alice/sent/4",
)
OUTSIDE = ("mailbox:alicex/1", "mailbox:bob/inbox/1", "files:alice/a")
PATTERNS = (
    "*",
    "mailbox:*",
    "mailbox:alice/*",
    "mailbox:alice*",
    "mailbox:alice/inbox/*",
    "mailbox:alice/inbox/msg_*",  # "_" matched as itself: not msg-1
    "mailbox:alice/in%*",  # "%" matched as itself
    "mailbox:alice/in%25box/*",
    "mailbox:*/inbox/*",  # a "*" before the end is a character: matches nothing
    "mailbox:alice/inbox/msg-1*",
    "files:*",
    "nothing:*",
)


def _decide(w: ih.World, holder, cid: str, resource: str | None, action: str = "read") -> int:
    """An access by ``holder`` under ``cid``; its leaf index (allowed or denied, it is logged)."""
    return w.decide(w.invoke(holder, cid, ih.request(resource=resource, action=action))).index


def _story(tmp_path: Path) -> tuple[ih.World, dict[str, int]]:
    """alice's grant to the agent, its delegation to the reader, and allowed and denied
    accesses under both, a second apart."""
    w = ih.world(tmp_path)
    g = w.append(w.grant())
    d = w.append(w.delegate(g, w.agent))
    at = {"grant": g.index, "delegation": d.index}
    for name, holder, cid, resource, action in [
        ("allow msg-1", w.agent, g.id, "mailbox:alice/inbox/msg-1", "read"),
        ("allow sent", w.reader, d.id, "mailbox:alice/sent/4", "read"),
        ("deny bob", w.agent, g.id, "mailbox:bob/inbox/1", "read"),
        ("deny delete", w.agent, g.id, "mailbox:alice/inbox/msg-1", "delete"),
        ("deny no resource", w.reader, d.id, None, "read"),
        ("allow msg_2", w.agent, g.id, "mailbox:alice/inbox/msg_2", "read"),
        ("deny alicex", w.reader, d.id, "mailbox:alicex/1", "read"),
    ]:
        w.clock.advance(1)
        at[name] = _decide(w, holder, cid, resource, action)
    return w, at


def _found(log: Log, f: Filter) -> list[int]:
    return [index for index, _ in entries(log, f)]


def _brute(log: Log, f: Filter) -> list[int]:
    """What ``entries`` must answer, read from every leaf (and the chain state for a
    principal), never from the index. Only for filters naming a decision or resource."""
    assert f.decision is not None or f.resource is not None
    state = log.state()
    out = []
    for index, leaf in log.leaves():
        body = leaf.entry.body
        if not isinstance(body, Access) or f.kind not in (None, "access"):
            continue
        if f.decision is not None and body.decision != f.decision:
            continue
        if f.resource is not None:
            resource = body.invocation.request.resource
            if resource is None:
                continue
            if f.resource.endswith("*"):
                if not str(resource).startswith(f.resource[:-1]):
                    continue
            elif str(resource) != f.resource:
                continue
        if f.since is not None and leaf.time < f.since:
            continue
        if f.until is not None and leaf.time >= f.until:
            continue
        if f.principal is not None:
            rec = state.credential(body.invocation.credential)
            if rec is None or rec.principal != f.principal:
                continue
        out.append(index)
    return out


def _rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT idx, decision, resource FROM access_refs ORDER BY idx"
        ).fetchall()
    finally:
        conn.close()


def _meta(db: Path, key: str) -> str | None:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def _schema(db: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return set(
            conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        )
    finally:
        conn.close()


def _as_before_migration(db: Path) -> None:
    """What a ledger written before the migration looks like: no access_refs table (nor
    its indexes and triggers), no back-fill key in meta, the schema version before it."""
    conn = raw_connection(db)
    (trigger,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'meta_no_delete'"
    ).fetchone()
    conn.execute("DROP TABLE access_refs")
    conn.execute("DROP TRIGGER meta_no_delete")
    conn.execute("DELETE FROM meta WHERE key = ?", (ACCESS_REFS_DONE,))
    conn.execute(trigger)
    conn.execute(f"PRAGMA user_version = {MIGRATION}")
    conn.close()


FILTERS = [
    Filter(decision="deny"),
    Filter(decision="allow"),
    Filter(resource="mailbox:alice/inbox/msg-1"),
    Filter(resource="mailbox:alice/*"),
    Filter(resource="mailbox:alice/*", decision="deny"),
    Filter(resource="mailbox:alice*", decision="deny"),
    Filter(resource="*"),
    Filter(decision="deny", principal="alice@corp"),
    Filter(decision="deny", principal="bob@corp"),
    Filter(decision="allow", kind="access"),
    Filter(decision="allow", kind="grant"),
    Filter(resource="mailbox:alice/inbox/msg_*"),
    Filter(resource="mailbox:*/inbox/*"),
    Filter(resource="mailbox:alice/in%*"),
]


# -- searching ------------------------------------------------------------------------------


def test_every_access_is_indexed_with_its_decision_and_resource(tmp_path: Path):
    w, at = _story(tmp_path)
    try:
        assert _rows(w.db) == [
            (at["allow msg-1"], "allow", "mailbox:alice/inbox/msg-1"),
            (at["allow sent"], "allow", "mailbox:alice/sent/4"),
            (at["deny bob"], "deny", "mailbox:bob/inbox/1"),
            (at["deny delete"], "deny", "mailbox:alice/inbox/msg-1"),
            (at["deny no resource"], "deny", None),  # a request naming only a location
            (at["allow msg_2"], "allow", "mailbox:alice/inbox/msg_2"),
            (at["deny alicex"], "deny", "mailbox:alicex/1"),
        ]
        # a fresh ledger never needed a back-fill: the migration said so
        assert _meta(w.db, ACCESS_REFS_DONE) == "0"
    finally:
        w.close()


def test_search_by_decision_resource_and_prefix(tmp_path: Path):
    w, at = _story(tmp_path)
    try:
        log = w.log
        assert _found(log, Filter(decision="deny")) == [
            at["deny bob"],
            at["deny delete"],
            at["deny no resource"],
            at["deny alicex"],
        ]
        assert _found(log, Filter(decision="allow")) == [
            at["allow msg-1"],
            at["allow sent"],
            at["allow msg_2"],
        ]
        exact = Filter(resource="mailbox:alice/inbox/msg-1")
        assert _found(log, exact) == [at["allow msg-1"], at["deny delete"]]
        # the auditor's question: every deny on alice's mailbox
        every_deny = Filter(decision="deny", resource="mailbox:alice/*")
        assert _found(log, every_deny) == [at["deny delete"]]
        # a plain prefix: "mailbox:alice*" also starts "mailbox:alicex/1"
        assert _found(log, Filter(decision="deny", resource="mailbox:alice*")) == [
            at["deny delete"],
            at["deny alicex"],
        ]
        # "*" alone: every access that names a resource
        assert at["deny no resource"] not in _found(log, Filter(resource="*"))
        # "_" and "%" are themselves; a "*" before the end is a character
        assert _found(log, Filter(resource="mailbox:alice/inbox/msg_*")) == [at["allow msg_2"]]
        assert _found(log, Filter(resource="mailbox:*/inbox/*")) == []
        assert _found(log, Filter(resource="mailbox:alice/inbox/msg-")) == []
        # only accesses have a decision: another kind asked for finds nothing
        assert _found(log, Filter(decision="allow", kind="grant")) == []
        assert _found(log, Filter(decision="allow", kind="access")) == _found(
            log, Filter(decision="allow")
        )
        for f in FILTERS:
            assert _found(log, f) == _brute(log, f), f
    finally:
        w.close()


def test_search_combined_with_principal_holder_task_and_time(tmp_path: Path):
    w, at = _story(tmp_path)
    try:
        log = w.log
        t = {name: log.leaf(index).time for name, index in at.items()}
        deny = Filter(decision="deny", principal="alice@corp")
        assert _found(log, deny) == _brute(log, deny) != []
        assert _found(log, Filter(decision="deny", principal="bob@corp")) == []
        window = Filter(
            decision="deny", principal="alice@corp", since=t["deny delete"], until=t["deny alicex"]
        )
        assert _found(log, window) == [at["deny delete"], at["deny no resource"]]
        # the reader's accesses (its holder key), denied, under the sub-task
        reader = Filter(holder=w.reader.public.b64, decision="deny", task="inbox-triage/read")
        assert _found(log, reader) == [at["deny no resource"], at["deny alicex"]]
        mailbox = Filter(holder=w.reader.public.b64, resource="mailbox:alice/*")
        assert _found(log, mailbox) == [at["allow sent"]]
        assert _found(log, Filter(task="inbox-triage/", resource="mailbox:bob/*")) == [
            at["deny bob"]
        ]
    finally:
        w.close()


def test_paging_walks_every_match_once_in_order(tmp_path: Path):
    """Pages of two through the index (``find_refs``'s limit) and windows of a few leaves
    (the API's ``cursor`` and ``MAX_SCAN``) give the whole answer, once, in order."""
    w, _ = _story(tmp_path)
    try:
        log = w.log
        for f in FILTERS:
            whole = _brute(log, f)
            with mock.patch.object(query_module, "PAGE", 2):
                assert _found(log, f) == whole, f
            windows = [
                i for start in range(0, log.size, 3) for i, _ in entries(log, f, start, start + 3)
            ]
            assert windows == whole, f
    finally:
        w.close()


@st.composite
def _accesses(draw) -> list[tuple[str | None, str, int, bool]]:
    """Accesses: a resource (or none), an action ("delete" is outside every grant: a
    deny), seconds to wait first, and whether the reader (under the delegation) asks."""
    resources = st.sampled_from((*INSIDE, *OUTSIDE, None))
    step = st.tuples(resources, st.sampled_from(("read", "read", "delete")), st.integers(0, 2))
    return [(*draw(step), draw(st.booleans())) for _ in range(draw(st.integers(1, 12)))]


@st.composite
def _filters(draw) -> Filter:
    decision = draw(st.sampled_from((None, "allow", "deny")))
    resource = draw(st.sampled_from((None, *INSIDE, *OUTSIDE, *PATTERNS)))
    if decision is None and resource is None:
        decision = "deny"
    return Filter(
        decision=decision,
        resource=resource,
        principal=draw(st.sampled_from((None, None, "alice@corp", "bob@corp"))),
        kind=draw(st.sampled_from((None, None, "access", "grant"))),
        since=draw(st.sampled_from((None, ih.T0 + 3, ih.T0 + 8))),
        until=draw(st.sampled_from((None, ih.T0 + 5, ih.T0 + 12))),
    )


@settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))
@given(_accesses(), st.lists(_filters(), min_size=1, max_size=6), st.sampled_from((1, 2, 500)))
def test_the_index_answers_what_reading_every_leaf_answers(tmp_path_factory, steps, filters, page):
    w = ih.world(tmp_path_factory.mktemp("property"))
    try:
        g = w.append(w.grant())
        d = w.append(w.delegate(g, w.agent))
        for resource, action, wait, by_reader in steps:
            w.clock.advance(wait)
            holder, cid = (w.reader, d.id) if by_reader else (w.agent, g.id)
            _decide(w, holder, cid, resource, action)
        with mock.patch.object(query_module, "PAGE", page):
            for f in filters:
                assert _found(w.log, f) == _brute(w.log, f), f
    finally:
        w.close()


# -- a ledger from before the table ---------------------------------------------------------


def test_the_simulated_old_file_is_what_the_old_migrations_make(tmp_path: Path, monkeypatch):
    """The honesty of ``_as_before_migration``: its schema is the one the migrations
    before this one create."""
    w, _ = _story(tmp_path)
    w.close()
    _as_before_migration(w.db)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:MIGRATION])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", MIGRATION)
    SQLiteStore(tmp_path / "old.db", create=True).close()
    assert _schema(w.db) == _schema(tmp_path / "old.db")


def test_an_old_ledger_backfills_once_in_bounded_transactions(tmp_path: Path, monkeypatch):
    w, at = _story(tmp_path)
    fresh = {f: _found(w.log, f) for f in FILTERS}
    rows, key, size = _rows(w.db), w.log.log_key, w.log.size
    w.close()
    _as_before_migration(w.db)
    before = tmp_path / "before.db"
    shutil.copy(w.db, before)
    assert audit(before, key).size == size  # read-only: no table, nothing to check

    monkeypatch.setattr(log_module, "ACCESS_CATCH_UP", 2)
    written: list[int] = []
    add = SQLiteStore.add_access_refs

    def spy(store: SQLiteStore, refs) -> None:
        assert store.in_transaction()
        written.append(sum(r.decision is not None for r in refs))
        add(store, refs)

    monkeypatch.setattr(SQLiteStore, "add_access_refs", spy)
    log = ih.reopen(w)  # the migration runs: an empty table, and no back-fill key
    try:
        assert _rows(w.db) == [] and _meta(w.db, ACCESS_REFS_DONE) is None
        assert {f: _found(log, f) for f in FILTERS} == fresh
        # seven accesses, at most two a transaction: 2, 2, 2, 1, then the key
        assert written == [2, 2, 2, 1]
        assert _rows(w.db) == rows
        assert _meta(w.db, ACCESS_REFS_DONE) == str(log.size)
        # once: later queries, here or in another process, only read the key
        written.clear()
        assert _found(log, Filter(decision="deny")) == fresh[Filter(decision="deny")]
        other = ih.reopen(w)
        try:
            assert _found(other, Filter(decision="deny")) == fresh[Filter(decision="deny")]
        finally:
            other.close()
        assert written == []
        # and a new access is indexed with its leaf
        w.log = log
        w.clock.advance(1)
        late = _decide(w, w.agent, log.leaf(at["grant"]).entry.id, "mailbox:alice/sent/9")
        assert _found(log, Filter(resource="mailbox:alice/sent/*")) == [at["allow sent"], late]
        log.checkpoint()
    finally:
        log.close()
    assert audit(w.db, key).size == late + 1


def test_a_backfill_stopped_half_way_is_finished_by_the_next_open(tmp_path: Path, monkeypatch):
    w, _ = _story(tmp_path)
    fresh = {f: _found(w.log, f) for f in FILTERS}
    rows, key = _rows(w.db), w.log.log_key
    w.close()
    _as_before_migration(w.db)
    monkeypatch.setattr(log_module, "ACCESS_CATCH_UP", 2)
    real = Log._access_ref
    calls = iter(range(100))

    def dies_on_the_fifth(self: Log, index: int):
        if next(calls) == 4:
            raise RuntimeError("the process died")
        return real(self, index)

    with mock.patch.object(Log, "_access_ref", dies_on_the_fifth):
        log = ih.reopen(w)
        try:
            with pytest.raises(RuntimeError):
                _found(log, Filter(decision="deny"))
        finally:
            log.close()
    assert _rows(w.db) == rows[:4]  # two transactions committed, the third rolled back
    assert _meta(w.db, ACCESS_REFS_DONE) is None
    assert audit(w.db, key).size > 0  # rows missing before the key is set; those there agree

    log = ih.reopen(w)
    try:
        assert {f: _found(log, f) for f in FILTERS} == fresh
    finally:
        log.close()
    assert _rows(w.db) == rows
    assert audit(w.db, key).size > 0


def _query_in_child(db: str, keys: str, stop) -> list[int]:
    """In a spawned process: one-row transactions, so the processes interleave."""
    log_module.ACCESS_CATCH_UP = 1
    log = open_ledger(db, keys)
    try:
        return _found(log, Filter(decision="deny", resource="mailbox:*"))
    finally:
        log.close()


def _together(arg_lists: list[tuple]) -> list[tuple[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(args, results)) for args in arg_lists]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return outcomes


def _child(args: tuple, results) -> None:
    try:
        results.put(("ok", _query_in_child(*args, None)))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_several_processes_backfill_one_old_ledger_at_once(tmp_path: Path):
    w, at = _story(tmp_path)
    for n in range(20):  # more rows than processes, one a transaction
        w.clock.advance(1)
        _decide(w, w.agent, w.log.leaf(at["grant"]).entry.id, f"mailbox:bob/{n}")
    want = _found(w.log, Filter(decision="deny", resource="mailbox:*"))
    rows, key = _rows(w.db), w.log.log_key
    w.log.checkpoint()
    w.close()
    _as_before_migration(w.db)
    outcomes = _together([(str(w.db), str(w.keys))] * 4)
    assert outcomes == [("ok", want)] * 4, outcomes
    assert _rows(w.db) == rows
    assert _meta(w.db, ACCESS_REFS_DONE) is not None
    assert audit(w.db, key).size > len(want)


def test_the_migration_run_again_changes_nothing(tmp_path: Path):
    """A process that read a stale schema version runs the migration a second time."""
    w, _ = _story(tmp_path)
    w.close()
    schema, rows = _schema(w.db), _rows(w.db)
    conn = raw_connection(w.db)
    conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[MIGRATION]}; COMMIT;")
    conn.close()
    assert (_schema(w.db), _rows(w.db), _meta(w.db, ACCESS_REFS_DONE)) == (schema, rows, "0")


def test_the_table_is_append_only(tmp_path: Path):
    w, at = _story(tmp_path)
    w.close()
    conn = raw_connection(w.db)
    try:
        for sql in (
            "UPDATE access_refs SET decision = 'allow'",
            "DELETE FROM access_refs",
            f"INSERT OR REPLACE INTO access_refs VALUES ({at['deny bob']}, 'allow', NULL)",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


# -- the audit ------------------------------------------------------------------------------


TAMPERINGS = {
    "decision": ("UPDATE access_refs SET decision = 'allow' WHERE idx = {deny}", "deny"),
    "resource": ("UPDATE access_refs SET resource = 'mailbox:alice/x' WHERE idx = {deny}", "deny"),
    "no resource": ("UPDATE access_refs SET resource = NULL WHERE idx = {allow}", "allow"),
    "deleted": ("DELETE FROM access_refs WHERE idx = {deny}", "deny"),
    "not an access": ("INSERT INTO access_refs VALUES ({grant}, 'allow', 'x:y')", "grant"),
    "beyond the log": ("INSERT INTO access_refs VALUES ({size}, 'deny', NULL)", None),
}


@pytest.mark.parametrize("how", TAMPERINGS)
def test_a_tampered_access_row_fails_the_audit_naming_its_leaf(tmp_path: Path, how: str):
    w, at = _story(tmp_path)
    where = {"deny": at["deny bob"], "allow": at["allow msg-1"], "grant": at["grant"]}
    where["size"] = w.log.size
    w.log.checkpoint()
    key = w.log.log_key
    w.close()
    assert audit(w.db, key).size == where["size"]
    sql, leaf = TAMPERINGS[how]
    conn = raw_connection(w.db)
    drop_triggers(conn)
    conn.execute(sql.format(**where))
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(w.db, key)
    assert info.value.what == "index"
    assert "access_refs" in str(info.value)
    if leaf is None:
        assert f"at index {where['size']}, beyond the last leaf" in str(info.value)
    else:
        assert info.value.index == where[leaf]
        assert f"index {where[leaf]}:" in str(info.value)


# -- the API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("access-refs-api")) as server:
        yield server


def _api_request(resource: str | None, action: str = "read") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "email", "action": action, "location": MAIL}
    out["attributes"] = {"sender": "a@vendor.example"}
    if resource is not None:
        out["resource"] = resource
    return out


@pytest.fixture(scope="module")
def api_story(srv: Server) -> dict[str, int]:
    g = srv.grant()
    assert srv.exchange(g, srv.agent).status_code == 200
    at = {}
    for name, resource, action in [
        ("allow msg-1", "mailbox:alice/inbox/msg-1", "read"),
        ("deny send", "mailbox:alice/inbox/msg-1", "send"),
        ("deny bob", "mailbox:bob/inbox/1", "read"),
        ("allow msg_2", "mailbox:alice/inbox/msg_2", "read"),
        ("deny alice sent", "mailbox:alice/sent/3", "send"),
        ("deny no resource", None, "read"),
    ]:
        r = srv.access(srv.invoke(srv.agent, g.id, _api_request(resource, action)))
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == name.split()[0], r.text
        at[name] = r.json()["index"]
    return at


def _get(srv: Server, **params: Any) -> httpx.Response:
    return httpx.get(
        srv.url("/v1/entries"), params=params, headers=srv.bearer(srv.auditor), timeout=60
    )


def _indexes(r: httpx.Response) -> list[int]:
    assert r.status_code == 200, r.text
    return [e["index"] for e in r.json()["entries"]]


def test_api_every_deny_on_a_mailbox(srv: Server, api_story: dict[str, int]):
    at = api_story
    assert _indexes(_get(srv, decision="deny", resource="mailbox:alice/*")) == [
        at["deny send"],
        at["deny alice sent"],
    ]
    assert _indexes(_get(srv, resource="mailbox:alice/inbox/msg-1")) == [
        at["allow msg-1"],
        at["deny send"],
    ]
    assert _indexes(_get(srv, decision="allow")) == [at["allow msg-1"], at["allow msg_2"]]
    r = _get(srv, decision="deny", principal="alice@corp", resource="mailbox:*")
    assert _indexes(r) == [at["deny send"], at["deny bob"], at["deny alice sent"]]
    assert all(e["entry"]["decision"] == "deny" for e in r.json()["entries"])
    assert _indexes(_get(srv, decision="deny", principal="bob@corp")) == []
    assert _indexes(_get(srv, decision="allow", kind="grant")) == []
    t = {name: srv.log.leaf(index).time for name, index in at.items()}
    r = _get(srv, decision="deny", since=t["deny bob"], until=t["deny no resource"] + 1)
    assert _indexes(r) == _brute(
        srv.log, Filter(decision="deny", since=t["deny bob"], until=t["deny no resource"] + 1)
    )


def test_api_pages_follow_the_cursor(srv: Server, api_story: dict[str, int]):
    for params in ({"decision": "deny"}, {"resource": "mailbox:alice/*"}, {"resource": "*"}):
        seen, cursor = [], 0
        while cursor is not None:
            r = _get(srv, **params, cursor=cursor, limit=1)
            seen += _indexes(r)
            assert len(r.json()["entries"]) <= 1
            cursor = r.json()["next_cursor"]
        f = Filter(decision=params.get("decision"), resource=params.get("resource"))
        assert seen == _brute(srv.log, f) != [], params


@pytest.mark.parametrize(
    "params",
    [
        {"decision": "maybe"},
        {"decision": "ALLOW"},
        {"decision": ""},
        {"decision": "allow,deny"},
        {"decision": "deny\x00"},
        {"resource": ""},
        {"resource": "mailbox:" + "a" * 2048},
    ],
)
def test_api_a_bad_decision_or_resource_is_a_400(srv: Server, params: dict[str, str]):
    r = _get(srv, **params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["error"], body["status"]) == ("invalid_request", 400)
    assert next(iter(params)) in body["detail"]


def test_api_documents_both_parameters(srv: Server):
    spec = httpx.get(srv.url("/openapi.json"), timeout=60).json()
    found = {p["name"]: p for p in spec["paths"]["/v1/entries"]["get"]["parameters"]}
    assert found["decision"]["schema"]["enum"] == ["allow", "deny"]
    assert found["resource"]["schema"]["maxLength"] == 2048


def test_the_checkpoint_thread_backfills_an_old_ledger_without_a_query(tmp_path: Path, monkeypatch):
    """``lineage serve`` indexes an upgraded ledger in the background, a batch a tick, so
    the first search does not wait for all of it; appends go on between batches."""
    w, _ = _story(tmp_path)
    rows = _rows(w.db)
    w.close()
    _as_before_migration(w.db)
    monkeypatch.setattr(log_module, "ACCESS_CATCH_UP", 2)
    log = ih.reopen(w)
    try:
        assert _rows(w.db) == []
        log.start_checkpointing(0.05)
        deadline = time.monotonic() + 30
        while _meta(w.db, ACCESS_REFS_DONE) is None:
            assert time.monotonic() < deadline, "the back-fill did not finish"
            time.sleep(0.02)
        assert _rows(w.db) == rows
    finally:
        log.close()


def test_a_page_skips_any_number_of_leaves_that_do_not_match(
    srv: Server, api_story: dict[str, int], monkeypatch
):
    """The index jumps over what does not match: a page is not cut short by the distance
    between matches, only by the matching leaves it reads (``MAX_SCAN``)."""
    import lineage.api.routers.entries as route

    every = _brute(srv.log, Filter(decision="deny"))
    assert len(every) >= 2 and every[-1] - every[0] > 2
    monkeypatch.setattr(route, "MAX_SCAN", 2)  # far fewer than the leaves between them
    r = _get(srv, decision="deny", limit=500)
    assert _indexes(r) == every[:2]  # two matches read, however far apart
    assert r.json()["next_cursor"] == (every[2] if len(every) > 2 else None)
    monkeypatch.setattr(route, "MAX_SCAN", 5000)
    r = _get(srv, decision="deny", limit=500)
    assert _indexes(r) == every and r.json()["next_cursor"] is None


def test_a_resource_prefix_walks_a_bounded_window_a_request(
    srv: Server, api_story: dict[str, int], monkeypatch
):
    """A prefix is compared on each access row, so a rare one would walk the whole rest of
    the log in one request; instead a request walks at most ``PREFIX_WINDOW`` leaves and
    says where to go on, and following the cursor finds every match."""
    import lineage.api.routers.entries as route

    every = _brute(srv.log, Filter(resource="mailbox:alice/*"))
    assert every and every[0] > 2
    monkeypatch.setattr(route, "PREFIX_WINDOW", 2)
    first = _get(srv, resource="mailbox:alice/*", limit=500).json()
    assert first["entries"] == [] and first["next_cursor"] == 2  # walked 2 leaves, then stopped
    seen, cursor, requests = [], 0, 0
    while cursor is not None:
        page = _get(srv, resource="mailbox:alice/*", cursor=cursor, limit=500).json()
        seen += [e["index"] for e in page["entries"]]
        cursor, requests = page["next_cursor"], requests + 1
    assert seen == every and requests >= srv.log.size // 2
