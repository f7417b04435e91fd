"""Step-up in a real headless browser (Debian's chromium, driven by playwright).

carol enrols a browser and consents to a grant there. A policy rule holds every
``delete`` for her approval. The agent's delete is answered 202 ``pending`` with a link;
carol opens it, sees the exact call, and approves: the same invocation sent again is
allowed, and its access entry carries the approval her browser signed, which verifies
offline. A second delete she refuses is then a logged deny. An approval cannot be
answered for another call, and a browser without her key cannot answer at all.
"""

from __future__ import annotations

import html
import json
import re
import secrets

import httpx
import pytest

from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey

from .api_server import MAIL, ORIGIN
from .test_browser_consent import _approved_code, token
from .test_browser_consent import world as consent_world  # noqa: F401  (the fixture)
from .test_browser_enrol import browser  # noqa: F401  (the browser fixture)

SCOPE = [
    {
        "type": "email",
        "actions": ["delete", "read"],
        "locations": [MAIL],
        "resources": ["mailbox:carol/inbox/*"],
    }
]
POLICY = {
    "rules": [
        {
            "id": "deletes-need-the-owner",
            "match": {"actions": ["delete"]},
            "require_approval": True,
            "approval_ttl": 300,
        }
    ]
}


def _request(action: str, msg: str) -> dict:
    return {
        "type": "email",
        "action": action,
        "location": MAIL,
        "resource": f"mailbox:carol/inbox/{msg}",
    }


@pytest.fixture
def granted(consent_world):  # noqa: F811
    srv, _, client_id, redirect, context, page, kid = consent_world
    policy = {"kind": "policy", "v": 1, "log": ORIGIN, "version": 1, "document": POLICY}
    srv.log.append(sign_entry(policy, [srv.log.keys.operator]))
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    code = _approved_code(consent_world, agent, verifier, authorization_details=json.dumps(SCOPE))
    r = token(srv, agent, code, client_id, redirect, verifier)
    assert r.status_code == 200, r.text
    return srv, page, kid, agent, r.json()["access_token"], context


def _ask(srv, inv):
    return httpx.post(
        srv.url("/v1/access"),
        json={"invocation": dict(inv.obj), "context": {}},
        headers=srv.bearer(srv.enforcement),
        timeout=10,
    )


def _poll(srv, held) -> str:
    return httpx.get(held["poll"], timeout=10).json()["status"]


def test_approve_one_call_and_refuse_another_in_the_browser(granted):
    srv, page, kid, agent, credential, _ = granted

    # A read is not held.
    read = sign_invocation(agent, credential, _request("read", "msg-1"), srv.now)
    assert _ask(srv, read).json()["decision"] == "allow"

    # The delete is held: 202 pending, nothing logged, a link for carol.
    delete = sign_invocation(agent, credential, _request("delete", "msg-1"), srv.now)
    size = srv.size()
    r = _ask(srv, delete)
    assert r.status_code == 202, r.text
    held = r.json()["approval"]
    assert r.json()["decision"] == "pending" and held["principal"] == "carol@corp"
    assert held["url"] == srv.url(f"/approve/{held['id']}")
    assert _poll(srv, held) == "pending" and srv.size() == size
    assert _ask(srv, delete).json()["approval"]["id"] == held["id"]  # asking again: same link

    # carol sees the exact call and approves it, signing in her browser.
    page.goto(held["url"])
    shown = page.text_content("#call")
    assert "delete" in shown and "mailbox:carol/inbox/msg-1" in shown
    assert "deletes-need-the-owner" in shown
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    page.click("#approve")
    page.locator("#status", has_text="Approved").wait_for(timeout=10_000)
    assert _poll(srv, held) == "approved"

    # The same invocation sent again is allowed; the entry carries carol's approval.
    r = _ask(srv, delete)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    entry = srv.log.leaf(r.json()["index"]).entry
    approval = entry.obj["approval"]
    assert approval["sigs"][0]["kid"] == kid and approval["decision"] == "approve"
    verify_bundle(credential_bundle(srv.log, credential), srv.log.log_key.vkey)
    again = _ask(srv, delete)
    assert again.status_code == 401 and "replayed" in again.text  # once, and only once

    # A second delete, refused: sent again, it is a logged deny.
    second = sign_invocation(agent, credential, _request("delete", "msg-2"), srv.now)
    held2 = _ask(srv, second).json()["approval"]
    page.goto(held2["url"])
    page.wait_for_selector("#refuse:not([disabled])", timeout=10_000)
    page.click("#refuse")
    page.locator("#status", has_text="Refused").wait_for(timeout=10_000)
    assert _poll(srv, held2) == "refused"
    r = _ask(srv, second)
    assert r.status_code == 200 and r.json()["decision"] == "deny"
    assert "carol@corp refused this call" in r.json()["reason"]
    assert "approval" not in srv.log.leaf(r.json()["index"]).entry.obj

    # The answered page has nothing left to answer.
    page.goto(held["url"])
    assert "nothing to answer" in page.text_content("main")


def _csrf(srv, url: str) -> str:
    page = httpx.get(url, timeout=10).text
    return html.unescape(re.search(r'data-csrf="([^"]+)"', page).group(1))


def test_an_approval_replayed_for_a_different_invocation_is_refused(granted):
    srv, page, _, agent, credential, _ = granted
    first = sign_invocation(agent, credential, _request("delete", "msg-3"), srv.now)
    held = _ask(srv, first).json()["approval"]
    page.goto(held["url"])
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    page.click("#approve")
    page.locator("#status", has_text="Approved").wait_for(timeout=10_000)
    r = _ask(srv, first)
    approval = srv.log.leaf(r.json()["index"]).entry.obj["approval"]

    # Another call, held: carol's approval of the first is not an answer to it.
    other = sign_invocation(agent, credential, _request("delete", "msg-3"), srv.now)
    held2 = _ask(srv, other).json()["approval"]
    r = httpx.post(
        srv.url(f"/approve/{held2['id']}/answer"),
        json={"csrf": _csrf(srv, held2["url"]), "approval": approval},
        timeout=10,
    )
    assert r.status_code == 400 and "approval.invocation" in r.text
    assert _poll(srv, held2) == "pending"
    # Nor can it be attached by hand: the log's rules refuse it.
    size = srv.size()
    r = httpx.post(
        srv.url("/v1/access"),
        json={"invocation": dict(other.obj), "context": {}, "approval": approval},
        headers=srv.bearer(srv.enforcement),
        timeout=10,
    )
    assert r.status_code == 422 or r.status_code == 400
    assert srv.size() == size


def test_a_browser_without_the_principals_key_cannot_answer(granted, browser):  # noqa: F811
    srv, _, _, agent, credential, _ = granted
    inv = sign_invocation(agent, credential, _request("delete", "msg-4"), srv.now)
    held = _ask(srv, inv).json()["approval"]
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        page.goto(held["url"])
        page.locator("#signer", has_text="holds no key").wait_for(timeout=10_000)
        assert page.is_disabled("#approve") and page.is_disabled("#refuse")
    finally:
        stranger.close()
    # and without the page's CSRF token nothing is taken
    r = httpx.post(
        srv.url(f"/approve/{held['id']}/prepare"),
        json={"csrf": "x", "kid": "A" * 43, "decision": "approve"},
        timeout=10,
    )
    assert r.status_code == 403
    assert _poll(srv, held) == "pending"


def test_the_page_is_framed_by_no_one_and_runs_only_its_own_script(granted):
    srv, _, _, agent, credential, _ = granted
    inv = sign_invocation(agent, credential, _request("delete", "msg-5"), srv.now)
    held = _ask(srv, inv).json()["approval"]
    r = httpx.get(held["url"], timeout=10)
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert httpx.get(srv.url("/v1/approvals/apr_" + "A" * 24), timeout=10).status_code == 404


def test_the_approval_page_shows_the_exact_call(granted, tmp_path):
    """The page a person sees, as an image: docs/approve.png is made by this test with
    LINEAGE_APPROVE_SCREENSHOT=docs/approve.png (the README shows it)."""
    import os

    srv, page, _, agent, credential, _ = granted
    inv = sign_invocation(agent, credential, _request("delete", "msg-42"), srv.now)
    held = _ask(srv, inv).json()["approval"]
    page.set_viewport_size({"width": 900, "height": 720})
    page.goto(held["url"])
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    text = page.text_content("main")
    for said in ("mailbox:carol/inbox/msg-42", "delete", "carol@corp", "Sort carol's inbox"):
        assert said in text, said
    out = os.environ.get("LINEAGE_APPROVE_SCREENSHOT") or str(tmp_path / "approve.png")
    page.screenshot(path=out, full_page=True)
    assert os.path.getsize(out) > 10_000
