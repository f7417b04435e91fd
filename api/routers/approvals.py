"""Step-up in the browser: a person approves or refuses one exact call (docs/CONSENT.md §7).

    GET  /v1/approvals/{id}           the held call's status, for the agent to poll
    GET  /approve/{id}                the page: the exact request, in words
    POST /approve/{id}/prepare        the approval's exact bytes, for the key the page chose
    POST /approve/{id}/answer         the approval or refusal the browser signed

``POST /v1/access`` answers 202 ``pending`` with the links when a policy rule holds the
call (``lineage.ledger.approvals``). The page's script checks that what it signs names
the digests of the invocation and context the page shows, then signs with the
principal's non-extractable key; the service checks the signature against the log's
keys before it takes the answer.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from lineage.ledger.approvals import ApprovalError, ApprovalStore, HeldCall
from lineage.verifier.approval import DECISIONS, context_digest, parse_approval
from lineage.verifier.errors import FormatError, SignatureError
from lineage.verifier.jcs import canonical
from lineage.verifier.keys import APPROVAL_CONTEXT, b64u_encode

from ..errors import ApiError
from ..service import Service, service
from .web import _same_origin, page

__all__ = ["approval_error", "base_url", "router"]

router = APIRouter(tags=["approvals"])

CALL_ID = r"^apr_[A-Za-z0-9_-]{24}$"
CallId = Annotated[str, Path(pattern=CALL_ID, description="the held call's id")]
SKEW = 120  # seconds a browser's approval may be signed before it reaches us


def base_url(request: Request) -> str:
    """Where this service's pages are: ``public_url`` when set, else the request's own."""
    configured = request.app.state.service.settings.public_url
    if configured:
        return configured.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def approval_error(exc: ApprovalError) -> ApiError:
    status = {"not_found": 404, "access_denied": 403, "too_many_requests": 429}
    return ApiError(status.get(exc.error, 400), exc.error, str(exc))


class HeldStatus(BaseModel):
    id: str = Field(description="the held call's id")
    status: str = Field(description="pending, approved, refused or expired")
    principal: str = Field(description="who must answer: the principal at the chain's root")
    rules: list[str] = Field(description="the policy rules that hold the call")
    url: str = Field(description="the page where the principal answers")
    poll: str = Field(description="this status's address")
    expires_at: int = Field(
        description="while pending, when the call lapses unanswered; once approved, when "
        "the approval stops being usable"
    )
    interval: int = Field(description="seconds to wait between polls")


def _store(svc: Service) -> ApprovalStore:
    """Held calls, on the log's clock (the one decisions are made on)."""
    return ApprovalStore(svc.log.store, clock=svc.log.clock)


def _call(svc: Service, call_id: str) -> HeldCall:
    call = _store(svc).get(call_id)
    if call is None:
        raise ApiError(404, "not_found", "no such call waiting for approval")
    return call


@router.get("/v1/approvals/{call_id}", response_model=HeldStatus)
def status(
    call_id: CallId, request: Request, svc: Annotated[Service, Depends(service)]
) -> dict[str, Any]:
    """Whether the principal has answered a held call. Send the same signed invocation
    again once it is ``approved`` (or ``refused``: it is then a logged deny). The id is
    the capability: it is given only to the caller whose call is held."""
    return _call(svc, call_id).to_json(int(svc.log.clock()), base_url(request))


# -- the page ---------------------------------------------------------------------------------


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(svc: Service, call: HeldCall) -> str:
    """The exact call in words: who asks, under whose grant, to do what, to what."""
    e = html.escape
    inv = call.invocation
    req = inv["request"]
    state = svc.log.state()
    rec = state.credential(inv["credential"])
    chain = rec.chain() if rec is not None else []
    holders = " → ".join(
        f"<b>{e(getattr(n.entry.body, 'agent', None) or n.holder.kid[:12])}</b>" for n in chain
    )
    task = chain[-1].entry.body.credential.limits.task if chain else None
    rows = [
        ("action", req["action"]),
        ("type", req["type"]),
        ("resource", req.get("resource", "(any)")),
        ("location", req.get("location", "(any)")),
    ]
    asserted = call.context.get("attributes") or {}
    attributes = {**req.get("attributes", {}), **asserted}
    for name in sorted(attributes):
        said = " (asserted by the gateway)" if name in asserted else ""
        rows.append((f"attribute {name}", json.dumps(attributes[name]) + said))
    table = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in rows)
    lines = [
        f"<p>An agent acting under your grant asks to make <b>this one call</b>. The "
        f"policy rule {e(', '.join(call.rules))} needs your approval for it.</p>",
        f"<p>Chain: <b>{e(call.principal)}</b> → {holders}</p>" if chain else "",
        f"<p>Task: <code>{e(task.id)}</code> {e(task.description)}</p>" if task else "",
        f"<table>{table}</table>",
        f"<p>Asked at {e(_when(inv['iat']))} through <code>{e(call.enforcement)}</code>. "
        f"If you approve, the agent may make exactly this call, once, within "
        f"{call.ttl} seconds. This request lapses at {e(_when(call.expires))}.</p>",
    ]
    return "".join(lines)


@router.get("/approve/{call_id}", include_in_schema=False)
def approval_page(call_id: CallId, svc: Annotated[Service, Depends(service)]) -> HTMLResponse:
    store = _store(svc)
    call = store.get(call_id)
    if call is None:
        return page("Lineage: no such call", "<h1>No such call</h1>", 404, script="approve.js")
    state = call.status_at(int(svc.log.clock()))
    if state != "pending":
        return page(
            "Lineage: answered",
            f"<h1>This call is {html.escape(state)}</h1><p>There is nothing to answer.</p>",
        )
    csrf = store.page_token(call.id)
    e = html.escape
    data = (
        f'data-call="{e(call.id)}" data-csrf="{e(csrf)}" data-principal="{e(call.principal)}" '
        f'data-invocation="{e(canonical(dict(call.invocation)).decode())}" '
        f'data-context="{e(canonical(dict(call.context)).decode())}"'
    )
    body = (
        f"<h1>Approve one call?</h1><div id=call {data}>{_describe(svc, call)}</div>"
        "<p id=signer>Looking for your key in this browser…</p>"
        "<p><button id=approve disabled>Approve this call</button> "
        "<button id=refuse disabled>Refuse</button></p><p id=status role=status></p>"
    )
    return page("Lineage: approve one call", body, script="approve.js")


class Chosen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csrf: str = Field(max_length=64)
    kid: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    decision: str = Field(pattern="^(approve|refuse)$")


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csrf: str = Field(max_length=64)
    approval: dict[str, Any]


def _waiting(svc: Service, call_id: str, csrf: str) -> HeldCall:
    try:
        return _store(svc).waiting(call_id, csrf)
    except ApprovalError as exc:
        raise approval_error(exc) from None


def _signer(svc: Service, call: HeldCall, kid: str) -> Any:
    """The principal's key ``kid``, active now; else 403."""
    state = svc.log.state()
    bound = state.key(kid)
    if bound is None or bound.principal != call.principal or not bound.active(state.size):
        raise ApiError(
            403, "access_denied", f"this browser's key is not an active key of {call.principal}"
        )
    return bound


@router.post("/approve/{call_id}/prepare", include_in_schema=False)
def prepare(
    call_id: CallId, body: Chosen, request: Request, svc: Annotated[Service, Depends(service)]
) -> dict[str, Any]:
    """The approval (or refusal) to sign, and its exact bytes (FORMAT.md §5.1)."""
    _same_origin(request)
    call = _waiting(svc, call_id, body.csrf)
    _signer(svc, call, body.kid)
    now = int(svc.log.clock())
    approval = {
        "log": svc.log.origin,
        "invocation": call.digest,
        "context": context_digest(call.context),
        "decision": body.decision,
        "iat": now,
        "expires_at": now + call.ttl,
    }
    return {
        "principal": call.principal,
        "approval": approval,
        "signing_input": b64u_encode(APPROVAL_CONTEXT + canonical(approval)),
    }


@router.post("/approve/{call_id}/answer", include_in_schema=False)
def answer(
    call_id: CallId, body: Answer, request: Request, svc: Annotated[Service, Depends(service)]
) -> dict[str, Any]:
    """Take the principal's signed answer: checked against the call and the log's keys."""
    _same_origin(request)
    call = _waiting(svc, call_id, body.csrf)
    try:
        signed = parse_approval(body.approval)
    except FormatError as exc:
        raise ApiError(400, "invalid_request", f"approval: {exc}") from None
    now = int(svc.log.clock())
    wrong = (
        "log"
        if signed.log != svc.log.origin
        else "invocation"
        if signed.invocation != call.digest
        else "context"
        if signed.context != context_digest(call.context)
        else "iat"
        if abs(signed.iat - now) > SKEW
        else "expires_at"
        if signed.expires_at - signed.iat > call.ttl
        else None
    )
    if wrong is not None:
        raise ApiError(400, "invalid_request", f"approval.{wrong}: not this call's")
    bound = _signer(svc, call, signed.sig.kid)
    try:
        signed.verify(bound.key)
    except SignatureError as exc:
        raise ApiError(403, "access_denied", f"approval: {exc}") from None
    assert signed.decision in DECISIONS
    try:
        done = _store(svc).answer(call_id, body.csrf, signed)
    except ApprovalError as exc:
        raise approval_error(exc) from None
    svc.log.count("approvals_" + done.status)
    return {"status": done.status, "expires_at": signed.expires_at}
