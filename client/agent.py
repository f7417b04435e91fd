"""The agent client's protocol, written once as request generators (sans-I/O),
and the two drivers over it: ``LineageClient`` (httpx.Client) and
``AsyncLineageClient`` (httpx.AsyncClient), so the two cannot drift."""

from __future__ import annotations

import base64
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lineage.verifier.bodies import delegation_body, grant_body
from lineage.verifier.bundle import VerifiedBundle, verify_bundle
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.invocation import SignedInvocation, sign_invocation
from lineage.verifier.keys import SigningKey

from .dpop import make_proof

__all__ = ["Agent", "AsyncLineageClient", "LineageClient", "LineageHTTPError"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGNED_ENTRY = "urn:lineage:params:oauth:token-type:signed-entry"

Flow = Generator[httpx.Request, httpx.Response, Any]


class LineageHTTPError(Exception):
    """The service refused: ``status``, ``error`` (OAuth/problem code) and ``description``."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description = status, error, description


@dataclass(frozen=True)
class Agent:
    """An agent's key. Ephemeral by default: generate one per task, never store it."""

    key: SigningKey

    @classmethod
    def ephemeral(cls) -> Agent:
        return cls(SigningKey.generate())

    def invoke(
        self, credential: str, request: Mapping[str, Any], iat: int | None = None
    ) -> SignedInvocation:
        """Sign an invocation: this agent's proof of possession for one request."""
        return sign_invocation(
            self.key, credential, request, int(time.time()) if iat is None else iat
        )


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error", "error")
        raise LineageHTTPError(
            response.status_code, error, body.get("error_description") or body.get("detail") or ""
        )
    ctype = response.headers.get("content-type", "")
    return response.json() if "json" in ctype else response.text


class _Flows:
    """The protocol, as request generators; ``base`` is the service URL."""

    def __init__(self, base: str, token: str | None):
        self.base = base.rstrip("/")
        self.token = token
        self._origin: str | None = None

    def _req(self, method: str, path: str, **kw: Any) -> httpx.Request:
        headers = dict(kw.pop("headers", {}))
        if self.token and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.Request(method, self.base + path, headers=headers, **kw)

    def _dpop(
        self, method: str, path: str, key: SigningKey, token: str | None = None, **kw: Any
    ) -> httpx.Request:
        headers = {"DPoP": make_proof(key.seed, method, self.base + path, access_token=token)}
        if token is not None:
            headers["Authorization"] = f"DPoP {token}"
        return self._req(method, path, headers=headers, **kw)

    def origin(self) -> Flow:
        if self._origin is None:
            meta = _check((yield self._req("GET", "/.well-known/oauth-authorization-server")))
            self._origin = meta["lineage_log_origin"]
        return self._origin

    def log_key(self) -> Flow:
        return _check((yield self._req("GET", "/v1/log/key"))).strip()

    def exchange(self, entry: Entry, holder: Agent) -> Flow:
        """RFC 8693 token exchange of a signed grant or delegation; returns the response."""
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": SIGNED_ENTRY,
            "subject_token": base64.urlsafe_b64encode(entry.raw).rstrip(b"=").decode(),
        }
        return _check((yield self._dpop("POST", "/oauth/token", holder.key, data=data)))

    def _issue(
        self,
        make_body: Any,
        signer: SigningKey,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int,
        description: str,
        limits: dict[str, Any],
    ) -> Flow:
        """Build a credential body, sign it client-side, exchange it as ``holder``."""
        origin = yield from self.origin()
        body = make_body(
            origin,
            holder.key.public,
            task={"id": task, "description": description},
            scope=scope,
            expires_at=int(time.time()) + ttl,
            **limits,
        )
        answer = yield from self.exchange(sign_entry(body, [signer]), holder)
        return answer["access_token"]

    def grant(
        self,
        principal_key: SigningKey,
        principal: str,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int = 900,
        description: str = "",
        **limits: Any,
    ) -> Flow:
        limits.setdefault("max_depth", 1)
        return (
            yield from self._issue(
                lambda origin, key, **kw: grant_body(origin, principal, key, **kw),
                principal_key,
                holder,
                task=task,
                scope=scope,
                ttl=ttl,
                description=description,
                limits=limits,
            )
        )

    def delegate(
        self,
        parent_holder: Agent,
        parent: str,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int = 600,
        description: str = "",
        **limits: Any,
    ) -> Flow:
        limits.setdefault("max_depth", 0)
        return (
            yield from self._issue(
                lambda origin, key, **kw: delegation_body(origin, parent, key, **kw),
                parent_holder.key,
                holder,
                task=task,
                scope=scope,
                ttl=ttl,
                description=description,
                limits=limits,
            )
        )

    def access(self, invocation: SignedInvocation, context: Mapping[str, Any]) -> Flow:
        """(Enforcement point) ask for a decision; needs an enforcement token."""
        body = {"invocation": dict(invocation.to_json()), "context": dict(context)}
        return _check((yield self._req("POST", "/v1/access", json=body)))

    def introspect(self, credential: str) -> Flow:
        return _check((yield self._req("POST", "/oauth/introspect", data={"token": credential})))

    def lineage(self, holder: Agent, credential: str) -> Flow:
        """The credential's evidence bundle, fetched as its holder (DPoP)."""
        path = f"/v1/credentials/{credential}/lineage"
        return _check((yield self._dpop("GET", path, holder.key, credential)))

    def verify_lineage(self, holder: Agent, credential: str, log_key: str | None = None) -> Flow:
        """Fetch the bundle and verify it offline (with ``log_key``, pinned, if given)."""
        trusted = log_key or (yield from self.log_key())
        bundle = yield from self.lineage(holder, credential)
        return verify_bundle(bundle, trusted)


class LineageClient:
    """Synchronous client (httpx.Client)."""

    def __init__(
        self, base_url: str, *, token: str | None = None, client: httpx.Client | None = None
    ):
        self._flows = _Flows(base_url, token)
        self._http = client or httpx.Client(timeout=10.0)

    def _run(self, flow: Flow) -> Any:
        try:
            request = next(flow)
            while True:
                request = flow.send(self._http.send(request))
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LineageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_key(self) -> str:
        return self._run(self._flows.log_key())

    def grant(self, principal_key: SigningKey, principal: str, holder: Agent, **kw: Any) -> str:
        return self._run(self._flows.grant(principal_key, principal, holder, **kw))

    def delegate(self, parent_holder: Agent, parent: str, holder: Agent, **kw: Any) -> str:
        return self._run(self._flows.delegate(parent_holder, parent, holder, **kw))

    def exchange(self, entry: Entry, holder: Agent) -> dict[str, Any]:
        return self._run(self._flows.exchange(entry, holder))

    def access(self, invocation: SignedInvocation, context: Mapping[str, Any]) -> dict:
        return self._run(self._flows.access(invocation, context))

    def introspect(self, credential: str) -> dict[str, Any]:
        return self._run(self._flows.introspect(credential))

    def lineage(self, holder: Agent, credential: str) -> dict[str, Any]:
        return self._run(self._flows.lineage(holder, credential))

    def verify_lineage(
        self, holder: Agent, credential: str, log_key: str | None = None
    ) -> VerifiedBundle:
        return self._run(self._flows.verify_lineage(holder, credential, log_key))


class AsyncLineageClient:
    """Asynchronous client (httpx.AsyncClient); the same methods, awaited."""

    def __init__(
        self, base_url: str, *, token: str | None = None, client: httpx.AsyncClient | None = None
    ):
        self._flows = _Flows(base_url, token)
        self._http = client or httpx.AsyncClient(timeout=10.0)

    async def _run(self, flow: Flow) -> Any:
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._http.send(request))
        except StopIteration as done:
            return done.value

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLineageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def log_key(self) -> str:
        return await self._run(self._flows.log_key())

    async def grant(
        self, principal_key: SigningKey, principal: str, holder: Agent, **kw: Any
    ) -> str:
        return await self._run(self._flows.grant(principal_key, principal, holder, **kw))

    async def delegate(self, parent_holder: Agent, parent: str, holder: Agent, **kw: Any) -> str:
        return await self._run(self._flows.delegate(parent_holder, parent, holder, **kw))

    async def exchange(self, entry: Entry, holder: Agent) -> dict[str, Any]:
        return await self._run(self._flows.exchange(entry, holder))

    async def access(self, invocation: SignedInvocation, context: Mapping[str, Any]) -> dict:
        return await self._run(self._flows.access(invocation, context))

    async def introspect(self, credential: str) -> dict[str, Any]:
        return await self._run(self._flows.introspect(credential))

    async def lineage(self, holder: Agent, credential: str) -> dict[str, Any]:
        return await self._run(self._flows.lineage(holder, credential))

    async def verify_lineage(
        self, holder: Agent, credential: str, log_key: str | None = None
    ) -> VerifiedBundle:
        return await self._run(self._flows.verify_lineage(holder, credential, log_key))
