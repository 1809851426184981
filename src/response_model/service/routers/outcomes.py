"""``POST /v1/outcomes`` and ``POST /v1/outcomes/batch`` (registrar, admin): what happened after a prediction;
``GET /v1/outcomes?prediction_id=…`` (auditor, admin): a prediction's outcomes and their history.

Every write and every read is a record of the hash-chained audit trail; the rules are
:mod:`response_model.service.outcomes`'s, the stored form :mod:`response_model.service.audit.outcomes`'s.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse

from response_model.service.audit.outcomes import OUTCOME_BATCH_ENDPOINT, OUTCOME_ENDPOINT
from response_model.service.auth import OUTCOME_ROLES
from response_model.service.deps import AuditorKey, RoleKey, TrailDep
from response_model.service.keys import KeyInfo
from response_model.service.models import ErrorResponse
from response_model.service.outcome_models import (
    EXAMPLE_OUTCOME,
    MAX_OUTCOME_BATCH,
    OutcomeAnswer,
    OutcomeBatchAnswer,
    OutcomeList,
    OutcomeRequest,
)
from response_model.service.outcomes import Caller, outcomes_of, record_outcomes
from response_model.service.recording import record_access

router = APIRouter(tags=["outcomes"])
RegistrarKey = Annotated[KeyInfo, Depends(RoleKey(*OUTCOME_ROLES))]
# the body is taken as parsed JSON and validated by service.outcomes, so that every refusal is audited with
# its errors; its schema is documented by _body_doc
OutcomeBody = Annotated[Any, Body(examples=[EXAMPLE_OUTCOME])]
BatchBody = Annotated[Any, Body()]
ENDPOINT_LIST = "GET /v1/outcomes"

_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or bad API key"}, 403: {"description": "Wrong role (registrar or admin only)"},
    413: {"model": ErrorResponse, "description": "Body larger than the limit, or more than "
                                                 f"{MAX_OUTCOME_BATCH} outcomes"},
    422: {"model": ErrorResponse, "description": "Field-level errors; nothing is stored"},
}


def _body_doc(batch: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that validates its body itself (so every refusal is its own):
    an OutcomeRequest, or ``{"outcomes": [OutcomeRequest, …]}``."""
    schema = OutcomeRequest.model_json_schema()
    if batch:
        schema = {"title": "OutcomeBatchRequest", "type": "object", "required": ["outcomes"],
                  "additionalProperties": False,
                  "properties": {"outcomes": {"type": "array", "maxItems": MAX_OUTCOME_BATCH, "items": schema,
                                              "description": f"Up to {MAX_OUTCOME_BATCH} outcomes; all stored, or "
                                                             "(any row bad) none"}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/v1/outcomes", status_code=201, response_model=OutcomeAnswer, responses=_REFUSALS,
             openapi_extra=_body_doc(batch=False), summary="Record what happened after a prediction")
def record_outcome(key: RegistrarKey, trail: TrailDep, body: OutcomeBody) -> Any:
    """Record one outcome (regimen started, best response, progression, death, follow-up) of a prediction;
    a correction names the outcome it replaces in `supersedes`. 422 names every invalid field."""
    status, answer = record_outcomes(trail, [body], Caller(OUTCOME_ENDPOINT, key.key_id, key.role), batch=False)
    return JSONResponse(answer, status_code=status)


@router.post("/v1/outcomes/batch", response_model=OutcomeBatchAnswer, responses=_REFUSALS,
             openapi_extra=_body_doc(batch=True), summary="Record up to 1,000 outcomes at once")
def record_outcome_batch(key: RegistrarKey, trail: TrailDep, body: BatchBody) -> Any:
    """Record several outcomes in one transaction — all of them, or (any row bad) none: the 422 names
    every bad row by its number (0-based) and field."""
    caller = Caller(OUTCOME_BATCH_ENDPOINT, key.key_id, key.role)
    rows = body.get("outcomes") if isinstance(body, dict) and set(body) == {"outcomes"} else None
    if not isinstance(rows, list):
        errors = [{"field": "body", "value": None,
                   "message": "body: expected {\"outcomes\": [...]}, a list of outcomes shaped like POST /v1/outcomes"}]
        record_access(trail, key, caller.endpoint, 422, {"errors": errors})
        return JSONResponse({"errors": errors}, status_code=422)
    if len(rows) > MAX_OUTCOME_BATCH:
        errors = [{"field": "outcomes", "value": None, "message": f"outcomes: {len(rows)} given; at most "
                                                                  f"{MAX_OUTCOME_BATCH} per request (split the batch)"}]
        record_access(trail, key, caller.endpoint, 413, {"errors": errors})
        return JSONResponse({"errors": errors}, status_code=413)
    status, answer = record_outcomes(trail, rows, caller, batch=True)
    return JSONResponse(answer, status_code=status)


@router.get("/v1/outcomes", response_model=OutcomeList,
            responses={401: {"description": "No or bad API key"}, 403: {"description": "Wrong role"},
                       422: {"model": ErrorResponse, "description": "prediction_id missing or not an id"}},
            summary="A prediction's outcomes: the current ones and every version")
def list_outcomes(key: AuditorKey, trail: TrailDep,
                  prediction_id: str | None = Query(None, description="The prediction's id")) -> Any:
    """The current outcome of each regimen of one prediction and every recorded version (corrections
    included), oldest first. The read is recorded in the audit trail."""
    try:
        wanted = str(uuid.UUID(prediction_id or ""))
    except ValueError:
        # not stored: a value in an id's place might be a patient's record number
        record_access(trail, key, ENDPOINT_LIST, 422, {"access": "refused", "error": "missing or malformed id"})
        message = ("prediction_id: required; expected a prediction id (a UUID such as "
                   "3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19)")
        return JSONResponse({"errors": [{"field": "prediction_id", "value": None, "message": message}]},
                            status_code=422)
    outcomes = outcomes_of(trail, wanted)
    record_access(trail, key, ENDPOINT_LIST, 200, {"access": "outcomes", "prediction_id": wanted,
                                                   "n_outcomes": len(outcomes["history"])})
    return {"prediction_id": wanted, **outcomes}
