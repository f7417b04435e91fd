"""Consent in a real headless browser (Debian's chromium, driven by playwright).

A client started by the test registers (RFC 7591) and sends the person to
/oauth/authorize with PKCE; the page shows what is asked; approving signs the grant in the
browser with the key it made at enrolment; the code comes back to the client's redirect URI
and is exchanged, with the verifier and a DPoP proof by the agent's key, for the credential.
The grant in the log is signed by the browser's key and verifies offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from lineage.client.dpop import make_proof
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.keys import SigningKey

from .api_server import MAIL, running
from .gateway_harness import serve_app
from .test_browser_enrol import browser, enrol, invite  # noqa: F401  (the browser fixture)

SCOPE = [
    {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": ["mailbox:carol/inbox/*"],
    }
]


class Client:
    """The OAuth client: a redirect URI on 127.0.0.1 that records what comes back."""

    def __init__(self) -> None:
        self.received: list[dict[str, list[str]]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/cb":  # not the browser's /favicon.ico
            self.received.append(parse_qs(scope["query_string"].decode()))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"back at the client"})


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def world(tmp_path, browser):  # noqa: F811
    client = Client()
    with running(tmp_path) as srv, serve_app(client) as base:
        redirect = base + "/cb"
        reg = httpx.post(
            srv.base + "/oauth/register",
            timeout=10,
            json={"redirect_uris": [redirect], "client_name": "Triage Bot"},
        )
        assert reg.status_code == 201, reg.text
        context = browser.new_context()
        page, kid = enrol(context, invite(srv))
        yield srv, client, reg.json()["client_id"], redirect, context, page, kid
        context.close()


def authorize_url(srv, client_id, redirect, agent, verifier, **over) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "state": "s-" + secrets.token_urlsafe(8),
        "code_challenge": b64u(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        "authorization_details": json.dumps(SCOPE),
        "resource": MAIL,
        "holder_key": agent.public.b64,
        "task": "inbox-triage",
        "task_description": "Sort carol's inbox",
        "expires_in": "600",
    }
    params.update(over)
    return srv.base + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v})


def token(srv, agent, code, client_id, redirect, verifier):
    proof = make_proof(agent.seed, "POST", srv.base + "/oauth/token")
    return httpx.post(
        srv.base + "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": client_id,
            "code_verifier": verifier,
        },
        headers={"DPoP": proof},
        timeout=10,
    )


def test_consent_signs_the_grant_in_the_browser_and_the_code_gets_the_credential(world):
    srv, client, client_id, redirect, _, page, kid = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    url = authorize_url(srv, client_id, redirect, agent, verifier)
    page.goto(url)
    assert "Triage Bot" in page.text_content("h1")
    assert "mailbox:carol/inbox/*" in page.text_content("#details")
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    page.click("#approve")
    page.wait_for_url(redirect + "**", timeout=10_000)
    answer = client.received[-1]
    state = parse_qs(urlsplit(url).query)["state"][0]
    assert answer["state"] == [state] and answer["iss"] == [srv.base]
    code = answer["code"][0]

    r = token(srv, agent, code, client_id, redirect, verifier)
    assert r.status_code == 200, r.text
    credential = r.json()["access_token"]
    grant = srv.log.leaf(srv.log.state().index_of(credential)).entry
    assert grant.obj["principal"] == "carol@corp"
    assert [s.kid for s in grant.sigs] == [kid]  # signed by the browser's key alone
    assert grant.obj["holder"] == agent.public.b64
    verify_bundle(credential_bundle(srv.log, credential), srv.log.log_key.vkey)

    # A replayed code is refused.
    again = token(srv, agent, code, client_id, redirect, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_denying_logs_nothing_and_returns_access_denied(world):
    srv, client, client_id, redirect, _, page, _ = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    size = srv.size()
    page.goto(authorize_url(srv, client_id, redirect, agent, verifier))
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    page.click("#deny")
    page.wait_for_url(redirect + "**", timeout=10_000)
    assert client.received[-1]["error"] == ["access_denied"]
    assert srv.size() == size


def test_the_page_marks_what_exceeds_the_ceilings_before_the_click(world):
    srv, _, client_id, redirect, _, page, _ = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    page.goto(authorize_url(srv, client_id, redirect, agent, verifier, expires_in="86400"))
    assert "operator allows 3600" in page.text_content("#ceilings")


def _approved_code(world, agent, verifier, **over):
    srv, client, client_id, redirect, _, page, _ = world
    page.goto(authorize_url(srv, client_id, redirect, agent, verifier, **over))
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    page.click("#approve")
    page.wait_for_url(redirect + "**", timeout=10_000)
    assert "code" in client.received[-1], client.received[-1]
    return client.received[-1]["code"][0]


def test_a_wrong_verifier_another_client_or_another_redirect_gets_nothing(world):
    srv, _, client_id, redirect, *_ = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    other = httpx.post(
        srv.base + "/oauth/register", timeout=10, json={"redirect_uris": [redirect]}
    ).json()["client_id"]
    for args in (
        (agent, client_id, redirect, secrets.token_urlsafe(48)),  # wrong PKCE verifier
        (agent, other, redirect, verifier),  # the code is another client's
        (agent, client_id, redirect + "x", verifier),  # another redirect URI
        (SigningKey.generate(), client_id, redirect, verifier),  # DPoP by another key
    ):
        code = _approved_code(world, agent, verifier)
        key, cid, red, ver = args
        r = token(srv, key, code, cid, red, ver)
        assert r.status_code == 400, r.text
        assert r.json()["error"] in ("invalid_grant", "invalid_dpop_proof")


def test_pkce_missing_or_a_redirect_mismatch_never_reaches_consent(world):
    srv, client, client_id, redirect, _, page, _ = world
    agent = SigningKey.generate()
    # No PKCE: an error sent back to the (registered) redirect URI.
    page.goto(authorize_url(srv, client_id, redirect, agent, "v", code_challenge=""))
    page.wait_for_url(redirect + "**", timeout=10_000)
    assert client.received[-1]["error"] == ["invalid_request"]
    # A redirect URI the client did not register: shown, never redirected to.
    r = httpx.get(
        authorize_url(srv, client_id, "https://evil.example/cb", agent, "v" * 43),
        timeout=10,
        follow_redirects=False,
    )
    assert r.status_code == 400 and "redirect_uri" in r.text
    assert r.headers["x-frame-options"] == "DENY"


def test_an_answer_without_its_csrf_token_is_refused(world):
    srv, _, client_id, redirect, _, page, kid = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    page.goto(authorize_url(srv, client_id, redirect, agent, verifier))
    request = page.get_attribute("#request", "data-request")
    for body in ({"request": request, "kid": kid}, {"request": request, "csrf": "x", "kid": kid}):
        r = httpx.post(srv.base + "/oauth/authorize/prepare", json=body, timeout=10)
        assert r.status_code == 403, r.text


def test_the_consent_page_renders_what_is_asked(world, tmp_path):
    """The page a person sees, as an image: docs/consent.png is made by this test with
    LINEAGE_SCREENSHOT=docs/consent.png (the README shows it)."""
    import os

    srv, _, client_id, redirect, _, page, _ = world
    agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
    scope = [
        {**SCOPE[0], "constraints": {"sender": {"in": ["billing@vendor.example"]}}},
    ]
    page.set_viewport_size({"width": 900, "height": 720})
    page.goto(
        authorize_url(
            srv,
            client_id,
            redirect,
            agent,
            verifier,
            max_uses="20",
            authorization_details=json.dumps(scope),
        )
    )
    page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
    text = page.text_content("main")
    for said in (
        "Triage Bot",
        "read",
        "mailbox:carol/inbox/*",
        "billing@vendor.example",
        "at most 20 use(s)",
        "may not hand this on",
        "carol@corp",
    ):
        assert said in text, said
    out = os.environ.get("LINEAGE_SCREENSHOT") or str(tmp_path / "consent.png")
    page.screenshot(path=out, full_page=True)
    assert os.path.getsize(out) > 10_000


class DocumentClient(Client):
    """A client that has never met the server: its client_id is the URL of its metadata
    document (OAuth Client ID Metadata Documents), served here with its redirect URI."""

    def __init__(self) -> None:
        super().__init__()
        self.base = ""
        self.claims_to_be: str | None = None  # another client_id in the document

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/client.json":
            doc = {
                "client_id": self.claims_to_be or self.base + "/client.json",
                "client_name": "Docs Bot",
                "redirect_uris": [self.base + "/cb"],
                "token_endpoint_auth_method": "none",
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(doc).encode()})
            return
        await super().__call__(scope, receive, send)


def test_a_client_that_never_registered_is_known_by_its_metadata_document(tmp_path, browser):  # noqa: F811
    from lineage.ledger.config import Settings

    client = DocumentClient()
    settings = Settings(checkpoint_interval=0.2, client_metadata_loopback=True)
    with running(tmp_path, settings) as srv, serve_app(client) as base:
        client.base = base
        client_id, redirect = base + "/client.json", base + "/cb"
        meta = httpx.get(srv.base + "/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["client_id_metadata_document_supported"] is True
        context = browser.new_context()
        try:
            page, _ = enrol(context, invite(srv))
            agent, verifier = SigningKey.generate(), secrets.token_urlsafe(48)
            page.goto(authorize_url(srv, client_id, redirect, agent, verifier))
            assert "Docs Bot" in page.text_content("h1")
            page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
            page.click("#approve")
            page.wait_for_url(redirect + "**", timeout=10_000)
            code = client.received[-1]["code"][0]
            assert token(srv, agent, code, client_id, redirect, verifier).status_code == 200
            # A document that names another client is not this client's.
            client.claims_to_be = "https://someone.else/client.json"
            from lineage.api.routers import consent

            consent._CIMD.clear()
            r = httpx.get(authorize_url(srv, client_id, redirect, agent, verifier), timeout=10)
            assert r.status_code == 400 and "unknown client_id" in r.text
        finally:
            context.close()


def test_metadata_documents_are_fetched_over_https_only_by_default(srv_default):
    srv, base = srv_default
    r = httpx.get(
        authorize_url(srv, base + "/client.json", base + "/cb", SigningKey.generate(), "v" * 43),
        timeout=10,
    )
    assert r.status_code == 400 and "unknown client_id" in r.text


@pytest.fixture
def srv_default(tmp_path):
    client = DocumentClient()
    with running(tmp_path) as srv, serve_app(client) as base:
        client.base = base
        yield srv, base
