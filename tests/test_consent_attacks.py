"""Hostile requests against a live service: browser enrolment (docs/CONSENT.md §1-4) and
OAuth consent in the browser (§5, docs/API.md, FORMAT.md §4.4).

Each test names the promise it guards and tries to break it: over httpx against a real
uvicorn (tests/api_server.py ``running``), with a real headless chromium only where the
attack needs a browser (script injection into the rendered pages). The principal's key is
alice's fixed key from ``running``: the consent flow is driven as the page would drive it
(prepare, sign those bytes, approve), so the attacker can sign whatever it likes with a
key it holds, and only the service's checks stand in the way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from lineage.client.dpop import make_proof
from lineage.ledger.authz import AuthzStore
from lineage.ledger.config import Settings
from lineage.ledger.invites import InviteStore
from lineage.verifier.entry import sign_entry
from lineage.verifier.keys import ENTRY_CONTEXT, SigningKey

from .api_server import MAIL, running
from .gateway_harness import serve_app
from .test_browser_enrol import browser  # noqa: F401  (the chromium fixture)

REDIRECT = "https://client.example/cb"
SCOPE = [
    {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": ["mailbox:alice/inbox/*"],
    }
]
EVIL = "https://evil.example"
T = 10  # seconds, every request


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def no_5xx(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:300]
    return r


# --- fixtures and builders ---------------------------------------------------------------


@pytest.fixture
def srv(tmp_path):
    with running(tmp_path) as s:
        yield s


@pytest.fixture
def client_id(srv) -> str:
    r = httpx.post(
        srv.url("/oauth/register"),
        json={"redirect_uris": [REDIRECT], "client_name": "Triage Bot"},
        timeout=T,
    )
    assert r.status_code == 201, r.text
    return r.json()["client_id"]


def challenge(verifier: str) -> str:
    return b64u(hashlib.sha256(verifier.encode()).digest())


def auth_params(client_id: str, agent: SigningKey, verifier: str, **over: Any) -> dict:
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "st-" + secrets.token_urlsafe(6),
        "code_challenge": challenge(verifier),
        "code_challenge_method": "S256",
        "authorization_details": json.dumps(SCOPE),
        "holder_key": agent.public.b64,
        "task": "inbox-triage",
        "task_description": "Sort alice's inbox",
        "expires_in": "600",
    }
    params.update(over)
    return {k: v for k, v in params.items() if v is not None}


def authorize(srv, params: dict) -> httpx.Response:
    return no_5xx(
        httpx.get(srv.url("/oauth/authorize"), params=params, timeout=T, follow_redirects=False)
    )


def pending_of(r: httpx.Response) -> tuple[str, str]:
    """The consent page's request id and CSRF token."""
    assert r.status_code == 200, (r.status_code, r.headers.get("location"), r.text[:300])
    m = re.search(r'data-request="([^"]+)" data-csrf="([^"]+)"', r.text)
    assert m, r.text[:300]
    return m.group(1), m.group(2)


def post(srv, path: str, body: Any, **headers: str) -> httpx.Response:
    return no_5xx(httpx.post(srv.url(path), json=body, headers=headers, timeout=T))


def prepare(srv, req: str, csrf: str, kid: str) -> httpx.Response:
    return post(srv, "/oauth/authorize/prepare", {"request": req, "csrf": csrf, "kid": kid})


def approve_raw(srv, req: str, csrf: str, kid: str, sig: bytes) -> httpx.Response:
    body = {"request": req, "csrf": csrf, "kid": kid, "sig": b64u(sig)}
    return post(srv, "/oauth/authorize/approve", body)


def approve(srv, req: str, csrf: str, key: SigningKey) -> httpx.Response:
    """What the page does: prepare, sign those exact bytes with the key, approve."""
    p = prepare(srv, req, csrf, key.public.kid)
    assert p.status_code == 200, p.text
    sig = key._key.sign(unb64u(p.json()["signing_input"])).signature
    return approve_raw(srv, req, csrf, key.public.kid, sig)


def deny(srv, req: str, csrf: str) -> httpx.Response:
    return post(srv, "/oauth/authorize/deny", {"request": req, "csrf": csrf})


def query_of(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


def approved_code(srv, client_id: str, agent: SigningKey, verifier: str, **over) -> str:
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, verifier, **over)))
    a = approve(srv, req, csrf, srv.alice)
    assert a.status_code == 200 and "grant" in a.json(), a.text
    return query_of(a.json()["redirect"])["code"][0]


def token(srv, agent, code, client_id, verifier, redirect=REDIRECT, proof=None, drop=()):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    proof = proof or make_proof(agent.seed, "POST", srv.url("/oauth/token"))
    return no_5xx(
        httpx.post(
            srv.url("/oauth/token"),
            data={k: v for k, v in data.items() if v is not None and k not in drop},
            headers={"DPoP": proof},
            timeout=T,
        )
    )


def enrol_body(invite: str, key: SigningKey, **over) -> dict[str, str]:
    message = b"lineage-enrol-v1\n" + invite.encode() + b"\n" + key.public.b64.encode()
    body = {"invite": invite, "public_key": key.public.b64, "proof": b64u(key.sign(b"", message))}
    body.update(over)
    return body


def new_invite(srv, name: str = "bob@corp", roles=("finance",), ttl: int = 900) -> str:
    return InviteStore(srv.log.store).create(name, roles, ttl)[1]


def bound_to(srv, kid: str) -> str | None:
    rec = srv.log.state().key(kid)
    return None if rec is None else rec.principal


@contextmanager
def tcp_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A raw TCP port that records every connection's first bytes (HTTP or TLS alike)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    seen: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                seen.append(conn.recv(4096))
            except OSError:
                seen.append(b"")
            finally:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(2)
        sock.close()


# --- 1. enrolment ------------------------------------------------------------------------


def test_enrol_one_link_redeemed_concurrently_binds_at_most_one_key(srv):
    invite = new_invite(srv)
    keys = [SigningKey.generate() for _ in range(8)]
    size = srv.size()
    barrier = threading.Barrier(len(keys))

    def go(key):
        barrier.wait()
        return httpx.post(srv.url("/v1/enroll"), json=enrol_body(invite, key), timeout=T)

    with ThreadPoolExecutor(len(keys)) as pool:
        answers = list(pool.map(go, keys))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1, codes
    assert all(c == 403 for c in codes if c != 201), codes
    assert srv.size() == size + 1
    assert sum(bound_to(srv, k.public.kid) == "bob@corp" for k in keys) == 1


def test_enrol_proof_over_another_message_invite_or_key_binds_nothing(srv):
    invite, other_invite = new_invite(srv), new_invite(srv)
    key, other = SigningKey.generate(), SigningKey.generate()
    msg = b"lineage-enrol-v1\n" + invite.encode() + b"\n" + key.public.b64.encode()
    forged = [
        b64u(key.sign(b"", msg.replace(b"v1", b"v2"))),  # another context
        b64u(key.sign(b"", b"lineage-enrol-v1\n" + other_invite.encode() + msg[-44:])),
        b64u(key.sign(b"", msg[:-43] + other.public.b64.encode())),  # over another key
        b64u(other.sign(b"", msg)),  # by another key
        b64u(key.sign(b"", msg + b"\n")),
        b64u(key.sign(ENTRY_CONTEXT, msg)),  # an entry signature is not a proof
        "A" * 86,
    ]
    size = srv.size()
    for proof in forged:
        r = post(srv, "/v1/enroll", enrol_body(invite, key, proof=proof))
        assert r.status_code in (400, 403), (proof, r.text)
    assert srv.size() == size and bound_to(srv, key.public.kid) is None
    # A failed proof spends nothing: the real one still enrols.
    assert post(srv, "/v1/enroll", enrol_body(invite, key)).status_code == 201


@pytest.mark.parametrize(
    "raw",
    [
        bytes(32),  # all zero: a point of small order
        b"\x01" + bytes(31),  # the identity
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # -1
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        b"\xff" * 32,  # not on the curve
    ],
)
def test_enrol_refuses_small_order_or_invalid_public_keys(srv, raw):
    invite = new_invite(srv)
    size = srv.size()
    pk = b64u(raw)
    message = b"lineage-enrol-v1\n" + invite.encode() + b"\n" + pk.encode()
    assert message  # a forger's "proof" for such a key: R = identity, S = 0
    proof = b64u(b"\x01" + bytes(31) + bytes(32))
    r = post(srv, "/v1/enroll", {"invite": invite, "public_key": pk, "proof": proof})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert srv.size() == size


def test_an_invite_binds_a_key_only_to_its_own_principal(srv):
    invite = new_invite(srv, "bob@corp")
    key = SigningKey.generate()
    # No way to name another principal in the body.
    r = post(srv, "/v1/enroll", {**enrol_body(invite, key), "principal": "alice@corp"})
    assert r.status_code == 400
    r = post(srv, "/v1/enroll", {**enrol_body(invite, key), "roles": ["operator"]})
    assert r.status_code == 400
    ok = post(srv, "/v1/enroll", enrol_body(invite, key))
    assert ok.status_code == 201 and ok.json()["principal"] == "bob@corp"
    assert bound_to(srv, key.public.kid) == "bob@corp"
    assert key.public.kid not in {k.key.kid for k in srv.log.state().principal_keys("alice@corp")}
    assert srv.log.state().key(key.public.kid).roles == ("finance",)


def test_malformed_or_huge_invites_are_refused_without_a_server_error(srv):
    real = new_invite(srv)
    size = srv.size()
    for bad in (
        "x" * 200_000,
        "inv_" + "a" * 12 + "_" + "b" * 42,
        "inv_" + "a" * 11 + "_" + "b" * 43,
        "inv_\u00e9" * 20,
        "inv_aaaaaaaaaaaa_" + "%2e" * 15,
        "",
        None,
        7,
        ["inv_"],
        {"$ne": None},
        real[:-1],
        real.upper(),
    ):
        for path in ("/v1/enroll/preview", "/v1/enroll"):
            body = {"invite": bad}
            if path == "/v1/enroll":
                body = {**enrol_body(real, SigningKey.generate()), "invite": bad}
            r = post(srv, path, body)
            assert r.status_code in (400, 404), (path, str(bad)[:40], r.text)
    assert srv.size() == size
    assert post(srv, "/v1/enroll/preview", {"invite": real}).status_code == 200


def test_an_invite_inside_other_text_is_a_malformed_body_400(srv):
    """CONSENT.md §3: the body's ``invite`` is ``inv_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43}``,
    else 400 invalid_request, checked before the lookup (404)."""
    real = new_invite(srv)
    for bad in (real + "\n", " " + real, real + "junk", "x" * 1000 + real):
        r = post(srv, "/v1/enroll/preview", {"invite": bad})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", (bad, r.text)


def test_preview_of_an_unknown_invite_leaks_nothing(srv):
    real = new_invite(srv, "secret-person@corp", ("payroll",))
    invite_id = real.split("_")[1]
    unknown_id = "inv_" + "Z" * 12 + "_" + real.split("_", 2)[2]
    wrong_secret = "inv_" + invite_id + "_" + "A" * 43
    answers = [post(srv, "/v1/enroll/preview", {"invite": x}) for x in (unknown_id, wrong_secret)]
    for r in answers:
        assert r.status_code == 404, r.text
        assert "secret-person" not in r.text and "payroll" not in r.text
        assert invite_id not in r.text
    # The same answer whether the id exists or not: nothing to enumerate ids with.
    assert answers[0].json() == answers[1].json()


def test_enrolling_a_key_bound_to_another_principal_is_refused_and_spends_nothing(srv):
    invite = new_invite(srv, "bob@corp")
    size = srv.size()
    r = post(srv, "/v1/enroll", enrol_body(invite, srv.alice))  # alice's bound key
    assert 400 <= r.status_code < 500, r.text
    assert srv.size() == size and bound_to(srv, srv.alice.public.kid) == "alice@corp"
    # The refused binding released its claim: the invitation still works once.
    assert post(srv, "/v1/enroll/preview", {"invite": invite}).status_code == 200
    assert post(srv, "/v1/enroll", enrol_body(invite, SigningKey.generate())).status_code == 201


XSS_NAME = '<img src=x onerror="window.__pwned=1">'
XSS_ROLE = "<img src=x onerror=alert(1)><script>window.__pwned=2</script>"


def test_enrol_page_renders_a_hostile_principal_and_roles_as_text(srv, browser):  # noqa: F811
    invite = new_invite(srv, XSS_NAME, (XSS_ROLE,))
    context = browser.new_context()
    try:
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{srv.base}/enroll#invite={invite}")
        shown = "document.getElementById('who').textContent !== '\u2026'"
        page.wait_for_function(shown, timeout=10_000)
        assert page.text_content("#who") == XSS_NAME
        assert page.text_content("#roles") == XSS_ROLE
        assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None and dialogs == []
    finally:
        context.close()
    # Nor can such a name be bound: the ledger's format refuses it.
    r = post(srv, "/v1/enroll", enrol_body(invite, SigningKey.generate()))
    assert r.status_code == 400, r.text


# --- 4. cross-origin ---------------------------------------------------------------------


def test_every_post_from_another_origin_is_refused(srv, client_id):
    invite = new_invite(srv)
    agent = SigningKey.generate()
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    kid = srv.alice.public.kid
    size = srv.size()
    bodies = {
        "/v1/enroll/preview": {"invite": invite},
        "/v1/enroll": enrol_body(invite, SigningKey.generate()),
        "/oauth/authorize/prepare": {"request": req, "csrf": csrf, "kid": kid},
        "/oauth/authorize/approve": {"request": req, "csrf": csrf, "kid": kid, "sig": "A" * 86},
        "/oauth/authorize/deny": {"request": req, "csrf": csrf},
    }
    origins = (
        EVIL,
        "null",
        srv.base + ".evil.example",
        srv.base.replace("127.0.0.1", "localhost"),
        srv.base + "/",
        srv.base.replace("http:", "https:"),
        srv.base.rsplit(":", 1)[0] + ":1",
        srv.base + " " + EVIL,
    )
    for path, body in bodies.items():
        for origin in origins:
            r = post(srv, path, body, Origin=origin)
            assert r.status_code == 403, (path, origin, r.text)
            assert r.json()["error"] == "access_denied"
    assert srv.size() == size
    # Nothing was spent: the same requests from the service's own origin still work.
    assert post(srv, "/v1/enroll/preview", {"invite": invite}, Origin=srv.base).status_code == 200
    assert deny(srv, req, csrf).status_code == 200


def test_a_foreign_origin_is_refused_even_when_the_host_header_names_it(srv):
    """DNS rebinding: a page at http://rebound.example:PORT whose name now resolves to
    127.0.0.1 sends ``Origin`` and ``Host`` both naming rebound.example. That is another
    site's origin (CONSENT.md §3, §4: "a foreign Origin is refused"), yet without
    ``public_url`` the service takes its own origin from the Host header and accepts it."""
    invite = new_invite(srv)
    port = srv.base.rsplit(":", 1)[1]
    foreign = f"rebound.example:{port}"
    r = no_5xx(
        httpx.post(
            srv.url("/v1/enroll/preview"),
            json={"invite": invite},
            headers={"Origin": f"http://{foreign}", "Host": foreign},
            timeout=T,
        )
    )
    assert r.status_code == 403, (r.status_code, r.text)


# --- 2. consent: redirect URIs -------------------------------------------------------------


def test_registration_refuses_redirect_uris_that_are_not_https_or_loopback(srv):
    for uri in (
        "javascript:alert(1)",
        "JavaScript://%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "http://evil.example/cb",
        "http://127.0.0.1.evil.example/cb",
        "http://localhost.evil.example/cb",
        "https://client.example/cb#frag",
        "/relative/cb",
        "https:///cb",
        "vbscript:msgbox(1)",
        "https://" + "a" * 600 + ".example/cb",
        "",
    ):
        r = post(srv, "/oauth/register", {"redirect_uris": [uri]})
        assert r.status_code == 400, (uri, r.text)
        # One bad URI among good ones refuses the whole registration.
        r = post(srv, "/oauth/register", {"redirect_uris": [REDIRECT, uri]})
        assert r.status_code == 400, (uri, r.text)
    for bad in ({"redirect_uris": []}, {"redirect_uris": "https://a.example/cb"}, {}, []):
        assert post(srv, "/oauth/register", bad).status_code == 400
    for method in ("client_secret_basic", "private_key_jwt"):
        r = post(
            srv,
            "/oauth/register",
            {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": method},
        )
        assert r.status_code == 400


def test_authorize_never_redirects_to_a_uri_the_client_did_not_register(srv, client_id):
    agent = SigningKey.generate()
    for uri in (
        REDIRECT + "/",
        REDIRECT + "x",
        REDIRECT + "?next=https://evil.example",
        REDIRECT + "#",
        REDIRECT.upper(),
        "HTTPS://client.example/cb",
        "https://client.example/CB",
        "https://client.example./cb",
        "https://client.example:443/cb",
        "https://client.example/cb/../cb",
        "https://client.example/%63b",
        "https://evil.example/cb",
        "https://client.example.evil.example/cb",
        "https://client.example@evil.example/cb",
        "https://evil.example\\@client.example/cb",
        "//evil.example/cb",
        "javascript:alert(1)//https://client.example/cb",
        " " + REDIRECT,
        REDIRECT + "\x00",
        "",
    ):
        # Even with every other parameter wrong, the redirect URI is checked first.
        for over in ({}, {"response_type": "token"}, {"code_challenge": None}):
            r = authorize(srv, auth_params(client_id, agent, "v" * 43, redirect_uri=uri, **over))
            assert r.status_code == 400 and "location" not in r.headers, (uri, r.headers)
            assert r.headers["x-frame-options"] == "DENY"
    r = authorize(srv, auth_params(client_id, agent, "v" * 43, redirect_uri=None))
    assert r.status_code == 400 and "location" not in r.headers
    for cid in ("", "lc_" + "x" * 24, client_id + "x", client_id.upper(), "x" * 5000):
        r = authorize(srv, auth_params(cid, agent, "v" * 43))
        assert r.status_code == 400 and "location" not in r.headers


def _assert_back_with(srv, r: httpx.Response, params: dict, error: str | None) -> dict:
    assert r.status_code in (200, 302, 303), (r.status_code, r.text[:300])
    location = r.headers["location"] if r.status_code != 200 else r.json()["redirect"]
    assert location.startswith(REDIRECT + "?"), location
    got = query_of(location)
    assert got.get("state") == [params["state"]], got
    assert got.get("iss") == [srv.base], got
    if error is not None:
        assert got.get("error") == [error] and "code" not in got, got
    return got


def test_every_redirect_back_to_the_client_carries_state_and_iss(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    for over, error in (
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "unsupported_response_type"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"holder_key": "A" * 43}, "invalid_request"),
        ({"holder_key": None}, "invalid_request"),
        ({"authorization_details": "[]"}, "invalid_request"),
        ({"authorization_details": "{"}, "invalid_request"),
        ({"authorization_details": None}, "invalid_request"),
        ({"task": None}, "invalid_request"),
        ({"resource": "https://evil.example"}, "invalid_target"),
        ({"state": "a&b=c#d\r\nX: y"}, "unsupported_response_type"),
    ):
        params = auth_params(client_id, agent, verifier, **over)
        if "state" in over:
            params["response_type"] = "token"
        _assert_back_with(srv, authorize(srv, params), params, error)
    params = auth_params(client_id, agent, verifier)
    req, csrf = pending_of(authorize(srv, params))
    _assert_back_with(srv, deny(srv, req, csrf), params, "access_denied")
    params = auth_params(client_id, agent, verifier)
    req, csrf = pending_of(authorize(srv, params))
    got = _assert_back_with(srv, approve(srv, req, csrf, srv.alice), params, None)
    assert len(got["code"]) == 1
    # A redirect URI with a query of its own keeps it, and gets the answer appended.
    cid = post(srv, "/oauth/register", {"redirect_uris": [REDIRECT + "?tenant=a"]}).json()
    params = auth_params(cid["client_id"], agent, verifier, redirect_uri=REDIRECT + "?tenant=a")
    params["response_type"] = "token"
    r = authorize(srv, params)
    assert r.headers["location"].startswith(REDIRECT + "?tenant=a&")


# --- 2. consent: the page --------------------------------------------------------------------

PAYLOADS = {
    "client_name": "<img src=x onerror=\"window.__pwned='client'\">",
    "task_description": '"><svg onload="window.__pwned=\'desc\'"></svg>',
    "resource": "mailbox:alice/'&lt&quot&amp(x)",  # as much markup as a resource may hold
    "sender": "</code><script>window.__pwned='constraint'</script>",
}


def _hostile_request(srv) -> tuple[str, dict]:
    cid = post(
        srv,
        "/oauth/register",
        {"redirect_uris": [REDIRECT], "client_name": PAYLOADS["client_name"]},
    ).json()["client_id"]
    scope = [
        {
            **SCOPE[0],
            "resources": [PAYLOADS["resource"]],
            "constraints": {"sender": {"in": [PAYLOADS["sender"]]}},
        }
    ]
    params = auth_params(
        cid,
        SigningKey.generate(),
        "v" * 43,
        task="inbox-triage",  # a task id cannot hold markup: the format refuses it (below)
        task_description=PAYLOADS["task_description"],
        authorization_details=json.dumps(scope),
    )
    return cid, params


def test_consent_page_escapes_every_value_a_client_chooses(srv):
    _, params = _hostile_request(srv)
    r = authorize(srv, params)
    assert r.status_code == 200, r.headers.get("location")
    body = r.text
    for payload in PAYLOADS.values():
        assert payload not in body
    assert "<img" not in body and "<svg" not in body and "</code><script" not in body
    tags = re.findall(r"<script[^>]*>", body)
    assert tags and all(re.fullmatch(r'<script src="/static/[a-z]+\.js" defer>', t) for t in tags)
    assert "&lt;img src=x onerror=" in body
    assert "&#x27;&amp;lt&amp;quot&amp;amp(x)" in body  # the resource, escaped once
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}


def test_consent_page_runs_no_injected_script_in_a_browser(srv, browser):  # noqa: F811
    _, params = _hostile_request(srv)
    context = browser.new_context()
    try:
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(srv.url("/oauth/authorize?" + urlencode(params)))
        page.wait_for_selector("#signer", timeout=10_000)
        page.wait_for_timeout(300)
        text = page.text_content("main")
        assert PAYLOADS["client_name"] in page.text_content("h1")
        for name in ("task_description", "resource"):
            assert PAYLOADS[name] in text, name
        assert PAYLOADS["sender"] in text
        assert page.evaluate("document.querySelectorAll('main img, main svg').length") == 0
        assert page.evaluate("window.__pwned") is None and dialogs == []
        # The CSP refuses inline script even if some markup got through.
        blocked = page.evaluate(
            """() => { const s = document.createElement('script');
                s.textContent = 'window.__pwned = "inline"';
                document.body.appendChild(s); return window.__pwned === undefined; }"""
        )
        assert blocked
    finally:
        context.close()


def test_consent_and_error_pages_cannot_be_framed(srv, client_id):
    agent = SigningKey.generate()
    for r in (
        authorize(srv, auth_params(client_id, agent, "v" * 43)),
        authorize(srv, auth_params("nobody", agent, "v" * 43)),
        no_5xx(httpx.get(srv.url("/enroll"), timeout=T)),
    ):
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "default-src 'none'" in csp


# --- 2. consent: answering -------------------------------------------------------------------


def test_a_consent_is_answered_once(srv, client_id):
    agent = SigningKey.generate()
    size = srv.size()
    # approve, then deny, then approve again
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    assert approve(srv, req, csrf, srv.alice).status_code == 200
    assert srv.size() == size + 1
    assert deny(srv, req, csrf).status_code == 400
    assert prepare(srv, req, csrf, srv.alice.public.kid).status_code == 400
    p = srv.alice._key.sign(b"anything").signature
    assert approve_raw(srv, req, csrf, srv.alice.public.kid, p).status_code == 400
    # deny, then approve
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    prepared = prepare(srv, req, csrf, srv.alice.public.kid).json()
    assert deny(srv, req, csrf).status_code == 200
    sig = srv.alice._key.sign(unb64u(prepared["signing_input"])).signature
    assert approve_raw(srv, req, csrf, srv.alice.public.kid, sig).status_code == 400
    assert deny(srv, req, csrf).status_code == 400
    assert srv.size() == size + 1


def test_concurrent_approvals_of_one_consent_append_one_grant(srv, client_id):
    agent = SigningKey.generate()
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    prepared = prepare(srv, req, csrf, srv.alice.public.kid).json()
    sig = srv.alice._key.sign(unb64u(prepared["signing_input"])).signature
    size = srv.size()
    n = 8
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        if i % 2:
            return deny(srv, req, csrf)
        return approve_raw(srv, req, csrf, srv.alice.public.kid, sig)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(go, range(n)))
    assert sum(r.status_code == 200 for r in answers) == 1, [r.status_code for r in answers]
    assert srv.size() <= size + 1
    codes = [query_of(r.json()["redirect"]).get("code") for r in answers if r.status_code == 200]
    assert len([c for c in codes if c]) <= 1


def test_the_csrf_token_of_another_consent_is_refused(srv, client_id):
    agent = SigningKey.generate()
    req_a, csrf_a = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    req_b, csrf_b = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    kid = srv.alice.public.kid
    for csrf in (csrf_b, None, "", csrf_a[:-1], csrf_a + "A", csrf_a.upper(), "x" * 64):
        body = {"request": req_a, "kid": kid}
        if csrf is not None:
            body["csrf"] = csrf
        assert post(srv, "/oauth/authorize/prepare", body).status_code in (400, 403)
        d = post(srv, "/oauth/authorize/deny", {k: v for k, v in body.items() if k != "kid"})
        assert d.status_code in (400, 403)
        r = post(srv, "/oauth/authorize/approve", {**body, "sig": "A" * 86})
        assert r.status_code in (400, 403)
    size = srv.size()
    # None of those answered request A: its own token still can.
    assert approve(srv, req_a, csrf_a, srv.alice).status_code == 200
    assert deny(srv, req_b, csrf_b).status_code == 200
    assert srv.size() == size + 1


def test_prepare_and_approve_refuse_a_key_that_is_not_an_active_principals(srv, client_id):
    agent = SigningKey.generate()
    bob = SigningKey.generate()
    assert post(srv, "/v1/enroll", enrol_body(new_invite(srv, "bob@corp"), bob)).status_code == 201
    retired = SigningKey.generate()
    assert (
        post(srv, "/v1/enroll", enrol_body(new_invite(srv, "alice@corp"), retired)).status_code
        == 201
    )
    body = {"kind": "key", "v": 1, "log": srv.log.origin, "op": "retire", "key": retired.public.b64}
    srv.log.append(sign_entry(body, [srv.log.keys.operator]))
    operator = srv.log.keys.operator
    size = srv.size()
    for key in (operator, retired, SigningKey.generate(), agent):
        req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
        r = prepare(srv, req, csrf, key.public.kid)
        assert r.status_code == 403, r.text
        sig = key._key.sign(b"anything").signature
        assert approve_raw(srv, req, csrf, key.public.kid, sig).status_code == 403
    # Bob's kid with alice's signature: prepared for bob, signed by someone else.
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    p = prepare(srv, req, csrf, bob.public.kid)
    assert p.status_code == 200 and p.json()["principal"] == "bob@corp"
    sig = srv.alice._key.sign(unb64u(p.json()["signing_input"])).signature
    no_code(approve_raw(srv, req, csrf, bob.public.kid, sig))
    # Alice's signature over a grant that names alice, claimed as bob's key.
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    p = prepare(srv, req, csrf, srv.alice.public.kid)
    sig = srv.alice._key.sign(unb64u(p.json()["signing_input"])).signature
    no_code(approve_raw(srv, req, csrf, bob.public.kid, sig))
    assert srv.size() == size


def no_code(r: httpx.Response) -> None:
    """An approval that must not succeed: refused outright, or sent back without a code."""
    if r.status_code == 200:
        got = query_of(r.json()["redirect"])
        assert "code" not in got and got["error"] == ["access_denied"], got
        assert "grant" not in r.json()
    else:
        assert r.status_code in (400, 403), r.text


def test_a_signature_over_other_bytes_appends_nothing(srv, client_id):
    agent = SigningKey.generate()
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    p = prepare(srv, req, csrf, srv.alice.public.kid).json()
    signed = json.loads(unb64u(p["signing_input"])[len(ENTRY_CONTEXT) :])
    size = srv.size()
    wider = {**signed, "scope": [{**SCOPE[0], "actions": ["read", "send", "delete"]}]}
    longer = {**signed, "expires_at": signed["expires_at"] + 3000}
    other_holder = {**signed, "holder": SigningKey.generate().public.b64}
    for body in (wider, longer, other_holder):
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        sig = srv.alice._key.sign(ENTRY_CONTEXT + raw).signature
        no_code(approve_raw(srv, req, csrf, srv.alice.public.kid, sig))
        assert srv.size() == size
    # Wrong bytes, even unparseable ones, never append.
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    no_code(approve_raw(srv, req, csrf, srv.alice.public.kid, bytes(64)))
    assert srv.size() == size


def test_an_expired_consent_cannot_be_answered(srv, client_id, monkeypatch):
    agent = SigningKey.generate()
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, "v" * 43)))
    prepared = prepare(srv, req, csrf, srv.alice.public.kid).json()
    sig = srv.alice._key.sign(unb64u(prepared["signing_input"])).signature
    later = lambda: time.time() + 601  # noqa: E731  (the pending request lives 600 s)
    monkeypatch.setattr(AuthzStore.__init__, "__defaults__", (later,))
    size = srv.size()
    r = approve_raw(srv, req, csrf, srv.alice.public.kid, sig)
    assert r.status_code == 400 and "expired" in r.text, r.text
    assert deny(srv, req, csrf).status_code == 400
    assert srv.size() == size


def test_absurd_limits_are_refused_before_the_person_is_asked_to_sign(srv, client_id):
    """CONSENT.md §5.2: an invalid request goes back to the redirect URI as
    ``invalid_request`` with state and iss. These values can never make a valid grant
    (FORMAT.md §6), yet the service shows the consent page and prepares bytes to sign; the
    person's approval then dead-ends in a 400 and the client never hears back."""
    agent = SigningKey.generate()
    refused = []
    for over in (
        {"max_depth": "-1"},
        {"max_uses": "0"},
        {"max_uses": "-5"},
        {"expires_in": str(10**20)},
        {"max_depth": "9" * 30},
        {"task": "../../etc"},
        {"task": "t" * 300},
        {"task_description": "Pay \u202eusd 01\u202c now"},
    ):
        params = auth_params(client_id, agent, "v" * 43, **over)
        r = authorize(srv, params)
        if r.status_code == 200:
            req, csrf = pending_of(r)
            p = prepare(srv, req, csrf, srv.alice.public.kid)
            answer = p.status_code
            if p.status_code == 200:
                sig = srv.alice._key.sign(unb64u(p.json()["signing_input"])).signature
                answer = approve_raw(srv, req, csrf, srv.alice.public.kid, sig).status_code
            refused.append((over, f"consent page shown; then {answer}"))
            continue
        got = _assert_back_with(srv, r, params, "invalid_request")
        assert got
    assert not refused, refused


def test_authorize_query_errors_go_back_to_the_client(srv, client_id):
    """CONSENT.md §5.2: once the client and redirect URI are known, every other error goes
    back to the redirect URI with error, state and iss, never a bare JSON 400."""
    agent = SigningKey.generate()
    bad = []
    for over in (
        {"expires_in": "soon"},
        {"max_uses": "1.5"},
        {"max_depth": "x"},
        {"task_description": "d" * 2000},
        {"task": "<script>window.__pwned='task'</script>"},  # not a task id: refused
    ):
        params = auth_params(client_id, agent, "v" * 43, **over)
        r = authorize(srv, params)
        if r.status_code != 302:
            bad.append((list(over), r.status_code, r.headers.get("content-type")))
    assert not bad, bad


def test_holder_key_must_be_a_valid_ed25519_key(srv, client_id):
    for key in (
        b64u(bytes(32)),
        b64u(b"\x01" + bytes(31)),
        b64u(b"\xff" * 32),
        "A" * 42,
        "A" * 44,
        "!" * 43,
        "\u00e9" * 43,
        "",
    ):
        params = auth_params(client_id, SigningKey.generate(), "v" * 43, holder_key=key or None)
        _assert_back_with(srv, authorize(srv, params), params, "invalid_request")


def test_huge_or_deep_authorization_details_get_a_clean_answer(srv, client_id):
    agent = SigningKey.generate()
    wide = json.dumps([{**SCOPE[0], "resources": [f"mailbox:alice/{i}" for i in range(900)]}])
    assert 15_000 < len(wide) < 70_000
    r = authorize(srv, auth_params(client_id, agent, "v" * 43, authorization_details=wide))
    assert r.status_code in (200, 302), r.status_code
    for details in ("[" * 3000 + "]" * 3000, '[{"a":' * 2000 + "1" + "}]" * 2000):
        params = auth_params(client_id, agent, "v" * 43, authorization_details=details)
        r = httpx.get(srv.url("/oauth/authorize"), params=params, timeout=T)
        assert r.status_code < 500, (details[:20], r.status_code, r.text[:200])


def test_a_client_name_is_either_refused_or_shown_and_signed_as_it_is(srv):
    """The page names the client, and the grant's ``agent`` label is that name; FORMAT.md
    §4.4 keeps the label printable ASCII so that it "cannot pass for another label". Yet
    registration accepts any name: one with U+202E is shown raw on the consent page
    ("Bot\u202elaicnaniF kcaB" reads "Bot Back Financial"), and any non-ASCII name
    ("B\u00fccher Bot") gets a consent page whose approval the ledger always refuses (400,
    nothing sent back to the client). Refuse such names at registration, or render and
    sign them safely."""
    wrong = []
    for name in ("Bot\u202elaicnaniF kcaB", "B\u00fccher Bot", "Bot\u200b", "Bot\x1b[2J"):
        r = post(srv, "/oauth/register", {"redirect_uris": [REDIRECT], "client_name": name})
        if r.status_code == 400:
            continue  # refused at registration: fine
        assert r.status_code == 201, r.text
        params = auth_params(r.json()["client_id"], SigningKey.generate(), "v" * 43)
        page = authorize(srv, params)
        if any(c in page.text for c in "\u202e\u200b\x1b"):
            wrong.append((name, "shown raw on the consent page"))
        req, csrf = pending_of(page)
        a = approve(srv, req, csrf, srv.alice)
        if a.status_code != 200 or "code" not in query_of(a.json()["redirect"]):
            wrong.append((name, f"approval dead-ends: {a.status_code} {a.text[:80]}"))
    assert not wrong, wrong


# --- 3. token -------------------------------------------------------------------------------


def test_a_code_is_good_once_even_under_concurrent_redemption(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    code = approved_code(srv, client_id, agent, verifier)
    n = 8
    proofs = [make_proof(agent.seed, "POST", srv.url("/oauth/token")) for _ in range(n)]
    barrier = threading.Barrier(n)

    def go(proof):
        barrier.wait()
        return token(srv, agent, code, client_id, verifier, proof=proof)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(go, proofs))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 1, codes
    assert all(r.json()["error"] == "invalid_grant" for r in answers if r.status_code != 200)
    again = token(srv, agent, code, client_id, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_code_expires_after_60_seconds(srv, client_id, monkeypatch):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    code = approved_code(srv, client_id, agent, verifier)
    later = lambda: time.time() + 61  # noqa: E731
    monkeypatch.setattr(AuthzStore.__init__, "__defaults__", (later,))
    r = token(srv, agent, code, client_id, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "expired" in r.json()["error_description"]


def test_pkce_plain_or_a_malformed_challenge_never_reaches_consent(srv, client_id):
    agent = SigningKey.generate()
    verifier = secrets.token_urlsafe(48)
    for over in (
        {"code_challenge_method": "plain", "code_challenge": verifier[:43]},
        {"code_challenge_method": "s256"},
        {"code_challenge": challenge(verifier) + "A"},
        {"code_challenge": challenge(verifier)[:42]},
    ):
        params = auth_params(client_id, agent, verifier, **over)
        _assert_back_with(srv, authorize(srv, params), params, "invalid_request")


def test_a_verifier_outside_rfc7636_is_refused(srv, client_id):
    """RFC 7636 §4.1: code_verifier = 43*128unreserved. A client whose challenge is the
    SHA-256 of a one-character verifier can have it guessed by whoever steals the code;
    the token endpoint accepts any verifier whose hash matches, of any length."""
    agent = SigningKey.generate()
    for verifier in ("a", "x" * 42, "x" * 129, "é" * 43):
        code = approved_code(srv, client_id, agent, verifier)
        r = token(srv, agent, code, client_id, verifier)
        assert r.status_code == 400, (verifier[:5], len(verifier), r.status_code)


def test_a_code_is_bound_to_its_client_redirect_verifier_and_holder_key(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    other = post(srv, "/oauth/register", {"redirect_uris": [REDIRECT]}).json()["client_id"]
    for kw, error in (
        ({"client_id": other}, "invalid_grant"),
        ({"redirect": REDIRECT + "/"}, "invalid_grant"),
        ({"redirect": REDIRECT.upper()}, "invalid_grant"),
        ({"verifier": secrets.token_urlsafe(48)}, "invalid_grant"),
        ({"verifier": challenge(verifier)}, "invalid_grant"),  # the challenge as verifier
        ({"agent": SigningKey.generate()}, "invalid_dpop_proof"),
        ({"agent": srv.alice}, "invalid_dpop_proof"),
    ):
        code = approved_code(srv, client_id, agent, verifier)
        args = {"agent": agent, "client_id": client_id, "verifier": verifier, **kw}
        redirect = args.pop("redirect", REDIRECT)
        r = token(srv, args["agent"], code, args["client_id"], args["verifier"], redirect)
        assert r.status_code == 400 and r.json()["error"] == error, (kw, r.text)
    # A proof for another endpoint or method is not a proof here.
    code = approved_code(srv, client_id, agent, verifier)
    for proof in (
        make_proof(agent.seed, "GET", srv.url("/oauth/token")),
        make_proof(agent.seed, "POST", srv.url("/oauth/introspect")),
        make_proof(agent.seed, "POST", "https://other.example/oauth/token"),
    ):
        r = token(srv, agent, code, client_id, verifier, proof=proof)
        assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text
    # The code was not spent by proofs refused before it was looked at.
    assert token(srv, agent, code, client_id, verifier).status_code == 200


def test_a_dpop_proof_is_good_once_at_the_token_endpoint(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    first = approved_code(srv, client_id, agent, verifier)
    second = approved_code(srv, client_id, agent, verifier)
    proof = make_proof(agent.seed, "POST", srv.url("/oauth/token"))
    assert token(srv, agent, first, client_id, verifier, proof=proof).status_code == 200
    r = token(srv, agent, second, client_id, verifier, proof=proof)
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text
    assert token(srv, agent, second, client_id, verifier).status_code == 200


def test_a_token_request_missing_anything_is_invalid_request(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    code = approved_code(srv, client_id, agent, verifier)
    for missing in ("code", "redirect_uri", "client_id", "code_verifier"):
        r = token(srv, agent, code, client_id, verifier, drop=(missing,))
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", (missing, r.text)
    r = no_5xx(
        httpx.post(
            srv.url("/oauth/token"),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": client_id,
                "code_verifier": verifier,
            },
            timeout=T,
        )
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof"
    two = make_proof(agent.seed, "POST", srv.url("/oauth/token"))
    r = no_5xx(
        httpx.post(
            srv.url("/oauth/token"),
            content=urlencode(
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "client_id": client_id,
                    "code_verifier": verifier,
                }
            ),
            headers=[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("DPoP", two),
                ("DPoP", make_proof(agent.seed, "POST", srv.url("/oauth/token"))),
            ],
            timeout=T,
        )
    )
    assert r.status_code == 400
    # None of that spent the code.
    assert token(srv, agent, code, client_id, verifier).status_code == 200


def test_no_code_comes_from_a_denied_or_refused_consent(srv, client_id):
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    req, csrf = pending_of(authorize(srv, auth_params(client_id, agent, verifier)))
    d = deny(srv, req, csrf)
    assert "code" not in query_of(d.json()["redirect"])
    # Refused by the ledger: beyond the operator's ttl_max.
    size = srv.size()
    req, csrf = pending_of(
        authorize(srv, auth_params(client_id, agent, verifier, expires_in="86400"))
    )
    a = approve(srv, req, csrf, srv.alice)
    assert a.status_code == 200 and "refused" in a.json(), a.text
    got = query_of(a.json()["redirect"])
    assert "code" not in got and got["error"] == ["access_denied"]
    assert srv.size() == size
    for guess in ("", "x", secrets.token_urlsafe(32), req, csrf):
        r = token(srv, agent, guess or None, client_id, verifier)
        assert r.status_code == 400


# --- 5. client ID metadata documents -------------------------------------------------------


class Documents:
    """A client's host: path -> (status, headers, body); records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, list, bytes]] = {}
        self.seen: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.seen.append(scope["path"])
        status, headers, body = self.routes.get(scope["path"], (404, [], b"no"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _doc(client_id: str, redirect: str, **over) -> bytes:
    doc = {"client_id": client_id, "client_name": "Docs Bot", "redirect_uris": [redirect]}
    doc.update(over)
    return json.dumps(doc).encode()


JSON = [(b"content-type", b"application/json")]


@pytest.fixture
def cimd(tmp_path):
    from lineage.api.routers import consent

    consent._CIMD.clear()
    docs, other = Documents(), Documents()
    settings = Settings(checkpoint_interval=0.2, client_metadata_loopback=True)
    with running(tmp_path, settings) as s, serve_app(docs) as base, serve_app(other) as far:
        yield s, docs, base, other, far
    consent._CIMD.clear()


def _unknown(srv, client_id: str, redirect: str) -> bool:
    params = auth_params(client_id, SigningKey.generate(), "v" * 43, redirect_uri=redirect)
    r = authorize(srv, params)
    return r.status_code == 400 and "location" not in r.headers and "unknown client_id" in r.text


def test_cimd_a_good_document_works_and_bad_ones_are_unknown_clients(cimd):
    srv, docs, base, _, _ = cimd
    good = base + "/good.json"
    docs.routes["/good.json"] = (200, JSON, _doc(good, base + "/cb"))
    params = auth_params(good, SigningKey.generate(), "v" * 43, redirect_uri=base + "/cb")
    assert authorize(srv, params).status_code == 200  # the harness is sound
    cases = {
        "/big.json": (200, JSON, _doc(base + "/big.json", base + "/cb", pad="x" * 17_000)),
        "/other.json": (200, JSON, _doc("https://someone.else/client.json", base + "/cb")),
        "/text.json": (200, [(b"content-type", b"text/html")], b"<html>not json</html>"),
        "/list.json": (200, JSON, b"[]"),
        "/nan.json": (200, JSON, b'{"client_id": NaN}'),
        "/http.json": (200, JSON, _doc(base + "/http.json", "http://evil.example/cb")),
        "/js.json": (200, JSON, _doc(base + "/js.json", "javascript:alert(1)")),
        "/frag.json": (200, JSON, _doc(base + "/frag.json", base + "/cb#x")),
        "/secret.json": (
            200,
            JSON,
            _doc(
                base + "/secret.json",
                base + "/cb",
                token_endpoint_auth_method="client_secret_basic",
            ),
        ),
        "/missing.json": (500, JSON, _doc(base + "/missing.json", base + "/cb")),
    }
    docs.routes.update(cases)
    for path in cases:
        redirect = "http://evil.example/cb" if path == "/http.json" else base + "/cb"
        assert _unknown(srv, base + path, redirect), path


def test_cimd_a_deeply_nested_document_is_an_unknown_client_not_a_server_error(cimd):
    """A client's host serves 10 KB of nested brackets (under the 16 KiB cap): the
    service's json.loads recurses until RecursionError, answered 500 with a traceback in
    the server log, instead of the "unknown client_id" page."""
    srv, docs, base, _, _ = cimd
    docs.routes["/deep.json"] = (200, JSON, b"[" * 5000 + b"]" * 5000)
    assert _unknown(srv, base + "/deep.json", base + "/cb")


def test_cimd_a_redirect_from_the_document_host_is_not_followed(cimd):
    srv, docs, base, other, far = cimd
    other.routes["/client.json"] = (200, JSON, _doc(base + "/moved.json", base + "/cb"))
    docs.routes["/moved.json"] = (302, [(b"location", (far + "/client.json").encode())], b"")
    docs.routes["/perm.json"] = (308, [(b"location", (far + "/client.json").encode())], b"")
    assert _unknown(srv, base + "/moved.json", base + "/cb")
    assert _unknown(srv, base + "/perm.json", base + "/cb")
    assert other.seen == []


def test_cimd_urls_with_userinfo_fragment_or_no_path_are_never_fetched(cimd):
    srv, docs, base, _, _ = cimd
    hostport = base.split("//")[1]
    for cid in (
        f"http://user:pw@{hostport}/client.json",
        f"http://user@{hostport}/client.json",
        f"{base}/client.json#frag",
        f"{base}",
    ):
        docs.routes[urlsplit(cid).path or "/"] = (200, JSON, _doc(cid, base + "/cb"))
        assert _unknown(srv, cid, base + "/cb"), cid
    assert docs.seen == []


def test_cimd_other_schemes_and_non_loopback_http_are_never_fetched(srv):
    from lineage.api.routers import consent

    consent._CIMD.clear()
    with tcp_listener() as (port, seen):
        started = time.monotonic()
        for cid in (
            "http://169.254.169.254/latest/meta-data/",
            "http://10.255.255.1/client.json",
            f"http://127.0.0.1:{port}/client.json",  # loopback http: only with the setting
            f"http://localhost:{port}/client.json",
            f"gopher://127.0.0.1:{port}/_GET",
            f"ftp://127.0.0.1:{port}/client.json",
            f"dict://127.0.0.1:{port}/x",
            "file:///etc/passwd",
            "file://localhost/etc/passwd",
            f"ws://127.0.0.1:{port}/client.json",
        ):
            assert _unknown(srv, cid, REDIRECT), cid
        time.sleep(0.2)
        assert seen == []
        assert time.monotonic() - started < 5  # nothing waited on an unreachable host


def test_cimd_https_client_ids_naming_internal_addresses_are_not_fetched(srv):
    """SSRF (the CIMD draft's security considerations): any unauthenticated visitor can
    make the service open connections to hosts and ports of its choosing on the service's
    own network by naming them as an ``https`` client_id. Loopback and private addresses
    should never be fetched; here a raw TCP listener on 127.0.0.1 receives the service's
    TLS handshake."""
    from lineage.api.routers import consent

    consent._CIMD.clear()
    with tcp_listener() as (port, seen):
        for cid in (
            f"https://127.0.0.1:{port}/client.json",
            f"https://localhost:{port}/admin",
        ):
            _unknown(srv, cid, REDIRECT)
        time.sleep(0.3)
        assert seen == [], f"{len(seen)} connection(s) from the service to 127.0.0.1:{port}"


# --- 6. availability -----------------------------------------------------------------------


def test_no_server_error_on_malformed_bodies_to_any_consent_or_enrolment_endpoint(srv):
    paths = (
        "/v1/enroll/preview",
        "/v1/enroll",
        "/oauth/register",
        "/oauth/authorize/prepare",
        "/oauth/authorize/approve",
        "/oauth/authorize/deny",
    )
    bodies = [
        b"",
        b"null",
        b"[]",
        b"\xff\xfe\x00",
        b'{"request": 1}',
        b'{"request": "' + b"r" * 100 + b'", "csrf": "c", "kid": "k"}',
        b'{"invite": "inv_"}',
        b'{"redirect_uris": [1, null, {}]}',
        b'{"redirect_uris": ["https://[::1"]}',
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"x": 1e999999}',
        b'{"x": ' + b"9" * 5000 + b"}",
        b'"\\ud800"',
    ]
    for path in paths:
        for body in bodies:
            for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
                r = httpx.post(
                    srv.url(path), content=body, headers={"Content-Type": ctype}, timeout=T
                )
                no_5xx(r)
                assert r.status_code in (400, 403, 404, 413, 415, 422), (path, body[:30], r.text)
        assert no_5xx(httpx.get(srv.url(path), timeout=T)).status_code in (404, 405)
    r = httpx.post(srv.url("/v1/enroll"), content=b"x" * (1024 * 1024 + 10), timeout=T)
    assert no_5xx(r).status_code in (400, 413)


def test_no_server_error_on_malformed_token_requests(srv, client_id):
    agent = SigningKey.generate()
    proof = lambda: make_proof(agent.seed, "POST", srv.url("/oauth/token"))  # noqa: E731
    for data in (
        {"grant_type": "authorization_code"},
        {
            "grant_type": "authorization_code",
            "code": "\x00",
            "redirect_uri": "\x00",
            "client_id": "\x00",
            "code_verifier": "\x00",
        },
        {
            "grant_type": "authorization_code",
            "code": "x" * 100_000,
            "redirect_uri": "r",
            "client_id": "c",
            "code_verifier": "é" * 200,
        },
        {
            "grant_type": "authorization_code",
            "code": ["a", "b"],
            "redirect_uri": "r",
            "client_id": "c",
            "code_verifier": "v",
        },
    ):
        r = no_5xx(
            httpx.post(srv.url("/oauth/token"), data=data, headers={"DPoP": proof()}, timeout=T)
        )
        assert r.status_code == 400, r.text
    for dpop in ("", "x", "a.b.c", "." * 5000, "eyJ" * 3000):
        r = no_5xx(
            httpx.post(
                srv.url("/oauth/token"),
                data={
                    "grant_type": "authorization_code",
                    "code": "c",
                    "redirect_uri": "r",
                    "client_id": client_id,
                    "code_verifier": "v" * 43,
                },
                headers={"DPoP": dpop},
                timeout=T,
            )
        )
        assert r.status_code == 400, r.text
