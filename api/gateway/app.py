"""The gateway as an ASGI app: decide, log, attach the secret, forward (docs/GATEWAY.md).

For each request to ``/{upstream}/{path}``, in this order, stopping at the first refusal:

1. ``Authorization: DPoP <credential>``, one ``DPoP`` proof for this URL by the key the
   invocation is signed with, one ``Lineage-Invocation``: else 401 with a DPoP challenge.
2. The path, canonical (``lineage.client.gateway.canonical_segments``), the query, and the
   body the route's fields need (read up to ``body_limit``): else 400, 413, 414 or 415.
3. The request derived from them must be exactly the invocation's: else 401.
4. The upstream's secret is read (cached): else 503, nothing logged.
5. The decision, logged before anything is forwarded: 403 with the reason when denied;
   503 when no durable decision can be had (fail closed).
6. Forwarded: exactly the canonical path, the query as received, the body, the agent's
   headers but its credentials and hop-by-hop ones, and the secret. No redirect followed.
   The upstream's answer streams back; its status (or failure: 502, 504) is logged as a
   ``result`` entry naming the access.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.datastructures import Headers

from lineage.client.gateway import (
    APPROVAL_HEADER,
    APPROVAL_PENDING,
    ATTR_BODY,
    DESCRIPTION_PATH,
    INVOCATION_HEADER,
    MappingError,
    canonical_segments,
    check_query,
    decode_invocation,
    derive_request,
    field_attributes,
)
from lineage.verifier.errors import FormatError
from lineage.verifier.fields import HEX_ID
from lineage.verifier.invocation import SignedInvocation
from lineage.verifier.request import request_to_json

from ..dpop import DPoPError, verify_dpop
from . import mcp
from .config import Attach, GatewayConfig, Upstream
from .decider import Decider, Held, Refused, Unavailable, Verdict
from .secrets import Secret, SecretCache, SecretError

__all__ = ["Gateway"]

log = logging.getLogger("lineage.gateway")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "authorization",
    "dpop",
    INVOCATION_HEADER.lower(),
    "content-length",
    "expect",
    "cookie",
    # headers some frameworks read as another method, path, host or client than the one
    # decided on (method and URL overrides, proxy headers): never the agent's to set
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "forwarded",
    "x-host",
    "x-real-ip",
    "true-client-ip",
}
NOT_FORWARDED_PREFIXES = ("x-forwarded-", "lineage-")
CHALLENGE = 'DPoP algs="EdDSA Ed25519"'
BUFFER = 1 << 20  # bytes of a body read before deciding when no field needs it
RESULT_DELAY = 0.2  # seconds results wait, to be written together in one group commit
RESULT_BATCH = 256  # POST /v1/results takes at most 256
MAX_TRANSFORMED = 8 << 20  # bytes of an answer the gateway rewrites (an MCP tools/list)


class _Refusal(Exception):
    def __init__(self, status: int, error: str, description: str, headers=None, extra=None):
        super().__init__(description)
        self.status, self.error, self.headers, self.extra = status, error, headers or {}, extra


def _absolute(approval: dict[str, Any], scope) -> dict[str, Any]:
    """The held call's links, made absolute against the request's own origin when the
    decision point gave paths (a mounted gateway on a service without ``public_url``)."""
    host = Headers(scope=scope).get("host")
    origin = f"{scope.get('scheme', 'http')}://{host}" if host else ""
    out = dict(approval)
    for key in ("url", "poll"):
        value = out.get(key)
        if isinstance(value, str) and value.startswith("/"):
            out[key] = origin + value
    out.setdefault("interval", 2)
    return out


class _HeldCalls:
    """Calls held for a person's approval, kept for their retry (at most ``size``, the
    oldest forgotten first): what the gateway signed for a client that cannot sign."""

    def __init__(self, size: int = 1024):
        self.size, self._calls = size, OrderedDict()

    def get(self, key: str) -> Any:
        return self._calls.get(key)

    def put(self, key: str, value: Any) -> None:
        self._calls[key] = value
        self._calls.move_to_end(key)
        while len(self._calls) > self.size:
            self._calls.popitem(last=False)

    def pop(self, key: str) -> None:
        self._calls.pop(key, None)


class _BodyMismatch(Exception):
    pass


class _TooLarge(Exception):
    pass


def _unauthorized(error: str, description: str) -> _Refusal:
    challenge = f'DPoP error="{error}", algs="EdDSA Ed25519"'
    return _Refusal(401, error, description, {"WWW-Authenticate": challenge})


class _Jtis:
    """DPoP proof ids seen recently: a proof is good for one request at this gateway. (The
    invocation's nonce is single-use in the log, across every gateway.)"""

    def __init__(self, size: int = 200_000):
        self.seen: OrderedDict[str, int] = OrderedDict()
        self.size = size

    def remember(self, jti: str, expires: int) -> bool:
        now = int(time.time())
        while self.seen and (next(iter(self.seen.values())) < now or len(self.seen) >= self.size):
            self.seen.popitem(last=False)
        if jti in self.seen:
            return False
        self.seen[jti] = expires
        return True


class _LogMask(logging.Filter):
    """Masks the secrets the gateway has read in the log records of the HTTP libraries
    it forwards with: httpcore's DEBUG traces quote upstream headers and, on a protocol
    error, the raw bytes an upstream sent (its echo of the key among them)."""

    LOGGERS = (
        "httpcore.http11",
        "httpcore.http2",
        "httpcore.connection",
        "httpcore.connection_pool",
        "httpcore.proxy",
        "httpx",
        "lineage.gateway",
        "uvicorn.error",
        "uvicorn.access",
    )

    def __init__(self) -> None:
        super().__init__()
        self.spellings: dict[str, None] = {}  # insertion-ordered, bounded
        self.longest_first: list[str] = []

    def add(self, spellings: tuple[bytes, ...]) -> None:
        new = [s.decode("latin-1") for s in spellings]
        if all(s in self.spellings for s in new):
            return  # every request adds its secret's spellings: mostly known already
        for s in new:
            self.spellings[s] = None
        while len(self.spellings) > 4096:
            self.spellings.pop(next(iter(self.spellings)))
        self.longest_first = sorted(self.spellings, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.longest_first:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is left alone
            return True
        masked = text
        for plain in self.longest_first:
            if plain in masked:
                masked = masked.replace(plain, "*" * len(plain))
        if masked != text:
            record.msg, record.args = masked, None
        return True


LOG_MASK = _LogMask()
for _name in _LogMask.LOGGERS:
    logging.getLogger(_name).addFilter(LOG_MASK)


class _Attaching(httpx.AsyncBaseTransport):
    """Puts the secret on the request below httpx's own logging, which names the URL."""

    def __init__(self, inner: httpx.AsyncBaseTransport):
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attach: tuple[Attach, str] | None = request.extensions.get("lineage_attach")
        if attach is not None:
            how, secret = attach
            headers = request.headers.copy()
            url = request.url
            if how.how == "bearer":
                headers["Authorization"] = f"Bearer {secret}"
            elif how.how == "header":
                headers[how.name] = secret
            elif how.how == "basic":
                headers["Authorization"] = httpx.BasicAuth(how.name, secret)._auth_header
            else:
                raw = url.raw_path
                sep = b"&" if b"?" in raw else b"?"
                pair = f"{quote(how.name, safe='')}={quote(secret, safe='')}".encode()
                url = url.copy_with(raw_path=raw + sep + pair)
            extensions = {k: v for k, v in request.extensions.items() if k != "lineage_attach"}
            request = httpx.Request(
                request.method, url, headers=headers, stream=request.stream, extensions=extensions
            )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lineage_gateway_requests",
            "Requests by upstream and outcome (allowed, denied, refused, failed, unavailable)",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.upstream = Histogram(
            "lineage_gateway_upstream_seconds",
            "Time to the upstream's response headers",
            ["upstream"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.decision = Histogram(
            "lineage_gateway_decision_seconds",
            "Time to a durable decision",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.results_failed = Counter(
            "lineage_gateway_results_failed",
            "Result entries that could not be written",
            registry=self.registry,
        )


class Gateway:
    """The gateway's ASGI app. ``prefix`` is its mount path inside ``lineage serve``."""

    def __init__(
        self,
        config: GatewayConfig,
        decider: Decider,
        *,
        prefix: str = "",
        upstream_transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.cfg, self.decider, self.prefix = config, decider, prefix.rstrip("/")
        self.secrets = {
            name: SecretCache(up.secret) for name, up in config.upstreams.items() if up.secret
        }
        self.metrics = Metrics()
        self.jtis = _Jtis()
        self.held_calls = _HeldCalls()  # step-up retries of MCP clients that cannot sign
        self._transport = upstream_transport
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task] = set()
        self._results: list[tuple[str, dict[str, Any]]] = []
        self._flusher: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            inner = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=self.cfg.max_connections,
                    max_keepalive_connections=self.cfg.max_connections,
                )
            )
            self._client = httpx.AsyncClient(transport=_Attaching(inner), follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        with contextlib.suppress(Exception):  # results not written yet: write them now
            await asyncio.wait_for(self._flush(), timeout=10)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=10)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.decider.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = raw.partition("?")[0]
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            path = path[len(self.prefix) :]
        try:
            if path == DESCRIPTION_PATH:
                return await self._json(send, 200, self.description())
            if path == "/healthz":
                return await self._json(send, 200, {"status": "ok"})
            if path == "/metrics":
                body = generate_latest(self.metrics.registry)
                return await self._send(send, 200, body, "text/plain; version=0.0.4")
            if path.startswith(mcp.METADATA + "/"):
                return await self.metadata(path[len(mcp.METADATA) + 1 :], scope, send)
            name, _, rest = path[1:].partition("/")
            upstream = self.cfg.upstreams.get(name)
            if upstream is None:
                raise _Refusal(404, "not_found", "no such upstream")
            rest = "/" + rest if rest else ""
            if upstream.kind == "mcp":
                return await mcp.handle(self, upstream, path, rest, scope, receive, send)
            await self._proxy(upstream, path, rest, scope, receive, send)
        except _Refusal as r:
            await self._refuse(send, r)

    async def _refuse(self, send, r: _Refusal) -> None:
        body = {"error": r.error, "error_description": r.args[0], **(r.extra or {})}
        await self._json(send, r.status, body, r.headers)

    async def metadata_asgi(self, name: str, scope, send) -> None:
        try:
            await self.metadata(name, scope, send)
        except _Refusal as r:
            await self._refuse(send, r)

    async def metadata(self, name: str, scope, send) -> None:
        """RFC 9728 metadata for an MCP server the gateway fronts (``lineage serve`` routes
        ``/.well-known/oauth-protected-resource<mount>/<name>`` here too)."""
        found = mcp.metadata(self, scope, name)
        if found is None:
            raise _Refusal(404, "not_found", "no such MCP server")
        await self._json(send, 200, found)

    def description(self) -> dict[str, Any]:
        """What agents need to sign requests (routes), nothing about where they go or how the
        gateway authenticates there."""
        return {"routes": [up.route.to_json() for up in self.cfg.upstreams.values()]}

    # --- one request ------------------------------------------------------------------

    async def _proxy(self, up: Upstream, path: str, rest: str, scope, receive, send) -> None:
        name = up.route.name
        method = scope["method"]
        headers = Headers(scope=scope)
        try:
            handle, proof_key = self._authenticate(scope, headers, path, method)
            segments = canonical_segments(rest)
            query = check_query(scope.get("query_string", b"").decode("latin-1"))
            if (
                up.attach is not None
                and up.attach.how == "query"
                and _has_param(query, up.attach.name)
            ):
                raise MappingError(f"query: {up.attach.name} is the gateway's to set", 400, "query")
            body, more = await self._read(up, headers, receive)
            inv = self._invocation(headers, handle, proof_key)
            fields = field_attributes(
                up.route, query, body if up.route.needs_body else None, headers.get("content-type")
            )
            expected = derive_request(up.route, method, segments, query, body, fields)
            claimed = dict(request_to_json(inv.request).get("attributes", {})).get(ATTR_BODY)
            if more:  # the body streams: its digest is checked as it passes (hold-back)
                expected["attributes"][ATTR_BODY] = claimed
            self._covers(inv, expected)
        except MappingError as exc:
            self.metrics.requests.labels(name, "refused").inc()
            raise _Refusal(exc.status, "invalid_request", str(exc)) from None
        except _Refusal:
            self.metrics.requests.labels(name, "refused").inc()
            raise
        secret = await self._secret(up)
        asserted = {a: fields[a] for a in up.asserts if a in fields}
        verdict = await self._decide(up, inv, scope, asserted)
        if not verdict.allowed:
            raise _Refusal(
                403,
                "access_denied",
                verdict.reason,
                extra={"id": verdict.id, "index": verdict.index, "receipt": verdict.receipt},
            )
        await self._forward(
            up,
            scope,
            receive,
            send,
            access=verdict.id,
            body=body,
            secret=secret,
            segments=segments,
            more=more,
            digest=claimed,
        )

    def _invocation(self, headers: Headers, handle: str, proof_key: str) -> SignedInvocation:
        """The one ``Lineage-Invocation``, for this credential, by the DPoP proof's key."""
        invs = headers.getlist(INVOCATION_HEADER)
        if len(invs) != 1:
            raise _unauthorized("invalid_token", f"send exactly one {INVOCATION_HEADER}")
        try:
            inv = decode_invocation(invs[0])
        except FormatError as exc:
            raise _unauthorized("invalid_token", f"{INVOCATION_HEADER}: {exc}") from None
        if inv.credential != handle:
            raise _unauthorized("invalid_token", "the invocation is for another credential")
        if inv.sig.kid != proof_key:
            raise _unauthorized(
                "invalid_token", "the invocation and the DPoP proof have different keys"
            )
        return inv

    @staticmethod
    def _covers(inv: SignedInvocation, expected: dict[str, Any]) -> None:
        differs = _first_difference(request_to_json(inv.request), expected)
        if differs is not None:
            raise _unauthorized(
                "invalid_token", f"the invocation does not cover this request: {differs}"
            )

    async def _secret(self, up: Upstream) -> Secret | None:
        if up.secret is None:
            return None
        try:
            secret = await self.secrets[up.route.name].aget()
            LOG_MASK.add(_spellings(up.attach, secret.reveal()))
            return secret
        except SecretError as exc:
            log.error("upstream %s: its secret cannot be read: %s", up.route.name, exc)
            self.metrics.requests.labels(up.route.name, "unavailable").inc()
            raise _Refusal(
                503, "temporarily_unavailable", "the upstream is not configured"
            ) from None

    async def _decide(
        self,
        up: Upstream,
        inv: SignedInvocation,
        scope,
        asserted: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Verdict:
        """A durable decision, or a refusal: nothing is forwarded without one. ``extra``:
        more of the context (an MCP bearer client's ``authentication``)."""
        name = up.route.name
        context: dict[str, Any] = {"upstream": name, **(extra or {})}
        client = scope.get("client")
        if client:
            context["source_ip"] = str(client[0])
        if asserted:
            context["attributes"] = asserted
        started = time.perf_counter()
        try:
            verdict = await self.decider.decide(inv, context)
        except Refused as exc:
            self.metrics.requests.labels(name, "refused").inc()
            if exc.status == 401:
                raise _unauthorized("invalid_token", exc.args[0]) from None
            raise _Refusal(exc.status, exc.error, exc.args[0]) from None
        except Held as held:
            # step-up: nothing logged, nothing forwarded; the person's link and the status
            # to poll go back, and the agent sends the same signed request again
            self.metrics.requests.labels(name, "held").inc()
            approval = _absolute(held.approval, scope)
            raise _Refusal(
                403,
                APPROVAL_PENDING,
                held.reason,
                {APPROVAL_HEADER: approval["poll"], "Retry-After": str(approval["interval"])},
                extra={"approval": approval},
            ) from None
        except Unavailable as exc:
            log.error("upstream %s: no decision, nothing forwarded: %s", name, exc)
            self.metrics.requests.labels(name, "unavailable").inc()
            raise _Refusal(
                503, "temporarily_unavailable", "no decision could be logged; nothing was forwarded"
            ) from None
        self.metrics.decision.observe(time.perf_counter() - started)
        outcome = "allowed" if verdict.allowed else "denied"
        self.metrics.requests.labels(name, outcome).inc()
        return verdict

    def _authenticate(self, scope, headers: Headers, path: str, method: str) -> tuple[str, str]:
        """(credential handle, the DPoP key's kid), or a 401 with a DPoP challenge."""
        given = headers.getlist("authorization")
        if not given:
            raise _Refusal(
                401,
                "invalid_token",
                "send Authorization: DPoP <credential>",
                {"WWW-Authenticate": CHALLENGE},
            )
        if len(given) > 1:
            raise _unauthorized("invalid_request", "send one Authorization header")
        scheme, _, handle = given[0].partition(" ")
        handle = handle.strip()
        if scheme.lower() != "dpop" or not HEX_ID.fullmatch(handle):
            raise _unauthorized("invalid_token", "send Authorization: DPoP <credential>")
        proofs = headers.getlist("dpop")
        if len(proofs) != 1:
            raise _unauthorized("invalid_dpop_proof", "send exactly one DPoP proof")
        try:
            proof = verify_dpop(
                proofs[0],
                method=method,
                url=self._public(scope) + self.prefix + path,
                access_token=handle,
                remember_jti=self.jtis.remember,
            )
        except DPoPError as exc:
            raise _unauthorized(exc.error, str(exc)) from None
        return handle, proof.key.kid

    def _public(self, scope) -> str:
        if self.cfg.public_url:
            return self.cfg.public_url
        host = Headers(scope=scope).get("host") or "{}:{}".format(*scope["server"])
        return f"{scope.get('scheme', 'http')}://{host}"

    async def _read(self, up: Upstream, headers: Headers, receive) -> tuple[bytes, bool]:
        """The body, whole (``more`` False), or its first part when it is longer than what is
        read before deciding and no field needs it (``more`` True: the rest streams)."""
        if len(headers.getlist("content-type")) > 1:  # servers differ on which one they read
            raise _Refusal(400, "invalid_request", "send at most one Content-Type")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > up.max_body):
            raise _Refusal(413, "request_too_large", f"bodies are limited to {up.max_body} bytes")
        needs = up.route.needs_body
        if needs and declared is not None and int(declared) > up.route.body_limit:
            raise _Refusal(
                413,
                "request_too_large",
                f"bodies this route reads are limited to {up.route.body_limit} bytes",
            )
        limit = up.route.body_limit if needs else min(BUFFER, up.max_body)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Refusal(400, "invalid_request", "the client went away")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            seen += len(chunk)
            if seen > up.max_body:
                raise _Refusal(
                    413, "request_too_large", f"bodies are limited to {up.max_body} bytes"
                )
            if needs and seen > limit:
                raise _Refusal(
                    413,
                    "request_too_large",
                    f"bodies this route reads are limited to {limit} bytes",
                )
            if not message.get("more_body"):
                return b"".join(chunks), False
            if seen > limit:
                return b"".join(chunks), True

    async def _forward(
        self,
        up: Upstream,
        scope,
        receive,
        send,
        *,
        access: str | None,
        body: bytes,
        secret: Secret | None,
        segments: tuple[str, ...] = (),
        more: bool = False,
        digest: str | None = None,
        transform: Any = None,
        drop_also: frozenset[str] = frozenset(),
    ) -> None:
        """Forward, and stream the answer back. ``access`` is the access entry the request
        was allowed by (None for what is authenticated but not decided, such as an MCP
        ``tools/list``); ``body`` is what was read (all of it, or with ``more`` its first part,
        the rest streaming with ``digest`` checked); ``transform(body, content_type)``
        rewrites a whole answer."""
        name = up.route.name
        method = scope["method"]
        headers = Headers(scope=scope)
        base = up.url.raw_path.decode("ascii").rstrip("/")
        raw = (base + "".join("/" + s for s in segments)) or "/"
        query = scope.get("query_string", b"")
        target = up.url.copy_with(raw_path=raw.encode() + (b"?" + query if query else b""))
        drop = set(NOT_FORWARDED) | drop_also
        for value in headers.getlist("connection"):  # RFC 9110 §7.6.1
            drop |= {v.strip().lower() for v in value.split(",")}
        if up.attach is not None and up.attach.how == "header":
            drop.add(up.attach.name.lower())
        out = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in drop
            and not k.decode("latin-1").lower().startswith(NOT_FORWARDED_PREFIXES)
        ]
        content: bytes | AsyncIterator[bytes] = body
        if more:
            content = self._stream(up, body, receive, digest)
            if headers.get("content-length") is not None:
                out.append(("content-length", headers["content-length"]))
        extensions = {"lineage_attach": (up.attach, secret.reveal())} if secret else {}
        request = self.client.build_request(
            method,
            target,
            headers=out,
            content=content,
            timeout=httpx.Timeout(up.timeout, connect=up.connect_timeout, pool=up.connect_timeout),
            extensions=extensions,
        )
        started = time.perf_counter()
        try:
            response = await self.client.send(request, stream=True)
        except (_BodyMismatch, _TooLarge) as exc:
            self._result(access, failure="cancelled")
            if isinstance(exc, _TooLarge):
                raise _Refusal(413, "request_too_large", str(exc)) from None
            raise _unauthorized("invalid_token", str(exc)) from None
        except httpx.PoolTimeout:
            self._result(access, failure="cancelled")
            log.warning("upstream %s: no connection free", name)
            raise _Refusal(503, "temporarily_unavailable", "the gateway is busy") from None
        except httpx.TimeoutException:
            self._result(access, failure="timeout")
            log.warning("upstream %s: timed out", name)
            self.metrics.requests.labels(name, "failed").inc()
            raise _Refusal(504, "upstream_timeout", f"{name} did not answer in time") from None
        except httpx.ConnectError:
            self._result(access, failure="unreachable")
            log.warning("upstream %s: unreachable", name)
            self.metrics.requests.labels(name, "failed").inc()
            raise _Refusal(502, "upstream_unreachable", f"{name} cannot be reached") from None
        except httpx.HTTPError as exc:
            self._result(access, failure="bad_response")
            log.warning("upstream %s: %s", name, type(exc).__name__)
            self.metrics.requests.labels(name, "failed").inc()
            raise _Refusal(502, "bad_upstream_response", f"{name} answered badly") from None
        self.metrics.upstream.labels(name).observe(time.perf_counter() - started)
        self._result(access, upstream_status=response.status_code)
        if response.status_code == 401 and secret is not None:
            self.secrets[name].invalidate()  # rotated at the source? read it anew next time
        scrub = _Scrubber(_spellings(up.attach, secret.reveal()) if secret else ())
        codings = [
            v.strip().lower()
            for v in response.headers.get_list("content-encoding", split_commas=True)
            if v.strip() and v.strip().lower() != "identity"
        ]
        decode = None
        if codings and scrub.spellings:  # to mask, read it: decoded, or not at all
            decode = _decoder(codings)
            if decode is None:
                await response.aclose()
                log.warning("upstream %s: an answer in %s, which it cannot read", name, codings)
                self.metrics.requests.labels(name, "failed").inc()
                raise _Refusal(502, "bad_upstream_response", f"{name} answered in {codings[0]}")
        skip = HOP_BY_HOP | ({"content-encoding", "content-length"} if decode else set())
        back = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.multi_items()
            if k.lower() not in skip
            and not k.lower().startswith("lineage-")  # the gateway's own: never an upstream's
            and not scrub.found(k.encode("latin-1") + b": " + v.encode("latin-1"))
        ]
        if access is not None:
            back.append((b"lineage-access", access.encode()))
        try:
            if transform is not None:
                try:
                    data = await _read_limited(response, MAX_TRANSFORMED)
                    data = transform(data, response.headers.get("content-type", ""))
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("upstream %s: an answer that cannot be read: %s", name, exc)
                    self.metrics.requests.labels(name, "failed").inc()
                    raise _Refusal(502, "bad_upstream_response", f"{name} answered badly") from None
                back = [
                    (k, v) for k, v in back if k not in (b"content-length", b"content-encoding")
                ]
                back.append((b"content-length", str(len(data)).encode()))
                await send(
                    {"type": "http.response.start", "status": response.status_code, "headers": back}
                )
                await send({"type": "http.response.body", "body": scrub.end_with(data)})
                return
            # A careless upstream may echo its own key (httpbin's /headers does): every
            # spelling of the secret is masked in the body, byte for byte (the length stays
            # the same). A compressed body is decoded first, so that no spelling hides in it.
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": back}
            )
            async for chunk in response.aiter_raw():
                out = scrub.feed(decode(chunk) if decode else chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = scrub.feed(decode(b"", True)) if decode else b""
            await send(
                {"type": "http.response.body", "body": tail + scrub.end(), "more_body": False}
            )
        except (httpx.HTTPError, zlib.error):
            log.warning("upstream %s: the response broke off", name)
        finally:
            await response.aclose()

    async def _stream(self, up: Upstream, first: bytes, receive, digest: str | None):
        """The body from ``first`` on, hashed as it passes; the last chunk is held back until
        the digest matches the invocation's, so an upstream never gets a complete body the
        agent did not sign."""
        h, total, held = hashlib.sha256(first), len(first), first
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _BodyMismatch("the client went away")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > up.max_body:
                raise _TooLarge(f"bodies are limited to {up.max_body} bytes")
            h.update(chunk)
            if held:
                yield held
            held = chunk
            if not message.get("more_body"):
                break
        if digest != "sha-256:" + h.hexdigest():
            raise _BodyMismatch("the body is not the one the invocation signed (http.body)")
        if held:
            yield held

    def _result(self, access: str | None, **outcome: Any) -> None:
        """Queue the access's result. Results are written in batches, all of one batch at
        once, so that they share the log's group commits instead of each taking one and
        delaying the next decision (bench/gateway_bench.py)."""
        if access is None:
            return
        self._results.append((access, outcome))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
            self._pending.add(self._flusher)
            self._flusher.add_done_callback(self._pending.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(RESULT_DELAY)
        await self._flush()

    async def _flush(self) -> None:
        while self._results:
            batch, self._results = self._results[:RESULT_BATCH], self._results[RESULT_BATCH:]
            items = [{"access": access, **outcome} for access, outcome in batch]
            try:
                refused = await self.decider.results(items)
            except Exception as exc:  # logged and counted; the agents' answers did not wait
                refused = [type(exc).__name__] * len(items)
            for why in refused:
                self.metrics.results_failed.inc()
                log.error("a result was not logged: %s", why)

    # --- answers -----------------------------------------------------------------------

    async def _json(self, send, status: int, body: Any, headers=None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        await self._send(send, status, data, "application/json", headers)

    async def _send(self, send, status, data: bytes, ctype: str, headers=None) -> None:
        out = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
        ]
        out += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        with contextlib.suppress(Exception):  # the client may be gone
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": data})


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks, seen = [], 0
    async for chunk in response.aiter_bytes():
        seen += len(chunk)
        if seen > limit:
            raise httpx.DecodingError(f"the answer is longer than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@functools.lru_cache(maxsize=256)  # once per secret value, not per request
def _spellings(attach: Attach | None, secret: str) -> tuple[bytes, ...]:
    """The secret as a careless upstream may echo it: itself; percent-encoded (as URL
    encoders do, in either case, and every byte); form-encoded; JSON-escaped (with ``\\/``
    as PHP writes it, and every character as a ``\\u`` escape); the whole Basic credential."""
    raw = secret.encode()
    pct = quote(secret, safe="")
    found = {
        secret,
        pct,
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), pct),
        quote(secret),
        quote_plus(secret),
        "".join(f"%{b:02X}" for b in raw),
        "".join(f"%{b:02x}" for b in raw),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in secret),
        "".join(f"\\u{ord(c):04X}" for c in secret),
    }
    if attach is not None and attach.how == "basic":
        found.add(base64.b64encode(f"{attach.name}:{secret}".encode()).decode())
    return tuple(sorted({s.encode() for s in found if s}, key=len, reverse=True))


def _decoder(codings: list[str]):
    """A streaming decoder for the content codings ``codings`` (applied in that order), or
    None if one is not gzip, x-gzip or deflate."""
    steps = []
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            steps.append(zlib.decompressobj(16 + zlib.MAX_WBITS))
        elif coding == "deflate":
            steps.append(_Deflate())
        else:
            return None

    def decode(chunk: bytes, last: bool = False) -> bytes:
        for step in steps:
            chunk = step.decompress(chunk) + (step.flush() if last else b"")
        return chunk

    return decode


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped, or (wrongly, but often) raw."""

    def __init__(self) -> None:
        self.inner, self.first = zlib.decompressobj(), True

    def decompress(self, data: bytes) -> bytes:
        if self.first and data:
            self.first = False
            try:
                return self.inner.decompress(data)
            except zlib.error:
                self.inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return self.inner.decompress(data)

    def flush(self) -> bytes:
        return self.inner.flush()


class _Scrubber:
    """Masks every spelling of the secret in a stream, across chunk boundaries: the last
    ``longest - 1`` bytes are held until the next chunk (or the end) shows what follows."""

    def __init__(self, spellings: tuple[bytes, ...]):
        self.spellings = spellings
        self.keep = max((len(s) for s in spellings), default=1) - 1
        self.tail = b""

    def found(self, data: bytes) -> bool:
        return any(s in data for s in self.spellings)

    def _mask(self, data: bytes) -> bytes:
        for s in self.spellings:
            data = data.replace(s, b"*" * len(s))
        return data

    def feed(self, chunk: bytes) -> bytes:
        if not self.spellings:
            return chunk
        data = self._mask(self.tail + chunk)
        cut = max(0, len(data) - self.keep)
        self.tail = data[cut:]
        return data[:cut]

    def end(self) -> bytes:
        out, self.tail = self._mask(self.tail), b""
        return out

    def end_with(self, data: bytes) -> bytes:
        return self._mask(self.tail + data) if self.spellings else data


def _has_param(query: str, name: str) -> bool:
    return any(unquote_plus(p.partition("=")[0]) == name for p in query.split("&") if p)


def _first_difference(signed: dict[str, Any], expected: dict[str, Any]) -> str | None:
    for key in ("type", "action", "location", "resource"):
        if signed.get(key) != expected.get(key):
            return f"request.{key}"
    a, b = dict(signed.get("attributes", {})), dict(expected.get("attributes", {}))
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            return f"request.attributes.{key}"
    return None
