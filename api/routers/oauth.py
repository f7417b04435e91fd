"""OAuth-shaped endpoints: RFC 8414 metadata, RFC 8693 token exchange, RFC 7662
introspection, RFC 7009 revocation.

Token exchange carries a complete entry, signed client-side by the party whose
authority it exercises, as the subject token; the server validates it and
appends it unchanged. The request's DPoP proof must be made with the new
credential's holder key, so the handle returned is bound (``cnf.jkt``) to a
key the caller holds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse

from lineage.ledger.log import Appended
from lineage.verifier.chain import CredentialRecord
from lineage.verifier.entry import Entry, parse_entry
from lineage.verifier.errors import FormatError, SignatureError
from lineage.verifier.fields import HEX_ID
from lineage.verifier.jcs import canonical, parse
from lineage.verifier.keys import b64u_decode, b64u_encode
from lineage.verifier.kinds import Delegation, Grant, Revocation

from ..errors import ApiError
from ..models import Introspection, TokenResponse
from ..service import Caller, Service, caller, check_dpop, require, service

__all__ = ["router"]

router = APIRouter(tags=["oauth"])

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AUTHORIZATION_CODE = "authorization_code"
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
SIGNED_ENTRY = "urn:lineage:params:oauth:token-type:signed-entry"
CREDENTIAL = "urn:lineage:params:oauth:token-type:credential"
AUTH_TYPES = ["email", "files", "payments", "api"]  # advertised; any type is accepted


def issuer(request: Request) -> str:
    """The issuer identifier (RFC 8414 §2): ``public_url`` when configured, else the
    scheme and host the metadata was fetched from. Introspection's ``iss`` is the same."""
    base = service(request).settings.public_url
    return base.rstrip("/") if base else f"{request.url.scheme}://{request.url.netloc}"


@router.get("/.well-known/oauth-authorization-server")
def metadata(request: Request, svc: Annotated[Service, Depends(service)]) -> dict[str, Any]:
    """RFC 8414 authorization server metadata (every value from the IANA OAuth registries)."""
    base = issuer(request)
    return {
        "issuer": base,
        "token_endpoint": f"{base}/oauth/token",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "authorization_endpoint": f"{base}/oauth/authorize",  # consent in the browser
        "registration_endpoint": f"{base}/oauth/register",  # RFC 7591
        "response_types_supported": ["code"],
        "grant_types_supported": [TOKEN_EXCHANGE, AUTHORIZATION_CODE],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,  # RFC 9207
        "client_id_metadata_document_supported": True,  # OAuth Client ID Metadata Documents
        # public clients: DPoP proves the holder key, or (a client that cannot sign) the
        # PKCE verifier alone gets the Bearer token that carries it (CONSENT.md §6)
        "token_endpoint_auth_methods_supported": ["none"],
        # §2: introspection may name OAuth Access Token Types; revocation has no registered
        # value for "a Bearer token or DPoP", so it is left out (docs/API.md says which)
        "introspection_endpoint_auth_methods_supported": ["Bearer", "DPoP"],
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519"],
        "authorization_details_types_supported": AUTH_TYPES,
        "lineage_log_origin": svc.log.origin,
        "lineage_log_key": svc.log.log_key.vkey,
    }


def _decode_entry(value: str, what: str = "subject_token") -> Entry:
    try:
        raw = b64u_decode(value, what=what)  # strict: unpadded, canonical, alphabet only
    except FormatError:
        raise ApiError(400, "invalid_request", f"{what} is not base64url") from None
    return parse_entry(raw)


@router.post("/oauth/token", responses={200: {"model": TokenResponse}})
def token(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    grant_type: Annotated[str | None, Form(max_length=256)] = None,
    subject_token: Annotated[str | None, Form(max_length=100_000)] = None,
    subject_token_type: Annotated[str | None, Form(max_length=256)] = None,
    authorization_details: Annotated[str | None, Form(max_length=70_000)] = None,
    requested_token_type: Annotated[str | None, Form(max_length=256)] = None,
    code: Annotated[str | None, Form(max_length=256)] = None,
    redirect_uri: Annotated[str | None, Form(max_length=512)] = None,
    client_id: Annotated[str | None, Form(max_length=256)] = None,
    code_verifier: Annotated[str | None, Form(max_length=128)] = None,
    scope: Annotated[str | None, Form(max_length=4096)] = None,
    resource: Annotated[list[str] | None, Form()] = None,
    audience: Annotated[list[str] | None, Form()] = None,
) -> JSONResponse:
    """RFC 8693 token exchange: append a client-signed grant or delegation.

    The grant type is checked first (RFC 6749 §5.2 ``unsupported_grant_type``). What the
    credential may do is its signed ``authorization_details``; a ``scope`` (RFC 8693 §2.1)
    cannot change it, so one is refused with ``invalid_scope`` rather than ignored, and a
    ``resource`` or ``audience`` with ``invalid_target`` (§2.2.2).
    """
    if grant_type is None:
        raise ApiError(400, "invalid_request", "grant_type is required")
    if grant_type == AUTHORIZATION_CODE:
        return _code_exchange(request, svc, code, redirect_uri, client_id, code_verifier)
    if grant_type != TOKEN_EXCHANGE:
        raise ApiError(400, "unsupported_grant_type", f"grant_type must be {TOKEN_EXCHANGE}")
    if scope is not None:
        raise ApiError(
            400,
            "invalid_scope",
            "a Lineage credential's scope is the signed entry's authorization_details; "
            "send no scope parameter",
        )
    if resource or audience:
        raise ApiError(
            400,
            "invalid_target",
            "a credential is usable wherever its signed scope's locations say; "
            "send no resource or audience",
        )
    if subject_token is None:
        raise ApiError(400, "invalid_request", "subject_token is required")
    if subject_token_type != SIGNED_ENTRY:
        raise ApiError(400, "invalid_request", f"subject_token_type must be {SIGNED_ENTRY}")
    if requested_token_type not in (None, CREDENTIAL):
        raise ApiError(400, "invalid_request", f"requested_token_type must be {CREDENTIAL}")
    entry = _decode_entry(subject_token)
    if not isinstance(entry.body, Grant | Delegation):
        raise ApiError(400, "invalid_grant", "the subject token must be a grant or delegation")
    scope = entry.obj["scope"]
    if authorization_details is not None:
        try:
            asked = parse(authorization_details.encode())
        except FormatError as exc:
            raise ApiError(400, "invalid_authorization_details", str(exc)) from None
        if canonical(asked) != canonical(scope):
            raise ApiError(
                400,
                "invalid_authorization_details",
                "authorization_details must equal the signed entry's scope",
            )
    key = check_dpop(request, svc, None, token_endpoint=True)
    if key.kid != entry.body.holder.kid:
        raise ApiError(
            400,
            "invalid_dpop_proof",
            "the DPoP proof must be made with the credential's holder key",
        )
    appended = svc.log.append(entry)
    if not appended.existing:
        svc.metrics.appends.labels(kind=entry.kind).inc()
    expires = entry.body.credential.limits.expires_at - int(svc.log.clock())
    return JSONResponse(
        {
            "access_token": appended.id,
            "issued_token_type": CREDENTIAL,
            "token_type": "DPoP",
            "expires_in": max(expires, 0),
            "authorization_details": scope,
            "lineage_index": appended.index,
            "lineage_receipt": _receipt(appended),
        },
        headers={"Cache-Control": "no-store"},
    )


def _code_exchange(
    request: Request,
    svc: Service,
    code: str | None,
    redirect_uri: str | None,
    client_id: str | None,
    verifier: str | None,
) -> JSONResponse:
    """RFC 6749 §4.1.3 with PKCE (RFC 7636): the code, once, for the client and redirect
    URI it was issued to, with the verifier of its challenge and a DPoP proof by the key
    the person's grant names as holder.

    A code for a client that cannot sign (its grant names a key the service made) is
    exchanged without DPoP, and only so, for a Bearer token that carries that key
    (``lineage.api.bearer``, CONSENT.md §6); a code for a client's own key needs the DPoP
    proof by it, as before, and one without a proof is refused without being spent."""
    from lineage.ledger.authz import AuthzError, AuthzStore

    from ..bearer import bearer_token

    if not code or not redirect_uri or not client_id or not verifier:
        raise ApiError(400, "invalid_request", "code, redirect_uri, client_id, code_verifier")
    if not VERIFIER.fullmatch(verifier):  # RFC 7636 §4.1
        raise ApiError(400, "invalid_request", "code_verifier: 43 to 128 of [A-Za-z0-9-._~]")
    proved = bool(request.headers.getlist("dpop"))
    key = check_dpop(request, svc, None, token_endpoint=True) if proved else None
    try:
        bound = AuthzStore(svc.log.store).redeem(code, bearer=key is None)
    except AuthzError as exc:
        error = "invalid_dpop_proof" if exc.error == "invalid_dpop_proof" else "invalid_grant"
        raise ApiError(400, error, str(exc)) from None
    challenge = b64u_encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
    if bound.client_id != client_id:
        raise ApiError(400, "invalid_grant", "the code was issued to another client")
    if bound.redirect != redirect_uri:
        raise ApiError(400, "invalid_grant", "redirect_uri is not the one the code was sent to")
    if not hmac.compare_digest(challenge, bound.challenge):
        raise ApiError(400, "invalid_grant", "code_verifier does not match the code_challenge")
    if bound.custodial and key is not None:
        raise ApiError(
            400,
            "invalid_dpop_proof",
            "this code is for a client without its own key: exchange it without DPoP",
        )
    if key is not None and key.kid != bound.holder:
        raise ApiError(
            400, "invalid_dpop_proof", "the DPoP proof must be by the grant's holder key"
        )
    rec = svc.credential(bound.grant_id)
    if rec is None:
        raise ApiError(400, "invalid_grant", "the grant is not in the log")
    expires = rec.credential.limits.expires_at - int(svc.log.clock())
    if bound.seed is not None:
        # RFC 6750: a Bearer token, which carries the holder key the grant names; it is
        # good at the gateway's MCP front only, until the credential expires
        return JSONResponse(
            {
                "access_token": bearer_token(bound.grant_id, bound.seed),
                "token_type": "Bearer",
                "expires_in": max(expires, 0),
                "authorization_details": rec.entry.obj["scope"],
                "lineage_credential": bound.grant_id,
                "lineage_index": rec.index,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )
    return JSONResponse(
        {
            "access_token": bound.grant_id,
            "issued_token_type": CREDENTIAL,
            "token_type": "DPoP",
            "expires_in": max(expires, 0),
            "authorization_details": rec.entry.obj["scope"],
            "lineage_index": rec.index,
        },
        headers={"Cache-Control": "no-store"},
    )


def _receipt(appended: Appended) -> dict[str, Any] | None:
    return appended.receipt.to_json() if appended.receipt is not None else None


def _act(chain: list[CredentialRecord]) -> dict[str, Any] | None:
    """RFC 8693 §4.1 nested ``act``: the current actor outermost, prior actors inside."""
    act: dict[str, Any] | None = None
    for rec in chain:
        act = {"sub": rec.holder.kid, **({"act": act} if act else {})}
    return act


def _answer(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _may_introspect(who: Caller, rec: CredentialRecord) -> bool:
    """Tokens (operator, auditor, enforcement) any credential; a holder the credential it
    presented; a principal the credentials of chains it authorised."""
    if who.role == "holder":
        return who.credential == rec.id
    if who.role == "principal":
        return rec.principal == who.name
    return True


@router.post("/oauth/introspect", responses={200: {"model": Introspection}})
def introspect(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
    token: Annotated[str, Form()],
    token_type_hint: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    """RFC 7662: could this credential be used now, and what does it carry?

    Active means what a decision checks before it looks at the request (``standing`` in
    ``ledger/decide.py``): every credential up the chain in its window and unrevoked, and
    use and rate budget left. An unknown token, of any length, or one the caller may not
    introspect is exactly ``{"active": false}`` (§2.2); a known one that is not active says
    which rule in ``lineage.status`` (docs/API.md).
    """
    require(who, "operator", "auditor", "enforcement", "holder", "principal")
    rec = svc.credential(token) if HEX_ID.fullmatch(token) else None
    if rec is None or not _may_introspect(who, rec):
        return _answer({"active": False})
    now = svc.standing(rec)
    if not now.active:
        status = {"status": now.status, "reason": now.reason, "credential": now.credential}
        return _answer({"active": False, "lineage": status})
    limits = rec.credential.limits
    chain = rec.chain()
    body: dict[str, Any] = {
        "active": True,
        "iss": issuer(request),
        "sub": rec.principal,
        "token_type": "DPoP",
        "exp": limits.expires_at,
        "iat": rec.time,
        "cnf": {"jkt": rec.holder.kid},
        "act": _act(chain),
        "authorization_details": rec.entry.obj["scope"],
        "lineage": {
            "status": now.status,
            "log": svc.log.origin,
            "task": limits.task.id,
            "depth": len(chain),
            "index": rec.index,
            "chain": [r.id for r in chain],
        },
    }
    if limits.not_before is not None:
        body["nbf"] = limits.not_before
    return _answer(body)


@router.post("/oauth/revoke")
def revoke(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
    token: Annotated[str, Form()],
    token_type_hint: Annotated[str | None, Form()] = None,
    revocation: Annotated[str | None, Form(max_length=8192)] = None,
) -> JSONResponse:
    """RFC 7009: revoke a credential (and its subtree).

    An operator or enforcement point's call is signed with the operator key; a
    holder (DPoP) sends the revocation entry signed with its own key in
    ``revocation`` (base64url), since only the key that authenticated the call
    may sign it.
    """
    require(who, "operator", "enforcement", "holder")
    if not HEX_ID.fullmatch(token) or svc.credential(token) is None:
        return _answer({})  # RFC 7009 §2.2: an invalid token, of any length, is a 200
    entry: Entry | dict[str, Any]
    if who.role == "holder":
        if revocation is None:
            raise ApiError(400, "invalid_request", "a holder sends its signed revocation entry")
        entry = _decode_entry(revocation, "revocation")
        body = entry.body
        if not isinstance(body, Revocation) or body.credential != token:
            raise ApiError(400, "invalid_request", "the entry must revoke the token given")
        if entry.sigs[0].kid != who.key.kid:
            raise ApiError(
                400,
                "invalid_request",
                "the revocation must be signed by the key that authenticated",
            )
    else:
        reason = f"revoked through /oauth/revoke by {who.role} {who.name}"
        entry = {
            "kind": "revocation",
            "v": 1,
            "log": svc.log.origin,
            "target": {"credential": token},
            "reason": reason[:512],
        }
    try:
        # the operator's revocation is signed by the writer, with the key active then
        if isinstance(entry, dict):
            appended = svc.log.append_as("operator", entry)
        else:
            appended = svc.log.append(entry)
    except SignatureError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    if not appended.existing:
        svc.metrics.appends.labels(kind="revocation").inc()
    # RFC 7009: the client needs only the status; the receipt is for whoever keeps it.
    return JSONResponse(
        {"lineage_receipt": _receipt(appended)}, headers={"Cache-Control": "no-store"}
    )
