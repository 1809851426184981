"""The deployable unit: one MLflow pyfunc holding every regimen-class × outcome model.

A :class:`ResponseModelBundle` holds the fitted models, how each is evaluated (its evaluator,
decided and checked against the model's own methods when the bundle is built:
:func:`~response_model.modeling.predictor.compile_evaluators`), the feature names, the catalogue
and the metadata. :meth:`ResponseModelBundle.predictor` is the one way to score with it
(:class:`~response_model.modeling.predictor.Predictor`); records become features through
:mod:`response_model.features` only — the same functions training uses. The fitted models are any
objects with ``predict_proba(X)`` (column 1 = probability of the outcome) and ``explain(X) ->
(contributions, base_value)``; they are pickled (cloudpickle) with the bundle as the pyfunc's
``python_model``, so loading needs the installed ``response_model`` package and its ``configs/``.
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
from response_model.modeling.predictor import Predictor, compile_evaluators
from response_model.regimens import Regimen, load_catalogue
from response_model.schema import OUTCOMES, PatientRecord, field_errors

SIMULATED_DATA_LABEL = "research use — trained on simulated data"
DEFAULT_INTENDED_USE = (
    "Decision support for clinicians choosing a first systemic regimen in advanced hepatocellular "
    "carcinoma: estimated probabilities of objective response and primary resistance per regimen. "
    "Not a substitute for clinical judgement; not validated for prospective clinical use."
)
#: Columns the pyfunc accepts: every patient-record field except the identifier, plus ``regimen``.
MODEL_INPUT_COLUMNS: tuple[str, ...] = tuple(c for c in INPUT_FIELDS if c != "patient_id") + ("regimen",)
ARTIFACT_NAME = "bundle"

class ResponseModelBundle(mlflow.pyfunc.PythonModel):
    """Every (regimen_class, outcome) model, the feature names, the catalogue snapshot and metadata.

    ``models``: {(regimen_class, outcome): fitted model}, outcome in :data:`~response_model.schema.OUTCOMES`;
    ``evaluators``: how each is evaluated (compiled here, once); ``uncertainty``: the per-patient
    interval's ensemble and population summary (:class:`~response_model.modeling.uncertainty.PatientUncertainty`,
    its members compiled here too), or None.
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
        uncertainty: Any = None,
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
        self.feature_names: tuple[str, ...] = tuple(feature_names if feature_names is not None
                                                    else feature_names_default())
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
        self.evaluators = compile_evaluators(self.models, self.feature_names)
        # the per-patient interval's part (modeling.uncertainty.PatientUncertainty); None: no intervals
        self.uncertainty = uncertainty
        if uncertainty is not None:
            uncertainty.compile(self.feature_names)
            self.metadata["uncertainty"] = uncertainty.metadata()
        # the training cohort's profile for drift monitoring (:meth:`attach_reference`); None: none
        self.monitoring_reference: dict[str, Any] | None = None

    def attach_reference(self, records: Sequence[PatientRecord], seed: int = 0) -> None:
        """Store the reference profile of the training ``records`` for drift monitoring
        (:func:`response_model.monitoring.profile.reference_profile`, with this bundle's predicted
        probabilities of its sample); its size goes into the metadata. Returns None."""
        from response_model.monitoring.profile import reference_profile, sample_records

        records = list(records)
        sample = [records[i] for i in sample_records(len(records), seed)]
        table = self.predictor().predict(sample).table()
        long = table.melt(id_vars=["regimen"], value_vars=[f"p_{o}" for o in OUTCOMES],
                          var_name="outcome", value_name="probability").dropna(subset=["probability"])
        long["outcome"] = long["outcome"].str.removeprefix("p_")
        self.monitoring_reference = reference_profile(records, long, seed)
        self.metadata["monitoring_reference"] = {"n": len(records), "sample": len(sample)}

    @property
    def regimen_classes(self) -> tuple[str, ...]:
        """The regimen classes with at least one model."""
        return self.predictor().regimen_classes

    def candidate_regimens(self) -> list[Regimen]:
        """The catalogue's candidate regimens whose class this bundle can score, in catalogue order."""
        return self.predictor().candidate_regimens()

    def predictor(self) -> Predictor:
        """The :class:`~response_model.modeling.predictor.Predictor` of this bundle (made once, on first use)."""
        predictor = self.__dict__.get("_predictor")
        if predictor is None:
            predictor = self.__dict__["_predictor"] = Predictor.of(self)
        return predictor

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_predictor"}  # rebuilt on first use

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score rows of patient-record columns (plus an optional ``regimen`` column).

        Absent record columns are missing values (warned about, naming them); ``alterations`` is
        the JSON text of the cohort table. Returns :meth:`Predictions.table` (``row`` = position of
        the input row). Raises ``ValueError`` naming every invalid row.
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
        regimens = None
        if "regimen" in frame.columns:
            regimens = [None if not isinstance(r, str) else [r] for r in frame["regimen"].tolist()]
        return self.predictor().predict(records, regimens).table()

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
