"""Entries: append any signed entry; read one; query by principal, holder, task, kind, time,
and an access's decision and resource."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lineage.ledger.query import Filter, entries
from lineage.verifier.entry import MAX_ENTRY_SIZE, parse_entry
from lineage.verifier.fields import HEX_ID
from lineage.verifier.jcs import canonical, parse
from lineage.verifier.resource import MAX_LENGTH as MAX_RESOURCE

from ..errors import CHALLENGE, ApiError
from ..models import AppendResult, EntryPage, LeafView
from ..params import Count, EntryId, Index, Time
from ..service import Caller, Service, caller, service
from .log import leaf_json

__all__ = ["router"]

router = APIRouter(prefix="/v1/entries", tags=["entries"])
MAX_PAGE = 500
MAX_SCAN = 5000  # matching leaves read per request, readable by the caller or not
# A resource prefix is matched on each access row in turn (substr), not read from an
# index range: one request walks at most this many leaves of the log for it.
PREFIX_WINDOW = 100_000
Page = Count(MAX_PAGE)
Decision = Annotated[
    Literal["allow", "deny"] | None,
    Query(description="only access entries with this decision"),
]
Resource = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_RESOURCE,
        description=(
            "only access entries whose invocation's request.resource is this one, or, "
            'ending in "*", starts with what comes before it (mailbox:alice/*)'
        ),
    ),
]


@router.post(
    "", status_code=201, responses={201: {"model": AppendResult}, 200: {"model": AppendResult}}
)
async def append(request: Request, svc: Annotated[Service, Depends(service)]) -> JSONResponse:
    """Append a signed entry (JSON). Idempotent: a repeat answers 200 with the first index.

    The append waits for its group commit in a worker thread, never on the event loop.
    """
    body = await request.body()
    if len(body) > 4 * MAX_ENTRY_SIZE:
        raise ApiError(413, "request_too_large", "an entry is at most 65,535 bytes")
    entry = parse_entry(canonical(parse(body)))  # any JSON spelling; signatures decide
    appended = await run_in_threadpool(svc.log.append, entry)
    if not appended.existing:
        svc.metrics.appends.labels(kind=entry.kind).inc()
    return JSONResponse(appended.to_json(), status_code=200 if appended.existing else 201)


@router.get("/{entry_id}", responses={200: {"model": LeafView}})
def get(
    entry_id: EntryId,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> dict[str, Any]:
    if not HEX_ID.fullmatch(entry_id):
        raise ApiError(400, "invalid_request", "an entry id is 64 lower-case hex digits")
    index = svc.log.find(entry_id)
    out = leaf_json(svc, who, index, svc.log.leaf(index))
    if "entry" not in out:
        raise ApiError(403, "access_denied", "you may not read this entry's body")
    return out


@router.get("", responses={200: {"model": EntryPage}})
def query(
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
    principal: str | None = None,
    holder: str | None = None,
    task: str | None = None,
    kind: str | None = None,
    since: Time = None,
    until: Time = None,
    decision: Decision = None,
    resource: Resource = None,
    cursor: Index = 0,
    limit: Page = 100,
) -> dict[str, Any]:
    """Entries matching every filter given, from ``cursor`` (a leaf index), a page at a time.

    ``decision`` (``allow`` or ``deny``; anything else is 400) and ``resource`` (at most
    2,048 characters: a resource exactly, or ending in ``*`` every resource starting with
    what comes before it, so ``mailbox:alice/*`` matches ``mailbox:alice/inbox/1``; no
    other character is special) select access entries only, from the query index.

    Only entries the caller may read are listed. The query index skips every leaf that
    does not match; one request reads no more than ``MAX_SCAN`` matching leaves (the
    caller may not be allowed to see them all), and ``next_cursor``, when there may be
    more, continues where it stopped. A resource prefix is matched row by row, so a
    request walks at most ``PREFIX_WINDOW`` leaves for it.
    """
    if who.role == "anonymous":
        raise ApiError(
            401,
            "invalid_client",
            "listing entries needs a token or DPoP",
            {"WWW-Authenticate": CHALLENGE},
        )
    if who.role == "principal" and principal not in (None, who.name):
        raise ApiError(403, "access_denied", "a principal may list only its own entries")
    f = Filter(
        principal=principal if who.role != "principal" else who.name,
        holder=holder,
        task=task,
        kind=kind,
        since=since,
        until=until,
        decision=decision,
        resource=resource,
    )
    state = svc.log.state()
    out, next_cursor = [], None
    # The index skips what does not match, however far apart the matches are; what is
    # bounded is the matching leaves read, including those the caller may not see.
    end = state.size
    if resource is not None and resource.endswith("*"):
        end = min(end, cursor + PREFIX_WINDOW)
    for read, (index, leaf) in enumerate(entries(svc.log, f, start=cursor, end=end)):
        if len(out) == limit or read == MAX_SCAN:
            next_cursor = index
            break
        row = leaf_json(svc, who, index, leaf, state)
        if "entry" in row:
            out.append(row)
    else:
        next_cursor = end if end < state.size else None
    return {"entries": out, "next_cursor": next_cursor}
