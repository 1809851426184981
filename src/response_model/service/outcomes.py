"""Recording outcomes: validate outcome rows against the trail and append them (``POST /v1/outcomes``, its
batch and ``response-model outcomes import`` all go through :func:`record_outcomes`).

A row is refused (422, every problem named by its field) when it is not an :class:`OutcomeRequest`
(strict types, unknown fields), names no prediction or an unknown one, names a regimen that is not in the
catalogue (the nearest id suggested) or that the prediction did not cover, has a date in the future, a
response, progression, death or follow-up before the start, a death before the progression or a
follow-up after the death, response details for a regimen not started, or does not fit the outcomes
already recorded: a second outcome for the same prediction and regimen must name the current one in
``supersedes`` (a correction is a new record, never an edit), and only the current one can be superseded.

A batch is stored whole or not at all: when any row is bad nothing is stored and every bad row is reported
with its row number — so that an extract fixed and sent again is not half stored twice. Checks and append
run under one lock per trail, so two corrections of one outcome cannot both become current (in one
process; the service runs as one).
"""

from __future__ import annotations

import difflib
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from response_model.regimens import load_catalogue
from response_model.schema import field_errors, odd_code_points, shown
from response_model.service.audit import AuditTrail
from response_model.service.audit.outcomes import (
    DATE_FIELDS,
    Served,
    current_of,
    derived_outcomes,
    find_patient_prediction,
    find_prediction,
    outcome_definitions,
    outcome_history,
    outcome_record,
)
from response_model.service.outcome_models import OutcomeHistoryItem, OutcomeRequest
from response_model.service.recording import append, record_rejected
from response_model.service.validation import REDACTED_ID, redacted_name

Error = dict[str, Any]
_KNOWN_FIELDS = ", ".join(OutcomeRequest.model_fields)
_LOCKS: weakref.WeakKeyDictionary[AuditTrail, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _error(field: str, message: str, value: Any = None) -> Error:
    return {"field": field, "value": value, "message": f"{field}: {message}"}


def today_utc() -> date:
    """Today's date in UTC (a date after it is in the future)."""
    return datetime.now(UTC).date()


# ---------------------------------------------------------------------------------------------------
# One row


def schema_errors(row: Any) -> tuple[OutcomeRequest | None, list[Error]]:
    """(the parsed row, []) or (None, its field errors): strict types, unknown fields, date forms."""
    if not isinstance(row, dict):
        return None, [_error("body", f"{type(row).__name__} given; expected a JSON object shaped like "
                                     "POST /v1/outcomes's body")]
    try:
        return OutcomeRequest.model_validate(row), []
    except ValidationError as error:
        return None, [{"field": e.field, "value": e.value, "message": e.message}
                      for e in field_errors(error, _KNOWN_FIELDS)]


def _regimen_error(regimen: str) -> Error | None:
    """The error of a regimen id that is not in the catalogue (the nearest id suggested), or None."""
    odd = odd_code_points(regimen)
    known = list(load_catalogue())
    if odd is not None:
        return _error("regimen", f"{shown(regimen)} contains {odd}; expected a regimen id in ASCII", shown(regimen))
    if regimen in known:
        return None
    close = difflib.get_close_matches(regimen, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _error("regimen", f"{shown(regimen)} is not a regimen of the catalogue; {hint}expected one of "
                             f"{', '.join(known)}", shown(regimen))


def date_errors(req: OutcomeRequest, today: date) -> list[Error]:
    """The errors of the row's dates: in the future, before the start, death before progression,
    follow-up after death; response details of a regimen not started; what started needs."""
    days = {name: date.fromisoformat(getattr(req, name)) for name in DATE_FIELDS if getattr(req, name)}
    errors = [_error(name, f"{day.isoformat()} is in the future (today is {today.isoformat()} UTC)", day.isoformat())
              for name, day in days.items() if day > today]
    if not req.started:
        given = [n for n in ("start_date", "best_response", "criteria", "response_date", "progression_date")
                 if getattr(req, n) is not None]
        return errors + [_error(n, "given, but started is false; leave it out for a regimen not started")
                         for n in given]
    if req.start_date is None:
        errors.append(_error("start_date", "required field is missing (started is true); give the day the "
                                           "regimen started as YYYY-MM-DD"))
    if (req.best_response is None) != (req.criteria is None):
        missing = "criteria" if req.criteria is None else "best_response"
        errors.append(_error(missing, "required with " + ("best_response" if missing == "criteria" else "criteria")
                             + f" ({'RECIST 1.1 or mRECIST' if missing == 'criteria' else 'CR, PR, SD, PD or NE'})"))
    if req.response_date is not None and req.best_response is None:
        errors.append(_error("response_date", "given without best_response"))
    start = days.get("start_date")
    for name in ("response_date", "progression_date", "death_date", "last_followup_date"):
        if start is not None and name in days and days[name] < start:
            errors.append(_error(name, f"{days[name].isoformat()} is before start_date {start.isoformat()}",
                                 days[name].isoformat()))
    death, progression = days.get("death_date"), days.get("progression_date")
    if death is not None and progression is not None and death < progression:
        errors.append(_error("death_date", f"{death.isoformat()} is before progression_date "
                                           f"{progression.isoformat()}", death.isoformat()))
    followup = days.get("last_followup_date")
    if death is not None and followup is not None and followup > death:
        errors.append(_error("last_followup_date", f"{followup.isoformat()} is after death_date {death.isoformat()}",
                             followup.isoformat()))
    return errors


def _resolve(trail: AuditTrail, req: OutcomeRequest) -> tuple[Served | None, list[Error]]:
    """(the prediction the row is about, []) or (None, why it names none)."""
    named = [n for n in ("prediction_id", "patient_id", "patient_pseudonym") if getattr(req, n) is not None]
    if len(named) != 1:
        message = ("name the prediction: give prediction_id, or the patient (patient_id or patient_pseudonym)"
                   if not named else "give one of prediction_id, patient_id, patient_pseudonym, not "
                   + " and ".join(named))
        return None, [_error(named[-1] if named else "prediction_id", message)]
    if req.prediction_id is not None:
        served = find_prediction(trail, req.prediction_id)
        return (served, []) if served is not None else (None, [_error(
            "prediction_id", f"no accepted prediction {req.prediction_id} in the audit trail", req.prediction_id)])
    field = named[0]
    pseudonym = req.patient_pseudonym if req.patient_pseudonym is not None else trail.pseudonym(req.patient_id)
    served = find_patient_prediction(trail, pseudonym, req.regimen)
    if served is not None:
        return served, []
    any_one = find_patient_prediction(trail, pseudonym, None)
    why = (f"this patient's predictions covered no {req.regimen!r}" if any_one is not None
           else "no accepted prediction of this patient in the audit trail")
    return None, [_error(field, why)]


def _history_errors(req: OutcomeRequest, served: Served, current: Mapping[tuple[str, str], dict],
                    known: Mapping[str, dict]) -> list[Error]:
    """The errors of the row against the outcomes recorded: a second outcome without ``supersedes``, or
    ``supersedes`` naming no outcome, another pair's, or one already superseded."""
    pair = (served.prediction_id, req.regimen)
    now = current.get(pair)
    if req.supersedes is None:
        if now is None:
            return []
        return [_error("supersedes", f"an outcome is already recorded for this prediction and regimen "
                                     f"(outcome_id {now['outcome_id']}); to correct it, send the new outcome "
                                     "with supersedes set to that id")]
    earlier = known.get(req.supersedes)
    if earlier is None or (earlier["prediction_id"], earlier["regimen"]) != pair:
        return [_error("supersedes", f"no outcome {req.supersedes} of this prediction and regimen", req.supersedes)]
    if now is None or now["outcome_id"] != req.supersedes:
        return [_error("supersedes", f"outcome {req.supersedes} is already superseded; the current one is "
                                     f"{now['outcome_id'] if now else 'none'}", req.supersedes)]
    return []


# ---------------------------------------------------------------------------------------------------
# Rows against the trail


@dataclass
class _Row:
    """One row as it is judged: the parsed request, the prediction it is about, and its errors."""

    index: int
    req: OutcomeRequest | None
    served: Served | None
    errors: list[Error]


def _judged(trail: AuditTrail, index: int, row: Any, today: date) -> _Row:
    """The row's schema, regimen, date and prediction errors (the history is checked with the batch's)."""
    req, errors = schema_errors(row)
    if req is None:
        return _Row(index, None, None, errors)
    regimen_error = _regimen_error(req.regimen)
    errors += [regimen_error] if regimen_error else []
    errors += date_errors(req, today)
    served, resolve_errors = _resolve(trail, req)
    errors += resolve_errors
    if served is not None and regimen_error is None and req.regimen not in served.regimens:
        errors.append(_error("regimen", f"{req.regimen!r} was not covered by prediction {served.prediction_id}; "
                                        f"it covered {', '.join(served.regimens) or 'no regimen'}", req.regimen))
    return _Row(index, req, served, errors)


def _checked(trail: AuditTrail, rows: Sequence[Any], today: date) -> list[_Row]:
    """Every row judged, then checked against the outcomes recorded and the batch's earlier rows."""
    judged = [_judged(trail, i, row, today) for i, row in enumerate(rows)]
    history = outcome_history(trail, {r.served.prediction_id for r in judged if r.served is not None})
    current, known = current_of(history), {o["outcome_id"]: o for o in history}
    claimed: dict[tuple[str, str], int] = {}
    for row in judged:
        if row.served is None or row.req is None:
            continue
        pair = (row.served.prediction_id, row.req.regimen)
        if pair in claimed:
            row.errors.append(_error("regimen", f"row {claimed[pair]} of this batch records an outcome of the same "
                                                "prediction and regimen; send one outcome per prediction and regimen"))
            continue
        claimed[pair] = row.index
        row.errors += _history_errors(row.req, row.served, current, known)
    return judged


def _outcome(req: OutcomeRequest, served: Served) -> dict[str, Any]:
    """The stored outcome of a valid row: a new outcome_id, the prediction's id and pseudonym."""
    return {"outcome_id": str(uuid.uuid4()), "prediction_id": served.prediction_id,
            "patient_pseudonym": served.patient_pseudonym, "regimen": req.regimen, "started": req.started,
            "start_date": req.start_date, "best_response": req.best_response, "criteria": req.criteria,
            "response_date": req.response_date, "progression_date": req.progression_date,
            "death_date": req.death_date, "last_followup_date": req.last_followup_date, "supersedes": req.supersedes}


_NAMES = frozenset(OutcomeRequest.model_fields) | {"body", "outcomes", "row"}
_ID_FIELDS = ("patient_id", "prediction_id", "supersedes")


def stored_errors(errors: Sequence[Error]) -> list[Error]:
    """The errors as the trail stores them: a patient id's value never, an unknown field name (it may be an
    identifier) as its length and keyed digest, with its value as its type only."""
    stored = []
    for error in errors:
        field, value, message = str(error["field"]), error.get("value"), str(error["message"])
        segments = field.split(".")
        unknown = [s for s in segments if not s.isdigit() and s not in _NAMES]
        for raw in sorted(unknown, key=len, reverse=True):
            message = message.replace(raw, redacted_name(raw))
        if unknown:
            field = ".".join(redacted_name(s) if s in unknown else s for s in segments)
            value = None if value is None else f"<{type(value).__name__} redacted>"
        elif segments[-1] in _ID_FIELDS and value is not None:
            value = REDACTED_ID if segments[-1] == "patient_id" else None  # a record number in an id's place
        stored.append({**error, "field": field, "value": value, "message": message})
    return stored


def _lock(trail: AuditTrail) -> threading.Lock:
    """The lock under which outcomes of ``trail`` are checked and appended (one per trail)."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(trail, threading.Lock())


# ---------------------------------------------------------------------------------------------------
# Recording


@dataclass(frozen=True)
class Caller:
    """Who records: the endpoint (``POST /v1/outcomes``, its batch, the import command) and the key."""

    endpoint: str
    key_id: str | None
    role: str | None


def answer_of(outcome: Mapping[str, Any], seq: int, recorded_at: str, definitions: Mapping[str, Any]) -> dict:
    """An :class:`~response_model.service.outcome_models.OutcomeAnswer` of a stored outcome."""
    return {**outcome, **derived_outcomes(outcome, definitions), "seq": seq, "recorded_at": recorded_at}


def _refusal(trail: AuditTrail, rows: Sequence[Any], judged: list[_Row], caller: Caller, batch: bool) -> dict:
    """Append the record of a refused request (one, whatever the rows) and return the 422 answer."""
    bad = [row for row in judged if row.errors]
    if batch:
        errors = [{**e, "row": row.index, "field": f"outcomes.{row.index}.{e['field']}",
                   "message": f"row {row.index}: {e['message']}"} for row in bad for e in row.errors]
        answer = {"errors": errors, "n_rows": len(rows), "n_refused_rows": len(bad), "n_stored": 0}
    else:
        errors = bad[0].errors
        answer = {"errors": errors}
    detail: dict[str, Any] = {"errors": stored_errors(errors)}
    if batch:
        detail.update(n_rows=len(rows), n_refused_rows=len(bad))
    elif judged[0].served is not None:
        detail["prediction_id"] = judged[0].served.prediction_id
    raw = judged[0].req.patient_id if not batch and judged[0].req is not None else None
    record_rejected(trail, {"endpoint": caller.endpoint, "status": "rejected", "http_status": 422,
                            "key_id": caller.key_id, "role": caller.role, "patient_id": raw, "detail": detail})
    return answer


def record_outcomes(trail: AuditTrail, rows: Sequence[Any], caller: Caller, *, batch: bool,
                    today: date | None = None) -> tuple[int, dict[str, Any]]:
    """Check ``rows`` and append them, audited either way; returns (HTTP status, answer).

    201 and the :class:`OutcomeAnswer` of one row (``batch=False``), 200 and ``{"n_stored", "outcomes"}``
    of a batch, stored in one transaction, one audit record per outcome; 422 and ``{"errors": [...]}``
    (a batch's errors carry their ``row``, 0-based, and nothing of it is stored), recorded as one rejection.
    ``today``: the day after which dates are in the future (default: today, UTC)."""
    if batch and not rows:
        errors = [_error("outcomes", "empty list; expected at least one outcome")]
        record_rejected(trail, {"endpoint": caller.endpoint, "status": "rejected", "http_status": 422,
                                "key_id": caller.key_id, "role": caller.role, "detail": {"errors": errors}})
        return 422, {"errors": errors, "n_rows": 0, "n_refused_rows": 0, "n_stored": 0}
    with _lock(trail):
        judged = _checked(trail, rows, today or today_utc())
        if any(row.errors for row in judged):
            return 422, _refusal(trail, rows, judged, caller, batch)
        outcomes = [_outcome(row.req, row.served) for row in judged]
        records = [outcome_record(o, endpoint=caller.endpoint, key_id=caller.key_id, role=caller.role,
                                  model_name=row.served.model_name, model_version=row.served.model_version)
                   for o, row in zip(outcomes, judged)]
        entries = append(trail, records, entries=True)
    definitions = outcome_definitions()
    answers = [answer_of(o, e.seq, e.to_dict()["time"], definitions) for o, e in zip(outcomes, entries)]
    if batch:
        return 200, {"n_stored": len(answers), "outcomes": answers}
    return 201, answers[0]


def outcomes_of(trail: AuditTrail, prediction_id: str) -> dict[str, list[dict[str, Any]]]:
    """``{"current", "history"}`` of a prediction: its current outcome per regimen and every recorded
    version, oldest first, each an :class:`~response_model.service.outcome_models.OutcomeHistoryItem`."""
    history = outcome_history(trail, [prediction_id])
    definitions = outcome_definitions()

    def item(outcome: dict[str, Any]) -> dict[str, Any]:
        full = {**outcome, **derived_outcomes(outcome, definitions)}
        return {name: full.get(name) for name in OutcomeHistoryItem.model_fields}

    current = sorted(current_of(history).values(), key=lambda o: o["seq"])
    return {"current": [item(o) for o in current], "history": [item(o) for o in history]}
