"""Enrolment in a real headless browser: Debian's chromium, driven by playwright.

A principal opens the one-time link; the page makes a non-extractable Ed25519 key with
WebCrypto, keeps it in IndexedDB, proves it holds it, and the service binds the public half
in the log. The private half never leaves the browser: the page cannot export it, and the
bound key is the one the browser signs with.

`.ci/run` installs chromium (apt-get) and sets LINEAGE_BROWSER_TESTS=required, so in CI a
missing browser fails; elsewhere these tests are skipped with a reason when there is none.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from lineage.ledger.invites import InviteStore
from lineage.verifier.keys import PublicKey

from .api_server import running

CHROMIUM = os.environ.get("LINEAGE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        if os.environ.get("LINEAGE_BROWSER_TESTS") == "required":
            pytest.fail(
                f"no chromium at {CHROMIUM}: .ci/run installs it (apt-get install chromium)"
            )
        pytest.skip(
            f"no chromium at {CHROMIUM} (apt-get install chromium, or set LINEAGE_CHROMIUM)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def srv(tmp_path):
    with running(tmp_path) as s:
        yield s


def invite(srv, name: str = "carol@corp", roles=("finance",), ttl: int = 900) -> str:
    _, secret = InviteStore(srv.log.store).create(name, roles, ttl)
    return f"{srv.base}/enroll#invite={secret}"


def enrol(browser, link: str):
    page = browser.new_page()
    page.goto(link)
    page.wait_for_selector("#go:not([disabled])", timeout=10_000)
    page.click("#go")
    page.wait_for_selector("#done:not([hidden])", timeout=10_000)
    return page, page.get_attribute("#done", "data-kid")


def test_a_principal_enrols_a_browser_whose_key_never_leaves_it(browser, srv):
    size = srv.size()
    page, kid = enrol(browser, invite(srv))
    assert "Enrolled" in page.text_content("#status")
    bound = srv.log.state().key(kid)
    assert bound is not None and bound.principal == "carol@corp"
    assert srv.size() == size + 1  # one key entry, signed by the operator
    assert page.url.endswith("/enroll")  # the invitation left the address bar

    # The page's own key: not extractable, and the bound key is the one it signs with.
    found = page.evaluate(
        """async (kid) => {
            const db = await new Promise((ok, no) => {
                const r = indexedDB.open("lineage", 1);
                r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error);
            });
            const rec = await new Promise((ok, no) => {
                const r = db.transaction("keys").objectStore("keys").get(kid);
                r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error);
            });
            let exported = "exported";
            try { await crypto.subtle.exportKey("pkcs8", rec.pair.privateKey); }
            catch (e) { exported = e.name; }
            let jwk = "exported";
            try { await crypto.subtle.exportKey("jwk", rec.pair.privateKey); }
            catch (e) { jwk = e.name; }
            const msg = new TextEncoder().encode("signed in the browser");
            const sig = new Uint8Array(
                await crypto.subtle.sign({name: "Ed25519"}, rec.pair.privateKey, msg));
            return {extractable: rec.pair.privateKey.extractable, exported, jwk,
                    principal: rec.principal, sig: Array.from(sig)};
        }""",
        kid,
    )
    assert found["extractable"] is False
    assert found["exported"] == "InvalidAccessError" and found["jwk"] == "InvalidAccessError"
    assert found["principal"] == "carol@corp"
    assert bound.key.verify(b"", b"signed in the browser", bytes(found["sig"]))
    page.close()


def test_a_principal_may_enrol_several_browsers(browser, srv):
    _, first = enrol(browser, invite(srv))
    context = browser.new_context()  # another browser profile: its own IndexedDB
    try:
        _, second = enrol(context, invite(srv))
    finally:
        context.close()
    assert first != second
    keys = {k.key.kid for k in srv.log.state().principal_keys("carol@corp")}
    assert {first, second} <= keys


def test_a_used_or_expired_link_enrols_nothing(browser, srv):
    link = invite(srv)
    enrol(browser, link)
    size = srv.size()
    page = browser.new_page()
    page.goto(link)
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "used already" in page.text_content("#status")
    expired = invite(srv, ttl=1)
    time.sleep(1.2)
    page.goto("about:blank")
    page.goto(expired)
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "expired" in page.text_content("#status")
    assert page.is_disabled("#go")
    assert srv.size() == size
    page.close()


def test_the_page_is_locked_down(srv):
    r = httpx.get(srv.base + "/enroll", timeout=10)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
    assert '<script src="/static/enroll.js"' in r.text and "http" not in r.text.split("<body>")[1]
    for name in ("common.js", "enroll.js", "consent.js"):
        js = httpx.get(srv.base + "/static/" + name, timeout=10)
        assert js.headers["content-type"].startswith("text/javascript")
        assert "://" not in js.text  # no other host is ever contacted
    common = httpx.get(srv.base + "/static/common.js", timeout=10).text
    assert "fetch(path" in common and 'credentials: "omit"' in common


def test_enrolment_from_another_site_or_with_a_borrowed_key_is_refused(srv):
    from lineage.verifier.keys import SigningKey

    link = invite(srv)
    token = link.split("#invite=")[1]
    key, other = SigningKey.generate(), SigningKey.generate()
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    message = b"lineage-enrol-v1\n" + token.encode() + b"\n" + key.public.b64.encode()
    body = {"invite": token, "public_key": key.public.b64, "proof": b64(key.sign(b"", message))}
    size = srv.size()
    cross = httpx.post(
        srv.base + "/v1/enroll", json=body, headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert cross.status_code == 403
    borrowed = {**body, "proof": b64(other.sign(b"", message))}  # someone else's key
    assert httpx.post(srv.base + "/v1/enroll", json=borrowed, timeout=10).status_code == 403
    assert srv.size() == size
    ok = httpx.post(srv.base + "/v1/enroll", json=body, timeout=10)
    assert ok.status_code == 201, ok.text
    assert PublicKey.from_b64(key.public.b64).kid == ok.json()["kid"]
    again = httpx.post(srv.base + "/v1/enroll", json=body, timeout=10)
    assert again.status_code == 403 and "used already" in again.json()["detail"]
    unknown = {**body, "invite": "inv_000000000000_" + "0" * 43}
    assert httpx.post(srv.base + "/v1/enroll", json=unknown, timeout=10).status_code == 404
