"""The auditors' endpoints: read the audit trail of predictions (roles auditor and admin).

* ``GET /v1/predictions/{prediction_id}`` — one stored record: time, key id and role, model name and
  version, input digest, patient pseudonym, outputs (probabilities, intervals, bands, ranks) and, per
  regimen and outcome, the explanation's scale, base value and the SHAP value of every feature; with
  a per-record integrity check (its hash and its links to both neighbours in the chain).
* ``GET /v1/predictions`` — the prediction records in a time window (``from`` ≤ time < ``to``,
  ISO 8601 with a zone), optionally of one model version, regimen or status, oldest first, paged with
  a stable cursor (``page_token`` = the sequence number of the last record of the previous page, so
  records appended meanwhile never shift a page).
* ``GET /v1/predictions:export`` — the same filter as a flat CSV or Parquet file, streamed: one row
  per prediction × regimen × outcome, SHAP values in wide ``shap.<feature>`` columns
  (:data:`~response_model.service.audit.EXPORT_COLUMNS`); ``response-model audit export`` writes the
  same file from the command line.

Reading the trail is itself recorded, **in the same hash chain**, as a record whose endpoint is the
``GET …`` route (records of prediction requests are the ``POST …`` ones, and only they are listed
or exported): who read what (the prediction id, or the filter and the number of records) and when,
including refused attempts (401, 403, 404, 422). One chain means one verification
(``response-model audit verify``) covers both, and an access entry cannot be removed without
breaking the chain any more than a prediction can. The cost is that every read is a small write
(one append under the trail's write lock), so the trail needs a writable database.
A prediction id typed in the path that is not a well-formed id is not stored (it might be a patient's
record number typed in the wrong place): the access record says only that it was malformed.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from response_model.service.audit import (
    EXPORT_COLUMN_DOC,
    EXPORT_FORMATS,
    MAX_QUERY_LIMIT,
    AuditEntry,
    AuditTrail,
    FilterError,
    TrailFilter,
    parse_filter,
    start_export,
)
from response_model.service.deps import AuditorKey, ServiceDep, TrailDep
from response_model.service.holder import LoadedModel
from response_model.service.keys import KeyInfo
from response_model.service.outcome_models import PredictionOutcomes
from response_model.service.outcomes import outcomes_of
from response_model.service.recording import record_access

DEFAULT_PAGE_SIZE = 100
ENDPOINT_GET = "GET /v1/predictions/{prediction_id}"
ENDPOINT_LIST = "GET /v1/predictions"
ENDPOINT_EXPORT = "GET /v1/predictions:export"
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
INTEGRITY_NOTE = ("checks this record's own hash and its links to the records before and after it; "
                  "`response-model audit verify` recomputes the whole chain")

router = APIRouter(tags=["audit"])


# -- response models (they document the OpenAPI schema) ------------------------------------------

_EXAMPLE_ID = "3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19"
_EXAMPLE_OUTPUTS = {
    "genomics": "genotyped", "genomic_tests": [], "out_of_distribution_flagged": False,
    "regimens": {"atezolizumab_bevacizumab": {
        "rank": 1, "eligible": True, "ineligible_reason": None,
        "objective_response": {"probability": 0.3121, "interval": {"lower": 0.2702, "upper": 0.354},
                               "band": "moderate"},
        "primary_resistance": {"probability": 0.2433, "interval": {"lower": 0.1978, "upper": 0.2888}, "band": "low"},
    }},
}
_EXAMPLE_SUMMARY = {
    "seq": 1042, "time": "2026-11-27T09:41:07.512334Z", "prediction_id": _EXAMPLE_ID, "status": "accepted",
    "http_status": 200, "endpoint": "POST /v1/predictions", "key_id": "5c0e9a1b7d3f", "role": "clinician",
    "model_name": "hcc-response", "model_version": "3",
    "input_digest": "9b1d4c0f6e2a8d7b5c3e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c",
    "patient_pseudonym": "p_4e1c9b7a2f0d8e6c5b3a1f9e7d5c3b1a", "regimens": ["atezolizumab_bevacizumab"],
    "outputs": _EXAMPLE_OUTPUTS, "detail": None,
    "hash": "c4a1f0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1",
    "href": f"/v1/predictions/{_EXAMPLE_ID}",
}
_EXAMPLE_RECORD = {
    **_EXAMPLE_SUMMARY,
    "prev_hash": "a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8",
    "explanations": {"atezolizumab_bevacizumab": {"objective_response": {
        "scale": "log-odds (LightGBM part)", "base_value": -0.9512,
        "values": {"wnt_activation": -0.4127, "albumin": 0.2210, "pdl1_cps": 0.1384, "afp_log10": -0.0903,
                   "nlr": 0.0411, "tmb": 0.0},
        "top": [{"feature": "wnt_activation", "field": "alterations", "value": "not altered", "unit": None,
                 "display": "not altered", "contribution": -0.4127, "scale": "log-odds (LightGBM part)",
                 "direction": "lowers the probability of response"}],
    }}},
    "label": "research use — trained on simulated data",
    "integrity": {"hash_intact": True, "linked_to_previous": True, "linked_to_next": True, "ok": True,
                  "note": INTEGRITY_NOTE},
    "outcomes": {"current": [], "history": []},
}


class RecordSummary(BaseModel):
    """A stored record of a prediction request, without its explanations."""

    seq: int = Field(description="Sequence number in the hash chain (1, 2, 3, … without gaps)")
    time: str = Field(description="UTC time of the request (ISO 8601, microseconds)")
    prediction_id: str | None = Field(description="Id returned to the caller; null for a rejected request")
    status: str = Field(description="accepted or rejected")
    http_status: int
    endpoint: str
    key_id: str | None = Field(description="The API key that asked (public id, never the token)")
    role: str | None
    model_name: str | None
    model_version: str | None
    input_digest: str | None = Field(description="SHA-256 of the request body's canonical JSON "
                                                  "(the body is not stored)")
    patient_pseudonym: str | None = Field(description="Keyed hash of the patient id; the raw id is never stored")
    regimens: list[str] | None
    outputs: Any = Field(description="What the caller was told: per regimen rank, eligibility, probability, "
                                     "interval and band per outcome; genomics; out-of-distribution flag")
    detail: Any = Field(description="Why a request was rejected (field-level errors); for an accepted one, "
                                    "the warnings its answer carried ({\"warnings\": [...]}, null when none)")
    hash: str
    href: str | None = Field(description="Where the whole record is (null for a rejected request)")


class Integrity(BaseModel):
    hash_intact: bool = Field(description="The record's hash recomputes from its content")
    linked_to_previous: bool = Field(description="prev_hash is the previous record's hash")
    linked_to_next: bool | None = Field(description="The next record points back to this one (null: none yet)")
    ok: bool
    note: str


class PredictionRecord(RecordSummary):
    """The whole stored record of one prediction, with every feature's SHAP value."""

    model_config = {"json_schema_extra": {"examples": [_EXAMPLE_RECORD]}}

    prev_hash: str
    explanations: Any = Field(
        description="explanations[regimen][outcome]: `scale`, `base_value` and `values` ({feature: SHAP value} "
                    "for every feature of the model; base_value + the sum of values = the model's output on "
                    "that scale) and `top` (the contributions shown to the clinician)")
    label: str | None = Field(description="Research-use label of the model, when the record's model is the one "
                                          "loaded now")
    integrity: Integrity
    outcomes: PredictionOutcomes = Field(description="What happened after the prediction (POST /v1/outcomes): "
                                                     "the current outcome per regimen and every version")


class RecordPage(BaseModel):
    """One page of prediction records, oldest first."""

    model_config = {"json_schema_extra": {"examples": [{
        "records": [_EXAMPLE_SUMMARY], "page_size": 100, "next_page_token": "1042",
        "filter": {"from": "2026-11-01T00:00:00.000000Z", "regimen": "atezolizumab_bevacizumab"}}]}}

    records: list[RecordSummary]
    page_size: int
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null on the last page")
    filter: dict[str, str] = Field(description="The conditions applied (times normalised to UTC)")


class FieldError(BaseModel):
    field: str
    value: Any = None
    message: str


class Errors(BaseModel):
    errors: list[FieldError]


_AUTH_DOC = {401: {"description": "No or bad API key"},
             403: {"description": "Role not allowed: only auditor and admin keys read the trail"},
             422: {"model": Errors, "description": "Bad query parameters, each named with the value given"}}


# -- the access log (a refused key is recorded by deps.auditor_key) ------------------------------------


def _filter_or_422(trail: AuditTrail, key: KeyInfo, endpoint: str, **values: str | None) -> TrailFilter | JSONResponse:
    """Return the parsed filter, or the 422 answer naming each bad value (the refusal recorded)."""
    try:
        return parse_filter(**values)
    except FilterError as exc:
        record_access(trail, key, endpoint, 422, {"access": "refused", "errors": exc.errors})
        return JSONResponse({"errors": exc.errors}, status_code=422)


def _label(current: LoadedModel | None, entry: AuditEntry) -> str | None:
    """Return the research-use label of the model of ``entry`` if it is the model in service, else None."""
    if current is None or (current.name, current.version) != (entry.model_name, entry.model_version):
        return None
    return current.bundle.metadata.get("label")


def _summary(entry: AuditEntry) -> dict[str, Any]:
    data = entry.to_dict()
    return {**{name: data[name] for name in RecordSummary.model_fields if name in data},
            "href": f"/v1/predictions/{entry.prediction_id}" if entry.prediction_id else None}


# -- query parameters --------------------------------------------------------------------------------

MAX_SEQ = 2**63 - 1  # the largest sequence number a BIGINT column holds
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() and int() also take '١٢' or '²'


def _whole_number(field: str, text: str | None, low: int, high: int, expected: str,
                  errors: list[dict[str, Any]]) -> int | None:
    """The whole number of a query parameter (None when absent); a bad one adds its error to ``errors``."""
    if text is None or not text.strip():
        return None
    if _DIGITS.fullmatch(text.strip()) and low <= int(text.strip()) <= high:
        return int(text.strip())
    shown = text if len(text) <= 40 else f"{text[:40]}… ({len(text)} characters)"
    errors.append({"field": field, "value": shown, "message": f"{field}: {shown!r}; expected {expected}"})
    return None


_FROM = Query(None, alias="from", description="Start of the window, inclusive: ISO 8601 with a zone "
              "(`2026-11-27T09:00:00Z`, `…+01:00`) or a date (00:00 UTC)",
              openapi_examples={"utc": {"value": "2026-11-01T00:00:00Z"}, "date": {"value": "2026-11-01"}})
_TO = Query(None, description="End of the window, exclusive (same forms as `from`)",
            openapi_examples={"utc": {"value": "2026-12-01T00:00:00Z"}})
_VERSION = Query(None, description="Only records made by this registered model version",
                 openapi_examples={"version": {"value": "3"}})
_REGIMEN = Query(None, description="Only predictions covering this regimen id (configs/regimens.yaml)",
                 openapi_examples={"atezo-bev": {"value": "atezolizumab_bevacizumab"}})
_STATUS = Query(None, description="accepted or rejected (default: both)",
                openapi_examples={"accepted": {"value": "accepted"}})


# -- endpoints ---------------------------------------------------------------------------------------


@router.get("/v1/predictions:export", response_class=StreamingResponse,
            responses={200: {"description": "The file, streamed. One row per prediction × regimen × outcome "
                                            "(a rejected request: one row). Columns: "
                                            + "; ".join(f"`{k}`: {v}" for k, v in EXPORT_COLUMN_DOC.items()),
                             "content": {MEDIA_TYPES["csv"]: {"example": "seq,time,prediction_id,status,…,"
                                                                         "shap.albumin,…\n"},
                                         MEDIA_TYPES["parquet"]: {}}},
                       **_AUTH_DOC},
            summary="Export the prediction records of a filter as CSV or Parquet")
def export_predictions(key: AuditorKey, trail: TrailDep,
                       from_: str | None = _FROM, to: str | None = _TO, model_version: str | None = _VERSION,
                       regimen: str | None = _REGIMEN, status: str | None = _STATUS,
                       format: str | None = Query("csv", description="csv or parquet",
                                                  openapi_examples={"csv": {"value": "csv"},
                                                                    "parquet": {"value": "parquet"}})):
    """The same filter as `GET /v1/predictions`, as one flat table for pandas or a spreadsheet.

    The SHAP values are wide columns `shap.<feature>` (empty where the feature is not an input of the
    model that scored that regimen and outcome); `base_value` + their sum = the model's output on
    `explanation_scale`. Only records that exist when the export starts are included.
    `response-model audit export` writes the same file.
    """
    flt = _filter_or_422(trail, key, ENDPOINT_EXPORT, from_=from_, to=to, model_version=model_version,
                         regimen=regimen, status=status)
    if isinstance(flt, JSONResponse):
        return flt
    fmt = (format or "csv").strip().lower()
    if fmt not in EXPORT_FORMATS:
        errors = [{"field": "format", "value": format,
                   "message": f"format: {format!r}; expected one of {', '.join(EXPORT_FORMATS)}"}]
        record_access(trail, key, ENDPOINT_EXPORT, 422, {"access": "refused", "errors": errors})
        return JSONResponse({"errors": errors}, status_code=422)
    export = start_export(trail, flt)
    record_access(trail, key, ENDPOINT_EXPORT, 200,
                   {"access": "export", "filter": flt.as_dict(), "format": fmt, "n_records": export.n_records,
                    "through_seq": export.through_seq})
    filename = f"predictions-through-{export.through_seq}.{fmt}"
    return StreamingResponse(iter(export.chunks(fmt)), media_type=MEDIA_TYPES[fmt],
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      "X-Records": str(export.n_records)})


@router.get("/v1/predictions/{prediction_id}", response_model=PredictionRecord,
            responses={404: {"description": "No prediction with that id"}, **_AUTH_DOC},
            summary="One stored prediction with every feature's SHAP value")
def get_prediction(key: AuditorKey, trail: TrailDep, state: ServiceDep,
                   prediction_id: str = Path(description="The prediction_id returned by POST /v1/predictions",
                                             openapi_examples={"id": {"value": _EXAMPLE_ID}})):
    """The audit record of one prediction, as stored, with a cheap integrity check of that record."""
    try:
        wanted = str(uuid.UUID(prediction_id))
    except ValueError:
        message = "prediction_id: not a prediction id (a UUID such as 3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19)"
        # the value itself is not stored: it might be a patient's record number typed in the wrong place
        record_access(trail, key, ENDPOINT_GET, 422, {"access": "refused", "error": "malformed prediction id"})
        return JSONResponse({"errors": [{"field": "prediction_id", "value": None, "message": message}]},
                            status_code=422)
    entry = trail.get(wanted)
    if entry is None:
        record_access(trail, key, ENDPOINT_GET, 404, {"access": "read", "prediction_id": wanted, "found": False})
        return JSONResponse({"detail": f"no prediction with id {wanted} in the audit trail"}, status_code=404)
    check = trail.check_record(entry.seq)
    outcomes = outcomes_of(trail, wanted)
    record_access(trail, key, ENDPOINT_GET, 200,
                   {"access": "read", "prediction_id": wanted, "found": True, "seq": entry.seq})
    return {**entry.to_dict(), "href": f"/v1/predictions/{wanted}", "label": _label(state.holder.current, entry),
            "outcomes": outcomes,
            "integrity": {"hash_intact": check.hash_intact, "linked_to_previous": check.linked_to_previous,
                          "linked_to_next": check.linked_to_next, "ok": check.ok, "note": INTEGRITY_NOTE}}


@router.get("/v1/predictions", response_model=RecordPage, responses=_AUTH_DOC,
            summary="Page through the prediction records of a time window")
def list_predictions(key: AuditorKey, trail: TrailDep,
                     from_: str | None = _FROM, to: str | None = _TO, model_version: str | None = _VERSION,
                     regimen: str | None = _REGIMEN, status: str | None = _STATUS,
                     page_size: str | None = Query(None, description=f"Records per page, 1–{MAX_QUERY_LIMIT} "
                                                   f"(default {DEFAULT_PAGE_SIZE})",
                                                   openapi_examples={"small": {"value": "50"}}),
                     page_token: str | None = Query(None, description="next_page_token of the previous page")):
    """Prediction records (accepted and rejected requests), oldest first; reads of the trail are not listed.

    Paging is by sequence number: a page never repeats or skips a record, even while predictions are
    being made. The full record of each (with SHAP values) is at its `href`.
    """
    errors = []
    size = _whole_number("page_size", page_size, 1, MAX_QUERY_LIMIT, f"a whole number from 1 to {MAX_QUERY_LIMIT}",
                         errors)
    size = DEFAULT_PAGE_SIZE if size is None else size
    after = _whole_number("page_token", page_token, 0, MAX_SEQ, "a token from next_page_token", errors) or 0
    try:
        flt = parse_filter(from_=from_, to=to, model_version=model_version, regimen=regimen, status=status)
    except FilterError as exc:
        errors = exc.errors + errors
    if errors:
        record_access(trail, key, ENDPOINT_LIST, 422, {"access": "refused", "errors": errors})
        return JSONResponse({"errors": errors}, status_code=422)
    # one more than asked: tells whether there is a next page without a count query
    entries = trail.select(flt, after_seq=after, kind="prediction", limit=min(size + 1, MAX_QUERY_LIMIT),
                           explanations=False)
    more = len(entries) > size
    if size == MAX_QUERY_LIMIT and not more and len(entries) == size:
        more = bool(trail.select(flt, after_seq=entries[-1].seq, kind="prediction", limit=1, explanations=False))
    entries = entries[:size]
    record_access(trail, key, ENDPOINT_LIST, 200,
                   {"access": "list", "filter": flt.as_dict(), "after_seq": after, "n_records": len(entries)})
    return {"records": [_summary(e) for e in entries], "page_size": size,
            "next_page_token": str(entries[-1].seq) if more and entries else None, "filter": flt.as_dict()}
