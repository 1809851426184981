"""Monitoring after deployment (issue 16 points 2-5): served inputs in the trail, drift, performance,
verdicts, k suppression, GET /v1/monitoring and the monitor CLI. Uses the smoke model and the
session's simulated cohort; nothing is trained here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from response_model.dataset import row_to_record
from response_model.modeling.bundle import SIMULATED_DATA_LABEL
from response_model.monitoring import checks, drift, performance
from response_model.monitoring.profile import ProfileError, input_frame, profile_of, record_inputs
from response_model.monitoring.served import Served
from response_model.service.audit import AuditTrail, record_hash
from response_model.service.audit.chain import CONTENT_FIELDS

from audited_service import audited_service, auth, patient, records

PSEUDONYM_KEY = "monitoring-test-key-0123456789"
NO_PROBABILITIES = pd.DataFrame(columns=["regimen", "outcome", "probability"])


@pytest.fixture(scope="module")
def bundle(smoke_model):
    from response_model.modeling.predict import as_bundle, load_model

    return as_bundle(load_model(str(smoke_model["export_dir"])))


@pytest.fixture(scope="module")
def served_inputs(simulated_small):
    """300 patients of the training population (not the smoke model's own rows: another seed)."""
    rows = simulated_small.cohort.head(300).to_dict(orient="records")
    return input_frame(record_inputs(row_to_record(r)) for r in rows)


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp, audited_service(smoke_model["export_dir"], folder, mp, "monitoring",
                                                             PSEUDONYM_KEY) as svc:
        body = {"patients": [{"patient": patient(age=40 + i, albumin=3.0 + i / 20), "patient_id": f"mon-{i:03d}"}
                             for i in range(24)]}
        answer = svc["client"].post("/v1/predictions:batch", json=body, headers=auth(svc["tokens"]["clinician"]))
        assert answer.status_code == 200 and answer.json()["n_ok"] == 24
        svc["made"] = [r["prediction"]["prediction_id"] for r in answer.json()["results"]]
        svc["folder"] = folder
        yield svc


def test_the_bundle_carries_a_reference_profile_without_identifiers(bundle):
    profile = profile_of(bundle)
    assert profile["n"] > 500 and len(profile["sample"]["age"]) == 500
    assert "patient_id" not in profile["sample"] and profile["probabilities"]["probability"]
    with pytest.raises(ProfileError, match="retrain"):
        profile_of(object())


def test_drift_flags_a_unit_change_and_not_unshifted_traffic(bundle, served_inputs):
    profile, cfg = profile_of(bundle), checks.thresholds()
    calm = checks.drift_window(profile, served_inputs, NO_PROBABILITIES, cfg)
    assert calm["feature_drift"]["verdict"] == "ok", calm["feature_drift"]["worst"]
    assert calm["missingness_pattern"]["verdict"] == "ok" and calm["domain_classifier"]["verdict"] == "ok"
    shifted = served_inputs.copy()
    shifted.loc[shifted.index[:75], "albumin"] *= 10  # one site in four sends g/L
    flagged = checks.drift_window(profile, shifted, NO_PROBABILITIES, cfg)
    assert flagged["feature_drift"]["verdict"] == "act" and flagged["feature_drift"]["worst"] == "albumin"
    assert flagged["feature_drift"]["items"]["albumin"]["psi"] > cfg["feature_psi"]["act"]  # beyond training's range


def test_psi_and_the_significance_rule():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) > 0.25
    rule = {"watch": 0.1, "act": 0.25}
    assert [checks.band(v, rule) for v in (0.05, 0.1, 0.3, None)] == ["ok", "watch", "act", "n/a"]
    assert checks.band(0.3, rule, significant=False) == "ok"  # a small window's noise raises no alarm


def test_live_verdicts_see_a_slope_of_0_6_and_pass_a_calibrated_model():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.8, 1500)
    logit = np.log(p / (1 - p))
    rule = checks.thresholds()["performance"]
    calibrated = performance.live_metrics((rng.random(1500) < p).astype(float), p, n_boot=100)
    worse = performance.live_metrics((rng.random(1500) < 1 / (1 + np.exp(-0.6 * logit))).astype(float), p, n_boot=100)
    assert checks._live_verdict(calibrated, rule) == "ok"
    assert checks._live_verdict(worse, rule) == "act" and worse["calibration_slope_interval"][1] < 1
    needed = performance.labels_needed(p, 0.6)
    assert 30 < needed < 1500


def test_expected_auc_is_the_mean_auc_of_labels_drawn_from_the_predictions():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    p = rng.beta(2, 5, 400)
    drawn = [roc_auc_score(y, p) for y in ((rng.random(400) < p) for _ in range(120)) if 0 < y.sum() < 400]
    assert performance.expected_auc(p) == pytest.approx(np.mean(drawn), abs=0.01)


def _served(n_patients: int, n_requests: int, start: datetime) -> Served:
    ids = [f"p{i}" for i in range(n_requests)]
    requests = pd.DataFrame({"seq": range(n_requests), "time": [start + timedelta(hours=i) for i in range(n_requests)],
                             "prediction_id": ids,
                             "patient_pseudonym": [f"ps{i % n_patients}" for i in range(n_requests)],
                             "model_version": "1", "has_inputs": True})
    probabilities = pd.DataFrame({"prediction_id": ids, "patient_pseudonym": requests["patient_pseudonym"],
                                  "time": requests["time"], "regimen": "lenvatinib",
                                  "regimen_class": "tki_antiangiogenic", "outcome": "objective_response",
                                  "probability": np.linspace(0.1, 0.6, n_requests)})
    return Served(requests, input_frame([{"age": 60}] * n_requests), probabilities,
                  pd.DataFrame(columns=["time", "field"]))


def test_cells_with_fewer_than_k_patients_are_suppressed(bundle):
    cfg = {**checks.thresholds(), "windows": {"days": 7, "min_requests": 1, "max_windows": 4}, "privacy": {"k": 10}}
    start = datetime(2026, 11, 2, tzinfo=UTC)
    data = _served(n_patients=4, n_requests=40, start=start)  # 40 requests, but 4 patients
    outcomes = pd.DataFrame({"prediction_id": data.requests["prediction_id"][:8], "regimen": "lenvatinib",
                             "objective_response": [1, 0] * 4})
    state = checks.monitor(profile_of(bundle), data, outcomes, start, start + timedelta(days=7), cfg)
    window = state["windows"][0]
    assert window["patients"] == "< 10" and window["checks"]["feature_drift"]["verdict"] == "n/a"
    assert "items" not in window["checks"]["feature_drift"]
    assert state["performance"]["live"]["tki_antiangiogenic/objective_response"] == {
        "suppressed": True, "patients": "< 10", "verdict": "n/a"}
    text = json.dumps(state, default=str)
    assert "ps0" not in text and "p0\"" not in text  # no pseudonym, no prediction id


def test_served_inputs_are_stored_without_the_identifier_and_hashed(service):
    accepted = [r for r in records(service["url"]) if r["status"] == "accepted" and r["prediction_id"]]
    assert len(accepted) == 24
    stored = json.loads(accepted[0]["inputs"])  # canonical JSON text, hashed with the record
    assert stored["age"] == 40 and "patient_id" not in stored
    with AuditTrail(service["url"], create=False) as trail:
        entry = trail.get(accepted[0]["prediction_id"])
        assert entry.inputs["age"] == 40 and "patient_id" not in entry.inputs
        assert "mon-000" not in accepted[0]["inputs"]
        assert trail.verify().ok


def test_a_record_without_inputs_keeps_its_old_hash_and_an_old_trail_opens(tmp_path):
    content = {name: None for name in CONTENT_FIELDS}
    assert record_hash(1, "0" * 64, content) == record_hash(1, "0" * 64, {**content, "inputs": None})
    assert record_hash(1, "0" * 64, content) != record_hash(1, "0" * 64, {**content, "inputs": "{}"})
    url = f"sqlite:///{tmp_path}/old.db"
    with AuditTrail(url) as trail:
        trail.append({"endpoint": "GET /v1/model", "status": "accepted", "http_status": 200})
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_records DROP COLUMN inputs")  # as created before issue 16
    engine.dispose()
    with AuditTrail(url, create=False) as trail:
        trail.append({"endpoint": "GET /v1/model", "status": "accepted", "http_status": 200})
        assert trail.verify().ok and trail.count() == 2


def test_monitoring_endpoint_roles_and_audit(service):
    client, tokens = service["client"], service["tokens"]
    assert client.get("/v1/monitoring", headers=auth(tokens["clinician"])).status_code == 403
    assert client.get("/v1/monitoring").status_code == 401
    for role in ("auditor", "admin"):
        answer = client.get("/v1/monitoring", headers=auth(tokens[role]))
        assert answer.status_code == 200, answer.text
        assert answer.json()["requests"] == 24 and set(answer.json()["verdicts"]) == set(checks.CHECKS)
        assert answer.json()["label"] == SIMULATED_DATA_LABEL
    bad = client.get("/v1/monitoring?since=yesterday", headers=auth(tokens["auditor"]))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "since"
    too_long = client.get("/v1/monitoring?since=1900-01-01", headers=auth(tokens["auditor"]))
    assert too_long.status_code == 422 and "at most 120" in too_long.json()["errors"][0]["message"]
    reads = [r for r in records(service["url"]) if r["endpoint"] == "GET /v1/monitoring"]
    assert [r["http_status"] for r in reads] == [403, 401, 200, 200, 422, 422]
    assert reads[2]["detail"]["access"] == "monitoring"


def test_recorded_outcomes_label_the_served_predictions(service):
    from response_model.service.keys import KeyStore

    with KeyStore(service["url"]) as store:
        registrar = store.create("registrar", "monitoring registrar").token
    for i, pid in enumerate(service["made"][:12]):
        body = {"prediction_id": pid, "regimen": "lenvatinib", "started": True, "start_date": "2026-01-10",
                "best_response": "PR" if i % 3 == 0 else "SD", "criteria": "mRECIST",
                "last_followup_date": "2026-09-01"}
        answer = service["client"].post("/v1/outcomes", json=body, headers=auth(registrar))
        assert answer.status_code == 201, answer.text
    state = service["client"].get("/v1/monitoring", headers=auth(service["tokens"]["auditor"])).json()
    assert state["requests"] == 24 and state["labelled"] >= 12
    live = state["performance"]["live"]["tki_antiangiogenic/objective_response"]
    assert live["n"] == 12 and live["events"] == 4 and live["verdict"] == "n/a"  # below min_labelled: not judged


def test_monitor_cli_writes_the_report(service, smoke_model, tmp_path):
    from response_model.cli import main

    config = tmp_path / "monitoring.yaml"
    cfg = checks.thresholds()
    cfg["windows"].update(days=7, min_requests=5)
    cfg["privacy"]["k"] = 3
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    report = tmp_path / "report.html"
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    result = CliRunner().invoke(main, ["monitor", "--model-uri", str(smoke_model["export_dir"]), "--since", since,
                                       "--db", service["url"], "--report", str(report), "--config", str(config),
                                       "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "feature_drift" in result.output and "overall" in result.output
    assert f"label: {SIMULATED_DATA_LABEL}" in result.output
    text = report.read_text(encoding="utf-8")
    assert "Drift per feature over time" in text and "data:image/png;base64," in text
    assert SIMULATED_DATA_LABEL in text  # the smoke model was trained on simulated patients
    assert "mon-0" not in text


def test_an_act_verdict_logged_to_the_run_blocks_promotion(smoke_model):
    import mlflow
    from mlflow import MlflowClient

    from response_model.modeling.registry import MONITORING_TAGS, monitoring_reasons
    from response_model.monitoring.commands import log_to_run

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(smoke_model["tracking_uri"])  # where the CLI's client looks (as the env would set it)
    # the registry named too: another test of this worker may have pointed the global registry URI elsewhere
    client = MlflowClient(tracking_uri=smoke_model["tracking_uri"], registry_uri=smoke_model["tracking_uri"])
    name, version = smoke_model["name"], smoke_model["version"]
    run_id = client.get_model_version(name, version).run_id
    start = datetime(2026, 11, 2, tzinfo=UTC)
    window = {"start": start.isoformat(), "end": (start + timedelta(days=7)).isoformat(), "requests": 120,
              "checks": {"domain_classifier": {"auc": 0.81, "verdict": "act"},
                         "feature_drift": {"items": {"albumin": {"psi": 1.9}}}}}
    state = {"windows": [window], "verdicts": {"domain_classifier": "act", "feature_drift": "act"}, "verdict": "act"}
    try:
        assert log_to_run(run_id, state) == 3
        history = client.get_metric_history(run_id, "monitor.psi.albumin")
        assert [(m.value, m.step) for m in history] == [(1.9, int(start.timestamp()) // 86_400)]
        passed, reasons = monitoring_reasons(client, name, version)
        assert not passed and "domain_classifier,feature_drift" in reasons[0]
    finally:
        for key in MONITORING_TAGS:
            if key in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, key)
        quiet = monitoring_reasons(client, name, version)[0]
        mlflow.set_tracking_uri(previous)
    assert quiet


def test_the_monitoring_benchmark_runs_short(smoke_model, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "monitoring.py"
    spec = importlib.util.spec_from_file_location("benchmark_monitoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model-uri", str(smoke_model["export_dir"]), "--pool", "400", "--repeats", "1",
                        "--ladder", "60", "--windows", "1", "--window", "60", "--label-ladder", "100"]) == 0
    out = capsys.readouterr().out
    albumin = next(line for line in out.splitlines() if line.startswith("albumin_gl"))
    assert "rejections (act)" in albumin  # one site in four sends g/L: refused, naming albumin
    assert "alarms in 1 windows of 60" in out and "labels_needed" in out
