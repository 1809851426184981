"""What the service answered, read back from the audit trail for monitoring: accepted predictions
(time, model version, pseudonym, the scored inputs and every regimen × outcome probability) and the
prediction requests refused, by the field they were refused for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from response_model.monitoring.profile import input_frame
from response_model.regimens import load_catalogue
from response_model.schema import INPUT_FIELDS, OUTCOMES
from response_model.service.audit import AuditTrail
from response_model.service.audit.readers import TrailFilter

_PAGE = 1_000


@dataclass(frozen=True)
class Served:
    """Served predictions of a window. ``requests``: one row per accepted prediction (seq, time,
    prediction_id, patient_pseudonym, model_version, has_inputs); ``inputs``: its monitored columns
    (same index; all missing for records written before inputs were stored); ``probabilities``: one
    row per prediction × regimen × outcome (prediction_id, patient_pseudonym, time, regimen,
    regimen_class, outcome, probability); ``rejected``: one row per prediction request refused (422)
    × field its errors name (time, field; ``"(any)"`` once per request)."""

    requests: pd.DataFrame
    inputs: pd.DataFrame
    probabilities: pd.DataFrame
    rejected: pd.DataFrame


def _entries(trail: AuditTrail, flt: TrailFilter):
    """Every prediction record ``flt`` selects, oldest first, in pages (no explanations read)."""
    after = None
    while True:
        page = trail.select(flt, after_seq=after, kind="prediction", limit=_PAGE, explanations=False)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].seq


def _probability_rows(entry: Any, classes: dict[str, str]) -> list[dict[str, Any]]:
    """The probabilities of one accepted record's outputs (withheld regimens, without one, left out)."""
    rows = []
    for regimen, item in ((entry.outputs or {}).get("regimens") or {}).items():
        for outcome in OUTCOMES:
            p = (item.get(outcome) or {}).get("probability") if isinstance(item, dict) else None
            if p is not None:
                rows.append({"prediction_id": entry.prediction_id, "patient_pseudonym": entry.patient_pseudonym,
                             "time": entry.time, "regimen": regimen,
                             "regimen_class": classes.get(regimen), "outcome": outcome, "probability": float(p)})
    return rows


def _refused_fields(detail: Any) -> set[str]:
    """The record fields a rejection's errors name (``patient.albumin`` → ``albumin``)."""
    fields = set()
    for error in (detail or {}).get("errors") or [] if isinstance(detail, dict) else []:
        parts = str(error.get("field", "")).split(".") if isinstance(error, dict) else []
        known = [p for p in parts if p in INPUT_FIELDS]
        fields.add(known[-1] if known else "(other)")
    return fields


def served(trail: AuditTrail, *, since: str | None = None, until: str | None = None,
           model_version: str | None = None) -> Served:
    """The :class:`Served` predictions of ``since <= time < until`` (UTC text of TIME_FORMAT; None:
    unbounded) for ``model_version`` (None: every version)."""
    classes = {name: r.regimen_class for name, r in load_catalogue().items()}
    requests, inputs, probabilities = [], [], []
    for entry in _entries(trail, TrailFilter(from_=since, to=until, model_version=model_version, status="accepted")):
        if entry.prediction_id is None:  # e.g. the record of an empty batch
            continue
        requests.append({"seq": entry.seq, "time": entry.time, "prediction_id": entry.prediction_id,
                         "patient_pseudonym": entry.patient_pseudonym, "model_version": entry.model_version,
                         "has_inputs": isinstance(entry.inputs, dict)})
        inputs.append(entry.inputs if isinstance(entry.inputs, dict) else None)
        probabilities.extend(_probability_rows(entry, classes))
    rejected = []
    for entry in _entries(trail, TrailFilter(from_=since, to=until, model_version=model_version, status="rejected")):
        if entry.http_status == 422:
            rejected.extend({"time": entry.time, "field": f} for f in ["(any)", *sorted(_refused_fields(entry.detail))])
    columns = ["prediction_id", "patient_pseudonym", "time", "regimen", "regimen_class", "outcome", "probability"]
    return Served(requests=pd.DataFrame(requests, columns=["seq", "time", "prediction_id", "patient_pseudonym",
                                                           "model_version", "has_inputs"]),
                  inputs=input_frame(inputs), probabilities=pd.DataFrame(probabilities, columns=columns),
                  rejected=pd.DataFrame(rejected, columns=["time", "field"]))


def recorded_outcomes(trail: AuditTrail) -> pd.DataFrame | None:
    """The current outcome of every prediction recorded in the trail (POST /v1/outcomes; corrections
    applied), or None where this version of the service records no outcomes."""
    try:
        from response_model.service.audit.outcomes import current_outcomes
    except ImportError:  # outcomes are recorded by the service from issue 16 point 1 on
        return None
    return current_outcomes(trail)
