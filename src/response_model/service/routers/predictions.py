"""``POST /v1/predictions`` and ``POST /v1/predictions:batch`` (clinician, admin); each request audited."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from response_model.service import prediction
from response_model.service.deps import ClinicianKey, CurrentModel, TrailDep
from response_model.service.models import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    PredictionRequest,
    PredictionResponse,
)

router = APIRouter(tags=["predictions"])
# the route functions' names make the operation ids of /openapi.json: keep them

RESPONSES_DOC: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or bad API key"}, 403: {"description": "Wrong role"},
    413: {"model": ErrorResponse, "description": "Body larger than the limit (refused before parsing; "
                                                 "see response_model.service.guard)"},
    422: {"model": ErrorResponse, "description": "Field-level validation errors"},
}
BATCH_RESPONSES_DOC = {**RESPONSES_DOC, 413: {"model": ErrorResponse, "description": f"More than {MAX_BATCH} patients, "
                                              "or a body larger than the limit (refused before parsing)"}}


@router.post("/v1/predictions", response_model=PredictionResponse, responses=RESPONSES_DOC)
def predict(body: PredictionRequest, key: ClinicianKey, model: CurrentModel, trail: TrailDep) -> Response:
    """The estimated response of one patient to each candidate regimen, with explanations; 422 names each
    invalid field. The request is recorded in the audit trail before the answer is sent."""
    status, answer = prediction.predict_one(model, trail, body, key, prediction.SINGLE_ENDPOINT)
    if status != 200:
        return JSONResponse(answer, status_code=status)
    # The answer is built field for field as PredictionResponse (which documents it in the OpenAPI
    # schema): written by orjson directly instead of FastAPI's validation and encoding pass of the
    # response model, for the same JSON (tests check the answer is what that pass would send, and
    # the property-based run checks conformance to the schema)
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.post("/v1/predictions:batch", response_model=BatchResponse, responses=BATCH_RESPONSES_DOC)
def predict_batch(body: BatchRequest, key: ClinicianKey, model: CurrentModel, trail: TrailDep) -> Any:
    """One result per patient, in order: its prediction, or the errors of that row alone. Every row is
    recorded in the audit trail before the answer is sent."""
    status, answer = prediction.predict_batch(model, trail, body, key)
    return answer if status == 200 else JSONResponse(answer, status_code=status)
