"""A stock MCP client, unmodified, end to end (docs/CONSENT.md §6, DECISIONS.md D53).

The `mcp` SDK's own ``OAuthClientProvider`` meets the gateway's MCP front with no token,
gets 401 and the RFC 9728 challenge, reads the protected-resource metadata, then the
authorisation server's (RFC 8414), registers (RFC 7591), sends the person to consent (a
real headless chromium, with the key it made at enrolment, signs the grant), exchanges the
code with PKCE alone for a Bearer token, and calls tools: an allowed one reaches the MCP
server, one outside the grant is a JSON-RPC error and a logged deny. The token carries the
holder key the service made at consent; the gateway signs each invocation with it, so the
log and its offline verification are what they are for any agent.

The rest drives consent by hand (alice's fixed key signs what the page would): a changed
token, a code redeemed twice or with a DPoP proof, a revoked credential, the gateway's HTTP
routes, an unknown resource, and the database's copy of the seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from mcp.shared.exceptions import MCPError

from lineage.api.bearer import bearer_token, read_bearer
from lineage.api.gateway.app import Gateway
from lineage.api.gateway.config import parse_gateway
from lineage.api.gateway.decider import RemoteDecider
from lineage.client.dpop import make_proof
from lineage.ledger.export import credential_bundle
from lineage.ledger.store import db_files
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.keys import ENTRY_CONTEXT, SigningKey, b64u_decode

from .api_server import MAIL, b64u, free_port, in_thread, running
from .gateway_harness import MAIL_SECRET, Upstream, serve_app
from .test_browser_enrol import browser, enrol, invite  # noqa: F401  (the chromium fixture)
from .test_gateway_mcp import MCP_SECRET, Guard

LOCATION = "https://mcp.example.com:443"
ACCEPT = "application/json, text/event-stream"
T = 10  # seconds, every plain HTTP request


class Callback:
    """The client's redirect URI on 127.0.0.1: what comes back is handed to the SDK."""

    def __init__(self) -> None:
        self.got: queue.Queue[dict[str, list[str]]] = queue.Queue()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/cb":  # not the browser's /favicon.ico
            self.got.put(parse_qs(scope["query_string"].decode()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"back at the client"})


class Memory:
    """The SDK's ``TokenStorage``, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def gateway_table(mcp_url: str, api_url: str, **top: Any) -> dict[str, Any]:
    return {
        "name": "gateway-1",
        "upstreams": {
            "mail": {
                "kind": "mcp",
                "url": mcp_url,
                "location": LOCATION,
                "secret": {"from": "env", "name": "LINEAGE_TEST_MCP_KEY"},
                "attach": "header:X-Mcp-Key",
                "scopes": ["read_inbox", "send_email"],  # not delete_everything
            },
            "api": {
                "url": api_url,
                "type": "email",
                "location": MAIL,
                "secret": {"from": "env", "name": "LINEAGE_TEST_MAIL_KEY"},
                "attach": "header:X-Api-Key",
            },
        },
        **top,
    }


@dataclass
class World:
    srv: Any
    guard: Guard
    api: Upstream
    callback: Callback
    redirect: str
    mcp: str  # the MCP server's URL at the gateway: the resource


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The service with the gateway mounted at /gateway, fronting an MCP server (the SDK's
    own, which accepts only its secret) and an HTTP API."""
    monkeypatch.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    guard = Guard.serving()
    callback = Callback()
    with (
        serve_app(guard, lifespan="on") as mcp_base,
        Upstream.serving() as (api, api_base),
        serve_app(callback) as client_base,
    ):
        cfg = parse_gateway(gateway_table(mcp_base + "/mcp", api_base, mount="/gateway"))
        with running(tmp_path, gateway=cfg) as srv:
            yield World(srv, guard, api, callback, client_base + "/cb", srv.base + "/gateway/mail")


# --- the stock client, in a real browser ------------------------------------------------------


async def stock_client(w: World, urls: queue.Queue) -> dict[str, Any]:
    """The SDK, as any application uses it: a provider, an HTTP client, a session."""
    storage = Memory()
    sent: list[tuple[str, str]] = []

    async def redirect_handler(url: str) -> None:
        urls.put(url)  # to the person: the test's browser

    async def callback_handler() -> AuthorizationCodeResult:
        got = await anyio.to_thread.run_sync(lambda: w.callback.got.get(timeout=30))
        return AuthorizationCodeResult(
            code=got["code"][0], state=got["state"][0], iss=got.get("iss", [None])[0]
        )

    async def record(request: httpx2.Request) -> None:
        sent.append((request.method, str(request.url)))

    provider = OAuthClientProvider(
        server_url=w.mcp,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[w.redirect], client_name="Stock MCP Client"
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    out: dict[str, Any] = {"storage": storage, "sent": sent}
    hooks = {"request": [record]}
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30, event_hooks=hooks) as http,
        Client(streamable_http_client(w.mcp, http_client=http), cache=None) as mcp,
    ):
        out["tools"] = sorted(t.name for t in (await mcp.list_tools()).tools)
        out["ok"] = await mcp.call_tool("read_inbox", {"folder": "invoices"})
        try:
            await mcp.call_tool("delete_everything", {})
        except MCPError as exc:
            out["denied"] = exc
    return out


def test_a_stock_mcp_client_discovers_registers_gets_consent_and_calls_tools(
    world,
    browser,  # noqa: F811
    tmp_path,
):
    w = world
    context = browser.new_context()
    try:
        page, kid = enrol(context, invite(w.srv))
        urls: queue.Queue[str] = queue.Queue()
        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["out"] = asyncio.run(stock_client(w, urls))
            except BaseException as exc:  # reported below, in the test's thread
                done["error"] = exc
                urls.put("")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        url = urls.get(timeout=30)
        assert url, done.get("error")
        asked = parse_qs(urlsplit(url).query)
        assert "holder_key" not in asked and "authorization_details" not in asked
        assert asked["resource"] == [w.mcp]
        assert asked["scope"] == ["tool:read_inbox tool:send_email"]  # the metadata's scopes

        page.goto(url)  # the person, in the browser that holds their key
        assert "Stock MCP Client" in page.text_content("h1")
        assert "cannot sign its own requests" in page.text_content("#custodial")
        details = page.text_content("#details")
        assert "tool:read_inbox" in details and "tool:send_email" in details
        assert "delete_everything" not in details
        page.wait_for_selector("#approve:not([disabled])", timeout=10_000)
        page.click("#approve")
        page.wait_for_url(w.redirect + "**", timeout=10_000)
        thread.join(60)
        assert not thread.is_alive()
        if "error" in done:
            raise done["error"]
        out = done["out"]
    finally:
        context.close()

    srv = w.srv
    # Discovery (RFC 9728, then RFC 8414), registration (RFC 7591), the token (PKCE only).
    sent = out["sent"]
    assert ("GET", srv.base + "/.well-known/oauth-protected-resource/gateway/mail") in sent
    assert ("GET", srv.base + "/.well-known/oauth-authorization-server") in sent
    assert ("POST", srv.base + "/oauth/register") in sent
    assert ("POST", srv.base + "/oauth/token") in sent
    storage = out["storage"]
    assert storage.client_info.client_id.startswith("lc_")  # dynamically registered
    token = storage.tokens.access_token
    assert storage.tokens.token_type == "Bearer" and token.startswith("lnb_")
    credential, key = read_bearer(token)

    # The grant is the person's, signed in the browser, naming the key the token carries.
    grant = srv.log.leaf(srv.log.state().index_of(credential)).entry
    assert [s.kid for s in grant.sigs] == [kid]
    assert grant.obj["principal"] == "carol@corp" and grant.obj["agent"] == "Stock MCP Client"
    assert grant.obj["holder"] == key.public.b64
    assert grant.obj["task"]["id"] == "mcp/mail"
    assert grant.obj["scope"] == [
        {
            "type": "mcp",
            "actions": ["call"],
            "locations": [LOCATION],
            "resources": ["tool:read_inbox", "tool:send_email"],
        }
    ]

    # The allowed tool reached the MCP server; the other did not, and its deny is logged.
    assert out["tools"] == ["read_inbox", "send_email"]
    assert not out["ok"].is_error and "3 messages in invoices" in str(out["ok"].content)
    assert w.guard.calls == ["read_inbox:invoices"]
    denied = out["denied"]
    assert denied.error.code == -31403 and "resource" in denied.error.message
    deny = srv.log.leaf(denied.error.data["index"]).entry
    assert deny.obj["decision"] == "deny"
    allow = [
        srv.log.leaf(i).entry
        for i in range(srv.log.state().size)
        if srv.log.leaf(i).entry.kind == "access"
        and srv.log.leaf(i).entry.obj["decision"] == "allow"
    ]
    assert len(allow) == 1
    for access in (allow[0], deny):  # the gateway signed with the bearer's key
        assert access.obj["invocation"]["credential"] == credential
        assert [s["kid"] for s in access.obj["invocation"]["sigs"]] == [key.kid]
        assert access.obj["context"]["authentication"] == "bearer"

    # The MCP server saw its own secret, never the token.
    for headers in w.guard.headers:
        assert headers["x-mcp-key"] == MCP_SECRET
        assert "authorization" not in headers and "dpop" not in headers
        assert not any(k.startswith("lineage-") for k in headers)
        assert not any(token in v or token[4:40] in v for v in headers.values())

    # Everything verifies offline under the log key alone, with lineage-verify too.
    bundle = credential_bundle(srv.log, credential)
    verify_bundle(bundle, srv.log.log_key.vkey)
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "log.vkey").write_text(srv.log.log_key.vkey + "\n")
    verify = [sys.executable, "-m", "lineage.verifier.cli", str(tmp_path / "bundle.json")]
    run = subprocess.run(
        [*verify, "--log-key", str(tmp_path / "log.vkey"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and report["accesses"] == 2
    assert [c["principal"] for c in report["chains"]] == ["carol@corp"]


# --- by hand: consent signed with alice's fixed key -------------------------------------------


def register(w: World) -> str:
    """What the SDK registers: it asks for refresh_token too, and gets authorization_code."""
    r = httpx.post(
        w.srv.url("/oauth/register"),
        json={
            "redirect_uris": [w.redirect],
            "client_name": "Stock MCP Client",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "application_type": "native",
        },
        timeout=T,
    )
    assert r.status_code == 201, r.text
    assert r.json()["grant_types"] == ["authorization_code"]
    return r.json()["client_id"]


def authorize(w: World, client_id: str, verifier: str, **over: Any) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": w.redirect,
        "state": "st-" + secrets.token_urlsafe(6),
        "code_challenge": b64u(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        "resource": w.mcp,
        "scope": "tool:read_inbox",
    }
    params.update(over)
    return httpx.get(
        w.srv.url("/oauth/authorize"),
        params={k: v for k, v in params.items() if v is not None},
        timeout=T,
        follow_redirects=False,
    )


def refused_with(r: httpx.Response) -> str:
    assert r.status_code == 302, (r.status_code, r.text[:300])
    return parse_qs(urlsplit(r.headers["location"]).query)["error"][0]


def approved(w: World, client_id: str, verifier: str, **over: Any) -> tuple[str, str]:
    """(the code, the pending request's id), as the page would get them with alice's key."""
    page = authorize(w, client_id, verifier, **over)
    assert page.status_code == 200, (page.status_code, page.headers.get("location"))
    request, csrf = re.search(r'data-request="([^"]+)" data-csrf="([^"]+)"', page.text).groups()
    key = w.srv.alice
    body = {"request": request, "csrf": csrf, "kid": key.public.kid}
    prepared = httpx.post(w.srv.url("/oauth/authorize/prepare"), json=body, timeout=T)
    assert prepared.status_code == 200, prepared.text
    signing_input = b64u_decode(prepared.json()["signing_input"])
    assert signing_input.startswith(ENTRY_CONTEXT)
    sig = key.sign(b"", signing_input)
    a = httpx.post(
        w.srv.url("/oauth/authorize/approve"), json={**body, "sig": b64u(sig)}, timeout=T
    )
    assert a.status_code == 200 and "grant" in a.json(), a.text
    return parse_qs(urlsplit(a.json()["redirect"]).query)["code"][0], request


def exchange(w: World, code: str, client_id: str, verifier: str, proof: str | None = None):
    return httpx.post(
        w.srv.url("/oauth/token"),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": w.redirect,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": w.mcp,  # as the SDK sends it (RFC 8707)
        },
        headers={"DPoP": proof} if proof else {},
        timeout=T,
    )


def bearer(w: World) -> str:
    client_id, verifier = register(w), secrets.token_urlsafe(48)
    code, _ = approved(w, client_id, verifier)
    r = exchange(w, code, client_id, verifier)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer" and r.headers["cache-control"] == "no-store"
    return r.json()["access_token"]


def call(url: str, token: str, tool: str = "read_inbox", **arguments: Any) -> httpx.Response:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    return httpx.post(url, json=message, headers=headers, timeout=T)


def hello(url: str, token: str) -> httpx.Response:
    message = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    return httpx.post(url, json=message, headers=headers, timeout=T)


def test_a_changed_bearer_token_is_refused_and_nothing_reaches_the_server(world):
    token = bearer(world)
    credential, key = read_bearer(token)
    raw = bytearray(b64u_decode(token[4:]))
    raw[40] ^= 1
    changed = {
        "another seed": bearer_token(credential, SigningKey.generate().seed),
        "another credential": bearer_token(secrets.token_hex(32), key.seed),
        "a flipped bit": "lnb_" + b64u(bytes(raw)),
        "cut short": token[:-2],
        "not ours": "mcp-token-" + secrets.token_hex(16),
    }
    size = world.srv.size()
    for what, bad in changed.items():
        for r in (call(world.mcp, bad), hello(world.mcp, bad)):
            assert r.status_code == 401, (what, r.status_code, r.text)
            assert r.json()["error"] == "invalid_token", what
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith('Bearer resource_metadata="'), challenge
            assert bad not in r.text
    assert world.guard.headers == [] and world.guard.calls == []
    assert world.srv.size() == size  # no proof of possession: nothing logged
    # The token as issued works.
    r = call(world.mcp, token, folder="inbox")
    assert r.status_code == 200 and "error" not in r.json(), r.text
    assert world.guard.calls == ["read_inbox:inbox"]


def test_a_code_is_exchanged_once_and_only_without_dpop(world):
    client_id, verifier = register(world), secrets.token_urlsafe(48)
    code, _ = approved(world, client_id, verifier)
    first = exchange(world, code, client_id, verifier)
    assert first.status_code == 200 and first.json()["token_type"] == "Bearer", first.text
    again = exchange(world, code, client_id, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    # A DPoP proof by any key (the client has none of its own: there is no right one).
    code, _ = approved(world, client_id, verifier)
    other = SigningKey.generate()
    proof = make_proof(other.seed, "POST", world.srv.url("/oauth/token"))
    r = exchange(world, code, client_id, verifier, proof)
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text
    assert "access_token" not in r.json()
    spent = exchange(world, code, client_id, verifier)  # a failed exchange spent it
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"
    # A code for a client's own key is never exchanged without its DPoP proof.
    agent = SigningKey.generate()
    code, _ = approved(world, client_id, verifier, holder_key=agent.public.b64)
    r = exchange(world, code, client_id, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text
    proof = make_proof(agent.seed, "POST", world.srv.url("/oauth/token"))
    r = exchange(world, code, client_id, verifier, proof)
    assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text
    # A wrong verifier gets nothing either.
    code, _ = approved(world, client_id, verifier)
    r = exchange(world, code, client_id, secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_a_revoked_credential_makes_the_bearer_token_useless(world):
    token = bearer(world)
    credential, _ = read_bearer(token)
    assert call(world.mcp, token).json().get("result") is not None
    r = httpx.post(
        world.srv.url("/oauth/revoke"),
        data={"token": credential},
        headers=world.srv.bearer(world.srv.operator),
        timeout=T,
    )
    assert r.status_code == 200, r.text
    calls = list(world.guard.calls)
    assert hello(world.mcp, token).status_code == 401
    r = call(world.mcp, token)
    assert r.status_code in (200, 401), r.text
    if r.status_code == 200:  # decided and logged: a deny
        assert r.json()["error"]["code"] == -31403 and "revoked" in r.text
    assert world.guard.calls == calls


def test_the_bearer_token_is_not_accepted_by_the_gateways_http_routes(world):
    token = bearer(world)
    for scheme in ("Bearer", "DPoP"):
        r = httpx.get(
            world.srv.url("/gateway/api/v1/messages"),
            headers={"Authorization": f"{scheme} {token}"},
            timeout=T,
        )
        assert r.status_code == 401, (scheme, r.text)
    assert world.api.seen == []
    # Nor anywhere in the service's own API.
    r = httpx.get(world.srv.url("/v1/log/entries/0"), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_a_client_without_its_own_key_is_served_only_for_a_known_mcp_server(world):
    client_id, verifier = register(world), secrets.token_urlsafe(48)
    details = json.dumps(
        [{"type": "email", "actions": ["read"], "locations": [MAIL], "resources": ["mailbox:*"]}]
    )
    for over, error in (
        ({"resource": None}, "invalid_request"),
        ({"resource": "https://evil.example/mcp"}, "invalid_target"),
        ({"resource": world.srv.url("/gateway/api")}, "invalid_target"),  # not MCP
        ({"resource": MAIL, "scope": None, "authorization_details": details}, "invalid_target"),
        ({"scope": "tool:../admin"}, "invalid_scope"),
        ({"scope": "mailbox:alice/inbox"}, "invalid_scope"),
        ({"scope": "tool:read_inbox/deeper"}, "invalid_scope"),
        ({"scope": "offline_access"}, "invalid_scope"),
        ({"authorization_details": details, "task": "t"}, "invalid_target"),  # elsewhere
    ):
        r = authorize(world, client_id, verifier, **over)
        assert refused_with(r) == error, over
    # Every tool, when the client names none and the server advertises none; a DPoP client
    # may name the MCP server as its resource too.
    page = authorize(world, client_id, verifier, scope=None)
    assert page.status_code == 200 and "tool:read_inbox" in page.text
    page = authorize(world, client_id, verifier, scope="tool:*")
    assert page.status_code == 200 and "tool:*" in page.text
    agent = SigningKey.generate()
    page = authorize(world, client_id, verifier, holder_key=agent.public.b64)
    assert page.status_code == 200 and 'id="custodial"' not in page.text


def test_the_metadata_says_what_a_stock_client_needs(world):
    r = httpx.post(world.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=T)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith(
        f'Bearer resource_metadata="{world.srv.base}/.well-known/oauth-protected-resource'
        '/gateway/mail", scope="tool:read_inbox tool:send_email"'
    ), challenge
    meta = httpx.get(challenge.split('"')[1], timeout=T).json()
    assert meta["resource"] == world.mcp
    assert meta["authorization_servers"] == [world.srv.base]
    assert meta["bearer_methods_supported"] == ["header"]
    assert meta["scopes_supported"] == ["tool:read_inbox", "tool:send_email"]
    assert meta["dpop_bound_access_tokens_required"] is False
    server = httpx.get(world.srv.url("/.well-known/oauth-authorization-server"), timeout=T).json()
    assert server["issuer"] == world.srv.base
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["registration_endpoint"] == world.srv.url("/oauth/register")
    assert server["client_id_metadata_document_supported"] is True
    assert server["token_endpoint_auth_methods_supported"] == ["none"]
    assert server["authorization_response_iss_parameter_supported"] is True


def test_the_database_never_holds_the_seed_and_forgets_its_seal(world):
    client_id, verifier = register(world), secrets.token_urlsafe(48)
    code, request = approved(world, client_id, verifier)
    store = world.srv.log.store
    seals = "SELECT ref, length(sealed) FROM oauth_seals"
    code_ref = "code:" + hashlib.sha256(code.encode()).hexdigest()
    assert store._query(seals) == [(code_ref, 24 + 16 + 32)]  # nonce, tag, seed: sealed
    assert not any(request in ref for ref, _ in store._query(seals))  # the page's: gone
    r = exchange(world, code, client_id, verifier)
    assert r.status_code == 200, r.text
    _, key = read_bearer(r.json()["access_token"])
    assert store._query(seals) == []
    for path in db_files(Path(store.path)):
        if path.exists():
            data = path.read_bytes()
            assert key.seed not in data and b64u(key.seed) not in data.decode("latin-1"), path


def test_a_gateway_on_its_own_takes_the_bearer_token_too(tmp_path, monkeypatch):
    """``lineage gateway`` beside ``lineage serve``: the service knows the MCP server from
    the ``[gateway]`` table's ``public_url``; the gateway decides through ``/v1/access``."""
    monkeypatch.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    guard = Guard.serving()
    port = free_port()
    gw_base = f"http://127.0.0.1:{port}"
    with (
        serve_app(guard, lifespan="on") as mcp_base,
        serve_app(Callback()) as client_base,
    ):
        table = gateway_table(mcp_base + "/mcp", "http://127.0.0.1:9", public_url=gw_base)
        with running(tmp_path, gateway=parse_gateway(table)) as srv:
            table.update(service=srv.base, token={"from": "env", "name": "UNUSED"})
            app = Gateway(parse_gateway(table), RemoteDecider(srv.base, srv.enforcement))
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            with in_thread(config):
                w = World(srv, guard, None, None, client_base + "/cb", gw_base + "/mail")
                meta = httpx.get(gw_base + "/.well-known/oauth-protected-resource/mail").json()
                assert meta["authorization_servers"] == [srv.base]
                token = bearer(w)
                r = call(w.mcp, token, folder="sent")
                assert r.status_code == 200 and "error" not in r.json(), r.text
                r = call(w.mcp, token, "send_email", to="bob@corp.example", subject="x")
                assert r.json()["error"]["code"] == -31403  # asked for read_inbox only
                credential, _ = read_bearer(token)
                r = call(w.mcp, bearer_token(credential, SigningKey.generate().seed))
                assert r.status_code == 401
    assert guard.calls == ["read_inbox:sent"]
