"""The decision point: an authenticated enforcement point asks; the answer is logged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lineage.ledger.decide import InvalidInvocation, decide

from ..errors import ApiError
from ..models import Receipt
from ..service import Caller, Service, caller, require, service

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["access"])


class AccessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invocation: dict[str, Any] = Field(description="the holder's signed invocation")
    context: dict[str, Any] = Field(
        default_factory=dict, description="what the enforcement point asserts"
    )
    upstream_status: int | None = Field(default=None, ge=100, le=599)


class AccessDecision(BaseModel):
    decision: str
    reason: str
    policy: int
    id: str
    index: int
    receipt: Receipt = Field(description="the access entry's receipt (FORMAT.md §9.4)")


@router.post("/access", response_model=AccessDecision)
def access(
    body: AccessRequest,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> dict[str, Any]:
    """Allow or deny one invocation, against every credential in its chain and the policy.

    An invocation that is not a valid proof of possession (unknown credential, bad
    signature, stale, replayed) is refused with 401 and counted, not logged.
    """
    require(who, "enforcement", "operator")
    try:
        decision = decide(
            svc.log,
            body.invocation,
            body.context,
            who.name,
            window=svc.settings.invocation_window,
            upstream_status=body.upstream_status,
        )
    except InvalidInvocation as exc:
        svc.metrics.invalid_proofs.labels(reason=exc.reason).inc()
        raise ApiError(401, "invalid_invocation", f"{exc.reason}: {exc}") from None
    svc.metrics.decisions.labels(outcome="allow" if decision.allowed else "deny").inc()
    svc.metrics.appends.labels(kind="access").inc()
    return decision.to_json()
