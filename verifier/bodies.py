"""Building the body of a grant, delegation, revocation or result, to be signed with
``sign_entry``.

Shared by everyone who signs an entry: the agent client (``lineage.client``),
the ledger's CLI, and any integrator. A body built here is only a proposal:
the log refuses it at append unless it obeys ``docs/FORMAT.md`` and the
operator's ceilings. ``None`` for an optional field leaves it out.

    body = grant_body(log, "alice@corp", agent.public, task={"id": "t", "description": ""},
                      scope=[...], expires_at=now + 900, max_depth=1)
    entry = sign_entry(body, [alice_key])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .keys import PublicKey

__all__ = ["delegation_body", "grant_body", "result_body", "revocation_body"]


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


def result_body(
    log: str,
    access: str,
    enforcement: str,
    *,
    upstream_status: int | None = None,
    failure: str | None = None,
) -> dict[str, Any]:
    """The body of a result (sign it with a ``decision`` key): what the upstream answered
    the request that access entry ``access`` allowed; exactly one of ``upstream_status``
    and ``failure`` (FORMAT.md §4.8), which the parser, not this builder, enforces."""
    out: dict[str, Any] = {
        "kind": "result",
        "v": 1,
        "log": log,
        "access": access,
        "enforcement": enforcement,
    }
    if upstream_status is not None:
        out["upstream_status"] = upstream_status
    if failure is not None:
        out["failure"] = failure
    return out
