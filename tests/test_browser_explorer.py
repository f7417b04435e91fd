"""The explorer (/ui) in a real headless browser: Debian's chromium, driven by playwright.

A live service with a seeded ledger: alice grants an agent a task, the agent delegates a
narrower part to a reader, both act, and one call is denied. An auditor signs in with a
token, searches alice, opens the reader's lineage and sees the tree with every entry
verified by the page's own verifier (api/web/verify.js). Then a test hook (playwright's
request routing) serves the page a lineage from a lying server: one inclusion proof
tampered, and one delegation widened by an operator who holds the log's key and rebuilt
the tree and re-signed the checkpoint around it. Each is marked failed, with the check that
caught it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest

from lineage.verifier.bundle import encode_hashes
from lineage.verifier.checkpoint import Checkpoint, sign_checkpoint
from lineage.verifier.entry import Leaf, sign_entry
from lineage.verifier.merkle import MemoryTree
from lineage.verifier.note import Signer

from .api_server import ORIGIN, key, read_scope, request, running
from .test_browser_enrol import browser, enrol, invite  # noqa: F401  (the browser fixture)

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = os.environ.get("LINEAGE_EXPLORER_SCREENSHOT")  # e.g. docs/explorer.png
WIDE = read_scope(actions=["read", "send"])
NARROW = read_scope(resources=["mailbox:alice/inbox/*"])
XSS = '<img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture
def world(tmp_path):
    """alice -> agent (read, send) -> reader (read, inbox only); accesses by both, one denied."""
    with running(tmp_path) as srv:
        grant = srv.grant(scope=WIDE, agent="triage", max_uses=10)
        handle = srv.exchange(grant, srv.agent).json()["access_token"]
        child = srv.delegation(handle, srv.agent, scope=NARROW, agent="reader", max_uses=3, ttl=300)
        child_handle = srv.exchange(child, srv.reader).json()["access_token"]
        ids = {"grant": grant.id, "child": child.id, "handle": handle}
        by_agent = srv.access(srv.invoke(srv.agent, handle, request(action="send"))).json()
        ids["agent_access"] = by_agent["id"]
        allowed = srv.access(srv.invoke(srv.reader, child_handle)).json()
        denied = srv.access(
            srv.invoke(srv.reader, child_handle, request(resource="mailbox:alice/sent/msg-9"))
        ).json()
        assert (allowed["decision"], denied["decision"]) == ("allow", "deny")
        ids["allowed"], ids["denied"] = allowed["id"], denied["id"]
        yield srv, ids


def signed_in(browser, srv):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.goto(srv.url("/ui"))
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#token", srv.auditor)
    page.click("#signin-form button")
    return context, page, errors


def index_of(srv, entry_id: str) -> int:
    return srv.log.find(entry_id)


def search_alice(page) -> None:
    page.fill("input[name=principal]", "alice@corp")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr")


def open_lineage(page, srv, credential: str) -> None:
    page.click(f"#results tr[data-index='{index_of(srv, credential)}'] button")
    page.wait_for_selector("#verdict[data-verdict]")


def verdicts(page) -> dict[int, tuple[str, str | None]]:
    """Entry index -> (verdict, failed check) for every row of the bundle table."""
    out = {}
    for row in page.query_selector_all("#bundle-entries tbody tr"):
        badge = row.query_selector(".badge")
        out[int(row.get_attribute("data-entry-index"))] = (
            badge.get_attribute("data-verdict"),
            badge.get_attribute("data-check"),
        )
    return out


def test_an_auditor_searches_opens_a_lineage_and_every_entry_verifies(browser, world):  # noqa: F811
    srv, ids = world
    context, page, errors = signed_in(browser, srv)
    search_alice(page)
    listed = httpx.get(
        srv.url("/v1/entries"), params={"principal": "alice@corp"}, headers=srv.bearer(srv.auditor)
    ).json()["entries"]
    rows = page.query_selector_all("#results tbody tr")
    assert [int(r.get_attribute("data-index")) for r in rows] == [e["index"] for e in listed]
    assert "deny: read mailbox:alice/sent/msg-9" in page.inner_text("#results")

    page.click("#check-inclusion")
    page.wait_for_selector("#status:has-text('proved included')")
    assert page.query_selector_all("#results tr[data-verdict=verified]").__len__() == len(listed)

    open_lineage(page, srv, ids["child"])
    assert page.get_attribute("#verdict", "data-verdict") == "verified", page.inner_text("#verdict")
    seen = verdicts(page)
    assert seen and all(v == ("verified", None) for v in seen.values()), seen
    for name in ("grant", "child", "agent_access", "allowed", "denied"):
        assert index_of(srv, ids[name]) in seen, name

    # The tree: alice at the root, the grant under her, the delegation under the grant,
    # each access under the credential that made it, the denial with its reason.
    human = page.query_selector("#tree .human")
    assert "alice@corp" in human.query_selector(".principal").inner_text()
    grant_li = human.query_selector(f"li[data-credential='{ids['grant']}']")
    child_li = grant_li.query_selector(f"li[data-credential='{ids['child']}']")
    assert child_li is not None
    assert child_li.get_attribute("data-status") == "active"
    narrowed = [n.inner_text() for n in child_li.query_selector_all(":scope > .card .narrowed")]
    assert "mailbox:alice/inbox/*" in narrowed  # the resource narrowed at this step
    assert any(n.startswith("expires") for n in narrowed)  # and the expiry
    dropped = [n.inner_text() for n in child_li.query_selector_all(":scope > .card .dropped")]
    assert "send" in dropped  # the parent's action it gave up
    denial = child_li.query_selector(f"li[data-entry-index='{index_of(srv, ids['denied'])}']")
    assert denial.get_attribute("data-decision") == "deny"
    assert "reason:" in denial.inner_text()
    by_agent = grant_li.query_selector(
        f":scope > ul > li[data-entry-index='{index_of(srv, ids['agent_access'])}']"
    )
    assert by_agent is not None and by_agent.get_attribute("data-decision") == "allow"
    assert "1 of 3" in child_li.query_selector(":scope > .card").inner_text()  # uses
    assert errors == []

    if SCREENSHOT:
        page.screenshot(path=str(ROOT / SCREENSHOT), full_page=True)
    context.close()


def test_downloads_are_what_is_on_screen(browser, world):  # noqa: F811
    srv, ids = world
    context, page, _ = signed_in(browser, srv)
    search_alice(page)
    shown = [int(r.get_attribute("data-index")) for r in page.query_selector_all("#results tr")[1:]]
    with page.expect_download() as got:
        page.click("#dl-csv")
    table = list(csv.reader(io.StringIO(Path(got.value.path()).read_text())))
    assert table[0][:3] == ["index", "time", "kind"]
    assert [int(r[0]) for r in table[1:]] == shown
    with page.expect_download() as got:
        page.click("#dl-jsonl")
    lines = [json.loads(x) for x in Path(got.value.path()).read_text().splitlines()]
    assert [x["index"] for x in lines] == shown
    assert {x["kind"] for x in lines} >= {"grant", "delegation", "access"}

    open_lineage(page, srv, ids["child"])
    with page.expect_download() as got:
        page.click("#dl-bundle")
    saved = json.loads(Path(got.value.path()).read_text())
    served = httpx.get(
        srv.url(f"/v1/credentials/{ids['child']}/lineage"), headers=srv.bearer(srv.auditor)
    ).json()
    assert saved["entries"] == served["entries"]  # the bundle `lineage-verify` checks offline
    context.close()


def lying_bundle(srv, real: dict, ids: dict) -> dict:
    """What a server holding the log key could serve: the delegation widened (re-signed by
    the agent, who holds its parent), the tree rebuilt and the checkpoint re-signed around
    it; and, separately, one inclusion proof with a byte changed."""
    size = srv.log.size
    leaves = [leaf for _, leaf in srv.log.leaves(0, size)]
    at = index_of(srv, ids["child"])
    body = dict(leaves[at].entry.obj)
    del body["sigs"]
    body["scope"] = read_scope(actions=["delete", "read"], resources=["mailbox:alice/inbox/*"])
    leaves[at] = Leaf.build(sign_entry(body, [srv.agent]), leaves[at].time)
    tree = MemoryTree()
    for leaf in leaves:
        tree.append(leaf.hash)
    note = sign_checkpoint(Checkpoint(ORIGIN, size, tree.root(size)), srv.log.keys.log).decode()
    entries = []
    for item in real["entries"]:
        i = item["index"]
        proof = encode_hashes(tree.inclusion_proof(i, size))
        entries.append({"index": i, "leaf": leaves[i].to_json(), "inclusion": proof})
    tampered = index_of(srv, ids["agent_access"])
    for item in entries:
        if item["index"] == tampered:
            first = bytearray(item["inclusion"][0].encode())
            first[3] = ord("A") if first[3] != ord("A") else ord("B")
            item["inclusion"][0] = first.decode()
    return {**real, "checkpoint": note, "entries": entries}


def test_a_tampered_proof_and_a_widened_entry_are_marked_failed(browser, world):  # noqa: F811
    srv, ids = world
    real = httpx.get(
        srv.url(f"/v1/credentials/{ids['grant']}/lineage"), headers=srv.bearer(srv.auditor)
    ).json()
    lie = lying_bundle(srv, real, ids)
    context, page, _ = signed_in(browser, srv)
    page.route(
        re.compile(r".*/v1/credentials/[0-9a-f]{64}/lineage$"),
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(lie)
        ),
    )
    search_alice(page)
    open_lineage(page, srv, ids["grant"])
    assert page.get_attribute("#verdict", "data-verdict") == "failed"
    seen = verdicts(page)
    widened, tampered = index_of(srv, ids["child"]), index_of(srv, ids["agent_access"])
    assert seen[widened] == ("failed", "attenuation"), seen
    assert seen[tampered] == ("failed", "proof"), seen
    row = page.inner_text(f"#bundle-entries tr[data-entry-index='{widened}']")
    assert "delete" in row  # the reason names what widened
    # What stood on the widened delegation cannot stand: its accesses name the real one.
    for name in ("allowed", "denied"):
        assert seen[index_of(srv, ids[name])][0] == "failed"
    # Everything else still verifies, the grant included: one lie does not hide the rest.
    others = set(seen) - {widened, tampered, index_of(srv, ids["allowed"])}
    others -= {index_of(srv, ids["denied"])}
    assert others and all(seen[i] == ("verified", None) for i in others), seen
    card = page.query_selector(f"#tree li[data-entry-index='{widened}'] > .card.failed")
    assert card is not None and "attenuation" in card.inner_text()
    context.close()


def test_the_log_is_proved_to_extend_the_checkpoint_seen_before(browser, world):  # noqa: F811
    srv, ids = world
    context, page, _ = signed_in(browser, srv)
    search_alice(page)
    open_lineage(page, srv, ids["child"])
    first = page.evaluate("localStorage.getItem('lineage.explorer.checkpoint')")
    assert first and first.startswith(ORIGIN + "\n")
    before = int(first.split("\n")[1])
    srv.access(srv.invoke(srv.reader, ids["child"], request(resource="mailbox:alice/inbox/m2")))
    deadline = srv.size() + 0
    page.wait_for_timeout(50)
    while httpx.get(srv.url("/v1/log/checkpoint")).text.split("\n")[1] == str(before):
        page.wait_for_timeout(100)
    assert deadline > before
    open_lineage(page, srv, ids["child"])
    page.wait_for_selector("#consistency:has-text('extends')")
    assert f"from {before} to" in page.inner_text("#consistency")

    # An earlier checkpoint the auditor kept, proved extended by the current log ...
    page.click("#older-box summary")
    page.fill("#older", first)
    page.click("#older-form button")
    page.wait_for_selector("#older-result[data-verdict]")
    assert page.get_attribute("#older-result", "data-verdict") == "verified"
    # ... and one of a forked log (same key, another history) refused.
    forked = sign_checkpoint(Checkpoint(ORIGIN, before, bytes(32)), srv.log.keys.log).decode()
    page.evaluate("document.querySelector('#older-result').removeAttribute('data-verdict')")
    page.fill("#older", forked)
    page.click("#older-form button")
    page.wait_for_selector("#older-result[data-verdict]")
    assert page.get_attribute("#older-result", "data-verdict") == "failed"
    assert "proof" in page.inner_text("#older-result")
    context.close()


def test_a_pinned_key_that_is_not_the_logs_verifies_nothing(browser, world):  # noqa: F811
    srv, ids = world
    context, page, _ = signed_in(browser, srv)
    other = Signer(ORIGIN, key("another log").seed)  # same origin, another key

    page.click("#pin-box summary")
    page.fill("#pin", other.verifier.vkey)
    page.click("#pin-form button[type=submit]")
    page.wait_for_selector("#vkey-source.error")
    search_alice(page)
    open_lineage(page, srv, ids["child"])
    assert page.get_attribute("#verdict", "data-verdict") == "failed"
    assert "signature" in page.inner_text("#verdict")
    assert not page.query_selector("#bundle-entries [data-verdict=verified]")
    context.close()


def test_without_a_token_the_page_shows_nothing_and_says_why(browser, world):  # noqa: F811
    srv, ids = world
    r = httpx.get(srv.url("/ui"))
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert ids["grant"] not in r.text and "mailbox:alice/" not in r.text  # the shell: no data
    context = browser.new_context()
    page = context.new_page()
    page.goto(srv.url("/ui"))
    page.wait_for_selector("body[data-ready=true]")
    page.fill("input[name=principal]", "alice@corp")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "token" in page.inner_text("#status")
    assert not page.query_selector("#results tbody tr")
    context.close()


def test_what_the_log_says_is_shown_as_text_never_run(browser, world):  # noqa: F811
    """An agent name and a task description are whatever a holder signed: text, not HTML."""
    srv, ids = world
    other = key("other reader")
    hostile = srv.delegation(
        ids["handle"], srv.agent, other, scope=NARROW, agent=XSS, max_uses=2, ttl=60
    )
    r = srv.exchange(hostile, other)
    assert r.status_code == 200, r.text
    context, page, errors = signed_in(browser, srv)
    search_alice(page)
    assert XSS in page.inner_text("#results")
    page.click("#view-timeline")
    assert XSS in page.inner_text("#timeline")
    page.click("#view-table")
    open_lineage(page, srv, hostile.id)
    assert XSS in page.inner_text(f"#tree li[data-credential='{hostile.id}']")
    assert page.get_attribute("body", "data-pwned") is None
    assert not page.query_selector("img")
    assert errors == []
    context.close()


def test_a_principal_reads_what_they_authorised_with_their_browsers_key(browser, world):  # noqa: F811
    """No token: the key carol's browser made at enrolment signs a DPoP proof per request,
    and the service shows her her own entries, and refuses anyone else's."""
    srv, ids = world
    context = browser.new_context()
    _, kid = enrol(context, invite(srv, "carol@corp"))
    page = context.new_page()
    page.goto(srv.url("/ui"))
    page.wait_for_selector(f"#as-principal button[data-kid='{kid}']")
    page.click(f"#as-principal button[data-kid='{kid}']")
    page.wait_for_selector("#who:has-text('carol@corp')")
    assert page.input_value("input[name=principal]") == "carol@corp"
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr")
    assert "for carol@corp" in page.inner_text("#results")  # her key's binding
    assert "alice@corp" not in page.inner_text("#results")
    page.fill("input[name=principal]", "alice@corp")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "only its own" in page.inner_text("#status")
    assert not page.query_selector("#results tbody tr")
    # Her key signs; the lineage of alice's credential is not hers to read.
    page.goto(srv.url(f"/ui?credential={ids['child']}"))
    page.wait_for_selector("#status.error")
    assert page.is_hidden("#lineage")
    context.close()


def test_a_search_by_decision_and_resource_prefix_shows_only_those(browser, world):  # noqa: F811
    srv, ids = world
    context, page, _ = signed_in(browser, srv)
    page.select_option("select[name=decision]", "deny")
    page.fill("input[name=resource]", "mailbox:alice/*")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr")
    rows = page.query_selector_all("#results tbody tr")
    assert [int(r.get_attribute("data-index")) for r in rows] == [index_of(srv, ids["denied"])]
    page.select_option("select[name=decision]", "allow")
    page.fill("input[name=resource]", "mailbox:alice/inbox/msg-1")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr:nth-child(2)")  # the page's CSP forbids eval:
    assert len(page.query_selector_all("#results tbody tr")) == 2  # no wait_for_function
    context.close()


def _fixture_jobs() -> list[dict]:
    """Every fixture file, its expected verdict, and the mode to verify it in."""
    jobs = []
    for folder, verb, mode in (
        ("bundles", "bundle", "partial"),
        ("receipts", "receipt", "partial"),
        ("refused-early", "bundle", "partial"),
        ("complete", "bundle", "complete"),
    ):
        where = ROOT / "fixtures" / folder
        expected = json.loads((where / "expected.json").read_text())
        for path in sorted(where.glob("*.json")):
            if path.name == "expected.json":
                continue
            want = None if path.name.startswith("valid-") else expected[path.name]["check"]
            jobs.append(
                {
                    "name": f"{folder}/{path.name}",
                    "verb": verb,
                    "mode": mode,
                    "text": path.read_text(),
                    "want": want,
                }
            )
    return jobs


def test_the_pages_verifier_agrees_with_every_fixture_in_the_browser(browser, world):  # noqa: F811
    """The module the page imports, as the service serves it, in chromium's WebCrypto: the
    same verdict and check name as lineage-verify on every fixture (Node runs it too)."""
    srv, _ = world
    jobs = _fixture_jobs()
    context = browser.new_context()
    page = context.new_page()
    page.goto(srv.url("/ui"))
    page.wait_for_selector("body[data-ready=true]")
    got = page.evaluate(
        """async ([jobs, vkey]) => {
            const m = await import("/static/verify.js");
            const out = {};
            for (const j of jobs) {
                const r = j.verb === "receipt"
                    ? await m.verifyReceipt(j.text, vkey)
                    : await m.verifyBundle(j.text, vkey, { mode: j.mode });
                out[j.name] = r.ok ? null : r.check;
            }
            return out;
        }""",
        [jobs, (ROOT / "fixtures" / "log.vkey").read_text().strip()],
    )
    context.close()
    assert len(jobs) > 90
    wrong = {j["name"]: (got.get(j["name"], "missing"), j["want"]) for j in jobs}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    assert not wrong, wrong
