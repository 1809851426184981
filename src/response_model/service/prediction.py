"""Scoring prediction requests and auditing each before it is answered (the JSON API and the page share it).

:func:`predict_one` answers one valid :class:`~response_model.service.models.PredictionRequest`;
:func:`predict_batch` a :class:`~response_model.service.models.BatchRequest`, row by row: rows that fail
validation are rejected on their own, the valid rows are scored in one call, and every row's record is
appended in one transaction. What an answer holds is :func:`~response_model.service.answers.predict_many`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from response_model.genes import suggestions_at_most
from response_model.monitoring.profile import record_inputs
from response_model.service.answers import audit_outputs, predict_many
from response_model.service.audit import AuditError, AuditTrail, RawIdentifierError, input_digest
from response_model.service.holder import LoadedModel
from response_model.service.keys import KeyInfo
from response_model.service.models import MAX_BATCH, BatchRequest, PredictionRequest
from response_model.service.recording import append, log_failure, record_rejected, record_server_failure
from response_model.service.validation import (
    SUGGESTED_PER_REQUEST,
    raw_patient_id,
    regimen_errors,
    request_errors,
)

log = logging.getLogger(__name__)

SINGLE_ENDPOINT = "POST /v1/predictions"
BATCH_ENDPOINT = "POST /v1/predictions:batch"
PREDICTION_ENDPOINTS = {"/v1/predictions": SINGLE_ENDPOINT, "/v1/predictions:batch": BATCH_ENDPOINT}
ECHOED_ID_MESSAGE = ("patient_id: the identifier also appears elsewhere in the prediction's audit record (its "
                     "output, the endpoint or the model name), so it could not be pseudonymised safely; use a "
                     "longer, unique identifier")
ECHOED_ID_ERRORS = [{"field": "patient_id", "value": None, "message": ECHOED_ID_MESSAGE}]


def _base(model: LoadedModel, key: KeyInfo, endpoint: str) -> dict[str, Any]:
    """Return the fields every audit record of a request shares: endpoint, caller and model."""
    return {"endpoint": endpoint, "key_id": key.key_id, "role": key.role,
            "model_name": model.name, "model_version": model.version}


def _accepted(response: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    """Return the fields of an accepted record of ``response`` (its outputs tagged with the batch ``index``;
    ``detail`` holds the answer's warnings, when it has any). The callers add ``inputs``, the scored record
    without its identifier (:func:`~response_model.monitoring.profile.record_inputs`), for drift monitoring."""
    outputs, explanations = audit_outputs(response)
    accepted = {"status": "accepted", "http_status": 200, "prediction_id": response["prediction_id"],
                "regimens": [it["regimen"] for it in response["regimens"]],
                "outputs": outputs if index is None else {"index": index, **outputs}, "explanations": explanations}
    if response["warnings"]:  # what the answer warned of (unusual values, implausible combinations)
        accepted["detail"] = {"warnings": response["warnings"]}
    return accepted


def predict_one(model: LoadedModel, trail: AuditTrail, body: PredictionRequest, key: KeyInfo,
                endpoint: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) of one valid prediction request, audited before it returns: 200 and the
    prediction, 422 and ``{"errors": [...]}``, or 500 and ``{"detail": ...}``."""
    base = {**_base(model, key, endpoint), "input_digest": input_digest(body.model_dump(mode="json")),
            "patient_id": body.patient_id or body.patient.patient_id}
    errors = regimen_errors(model.bundle, body.regimens)
    if errors:
        record_rejected(trail, {**base, "status": "rejected", "http_status": 422, "detail": {"errors": errors}})
        return 422, {"errors": errors}
    try:
        response = predict_many(model, [body])[0]
    except Exception as error:  # noqa: BLE001 - audited, then answered with a 500
        return 500, record_server_failure(trail, base, error)
    try:
        append(trail, [{**base, **_accepted(response), "inputs": record_inputs(body.patient)}])
    except RawIdentifierError:  # the raw id is echoed in the answer (or the record): refuse, audited
        record_rejected(trail, {**base, "status": "rejected", "http_status": 422,
                                "detail": {"errors": ECHOED_ID_ERRORS}})
        return 422, {"errors": ECHOED_ID_ERRORS}
    except AuditError as error:  # this record alone cannot be stored: its own 500, with a minimal record
        return 500, record_server_failure(trail, {**base, "patient_id": None}, error)
    return 200, response


# -- batches -------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """The rows of one batch request as they are judged: one result and one audit record per row."""

    base: dict[str, Any]
    results: list[dict[str, Any] | None]
    records: list[dict[str, Any]]
    valid: list[tuple[int, PredictionRequest]] = field(default_factory=list)


def _digest(item: Any) -> str | None:
    """Return the input digest of one batch row, or None when it has no canonical JSON form."""
    try:
        return input_digest(item)
    except Exception:  # noqa: BLE001 - not representable as canonical JSON
        return None


def _parsed_row(model: LoadedModel, item: Any) -> tuple[PredictionRequest | None, list[dict[str, Any]]]:
    """(the parsed request, []) of a valid batch row, or (None, its errors); a row that breaks validation
    itself is refused alone, with an error of that row."""
    try:
        errors = request_errors(item)
        if errors:
            return None, errors
        parsed = PredictionRequest.model_validate(item)
        errors = regimen_errors(model.bundle, parsed.regimens)
        return (None, errors) if errors else (parsed, [])
    except Exception as error:  # noqa: BLE001 - this row alone is refused, the others go on
        log_failure(log, "validating a batch row", error)
        return None, [{"field": "body", "value": None,
                       "message": f"body: this row could not be validated ({type(error).__name__}); check its values"}]


def _check_rows(model: LoadedModel, base: dict[str, Any], patients: list[Any]) -> _Batch:
    """Return the batch with every invalid row rejected (result and record) and the valid rows parsed."""
    batch = _Batch(base, [None] * len(patients), [{} for _ in patients])
    for index, item in enumerate(patients):
        digest = _digest(item)
        parsed, errors = _parsed_row(model, item)
        if parsed is None:
            batch.results[index] = {"index": index, "ok": False, "errors": errors}
            batch.records[index] = {**base, "status": "rejected", "http_status": 422, "input_digest": digest,
                                    "patient_id": raw_patient_id(item), "detail": {"index": index, "errors": errors}}
        else:
            batch.valid.append((index, parsed))
            batch.records[index] = {**base, "input_digest": digest,
                                    "patient_id": parsed.patient_id or parsed.patient.patient_id}
    return batch


def _score_rows(model: LoadedModel, batch: _Batch) -> None:
    """Score the valid rows in one call and fill in their results and accepted records; if that call
    fails, score them one by one, so that a row that cannot be scored fails alone (a 500 of that row)."""
    try:
        predictions = predict_many(model, [p for _, p in batch.valid]) if batch.valid else []
    except Exception:  # noqa: BLE001 - find the row(s) that fail, score the others
        predictions = None
    for position, (index, parsed) in enumerate(batch.valid):
        if predictions is not None:
            response = predictions[position]
        else:
            try:
                response = predict_many(model, [parsed])[0]
            except Exception as error:  # noqa: BLE001 - this row alone failed, audited as a 500
                log_failure(log, f"scoring batch row {index}", error)
                message = (f"the prediction of this row failed ({type(error).__name__}); "
                           "it was recorded in the audit trail")
                batch.results[index] = {"index": index, "ok": False, "errors": [
                    {"field": "body", "value": None, "message": message}]}
                batch.records[index].update({"status": "rejected", "http_status": 500,
                                             "detail": {"index": index, "error": message}})
                continue
        batch.records[index].update({**_accepted(response, index), "inputs": record_inputs(parsed.patient)})
        batch.results[index] = {"index": index, "ok": True, "prediction": response}


def _without_unstorable_ids(trail: AuditTrail, batch: _Batch) -> None:
    """Rewrite the rows whose raw patient id the trail refuses (it is echoed elsewhere in the record):
    an accepted row becomes a 422 rejection, like a single prediction echoing its id; a rejected row
    keeps its rejection without the id."""
    for index, record in enumerate(batch.records):
        try:
            trail.check(record)
            continue
        except RawIdentifierError:
            pass
        if record["status"] == "accepted":
            record = {**batch.base, "input_digest": record.get("input_digest"), "patient_id": record["patient_id"],
                      "status": "rejected", "http_status": 422, "detail": {"index": index, "errors": ECHOED_ID_ERRORS}}
            batch.results[index] = {"index": index, "ok": False, "errors": ECHOED_ID_ERRORS}
            try:
                trail.check(record)
            except RawIdentifierError:
                record["patient_id"] = None
        else:
            record = {**record, "patient_id": None}
        batch.records[index] = record


def _append_rows(trail: AuditTrail, batch: _Batch) -> None:
    """Append one record per row (an empty batch: one accepted record of zero rows), in one transaction."""
    if not batch.records:
        append(trail, [{**batch.base, "status": "accepted", "http_status": 200, "input_digest": input_digest([]),
                        "detail": {"rows": 0}}])
        return
    try:
        append(trail, batch.records)
    except RawIdentifierError:
        _without_unstorable_ids(trail, batch)
        append(trail, batch.records)


def predict_batch(model: LoadedModel, trail: AuditTrail, body: BatchRequest,
                  key: KeyInfo) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) of a batch request, every row audited before it returns: 200 and the
    per-row results (``n_ok``, ``n_rejected``, ``results``), 413 for more than :data:`MAX_BATCH`
    patients. A row that cannot be scored fails alone (its result an error, its record a 500); the
    others are scored."""
    base = _base(model, key, BATCH_ENDPOINT)
    if len(body.patients) > MAX_BATCH:
        message = f"patients: {len(body.patients)} given; at most {MAX_BATCH} per batch request"
        append(trail, [{**base, "status": "rejected", "http_status": 413,
                        "input_digest": input_digest(body.model_dump(mode="json")), "detail": {"error": message}}])
        return 413, {"errors": [{"field": "patients", "value": len(body.patients), "message": message}]}
    with suggestions_at_most(SUGGESTED_PER_REQUEST):  # per request, not per row: a batch's cost stays bounded
        batch = _check_rows(model, base, body.patients)
    _score_rows(model, batch)
    _append_rows(trail, batch)
    n_ok = sum(1 for r in batch.results if r and r["ok"])
    return 200, {"model_name": model.name, "model_version": model.version, "n_ok": n_ok,
                 "n_rejected": len(body.patients) - n_ok, "results": batch.results}
