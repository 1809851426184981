"""Batch scoring on Dask (response_model.modeling.batch, ``response-model score``) against the API.

The API shows probabilities rounded to 4 decimals (and top contributions to 5) and keeps every
feature's SHAP value and the base value in the audit trail (as computed, or rounded to 8
decimals). The batch output keeps full precision: its probabilities must round to exactly the
API's and its SHAP values equal the audit trail's to 1e-12, or round to exactly them (both compute
with the bundle's compiled models); its probabilities equal the MLflow pyfunc's (the models' own
predict_proba) to 1e-12.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from response_model.dataset import INPUT_FIELDS, row_to_record, write_cohort
from response_model.modeling.batch import (
    BASE_VALUE,
    BatchInputError,
    score_file,
    shap_column,
)
from response_model.modeling.bundle import OUTCOMES
from response_model.modeling.explanation_groups import term_column
from response_model.regimens import candidate_regimens

PSEUDONYM_KEY = "batch-test-pseudonym-key-0123456789"
N = 24
BAD_ROWS = {3: {"albumin": 35.0}, 10: {"sex": "robot"}, 17: {"age": -4.0}}  # input row → bad values


@pytest.fixture(scope="module")
def cluster():
    """A small in-process Dask cluster (two workers, one thread each) shared by the tests of this module."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local,
          Client(local) as client):
        yield local, client


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(Parquet path, CSV path, the canonical frame) of N simulated patients, three of them invalid."""
    from response_model.sources.simulator import simulate_cohort

    folder = tmp_path_factory.mktemp("batch")
    frame = simulate_cohort(N, seed=11).cohort.copy()
    parquet = write_cohort(frame, folder / "cohort.parquet")
    bad = frame.astype(object)
    for row, values in BAD_ROWS.items():
        for column, value in values.items():
            bad.loc[row, column] = value
    bad.to_csv(folder / "cohort_bad.csv", index=False)
    frame.to_csv(folder / "cohort.csv", index=False)
    pd.DataFrame(bad).to_parquet(folder / "cohort_bad.parquet", index=False)
    return {"parquet": parquet, "csv": folder / "cohort.csv", "bad_csv": folder / "cohort_bad.csv",
            "bad_parquet": folder / "cohort_bad.parquet", "frame": frame, "folder": folder}


def _kept(batch: float, stored: float) -> bool:
    """The audit trail keeps a SHAP value either as computed or rounded to 8 decimals: equal to either."""
    return abs(batch - stored) <= 1e-12 or round(batch, 8) == stored


def test_batch_scores_equal_the_api(smoke_model, cluster, cohort, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from response_model.privacy import PSEUDONYM_KEY_ENV
    from response_model.service.app import create_app
    from response_model.service.audit import AuditTrail
    from response_model.service.keys import KeyStore

    _, client = cluster
    model = str(smoke_model["export_dir"])
    out = tmp_path / "scores.parquet"
    result = score_file(model, cohort["parquet"], out, explain=True, client=client, partition_rows=10, progress=False)
    assert (result.n_read, result.n_scored, result.n_rejected, result.partitions) == (N, N, 0, 3)
    batch = pd.read_parquet(out)
    assert result.n_rows == len(batch) and batch["input_row"].is_monotonic_increasing
    assert set(batch["input_row"]) == set(range(N))
    assert (batch["patient_id"] == cohort["frame"]["patient_id"].to_numpy()[batch["input_row"]]).all()

    # the same patients through the API (batch endpoint), audit trail in a private SQLite file
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    db = f"sqlite:///{tmp_path}/service.db"
    with KeyStore(db) as store:
        token = store.create("clinician", "batch test").token
    records = [row_to_record(row) for row in cohort["frame"].to_dict(orient="records")]
    patients = [{"patient": r.model_dump(mode="json", include=set(INPUT_FIELDS), exclude_none=True)} for r in records]
    with TestClient(create_app(model, db)) as api:
        answer = api.post("/v1/predictions:batch", json={"patients": patients},
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert all(r["ok"] for r in results)

    compared = 0
    with AuditTrail(db) as trail:
        for index, item in enumerate(results):
            prediction = item["prediction"]
            stored = trail.get(prediction["prediction_id"]).explanations
            rows = batch[batch["input_row"] == index].set_index("regimen")
            assert sorted(rows.index) == sorted(r["regimen"] for r in prediction["regimens"])
            for shown in prediction["regimens"]:
                row = rows.loc[shown["regimen"]]
                assert bool(row["eligible"]) == shown["eligible"]
                assert (None if pd.isna(row["rank"]) else int(row["rank"])) == shown["rank"]
                for outcome in OUTCOMES:
                    assert round(float(row[f"p_{outcome}"]), 4) == shown[outcome]["probability"]
                    kept = stored[shown["regimen"]][outcome]
                    assert _kept(float(row[shap_column(outcome, BASE_VALUE)]), kept["base_value"])
                    for feature, value in kept["values"].items():
                        assert _kept(float(row[shap_column(outcome, feature)]), value), (feature, outcome)
                        compared += 1
                    for top in shown["explanations"][outcome]:  # the terms shown = the batch term columns
                        assert round(float(row[term_column(outcome, top["term"])]), 5) == top["contribution"]
    assert compared > N * len(candidate_regimens()) * 2 * 10

    # the MLflow pyfunc (the deployable unit) gives the same probabilities, unrounded
    pyfunc = mlflow.pyfunc.load_model(model)
    direct = pyfunc.predict(cohort["frame"][[c for c in INPUT_FIELDS if c != "patient_id"]])
    merged = batch.merge(direct, left_on=["input_row", "regimen"], right_on=["row", "regimen"])
    assert len(merged) == len(batch)
    for outcome in OUTCOMES:
        np.testing.assert_allclose(merged[f"p_{outcome}_x"], merged[f"p_{outcome}_y"], rtol=0, atol=1e-12)


def test_csv_and_parquet_inputs_and_outputs_agree(smoke_model, cluster, cohort, tmp_path):
    _, client = cluster
    model = str(smoke_model["export_dir"])
    outputs = {}
    for name, source, target in (("parquet", cohort["parquet"], tmp_path / "a.parquet"),
                                 ("csv", cohort["csv"], tmp_path / "b.csv")):
        result = score_file(model, source, target, explain=True, client=client, partition_rows=7, progress=False)
        assert result.n_rejected == 0 and result.partitions == math.ceil(N / 7)
        outputs[name] = pd.read_parquet(target) if target.suffix == ".parquet" else pd.read_csv(target)
    a, b = outputs["parquet"], outputs["csv"]
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    assert (a["regimen"].to_numpy() == b["regimen"].to_numpy()).all()
    assert (a["patient_id"].to_numpy() == b["patient_id"].to_numpy()).all()
    numeric = [c for c in a.columns if c.startswith(("p_", "shap_"))]
    # CSV keeps 17 significant digits (pandas writes repr), so the values survive the round trip
    np.testing.assert_allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(a["rank"].fillna(0).to_numpy(), b["rank"].fillna(0).to_numpy())
    assert a["label"].eq("research use — trained on simulated data").all()


@pytest.mark.parametrize("kind", ["bad_csv", "bad_parquet"])
def test_bad_rows_are_reported_with_their_row_number_never_dropped(smoke_model, cluster, cohort, tmp_path, kind):
    _, client = cluster
    out = tmp_path / "scores.csv"
    result = score_file(str(smoke_model["export_dir"]), cohort[kind], out, client=client, partition_rows=8,
                        progress=False)
    assert (result.n_read, result.n_scored, result.n_rejected) == (N, N - len(BAD_ROWS), len(BAD_ROWS))
    rejected = pd.read_csv(result.rejected_path)
    assert rejected["input_row"].tolist() == sorted(BAD_ROWS)
    messages = dict(zip(rejected["input_row"], rejected["errors"]))
    assert messages[3].startswith("albumin: 35") and "g/L" in messages[3]
    assert messages[10].startswith("sex:") and "robot" in messages[10]
    assert messages[17].startswith("age:")
    scored = pd.read_csv(out)
    assert set(scored["input_row"]) == set(range(N)) - set(BAD_ROWS)


def test_score_command_on_a_running_scheduler(smoke_model, cluster, cohort, tmp_path):
    from response_model.cli import main

    local, _ = cluster
    out = tmp_path / "scores.parquet"
    args = ["score", "--model-uri", str(smoke_model["export_dir"]), "--input", str(cohort["bad_csv"]),
            "--output", str(out), "--scheduler", local.scheduler_address, "--partition-rows", "10"]
    runner = CliRunner()
    refused = runner.invoke(main, args)
    assert refused.exit_code == 1, refused.output
    assert "3 row(s) rejected" in refused.output and "rejected row 3: albumin: 35" in refused.output
    assert "SIM-" not in refused.output  # no patient ids on the console
    assert len(pd.read_parquet(out)) == (N - len(BAD_ROWS)) * len(candidate_regimens())
    allowed = runner.invoke(main, [*args, "--allow-rejected"])
    assert allowed.exit_code == 0, allowed.output
    unreadable = tmp_path / "notes.csv"
    unreadable.write_text("age,sex,favourite_colour\n60,male,blue\n")
    bad_columns = runner.invoke(main, ["score", "--model-uri", str(smoke_model["export_dir"]), "--input",
                                       str(unreadable), "--output", str(tmp_path / "x.csv"),
                                       "--scheduler", local.scheduler_address])
    assert bad_columns.exit_code == 2 and "favourite_colour" in bad_columns.output


def test_a_hospital_table_through_its_source_config(smoke_model, cluster, tmp_path):
    """--source: a non-canonical table is mapped by its source config; rejected rows keep their line."""
    import yaml

    _, client = cluster
    spec = {"format": "table", "id_column": "Patient", "pseudonymise": False,
            "columns": {"age": "Age", "sex": {"column": "Sex", "values": {"M": "male", "F": "female"}},
                        "albumin": "Albumin (g/dL)", "bilirubin": "Bilirubin (mg/dL)", "ascites": "Ascites",
                        "regimen": {"column": "Treatment",
                                    "values": {"Sorafenib": "sorafenib", "Lenvatinib": "lenvatinib"}},
                        "alterations": "Mutations"},
            "constants": {"cancer_type": "Hepatobiliary"}}
    config = tmp_path / "hospital.yaml"
    config.write_text(yaml.safe_dump(spec))
    table = Path(__file__).parent / "data" / "example_hospital_bad.csv"
    out = tmp_path / "scores.csv"
    result = score_file(str(smoke_model["export_dir"]), table, out, client=client, source=str(config), progress=False)
    assert (result.n_read, result.n_scored, result.n_rejected) == (8, 2, 6)
    scored = pd.read_csv(out)
    assert sorted(set(scored["input_row"])) == [0, 7] and set(scored["patient_id"]) == {"P01", "P08"}
    rejected = pd.read_csv(result.rejected_path)
    assert rejected["input_row"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rejected["errors"].iloc[0].startswith("line 3: albumin: 35")


def test_unknown_columns_and_file_types_are_refused(tmp_path):
    from response_model.modeling.batch import read_partitions

    path = tmp_path / "cohort.xlsx"
    path.write_text("x")
    with pytest.raises(BatchInputError, match="unknown file type"):
        next(read_partitions(path))
    path = tmp_path / "cohort.csv"
    path.write_text("age,colour\n60,blue\n")
    with pytest.raises(BatchInputError, match="unexpected column.*colour"):
        next(read_partitions(path))


def _assert_same_values(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables: every column exactly, except that floats may differ in their last bits (the sums of
    explanation terms are added in an order that depends on how LightGBM's threads split the work)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for name in a.columns:
        if pd.api.types.is_float_dtype(a[name]):
            assert np.allclose(a[name], b[name], rtol=1e-12, atol=1e-12, equal_nan=True), name
        else:
            assert a[name].equals(b[name]), name


def test_own_cluster_writes_what_a_given_client_writes(smoke_model, cluster, cohort, tmp_path):
    # score_file's own LocalCluster (worker processes, Arrow batches in and Arrow tables out) must
    # write the file the in-process cluster writes, value for value
    _, client = cluster
    model = str(smoke_model["export_dir"])
    given = score_file(model, cohort["bad_parquet"], tmp_path / "given.parquet", explain=True, client=client,
                       partition_rows=8, progress=False)
    own = score_file(model, cohort["bad_parquet"], tmp_path / "own.parquet", explain=True, n_workers=1,
                     partition_rows=8, processes=True, progress=False)
    # by default a file this small is scored by threads of this process (use_threads)
    small = score_file(model, cohort["bad_parquet"], tmp_path / "small.parquet", explain=True, n_workers=1,
                       partition_rows=1000, progress=False)
    assert (given.cluster, own.cluster, small.cluster) == ("given", "local processes", "local threads")
    import pyarrow.parquet as pq

    for result in (own, small):
        assert (result.n_scored, result.n_rejected, result.n_rows) == (given.n_scored, given.n_rejected, given.n_rows)
        a, b = pq.read_table(given.output), pq.read_table(result.output)
        assert a.schema.equals(b.schema, check_metadata=True)
        _assert_same_values(a.to_pandas(), b.to_pandas())
        assert pd.read_csv(result.rejected_path).equals(pd.read_csv(given.rejected_path))


def test_ranks_round_as_python_does():
    """The vectorised rounding that ranks use is Python's ``round`` to 4 decimals, ties included."""
    from response_model.modeling.interpret import shown as _shown

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(100_000), np.arange(10_001) / 1e4 + 0.00005, np.arange(10_001) / 1e4,
                        [0.0, 1.0, 0.00004, 0.99995, np.nan]])
    expected = np.array([round(float(v), 4) if math.isfinite(v) else np.nan for v in p])
    np.testing.assert_array_equal(_shown(p), expected)


def test_threads_or_processes_by_size():
    """An own cluster is threads while they are expected to finish sooner than worker processes start."""
    from response_model.modeling.batch import use_threads

    assert use_threads(10_000, 5000, 2) and use_threads(150_000, 5000, 2)
    assert not use_threads(1_000_000, 5000, 2)
    assert use_threads(1_000_000, 5000, 1)  # one worker: a process would only add its start-up
    assert use_threads(40_000, 5000, 4) and not use_threads(100_000, 5000, 4)
    assert not use_threads(None, 5000, 2)  # a CSV of unknown size


def test_a_csv_files_rows_are_bounded_from_above(cohort, tmp_path, monkeypatch):
    from response_model.modeling import batch

    frame = pd.read_csv(cohort["csv"])
    assert batch.rows_at_most(cohort["csv"]) >= len(frame)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('age,sex,patient_id\n60,male,"A\nB"\n70,female,C')  # a break inside quotes, none at the end
    assert batch.rows_at_most(quoted) == 3 and len(pd.read_csv(quoted)) == 2
    monkeypatch.setattr(batch, "CSV_COUNTED_UP_TO_BYTES", 10)
    assert batch.rows_at_most(quoted) is None
