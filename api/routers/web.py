"""The principal's browser: enrolment (docs/CONSENT.md).

``GET /enroll`` is a server-rendered page with one small script, shipped from here (no
network, no build), under a strict Content Security Policy. The invitation travels in the
URL's fragment, so it is in no request line or log; the script posts it with the new key.
"""

from __future__ import annotations

import functools
import html
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from lineage.ledger.invites import INVITE, InviteError, InviteStore
from lineage.ledger.issuance import bind_principal
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import PublicKey, b64u_decode

from ..errors import ApiError
from ..models import Receipt
from ..service import Service, public_url, service

__all__ = ["SECURITY_HEADERS", "page", "router"]

router = APIRouter(tags=["enrolment"])

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ASSETS = {
    "enroll.js": "text/javascript; charset=utf-8",
    "consent.js": "text/javascript; charset=utf-8",
    "approve.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "explorer.js": "text/javascript; charset=utf-8",
    "verify.js": "text/javascript; charset=utf-8",
    "lineage.css": "text/css; charset=utf-8",
}
PROOF_CONTEXT = b"lineage-enrol-v1\n"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@functools.cache  # a handful of small files, read once
def _asset(name: str) -> bytes:
    return files("lineage.api").joinpath("web", name).read_bytes()


def page(
    title: str,
    body: str,
    status: int = 200,
    script: str | None = None,
    *,
    module: str | None = None,
    wide: bool = False,
) -> HTMLResponse:
    """A server-rendered page under the pages' headers (CSP, no framing, no caching), with
    ``script`` (one of ``ASSETS``) after common.js, and ``module`` (an ES module that
    imports what else it needs, after common.js), if given; ``wide`` for pages of tables."""
    scripts = ""
    if script:
        scripts = (
            '<script src="/static/common.js" defer></script>'
            f'<script src="/static/{script}" defer></script>'
        )
    if module:  # after common.js, which it may use (module scripts run after defer ones)
        if not script:
            scripts += '<script src="/static/common.js" defer></script>'
        scripts += f'<script type="module" src="/static/{module}"></script>'
    main = '<main class="wide">' if wide else "<main>"
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="/static/lineage.css">{scripts}</head>'
        f"<body>{main}{body}</main></body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=SECURITY_HEADERS)


@router.get("/enroll", include_in_schema=False)
def enroll_page() -> Response:
    return Response(
        _asset("enroll.html"), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
    )


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", "no such file")
    return Response(_asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


def _same_origin(request: Request) -> None:
    """A browser states its page's origin on a POST: only this service's own pages may
    enrol (no other site can post an invitation it read, or trick a browser into it)."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser (curl, a test client): the invitation alone decides
    base = urlsplit(public_url(request))
    if not service(request).settings.public_url and base.hostname not in LOOPBACK:
        # Without public_url the service's origin is read from the Host header, which a
        # DNS-rebinding page sets to its own name: only a loopback Host is believed.
        raise ApiError(403, "access_denied", "set public_url to enrol or consent from another host")
    if origin != f"{base.scheme}://{base.netloc}":
        raise ApiError(403, "access_denied", "enrolment is only from this service's own page")


def _refusal(exc: InviteError) -> ApiError:
    if exc.spent:
        return ApiError(403, "access_denied", str(exc))
    return ApiError(404, "not_found", str(exc))


def _invite(svc: Service, presented: str):
    try:
        return InviteStore(svc.log.store).check(presented)
    except InviteError as exc:
        raise _refusal(exc) from None


class Preview(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invite: str = Field(
        pattern=f"^{INVITE.pattern}$", description="the invitation, inv_<id>_<secret>"
    )


class PreviewAnswer(BaseModel):
    principal: str
    roles: list[str]
    expires: int


class Enrolment(Preview):
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$", description="base64url, 32 bytes")
    proof: str = Field(
        pattern=r"^[A-Za-z0-9_-]{86}$",
        description="base64url Ed25519 signature of 'lineage-enrol-v1\\n' invite '\\n' "
        "public_key, by the key being enrolled",
    )


class Enrolled(BaseModel):
    principal: str
    kid: str
    id: str
    index: int
    receipt: Receipt | None = None


@router.post("/v1/enroll/preview", response_model=PreviewAnswer)
def preview(
    body: Preview, request: Request, svc: Annotated[Service, Depends(service)]
) -> dict[str, Any]:
    """Who an invitation is for, before the browser makes a key; it stays unused."""
    _same_origin(request)
    invite = _invite(svc, body.invite)
    return {"principal": invite.principal, "roles": list(invite.roles), "expires": invite.expires}


@router.post("/v1/enroll", response_model=Enrolled, status_code=201)
def enroll(
    body: Enrolment, request: Request, svc: Annotated[Service, Depends(service)]
) -> dict[str, Any]:
    """Bind the browser's public key to the invited principal: the operator's ``key``
    entry, appended once the key proves it holds its private half."""
    _same_origin(request)
    _invite(svc, body.invite)  # before anything else: what is it for, is it still good
    try:
        key = PublicKey.from_b64(body.public_key, "public_key")
        proof = b64u_decode(body.proof, length=64, what="proof")
    except FormatError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    message = PROOF_CONTEXT + body.invite.encode() + b"\n" + body.public_key.encode()
    if not key.verify(b"", message, proof):
        raise ApiError(403, "access_denied", "proof: not a signature by that key")
    if not svc.log.has_keys:
        raise ApiError(503, "temporarily_unavailable", "this service holds no operator key")

    def bind(invite):
        entry = bind_principal(
            svc.log.origin, svc.log.keys.operator, invite.principal, key, invite.roles
        )
        return svc.log.append(entry)

    try:
        invite, appended = InviteStore(svc.log.store).redeem(body.invite, key.kid, bind)
    except InviteError as exc:
        raise _refusal(exc) from None
    svc.metrics.appends.labels(kind="key").inc()
    out = {
        "principal": invite.principal,
        "kid": key.kid,
        "id": appended.id,
        "index": appended.index,
    }
    if appended.receipt is not None:
        out["receipt"] = appended.receipt.to_json()
    return out
