"""The Lineage service: a thin FastAPI layer over ``ledger``.

``create_app(log, settings)`` builds the app around an open ledger; ``lineage
serve`` runs it under uvicorn. One process sequences the writes; checkpoints
are published every ``checkpoint_interval`` seconds while it runs.
"""

from __future__ import annotations

import secrets
import time
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, Request
from prometheus_client import Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from lineage.ledger.config import Settings
from lineage.ledger.log import Log
from lineage.ledger.tokens import TokenStore

from .dpop import NonceSource
from .errors import install_handlers, render
from .gateway.app import Gateway
from .gateway.config import GatewayConfig
from .gateway.decider import LocalDecider
from .openapi import install_openapi
from .routers import access, approvals, consent, credentials, entries, explorer, oauth, ops, web
from .routers import log as log_routes
from .service import Service

__all__ = ["MAX_BODY", "create_app"]

MAX_BODY = 1 << 20  # 1 MiB: an entry is at most 64 KiB


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whatever Content-Length says.

    The body is read (up to limit + 1 bytes) before the app runs, then replayed
    to it, so a chunked upload cannot slip past a declared length.
    """

    def __init__(self, app: ASGIApp, limit: int, skip: str = ""):
        self.app, self.limit, self.skip = app, limit, skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._skipped(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _skipped(self, path: str) -> bool:
        """The mounted gateway streams bodies under its own limits."""
        return bool(self.skip) and (path == self.skip or path.startswith(self.skip + "/"))

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = render(
            Request(scope),
            413,
            "request_too_large",
            f"request bodies are limited to {self.limit} bytes",
        )
        await response(scope, receive, send)


class _Metadata:
    """Routes RFC 9728 metadata requests for the mounted gateway's MCP servers to it."""

    def __init__(self, gateway: Gateway, prefix: str):
        self.gateway, self.prefix = gateway, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = scope.get("raw_path", b"").decode("latin-1").partition("?")[0][len(self.prefix) :]
        await self.gateway.metadata_asgi(name.lstrip("/"), scope, send)


def create_app(
    log: Log,
    settings: Settings | None = None,
    *,
    checkpoints: bool = True,
    gateway: GatewayConfig | None = None,
) -> FastAPI:
    """The service; with ``gateway`` (a ``[gateway]`` table with a ``mount``), the gateway
    too, at that path, deciding with this ledger in this process."""
    settings = settings or Settings()
    # One nonce secret for every process serving this database, so that a nonce one
    # worker issued is accepted by the next (it only proves freshness: not a key).
    secret = bytes.fromhex(log.store.meta_once("dpop_nonce_secret", secrets.token_hex(32)))
    svc = Service(
        log,
        settings,
        TokenStore(log.store),
        nonces=NonceSource(secret),
        require_dpop_nonce=settings.dpop_nonce_required,
        gateway=gateway,
    )

    Gauge(
        "lineage_checkpoint_failures",
        "Checkpoint publications that failed (the checkpoint thread retries)",
        registry=svc.metrics.registry,
    ).set_function(lambda: log.counters.get("checkpoint_failures", 0))
    Gauge(
        "lineage_proof_failures",
        "Proofs and leaves refused because they did not verify against a signed checkpoint",
        registry=svc.metrics.registry,
    ).set_function(lambda: log.counters.get("proof_failures", 0))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if checkpoints:
            log.start_checkpointing(settings.checkpoint_interval)
        yield
        if mounted is not None:
            await mounted.aclose()
        log.close()

    app = FastAPI(
        title="Lineage",
        version=version("lineage-ledger"),
        lifespan=lifespan,
        description="A credential ledger for AI agents: short-lived, attenuating "
        "credentials recorded in an RFC 9162 transparency log.",
    )
    app.state.service = svc
    mounted = None
    if gateway is not None and gateway.mount:
        mounted = Gateway(gateway, LocalDecider(svc, gateway.name), prefix=gateway.mount)
        app.mount(gateway.mount, mounted)
        # RFC 9728: the metadata of <base>/gateway/x is at <base>/.well-known/...-resource/gateway/x
        well_known = f"/.well-known/oauth-protected-resource{gateway.mount}"
        app.mount(well_known, _Metadata(mounted, well_known))
    install_handlers(app)
    install_openapi(app)
    for module in (
        oauth,
        consent,
        entries,
        access,
        approvals,
        credentials,
        log_routes,
        ops,
        web,
        explorer,
    ):
        app.include_router(module.router)

    @app.middleware("http")
    async def timing(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        svc.metrics.latency.labels(route=getattr(route, "path", "unmatched")).observe(
            time.perf_counter() - started
        )
        return response

    app.add_middleware(BodyLimit, limit=MAX_BODY, skip=mounted.prefix if mounted else "")
    return app
