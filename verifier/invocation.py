"""The invocation: a holder's proof of possession over one request (FORMAT.md §5).

    {"credential": <entry id>, "request": {type, action, location, resource, attributes},
     "nonce": <base64url, 16..64 bytes>, "iat": <Unix seconds>, "sigs": [<one signature>]}

signed with INVOCATION_CONTEXT by the credential's holder key. Freshness (a
window around ``iat``) and replay (the nonce) are the decision point's to
judge; what the log keeps, and the verifier checks, is that the holder signed it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EntryFormatError, SignatureError
from .fields import HEX_ID, Fields
from .jcs import canonical, parse_canonical
from .keys import INVOCATION_CONTEXT, PublicKey, SigningKey, b64u_decode, b64u_encode
from .request import Request, parse_request, request_to_json
from .signed import Sig, parse_sigs, sign_object, signed_message

__all__ = [
    "MAX_INVOCATION_SIZE",
    "SignedInvocation",
    "effective_request",
    "parse_invocation_bytes",
    "parse_signed_invocation",
    "sign_invocation",
]

MAX_INVOCATION_SIZE = 16384
NONCE = re.compile(r"[A-Za-z0-9_-]{22,86}")  # base64url of 16..64 bytes


@dataclass(frozen=True)
class SignedInvocation:
    """A parsed invocation. Parsing does not verify: call ``verify`` with the holder key."""

    credential: str
    request: Request
    nonce: str
    iat: int
    sig: Sig
    obj: Mapping[str, Any]  # the JSON object as signed, ``sigs`` included

    def to_json(self) -> Mapping[str, Any]:
        return self.obj

    def to_bytes(self) -> bytes:
        return canonical(self.obj)

    def verify(self, holder: PublicKey) -> None:
        """Raise SignatureError unless ``holder`` made this invocation's signature."""
        if self.sig.kid != holder.kid:
            raise SignatureError(
                f"invocation signed by {self.sig.kid}, not the holder {holder.kid}"
            )
        if not holder.verify(b"", self.message(), self.sig.sig):
            raise SignatureError("invocation signature does not verify under the holder key")

    def message(self) -> bytes:
        """The bytes the holder signed: context || JCS(the invocation without ``sigs``)."""
        return signed_message(INVOCATION_CONTEXT, self.obj)


def _nonce(value: Any) -> str:
    if not isinstance(value, str) or not NONCE.fullmatch(value):
        raise EntryFormatError("must be base64url of 16 to 64 bytes")
    b64u_decode(value, what="nonce")  # canonical base64url, or KeyFormatError
    return value


def parse_signed_invocation(value: Any, path: str = "") -> SignedInvocation:
    f = Fields(value, path)
    credential = f.str("credential", pattern=HEX_ID)
    request = parse_request(f.raw("request"))  # its errors already name request.<field>
    nonce = f.parsed("nonce", _nonce)
    iat = f.int("iat", 1)
    sigs = parse_sigs(f.raw("sigs"), f.at("sigs"), max_sigs=1)
    f.done()
    size = len(canonical(f.obj))  # also the subset check (no floats, ...) for parsed objects
    if size > MAX_INVOCATION_SIZE:
        raise EntryFormatError(f"is {size} bytes, more than {MAX_INVOCATION_SIZE}", path or None)
    return SignedInvocation(credential, request, nonce, iat, sigs[0], f.obj)


def effective_request(inv: SignedInvocation, context: Mapping[str, Any]) -> Request:
    """The request an access is judged on: the holder's, with the attributes the
    enforcement point asserts in ``context["attributes"]`` taking precedence.

    Attributes that constraints test (a sender, a received time) are facts the
    enforcement point sees; the agent's own claims stand only where it asserts none.
    """
    if "attributes" not in context:
        return inv.request
    asserted = context["attributes"]
    if not isinstance(asserted, Mapping) or not asserted:
        raise EntryFormatError("must be a non-empty object (or be omitted)", "attributes")
    merged = {**dict(inv.request.attributes), **asserted}
    as_json = {k: v for k, v in request_to_json(inv.request).items() if k != "attributes"}
    return parse_request({**as_json, "attributes": merged} if merged else as_json)


def parse_invocation_bytes(data: bytes) -> SignedInvocation:
    return parse_signed_invocation(parse_canonical(data, max_size=MAX_INVOCATION_SIZE))


def sign_invocation(
    holder: SigningKey,
    credential: str,
    request: Request | Mapping[str, Any],
    iat: int,
    nonce: str | None = None,
) -> SignedInvocation:
    """Build and sign an invocation for ``request`` under ``credential`` at time ``iat``."""
    if not isinstance(request, Request):
        request = parse_request(request)
    obj = {
        "credential": credential,
        "request": request_to_json(request),
        "nonce": nonce if nonce is not None else b64u_encode(os.urandom(16)),
        "iat": iat,
    }
    signed = sign_object(INVOCATION_CONTEXT, obj, [holder])
    if len(canonical(signed)) > MAX_INVOCATION_SIZE:
        raise EntryFormatError(f"larger than {MAX_INVOCATION_SIZE} bytes")
    return parse_signed_invocation(signed)
