"""Where the gateway's decisions come from: the service over HTTP (``lineage gateway``), or
the ledger in the same process (mounted in ``lineage serve``). Either way the access entry
is durable before ``decide`` returns, and any doubt is an error: the gateway fails closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx

from lineage.client import AsyncLineageClient, LineageHTTPError, ReceiptError
from lineage.verifier.errors import FormatError
from lineage.verifier.invocation import SignedInvocation
from lineage.verifier.scope import Detail, parse_scope

__all__ = [
    "Decider",
    "Held",
    "Holding",
    "LocalDecider",
    "Refused",
    "RemoteDecider",
    "Unavailable",
    "Verdict",
]

log = logging.getLogger("lineage.gateway")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    id: str
    index: int
    receipt: dict[str, Any] | None


@dataclass(frozen=True)
class Holding:
    """What a credential may do now, for requests that are authenticated but not decided
    one by one (an MCP ``tools/list``): active or not, its holder key, its scope."""

    active: bool
    jkt: str
    details: tuple[Detail, ...]


class Refused(Exception):
    """The decision point refused the question itself: an invocation that is no proof of
    possession (401) or a malformed one (400). Nothing was logged."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error = status, error


class Held(Exception):
    """A policy rule holds the call for its principal's approval (step-up): nothing was
    logged. ``approval`` is the service's ``{"id", "url", "poll", ...}``; the agent sends
    the same signed request again once the principal has answered."""

    def __init__(self, reason: str, approval: dict[str, Any]):
        super().__init__(reason)
        self.reason, self.approval = reason, approval


class Unavailable(Exception):
    """No durable decision could be had: the gateway forwards nothing."""


class Decider(Protocol):
    async def decide(self, invocation: SignedInvocation, context: dict[str, Any]) -> Verdict: ...

    async def results(self, results: list[dict[str, Any]]) -> list[str]: ...

    async def holding(self, credential: str) -> Holding | None: ...

    async def aclose(self) -> None: ...


class RemoteDecider:
    """Asks the service's ``POST /v1/access`` with the gateway's enforcement token; with a
    pinned log key, each answer's receipt is verified before it is believed."""

    def __init__(self, service: str, token: str, log_key: str | None = None, timeout: float = 10.0):
        self.client = AsyncLineageClient(
            service,
            token=token,
            log_key=log_key or None,
            client=httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)),
        )

    async def decide(self, invocation: SignedInvocation, context: dict[str, Any]) -> Verdict:
        try:
            answer = await self.client.access(invocation, context)
        except LineageHTTPError as exc:
            if exc.status in (400, 401, 413, 422, 429):
                raise Refused(exc.status, exc.error, exc.description) from None
            raise Unavailable(f"the decision point answered {exc.status} {exc.error}") from None
        except ReceiptError as exc:
            raise Unavailable(f"the decision's receipt does not verify: {exc}") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(
                f"the decision point cannot be reached: {type(exc).__name__}"
            ) from None
        if isinstance(answer, dict) and answer.get("decision") == "pending":
            held = answer.get("approval")
            if not isinstance(held, dict) or not isinstance(held.get("url"), str):
                raise Unavailable("the decision point's answer is malformed")
            raise Held(str(answer.get("reason", "")), held)
        try:
            return Verdict(
                answer["decision"] == "allow",
                str(answer["reason"]),
                str(answer["id"]),
                int(answer["index"]),
                answer.get("receipt"),
            )
        except (KeyError, TypeError, ValueError):
            raise Unavailable("the decision point's answer is malformed") from None

    async def results(self, results: list[dict[str, Any]]) -> list[str]:
        """Record a batch (``POST /v1/results``); the errors of those not recorded."""
        answers = await self.client.results(results)
        return [f"{a.get('error')}: {a.get('error_description')}" for a in answers if "id" not in a]

    async def holding(self, credential: str) -> Holding | None:
        """RFC 7662 introspection with the enforcement token; None if unknown or inactive."""
        try:
            answer = await self.client.introspect(credential)
        except LineageHTTPError as exc:
            raise Unavailable(f"introspection answered {exc.status} {exc.error}") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(
                f"the decision point cannot be reached: {type(exc).__name__}"
            ) from None
        if not isinstance(answer, dict) or answer.get("active") is not True:
            return None
        try:
            details = parse_scope(answer["authorization_details"])
            return Holding(True, str(answer["cnf"]["jkt"]), details)
        except (KeyError, TypeError, FormatError):
            raise Unavailable("the introspection answer is malformed") from None

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalDecider:
    """Decides with the ledger this process serves (``lineage serve`` with a mount)."""

    def __init__(self, service: Any, name: str, base: str | None = None):
        # base: where this service's pages are, for the approval links of held calls
        # (``public_url`` when set; else what the gateway learns from the request)
        self.svc, self.name, self.base = service, name, base

    async def decide(self, invocation: SignedInvocation, context: dict[str, Any]) -> Verdict:
        from lineage.ledger.approvals import (
            ApprovalError,
            ApprovalStore,
            decide_or_hold,
        )
        from lineage.ledger.approvals import Held as HeldCall
        from lineage.ledger.decide import InvalidInvocation
        from lineage.ledger.errors import LedgerError, RejectedEntry

        svc = self.svc

        def run():
            return decide_or_hold(
                svc.log,
                ApprovalStore(svc.log.store, clock=svc.log.clock),
                invocation,
                context,
                self.name,
                window=svc.settings.invocation_window,
            )

        try:
            d = await anyio.to_thread.run_sync(run)
        except InvalidInvocation as exc:
            svc.metrics.invalid_proofs.labels(reason=exc.reason).inc()
            raise Refused(401, "invalid_invocation", f"{exc.reason}: {exc}") from None
        except ApprovalError as exc:
            status = 429 if exc.error == "too_many_requests" else 400
            raise Refused(status, exc.error, str(exc)) from None
        except RejectedEntry as exc:
            raise Refused(400, "invalid_request", str(exc)) from None
        except LedgerError as exc:
            raise Unavailable(f"the ledger cannot decide: {type(exc).__name__}") from None
        if isinstance(d, HeldCall):
            base = (svc.settings.public_url or self.base or "").rstrip("/")
            raise Held(d.reason, d.call.to_json(int(svc.log.clock()), base))
        svc.metrics.decisions.labels(outcome="allow" if d.allowed else "deny").inc()
        svc.metrics.appends.labels(kind="access").inc()
        receipt = d.receipt.to_json() if d.receipt is not None else None
        return Verdict(d.allowed, d.reason, d.id, d.index, receipt)

    async def results(self, results: list[dict[str, Any]]) -> list[str]:
        from lineage.ledger.decide import record_results

        def run():
            return record_results(self.svc.log, results, self.name)

        done = await anyio.to_thread.run_sync(run)
        recorded = [d for d in done if not isinstance(d, Exception)]
        for d in recorded:
            if not d.existing:
                self.svc.metrics.appends.labels(kind="result").inc()
        return [str(d) for d in done if isinstance(d, Exception)]

    async def holding(self, credential: str) -> Holding | None:
        rec = self.svc.credential(credential)
        if rec is None:
            return None
        standing = await anyio.to_thread.run_sync(self.svc.standing, rec)
        if not standing.active:
            return None
        return Holding(True, rec.holder.kid, tuple(rec.credential.scope))

    async def aclose(self) -> None:
        return None
