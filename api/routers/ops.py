"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import generate_latest

from ..models import Health
from ..service import Service, service

__all__ = ["router"]

router = APIRouter(tags=["operations"])

# The Prometheus text format, version 0.0.4, which ``generate_latest`` writes (names escaped
# to underscores) and every Prometheus scrapes; prometheus_client's CONTENT_TYPE_LATEST names
# 1.0.0 in newer releases, so it is spelled out here, the same as the document says.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


@router.get("/healthz", response_model=Health)
def health(svc: Annotated[Service, Depends(service)]) -> dict[str, Any]:
    """``ok``; ``degraded`` with the reason while checkpoints are failing (the service
    still answers); ``damaged`` once a proof or leaf failed against a signed checkpoint
    (it was refused, never served: run ``lineage verify --db``)."""
    error, damage = svc.log.checkpoint_error, svc.log.damaged
    status = "damaged" if damage is not None else "ok" if error is None else "degraded"
    out: dict[str, Any] = {
        "status": status,
        "origin": svc.log.origin,
        "tree_size": svc.log.size,
        "checkpoint_failures": svc.log.counters.get("checkpoint_failures", 0),
        "proof_failures": svc.log.counters.get("proof_failures", 0),
    }
    if error is not None:
        out["checkpoint_error"] = error[:200]
    if damage is not None:
        out["damage"] = damage[:300]
    return out


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus metrics, text format 0.0.4",
            "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}},
        }
    },
)
def metrics(svc: Annotated[Service, Depends(service)]) -> Response:
    """Counters and latencies for Prometheus (docs/API.md, Operations)."""
    body = generate_latest(svc.metrics.registry)
    return Response(body, media_type=f"{PROMETHEUS_TEXT}; charset=utf-8")
