"""The deployable unit: one MLflow pyfunc holding every regimen-class × outcome model.

A :class:`ResponseModelBundle` scores patient records under every candidate regimen (or the one
given). Records become features through :func:`response_model.features.build_feature_matrix`
only — the same function training uses. The fitted models are any objects with
``predict_proba(X)`` (column 1 = probability of the outcome) and ``explain(X) -> (contributions,
base_value)``; they are pickled (cloudpickle) with the bundle as the pyfunc's ``python_model``,
so loading needs the installed ``response_model`` package and its ``configs/``, nothing else.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema
from pydantic import ValidationError

from response_model.dataset import INPUT_FIELDS, is_missing, record_to_row, row_to_record
from response_model.features import build_feature_matrix, feature_names
from response_model.modeling.compiled import CompiledModel, ReferenceModel, compile_model
from response_model.regimens import Regimen, load_catalogue
from response_model.schema import PatientRecord, field_errors

OUTCOMES: tuple[str, ...] = ("objective_response", "primary_resistance")
SIMULATED_DATA_LABEL = "research use — trained on simulated data"
DEFAULT_INTENDED_USE = (
    "Decision support for clinicians choosing a first systemic regimen in advanced hepatocellular "
    "carcinoma: estimated probabilities of objective response and primary resistance per regimen. "
    "Not a substitute for clinical judgement; not validated for prospective clinical use."
)
#: Columns the pyfunc accepts: every patient-record field except the identifier, plus ``regimen``.
MODEL_INPUT_COLUMNS: tuple[str, ...] = tuple(c for c in INPUT_FIELDS if c != "patient_id") + ("regimen",)
OUTPUT_COLUMNS: tuple[str, ...] = (
    "row", "regimen", "regimen_class", "eligible", "ineligible_reason",
    "p_objective_response", "p_primary_resistance",
)
ARTIFACT_NAME = "bundle"

# Compiled forms of a loaded bundle's models (modeling.compiled), built on first use; kept outside the
# bundle so that pickling a bundle never carries them.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILE_LOCK = threading.Lock()
_EXPLAINERS: Any = None


def _explainers():
    """The threads that compute one request's explanations side by side (:meth:`ResponseModelBundle.score_explain_rows`)."""
    global _EXPLAINERS
    with _COMPILE_LOCK:
        if _EXPLAINERS is None:
            from concurrent.futures import ThreadPoolExecutor

            _EXPLAINERS = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                             thread_name_prefix="explain")
    return _EXPLAINERS


def _forget_explainers() -> None:
    """In a forked child: the parent's pool threads do not exist there; a new pool starts on first use."""
    global _EXPLAINERS
    _EXPLAINERS = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_explainers)


def _model_columns(model: Any, available: Sequence[str]) -> list[str]:
    """Return the feature columns ``model`` was fitted on (all of ``available`` when it does not say)."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return list(available)
    return [str(name) for name in names]


class ResponseModelBundle(mlflow.pyfunc.PythonModel):
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

    # -- regimens ------------------------------------------------------------------------------

    @property
    def regimen_classes(self) -> tuple[str, ...]:
        """The regimen classes with at least one model."""
        return tuple(sorted({c for c, _ in self.models}))

    def candidate_regimens(self) -> list[Regimen]:
        """Return the catalogue's candidate regimens whose class this bundle can score, in catalogue order."""
        return [r for r in self.catalogue.values() if r.is_candidate and r.regimen_class in self.regimen_classes]

    def _regimen(self, name: str) -> Regimen:
        if name not in self.catalogue:
            raise ValueError(f"regimen {name!r} is not in the catalogue; expected one of {', '.join(self.catalogue)}")
        regimen = self.catalogue[name]
        if regimen.regimen_class not in self.regimen_classes:
            raise ValueError(
                f"regimen {name!r} is of class {regimen.regimen_class!r}, for which this model has no estimator; "
                f"expected a regimen of {', '.join(self.regimen_classes)}"
            )
        return regimen

    # -- features ------------------------------------------------------------------------------

    def features(self, records: Sequence[PatientRecord], regimens: Sequence[str]) -> pd.DataFrame:
        """Return the feature matrix of (record, regimen) pairs in the bundle's feature order."""
        matrix = build_feature_matrix(list(records), list(regimens))
        if tuple(matrix.columns) != self.feature_names:
            absent = [c for c in self.feature_names if c not in matrix.columns]
            if absent:
                warnings.warn(
                    f"the installed feature function lacks {len(absent)} feature(s) this model was trained "
                    f"with, treated as missing: {', '.join(absent)}", UserWarning, stacklevel=2,
                )
            matrix = matrix.reindex(columns=list(self.feature_names))
        return matrix

    def _probabilities(self, key: tuple[str, str], X: pd.DataFrame) -> np.ndarray:
        model = self.models.get(key)
        if model is None or X.empty:
            return np.full(len(X), math.nan)
        columns = _model_columns(model, self.feature_names)
        frame = X.reindex(columns=columns)
        return np.asarray(model.predict_proba(frame), dtype=np.float64)[:, 1]

    def compiled(self, key: tuple[str, str]) -> CompiledModel | ReferenceModel | None:
        """The fast form of model ``key`` on NumPy rows of :attr:`feature_names` (None if no such model).

        A :class:`~response_model.modeling.compiled.CompiledModel` when it reproduces the model's own
        ``predict_proba`` and ``explain`` on probe rows (checked once, when first asked for), else a
        :class:`~response_model.modeling.compiled.ReferenceModel` calling them: same answers, less overhead.
        """
        model = self.models.get(key)
        if model is None:
            return None
        cache = _COMPILED.get(self)
        if cache is None or key not in cache:
            with _COMPILE_LOCK:
                cache = _COMPILED.setdefault(self, {})
                if key not in cache:
                    cache[key] = compile_model(model, self.feature_names)
        return cache[key]

    def compile(self) -> None:
        """Build (and self-check) every model's fast form now, e.g. at service start-up."""
        for key in self.models:
            self.compiled(key)

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self,
        records: Sequence[PatientRecord],
        regimens: Sequence[str] | Sequence[Sequence[str] | str | None] | None = None,
        per_record: bool = False,
    ) -> pd.DataFrame:
        """Return one row per record × regimen (see :data:`OUTPUT_COLUMNS`).

        ``regimens``: None = every candidate regimen the bundle can score; a list of names = those
        for every record; with ``per_record=True`` one entry per record (a name, a list of names,
        or None for all candidates). Ineligible regimens are scored too and flagged.
        """
        return self.score_with_features(records, regimens, per_record)[0]

    def score_with_features(
        self,
        records: Sequence[PatientRecord],
        regimens: Sequence[str] | Sequence[Sequence[str] | str | None] | None = None,
        per_record: bool = False,
        fast: bool = False,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return :meth:`score`'s table and the feature matrix it scored (one row per table row),
        so that explanations reuse the matrix instead of building it again.

        ``fast=True`` computes the probabilities with the models' compiled forms (:meth:`compiled`):
        the same numbers as the models' own ``predict_proba`` (the reference path, ``fast=False``)."""
        columns, X = self.score_rows(records, regimens, per_record, fast)
        out = pd.DataFrame({
            "row": np.asarray(columns["row"], dtype=np.int64),
            "regimen": pd.Series(columns["regimen"], dtype=object),
            "regimen_class": pd.Series(columns["regimen_class"], dtype=object),
            "eligible": np.asarray(columns["eligible"], dtype=bool),
            "ineligible_reason": pd.Series(columns["ineligible_reason"], dtype=object),
            **{f"p_{outcome}": columns[f"p_{outcome}"] for outcome in OUTCOMES},
        })
        return out, X

    def score_rows(
        self,
        records: Sequence[PatientRecord],
        regimens: Sequence[str] | Sequence[Sequence[str] | str | None] | None = None,
        per_record: bool = False,
        fast: bool = False,
        _features_ready: Any = None,
    ) -> tuple[dict[str, list | np.ndarray], pd.DataFrame]:
        """:meth:`score_with_features` without the pandas table: ({column: list or array}, features).

        The columns are those of :data:`OUTPUT_COLUMNS` (probabilities as float arrays, NaN where a
        class has no model), one entry per scored record × regimen."""
        records = list(records)
        default = [r.name for r in self.candidate_regimens()]
        if per_record:
            if regimens is None or len(regimens) != len(records):
                raise ValueError("per_record=True needs one regimen entry per record")
            wanted = [
                default if entry is None or (not isinstance(entry, str) and is_missing(entry))
                else [entry] if isinstance(entry, str) else list(entry)
                for entry in regimens
            ]
        else:
            names = default if regimens is None else ([regimens] if isinstance(regimens, str) else list(regimens))
            wanted = [names] * len(records)
        known: dict[str, Regimen] = {}  # each name looked up (and checked) once, not once per record
        pairs = [(i, known[name] if name in known else known.setdefault(name, self._regimen(name)))
                 for i, names in enumerate(wanted) for name in names]
        reasons = [r.ineligibility(records[i]) if r.eligibility else [] for i, r in pairs]
        columns: dict[str, list | np.ndarray] = {
            "row": [i for i, _ in pairs],
            "regimen": [r.name for _, r in pairs],
            "regimen_class": [r.regimen_class for _, r in pairs],
            "eligible": [not why for why in reasons],
            "ineligible_reason": ["; ".join(why) if why else None for why in reasons],
        }
        X = self.features([records[i] for i, _ in pairs], columns["regimen"])
        if _features_ready is not None:  # score_explain_rows: the explanations start now
            _features_ready(columns["regimen_class"], X)
        classes = np.array(columns["regimen_class"], dtype=object)
        matrix = X.to_numpy()
        for outcome in OUTCOMES:
            p = np.full(len(pairs), math.nan)
            for regimen_class in self.regimen_classes:
                mask = classes == regimen_class
                if not mask.any():
                    continue
                if fast:
                    model = self.compiled((regimen_class, outcome))
                    if model is not None:
                        p[mask] = model.probabilities(matrix[mask])
                else:
                    p[mask] = self._probabilities((regimen_class, outcome), X.loc[mask].reset_index(drop=True))
            columns[f"p_{outcome}"] = p
        return columns, X

    def score_explain_rows(
        self, records: Sequence[PatientRecord], regimens: Sequence[Sequence[str] | str | None] | None = None,
        per_record: bool = False,
    ) -> tuple[dict[str, list | np.ndarray], pd.DataFrame, dict[tuple[str, str], tuple]]:
        """(scores, features, explanations): :meth:`score_rows` (compiled models) and :meth:`explain_rows`
        of its rows — the explanations computed in the background while the probabilities are."""
        started: dict[str, Any] = {}

        def start(classes: Sequence[str], X: pd.DataFrame) -> None:
            started["explained"] = self._start_explaining(classes, X)

        scores, X = self.score_rows(records, regimens, per_record=per_record, fast=True, _features_ready=start)
        return scores, X, started["explained"]()

    def explain_rows(
        self, regimen_classes: Sequence[str], X: pd.DataFrame
    ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str], float]]:
        """:meth:`explain_scored` with the compiled models and without pandas:
        {(regimen_class, outcome): (positions, contributions array, their columns, base_value)}."""
        return self._start_explaining(regimen_classes, X, background=False)()

    def _start_explaining(self, regimen_classes: Sequence[str], X: pd.DataFrame, background: bool = True):
        """Start :meth:`explain_rows` (``background``: in the explainers' threads, side by side); returns
        the function that waits for its result."""
        classes = np.asarray(regimen_classes, dtype=object)
        matrix = X.to_numpy()
        jobs = []
        for regimen_class in self.regimen_classes:
            mask = classes == regimen_class
            if not mask.any():
                continue
            rows = matrix[mask]
            for outcome in OUTCOMES:
                model = self.compiled((regimen_class, outcome))
                if model is None or not model.explains:
                    continue
                jobs.append(((regimen_class, outcome), np.flatnonzero(mask), model, rows))
        # The models' explanations (LightGBM's TreeSHAP: most of a request's time) side by side: LightGBM
        # releases the GIL while it computes, so one request uses the idle cores of a quiet server
        if not background or not jobs:  # e.g. batch scoring, whose workers are parallel already
            done = [model.explain(rows) for _, _, model, rows in jobs]
            return lambda: {key: (where, *out) for (key, where, _, _), out in zip(jobs, done)}
        pool = _explainers()
        futures = [pool.submit(model.explain, rows) for _, _, model, rows in jobs]

        def result() -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str], float]]:
            return {key: (where, *future.result()) for (key, where, _, _), future in zip(jobs, futures)}

        return result

    def explain_scored(
        self, scores: pd.DataFrame, X: pd.DataFrame, fast: bool = False
    ) -> dict[tuple[str, str], tuple[np.ndarray, pd.DataFrame, float]]:
        """Explain the rows :meth:`score_with_features` scored, one pass per regimen class × outcome.

        Returns {(regimen_class, outcome): (positions, contributions, base_value)}: ``positions``
        are the rows of ``scores`` / ``X`` of that class (ascending), ``contributions`` the model's
        own ``explain`` output for them (one row each, in that order), ``base_value`` its base value.
        Models without ``explain`` are left out. The service and batch scoring both call this.
        ``fast=True`` uses the models' compiled forms (:meth:`compiled`; same numbers, less overhead).
        """
        if fast:
            return {key: (where, pd.DataFrame(values, columns=columns, index=X.index[where]), base_value)
                    for key, (where, values, columns, base_value)
                    in self.explain_rows(scores["regimen_class"], X).items()}
        explained = {}
        for regimen_class in self.regimen_classes:
            mask = (scores["regimen_class"] == regimen_class).to_numpy()
            if not mask.any():
                continue
            for outcome in OUTCOMES:
                model = self.models.get((regimen_class, outcome))
                if model is None or not callable(getattr(model, "explain", None)):
                    continue
                X_class = X.loc[mask].reindex(columns=_model_columns(model, self.feature_names))
                contributions, base_value = model.explain(X_class)
                explained[(regimen_class, outcome)] = (np.flatnonzero(mask), contributions, base_value)
        return explained

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
