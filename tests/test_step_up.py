"""Step-up (ledger/approvals.py, FORMAT.md §5.1, POLICY.md "Approval"): a rule holds a
call until its principal approves that exact invocation; the access entry carries the
approval and the verifier checks it offline. These tests try to reuse, stretch and
forge approvals.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.ledger.approvals import (
    MAX_HELD,
    ApprovalError,
    ApprovalStore,
    Held,
    decide_or_hold,
)
from lineage.ledger.audit import audit
from lineage.ledger.decide import ApprovalRequired, InvalidInvocation, decide
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import credential_bundle
from lineage.ledger.policy import parse_policy
from lineage.verifier.approval import (
    MAX_APPROVAL_TTL,
    context_digest,
    invocation_digest,
    parse_approval,
    sign_approval,
)
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.errors import ChainError, EntryFormatError
from lineage.verifier.kinds import Access
from tests.issuance_helpers import ORIGIN, World, forced_bundle, nonce, request, world

SENDS = {
    "rules": [
        {
            "id": "vendor-b-needs-alice",
            "match": {"type": "email", "attributes": {"sender": {"eq": "b@vendor.example"}}},
            "require_approval": True,
            "approval_ttl": 120,
        }
    ]
}
HELD = request(attributes={"received_at": 1767225600 - 60, "sender": "b@vendor.example"})


@pytest.fixture
def w(tmp_path: Path) -> World:
    world_ = world(tmp_path)
    world_.append(world_.policy(1, SENDS))
    yield world_
    world_.close()


def _store(w: World) -> ApprovalStore:
    return ApprovalStore(w.log.store, clock=w.clock)


def _hold(w: World, inv, context=None) -> Held:
    held = decide_or_hold(w.log, _store(w), inv, context or {}, "gw-1", window=60)
    assert isinstance(held, Held), held
    return held


def _approve(w: World, inv, context=None, *, signer=None, decision="approve", ttl=120):
    return sign_approval(
        signer or w.alice, ORIGIN, inv, context or {}, w.now, w.now + ttl, decision
    )


def _answer(w: World, held: Held, approval) -> None:
    store = _store(w)
    csrf = store.page_token(held.call.id)
    store.answer(held.call.id, csrf, approval)


# -- the policy holds the call; nothing is logged while it waits -----------------------------


def test_a_held_call_is_not_logged_and_asking_again_answers_the_same_link(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    size = w.log.size
    first = _hold(w, inv)
    again = _hold(w, inv)
    assert first.call.id == again.call.id and w.log.size == size
    assert first.call.principal == "alice@corp"
    assert first.call.rules == ("vendor-b-needs-alice",)
    assert first.call.status_at(w.now) == "pending"
    assert "alice@corp must approve" in first.reason


def test_a_call_no_rule_holds_is_decided_at_once(w: World):
    g = w.append(w.grant())
    d = decide_or_hold(w.log, _store(w), w.invoke(w.agent, g.id), {}, "gw-1")
    assert not isinstance(d, Held) and d.allowed


def test_a_chain_that_denies_is_denied_before_any_person_is_asked(w: World):
    g = w.append(w.grant())
    d = decide_or_hold(
        w.log, _store(w), w.invoke(w.agent, g.id, {**HELD, "action": "delete"}), {}, "gw-1"
    )
    assert not isinstance(d, Held) and (d.allowed, d.check) == (False, "scope")


def test_approved_then_sent_again_is_allowed_and_the_entry_carries_the_approval(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    w.clock.advance(90)  # the person took longer than the invocation window
    approval = _approve(w, inv)
    _answer(w, held, approval)
    d = decide_or_hold(w.log, _store(w), inv, {}, "gw-1", window=60)
    assert not isinstance(d, Held) and d.allowed, d
    body = w.log.leaf(d.index).entry.body
    assert isinstance(body, Access) and body.approval is not None
    assert body.approval.obj == approval.obj
    # offline: the bundle of the credential verifies, and so does the whole log
    verify_bundle(credential_bundle(w.log, g.id), w.log.log_key)
    assert audit(w.db, w.log.log_key).size == w.log.size
    # the same invocation again is a replay, approval or not
    with pytest.raises(InvalidInvocation) as exc:
        decide_or_hold(w.log, _store(w), inv, {}, "gw-1", window=60)
    assert exc.value.reason == "replayed"


def test_a_refused_call_sent_again_is_a_logged_deny(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    _answer(w, held, _approve(w, inv, decision="refuse"))
    d = decide_or_hold(w.log, _store(w), inv, {}, "gw-1")
    assert not isinstance(d, Held)
    assert (d.allowed, d.check) == (False, "policy")
    assert "alice@corp refused this call" in d.reason
    assert "approval" not in w.log.leaf(d.index).entry.obj


# -- an approval answers one invocation, and expires ----------------------------------------


def test_an_approval_replayed_for_a_different_invocation_is_refused_at_append(w: World):
    g = w.append(w.grant())
    approved = w.invoke(w.agent, g.id, HELD)
    other = w.invoke(w.agent, g.id, HELD)  # the same request, another nonce
    size = w.log.size
    with pytest.raises(RejectedEntry) as exc:
        decide(w.log, other, {}, "gw-1", approval=_approve(w, approved))
    assert exc.value.check == "approval" and w.log.size == size


def test_an_approval_of_another_context_is_refused_at_append(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    approval = _approve(w, inv, {"attributes": {"sender": "b@vendor.example"}})
    with pytest.raises(RejectedEntry) as exc:
        decide(w.log, inv, {}, "gw-1", approval=approval)
    assert exc.value.check == "approval"


def test_the_held_call_cannot_be_sent_with_another_context(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    _answer(w, held, _approve(w, inv))
    with pytest.raises(ApprovalError):
        decide_or_hold(w.log, _store(w), inv, {"source_ip": "192.0.2.9"}, "gw-1")
    with pytest.raises(ApprovalError):
        decide_or_hold(w.log, _store(w), inv, {}, "gw-2")


def test_an_approval_signed_by_anyone_but_the_principal_is_refused(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    for signer in (w.agent, w.log.keys.operator, w.log.keys.decision):
        with pytest.raises(RejectedEntry) as exc:
            decide(w.log, inv, {}, "gw-1", approval=_approve(w, inv, signer=signer))
        assert exc.value.check == "approval"


def test_an_expired_approval_lets_nothing_through(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    _answer(w, held, _approve(w, inv, ttl=30))
    w.clock.advance(31)
    assert _store(w).get(held.call.id).status_at(w.now) == "expired"
    # still fresh: held again, as a new call for the person to answer
    again = _hold(w, inv)
    assert again.call.id != held.call.id and again.call.status == "pending"
    w.clock.advance(30)
    with pytest.raises(InvalidInvocation) as exc:  # too old to decide without it
        decide_or_hold(w.log, _store(w), inv, {}, "gw-1", window=60)
    assert exc.value.reason == "stale"
    with pytest.raises(InvalidInvocation):
        old = sign_approval(w.alice, ORIGIN, inv, {}, w.now - 61, w.now - 31)
        decide(w.log, inv, {}, "gw-1", approval=old, window=60)


def test_an_approval_cannot_wake_an_invocation_it_did_not_see_in_time(w: World):
    """Approved, but the invocation was signed after the leaf's time: no stretching
    backwards."""
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD, iat=w.now + 300)
    with pytest.raises(InvalidInvocation):
        decide(w.log, inv, {}, "gw-1", approval=_approve(w, inv), window=60)


def test_a_held_call_lapses_unanswered(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    w.clock.advance(601)
    store = _store(w)
    with pytest.raises(ApprovalError):
        store.answer(held.call.id, store.page_token(held.call.id), _approve(w, inv))


def test_one_answer_per_call_and_the_csrf_token_is_needed(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    held = _hold(w, inv)
    store = _store(w)
    csrf = store.page_token(held.call.id)
    with pytest.raises(ApprovalError) as exc:
        store.answer(held.call.id, None, _approve(w, inv))
    assert exc.value.error == "access_denied"
    with pytest.raises(ApprovalError):
        store.answer(held.call.id, "x" * 43, _approve(w, inv))
    store.answer(held.call.id, csrf, _approve(w, inv, decision="refuse"))
    with pytest.raises(ApprovalError):
        store.answer(held.call.id, csrf, _approve(w, inv))
    assert store.get(held.call.id).status == "refused"


def test_a_credential_may_hold_only_so_many_calls_waiting(w: World):
    g = w.append(w.grant())
    for _ in range(MAX_HELD):
        _hold(w, w.invoke(w.agent, g.id, HELD))
    with pytest.raises(ApprovalError) as exc:
        _hold(w, w.invoke(w.agent, g.id, HELD))
    assert exc.value.error == "too_many_requests"


def test_decide_without_the_store_raises_approval_required(w: World):
    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    with pytest.raises(ApprovalRequired) as exc:
        decide(w.log, inv, {}, "gw-1")
    assert exc.value.digest == invocation_digest(inv) and exc.value.ttl == 120


# -- the offline verifier -----------------------------------------------------------------


def _access_body(inv, approval: dict, decision: str = "allow") -> dict:
    """An access entry's body for ``inv``, carrying ``approval``, as a decision key signs it."""
    return {
        "kind": "access",
        "v": 1,
        "log": ORIGIN,
        "invocation": dict(inv.obj),
        "context": {},
        "enforcement": "gw-1",
        "decision": decision,
        "reason": "permitted by every credential in the chain",
        "policy": 1,
        "approval": approval,
    }


def _forced(w: World, body_changes) -> dict:
    """A bundle whose last entry is an access with an approval, changed by ``body_changes``
    and signed by the decision key: what a log that skipped its checks would serve."""
    from lineage.verifier.entry import sign_entry

    g = w.append(w.grant())
    inv = w.invoke(w.agent, g.id, HELD)
    body = _access_body(inv, dict(_approve(w, inv).obj))
    body = body_changes(w, body, g) or body
    return forced_bundle(w.log, [sign_entry(body, [w.log.keys.decision])], w.now)


@pytest.mark.parametrize(
    "name, change",
    [
        (
            "another-invocation",
            lambda w, b, g: b.update(approval=dict(_approve(w, w.invoke(w.agent, g.id, HELD)).obj)),
        ),
        (
            "another-signer",
            lambda w, b, g: b.update(
                approval=dict(_approve(w, b["invocation"], signer=w.agent).obj)
            ),
        ),
        (
            "expired",
            lambda w, b, g: b.update(
                approval=dict(
                    sign_approval(
                        w.alice, ORIGIN, b["invocation"], {}, w.now - 200, w.now - 100
                    ).obj
                )
            ),
        ),
        (
            "another-log",
            lambda w, b, g: b.update(
                approval=dict(
                    sign_approval(
                        w.alice, "other.example/log", b["invocation"], {}, w.now, w.now + 60
                    ).obj
                )
            ),
        ),
        (
            "tampered",
            lambda w, b, g: b["approval"].update(expires_at=b["approval"]["expires_at"] + 1),
        ),
    ],
)
def test_the_verifier_refuses_a_forged_approval(w: World, name, change):
    with pytest.raises(ChainError) as exc:
        verify_bundle(_forced(w, change), w.log.log_key)
    assert exc.value.check == "approval", (name, exc.value)


def test_the_verifier_accepts_the_honest_one(w: World):
    verify_bundle(_forced(w, lambda w, b, g: None), w.log.log_key)


def test_an_access_entry_carries_approvals_only(w: World):
    inv = w.invoke(w.agent, "0" * 64, HELD)
    refusal = dict(_approve(w, inv, decision="refuse").obj)
    with pytest.raises(EntryFormatError) as exc:
        Access.parse(_access_body(inv, refusal, "deny"))
    assert exc.value.field == "approval.decision"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"expires_at": 10**6}, "expires_at"),  # before iat
        ({"expires_at": 1767225600 + MAX_APPROVAL_TTL + 1}, "expires_at"),
        ({"decision": "maybe"}, "decision"),
        ({"invocation": "AB" * 32}, "invocation"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_approval_names_its_field(w: World, change, field):
    obj = dict(_approve(w, w.invoke(w.agent, "0" * 64, HELD)).obj)
    obj.update(change)
    with pytest.raises(EntryFormatError) as exc:
        parse_approval(obj)
    assert exc.value.field == field


# -- properties ---------------------------------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6), attrs=st.booleans())
def test_an_approval_binds_exactly_one_invocation_and_context(w: World, a, b, attrs):
    """For any two invocations and contexts, one approval's digests match the other's
    exactly when they are the same invocation and context."""
    cid = "1" * 64
    one = w.invoke(w.agent, cid, HELD, n=nonce(a))
    two = w.invoke(w.agent, cid, HELD, n=nonce(b))
    ctx_two = {"attributes": {"sender": "b@vendor.example"}} if attrs else {}
    approval = _approve(w, one)
    same = approval.invocation == invocation_digest(two) and approval.context == context_digest(
        ctx_two
    )
    assert same == (a == b and not attrs)


def test_the_policy_match_on_attributes(w: World):
    policy = parse_policy(SENDS)
    from lineage.verifier.request import parse_request

    assert policy.approvals(parse_request(HELD))
    assert not policy.approvals(parse_request(request()))
    assert not policy.approvals(parse_request(request(attributes={"received_at": 1})))
