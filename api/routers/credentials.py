"""Lineage bundles and exports: evidence that verifies offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse

from lineage.ledger.export import (
    credential_bundle,
    principal_bundle,
    rows_csv,
    rows_dot,
    rows_jsonl,
)
from lineage.ledger.query import Filter

from ..errors import ApiError
from ..models import Bundle
from ..params import CredentialId, Time, optional_index
from ..service import Caller, Service, caller, may_read, service

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["evidence"])

# What /v1/export answers, by format: a bundle is JSON, rows are JSON Lines, CSV or DOT
EXPORT_TYPES = {
    "bundle": "application/json",
    "jsonl": "application/jsonl",
    "csv": "text/csv",
    "dot": "text/vnd.graphviz",
}
FromSize = optional_index("format=bundle only: the size of an older checkpoint, at most the log's")
_TEXT = {"schema": {"type": "string"}}
EXPORT_RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "format=bundle: an evidence bundle (JSON); jsonl: one JSON object a line "
        "(index, id, time, kind, leaf_hash, entry); csv: a header and a row a leaf; dot: a "
        "Graphviz digraph of the chains",
        "model": Bundle,  # for application/json
        "content": {media: _TEXT for fmt, media in EXPORT_TYPES.items() if fmt != "bundle"},
    }
}


@router.get("/credentials/{credential}/lineage", responses={200: {"model": Bundle}})
def lineage(
    credential: CredentialId,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> JSONResponse:
    """The credential's chain, human first, with what came of it: an evidence bundle."""
    rec = svc.credential(credential)
    if rec is None:
        raise ApiError(404, "not_found", f"no credential {credential}")
    if not may_read(who, svc, rec):
        raise ApiError(
            403 if who.role != "anonymous" else 401,
            "access_denied",
            "you may not read this lineage",
        )
    within = who.credential if who.role == "holder" else None
    return JSONResponse(credential_bundle(svc.log, credential, within=within))


def _chunks(text: str, size: int = 65536) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


@router.get("/export", response_class=StreamingResponse, responses=EXPORT_RESPONSES)
def export(
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
    principal: str | None = None,
    since: Time = None,
    until: Time = None,
    format: Annotated[Literal["bundle", "jsonl", "csv", "dot"], Query()] = "bundle",
    from_size: FromSize = None,
) -> StreamingResponse:
    """Everything about ``principal`` in [since, until), as a bundle or rows, streamed.

    A bundle holds every entry of the window and what proves it (chains up to their
    grants, even older ones); ``from_size`` (the size of an older checkpoint the caller
    kept) adds the consistency proof ``lineage-verify --since`` checks.
    """
    if who.role == "principal":
        if principal not in (None, who.name):
            raise ApiError(403, "access_denied", "a principal may export only its own")
        principal = who.name
    elif not who.reads_everything:
        raise ApiError(
            401 if who.role == "anonymous" else 403,
            "access_denied",
            "export needs an operator or auditor token, or the principal itself",
        )
    if from_size is not None and format != "bundle":
        raise ApiError(400, "invalid_request", "from_size goes with format=bundle")
    if from_size is not None and from_size > svc.log.size:
        raise ApiError(
            400, "invalid_request", f"from_size {from_size} exceeds the log's {svc.log.size} leaves"
        )
    if format == "bundle":
        doc = principal_bundle(svc.log, principal, since, until, since=from_size)
        return StreamingResponse(
            _chunks(json.dumps(doc, indent=1, sort_keys=True)), media_type=EXPORT_TYPES[format]
        )
    rows = {"jsonl": rows_jsonl, "csv": rows_csv, "dot": rows_dot}[format]
    return StreamingResponse(
        iter(rows(svc.log, Filter(principal=principal, since=since, until=until))),
        media_type=EXPORT_TYPES[format],
    )
