"""Real servers for the gateway tests: an upstream API that accepts only its secret, and the
gateway itself, each served by uvicorn on 127.0.0.1 in a background thread.

    with running(tmp_path) as srv, Upstream.serving() as api, gateway(srv, config) as gw:
        ...

``Upstream`` records every request exactly as it arrived (method, raw path, query,
headers, body), so a test can say what reached it and what never did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from lineage.api.gateway.app import Gateway
from lineage.api.gateway.config import GatewayConfig, parse_gateway
from lineage.api.gateway.decider import Decider, RemoteDecider

from .api_server import MAIL, Server, in_thread

__all__ = ["MAIL_SECRET", "Seen", "Upstream", "gateway", "mail_config", "serve_app"]

MAIL_SECRET = "mail-secret-7f3a9c1e5b2d4086"  # the upstream's real key: agents never see it


@contextmanager
def serve_app(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 (a free port) until the block ends; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan=lifespan,
        proxy_headers=False,  # as `lineage gateway` runs
        server_header=False,
        date_header=False,
    )
    with in_thread(config) as port:
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class Upstream:
    """An API that answers only requests carrying ``X-Api-Key: MAIL_SECRET``.

    ``/slow`` sleeps ``slow`` seconds; ``/fail`` answers 500; ``/echo`` answers with every
    header it received (a careless API); anything else answers 200 with what it saw."""

    seen: list[Seen] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # raw paths whose body never completed
    slow: float = 3.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the body never completed
                self.aborted.append(scope["raw_path"].decode("latin-1"))
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        seen = Seen(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            headers,
            body,
        )
        self.seen.append(seen)
        path = seen.raw_path
        if seen.header("x-api-key") != [MAIL_SECRET]:
            return await _answer(send, 401, {"error": "a valid X-Api-Key is required"})
        if path.endswith("/slow"):
            await asyncio.sleep(self.slow)
        if path.endswith("/fail"):
            return await _answer(send, 500, {"error": "upstream broke"})
        answer = {
            "method": seen.method,
            "path": path,
            "query": seen.query,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        if path.endswith("/echo"):
            answer["headers"] = dict(headers)
        await _answer(send, 200, answer)

    @classmethod
    @contextmanager
    def serving(cls, **kw: Any) -> Iterator[tuple[Upstream, str]]:
        api = cls(**kw)
        with serve_app(api) as base:
            yield api, base


async def _answer(send, status: int, body: Mapping[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"x-upstream", b"mail")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def mail_config(srv: Server, upstream: str, **over: Any) -> GatewayConfig:
    """A gateway before the mail API at ``upstream``, deciding at ``srv`` (the enforcement
    token's name, ``enforcement-1``, is what the log records)."""
    mail = {
        "url": upstream,
        "type": "email",
        "location": MAIL,
        "actions": {"GET": "read", "POST": "send", "DELETE": "delete"},
        "fields": {"to": "body", "folder": "query"},
        "secret": {"from": "env", "name": "LINEAGE_TEST_MAIL_KEY"},
        "attach": "header:X-Api-Key",
        "timeout": 1.0,
        "connect_timeout": 1.0,
    }
    mail.update(over)
    return parse_gateway(
        {
            "name": "enforcement-1",
            "service": srv.base,
            "token": {"from": "env", "name": "LINEAGE_TEST_GATEWAY_TOKEN"},
            "upstreams": {"mail": mail},
        }
    )


@contextmanager
def gateway(
    srv: Server, config: GatewayConfig, decider: Decider | None = None
) -> Iterator[tuple[Gateway, str]]:
    """The gateway as ``lineage gateway`` runs it: its own server, asking ``srv`` with the
    enforcement token (receipts verified under the pinned log key)."""
    log_key = srv.log.log_key.vkey
    app = Gateway(config, decider or RemoteDecider(srv.base, srv.enforcement, log_key))
    with serve_app(app, lifespan="on") as base:
        yield app, base
