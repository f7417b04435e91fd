"""Signature lists: how entries and invocations carry their Ed25519 signatures (FORMAT.md §3).

A signed object is a JSON object with a ``sigs`` member:

    "sigs": [{"kid": <RFC 7638 thumbprint>, "sig": <base64url, 64 bytes>}, ...]

Exactly one signature: every entry and invocation is signed by the one party
whose authority it exercises, and a second signature would let anyone mint a
copy of someone else's entry with a new id. (The list form leaves room for a
future version to require co-signatures.) The signature covers
``context || JCS(object less sigs)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import EntryFormatError, FormatError
from .fields import Fields, expect_str
from .jcs import canonical
from .keys import SigningKey, b64u_decode, b64u_encode

__all__ = ["MAX_SIGS", "Sig", "parse_sigs", "sign_object", "signed_message", "sigs_to_json"]

MAX_SIGS = 1
KID = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Sig:
    kid: str
    sig: bytes

    def to_json(self) -> dict[str, str]:
        return {"kid": self.kid, "sig": b64u_encode(self.sig)}


def parse_sigs(value: Any, path: str = "sigs", max_sigs: int = MAX_SIGS) -> tuple[Sig, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= max_sigs:
        raise EntryFormatError(f"must be a list of 1 to {max_sigs} signatures", path)
    sigs = []
    for i, item in enumerate(value):
        f = Fields(item, f"{path}[{i}]")
        kid = f.str("kid", pattern=KID)
        raw = expect_str(f.raw("sig"), f.at("sig"), max_len=86)
        try:
            sig = b64u_decode(raw, length=64, what="signature")
        except FormatError as exc:
            raise EntryFormatError(str(exc), f.at("sig")) from None
        f.done()
        sigs.append(Sig(kid, sig))
    kids = [s.kid for s in sigs]
    if kids != sorted(set(kids)):
        raise EntryFormatError("must be sorted by kid, each kid once", path)
    return tuple(sigs)


def sigs_to_json(sigs: Sequence[Sig]) -> list[dict[str, str]]:
    return [s.to_json() for s in sigs]


def signed_message(context: bytes, obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: context || JCS(obj without "sigs")."""
    return context + canonical({k: v for k, v in obj.items() if k != "sigs"})


def sign_object(
    context: bytes, obj: Mapping[str, Any], signers: Sequence[SigningKey]
) -> dict[str, Any]:
    """Return a copy of ``obj`` (which must not hold ``sigs``) signed by every signer."""
    if "sigs" in obj:
        raise EntryFormatError("is already present", "sigs")
    if not signers:
        raise EntryFormatError("needs at least one signer", "sigs")
    body = dict(obj)
    message = signed_message(context, body)
    sigs = sorted((Sig(k.kid, k.sign(b"", message)) for k in signers), key=lambda s: s.kid)
    return {**body, "sigs": sigs_to_json(sigs)}
