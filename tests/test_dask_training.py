"""Training on a Dask cluster (response_model.modeling.distributed, ``train --dask-scheduler``).

Tolerance: the metrics of a Dask run must equal the local run's to 1e-9. Why exact: the same seeds
give the same folds, every fold is fitted whole in one task by the same single-threaded, seeded
estimators, and the client computes the metrics from the same out-of-fold predictions; only the
order in which folds finish differs, and results are collected in fold order. (In practice the
numbers are bit-identical; 1e-9 leaves room for BLAS summation order in another process.)
Data-parallel LightGBM (``lightgbm.dask``, large cohorts only) is not bit-identical to a
single-machine fit; its test checks the fit is equivalent in quality instead.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from response_model.privacy import PSEUDONYM_KEY_ENV

import reference

CONFIG = Path(__file__).parent / "data" / "train_smoke.yaml"
TOLERANCE = 1e-9
NOT_COMPARED = {"training_seconds"}  # wall-clock time


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes with one thread each."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local,
          Client(local) as client):
        yield local, client


def _metrics_by_run(run_id: str) -> dict[str, dict[str, float]]:
    """{run name: metrics} of a training run and its nested class × outcome runs."""
    client = mlflow.MlflowClient()
    parent = client.get_run(run_id)
    runs = {"parent": parent.data.metrics}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    for child in children:
        runs[child.info.run_name] = child.data.metrics
    return runs


def test_dask_training_has_the_local_runs_metrics_and_tracking(smoke_model, cluster, monkeypatch):
    from distributed import get_task_stream

    from response_model.modeling.predict import load_model
    from response_model.modeling.train import train
    from response_model.sources.simulator import simulate_cohort

    local_cluster, client = cluster
    monkeypatch.chdir(smoke_model["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "dask-training-test-key-0123456789")
    mlflow.set_tracking_uri(smoke_model["tracking_uri"])
    with get_task_stream(client) as tasks:
        result = train(CONFIG, register=False, progress=False, dask_scheduler=local_cluster.scheduler_address)

    # the folds ran as Dask tasks, on both workers (smoke config: 3 folds × 2 classes × 2 outcomes)
    assert len(tasks.data) >= 12
    assert len({task["worker"] for task in tasks.data}) == 2

    local, distributed = _metrics_by_run(smoke_model["run_id"]), _metrics_by_run(result.run_id)
    assert set(distributed) == set(local) and len(local) == 5  # parent + 4 class × outcome runs
    compared = 0
    for name, metrics in local.items():
        assert set(distributed[name]) == set(metrics), name
        for key, value in metrics.items():
            if key in NOT_COMPARED:
                continue
            other = distributed[name][key]
            assert (np.isnan(value) and np.isnan(other)) or abs(other - value) <= TOLERANCE, (name, key, value, other)
            compared += 1
    assert compared > 100
    tracked = mlflow.get_run(result.run_id)
    assert tracked.data.tags["compute.dask_scheduler"] == local_cluster.scheduler_address
    # "report" is logged to the smoke run later, by the report tests (which may have run first)
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)} >= {
        a.path for a in mlflow.MlflowClient().list_artifacts(smoke_model["run_id"])} - {"report"}

    # and the final models are the same: identical scores for new patients
    records = simulate_cohort(20, seed=99).cohort
    from response_model.dataset import row_to_record

    patients = [row_to_record(row) for row in records.to_dict(orient="records")]
    here = reference.scores(load_model(str(smoke_model["export_dir"])), patients)
    there = reference.scores(result.bundle, patients)
    for column in ("p_objective_response", "p_primary_resistance"):
        np.testing.assert_allclose(there[column], here[column], rtol=0, atol=TOLERANCE)


def _toy(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)])
    logit = 1.2 * X["f0"] - 0.8 * X["f1"] + 0.5 * X["f2"] * X["f3"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_search_trials_run_as_dask_tasks_with_the_local_result(cluster):
    from distributed import get_task_stream

    from response_model.modeling.cv import search_estimator
    from response_model.modeling.distributed import dask_training, parallel_jobs
    from response_model.modeling.estimators import ResponseClassifier

    _, client = cluster
    X, y = _toy()
    search = {"method": "grid", "inner_splits": 2, "space": {"num_leaves": [4, 8]}}
    model = ResponseClassifier(n_estimators=20, min_child_samples=20, linear_weight=0.0)
    local = search_estimator(model, search, seed=0, n_jobs=parallel_jobs(1)).fit(X, y)
    with dask_training(client, lightgbm_min_rows=None), get_task_stream(client) as tasks:
        assert parallel_jobs(1) == -1
        remote = search_estimator(model, search, seed=0, n_jobs=parallel_jobs(1)).fit(X, y)
    assert parallel_jobs(1) == 1  # back to local outside the context
    assert len(tasks.data) >= 1 and len({t["worker"] for t in tasks.data}) >= 1
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"],
                               rtol=0, atol=TOLERANCE)


def test_large_lightgbm_fits_are_data_parallel_with_lightgbm_dask(cluster):
    """Above the row threshold the LightGBM part is fitted by lightgbm.dask over both workers and comes
    back as a plain LGBMClassifier; quality equals a local fit within 0.02 AUC (not bit-identical:
    each worker bins its own partition)."""
    from distributed import get_task_stream
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score

    from response_model.modeling.distributed import dask_training
    from response_model.modeling.estimators import ResponseClassifier

    _, client = cluster
    X, y = _toy(1200, seed=1)
    X_test, y_test = _toy(2000, seed=2)
    params = {"n_estimators": 40, "min_child_samples": 20, "linear_weight": 0.0}
    local = ResponseClassifier(**params).fit(X, y)
    with dask_training(client, lightgbm_min_rows=1000), get_task_stream(client) as tasks:
        remote = ResponseClassifier(**params).fit(X, y)
        small = ResponseClassifier(**params).fit(X.iloc[:500], y[:500])  # below the threshold: local
    assert type(remote.gbm_) is LGBMClassifier and type(small.gbm_) is LGBMClassifier
    assert any("train_part" in str(t["key"]) for t in tasks.data)
    assert len({t["worker"] for t in tasks.data if "train_part" in str(t["key"])}) == 2
    auc_local = roc_auc_score(y_test, local.predict_proba(X_test)[:, 1])
    auc_remote = roc_auc_score(y_test, remote.predict_proba(X_test)[:, 1])
    assert abs(auc_remote - auc_local) < 0.02, (auc_local, auc_remote)
    np.testing.assert_allclose(small.predict_proba(X_test), ResponseClassifier(**params).fit(
        X.iloc[:500], y[:500]).predict_proba(X_test), rtol=0, atol=1e-12)
