"""Attacks on the explorer (/ui): a real service, a real chromium, a lying server.

Written from docs/EXPLORER.md, docs/API.md and docs/FORMAT.md, then sharpened against the
code: each test would fail if the claim it names were false. One module-scoped service holds
a hostile ledger: every free-text field a signer controls holds HTML, a resource holds
entities, quotes and escaped markup, revocation reasons start with spreadsheet formula
characters, and a second principal (carol, with a browser key and a key of her own) has a
chain beside alice's. The page is then fed lies through playwright's request routing, by a
server that holds the log key or by one that does not.

A test marked ``xfail(strict=True, reason="FINDING: ...")`` is a claim that does not hold
today; it turns into a failure (XPASS) once the page is fixed, so the mark must go then.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import http.client
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from lineage.client.dpop import make_proof
from lineage.ledger.issuance import bind_principal
from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.bundle import encode_hashes
from lineage.verifier.checkpoint import Checkpoint, sign_checkpoint
from lineage.verifier.entry import Leaf, sign_entry
from lineage.verifier.jcs import canonical
from lineage.verifier.merkle import MemoryTree
from lineage.verifier.note import Signer

from .api_server import ORIGIN, key, read_scope, request, running
from .test_browser_enrol import browser, enrol, invite  # noqa: F401  (the browser fixture)

WAIT = 15_000  # ms: no single step of the page may take longer
VERIFY = Path(sys.executable).with_name("lineage-verify")


def xss(tag: str) -> str:
    """HTML that, if parsed, leaves an element `.pwned` and runs a script (CSP bypassed)."""
    return f"\"'><i class=pwned id=pwn-{tag}>x</i><img src=x onerror=window.__pwned='{tag}'>"


AGENT = xss("agent")  # printable ASCII, <= 128 characters (FORMAT.md §4.4)
AGENT2 = xss("agent2")
TASK = "Triage " + xss("task") + " &amp; more"  # text for people: any Unicode but controls
TASK2 = xss("task2")
CONSTRAINT = xss("constraint")  # a constraint value: a string of <= 1024 (SCOPE.md §3)
REASON = xss("reason") + " &lt;b&gt;"  # a revocation's reason: any string of <= 512
ATTR = xss("attr")  # a request attribute: a string of <= 1024
CTX = xss("ctx")  # an enforcement point's asserted attribute
# A resource (SCOPE.md §2): seg-chars allow ' ( ) = & ; and escaped < > " and space.
RESOURCE = "mailbox:alice/inbox/a'onmouseover=alert(1)&lt;i&gt;%3Ci%20class=pwned%3E%22x"
FORMULAS = ["=1+2", "+1+2", "-1+2", "@SUM(1+2)", '=HYPERLINK("http://evil.example","x")']

SENDERS = sorted(["a@vendor.example", "b@vendor.example", CONSTRAINT])
WIDE = read_scope(
    actions=["read", "send"], constraints={"sender": {"in": SENDERS}}
)  # the grant: its constraint holds HTML
NARROW = read_scope(resources=["mailbox:alice/inbox/*"])


def post_entry(srv, entry) -> dict:
    r = httpx.post(
        srv.url("/v1/entries"),
        content=entry.raw,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def credential(srv, parent, signer, holder, *, agent, description, scope, expires, task):
    common = dict(
        task={"id": task, "description": description},
        scope=scope,
        expires_at=expires,
        agent=agent,
    )
    if parent is None:
        body = grant_body(ORIGIN, "alice@corp", holder.public, max_depth=2, max_uses=50, **common)
    else:
        body = delegation_body(ORIGIN, parent, holder.public, max_depth=0, max_uses=10, **common)
    entry = sign_entry(body, [signer])
    r = srv.exchange(entry, holder)
    assert r.status_code == 200, r.text
    return entry


@pytest.fixture(scope="module")
def world(tmp_path_factory, browser):  # noqa: F811
    """A hostile ledger, and a chromium profile in which carol enrolled her browser."""
    with running(tmp_path_factory.mktemp("attacks")) as srv:
        ids: dict[str, str] = {}
        expires = srv.now + 900
        cred = lambda *a, **k: credential(srv, *a, expires=expires, **k)  # noqa: E731
        grant = cred(
            None, srv.alice, srv.agent, agent=AGENT, description=TASK, scope=WIDE, task="inbox"
        )
        child = cred(
            grant.id, srv.agent, srv.reader, agent=AGENT2, description=TASK2, scope=NARROW,
            task="inbox/read",
        )  # fmt: skip
        sibling_key = key("sibling")
        sibling = cred(
            grant.id, srv.agent, sibling_key, agent="sibling", description="a sibling",
            scope=NARROW, task="inbox/read",
        )  # fmt: skip
        ids.update(grant=grant.id, child=child.id, sibling=sibling.id)
        odd = srv.access(srv.invoke(srv.reader, child.id, request(resource=RESOURCE))).json()
        assert odd["decision"] == "allow", odd
        denied = srv.access(
            srv.invoke(srv.reader, child.id, request(attributes={"sender": ATTR}))
        ).json()
        assert denied["decision"] == "deny", denied
        ctx = srv.access(
            srv.invoke(srv.reader, child.id, request(resource="mailbox:alice/inbox/ctx")),
            {"attributes": {"sender": CTX}},
        ).json()
        assert ctx["decision"] == "deny", ctx
        by_sibling = srv.access(srv.invoke(sibling_key, sibling.id)).json()
        assert by_sibling["decision"] == "allow", by_sibling
        ids.update(odd=odd["id"], denied=denied["id"], ctx=ctx["id"], by_sibling=by_sibling["id"])

        # Spare grants, revoked by alice: one reason of HTML, the others formulas.
        for n, reason in enumerate([REASON, *FORMULAS]):
            spare = cred(
                None, srv.alice, key(f"spare {n}"), agent=f"spare-{n}", description="",
                scope=NARROW, task="spare",
            )  # fmt: skip
            rev = revocation_body(ORIGIN, credential=spare.id, reason=reason)
            ids[f"revocation{n}"] = post_entry(srv, sign_entry(rev, [srv.alice]))["id"]
            ids[f"spare{n}"] = spare.id

        # carol: a browser key (enrolled through the page) and a key of her own, with a chain.
        carol_context = browser.new_context()
        enrol_page, carol_kid = enrol(carol_context, invite(srv, "carol@corp"))
        enrol_page.close()
        carol = key("carol@corp")
        post_entry(srv, bind_principal(ORIGIN, srv.log.keys.operator, "carol@corp", carol.public))
        agent = key("carol agent")
        body = grant_body(
            ORIGIN,
            "carol@corp",
            agent.public,
            task={"id": "carol-task", "description": "carol's own"},
            scope=read_scope(resources=["mailbox:carol/*"]),
            expires_at=expires,
            max_depth=1,
        )
        carol_grant = sign_entry(body, [carol])
        assert srv.exchange(carol_grant, agent).status_code == 200
        mine = srv.access(srv.invoke(agent, carol_grant.id, request(resource="mailbox:carol/i/1")))
        ids.update(carol_grant=carol_grant.id, carol_access=mine.json()["id"])
        wait_for_checkpoint(srv, srv.log.size)
        try:
            yield srv, ids, carol_context, carol_kid, carol
        finally:
            carol_context.close()


def wait_for_checkpoint(srv, size: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        note = httpx.get(srv.url("/v1/log/checkpoint")).text
        if int(note.split("\n")[1]) >= size:
            return note
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)


# -- the page ---------------------------------------------------------------------------------


class Session:
    """A browser tab on /ui, recording every response from the service (url, status, body)."""

    def __init__(self, browser, srv, *, token=None, bypass_csp=False, context=None):  # noqa: F811
        self.own = context is None
        self.context = context or browser.new_context(
            viewport={"width": 1280, "height": 1000}, accept_downloads=True, bypass_csp=bypass_csp
        )
        self.srv = srv
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT)
        self.responses: list[tuple[str, int, str]] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", self._record)
        self.page.goto(srv.url("/ui"))
        self.page.wait_for_selector("body[data-ready=true]")
        if token:
            self.page.fill("#token", token)
            self.page.click("#signin-form button")

    def _record(self, response) -> None:
        try:
            body = response.text()
        except Exception:
            body = ""  # a redirect or an aborted request has no body
        self.responses.append((response.url, response.status, body))

    def close(self) -> None:
        if self.own:
            self.context.close()
        else:
            self.page.close()

    def search(self, **fields: str) -> None:
        for name, value in fields.items():
            self.page.fill(f"input[name={name}]", value)
        self.page.click("#search button[type=submit]")
        self.page.wait_for_selector("#results tbody tr, #status.error")

    def open(self, credential: str) -> None:
        """Open a lineage by its URL (/ui?credential=...), as a shared link would."""
        self.page.goto(self.srv.url(f"/ui?credential={credential}"))
        self.page.wait_for_selector("#verdict[data-verdict], #status.error")

    def verdict(self) -> tuple[str | None, str]:
        return (
            self.page.get_attribute("#verdict", "data-verdict"),
            self.page.inner_text("#verdict"),
        )

    def rows(self) -> list[tuple[int, str, str, str | None]]:
        """The bundle table: (index, what, verdict, failed check) per row, in order."""
        out = []
        for row in self.page.query_selector_all("#bundle-entries tbody tr"):
            badge = row.query_selector(".badge")
            out.append(
                (
                    int(row.get_attribute("data-entry-index")),
                    row.inner_text(),
                    badge.get_attribute("data-verdict"),
                    badge.get_attribute("data-check"),
                )
            )
        return out

    def verdicts(self) -> dict[int, tuple[str, str | None]]:
        return {i: (v, c) for i, _, v, c in self.rows()}

    def anything_verified(self) -> bool:
        return bool(self.page.query_selector("[data-verdict=verified]"))

    def injected(self) -> list:
        """Elements or script that came out of the log's text."""
        found = self.page.evaluate(
            """() => ({
                pwned: window.__pwned || null,
                elements: Array.from(document.querySelectorAll('.pwned, [id^=pwn-], img'))
                    .map(e => e.outerHTML),
            })"""
        )
        return ([found["pwned"]] if found["pwned"] else []) + found["elements"]

    def download(self, button: str) -> str:
        with self.page.expect_download() as got:
            self.page.click(button)
        return Path(got.value.path()).read_text()


def route_lineage(page, body, status=200, content_type="application/json") -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    page.unroute_all()
    page.route(
        re.compile(r".*/v1/credentials/[^/]+/lineage$"),
        lambda route: route.fulfill(status=status, content_type=content_type, body=text),
    )


def bundle(srv, credential: str) -> dict:
    r = httpx.get(srv.url(f"/v1/credentials/{credential}/lineage"), headers=srv.bearer(srv.auditor))
    assert r.status_code == 200, r.text
    return r.json()


def index_of(srv, entry_id: str) -> int:
    return srv.log.find(entry_id)


def reference_check(srv, doc: dict, tmp_path: Path) -> str | None:
    """What `lineage-verify --json` says of ``doc``: None if it verifies, else the check."""
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(doc))
    vkey = httpx.get(srv.url("/v1/log/key")).text.strip()
    out = subprocess.run(
        [str(VERIFY), str(path), "--log-key", vkey, "--json"], capture_output=True, text=True
    )
    answer = json.loads(out.stdout)
    return None if answer.get("ok") else answer.get("check")


# -- 1. Nothing from the log is parsed as HTML -----------------------------------------------


def test_every_free_text_field_is_text_in_every_view(browser, world):  # noqa: F811
    srv, ids, *_ = world
    s = Session(browser, srv, token=srv.auditor, bypass_csp=True)  # so an injection would run
    try:
        s.search(principal="alice@corp")
        for view in ("#results", "#timeline"):
            s.page.click("#view-timeline" if view == "#timeline" else "#view-table")
            text = s.page.inner_text(view)
            for shown in (AGENT, AGENT2, RESOURCE):
                assert shown in text, (view, shown)
        assert not s.injected()

        s.open(ids["child"])
        assert s.verdict()[0] == "verified", s.verdict()
        tree, table = s.page.inner_text("#tree"), s.page.inner_text("#bundle-entries")
        for shown in (AGENT, AGENT2, RESOURCE, CONSTRAINT.replace('"', '\\"')):
            assert shown in tree, shown
        for shown in (AGENT, AGENT2, RESOURCE):
            assert shown in table, shown
        assert "&lt;i&gt;" in tree  # entities are shown as written, not decoded
        assert not s.injected()

        s.open(ids["spare0"])  # the revocation with HTML for a reason
        assert s.page.query_selector(f"#tree li[data-credential='{ids['spare0']}']")
        assert (
            s.page.get_attribute(f"#tree li[data-credential='{ids['spare0']}']", "data-status")
            == "revoked"
        )
        assert not s.injected()
        assert s.errors == []
    finally:
        s.close()


def test_the_credential_in_the_url_is_never_markup_nor_a_path(browser, world):  # noqa: F811
    srv, ids, *_ = world
    s = Session(browser, srv, token=srv.auditor, bypass_csp=True)
    try:
        for hostile in (
            xss("url"),
            ids["child"] + xss("url2"),
            "javascript:window.__pwned='js'",
            "../../v1/log/key",
            ids["child"] + "/../../../v1/export?format=jsonl",
        ):
            s.page.goto(srv.url("/ui") + "?" + str(httpx.QueryParams({"credential": hostile})))
            s.page.wait_for_selector("body[data-ready=true]")
            s.page.wait_for_timeout(200)
            assert not s.injected(), hostile
            assert not s.anything_verified(), hostile
        # Nothing but this service is asked, and no lineage other than a credential id's.
        assert all(urlsplit(u).netloc == urlsplit(srv.base).netloc for u in s.requests)
        assert not [
            u
            for u in s.requests
            if urlsplit(u).path.startswith("/v1/") and ("lineage" in u or "export" in u)
        ]
    finally:
        s.close()


# -- 2. Nothing a reader may not read is sent to the page ------------------------------------


def alice_only(ids: dict) -> list[str]:
    """Text that only a reader of alice's chains may be sent."""
    return [ids["grant"], ids["child"], ids["odd"], ids["denied"], "mailbox:alice", "pwn-agent"]


def leaks(responses, secrets) -> list[tuple[str, str]]:
    return [(url, s) for url, _, body in responses for s in secrets if s in body]


def status(page) -> str:
    return page.evaluate("document.querySelector('#status').textContent")


def until(page, predicate, timeout: float = WAIT / 1000) -> None:
    """Poll ``predicate(page)`` (the page's CSP forbids playwright's string predicates)."""
    deadline = time.monotonic() + timeout
    while not predicate(page):
        assert time.monotonic() < deadline, "the page did not settle"
        page.wait_for_timeout(50)


def settled(page) -> None:
    until(page, lambda p: "…" not in status(p))


def test_a_principals_browser_key_reads_only_their_own(browser, world):  # noqa: F811
    srv, ids, carol_context, carol_kid, _ = world
    s = Session(browser, srv, context=carol_context)
    try:
        s.page.click(f"#as-principal button[data-kid='{carol_kid}']")
        s.page.wait_for_selector("#who:has-text('carol@corp')")
        s.search()  # her own, as the page fills it in
        assert ids["carol_grant"] in " ".join(b for _, _, b in s.responses)  # she sees hers
        for fields in (
            {"principal": ""},
            {"principal": "alice@corp"},
            {"principal": "", "task": "inbox/"},
            {"principal": "", "resource": "mailbox:alice/*"},
            {"principal": "", "kind": "grant"},
            {"principal": "", "holder": srv.agent.public.b64},
            {"principal": "", "decision": "allow"},
        ):
            s.page.evaluate("document.querySelector('#search').reset()")
            s.page.evaluate(
                "f => { for (const [n, v] of Object.entries(f))"
                " document.querySelector(`#search [name=${n}]`).value = v; }",
                fields,
            )
            s.page.click("#search button[type=submit]")
            settled(s.page)
        for credential_id in (ids["grant"], ids["child"], ids["spare0"]):
            s.page.goto(srv.url(f"/ui?credential={credential_id}"))
            s.page.wait_for_selector("#status.error, #verdict[data-verdict]")
            assert not s.page.query_selector("#bundle-entries tbody tr")
        assert leaks(s.responses, alice_only(ids)) == []
    finally:
        s.close()


def test_an_anonymous_visitor_is_sent_nothing_but_public_parts(browser, world):  # noqa: F811
    srv, ids, *_ = world
    s = Session(browser, srv)
    try:
        s.search(principal="alice@corp")
        s.page.goto(srv.url(f"/ui?credential={ids['child']}"))
        s.page.wait_for_selector("#status.error, #verdict[data-verdict]")
        assert not s.page.query_selector("#results tbody tr, #bundle-entries tbody tr")
        assert leaks(s.responses, alice_only(ids)) == []
    finally:
        s.close()


def api_views(srv, ids, headers_for) -> list[tuple[str, int, str]]:
    """What the API sends a caller for each read the page (or a script in it) can make."""
    paths = [
        "/v1/entries",
        "/v1/entries?principal=alice@corp",
        "/v1/entries?task=inbox/",
        "/v1/entries?resource=mailbox:alice/*",
        f"/v1/entries?holder={srv.agent.public.b64}",
        "/v1/entries?kind=grant",
        "/v1/entries?decision=allow",
        f"/v1/entries/{ids['grant']}",
        f"/v1/credentials/{ids['grant']}/lineage",
        f"/v1/credentials/{ids['child']}/lineage",
        f"/v1/credentials/{ids['sibling']}/lineage",
        "/v1/export?principal=alice@corp&format=jsonl",
        "/v1/log/entries?start=0&end=1000",
        f"/v1/log/entries/{index_of(srv, ids['grant'])}",
        f"/v1/log/entries/{index_of(srv, ids['odd'])}",
    ]
    out = []
    for path in paths:
        r = httpx.get(srv.url(path), headers=headers_for(path), timeout=10)
        out.append((path, r.status_code, r.text))
    return out


def test_the_api_sends_no_one_the_entries_of_another(world):
    """What the page is sent is what the API answers: a principal, a holder, nobody."""
    srv, ids, _, _, carol = world

    def dpop(signer, handle):
        def headers(path):
            url = srv.url(path.split("?")[0])
            proof = make_proof(signer.seed, "GET", url, access_token=handle)
            return {"Authorization": f"DPoP {handle}", "DPoP": proof}

        return headers

    seen = api_views(srv, ids, dpop(carol, "carol@corp"))
    assert any(ids["carol_grant"] in body for _, _, body in seen)  # her own are sent
    assert leaks(seen, alice_only(ids)) == []
    assert leaks(api_views(srv, ids, lambda p: {}), alice_only(ids)) == []
    # The sibling's holder reads its own chain; never the reader's beside it.
    seen = api_views(srv, ids, dpop(key("sibling"), ids["sibling"]))
    assert any(ids["by_sibling"] in body for _, _, body in seen)
    assert leaks(seen, [ids["child"], ids["odd"], ids["denied"], "pwn-agent2"]) == []


# -- 3. Headers ------------------------------------------------------------------------------


def raw_get(srv, path: str) -> tuple[int, dict, bytes]:
    """GET exactly ``path`` (no client-side normalisation of dot segments or escapes)."""
    parts = urlsplit(srv.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_the_page_and_its_files_are_locked_down(world):
    srv, ids, *_ = world
    for path in ("/ui", f"/ui?credential={ids['child']}"):
        status, headers, body = raw_get(srv, path)
        assert status == 200
        directives = headers["content-security-policy"].split(";")
        csp = {d.split()[0]: d.split()[1:] for d in directives if d.strip()}
        assert csp["default-src"] == ["'none'"], csp
        assert csp["script-src"] == ["'self'"], csp
        assert csp["connect-src"] == ["'self'"], csp
        assert csp["frame-ancestors"] == ["'none'"], csp
        assert not [v for vs in csp.values() for v in vs if "unsafe" in v or "*" in v], csp
        assert headers.get("x-frame-options") == "DENY"
        assert headers.get("x-content-type-options") == "nosniff"
        assert "no-store" in headers.get("cache-control", "")
        assert "set-cookie" not in headers
        assert ids["child"].encode() not in body  # the shell holds no data
        assert b"<script>" not in body and not re.search(rb"\son[a-z]+=", body)  # no inline code
    for name in ("explorer.js", "verify.js", "common.js", "lineage.css"):
        status, headers, body = raw_get(srv, "/static/" + name)
        assert status == 200, name
        assert headers.get("x-content-type-options") == "nosniff", name
        assert "set-cookie" not in headers, name
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert headers["content-type"].startswith(kind), (name, headers["content-type"])
    explorer = raw_get(srv, "/static/explorer.js")[2].decode()
    assert "innerHTML" not in explorer and "insertAdjacentHTML" not in explorer
    assert "document.cookie" not in explorer and "localStorage.setItem(TOKEN" not in explorer


@pytest.mark.parametrize(
    "path",
    [
        "/static/../routers/explorer.py",
        "/static/../../api/main.py",
        "/static/..%2frouters%2fexplorer.py",
        "/static/..%2Frouters%2Fexplorer.py",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/..%5c..%5cpyproject.toml",
        "/static/....//....//pyproject.toml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/explorer.js%00.html",
        "/static/explorer.js/..",
        "/static/",
        "/static/.",
        "/static/nothing.js",
        "/static/__init__.py",
        "/static/enroll.html/../../main.py",
    ],
)
def test_nothing_outside_the_web_folder_is_served(world, path):
    srv, *_ = world
    status, headers, body = raw_get(srv, path)
    assert status in (400, 404, 405), (path, status, body[:200])
    for leak in (b"root:", b"import ", b"[project]", b"def ", b"from __future__"):
        assert leak not in body, (path, body[:200])
    assert "set-cookie" not in headers


def test_no_framing_no_cookie_and_the_token_only_in_this_tab(browser, world):  # noqa: F811
    srv, ids, *_ = world
    s = Session(browser, srv, token=srv.auditor)
    try:
        s.search(principal="alice@corp")
        s.open(ids["child"])
        assert s.verdict()[0] == "verified", s.verdict()
        assert s.context.cookies() == []
        assert not [u for u, _, _ in s.responses if "set-cookie" in u]
        local, session = s.page.evaluate(
            "() => [JSON.stringify(localStorage), JSON.stringify(sessionStorage)]"
        )
        assert srv.auditor not in local  # never where it outlives the tab
        assert srv.auditor in session
        assert all(srv.auditor not in u for u in s.requests)  # never in a URL
        assert srv.auditor not in s.page.content()  # nor in the page
        # Another tab of the same browser does not hold it.
        other = s.context.new_page()
        other.goto(srv.url("/ui"))
        other.wait_for_selector("body[data-ready=true]")
        assert srv.auditor not in other.evaluate("JSON.stringify(sessionStorage)")
        other.close()
        # Framed by another page, it does not load.
        framer = s.context.new_page()
        framer.set_content(f'<iframe src="{srv.url("/ui")}"></iframe>')
        framer.wait_for_timeout(500)
        frame = framer.frames[-1]
        assert frame is not framer.main_frame
        ready = frame.evaluate("() => document.body && document.body.dataset.ready || null")
        assert ready is None
        framer.close()
    finally:
        s.close()


# -- 4. A lying server ---------------------------------------------------------------------


def rebuilt(srv, leaves, signer=None, origin=ORIGIN):
    """A tree over ``leaves`` and its checkpoint, signed by ``signer`` (default: the log's)."""
    tree = MemoryTree()
    for leaf in leaves:
        tree.append(leaf.hash)
    size = len(leaves)
    note = sign_checkpoint(Checkpoint(origin, size, tree.root(size)), signer or srv.log.keys.log)
    return tree, note.decode()


def real_leaves(srv, size: int):
    return [leaf for _, leaf in srv.log.leaves(0, size)]


def checkpoint_size(note: str) -> int:
    return int(note.split("\n")[1])


def reproved(real: dict, tree, size: int, note: str, upto: int | None = None) -> dict:
    """``real``'s entries (those below ``upto``) with proofs in ``tree`` of ``size``."""
    entries = [
        {**e, "inclusion": encode_hashes(tree.inclusion_proof(e["index"], size))}
        for e in real["entries"]
        if upto is None or e["index"] < upto
    ]
    return {**real, "checkpoint": note, "entries": entries}


@pytest.fixture
def auditor(browser, world):  # noqa: F811
    srv, *_ = world
    s = Session(browser, srv, token=srv.auditor)
    s.search(principal="alice@corp")  # signed in, and the log key first seen (TOFU)
    yield s
    s.close()


def test_a_checkpoint_by_another_key_or_for_another_log_verifies_nothing(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    size = checkpoint_size(real["checkpoint"])
    other = Signer(ORIGIN, key("another log").seed)
    by_other = rebuilt(srv, real_leaves(srv, size), other)[1]
    evil = Signer("evil.example/log", key("evil log").seed)
    lies = {
        "checkpoint signed by another key": {**real, "checkpoint": by_other},
        "another key throughout": {**real, "checkpoint": by_other, "log_key": other.verifier.vkey},
        "another origin": {**real, "origin": "evil.example/log"},
        "another log entirely": {
            **real,
            "origin": "evil.example/log",
            "log_key": evil.verifier.vkey,
            "checkpoint": rebuilt(srv, real_leaves(srv, size), evil, "evil.example/log")[1],
        },
    }
    route_lineage(auditor.page, real)
    auditor.open(ids["child"])
    assert auditor.verdict()[0] == "verified", auditor.verdict()  # the control
    for name, lie in lies.items():
        route_lineage(auditor.page, lie)
        auditor.open(ids["child"])
        verdict, text = auditor.verdict()
        assert verdict == "failed" and "signature" in text, (name, text)
        assert not auditor.anything_verified(), name


def test_a_proof_for_another_index_fails_proof_and_only_there(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    entries = real["entries"]
    at = {e["index"]: n for n, e in enumerate(entries)}
    child, odd = at[index_of(srv, ids["child"])], at[index_of(srv, ids["odd"])]
    misplaced = copy.deepcopy(entries)
    misplaced[child]["inclusion"], misplaced[odd]["inclusion"] = (
        entries[odd]["inclusion"],
        entries[child]["inclusion"],
    )
    route_lineage(auditor.page, {**real, "entries": misplaced})
    auditor.open(ids["child"])
    seen = auditor.verdicts()
    assert auditor.verdict()[0] == "failed"
    assert seen[entries[child]["index"]] == ("failed", "proof"), seen
    assert seen[entries[odd]["index"]] == ("failed", "proof"), seen
    assert seen[0] == ("verified", None), seen  # the rest still stands

    # The child's leaf claimed at an index where no leaf of the bundle is: its proof fails.
    moved = copy.deepcopy(entries)
    free = next(i for i in range(entries[child]["index"] + 1, 10**6) if i not in at)
    if free < entries[child + 1]["index"]:
        moved[child]["index"] = free
        route_lineage(auditor.page, {**real, "entries": moved})
        auditor.open(ids["child"])
        assert auditor.verdicts()[free] == ("failed", "proof")


def test_entries_reordered_are_named_order_as_lineage_verify_does(auditor, world, tmp_path):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    entries = real["entries"]
    at = {e["index"]: n for n, e in enumerate(entries)}
    child, odd = at[index_of(srv, ids["child"])], at[index_of(srv, ids["odd"])]
    swapped = copy.deepcopy(entries)
    swapped[child], swapped[odd] = swapped[odd], swapped[child]
    lie = {**real, "entries": swapped}
    assert reference_check(srv, lie, tmp_path) == "order"
    route_lineage(auditor.page, lie)
    auditor.open(ids["child"])
    verdict, text = auditor.verdict()
    assert verdict == "failed", text
    checks = [c for _, _, v, c in auditor.rows() if v == "failed"]
    assert "order" in checks or "order" in text, (text, auditor.rows())
    assert auditor.verdicts()[entries[child]["index"]][0] != "verified", auditor.rows()


def test_an_entry_listed_under_a_verified_ones_index_is_never_shown_verified(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    entries = real["entries"]
    n = next(i for i, e in enumerate(entries) if e["index"] == index_of(srv, ids["child"]))
    body = delegation_body(
        ORIGIN,
        ids["grant"],
        key("attacker").public,
        task={"id": "inbox/read", "description": ""},
        scope=read_scope(actions=["delete", "read"]),
        expires_at=srv.now + 600,
        max_depth=0,
        agent="attacker",
    )
    forged = sign_entry(body, [srv.agent])  # widened: the parent has no delete
    item = {
        "index": entries[n]["index"],
        "leaf": {"entry": forged.obj, "time": entries[n]["leaf"]["time"]},
        "inclusion": entries[n]["inclusion"],
    }
    route_lineage(auditor.page, {**real, "entries": [*entries[: n + 1], item, *entries[n + 1 :]]})
    auditor.open(ids["child"])
    assert auditor.verdict()[0] == "failed"  # the banner counts one failure ...
    shown = [r for r in auditor.rows() if "attacker" in r[1]]
    assert shown and shown[0][2] == "failed", auditor.rows()  # ... the row must show it
    node = auditor.page.query_selector(f"#tree li[data-credential='{forged.id}'] .badge")
    assert node is None or node.get_attribute("data-verdict") != "verified"

    # The same item twice: one of the two rows must say which failed, and why.
    twice = [*entries[: n + 1], copy.deepcopy(entries[n]), *entries[n + 1 :]]
    route_lineage(auditor.page, {**real, "entries": twice})
    auditor.open(ids["child"])
    assert auditor.verdict()[0] == "failed"
    assert [c for i, _, v, c in auditor.rows() if v == "failed"] == ["order"], auditor.rows()


def test_an_entry_duplicated_in_a_rebuilt_log_is_a_duplicate(auditor, world):
    """A server with the log key appends the grant's entry again and re-signs."""
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    size = checkpoint_size(real["checkpoint"])
    leaves = real_leaves(srv, size)
    grant_at = index_of(srv, ids["grant"])
    leaves.append(Leaf.build(leaves[grant_at].entry, leaves[-1].time))
    n = len(leaves)
    tree, note = rebuilt(srv, leaves)
    lie = reproved(real, tree, n, note)
    copied = {"index": n - 1, "leaf": leaves[-1].to_json()}
    lie["entries"].append({**copied, "inclusion": encode_hashes(tree.inclusion_proof(n - 1, n))})
    route_lineage(auditor.page, lie)
    auditor.open(ids["child"])
    seen = auditor.verdicts()
    assert seen[n - 1] == ("failed", "duplicate"), seen
    assert seen[grant_at] == ("verified", None), seen


def with_remembered(page, note: str) -> None:
    page.evaluate("n => localStorage.setItem('lineage.explorer.checkpoint', n)", note)


def consistency(s: Session) -> str:
    until(
        s.page,
        lambda p: p.evaluate(
            "document.querySelector('#consistency').textContent"
            " || document.querySelector('#status').className === 'error'"
        ),
    )
    return s.page.inner_text("#consistency") + " | " + s.page.inner_text("#status")


def test_a_consistency_proof_that_does_not_verify_is_not_an_extension(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    size = checkpoint_size(real["checkpoint"])
    older = size - 3
    tree, _ = rebuilt(srv, real_leaves(srv, size))
    genuine = sign_checkpoint(Checkpoint(ORIGIN, older, tree.root(older)), srv.log.keys.log)

    # The control: a genuine older checkpoint, the genuine proof.
    route_lineage(auditor.page, real)
    with_remembered(auditor.page, genuine.decode())
    auditor.open(ids["child"])
    text = consistency(auditor)
    assert "extends" in text and "NOT" not in text, text

    # The server lies in the proof.
    def lying_proof(route):
        url = urlsplit(route.request.url)
        body = httpx.get(srv.url(f"{url.path}?{url.query}")).json()
        lie = encode_hashes([hashlib.sha256(b"lie").digest()])[0]
        body["consistency"] = [lie] * len(body["consistency"])
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    auditor.page.route(re.compile(r".*/v1/log/proof/consistency.*"), lying_proof)
    with_remembered(auditor.page, genuine.decode())
    auditor.open(ids["child"])
    text = consistency(auditor)
    assert "does NOT extend" in text, text
    assert remembered(auditor.page) == genuine.decode()  # the lie is not remembered
    route_lineage(auditor.page, real)  # (and the lying proof route gone)

    # A forked history: the remembered checkpoint is signed by the right key, another root.
    forked = sign_checkpoint(Checkpoint(ORIGIN, older, bytes(32)), srv.log.keys.log).decode()
    with_remembered(auditor.page, forked)
    auditor.open(ids["child"])
    assert "does NOT extend" in consistency(auditor)

    # A fork at the same size: the right key, the same size, another root.
    same = sign_checkpoint(Checkpoint(ORIGIN, size, bytes(32)), srv.log.keys.log).decode()
    with_remembered(auditor.page, same)
    auditor.open(ids["child"])
    assert "does NOT extend" in consistency(auditor)

    # Remembered: a checkpoint of a larger log than the one shown now (forged root).
    bigger = sign_checkpoint(Checkpoint(ORIGIN, size + 5, bytes(32)), srv.log.keys.log).decode()
    with_remembered(auditor.page, bigger)
    auditor.open(ids["child"])
    text = consistency(auditor)
    assert "extends" not in text.replace("NOT extend", ""), text


def remembered(page) -> str | None:
    return page.evaluate("localStorage.getItem('lineage.explorer.checkpoint')")


def test_a_rolled_back_log_is_not_called_an_extension(auditor, world):
    """The auditor saw size N; the server now serves a genuine earlier state (size m < N,
    signed by the log key when it was current), hiding everything appended since."""
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    size = checkpoint_size(real["checkpoint"])
    stale_size = max(e["index"] for e in real["entries"]) + 1
    assert stale_size < size
    tree, stale_note = rebuilt(srv, real_leaves(srv, stale_size))
    stale = reproved(real, tree, stale_size, stale_note)

    route_lineage(auditor.page, real)
    auditor.open(ids["child"])  # remembered: the current checkpoint, size N
    assert checkpoint_size(remembered(auditor.page)) == size
    route_lineage(auditor.page, stale)
    auditor.open(ids["child"])
    assert auditor.verdict()[0] == "verified"  # every entry is genuinely in the older log ...
    text = consistency(auditor)
    assert "The log extends" not in text, text  # ... but the log shown does not extend N

    # The same through "Prove an earlier checkpoint": the kept one is larger than the log's.
    auditor.page.route(
        re.compile(r".*/v1/log/checkpoint$"),
        lambda route: route.fulfill(status=200, content_type="text/plain", body=stale_note),
    )
    auditor.page.click("#older-box summary")
    auditor.page.fill("#older", real["checkpoint"])
    auditor.page.click("#older-form button")
    auditor.page.wait_for_selector("#older-result[data-verdict]")
    assert auditor.page.get_attribute("#older-result", "data-verdict") == "failed", (
        auditor.page.inner_text("#older-result")
    )


def test_a_log_key_swapped_after_first_use_is_refused_and_the_first_kept(auditor, world):
    srv, ids, *_ = world
    first = httpx.get(srv.url("/v1/log/key")).text.strip()
    assert first in auditor.page.evaluate("JSON.stringify(localStorage)")  # trusted on first use
    other = Signer(ORIGIN, key("swapped log").seed)
    real = bundle(srv, ids["child"])
    note = rebuilt(srv, real_leaves(srv, checkpoint_size(real["checkpoint"])), other)[1]
    lie = {**real, "log_key": other.verifier.vkey, "checkpoint": note}

    def serve_other_key(page):
        page.route(
            re.compile(r".*/v1/log/key$"),
            lambda route: route.fulfill(
                status=200, content_type="text/plain", body=other.verifier.vkey + "\n"
            ),
        )

    route_lineage(auditor.page, lie)
    serve_other_key(auditor.page)
    auditor.open(ids["child"])
    auditor.page.wait_for_selector("#vkey-source.error")
    assert "another key" in auditor.page.inner_text("#vkey-source")
    assert auditor.page.inner_text("#vkey") == first
    stored = auditor.page.evaluate("JSON.stringify(localStorage)")
    assert other.verifier.vkey not in stored and first in stored
    verdict, text = auditor.verdict()
    assert verdict == "failed" and "signature" in text, text
    assert not auditor.anything_verified()
    # The real bundle still verifies, under the first key, while the server serves another.
    route_lineage(auditor.page, real)
    serve_other_key(auditor.page)
    auditor.open(ids["child"])
    assert auditor.verdict()[0] == "verified", auditor.verdict()
    assert auditor.page.query_selector("#vkey-source.error")


def search_lie(page, lie: dict) -> None:
    page.route(
        re.compile(r".*/v1/entries\?.*"),
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(lie)
        ),
    )


def listed(srv) -> dict:
    return httpx.get(
        srv.url("/v1/entries"), params={"principal": "alice@corp"}, headers=srv.bearer(srv.auditor)
    ).json()


def check_inclusion(s: Session) -> None:
    s.page.click("#check-inclusion")
    until(s.page, lambda p: re.search(r"entries proved|does not|not an extension", status(p)))


def test_a_search_row_that_is_not_the_logs_is_not_proved(auditor, world):
    srv, ids, *_ = world
    lie = copy.deepcopy(listed(srv))
    target = next(e for e in lie["entries"] if e["id"] == ids["child"])
    target["entry"]["max_uses"] = 10_000  # widened; its index, id and leaf_hash as served
    search_lie(auditor.page, lie)
    auditor.search(principal="alice@corp")
    check_inclusion(auditor)
    row = auditor.page.query_selector(f"#results tr[data-index='{target['index']}']")
    assert row.get_attribute("data-verdict") == "failed"
    assert "NOT in the log" in row.inner_text()
    others = auditor.page.query_selector_all("#results tr[data-verdict=verified]")
    assert len(others) == len(lie["entries"]) - 1  # the control: the rest are proved


def test_a_forged_search_row_under_a_real_index_is_not_proved(auditor, world):
    srv, ids, *_ = world
    lie = copy.deepcopy(listed(srv))
    n = next(i for i, e in enumerate(lie["entries"]) if e["id"] == ids["child"])
    real = lie["entries"][n]
    widened = {**real["entry"], "agent": "attacker", "max_uses": 10_000}
    lie["entries"].insert(n + 1, {**real, "entry": widened})
    search_lie(auditor.page, lie)
    auditor.search(principal="alice@corp")
    check_inclusion(auditor)
    rows = auditor.page.query_selector_all(f"#results tr[data-index='{real['index']}']")
    assert len(rows) == 2 and "attacker" in rows[1].inner_text()
    assert rows[0].get_attribute("data-verdict") == "verified"  # the real one
    assert rows[1].get_attribute("data-verdict") != "verified", rows[1].inner_text()
    assert "in checkpoint" not in rows[1].inner_text()


def test_search_downloads_carry_ids_computed_here(auditor, world):
    srv, ids, *_ = world
    lie = copy.deepcopy(listed(srv))
    target = next(e for e in lie["entries"] if e["id"] == ids["grant"])
    target["id"], target["leaf_hash"] = "0" * 64, "1" * 64  # the service's word, false
    search_lie(auditor.page, lie)
    auditor.search(principal="alice@corp")
    lines = [json.loads(x) for x in auditor.download("#dl-jsonl").splitlines()]
    mine = next(x for x in lines if x["index"] == target["index"])
    leaf = canonical({"entry": target["entry"], "time": target["time"]})
    assert mine["id"] == ids["grant"] == hashlib.sha256(canonical(target["entry"])).hexdigest()
    assert mine["leaf_hash"] == hashlib.sha256(b"\0" + leaf).hexdigest()
    rows = list(csv.reader(io.StringIO(auditor.download("#dl-csv"))))
    assert next(r for r in rows[1:] if r[0] == str(target["index"]))[3] == ids["grant"]


# -- 5. Downloads ----------------------------------------------------------------------------


def formula_cells(rows) -> list[str]:
    """Cells a spreadsheet would read as a formula: what it parses, starting =, +, -, @."""
    return [c for row in rows for c in row if c[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(auditor, world):
    _, ids, *_ = world
    raw = auditor.download("#dl-csv")
    rows = list(csv.reader(io.StringIO(raw)))
    for formula in FORMULAS:
        assert [c for row in rows for c in row if formula in c], (formula, raw)
    assert formula_cells(rows) == [], raw

    auditor.open(ids["spare4"])  # its revocation's reason: @SUM(1+2), FORMULAS[3]
    raw = auditor.download("#dl-lineage-csv")
    rows = list(csv.reader(io.StringIO(raw)))
    assert [c for row in rows for c in row if FORMULAS[3] in c], raw
    assert formula_cells(rows) == [], raw


# -- 6. Malformed and huge responses -------------------------------------------------------


def test_malformed_bundles_show_an_error_and_verify_nothing(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    text = json.dumps(real)
    variants = {
        "not json": ("<html><body>oops <i class=pwned>x</i></body></html>", "text/html", 200),
        "truncated": (text[:-40], "application/json", 200),
        "null": ("null", "application/json", 200),
        "entries not a list": (json.dumps({**real, "entries": {"0": 1}}), "application/json", 200),
        "no entries": (json.dumps({**real, "entries": []}), "application/json", 200),
        "deep": ("[" * 100_000 + "]" * 100_000, "application/json", 200),
        "a float index": (text.replace('"index": 0,', '"index": 0.0,', 1), "application/json", 200),
        "a duplicate key": (text[:-1] + ', "origin": "evil.example/log"}', "text/plain", 200),
        "a server error": ("<h1>500</h1>", "text/html", 500),
    }
    for name, (body, ctype, status) in variants.items():
        route_lineage(auditor.page, body, status=status, content_type=ctype)
        auditor.open(ids["child"])
        shown = auditor.page.query_selector("#verdict[data-verdict=failed], #status.error")
        assert shown is not None, name
        assert not auditor.anything_verified(), name
        assert not auditor.injected(), name


def test_a_bundle_of_5000_entries_fails_in_bounded_time(auditor, world):
    srv, ids, *_ = world
    real = bundle(srv, ids["child"])
    leaf = next(e["leaf"] for e in real["entries"] if e["leaf"]["entry"]["kind"] == "access")
    entries = [{"index": i, "leaf": leaf, "inclusion": []} for i in range(5000)]
    route_lineage(auditor.page, {**real, "entries": entries})
    started = time.monotonic()
    auditor.open(ids["child"])
    auditor.page.wait_for_selector("#verdict[data-verdict]", timeout=20_000)
    assert time.monotonic() - started < 20
    assert auditor.verdict()[0] == "failed"
    assert not auditor.anything_verified()
    rows = auditor.page.evaluate("document.querySelectorAll('#bundle-entries tbody tr').length")
    assert rows == 5000
