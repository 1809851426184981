"""Outcomes linked to predictions (issue 16 point 1): the trail's outcome records and the monitoring reader,
``POST /v1/outcomes`` and its batch, the registrar role, the auditors' view and ``outcomes import``."""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from pathlib import Path

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


def test_a_window_reads_the_outcomes_of_its_own_predictions_only(direct_trail, monkeypatch):
    from response_model.service.audit import outcomes as reader

    old, new = (_served(direct_trail, time=t) for t in ("2026-01-05T10:00:00Z", "2026-02-05T10:00:00Z"))
    for pid in (old, new):
        _record(direct_trail, _outcome(prediction_id=pid))
    asked = []
    history = reader.outcome_history
    monkeypatch.setattr(reader, "outcome_history", lambda engine, ids=None: asked.append(ids) or history(engine, ids))
    assert list(current_outcomes(direct_trail, since="2026-02-01T00:00:00Z")["prediction_id"]) == [new]
    assert list(current_outcomes(direct_trail, until="2026-02-01T00:00:00Z")["prediction_id"]) == [old]
    assert asked == [[new], [old]]
    assert len(current_outcomes(direct_trail)) == 2 and asked[-1] is None


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


UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"response_date": "2025-12-01"}, "response_date", "before start_date"),
    ({"progression_date": "2025-12-31"}, "progression_date", "before start_date"),
    ({"death_date": "2026-01-09"}, "death_date", "before start_date"),
    ({"progression_date": "2026-06-01", "death_date": "2026-05-01"}, "death_date", "before progression_date"),
    ({"death_date": "2026-04-01", "last_followup_date": "2026-05-01"}, "last_followup_date", "after death_date"),
    ({"last_followup_date": "2999-01-01"}, "last_followup_date", "in the future"),
    ({"start_date": "2026-02-30"}, "start_date", "not a date"),
    ({"start_date": "10/01/2026"}, "start_date", "not a date"),
    ({"start_date": None}, "start_date", "required"),
    ({"criteria": None}, "criteria", "required with best_response"),
    ({"criteria": "RECIST"}, "criteria", "RECIST 1.1"),
    ({"best_response": "partial"}, "best_response", "CR"),
    ({"started": "yes"}, "started", "boolean"),
    ({"started": 1}, "started", "boolean"),
    ({"started": False}, "start_date", "started is false"),
    ({"regimen": "lenvatinb"}, "regimen", "did you mean 'lenvatinib'"),
    ({"regimen": 7}, "regimen", "string"),
    ({"regimen": "lenvat\u0131nib"}, "regimen", "U+0131"),
    ({"start_date": 20260110}, "start_date", "string"),
    ({"prediction_id": UNKNOWN_ID}, "prediction_id", "no accepted prediction"),
    ({"prediction_id": "MRN-1234"}, "prediction_id", "UUID"),
    ({"prediction_id": None}, "prediction_id", "name the prediction"),
    ({"patient_id": "OUTC-MRN-0001"}, "patient_id", "not prediction_id and patient_id"),
    ({"supersedes": UNKNOWN_ID}, "supersedes", "no outcome"),
    ({"ward": "3"}, "ward", "unknown field"),
])
def test_each_invalid_outcome_is_refused_naming_the_field(service, changes, field, words):
    pid = service["made"][1]["id"]
    before = _seq(service["url"])
    body = _body(pid)
    for name, value in changes.items():
        body.pop(name, None) if value is None else body.__setitem__(name, value)
    answer = _post(service, body)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors
    (record,) = _records_after(service["url"], before)
    assert record["status"] == "rejected" and record["http_status"] == 422 and record["endpoint"] == "POST /v1/outcomes"


def test_a_regimen_the_prediction_did_not_cover_is_refused(service):
    only_lenvatinib = service["made"][2]
    answer = _post(service, _body(only_lenvatinib["id"], regimen="sorafenib"))
    assert answer.status_code == 422
    (error,) = answer.json()["errors"]
    assert error["field"] == "regimen" and "not covered by prediction" in error["message"]
    assert "it covered lenvatinib" in error["message"]


def test_corrections_supersede_and_never_edit(service):
    made = service["made"][1]
    first = _post(service, _body(made["id"], regimen=made["regimens"][0], best_response="SD"))
    assert first.status_code == 201, first.text
    again = _post(service, _body(made["id"], regimen=made["regimens"][0]))
    assert again.status_code == 422 and again.json()["errors"][0]["field"] == "supersedes"
    assert first.json()["outcome_id"] in again.json()["errors"][0]["message"]
    second = _post(service, _body(made["id"], regimen=made["regimens"][0], supersedes=first.json()["outcome_id"],
                                  best_response="PD"))
    assert second.status_code == 201, second.text
    stale = _post(service, _body(made["id"], regimen=made["regimens"][0], supersedes=first.json()["outcome_id"]))
    assert stale.status_code == 422 and "already superseded" in stale.json()["errors"][0]["message"]
    third = _post(service, _body(made["id"], regimen=made["regimens"][0], supersedes=second.json()["outcome_id"],
                                 best_response="PR", progression_date="2026-04-01"))
    assert third.status_code == 201 and third.json()["primary_resistance"] is True
    read = service["client"].get("/v1/outcomes", params={"prediction_id": made["id"]},
                                 headers=auth(service["tokens"]["auditor"])).json()
    versions = [o for o in read["history"] if o["regimen"] == made["regimens"][0]]
    assert [o["best_response"] for o in versions] == ["SD", "PD", "PR"]
    assert [o["superseded_by"] for o in versions] == [second.json()["outcome_id"], third.json()["outcome_id"], None]
    current = [o for o in read["current"] if o["regimen"] == made["regimens"][0]]
    assert [o["outcome_id"] for o in current] == [third.json()["outcome_id"]]
    frame = current_outcomes(AuditTrail(service["url"], create=False)).set_index(["prediction_id", "regimen"])
    assert frame.loc[(made["id"], made["regimens"][0]), "n_versions"] == 3


def test_a_patient_and_regimen_find_the_newest_prediction_covering_it(service):
    made = service["made"][2]  # lenvatinib only
    by_raw = _post(service, {"patient_id": made["raw"], "regimen": "lenvatinib", "started": False,
                             "last_followup_date": "2026-02-01"})
    assert by_raw.status_code == 201, by_raw.text
    assert by_raw.json()["prediction_id"] == made["id"] and by_raw.json()["objective_response"] is None
    pseudonym = by_raw.json()["patient_pseudonym"]
    unknown = _post(service, {"patient_pseudonym": "0" * 16, "regimen": "lenvatinib", "start_date": "2026-01-02"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "patient_pseudonym"
    not_covered = _post(service, {"patient_pseudonym": pseudonym, "regimen": "sorafenib", "start_date": "2026-01-02"})
    assert "covered no 'sorafenib'" in not_covered.json()["errors"][0]["message"]
    stored = "\n".join(str(v) for r in _records_after(service["url"], 0) for v in r.values())
    assert all(raw not in stored for raw in RAW_IDS)


def test_a_batch_with_bad_rows_is_refused_whole_naming_each_row(service):
    made = service["made"][0]
    regimens = [r for r in made["regimens"] if r != "lenvatinib"][:3]
    good = [_body(made["id"], regimen=r) for r in regimens]
    rows = [good[0], {**good[1], "start_date": "2026-13-01"}, good[2], {"regimen": "lenvatinib"}, "not a row"]
    before = _seq(service["url"])
    answer = _post(service, {"outcomes": rows}, path="/v1/outcomes/batch")
    assert answer.status_code == 422
    body = answer.json()
    assert body["n_stored"] == 0 and body["n_refused_rows"] == 3
    assert {(e["row"], e["field"]) for e in body["errors"]} >= {(1, "outcomes.1.start_date"),
                                                              (3, "outcomes.3.prediction_id"), (4, "outcomes.4.body")}
    (record,) = _records_after(service["url"], before)
    assert record["status"] == "rejected" and record["endpoint"] == "POST /v1/outcomes/batch"
    before = _seq(service["url"])
    stored = _post(service, {"outcomes": good}, role="admin", path="/v1/outcomes/batch")
    assert stored.status_code == 200 and stored.json()["n_stored"] == len(good)
    records = _records_after(service["url"], before)
    assert [r["http_status"] for r in records] == [200] * len(good) and {r["role"] for r in records} == {"admin"}
    twice = _post(service, {"outcomes": [good[0], good[0]]}, path="/v1/outcomes/batch")
    assert twice.status_code == 422 and {e["row"] for e in twice.json()["errors"]} == {0, 1}
    empty = _post(service, {"outcomes": []}, path="/v1/outcomes/batch")
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "outcomes"


def test_the_trail_verifies_after_outcomes_and_detects_an_edited_one(service, tmp_path):
    import sqlite3

    from response_model.service.audit.outcomes import OUTCOME_WRITE_ENDPOINTS

    made = service["made"][0]
    answer = _post(service, _body(made["id"], regimen=made["regimens"][-1], best_response="CR"))
    assert answer.status_code == 201, answer.text
    read = service["client"].get("/v1/outcomes", params={"prediction_id": made["id"]},
                                 headers=auth(service["tokens"]["auditor"]))
    assert read.status_code == 200  # a record after the outcome: an edit of a newest record reads as forged
    with AuditTrail(service["url"], create=False) as trail:
        assert trail.verify().ok
    copy_url = f"sqlite:///{tmp_path}/edited.db"
    with sqlite3.connect(service["url"].removeprefix("sqlite:///")) as source, \
            sqlite3.connect(tmp_path / "edited.db") as target:
        source.backup(target)  # the committed trail, WAL included
    engine = sa.create_engine(copy_url)
    with engine.begin() as conn:
        seq = conn.execute(sa.text("SELECT max(seq) FROM audit_records WHERE endpoint IN :e AND status = 'accepted'")
                           .bindparams(sa.bindparam("e", expanding=True)), {"e": list(OUTCOME_WRITE_ENDPOINTS)}
                           ).scalar_one()
        conn.execute(sa.text("UPDATE audit_records SET regimens = :r WHERE seq = :s"), {"r": '["edited"]', "s": seq})
    engine.dispose()
    with AuditTrail(copy_url, create=False, witness=str(tmp_path / "w.jsonl")) as trail:
        result = trail.verify()
    assert not result.ok and result.first_bad == seq and result.case == "edited"


def test_sixteen_clients_interleaving_predictions_and_outcomes(service):
    """16 threads, each predicting, recording the outcome and correcting it; then all 16 race to correct one
    shared outcome: no 5xx, every write audited with its status, exactly one correction wins the race."""
    from concurrent.futures import ThreadPoolExecutor

    client, tokens, url = service["client"], service["tokens"], service["url"]
    before = _seq(url)

    def work(i: int) -> list[tuple[str, int]]:
        statuses = []
        for j in range(3):
            body = {"patient": {**copy.deepcopy(EXAMPLE_PATIENT), "age": 40 + i % 30 + j}, "regimens": ["lenvatinib"],
                    "patient_id": f"LOAD-{i}-{j}"}
            made = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"]))
            statuses.append(("POST /v1/predictions", made.status_code))
            if made.status_code != 200:
                continue
            pid = made.json()["prediction_id"]
            first = client.post("/v1/outcomes", json=_body(pid), headers=auth(tokens["registrar"]))
            statuses.append(("POST /v1/outcomes", first.status_code))
            fix = _body(pid, best_response="SD", supersedes=first.json().get("outcome_id"))
            statuses.append(("POST /v1/outcomes", client.post("/v1/outcomes", json=fix,
                                                              headers=auth(tokens["admin"])).status_code))
        return statuses

    with ThreadPoolExecutor(16) as pool:
        done = [s for batch in pool.map(work, range(16)) for s in batch]
    shared = work(16)  # one more patient; then all 16 race to correct its current outcome
    pid = _records_after(url, _seq(url) - 1)[0]["prediction_id"]
    current = client.get("/v1/outcomes", params={"prediction_id": pid}, headers=auth(tokens["auditor"]))
    assert current.status_code == 200, (pid, current.text, shared)
    race = _body(pid, best_response="CR", supersedes=current.json()["current"][0]["outcome_id"])
    with ThreadPoolExecutor(16) as pool:
        raced = [("POST /v1/outcomes", status) for status in pool.map(lambda _: _post(service, race).status_code,
                                                                       range(16))]
    assert sorted(s for _, s in raced) == [201] + [422] * 15
    assert {s for _, s in done} == {200, 201}  # no 5xx, no refusal
    stored = Counter((r["endpoint"], r["http_status"]) for r in _records_after(url, before)
                     if r["endpoint"] in ("POST /v1/predictions", "POST /v1/outcomes"))
    assert stored == Counter(done + shared + raced)
    with AuditTrail(url, create=False) as trail:
        assert trail.verify().ok


def test_outcomes_import_through_a_source_mapping(service, tmp_path):
    """``outcomes import``: a registry extract through configs/sources/registry-outcomes.yaml; a file with bad
    rows is refused whole (each bad row by its line and column), a good one stored, a repeat refused."""
    from click.testing import CliRunner

    from response_model.cli import main

    raw = "OUTC-CLI-0001"
    made = service["client"].post("/v1/predictions", headers=auth(service["tokens"]["clinician"]), json={
        "patient": copy.deepcopy(EXAMPLE_PATIENT), "patient_id": raw, "regimens": ["lenvatinib", "sorafenib"]})
    assert made.status_code == 200
    template = (Path(__file__).parent / "data" / "registry_outcomes.csv").read_text(encoding="utf-8")
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(template.replace("{mrn}", raw), encoding="utf-8")
    lines = template.replace("{mrn}", raw).splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace("Lenvatinib", "Lenvatinibb"),
                              lines[2].replace("15/01/2026", "31/02/2026")]) + "\n", encoding="utf-8")
    args = ["outcomes", "import", "--source", "configs/sources/registry-outcomes.yaml", "--db", service["url"]]
    before = _seq(service["url"])
    refused = CliRunner().invoke(main, [*args, str(bad)])
    assert refused.exit_code == 1, refused.output
    assert "line 2:" in refused.output and "[column 'Treatment']" in refused.output
    assert "line 3:" in refused.output and "[column 'Last seen']" in refused.output
    assert "nothing stored" in refused.output
    assert [r["status"] for r in _records_after(service["url"], before)] == ["rejected"]
    stored = CliRunner().invoke(main, [*args, str(good)])
    assert stored.exit_code == 0, stored.output
    assert "stored 2 outcomes" in stored.output
    records = _records_after(service["url"], before + 1)
    assert [(r["endpoint"], r["role"]) for r in records] == [("CLI outcomes import", "registrar")] * 2
    frame = current_outcomes(AuditTrail(service["url"], create=False)).set_index(["prediction_id", "regimen"])
    row = frame.loc[(made.json()["prediction_id"], "lenvatinib")]
    assert row["start_date"] == pd.Timestamp("2026-01-12") and bool(row["objective_response"])
    assert bool(row["primary_resistance"]) is False  # progression 7.7 months after the start
    again = CliRunner().invoke(main, [*args, str(good)])
    assert again.exit_code == 1 and "already recorded" in again.output
    assert raw not in "\n".join(str(v) for r in _records_after(service["url"], before) for v in r.values())


def test_the_export_carries_the_current_outcome_of_each_row(service):
    import io

    client, tokens = service["client"], service["tokens"]
    made = client.post("/v1/predictions", headers=auth(tokens["clinician"]), json={
        "patient": copy.deepcopy(EXAMPLE_PATIENT), "regimens": ["lenvatinib", "sorafenib"]}).json()["prediction_id"]
    first = _post(service, _body(made, best_response="SD", last_followup_date="2026-09-01")).json()
    second = _post(service, _body(made, best_response="PD", supersedes=first["outcome_id"])).json()
    answer = client.get("/v1/predictions:export", params={"format": "csv"}, headers=auth(tokens["auditor"]))
    assert answer.status_code == 200
    table = pd.read_csv(io.BytesIO(answer.content), dtype={"model_version": str})
    rows = table[(table["prediction_id"] == made) & (table["regimen"] == "lenvatinib")]
    assert len(rows) == 2 and set(rows["outcome_id"]) == {second["outcome_id"]} and set(rows["outcome_versions"]) == {2}
    assert dict(zip(rows["outcome"], rows["observed"])) == {"objective_response": False, "primary_resistance": True}
    others = table[(table["prediction_id"] == made) & (table["regimen"] == "sorafenib")]
    assert len(others) == 2 and others["outcome_id"].isna().all() and others["observed"].isna().all()
