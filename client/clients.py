"""The agent client's two drivers: ``LineageClient`` (httpx.Client) and
``AsyncLineageClient`` (httpx.AsyncClient). Each only sends what the protocol in
``flows.py`` yields, so every method has one definition of what goes on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import httpx

from lineage.verifier.bundle import VerifiedBundle
from lineage.verifier.checkpoint import SignedCheckpoint
from lineage.verifier.entry import Entry
from lineage.verifier.invocation import SignedInvocation
from lineage.verifier.keys import SigningKey

from .flows import Agent, Flow, _Flows

__all__ = ["AsyncLineageClient", "LineageClient"]


def _pause(status: Mapping[str, Any], deadline: float) -> float | None:
    """How long to wait before polling a held call again; None when its status is final
    (or the caller's deadline has passed)."""
    if status["status"] != "pending" or time.monotonic() >= deadline:
        return None
    return max(1, int(status.get("interval", 2)))


class LineageClient:
    """Synchronous client (httpx.Client).

    ``log_key`` pins the log's verifier key (``lineage log key`` prints it);
    ``trust_on_first_use=True`` pins the first one the server shows instead.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        log_key: str | None = None,
        trust_on_first_use: bool = False,
        client: httpx.Client | None = None,
    ):
        self._flows = _Flows(base_url, token, log_key, trust_on_first_use)
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

    @property
    def pinned_log_key(self) -> str | None:
        """The log key every verification uses (given, or pinned on first use)."""
        return self._flows.pinned

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

    def approval(self, call_id: str) -> dict[str, Any]:
        """The status of a call held for its principal's approval (step-up)."""
        return self._run(self._flows.approval(call_id))

    def wait_for_approval(self, pending: Mapping[str, Any], timeout: float = 600) -> str:
        """Poll a ``pending`` answer of ``access`` until the principal answers (or the call
        lapses): ``approved``, ``refused`` or ``expired``. Then send the same invocation
        again: approved, it is decided with the approval; refused, it is a logged deny."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.approval(pending["approval"]["id"])
            pause = _pause(status, deadline)
            if pause is None:
                return status["status"]
            time.sleep(pause)

    def result(
        self, access_id: str, *, upstream_status: int | None = None, failure: str | None = None
    ) -> dict[str, Any]:
        """Record the upstream's answer to an allowed access: ``{id, index, receipt}``,
        the receipt verified when a log key is pinned."""
        flow = self._flows.result(access_id, upstream_status=upstream_status, failure=failure)
        return self._run(flow)

    def results(self, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Record many results at once (``POST /v1/results``); see ``_Flows.results``."""
        return self._run(self._flows.results(results))

    def introspect(self, credential: str, **as_who: Any) -> dict[str, Any]:
        """``holder=Agent`` or ``principal=name, principal_key=key``; else the token's."""
        return self._run(self._flows.introspect(credential, **as_who))

    def revoke(
        self, credential: str, *, holder: Agent | None = None, reason: str = ""
    ) -> dict[str, Any] | None:
        """Revoke; returns the revocation's receipt (verified when a log key is pinned)."""
        answer = self._run(self._flows.revoke(credential, holder=holder, reason=reason))
        return answer.get("lineage_receipt")

    def lineage(self, holder: Agent, credential: str) -> dict[str, Any]:
        return self._run(self._flows.lineage(holder, credential))

    def verify_lineage(
        self, holder: Agent, credential: str, log_key: str | None = None
    ) -> VerifiedBundle:
        return self._run(self._flows.verify_lineage(holder, credential, log_key))

    def checkpoint(self, log_key: str | None = None) -> SignedCheckpoint:
        return self._run(self._flows.checkpoint(log_key))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return self._run(self._flows.inclusion_proof(index, tree_size))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self._run(self._flows.consistency_proof(first, second))

    def grew_from(self, old: SignedCheckpoint, log_key: str | None = None) -> SignedCheckpoint:
        return self._run(self._flows.grew_from(old, log_key))

    def still_included(
        self, receipt: Mapping[str, Any], log_key: str | None = None
    ) -> SignedCheckpoint:
        return self._run(self._flows.still_included(receipt, log_key))


class AsyncLineageClient:
    """Asynchronous client (httpx.AsyncClient); the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        log_key: str | None = None,
        trust_on_first_use: bool = False,
        client: httpx.AsyncClient | None = None,
    ):
        self._flows = _Flows(base_url, token, log_key, trust_on_first_use)
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

    @property
    def pinned_log_key(self) -> str | None:
        return self._flows.pinned

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

    async def approval(self, call_id: str) -> dict[str, Any]:
        return await self._run(self._flows.approval(call_id))

    async def wait_for_approval(self, pending: Mapping[str, Any], timeout: float = 600) -> str:
        """As ``LineageClient.wait_for_approval``, sleeping without blocking the loop."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.approval(pending["approval"]["id"])
            pause = _pause(status, deadline)
            if pause is None:
                return status["status"]
            await anyio.sleep(pause)

    async def result(
        self, access_id: str, *, upstream_status: int | None = None, failure: str | None = None
    ) -> dict[str, Any]:
        flow = self._flows.result(access_id, upstream_status=upstream_status, failure=failure)
        return await self._run(flow)

    async def results(self, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await self._run(self._flows.results(results))

    async def introspect(self, credential: str, **as_who: Any) -> dict[str, Any]:
        return await self._run(self._flows.introspect(credential, **as_who))

    async def revoke(
        self, credential: str, *, holder: Agent | None = None, reason: str = ""
    ) -> dict[str, Any] | None:
        answer = await self._run(self._flows.revoke(credential, holder=holder, reason=reason))
        return answer.get("lineage_receipt")

    async def lineage(self, holder: Agent, credential: str) -> dict[str, Any]:
        return await self._run(self._flows.lineage(holder, credential))

    async def verify_lineage(
        self, holder: Agent, credential: str, log_key: str | None = None
    ) -> VerifiedBundle:
        return await self._run(self._flows.verify_lineage(holder, credential, log_key))

    async def checkpoint(self, log_key: str | None = None) -> SignedCheckpoint:
        return await self._run(self._flows.checkpoint(log_key))

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return await self._run(self._flows.inclusion_proof(index, tree_size))

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await self._run(self._flows.consistency_proof(first, second))

    async def grew_from(
        self, old: SignedCheckpoint, log_key: str | None = None
    ) -> SignedCheckpoint:
        return await self._run(self._flows.grew_from(old, log_key))

    async def still_included(
        self, receipt: Mapping[str, Any], log_key: str | None = None
    ) -> SignedCheckpoint:
        return await self._run(self._flows.still_included(receipt, log_key))
