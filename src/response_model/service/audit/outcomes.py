"""Outcomes in the audit trail: how a recorded outcome is stored, and :func:`current_outcomes`, the reader
that monitoring uses (issue 16 point 1).

An outcome — what happened to a patient after a prediction: the regimen actually started and when,
best overall response (RECIST 1.1 or mRECIST), progression, death or last follow-up — is one record of
the hash-chained trail, so that it is covered by the same MAC, checkpoints and ``audit verify`` as the
prediction it belongs to. No new column: the record's ``outputs`` field holds
``{"format": "outcome/1", "outcome": {…}}`` (:func:`outcome_record`), its ``prediction_id`` column the
prediction it belongs to, ``regimens`` ``[regimen]`` and ``model_name``/``model_version`` the
prediction's, so old records, their hashes and every older reader are unchanged.

Corrections are new records: an outcome with ``supersedes`` = an earlier ``outcome_id`` replaces it;
per (prediction, regimen) the *current* outcome is the newest one that no other outcome supersedes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from response_model.config import load_yaml
from response_model.service.audit.chain import _time_text, canonical_json
from response_model.service.audit.records import PREDICTION_REQUEST_ENDPOINTS, audit_records, parse_stored, side_blobs
from response_model.service.keys import parse_time

OUTCOME_ENDPOINT = "POST /v1/outcomes"
OUTCOME_BATCH_ENDPOINT = "POST /v1/outcomes/batch"
OUTCOME_IMPORT_ENDPOINT = "CLI outcomes import"
#: the endpoints whose accepted records hold an outcome
OUTCOME_WRITE_ENDPOINTS = (OUTCOME_ENDPOINT, OUTCOME_BATCH_ENDPOINT, OUTCOME_IMPORT_ENDPOINT)
OUTCOME_FORMAT = "outcome/1"
#: the fields of a stored outcome (``outputs["outcome"]``), in the order of the reader's columns
OUTCOME_FIELDS = ("outcome_id", "prediction_id", "patient_pseudonym", "regimen", "started", "start_date",
                  "best_response", "criteria", "response_date", "progression_date", "death_date",
                  "last_followup_date", "supersedes")
DATE_FIELDS = ("start_date", "response_date", "progression_date", "death_date", "last_followup_date")
BEST_RESPONSES = ("CR", "PR", "SD", "PD", "NE")
CRITERIA = ("RECIST 1.1", "mRECIST")
#: the reader's columns (one row per prediction × regimen with an outcome)
CURRENT_COLUMNS = ("prediction_id", "patient_pseudonym", "regimen", "model_name", "model_version", "predicted_at",
                   "probability_objective_response", "probability_primary_resistance", "outcome_id", "started",
                   "start_date", "best_response", "criteria", "objective_response", "primary_resistance",
                   "response_date", "progression_date", "death_date", "last_followup_date", "recorded_at",
                   "seq", "supersedes", "n_versions")
DAYS_PER_MONTH = 365.25 / 12


def outcome_definitions() -> dict[str, Any]:
    """``configs/outcomes.yaml``: ``{"objective_response": [CR, PR], "window_months": 6.0}``
    (hcc-evidence.md, "Response definitions")."""
    config = load_yaml("outcomes.yaml")
    return {"objective_response": tuple(config["objective_response"]),
            "window_months": float(config["primary_resistance"]["window_months"])}


def outcome_record(outcome: Mapping[str, Any], *, endpoint: str, key_id: str | None, role: str | None,
                   model_name: str | None, model_version: str | None) -> dict[str, Any]:
    """The audit record (for ``AuditTrail.append``) of one accepted outcome: ``outcome`` maps every name
    of :data:`OUTCOME_FIELDS` to its value (dates as ISO text, the patient as a pseudonym only)."""
    missing = [name for name in OUTCOME_FIELDS if name not in outcome]
    if missing:
        raise ValueError(f"an outcome needs {', '.join(missing)}")
    stored = {name: outcome[name] for name in OUTCOME_FIELDS}
    return {"endpoint": endpoint, "status": "accepted", "http_status": 201 if endpoint == OUTCOME_ENDPOINT else 200,
            "key_id": key_id, "role": role, "model_name": model_name, "model_version": model_version,
            "prediction_id": outcome["prediction_id"], "regimens": [outcome["regimen"]],
            "outputs": {"format": OUTCOME_FORMAT, "outcome": stored}}


def stored_outcome(outputs: Any) -> dict[str, Any] | None:
    """The outcome held by a record's parsed ``outputs`` (None when it holds none, or another shape)."""
    if not (isinstance(outputs, Mapping) and outputs.get("format") == OUTCOME_FORMAT):
        return None
    outcome = outputs.get("outcome")
    if not isinstance(outcome, Mapping) or not isinstance(outcome.get("outcome_id"), str):
        return None
    return {name: outcome.get(name) for name in OUTCOME_FIELDS}


# ---------------------------------------------------------------------------------------------------
# Reading


def _engine(engine_or_trail: Any) -> Engine:
    """The engine of an AuditTrail (or the engine itself)."""
    return engine_or_trail if isinstance(engine_or_trail, Engine) else engine_or_trail.engine


@dataclass(frozen=True)
class Served:
    """An accepted prediction as the trail holds it: what an outcome is linked to."""

    prediction_id: str
    patient_pseudonym: str | None
    regimens: tuple[str, ...]
    model_name: str | None
    model_version: str | None
    time: str


def _served_query():
    """SELECT of the accepted prediction records, as :class:`Served` reads them."""
    c = audit_records.c
    return (sa.select(c.prediction_id, c.patient_pseudonym, c.regimens, c.model_name, c.model_version, c.time)
            .where(c.endpoint.in_(PREDICTION_REQUEST_ENDPOINTS), c.status == "accepted"))


def _served(row) -> Served:
    regimens = parse_stored("regimens", row.regimens)
    return Served(prediction_id=row.prediction_id, patient_pseudonym=row.patient_pseudonym,
                  regimens=tuple(str(r) for r in regimens) if isinstance(regimens, list) else (),
                  model_name=row.model_name, model_version=row.model_version, time=row.time)


def find_prediction(engine_or_trail: Any, prediction_id: str) -> Served | None:
    """The accepted prediction ``prediction_id`` (the earliest record, if the id was used twice), or None."""
    c = audit_records.c
    with _engine(engine_or_trail).connect() as conn:
        row = conn.execute(_served_query().where(c.prediction_id == prediction_id).order_by(c.seq).limit(1)).first()
    return None if row is None else _served(row)


def find_patient_prediction(engine_or_trail: Any, pseudonym: str, regimen: str | None) -> Served | None:
    """The newest accepted prediction of the patient ``pseudonym`` covering ``regimen`` (None: any), or None."""
    c = audit_records.c
    query = _served_query().where(c.patient_pseudonym == pseudonym)
    if regimen is not None:  # regimens is canonical JSON text: match the quoted id exactly
        query = query.where(c.regimens.contains(canonical_json(regimen), autoescape=True))
    with _engine(engine_or_trail).connect() as conn:
        row = conn.execute(query.order_by(c.seq.desc()).limit(1)).first()
    return None if row is None else _served(row)


def outcome_history(engine_or_trail: Any, prediction_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every accepted outcome record (of ``prediction_ids`` only, if given), oldest first: the stored
    outcome plus ``seq``, ``recorded_at`` (UTC ISO text), ``key_id``, ``role``, ``model_name``,
    ``model_version`` and ``superseded_by`` (the outcome_id that replaced it, or None)."""
    c = audit_records.c
    query = (sa.select(c.seq, c.time, c.key_id, c.role, c.model_name, c.model_version, c.outputs)
             .where(c.endpoint.in_(OUTCOME_WRITE_ENDPOINTS), c.status == "accepted").order_by(c.seq))
    ids = None if prediction_ids is None else sorted(set(prediction_ids))
    rows = []
    with _engine(engine_or_trail).connect() as conn:
        for start in range(0, len(ids), 500) if ids is not None else [None]:
            part = query if start is None else query.where(c.prediction_id.in_(ids[start:start + 500]))
            rows += conn.execute(part).all()
        blobs = side_blobs(conn, rows)
    history = []
    for row in sorted(rows, key=lambda r: int(r.seq)):
        outcome = stored_outcome(parse_stored("outputs", row.outputs, blobs))
        if outcome is not None:
            history.append({**outcome, "seq": int(row.seq), "recorded_at": row.time, "key_id": row.key_id,
                            "role": row.role, "model_name": row.model_name, "model_version": row.model_version})
    replaced = {o["supersedes"]: o["outcome_id"] for o in history if o.get("supersedes")}
    for outcome in history:
        outcome["superseded_by"] = replaced.get(outcome["outcome_id"])
    return history


def current_of(history: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (prediction_id, regimen): the current outcome of ``history`` (:func:`outcome_history`): the
    newest not superseded, with ``n_versions``, the number of outcomes recorded for the pair."""
    current: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    for outcome in history:
        pair = (outcome["prediction_id"], outcome["regimen"])
        counts[pair] = counts.get(pair, 0) + 1
        if outcome["superseded_by"] is None:
            current[pair] = outcome  # oldest first: the newest wins
    return {pair: {**outcome, "n_versions": counts[pair]} for pair, outcome in current.items()}


def _day(text: Any) -> date | None:
    """An ISO date text → date (None for None or anything else)."""
    try:
        return date.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def derived_outcomes(outcome: Mapping[str, Any], definitions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"objective_response", "primary_resistance"}`` of a stored outcome: True/False, or None when the
    outcome cannot tell (regimen not started, response not evaluable, follow-up too short).

    Objective response: best response in ``configs/outcomes.yaml``'s list (CR, PR). Primary resistance:
    PD as best response, or progression or death within ``window_months`` of the start; False when the
    patient was seen alive without progression (last follow-up, or a progression or death) at or after the
    window's end; None before."""
    definitions = definitions or outcome_definitions()
    if not outcome.get("started"):
        return {"objective_response": None, "primary_resistance": None}
    best = outcome.get("best_response")
    objective = None if best in (None, "NE") else best in definitions["objective_response"]
    start = _day(outcome.get("start_date"))
    if best == "PD":
        return {"objective_response": objective, "primary_resistance": True}
    if start is None:
        return {"objective_response": objective, "primary_resistance": None}
    window_days = definitions["window_months"] * DAYS_PER_MONTH
    events = [d for d in (_day(outcome.get("progression_date")), _day(outcome.get("death_date"))) if d is not None]
    if any((d - start).days < window_days for d in events):
        resistance: bool | None = True
    else:
        seen = [d for d in [_day(outcome.get("last_followup_date")), *events] if d is not None]
        resistance = False if any((d - start).days >= window_days for d in seen) else None
    return {"objective_response": objective, "primary_resistance": resistance}


def _served_between(engine: Engine, low: str | None, high: str | None) -> list[str]:
    """Ids of the accepted predictions with a record served in ``low <= time < high`` (stored time text,
    None: open), so that a window's outcomes are read for those predictions only."""
    c = audit_records.c
    query = (sa.select(c.prediction_id).distinct()
             .where(c.endpoint.in_(PREDICTION_REQUEST_ENDPOINTS), c.status == "accepted"))
    if low is not None:
        query = query.where(c.time >= low)
    if high is not None:
        query = query.where(c.time < high)
    with engine.connect() as conn:
        return [row.prediction_id for row in conn.execute(query)]


def _predictions(engine: Engine, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per prediction id: its record's time, pseudonym, model and served outputs (accepted predictions only)."""
    c = audit_records.c
    found: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(sa.select(c.seq, c.time, c.prediction_id, c.patient_pseudonym, c.model_name,
                                          c.model_version, c.outputs)
                                .where(c.prediction_id.in_(ids[start:start + 500]),
                                       c.endpoint.in_(PREDICTION_REQUEST_ENDPOINTS), c.status == "accepted")
                                .order_by(c.seq)).all()
            blobs = side_blobs(conn, rows)
            for row in rows:
                found.setdefault(row.prediction_id, {"time": row.time, "patient_pseudonym": row.patient_pseudonym,
                                                     "model_name": row.model_name,
                                                     "model_version": row.model_version,
                                                     "outputs": parse_stored("outputs", row.outputs, blobs)})
    return found


def served_probability(outputs: Any, regimen: str, outcome: str) -> float | None:
    """The probability of ``outcome`` served for ``regimen`` in a prediction's outputs (None if not there)."""
    regimens = outputs.get("regimens") if isinstance(outputs, Mapping) else None
    estimate = regimens.get(regimen, {}).get(outcome) if isinstance(regimens, Mapping) and isinstance(
        regimens.get(regimen), Mapping) else None
    probability = estimate.get("probability") if isinstance(estimate, Mapping) else None
    return float(probability) if isinstance(probability, (int, float)) and not isinstance(probability, bool) else None


def _bound(value: datetime | str | None) -> str | None:
    """A window bound as stored time text (aware datetime or ISO text with a zone; None: open)."""
    return None if value is None else _time_text(value)


def _within(time: str, low: str | None, high: str | None) -> bool:
    """True when stored time text ``time`` lies in ``low <= time < high`` (None: open)."""
    return (low is None or time >= low) and (high is None or time < high)


def current_outcomes(engine_or_trail: Any, since: datetime | str | None = None,
                     until: datetime | str | None = None) -> pd.DataFrame:
    """The current outcome of every prediction × regimen that has one, as a DataFrame with the columns
    :data:`CURRENT_COLUMNS`, ordered by prediction time.

    ``engine_or_trail``: an ``AuditTrail`` or its SQLAlchemy engine. ``since`` (inclusive) / ``until``
    (exclusive): aware datetimes or ISO text with a zone, on the time the *prediction* was served
    (``predicted_at``), so that a window's predictions get every outcome recorded for them, however late.
    ``objective_response`` / ``primary_resistance`` are pandas ``boolean`` (<NA>: cannot tell, see
    :func:`derived_outcomes`); ``started`` bool; dates are ``datetime64`` days (NaT when absent);
    ``probability_*`` the probability the service served for that regimen (NaN if it served none);
    ``predicted_at`` / ``recorded_at`` UTC timestamps. Only pseudonyms, never a raw patient id.
    """
    engine = _engine(engine_or_trail)
    low, high = _bound(since), _bound(until)
    window = None if low is None and high is None else _served_between(engine, low, high)
    current = current_of(outcome_history(engine, window))
    predictions = _predictions(engine, sorted({pid for pid, _ in current}))
    definitions = outcome_definitions()
    rows = []
    for (prediction_id, regimen), outcome in current.items():
        served = predictions.get(prediction_id)
        if served is None or not _within(served["time"], low, high):
            continue
        rows.append({**{name: outcome.get(name) for name in CURRENT_COLUMNS if name in outcome},
                     "patient_pseudonym": outcome.get("patient_pseudonym") or served["patient_pseudonym"],
                     "model_name": served["model_name"], "model_version": served["model_version"],
                     "predicted_at": served["time"],
                     "probability_objective_response": served_probability(served["outputs"], regimen,
                                                                          "objective_response"),
                     "probability_primary_resistance": served_probability(served["outputs"], regimen,
                                                                          "primary_resistance"),
                     **derived_outcomes(outcome, definitions)})
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The reader's DataFrame of ``rows`` with its column types (also when empty)."""
    frame = pd.DataFrame(rows, columns=list(CURRENT_COLUMNS))
    for name in ("objective_response", "primary_resistance"):
        frame[name] = frame[name].astype("boolean")
    frame["started"] = frame["started"].astype(bool)
    for name in DATE_FIELDS:
        frame[name] = pd.to_datetime(frame[name], format="%Y-%m-%d")
    for name in ("predicted_at", "recorded_at"):
        frame[name] = pd.to_datetime([parse_time(t) for t in frame[name]], utc=True)
    for name in ("probability_objective_response", "probability_primary_resistance"):
        frame[name] = frame[name].astype(float)
    for name in ("seq", "n_versions"):
        frame[name] = frame[name].astype("int64")
    return frame.sort_values(["predicted_at", "prediction_id", "regimen"], ignore_index=True)
