"""The decision point: an authenticated enforcement point asks; the answer is logged.

Then, once it has forwarded an allowed request, it records what the upstream answered
(``POST /v1/access/{id}/result``): a ``result`` entry, signed by the decision key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from lineage.ledger.decide import InvalidInvocation, decide, record_result
from lineage.ledger.errors import RejectedEntry
from lineage.verifier.kinds import FAILURES

from ..errors import ApiError
from ..models import AppendResult, Receipt
from ..params import HEX_ID_PATTERN
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


Failure = Literal["timeout", "unreachable", "bad_response", "cancelled"]
assert Failure.__args__ == FAILURES  # type: ignore[attr-defined]  # FORMAT.md §4.8's list


def _whole(value: Any) -> Any:
    """JSON has one kind of number: ``200.0`` is the integer 200 (as a JSON Schema
    ``integer`` says), but a string, a boolean or ``200.5`` is no status."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Status = Annotated[int, Field(strict=True, ge=100, le=599), BeforeValidator(_whole)]
AccessId = Annotated[
    str,
    Path(
        pattern=HEX_ID_PATTERN,
        description="the id of the access entry that allowed the request (64 lower-case hex)",
    ),
]


class ResultRequest(BaseModel):
    """Exactly one of ``upstream_status`` and ``failure``; neither may be ``null``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["upstream_status"]}, {"required": ["failure"]}]},
    )
    upstream_status: Status | None = Field(default=None, description="the upstream's HTTP status")
    failure: Failure | None = Field(
        default=None,
        description="the request was forwarded (or attempted) but no status came back",
    )


@router.post(
    "/access/{access_id}/result",
    status_code=201,
    responses={201: {"model": AppendResult}, 200: {"model": AppendResult}},
)
def result(
    access_id: AccessId,
    body: ResultRequest,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> JSONResponse:
    """Record what the upstream answered a request this access allowed (FORMAT.md §4.8).

    For the enforcement point the access names, or an operator. One result per access:
    the same answer again is 200 with the entry already logged; another answer is 409.
    """
    require(who, "enforcement", "operator")
    given = sorted(body.model_fields_set)
    for name in given:
        if getattr(body, name) is None:
            raise ApiError(400, "invalid_request", f"{name}: must not be null (leave it out)")
    if len(given) != 1:
        raise ApiError(400, "invalid_request", "give exactly one of upstream_status and failure")
    answered = svc.log.state().access(access_id)
    if answered is None:
        raise ApiError(404, "not_found", f"no access entry {access_id}")
    if who.role == "enforcement" and who.name != answered.enforcement:
        raise ApiError(
            403, "access_denied", "that access was asked for by another enforcement point"
        )
    try:
        recorded = record_result(
            svc.log,
            access_id,
            answered.enforcement,
            upstream_status=body.upstream_status,
            failure=body.failure,
        )
    except RejectedEntry as exc:
        if exc.check == "duplicate-result":
            raise ApiError(409, "conflict", str(exc)) from None
        raise ApiError(400, "invalid_request", str(exc)) from None
    if not recorded.existing:
        svc.metrics.appends.labels(kind="result").inc()
    return JSONResponse(recorded.to_json(), status_code=200 if recorded.existing else 201)
