"""Outcomes linked to predictions (issue 16 point 1): the trail's outcome records and the monitoring reader,
``POST /v1/outcomes`` and its batch, the registrar role, the auditors' view and ``outcomes import``."""

from __future__ import annotations

import copy
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV, AuditKeyring
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.audit.outcomes import (
    CURRENT_COLUMNS,
    OUTCOME_ENDPOINT,
    current_outcomes,
    derived_outcomes,
    outcome_record,
)
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.models import EXAMPLE_PATIENT

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


# ---------------------------------------------------------------------------------------------------
# The service


ROLES = ("clinician", "auditor", "registrar", "admin")
RAW_IDS = ("OUTC-MRN-0001", "OUTC-MRN-0002", "OUTC-MRN-0003")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def _seq(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_records")).scalar_one())
    finally:
        engine.dispose()


def _records_after(url: str, after: int) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT * FROM audit_records WHERE seq > :a ORDER BY seq"),
                                                  {"a": after}).mappings()]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    """The service on the smoke model with a key per role and three predictions (one for lenvatinib only)."""
    folder = tmp_path_factory.mktemp("outcomes")
    url = f"sqlite:///{folder}/trail.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, "outcomes-test-pseudonym-key-0123456789")
        mp.delenv(DB_URL_ENV, raising=False)
        with KeyStore(url) as store:
            tokens = {role: store.create(role, f"outcomes {role}").token for role in ROLES}
        client = TestClient(create_app(str(smoke_model["export_dir"]), url, alias_check=0),
                            raise_server_exceptions=False)
        with client:
            made = []
            for i, raw in enumerate(RAW_IDS):
                body = {"patient": {**copy.deepcopy(EXAMPLE_PATIENT), "age": 60 + i}, "patient_id": raw}
                if i == 2:
                    body["regimens"] = ["lenvatinib"]
                answer = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"]))
                assert answer.status_code == 200, answer.text
                made.append({"id": answer.json()["prediction_id"], "raw": raw,
                             "regimens": [it["regimen"] for it in answer.json()["regimens"]]})
            yield {"client": client, "tokens": tokens, "url": url, "made": made, "folder": folder}


def _post(service, body, role="registrar", path="/v1/outcomes"):
    return service["client"].post(path, json=body, headers=auth(service["tokens"][role]))


def _body(prediction_id, **changes):
    body = {"prediction_id": prediction_id, "regimen": "lenvatinib", "started": True, "start_date": "2026-01-10",
            "best_response": "PR", "criteria": "mRECIST", "response_date": "2026-03-01",
            "last_followup_date": "2026-05-01"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_a_registrar_records_an_outcome_and_an_auditor_reads_it(service):
    pid = service["made"][0]["id"]
    before = _seq(service["url"])
    answer = _post(service, _body(pid))
    assert answer.status_code == 201, answer.text
    stored = answer.json()
    assert stored["prediction_id"] == pid and stored["regimen"] == "lenvatinib" and stored["objective_response"] is True
    assert stored["primary_resistance"] is None  # 4 months of follow-up: too short to tell
    (record,) = _records_after(service["url"], before)
    assert record["endpoint"] == "POST /v1/outcomes" and record["http_status"] == 201 and record["role"] == "registrar"
    assert record["prediction_id"] == pid and len(stored["patient_pseudonym"]) == 16  # the prediction's pseudonym
    before = _seq(service["url"])
    read = service["client"].get("/v1/outcomes", params={"prediction_id": pid},
                                 headers=auth(service["tokens"]["auditor"]))
    assert read.status_code == 200 and [o["outcome_id"] for o in read.json()["current"]] == [stored["outcome_id"]]
    (access,) = _records_after(service["url"], before)
    assert access["endpoint"] == "GET /v1/outcomes" and access["http_status"] == 200
    record = service["client"].get(f"/v1/predictions/{pid}", headers=auth(service["tokens"]["auditor"])).json()
    assert record["outcomes"]["current"][0]["outcome_id"] == stored["outcome_id"]
    frame = current_outcomes(AuditTrail(service["url"], create=False))
    assert stored["outcome_id"] in set(frame["outcome_id"])


@pytest.mark.parametrize(("role", "status"), [("clinician", 403), ("auditor", 403), ("registrar", 422),
                                              ("admin", 422)])
def test_roles(service, role, status):
    before = _seq(service["url"])
    answer = _post(service, {"regimen": "lenvatinib"}, role=role)
    assert answer.status_code == status
    assert [r["http_status"] for r in _records_after(service["url"], before)] == [status]


def test_reads_need_an_auditor_or_admin_and_are_audited(service):
    pid = service["made"][0]["id"]
    for role, status in (("registrar", 403), ("clinician", 403), ("admin", 200)):
        before = _seq(service["url"])
        answer = service["client"].get("/v1/outcomes", params={"prediction_id": pid},
                                       headers=auth(service["tokens"][role]))
        assert answer.status_code == status
        assert [r["http_status"] for r in _records_after(service["url"], before)] == [status]
    bad = service["client"].get("/v1/outcomes", params={"prediction_id": "MRN-77"},
                                headers=auth(service["tokens"]["auditor"]))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "prediction_id"
