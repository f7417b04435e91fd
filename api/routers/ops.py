"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..models import Health
from ..service import Service, service

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def health(svc: Annotated[Service, Depends(service)]) -> dict[str, Any]:
    """``ok``, or ``degraded`` with the reason while checkpoints are failing (the
    service still answers; new entries wait for a checkpoint to cover them)."""
    error = svc.log.checkpoint_error
    out: dict[str, Any] = {
        "status": "ok" if error is None else "degraded",
        "origin": svc.log.origin,
        "tree_size": svc.log.size,
        "checkpoint_failures": svc.log.counters.get("checkpoint_failures", 0),
    }
    if error is not None:
        out["checkpoint_error"] = error[:200]
    return out


@router.get("/metrics")
def metrics(svc: Annotated[Service, Depends(service)]) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
