"""The chain state in the database (ledger/state.py): what the rules read, kept with the log.

- The SQLite state answers every fixture log exactly as the in-memory replay does.
- Reopening a ledger loads nothing: no leaf is replayed, and the first decision is right.
- A ledger from before the state tables replays into them once, and decides as before.
- Readers see committed state only, never the writer's transaction in flight.
- A budget check reads the same rows after many uses as after one.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.ledger.audit import AuditFailure, audit
from lineage.ledger.decide import record_result
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.ledger import open_ledger
from lineage.ledger.log import Log
from lineage.ledger.rotation import rotate_key
from lineage.ledger.store import SCHEMA_VERSION, SQLiteStore
from lineage.verifier.bundle import parse_bundle
from lineage.verifier.chain import Replay, Rules
from lineage.verifier.errors import ChainError, LineageError
from lineage.verifier.note import parse_vkey
from tests import issuance_helpers as ih
from tests.budget import examples
from tests.state_twin import assert_agree, twin_replay

BUNDLES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
LOG_KEY = parse_vkey((BUNDLES.parent / "log.vkey").read_text().strip())


def _whole_logs() -> list[str]:
    """Fixture bundles holding a whole log from its genesis (indexes 0, 1, 2, ...)."""
    out = []
    for path in sorted(BUNDLES.glob("*.json")):
        if path.name == "expected.json":
            continue
        try:
            bundle = parse_bundle(path.read_bytes())
        except LineageError:
            continue
        if [e.index for e in bundle.entries] == list(range(len(bundle.entries))):
            out.append(path.name)
    return out


@pytest.mark.parametrize("name", _whole_logs())
def test_the_sqlite_state_agrees_with_replay_on_every_fixture_log(name):
    leaves = [e.leaf for e in parse_bundle((BUNDLES / name).read_bytes()).entries]
    memory = Replay(LOG_KEY)
    refusal = None
    try:
        memory.apply_all(enumerate(leaves))
    except ChainError as exc:
        refusal = exc
    view, twin, _ = twin_replay(LOG_KEY, leaves)
    if refusal is None:
        assert twin is None, twin
    else:
        assert twin is not None and (twin.check, twin.entry_id) == (
            refusal.check,
            refusal.entry_id,
        )
    assert_agree(memory, view)


def _spend(w: ih.World, n: int) -> tuple[str, list]:
    """A grant with a rate limit, used ``n`` times (one second apart)."""
    g = w.append(w.grant(max_uses=10_000, rate={"count": 5, "window": 3}))
    out = []
    for _ in range(n):
        w.clock.advance(1)
        out.append(w.decide(w.invoke(w.agent, g.id)))
    return g.id, out


def test_reopening_a_ledger_replays_nothing(tmp_path: Path, monkeypatch):
    w = ih.world(tmp_path)
    cid, decisions = _spend(w, 4)
    assert all(d.allowed for d in decisions)
    size = w.log.size
    w.close()

    applied: list[int] = []
    check = Rules.check

    def counting(self, view, index, leaf):
        applied.append(index)
        return check(self, view, index, leaf)

    monkeypatch.setattr(Rules, "check", counting)
    log = ih.reopen(w)
    try:
        state = log.state()
        assert (state.size, state.use_count(cid)) == (size, 4)
        w.log = log
        w.clock.advance(1)
        assert w.decide(w.invoke(w.agent, cid)).allowed
        assert applied == [size]  # only the new decision was checked; nothing replayed
    finally:
        log.close()


def _as_schema_3(db: Path) -> None:
    """What a ledger written before the chain state looks like: no state tables."""
    conn = sqlite3.connect(db)
    for table in ("chain_state", "chain_keys", "credentials", "revoked_holders"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP TABLE recent_uses")
    conn.execute("DROP TABLE nonces")
    conn.execute("DROP TABLE results")  # migration 5
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


def test_a_ledger_from_before_the_state_tables_replays_into_them_once(tmp_path: Path):
    w = ih.world(tmp_path)
    cid, _ = _spend(w, 5)  # the rate limit (5 in 3 s) is what the state must remember
    g2 = w.append(w.grant(max_uses=2))
    w.clock.advance(1)
    assert w.decide(w.invoke(w.agent, g2.id)).allowed
    w.close()
    _as_schema_3(w.db)

    log = ih.reopen(w)
    try:
        w.log = log
        state = log.state()
        assert (state.size, state.use_count(cid), state.use_count(g2.id)) == (log.size, 5, 1)
        assert w.decide(w.invoke(w.agent, g2.id)).allowed
        assert not w.decide(w.invoke(w.agent, g2.id)).allowed  # max_uses 2, as before
    finally:
        log.close()
    conn = sqlite3.connect(w.db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_readers_see_committed_state_only(tmp_path: Path):
    """A grant applied in the writer's open transaction is not seen by a reader until
    the transaction commits."""
    w = ih.world(tmp_path)
    log: Log = w.log
    release_first, release_second = threading.Event(), threading.Event()
    inside = threading.Event()

    def hold(event: threading.Event, entered: threading.Event | None = None):
        def build(state, index, time):
            if entered is not None:
                entered.set()
            event.wait(10)
            raise RejectedEntry("nothing to append", "test")

        return build

    grant = w.grant()
    outcomes: list[object] = []

    def run(fn):
        try:
            outcomes.append(fn())
        except LineageError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(lambda: log.build(hold(release_first)),))]
    threads[0].start()
    while log._writer is None or not log._queue.empty():  # the writer is in batch 1
        threading.Event().wait(0.001)
    # Batch 2 is the grant, then a builder that waits inside the same transaction.
    threads.append(threading.Thread(target=run, args=(lambda: log.append(grant),)))
    threads[-1].start()
    while log._queue.empty():
        threading.Event().wait(0.001)
    threads.append(
        threading.Thread(target=run, args=(lambda: log.build(hold(release_second, inside)),))
    )
    threads[-1].start()
    while log._queue.qsize() < 2:
        threading.Event().wait(0.001)
    size = log.size
    release_first.set()
    assert inside.wait(10)  # the grant is applied; its transaction is open
    state = log.state()
    assert state.credential(grant.id) is None
    assert (state.size, log.size) == (size, size)
    release_second.set()
    for t in threads:
        t.join(10)
    assert log.state().credential(grant.id) is not None and log.size == size + 1
    w.close()


def test_a_rate_check_is_one_index_lookup(tmp_path: Path):
    """Regression: a rate check counted every use inside the window (8.6 ms with 20k uses
    against 2.1 ms with none). Now it reads the one row before the window, through the
    (credential, time, seq) index, and rows older than the window are pruned."""
    w = ih.world(tmp_path)
    cid, decisions = _spend(w, 40)
    assert sum(d.allowed for d in decisions) == 40  # 1 a second, 5 in 3 s allowed
    state = w.log.state()
    assert state.use_count(cid) == 40
    assert [state.uses_after(cid, w.now - back) for back in (0, 1, 2, 3)] == [0, 1, 2, 3]
    conn = sqlite3.connect(w.db)
    kept = conn.execute("SELECT COUNT(*) FROM recent_uses WHERE credential = ?", (cid,))
    assert kept.fetchone()[0] <= 5  # the window's uses, and the last one before it
    sql = (
        "SELECT seq FROM recent_uses WHERE credential = ?1 AND time <= ?2 "
        "ORDER BY time DESC, seq DESC LIMIT 1"
    )
    plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (cid, w.now)))
    assert "recent_uses_by" in plan and "TEMP B-TREE" not in plan, plan
    conn.close()
    w.close()


def test_the_store_refuses_state_writes_outside_a_transaction(tmp_path: Path):
    w = ih.world(tmp_path)
    with pytest.raises(LineageError, match="only with its leaf"):
        w.log.store._write_each([("UPDATE chain_state SET size = 0", ())])
    assert w.log.state().size == w.log.size
    w.close()


def test_a_reopened_ledger_keeps_keys_roles_and_policy(tmp_path: Path):
    w = ih.world(tmp_path)
    w.append(w.policy(1, {"rules": []}))
    w.close()
    log = open_ledger(w.db, w.keys, clock=w.clock)
    try:
        state = log.state()
        assert state.policy_version == 1 and state.policy is not None
        assert state.principal_roles("alice@corp", state.size) == {"finance"}
        memory = Replay(log.log_key)
        memory.apply_all(log.leaves())
        assert_agree(memory, state)
    finally:
        log.close()
    store = SQLiteStore(w.db)
    assert json.loads(
        store._query("SELECT roles FROM chain_keys WHERE principal IS NOT NULL")[0][0]
    )
    store.close()


# -- the audit compares the state tables with its replay ----------------------------------------

TAMPER = {
    "a use forgotten": "UPDATE credentials SET uses = uses - 1 WHERE uses > 0",
    "a child forgotten": "UPDATE credentials SET children = 0 WHERE children > 0",
    "a revocation dropped": "UPDATE credentials SET revoked = NULL WHERE revoked IS NOT NULL",
    "a holder revocation dropped": "DELETE FROM revoked_holders",
    "a nonce forgotten": "DELETE FROM nonces "
    "WHERE (credential, nonce) IN (SELECT credential, nonce FROM nonces LIMIT 1)",
    "a recent use dropped": "DELETE FROM recent_uses "
    "WHERE rowid = (SELECT MIN(rowid) FROM recent_uses)",
    "a key unretired": "UPDATE chain_keys SET retired = NULL WHERE retired IS NOT NULL",
    "a key's roles widened": 'UPDATE chain_keys SET roles = \'["finance", "admin"]\' '
    "WHERE principal IS NOT NULL",
    "the state behind the log": "UPDATE chain_state SET size = size - 1",
    "an older policy in force": "UPDATE chain_state SET policy_version = policy_version - 1",
    "a result forgotten": "DELETE FROM results",
    "a result moved": "UPDATE results SET idx = idx + 1",
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, object]:
    """A ledger with a row in every state table, audited clean; and its log key."""
    tmp = tmp_path_factory.mktemp("audited")
    w = ih.world(tmp)
    w.append(w.policy(1, {"rules": []}))
    cid, spent = _spend(w, 3)
    record_result(w.log, spent[0].id, "gw-1", upstream_status=200)
    child = w.append(
        w.delegate(
            cid,
            w.agent,
            expires_at=w.now + 60,
            max_depth=0,
            max_uses=10,
            rate={"count": 5, "window": 3},
        )
    )
    w.append(w.revoke(w.alice, credential=child.id))
    w.append(w.grant(w.helper))
    w.append(w.revoke(w.helper, holder=w.helper.public))
    rotate_key(w.log, w.keys, "decision")  # a retired key
    w.log.checkpoint()
    log_key = w.log.log_key
    w.close()
    assert audit(w.db, log_key).size > 10
    return w.db, log_key


@pytest.mark.parametrize("what", sorted(TAMPER))
def test_the_audit_refuses_state_tables_that_disagree_with_the_log(audited, tmp_path, what):
    db, log_key = audited
    copy = tmp_path / "l.db"
    shutil.copy(db, copy)
    conn = sqlite3.connect(copy)
    changed = conn.execute(TAMPER[what]).rowcount
    conn.commit()
    conn.close()
    assert changed >= 1, f"{what}: the fixture has no row to tamper with"
    with pytest.raises(AuditFailure) as info:
        audit(copy, log_key)
    assert info.value.what == "state", str(info.value)


def test_lineage_queries_read_indexes_not_the_log(tmp_path: Path):
    """Regression: a lineage's accesses were found by walking the kind index, every access
    in the log (1.6 ms at 10k leaves, ~160 ms at 1M). Every statement a lineage, a bundle
    and a principal's entries run must be an index search, never a scan."""
    from lineage.ledger.query import Filter, entries, related

    w = ih.world(tmp_path)
    cid, _ = _spend(w, 3)
    other = w.append(w.grant(w.helper))
    w.clock.advance(1)
    w.decide(w.invoke(w.helper, other.id))
    statements: list[tuple[str, tuple]] = []
    store = w.log.store
    query = store._query

    def recording(sql, params=()):
        statements.append((sql, tuple(params)))
        return query(sql, params)

    store._query = recording
    try:
        assert related(w.log, [cid])
        assert list(entries(w.log, Filter(principal="alice@corp")))
        assert list(entries(w.log, Filter(holder=w.agent.public.b64)))
    finally:
        store._query = query
    conn = sqlite3.connect(w.db)
    scans = []
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        plan = " | ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        if "SCAN refs" in plan or "SCAN credentials" in plan or "SCAN leaves" in plan:
            scans.append((sql, plan))
        for column in ("credential", "holder", "principal"):  # the answer's own index
            filtered = f"{column} IN" in sql or f"{column} = ?" in sql
            if "FROM refs" in sql and filtered and f"refs_{column}" not in plan:
                scans.append((sql, plan))
    conn.close()
    w.close()
    assert not scans, scans


# -- found in review -------------------------------------------------------------------------


def test_the_audit_passes_a_ledger_whose_state_has_not_caught_up_yet(tmp_path: Path, monkeypatch):
    """An older ledger opened (which adds the state tables empty) but not yet used, or
    one whose catch-up stopped between its transactions, is sound: the audit compares
    the tables with the replay at the size they record."""
    import lineage.ledger.log as log_module

    w = ih.world(tmp_path)
    _spend(w, 5)
    w.log.checkpoint()
    log_key = w.log.log_key
    w.close()
    _as_schema_3(w.db)
    opened = ih.reopen(w)  # migration 4: empty state tables
    opened.close()
    assert audit(w.db, log_key).size > 5
    monkeypatch.setattr(log_module, "CATCH_UP", 3)
    log = ih.reopen(w)
    with log.store.transaction():  # one bounded step of the catch-up, then stop
        view = log.store.state(log._cache)
        assert not log._replay_tail(view, 3)
    log.close()
    assert 0 < SQLiteStore(w.db).state(log._cache).size < audit(w.db, log_key).size


def test_a_build_after_an_upgrade_catches_up_in_bounded_steps(tmp_path: Path, monkeypatch):
    """Regression: the first operator entry after an upgrade (append_as, build) replayed
    the whole log inside one write transaction, holding every other process off."""
    import lineage.ledger.log as log_module

    w = ih.world(tmp_path)
    _spend(w, 6)
    w.close()
    _as_schema_3(w.db)
    monkeypatch.setattr(log_module, "CATCH_UP", 4)
    limits: list[int | None] = []
    tail = Log._replay_tail

    def recording(self, view, limit=None):
        limits.append(limit)
        return tail(self, view, limit)

    monkeypatch.setattr(Log, "_replay_tail", recording)
    log = ih.reopen(w)
    try:
        body = {"kind": "policy", "v": 1, "log": ih.ORIGIN, "version": 1, "document": {}}
        assert log.append_as("operator", body).index == log.size - 1
    finally:
        log.close()
    assert limits and all(limit == 4 for limit in limits), limits


def test_a_snapshot_never_sees_a_cached_credential_committed_after_it(tmp_path: Path):
    w = ih.world(tmp_path)
    log = w.log
    with log.store.snapshot():
        size = log.state().size
        grant = w.grant()
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(log.append(grant)))
        t.start()
        t.join(10)
        log.state().credential(grant.id)  # another thread's view may cache it meanwhile
        other = threading.Thread(target=lambda: log.state().credential(grant.id))
        other.start()
        other.join(10)
        state = log.state()
        assert state.size == size and state.credential(grant.id) is None
    assert log.state().credential(grant.id) is not None
    w.close()


def test_the_writer_checks_accesses_in_complete_mode_without_the_admission_hook(tmp_path: Path):
    """Hardening from review: a Log opened without the operator's admission hook still
    refuses an access the audit would refuse (here, a nonce an earlier access used)."""
    from lineage.verifier.entry import sign_entry

    w = ih.world(tmp_path)
    g = w.append(w.grant(max_uses=10))
    w.clock.advance(1)
    first = w.decide(w.invoke(w.agent, g.id))
    body = {k: v for k, v in first.entry.obj.items() if k != "sigs"}
    body["decision"], body["reason"] = "deny", "a second entry for the same invocation"
    again = sign_entry(body, [w.log.keys.decision])
    w.log.admit = None
    with pytest.raises(RejectedEntry) as info:
        w.log.append(again)
    assert info.value.check == "replay"
    w.close()


def test_every_statement_of_a_rate_limited_use_reads_a_bounded_range(tmp_path: Path):
    """Regression: pruning a rate-limited credential's old uses deleted by ``seq`` within
    the credential, which walked every use in its window (5.8x slower per decision at 20k
    uses). Each statement a use runs must bound its range of recent_uses by time."""
    w = ih.world(tmp_path)
    store = w.log.store
    seen: list[tuple[str, tuple]] = []
    write_each, query = store._write_each, store._query

    def writing(statements):
        seen.extend((sql, tuple(params)) for sql, params in statements)
        return write_each(statements)

    def reading(sql, params=()):
        seen.append((sql, tuple(params)))
        return query(sql, params)

    store._write_each, store._query = writing, reading
    try:
        _spend(w, 6)
    finally:
        store._write_each, store._query = write_each, query
    conn = sqlite3.connect(w.db)
    unbounded = []
    for sql, params in seen:
        if "recent_uses" not in sql:
            continue
        for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params):
            if "recent_uses" in row[-1] and "time" not in row[-1]:
                unbounded.append((sql, row[-1]))
    conn.close()
    w.close()
    assert not unbounded, unbounded


# -- a refused entry leaves the database's state as it was (property) -----------------------

STATE_TABLES = (
    "chain_state",
    "chain_keys",
    "credentials",
    "revoked_holders",
    "recent_uses",
    "nonces",
    "results",
)


def _dump(db: Path) -> dict[str, list]:
    conn = sqlite3.connect(db)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in STATE_TABLES}
    finally:
        conn.close()


@st.composite
def _attempts(draw):
    """Correctly signed entries the rules may refuse: delegations (widened or not, over
    budget or not, expired or not), revocations by the right or wrong key, accesses, and
    results (of an allowed or denied access, by its enforcement point or another, first
    or second)."""
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["delegation", "revocation", "decision", "grant", "result"]))
        steps.append(
            (
                kind,
                draw(st.sampled_from(["grant", "child"])),
                draw(st.sampled_from([1, 2, 5, None])),  # max_uses
                draw(st.sampled_from([-5, 30, 600, 5000])),  # expires in
                draw(st.booleans()),  # widen (delegation) / wrong key (revocation)
                draw(st.integers(0, 3)),  # seconds to wait first
            )
        )
    return steps


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(_attempts())
def test_a_refused_entry_leaves_the_state_tables_untouched(tmp_path_factory, steps):
    w = ih.world(tmp_path_factory.mktemp("refused"))
    try:
        grant = w.append(w.grant(max_uses=5, max_children=2))
        child = w.append(w.delegate(grant, w.agent, max_uses=3, max_children=1))
        ids = {"grant": (grant.id, w.agent), "child": (child.id, w.reader)}
        accesses: list[str] = []
        for kind, target, uses, expires, odd, wait in steps:
            w.clock.advance(wait)
            cid, holder = ids[target]
            if kind == "result":
                if not accesses:
                    continue
                answer = {1: {"upstream_status": 200}, 2: {"upstream_status": 502}}.get(
                    uses, {"failure": "timeout" if uses == 5 else "cancelled"}
                )
                before = _dump(w.db)
                try:
                    record_result(
                        w.log,
                        accesses[expires % len(accesses)],
                        "gw-2" if odd else "gw-1",
                        **answer,
                    )
                except LineageError:
                    assert _dump(w.db) == before, "a refused result changed the state"
                continue
            if kind == "delegation":
                scope = ih.parent_scope()
                if odd:
                    scope = [{**scope[0], "actions": sorted({*scope[0]["actions"], "delete"})}]
                entry = w.delegate(
                    cid,
                    holder,
                    ih.key("sub"),
                    scope=scope,
                    max_uses=uses,
                    expires_at=w.now + expires,
                    max_depth=0,
                    max_children=0,
                )
            elif kind == "revocation":
                entry = w.revoke(w.helper if odd else holder, credential=cid)
            elif kind == "grant":
                entry = w.grant(
                    w.helper, signer=w.helper if odd else None, expires_at=w.now + expires
                )
            else:
                before = _dump(w.db)
                try:
                    accesses.append(w.decide(w.invoke(holder, cid)).id)
                except LineageError:
                    assert _dump(w.db) == before, "a refused invocation changed the state"
                continue
            before = _dump(w.db)
            try:
                w.append(entry)
            except LineageError:
                assert _dump(w.db) == before, f"a refused {kind} changed the state"
        memory = Replay(w.log.log_key)
        memory.apply_all(w.log.leaves())
        assert_agree(memory, w.log.state())
    finally:
        w.close()
