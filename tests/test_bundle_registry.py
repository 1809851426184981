"""The deployable bundle through MLflow: log, register, promote, load back, export, evaluate.

Every test has its own MLflow store (SQLite + artifact folder under tmp_path). The models are
real LightGBM classifiers fitted on a small simulated cohort, wrapped in a minimal adapter that
provides the ``predict_proba`` / ``explain`` protocol the bundle expects.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from response_model.dataset import parse_cohort, row_to_record
from response_model.features import build_feature_matrix
from response_model.modeling.bundle import ResponseModelBundle, example_input, log_bundle, save_bundle
from response_model.modeling.predict import as_bundle, load_model
from response_model.modeling.predictor import OUTPUT_COLUMNS
from response_model.modeling.registry import CHAMPION, evaluate, export, promote, register
from response_model.regimens import get_regimen
from response_model.sources.simulator import simulate_cohort
from response_model.tracking import configure_tracking, log_config, log_dataset, metric_key

import reference

NAME = "hcc-response"
CLASSES = ("checkpoint_inhibitor", "tki_antiangiogenic")
OUTCOMES = ("objective_response", "primary_resistance")


class LGBMAdapter:
    """A fitted ``lightgbm.LGBMClassifier`` with the bundle's model protocol."""

    def __init__(self, seed: int = 0):
        self.model = lightgbm.LGBMClassifier(
            n_estimators=25, num_leaves=7, min_child_samples=10, random_state=seed, n_jobs=1, verbose=-1
        )

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LGBMAdapter:
        self.model.fit(X, y)
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X)

    def explain(self, X: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        raw = self.model.booster_.predict(X, pred_contrib=True)
        return pd.DataFrame(raw[:, :-1], columns=list(X.columns), index=X.index), float(raw[0, -1])


@pytest.fixture(scope="module")
def cohort():
    """A small simulated cohort, parsed (its patient ids made unmistakable for the privacy test)."""
    frame = simulate_cohort(800, seed=11).cohort
    frame["patient_id"] = [f"PTSECRET{i:05d}" for i in range(len(frame))]
    return frame, parse_cohort(frame)


def _fit_models(parsed, seed: int = 0) -> dict[tuple[str, str], LGBMAdapter]:
    models = {}
    for regimen_class in CLASSES:
        for outcome in OUTCOMES:
            rows = [i for i, o in enumerate(parsed.outcomes)
                    if o.regimen and get_regimen(o.regimen).regimen_class == regimen_class
                    and getattr(o, outcome) is not None]
            X = build_feature_matrix([parsed.records[i] for i in rows], [parsed.outcomes[i].regimen for i in rows])
            y = np.array([getattr(parsed.outcomes[i], outcome) for i in rows])
            models[(regimen_class, outcome)] = LGBMAdapter(seed).fit(X, y)
    return models


@pytest.fixture(scope="module")
def bundle(cohort):
    return ResponseModelBundle(_fit_models(cohort[1]), simulated=True, data_digest="test")


@pytest.fixture(scope="module")
def patients(cohort):
    """Model input: 40 patients as cohort-table rows (alterations as JSON), without identifiers."""
    return example_input(cohort[1].records[:40], n=40)


@pytest.fixture(scope="module", autouse=True)
def registry_at_start():
    """The registry URI (environment and MLflow's global) before this file's first test: other files on the
    same worker may have set it; this file must leave it as it found it."""
    from mlflow.tracking._model_registry import utils

    return {"environment": os.environ.get("MLFLOW_REGISTRY_URI"), "global": utils._registry_uri}


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory):
    """An MLflow SQLite database with its tables created (migrations take seconds; copying does not)."""
    folder = tmp_path_factory.mktemp("template")
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    MlflowClient().search_experiments()
    mlflow.set_tracking_uri(None)
    return folder / "mlflow.db"


@pytest.fixture
def store(tmp_path, monkeypatch, empty_database):
    """A private MLflow store for one test (a copy of the empty database, artifacts under tmp_path)."""
    shutil.copy(empty_database, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # configure_tracking exports MLFLOW_REGISTRY_URI for subprocesses: set through monkeypatch first (empty =
    # unset for MLflow) so that the export is undone after the test and no later test inherits this store
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")
    uri = configure_tracking("test-bundle", artifact_root=tmp_path / "artifacts")
    yield tmp_path
    mlflow.set_tracking_uri(uri)  # leave no half-configured global behind for the next test
    mlflow.set_registry_uri(None)  # a test may point the registry elsewhere: back to "follow the tracking URI"


def _good_metrics(auc_lower: float = 0.65, slope: float = 1.0, auc: float = 0.72) -> dict[str, float]:
    metrics = {}
    for regimen_class in CLASSES:
        for outcome in OUTCOMES:
            metrics[metric_key(outcome, regimen_class, "auc_lower")] = auc_lower
            metrics[metric_key(outcome, regimen_class, "auc")] = auc
            metrics[metric_key(outcome, regimen_class, "calibration_slope")] = slope
    return metrics


def _log_version(bundle, patients, metrics: dict[str, float]) -> str:
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        log_bundle(bundle, "bundle", patients.head(3))
    return register(run.info.run_id, NAME)


GATE = {"auc_lower": 0.60, "calibration_slope": [0.8, 1.2]}


def test_registry_roundtrip_predicts_exactly(store, bundle, patients):
    expected = bundle.predict(None, patients)
    assert list(expected.columns) == list(OUTPUT_COLUMNS)
    assert expected["p_objective_response"].notna().all() and expected["p_primary_resistance"].notna().all()
    assert len(expected) == len(patients) * len(bundle.candidate_regimens())

    version = _log_version(bundle, patients, _good_metrics())
    assert version == "1"
    by_version = load_model(f"models:/{NAME}/1")
    pd.testing.assert_frame_equal(by_version.predict(patients), expected, check_exact=True)

    decision = promote(NAME, version, GATE)
    assert decision.promoted, decision.reasons
    champion = load_model(f"models:/{NAME}@{CHAMPION}")
    pd.testing.assert_frame_equal(champion.predict(patients), expected, check_exact=True)
    assert as_bundle(champion).metadata["model_version"] == "1"
    assert as_bundle(champion).metadata["label"] == "research use — trained on simulated data"
    records = [row_to_record(row) for row in patients.head(5).to_dict(orient="records")]
    pd.testing.assert_frame_equal(reference.scores(champion, records, ["lenvatinib", "nivolumab"]),
                                  reference.scores(bundle, records, ["lenvatinib", "nivolumab"]), check_exact=True)

    explained = reference.explain(champion, records, "atezolizumab_bevacizumab")
    assert set(explained) == set(OUTCOMES)
    contributions, base = explained["objective_response"]
    assert contributions.shape[0] == 5 and np.isfinite(base)


def test_no_patient_identifier_reaches_mlflow(store, cohort, bundle, patients, tmp_path):
    frame, _ = cohort
    config = tmp_path / "train.yaml"
    config.write_text("name: test\nmodel:\n  n_estimators: 25\n  learning_rate: 0.1\n")
    with mlflow.start_run() as run:
        digest = log_dataset(frame, "simulated-800", source="simulated://seed=11")
        params = log_config(config)
        log_bundle(bundle, "bundle", pd.concat([frame[["patient_id"]].head(3), patients.head(3)], axis=1))
    logged = MlflowClient().get_run(run.info.run_id)
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.digest == digest
    assert "patient_id" not in dataset_input.dataset.schema
    assert params["model.n_estimators"] == "25" and logged.data.params["model.learning_rate"] == "0.1"
    assert not any("patient_id" in key for key in logged.data.params)
    # Nothing in the store — database or artifacts — holds any patient's identifier.
    leaks = [str(path) for path in tmp_path.rglob("*")
             if path.is_file() and b"PTSECRET" in path.read_bytes()]
    assert not leaks


def test_promote_refuses_a_candidate_below_the_gate(store, bundle, patients):
    first = _log_version(bundle, patients, _good_metrics())
    assert promote(NAME, first, GATE).promoted
    weak = _log_version(bundle, patients, _good_metrics(auc_lower=0.55))
    decision = promote(NAME, weak, GATE)
    assert not decision.promoted
    assert any("fails the gate" in reason for reason in decision.reasons)
    assert any("auc_lower = 0.55 fails" in reason for reason in decision.reasons)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == first
    tags = client.get_model_version(NAME, weak).tags
    assert tags["promotion.decision"] == "refused"
    assert "fails the gate" in tags["promotion.reasons"]
    assert client.get_model_version(NAME, first).tags["promotion.decision"] == "promoted"

    miscalibrated = _log_version(bundle, patients, _good_metrics(slope=1.5))
    assert not promote(NAME, miscalibrated, GATE).promoted


def test_promote_refuses_a_candidate_worse_than_the_champion(store, bundle, patients, cohort):
    first = _log_version(bundle, patients, _good_metrics(auc_lower=0.70))
    assert promote(NAME, first, GATE).promoted
    worse = _log_version(bundle, patients, _good_metrics(auc_lower=0.64))  # passes the gate, below the champion
    decision = promote(NAME, worse, GATE)
    assert not decision.promoted and decision.previous_champion == first
    assert any("worse than champion" in reason for reason in decision.reasons)
    assert str(MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version) == first

    better = _log_version(bundle, patients, _good_metrics(auc_lower=0.72))
    assert promote(NAME, better, GATE).promoted
    assert str(MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version) == better

    # On the same held-out evaluation: a candidate whose AUC there is lower is refused.
    held_out = {"n": 100, "response": {"auc": 0.70, "auprc": 0.4, "brier": 0.2, "calibration_slope": 1.0},
                "resistance": None}
    lower = {**held_out, "response": {**held_out["response"], "auc": 0.65}}
    candidate = _log_version(bundle, patients, _good_metrics(auc_lower=0.75))
    decision = promote(NAME, candidate, GATE, evaluation={"candidate": lower, "champion": held_out})
    assert not decision.promoted
    assert any("response.auc candidate 0.65" in reason for reason in decision.reasons)


def test_export_loads_and_predicts_without_a_server(store, bundle, patients, monkeypatch):
    version = _log_version(bundle, patients, _good_metrics())
    assert promote(NAME, version, GATE).promoted
    out = export(f"models:/{NAME}@{CHAMPION}", store / "models" / f"{NAME}-v{version}")
    assert (out / "MLmodel").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    mlflow.set_registry_uri("http://127.0.0.1:9")
    raw = mlflow.pyfunc.load_model(str(out))
    pd.testing.assert_frame_equal(raw.predict(patients), bundle.predict(None, patients), check_exact=True)
    loaded = load_model(out)
    assert as_bundle(loaded).metadata["model_name"] == NAME
    assert as_bundle(loaded).metadata["model_version"] == version
    with pytest.raises(FileExistsError):
        export(f"models:/{NAME}@{CHAMPION}", out)


def test_evaluate_returns_the_json_shape(bundle):
    held_out = simulate_cohort(300, seed=99).cohort
    result = evaluate(bundle, parse_cohort(held_out))
    assert set(result) == {"n", "response", "resistance"}
    assert result["n"] == 300
    assert set(result["response"]) == {"auc", "auprc", "brier", "calibration_slope"}
    assert set(result["resistance"]) == {"auc", "auprc", "brier", "calibration_slope", "c_index"}
    assert 0.5 < result["response"]["auc"] <= 1.0 and 0.0 < result["resistance"]["c_index"] <= 1.0
    json.dumps(result, allow_nan=False)

    unlabelled = held_out.copy()
    for column in ("best_overall_response", "primary_resistance", "pfs_months", "pfs_event", "os_months", "os_event"):
        unlabelled[column] = None
    result = evaluate(bundle, parse_cohort(unlabelled))
    assert result["resistance"] is None and result["response"] is not None
    assert json.loads(json.dumps(result, allow_nan=False))["resistance"] is None


def test_missing_feature_columns_are_missing_values_with_a_warning(bundle, patients, tmp_path):
    dropped = ["albumin", "nlr", "afp", "tmb", "pdl1_tps", "alterations"]
    lacking = patients.drop(columns=dropped)
    with pytest.warns(UserWarning) as caught:
        scores = bundle.predict(None, lacking)
    message = " ".join(str(w.message) for w in caught)
    assert all(name in message for name in dropped)
    assert scores["p_objective_response"].notna().all()
    # The same through a saved pyfunc folder (the signature accepts absent columns).
    folder = save_bundle(bundle, tmp_path / "saved", patients.head(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = mlflow.pyfunc.load_model(str(folder)).predict(lacking)
    pd.testing.assert_frame_equal(reloaded, scores, check_exact=True)


def test_given_regimen_column_and_invalid_rows(bundle, patients):
    frame = patients.head(3).assign(regimen=["sorafenib", None, "ramucirumab"])
    scores = bundle.predict(None, frame)
    assert scores.loc[scores["row"] == 0, "regimen"].tolist() == ["sorafenib"]
    assert (scores["row"] == 1).sum() == len(bundle.candidate_regimens())
    ramucirumab = scores[(scores["row"] == 2)].iloc[0]
    assert ramucirumab["regimen"] == "ramucirumab"
    if not ramucirumab["eligible"]:
        assert "afp" in ramucirumab["ineligible_reason"].lower()
    bad = patients.head(2).assign(age=[150.0, 60.0])
    with pytest.raises(ValueError, match="row 0"):
        bundle.predict(None, bad)


def test_embedded_default_store_and_git_commit(tmp_path, monkeypatch):
    from response_model.tracking import git_commit

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")  # configure_tracking exports it: undone after (see store)
    try:
        uri = configure_tracking("default-store")
        assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
        assert (tmp_path / "mlflow.db").is_file()
        location = mlflow.get_experiment_by_name("default-store").artifact_location
        assert location == (tmp_path.resolve() / "mlartifacts").as_uri()
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert git_commit(tmp_path) is None  # not a git checkout: None, no error
    commit = git_commit()
    assert commit is None or len(commit) == 40


def test_bundle_of_response_classifiers_roundtrips(store, cohort, patients):
    from response_model.modeling.estimators import ResponseClassifier

    parsed = cohort[1]
    models = {}
    for regimen_class in CLASSES:
        rows = [i for i, o in enumerate(parsed.outcomes)
                if o.regimen and get_regimen(o.regimen).regimen_class == regimen_class
                and o.objective_response is not None]
        X = build_feature_matrix([parsed.records[i] for i in rows], [parsed.outcomes[i].regimen for i in rows])
        y = np.array([parsed.outcomes[i].objective_response for i in rows])
        models[(regimen_class, "objective_response")] = ResponseClassifier(n_estimators=30).fit(X, y)
    bundle = ResponseModelBundle(models)
    expected = bundle.predict(None, patients)
    assert expected["p_objective_response"].notna().all() and expected["p_primary_resistance"].isna().all()
    with mlflow.start_run() as run:
        log_bundle(bundle, "bundle", patients.head(3))
    version = register(run.info.run_id, NAME)
    loaded = load_model(f"models:/{NAME}/{version}")
    pd.testing.assert_frame_equal(loaded.predict(patients), expected, check_exact=True)
    first = row_to_record(patients.iloc[0].to_dict())
    contributions, base = reference.explain(loaded, first, "lenvatinib")["objective_response"]
    assert contributions.shape == (1, len(models[("tki_antiangiogenic", "objective_response")].gbm_features_))
    assert as_bundle(loaded).metadata["label"] is None

    # Loading needs nothing but the installed package: a fresh interpreter, no test code, no server.
    import subprocess
    import sys

    folder = export(f"models:/{NAME}/{version}", store / "exported")
    patients.to_parquet(store / "patients.parquet")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    subprocess.run([sys.executable, "-c", script, str(folder), str(store / "patients.parquet"),
                    str(store / "scores.parquet")], check=True, env=env, cwd=store, timeout=120)
    pd.testing.assert_frame_equal(pd.read_parquet(store / "scores.parquet"), expected, check_exact=True)


def test_zz_no_registry_uri_outlives_this_module(registry_at_start):
    """Runs last in this file (pytest keeps file order): the tests above pointed the registry at private
    stores and at an unreachable server; none of that may reach later tests or their subprocesses."""
    from mlflow.tracking._model_registry import utils

    assert os.environ.get("MLFLOW_REGISTRY_URI") == registry_at_start["environment"]
    assert utils._registry_uri in (None, registry_at_start["global"])  # None: follow the tracking URI
