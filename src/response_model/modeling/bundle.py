"""The deployable unit: one MLflow pyfunc holding every regimen-class × outcome model.

A :class:`ResponseModelBundle` scores patient records under every candidate regimen (or the one
given). Records become features through :func:`response_model.features.build_feature_matrix`
only — the same function training uses. The fitted models are any objects with
``predict_proba(X)`` (column 1 = probability of the outcome) and ``explain(X) -> (contributions,
base_value)``; they are pickled (cloudpickle) with the bundle as the pyfunc's ``python_model``,
so loading needs the installed ``response_model`` package and its ``configs/``, nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema
from pydantic import ValidationError

from response_model.dataset import INPUT_FIELDS, record_to_row, row_to_record
from response_model.features import feature_names
from response_model.modeling.scoring import (  # noqa: F401 (OUTPUT_COLUMNS: part of this module's interface)
    OUTCOMES,
    OUTPUT_COLUMNS,
    BundleScoring,
    CompiledBundle,
    _model_columns,
)
from response_model.regimens import Regimen, load_catalogue
from response_model.schema import PatientRecord, field_errors

SIMULATED_DATA_LABEL = "research use — trained on simulated data"
DEFAULT_INTENDED_USE = (
    "Decision support for clinicians choosing a first systemic regimen in advanced hepatocellular "
    "carcinoma: estimated probabilities of objective response and primary resistance per regimen. "
    "Not a substitute for clinical judgement; not validated for prospective clinical use."
)
#: Columns the pyfunc accepts: every patient-record field except the identifier, plus ``regimen``.
MODEL_INPUT_COLUMNS: tuple[str, ...] = tuple(c for c in INPUT_FIELDS if c != "patient_id") + ("regimen",)
ARTIFACT_NAME = "bundle"

class ResponseModelBundle(BundleScoring, mlflow.pyfunc.PythonModel):
    """Every (regimen_class, outcome) model, the feature names, the catalogue snapshot and metadata.

    ``models``: {(regimen_class, outcome): fitted model}, outcome in :data:`OUTCOMES`.
    ``metadata``: training_date, data_digest, metrics (summary), intended_use, label (the
    research-use label when ``simulated``), model_name / model_version (filled when loaded from
    the registry or an exported folder), plus anything given in ``metadata``.
    """

    def __init__(
        self,
        models: Mapping[tuple[str, str], Any],
        *,
        feature_names: Sequence[str] | None = None,
        catalogue: Mapping[str, Regimen] | None = None,
        data_digest: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        simulated: bool = False,
        intended_use: str = DEFAULT_INTENDED_USE,
        training_date: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        catalogue = dict(catalogue if catalogue is not None else load_catalogue())
        classes = {regimen.regimen_class for regimen in catalogue.values()}
        for key, model in models.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"model key {key!r}: expected (regimen_class, outcome)")
            regimen_class, outcome = key
            if outcome not in OUTCOMES:
                raise ValueError(f"model key {key!r}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
            if regimen_class not in classes:
                raise ValueError(f"model key {key!r}: regimen class {regimen_class!r} is not in the catalogue")
            if not callable(getattr(model, "predict_proba", None)):
                raise TypeError(f"model {key!r} has no predict_proba")
        if not models:
            raise ValueError("a bundle needs at least one model")
        self.models: dict[tuple[str, str], Any] = dict(models)
        self.feature_names: tuple[str, ...] = tuple(feature_names if feature_names is not None else feature_names_default())
        self.catalogue: dict[str, Regimen] = catalogue
        self.metadata: dict[str, Any] = {
            "training_date": training_date or datetime.now(UTC).isoformat(timespec="seconds"),
            "data_digest": data_digest,
            "metrics": dict(metrics or {}),
            "intended_use": intended_use,
            "trained_on_simulated_data": bool(simulated),
            "label": SIMULATED_DATA_LABEL if simulated else None,
            "regimen_classes": sorted({c for c, _ in self.models}),
            "outcomes": [o for o in OUTCOMES if any(out == o for _, out in self.models)],
            "n_features": len(self.feature_names),
            "model_name": None,
            "model_version": None,
            **dict(metadata or {}),
        }

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score rows of patient-record columns (plus an optional ``regimen`` column).

        Absent record columns are missing values (warned about, naming them); ``alterations`` is
        the JSON text of the cohort table. Returns the long table of :meth:`score` with ``row`` =
        position of the input row. Raises ``ValueError`` naming every invalid row.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        absent = [c for c in MODEL_INPUT_COLUMNS if c != "regimen" and c not in frame.columns]
        if absent:
            warnings.warn(
                f"input lacks {len(absent)} patient-record column(s), treated as missing: {', '.join(absent)}",
                UserWarning, stacklevel=2,
            )
        records, problems = [], []
        for position, row in enumerate(frame.to_dict(orient="records")):
            try:
                records.append(row_to_record(row))
            except ValidationError as error:
                problems.append(f"row {position}: " + "; ".join(str(e) for e in field_errors(error)))
        if problems:
            raise ValueError("invalid input row(s): " + " | ".join(problems))
        regimens = frame["regimen"].tolist() if "regimen" in frame.columns else None
        # the compiled models (the same numbers as score(), the reference path, with less overhead)
        return self.score_with_features(records, regimens, per_record=regimens is not None, fast=True)[0]

    # -- explanation ---------------------------------------------------------------------------

    def explain(
        self, records: Sequence[PatientRecord] | PatientRecord, regimen: str
    ) -> dict[str, tuple[pd.DataFrame, float]]:
        """Return {outcome: (contributions, base_value)} of the models of ``regimen``'s class.

        Contributions are the models' own ``explain`` output (one row per record, one column per
        feature the model uses; for ResponseClassifier exact contributions of the whole model on
        its log-odds scale before calibration: logistic terms + LightGBM TreeSHAP).
        """
        records = [records] if isinstance(records, PatientRecord) else list(records)
        chosen = self._regimen(regimen)
        X = self.features(records, [regimen] * len(records))
        explained = {}
        for outcome in OUTCOMES:
            model = self.models.get((chosen.regimen_class, outcome))
            if model is not None and callable(getattr(model, "explain", None)):
                explained[outcome] = model.explain(X.reindex(columns=_model_columns(model, self.feature_names)))
        return explained

    def compiled_bundle(self) -> CompiledBundle:
        """What scoring needs of this bundle, without MLflow or the training code (batch scoring's
        workers load this; same numbers)."""
        return CompiledBundle.of(self)

    # -- MLflow ----------------------------------------------------------------------------------

    def json_metadata(self) -> dict[str, Any]:
        """Return the metadata as JSON-safe values (for the MLmodel file)."""
        import json

        return json.loads(json.dumps(self.metadata, default=str))


def feature_names_default() -> tuple[str, ...]:
    """Return the full feature list of the installed feature function (patient + regimen features)."""
    return feature_names(with_regimen=True)


def example_input(records: Sequence[PatientRecord], n: int = 3) -> pd.DataFrame:
    """Return an input example of ``n`` records as pyfunc input (no identifier column)."""
    rows = [record_to_row(record) for record in list(records)[:n]]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=[c for c in MODEL_INPUT_COLUMNS if c != "regimen"])


def bundle_signature(bundle: ResponseModelBundle, input_example: pd.DataFrame) -> ModelSignature:
    """Return the pyfunc signature: every input column optional and untyped (the bundle validates
    records itself, so a missing column or value reaches it as missing), outputs inferred."""
    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in MODEL_INPUT_COLUMNS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = bundle.predict(None, input_example)
        outputs = infer_signature(input_example.head(1).astype(object), output).outputs
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """Return the pinned requirements of the pyfunc (explicit: no slow requirement inference)."""
    pins = []
    for name in ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle", "pydantic",
                 "pyyaml", "response-model"):
        try:
            pins.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _clean_example(input_example: pd.DataFrame | None, bundle: ResponseModelBundle) -> pd.DataFrame:
    if input_example is None:
        raise ValueError("an input example (patient-record columns) is needed to infer the signature")
    frame = input_example.drop(columns=[c for c in input_example.columns if c.lower() == "patient_id"])
    return frame.reindex(columns=[c for c in MODEL_INPUT_COLUMNS if c in frame.columns]).reset_index(drop=True)


def save_bundle(bundle: ResponseModelBundle, path: str | Path, input_example: pd.DataFrame | None = None) -> Path:
    """Write ``bundle`` as an MLflow pyfunc folder at ``path`` (must not exist); return the path."""
    example = _clean_example(input_example, bundle)
    mlflow.pyfunc.save_model(
        str(path), python_model=bundle, signature=bundle_signature(bundle, example), input_example=example,
        pip_requirements=pip_requirements(), metadata=bundle.json_metadata(),
    )
    return Path(path)


def log_bundle(
    bundle: ResponseModelBundle,
    name: str = ARTIFACT_NAME,
    input_example: pd.DataFrame | None = None,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log ``bundle`` to the active run (one is started if none is) under ``name``; return the ModelInfo.

    With ``registered_model_name`` the model is also registered (a new version).
    """
    example = _clean_example(input_example, bundle)
    started = mlflow.active_run() is None
    if started:
        mlflow.start_run()
    try:
        return mlflow.pyfunc.log_model(
            name=name, python_model=bundle, signature=bundle_signature(bundle, example), input_example=example,
            pip_requirements=pip_requirements(), metadata=bundle.json_metadata(),
            registered_model_name=registered_model_name,
        )
    finally:
        if started:
            mlflow.end_run()
