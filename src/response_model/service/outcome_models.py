"""Request and answer models of the outcome API (``POST /v1/outcomes``, its batch, ``GET /v1/outcomes``).

Strict like the patient record: text is JSON text, ``started`` a JSON boolean, dates ``YYYY-MM-DD`` text;
unknown fields are refused. What needs the trail (does the prediction exist, did it cover the regimen,
is ``supersedes`` the current outcome) and the order of the dates are checked by
:mod:`response_model.service.outcomes`, which gives every error the same ``{"field", "value",
"message"}`` shape as the prediction API.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from response_model.schema import _reject, checked_patient_id, shown
from response_model.service.audit.outcomes import BEST_RESPONSES, CRITERIA

#: the most outcomes one batch request (or one import) may hold
MAX_OUTCOME_BATCH = 1_000
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PSEUDONYM = re.compile(r"[0-9a-f]{16}")


def _iso_date(value: str | None) -> str | None:
    """``value`` if it is a calendar date written ``YYYY-MM-DD``; raises a validation error otherwise."""
    if value is None:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        raise _reject("outcome_date", f"{shown(value)} is not a date; expected YYYY-MM-DD (e.g. 2026-03-14)") from None
    return value


IsoDate = Annotated[str | None, AfterValidator(_iso_date)]
_DATE_DOC = "YYYY-MM-DD; not in the future, not before start_date"

EXAMPLE_OUTCOME: dict[str, Any] = {
    "prediction_id": "3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19", "regimen": "atezolizumab_bevacizumab",
    "started": True, "start_date": "2026-01-12", "best_response": "PR", "criteria": "mRECIST",
    "response_date": "2026-03-09", "progression_date": "2026-09-21", "last_followup_date": "2026-10-30",
}


class OutcomeRequest(BaseModel):
    """What happened after one prediction, for one regimen: started or not, best overall response,
    progression, death, last follow-up. Name the prediction by ``prediction_id``, or the patient by
    ``patient_id`` (raw: pseudonymised with the service's key, never stored) or ``patient_pseudonym``;
    the patient's newest prediction covering ``regimen`` is then the one meant."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [EXAMPLE_OUTCOME]})

    prediction_id: str | None = Field(default=None, description="The prediction_id POST /v1/predictions answered")
    patient_id: str | None = Field(default=None, description="Raw local identifier (instead of prediction_id); "
                                                             "stored only as its keyed hash")
    patient_pseudonym: str | None = Field(default=None, description="The patient's pseudonym (16 hex digits, "
                                                                    "the trail's keyed hash) instead of patient_id")
    regimen: str = Field(max_length=64, description="Catalogue id of the regimen (one the prediction covered)")
    started: bool = Field(default=True, description="The regimen was actually started")
    start_date: IsoDate = Field(default=None, description="Day the regimen started (required when started)")
    best_response: Literal[BEST_RESPONSES] | None = Field(  # type: ignore[valid-type]
        default=None, description="Best overall response: CR, PR, SD, PD or NE (not evaluable)")
    criteria: Literal[CRITERIA] | None = Field(  # type: ignore[valid-type]
        default=None, description="Response criteria of best_response: 'RECIST 1.1' or 'mRECIST'")
    response_date: IsoDate = Field(default=None, description=f"Day of the best response's assessment ({_DATE_DOC})")
    progression_date: IsoDate = Field(default=None, description=f"Day of progression ({_DATE_DOC})")
    death_date: IsoDate = Field(default=None, description=f"Day of death ({_DATE_DOC}, not before progression)")
    last_followup_date: IsoDate = Field(default=None, description="Last follow-up (censoring) day, if alive "
                                                                  "and followed (not after death)")
    supersedes: str | None = Field(default=None, description="outcome_id of the current outcome this one corrects")

    @field_validator("prediction_id", "supersedes")
    @classmethod
    def _trail_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            # not echoed: an id field holding something else may hold a record number typed in the wrong place
            raise _reject("outcome_id_form", f"{info.field_name}: not an id of the trail; expected a UUID such as "
                                             "3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19") from None

    @field_validator("patient_id", mode="before")
    @classmethod
    def _pseudonymous_id(cls, value: Any) -> Any:
        return checked_patient_id(value)

    @field_validator("patient_pseudonym")
    @classmethod
    def _pseudonym_form(cls, value: str | None) -> str | None:
        if value is not None and not _PSEUDONYM.fullmatch(value):
            raise _reject("pseudonym_form", "patient_pseudonym: not a pseudonym; expected 16 lower-case hex digits "
                                            "(the keyed hash the trail stores)")
        return value


class StoredOutcome(BaseModel):
    """An outcome as recorded in the trail (with what it implies by configs/outcomes.yaml)."""

    outcome_id: str
    prediction_id: str
    patient_pseudonym: str | None = Field(description="Keyed hash of the patient id; never the raw id")
    regimen: str
    started: bool
    start_date: str | None
    best_response: str | None
    criteria: str | None
    response_date: str | None
    progression_date: str | None
    death_date: str | None
    last_followup_date: str | None
    supersedes: str | None = Field(description="The outcome this one corrects")
    objective_response: bool | None = Field(description="CR or PR; null when not evaluable or not started")
    primary_resistance: bool | None = Field(description="PD, or progression or death within the window; "
                                                        "null while follow-up is too short to tell")


class OutcomeAnswer(StoredOutcome):
    """The answer to ``POST /v1/outcomes``: the outcome stored (HTTP 201)."""

    seq: int = Field(description="Sequence number of its audit record")
    recorded_at: str = Field(description="UTC time it was recorded")


class OutcomeBatchAnswer(BaseModel):
    """The answer to a batch that was stored: every row, in order."""

    n_stored: int
    outcomes: list[OutcomeAnswer]


class OutcomeHistoryItem(OutcomeAnswer):
    """One recorded version of an outcome, with who recorded it and what replaced it."""

    key_id: str | None
    role: str | None
    superseded_by: str | None = Field(description="outcome_id of the correction that replaced it (null: current)")


class PredictionOutcomes(BaseModel):
    """A prediction's outcomes: the current one per regimen and every recorded version, oldest first."""

    current: list[OutcomeHistoryItem] = Field(description="Per regimen, the newest outcome not superseded")
    history: list[OutcomeHistoryItem] = Field(description="Every outcome recorded, corrections included")


class OutcomeList(PredictionOutcomes):
    """``GET /v1/outcomes``: one prediction's outcomes."""

    prediction_id: str
