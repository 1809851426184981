"""The response-model command line."""


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




def test_malformed_file_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Age;Sex;Albumin\n60;1;3.5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--source", "configs/sources/chowell2022.yaml", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "';'" in result.output
