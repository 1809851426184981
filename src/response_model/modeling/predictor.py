"""The one way from patient records to numbers: :class:`Predictor`.

A :class:`Predictor` is made once per loaded bundle (:meth:`Predictor.of`) and answers
:meth:`Predictor.predict` — probabilities of every outcome per patient × regimen, eligibility with
its reasons, ranks and, when asked, every feature's contribution — as arrays (:class:`Predictions`).
The API, the clinician page, batch scoring, ``evaluate`` and the MLflow pyfunc all call it.

How each model is evaluated is decided when the bundle is built: its *evaluators*
(:mod:`response_model.modeling.compiled` — a :class:`~response_model.modeling.compiled.CompiledModel`
checked against the model's own methods, or a
:class:`~response_model.modeling.compiled.ReferenceModel` calling them) are stored in the bundle.
Both have the same small interface (``probabilities``, ``explain``, ``explains``);
:meth:`Predictor.reference` serves the models' own methods through it, for checks.

This module imports neither MLflow nor the training code, so that batch scoring's workers can
unpickle a Predictor cheaply.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from response_model.features import FeatureBlocks, regimen_feature_names
from response_model.features import feature_names as installed_feature_names
from response_model.modeling.compiled import ReferenceModel, compile_model
from response_model.modeling.interpret import ranks
from response_model.modeling.regimen_validation import withheld_regimens
from response_model.regimens import Regimen
from response_model.schema import OUTCOMES, PatientRecord

#: Columns of :meth:`Predictions.table`, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "row", "regimen", "regimen_class", "eligible", "ineligible_reason", *(f"p_{outcome}" for outcome in OUTCOMES),
)

ModelKey = tuple[str, str]  # (regimen_class, outcome)


class Evaluator(Protocol):
    """How one fitted model is evaluated on feature rows (the bundle's feature columns).

    An evaluator that can also turn whole-model log-odds into probabilities (``probability_of``, as
    :class:`~response_model.modeling.compiled.CompiledModel` does) gets its probabilities from its
    explanation when both are asked for, so its trees are evaluated once."""

    explains: bool

    def probabilities(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None = None) -> np.ndarray:
        """Probability of the outcome per row."""

    def explain(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None = None,
                ) -> tuple[np.ndarray, list[str], float]:
        """(contributions per row and feature, their feature names, base value), on the log-odds scale."""


def compile_evaluators(models: Mapping[ModelKey, Any], names: Sequence[str]) -> dict[ModelKey, Evaluator]:
    """Each model's evaluator: its compiled form where that reproduces the model's own methods on
    probe rows (checked here, once), else the model's own methods."""
    return {key: compile_model(model, names, regimen_feature_names()) for key, model in models.items()}


@dataclass(frozen=True)
class Explanation:
    """One model's contributions for the prediction rows of its regimen class.

    ``rows``: positions in :class:`Predictions` (ascending); ``values``: one row of contributions
    (log-odds before calibration) per position, one column per name of ``names``; ``base_value``:
    the model's base value (base + Σ contributions = the row's log-odds)."""

    rows: np.ndarray
    values: np.ndarray
    names: list[str]
    base_value: float

    def of_row(self, row: int) -> np.ndarray:
        """The contributions of prediction row ``row`` (which must be one of :attr:`rows`)."""
        return self.values[int(np.searchsorted(self.rows, row))]


@dataclass(frozen=True)
class Predictions:
    """What :meth:`Predictor.predict` computed: one entry per patient × regimen, patients in input order,
    each patient's regimens in the order asked (all candidates: catalogue order)."""

    patient: np.ndarray  # position of the record in the input (intp)
    regimen: np.ndarray  # regimen name (object)
    regimen_class: np.ndarray  # (object)
    eligible: np.ndarray  # (bool)
    ineligible_reason: np.ndarray  # "; "-joined reasons, None when eligible (object)
    probability: dict[str, np.ndarray]  # outcome → probability (float64; NaN where the class has no model)
    rank: np.ndarray  # 1 = highest rounded probability of response among the patient's eligible rows; 0 if ineligible
    features: FeatureBlocks  # the rows' features (columns: feature_names())
    explanations: dict[ModelKey, Explanation] = field(default_factory=dict)
    # False where the bundle's per-regimen gate withholds the regimen: its probabilities are NaN, rank 0
    served: np.ndarray | None = None

    def served_row(self, row: int) -> bool:
        """Whether prediction row ``row``'s regimen is served (not withheld by the per-regimen gate)."""
        return True if self.served is None else bool(self.served[row])

    def __len__(self) -> int:
        return len(self.patient)

    def rows_of(self, patient: int) -> np.ndarray:
        """Positions of the rows of input record ``patient``."""
        return np.flatnonzero(self.patient == patient)

    def feature_row(self, row: int) -> dict[str, float]:
        """The features of prediction row ``row``, by name."""
        names = installed_feature_names()
        values = self.features.take(np.array([row]), np.arange(len(names)))[0]
        return dict(zip(names, values.tolist()))

    def table(self) -> pd.DataFrame:
        """The rows as a table with :data:`OUTPUT_COLUMNS` (``row`` = the patient's position)."""
        columns = {"row": self.patient.astype(np.int64, copy=False), "regimen": self.regimen,
                   "regimen_class": self.regimen_class, "eligible": self.eligible,
                   "ineligible_reason": self.ineligible_reason,
                   **{f"p_{outcome}": self.probability[outcome] for outcome in OUTCOMES}}
        return pd.DataFrame(columns, columns=list(OUTPUT_COLUMNS))


_OPENMP = threading.local()


def _one_openmp_thread():
    """A context holding LightGBM's OpenMP to one thread: a call scores few rows per patient, and the
    parallelism comes from concurrent requests or batch workers, with which more threads would compete."""
    controller = getattr(_OPENMP, "controller", None)
    if controller is None:
        from threadpoolctl import ThreadpoolController

        controller = _OPENMP.controller = ThreadpoolController()
    return controller.limit(limits=1, user_api="openmp")


class Predictor:
    """Scores patient records with one bundle's models (see the module docstring).

    Parameters: ``evaluators`` {(regimen_class, outcome): evaluator}; ``feature_names`` the bundle's
    feature columns; ``catalogue`` its regimens; ``metadata`` its metadata (name, version, metrics, label);
    ``uncertainty`` the bundle's :class:`~response_model.modeling.uncertainty.PatientUncertainty` (None for
    bundles without one: :meth:`intervals` is then None).
    """

    def __init__(self, evaluators: Mapping[ModelKey, Evaluator], feature_names: Sequence[str],
                 catalogue: Mapping[str, Regimen], metadata: Mapping[str, Any], uncertainty: Any = None) -> None:
        self.evaluators = dict(evaluators)
        self.uncertainty = uncertainty
        self.feature_names = tuple(feature_names)
        self.catalogue = dict(catalogue)
        self.metadata = dict(metadata)
        self.regimen_classes = tuple(sorted({c for c, _ in self.evaluators}))
        self.withheld = withheld_regimens(self.metadata)  # decided at training (regimen_validation), never here
        self._installed_order = self.feature_names == installed_feature_names(with_regimen=True)

    @classmethod
    def of(cls, bundle: Any) -> Predictor:
        """The predictor of ``bundle`` (a ResponseModelBundle): the evaluators stored in it (bundles
        saved before evaluators were stored get them compiled and checked now)."""
        evaluators = getattr(bundle, "evaluators", None) or compile_evaluators(bundle.models, bundle.feature_names)
        uncertainty = getattr(bundle, "uncertainty", None)
        return cls(evaluators, bundle.feature_names, bundle.catalogue, bundle.metadata,
                   None if uncertainty is None else uncertainty.serving())

    @classmethod
    def reference(cls, bundle: Any) -> Predictor:
        """The predictor evaluating ``bundle``'s models through their own ``predict_proba`` / ``explain``."""
        evaluators = {key: ReferenceModel(model, bundle.feature_names) for key, model in bundle.models.items()}
        return cls(evaluators, bundle.feature_names, bundle.catalogue, bundle.metadata,
                   getattr(bundle, "uncertainty", None))

    def candidate_regimens(self) -> list[Regimen]:
        """The catalogue's candidate regimens of a class this predictor scores, in catalogue order."""
        return [r for r in self.catalogue.values() if r.is_candidate and r.regimen_class in self.regimen_classes]

    def regimen(self, name: str) -> Regimen:
        """The catalogue entry ``name``; ValueError naming what was expected when it cannot be scored."""
        if name not in self.catalogue:
            raise ValueError(f"regimen {name!r} is not in the catalogue; expected one of {', '.join(self.catalogue)}")
        regimen = self.catalogue[name]
        if regimen.regimen_class not in self.regimen_classes:
            raise ValueError(
                f"regimen {name!r} is of class {regimen.regimen_class!r}, for which this model has no estimator; "
                f"expected a regimen of {', '.join(self.regimen_classes)}"
            )
        return regimen

    def predict(self, records: Sequence[PatientRecord], regimens: Sequence[Sequence[str] | None] | None = None,
                explain: bool = False) -> Predictions:
        """Score every record under its regimens; return :class:`Predictions`.

        ``regimens``: None = every candidate regimen for every record; else one entry per record: a
        list of regimen names, one name, or None (every candidate). Ineligible regimens are scored too, and
        flagged. With ``explain`` every model's contributions for its rows are computed as well.
        A regimen the bundle's per-regimen gate withholds gets NaN probabilities and no rank (``served`` False).
        """
        records = list(records)
        names, patient, which = self._pairs(records, regimens)
        chosen = [self.regimen(name) for name in names]
        eligible, reason = _eligibility(records, chosen, patient, which)
        classes = np.array([r.regimen_class for r in chosen], dtype=object)[which]
        blocks = FeatureBlocks.of_pairs(records, patient, names, which)
        with _one_openmp_thread():
            rows = self._rows(blocks)
            explained = self._explanations(rows, classes, patient) if explain else {}
            probability = {outcome: self._probabilities(outcome, rows, classes, patient, explained)
                           for outcome in OUTCOMES}
        served = ~np.isin(np.array(names, dtype=object), list(self.withheld))[which] if self.withheld \
            else np.ones(len(patient), dtype=bool)
        for p in probability.values():
            p[~served] = math.nan
        return Predictions(patient, np.array(names, dtype=object)[which], classes, eligible, reason, probability,
                           ranks(patient, eligible & served, probability["objective_response"]), blocks, explained,
                           served)

    def intervals(self, records: Sequence[PatientRecord], predictions: Predictions,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """{outcome: (lower, upper)} per-patient interval of each row of ``predictions`` (made by
        :meth:`predict` from ``records``) at the bundle's level; None when the bundle stores no
        uncertainty part (:mod:`response_model.modeling.uncertainty`)."""
        if self.uncertainty is None:
            return None
        with _one_openmp_thread():
            return self.uncertainty.intervals(self, list(records), predictions)

    def rows_for(self, blocks: FeatureBlocks, mask: np.ndarray, patient: np.ndarray) -> tuple[Any, Any]:
        """(rows of ``mask``, their patients) of ``blocks`` as the evaluators read them."""
        return _subset(self._rows(blocks), mask, patient)

    # -- the steps of predict ------------------------------------------------------------------------

    def _pairs(self, records: list[PatientRecord], regimens: Sequence[Sequence[str] | None] | None,
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(distinct regimen names, patient position per row, regimen position per row)."""
        default = [r.name for r in self.candidate_regimens()]
        if regimens is None:  # every record under the same regimens: index arrays, no per-pair Python
            return default, np.repeat(np.arange(len(records)), len(default)), \
                np.tile(np.arange(len(default), dtype=np.intp), len(records))
        if isinstance(regimens, str) or len(regimens) != len(records):
            raise ValueError(f"{len(records)} records: expected one regimen list (or None) per record")
        wanted = [default if entry is None else [entry] if isinstance(entry, str) else list(entry)
                  for entry in regimens]
        names = list(dict.fromkeys(name for entry in wanted for name in entry))
        index = {name: k for k, name in enumerate(names)}
        patient = np.repeat(np.arange(len(records)), [len(entry) for entry in wanted])
        which = np.fromiter((index[name] for entry in wanted for name in entry), dtype=np.intp, count=len(patient))
        return names, patient, which

    def _rows(self, blocks: FeatureBlocks) -> FeatureBlocks | np.ndarray:
        """What the evaluators read: the blocks themselves when the bundle's features are the installed
        feature function's, else the matrix in the bundle's column order (absent features missing)."""
        if self._installed_order:
            return blocks
        frame = blocks.frame()
        absent = [c for c in self.feature_names if c not in frame.columns]
        if absent:
            warnings.warn(f"the installed feature function lacks {len(absent)} feature(s) this model was "
                          f"trained with, treated as missing: {', '.join(absent)}", UserWarning, stacklevel=3)
        return frame.reindex(columns=list(self.feature_names)).to_numpy()

    def _probabilities(self, outcome: str, rows: FeatureBlocks | np.ndarray, classes: np.ndarray,
                       patient: np.ndarray, explained: Mapping[ModelKey, Explanation]) -> np.ndarray:
        """Probability of ``outcome`` per row; from the explanation where one was computed and the
        evaluator maps log-odds to probabilities (the contributions add up to the log-odds exactly),
        so that the trees are not evaluated twice."""
        p = np.full(len(classes), math.nan)
        for regimen_class in self.regimen_classes:
            mask = classes == regimen_class
            evaluator = self.evaluators.get((regimen_class, outcome))
            explanation = explained.get((regimen_class, outcome))
            if evaluator is None or not mask.any():
                continue
            if explanation is not None and hasattr(evaluator, "probability_of"):
                p[mask] = evaluator.probability_of(explanation.base_value + explanation.values.sum(axis=1))
            else:
                p[mask] = evaluator.probabilities(*_subset(rows, mask, patient))
        return p

    def _explanations(self, rows: FeatureBlocks | np.ndarray, classes: np.ndarray,
                      patient: np.ndarray) -> dict[ModelKey, Explanation]:
        explained = {}
        for (regimen_class, outcome), evaluator in self.evaluators.items():
            mask = classes == regimen_class
            if evaluator.explains and mask.any():
                values, names, base = evaluator.explain(*_subset(rows, mask, patient))
                explained[(regimen_class, outcome)] = Explanation(np.flatnonzero(mask), values, names, base)
        return explained


def _subset(rows: FeatureBlocks | np.ndarray, mask: np.ndarray, patient: np.ndarray) -> tuple[Any, Any]:
    """(rows of ``mask``, their patients) as the evaluators take them: blocks know their patients."""
    if isinstance(rows, FeatureBlocks):
        return rows.subset(mask), None
    return rows[mask], patient[mask]


def _eligibility(records: list[PatientRecord], chosen: list[Regimen], patient: np.ndarray,
                 which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eligible, reason) per row; only regimens with rules are checked, each for its own rows."""
    eligible = np.ones(len(patient), dtype=bool)
    reason = np.full(len(patient), None, dtype=object)
    for k, regimen in enumerate(chosen):
        if regimen.eligibility:
            rows = np.flatnonzero(which == k)
            why = [regimen.ineligibility(records[i]) for i in patient[rows].tolist()]
            eligible[rows] = [not w for w in why]
            reason[rows] = ["; ".join(w) if w else None for w in why]
    return eligible, reason
