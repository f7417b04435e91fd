"""Queries over the log: lineages, subtrees, and entries by principal, holder, task, kind, time,
and an access's decision and resource.

Answers come from the chain state (``Log.state()``, ledger/state.py), which
indexes every credential's parent, principal and holder, from the query index
(ledger/refs.py), and from the leaves themselves; every answer names leaf
indexes, so it can be proved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from lineage.verifier.chain import CredentialRecord
from lineage.verifier.entry import Leaf
from lineage.verifier.errors import FormatError
from lineage.verifier.keys import PublicKey

from .errors import NotFound
from .log import Log
from .state import SQLiteState

__all__ = ["Filter", "entries", "lineage", "related", "subtree"]

PAGE = 500


def lineage(log: Log, credential: str) -> list[CredentialRecord]:
    """The chain of ``credential``, human first."""
    rec = log.state().credential(credential)
    if rec is None:
        raise NotFound(f"no credential {credential}")
    return rec.chain()


def subtree(state: SQLiteState, credential: str) -> list[CredentialRecord]:
    """``credential`` and every credential derived from it, in log order."""
    out = state.subtree(credential)
    if not out:
        raise NotFound(f"no credential {credential}")
    return out


def related(log: Log, credentials: list[str], within: str | None = None) -> list[int]:
    """Leaf indexes a bundle needs to prove these credentials and what they did.

    The genesis, every key and policy entry (so signers and role changes replay),
    each credential's chain, its subtree, revocations touching them, their accesses and
    the results of those accesses. With ``within`` (a holder's own credential), only
    what that holder may see: its chain, its subtree, and the accesses (with their
    results) and revocations of its subtree.

    Read from one snapshot, through the parent and query indexes: the cost follows
    the size of the answer, not of the log.
    """
    log.index_refs()
    store = log.store
    with store.snapshot():
        state = log.state()
        recs: dict[str, CredentialRecord] = {}
        for cid in credentials:
            recs.update((rec.id, rec) for rec in lineage(log, cid))
            recs.update((rec.id, rec) for rec in subtree(state, cid))
        acting = set(recs)
        wanted = set(recs)
        if within is not None:
            below = {rec.id for rec in subtree(state, within)}
            wanted &= below | {rec.id for rec in lineage(log, within)}
            acting &= below
        size = state.size
        indexes = {0, *store.anchor_indexes(size), *(recs[c].index for c in wanted)}
        holders = sorted({recs[c].holder.kid for c in acting})
        indexes.update(store.ref_indexes(size, "revocation", credentials=sorted(wanted)))
        indexes.update(store.ref_indexes(size, "revocation", holders=holders))
        indexes.update(store.ref_indexes(size, "access", credentials=sorted(acting)))
        # a result is about the credential of the access it answers: the same ones
        indexes.update(store.ref_indexes(size, "result", credentials=sorted(acting)))
    return sorted(indexes)


@dataclass(frozen=True)
class Filter:
    """Which leaves: those about ``principal`` (its identity bindings, and every grant,
    delegation, access and revocation in chains it authorised), about a ``holder`` key,
    a ``task`` (or, ending in "/", a task and its sub-tasks), of a ``kind``, integrated
    in [``since``, ``until``), or accesses with a ``decision`` ("allow" or "deny") or on a
    ``resource`` (the invocation's ``request.resource``: exactly, or, ending in "*", every
    resource starting with what comes before it: ``mailbox:alice/*`` matches
    ``mailbox:alice/inbox/1``; a "*" anywhere else is an ordinary character). Setting
    ``decision`` or ``resource`` implies ``kind="access"``."""

    principal: str | None = None
    holder: str | None = None  # kid or base64url key
    task: str | None = None  # a task id or a prefix ending in "/"
    kind: str | None = None
    since: int | None = None  # integrated time, inclusive
    until: int | None = None  # integrated time, exclusive
    decision: str | None = None  # an access's decision: "allow" or "deny"
    resource: str | None = None  # an access's resource, or a prefix ending in "*"


def entries(
    log: Log, f: Filter, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, Leaf]]:
    """Leaves in [start, end) matching every field of ``f`` that is set, in index order.

    Reads the ``refs`` index (ledger/refs.py), then only the matching leaves.
    """
    log.index_refs()  # a ledger from before the index existed is indexed once
    end = log.size if end is None else end
    kind = f.kind
    if f.decision is not None or f.resource is not None:
        if kind not in (None, "access"):
            return  # only accesses have a decision and a resource
        kind = "access"
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
            kind=kind,
            since=f.since,
            until=f.until,
            decision=f.decision,
            resource=f.resource,
        )
        for index in found:
            yield index, log.leaf(index)
        if len(found) < PAGE:
            return
        start = found[-1] + 1
