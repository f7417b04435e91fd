"""Issuance: building credentials client-side, and the operator's ceilings at append.

The party whose authority an entry exercises builds and signs it (a grant by
the principal, a delegation by the parent's holder); the ledger checks it and
appends it unchanged, never editing a signed entry. On top of the format's
rules (``lineage.verifier.chain.Replay``), ``admission(settings)`` refuses, naming
the field:

- a lifetime (``expires_at`` minus the log's time) above ``ttl_max``, or above
  ``single_use_ttl_max`` for a ``max_uses: 1`` credential;
- ``max_depth`` above the operator's maximum;
- an access whose policy version is not the one in force, whose invocation
  ``iat`` is outside ``invocation_window`` of the log's time, or whose nonce
  an earlier access used (what a complete-log audit checks);
- a policy document that does not parse (``lineage.ledger.policy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lineage.verifier.approval import fresh
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import PublicKey, SigningKey
from lineage.verifier.kinds import Access, Delegation, Grant, Policy

from .config import Settings
from .errors import RejectedEntry
from .log import Admit
from .policy import parse_policy

__all__ = ["admission", "bind_principal"]


def admission(settings: Settings) -> Admit:
    """The operator's ceilings, as a ``Log.admit`` hook."""

    def admit(entry: Entry, state: Any, index: int, time: int) -> None:
        body = entry.body
        if isinstance(body, Grant | Delegation):
            limits = body.credential.limits
            lifetime = limits.expires_at - time
            if lifetime > settings.ttl_max:
                raise RejectedEntry(
                    f"lifetime {lifetime} s exceeds the ceiling of {settings.ttl_max} s",
                    "ceiling",
                    "expires_at",
                )
            if limits.max_uses == 1 and lifetime > settings.single_use_ttl_max:
                raise RejectedEntry(
                    f"a max_uses: 1 credential may live {settings.single_use_ttl_max} s, "
                    f"not {lifetime} s",
                    "ceiling",
                    "expires_at",
                )
            if limits.max_depth > settings.max_depth:
                raise RejectedEntry(
                    f"max_depth {limits.max_depth} exceeds the maximum of {settings.max_depth}",
                    "ceiling",
                    "max_depth",
                )
        elif isinstance(body, Access):
            # What a complete-log audit checks (FORMAT.md §8), refused at append too, so that
            # an access entry signed by a decision key but not written by decide cannot make
            # `lineage verify --db` fail later.
            if body.policy != state.policy_version:
                raise RejectedEntry(
                    f"names policy {body.policy}; version {state.policy_version} is in force",
                    "policy",
                    "policy",
                )
            inv = body.invocation
            # an approved call may wait for its person, until the approval expires (§5.1)
            if not fresh(inv.iat, time, settings.invocation_window, body.approval):
                raise RejectedEntry(
                    f"invocation iat {inv.iat} is more than {settings.invocation_window} s "
                    f"from the log's time {time}",
                    "freshness",
                    "invocation.iat",
                )
            if state.nonce_seen(inv.credential, inv.nonce, allowed_only=False):
                raise RejectedEntry(
                    "the invocation nonce was in an earlier access of this log",
                    "replay",
                    "invocation.nonce",
                )
        elif isinstance(body, Policy):
            try:
                parse_policy(body.document)
            except FormatError as exc:
                raise RejectedEntry(str(exc), "policy", getattr(exc, "field", None)) from None

    return admit


def bind_principal(
    log: str, operator: SigningKey, name: str, key: PublicKey, roles: Sequence[str] = ()
) -> Entry:
    """The operator's ``key`` entry binding ``name`` to ``key``."""
    return sign_entry(binding_body(log, name, key, roles), [operator])


def binding_body(log: str, name: str, key: PublicKey, roles: Sequence[str] = ()) -> dict[str, Any]:
    """The body of a ``key`` entry binding principal ``name`` to ``key``."""
    body: dict[str, Any] = {
        "kind": "key",
        "v": 1,
        "log": log,
        "op": "bind",
        "key": key.b64,
        "principal": name,
    }
    if roles:
        body["roles"] = sorted(set(roles))
    return body
