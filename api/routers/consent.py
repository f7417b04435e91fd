"""OAuth 2.1 consent in the browser: the grant signed by the principal's own key there
(docs/CONSENT.md §5).

    POST /oauth/register                 RFC 7591: a public client, its exact redirect URIs
    GET  /oauth/authorize                the consent page (PKCE S256, state, exact redirect_uri,
                                         RFC 8707 resource, RFC 9396 authorization_details)
    POST /oauth/authorize/prepare        the grant's exact bytes, for the key the page chose
    POST /oauth/authorize/approve        the browser's signature: the grant is appended, a code
    POST /oauth/authorize/deny           access_denied; nothing logged

The token endpoint (``routers/oauth.py``) exchanges the code, with the PKCE verifier and a
DPoP proof by the agent's key, for the credential.

A client that cannot sign (a stock MCP client: no ``holder_key``, PKCE only) may ask for
the tools of an MCP server this service's gateway fronts, named as ``resource``: the
service makes the holder key, the person's grant names it, and the client's bearer token
carries it (CONSENT.md §6, DECISIONS.md D53).
"""

from __future__ import annotations

import html
import ipaddress
import json
import secrets
import socket
import time
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from lineage.ledger.authz import AuthzError, AuthzStore, Code
from lineage.ledger.errors import RejectedEntry
from lineage.verifier.bodies import grant_body
from lineage.verifier.entry import entry_from_json
from lineage.verifier.errors import FormatError
from lineage.verifier.jcs import canonical
from lineage.verifier.keys import ENTRY_CONTEXT, PublicKey, SigningKey, b64u_decode, b64u_encode
from lineage.verifier.kinds import Grant
from lineage.verifier.scope import parse_scope

from ..errors import ApiError
from ..gateway import mcp
from ..gateway.config import Upstream
from ..service import Service, service
from .oauth import issuer
from .web import _same_origin, page

__all__ = ["router"]

router = APIRouter(tags=["consent"])

PKCE = "S256"
TASK = r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"


class Registration(BaseModel):
    """RFC 7591 client metadata; a public client (PKCE, no secret)."""

    model_config = ConfigDict(extra="allow")
    redirect_uris: list[str] = Field(min_length=1, max_length=8)
    client_name: str | None = Field(default=None, max_length=128)
    token_endpoint_auth_method: str | None = None
    grant_types: list[str] | None = None
    response_types: list[str] | None = None


def _printable(name: str) -> bool:
    """What a grant's agent label may hold (FORMAT.md §4.4): printable ASCII, so no control,
    bidi override or invisible character can make one name read as another."""
    return 1 <= len(name) <= 128 and all(" " <= c <= "~" for c in name)


def _redirect_ok(uri: str) -> bool:
    """An absolute https URI, or http on the loopback (RFC 8252 §7.3); no fragment."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.fragment or not parts.netloc or len(uri) > 512:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


@router.post("/oauth/register", status_code=201, include_in_schema=False)
def register(body: Registration, svc: Annotated[Service, Depends(service)]) -> JSONResponse:
    """RFC 7591 dynamic registration of a public client (PKCE; no client secret)."""
    if body.client_name is not None and not _printable(body.client_name):
        raise ApiError(
            400,
            "invalid_client_metadata",
            "client_name: 1 to 128 printable ASCII characters (it is the grant's agent label)",
        )
    bad = [u for u in body.redirect_uris if not _redirect_ok(u)]
    if bad:
        raise ApiError(400, "invalid_redirect_uri", f"not an https or loopback URI: {bad[0]!r}")
    if body.token_endpoint_auth_method not in (None, "none"):
        raise ApiError(400, "invalid_client_metadata", "only public clients: auth method none")
    # RFC 7591 §3.2.1: the server may substitute what it registers; a stock client asks
    # for refresh_token too, and is registered for authorization_code (no refresh tokens:
    # on expiry it asks the person again)
    if body.grant_types is not None and "authorization_code" not in body.grant_types:
        raise ApiError(400, "invalid_client_metadata", "grant_types: authorization_code only")
    if body.response_types not in (None, ["code"]):
        raise ApiError(400, "invalid_client_metadata", "response_types: code only")
    metadata = {
        "redirect_uris": body.redirect_uris,
        "client_name": body.client_name or "an unnamed client",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    client_id = AuthzStore(svc.log.store).register(metadata)
    out = {"client_id": client_id, "client_id_issued_at": int(time.time()), **metadata}
    return JSONResponse(out, status_code=201, headers={"Cache-Control": "no-store"})


MAX_STATE = 2048
PLACEHOLDER = "principal@placeholder.invalid"  # replaced by the signing key's principal
MAX_COUNT = 2**31


def _count(text: str, name: str, low: int) -> int:
    """A decimal integer from the query, within [low, 2^31]; FormatError otherwise."""
    if not text.isdigit() or len(text) > 10 or not low <= int(text) <= MAX_COUNT:
        raise FormatError(f"{name}: a whole number from {low} to {MAX_COUNT}")
    return int(text)


CIMD_MAX = 16384  # bytes of a client's metadata document
CIMD_TTL = 300.0  # seconds a fetched document is reused
_CIMD: dict[str, tuple[float, dict[str, Any]]] = {}


def _metadata_document(svc: Service, client_id: str) -> dict[str, Any] | None:
    """An OAuth Client ID Metadata Document: the client id is an https URL, and what it
    serves (JSON, at most 16 KiB, no redirect followed, within 5 s) names itself as
    ``client_id`` and lists the exact ``redirect_uris``. None if ``client_id`` is not
    such a URL, or the document is not usable."""
    try:
        parts = urlsplit(client_id)
    except ValueError:
        return None
    loopback = parts.hostname in ("127.0.0.1", "localhost")
    development = loopback and svc.settings.client_metadata_loopback
    if not (parts.scheme == "https" or (parts.scheme == "http" and development)):
        return None
    if not parts.path or parts.fragment or parts.username or parts.password:
        return None
    cached = _CIMD.get(client_id)  # checked when it was fetched: no second DNS lookup
    if cached is not None and time.monotonic() - cached[0] < CIMD_TTL:
        return cached[1]
    if not development and not _public_host(parts):
        return None  # SSRF: never fetch the service's own network on a stranger's word
    try:
        with httpx.stream(
            "GET",
            client_id,
            timeout=5.0,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        ) as r:
            if r.status_code != 200:
                return None
            data = b""
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > CIMD_MAX:
                    return None
        doc = json.loads(data)
    except (httpx.HTTPError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("client_id") != client_id:
        return None
    uris = doc.get("redirect_uris")
    if (
        not isinstance(uris, list)
        or not uris
        or not all(isinstance(u, str) and _redirect_ok(u) for u in uris)
    ):
        return None
    if doc.get("token_endpoint_auth_method", "none") != "none":
        return None
    name = doc.get("client_name")
    found = {
        "redirect_uris": uris,
        "client_name": name if isinstance(name, str) and _printable(name) else parts.netloc,
    }
    if len(_CIMD) > 1024:
        _CIMD.clear()
    _CIMD[client_id] = (time.monotonic(), found)
    return found


def _public_host(parts) -> bool:
    """An https client id names a public host, on port 443: a DNS name whose every address
    is global (not loopback, private, link-local, multicast or reserved), never an IP
    literal. (A name could resolve otherwise a moment later: this narrows SSRF, the
    fetch's own limits bound what is left.)"""
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        return False
    if port not in (None, 443) or not host or "." not in host:
        return False
    try:
        ipaddress.ip_address(host)
        return False  # an address, not a name
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0]).is_global for a in found)


def _mcp_server(svc: Service, request: Request, resource: str | None) -> Upstream | None:
    """The MCP server the service's ``[gateway]`` table fronts at ``resource`` (RFC 8707):
    ``<base><mount>/<name>`` for the mounted gateway (``base``: its ``public_url``, else this
    service's own), ``<public_url>/<name>`` for one on its own. None for anything else: a
    client that cannot sign gets a token only for a server the operator configured."""
    cfg = svc.gateway
    if cfg is None or not resource:
        return None
    base = cfg.public_url or (issuer(request) if cfg.mount else "")
    if not base:
        return None
    wanted = resource.rstrip("/")
    for name, up in cfg.upstreams.items():
        if up.kind == "mcp" and wanted == f"{base}{cfg.mount}/{name}":
            return up
    return None


def _client(svc: Service, client_id: str | None) -> dict[str, Any] | None:
    """A registered client (RFC 7591), or one that describes itself at its URL (CIMD)."""
    if not client_id:
        return None
    return AuthzStore(svc.log.store).client(client_id) or _metadata_document(svc, client_id)


def _errorpage(message: str) -> HTMLResponse:
    """Errors about the client or its redirect URI are shown, never redirected (RFC 6749
    §4.1.2.1): the redirect is exactly what cannot be trusted."""
    body = f"<h1>This request cannot be answered</h1><p class=error>{html.escape(message)}</p>"
    return page("Lineage: request refused", body, status=400)


def _to_client(redirect: str, params: dict[str, str]) -> str:
    sep = "&" if urlsplit(redirect).query else "?"
    return redirect + sep + urlencode(params)


def _words(detail: dict[str, Any]) -> str:
    """One authorisation detail in words a person reads."""
    e = html.escape
    parts = [
        f"<b>{e(', '.join(detail['actions']))}</b> on <b>{e(detail['type'])}</b>",
    ]
    if detail.get("resources"):
        parts.append("resources " + ", ".join(f"<code>{e(r)}</code>" for r in detail["resources"]))
    if detail.get("locations"):
        parts.append("at " + ", ".join(f"<code>{e(r)}</code>" for r in detail["locations"]))
    for name, c in sorted((detail.get("constraints") or {}).items()):
        ops = {"eq": "is", "in": "is one of", "lte": "at most", "gte": "at least"}
        said = "; ".join(f"{ops[k]} {e(json.dumps(v))}" for k, v in sorted(c.items()))
        parts.append(f"only where <code>{e(name)}</code> {said}")
    return "<li>" + ", ".join(parts) + "</li>"


@router.get("/oauth/authorize", include_in_schema=False)
def authorize(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    response_type: str | None = None,
    client_id: str | None = None,
    redirect_uri: str | None = None,
    state: str | None = None,
    code_challenge: str | None = None,
    code_challenge_method: str | None = None,
    authorization_details: Annotated[str | None, Query(max_length=70_000)] = None,
    scope: Annotated[str | None, Query(max_length=8192)] = None,
    resource: str | None = None,
    holder_key: str | None = None,
    task: str | None = None,
    task_description: str = "",
    expires_in: str = "900",
    max_uses: str | None = None,
    max_depth: str = "0",
) -> Any:
    """The consent page: what is asked, in words, with what exceeds the operator's
    ceilings marked before the person clicks.

    Without ``authorization_details``, a ``resource`` naming an MCP server the gateway
    fronts asks for its tools: ``scope`` lists them (``tool:NAME`` or ``tool:*``, as the
    server's metadata advertises), else every tool; ``task`` defaults to ``mcp/NAME``.
    Without ``holder_key`` (a client that cannot sign), such a resource is required, and
    the service makes the holder key, kept sealed until the client redeems its code."""
    store = AuthzStore(svc.log.store)
    client = _client(svc, client_id)
    if client is None:
        return _errorpage(
            "unknown client_id: register the client (/oauth/register), or make client_id "
            "the https URL of its metadata document"
        )
    if redirect_uri not in client["redirect_uris"]:
        return _errorpage("redirect_uri is not one the client registered (exact match)")
    iss = issuer(request)
    if state is not None and len(state) > MAX_STATE:
        return _errorpage(f"state is longer than {MAX_STATE} characters")

    def refuse(error: str, description: str) -> RedirectResponse:
        params = {"error": error, "error_description": description, "iss": iss}
        if state is not None:
            params["state"] = state
        return RedirectResponse(_to_client(redirect_uri, params), status_code=302)

    if response_type != "code":
        return refuse("unsupported_response_type", "response_type must be code")
    if not code_challenge or code_challenge_method != PKCE:
        return refuse("invalid_request", "PKCE is required: code_challenge with method S256")
    if len(code_challenge) != 43:
        return refuse("invalid_request", "code_challenge: base64url of a SHA-256")
    server = _mcp_server(svc, request, resource)
    if not holder_key and server is None:
        if resource is None:
            return refuse(
                "invalid_request",
                "holder_key: the agent's public key is required, unless resource names an MCP "
                "server this service's gateway fronts (for a client that cannot sign)",
            )
        return refuse(
            "invalid_target",
            "a client without its own key (no holder_key) must name, as resource, an MCP "
            "server this service's gateway fronts",
        )
    seed = secrets.token_bytes(32) if not holder_key else None
    try:
        holder = (
            SigningKey(seed).public
            if seed is not None
            else PublicKey.from_b64(holder_key or "", "holder_key")
        )
        if authorization_details is None and server is not None:
            try:
                details = mcp.tools_scope(server, scope)
            except FormatError as exc:
                return refuse("invalid_scope", str(exc)[:300])
            if not task:
                task = f"mcp/{server.route.name}"
                task_description = task_description or f"call tools at {resource}"[:1024]
        else:
            details = json.loads(authorization_details or "null")
        parse_scope(details)
        if not task:
            raise FormatError("task: the task id is required")
        lifetime = _count(expires_in, "expires_in", 1)
        uses = _count(max_uses, "max_uses", 1) if max_uses is not None else None
        depth = _count(max_depth, "max_depth", 0)
        body = grant_body(
            svc.log.origin,
            PLACEHOLDER,
            holder,
            agent=client["client_name"],
            task={"id": task, "description": task_description},
            scope=details,
            expires_at=int(svc.log.clock()) + lifetime,
            max_uses=uses,
            max_depth=depth,
        )
        Grant.parse(body)  # everything the format refuses is refused now, not at approval
    except (FormatError, ValueError, TypeError, RecursionError) as exc:
        return refuse("invalid_request", str(exc)[:300])
    expires_in, max_uses, max_depth = lifetime, uses, depth
    if resource is not None:
        locations = {loc.rstrip("/") for d in details for loc in d.get("locations", [])}
        where = server.route.location if server is not None else resource
        if where.rstrip("/") not in locations:
            return refuse(
                "invalid_target",
                "resource must be one of the details' locations, or an MCP server the "
                "gateway fronts at one of them",
            )
    settings = svc.settings
    over = []
    if expires_in > settings.ttl_max:
        over.append(f"it would last {expires_in} s; the operator allows {settings.ttl_max} s")
    if max_uses == 1 and expires_in > settings.single_use_ttl_max:
        over.append(f"a single-use credential may last {settings.single_use_ttl_max} s")
    if max_depth > settings.max_depth:
        over.append(f"delegation depth {max_depth}; the operator allows {settings.max_depth}")
    pending_id, csrf = store.pend(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "challenge": code_challenge,
            "iss": iss,
            "body": body,
        },
        seed=seed,
    )
    del seed  # kept only sealed under the CSRF token, which only the page holds
    e = html.escape
    minutes = max(1, expires_in // 60)
    warn = "".join(f"<li>{e(x)}</li>" for x in over)
    uses = f"at most {max_uses} use(s)" if max_uses else "any number of uses"
    depth = (
        "and it may not hand this on"
        if max_depth == 0
        else f"handing it on at most {max_depth} step(s) deep"
    )
    ceilings = (
        '<div id="ceilings" class="error"><p>The operator will refuse this:</p>'
        f"<ul>{warn}</ul></div>"
        if warn
        else ""
    )
    custodial = (
        '<p id="custodial">This client cannot sign its own requests, so Lineage made its '
        f"key (<code>{e(holder.kid)}</code>). The token the client receives carries that key: "
        "whoever holds the token acts as this agent, within what you approve here, until it "
        "expires or is revoked.</p>"
        if not holder_key
        else ""
    )
    sent_to = (
        f'<p id="resource">Its token is for <code>{e(resource)}</code>.</p>' if resource else ""
    )
    shown = f"""
<h1>{e(client["client_name"])} asks for your authority</h1>
<p>An agent (key <code>{e(holder.kid)}</code>) of <b>{e(client["client_name"])}</b> asks to act for
you on task <code>{e(task)}</code>{": " + e(task_description) if task_description else ""}.</p>
{custodial}{sent_to}
<ul id="details">{"".join(_words(d) for d in details)}</ul>
<p>For {minutes} minute(s), {uses}, {depth}.</p>
{ceilings}
<p id="signer">Looking for your key in this browser…</p>
<p><button id="approve" type="button" disabled>Approve and sign</button>
<button id="deny" type="button">Deny</button></p>
<p id="status" role="status" aria-live="polite"></p>
<div id="request" hidden data-request="{e(pending_id)}" data-csrf="{e(csrf)}"></div>
"""
    return page("Lineage: consent", shown, script="consent.js")


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: str = Field(max_length=64)
    csrf: str | None = Field(default=None, max_length=64)


class Chosen(Answer):
    kid: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class Signed(Chosen):
    sig: str = Field(pattern=r"^[A-Za-z0-9_-]{86}$")


def _pending(svc: Service, body: Answer) -> dict[str, Any]:
    try:
        return AuthzStore(svc.log.store).pending(body.request, body.csrf)
    except AuthzError as exc:
        status = 403 if exc.error == "access_denied" else 400
        raise ApiError(status, exc.error, str(exc)) from None


def _grant(svc: Service, pending: dict[str, Any], kid: str) -> dict[str, Any]:
    """The grant the person signs: the request's, with the principal the key is bound to."""
    bound = svc.log.state().key(kid)
    if bound is None or bound.principal is None or bound.retired is not None:
        raise ApiError(403, "access_denied", "this browser's key is not an active principal's key")
    return {**pending["body"], "principal": bound.principal}


@router.post("/oauth/authorize/prepare", include_in_schema=False)
def prepare(body: Chosen, request: Request, svc: Annotated[Service, Depends(service)]):
    """The exact bytes the browser signs (FORMAT.md §3: context and canonical body)."""
    _same_origin(request)
    grant = _grant(svc, _pending(svc, body), body.kid)
    return {
        "principal": grant["principal"],
        "signing_input": b64u_encode(ENTRY_CONTEXT + canonical(grant)),
    }


@router.post("/oauth/authorize/approve", include_in_schema=False)
def approve(body: Signed, request: Request, svc: Annotated[Service, Depends(service)]):
    """Append the grant the browser signed; answer where to send the person, with a code."""
    _same_origin(request)
    pending = _pending(svc, body)
    grant = _grant(svc, pending, body.kid)
    try:
        entry = entry_from_json({**grant, "sigs": [{"kid": body.kid, "sig": body.sig}]})
        b64u_decode(body.sig, length=64, what="sig")
    except FormatError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    store = AuthzStore(svc.log.store)
    try:
        seed = store.answer(body.request, body.csrf)  # a client that cannot sign: its key
    except AuthzError as exc:
        raise ApiError(400, exc.error, str(exc)) from None
    if seed is not None and SigningKey(seed).public.b64 != grant["holder"]:
        raise ApiError(400, "invalid_request", "the key made for this client is not the holder")
    try:
        appended = svc.log.append(entry)
    except RejectedEntry as exc:
        params = {
            "error": "access_denied",
            "error_description": str(exc)[:300],
            "iss": pending["iss"],
        }
        if pending["state"] is not None:
            params["state"] = pending["state"]
        return {"redirect": _to_client(pending["redirect_uri"], params), "refused": str(exc)}
    svc.metrics.appends.labels(kind="grant").inc()
    code = store.issue(
        Code(
            appended.id,
            pending["client_id"],
            pending["redirect_uri"],
            pending["challenge"],
            PublicKey.from_b64(grant["holder"]).kid,
            seed=seed,  # sealed under the code: only the code's bearer can open it
        )
    )
    del seed
    params = {"code": code, "iss": pending["iss"]}
    if pending["state"] is not None:
        params["state"] = pending["state"]
    return {"redirect": _to_client(pending["redirect_uri"], params), "grant": appended.id}


@router.post("/oauth/authorize/deny", include_in_schema=False)
def deny(body: Answer, request: Request, svc: Annotated[Service, Depends(service)]):
    """``access_denied``; nothing is logged."""
    _same_origin(request)
    pending = _pending(svc, body)
    try:
        AuthzStore(svc.log.store).answer(body.request)
    except AuthzError as exc:
        raise ApiError(400, exc.error, str(exc)) from None
    params = {"error": "access_denied", "iss": pending["iss"]}
    if pending["state"] is not None:
        params["state"] = pending["state"]
    return {"redirect": _to_client(pending["redirect_uri"], params)}
