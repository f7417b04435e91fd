"""Hostile requests against a live gateway in front of upstreams that record everything.

One service, one gateway and its upstreams serve the whole module (module-scoped, to keep
it quick): a recording API (``gateway_harness.Upstream``), a careless API that echoes its
secret in every way it can (``Leaky``), a raw-socket API that answers bytes no ASGI server
would (``RawUpstream``), and the ``mcp`` SDK's own server behind ``Guard``.

Each test names the promise it guards (docs/GATEWAY.md): nothing reaches an upstream that
was not decided in exactly that form; the secret never reaches the agent; authentication
holds; the gateway stays up and never answers an undocumented 5xx or a traceback; MCP
messages are decided as what the server will run.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import pytest

from lineage.api.gateway.config import parse_gateway
from lineage.client import Agent, LineageClient
from lineage.client.dpop import make_proof
from lineage.client.gateway import (
    INVOCATION_HEADER,
    encode_invocation,
    gateway_session,
    mcp_auth,
    tool_request,
)
from lineage.verifier.invocation import sign_invocation

from .api_server import MAIL, free_port, running
from .gateway_harness import MAIL_SECRET, Upstream, gateway, serve_app
from .test_gateway_mcp import MCP_SECRET, Guard

PAY = "https://pay.example.com:443"
LEAK = "https://leak.example.com:443"
LEAKQ = "https://leakq.example.com:443"
LEAKB = "https://leakb.example.com:443"
RAW = "https://raw.example.com:443"
RAWQ = "https://rawq.example.com:443"
DEADQ = "https://deadq.example.com:443"
SMALL = "https://small.example.com:443"
LEAKS_ = "https://leaks.example.com:443"
WEB = (LEAK, LEAKQ, LEAKB, LEAKS_, RAW, RAWQ, DEADQ, SMALL)
TOOLS = "https://tools.example.com:443"
SPECIAL_SECRET = "Zm9vYmFy+c2VjcmV0/a2V5="  # base64-looking keys have '+', '/' and '='
DOCUMENTED_5XX = {502, 503, 504}

SCOPE = [
    {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/messages/*"],
    },
    {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/folders/*"],
        "constraints": {"folder": {"in": ["inbox"]}},
    },
    {
        "type": "email",
        "actions": ["send"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/send"],
        "constraints": {"to": {"in": ["bob@corp.example"]}},
    },
    {
        "type": "payment",
        "actions": ["pay"],
        "locations": [PAY],
        "resources": [f"{PAY}/v1/*"],
        "constraints": {"amount": {"lte": 100}},
    },
    {
        "type": "web",
        "actions": ["get", "post"],
        "locations": sorted(WEB),
        "resources": sorted(f"{loc}/*" for loc in WEB),
    },
    {
        "type": "mcp",
        "actions": ["call"],
        "locations": [TOOLS],
        "resources": ["tool:read_inbox"],
    },
    {
        "type": "mcp",
        "actions": ["call"],
        "locations": [TOOLS],
        "resources": ["tool:send_email"],
        "constraints": {"to": {"in": ["bob@corp.example"]}},
    },
]


# --- upstreams ---------------------------------------------------------------------------


def pct_all(text: str, upper: bool = True) -> str:
    """Every byte percent-encoded: a spelling of ``text`` any URL decoder reads back."""
    return "".join((f"%{b:02X}" if upper else f"%{b:02x}") for b in text.encode())


def json_escaped(text: str) -> str:
    """Every character as a JSON ``\\uXXXX`` escape: what any JSON parser reads back."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def basic(user: str) -> str:
    return base64.b64encode(f"{user}:{MAIL_SECRET}".encode()).decode()


@dataclass
class Leaky:
    """A careless API: echoes its secret (the one the gateway attaches) in every spelling.
    The last path segment chooses how; it answers whatever credential it gets."""

    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        path = scope["raw_path"].decode("latin-1")
        self.seen.append(path)
        how = path.rsplit("/", 1)[-1]
        received = dict((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        query = parse_qs(scope["query_string"].decode("latin-1"))
        s = received.get("x-api-key") or (query.get("key") or [MAIL_SECRET])[0]
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain")]
        status = 200
        chunks: list[bytes]
        if how == "header":
            headers += [
                (b"x-echo", s.encode()),
                (b"x-bearer", f"Bearer {s}".encode()),
                (b"x-list", f"a, {s}, b".encode()),
                (b"set-cookie", f"k={s}; Path=/".encode()),
                (b"www-authenticate", f'Basic realm="{s}"'.encode()),
            ]
            chunks = [b"ok"]
        elif how == "header-name":  # e.g. an API echoing a key-value map as headers
            headers += [(f"x-{s}".encode(), b"1")]
            chunks = [b"ok"]
        elif how == "header-pct":
            headers += [(b"x-pct", pct_all(s).encode())]
            chunks = [b"ok"]
        elif how == "pct-std":
            chunks = [f"u={quote(s, safe='')}".encode()]
        elif how == "pct-lower":
            chunks = [f"u={quote(s, safe='').lower()}".encode()]
        elif how == "form":
            chunks = [f"u={quote_plus(s)}".encode()]
        elif how == "json-std":
            headers = [(b"content-type", b"application/json")]
            chunks = [json.dumps({"key": s}).encode()]
        elif how == "json-slash":  # PHP's json_encode escapes '/'
            headers = [(b"content-type", b"application/json")]
            chunks = [json.dumps({"key": s}).replace("/", "\\/").encode()]
        elif how == "split-std":
            chunks = [bytes([b]) for b in f"<{quote(s, safe='')}>".encode()]
        elif how == "plain":
            chunks = [f"key: {s}\n".encode()]
        elif how == "pct":
            chunks = [f"u={pct_all(s)}&l={pct_all(s, upper=False)}".encode()]
        elif how == "json":  # every character escaped
            headers = [(b"content-type", b"application/json")]
            chunks = [('{"key": "' + json_escaped(s) + '"}').encode()]
        elif how == "basic":
            chunks = [f"Authorization: Basic {basic('svc')}".encode()]
        elif how == "split":  # one byte per message: the secret straddles every boundary
            chunks = [bytes([b]) for b in f"<{s}>".encode()]
        elif how == "split-pct":
            chunks = [bytes([b]) for b in f"<{pct_all(s)}>".encode()]
        elif how == "sse":
            headers = [(b"content-type", b"text/event-stream")]
            chunks = [b"data: ", s[:7].encode(), s[7:].encode(), b"\n\n"]
        elif how in ("gzip", "GZIP", "x-gzip"):
            headers.append((b"content-encoding", how.encode()))
            chunks = [gzip.compress(s.encode() * 3)]
        elif how == "gzip-gzip":
            headers.append((b"content-encoding", b"gzip, gzip"))
            chunks = [gzip.compress(gzip.compress(s.encode()))]
        elif how == "deflate":
            headers.append((b"content-encoding", b"deflate"))
            chunks = [zlib.compress(s.encode())]
        elif how == "raw-deflate":
            headers.append((b"content-encoding", b"deflate"))
            c = zlib.compressobj(wbits=-15)
            chunks = [c.compress(s.encode()) + c.flush()]
        elif how == "redirect":
            status = 302
            headers.append((b"location", f"https://leak.example.com/next?key={s}".encode()))
            chunks = [b""]
        elif how == "error":
            status = 500
            chunks = [f"<h1>500</h1><pre>KeyError: {s!r}</pre>".encode()]
        elif how == "lineage-access":
            headers.append((b"lineage-access", b"forged-by-the-upstream"))
            chunks = [b"ok"]
        elif how == "query":  # a careless API echoing the URL it was called with
            q = scope["query_string"].decode("latin-1")
            chunks = [f"you called {path}?{q}".encode()]
        else:
            chunks = [b"ok"]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})


class RawUpstream:
    """A TCP server answering bytes an ASGI server would never send: the secret in the
    status line, in a trailer, or no HTTP at all."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    return
                data += part
            target = data.split(b" ", 2)[1].decode("latin-1")
            how = target.split("?")[0].rsplit("/", 1)[-1]
            s = MAIL_SECRET.encode()
            if how == "reason":
                out = b"HTTP/1.1 200 " + s + b"\r\nContent-Length: 2\r\n\r\nok"
            elif how == "garbage":
                out = s + b" this is not HTTP " + s + b"\r\n\r\n"
            elif how == "bad-header":
                out = b"HTTP/1.1 200 OK\r\nX-Key " + s + b"\r\nContent-Length: 2\r\n\r\nok"
            elif how == "trailer":
                out = (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Key\r\n\r\n"
                    b"2\r\nok\r\n0\r\nX-Key: " + s + b"\r\n\r\n"
                )
            elif how == "short":  # promises more than it sends, with the secret inside
                out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + s
            else:
                out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            with contextlib.suppress(OSError):
                conn.sendall(out)

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


# --- the stack ---------------------------------------------------------------------------


@dataclass
class Stack:
    srv: Any
    api: Upstream
    leaky: Leaky
    guard: Guard
    gw: Any
    base: str
    agent: Agent
    handle: str
    db: Path
    api_base: str
    client: httpx.Client = None  # type: ignore[assignment]

    @property
    def host(self) -> tuple[str, int]:
        u = urlsplit(self.base)
        return u.hostname or "", u.port or 80

    def session(self) -> httpx.Client:
        return gateway_session(self.base, self.agent, self.handle, timeout=10)


def _config(srv, mail: str, leak: str, raw: str, mcp: str) -> Any:
    secret = {"from": "env", "name": "LINEAGE_TEST_MAIL_KEY"}
    common = {"secret": secret, "timeout": 2.0, "connect_timeout": 1.0}
    header = {**common, "attach": "header:X-Api-Key"}
    query = {**common, "attach": "query:key"}
    dead = f"http://127.0.0.1:{free_port()}"
    return parse_gateway(
        {
            "name": "enforcement-1",
            "service": srv.base,
            "token": {"from": "env", "name": "LINEAGE_TEST_GATEWAY_TOKEN"},
            "upstreams": {
                "mail": {
                    "url": mail,
                    "type": "email",
                    "location": MAIL,
                    "actions": {"GET": "read", "POST": "send", "DELETE": "delete"},
                    "fields": {"to": "body", "folder": "query"},
                    **header,
                },
                "pay": {
                    "url": mail + "/pay",
                    "type": "payment",
                    "location": PAY,
                    "actions": {"POST": "pay"},
                    "fields": {"amount": "body:integer"},
                    **header,
                },
                "small": {
                    "url": mail + "/small",
                    "type": "web",
                    "location": SMALL,
                    "max_body": 100,
                    "body_limit": 100,
                    **header,
                },
                "leak": {"url": leak, "type": "web", "location": LEAK, **header},
                "leaks": {
                    "url": leak,
                    "type": "web",
                    "location": LEAKS_,
                    **header,
                    "secret": {"from": "env", "name": "LINEAGE_TEST_SPECIAL_KEY"},
                },
                "leakq": {"url": leak, "type": "web", "location": LEAKQ, **query},
                "leakb": {
                    "url": leak,
                    "type": "web",
                    "location": LEAKB,
                    **common,
                    "attach": "basic:svc",
                },
                "raw": {"url": raw, "type": "web", "location": RAW, **header},
                "rawq": {"url": raw, "type": "web", "location": RAWQ, **query},
                "deadq": {"url": dead, "type": "web", "location": DEADQ, **query},
                "tools": {
                    "kind": "mcp",
                    "url": mcp + "/mcp",
                    "location": TOOLS,
                    "secret": {"from": "env", "name": "LINEAGE_TEST_MCP_KEY"},
                    "attach": "header:X-Mcp-Key",
                },
            },
        }
    )


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("attacks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
        mp.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
        mp.setenv("LINEAGE_TEST_SPECIAL_KEY", SPECIAL_SECRET)
        guard = Guard.serving()
        leaky = Leaky()
        raw = RawUpstream()
        try:
            with (
                running(tmp) as srv,
                Upstream.serving(slow=3.0) as (api, served),
                serve_app(leaky) as leak,
                serve_app(guard, lifespan="on") as mcp,
            ):
                cfg = _config(srv, served, leak, raw.base, mcp)
                client = LineageClient(srv.base, log_key=srv.log.log_key.vkey)
                agent = Agent.ephemeral()
                handle = client.grant(srv.alice, "alice@corp", agent, task="mail", scope=SCOPE)
                client.close()
                with gateway(srv, cfg) as (gw, base):
                    stack = Stack(srv, api, leaky, guard, gw, base, agent, handle, tmp, served)
                    with stack.session() as stack.client:
                        yield stack
        finally:
            raw.close()


@pytest.fixture
def w(st: Stack) -> Iterator[Stack]:
    """The shared stack, with the upstreams' records cleared; after the test, the gateway
    still serves an ordinary allowed request (availability)."""
    st.api.seen.clear()
    st.leaky.seen.clear()
    st.guard.calls.clear()
    st.guard.headers.clear()
    yield st
    assert_alive(st)


def assert_alive(w: Stack) -> None:
    n = len(w.api.seen)
    r = w.client.get(f"{MAIL}/v1/messages/alive")
    assert r.status_code == 200, r.text
    assert [x.raw_path for x in w.api.seen[n:]] == ["/v1/messages/alive"]
    del w.api.seen[n:]


def accesses_since(w: Stack, mark: int) -> list[dict[str, Any]]:
    """The access entries logged at index ``mark`` or later. (An access is durable before its
    answer; only `result` entries land later, so a mark taken at any time is exact.)"""
    r = httpx.get(
        w.srv.url(f"/v1/entries?kind=access&cursor={mark}&limit=100"),
        headers=w.srv.bearer(w.srv.auditor),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e["entry"] for e in r.json()["entries"]]


# --- signing by hand ---------------------------------------------------------------------


def digest(body: bytes) -> str:
    return "sha-256:" + hashlib.sha256(body).hexdigest()


def mail_request(
    path: str,
    method: str = "GET",
    query: str = "",
    body: bytes = b"",
    action: str | None = None,
    **attrs: Any,
) -> dict[str, Any]:
    actions = {"GET": "read", "POST": "send", "DELETE": "delete"}
    return {
        "type": "email",
        "action": action or actions.get(method, method.lower()),
        "location": MAIL,
        "resource": MAIL + path,
        "attributes": {
            "http.method": method,
            "http.query": query,
            "http.body": digest(body),
            **attrs,
        },
    }


def signed(
    w: Stack,
    method: str,
    target: str,
    request: dict[str, Any] | None,
    *,
    agent: Agent | None = None,
    handle: str | None = None,
    proof_key: Agent | None = None,
    htu: str | None = None,
    htm: str | None = None,
) -> dict[str, str]:
    """The three headers an agent sends for ``method target`` (a path on the gateway),
    signed for ``request``."""
    agent = agent or w.agent
    handle = handle or w.handle
    url = htu or (w.base + target.split("?")[0])
    proof = make_proof((proof_key or agent).key.seed, htm or method, url, access_token=handle)
    headers = {"Authorization": f"DPoP {handle}", "DPoP": proof}
    if request is not None:
        inv = sign_invocation(agent.key, handle, request, int(w.srv.clock()))
        headers[INVOCATION_HEADER] = encode_invocation(inv)
    return headers


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        line, _, rest = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def raw_http(
    w: Stack,
    head: bytes,
    body: bytes = b"",
    *,
    then: bytes | None = None,
    timeout: float = 10.0,
) -> Answer:
    """Send exactly these bytes to the gateway (``head`` without the final CRLF CRLF); read
    the first answer. With ``then``: wait for the head of an answer; if it is `100 Continue`,
    send ``then`` (the body) and read the final answer."""
    s = socket.create_connection(w.host, timeout=timeout)
    with s:
        s.sendall(head + b"\r\n\r\n" + body)
        data = b""
        if then is not None:
            while b"\r\n\r\n" not in data:
                part = s.recv(65536)
                if not part:
                    break
                data += part
            if data.startswith(b"HTTP/1.1 100"):
                data = data.split(b"\r\n\r\n", 1)[1]
                s.sendall(then)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not part:
                break
            data += part
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = [tuple(x.split(":", 1)) for x in lines[1:] if ":" in x]
    headers = [(k.strip(), v.strip()) for k, v in headers]
    if any(k.lower() == "transfer-encoding" and "chunked" in v for k, v in headers):
        rest = _dechunk(rest)
    return Answer(status, headers, rest, data)


def build(
    method: str, target: str, headers: dict[str, str] | list[tuple[str, str]], w: Stack
) -> bytes:
    host, port = w.host
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    names = {k.lower() for k, _ in items}
    if "host" not in names:
        items.insert(0, ("Host", f"{host}:{port}"))
    if "connection" not in names:
        items.append(("Connection", "close"))
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in items]
    return "\r\n".join(lines).encode("latin-1")


def send_raw(
    w: Stack,
    method: str,
    target: str,
    headers: dict[str, str] | list[tuple[str, str]],
    body: bytes = b"",
    **kw: Any,
) -> Answer:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
        items.append(("Content-Length", str(len(body))))
    return raw_http(w, build(method, target, items, w), body, **kw)


def entry(w: Stack, access_id: str) -> dict[str, Any]:
    """The access entry the gateway had logged, as the auditor reads it."""
    r = httpx.get(
        w.srv.url(f"/v1/entries/{access_id}"), headers=w.srv.bearer(w.srv.auditor), timeout=10
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    return doc.get("entry", doc)


def assert_sane(status: int, body: bytes | str) -> None:
    """No undocumented 5xx and never a Python traceback (availability)."""
    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
    assert status < 500 or status in DOCUMENTED_5XX, (status, text[:500])
    assert "Traceback" not in text and 'File "' not in text, text[:500]


def assert_forwarded_as_decided(w: Stack, access: str | None) -> None:
    """Whatever reached the recording API is exactly what the logged access decided:
    method, path, query and body digest; and at most one request per access."""
    seen = w.api.seen
    if not seen:
        return
    assert access, "something reached the upstream without a Lineage-Access"
    assert len(seen) == 1, [s.raw_path for s in seen]
    [got] = seen
    req = entry(w, access)["invocation"]["request"]
    attrs = req["attributes"]
    prefix = {MAIL: "", PAY: "/pay", SMALL: "/small"}[req["location"]]
    assert got.raw_path == prefix + req["resource"][len(req["location"]) :]
    assert got.method == attrs["http.method"]
    assert got.query == attrs["http.query"]
    assert digest(got.body) == attrs["http.body"]


# === 1. Nothing reaches the upstream that was not decided in exactly that form ===========

M = "/mail/v1/messages/"
REFUSED_PATHS = [
    # encoded dots, every case and mix
    M + "%2e%2e/admin",
    M + "%2E%2E/admin",
    M + "%2e%2E/admin",
    M + "%2E%2e/admin",
    M + ".%2e/admin",
    M + "%2e./admin",
    M + "%2E",
    M + "x/%2e/y",
    "/mail/%2e%2e/pay/v1/x",
    M + "%2e%2e%2fadmin",
    M + "..%2Fadmin",
    M + "%252e%252e/admin",
    M + "%252E%252E%252Fadmin",
    # overlong UTF-8 dots, slashes and backslashes
    M + "%C0%AE%C0%AE/admin",
    M + "%c0%ae%c0%ae/admin",
    M + "%E0%80%AE%E0%80%AE/admin",
    M + "%F0%80%80%AE",
    M + "%C0%AF",
    M + "%C1%9C",
    # ';' path parameters
    M + "..;/admin",
    M + ".;x=1/admin",
    M + "%2e%2e;x/admin",
    M + "..%3B/admin",
    M + "..%3b/admin",
    M + ";x",
    M + "%3Bx",
    # backslashes, raw and encoded
    M + "..\\admin",
    M + "a\\b",
    M + "%5C",
    M + "%5c",
    M + "%5c..%5cadmin",
    M + "%255C",
    # NUL and controls
    M + "%00",
    M + "x%00.json",
    M + "%0A",
    M + "%0D%0AX-Injected:%201",
    M + "%1F",
    M + "%7F",
    # unicode the format keeps out, broken UTF-8, raw non-ASCII
    M + "%C2%85",
    M + "%E2%80%AE",
    M + "%E2%80%A8",
    M + "%F3%A0%80%81",
    M + "%ED%A0%80",
    M + "%F4%90%80%80",
    M + "%FF",
    M + "%C3",
    M + "caf\xc3\xa9",
    M + "\xff",
    # empty, dot and slash segments, stray escapes
    "/mail//v1/messages/x",
    M + "x/",
    "/mail/v1/./messages/x",
    "/mail/./v1/messages/x",
    M + "%2F",
    M + "a%2fb",
    M + "%",
    M + "%G1",
    M + "%2",
    M + "x#frag",
    M + "x{y}",
    M + "x|y",
    M + 'x"y',
    M + "x<y>",
    M + "x`y",
    M + "x^y",
    # too many segments, too long
    M + "/".join(["s"] * 63),
    M + "x" * 3000,
]


@pytest.mark.parametrize("target", REFUSED_PATHS, ids=range(len(REFUSED_PATHS)))
def test_path_tricks_are_refused_and_never_decided_or_forwarded(w, target):
    """GATEWAY.md §3.1: a path that is not one canonical spelling is 400 (or refused by the
    HTTP server), never resolved or repaired; nothing is logged or forwarded."""
    mark = w.srv.size()
    # signed for an in-scope resource, as an attacker holding the key would
    headers = signed(w, "GET", target, mail_request("/v1/messages/x"))
    r = send_raw(w, "GET", target, headers)
    assert_sane(r.status, r.body)
    assert 400 <= r.status < 500, (r.status, r.text)
    assert r.status != 403
    assert w.api.seen == []
    assert accesses_since(w, mark) == []


ACCEPTED_PATHS = [
    ("/mail/v1/messages/%7euser%2dx%5F%41", "/v1/messages/~user-x_A"),
    ("/mail/v1/messages/a;b", "/v1/messages/a;b"),
    ("/mail/v1/messages/...;x", "/v1/messages/...;x"),
    ("/mail/v1/messages/a%3bb", "/v1/messages/a%3Bb"),
    ("/mail/v1/messages/caf%c3%a9", "/v1/messages/caf%C3%A9"),
    ("/mail/v1/messages/%25", "/v1/messages/%25"),
    ("/mail/v1/messages/%25x", "/v1/messages/%25x"),
    ("/mail/v1/messages/...", "/v1/messages/..."),
    ("/mail/v1/messages/%20", "/v1/messages/%20"),
    ("/mail/v1/messages/" + "/".join(["s"] * 62), "/v1/messages/" + "/".join(["s"] * 62)),
]


@pytest.mark.parametrize(("target", "decided"), ACCEPTED_PATHS, ids=range(len(ACCEPTED_PATHS)))
def test_accepted_spellings_are_forwarded_exactly_as_decided(w, target, decided):
    """GATEWAY.md §3.1: the gateway decides on the canonical segments and forwards exactly
    them; the logged access and what the upstream received agree byte for byte."""
    headers = signed(w, "GET", target, mail_request(decided))
    r = send_raw(w, "GET", target, headers)
    assert r.status == 200, r.text
    assert [s.raw_path for s in w.api.seen] == [decided]
    assert_forwarded_as_decided(w, r.header("lineage-access")[0])


@pytest.mark.parametrize(
    "target",
    [
        "/MAIL/v1/messages/x",
        "/%6Dail/v1/messages/x",
        "/mail%2Fv1/messages/x",
        "//mail/v1/messages/x",
        "/./mail/v1/messages/x",
        "/pay/../mail/v1/messages/x",
        "/mail;x/v1/messages/x",
        "/healthz/../mail/v1/messages/x",
        "*",
        "mail/v1/messages/x",
    ],
)
def test_route_name_tricks_reach_no_upstream(w, target):
    """GATEWAY.md §5 check 1: the upstream is named by `/NAME` exactly; any other spelling is
    404 (or 400), never another route and never the upstream."""
    headers = signed(w, "GET", target, mail_request("/v1/messages/x"), htu=w.base + "/mail/x")
    r = send_raw(w, "GET", target, headers)
    assert_sane(r.status, r.body)
    assert 400 <= r.status < 500
    assert w.api.seen == []


def test_absolute_form_targets_never_reach_another_host_or_path(w):
    """`GET http://evil/... HTTP/1.1`: the gateway is no forward proxy. Whatever it does with
    an absolute-form target, it forwards nothing that was not decided in that form."""
    for target in (
        "http://evil.example/mail/v1/messages/abs",
        "http://127.0.0.1:1/mail/v1/messages/abs",
        "https://mail.example.com/v1/messages/abs",
        "http://evil.example/v1/messages/abs",
    ):
        headers = signed(w, "GET", target, mail_request("/v1/messages/abs"), htu=target)
        r = send_raw(w, "GET", target, headers)
        assert_sane(r.status, r.body)
        assert_forwarded_as_decided(w, (r.header("lineage-access") or [None])[0])
        w.api.seen.clear()


def test_the_upstream_sees_its_own_host_whatever_host_the_agent_names(w):
    """GATEWAY.md §6: `Host` is set from `url`. Another Host (the proof signed for it, as the
    contract allows without `public_url`) or two Hosts never reach the upstream."""
    target = "/mail/v1/messages/host"
    req = mail_request("/v1/messages/host")
    headers = signed(w, "GET", target, req, htu="http://evil.example" + target)
    r = send_raw(w, "GET", target, [("Host", "evil.example"), *headers.items()])
    assert_sane(r.status, r.body)
    upstream_host = urlsplit(w.api_base).netloc
    for seen in w.api.seen:
        assert seen.header("host") == [upstream_host]
    w.api.seen.clear()
    headers = signed(w, "GET", target, req)
    host = "{}:{}".format(*w.host)
    r = send_raw(w, "GET", target, [("Host", host), ("Host", "evil.example"), *headers.items()])
    assert_sane(r.status, r.body)
    for seen in w.api.seen:
        assert seen.header("host") == [upstream_host]


SEND = "/mail/v1/send"


def send_request(body: bytes, query: str = "", **attrs: Any) -> dict[str, Any]:
    return mail_request("/v1/send", "POST", query, body, **attrs)


def test_content_length_plus_chunked_smuggles_nothing(w):
    """A request with both `Content-Length` and `Transfer-Encoding: chunked`, whose chunked
    body ends early and carries a second request: the smuggled request never reaches the
    upstream, and nothing does unless decided."""
    smuggled = (
        b"0\r\n\r\nDELETE /mail/v1/messages/smuggled HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    body = b'{"to":"bob@corp.example"}'
    req = send_request(b"", to="bob@corp.example")
    for te in ("chunked", "Chunked", " chunked", "chunked, identity", "identity, chunked"):
        headers = [
            *signed(w, "POST", SEND, req).items(),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(smuggled))),
            ("Transfer-Encoding", te),
        ]
        r = send_raw(w, "POST", SEND, headers, smuggled + body)
        assert_sane(r.status, r.body)
        assert all("smuggled" not in s.raw_path for s in w.api.seen)
        assert_forwarded_as_decided(w, (r.header("lineage-access") or [None])[0])
        w.api.seen.clear()


def test_a_chunked_body_with_the_digest_of_another_body_is_refused(w):
    """GATEWAY.md §6.1: the digest is checked against the bytes as received, however they
    were framed; a chunked body signed as another body never reaches the upstream."""
    signed_body = b'{"to":"bob@corp.example","text":"hi"}'
    sent = b'{"to":"bob@corp.example","text":"wire the money"}'
    headers = [
        *signed(w, "POST", SEND, send_request(signed_body, to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"),
    ]
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(sent[i : i + 7]), sent[i : i + 7])
            for i in range(0, len(sent), 7)
        )
        + b"0\r\n\r\n"
    )
    r = send_raw(w, "POST", SEND, headers, chunked)
    assert r.status == 401, r.text
    assert "http.body" in r.json()["error_description"]
    assert w.api.seen == []


def test_a_chunked_body_that_matches_is_forwarded_whole_with_one_framing(w):
    """The chunked body is forwarded with the bytes decided and one framing header (no
    `Transfer-Encoding` beside a `Content-Length` the upstream could read differently)."""
    body = b'{"to":"bob@corp.example","text":"hi"}'
    headers = [
        *signed(w, "POST", SEND, send_request(body, to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"),
    ]
    chunked = b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:]
    chunked += b"\r\n0\r\nX-Trailer: evil\r\n\r\n"
    r = send_raw(w, "POST", SEND, headers, chunked)
    assert r.status == 200, r.text
    [seen] = w.api.seen
    assert seen.body == body
    assert not (seen.header("transfer-encoding") and seen.header("content-length"))
    assert seen.header("x-trailer") == []
    assert_forwarded_as_decided(w, r.header("lineage-access")[0])


def test_expect_100_continue_then_another_body_is_refused(w):
    """`Expect: 100-continue`: the body sent after the interim answer is the one checked;
    `Expect` itself is not forwarded (GATEWAY.md §6)."""
    signed_body = b'{"to":"bob@corp.example"}'
    for sent, ok in ((b'{"to":"eve@evil.example"}', False), (signed_body, True)):
        headers = [
            *signed(w, "POST", SEND, send_request(signed_body, to="bob@corp.example")).items(),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(sent))),
            ("Expect", "100-continue"),
        ]
        r = raw_http(w, build("POST", SEND, headers, w), then=sent)
        assert_sane(r.status, r.body)
        if ok:
            assert r.status == 200, r.text
            [seen] = w.api.seen
            assert seen.header("expect") == []
            assert seen.body == signed_body
        else:
            assert r.status in (400, 401), r.text
            assert w.api.seen == []


def test_a_body_shorter_than_its_content_length_is_never_forwarded(w):
    """The agent promises more bytes than it sends and hangs up: nothing is forwarded."""
    body = b'{"to":"bob@corp.example"}'
    headers = [
        *signed(w, "POST", SEND, send_request(body, to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body) + 100)),
    ]
    s = socket.create_connection(w.host, timeout=5)
    with s:
        s.sendall(build("POST", SEND, headers, w) + b"\r\n\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
    assert_sane(0, data)
    time.sleep(0.2)
    assert w.api.seen == []


@pytest.mark.parametrize("length", ["-1", "1e3", "0x10", "10, 20", "99999999999999999999"])
def test_bad_content_lengths_are_4xx(w, length):
    """A `Content-Length` that is not one decimal number is the HTTP server's 400 (or a
    dropped connection), never a guess at the body's end."""
    body = b'{"to":"bob@corp.example"}'
    headers = [
        *signed(w, "POST", SEND, send_request(body, to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Content-Length", length),
    ]
    r = send_raw(w, "POST", SEND, headers, body, timeout=5)
    assert_sane(r.status, r.body)
    assert r.status == 0 or 400 <= r.status < 500
    assert w.api.seen == []


@pytest.mark.parametrize(
    ("method", "proof_method", "signed_method"),
    [
        ("HEAD", "HEAD", "HEAD"),
        ("HEAD", "GET", "GET"),
        ("get", "get", "GET"),
        ("get", "GET", "GET"),
        ("Get", "Get", "GET"),
        ("OPTIONS", "OPTIONS", "OPTIONS"),
        ("TRACE", "TRACE", "TRACE"),
        ("PROPFIND", "PROPFIND", "PROPFIND"),
        ("PUT", "PUT", "PUT"),
        ("PATCH", "PATCH", "PATCH"),
        ("DELETE", "DELETE", "GET"),
        ("GET", "GET", "DELETE"),
    ],
)
def test_method_tricks_never_reach_the_upstream(w, method, proof_method, signed_method):
    """GATEWAY.md §2, §3.4: the method is decided as sent (`[A-Z]{1,16}`); an unmapped one is
    405, a lower-case one is not read as GET, HEAD is not GET."""
    target = "/mail/v1/messages/m"
    req = mail_request("/v1/messages/m", signed_method, action="read")
    headers = signed(w, method, target, req, htm=proof_method)
    r = send_raw(w, method, target, headers)
    assert_sane(r.status, r.body)
    assert 400 <= r.status < 500, (r.status, r.text)
    assert w.api.seen == []


def test_connect_and_asterisk_targets_are_refused(w):
    """CONNECT (authority-form), `OPTIONS *`, HTTP/1.0 without Host, other versions, no
    version, a NUL in the method: 4xx or a closed connection, never forwarded."""
    for head in (
        f"CONNECT {w.api_base[7:]} HTTP/1.1\r\nHost: {w.api_base[7:]}\r\nConnection: close",
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close",
        "GET /mail/v1/messages/x HTTP/1.0",
        "GET /mail/v1/messages/x HTTP/2.0\r\nHost: x\r\nConnection: close",
        "GET /mail/v1/messages/x\r\nHost: x",
        "G\x00T /mail/v1/messages/x HTTP/1.1\r\nHost: x",
    ):
        r = raw_http(w, head.encode("latin-1"), timeout=5)
        assert_sane(r.status, r.body)
        assert r.status == 0 or 400 <= r.status < 500, (head, r.status, r.text)
    assert w.api.seen == []


def _allowed_get(w: Stack, extra: list[tuple[str, str]], path="/v1/messages/h") -> Answer:
    target = "/mail" + path
    headers = [*signed(w, "GET", target, mail_request(path)).items(), *extra]
    r = send_raw(w, "GET", target, headers)
    assert r.status == 200, r.text
    return r


METHOD_OVERRIDES = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-Method", "DELETE"),
]
PATH_OVERRIDES = [
    ("X-Original-URL", "/v1/admin/delete-all"),
    ("X-Rewrite-URL", "/v1/admin/delete-all"),
    ("X-Override-URL", "/v1/admin/delete-all"),
]


def test_method_override_headers_do_not_reach_the_upstream(w):
    """The decision saw GET (action `read`); an upstream honouring `X-HTTP-Method-Override`
    (Rack::MethodOverride, Express method-override, Symfony, ASP.NET's
    UseHttpMethodOverride, Spring HiddenHttpMethodFilter-style filters) would perform
    DELETE. Headers that change the method are not part of what was decided, so they must
    not be forwarded."""
    _allowed_get(w, METHOD_OVERRIDES)
    [seen] = w.api.seen
    leaked = {k: seen.header(k) for k, _ in METHOD_OVERRIDES if seen.header(k)}
    assert leaked == {}, f"forwarded un-decided method overrides: {leaked}"


def test_path_override_headers_do_not_reach_the_upstream(w):
    """The decision saw `/v1/messages/h`; an upstream honouring `X-Original-URL` or
    `X-Rewrite-URL` (Symfony/Laminas behind IIS, IIS URL Rewrite) would serve
    `/v1/admin/delete-all`. They must not be forwarded."""
    _allowed_get(w, PATH_OVERRIDES)
    [seen] = w.api.seen
    leaked = {k: seen.header(k) for k, _ in PATH_OVERRIDES if seen.header(k)}
    assert leaked == {}, f"forwarded un-decided path overrides: {leaked}"


def test_the_agents_own_credentials_and_secret_header_never_reach_the_upstream(w):
    """GATEWAY.md §6: `Cookie`, `Proxy-*`, hop-by-hop headers and the header the secret is
    attached as are the gateway's, not the agent's; the upstream gets exactly one key."""
    r = _allowed_get(
        w,
        [
            ("X-Api-Key", "agent-chosen-key"),
            ("x-api-key", "agent-chosen-key-2"),
            ("Cookie", "session=agent"),
            ("Proxy-Authorization", "Basic YTpi"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("X-Hop", "1"),
            ("Connection", "close, X-Hop"),
        ],
    )
    [seen] = w.api.seen
    assert seen.header("x-api-key") == [MAIL_SECRET]
    for name in ("cookie", "proxy-authorization", "keep-alive", "te", "upgrade", "x-hop"):
        assert seen.header(name) == [], name
    for name in ("authorization", "dpop", "lineage-invocation"):
        assert seen.header(name) == [], name
    assert w.handle not in json.dumps(seen.headers)
    assert r.header("lineage-access")


def test_a_connection_header_naming_the_secret_header_cannot_strip_or_replace_it(w):
    _allowed_get(w, [("Connection", "close, X-Api-Key, Host, Content-Length")])
    [seen] = w.api.seen
    assert seen.header("x-api-key") in ([MAIL_SECRET], [])
    assert seen.header("host") == [urlsplit(w.api_base).netloc]


def test_the_logged_source_ip_is_the_peer_not_a_forwarded_for_header(w):
    """GATEWAY.md §9: the access entry's `source_ip` is where the request came from. An agent
    on the gateway's host (the default listen address is 127.0.0.1, which uvicorn trusts as
    a proxy by default) must not write another address into the log with one header."""
    r = _allowed_get(w, [("X-Forwarded-For", "203.0.113.66")])
    context = entry(w, r.header("lineage-access")[0])["context"]
    assert context.get("source_ip") in (None, "127.0.0.1"), context


def test_a_forwarded_host_does_not_reach_the_upstream(w):
    """A multi-tenant upstream that picks the tenant from `X-Forwarded-Host`/`Forwarded`
    (Rails, Django with USE_X_FORWARDED_HOST, Spring's ForwardedHeaderFilter) would act for
    another host than the decided `location`; these headers are not the agent's to set."""
    extra = [
        ("X-Forwarded-Host", "other-tenant.example.com"),
        ("X-Forwarded-Prefix", "/admin"),
        ("Forwarded", "host=other-tenant.example.com;proto=https"),
        ("X-Host", "other-tenant.example.com"),
    ]
    _allowed_get(w, extra)
    [seen] = w.api.seen
    leaked = {k: seen.header(k) for k, _ in extra if seen.header(k)}
    assert leaked == {}, f"forwarded un-decided host/prefix overrides: {leaked}"


FOLDER = "/mail/v1/folders/f"


def folder_get(w: Stack, query: str) -> Answer:
    """GET /v1/folders/f?QUERY, signed for what the contract says the gateway reads: the
    `folder` the attacker wants decided is `inbox` (the only one the scope allows)."""
    target = f"{FOLDER}?{query}"
    req = mail_request("/v1/folders/f", "GET", query, folder="inbox")
    r = send_raw(w, "GET", target, signed(w, "GET", target, req))
    assert_sane(r.status, r.body)
    return r


@pytest.mark.parametrize(
    "query",
    [
        "folder=inbox&folder=sent",
        "folder=sent&folder=inbox",
        "folder=inbox;folder=sent",
        "folder=inbox&x=1;folder=sent",
        "folder=inbox&fold%65r=sent",
        "fold%65r=sent&folder=inbox",
        "folder=inbox&folder",
        "folder=inbox&folder=",
        "folder=inbox&%66older=sent",
        "folder=%E9",
        "folder=inbox%ZZ&x=%",
        "folder=inbox&&=",
        "folder=inbox&folder%00=sent",
    ],
)
def test_query_pollution_is_refused_or_decided_as_read(w, query):
    """GATEWAY.md §3.3: a parameter a field reads that appears twice (after decoding), a `;`,
    or a part that does not decode is 400; the upstream never sees a query whose `folder`
    could be read as something other than what was decided."""
    r = folder_get(w, query)
    if r.status == 200:  # then it was decided as the gateway read it, and only that way
        [seen] = w.api.seen
        assert seen.query == query
        assert_forwarded_as_decided(w, r.header("lineage-access")[0])
        from urllib.parse import parse_qs

        assert parse_qs(query).get("folder") == ["inbox"], query
    else:
        assert r.status in (400, 401, 403), r.text
        assert w.api.seen == []


@pytest.mark.parametrize(
    ("query", "upstream"),
    [
        ("FOLDER=sent&folder=inbox", "ASP.NET Core (case-insensitive keys, first value)"),
        ("folder=inbox&Folder=sent", "ASP.NET Core (case-insensitive keys) / IIS"),
        ("folder=inbox&folder[]=sent", "PHP ($_GET['folder'] becomes ['sent'])"),
    ],
)
def test_a_field_parameter_a_common_server_reads_twice_is_refused(w, query, upstream):
    """Query pollution the `;` rule does not cover: the gateway reads `folder=inbox`; the
    named server reads the other spelling of the same parameter as `folder` (`sent`). A
    parameter that a common server folds onto a field's key is that field appearing twice."""
    r = folder_get(w, query)
    assert r.status == 400, f"{upstream} would read folder=sent; gateway answered {r.status}"
    assert w.api.seen == []


@pytest.mark.parametrize(
    ("query", "allowed"),
    [
        ("folder=inbox", True),
        ("folder=%69nbox", True),
        ("folder=inbox+", False),
        ("folder=in%20box", False),
        ("folder=in+box", False),
        ("folder=inbox%00", False),
        ("folder=INBOX", False),
        ("folder=inbo%78", True),
    ],
)
def test_query_values_are_decided_as_decoded(w, query, allowed):
    """`+` is a space, escapes are decoded, case is kept: the decided value is what a
    form-urlencoded reader reads, and only `inbox` is allowed."""
    target = f"{FOLDER}?{query}"
    from urllib.parse import parse_qs

    value = parse_qs(query)["folder"][0]
    req = mail_request("/v1/folders/f", "GET", query, folder=value)
    r = send_raw(w, "GET", target, signed(w, "GET", target, req))
    assert_sane(r.status, r.body)
    if allowed:
        assert r.status == 200, r.text
        assert_forwarded_as_decided(w, r.header("lineage-access")[0])
    else:
        assert r.status in (400, 403), r.text
        assert w.api.seen == []


@pytest.mark.parametrize(
    "query",
    ["x=" + "a" * 1100, "x=<script>", 'x="', "x=a|b", "x=a^b", "x=a`b", "x={}", "x=a\\b"],
)
def test_queries_outside_the_alphabet_are_refused(w, query):
    """GATEWAY.md §3.2: at most 1,024 characters of a fixed alphabet, else 414 or 400."""
    target = f"/mail/v1/messages/q?{query}"
    req = mail_request("/v1/messages/q", "GET", query[:1024])
    r = send_raw(w, "GET", target, signed(w, "GET", target, req))
    assert_sane(r.status, r.body)
    assert r.status in (400, 414), r.text
    assert w.api.seen == []


def post_send(
    w: Stack,
    body: bytes,
    content_type: str | list[str] | None = "application/json",
    to: str | None = "bob@corp.example",
) -> Answer:
    attrs = {"to": to} if to is not None else {}
    headers = list(signed(w, "POST", SEND, send_request(body, **attrs)).items())
    cts = [content_type] if isinstance(content_type, str) else (content_type or [])
    headers += [("Content-Type", ct) for ct in cts]
    r = send_raw(w, "POST", SEND, headers, body)
    assert_sane(r.status, r.body)
    return r


BOB = b'"bob@corp.example"'
EVE = b'"eve@evil.example"'
JSON_TRICKS = [
    b'{"to":' + BOB + b',"to":' + EVE + b"}",
    b'{"to":' + EVE + b',"to":' + BOB + b"}",
    b'{"to":' + BOB + b',"t\\u006f":' + EVE + b"}",
    b'{"t\\u006F":' + EVE + b',"to":' + BOB + b"}",
    b'\xef\xbb\xbf{"to":' + BOB + b"}",
    '{"to":"bob@corp.example"}'.encode("utf-16"),
    '{"to":"bob@corp.example"}'.encode("utf-16-le"),
    '{"to":"bob@corp.example"}'.encode("utf-32"),
    b'{"to":' + BOB + b"} " + b'{"to":' + EVE + b"}",
    b'{"to":' + BOB + b"}\x00" + b'{"to":' + EVE + b"}",
    b'{"to":' + BOB + b"}garbage",
    b'[{"to":' + BOB + b"}]",
    b'{"to":' + BOB + b',"x":NaN}',
    b'{"to":' + BOB + b',"x":-Infinity}',
    b'{"to":null}',
    b'{"to":["bob@corp.example","eve@evil.example"]}',
    b'{"to":{"address":"bob@corp.example"}}',
    b'{"to":1}',
    b'{"to":true}',
    b'{"to":' + BOB + b",}",
    b"{'to':'bob@corp.example'}",
    b'{to:"bob@corp.example"}',
    b'{"to":' + BOB + b'/*,"to":' + EVE + b"*/}",
    b'{"to":"bob@corp.example\xff"}',
    b'{"to":"bob@corp.example","x":"' + b"\xed\xa0\x80" + b'"}',
    b'{"to":' + BOB + b',"x":' + b"[" * 100000 + b"]" * 100000 + b"}",
    b'{"to":"' + b"b" * 1025 + b'"}',
]


@pytest.mark.parametrize("body", JSON_TRICKS, ids=range(len(JSON_TRICKS)))
def test_json_bodies_two_readers_could_read_differently_are_refused(w, body):
    """GATEWAY.md §3.3: a body field's body is one JSON object, RFC 8259, UTF-8, each member
    once, no NaN/Infinity, no null; anything else is 400 (or 415), decided and forwarded
    never. Signed as `to: bob`, the value the attacker hopes the gateway reads."""
    r = post_send(w, body)
    assert r.status in (400, 401, 403, 413, 415), (r.status, r.text)
    assert w.api.seen == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"to":' + BOB + b',"__proto__":{"to":' + EVE + b"}}",
        b'{"to":' + BOB + b',"constructor":{"prototype":{"to":' + EVE + b"}}}",
        b'{"to":' + BOB + b',"nested":{"to":' + EVE + b"}}",
        b' \r\n\t{"to":' + BOB + b"} \n",
        b'{"to":"bob@corp.\\u0065xample"}',
    ],
)
def test_json_bodies_every_reader_reads_alike_are_decided_and_forwarded_as_sent(w, body):
    """Nested members and `__proto__` are just members: `to` is `bob` for JSON.parse,
    json.loads and Jackson alike, and the bytes forwarded are the bytes decided."""
    r = post_send(w, body)
    assert r.status == 200, r.text
    [seen] = w.api.seen
    assert seen.body == body
    assert json.loads(seen.body)["to"] == "bob@corp.example"
    assert_forwarded_as_decided(w, r.header("lineage-access")[0])


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-seq",
        "",
        None,
    ],
)
def test_json_sent_as_another_media_type_is_415(w, content_type):
    """GATEWAY.md §3.3: body fields are read from `application/json` or `*+json` only."""
    body = b'{"to":"bob@corp.example","x":"&to=eve@evil.example&"}'
    r = post_send(w, body, content_type)
    assert r.status in (400, 415), (r.status, r.text)
    assert w.api.seen == []


def test_two_content_types_are_not_read_one_way_and_forwarded_for_the_other(w):
    """`Content-Type: application/json` and `Content-Type: application/x-www-form-urlencoded`:
    the body `{"to":"bob@corp.example","x":"&to=eve@evil.example&"}` is `to=bob` as JSON
    and `to=eve` as a form (gunicorn/WSGI takes the last Content-Type). Either refused, or
    the upstream gets exactly one Content-Type, the JSON one the gateway read."""
    from urllib.parse import parse_qs

    body = b'{"to":"bob@corp.example","x":"&to=eve@evil.example&"}'
    assert parse_qs(body.decode())["to"] == ["eve@evil.example"]
    r = post_send(w, body, ["application/json", "application/x-www-form-urlencoded"])
    if r.status == 200:
        [seen] = w.api.seen
        assert seen.header("content-type") == ["application/json"], seen.header("content-type")
    else:
        assert 400 <= r.status < 500
        assert w.api.seen == []


UTF7_POLYGLOT = (
    b'{"to":"bob@corp.example","x":"+ACIALAAi-to+ACIAOgAi-eve@evil.example+ACIALAAi-y+ACIAOgAi-"}'
)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-7",
        "application/json; charset=UTF-7",
        "application/json; charset=utf-8; charset=utf-7",
    ],
)
def test_a_json_body_declared_in_another_charset_is_refused(w, content_type):
    """The gateway reads the body as UTF-8 (`to: bob`). Declared `charset=utf-7`, an upstream
    that honours the declared charset (any `body.decode(charset)`; Python's header parsers
    take the last `charset` of two) reads
    `{"to":"bob@corp.example","x":"","to":"eve@evil.example","y":""}`: `to` is `eve`.
    RFC 8259 JSON is UTF-8; a body field's body declared otherwise must be refused."""
    assert json.loads(UTF7_POLYGLOT)["to"] == "bob@corp.example"
    assert json.loads(UTF7_POLYGLOT.decode("utf-7"))["to"] == "eve@evil.example"
    r = post_send(w, UTF7_POLYGLOT, content_type)
    got = [json.loads(s.body.decode("utf-7"))["to"] for s in w.api.seen]
    assert r.status in (400, 415), f"{r.status}: forwarded, a charset-honouring API sends to {got}"
    assert w.api.seen == []


@pytest.mark.parametrize(
    ("body", "upstream"),
    [
        (b'{"to":' + BOB + b',"TO":' + EVE + b"}", "ASP.NET Core (Web defaults: case-insensitive)"),
        (b'{"To":' + EVE + b',"to":' + BOB + b"}", "Jackson ACCEPT_CASE_INSENSITIVE_PROPERTIES"),
    ],
)
def test_a_body_field_in_another_case_is_refused(w, body, upstream):
    """The gateway reads `to: bob`. ASP.NET Core model binding (JsonSerializerDefaults.Web,
    PropertyNameCaseInsensitive) and case-insensitive Jackson read `To`/`TO` as `to`, last
    one winning: the upstream sends to eve. A member that a common binder folds onto a
    field's key is that member appearing twice."""
    r = post_send(w, body)
    assert r.status == 400, f"{upstream} would read to=eve; gateway answered {r.status}"
    assert w.api.seen == []


def post_pay(w: Stack, body: bytes, amount: Any = 50) -> Answer:
    target = "/pay/v1/charge"
    attrs = {"amount": amount} if amount is not None else {}
    req = {
        "type": "payment",
        "action": "pay",
        "location": PAY,
        "resource": PAY + "/v1/charge",
        "attributes": {"http.method": "POST", "http.query": "", "http.body": digest(body), **attrs},
    }
    headers = [*signed(w, "POST", target, req).items(), ("Content-Type", "application/json")]
    r = send_raw(w, "POST", target, headers, body)
    assert_sane(r.status, r.body)
    return r


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount":1e2}',
        b'{"amount":1E2}',
        b'{"amount":100.0}',
        b'{"amount":100.9}',
        b'{"amount":0.5e2}',
        b'{"amount":50.000000000000001}',
        b'{"amount":1e400}',
        b'{"amount":-1e400}',
        b'{"amount":9007199254740993}',
        b'{"amount":-9007199254740993}',
        b'{"amount":100000000000000000000000000000000000000000050}',
        b'{"amount":"50"}',
        b'{"amount":true}',
        b'{"amount":050}',
        b'{"amount":+50}',
        b'{"amount":0x32}',
        b'{"amount":50,"amount":5000}',
        b'{"amount":5000,"amount":50}',
    ],
)
def test_numbers_two_readers_could_read_differently_are_refused(w, body):
    """GATEWAY.md §3.3: an integer field is an integer within ±(2^53 − 1): no exponent, no
    fraction, no big number a double rounds (to 50 for the gateway, more for a big-number
    reader), no string; signed as `amount: 50`."""
    r = post_pay(w, body)
    assert r.status in (400, 401), (r.status, r.text)
    assert w.api.seen == []


def test_an_integer_field_in_another_case_is_refused(w):
    """`{"amount":50,"Amount":5000}`: the gateway decides 50 (≤ 100, allowed); ASP.NET Core
    (case-insensitive binding, last wins) charges 5000."""
    r = post_pay(w, b'{"amount":50,"Amount":5000}')
    assert r.status == 400, f"ASP.NET Core would charge 5000; gateway answered {r.status}"
    assert w.api.seen == []


def test_an_integer_within_the_constraint_is_forwarded_exactly(w):
    for body, amount, status in (
        (b'{"amount":50}', 50, 200),
        (b'{"amount":101}', 101, 403),
        (b'{"amount":-0}', 0, 200),
    ):
        w.api.seen.clear()
        r = post_pay(w, body, amount)
        assert r.status == status, r.text
        if status == 200:
            [seen] = w.api.seen
            assert seen.raw_path == "/pay/v1/charge" and seen.body == body
            assert_forwarded_as_decided(w, r.header("lineage-access")[0])
        else:
            assert w.api.seen == []


def test_a_request_body_with_a_content_encoding_is_not_read_as_its_fields(w):
    """The gateway reads fields from the bytes as sent; an upstream that honours the agent's
    `Content-Encoding: gzip` reads the decompressed `to: eve`. Either refused, or the coding
    header does not travel with bytes the gateway read another way."""
    body = gzip.compress(b'{"to":"eve@evil.example"}')
    headers = [
        *signed(w, "POST", SEND, send_request(body, to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ]
    r = send_raw(w, "POST", SEND, headers, body)
    assert_sane(r.status, r.body)
    assert 400 <= r.status < 500
    assert w.api.seen == []


def test_a_body_over_the_body_limit_is_413_and_never_forwarded(w):
    """GATEWAY.md §2 `body_limit`: bytes read before deciding when a field needs the body;
    more is 413. 1 MiB + 32 bytes, sent at once, must not be read, decided and forwarded."""
    body = b'{"to":"bob@corp.example","x":"' + b"a" * (1 << 20) + b'"}'
    r = post_send(w, body)
    assert r.status == 413, f"{r.status}: {len(body)} bytes read and decided (limit 1 MiB)"
    assert w.api.seen == []


def test_a_declared_length_over_max_body_is_413_at_once(w):
    headers = [
        *signed(w, "POST", SEND, send_request(b"", to="bob@corp.example")).items(),
        ("Content-Type", "application/json"),
        ("Content-Length", str(1 << 40)),
    ]
    r = send_raw(w, "POST", SEND, headers, timeout=5)
    assert_sane(r.status, r.body)
    assert r.status == 413, r.text
    assert w.api.seen == []


def test_a_chunked_body_over_max_body_is_413_and_never_forwarded(w):
    """GATEWAY.md §2 `max_body`: bytes streamed to the upstream at most; more is 413. With no
    `Content-Length` to refuse up front (chunked), the count must still hold: route `small`
    has `max_body = 100`, and 5,000 bytes in one chunk must not be forwarded."""
    body = b"x" * 5000
    target = "/small/v1/blob"
    req = {
        "type": "web",
        "action": "post",
        "location": SMALL,
        "resource": SMALL + "/v1/blob",
        "attributes": {"http.method": "POST", "http.query": "", "http.body": digest(body)},
    }
    headers = [*signed(w, "POST", target, req).items(), ("Transfer-Encoding", "chunked")]
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    r = send_raw(w, "POST", target, headers, chunked)
    assert_sane(r.status, r.body)
    got = [len(x.body) for x in w.api.seen]
    assert r.status == 413, f"{r.status}: the upstream received {got} bytes (max_body 100)"
    assert w.api.seen == []


# === 3. Authentication ===================================================================

AUTH = "/mail/v1/messages/auth"
AUTH_REQ = mail_request("/v1/messages/auth")


def _grant(w: Stack, agent: Agent, ttl: int = 900) -> str:
    client = LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey)
    try:
        return client.grant(w.srv.alice, "alice@corp", agent, task="mail", scope=SCOPE, ttl=ttl)
    finally:
        client.close()


@pytest.fixture(scope="module")
def other(st: Stack) -> tuple[Agent, str]:
    """A second agent with its own credential (the same scope)."""
    agent = Agent.ephemeral()
    return agent, _grant(st, agent)


def _refused(w: Stack, r: Answer, mark: int | None = None, status=(401,)) -> None:
    assert_sane(r.status, r.body)
    assert r.status in status, (r.status, r.text)
    assert w.api.seen == []
    if mark is not None:
        assert accesses_since(w, mark) == []


def test_a_proof_for_another_url_or_method_is_refused(w):
    mark = w.srv.size()
    for over in (
        {"htu": w.base + "/mail/v1/messages/other"},
        {"htu": w.base + "/leak/v1/messages/auth"},
        {"htu": "http://evil.example/mail/v1/messages/auth"},
        {"htm": "POST"},
        {"htm": "get"},
    ):
        r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, **over))
        _refused(w, r, mark)
        assert "invalid_dpop_proof" in r.text or "invalid_token" in r.text


def test_a_proof_whose_htu_differs_only_in_query_or_normalisation_is_accepted(w):
    """API.md: `htu` is compared after RFC 3986 normalisation; the query is ignored."""
    for htu in (
        w.base + AUTH + "?x=1",
        w.base.replace("http://", "HTTP://") + AUTH,
        w.base + "/mail/v1/messages/%61uth",
    ):
        r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, htu=htu))
        assert r.status == 200, (htu, r.text)
        w.api.seen.clear()


def test_a_replayed_proof_is_refused_with_a_fresh_invocation(w):
    """GATEWAY.md §4: a `jti` is accepted once per gateway process."""
    first = signed(w, "GET", AUTH, AUTH_REQ)
    assert send_raw(w, "GET", AUTH, first).status == 200
    w.api.seen.clear()
    again = signed(w, "GET", AUTH, AUTH_REQ)
    again["DPoP"] = first["DPoP"]
    _refused(w, send_raw(w, "GET", AUTH, again))


def test_a_replayed_invocation_is_refused_with_a_fresh_proof(w):
    first = signed(w, "GET", AUTH, AUTH_REQ)
    assert send_raw(w, "GET", AUTH, first).status == 200
    w.api.seen.clear()
    again = signed(w, "GET", AUTH, AUTH_REQ)
    again[INVOCATION_HEADER] = first[INVOCATION_HEADER]
    _refused(w, send_raw(w, "GET", AUTH, again))


def test_a_proof_by_another_key_than_the_invocation_is_refused(w, other):
    """DPoP by the other agent's key (bound to this credential by `ath`), invocation by the
    holder: the two keys differ (§5 check 3/6)."""
    mark = w.srv.size()
    agent2, _ = other
    r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, proof_key=agent2))
    _refused(w, r, mark)


def test_a_stolen_credential_id_is_useless_without_its_key(w, other):
    """An attacker knows this credential's id and signs proof and invocation with its own
    key: the decision point finds no proof of possession (401, not logged)."""
    mark = w.srv.size()
    agent2, _ = other
    r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, agent=agent2))
    _refused(w, r, mark)


def test_an_invocation_for_another_credential_is_refused(w, other):
    """`Authorization` names one credential, the invocation another (both the attacker's,
    or one each): step 6, 401."""
    mark = w.srv.size()
    agent2, handle2 = other
    headers = signed(w, "GET", AUTH, AUTH_REQ, agent=agent2, handle=handle2)
    mine = signed(w, "GET", AUTH, AUTH_REQ)
    headers[INVOCATION_HEADER] = mine[INVOCATION_HEADER]
    _refused(w, send_raw(w, "GET", AUTH, headers), mark)
    headers = signed(w, "GET", AUTH, AUTH_REQ)
    headers[INVOCATION_HEADER] = signed(w, "GET", AUTH, AUTH_REQ, agent=agent2, handle=handle2)[
        INVOCATION_HEADER
    ]
    _refused(w, send_raw(w, "GET", AUTH, headers), mark)


def test_an_invocation_for_another_route_is_refused(w):
    """Signed for the payment API, sent to the mail API's path: step 8."""
    req = dict(AUTH_REQ, type="payment", action="pay", location=PAY, resource=PAY + "/v1/x")
    _refused(w, send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, req)))


def test_a_stale_or_future_invocation_is_refused(w):
    mark = w.srv.size()
    for skew in (-3600, 3600):
        headers = signed(w, "GET", AUTH, AUTH_REQ)
        inv = sign_invocation(w.agent.key, w.handle, AUTH_REQ, int(w.srv.clock()) + skew)
        headers[INVOCATION_HEADER] = encode_invocation(inv)
        _refused(w, send_raw(w, "GET", AUTH, headers), mark)


def test_a_stale_proof_is_refused(w):
    headers = signed(w, "GET", AUTH, AUTH_REQ)
    headers["DPoP"] = make_proof(
        w.agent.key.seed, "GET", w.base + AUTH, access_token=w.handle, iat=int(time.time()) - 600
    )
    _refused(w, send_raw(w, "GET", AUTH, headers))


def test_a_revoked_credential_reaches_nothing(w):
    """Revoked by its holder (POST /oauth/revoke, API.md): the next request is refused."""
    agent = Agent.ephemeral()
    handle = _grant(w, agent)
    ok = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, agent=agent, handle=handle))
    assert ok.status == 200, ok.text
    w.api.seen.clear()
    client = LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey)
    client.revoke(handle, holder=agent, reason="compromised")
    client.close()
    r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, agent=agent, handle=handle))
    _refused(w, r, status=(401, 403))


def test_an_expired_credential_reaches_nothing(w):
    agent = Agent.ephemeral()
    handle = _grant(w, agent, ttl=2)
    time.sleep(2.5)
    r = send_raw(w, "GET", AUTH, signed(w, "GET", AUTH, AUTH_REQ, agent=agent, handle=handle))
    _refused(w, r, status=(401, 403))


def test_a_revoked_parent_revokes_a_delegated_child(w):
    parent_agent = Agent.ephemeral()
    parent = _grant(w, parent_agent)
    child_agent = Agent.ephemeral()
    client = LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey)
    child = client.delegate(
        parent_agent, parent, child_agent, task="mail/read", scope=[SCOPE[0]], max_depth=0
    )
    client.revoke(parent, holder=parent_agent)
    client.close()
    h = signed(w, "GET", AUTH, AUTH_REQ, agent=child_agent, handle=child)
    _refused(w, send_raw(w, "GET", AUTH, h), status=(401, 403))


@pytest.mark.parametrize(
    "mangle",
    [
        "two-authorization-same",
        "two-authorization-other",
        "two-dpop",
        "two-invocations-same",
        "two-invocations-other",
        "no-invocation",
        "no-dpop",
        "bearer",
        "lowercase-credential",
        "credential-plus-junk",
        "invocation-padded",
        "invocation-std-base64",
        "invocation-huge",
        "invocation-12289",
        "invocation-60k",
        "authorization-huge",
    ],
)
def test_malformed_credentials_are_401_and_reach_nothing(w, other, mangle):
    """GATEWAY.md §4: exactly one `Authorization: DPoP <credential>`, one `DPoP`, one
    `Lineage-Invocation` of at most 12,288 base64url characters; else 401 (or the HTTP
    server's 4xx for a header too large), nothing logged, nothing forwarded."""
    mark = w.srv.size()
    agent2, handle2 = other
    h = signed(w, "GET", AUTH, AUTH_REQ)
    h2 = signed(w, "GET", AUTH, AUTH_REQ, agent=agent2, handle=handle2)
    inv = h[INVOCATION_HEADER]
    items = list(h.items())
    if mangle == "two-authorization-same":
        items.append(("Authorization", h["Authorization"]))
    elif mangle == "two-authorization-other":
        items.append(("Authorization", h2["Authorization"]))
    elif mangle == "two-dpop":
        items.append(("DPoP", signed(w, "GET", AUTH, None)["DPoP"]))
    elif mangle == "two-invocations-same":
        items.append((INVOCATION_HEADER, inv))
    elif mangle == "two-invocations-other":
        items.append((INVOCATION_HEADER, signed(w, "GET", AUTH, AUTH_REQ)[INVOCATION_HEADER]))
    elif mangle == "no-invocation":
        items = [(k, v) for k, v in items if k != INVOCATION_HEADER]
    elif mangle == "no-dpop":
        items = [(k, v) for k, v in items if k != "DPoP"]
    elif mangle == "bearer":
        items = [(k, f"Bearer {w.handle}" if k == "Authorization" else v) for k, v in items]
    elif mangle == "lowercase-credential":
        items = [(k, f"DPoP {w.handle.upper()}" if k == "Authorization" else v) for k, v in items]
    elif mangle == "credential-plus-junk":
        items = [(k, f"DPoP {w.handle} x" if k == "Authorization" else v) for k, v in items]
    elif mangle == "invocation-padded":
        items = [(k, v + "==" if k == INVOCATION_HEADER else v) for k, v in items]
    elif mangle == "invocation-std-base64":
        items = [
            (k, v.replace("-", "+").replace("_", "/") if k == INVOCATION_HEADER else v)
            for k, v in items
        ]
        if "+" not in dict(items)[INVOCATION_HEADER] and "/" not in dict(items)[INVOCATION_HEADER]:
            items = [(k, v + "+" if k == INVOCATION_HEADER else v) for k, v in items]
    elif mangle.startswith("invocation-"):
        n = {"invocation-huge": 1 << 20, "invocation-12289": 12289, "invocation-60k": 60000}
        items = [
            (k, (v * (n[mangle] // len(v) + 1))[: n[mangle]] if k == INVOCATION_HEADER else v)
            for k, v in items
        ]
    elif mangle == "authorization-huge":
        items = [(k, "DPoP " + "a" * 200000 if k == "Authorization" else v) for k, v in items]
    r = send_raw(w, "GET", AUTH, items)
    _refused(w, r, mark, status=(0, 400, 401, 413, 431))


# === 2. The secret never reaches the agent ===============================================


def _unescape_json(text: str) -> str:
    import re

    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _decompressions(data: bytes, depth: int = 0) -> Iterator[bytes]:
    yield data
    if depth >= 3:
        return
    for wbits in (31, 15, -15):
        try:
            out = zlib.decompressobj(wbits).decompress(data)
        except zlib.error:
            continue
        if out:
            yield from _decompressions(out, depth + 1)


def reveals(data: bytes | str) -> list[str]:
    """The spellings of the secret an agent could read out of ``data``: as is, in any case,
    percent-decoded, JSON-unescaped, base64-decoded, or decompressed (gzip/zlib/deflate,
    nested). Empty when the secret is not there in any of them."""
    import binascii
    import re
    from urllib.parse import unquote_to_bytes

    raw = data.encode("latin-1", "replace") if isinstance(data, str) else data
    secret = MAIL_SECRET.encode()
    found = []
    for blob in _decompressions(raw):
        text = blob.decode("latin-1")
        views = {
            "as is": blob,
            "any case": blob.lower(),
            "percent-decoded": unquote_to_bytes(text).lower(),
            "json-unescaped": _unescape_json(text).encode("latin-1", "replace").lower(),
        }
        for token in re.findall(rb"[A-Za-z0-9+/=_-]{16,}", blob):
            with contextlib.suppress(binascii.Error, ValueError):
                views[f"base64 {token[:8]!r}"] = base64.b64decode(
                    token.replace(b"-", b"+").replace(b"_", b"/") + b"==="
                )
        found += [name for name, view in views.items() if secret in view]
    return found


def fetch(w: Stack, url: str, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What the agent's process receives, undecoded: the status, raw headers, raw bytes."""
    with w.session() as s, s.stream(method, url) as r:
        raw = b""
        try:
            for part in r.iter_raw():
                raw += part
        except httpx.HTTPError:
            pass
        return r.status_code, list(r.headers.raw), raw


def assert_no_secret(status: int, headers: list[tuple[bytes, bytes]], raw: bytes) -> None:
    leaked = [(k, v, reveals(k + b": " + v)) for k, v in headers if reveals(k + b": " + v)]
    assert not leaked, f"the secret is readable in headers: {leaked}"
    found = reveals(raw)
    assert not found, f"the secret is readable in the body ({found}): {raw[:200]!r}"
    assert b"Traceback" not in raw


LEAKS = [
    "header",
    "header-name",
    "plain",
    "json-std",
    "split",
    "sse",
    "gzip",
    "GZIP",
    "x-gzip",
    "gzip-gzip",
    "deflate",
    "raw-deflate",
    "redirect",
    "error",
]


@pytest.mark.parametrize("how", LEAKS)
def test_an_upstream_echoing_its_secret_never_hands_it_to_the_agent(w, how):
    """GATEWAY.md §6: no header containing the secret; every spelling of it in the body (as
    is, percent-encoded, JSON-escaped) is masked, across chunk boundaries, in compressed
    bodies (decoded first), in redirects and in error pages."""
    status, headers, raw = fetch(w, f"{LEAK}/v1/{how}")
    assert w.leaky.seen == [f"/v1/{how}"]
    assert_no_secret(status, headers, raw)


@pytest.mark.parametrize("how", ["header-pct", "pct", "split-pct", "json"])
def test_every_byte_escaped_spellings_of_the_secret_are_masked_too(w, how):
    """GATEWAY.md §6: "every spelling of the secret ... percent-encoded, JSON-escaped". This
    secret is all unreserved characters, so its only other percent-encoded and JSON-escaped
    spellings escape every byte (`%6D%61...`, `\\u006d\\u0061...`); any URL or JSON decoder
    reads them back."""
    status, headers, raw = fetch(w, f"{LEAK}/v1/{how}")
    assert_no_secret(status, headers, raw)


SPECIAL_LEAKS = [
    "plain",
    "header",
    "pct-std",
    "pct-lower",
    "form",
    "json-std",
    "json-slash",
    "split-std",
    "gzip",
]


@pytest.mark.parametrize("how", SPECIAL_LEAKS)
def test_a_secret_with_reserved_characters_is_masked_in_its_usual_encodings(w, how):
    """A base64-looking key (`+`, `/`, `=`) has real percent-encoded spellings (`%2B%2F%3D`,
    lower-case hex, form `+`-for-space) and JSON ones (PHP's `\\/`): each is masked."""
    _, headers, raw = fetch(w, f"{LEAKS_}/v1/{how}")
    assert w.leaky.seen == [f"/v1/{how}"]
    for k, v in headers:
        assert not reveals_special(k + b": " + v), (k, v)
    found = reveals_special(raw)
    assert not found, f"readable in the body ({found}): {raw[:200]!r}"


def reveals_special(data: bytes) -> list[str]:
    from urllib.parse import unquote_plus

    secret = SPECIAL_SECRET.encode()
    text = data.decode("latin-1")
    views = {
        "as is": data,
        "percent-decoded": unquote_plus(text).encode("latin-1", "replace"),
        "json": text.replace("\\/", "/").encode("latin-1", "replace"),
    }
    for blob in list(_decompressions(data))[1:]:
        views["decompressed"] = blob
    return [name for name, view in views.items() if secret in view]


def test_an_upstream_echoing_a_query_attached_secret_never_hands_it_to_the_agent(w):
    status, headers, raw = fetch(w, f"{LEAKQ}/v1/query?a=1")
    assert w.leaky.seen == ["/v1/query"]
    assert_no_secret(status, headers, raw)
    status, headers, raw = fetch(w, f"{LEAKQ}/v1/redirect")
    assert_no_secret(status, headers, raw)


def test_an_upstream_echoing_a_basic_credential_never_hands_it_to_the_agent(w):
    status, headers, raw = fetch(w, f"{LEAKB}/v1/basic")
    assert_no_secret(status, headers, raw)


def test_an_upstream_cannot_forge_the_access_id(w):
    """`Lineage-Access` is the gateway's: an upstream's own is not passed on beside it."""
    _, headers, _ = fetch(w, f"{LEAK}/v1/lineage-access")
    values = [v for k, v in headers if k.lower() == b"lineage-access"]
    assert values and b"forged-by-the-upstream" not in values, values
    assert len(values) == 1


@pytest.mark.parametrize("how", ["reason", "garbage", "bad-header", "trailer", "short"])
def test_raw_upstream_bytes_never_carry_the_secret_to_the_agent(w, how):
    """An upstream that answers the secret in its status line, in a trailer, in a malformed
    header, with a body cut short, or without HTTP at all: 502 `bad_upstream_response` (or
    its answer, masked), and never the secret in what the agent gets."""
    status, headers, raw = fetch(w, f"{RAW}/v1/{how}")
    assert_no_secret(status, headers, raw)


@pytest.mark.parametrize("url", [f"{RAWQ}/v1/garbage", f"{RAWQ}/v1/short", f"{DEADQ}/v1/x"])
def test_upstream_failures_with_a_query_secret_never_show_the_url(w, url):
    """With `attach = "query:key"` the secret is in the URL the gateway calls; a 502 for a
    bad or unreachable upstream describes the failure, never that URL."""
    status, headers, raw = fetch(w, url)
    assert status in (200, 502, 504), raw
    assert_no_secret(status, headers, raw)


def _provoke_every_leak(w: Stack) -> None:
    for how in LEAKS:
        fetch(w, f"{LEAK}/v1/{how}")
    for url in (
        f"{LEAKQ}/v1/query",
        f"{LEAKB}/v1/basic",
        f"{RAWQ}/v1/garbage",
        f"{DEADQ}/v1/x",
        f"{RAW}/v1/garbage",
        f"{RAW}/v1/bad-header",
    ):
        fetch(w, url)


def _records_with_the_secret(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    leaked = []
    for record in caplog.records:
        if record.levelno < level:
            continue
        text = record.getMessage() + repr(record.args) + repr(record.__dict__)
        if reveals(text):
            leaked.append(f"{record.levelname} {record.name}: {record.getMessage()[:160]}")
    return leaked


def test_the_secret_is_in_no_log_line_at_info_or_above(w, caplog):
    """GATEWAY.md §6, §7: no log line names the secret (every logger, INFO and above), however
    the upstream echoes it or fails."""
    caplog.set_level(logging.DEBUG)
    _provoke_every_leak(w)
    leaked = _records_with_the_secret(caplog, logging.INFO)
    assert not leaked, "the secret is in log records:\n" + "\n".join(leaked)


def test_the_secret_is_in_no_log_line_even_at_debug(w, caplog):
    """GATEWAY.md §7: "Secrets never appear in logs". An operator who turns on DEBUG to chase
    an upstream problem gets the HTTP client's (httpcore's) trace of the upstream's answer:
    response headers echoing the secret, and protocol errors quoting the upstream's bytes."""
    caplog.set_level(logging.DEBUG)
    _provoke_every_leak(w)
    leaked = _records_with_the_secret(caplog, logging.DEBUG)
    assert not leaked, "the secret is in log records:\n" + "\n".join(leaked)


def test_the_secret_is_in_no_metric_page_or_ledger_byte(w):
    """GATEWAY.md §7: not in metrics (the gateway's and the service's), the description, the
    health or OpenAPI pages, the MCP resource metadata, nor the ledger (file and WAL)."""
    _provoke_every_leak(w)
    pages = [
        httpx.get(w.base + path, timeout=10)
        for path in (
            "/metrics",
            "/.well-known/lineage-gateway",
            "/healthz",
            "/openapi.json",
            "/docs",
            "/.well-known/oauth-protected-resource/tools",
        )
    ] + [httpx.get(w.srv.url("/metrics"), timeout=10)]
    for r in pages:
        assert not reveals(r.content), r.url
        assert SPECIAL_SECRET.encode() not in r.content, r.url
        assert_sane(r.status_code, r.content)
    w.srv.log.checkpoint()
    files = [p for p in w.db.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in (MAIL_SECRET, MCP_SECRET, SPECIAL_SECRET):
            assert secret.encode() not in data, (path, secret)


# === 5. MCP ==============================================================================


@pytest.fixture(scope="module")
def tools_route(st: Stack) -> Any:
    return mcp_auth(st.base, "tools", st.agent, st.handle).route


def call(name: str, arguments: dict[str, Any] | None = None, id_: Any = 1, **extra) -> dict:
    message = {
        "jsonrpc": "2.0",
        "id": id_,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {}},
    }
    if id_ is None:
        del message["id"]
    message.update(extra)
    return message


def mcp_post(
    w: Stack,
    route: Any,
    body: bytes | dict | list,
    *,
    signed_as: bytes | bool | None = True,
    extra: list[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> Answer:
    """POST one message to the MCP route with the holder's proof; ``signed_as``: the bytes
    the invocation covers (True: the body itself; None/False: no invocation)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = w.base + "/tools"
    headers = [
        ("Authorization", f"DPoP {w.handle}"),
        ("DPoP", make_proof(w.agent.key.seed, "POST", url, access_token=w.handle)),
        ("Content-Type", content_type),
        ("Accept", "application/json, text/event-stream"),
    ]
    cover = data if signed_as is True else signed_as
    if cover:
        inv = w.agent.invoke(
            w.handle, tool_request(route, json.loads(cover), cover), iat=int(w.srv.clock())
        )
        headers.append((INVOCATION_HEADER, encode_invocation(inv)))
    r = send_raw(w, "POST", "/tools", headers + list(extra), data)
    assert_sane(r.status, r.body)
    return r


def rpc_error(r: Answer) -> int | None:
    try:
        doc = r.json()
    except ValueError:
        return None
    return doc.get("error", {}).get("code") if isinstance(doc, dict) else None


def test_an_allowed_tool_call_by_hand_runs_once(w, tools_route):
    r = mcp_post(w, tools_route, call("read_inbox", {"folder": "x"}))
    assert r.status == 200, r.text
    assert w.guard.calls == ["read_inbox:x"]
    assert "authorization" not in w.guard.headers[0] and "dpop" not in w.guard.headers[0]


@pytest.mark.parametrize(
    "batch",
    [
        [call("delete_everything")],
        [call("read_inbox"), call("delete_everything", id_=2)],
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, call("delete_everything", id_=2)],
        [],
    ],
)
def test_a_batch_is_400_and_never_forwarded(w, tools_route, batch):
    """GATEWAY.md §8: the body is one JSON-RPC message; a batch is 400, -32600."""
    r = mcp_post(w, tools_route, batch, signed_as=json.dumps(call("read_inbox")).encode())
    assert r.status == 400, r.text
    assert rpc_error(r) == -32600
    assert w.guard.headers == [] and w.guard.calls == []


@pytest.mark.parametrize(
    ("body_name", "header", "value"),
    [
        ("read_inbox", "Mcp-Name", "delete_everything"),
        ("delete_everything", "Mcp-Name", "read_inbox"),
        ("read_inbox", "Mcp-Name", "READ_INBOX"),
        ("read_inbox", "Mcp-Method", "tools/list"),
        ("read_inbox", "Mcp-Method", "TOOLS/CALL"),
    ],
)
def test_mcp_headers_that_differ_from_the_body_are_400(w, tools_route, body_name, header, value):
    """GATEWAY.md §8: `Mcp-Method` and `Mcp-Name`, when sent, must be the message's (400,
    -32600): a server or proxy routing on the header never sees another tool than decided."""
    r = mcp_post(w, tools_route, call(body_name), extra=[(header, value)])
    assert r.status == 400, r.text
    assert rpc_error(r) == -32600
    assert w.guard.headers == [] and w.guard.calls == []


def test_two_mcp_name_headers_are_refused(w, tools_route):
    """One `Mcp-Name` the body's, a second another tool's: one of them differs from the
    message (GATEWAY.md §8: 400); a proxy or server routing on the last header sees
    `delete_everything` where `read_inbox` was decided."""
    r = mcp_post(
        w,
        tools_route,
        call("read_inbox"),
        extra=[("Mcp-Name", "read_inbox"), ("Mcp-Name", "delete_everything")],
    )
    forwarded = [h.get("mcp-name") for h in w.guard.headers]
    assert r.status == 400, f"{r.status}; the MCP server got Mcp-Name {forwarded}"
    assert w.guard.calls == []


@pytest.mark.parametrize(
    "name",
    [
        "../delete_everything",
        "a/b",
        "..",
        ".",
        "a%2Fb",
        "read_inbox/../delete_everything",
        "",
        " read_inbox",
        "read_inbox\u0000",
        "read_inbox\n",
        "caf\u00e9",
        "%2e%2e",
        "a\\b",
        "x" * 3000,
        "*",
    ],
)
def test_tool_names_that_are_not_one_segment_are_refused(w, tools_route, name):
    """GATEWAY.md §8: a name that is not a segment (SCOPE.md §2) is 400, -32602."""
    body = call(name)
    r = mcp_post(w, tools_route, body, signed_as=json.dumps(call("read_inbox")).encode())
    assert r.status in (400, 401), r.text
    assert w.guard.headers == [] and w.guard.calls == []


def test_duplicated_json_members_in_a_message_are_refused(w, tools_route):
    """`{"method":"ping","method":"tools/call"}`, a repeated `name` or a repeated argument:
    the gateway and the server could read different ones; 400."""
    bodies = [
        b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call",'
        b'"params":{"name":"delete_everything","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"read_inbox","name":"delete_everything","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email",'
        b'"arguments":{"to":"bob@corp.example","to":"eve@evil.example","subject":"x"}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email",'
        b'"arguments":{"to":"bob@corp.example","t\\u006f":"eve@evil.example","subject":"x"}}}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"delete_everything","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"read_inbox","arguments":{}}}'
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
        b'"params":{"name":"delete_everything","arguments":{}}}',
    ]
    cover = json.dumps(call("read_inbox")).encode()
    for body in bodies:
        r = mcp_post(w, tools_route, body, signed_as=cover)
        assert r.status in (400, 401), (body, r.text)
        assert w.guard.headers == [] and w.guard.calls == [], body


def test_an_argument_in_another_case_does_not_change_what_the_sdk_server_runs(w, tools_route):
    """`to` is decided (bob); `TO`/`To` are not attributes. The SDK server (pydantic) does not
    fold them onto `to`, so the tool runs for bob only."""
    body = call(
        "send_email",
        {
            "to": "bob@corp.example",
            "TO": "eve@evil.example",
            "To": "eve@evil.example",
            "subject": "x",
        },
    )
    r = mcp_post(w, tools_route, body)
    assert r.status == 200, r.text
    assert w.guard.calls in ([], ["send_email:bob@corp.example"])


def test_a_constrained_argument_sent_as_another_type_denies(w, tools_route):
    """`to` as a list, an object or a number is not an attribute: the constraint denies."""
    for to in (["bob@corp.example", "eve@evil.example"], {"a": "eve@evil.example"}, 7):
        r = mcp_post(w, tools_route, call("send_email", {"to": to, "subject": "x"}))
        assert rpc_error(r) == -31403, r.text
    assert w.guard.calls == [] and w.guard.headers == []


@pytest.mark.parametrize(
    "method",
    [
        "tools/call ",
        " tools/call",
        "TOOLS/CALL",
        "Tools/Call",
        "tools/call\u0000",
        "tools//call",
        "/tools/call",
        "tools/call/",
        "tools\\/call",
        "notifications/../tools/call",
        "notifications/tools/call",
        "resources/read",
        "prompts/get",
        "completion/complete",
        "sampling/createMessage",
    ],
)
def test_method_variations_are_not_forwarded_undecided(w, tools_route, method):
    """GATEWAY.md §8: only the listed methods are forwarded; a `tools/call` look-alike is
    "anything else" (200, -31403), never forwarded without a decision (`notifications/*` is
    forwarded by contract: the server must then run nothing)."""
    body = call("delete_everything")
    body["method"] = method
    r = mcp_post(w, tools_route, body, signed_as=json.dumps(call("read_inbox")).encode())
    assert r.status in (200, 202, 400, 401), r.text
    assert w.guard.calls == []
    if not method.startswith("notifications/"):
        assert w.guard.headers == []
        if r.status == 200:
            assert rpc_error(r) == -31403, r.text


@pytest.mark.parametrize(
    "shape",
    ["notification", "id-null", "with-result", "with-error", "no-jsonrpc", "jsonrpc-1.0"],
)
def test_every_tools_call_shape_is_decided(w, tools_route, shape):
    """A `tools/call` without an id (a notification), with `id: null`, or with `result` or
    `error` beside `method` (a response look-alike) is still a `tools/call`: without an
    invocation it is 401, and it is never forwarded undecided."""
    body = call("delete_everything")
    if shape == "notification":
        del body["id"]
    elif shape == "id-null":
        body["id"] = None
    elif shape == "with-result":
        body["result"] = {}
    elif shape == "with-error":
        body["error"] = {"code": 1, "message": "x"}
    elif shape == "no-jsonrpc":
        del body["jsonrpc"]
    elif shape == "jsonrpc-1.0":
        body["jsonrpc"] = "1.0"
    r = mcp_post(w, tools_route, body, signed_as=False)
    assert r.status in (400, 401), (r.status, r.text)
    assert w.guard.headers == [] and w.guard.calls == []


def test_a_notification_shaped_call_with_an_invocation_is_decided_and_denied(w, tools_route):
    """Signed, a forbidden notification-shaped call is decided (logged deny) and not run."""
    mark = w.srv.size()
    body = call("delete_everything", id_=None)
    r = mcp_post(w, tools_route, body)
    assert r.status in (200, 202, 400, 403), r.text
    assert w.guard.calls == [] and w.guard.headers == []
    if r.status != 400:
        [logged] = accesses_since(w, mark)  # the deny is logged
        assert logged["decision"] == "deny"
        assert logged["invocation"]["request"]["resource"] == "tool:delete_everything"


def test_mcp_origin_get_and_content_type_tricks(w, tools_route):
    r = mcp_post(w, tools_route, call("read_inbox"), extra=[("Origin", "https://evil.example")])
    assert r.status == 403, r.text
    for ct in ("text/plain", "application/x-www-form-urlencoded", ""):
        r = mcp_post(w, tools_route, call("delete_everything"), content_type=ct, signed_as=False)
        assert r.status in (400, 401, 415), (ct, r.text)
    h = signed(w, "GET", "/tools", None)
    r = send_raw(w, "GET", "/tools", h)
    assert r.status == 405
    assert w.guard.calls == [] and w.guard.headers == []


def test_an_mcp_session_id_or_method_override_cannot_smuggle_a_call(w, tools_route):
    """Headers beside an allowed `initialize`/`ping` do not turn it into a tool call."""
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    r = mcp_post(
        w,
        tools_route,
        ping,
        signed_as=False,
        extra=[("X-HTTP-Method-Override", "DELETE"), ("Mcp-Name", "delete_everything")],
    )
    assert r.status in (200, 400), r.text
    assert w.guard.calls == []


# === 4. Availability =====================================================================


@pytest.mark.parametrize(
    "head",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000,
        b"GET /mail/v1/messages/x HTTP/1.1\r\nHost: x\r\nX-Bad\x01: 1",
        b"GET /mail/v1/messages/x HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  b",
        b"GET /mail/v1/messages/x HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b",
        b"GET /mail/v1/messages/x HTTP/1.1\r\nHost: x\r\n: empty-name",
        b"GET /mail/v1/messages/x HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 200000,
        b"GET /" + b"a" * 200000 + b" HTTP/1.1\r\nHost: x",
        b"\r\n\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x",
        b"GET /mail/v1/messages/x?" + b"%" * 5000 + b" HTTP/1.1\r\nHost: x",
        b"POST /tools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5",
        b"GET /.well-known/oauth-protected-resource/../../mail HTTP/1.1\r\nHost: x",
        b"GET /metrics?x=" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x",
    ],
)
def test_garbage_never_5xx_never_a_traceback_and_the_gateway_stays_up(w, head):
    """GATEWAY.md §5: the gateway stays up; never a traceback; no undocumented 5xx. (The
    fixture checks that an ordinary allowed request works after each of these.)"""
    r = raw_http(w, head + b"\r\nConnection: close" if b"Host" in head else head, timeout=3)
    assert_sane(r.status, r.raw)
    assert w.api.seen == []


def test_a_pipelined_second_request_is_decided_on_its_own(w):
    """Two requests in one write: the first allowed, the second reusing its headers for
    another path. The second is its own request (its proof names another URL): 401."""
    a = "/mail/v1/messages/pipe-a"
    h = signed(w, "GET", a, mail_request("/v1/messages/pipe-a"))
    host = "{}:{}".format(*w.host)
    lines = "".join(f"{k}: {v}\r\n" for k, v in h.items())
    both = (
        f"GET {a} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n"
        f"DELETE /mail/v1/messages/pipe-b HTTP/1.1\r\nHost: {host}\r\n{lines}"
        "Connection: close"
    ).encode()
    r = raw_http(w, both, timeout=5)
    assert r.status == 200
    assert b"HTTP/1.1 401" in r.raw or r.raw.count(b"HTTP/1.1 ") == 1
    assert [s.raw_path for s in w.api.seen] == ["/v1/messages/pipe-a"]


def test_concurrent_hostile_requests_leave_the_gateway_serving(w):
    """A burst of refused requests at once (bad paths, bad proofs, garbage): no 5xx, and the
    fixture's allowed request still works after."""
    import concurrent.futures

    targets = [REFUSED_PATHS[i % len(REFUSED_PATHS)] for i in range(40)]

    def one(t: str) -> int:
        return send_raw(w, "GET", t, {"Authorization": "DPoP " + "0" * 64, "DPoP": "x"}).status

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, targets))
    assert all(s == 0 or 400 <= s < 500 for s in statuses), statuses
    assert w.api.seen == []
