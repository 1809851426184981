"""What the smoke model answers through every public way of scoring, for the golden-answer test.

``answers(model_dir, folder)`` collects, for a fixed set of patients: the API's single and batch
answers (prediction ids removed), batch scoring's table with explanations, ``evaluate``'s metrics
and the MLflow pyfunc's ``predict``. ``tests/data/golden_answers.json.gz`` holds what the code gave
after issue 13 (augmentation, per-patient intervals, grouped terms, per-regimen validation); regenerate
it only when a change of numbers is intended::

    .venv/bin/python tests/golden_answers.py
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "data" / "golden_answers.json.gz"
PSEUDONYM_KEY = "golden-answers-pseudonym-key-0123456789"
SPARSE_PATIENTS = [
    {"age": 64, "sex": "male", "albumin": 3.6},
    {"age": 71, "sex": "female", "albumin": 2.9, "bilirubin": 1.8, "afp": 850, "child_pugh_class": "B",
     "alterations": []},
    {"age": 58, "sex": "male", "aetiology": "HBV", "alterations": "CTNNB1 p.S45P; TERT promoter",
     "pdl1_tps": 5, "ecog": 1},
]


def _jsonable(value: Any) -> Any:
    """``value`` with NaN as None and NumPy scalars as Python numbers, for comparison as JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _without_ids(answer: Any) -> Any:
    if isinstance(answer, dict):
        return {k: _without_ids(v) for k, v in answer.items() if k != "prediction_id"}
    if isinstance(answer, list):
        return [_without_ids(v) for v in answer]
    return answer


def _cohort(folder: Path):
    from response_model.dataset import write_cohort
    from response_model.sources.simulator import simulate_cohort

    frame = simulate_cohort(24, seed=11).cohort.copy()
    return frame, write_cohort(frame, folder / "golden-cohort.parquet")


def _api_answers(model_dir: str, folder: Path, frame) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from response_model.dataset import INPUT_FIELDS, row_to_record
    from response_model.service.app import create_app
    from response_model.service.keys import KeyStore

    db = f"sqlite:///{folder}/golden-service.db"
    with KeyStore(db) as store:
        token = store.create("clinician", "golden answers").token
    headers = {"Authorization": f"Bearer {token}"}
    records = [row_to_record(row) for row in frame.to_dict(orient="records")]
    patients = [r.model_dump(mode="json", include=set(INPUT_FIELDS), exclude_none=True) for r in records]
    patients = [{k: v for k, v in p.items() if k != "patient_id"} for p in patients[:10]] + SPARSE_PATIENTS
    with TestClient(create_app(model_dir, db)) as api:
        single = [api.post("/v1/predictions", json={"patient": p}, headers=headers) for p in patients]
        some = [{"patient": p} for p in patients[:4]]
        some.insert(2, {"patient": {**patients[0], "albumin": 35}})
        some.append({"patient": patients[1], "regimens": ["sorafenib", "atezolizumab_bevacizumab"]})
        batch = api.post("/v1/predictions:batch", json={"patients": some}, headers=headers)
    for answer in [*single, batch]:
        assert answer.status_code == 200, answer.text
    return {"single": _without_ids([a.json() for a in single]), "batch": _without_ids(batch.json())}


def _batch_table(model_dir: str, folder: Path, cohort_path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    from response_model.modeling.batch import score_file

    out = folder / "golden-scores.parquet"
    score_file(model_dir, cohort_path, out, explain=True, n_workers=1, progress=False)
    table = pd.read_parquet(out)
    return table[table["input_row"] < 6].to_dict(orient="records")  # every column, of a few patients


def _evaluated(model_dir: str, cohort_path: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    from response_model.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--model-uri", model_dir, "--source",
                                       "configs/sources/canonical.yaml", str(cohort_path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _pyfunc(model_dir: str, frame) -> list[dict[str, Any]]:
    import mlflow

    from response_model.dataset import INPUT_FIELDS

    model = mlflow.pyfunc.load_model(model_dir)
    return model.predict(frame[[c for c in INPUT_FIELDS if c != "patient_id"]]).to_dict(orient="records")


def answers(model_dir: str | Path, folder: Path) -> dict[str, Any]:
    """Every public way's answers for the golden patients, as JSON-ready values (see the module docstring);
    the caller sets the pseudonymisation key (the service refuses to start without one)."""
    model_dir = str(model_dir)
    frame, cohort_path = _cohort(folder)
    return _jsonable({
        "api": _api_answers(model_dir, folder, frame),
        "batch": _batch_table(model_dir, folder, cohort_path),
        "evaluate": _evaluated(model_dir, cohort_path),
        "pyfunc": _pyfunc(model_dir, frame),
    })


def differences(expected: Any, actual: Any, path: str = "", tolerance: float = 1e-9) -> list[str]:
    """Where ``actual`` differs from ``expected``: every key of ``expected`` must be in ``actual`` with an
    equal value (numbers within ``tolerance``); keys that ``actual`` adds are allowed."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r:.80}"]
        found = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{path}.{key}: missing")
            else:
                found += differences(value, actual[key], f"{path}.{key}", tolerance)
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected a list of {len(expected)}, got {actual!r:.80}"]
        return [d for k, (e, a) in enumerate(zip(expected, actual))
                for d in differences(e, a, f"{path}[{k}]", tolerance)]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        return [] if abs(expected - actual) <= tolerance else [f"{path}: expected {expected!r}, got {actual!r}"]
    return [] if expected == actual else [f"{path}: expected {expected!r:.120}, got {actual!r:.120}"]


def saved() -> dict[str, Any]:
    """The answers saved in :data:`GOLDEN`."""
    return json.loads(gzip.decompress(GOLDEN.read_bytes()))


def _regenerate() -> None:
    """Train the smoke model as the tests do and write :data:`GOLDEN`."""
    import tempfile

    import mlflow

    from response_model.modeling.registry import export
    from response_model.modeling.train import train
    from response_model.privacy import PSEUDONYM_KEY_ENV

    root = Path(__file__).parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.environ[PSEUDONYM_KEY_ENV] = "shared-test-pseudonym-key-0123456789"  # the smoke model's, as in conftest
        os.chdir(folder)
        result = train(root / "tests" / "data" / "train_smoke.yaml", register=True, progress=False)
        model_dir = export(f"models:/{result.registered_name}/{result.registered_version}", folder / "export")
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        os.chdir(root)
        GOLDEN.write_bytes(gzip.compress(json.dumps(answers(model_dir, folder), sort_keys=True).encode(), mtime=0))
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    _regenerate()
