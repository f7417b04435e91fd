"""RFC 9449 DPoP proofs: verified with joserfc, bound to Lineage holder keys.

A proof is a JWS (``typ: dpop+jwt``) signed by the key in its own ``jwk``
header, an Ed25519 OKP key (``alg`` ``EdDSA`` or the fully specified
``Ed25519``, RFC 9864). Checks, per RFC 9449 §4.3:

1. one well-formed compact JWS; ``typ`` is ``dpop+jwt``; ``alg`` is allowed;
   ``jwk`` is a public Ed25519 key (no private part) of prime order;
2. the signature verifies under that key;
3. ``htm`` and ``htu`` match the request (``htu`` without query and fragment,
   both sides normalised per RFC 3986 §6.2.2 and §6.2.3 first: ``normalize_htu``);
4. ``iat`` is within the allowed window of the server's clock;
5. ``jti`` was not seen before (the replay cache is in the shared database);
6. with an access token, ``ath`` is base64url(SHA-256(token));
7. a server ``nonce``, when the server requires one or the proof carries one,
   is current (stateless HMAC nonces that rotate every few minutes).

The key's RFC 7638 thumbprint (``jkt``) is the Lineage ``kid`` of the key, so
a credential's ``cnf.jkt`` is its holder key's kid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from lineage.client.dpop import ALGORITHMS, REGISTRY, ath_of
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import PublicKey, b64u_encode

__all__ = [
    "ALGORITHMS",
    "DPoPError",
    "DPoPProof",
    "NonceSource",
    "normalize_htu",
    "verify_dpop",
]

MAX_PROOF = 4096
MAX_HEADER = 1024  # base64url characters: an Ed25519 jwk header is about 200


class DPoPError(Exception):
    """An unacceptable DPoP proof; ``error`` is the RFC 9449 error code."""

    def __init__(self, message: str, error: str = "invalid_dpop_proof"):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class DPoPProof:
    key: PublicKey
    jti: str
    iat: int

    @property
    def jkt(self) -> str:
        return self.key.kid


class NonceSource:
    """Stateless server nonces: HMAC(secret, time window), valid for two windows."""

    def __init__(self, secret: bytes | None = None, period: int = 300):
        self.secret = secret or secrets.token_bytes(32)
        self.period = period

    def _nonce(self, window: int) -> str:
        mac = hmac.new(self.secret, str(window).encode(), hashlib.sha256).digest()
        return b64u_encode(mac[:18])

    def current(self, now: float | None = None) -> str:
        return self._nonce(int((now or time.time()) // self.period))

    def valid(self, nonce: str, now: float | None = None) -> bool:
        window = int((now or time.time()) // self.period)
        return any(hmac.compare_digest(nonce, self._nonce(w)) for w in (window, window - 1))


def verify_dpop(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    remember_jti: Callable[[str, int], bool],
    now: float | None = None,
    window: int = 60,
    nonces: NonceSource | None = None,
    require_nonce: bool = False,
) -> DPoPProof:
    """Verify one DPoP header value for this request; raises DPoPError."""
    now = time.time() if now is None else now
    if not isinstance(proof, str) or not proof or len(proof) > MAX_PROOF or proof.count(".") != 2:
        raise DPoPError("the DPoP header must hold one compact JWS")
    head = proof.split(".")[0]
    if len(head) > MAX_HEADER:
        raise DPoPError("the DPoP proof header is too long")
    try:
        header = json.loads(_b64(head))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DPoPError("the DPoP proof header is not JSON") from None
    if not isinstance(header, dict) or header.get("typ") != "dpop+jwt":
        raise DPoPError("the DPoP proof's typ must be dpop+jwt")
    if header.get("alg") not in ALGORITHMS:
        raise DPoPError(f"the DPoP proof's alg must be one of {', '.join(ALGORITHMS)}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise DPoPError("the DPoP proof's jwk must be an Ed25519 OKP key")
    if "d" in jwk:
        raise DPoPError("the DPoP proof's jwk must not hold a private key")
    try:
        key = PublicKey.from_b64(jwk.get("x", ""))
        okp = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc warns that "EdDSA" is deprecated
            signed = jws.deserialize_compact(proof, okp, registry=REGISTRY)
    except (FormatError, JoseError, ValueError, KeyError):
        raise DPoPError("the DPoP proof's signature does not verify") from None
    try:
        claims = json.loads(signed.payload)
    except (ValueError, RecursionError):
        raise DPoPError("the DPoP proof's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise DPoPError("the DPoP proof's payload is not an object")
    if claims.get("htm") != method:
        raise DPoPError(f"htm {claims.get('htm')!r} is not {method}")
    htu = normalize_htu(claims.get("htu"))
    if htu is None or htu != normalize_htu(url):
        raise DPoPError(f"htu {str(claims.get('htu'))[:200]!r} is not this endpoint")
    iat, jti = claims.get("iat"), claims.get("jti")
    if type(iat) is not int or not now - window <= iat <= now + window:
        raise DPoPError("the DPoP proof's iat is missing or not recent")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise DPoPError("the DPoP proof needs a jti of 8 to 128 characters")
    if access_token is not None and claims.get("ath") != _ath(access_token):
        raise DPoPError("the DPoP proof's ath does not match the access token")
    wants_nonce = nonces is not None and ("nonce" in claims or require_nonce)
    nonce = claims.get("nonce")
    if wants_nonce and not (isinstance(nonce, str) and nonces.valid(nonce, now)):
        raise DPoPError("a current DPoP-Nonce is required", "use_dpop_nonce")
    if not remember_jti(jti, int(now) + 2 * window):
        raise DPoPError("the DPoP proof was used before (jti replayed)")
    return DPoPProof(key, jti, iat)


DEFAULT_PORTS = {"http": 80, "https": 443}
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_htu(url: str) -> str | None:
    """``url`` without query and fragment, normalised as RFC 9449 §4.3 asks (RFC 3986
    §6.2.2 syntax-based, §6.2.3 scheme-based): scheme and host lower-case, the default
    port dropped, percent-encodings upper-case and unreserved ones decoded, dot segments
    removed, an empty path "/". None if it is not an absolute http(s) URL."""
    if not isinstance(url, str) or len(url) > 2048 or not url.isascii():
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"

    def octet(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in UNRESERVED else "%" + m.group(1).upper()

    return f"{scheme}://{netloc}{_remove_dots(PERCENT.sub(octet, parts.path)) or '/'}"


def _remove_dots(path: str) -> str:
    """RFC 3986 §5.2.4, for an absolute path."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/".join(out)


def _ath(token: str) -> str:
    try:
        return ath_of(token)
    except UnicodeEncodeError:
        raise DPoPError("the access token is not ASCII", "invalid_token") from None


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
