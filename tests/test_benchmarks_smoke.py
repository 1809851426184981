"""The hand-run benchmarks (benchmarks/*.py) still run end to end, on tiny sizes."""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_simulated_benchmark_runs(capsys):
    module = _load("simulated")
    assert module.main(["--sizes", "400", "--test-n", "400", "--ceiling-n", "600"]) == 0
    out = capsys.readouterr().out
    assert "auc_oracle" in out and "regret_model" in out and "all classes" in out


@pytest.mark.slow
def test_per_regimen_benchmark_runs(capsys):
    module = _load("per_regimen")
    assert module.main(["--n", "600", "--seeds", "1", "--repeats", "1", "--variants", "default", "borrow"]) == 0
    out = capsys.readouterr().out
    assert "regimens_meeting_gate" in out and "oracle" in out and "lenvatinib" in out


@pytest.mark.slow
def test_genomics_value_benchmark_runs(capsys):
    module = _load("genomics_value")
    assert module.main(["--n", "500", "--splits", "2", "--repeats", "1", "--skip-real"]) == 0
    out = capsys.readouterr().out
    assert "AUC with genomics" in out and "AUC without genomics" in out and "AUC oracle" in out


def test_genomics_value_removes_genomic_features_from_both_parts():
    module = _load("genomics_value")
    columns = ["age", "albumin", "tmb", "wnt_activation", "genotyped", "cancer_type_melanoma"]
    params = module.without_genomics({"linear_features": ["age", "tmb", "cancer_type_*"], "gbm_features": None},
                                     columns)
    assert params["linear_features"] == ["age", "cancer_type_melanoma"]
    assert params["gbm_features"] == ["age", "albumin", "cancer_type_melanoma"]


def test_training_time_table_growth():
    module = _load("training_time")
    table = module.table([
        {"n": 1000, "train_s": 10.0, "cpu_s": 9.0, "models": 4, "per_model_s": 2.5, "simulate_s": 1.0},
        {"n": 4000, "train_s": 40.0, "cpu_s": 36.0, "models": 4, "per_model_s": 10.0, "simulate_s": 2.0},
    ])
    assert table["growth vs previous"].iloc[1] == pytest.approx(4.0)
    assert table["exponent k (t ∝ n^k)"].iloc[1] == pytest.approx(1.0)


def test_audit_export_benchmark_runs(capsys):
    module = _load("audit_export")
    assert module.main(["--records", "12"]) == 0
    out = capsys.readouterr().out
    assert "export csv" in out and "export parquet" in out and "list page" in out
    # 12 records × every candidate regimen × 2 outcomes, in both formats
    rows = 12 * 2 * module.candidate_count()
    # … once per stored form (plain, inline, packed), each with its bytes per record and append rate
    assert len(re.findall(rf"export (?:csv|parquet)\s+12\s+{rows}\s", out)) == 3 * 2
    assert len(re.findall(r"records/s; [0-9.]+ KB per prediction record", out)) == 3
    assert "side by side" in out and all(re.search(rf"^\s*{form}\s+[0-9.]+\s", out, re.M) for form in module.FORMS)


def test_serving_benchmark_percentiles_and_row():
    module = _load("serving")
    stats = module.percentiles([i / 1000 for i in range(1, 101)])  # 1 … 100 ms
    assert stats == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.0), "p99": pytest.approx(99.0)}
    row = module.mlflow_row()  # the example patient as one pyfunc input row: JSON-safe, no identifier
    assert row["age"] == 64 and "patient_id" not in row
    assert all(v is None or not isinstance(v, float) or v == v for v in row.values())


def test_serving_benchmark_alternates_and_summarises_windows():
    module = _load("serving")
    assert module.alternating(["ours", "mlflow"], 4) == [["ours", "mlflow"], ["mlflow", "ours"]] * 2

    def window(n: int, wall: float) -> dict:
        return {"latencies": [0.01] * n, "wall": wall, "server_cpu": wall * 0.9, "generator_cpu": wall * 0.3}

    ours, theirs = [window(10, 1.0), window(30, 1.0), window(20, 2.0)], [window(20, 1.0)] * 3
    ratios = module.round_ratios(ours, theirs)  # per round: 0.5, 1.5, 0.5
    assert ratios == {"median": pytest.approx(0.5), "min": pytest.approx(0.5), "max": pytest.approx(1.5), "n": 3}
    summary = module.summarise(ours)
    assert summary["rps"] == pytest.approx(60 / 4.0) and summary["n"] == 60
    assert summary["server_cpu"] == pytest.approx(0.9) and summary["generator_cpu"] == pytest.approx(0.3)
    assert module.spread([3.0, 1.0, 2.0], "s") == "2.0 s (1.0–3.0, 3×)" and module.spread([1.25], "s") == "1.2 s"


def test_serving_benchmark_pinning_plan():
    module = _load("serving")
    servers, generator, text = module.plan_pinning(False)
    assert servers is None and generator is None and "--no-pin" in text
    servers, generator, text = module.plan_pinning(True)
    if len(getattr(os, "sched_getaffinity", lambda _: [])(0)) >= 2:
        assert len(servers) == 1 and len(generator) == 1 and not servers & generator and "CPU" in text
    else:
        assert servers is None and generator is None and text.startswith("none")


@pytest.mark.slow
def test_missing_inputs_benchmark_runs(capsys):
    module = _load("missing_inputs")
    assert module.main(["--quick", "--ceiling-n", "0"]) == 0
    out = capsys.readouterr().out
    assert "mean_off" in out and "mean_on" in out and "slope_on" in out and "required fields only (on)" in out
    assert "bias (mean) and noise (SD)" in out and "binomial_se" in out and "over further training draws" in out
