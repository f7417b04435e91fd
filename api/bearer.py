"""The bearer token of a client that cannot sign (docs/CONSENT.md §6, DECISIONS.md D53).

A stock OAuth client (the MCP SDK's) sends ``Authorization: Bearer <token>`` and nothing
else: no DPoP proof, no signed invocation. For such a client the person's grant names a
holder key the service made at consent, and the token the client gets carries that key's
seed with the credential's id:

    lnb_ + base64url(credential id (32 bytes) || Ed25519 seed (32 bytes))     (90 characters)

The gateway's MCP front reads it and signs each invocation with that key itself, so the
ledger decides exactly as for any agent. Nothing else is in the token and nothing about it
is stored: a token whose seed is not the credential's holder key, or whose credential is
unknown, signs invocations the ledger refuses. Whoever holds the token is the agent until
the credential expires or is revoked.
"""

from __future__ import annotations

import re

from lineage.verifier.errors import FormatError
from lineage.verifier.keys import SigningKey, b64u_decode, b64u_encode

__all__ = ["PREFIX", "bearer_token", "read_bearer"]

PREFIX = "lnb_"
_SHAPE = re.compile(r"lnb_[A-Za-z0-9_-]{86}")


def bearer_token(credential: str, seed: bytes) -> str:
    """The token for ``credential`` (64 hex digits) held by the key of ``seed``."""
    raw = bytes.fromhex(credential)
    if len(raw) != 32 or len(seed) != 32:
        raise ValueError("a credential id and a seed of 32 bytes each")
    return PREFIX + b64u_encode(raw + seed)


def read_bearer(token: str) -> tuple[str, SigningKey] | None:
    """(the credential id, the holder key) the token carries; None if it is not one."""
    if not isinstance(token, str) or not _SHAPE.fullmatch(token):
        return None
    try:
        raw = b64u_decode(token[len(PREFIX) :], length=64, what="bearer token")
    except FormatError:
        return None
    return raw[:32].hex(), SigningKey(raw[32:])
