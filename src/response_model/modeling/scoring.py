"""Scoring patient records with a bundle's models: the part of
:class:`~response_model.modeling.bundle.ResponseModelBundle` that needs no MLflow.

:class:`BundleScoring` holds the scoring and explaining methods; ``ResponseModelBundle`` (the MLflow
pyfunc) inherits them. :class:`CompiledBundle` carries only what scoring needs — the feature names,
the catalogue, the metadata and each model's compiled form (:mod:`response_model.modeling.compiled`)
— so that batch scoring's workers load it without importing MLflow or the training code, and do not
compile and self-check the models again; it computes the same numbers as the bundle it came from.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from response_model.dataset import is_missing
from response_model.features import FeatureBlocks, build_feature_matrix, feature_names, regimen_feature_names
from response_model.modeling.compiled import CompiledModel, ReferenceModel, compile_model
from response_model.regimens import Regimen
from response_model.schema import PatientRecord

OUTCOMES: tuple[str, ...] = ("objective_response", "primary_resistance")
#: Columns of :meth:`BundleScoring.score`'s table, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "row", "regimen", "regimen_class", "eligible", "ineligible_reason", *(f"p_{outcome}" for outcome in OUTCOMES),
)

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


class BundleScoring:
    """Scoring and explaining methods over ``models`` ({(regimen_class, outcome): fitted model}),
    ``feature_names``, ``catalogue`` and ``metadata`` (set by the subclass)."""

    models: dict[tuple[str, str], Any]
    feature_names: tuple[str, ...]
    catalogue: dict[str, Regimen]
    metadata: dict[str, Any]

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
        return self._in_bundle_order(build_feature_matrix(list(records), list(regimens)))

    def _in_bundle_order(self, matrix: pd.DataFrame) -> pd.DataFrame:
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
                    cache[key] = compile_model(model, self.feature_names, regimen_feature_names())
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
        matrix: bool = True,
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Return :meth:`score`'s table and the feature matrix it scored (one row per table row),
        so that explanations reuse the matrix instead of building it again.

        ``fast=True`` computes the probabilities with the models' compiled forms (:meth:`compiled`):
        the same numbers as the models' own ``predict_proba`` (the reference path, ``fast=False``).
        ``matrix=False``: no feature matrix is built when the compiled models do not need it (None)."""
        columns, X = self.score_rows(records, regimens, per_record, fast, matrix=matrix, as_lists=False)
        columns["row"] = columns["row"].astype(np.int64, copy=False)
        return pd.DataFrame(columns, columns=list(OUTPUT_COLUMNS)), X

    def score_rows(
        self,
        records: Sequence[PatientRecord],
        regimens: Sequence[str] | Sequence[Sequence[str] | str | None] | None = None,
        per_record: bool = False,
        fast: bool = False,
        _features_ready: Any = None,
        matrix: bool = True,
        as_lists: bool = True,
    ) -> tuple[dict[str, list | np.ndarray], pd.DataFrame | None]:
        """:meth:`score_with_features` without the pandas table: ({column: list or array}, features).

        The columns are those of :data:`OUTPUT_COLUMNS` (probabilities as float arrays, NaN where a
        class has no model), one entry per scored record × regimen; the others as lists of Python
        values, or with ``as_lists=False`` as NumPy arrays (``row`` intp, ``eligible`` bool, others object)."""
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
            names = list(dict.fromkeys(name for entry in wanted for name in entry))
            index = {name: k for k, name in enumerate(names)}
            patient_index = np.repeat(np.arange(len(records)), [len(entry) for entry in wanted])
            regimen_index = np.fromiter((index[name] for entry in wanted for name in entry), dtype=np.intp,
                                        count=len(patient_index))
        else:
            # every record under the same regimens: the pairs as index arrays, no per-pair Python
            names = default if regimens is None else ([regimens] if isinstance(regimens, str) else list(regimens))
            patient_index = np.repeat(np.arange(len(records)), len(names))
            regimen_index = np.tile(np.arange(len(names), dtype=np.intp), len(records))
        chosen = [self._regimen(name) for name in names]  # each name looked up (and checked) once
        # eligibility: only regimens with rules are checked, each for the rows that have it
        eligible = np.ones(len(patient_index), dtype=bool)
        reason = np.full(len(patient_index), None, dtype=object)
        for k, regimen in enumerate(chosen):
            if regimen.eligibility:
                rows = np.flatnonzero(regimen_index == k)
                why = [regimen.ineligibility(records[i]) for i in patient_index[rows].tolist()]
                eligible[rows] = [not w for w in why]
                reason[rows] = ["; ".join(w) if w else None for w in why]
        classes = np.array([r.regimen_class for r in chosen], dtype=object)[regimen_index]
        columns: dict[str, list | np.ndarray] = {
            "row": patient_index, "regimen": np.array(names, dtype=object)[regimen_index],
            "regimen_class": classes, "eligible": eligible, "ineligible_reason": reason,
        }
        if as_lists:  # Python values, as JSON answers take them
            columns = {name: values.tolist() for name, values in columns.items()}
        blocks = FeatureBlocks.of_pairs(records, patient_index, names, regimen_index)
        # the compiled models read the blocks (each patient's features once) unless the bundle's
        # features differ from the installed feature function's
        blocks_in_order = self.feature_names == feature_names()
        X = self._in_bundle_order(blocks.frame()) if matrix or not (fast and blocks_in_order) else None
        if _features_ready is not None:  # score_explain_rows: the explanations start now
            _features_ready(columns["regimen_class"], X, patient_index)
        values = None if X is None else X.to_numpy()
        for outcome in OUTCOMES:
            p = np.full(len(patient_index), math.nan)
            for regimen_class in self.regimen_classes:
                mask = classes == regimen_class
                if not mask.any():
                    continue
                if fast:
                    model = self.compiled((regimen_class, outcome))
                    if model is not None and blocks_in_order:
                        p[mask] = model.probabilities(blocks.subset(mask))
                    elif model is not None:
                        p[mask] = model.probabilities(values[mask], patient_index[mask])
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

        def start(classes: Sequence[str], X: pd.DataFrame, groups: np.ndarray) -> None:
            started["explained"] = self._start_explaining(classes, X, groups=groups)

        scores, X = self.score_rows(records, regimens, per_record=per_record, fast=True, _features_ready=start)
        return scores, X, started["explained"]()

    def explain_rows(
        self, regimen_classes: Sequence[str], X: pd.DataFrame, groups: Sequence[int] | None = None,
    ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str], float]]:
        """:meth:`explain_scored` with the compiled models and without pandas:
        {(regimen_class, outcome): (positions, contributions array, their columns, base_value)}.
        ``groups``: the patient of each row (the scores' ``row``), which lets the patient-only trees be
        explained once per patient; the values are the same without it."""
        return self._start_explaining(regimen_classes, X, background=False, groups=groups)()

    def _start_explaining(self, regimen_classes: Sequence[str], X: pd.DataFrame, background: bool = True,
                          groups: Sequence[int] | None = None):
        """Start :meth:`explain_rows` (``background``: in the explainers' threads, side by side); returns
        the function that waits for its result."""
        classes = np.asarray(regimen_classes, dtype=object)
        groups = None if groups is None else np.asarray(groups)
        matrix = X.to_numpy()
        jobs = []
        for regimen_class in self.regimen_classes:
            mask = classes == regimen_class
            if not mask.any():
                continue
            rows = matrix[mask]
            row_groups = None if groups is None else groups[mask]
            for outcome in OUTCOMES:
                model = self.compiled((regimen_class, outcome))
                if model is None or not model.explains:
                    continue
                jobs.append(((regimen_class, outcome), np.flatnonzero(mask), model, rows, row_groups))
        # The models' explanations (LightGBM's TreeSHAP: most of a request's time) side by side: LightGBM
        # releases the GIL while it computes, so one request uses the idle cores of a quiet server
        if not background or not jobs:  # e.g. batch scoring, whose workers are parallel already
            done = [model.explain(rows, row_groups) for _, _, model, rows, row_groups in jobs]
            return lambda: {key: (where, *out) for (key, where, *_), out in zip(jobs, done)}
        pool = _explainers()
        futures = [pool.submit(model.explain, rows, row_groups) for _, _, model, rows, row_groups in jobs]

        def result() -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str], float]]:
            return {key: (where, *future.result()) for (key, where, *_), future in zip(jobs, futures)}

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
                    in self.explain_rows(scores["regimen_class"], X,
                                         scores.get("row")).items()}
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


class CompiledBundle(BundleScoring):
    """What scoring needs of a bundle: its compiled models (see the module docstring).

    Built with :meth:`of`; ``models`` holds the compiled forms, so the reference path (``fast=False``)
    and the record-level ``explain`` of the full bundle are not available here.
    """

    def __init__(self, compiled: Mapping[tuple[str, str], CompiledModel | ReferenceModel],
                 feature_names: Sequence[str], catalogue: Mapping[str, Regimen], metadata: Mapping[str, Any]) -> None:
        self.models = dict(compiled)
        self.feature_names = tuple(feature_names)
        self.catalogue = dict(catalogue)
        self.metadata = dict(metadata)

    @classmethod
    def of(cls, bundle: BundleScoring) -> CompiledBundle:
        """The compiled form of ``bundle`` (its models compiled and self-checked here, once)."""
        return cls({key: bundle.compiled(key) for key in bundle.models}, bundle.feature_names,
                   bundle.catalogue, bundle.metadata)

    def compiled(self, key: tuple[str, str]) -> CompiledModel | ReferenceModel | None:
        """The compiled form of model ``key`` (None if no such model)."""
        return self.models.get(key)

    def _probabilities(self, key: tuple[str, str], X: pd.DataFrame) -> np.ndarray:
        raise TypeError("a CompiledBundle scores with its compiled models only (fast=True)")

    def explain_scored(self, scores: pd.DataFrame, X: pd.DataFrame, fast: bool = False):
        """:meth:`BundleScoring.explain_scored` with the compiled models (``fast`` is always True here)."""
        return super().explain_scored(scores, X, fast=True)
