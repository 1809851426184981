"""Field-level errors of prediction request bodies (the CLI's texts), shared by the JSON API and the page,
and their redacted form for the audit trail (:func:`redacted_errors`)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from response_model.consistency import request_problems
from response_model.privacy import PseudonymKeyError, pseudonymise
from response_model.schema import PatientRecord, field_errors, odd_code_points, shown
from response_model.service.audit import input_digest
from response_model.service.models import MAX_EXACT_INT, BatchRequest, PredictionRequest

if TYPE_CHECKING:  # the bundle module imports MLflow, which the CLI's key and outcome commands do not need
    from response_model.modeling.bundle import ResponseModelBundle

#: what stands in the audit trail for the value of an identifier field
REDACTED_ID = "<patient_id redacted>"

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


def number_errors(value: Any, path: str = "") -> list[dict[str, Any]]:
    """Errors of the whole numbers in a JSON value beyond ±:data:`MAX_EXACT_INT` (hundreds of digits in a
    count field would otherwise fail deep in validation or scoring), each naming its dotted path."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) <= MAX_EXACT_INT:
            return []
        field = path or "body"
        digits = len(str(abs(value))) if abs(value).bit_length() < 13000 else "thousands of"
        return [{"field": field, "value": None,
                 "message": f"{field}: a whole number of {digits} digits; expected a number between "
                            f"-{MAX_EXACT_INT} and {MAX_EXACT_INT}"}]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    errors: list[dict[str, Any]] = []
    for key, child in items:
        errors += number_errors(child, f"{path}.{key}" if path else str(key))
    return errors


def request_errors(body: Any) -> list[dict[str, Any]]:
    """Field-level errors of a prediction request body, with the CLI's texts for the patient record
    (its consistency rules included) and the request's own consistency rules."""
    if not isinstance(body, dict):
        return [{"field": "body", "value": None,
                 "message": f"body: expected a JSON object with 'patient', not {type(body).__name__}"}]
    errors = number_errors(body)
    if errors:  # checked first: pydantic would fail on them with an OverflowError, not a field error
        return errors
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
    # the request's own rules (configs/consistency.yaml: two patient ids); ids are never echoed
    errors += [{"field": p.field, "value": None, "message": p.message} for p in request_problems(body)]
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


# -- redaction for the audit trail ------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models named in a field's annotation (``list[Alteration] | None`` → [Alteration])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, (types.UnionType, types.GenericAlias)) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


@functools.cache
def known_names() -> frozenset[str]:
    """Every field name of a prediction request, at any depth, and the names errors use for a body's parts
    (``patient_json``: the page's pasted record)."""
    names = {"body", "record", "<key>", "patient_json"}
    todo: list[type[BaseModel]] = [PredictionRequest, BatchRequest, PatientRecord]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.update({name, info.alias} - {None})
            todo += _models_in(info.annotation)
    return frozenset(names)


def redacted_name(text: str, what: str = "field name") -> str:
    """A bounded stand-in for a name that may be an identifier: its length and keyed digest, e.g.
    ``<field name: 9 characters, 3fa2c1d0>`` (the same name always gives the same stand-in)."""
    try:
        digest = pseudonymise(text)[:8] if text.strip() else "blank"
    except PseudonymKeyError:  # pragma: no cover - the service does not start without a key
        digest = "no key"
    return f"<{what}: {len(text)} characters, {digest}>"


def _is_id_field(segment: str) -> bool:
    return segment == "patient_id"


def _without(message: str, stand_ins: dict[str, str]) -> str:
    """``message`` with every whole occurrence of a key of ``stand_ins`` replaced by its value, in one pass."""
    raws = sorted((raw for raw in stand_ins if raw), key=len, reverse=True)
    if not raws:
        return message
    pattern = "|".join(rf"(?<!\w){re.escape(raw)}(?!\w)" for raw in raws)
    return re.sub(pattern, lambda m: stand_ins[m.group(0)], message)


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _scrubbed(value: Any) -> Any:
    """A JSON value with identifier values and unknown field names (and their values) redacted."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            key = str(key)
            if _is_id_field(key):
                out[key] = None if child is None else REDACTED_ID
            elif key not in known_names():
                out[redacted_name(key)] = f"<{type(child).__name__} redacted>"
            else:
                out[key] = _scrubbed(child)
        return out
    if isinstance(value, list):
        return [_scrubbed(child) for child in value]
    return value


def redacted_error(error: dict[str, Any]) -> dict[str, Any]:
    """The field-level ``error`` as the audit trail stores it: the value of an identifier field replaced by
    :data:`REDACTED_ID` (in the message too), an unknown field name (it might be an identifier, e.g.
    ``{"MRN-12345": 1}``) by :func:`redacted_name` and its value by its type."""
    field, value, message = str(error.get("field", "")), error.get("value"), str(error.get("message", ""))
    segments = field.split(".")
    unknown = [s for s in segments if not s.isdigit() and s not in known_names()]
    stand_ins = {s: redacted_name(s) for s in unknown}
    if any(_is_id_field(s) for s in segments) and value is not None:
        raws = {repr(value), json.dumps(value, default=str), str(value) if isinstance(value, str) else ""}
        stand_ins.update(dict.fromkeys(raws - {""}, REDACTED_ID))
        value = REDACTED_ID
    if any(_is_id_field(s) for s in segments):  # any quoted text of an id's error may be an id (e.g. the other one)
        message = _QUOTED.sub(REDACTED_ID, message)
    elif unknown:
        value = None if value is None else f"<{type(value).__name__} redacted>"
    else:
        value = _scrubbed(value)
    field = ".".join(stand_ins.get(s, s) for s in segments) if unknown else field
    return {**error, "field": field, "value": value, "message": _without(message, stand_ins)}


def redacted_errors(errors: Any) -> Any:
    """:func:`redacted_error` of each error of a list (anything else is returned as it is)."""
    if not isinstance(errors, list):
        return errors
    return [redacted_error(e) if isinstance(e, dict) else e for e in errors]


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
