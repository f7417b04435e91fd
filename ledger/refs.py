"""What each leaf is about, indexed: principal, holder, task, credential, kind, time, and
for an access its decision and resource.

Written with the leaf, in the same transaction, from the replayed state (a
delegation's principal is its chain's root; an access is about the credential
it used, and a result about the credential of the access it answers), so
queries by principal, holder, task, kind, time, decision or resource read an
index instead of parsing the log. An access's decision and resource come from
the leaf alone (``access_of``): its ``decision`` and its invocation's
``request.resource`` (None when the request names only a location).
"""

from __future__ import annotations

from dataclasses import dataclass

from lineage.verifier.chain import ChainView, CredentialRecord
from lineage.verifier.entry import Leaf
from lineage.verifier.kinds import Access, Delegation, Grant, KeyChange, Result, Revocation

__all__ = ["Ref", "access_of", "credential_of", "ref_of"]


@dataclass(frozen=True)
class Ref:
    index: int
    kind: str
    time: int
    principal: str | None = None
    holder: str | None = None  # the kid of the credential's holder key
    task: str | None = None
    credential: str | None = None
    decision: str | None = None  # an access's "allow" or "deny"; None for other kinds
    resource: str | None = None  # an access's invocation request.resource, if it names one


def access_of(leaf: Leaf) -> tuple[str, str | None] | None:
    """An access leaf's (decision, resource): what the leaf alone says, no state needed.
    None for a leaf of any other kind."""
    body = leaf.entry.body
    if not isinstance(body, Access):
        return None
    resource = body.invocation.request.resource
    return body.decision, None if resource is None else str(resource)


def _about(index: int, leaf: Leaf, rec: CredentialRecord | None) -> Ref:
    decision, resource = access_of(leaf) or (None, None)
    if rec is None:
        return Ref(index, leaf.entry.kind, leaf.time, decision=decision, resource=resource)
    return Ref(
        index,
        leaf.entry.kind,
        leaf.time,
        rec.principal,
        rec.holder.kid,
        rec.credential.limits.task.id,
        rec.id,
        decision,
        resource,
    )


def credential_of(state: ChainView, leaf: Leaf) -> CredentialRecord | None:
    """The credential a leaf is about: its own, or the one it uses or revokes (a result:
    the one the access it answers used)."""
    body = leaf.entry.body
    if isinstance(body, Grant | Delegation):
        return state.credential(leaf.entry.id)
    if isinstance(body, Access):
        return state.credential(body.invocation.credential)
    if isinstance(body, Revocation) and body.credential is not None:
        return state.credential(body.credential)
    if isinstance(body, Result):
        answered = state.access(body.access)
        return state.credential(answered.credential) if answered is not None else None
    return None


def ref_of(state: ChainView, index: int, leaf: Leaf) -> Ref:
    """The index row of the leaf at ``index``, once ``state`` has applied it."""
    body = leaf.entry.body
    if isinstance(body, Revocation) and body.holder is not None:
        return Ref(index, leaf.entry.kind, leaf.time, holder=body.holder.kid)
    if isinstance(body, KeyChange) and body.principal is not None:
        return Ref(index, leaf.entry.kind, leaf.time, principal=body.principal)
    return _about(index, leaf, credential_of(state, leaf))
