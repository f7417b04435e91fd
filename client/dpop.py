"""RFC 9449 DPoP proofs, made with joserfc: a holder proves it has its key.

A proof is a compact JWS with header ``{"typ": "dpop+jwt", "alg": "EdDSA",
"jwk": <the holder's public Ed25519 key>}`` and claims ``htm`` (method),
``htu`` (URL without query or fragment), ``iat``, a fresh ``jti`` and, with
an access token, ``ath`` = base64url(SHA-256(token)). The service checks it
in ``lineage.api.dpop``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import warnings

from joserfc import jws
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from lineage.verifier.keys import SigningKey, b64u_encode

__all__ = ["ALGORITHMS", "REGISTRY", "ath_of", "make_proof"]

ALGORITHMS = ("EdDSA", "Ed25519")  # "Ed25519" is RFC 9864's fully specified name
REGISTRY = JWSRegistry(algorithms=list(ALGORITHMS))


def ath_of(token: str) -> str:
    """RFC 9449 §4.2: base64url(SHA-256(ASCII(access token))); ValueError if not ASCII."""
    return b64u_encode(hashlib.sha256(token.encode("ascii")).digest())


def make_proof(
    key_seed: bytes,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    nonce: str | None = None,
    alg: str = "EdDSA",
    iat: int | None = None,
) -> str:
    """A DPoP proof for one request, signed with the Ed25519 key whose seed is ``key_seed``."""
    okp = OKPKey.import_key(
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "d": b64u_encode(key_seed),
            "x": SigningKey(key_seed).public.b64,
        }
    )
    claims = {
        "htm": method,
        "htu": url,
        "iat": int(time.time()) if iat is None else iat,
        "jti": secrets.token_urlsafe(16),
    }
    if access_token is not None:
        claims["ath"] = ath_of(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": okp.as_dict(private=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that "EdDSA" is deprecated
        return jws.serialize_compact(header, json.dumps(claims).encode(), okp, registry=REGISTRY)
