"""`evaluate` prints, besides its existing keys (unchanged), the labelled n per outcome, 95 % bootstrap
intervals over patients (1,000 resamples, seeded) and a per-regimen-class breakdown."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from response_model.modeling import metrics


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)  # ties
    y = (rng.random(n) < p).astype(float)
    return y, p


@pytest.mark.parametrize("n", [30, 400])
def test_the_bootstraps_resample_metrics_equal_binary_metrics_on_the_resampled_rows(n):
    y, p = _data(n, n)
    draws = np.random.default_rng(n).integers(0, n, size=(20, n))
    draws[0] = np.flatnonzero(y == 1)[0]  # one patient's copies only: a single class
    found = metrics._resampled_binary(y, p, metrics._copies(draws, n))
    assert all(np.isnan(found[name][0]) for name in metrics.HELD_OUT_METRICS)
    for b in range(1, len(draws)):
        reference = metrics.binary_metrics(y[draws[b]], p[draws[b]])
        for name in metrics.HELD_OUT_METRICS:
            assert found[name][b] == pytest.approx(reference[name], abs=1e-9), (b, name)


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate():
    y, p = _data(300, 1)
    y[:5] = np.nan  # unlabelled rows are left out
    first, again = metrics.bootstrap_intervals(y, p), metrics.bootstrap_intervals(y, p)
    assert first == again and set(first) == set(metrics.HELD_OUT_METRICS)
    point = metrics.held_out_metrics(y, p)
    for name, (low, high) in first.items():
        assert low <= point[name] <= high
    assert metrics.bootstrap_intervals(y, p, seed=1) != first


def test_held_out_details_counts_labelled_patients_and_splits_by_class():
    y, p = _data(200, 2)
    y[:10] = np.nan
    time, event = np.linspace(1, 20, 200), np.ones(200)
    classes = ["checkpoint_inhibitor"] * 120 + ["tki_antiangiogenic"] * 80
    details = metrics.held_out_details({"response": (y, p), "resistance": (y, p, time, event)}, classes)
    assert details["labelled"]["response"] == {"n": 190, "events": int(np.nansum(y))}
    assert set(details["intervals_95"]["resistance"]) == {*metrics.HELD_OUT_METRICS, "c_index"}
    assert "1000 resamples" in details["interval_method"]
    tki = details["by_regimen_class"]["tki_antiangiogenic"]
    assert tki["n"] == 80 and tki["response"]["n_labelled"] == 80
    assert tki["response"]["metrics"]["auc"] == pytest.approx(metrics.binary_metrics(y[120:], p[120:])["auc"])


@pytest.mark.slow
def test_evaluate_prints_the_new_keys_after_the_unchanged_ones(smoke_model, tmp_path, monkeypatch):
    from response_model.cli import main
    from response_model.modeling import registry
    from response_model.sources import load_source

    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])
    runner = CliRunner()
    assert runner.invoke(main, ["simulate", "--n", "300", "--seed", "11", "--out", str(tmp_path)]).exit_code == 0
    cohort = tmp_path / "cohort.parquet"
    result = runner.invoke(main, ["evaluate", "--model-uri", str(smoke_model["export_dir"]), "--source",
                                  "configs/sources/canonical.yaml", str(cohort)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    existing = registry.evaluate(str(smoke_model["export_dir"]), load_source("sources/canonical.yaml", cohort))
    assert list(printed)[:len(existing)] == list(existing)
    assert {k: printed[k] for k in existing} == existing
    assert {"labelled", "intervals_95", "interval_method", "by_regimen_class"} <= set(printed)
    low, high = printed["intervals_95"]["response"]["auc"]
    assert low <= printed["response"]["auc"] <= high
    assert sum(c["n"] for c in printed["by_regimen_class"].values()) == printed["n"]
