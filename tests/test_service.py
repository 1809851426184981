"""The prediction service (response_model.service.app) against a model trained on a small simulated cohort."""

from __future__ import annotations

import copy
import threading
import time

import mlflow
import pytest
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV, PseudonymKeyError
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.models import EXAMPLE_PATIENT, MAX_BATCH

PSEUDONYM_KEY = "service-test-pseudonym-key-0123456789"
RAW_ID = "MRN-SERVICE-TEST-0042"
MODEL = "hcc-smoke"


@pytest.fixture(scope="module")
def registry(smoke_model, tmp_path_factory):
    """A private copy of the smoke model's MLflow store (``hcc-smoke``) with its version registered a second
    time: versions 1 and 2 (same bundle, two versions), served from a folder of this module's own."""
    import shutil

    from response_model.modeling.registry import register

    folder = tmp_path_factory.mktemp("service")
    shutil.copy2(smoke_model["folder"] / "mlflow.db", folder / "mlflow.db")  # the artifacts stay where they are
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        mp.delenv(DB_URL_ENV, raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        second = register(smoke_model["run_id"], MODEL)
        yield {"folder": folder, "v1": smoke_model["version"], "v2": second}
    mlflow.set_tracking_uri(previous)


def _service(folder, name: str, version: str):
    """(client context manager, tokens by role, db url) of a fresh service on ``models:/hcc-smoke/<version>``."""
    url = f"sqlite:///{folder}/{name}.db"
    with KeyStore(url) as store:
        tokens = {role: store.create(role, f"test {role}").token for role in ("clinician", "auditor", "admin")}
    app = create_app(f"models:/{MODEL}/{version}", url)
    return TestClient(app), tokens, url


@pytest.fixture(scope="module")
def service(registry):
    client, tokens, url = _service(registry["folder"], "module", registry["v1"])
    with client:
        yield client, tokens, url


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def patient(**changes) -> dict:
    record = copy.deepcopy(EXAMPLE_PATIENT)
    record.update(changes)
    return record


def audit_count(url: str) -> int:
    with AuditTrail(url) as trail:
        return trail.count()


# -- probes, model, start-up --------------------------------------------------------------------------


def test_probes_and_readiness(registry, service):
    client, tokens, _ = service
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == registry["v1"]
    # before start-up (lifespan not run) the app is alive but not ready
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(registry["folder"])
        cold = TestClient(create_app(f"models:/{MODEL}/{registry['v1']}", f"sqlite:///{registry['folder']}/cold.db"))
        assert cold.get("/healthz").status_code == 200
        assert cold.get("/readyz").status_code == 503


def test_start_up_needs_the_pseudonym_key(monkeypatch, registry):
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    with pytest.raises(PseudonymKeyError, match=PSEUDONYM_KEY_ENV):
        create_app(f"models:/{MODEL}/1", f"sqlite:///{registry['folder']}/nokey.db")


def test_model_endpoint(registry, service):
    client, tokens, _ = service
    for role in ("clinician", "auditor", "admin"):
        response = client.get("/v1/model", headers=auth(tokens[role]))
        assert response.status_code == 200, role
    info = response.json()
    assert info["model_name"] == MODEL and info["model_version"] == registry["v1"]
    assert info["label"] == "research use — trained on simulated data"
    assert info["data_digest"] and info["training_date"] and info["intended_use"] and info["limitations"]
    assert any(k.endswith(".auc") for k in info["metrics"])
    assert client.get("/v1/model").status_code == 401


def test_openapi_has_examples(service):
    client, _, _ = service
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["PredictionRequest"]
    assert request["examples"][0]["patient"]["afp"] == EXAMPLE_PATIENT["afp"]
    assert "/v1/predictions:batch" in schema["paths"]


# -- access ----------------------------------------------------------------------------------------


def test_role_matrix(registry, service):
    client, tokens, _ = service
    body = {"patient": patient()}
    none = client.post("/v1/predictions", json=body)
    assert none.status_code == 401 and none.headers["WWW-Authenticate"] == "Bearer"
    bad = client.post("/v1/predictions", json=body, headers=auth("rm_0123456789ab_" + "x" * 43))
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/v1/predictions", json=body, headers=auth(tokens["auditor"])).status_code == 403
    assert client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"])).status_code == 200
    assert client.post("/v1/predictions", json=body, headers=auth(tokens["admin"])).status_code == 200
    assert client.post("/v1/predictions:batch", json={"patients": [body]},
                       headers=auth(tokens["auditor"])).status_code == 403
    assert client.post("/v1/admin/reload", headers=auth(tokens["clinician"])).status_code == 403
    assert client.post("/v1/admin/reload", headers=auth(tokens["auditor"])).status_code == 403
    assert client.post("/v1/admin/reload").status_code == 401
    # an invalid body without a key is a 401, not a 422 that would describe the body
    assert client.post("/v1/predictions", json={"patient": {"albumin": 35}}).status_code == 401


def test_admin_reload(registry, service):
    client, tokens, _ = service
    response = client.post("/v1/admin/reload", headers=auth(tokens["admin"]))
    assert response.status_code == 200
    assert response.json()["current"]["model_version"] == registry["v1"]


# -- predictions ------------------------------------------------------------------------------------


def test_prediction_content(registry, service):
    client, tokens, _ = service
    response = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(tokens["clinician"]))
    assert response.status_code == 200
    out = response.json()
    assert out["model_name"] == MODEL and out["model_version"] == registry["v1"]
    assert out["label"] == "research use — trained on simulated data"
    assert out["genomics"] == "genotyped" and out["genomic_tests"] == []
    assert out["out_of_distribution"]["checked"] is True
    assert out["interval_level"] == 0.8 and out["uncertainty_method"].startswith("80% per-patient interval")
    eligible = [r for r in out["regimens"] if r["eligible"]]
    probabilities = [r["objective_response"]["probability"] for r in eligible]
    assert probabilities == sorted(probabilities, reverse=True)
    assert [r["rank"] for r in eligible] == list(range(1, len(eligible) + 1))
    first = eligible[0]
    for outcome in ("objective_response", "primary_resistance"):
        estimate = first[outcome]
        assert 0 <= estimate["interval"]["lower"] <= estimate["probability"] <= estimate["interval"]["upper"] <= 1
        assert estimate["interval"]["level"] == 0.8
        assert estimate["band"] in {"low", "moderate", "high"}
        top = first["explanations"][outcome]
        assert 1 <= len(top) <= 6  # the five largest terms, and the not-recorded term when inputs are missing
        assert all(c["scale"] == "log-odds before calibration (whole model)" for c in top)
        assert all(c["direction"].split()[0] in {"raises", "lowers"} for c in top)
        magnitudes = [abs(c["contribution"]) for c in top if c["term"] != "not_recorded"]
        assert magnitudes == sorted(magnitudes, reverse=True)
    contributions = [c for r in out["regimens"] for o in r["explanations"].values() for c in o]
    afp = [c for c in contributions if c["term"] == "afp"]
    if afp:  # derived features are shown as their record field, with its unit
        assert afp[0]["fields"] == ["afp"] and afp[0]["display"] == "850 ng/mL"
    regimen_terms = [(r["label"], c) for r in out["regimens"] for o in r["explanations"].values() for c in o
                     if c["term"] == "regimen"]
    assert regimen_terms and all(c["text"] == f"Regimen: {label}" for label, c in regimen_terms)
    assert RAW_ID not in response.text


def test_ramucirumab_ineligible_at_low_afp(service):
    client, tokens, _ = service
    body = {"patient": patient(afp=35.0), "regimens": ["ramucirumab", "lenvatinib", "sorafenib"]}
    out = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"])).json()
    ramucirumab = next(r for r in out["regimens"] if r["regimen"] == "ramucirumab")
    assert ramucirumab["eligible"] is False and ramucirumab["rank"] is None
    assert "400" in ramucirumab["ineligible_reason"]
    assert out["ineligible"] == [{"regimen": "ramucirumab", "reason": ramucirumab["ineligible_reason"]}]
    assert out["regimens"][-1]["regimen"] == "ramucirumab"  # eligible ones first
    assert {r["regimen"] for r in out["regimens"]} == {"ramucirumab", "lenvatinib", "sorafenib"}


def test_clinical_only_estimate(service):
    client, tokens, _ = service
    record = patient(alterations=None)
    out = client.post("/v1/predictions", json={"patient": record}, headers=auth(tokens["clinician"])).json()
    assert out["genomics"] == "clinical-only estimate"
    tests = out["genomic_tests"]
    assert tests and all(0 <= t["p_if_not_altered"] <= 1 and 0 <= t["p_if_altered"] <= 1 for t in tests)
    spreads = [t["spread"] for t in tests]
    assert spreads == sorted(spreads, reverse=True)
    assert any("CTNNB1" in t["test"] for t in tests) or any("PIK3CA" in t["test"] for t in tests)


def test_answers_are_exactly_the_documented_response_model(service):
    """The answer is written without FastAPI's response-model pass: it must already be what that pass
    would send — every field of PredictionResponse present, nothing else (no audit-only SHAP vectors)."""
    from response_model.service.models import PredictionResponse

    client, tokens, _ = service
    bodies = [{"patient": patient()}, {"patient": patient(alterations=None)},
              {"patient": patient(afp=35.0), "regimens": ["ramucirumab", "lenvatinib"]},
              {"patient": {"age": 71, "sex": "female"}}]
    for body in bodies:
        response = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"]))
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        out = response.json()
        assert out == PredictionResponse.model_validate(out).model_dump(mode="json"), body
        assert all("shap" not in r for r in out["regimens"])


def test_validation_errors_have_the_cli_texts(service):
    client, tokens, _ = service
    response = client.post("/v1/predictions", json={"patient": patient(albumin=35)}, headers=auth(tokens["clinician"]))
    assert response.status_code == 422
    errors = response.json()["errors"]
    albumin = next(e for e in errors if e["field"] == "patient.albumin")
    assert "looks like g/L; expected g/dL" in albumin["message"] and albumin["value"] == 35
    missing = client.post("/v1/predictions", json={"patient": {"sex": "male"}}, headers=auth(tokens["clinician"]))
    assert missing.status_code == 422
    required = {"field": "patient.age", "value": None, "message": "age: required field is missing"}
    assert required in missing.json()["errors"]
    unknown = client.post("/v1/predictions", json={"patient": patient(), "regimens": ["aspirin"]},
                          headers=auth(tokens["clinician"]))
    assert unknown.status_code == 422 and "aspirin" in unknown.json()["errors"][0]["message"]
    not_json = client.post("/v1/predictions", content=b"{not json", headers={**auth(tokens["clinician"]),
                                                                            "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"]


def test_batch_with_bad_rows(registry, service):
    client, tokens, _ = service
    rows = [{"patient": patient()}, {"patient": patient(albumin=35)}, {"patient": patient(afp=35.0)},
            "not a patient", {"patient": patient(alterations=None), "patient_id": RAW_ID}]
    response = client.post("/v1/predictions:batch", json={"patients": rows}, headers=auth(tokens["clinician"]))
    assert response.status_code == 200
    out = response.json()
    assert out["model_version"] == registry["v1"] and out["n_ok"] == 3 and out["n_rejected"] == 2
    ok = [r["ok"] for r in out["results"]]
    assert ok == [True, False, True, False, True]
    assert "looks like g/L; expected g/dL" in out["results"][1]["errors"][0]["message"]
    assert all(r["prediction"]["model_version"] == registry["v1"] for r in out["results"] if r["ok"])
    assert out["results"][4]["prediction"]["genomics"] == "clinical-only estimate"
    assert RAW_ID not in response.text


def test_batch_too_large(service):
    client, tokens, _ = service
    rows = [{"patient": {"age": 60, "sex": "male"}}] * (MAX_BATCH + 1)
    response = client.post("/v1/predictions:batch", json={"patients": rows}, headers=auth(tokens["clinician"]))
    assert response.status_code == 413
    assert f"at most {MAX_BATCH}" in response.json()["errors"][0]["message"]


# -- audit ------------------------------------------------------------------------------------------


def test_every_request_is_audited(registry, service):
    client, tokens, url = service
    before = audit_count(url)
    clinician = auth(tokens["clinician"])
    body = {"patient": patient(), "patient_id": RAW_ID}
    statuses = [
        client.post("/v1/predictions", json=body).status_code,  # 401
        client.post("/v1/predictions", json=body, headers=auth("nonsense")).status_code,  # 401
        client.post("/v1/predictions", json=body, headers=auth(tokens["auditor"])).status_code,  # 403
        client.post("/v1/predictions", json={"patient": patient(albumin=35)}, headers=clinician).status_code,  # 422
        client.post("/v1/predictions", json=body, headers=clinician).status_code,  # 200
    ]
    assert statuses == [401, 401, 403, 422, 200]
    batch = client.post("/v1/predictions:batch", json={"patients": [body, {"patient": {}}]}, headers=clinician)
    assert batch.status_code == 200  # one record per row
    assert audit_count(url) == before + len(statuses) + 2
    with AuditTrail(url) as trail:
        assert trail.verify().ok
        entries = trail.query(limit=1000)[before:]
    assert [e.http_status for e in entries] == [401, 401, 403, 422, 200, 200, 422]
    assert entries[2].role == "auditor" and entries[2].key_id
    accepted = entries[4]
    assert accepted.model_name == MODEL and accepted.model_version == registry["v1"]
    assert accepted.patient_pseudonym and accepted.input_digest and accepted.outputs and accepted.explanations
    assert accepted.prediction_id
    with open(url.removeprefix("sqlite:///"), "rb") as handle:
        assert RAW_ID.encode() not in handle.read()


# -- reload under load ---------------------------------------------------------------------------------


def test_reload_during_requests(registry):
    client, tokens, url = _service(registry["folder"], "reload", registry["v1"])
    failures, versions, stop = [], set(), threading.Event()

    def hammer():
        while not stop.is_set():
            response = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(tokens["clinician"]))
            if response.status_code != 200:
                failures.append(response.status_code)
            else:
                versions.add(response.json()["model_version"])

    with client:
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        reload = client.post("/v1/admin/reload", json={"model_uri": f"models:/{MODEL}/{registry['v2']}"},
                             headers=auth(tokens["admin"]))
        deadline = time.monotonic() + 20  # let the threads run on the new model for a while too
        while registry["v2"] not in versions and not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
        assert reload.status_code == 200, reload.text
        assert reload.json()["previous"]["model_version"] == registry["v1"]
        assert reload.json()["current"]["model_version"] == registry["v2"]
        after = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(tokens["clinician"]))
        assert after.json()["model_version"] == registry["v2"]
    assert not failures
    assert versions <= {registry["v1"], registry["v2"]} and registry["v2"] in versions
    with AuditTrail(url) as trail:
        assert trail.verify().ok


def test_prediction_latency(service, capsys):
    client, tokens, _ = service
    headers = auth(tokens["clinician"])
    body = {"patient": patient()}
    client.post("/v1/predictions", json=body, headers=headers)
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        assert client.post("/v1/predictions", json=body, headers=headers).status_code == 200
        timings.append(time.perf_counter() - started)
    timings.sort()
    with capsys.disabled():
        print(f"\none prediction (all regimens, explanations, audit), TestClient: median {timings[5] * 1000:.0f} ms")


def test_alias_check_swaps_in_a_promoted_version(registry):
    from mlflow import MlflowClient

    client_ml = MlflowClient()
    client_ml.set_registered_model_alias(MODEL, "champion", registry["v1"])
    url = f"sqlite:///{registry['folder']}/alias.db"
    with KeyStore(url) as store:
        token = store.create("clinician", "alias test").token
    app = create_app(f"models:/{MODEL}@champion", url, alias_check=0.2)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["model_version"] == registry["v1"]
        client_ml.set_registered_model_alias(MODEL, "champion", registry["v2"])
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["model_version"] != registry["v2"] and time.monotonic() < deadline:
            time.sleep(0.1)
        out = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(token)).json()
        assert out["model_version"] == registry["v2"]


def test_fuzzed_bodies_never_give_a_server_error(service):
    """Random type and value changes to a valid body: every answer is 200 or 422, never 5xx."""
    import random

    client, tokens, _ = service
    rng = random.Random(4)
    junk = [None, "", "abc", -1, 0, 1e9, 35, 3.5, True, [], {}, ["x"], {"gene": "CTNNB1"}, "NaN", 1e308, -1e-9,
            "p.S45P", [{"gene": "XYZ1", "kind": "missense"}], "CTNNB1 p.S45P; FGF19 amp"]
    fields = list(EXAMPLE_PATIENT) + ["patient_id", "unknown_field", "child_pugh_class", "nlr", "cancer_type"]
    statuses = []
    for _ in range(60):
        record = patient()
        for name in rng.sample(fields, k=rng.randint(1, 4)):
            record[name] = rng.choice(junk)
        body = {"patient": record}
        if rng.random() < 0.3:
            body["regimens"] = rng.choice([None, [], ["sorafenib"], ["ramucirumab", "nope"], "sorafenib", [1]])
        if rng.random() < 0.1:
            body = rng.choice([[], "x", {"patient": None}, {"patients": []}, {"patient": record, "extra": 1}])
        response = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"]))
        statuses.append(response.status_code)
        assert response.status_code in (200, 422), (body, response.text)
        if response.status_code == 422:
            assert response.json()["errors"] and all(e["message"] for e in response.json()["errors"])
    assert 200 in statuses and 422 in statuses


def test_a_failing_prediction_is_audited_as_a_500(service, monkeypatch):
    import response_model.service.prediction as app_module

    client, tokens, url = service
    before = audit_count(url)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "predict_many", broken)
    response = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(tokens["clinician"]))
    assert response.status_code == 500 and "RuntimeError" in response.json()["detail"]
    with AuditTrail(url) as trail:
        assert trail.count() == before + 1
        assert trail.query(limit=1000)[-1].http_status == 500


def test_a_patient_id_echoed_by_the_output_is_refused_not_stored(service):
    client, tokens, url = service
    before = audit_count(url)
    body = {"patient": patient(), "regimens": ["sorafenib"], "patient_id": "sorafenib"}
    response = client.post("/v1/predictions", json=body, headers=auth(tokens["clinician"]))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "patient_id"
    with AuditTrail(url) as trail:
        assert trail.count() == before + 1 and trail.verify().ok
        assert trail.query(limit=1000)[-1].patient_pseudonym


def test_batch_row_whose_id_is_echoed_is_rejected_alone(service):
    client, tokens, url = service
    before = audit_count(url)
    rows = [{"patient": patient(), "regimens": ["sorafenib"], "patient_id": "sorafenib"},
            {"patient": patient(), "patient_id": RAW_ID}]
    out = client.post("/v1/predictions:batch", json={"patients": rows}, headers=auth(tokens["clinician"])).json()
    assert [r["ok"] for r in out["results"]] == [False, True] and out["n_ok"] == 1
    with AuditTrail(url) as trail:
        assert trail.count() == before + 2 and trail.verify().ok


def test_out_of_distribution_flag_names_the_features(service):
    client, tokens, _ = service
    response = client.post("/v1/predictions", json={"patient": patient(afp=900000, bmi=75)},
                           headers=auth(tokens["clinician"]))
    assert response.status_code == 200
    flag = response.json()["out_of_distribution"]
    assert flag["checked"] and flag["flagged"]
    assert {"afp_log10", "bmi"} <= {item["feature"] for item in flag["features"]}


def test_audit_record_holds_every_shap_value_and_the_base_value(registry, service):
    client, tokens, url = service
    answer = client.post("/v1/predictions", json={"patient": patient()}, headers=auth(tokens["clinician"])).json()
    assert all("shap" not in it for it in answer["regimens"])
    with AuditTrail(url) as trail:
        entry = trail.get(answer["prediction_id"])
    first = answer["regimens"][0]
    stored = entry.explanations[first["regimen"]]["objective_response"]
    assert stored["top"] == first["explanations"]["objective_response"]
    assert len(stored["values"]) > len(stored["top"]) and "base_value" in stored and stored["scale"]
    for shown in stored["top"]:  # each term shown is the sum of its features' values, kept per feature
        total = sum(stored["values"][f] for f in stored["terms"][shown["term"]])
        assert total == pytest.approx(shown["contribution"], abs=1e-5)
    assert sorted(f for fs in stored["terms"].values() for f in fs) == sorted(stored["values"])
    # the per-patient interval, with its level and method, is in the record's outputs
    assert entry.outputs["interval_level"] == 0.8
    assert entry.outputs["uncertainty_method"] == answer["uncertainty_method"]
    assert entry.outputs["regimens"][first["regimen"]]["objective_response"]["interval"] == \
        first["objective_response"]["interval"]


def test_an_unknown_request_field_is_named_with_the_request_fields(service):
    client, tokens, _ = service
    r = client.post("/v1/predictions", json={"patient": patient(), "urgent": True}, headers=auth(tokens["clinician"]))
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "urgent", "value": True,
                                   "message": "urgent: unknown field; expected one of patient, regimens, patient_id"}]
