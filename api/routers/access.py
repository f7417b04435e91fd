"""The decision point: an authenticated enforcement point asks; the answer is logged.

Then, once it has forwarded an allowed request, it records what the upstream answered
(``POST /v1/access/{id}/result``): a ``result`` entry, signed by the decision key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from lineage.ledger.approvals import ApprovalError, ApprovalStore, Held, decide_or_hold
from lineage.ledger.decide import InvalidInvocation, record_result, record_results
from lineage.ledger.errors import RejectedEntry
from lineage.verifier.kinds import FAILURES

from ..errors import ApiError
from ..models import AppendResult, Receipt
from ..params import HEX_ID_PATTERN
from ..service import Caller, Service, caller, require, service
from .approvals import HeldStatus, approval_error, base_url

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


class Pending(BaseModel):
    decision: Literal["pending"]
    reason: str = Field(description="the rule that holds the call, and whose approval it needs")
    approval: HeldStatus = Field(description="where the principal answers, and where to poll")


@router.post(
    "/access",
    response_model=AccessDecision,
    responses={202: {"model": Pending, "description": "held for the principal's approval"}},
)
def access(
    body: AccessRequest,
    request: Request,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> Any:
    """Allow or deny one invocation, against every credential in its chain and the policy.

    An invocation that is not a valid proof of possession (unknown credential, bad
    signature, stale, replayed) is refused with 401 and counted, not logged. A call a
    policy rule holds for its principal's approval (step-up) is answered 202
    ``pending``, with the page for the principal and the status to poll; nothing is
    logged. Send the same invocation again once the status is ``approved``.
    """
    require(who, "enforcement", "operator")
    try:
        decision = decide_or_hold(
            svc.log,
            ApprovalStore(svc.log.store, clock=svc.log.clock),
            body.invocation,
            body.context,
            who.name,
            window=svc.settings.invocation_window,
            upstream_status=body.upstream_status,
        )
    except InvalidInvocation as exc:
        svc.metrics.invalid_proofs.labels(reason=exc.reason).inc()
        raise ApiError(401, "invalid_invocation", f"{exc.reason}: {exc}") from None
    except ApprovalError as exc:
        raise approval_error(exc) from None
    if isinstance(decision, Held):
        held = decision.call.to_json(int(svc.log.clock()), base_url(request))
        return JSONResponse(
            {"decision": "pending", "reason": decision.reason, "approval": held},
            status_code=202,
        )
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


MAX_RESULTS = 256


class ResultItem(ResultRequest):
    """One result of a batch: the access it answers, and exactly one outcome."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["upstream_status"]}, {"required": ["failure"]}]},
    )
    access: str = Field(pattern=HEX_ID_PATTERN, description="the access entry's id")


class ResultsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results: list[ResultItem] = Field(min_length=1, max_length=MAX_RESULTS)


class ResultOutcome(BaseModel):
    """The result's entry (``id``, ``index``, ``receipt``), or why it was refused."""

    id: str | None = None
    index: int | None = None
    receipt: Receipt | None = None
    error: str | None = None
    error_description: str | None = None


class ResultsAnswer(BaseModel):
    results: list[ResultOutcome]


@router.post("/results", response_model=ResultsAnswer, response_model_exclude_none=True)
def results(
    body: ResultsRequest,
    svc: Annotated[Service, Depends(service)],
    who: Annotated[Caller, Depends(caller)],
) -> dict[str, Any]:
    """Record up to 256 results at once, sharing the log's group commits (what a gateway
    does, so that writing results does not delay the next decisions).

    Each is judged as ``POST /v1/access/{id}/result`` judges one, and answered in order:
    its entry, or ``error`` (``invalid_request``, ``not_found``, ``access_denied``,
    ``conflict``, ``temporarily_unavailable``) with the reason: a result with an error is
    not in the log. One refused result does not stop the others.
    """
    require(who, "enforcement", "operator")
    out: list[dict[str, Any] | None] = []
    todo: list[tuple[int, dict[str, Any], str]] = []
    state = svc.log.state()
    for i, item in enumerate(body.results):
        given = sorted(item.model_fields_set - {"access"})
        nulls = [n for n in given if getattr(item, n) is None]
        answered = state.access(item.access)
        refusal = None
        if nulls:
            refusal = ("invalid_request", f"{nulls[0]}: must not be null (leave it out)")
        elif len(given) != 1:
            refusal = ("invalid_request", "give exactly one of upstream_status and failure")
        elif answered is None:
            refusal = ("not_found", f"no access entry {item.access}")
        elif who.role == "enforcement" and who.name != answered.enforcement:
            refusal = ("access_denied", "that access was asked for by another enforcement point")
        if refusal is not None:
            out.append({"error": refusal[0], "error_description": refusal[1]})
            continue
        outcome = {"access": item.access, given[0]: getattr(item, given[0])}
        todo.append((i, outcome, answered.enforcement))
        out.append(None)
    by_point: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, outcome, point in todo:
        by_point.setdefault(point, []).append((i, outcome))
    for point, items in by_point.items():
        done = record_results(svc.log, [o for _, o in items], point)
        for (i, _), recorded in zip(items, done, strict=True):
            if isinstance(recorded, RejectedEntry):
                code = "conflict" if recorded.check == "duplicate-result" else "invalid_request"
                out[i] = {"error": code, "error_description": str(recorded)}
            elif isinstance(recorded, Exception):  # not in the log (ledger.log._outcome)
                out[i] = {"error": "temporarily_unavailable", "error_description": str(recorded)}
            else:
                if not recorded.existing:
                    svc.metrics.appends.labels(kind="result").inc()
                out[i] = recorded.to_json()
    return {"results": out}
