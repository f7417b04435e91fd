"""A person's approval of one exact call (FORMAT.md §5.1): step-up, signed in a browser.

    {"log": <origin>, "invocation": <hex SHA-256 of JCS(the signed invocation)>,
     "context": <hex SHA-256 of JCS(the access's context)>,
     "decision": "approve" | "refuse", "iat": <Unix seconds>,
     "expires_at": <Unix seconds>, "sigs": [<one signature>]}

signed with APPROVAL_CONTEXT by a key bound to the principal at the root of the
invocation's chain. The digest covers the whole invocation, its signature and nonce
included, so an approval answers that one call and no other: another invocation,
even of the same request, has another nonce and so another digest. The context digest
binds what the enforcement point asserted about the call (its attributes, which the
person saw), so the call cannot be decided on other facts than the ones approved. An
``access``
entry carries the approval that let it through (``approve`` only); a refusal is
checked by the service that takes it and logged nowhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EntryFormatError, SignatureError
from .fields import HEX_ID, Fields
from .invocation import SignedInvocation
from .jcs import canonical
from .keys import APPROVAL_CONTEXT, PublicKey, SigningKey
from .signed import Sig, parse_sigs, sign_object, signed_message

__all__ = [
    "DECISIONS",
    "MAX_APPROVAL_TTL",
    "Approval",
    "context_digest",
    "fresh",
    "invocation_digest",
    "parse_approval",
    "sign_approval",
]

DECISIONS = ("approve", "refuse")
MAX_APPROVAL_TTL = 3600  # seconds an approval may stay usable after it is signed


def invocation_digest(invocation: SignedInvocation | Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of the invocation's canonical JSON, ``sigs`` included."""
    obj = invocation.obj if isinstance(invocation, SignedInvocation) else invocation
    return hashlib.sha256(canonical(dict(obj))).hexdigest()


def context_digest(context: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of an access context's canonical JSON."""
    return hashlib.sha256(canonical(dict(context))).hexdigest()


@dataclass(frozen=True)
class Approval:
    """A parsed approval. Parsing does not verify: call ``verify`` with the signer's key."""

    log: str
    invocation: str  # the digest of the one invocation it answers
    context: str  # the digest of the context it was asked with
    decision: str
    iat: int
    expires_at: int
    sig: Sig
    obj: Mapping[str, Any]  # the JSON object as signed, ``sigs`` included

    def message(self) -> bytes:
        return signed_message(APPROVAL_CONTEXT, self.obj)

    def verify(self, key: PublicKey) -> None:
        """Raise SignatureError unless ``key`` made this approval's signature."""
        if self.sig.kid != key.kid:
            raise SignatureError(f"approval signed by {self.sig.kid}, not {key.kid}")
        if not key.verify(b"", self.message(), self.sig.sig):
            raise SignatureError("approval signature does not verify")


def parse_approval(value: Any, path: str = "") -> Approval:
    f = Fields(value, path)
    log = f.str("log", max_len=255)
    digest = f.str("invocation", pattern=HEX_ID)
    context = f.str("context", pattern=HEX_ID)
    decision = f.choice("decision", DECISIONS)
    iat = f.int("iat", 1)
    expires = f.int("expires_at", 1)
    sigs = parse_sigs(f.raw("sigs"), f.at("sigs"), max_sigs=1)
    f.done()
    if not iat < expires <= iat + MAX_APPROVAL_TTL:
        raise EntryFormatError(
            f"must be after iat and at most {MAX_APPROVAL_TTL} s after it", f.at("expires_at")
        )
    return Approval(log, digest, context, decision, iat, expires, sigs[0], f.obj)


def sign_approval(
    key: SigningKey,
    log: str,
    invocation: SignedInvocation | Mapping[str, Any],
    context: Mapping[str, Any],
    iat: int,
    expires_at: int,
    decision: str = "approve",
) -> Approval:
    """Sign ``decision`` on ``invocation`` asked with ``context`` (what a browser does with
    its principal's key)."""
    obj = {
        "log": log,
        "invocation": invocation_digest(invocation),
        "context": context_digest(context),
        "decision": decision,
        "iat": iat,
        "expires_at": expires_at,
    }
    return parse_approval(sign_object(APPROVAL_CONTEXT, obj, [key]))


def fresh(iat: int, time: int, window: int, approval: Approval | None = None) -> bool:
    """Whether an invocation made at ``iat`` may be decided at ``time`` (FORMAT.md §5, §8
    step 6): within ``window`` seconds either way, or, approved, no earlier than it was
    made and no later than the approval's ``expires_at`` (the person may take a while)."""
    if abs(time - iat) <= window:
        return True
    return approval is not None and iat <= time <= approval.expires_at
