"""The service's state and the dependencies every router shares: who is calling?

Callers authenticate one of two ways:

- ``Authorization: Bearer lin_...``: an operator, auditor or enforcement-point
  token (``lineage token create``), stored hashed, compared in constant time;
- ``Authorization: DPoP <credential handle>`` with a ``DPoP`` proof (RFC 9449)
  whose key is that credential's holder key: the holder itself;
- ``Authorization: DPoP <principal name>`` with a proof by a key bound to that
  principal: the human, who may read the lineages they authorised.

(A ``Bearer lnb_...`` token of a client that cannot sign is for the gateway's MCP front
only, ``lineage.api.bearer``: here it is an unknown token.)

Anyone else is anonymous: they may read checkpoints, proofs and leaf hashes,
and append self-authenticating signed entries, but not read entry bodies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from lineage.ledger.config import Settings
from lineage.ledger.decide import Standing, standing
from lineage.ledger.log import Log
from lineage.ledger.tokens import TokenStore
from lineage.verifier.chain import ChainView, CredentialRecord
from lineage.verifier.fields import HEX_ID
from lineage.verifier.keys import PublicKey
from lineage.verifier.kinds import PRINCIPAL_NAME

from .dpop import DPoPError, NonceSource, verify_dpop
from .errors import ApiError

__all__ = ["Caller", "Metrics", "Service", "caller", "service"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.appends = Counter(
            "lineage_appends", "Entries appended", ["kind"], registry=self.registry
        )
        self.decisions = Counter(
            "lineage_decisions", "Access decisions", ["outcome"], registry=self.registry
        )
        self.invalid_proofs = Counter(
            "lineage_invalid_proofs",
            "Invalid invocations and DPoP proofs (not logged)",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lineage_request_seconds",
            "Request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


@dataclass
class Service:
    log: Log
    settings: Settings
    tokens: TokenStore
    nonces: NonceSource = field(default_factory=NonceSource)
    metrics: Metrics = field(default_factory=Metrics)
    require_dpop_nonce: bool = False
    # the [gateway] table, if the settings file has one (mounted or not): the MCP servers it
    # fronts are the resources a client that cannot sign may ask for (CONSENT.md §6)
    gateway: Any = None

    def credential(self, handle: str) -> CredentialRecord | None:
        return self.log.state().credential(handle)

    def valid_now(self, rec: CredentialRecord) -> bool:
        """Within its window and unrevoked, with its whole chain, at the log's time now."""
        with self.log.store.snapshot():  # every read from one committed state
            state = self.log.state()
            now = max(int(self.log.clock()), state.time)
            return state.validity_fault(rec, state.size, now, "credential") is None

    def standing(self, rec: CredentialRecord) -> Standing:
        """Could ``rec`` be used now? The rules a decision applies first (``ledger.decide``)."""
        with self.log.store.snapshot():  # every read from one committed state
            state = self.log.state()
            return standing(state, rec, state.size, max(int(self.log.clock()), state.time))


@dataclass(frozen=True)
class Caller:
    role: str  # operator | auditor | enforcement | holder | principal | anonymous
    name: str  # the token's name, or the holder key's kid
    key: PublicKey | None = None  # a holder's key (DPoP)
    credential: str | None = None  # the credential a holder presented

    @property
    def reads_everything(self) -> bool:
        return self.role in ("operator", "auditor")


def service(request: Request) -> Service:
    return request.app.state.service


def public_url(request: Request) -> str:
    """The URL a DPoP proof's ``htu`` must name: scheme, host and path, no query.

    With ``public_url`` configured, the base is that, never the client's Host
    header, so a proof made for another server cannot be replayed here.
    """
    base = service(request).settings.public_url
    if base:
        return base.rstrip("/") + request.url.path
    return f"{request.url.scheme}://{request.url.netloc}{request.url.path}"


def check_dpop(
    request: Request, svc: Service, access_token: str | None, *, token_endpoint: bool = False
) -> PublicKey:
    """Verify the request's DPoP proof (RFC 9449 §4.3) and return its key.

    At the token endpoint a bad proof is an RFC 6749 §5.2 error (400, RFC 9449 §5);
    elsewhere it is 401 with a ``WWW-Authenticate: DPoP`` challenge (RFC 9449 §7.1).
    """

    def refuse(error: str, description: str, extra: dict[str, str] | None = None) -> ApiError:
        if token_endpoint:
            return ApiError(400, error, description, extra)
        challenge = f'DPoP error="{error}", algs="EdDSA Ed25519"'
        return ApiError(401, error, description, {"WWW-Authenticate": challenge, **(extra or {})})

    proofs = request.headers.getlist("dpop")
    if not proofs:
        raise refuse("invalid_dpop_proof", "a DPoP proof is required")
    if len(proofs) > 1:  # RFC 9449 §4.3 check 1
        raise refuse("invalid_dpop_proof", "send exactly one DPoP header")
    proof = proofs[0]
    try:
        checked = verify_dpop(
            proof,
            method=request.method,
            url=public_url(request),
            access_token=access_token,
            remember_jti=lambda jti, exp: svc.tokens.remember_jti(jti, exp, int(time.time())),
            window=svc.settings.invocation_window,
            nonces=svc.nonces,
            require_nonce=svc.require_dpop_nonce,
        )
    except DPoPError as exc:
        svc.metrics.invalid_proofs.labels(reason="dpop").inc()
        headers = {"DPoP-Nonce": svc.nonces.current()} if exc.error == "use_dpop_nonce" else {}
        raise refuse(exc.error, str(exc), headers) from None
    return checked.key


def caller(request: Request) -> Caller:
    """Authenticate the request (see the module docstring); anonymous if no credentials."""
    svc = service(request)
    given = request.headers.getlist("authorization")
    if len(given) > 1:  # RFC 6749 §2.3: one way to authenticate per request; no silent pick
        raise ApiError(400, "invalid_request", "send at most one Authorization header")
    auth = given[0] if given else None
    if not auth:
        return Caller("anonymous", "anonymous")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        token = svc.tokens.authenticate(value.strip())
        if token is None:
            raise ApiError(
                401,
                "invalid_token",
                "unknown or revoked token",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Caller(token.role, token.name)
    if scheme.lower() == "dpop":
        handle = value.strip()
        if not HEX_ID.fullmatch(handle):  # a principal, proving a key bound to its name
            if not PRINCIPAL_NAME.fullmatch(handle):
                raise ApiError(
                    401,
                    "invalid_token",
                    "neither a credential handle nor a name",
                    {"WWW-Authenticate": 'DPoP error="invalid_token"'},
                )
            key = check_dpop(request, svc, handle)
            bound = svc.log.state().key(key.kid)
            if bound is None or bound.principal != handle or bound.retired is not None:
                raise ApiError(
                    401,
                    "invalid_token",
                    f"the DPoP key is not bound to {handle}",
                    {"WWW-Authenticate": 'DPoP error="invalid_token"'},
                )
            return Caller("principal", handle, key)
        rec = svc.credential(handle)
        key = check_dpop(request, svc, handle)
        if rec is None or rec.holder.kid != key.kid or not svc.valid_now(rec):
            raise ApiError(
                401,
                "invalid_token",
                "the DPoP key does not hold that credential",
                {"WWW-Authenticate": 'DPoP error="invalid_token"'},
            )
        return Caller("holder", key.kid, key, handle)
    shown = scheme if scheme.isascii() and scheme.isalnum() and len(scheme) <= 20 else "that"
    raise ApiError(  # RFC 6749 §5.2: a client that cannot authenticate is invalid_client
        401,
        "invalid_client",
        f"the {shown} authorization scheme is not supported here: use Bearer or DPoP",
    )  # render() adds the Bearer and DPoP challenge to every 401


def require(who: Caller, *roles: str) -> None:
    if who.role not in roles:
        status = 401 if who.role == "anonymous" else 403
        raise ApiError(
            status,
            "unauthorized_client" if status == 403 else "invalid_client",
            f"this needs one of: {', '.join(roles)}",
        )


def may_read(
    who: Caller,
    svc: Service,
    rec: CredentialRecord | None,
    *,
    used: bool = False,
    state: ChainView | None = None,
) -> bool:
    """Entry bodies: operators and auditors; a principal for the lineages it authorised;
    a holder for the credentials of its own chain and what was derived from its
    credential, but, for ``used`` (accesses and revocations made with a credential),
    only within its own subtree: not what its parent or siblings did."""
    if who.reads_everything:
        return True
    if who.role == "principal":
        return rec is not None and rec.principal == who.name
    if who.role != "holder" or rec is None:
        return False
    mine = (state or svc.log.state()).credential(who.credential or "")
    if mine is None:
        return False
    below_or_me = mine.id in {r.id for r in rec.chain()}
    if used:  # what was done with a credential: only within the holder's own subtree
        return below_or_me
    return below_or_me or rec.id in {r.id for r in mine.chain()}
