"""Outcomes linked to predictions (issue 16 point 1): the trail's outcome records and the monitoring reader,
``POST /v1/outcomes`` and its batch, the registrar role, the auditors' view and ``outcomes import``."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from response_model.privacy import AuditKeyring
from response_model.service.audit import AuditTrail
from response_model.service.audit.outcomes import (
    CURRENT_COLUMNS,
    OUTCOME_ENDPOINT,
    current_outcomes,
    derived_outcomes,
    outcome_record,
)

DEFINITIONS = {"objective_response": ("CR", "PR"), "window_months": 6.0}


def _outcome(**changes):
    base = {"outcome_id": str(uuid.uuid4()), "prediction_id": None, "patient_pseudonym": None,
            "regimen": "lenvatinib", "started": True, "start_date": "2026-01-01", "best_response": "SD",
            "criteria": "mRECIST", "response_date": None, "progression_date": None, "death_date": None,
            "last_followup_date": None, "supersedes": None}
    return {**base, **changes}


# ---------------------------------------------------------------------------------------------------
# The reader, on a trail written directly


@pytest.fixture
def direct_trail(tmp_path):
    trail = AuditTrail(f"sqlite:///{tmp_path}/t.db", pseudonym_key="p" * 40, keyring=AuditKeyring.of("a" * 40),
                       witness=str(tmp_path / "w.jsonl"))
    yield trail
    trail.close()


def _served(trail, regimens=("lenvatinib", "sorafenib"), patient="ward-1", time=None):
    pid = str(uuid.uuid4())
    outputs = {"regimens": {r: {"objective_response": {"probability": 0.25 + i / 10},
                                "primary_resistance": {"probability": 0.5}} for i, r in enumerate(regimens)}}
    trail.append({"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "prediction_id": pid,
                  "patient_id": patient, "model_name": "m", "model_version": "7", "regimens": list(regimens),
                  "outputs": outputs, **({"time": time} if time else {})})
    return pid


def _record(trail, outcome):
    trail.append(outcome_record(outcome, endpoint=OUTCOME_ENDPOINT, key_id=None, role="registrar",
                                model_name="m", model_version="7"))


def test_reader_gives_the_current_outcome_with_the_served_probability(direct_trail):
    pid = _served(direct_trail)
    first = _outcome(prediction_id=pid, last_followup_date="2026-03-01")
    _record(direct_trail, first)
    _record(direct_trail, _outcome(prediction_id=pid, supersedes=first["outcome_id"], best_response="PR",
                                   criteria="RECIST 1.1", last_followup_date="2026-08-01"))
    _record(direct_trail, _outcome(prediction_id=pid, regimen="sorafenib", started=False, start_date=None,
                                   best_response=None, criteria=None))
    frame = current_outcomes(direct_trail)
    assert list(frame.columns) == list(CURRENT_COLUMNS)
    rows = frame.set_index("regimen")
    assert len(frame) == 2 and rows.loc["lenvatinib", "best_response"] == "PR"
    assert rows.loc["lenvatinib", "n_versions"] == 2 and rows.loc["lenvatinib", "supersedes"] == first["outcome_id"]
    assert bool(rows.loc["lenvatinib", "objective_response"]) and not rows.loc["lenvatinib", "primary_resistance"]
    assert rows.loc["lenvatinib", "probability_objective_response"] == pytest.approx(0.25)
    assert rows.loc["sorafenib", "probability_objective_response"] == pytest.approx(0.35)
    assert not rows.loc["sorafenib", "started"] and pd.isna(rows.loc["sorafenib", "objective_response"])
    assert rows.loc["lenvatinib", "model_version"] == "7" and len(rows.loc["lenvatinib", "patient_pseudonym"]) == 16
    assert str(frame["objective_response"].dtype) == "boolean" and str(frame["start_date"].dtype).startswith("datetime")
    assert direct_trail.verify().ok


def test_reader_windows_on_the_prediction_time(direct_trail):
    old = _served(direct_trail, time="2026-01-05T10:00:00Z")
    _record(direct_trail, _outcome(prediction_id=old))
    assert len(current_outcomes(direct_trail.engine, since="2026-01-05T10:00:00Z")) == 1
    assert current_outcomes(direct_trail, since="2026-01-06T00:00:00+00:00").empty
    assert current_outcomes(direct_trail, until="2026-01-05T10:00:00Z").empty
    empty = current_outcomes(direct_trail, since="2030-01-01T00:00:00Z")
    assert list(empty.columns) == list(CURRENT_COLUMNS)


@pytest.mark.parametrize(("changes", "objective", "resistance"), [
    ({"best_response": "PD"}, False, True),
    ({"best_response": "CR", "progression_date": "2026-05-01"}, True, True),
    ({"best_response": "SD", "death_date": "2026-06-29"}, False, True),
    ({"best_response": "SD", "last_followup_date": "2026-03-01"}, False, None),  # too short to tell
    ({"best_response": "SD", "last_followup_date": "2026-07-03"}, False, False),
    ({"best_response": "NE", "progression_date": "2026-09-01"}, None, False),
    ({"started": False, "start_date": None, "best_response": None}, None, None),
])
def test_derived_outcomes_follow_configs_outcomes_yaml(changes, objective, resistance):
    derived = derived_outcomes(_outcome(**changes), DEFINITIONS)
    assert derived == {"objective_response": objective, "primary_resistance": resistance}
