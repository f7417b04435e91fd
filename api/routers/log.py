"""The transparency log, for anyone: checkpoint, key, leaves, proofs.

Leaf hashes, checkpoints and proofs are public; entry bodies are returned only
to callers allowed to read them (``service.may_read``).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from lineage.ledger.refs import credential_of
from lineage.verifier.chain import ChainView
from lineage.verifier.entry import Leaf

from ..errors import ApiError
from ..models import ConsistencyProof, InclusionProof, LeafPage, LeafView
from ..params import OptionalSize, PathIndex, index, size
from ..service import Caller, Service, caller, may_read, service

__all__ = ["router"]

router = APIRouter(prefix="/v1/log", tags=["log"])
MAX_PAGE = 1000

# What no schema can say is in the descriptions: one size against another, or against the log's
Start = index("the first leaf; below the log's size and below end")
LeafIndex = index("the leaf; below tree_size")
TreeSize = size("the tree the proof is in; at most the log's size")
First = size("the older tree size; at most second")
Second = size("the newer tree size; at most the log's size")


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(svc: Annotated[Service, Depends(service)]) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP tlog-checkpoint in a signed note)."""
    note = svc.log.latest_checkpoint()
    if note is None:
        raise ApiError(404, "not_found", "no checkpoint published yet")
    return PlainTextResponse(note.decode(), headers={"Cache-Control": "no-cache"})


@router.get("/key", response_class=PlainTextResponse)
def key(svc: Annotated[Service, Depends(service)]) -> PlainTextResponse:
    """The log's C2SP verifier-key string: all an auditor needs."""
    return PlainTextResponse(svc.log.log_key.vkey + "\n")


def leaf_json(
    svc: Service, who: Caller, index: int, leaf: Leaf, state: ChainView | None = None
) -> dict[str, Any]:
    """A leaf as the caller may see it; pass ``state`` when rendering many (one lookup)."""
    state = state or svc.log.state()
    out: dict[str, Any] = {"index": index, "leaf_hash": leaf.hash.hex(), "time": leaf.time}
    public = leaf.entry.kind in ("genesis", "key", "policy")  # trust anchors and bindings
    used = leaf.entry.kind in ("access", "result", "revocation")
    # An operator or auditor reads everything: no credential to look up (deep pages of a
    # large log would otherwise read each row's chain: docs/BENCH.md, the explorer's search).
    if (
        public
        or who.reads_everything
        or may_read(who, svc, credential_of(state, leaf), used=used, state=state)
    ):
        out["id"] = leaf.entry.id
        out["entry"] = leaf.entry.obj
    return out


@router.get("/entries/{index}", responses={200: {"model": LeafView}})
def entry(
    index: PathIndex,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> dict[str, Any]:
    if not 0 <= index < svc.log.size:
        raise ApiError(404, "not_found", f"no leaf at index {index}")
    return leaf_json(svc, who, index, svc.log.leaf(index))


@router.get("/entries", responses={200: {"model": LeafPage}})
def entries(
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
    start: Start,
    end: OptionalSize = None,
) -> dict[str, Any]:
    """Leaves ``start <= index < end``, at most 1000 at a time."""
    size = svc.log.size
    end = min(size, end if end is not None else size, start + MAX_PAGE)
    if start >= size or end <= start:
        raise ApiError(400, "invalid_request", f"start must be below end and the size {size}")
    state = svc.log.state()
    return {
        "entries": [leaf_json(svc, who, i, leaf, state) for i, leaf in svc.log.leaves(start, end)],
        "tree_size": size,
    }


@router.get("/proof/inclusion", responses={200: {"model": InclusionProof}})
def inclusion(
    svc: Annotated[Service, Depends(service)], index: LeafIndex, tree_size: TreeSize
) -> dict[str, Any]:
    if tree_size > svc.log.size or index >= tree_size:
        raise ApiError(400, "invalid_request", f"need index < tree_size <= {svc.log.size}")
    return {
        "leaf_index": index,
        "tree_size": tree_size,
        "audit_path": _b64(svc.log.inclusion_proof(index, tree_size)),
    }


@router.get("/proof/consistency", responses={200: {"model": ConsistencyProof}})
def consistency(
    svc: Annotated[Service, Depends(service)], first: First, second: Second
) -> dict[str, Any]:
    if not first <= second <= svc.log.size:
        raise ApiError(400, "invalid_request", f"need 0 < first <= second <= {svc.log.size}")
    return {
        "first": first,
        "second": second,
        "consistency": _b64(svc.log.consistency_proof(first, second)),
    }
