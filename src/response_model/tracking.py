"""MLflow tracking: where runs go, and what may be logged to them.

Embedded default (``MLFLOW_TRACKING_URI`` unset): a SQLite database ``./mlflow.db`` and artifacts
under ``./mlartifacts`` (both gitignored). ``MLFLOW_TRACKING_URI`` selects any other store; for
a ``sqlite:///…/x.db`` store the artifacts go to the ``mlartifacts`` folder beside the database.

No patient identifier ever goes to MLflow: :func:`log_dataset` drops identifier columns before
MLflow sees the frame (the dataset digest, schema and profile are computed on what is left).
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

DEFAULT_EXPERIMENT = "response-model"
#: Columns never logged to MLflow (compared case-insensitively).
IDENTIFIER_COLUMNS: frozenset[str] = frozenset({"patient_id", "sample_id", "patient", "mrn"})
#: How outcomes are spelled in metric names: ``response.<regimen_class>.<metric>``.
OUTCOME_PREFIX: dict[str, str] = {"objective_response": "response", "primary_resistance": "resistance"}
_PARAM_VALUE_LIMIT = 6000


def _sqlite_path(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///path`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def default_tracking_uri(cwd: str | os.PathLike[str] | None = None) -> str:
    """Return the embedded default store: ``sqlite:///<cwd>/mlflow.db``."""
    return f"sqlite:///{Path(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def configure_tracking(experiment: str = DEFAULT_EXPERIMENT,
                       artifact_root: str | os.PathLike[str] | None = None) -> str:
    """Point MLflow at ``$MLFLOW_TRACKING_URI`` or the embedded default; select ``experiment``; return the URI.

    The experiment is created when missing, with its artifacts under ``artifact_root`` if given,
    else — for a SQLite store — the ``mlartifacts`` folder beside the database (``./mlartifacts``
    for the embedded default); a remote server keeps its own artifact store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if artifact_root is None and (database := _sqlite_path(uri)) is not None:
        artifact_root = database.resolve().parent / "mlartifacts"
    if mlflow.get_experiment_by_name(experiment) is None:
        location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
        if location is not None:
            Path(artifact_root).mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """Return the commit checked out at ``path`` (default: this package's source), or None outside git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def metric_key(outcome: str, regimen_class: str, metric: str) -> str:
    """Return the run-metric name of ``metric`` for one model: ``response.checkpoint_inhibitor.auc``."""
    return f"{OUTCOME_PREFIX.get(outcome, outcome)}.{regimen_class}.{metric}"


def drop_identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` without patient-identifier columns (see :data:`IDENTIFIER_COLUMNS`)."""
    return frame.drop(columns=[c for c in frame.columns if str(c).lower() in IDENTIFIER_COLUMNS])


def log_dataset(
    frame: pd.DataFrame,
    name: str,
    source: str | None = None,
    context: str = "training",
    targets: str | None = None,
) -> str:
    """Log ``frame`` (identifier columns dropped) as a run input with its digest; return the digest.

    ``source``: a path or URI MLflow can resolve, or any description (then stored as a tag).
    ``targets``: the label column, if any. Only the dataset's name, digest, source, schema and profile
    go to MLflow, never the rows.
    """
    from mlflow.exceptions import MlflowException

    clean = drop_identifiers(frame)
    tags = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        try:
            dataset = mlflow.data.from_pandas(clean, source=source, name=name, targets=targets)
        except MlflowException:  # a description MLflow cannot resolve (e.g. "simulated://seed=7"): kept as a tag
            dataset = mlflow.data.from_pandas(clean, name=name, targets=targets)
            tags = {"source": str(source)}
        mlflow.log_input(dataset, context=context, tags=tags)  # the schema is inferred here, lazily
    return dataset.digest


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested ``mapping`` flattened to dotted keys (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PARAM_VALUE_LIMIT else text[: _PARAM_VALUE_LIMIT - 1] + "…"


def log_config(path: str | os.PathLike[str], artifact_path: str = "config") -> dict[str, str]:
    """Log a YAML config file as an artifact and its flattened content as parameters; return them."""
    from response_model.config import load_yaml, resolve_config_path

    resolved = resolve_config_path(path)
    mlflow.log_artifact(str(resolved), artifact_path=artifact_path)
    content = load_yaml(resolved) or {}
    params = {
        key: _param_value(value)
        for key, value in flatten(content).items()
        if key.rsplit(".", 1)[-1].lower() not in IDENTIFIER_COLUMNS
    }
    if params:
        mlflow.log_params(params)
    return params


def log_figure(fig: Any, path: str, close: bool = True) -> None:
    """Log a matplotlib figure as the artifact ``path`` (e.g. ``plots/roc.png``), then close it."""
    mlflow.log_figure(fig, path)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)


def log_metrics(metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Log the finite values of ``metrics`` (None and NaN skipped)."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
    if clean:
        mlflow.log_metrics(clean, step=step)


def run_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the standard tags of a run: git commit (when known) plus ``extra``."""
    tags = {"git_commit": commit} if (commit := git_commit()) else {}
    tags.update(extra or {})
    return tags
