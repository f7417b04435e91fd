"""Result entries (FORMAT.md §4.8): what the upstream answered an allowed access, once.

An enforcement point has its decision logged (``POST /v1/access``) before it forwards
the request; entries are immutable, so the upstream's answer is a ``result`` entry of its
own, signed by a decision key. These tests hold the ledger, the offline verifier, the
chain state in the database, exports, the HTTP endpoint and the client to the rules:

- exactly one of ``upstream_status`` and ``failure``, each in its range (``format``);
- the access is an earlier access entry (``link``) that allowed (``denied``), named by
  the result's ``enforcement`` (``enforcement``), and has no other result
  (``duplicate-result``); the same call again is the entry already logged;
- a refusal writes nothing, and the ledger and the verifier refuse the same entries.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.client import AsyncLineageClient, LineageClient, LineageHTTPError
from lineage.ledger.audit import audit
from lineage.ledger.decide import Decision, Recorded, record_result
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import credential_bundle, principal_bundle, rows_csv
from lineage.ledger.query import Filter
from lineage.ledger.rotation import rotate_key
from lineage.ledger.store import SCHEMA_VERSION, SQLiteStore
from lineage.ledger.tokens import TokenStore
from lineage.verifier.bodies import result_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.chain import Replay
from lineage.verifier.entry import Entry, entry_from_json, sign_entry
from lineage.verifier.errors import ChainError, EntryFormatError, LineageError
from lineage.verifier.kinds import FAILURES, Result
from lineage.verifier.receipt import verify_receipt
from tests import issuance_helpers as ih
from tests.api_server import Server, request, running
from tests.budget import examples
from tests.state_twin import assert_agree

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
    """The leaves and every chain state table, to show that a refusal changed nothing."""
    conn = sqlite3.connect(db)
    try:
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in STATE_TABLES}
        out["leaves"] = conn.execute("SELECT COUNT(*) FROM leaves").fetchall()
        return out
    finally:
        conn.close()


def _allowed(w: ih.World, credential: str | None = None, enforcement: str = "gw-1") -> Decision:
    """An allowed access, logged (a fresh grant unless ``credential`` is given)."""
    if credential is None:
        credential = w.append(w.grant(max_uses=100)).id
    w.clock.advance(1)
    decision = w.decide(w.invoke(w.agent, credential), enforcement=enforcement)
    assert decision.allowed, decision.reason
    return decision


def _denied(w: ih.World, credential: str) -> Decision:
    w.clock.advance(1)
    decision = w.decide(w.invoke(w.agent, credential, ih.request(action="delete")))
    assert not decision.allowed and decision.check == "scope"
    return decision


def _signed_result(w: ih.World, access: str, enforcement: str = "gw-1", **answer: Any) -> Entry:
    """A result entry signed by the ledger's decision key (as an external decision point
    holding a decision key would append it through ``POST /v1/entries``)."""
    body = result_body(ih.ORIGIN, access, enforcement, **(answer or {"upstream_status": 200}))
    return sign_entry(body, [w.log.keys.decision])


@pytest.fixture
def w(tmp_path: Path):
    world = ih.world(tmp_path)
    yield world
    world.close()


# -- the entry's schema --------------------------------------------------------------------


def _body(**over: Any) -> dict[str, Any]:
    body = result_body("x.example/log", "ab" * 32, "gw-1", upstream_status=200)
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    "answer",
    [{"upstream_status": 100}, {"upstream_status": 599}, *({"failure": f} for f in FAILURES)],
)
def test_a_result_parses_with_exactly_one_answer(answer):
    body = {**_body(upstream_status=...), **answer}
    parsed = Result.parse(body)
    assert (parsed.upstream_status, parsed.failure) == (
        answer.get("upstream_status"),
        answer.get("failure"),
    )


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"upstream_status": ...}, "upstream_status"),  # neither answer
        ({"failure": "timeout"}, "failure"),  # both answers
        ({"upstream_status": 99}, "upstream_status"),
        ({"upstream_status": 600}, "upstream_status"),
        ({"upstream_status": True}, "upstream_status"),
        ({"upstream_status": "200"}, "upstream_status"),
        ({"upstream_status": None}, "upstream_status"),
        ({"upstream_status": ..., "failure": "oops"}, "failure"),
        ({"upstream_status": ..., "failure": None}, "failure"),
        ({"access": "AB" * 32}, "access"),
        ({"access": "ab" * 31}, "access"),
        ({"access": ...}, "access"),
        ({"enforcement": "g" * 129}, "enforcement"),
        ({"enforcement": 7}, "enforcement"),
        ({"decision": "allow"}, "decision"),  # an access's field: unknown here
    ],
)
def test_a_malformed_result_is_refused_naming_the_field(over, field):
    with pytest.raises(EntryFormatError) as info:
        Result.parse(_body(**over))
    assert info.value.field == field, str(info.value)


# -- the ledger: appends, idempotency, every refusal --------------------------------------


def test_recording_a_result_appends_it_signed_by_the_decision_key(w: ih.World):
    access = _allowed(w)
    w.clock.advance(1)
    recorded = record_result(w.log, access.id, "gw-1", upstream_status=200)
    assert (recorded.index, recorded.existing) == (access.index + 1, False)
    assert recorded.entry.kind == "result" and recorded.entry.id == recorded.id
    assert recorded.entry.obj["access"] == access.id
    assert recorded.entry.signed_by(w.log.keys.decision.public)
    assert recorded.receipt is not None
    assert verify_receipt(recorded.receipt.to_json(), w.log.log_key, recorded.id).index == (
        recorded.index
    )
    assert w.log.state().result_of(access.id) == recorded.index
    assert recorded.to_json().keys() == {"id", "index", "receipt"}


def test_recording_the_same_result_again_is_idempotent(w: ih.World):
    access = _allowed(w)
    first = record_result(w.log, access.id, "gw-1", failure="timeout")
    size = w.log.size
    w.clock.advance(5)
    again = record_result(w.log, access.id, "gw-1", failure="timeout")
    assert (again.id, again.index, again.existing) == (first.id, first.index, True)
    assert again.entry.raw == first.entry.raw and again.receipt is not None
    assert w.log.size == size


def test_the_same_answer_after_a_decision_key_rotation_is_the_entry_already_logged(
    w: ih.World,
):
    """Regression guard: signed again by the new decision key, the same answer would be
    other bytes, and so a second result; a retry must answer the one logged."""
    access = _allowed(w)
    first = record_result(w.log, access.id, "gw-1", upstream_status=204)
    rotate_key(w.log, w.keys, "decision")
    assert not first.entry.signed_by(w.log.keys.decision.public)
    again = record_result(w.log, access.id, "gw-1", upstream_status=204)
    assert (again.id, again.index, again.existing) == (first.id, first.index, True)


def test_a_different_second_result_is_refused_and_changes_nothing(w: ih.World):
    access = _allowed(w)
    first = record_result(w.log, access.id, "gw-1", upstream_status=200)
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, access.id, "gw-1", upstream_status=502)
    assert (info.value.check, info.value.field) == ("duplicate-result", "access")
    assert f"already has its result at index {first.index}" in str(info.value)
    assert _dump(w.db) == before


def test_the_same_answer_in_other_bytes_is_a_second_result(w: ih.World):
    """The same answer, signed by another active decision key: another id, and refused."""
    access = _allowed(w)
    first = record_result(w.log, access.id, "gw-1", upstream_status=200)
    rotate_key(w.log, w.keys, "decision")
    other = _signed_result(w, access.id, upstream_status=200)
    assert other.id != first.id and other.body == first.entry.body
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        w.log.append(other)
    assert info.value.check == "duplicate-result"
    assert _dump(w.db) == before


def test_the_same_entry_appended_again_answers_its_index(w: ih.World):
    access = _allowed(w)
    entry = _signed_result(w, access.id)
    first = w.log.append(entry)
    again = w.log.append(entry)
    assert (again.index, again.existing) == (first.index, True)
    store = w.log.store
    assert store.find_confirmed(entry.id, "result", access=access.id) == first.index


def test_a_result_of_a_denied_access_is_refused(w: ih.World):
    g = w.append(w.grant(max_uses=100))
    denied = _denied(w, g.id)
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, denied.id, "gw-1", upstream_status=200)
    assert (info.value.check, info.value.field) == ("denied", "access")
    assert _dump(w.db) == before


def test_a_result_of_an_unknown_id_is_refused(w: ih.World):
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, "0" * 64, "gw-1", upstream_status=200)
    assert (info.value.check, info.value.field) == ("link", "access")
    assert "not an earlier entry" in str(info.value)
    assert _dump(w.db) == before


def test_a_result_of_an_entry_that_is_not_an_access_is_refused(w: ih.World):
    g = w.append(w.grant())
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, g.id, "gw-1", upstream_status=200)
    assert info.value.check == "link" and "not an access entry" in str(info.value)


def test_a_result_naming_another_enforcement_point_is_refused(w: ih.World):
    access = _allowed(w, enforcement="gw-1")
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, access.id, "gw-2", upstream_status=200)
    assert (info.value.check, info.value.field) == ("enforcement", "enforcement")
    assert _dump(w.db) == before
    assert record_result(w.log, access.id, "gw-1", upstream_status=200).index == w.log.size - 1


def test_a_result_signed_by_an_operator_key_is_refused(w: ih.World):
    access = _allowed(w)
    body = result_body(ih.ORIGIN, access.id, "gw-1", upstream_status=200)
    with pytest.raises(RejectedEntry) as info:
        w.log.append(sign_entry(body, [w.log.keys.operator]))
    assert info.value.check == "signature"


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({}, "upstream_status"),
        ({"upstream_status": 200, "failure": "timeout"}, "failure"),
        ({"upstream_status": 99}, "upstream_status"),
        ({"upstream_status": 600}, "upstream_status"),
        ({"upstream_status": True}, "upstream_status"),
        ({"upstream_status": 200.0}, "upstream_status"),
        ({"failure": "teapot"}, "failure"),
        ({"failure": ""}, "failure"),
    ],
)
def test_bad_arguments_are_refused_by_name_and_write_nothing(w: ih.World, answer, field):
    access = _allowed(w)
    before = _dump(w.db)
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, access.id, "gw-1", **answer)
    assert (info.value.check, info.value.field) == ("format", field), str(info.value)
    assert _dump(w.db) == before


@pytest.mark.parametrize("access_id", ["", "AB" * 32, "ab" * 33, "../" * 3])
def test_a_malformed_access_id_is_refused_as_format(w: ih.World, access_id):
    with pytest.raises(RejectedEntry) as info:
        record_result(w.log, access_id, "gw-1", upstream_status=200)
    assert (info.value.check, info.value.field) == ("format", "access")


@pytest.mark.parametrize("same", [False, True], ids=["different-answers", "the-same-answer"])
def test_concurrent_results_for_one_access_leave_exactly_one(w: ih.World, same: bool):
    """Regression: eight callers at once share group commits; a retry whose first attempt
    was earlier in the same batch (its leaf not stored yet) raised NotFound."""
    access = _allowed(w)
    outcomes: list[object] = []
    start = threading.Barrier(8)

    def run(status: int) -> None:
        start.wait(10)
        try:
            outcomes.append(record_result(w.log, access.id, "gw-1", upstream_status=status))
        except RejectedEntry as exc:
            outcomes.append(exc.check)
        except Exception as exc:  # reported to the test's thread
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(200 + (0 if same else i),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    recorded = [o for o in outcomes if isinstance(o, Recorded)]
    if same:
        assert len(recorded) == 8, outcomes
        assert len({r.id for r in recorded}) == 1 and sum(not r.existing for r in recorded) == 1
    else:
        assert len(recorded) == 1 and outcomes.count("duplicate-result") == 7, outcomes
    kinds = Counter(leaf.entry.kind for _, leaf in w.log.leaves())
    assert kinds["result"] == 1


def test_two_results_for_one_access_in_one_group_commit_leave_one(w: ih.World):
    """The writer's view reads its own transaction: the second result of a batch sees the
    first one's row, not the committed state without it."""
    access = _allowed(w)
    first, second = (_signed_result(w, access.id, upstream_status=s) for s in (200, 503))
    results = w.log.append_many([first, second])
    assert not isinstance(results[0], Exception), results[0]
    assert isinstance(results[1], RejectedEntry) and results[1].check == "duplicate-result"
    assert w.log.state().result_of(access.id) == results[0].index


def test_an_access_and_its_result_in_one_group_commit_are_both_accepted(w: ih.World):
    """Regression: the writer's state read an access from its stored leaf, which a batch
    writes only at its end, so a result behind its access in the same group commit was
    refused (``link``) where the offline replay accepts it."""
    g = w.append(w.grant(max_uses=100))
    w.clock.advance(1)
    invocation = w.invoke(w.agent, g.id)
    body = {
        "kind": "access",
        "v": 1,
        "log": ih.ORIGIN,
        "invocation": dict(invocation.to_json()),
        "context": {},
        "enforcement": "gw-1",
        "decision": "allow",
        "reason": "permitted by an enforcement point that decides for itself",
        "policy": 0,
    }
    access = sign_entry(body, [w.log.keys.decision])
    answer = _signed_result(w, access.id, failure="timeout")
    done = w.log.append_many([access, answer])
    assert [type(d).__name__ for d in done] == ["Appended", "Appended"], done
    assert done[1].index == done[0].index + 1
    state = w.log.state()
    assert state.access(access.id).allowed and state.result_of(access.id) == done[1].index
    assert w.log.store.refs_size() == w.log.size
    memory = Replay(w.log.log_key, complete=True)
    memory.apply_all(w.log.leaves())
    assert_agree(memory, state)
    w.log.checkpoint()
    assert audit(w.db, w.log.log_key).size == w.log.size  # refs included


# -- replay, the audit and the verifier agree with the ledger ------------------------------


def test_the_audit_and_a_complete_replay_accept_a_log_with_results(w: ih.World):
    g = w.append(w.grant(max_uses=100))
    answered = [_allowed(w, g.id) for _ in range(3)]
    _denied(w, g.id)
    record_result(w.log, answered[0].id, "gw-1", upstream_status=200)
    record_result(w.log, answered[2].id, "gw-1", failure="unreachable")
    w.log.checkpoint()
    memory = Replay(w.log.log_key, complete=True)
    memory.apply_all(w.log.leaves())
    assert memory.results == {
        answered[0].id: answered[2].index + 2,
        answered[2].id: answered[2].index + 3,
    }
    assert_agree(memory, w.log.state())
    report = audit(w.db, w.log.log_key)
    assert report.size == w.log.size


@pytest.mark.parametrize("refusal", ["duplicate-result", "denied", "enforcement", "link"])
def test_the_verifier_refuses_what_the_ledger_refuses(w: ih.World, refusal: str):
    """A log that skipped the ledger's checks (a forced bundle, signed with the ledger's
    own log key) fails offline with the check the ledger named."""
    g = w.append(w.grant(max_uses=100))
    access = _allowed(w, g.id)
    if refusal == "duplicate-result":
        record_result(w.log, access.id, "gw-1", upstream_status=200)
        extra = _signed_result(w, access.id, upstream_status=500)
    elif refusal == "denied":
        extra = _signed_result(w, _denied(w, g.id).id)
    elif refusal == "enforcement":
        extra = _signed_result(w, access.id, "gw-9")
    else:
        extra = _signed_result(w, g.id)
    with pytest.raises(RejectedEntry) as refused:
        w.log.append(extra)
    assert refused.value.check == refusal
    w.log.checkpoint()
    with pytest.raises(ChainError) as info:
        verify_bundle(ih.forced_bundle(w.log, [extra], w.now), w.log.log_key)
    assert (info.value.check, info.value.entry_id) == (refusal, extra.id)


# -- exports carry each access with its result ----------------------------------------------


def _indexes(bundle: dict[str, Any]) -> list[int]:
    return [e["index"] for e in bundle["entries"]]


def test_a_credential_bundle_holds_each_access_with_its_result(w: ih.World):
    g = w.append(w.grant(max_uses=100))
    child = w.append(w.delegate(g, w.agent, max_uses=10))
    w.clock.advance(1)
    access = w.decide(w.invoke(w.reader, child.id))
    assert access.allowed, access.reason
    recorded = record_result(w.log, access.id, "gw-1", upstream_status=200)
    for cid, within in ((g.id, None), (child.id, None), (child.id, child.id)):
        bundle = credential_bundle(w.log, cid, within=within)
        assert {access.index, recorded.index} <= set(_indexes(bundle)), cid
        verified = verify_bundle(bundle, w.log.log_key)
        assert verified.replay.results == {access.id: recorded.index}
    other = w.append(w.grant(w.helper))  # another chain: none of this
    assert recorded.index not in _indexes(credential_bundle(w.log, other.id))


def test_a_window_export_brings_the_access_of_a_result_and_the_result_of_an_access(
    w: ih.World,
):
    access = _allowed(w)
    w.clock.advance(100)
    recorded = record_result(w.log, access.id, "gw-1", upstream_status=200)
    result_time = w.log.leaf(recorded.index).time
    access_time = w.log.leaf(access.index).time
    # the window holds the result only: the access it answers comes too, and verifies
    late = principal_bundle(w.log, "alice@corp", start=result_time, end=result_time + 1)
    assert {access.index, recorded.index} <= set(_indexes(late))
    verify_bundle(late, w.log.log_key)
    # the window holds the access only: its result comes too
    early = principal_bundle(w.log, "alice@corp", start=access_time, end=access_time + 1)
    assert {access.index, recorded.index} <= set(_indexes(early))
    verify_bundle(early, w.log.log_key)
    # and without a principal
    anyone = principal_bundle(w.log, None, start=result_time, end=result_time + 1)
    assert access.index in _indexes(anyone)
    verify_bundle(anyone, w.log.log_key)
    rows = "".join(rows_csv(w.log, Filter(kind="result")))
    assert "upstream_status 200" in rows


# -- the schema: a ledger from before the results table --------------------------------------


def _as_schema_4(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE results")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()


def test_a_ledger_of_schema_4_gains_the_results_table_on_open(tmp_path: Path):
    w = ih.world(tmp_path)
    access = _allowed(w)
    w.log.checkpoint()
    log_key = w.log.log_key
    w.close()
    _as_schema_4(w.db)
    copy = tmp_path / "schema4.db"
    shutil.copy(w.db, copy)
    assert audit(copy, log_key).size > 1  # read-only: no table, and no result to hold
    w.log = ih.reopen(w)
    try:
        conn = sqlite3.connect(w.db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
        recorded = record_result(w.log, access.id, "gw-1", upstream_status=200)
        assert w.log.state().result_of(access.id) == recorded.index
        w.log.checkpoint()
    finally:
        w.close()
    assert audit(w.db, log_key).size == recorded.index + 1


def test_the_results_key_holds_an_access_to_one_result_in_the_file_too(w: ih.World):
    """Below the rules: even a write that skipped them cannot store two results."""
    access = _allowed(w)
    record_result(w.log, access.id, "gw-1", upstream_status=200)
    store = SQLiteStore(w.db)
    try:
        with pytest.raises(LineageError), store.transaction():
            store._write_each(
                [("INSERT INTO results (access, idx) VALUES (?, ?)", (access.id, 99))]
            )
    finally:
        store.close()


# -- a property: no interleaving gives an access two results --------------------------------

ANSWERS = [
    {"upstream_status": 200},
    {"upstream_status": 502},
    {"failure": "timeout"},
    {"failure": "cancelled"},
]


@st.composite
def _interleavings(draw):
    """Batches of attempts, each (access 0-2, answer, how): ``record`` (record_result from a
    thread of its own), ``entry`` (a presigned entry, in one ``append_many`` batch with the
    others of its batch), or ``other`` (naming another enforcement point)."""
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batches.append(
            draw(
                st.lists(
                    st.tuples(
                        st.integers(0, 2),
                        st.integers(0, len(ANSWERS) - 1),
                        st.sampled_from(["record", "entry", "other"]),
                    ),
                    min_size=1,
                    max_size=5,
                )
            )
        )
    return batches


@settings(max_examples=examples(20), deadline=None, suppress_health_check=list(HealthCheck))
@given(_interleavings())
def test_no_interleaving_gives_an_access_two_results(tmp_path_factory, batches):
    world = ih.world(tmp_path_factory.mktemp("interleavings"))
    try:
        g = world.append(world.grant(max_uses=100))
        accesses = [_allowed(world, g.id), _allowed(world, g.id), _denied(world, g.id)]
        refusals: list[object] = []  # what the threads' attempts raised
        for batch in batches:
            world.clock.advance(1)
            entries, threads = [], []
            for which, answer, how in batch:
                aid = accesses[which].id
                if how == "record":
                    threads.append(
                        threading.Thread(
                            target=_attempt,
                            args=(world, aid, ANSWERS[answer], refusals),
                            daemon=True,
                        )
                    )
                else:
                    name = "gw-1" if how == "entry" else "gw-2"
                    entries.append(_signed_result(world, aid, name, **ANSWERS[answer]))
            for t in threads:
                t.start()
            for outcome in world.log.append_many(entries, receipts=False):
                assert not isinstance(outcome, Exception) or isinstance(outcome, RejectedEntry)
            for t in threads:
                t.join(30)
        assert set(refusals) <= {"duplicate-result", "denied"}, refusals
        results = Counter(
            leaf.entry.body.access for _, leaf in world.log.leaves() if leaf.entry.kind == "result"
        )
        assert all(n == 1 for n in results.values()), results
        assert accesses[2].id not in results  # the denied one: never
        tried = {accesses[which].id for batch in batches for which, _, how in batch}
        tried_validly = {
            accesses[which].id for batch in batches for which, _, how in batch if how != "other"
        }
        assert set(results) <= tried and tried_validly - {accesses[2].id} <= set(results)
        memory = Replay(world.log.log_key, complete=True)
        memory.apply_all(world.log.leaves())
        assert memory.results == {a: world.log.state().result_of(a) for a in results}
        assert_agree(memory, world.log.state())
    finally:
        world.close()


def _attempt(
    world: ih.World, access_id: str, answer: dict[str, Any], refusals: list[object]
) -> None:
    try:
        record_result(world.log, access_id, "gw-1", **answer)
    except RejectedEntry as exc:
        refusals.append(exc.check)
    except Exception as exc:  # reported to the test's thread, which fails on it
        refusals.append(exc)


# -- the HTTP endpoint and the client --------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running(tmp_path_factory.mktemp("results-api")) as server:
        yield server


def _api_access(srv: Server, *, allow: bool = True) -> dict[str, Any]:
    """A decision by ``POST /v1/access`` as the enforcement point ``enforcement-1``."""
    r = srv.exchange(srv.grant(), srv.agent)
    assert r.status_code == 200, r.text
    handle = r.json()["access_token"]
    req = None if allow else request(action="delete")
    r = srv.access(srv.invoke(srv.agent, handle, req))
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == ("allow" if allow else "deny")
    return r.json()


def _post(srv: Server, access_id: str, body: Any, token: str | None) -> httpx.Response:
    headers = srv.bearer(token) if token else {}
    return httpx.post(
        srv.url(f"/v1/access/{access_id}/result"), json=body, headers=headers, timeout=10
    )


def test_the_api_records_a_result_once(srv: Server):
    access = _api_access(srv)
    r = _post(srv, access["id"], {"upstream_status": 200}, srv.enforcement)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer.keys() == {"id", "index", "receipt"}
    verify_receipt(answer["receipt"], srv.log.log_key, answer["id"])
    assert answer["receipt"]["leaf"]["entry"]["access"] == access["id"]
    assert answer["receipt"]["leaf"]["entry"]["enforcement"] == "enforcement-1"
    again = _post(srv, access["id"], {"upstream_status": 200}, srv.enforcement)
    assert again.status_code == 200 and again.json()["id"] == answer["id"]
    assert again.json()["index"] == answer["index"]
    size = srv.log.size
    other = _post(srv, access["id"], {"failure": "timeout"}, srv.enforcement)
    assert other.status_code == 409, other.text
    problem = other.json()
    assert problem["error"] == "conflict" and "duplicate-result" in problem["detail"]
    assert other.headers["content-type"].startswith("application/problem+json")
    assert srv.log.size == size


def test_the_api_records_a_failure(srv: Server):
    access = _api_access(srv)
    r = _post(srv, access["id"], {"failure": "bad_response"}, srv.enforcement)
    assert r.status_code == 201, r.text
    assert r.json()["receipt"]["leaf"]["entry"]["failure"] == "bad_response"


def test_the_api_lets_only_the_named_enforcement_point_or_an_operator_record(srv: Server):
    access = _api_access(srv)
    _, gateway2 = TokenStore(srv.log.store).create("enforcement", "gateway-2")
    size = srv.log.size
    r = _post(srv, access["id"], {"upstream_status": 200}, gateway2)
    assert r.status_code == 403 and r.json()["error"] == "access_denied", r.text
    assert _post(srv, access["id"], {"upstream_status": 200}, srv.auditor).status_code == 403
    assert _post(srv, access["id"], {"upstream_status": 200}, None).status_code == 401
    assert srv.log.size == size
    r = _post(srv, access["id"], {"upstream_status": 200}, srv.operator)
    assert r.status_code == 201, r.text  # on the enforcement point's behalf: its name
    assert r.json()["receipt"]["leaf"]["entry"]["enforcement"] == "enforcement-1"


def test_the_api_answers_404_for_what_is_not_an_access(srv: Server):
    r = _post(srv, "0" * 64, {"upstream_status": 200}, srv.enforcement)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
    r = _post(srv, grant, {"upstream_status": 200}, srv.enforcement)
    assert r.status_code == 404, r.text


def test_the_api_refuses_a_result_of_a_denied_access(srv: Server):
    denied = _api_access(srv, allow=False)
    size = srv.log.size
    r = _post(srv, denied["id"], {"upstream_status": 200}, srv.enforcement)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request" and "denied" in r.json()["detail"]
    assert srv.log.size == size


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"upstream_status": 200, "failure": "timeout"},
        {"upstream_status": None},
        {"failure": None},
        {"upstream_status": None, "failure": "timeout"},
        {"upstream_status": 99},
        {"upstream_status": 600},
        {"upstream_status": "200"},
        {"upstream_status": True},
        {"upstream_status": 200.5},
        {"upstream_status": 599.5},
        {"failure": "teapot"},
        {"upstream_status": 200, "note": "x"},
        [200],
        "200",
        None,
    ],
)
def test_the_api_refuses_bad_bodies_with_400_and_writes_nothing(srv: Server, body):
    access = _api_access(srv)
    size = srv.log.size
    r = _post(srv, access["id"], body, srv.enforcement)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert srv.log.size == size and srv.log.state().result_of(access["id"]) is None


def test_the_api_reads_a_whole_number_written_with_a_fraction_as_that_integer(srv: Server):
    """Regression (schemathesis): ``599.0`` is a JSON Schema integer, so the document
    allowed it and the server refused it; the entry holds the integer either way."""
    access = _api_access(srv)
    r = _post(srv, access["id"], {"upstream_status": 599.0}, srv.enforcement)
    assert r.status_code == 201, r.text
    status = r.json()["receipt"]["leaf"]["entry"]["upstream_status"]
    assert status == 599 and type(status) is int


@pytest.mark.parametrize("bad", ["ABC", "g" * 64, "A" * 64, "0" * 63])
def test_the_api_refuses_an_access_id_that_is_not_an_entry_id(srv: Server, bad: str):
    r = _post(srv, bad, {"upstream_status": 200}, srv.enforcement)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


def test_the_client_records_a_result_and_checks_its_receipt(srv: Server):
    access = _api_access(srv)
    key = srv.log.log_key.vkey
    with LineageClient(srv.base, token=srv.enforcement, log_key=key) as client:
        answer = client.result(access["id"], upstream_status=201)
        assert verify_receipt(answer["receipt"], key, answer["id"]).leaf.entry.kind == "result"
        assert client.result(access["id"], upstream_status=201)["id"] == answer["id"]
        with pytest.raises(LineageHTTPError) as info:
            client.result(access["id"], failure="timeout")
        assert (info.value.status, info.value.error) == (409, "conflict")
        with pytest.raises(ValueError):
            client.result(access["id"])
        with pytest.raises(ValueError):
            client.result("../../v1/entries", upstream_status=200)


def test_the_async_client_records_a_result(srv: Server):
    access = _api_access(srv)

    async def run() -> dict[str, Any]:
        key = srv.log.log_key.vkey
        async with AsyncLineageClient(srv.base, token=srv.enforcement, log_key=key) as client:
            return await client.result(access["id"], failure="cancelled")

    answer = asyncio.run(run())
    assert answer["receipt"]["leaf"]["entry"]["failure"] == "cancelled"


def test_an_entry_body_reader_sees_a_result_as_it_sees_its_access(srv: Server):
    """A result is about what was done with a credential: readers who may see the access
    see its result, and anonymous callers see neither body."""
    access = _api_access(srv)
    answer = _post(srv, access["id"], {"upstream_status": 200}, srv.enforcement).json()
    index = answer["index"]
    public = httpx.get(srv.url(f"/v1/log/entries/{index}"), timeout=10).json()
    assert "entry" not in public
    audited = httpx.get(
        srv.url(f"/v1/log/entries/{index}"), headers=srv.bearer(srv.auditor), timeout=10
    ).json()
    assert audited["entry"]["kind"] == "result"


def test_result_entries_parse_from_their_json(w: ih.World):
    access = _allowed(w)
    entry = _signed_result(w, access.id, failure="unreachable")
    assert entry_from_json(dict(entry.obj)).raw == entry.raw


# -- many at once (record_results, POST /v1/results) --------------------------------------


def test_record_results_judges_each_and_writes_the_rest_together(w):
    from lineage.ledger.decide import record_results

    credential = w.append(w.grant(max_uses=100)).id
    a, b, c = (_allowed(w, credential) for _ in range(3))
    denied = _denied(w, credential)
    before = w.log.size
    done = record_results(
        w.log,
        [
            {"access": a.id, "upstream_status": 200},
            {"access": b.id, "failure": "timeout"},
            {"access": denied.id, "upstream_status": 200},  # nothing was forwarded
            {"access": c.id, "upstream_status": 99},  # out of range
            {"access": a.id, "upstream_status": 200},  # the same answer twice: one entry
        ],
        "gw-1",
    )
    assert isinstance(done[0], Recorded) and isinstance(done[1], Recorded)
    assert isinstance(done[2], RejectedEntry) and done[2].check == "denied"
    assert isinstance(done[3], RejectedEntry) and done[3].check == "format"
    assert isinstance(done[4], Recorded) and done[4].id == done[0].id
    assert w.log.size == before + 2
    assert record_result(w.log, c.id, "gw-1", upstream_status=204).index == before + 2
