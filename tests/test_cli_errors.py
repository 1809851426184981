"""A newcomer's mistakes end with one line on stderr naming what is wrong and what to do, and a
documented exit code (2 usage or configuration, 3 model not found) — never a traceback."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from response_model.cli import main
from response_model.errors import EXIT_MODEL, EXIT_USAGE

SMOKE = Path(__file__).parent / "data" / "train_smoke.yaml"


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_help_documents_the_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert "Exit codes: 0 done; 1" in " ".join(result.output.split())
    assert "3 model not found" in " ".join(result.output.split())


@pytest.fixture
def registry_with_v1(smoke_model, monkeypatch):
    """The smoke model's store (hcc-smoke version 1 only, no champion), as the current tracking URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])
    monkeypatch.chdir(smoke_model["folder"])
    return smoke_model


@pytest.mark.slow
@pytest.mark.parametrize(("args", "wanted"), [
    (["export", "--model-uri", "models:/hcc-smoke/2", "--out", "v2"],
     "hcc-smoke has no version 2 (registered versions: 1)"),
    (["export", "--model-uri", "models:/never-trained/1", "--out", "x"],
     "no model named 'never-trained' is registered"),
    (["promote", "--name", "hcc-smoke", "--version", "2", "--config", str(SMOKE)], "hcc-smoke has no version 2"),
    (["promote", "--name", "never-trained", "--version", "1", "--config", str(SMOKE)], "run `make run`"),
    (["score", "--model-uri", "models:/hcc-smoke/7", "--input", str(SMOKE), "--output", "s.parquet"],
     "hcc-smoke has no version 7 (registered versions: 1)"),
    (["report", "--model-uri", "models:/hcc-smoke@champion", "--out", "r.html"],
     "promote one with `response-model promote --name hcc-smoke --version 1`"),
])
def test_a_model_that_does_not_exist_exits_3_saying_what_exists(registry_with_v1, args, wanted):
    line = _one_line_error(CliRunner().invoke(main, args), EXIT_MODEL)
    assert wanted in line


@pytest.mark.slow
def test_evaluate_a_version_that_does_not_exist(registry_with_v1, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["simulate", "--n", "100", "--out", str(tmp_path)]).exit_code == 0
    result = runner.invoke(main, ["evaluate", "--model-uri", "models:/hcc-smoke/2", "--source",
                                  "configs/sources/canonical.yaml", str(tmp_path / "cohort.parquet")])
    assert "no version 2" in _one_line_error(result, EXIT_MODEL)


def test_serve_with_no_model_registered_exits_3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("RESPONSE_MODEL_PSEUDONYM_KEY", "a-test-pseudonym-key-0123456789")
    monkeypatch.delenv("RESPONSE_MODEL_URI", raising=False)
    monkeypatch.delenv("RESPONSE_MODEL_FALLBACK_MODEL_DIR", raising=False)
    line = _one_line_error(CliRunner().invoke(main, ["serve", "--port", "1"]), EXIT_MODEL)
    assert "no model named 'hcc-response' is registered" in line and "make run" in line


def test_validate_a_csv_through_the_canonical_source_exits_2(tmp_path):
    table = tmp_path / "cohort.csv"
    table.write_text("age,sex\n60,male\n")
    result = CliRunner().invoke(main, ["validate", "--source", "configs/sources/canonical.yaml", str(table)])
    line = _one_line_error(result, EXIT_USAGE)
    assert "cohort.csv" in line and "not a Parquet file" in line and "table source" in line


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\ncv: {n_splits: 5\nseed: 1\n")
    table = tmp_path / "cohort.csv"
    table.write_text("age,sex\n60,male\n")
    for args in (["train", "--config", str(config)], ["validate", "--source", str(config), str(table)]):
        line = _one_line_error(CliRunner().invoke(main, args), EXIT_USAGE)
        assert "broken.yaml, line 3, column 5: malformed YAML" in line


def test_a_training_config_without_data_exits_2(tmp_path):
    config = tmp_path / "no-data.yaml"
    config.write_text("\n".join(line for line in SMOKE.read_text().splitlines() if not line.startswith("data:")))
    line = _one_line_error(CliRunner().invoke(main, ["train", "--config", str(config)]), EXIT_USAGE)
    assert "no-data.yaml" in line and "data: required key missing" in line and "source:" in line


def test_a_missing_config_file_exits_2():
    line = _one_line_error(CliRunner().invoke(main, ["train", "--config", "nowhere.yaml"]), EXIT_USAGE)
    assert "'nowhere.yaml' not found" in line
