"""Queries over the log: lineages, subtrees, and entries by principal, holder, task, kind, time.

Answers come from the replayed state of the log (``Log.state()``), which knows
every credential's parent, principal and holder, and from the leaves
themselves; every answer names leaf indexes, so it can be proved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from verifier.chain import CredentialRecord, Replay
from verifier.entry import Leaf
from verifier.kinds import Access, Delegation, Grant, Revocation

from .errors import NotFound
from .log import Log

__all__ = ["Filter", "entries", "lineage", "related", "subtree"]


def lineage(log: Log, credential: str) -> list[CredentialRecord]:
    """The chain of ``credential``, human first."""
    rec = log.state().credentials.get(credential)
    if rec is None:
        raise NotFound(f"no credential {credential}")
    return rec.chain()


def subtree(state: Replay, credential: str) -> list[CredentialRecord]:
    """``credential`` and every credential derived from it, in log order."""
    root = state.credentials.get(credential)
    if root is None:
        raise NotFound(f"no credential {credential}")
    inside = {root.id}
    out = [root]
    for rec in sorted(list(state.credentials.values()), key=lambda r: r.index):
        if rec.parent is not None and rec.parent.id in inside and rec.id not in inside:
            inside.add(rec.id)
            out.append(rec)
    return out


def related(log: Log, credentials: list[str], within: str | None = None) -> list[int]:
    """Leaf indexes a bundle needs to prove these credentials and what they did.

    The genesis, every key and policy entry (so signers and role changes replay),
    each credential's chain, its subtree, revocations touching them, and their accesses.
    With ``within`` (a holder's own credential), only what that holder may see: its
    chain, its subtree, and the accesses and revocations of its subtree.
    """
    state = log.state()
    wanted: set[str] = set()
    for cid in credentials:
        wanted.update(rec.id for rec in lineage(log, cid))
        wanted.update(rec.id for rec in subtree(state, cid))
    acting = set(wanted)
    if within is not None:
        below = {rec.id for rec in subtree(state, within)}
        wanted &= below | {rec.id for rec in lineage(log, within)}
        acting &= below
    creds = dict(state.credentials)  # a copy: the writer may be adding to it
    indexes = {0, *state.anchors, *(creds[c].index for c in wanted)}
    holders = {creds[c].holder.kid for c in acting}
    for index, entry in list(state.revocations):
        body = entry.body
        if body.credential in wanted or (body.holder is not None and body.holder.kid in holders):
            indexes.add(index)
    for index, entry in list(state.accesses):
        if entry.body.invocation.credential in acting:
            indexes.add(index)
    return sorted(indexes)


@dataclass(frozen=True)
class Filter:
    principal: str | None = None
    holder: str | None = None  # kid or base64url key
    task: str | None = None  # a task id or a prefix ending in "/"
    kind: str | None = None
    since: int | None = None  # integrated time, inclusive
    until: int | None = None  # integrated time, exclusive


def _credential_of(state: Replay, leaf: Leaf) -> CredentialRecord | None:
    body = leaf.entry.body
    if isinstance(body, Grant | Delegation):
        return state.credentials.get(leaf.entry.id)
    if isinstance(body, Access):
        return state.credentials.get(body.invocation.credential)
    if isinstance(body, Revocation) and body.credential is not None:
        return state.credentials.get(body.credential)
    return None


def entries(
    log: Log, f: Filter, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, Leaf]]:
    """Leaves in [start, end) matching every field of ``f`` that is set."""
    state = log.state()
    for index, leaf in log.leaves(start, end):
        if f.kind is not None and leaf.entry.kind != f.kind:
            continue
        if f.since is not None and leaf.time < f.since:
            continue
        if f.until is not None and leaf.time >= f.until:
            break
        if f.principal or f.holder or f.task:
            rec = _credential_of(state, leaf)
            if rec is None:
                continue
            if f.principal is not None and rec.principal != f.principal:
                continue
            if f.holder is not None and f.holder not in (rec.holder.kid, rec.holder.b64):
                continue
            task = rec.credential.limits.task.id
            if f.task is not None and not (
                task == f.task or (f.task.endswith("/") and task.startswith(f.task))
            ):
                continue
        yield index, leaf
