"""Introspection answers from the rules decisions apply (ledger/decide.py ``standing``).

A resource server that authorises from RFC 7662 introspection must see the same
"no" as one that asks ``/v1/access``: a spent ``max_uses``, a full rate window, a
revoked or expired ancestor, also for a child minted after its parent was spent.
The inactive answer says which rule (``lineage.status``), only to a caller allowed to
introspect that credential; anything else is exactly ``{"active": false}``.

The property test drives the ledger itself: before every decision, ``standing`` (what
introspection answers) and the verifier's ``access_fault`` (what an auditor's replay
accepts) must agree with the decision that follows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.ledger.audit import audit
from lineage.ledger.decide import standing
from lineage.ledger.issuance import bind_principal
from lineage.verifier.request import parse_request
from tests import issuance_helpers as ih
from tests.api_server import ORIGIN, Server, key, running
from tests.budget import examples


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as server:
        yield server


def introspect(srv: Server, token: str, headers: dict[str, str] | None = None) -> dict:
    r = httpx.post(
        srv.url("/oauth/introspect"),
        data={"token": token},
        headers=headers if headers is not None else srv.bearer(srv.enforcement),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()


def handle(srv: Server, entry, holder) -> str:
    r = srv.exchange(entry, holder)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


# -- over HTTP ---------------------------------------------------------------------------------


def test_introspection_says_a_spent_credential_is_inactive(srv: Server) -> None:
    grant = handle(srv, srv.grant(ttl=60, max_uses=1), srv.agent)
    assert introspect(srv, grant)["lineage"]["status"] == "active"
    assert srv.access(srv.invoke(srv.agent, grant)).json()["decision"] == "allow"
    answer = introspect(srv, grant)
    assert answer["active"] is False
    assert answer["lineage"]["status"] == "spent"
    assert answer["lineage"]["credential"] == grant
    assert "used all 1 uses" in answer["lineage"]["reason"]
    # the decision point says the same
    denied = srv.access(srv.invoke(srv.agent, grant)).json()
    assert denied["decision"] == "deny" and denied["reason"].startswith("budget")


def test_a_child_minted_after_its_parent_was_spent_is_inactive(srv: Server) -> None:
    grant = handle(srv, srv.grant(ttl=60, max_uses=1), srv.agent)
    assert srv.access(srv.invoke(srv.agent, grant)).json()["decision"] == "allow"
    child = handle(srv, srv.delegation(grant, srv.agent, ttl=50, max_uses=1), srv.reader)
    answer = introspect(srv, child)
    assert answer == {
        "active": False,
        "lineage": {
            "status": "spent",
            "reason": f"credential {grant[:16]} has used all 1 uses",
            "credential": grant,  # the ancestor whose budget is gone
        },
    }
    assert srv.access(srv.invoke(srv.reader, child)).json()["decision"] == "deny"


def test_introspection_says_a_full_rate_window_is_inactive_until_it_slides(srv: Server) -> None:
    grant = handle(srv, srv.grant(rate={"count": 1, "window": 30}), srv.agent)
    rate = {"count": 1, "window": 30}
    child = handle(srv, srv.delegation(grant, srv.agent, rate=rate), srv.reader)
    assert srv.access(srv.invoke(srv.reader, child)).json()["decision"] == "allow"
    for token in (grant, child):  # the subtree's use counts against the grant's window
        answer = introspect(srv, token)
        assert answer["active"] is False
        assert (answer["lineage"]["status"], answer["lineage"]["credential"]) == (
            "rate-limited",
            grant,
        )
    assert srv.access(srv.invoke(srv.agent, grant)).json()["decision"] == "deny"
    srv.clock.advance(31)
    assert introspect(srv, child)["active"] is True
    assert srv.access(srv.invoke(srv.reader, child)).json()["decision"] == "allow"


def test_introspection_names_a_revoked_ancestor(srv: Server) -> None:
    grant = handle(srv, srv.grant(), srv.agent)
    child = handle(srv, srv.delegation(grant, srv.agent), srv.reader)
    r = httpx.post(
        srv.url("/oauth/revoke"), data={"token": grant}, headers=srv.bearer(srv.operator)
    )
    assert r.status_code == 200
    answer = introspect(srv, child)
    assert answer["active"] is False
    assert (answer["lineage"]["status"], answer["lineage"]["credential"]) == ("revoked", grant)
    assert srv.access(srv.invoke(srv.reader, child)).json()["reason"].startswith("revoked")


def test_inactive_details_only_for_callers_who_may_introspect_it(srv: Server) -> None:
    grant = handle(srv, srv.grant(ttl=60, max_uses=1), srv.agent)
    child = handle(srv, srv.delegation(grant, srv.agent, ttl=50, max_uses=1), srv.reader)
    stranger = handle(srv, srv.grant(key("stranger")), key("stranger"))
    assert srv.access(srv.invoke(srv.agent, grant)).json()["decision"] == "allow"
    path = "/oauth/introspect"
    # the holder of the child sees why its own credential is inactive ...
    own = introspect(srv, child, srv.dpop(srv.reader, "POST", path, child))
    assert own["lineage"]["status"] == "spent"
    # ... but not a word about anyone else's
    other = introspect(srv, grant, srv.dpop(key("stranger"), "POST", path, stranger))
    assert other == {"active": False}
    # alice authorised the chain: she sees it; bob did not
    assert introspect(srv, child, srv.dpop(srv.alice, "POST", path, "alice@corp"))["lineage"][
        "status"
    ] == ("spent")
    srv.log.append(bind_principal(ORIGIN, srv.log.keys.operator, "bob@corp", key("bob").public))
    assert introspect(srv, child, srv.dpop(key("bob"), "POST", path, "bob@corp")) == {
        "active": False
    }


@pytest.mark.parametrize("length", [1, 63, 64, 65, 300, 5000, 100_000])
def test_an_unknown_token_of_any_length_is_just_inactive(srv: Server, length: int) -> None:
    token = ("f" * length) if length != 64 else "0" * 64
    assert introspect(srv, token) == {"active": False}  # RFC 7662 §2.2
    r = httpx.post(
        srv.url("/oauth/revoke"), data={"token": token}, headers=srv.bearer(srv.operator)
    )
    assert (r.status_code, r.json()) == (200, {})  # RFC 7009 §2.2


# -- the rules themselves, against the decision point and the auditor's replay ------------------

STEP = st.tuples(st.integers(0, 25), st.sampled_from(["grant", "child"]))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_uses=st.one_of(st.none(), st.integers(1, 3)),
    child_uses=st.one_of(st.none(), st.integers(1, 3)),
    rate=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(5, 40))),
    steps=st.lists(STEP, min_size=1, max_size=6),
)
def test_introspection_and_decisions_apply_the_same_rules(max_uses, child_uses, rate, steps):
    with tempfile.TemporaryDirectory() as tmp:
        w = ih.world(Path(tmp))
        try:
            limits = {"max_uses": max_uses} if max_uses else {}
            if rate:
                limits["rate"] = {"count": rate[0], "window": rate[1]}
            g = w.append(w.grant(expires_at=ih.T0 + 60, **limits))
            own = dict(limits)  # a child restates its parent's budgets, at most as large
            if child_uses or max_uses:
                own["max_uses"] = min(child_uses or max_uses, max_uses or child_uses)
            kid = w.append(w.delegate(g, w.agent, expires_at=ih.T0 + 60, max_depth=0, **own))
            holders = {"grant": (w.agent, g.id), "child": (w.reader, kid.id)}
            for advance, who in steps:
                w.clock.advance(advance)
                holder, cid = holders[who]
                state = w.log.state()
                time = max(w.now, state.time)
                rec = state.credential(cid)
                said = standing(state, rec, state.size, time)
                replay = state.access_fault(
                    rec, parse_request(ih.request()), ih.nonce(), state.size, time
                )
                d = w.decide(w.invoke(holder, cid))
                assert d.allowed == said.active == (replay is None), (said, d, replay)
                if not d.allowed:
                    assert d.check == said.check == replay[0]
                    assert d.reason == f"{said.check}: {said.reason}"
            assert (
                audit(w.db, w.log.log_key).size == w.log.size
            )  # every allow the ledger logged, the auditor's replay accepts
        finally:
            w.close()
