"""The decision point (ledger/decide.py): time windows, revocation, budgets over a
subtree, proofs of possession, the enforcement point's attributes, and exactly one
allow for a single-use credential however many threads and processes race for it.

FORMAT.md §5 (invocations), §8 step 6 (what an allow must satisfy), DECISIONS.md D18-D19.
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.ledger.audit import audit
from lineage.ledger.config import Settings
from lineage.ledger.decide import InvalidInvocation, decide
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.jcs import canonical
from tests.budget import examples
from tests.issuance_helpers import (
    T0,
    World,
    decide_in_process,
    key,
    nonce,
    parent_scope,
    reopen,
    request,
    world,
)


@pytest.fixture
def w(tmp_path: Path) -> World:
    world_ = world(tmp_path)
    yield world_
    world_.close()


def _access(w: World, index: int) -> dict:
    return w.log.leaf(index).entry.obj


# -- allow, and what is logged ----------------------------------------------------------


def test_an_allow_is_logged_signed_by_the_decision_key(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id)
    size = w.log.size
    d = w.decide(inv, {"source_ip": "192.0.2.1"})
    assert (d.allowed, d.check, d.policy) == (True, None, 0)
    assert d.index == size and w.log.size == size + 1
    obj = _access(w, d.index)
    assert obj["decision"] == "allow" and obj["kind"] == "access"
    assert obj["invocation"] == dict(inv.obj)
    assert obj["context"] == {"source_ip": "192.0.2.1"} and obj["enforcement"] == "gw-1"
    assert obj["sigs"][0]["kid"] == w.log.keys.decision.kid
    assert w.log.leaf(d.index).entry.id == d.id == d.entry.id
    assert d.to_json()["decision"] == "allow"


def test_a_request_outside_the_scope_is_a_logged_deny(w: World):
    g = w.append(w.grant())
    d = w.decide(w.invoke(w.agent, g.id, request(action="delete")))
    assert (d.allowed, d.check) == (False, "scope")
    assert "action" in d.reason
    assert _access(w, d.index)["decision"] == "deny"


# -- time: expiry and not-before with the injected clock --------------------------------


def test_expiry_with_the_clock(w: World):
    g = w.append(w.grant(expires_at=T0 + 100))
    w.clock.advance(99)
    assert w.decide(w.invoke(w.agent, g.id)).allowed
    w.clock.advance(1)
    d = w.decide(w.invoke(w.agent, g.id))
    assert (d.allowed, d.check) == (False, "expired")


def test_an_expired_ancestor_denies_a_descendant(w: World):
    g = w.append(w.grant(expires_at=T0 + 100))
    child = w.append(w.delegate(g, w.agent, expires_at=T0 + 100, max_depth=0))
    w.clock.advance(150)
    d = w.decide(w.invoke(w.reader, child.id))
    assert (d.allowed, d.check) == (False, "expired")


def test_not_before_with_the_clock(w: World):
    g = w.append(w.grant(not_before=T0 + 30))
    d = w.decide(w.invoke(w.agent, g.id))
    assert (d.allowed, d.check) == (False, "not-yet-valid")
    w.clock.advance(30)
    assert w.decide(w.invoke(w.agent, g.id)).allowed


# -- revocation -------------------------------------------------------------------------


@pytest.fixture
def chain(w: World) -> tuple:
    """grant (agent) -> d1 (reader) -> d2 (helper)"""
    g = w.append(w.grant())
    d1 = w.append(w.delegate(g, w.agent, max_depth=1))
    d2 = w.append(
        w.delegate(
            d1,
            w.reader,
            w.helper,
            max_depth=0,
            task={"id": "inbox-triage/read/one", "description": ""},
        )
    )
    assert w.decide(w.invoke(w.helper, d2.id)).allowed
    return g, d1, d2


def test_revoking_the_grant_cascades_to_the_grandchild(w: World, chain: tuple):
    g, d1, d2 = chain
    w.append(w.revoke(w.alice, credential=g.id))
    d = w.decide(w.invoke(w.helper, d2.id))
    assert (d.allowed, d.check) == (False, "revoked")
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(d1, w.reader, key("late"), max_depth=0))
    assert info.value.check == "revoked"


@pytest.mark.parametrize("who", ["operator", "agent", "reader", "helper"])
def test_a_credential_is_revoked_by_the_operator_or_a_holder_at_or_above(
    w: World, chain: tuple, who: str
):
    _, _, d2 = chain
    signer = {
        "operator": w.log.keys.operator,
        "agent": w.agent,
        "reader": w.reader,
        "helper": w.helper,
    }[who]
    w.append(w.revoke(signer, credential=d2.id))
    assert w.decide(w.invoke(w.helper, d2.id)).check == "revoked"


def test_a_holder_below_or_beside_may_not_revoke(w: World, chain: tuple):
    _, d1, _ = chain
    for signer in (w.helper, key("stranger"), w.log.keys.decision):
        with pytest.raises(RejectedEntry) as info:
            w.append(w.revoke(signer, credential=d1.id))
        assert info.value.check == "signature"
    assert w.decide(w.invoke(w.reader, d1.id)).allowed


def test_revoking_a_holder_key_denies_every_credential_bound_to_it(w: World, chain: tuple):
    _, d1, d2 = chain
    w.append(w.revoke(w.reader, holder=w.reader.public))  # reported by whoever holds it
    assert w.decide(w.invoke(w.reader, d1.id)).check == "revoked"
    assert w.decide(w.invoke(w.helper, d2.id)).check == "revoked"  # under a revoked key
    # and a credential bound to it later is dead too
    g2 = w.append(w.grant(holder=w.reader, task={"id": "again", "description": ""}))
    assert w.decide(w.invoke(w.reader, g2.id)).check == "revoked"
    # the agent above is untouched
    assert w.decide(w.invoke(w.agent, chain[0].id)).allowed


def test_a_holder_key_is_revoked_only_by_itself_or_an_operator(w: World, chain: tuple):
    with pytest.raises(RejectedEntry) as info:
        w.append(w.revoke(w.agent, holder=w.reader.public))
    assert info.value.check == "signature"
    w.append(w.revoke(w.log.keys.operator, holder=w.reader.public))
    assert w.decide(w.invoke(w.reader, chain[1].id)).check == "revoked"


# -- budgets across a subtree -----------------------------------------------------------


def test_two_children_share_their_parent_single_use(w: World):
    g = w.append(w.grant(max_uses=1, expires_at=T0 + 60))
    kids = [
        w.append(w.delegate(g, w.agent, key(f"kid {i}"), max_uses=1, expires_at=T0 + 60))
        for i in range(2)
    ]
    assert w.decide(w.invoke(key("kid 0"), kids[0].id)).allowed
    d = w.decide(w.invoke(key("kid 1"), kids[1].id))
    assert (d.allowed, d.check) == (False, "budget")
    assert g.id[:16] in d.reason  # the grant's budget, not the child's own
    assert w.decide(w.invoke(w.agent, g.id)).check == "budget"


def test_a_childs_own_budget_binds_it_alone(w: World):
    g = w.append(w.grant(max_uses=3))
    kid = w.append(w.delegate(g, w.agent, max_uses=1, expires_at=T0 + 60))
    assert w.decide(w.invoke(w.reader, kid.id)).allowed
    assert w.decide(w.invoke(w.reader, kid.id)).check == "budget"
    assert w.decide(w.invoke(w.agent, g.id)).allowed
    assert w.decide(w.invoke(w.agent, g.id)).allowed  # the third use over the subtree
    assert w.decide(w.invoke(w.agent, g.id)).check == "budget"


def test_a_rate_limit_spans_the_subtree_and_the_window_slides(w: World):
    rate = {"count": 2, "window": 60}
    g = w.append(w.grant(rate=rate))
    a = w.append(w.delegate(g, w.agent, key("a"), rate=rate, max_depth=0))
    b = w.append(w.delegate(g, w.agent, key("b"), rate=rate, max_depth=0))
    assert w.decide(w.invoke(key("a"), a.id)).allowed
    w.clock.advance(10)
    assert w.decide(w.invoke(key("b"), b.id)).allowed
    w.clock.advance(10)
    d = w.decide(w.invoke(key("a"), a.id))
    assert (d.allowed, d.check) == (False, "budget")
    w.clock.advance(40)  # T0 + 60: the use at T0 has left the window (time - 60, time]
    assert w.decide(w.invoke(key("a"), a.id)).allowed
    assert w.decide(w.invoke(key("b"), b.id)).check == "budget"  # T0+10 and T0+60 remain


# -- proofs of possession: not logged -----------------------------------------------------


def test_a_replayed_invocation_is_refused_and_not_logged(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id)
    assert w.decide(inv).allowed
    size = w.log.size
    with pytest.raises(InvalidInvocation) as info:
        w.decide(inv)
    assert info.value.reason == "replayed"
    assert w.log.size == size
    assert w.log.counters["invalid_invocations"] == 1


def test_a_nonce_is_spent_by_a_deny_too(w: World):
    g = w.append(w.grant())
    n = nonce()
    assert w.decide(w.invoke(w.agent, g.id, request(action="delete"), n=n)).check == "scope"
    with pytest.raises(InvalidInvocation) as info:
        w.decide(w.invoke(w.agent, g.id, n=n))  # same nonce, now a request it would allow
    assert info.value.reason == "replayed"


def test_a_nonce_is_per_credential(w: World):
    g = w.append(w.grant())
    g2 = w.append(w.grant(task={"id": "other", "description": ""}))
    n = nonce()
    assert w.decide(w.invoke(w.agent, g.id, n=n)).allowed
    assert w.decide(w.invoke(w.agent, g2.id, n=n)).allowed


@pytest.mark.parametrize(("offset", "stale"), [(-61, True), (-60, False), (60, False), (61, True)])
def test_a_stale_invocation_is_refused(w: World, offset: int, stale: bool):
    g = w.append(w.grant())
    w.clock.advance(100)
    inv = w.invoke(w.agent, g.id, iat=w.now + offset)
    size = w.log.size
    if stale:
        with pytest.raises(InvalidInvocation) as info:
            w.decide(inv)
        assert info.value.reason == "stale"
        assert w.log.size == size
    else:
        assert w.decide(inv).allowed


def test_an_invocation_by_another_key_is_refused(w: World):
    g = w.append(w.grant())
    size = w.log.size
    with pytest.raises(InvalidInvocation) as info:
        w.decide(w.invoke(w.reader, g.id))
    assert info.value.reason == "signature"
    assert w.log.size == size


def test_a_tampered_invocation_is_refused(w: World):
    g = w.append(w.grant())
    obj = dict(w.invoke(w.agent, g.id).obj)
    obj["request"] = {**obj["request"], "resource": "mailbox:alice/secret"}
    with pytest.raises(InvalidInvocation) as info:
        w.decide(obj)
    assert info.value.reason == "signature"


def test_an_unknown_credential_is_refused(w: World):
    with pytest.raises(InvalidInvocation) as info:
        w.decide(w.invoke(w.agent, "ab" * 32))
    assert info.value.reason == "unknown-credential"


# -- the enforcement point's attributes override the agent's ----------------------------


def test_a_lying_agent_is_judged_on_what_the_gateway_saw(w: World):
    g = w.append(w.grant())
    claims = request(attributes={"received_at": T0 - 60, "sender": "a@vendor.example"})
    honest = w.decide(w.invoke(w.agent, g.id, claims))
    assert honest.allowed
    d = w.decide(w.invoke(w.agent, g.id, claims), {"attributes": {"sender": "evil@x.example"}})
    assert (d.allowed, d.check) == (False, "scope")
    assert "sender" in d.reason
    # replay judges the same effective request: the deny verifies, and so does the allow
    verify_bundle(credential_bundle(w.log, g.id), w.log.log_key)


def test_the_gateway_may_supply_a_missing_attribute(w: World):
    g = w.append(w.grant())
    bare = request(attributes={"received_at": T0 - 60})
    assert w.decide(w.invoke(w.agent, g.id, bare)).check == "scope"
    d = w.decide(w.invoke(w.agent, g.id, bare), {"attributes": {"sender": "b@vendor.example"}})
    assert d.allowed


def test_a_malformed_context_is_refused_before_anything_is_logged(w: World):
    g = w.append(w.grant())
    size = w.log.size
    for context in ({"attributes": ["sender"]}, {"attributes": {"sender": ["x"]}}):
        with pytest.raises(RejectedEntry):
            w.decide(w.invoke(w.agent, g.id), context)
    assert w.log.size == size


@pytest.mark.parametrize("attributes", [None, {}], ids=["null", "empty"])
def test_context_attributes_null_or_empty_are_refused(w: World, attributes):
    g = w.append(w.grant())
    size = w.log.size
    with pytest.raises(RejectedEntry):
        w.decide(w.invoke(w.agent, g.id), {"attributes": attributes})
    assert w.log.size == size


# -- what was logged replays ------------------------------------------------------------


def test_the_decisions_replay_offline(w: World, chain: tuple):
    g, d1, d2 = chain
    w.decide(w.invoke(w.reader, d1.id, request(action="delete")))
    w.append(w.revoke(w.alice, credential=d1.id))
    w.decide(w.invoke(w.helper, d2.id))
    vb = verify_bundle(credential_bundle(w.log, g.id), w.log.log_key)
    decisions = [e.obj["decision"] for _, e in vb.replay.accesses]
    assert decisions == ["allow", "deny", "deny"]
    report = audit(w.db, w.log.log_key)
    assert report.accesses == 3


REQUESTS = [
    request(),
    request(action="send", resource="mailbox:alice/outbox/r-1"),
    request(action="delete"),
    request(resource="mailbox:bob/inbox/msg-1"),
    request(attributes={"received_at": T0 - 60, "sender": "c@vendor.example"}),
]
OPS = st.one_of(
    st.tuples(
        st.just("delegate"),
        st.integers(0, 7),
        st.sampled_from([["read"], ["read", "send"], ["delete", "read"]]),
        st.sampled_from([None, 2, 6]),
        st.sampled_from([None, {"count": 2, "window": 60}, {"count": 3, "window": 60}]),
        st.integers(0, 2),
    ),
    st.tuples(st.just("invoke"), st.integers(0, 7), st.sampled_from(REQUESTS), st.booleans()),
    st.tuples(st.just("advance"), st.integers(1, 90)),
    st.tuples(st.just("revoke"), st.integers(0, 7), st.sampled_from(["alice", "self", "other"])),
)


def test_whatever_the_ledger_decides_replays_offline(tmp_path: Path):
    """Random trees, uses, revocations and clock moves: the ledger's log always verifies."""
    runs = iter(range(10**6))
    counts = collections.Counter()

    @settings(
        max_examples=examples(25),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(OPS, min_size=1, max_size=14))
    def check(ops: list) -> None:
        folder = tmp_path / str(next(runs))
        folder.mkdir()
        w = world(folder)
        try:
            _run_ops(w, ops, counts)
        finally:
            w.close()

    check()
    assert counts["allow"] and counts["deny"] and counts["refused"] and counts["invalid"]


def _run_ops(w: World, ops: list, counts: collections.Counter) -> None:
    rate = {"count": 3, "window": 60}
    grant = w.append(w.grant(max_uses=6, rate=rate, max_depth=3))
    creds = [(grant.id, w.agent, "inbox-triage", T0 + 900)]
    last_nonce: dict[str, str] = {}
    for op in ops:
        if op[0] == "advance":
            w.clock.advance(op[1])
            continue
        cid, holder, task, expires = creds[op[1] % len(creds)]
        try:
            if op[0] == "delegate":
                _, _, actions, uses, child_rate, depth = op
                kid = key(f"holder {len(creds)}")
                fields = {"scope": [{**parent_scope()[0], "actions": actions}]}
                entry = w.delegate(
                    cid,
                    holder,
                    kid,
                    task={"id": f"{task}/{len(creds)}", "description": ""},
                    expires_at=expires,
                    max_uses=uses,
                    rate=child_rate,
                    max_depth=depth,
                    **fields,
                )
                w.append(entry)
                creds.append((entry.id, kid, f"{task}/{len(creds)}", expires))
            elif op[0] == "invoke":
                _, _, req, replay = op
                n = last_nonce.get(cid) if replay else None
                inv = w.invoke(holder, cid, req, n=n)
                last_nonce[cid] = inv.nonce
                counts["allow" if w.decide(inv).allowed else "deny"] += 1
            else:
                signer = {"alice": w.alice, "self": holder, "other": key("stranger")}[op[2]]
                w.append(w.revoke(signer, credential=cid))
        except RejectedEntry:
            counts["refused"] += 1
        except InvalidInvocation:
            counts["invalid"] += 1
    vb = verify_bundle(credential_bundle(w.log, grant.id), w.log.log_key)
    assert set(vb.replay.credentials) == {c[0] for c in creds}
    assert audit(w.db, w.log.log_key).size == w.log.size


# -- exactly one allow for a single-use credential --------------------------------------


def _single_use(tmp_path: Path) -> tuple[World, object]:
    w = world(tmp_path, Settings(single_use_ttl_max=600), clock=time.time)
    g = w.append(w.grant(max_uses=1, expires_at=int(time.time()) + 600))
    return w, g


def _assert_exactly_one_allow(w: World, outcomes: list[str], n: int) -> None:
    counts = collections.Counter(outcomes)
    assert counts == {"allow": 1, "deny:budget": n - 1}, counts
    logged = collections.Counter(
        leaf.entry.obj["decision"] for _, leaf in w.log.leaves() if leaf.entry.kind == "access"
    )
    assert logged == {"allow": 1, "deny": n - 1}
    report = audit(w.db, w.log.log_key)
    assert report.accesses == n


def test_64_threads_race_for_a_single_use(tmp_path: Path):
    w, g = _single_use(tmp_path)
    other = reopen(w)  # two Log objects in this process, each with its own writer
    w.log.state(), other.state()  # both replayed before the race: each must catch up
    invs = [w.invoke(w.agent, g.id, iat=int(time.time())) for _ in range(64)]
    outcomes: list[str] = []
    barrier = threading.Barrier(64)

    def run(i: int) -> None:
        barrier.wait()
        log = w.log if i % 2 else other
        try:
            d = decide(log, invs[i], {}, f"gw-{i % 2}", window=60)
            outcomes.append("allow" if d.allowed else f"deny:{d.check}")
        except InvalidInvocation as exc:
            outcomes.append(f"invalid:{exc.reason}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    _assert_exactly_one_allow(w, outcomes, 64)
    w.close()


def test_the_same_invocation_from_16_threads_is_decided_once(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id)
    size = w.log.size
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append("allow" if w.decide(inv).allowed else "deny")
        except InvalidInvocation as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert collections.Counter(outcomes) == {"allow": 1, "replayed": 15}
    assert w.log.size == size + 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_64_invocations_from_several_processes_and_threads(tmp_path: Path, method: str):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    w, g = _single_use(tmp_path)
    w.log.close()  # the children open the files themselves
    invs = [dict(w.invoke(w.agent, g.id, iat=int(time.time())).obj) for _ in range(64)]
    assert len({canonical(i) for i in invs}) == 64  # distinct nonces
    ctx = multiprocessing.get_context(method)
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=decide_in_process, args=(w.db, w.keys, invs[i::4], start, results, 4))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    try:
        start.set()
        outcomes = [o for _ in procs for o in results.get(timeout=60)]
    finally:
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    w.log = reopen(w)
    _assert_exactly_one_allow(w, outcomes, 64)
    w.close()


def test_a_decision_entry_is_what_a_verifier_parses_from_its_bytes(tmp_path):
    """The writer reuses the invocation and context it has just parsed when it signs a
    decision; the entry it logs must be exactly what parsing its bytes gives."""
    from lineage.verifier.entry import parse_entry
    from tests import issuance_helpers as ih

    w = ih.world(tmp_path)
    g = w.append(w.grant(max_uses=10))
    contexts = [
        {},
        {"attributes": {"sender": "b@vendor.example", "received_at": ih.T0 - 30}},
        {"path": "/inbox/1", "note": ["a", 1, True, None, {"x": []}]},
    ]
    for context in contexts:
        w.clock.advance(1)
        d = w.decide(w.invoke(w.agent, g.id), context)
        again = parse_entry(d.entry.raw)
        assert again.body == d.entry.body and again.obj == d.entry.obj
        assert again.body.request == d.entry.body.request
    w.close()


def test_a_reused_parse_is_taken_only_for_the_same_json(tmp_path):
    """Access.parse reuses a known invocation only when the body holds the same JSON, by
    canonical bytes: Python's ``==`` would take ``True`` for ``1``."""
    import dataclasses

    from lineage.verifier.kinds import Access
    from tests import issuance_helpers as ih

    w = ih.world(tmp_path)
    g = w.append(w.grant(max_uses=10))
    w.clock.advance(1)
    d = w.decide(w.invoke(w.agent, g.id), {"attributes": {"sender": "a@vendor.example"}})
    body = {k: v for k, v in d.entry.obj.items() if k != "sigs"}
    real = d.entry.body
    lookalike = dataclasses.replace(real, context={"attributes": {"sender": ["a@vendor.example"]}})
    assert Access.parse(body, lookalike).request is not lookalike.request
    iat = float(real.invocation.obj["iat"])  # == the int, but not the same JSON
    inv = dataclasses.replace(real.invocation, obj={**real.invocation.obj, "iat": iat})
    other = dataclasses.replace(real, invocation=inv)
    assert Access.parse(body, other).invocation is not inv
    assert Access.parse(body, real).invocation is real.invocation  # the same JSON: reused
    w.close()
