"""The response-model command line."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from response_model.cli import main
from response_model.dataset import TreatmentOutcome, cohort_frame, write_cohort
from response_model.schema import PatientRecord

SUBCOMMANDS = ["simulate", "validate", "ingest", "regimens", "run", "train", "promote", "evaluate", "export",
               "keys", "audit", "serve", "report", "score"]


@pytest.mark.parametrize("command", [[], *([name] for name in SUBCOMMANDS)])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_command_lists_every_subcommand_and_imports_the_audit_ones_only_when_named():
    import subprocess
    import sys

    result = CliRunner().invoke(main, ["--help"])
    assert all(f"  {name} " in result.output for name in SUBCOMMANDS), result.output
    # Dask worker processes re-import the console script: SQLAlchemy (keys, audit) only when asked for
    check = "import sys, response_model.cli; assert 'sqlalchemy' not in sys.modules, 'imported'"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).returncode == 0


def test_regimens_lists_the_catalogue():
    result = CliRunner().invoke(main, ["regimens"])
    assert result.exit_code == 0
    assert "ramucirumab" in result.output and "AFP ≥ 400" in result.output


def test_validate_and_ingest_refuse_a_table_with_a_bad_row(tmp_path):
    records = [PatientRecord(age=60, sex="male", albumin=3.1), PatientRecord(age=70, sex="female")]
    frame = cohort_frame(records, [TreatmentOutcome(), TreatmentOutcome()])
    frame.loc[1, "albumin"] = 31.0
    path = write_cohort(frame, tmp_path / "in.parquet")
    runner = CliRunner()
    result = runner.invoke(main, ["validate", "--source", "sources/canonical.yaml", str(path)])
    assert result.exit_code == 1
    assert "rows read: 2" in result.output and "rows rejected: 1" in result.output
    assert "line 2: albumin: 31 is outside the plausible range" in result.output  # 1-based, as table sources
    out = tmp_path / "out.parquet"
    result = runner.invoke(main, ["ingest", "--source", "sources/canonical.yaml", str(path), "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()


def test_validate_accepts_a_clean_table(tmp_path):
    frame = cohort_frame([PatientRecord(age=60, sex="male")], [TreatmentOutcome(regimen="sorafenib")])
    path = write_cohort(frame, tmp_path / "in.parquet")
    result = CliRunner().invoke(main, ["validate", "--source", "sources/canonical.yaml", str(path)])
    assert result.exit_code == 0, result.output
    assert "rows rejected: 0" in result.output


@pytest.mark.parametrize(("fmt", "source", "target"), [
    ("parquet", "configs/sources/canonical.yaml", "cohort.parquet"),
    ("cbioportal", "configs/sources/cbioportal.yaml", "."),
])
def test_simulate_then_validate(tmp_path, fmt, source, target):
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--n", "200", "--seed", "5", "--out", str(tmp_path), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "truth.parquet").exists()
    result = runner.invoke(main, ["validate", "--source", source, str(tmp_path / target)])
    assert result.exit_code == 0, result.output
    assert "rows read: 200" in result.output and "rows rejected: 0" in result.output


SMOKE = str(Path(__file__).parent / "data" / "train_smoke.yaml")


@pytest.mark.slow
def test_run_simulates_validates_trains_registers_and_promotes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--n", "1200", "--out", str(tmp_path / "sim"), "--config", SMOKE,
                                  "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "rows valid: 1200" in result.output
    assert "label: research use — trained on simulated data" in result.output
    assert "hcc-smoke version 1 promoted to champion" in result.output
    assert "model URI: models:/hcc-smoke@champion" in result.output
    assert (tmp_path / "mlflow.db").exists()

    # a held-out simulated cohort the model never saw
    held_out = tmp_path / "held-out"
    assert runner.invoke(main, ["simulate", "--n", "600", "--seed", "99", "--out", str(held_out)]).exit_code == 0
    result = runner.invoke(main, ["evaluate", "--model-uri", "models:/hcc-smoke@champion", "--source",
                                  "configs/sources/canonical.yaml", str(held_out / "cohort.parquet")])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["n"] == 600 and 0.55 < answer["response"]["auc"] < 0.9
    assert answer["resistance"]["c_index"] > 0.5

    exported = tmp_path / "models" / "hcc-smoke-v1"
    result = runner.invoke(main, ["export", "--model-uri", "models:/hcc-smoke/1", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert (exported / "MLmodel").exists()

    # version 2 against a gate it cannot pass: refused, exit 1, the reason named, champion unchanged
    result = runner.invoke(main, ["train", "--config", SMOKE, "--data", str(tmp_path / "sim" / "cohort.parquet")])
    assert result.exit_code == 0, result.output
    strict = tmp_path / "strict.yaml"
    strict.write_text(Path(SMOKE).read_text().replace("auc_lower: 0.5", "auc_lower: 0.99"))
    result = runner.invoke(main, ["promote", "--name", "hcc-smoke", "--version", "2", "--config", str(strict)])
    assert result.exit_code == 1
    assert "hcc-smoke version 2 refused" in result.output and "auc_lower" in result.output and "fails" in result.output


def test_malformed_file_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Age;Sex;Albumin\n60;1;3.5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--source", "configs/sources/chowell2022.yaml", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "';'" in result.output
