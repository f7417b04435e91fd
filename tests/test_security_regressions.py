"""Regressions for the security review's findings: each test is one attack, refused."""

import base64

import httpx
import pytest

from fixtures import generate as g
from lineage.client.dpop import make_proof
from lineage.ledger.config import Settings
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import _cell
from lineage.verifier.chain import Replay
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import ChainError, EntryFormatError
from lineage.verifier.invocation import sign_invocation
from tests.api_server import key, running


def test_a_holder_lineage_shows_neither_siblings_nor_their_accesses(tmp_path):
    with running(tmp_path) as srv:
        grant = srv.grant(max_depth=1, max_children=2)
        assert srv.exchange(grant, srv.agent).status_code == 200
        sibling = key("sibling")
        mine = srv.delegation(grant.id, srv.agent, srv.reader, max_children=0)
        theirs = srv.delegation(grant.id, srv.agent, sibling, max_children=0)
        assert srv.exchange(mine, srv.reader).status_code == 200
        assert srv.exchange(theirs, sibling).status_code == 200
        assert srv.access(srv.invoke(sibling, theirs.id)).json()["decision"] == "allow"
        path = f"/v1/credentials/{grant.id}/lineage"
        bundle = httpx.get(srv.url(path), headers=srv.dpop(srv.reader, "GET", path, mine.id))
        assert bundle.status_code == 200
        ids = {e["leaf"]["entry"].get("parent") for e in bundle.json()["entries"]}
        kinds = [e["leaf"]["entry"]["kind"] for e in bundle.json()["entries"]]
        assert "access" not in kinds  # the sibling's access is not the reader's to see
        assert sum(1 for k in kinds if k == "delegation") == 1 and grant.id in ids


def test_a_deeply_nested_dpop_header_is_a_4xx(tmp_path):
    head = base64.urlsafe_b64encode(b"[" * 1450 + b"]" * 1450).rstrip(b"=").decode()
    with running(tmp_path) as srv:
        path = "/v1/credentials/" + "a" * 64 + "/lineage"
        r = httpx.get(
            srv.url(path), headers={"Authorization": "DPoP " + "a" * 64, "DPoP": head + ".e30.AAAA"}
        )
        assert 400 <= r.status_code < 500


def test_a_revoked_holder_no_longer_authenticates(tmp_path):
    with running(tmp_path) as srv:
        grant = srv.grant()
        assert srv.exchange(grant, srv.agent).status_code == 200
        revoke = httpx.post(
            srv.url("/oauth/revoke"), data={"token": grant.id}, headers=srv.bearer(srv.operator)
        )
        assert revoke.status_code == 200
        path = f"/v1/credentials/{grant.id}/lineage"
        r = httpx.get(srv.url(path), headers=srv.dpop(srv.agent, "GET", path, grant.id))
        assert r.status_code == 401


def test_anonymous_callers_may_not_list_entries(tmp_path):
    with running(tmp_path) as srv:
        assert httpx.get(srv.url("/v1/entries?kind=nope")).status_code == 401


def test_with_a_public_url_a_proof_for_another_host_is_refused(tmp_path):
    settings = Settings(checkpoint_interval=0.2, public_url="http://lineage.test")
    with running(tmp_path, settings) as srv:
        grant = srv.grant()
        url = srv.url("/oauth/token")
        evil = make_proof(srv.agent.seed, "POST", "http://evil.example/oauth/token")
        r = httpx.post(
            url, data=srv.exchange_form(grant), headers={"DPoP": evil, "Host": "evil.example"}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof"
        good = make_proof(srv.agent.seed, "POST", "http://lineage.test/oauth/token")
        assert (
            httpx.post(url, data=srv.exchange_form(grant), headers={"DPoP": good}).status_code
            == 200
        )


def test_a_self_revocation_by_a_key_that_held_nothing_is_refused():
    log = g.story()
    stranger = key("stranger")
    entry = sign_entry(
        g.body("revocation", target={"holder": stranger.public.b64}, reason=""), [stranger]
    )
    log.append(entry, g.T0 + 100)
    with pytest.raises(ChainError) as info:
        Replay(g.LOG.verifier).apply_all(enumerate(log.leaves))
    assert info.value.check == "link"


def test_an_oversized_invocation_is_refused():
    with pytest.raises(EntryFormatError):
        sign_invocation(
            g.READER,
            "ab" * 32,
            {
                "type": "email",
                "action": "read",
                "attributes": {f"a{i}": "x" * 900 for i in range(20)},
            },
            g.T0,
        )


def test_an_access_naming_a_superseded_policy_fails_replay():
    log = g.story()  # policy version 1 is in force from index 2
    stale = g.access(log.leaves[4].entry, g.READER, 7)
    obj = {k: v for k, v in stale.obj.items() if k != "sigs"}
    log.append(sign_entry({**obj, "policy": 0}, [g.DECISION]), g.T0 + 70)
    with pytest.raises(ChainError) as info:
        Replay(g.LOG.verifier).apply_all(enumerate(log.leaves))
    assert info.value.check == "policy"


def test_the_ledger_refuses_an_access_naming_a_policy_not_in_force(tmp_path):
    from tests.issuance_helpers import world

    w = world(tmp_path)
    cred = w.grant()
    w.append(cred)
    inv = w.invoke(w.agent, cred.id)
    body = {
        "kind": "access",
        "v": 1,
        "log": w.log.origin,
        "invocation": dict(inv.obj),
        "context": {},
        "enforcement": "gw",
        "decision": "deny",
        "reason": "x",
        "policy": 42,
    }
    with pytest.raises(RejectedEntry) as info:
        w.log.append(sign_entry(body, [w.log.keys.decision]))
    assert info.value.check == "policy"
    w.close()


@pytest.mark.parametrize("cell", ["=HYPERLINK(1)", "+1", "-1", "@SUM(A1)"])
def test_csv_cells_never_start_a_formula(cell):
    assert _cell(cell).startswith("'")
    assert _cell("plain") == "plain" and _cell(7) == 7


def test_a_revocation_through_one_handle_binds_another_at_once(tmp_path):
    """Two Logs over one file (as two serve processes): no stale state survives a revocation."""
    from lineage.ledger.decide import decide
    from tests.issuance_helpers import reopen, world

    w = world(tmp_path)
    grant = w.grant()
    w.append(grant)
    other = reopen(w)
    first = decide(other, w.invoke(w.agent, grant.id), {}, "gw-2", window=60)
    assert first.allowed
    w.append(w.revoke(w.alice, credential=grant.id))  # through the first handle
    second = decide(other, w.invoke(w.agent, grant.id), {}, "gw-2", window=60)
    assert not second.allowed and second.check == "revoked"
    other.close()
    w.close()
