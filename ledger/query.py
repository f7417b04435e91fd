"""Queries over the log: lineages, subtrees, and entries by principal, holder, task, kind, time.

Answers come from the replayed state of the log (``Log.state()``), which knows
every credential's parent, principal and holder, and from the leaves
themselves; every answer names leaf indexes, so it can be proved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from lineage.verifier.chain import CredentialRecord, Replay
from lineage.verifier.entry import Leaf
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import PublicKey

from .errors import NotFound
from .log import Log

__all__ = ["Filter", "entries", "lineage", "related", "subtree"]

PAGE = 500


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
    """Which leaves: those about ``principal`` (its identity bindings, and every grant,
    delegation, access and revocation in chains it authorised), about a ``holder`` key,
    a ``task`` (or, ending in "/", a task and its sub-tasks), of a ``kind``, or integrated
    in [``since``, ``until``)."""

    principal: str | None = None
    holder: str | None = None  # kid or base64url key
    task: str | None = None  # a task id or a prefix ending in "/"
    kind: str | None = None
    since: int | None = None  # integrated time, inclusive
    until: int | None = None  # integrated time, exclusive


def entries(
    log: Log, f: Filter, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, Leaf]]:
    """Leaves in [start, end) matching every field of ``f`` that is set, in index order.

    Reads the ``refs`` index (ledger/refs.py), then only the matching leaves.
    """
    log.index_refs()  # a ledger from before the index existed is indexed once
    end = log.size if end is None else end
    holders = None
    if f.holder is not None:
        holders = [f.holder]
        with contextlib.suppress(FormatError):
            holders.append(PublicKey.from_b64(f.holder).kid)
    while start < end:
        found = log.store.find_refs(
            start,
            end,
            PAGE,
            principal=f.principal,
            holders=holders,
            task=f.task,
            kind=f.kind,
            since=f.since,
            until=f.until,
        )
        for index in found:
            yield index, log.leaf(index)
        if len(found) < PAGE:
            return
        start = found[-1] + 1
