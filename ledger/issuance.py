"""Issuance: building credentials client-side, and the operator's ceilings at append.

The party whose authority an entry exercises builds and signs it (a grant by
the principal, a delegation by the parent's holder); the ledger checks it and
appends it unchanged, never editing a signed entry. On top of the format's
rules (``verifier.chain.Replay``), ``admission(settings)`` refuses, naming
the field:

- a lifetime (``expires_at`` minus the log's time) above ``ttl_max``, or above
  ``single_use_ttl_max`` for a ``max_uses: 1`` credential;
- ``max_depth`` above the operator's maximum;
- a policy document that does not parse (``ledger.policy``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from verifier.entry import Entry, sign_entry
from verifier.errors import FormatError
from verifier.keys import PublicKey, SigningKey
from verifier.kinds import Access, Delegation, Grant, Policy

from .config import Settings
from .errors import RejectedEntry
from .log import Admit
from .policy import parse_policy

__all__ = [
    "admission",
    "bind_principal",
    "delegation_body",
    "grant_body",
    "revocation_body",
]


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
        elif isinstance(body, Access) and body.policy != state.policy_version:
            raise RejectedEntry(
                f"names policy {body.policy}; version {state.policy_version} is in force",
                "policy",
                "policy",
            )
        elif isinstance(body, Policy):
            try:
                parse_policy(body.document)
            except FormatError as exc:
                raise RejectedEntry(str(exc), "policy", getattr(exc, "field", None)) from None

    return admit


def _credential_fields(
    *,
    task: Mapping[str, str],
    scope: Sequence[Mapping[str, Any]],
    expires_at: int,
    max_depth: int,
    agent: str | None,
    not_before: int | None,
    max_uses: int | None,
    rate: Mapping[str, int] | None,
    max_children: int | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": dict(task),
        "scope": [dict(d) for d in scope],
        "expires_at": expires_at,
        "max_depth": max_depth,
    }
    optional = {
        "agent": agent,
        "not_before": not_before,
        "max_uses": max_uses,
        "rate": dict(rate) if rate is not None else None,
        "max_children": max_children,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def grant_body(log: str, principal: str, holder: PublicKey, **credential: Any) -> dict[str, Any]:
    """The body of a grant (sign it with the principal's key: ``sign_entry(body, [key])``)."""
    return {
        "kind": "grant",
        "v": 1,
        "log": log,
        "principal": principal,
        "holder": holder.b64,
        **_credential_fields(**_defaults(credential)),
    }


def delegation_body(log: str, parent: str, holder: PublicKey, **credential: Any) -> dict[str, Any]:
    """The body of a delegation (sign it with the parent's holder key)."""
    return {
        "kind": "delegation",
        "v": 1,
        "log": log,
        "parent": parent,
        "holder": holder.b64,
        **_credential_fields(**_defaults(credential)),
    }


def _defaults(credential: dict[str, Any]) -> dict[str, Any]:
    for name in ("agent", "not_before", "max_uses", "rate", "max_children"):
        credential.setdefault(name, None)
    return credential


def revocation_body(
    log: str, *, credential: str | None = None, holder: PublicKey | None = None, reason: str = ""
) -> dict[str, Any]:
    if (credential is None) == (holder is None):
        raise ValueError("revoke exactly one of a credential and a holder key")
    target = {"credential": credential} if credential is not None else {"holder": holder.b64}
    return {"kind": "revocation", "v": 1, "log": log, "target": target, "reason": reason}


def bind_principal(
    log: str, operator: SigningKey, name: str, key: PublicKey, roles: Sequence[str] = ()
) -> Entry:
    """The operator's ``key`` entry binding ``name`` to ``key``."""
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
    return sign_entry(body, [operator])
