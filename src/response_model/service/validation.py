"""Field-level errors of prediction request bodies (the CLI's texts), shared by the JSON API and the page."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from response_model.modeling.bundle import ResponseModelBundle
from response_model.schema import PatientRecord, field_errors, odd_code_points, shown
from response_model.service.audit import input_digest
from response_model.service.models import PredictionRequest

#: unknown gene symbols of one request whose errors suggest the symbols meant (each search costs up to a
#: millisecond; the others are refused without suggestions): callers wrap request_errors in
#: ``genes.suggestions_at_most(SUGGESTED_PER_REQUEST)``
SUGGESTED_PER_REQUEST = 3


def regimen_errors(bundle: ResponseModelBundle, regimens: Sequence[str] | None) -> list[dict[str, Any]]:
    """Return the errors of a request's ``regimens`` (empty list, or names this model does not score)."""
    if regimens is None:
        return []
    errors = []
    allowed = [r.name for r in bundle.candidate_regimens()]
    if not regimens:
        errors.append({"field": "regimens", "value": [],
                       "message": "regimens: empty list; give null for every candidate"})
    for i, name in enumerate(regimens):
        odd = odd_code_points(name)
        if odd is not None:  # a look-alike would read, on screen, as the regimen it imitates
            errors.append({"field": f"regimens.{i}", "value": shown(name),
                           "message": f"regimens: {shown(name)} contains {odd}; expected a regimen id in ASCII, "
                                      f"one of {', '.join(allowed)}"})
        elif name not in allowed:
            errors.append({"field": f"regimens.{i}", "value": name,
                           "message": f"regimens: {name!r} is not a regimen this model scores; expected one of "
                                      f"{', '.join(allowed)}"})
    return errors


def request_errors(body: Any) -> list[dict[str, Any]]:
    """Field-level errors of a prediction request body, with the CLI's texts for the patient record."""
    if not isinstance(body, dict):
        return [{"field": "body", "value": None,
                 "message": f"body: expected a JSON object with 'patient', not {type(body).__name__}"}]
    errors: list[dict[str, Any]] = []
    if "patient" not in body:
        errors.append({"field": "patient", "value": None, "message": "patient: required field is missing"})
    else:
        try:
            PatientRecord.model_validate(body["patient"])
        except ValidationError as error:
            for e in field_errors(error):
                value = None if e.message.endswith("required field is missing") else jsonable(e.value)
                errors.append({"field": f"patient.{e.field}" if e.field != "record" else "patient",
                               "value": value, "message": e.message})
    try:
        PredictionRequest.model_validate({**body, "patient": {"age": 60, "sex": "female"}})
    except ValidationError as error:
        for e in field_errors(error, ", ".join(PredictionRequest.model_fields)):
            errors.append({"field": e.field, "value": jsonable(e.value), "message": e.message})
    return errors


def jsonable(value: Any) -> Any:
    """Return ``value`` if it is valid JSON as it is, else its repr (an error may echo any input)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def raw_patient_id(body: Any) -> str | None:
    """The raw patient id of a request body (top level, else inside the patient), or None."""
    if not isinstance(body, dict):
        return None
    raw = body.get("patient_id")
    if not raw and isinstance(body.get("patient"), dict):
        raw = body["patient"].get("patient_id")
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


async def body_json(request: Request) -> tuple[Any, str | None]:
    """(parsed body or None, input digest or None); never raises."""
    try:
        raw = await request.body()
    except Exception:  # noqa: BLE001 - the stream may be gone; audit what we can
        return None, None
    if not raw:
        return None, None
    try:
        body = json.loads(raw)
        return body, input_digest(body)
    except (ValueError, Exception):  # noqa: BLE001 - not JSON (or NaN): digest the bytes
        return None, hashlib.sha256(raw).hexdigest()
