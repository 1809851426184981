"""One pseudonymisation key: `run` creates .response-model/pseudonym.key when the variable is unset, and
every command that pseudonymises (validate, ingest, score, serve, the audit trail) finds that same file
through privacy.pseudonym_key, so a patient keeps one pseudonym."""

import stat

import pandas as pd
import pytest
from click.testing import CliRunner

from response_model import privacy
from response_model.cli import main


@pytest.fixture
def fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(privacy.PSEUDONYM_KEY_ENV, raising=False)
    monkeypatch.delenv(privacy.PSEUDONYM_KEY_FILE_ENV, raising=False)
    return tmp_path


def test_without_variable_or_file_the_error_says_how_to_get_a_key(fresh_folder):
    with pytest.raises(privacy.PseudonymKeyError) as caught:
        privacy.pseudonym_key()
    assert privacy.PSEUDONYM_KEY_ENV in str(caught.value) and ".response-model/pseudonym.key" in str(caught.value)


def test_the_local_key_file_is_found_by_every_later_process(fresh_folder, monkeypatch):
    assert privacy.ensure_local_key() is True
    path = fresh_folder / ".response-model" / "pseudonym.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip().encode()
    monkeypatch.delenv(privacy.PSEUDONYM_KEY_ENV)  # a new shell: only the file is left
    assert privacy.pseudonym_key() == key
    assert privacy.pseudonymise("MRN-1") == privacy.pseudonymise("MRN-1", key)
    # the service (and its audit trail) starts with that key instead of refusing
    from response_model.service.app import create_app

    create_app("models:/anything@champion", db_url=f"sqlite:///{fresh_folder}/service.db")
    # a key file elsewhere (a secret-store mount) is named by the variable
    other = fresh_folder / "secret.key"
    other.write_text("another-key-0123456789abcdef\n")
    monkeypatch.setenv(privacy.PSEUDONYM_KEY_FILE_ENV, str(other))
    assert privacy.pseudonym_key() == b"another-key-0123456789abcdef"


def test_ingest_pseudonymises_with_the_file_run_created(fresh_folder, monkeypatch):
    import response_model.modeling.train as training

    def stop(*args, **kwargs):
        raise RuntimeError("stop after the key and the validation")

    monkeypatch.setattr(training, "train", stop)
    result = CliRunner().invoke(main, ["run", "--n", "100", "--out", str(fresh_folder / "sim"), "--no-serve"])
    assert isinstance(result.exception, RuntimeError) and "stop after" in str(result.exception)
    key = (fresh_folder / ".response-model" / "pseudonym.key").read_text().strip().encode()
    monkeypatch.delenv(privacy.PSEUDONYM_KEY_ENV, raising=False)  # set by `run` for its own process only

    (fresh_folder / "table.csv").write_text("MRN,Age,Sex\nH-001,60,M\nH-002,71,F\n")
    (fresh_folder / "source.yaml").write_text(
        "format: table\nid_column: MRN\npseudonymise: true\n"
        "columns: {age: Age, sex: {column: Sex, values: {M: male, F: female}}}\n")
    out = fresh_folder / "cohort.parquet"
    result = CliRunner().invoke(main, ["ingest", "--source", "source.yaml", "table.csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["patient_id"].tolist() == [privacy.pseudonymise("H-001", key),
                                                           privacy.pseudonymise("H-002", key)]
