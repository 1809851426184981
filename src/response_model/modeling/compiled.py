"""Fast, exact evaluation of a bundle's fitted models on NumPy feature matrices (the serving path).

A prediction request scores a dozen rows; for so few rows the fitted models' own ``predict_proba``
and ``explain`` spend almost all their time in pandas and scikit-learn input validation, not in
arithmetic (about 25 ms and 60 ms per call on this machine, against well under 1 ms of work).
:func:`compile_model` turns a fitted :class:`~response_model.modeling.estimators.ResponseClassifier`
into a :class:`CompiledModel` that performs the *same* floating-point operations in the same order
on a NumPy matrix whose columns are the bundle's feature names:

* logistic part — the same clipping, median imputation with missing indicators (the fitted
  ``SimpleImputer``'s ``statistics_`` and ``indicator_.features_``), standardisation (the fitted
  ``StandardScaler``'s ``mean_`` and ``scale_``), then the fitted learner's own ``decision_function``;
* LightGBM part — the fitted booster itself (``Booster.predict`` on the NumPy columns, one thread:
  a request is too small to gain from more, and threads contend on a loaded machine);
* the weighting, the optional recalibration and the whole-model additive explanation as in
  ``ResponseClassifier.predict_proba`` and ``ResponseClassifier.explain``.

Nothing is trusted on faith: each compiled model is checked against the model's own
``predict_proba`` and ``explain`` on probe rows (missing values, clipped values, zeros, extremes)
when it is built, and any model that is not a ResponseClassifier of the expected shape — or that
disagrees by more than :data:`TOLERANCE` — is served by :class:`ReferenceModel`, which calls the
model's own methods. The features themselves always come from ``build_feature_matrix``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

log = logging.getLogger(__name__)

#: Largest absolute difference from the model's own methods accepted at the self-check.
TOLERANCE = 1e-12


class ReferenceModel:
    """The model's own ``predict_proba`` / ``explain`` behind the compiled interface (always exact)."""

    exact_copy = False

    def __init__(self, model: Any, feature_names: Sequence[str]) -> None:
        self.model = model
        self.feature_names = list(feature_names)
        names = getattr(model, "feature_names_in_", None)
        self.columns = list(self.feature_names) if names is None else [str(n) for n in names]
        self.explains = callable(getattr(model, "explain", None))

    def _frame(self, X: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(X, columns=self.feature_names).reindex(columns=self.columns)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Probability of the outcome per row of ``X`` (columns: the bundle's feature names)."""
        if len(X) == 0:
            return np.empty(0)
        return np.asarray(self.model.predict_proba(self._frame(X)), dtype=np.float64)[:, 1]

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, list[str], float]:
        """(contributions, their column names, base value) of the model's own ``explain``."""
        frame, base = self.model.explain(self._frame(X))
        return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns], float(base)


class CompiledModel:
    """A fitted ResponseClassifier evaluated with NumPy (see the module docstring)."""

    exact_copy = True
    explains = True

    def __init__(self, model: Any, feature_names: Sequence[str]) -> None:
        position = {name: i for i, name in enumerate(feature_names)}
        names_in = [str(n) for n in model.feature_names_in_]
        missing = [n for n in names_in if n not in position]
        if missing:
            raise ValueError(f"model inputs absent from the bundle's features: {', '.join(missing)}")
        self.w = float(model.linear_weight)
        self.calibrator = None if model.calibrator_ is None else tuple(float(v) for v in model.calibrator_)
        self.columns = [str(c) for c in model.explained_features_]
        column_position = {name: k for k, name in enumerate(self.columns)}
        self.linear = None
        if model.linear_ is not None:
            linear = model.linear_
            steps = linear.pipeline_.named_steps
            impute, scale, learner = steps["impute"], steps["scale"], steps["lr"]
            if list(linear.pipeline_.named_steps) != ["impute", "scale", "lr"]:
                raise ValueError("unexpected logistic pipeline steps")
            statistics = np.asarray(impute.statistics_, dtype=np.float64)
            if np.isnan(statistics).any() or getattr(impute, "strategy", None) != "median":
                raise ValueError("imputer with empty features or another strategy")
            if not (getattr(impute, "missing_values", None) is np.nan or
                    (isinstance(impute.missing_values, float) and math.isnan(impute.missing_values))):
                raise ValueError("imputer missing_values is not NaN")
            indicator = impute.indicator_
            columns = [str(c) for c in linear.columns_]
            clips = []
            for name, bound in (linear.clip or {}).items():
                if name in columns:
                    low, high = (None, bound) if np.isscalar(bound) else tuple(bound)
                    clips.append((columns.index(name), low, high))
            self.linear = {
                "index": np.array([position[c] for c in columns], dtype=np.intp),
                "clips": clips,
                "statistics": statistics,
                "indicator": None if indicator is None else np.asarray(indicator.features_, dtype=np.intp),
                "mean": None if scale.mean_ is None or not scale.with_mean else np.asarray(scale.mean_),
                "scale": None if scale.scale_ is None or not scale.with_std else np.asarray(scale.scale_),
                "learner": learner,
                "coef": np.asarray(learner.coef_[0], dtype=np.float64),
                "intercept": float(learner.intercept_[0]),
                "n": len(columns),
                "positions": np.array([column_position[c] for c in columns], dtype=np.intp),
            }
        self.gbm = None
        if model.gbm_ is not None:
            gbm_columns = [str(c) for c in model.gbm_features_]
            self.gbm = {
                "index": np.array([position[c] for c in gbm_columns], dtype=np.intp),
                "booster": model.gbm_.booster_,
                "positions": np.array([column_position[c] for c in gbm_columns], dtype=np.intp),
            }
        if self.linear is None and self.gbm is None:
            raise ValueError("a model with neither part")

    # -- the logistic part ------------------------------------------------------------------------

    def _standardised(self, X: np.ndarray) -> np.ndarray:
        lin = self.linear
        values = X[:, lin["index"]]  # fancy indexing copies
        for j, low, high in lin["clips"]:  # pandas Series.clip: NaN stays NaN
            column = values[:, j]
            if low is not None:
                column = np.where(column < low, low, column)
            if high is not None:
                column = np.where(column > high, high, column)
            values[:, j] = column
        missing = np.isnan(values)
        values = np.where(missing, lin["statistics"], values)
        if lin["indicator"] is not None:
            values = np.hstack([values, missing[:, lin["indicator"]].astype(np.float64)])
        if lin["mean"] is not None:
            values -= lin["mean"]
        if lin["scale"] is not None:
            values /= lin["scale"]
        return values

    def _linear_terms(self, z: np.ndarray) -> np.ndarray:
        lin = self.linear
        terms = z * lin["coef"]
        n = lin["n"]
        values = terms[:, :n].copy()
        if lin["indicator"] is not None:
            for k, j in enumerate(lin["indicator"]):
                values[:, j] += terms[:, n + k]
        return values

    # -- the LightGBM part ----------------------------------------------------------------------------

    def _gbm(self, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        data = np.ascontiguousarray(X[:, self.gbm["index"]])
        return self.gbm["booster"].predict(data, num_threads=1, **kwargs)

    # -- the interface --------------------------------------------------------------------------------

    def log_odds(self, X: np.ndarray) -> np.ndarray:
        """The whole model's log-odds before calibration, per row."""
        f = np.zeros(len(X))
        if self.linear is not None:
            f += self.w * np.asarray(self.linear["learner"].decision_function(self._standardised(X))).ravel()
        if self.gbm is not None:
            f += (1.0 - self.w) * self._gbm(X, raw_score=True)
        return f

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Probability of the outcome per row of ``X`` (columns: the bundle's feature names)."""
        if len(X) == 0:
            return np.empty(0)
        f = self.log_odds(X)
        if self.calibrator is not None:
            a, b = self.calibrator
            f = a + b * f
        return expit(f)

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, list[str], float]:
        """(contributions, column names, base value): the whole model's additive log-odds terms."""
        total = np.zeros((len(X), len(self.columns)))
        base = 0.0
        if self.linear is not None:
            total[:, self.linear["positions"]] += self.w * self._linear_terms(self._standardised(X))
            base += self.w * self.linear["intercept"]
        if self.gbm is not None:
            # the expected raw score is the same for every row; with no rows, read it off an all-missing one
            raw = self._gbm(X if len(X) else np.full((1, X.shape[1]), np.nan), pred_contrib=True)
            total[:, self.gbm["positions"]] += (1.0 - self.w) * raw[: len(X), :-1]
            base += (1.0 - self.w) * float(raw[0, -1])
        return total, list(self.columns), base


def probe_rows(n_features: int, seed: int = 0) -> np.ndarray:
    """Rows exercising missing values, zeros, ones, extremes and ordinary values (for the self-check)."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(6, n_features)) * rng.choice([1.0, 3.0, 30.0], size=(6, n_features))
    normal[rng.random(normal.shape) < 0.3] = np.nan
    counts = rng.integers(0, 4, size=(3, n_features)).astype(np.float64)
    return np.vstack([
        np.full((1, n_features), np.nan), np.zeros((1, n_features)), np.ones((1, n_features)),
        np.full((1, n_features), 1e4), np.full((1, n_features), -1e4), normal, counts,
    ])


def _agrees(compiled: CompiledModel, reference: ReferenceModel, X: np.ndarray) -> str | None:
    """None when ``compiled`` reproduces ``reference`` on ``X``, else what differs."""
    p, p_ref = compiled.probabilities(X), reference.probabilities(X)
    if p.shape != p_ref.shape or not np.allclose(p, p_ref, rtol=0.0, atol=TOLERANCE, equal_nan=True):
        return "probabilities differ"
    if reference.explains:
        values, columns, base = compiled.explain(X)
        ref_values, ref_columns, ref_base = reference.explain(X)
        if columns != ref_columns:
            return "explanation columns differ"
        if not np.allclose(values, ref_values, rtol=0.0, atol=TOLERANCE, equal_nan=True):
            return "contributions differ"
        if not math.isclose(base, ref_base, rel_tol=0.0, abs_tol=TOLERANCE):
            return "base values differ"
    return None


def compile_model(model: Any, feature_names: Sequence[str]) -> CompiledModel | ReferenceModel:
    """A :class:`CompiledModel` of ``model`` if it reproduces the model's own methods on probe rows,
    else a :class:`ReferenceModel` (which calls them). Never changes an answer, only its cost."""
    reference = ReferenceModel(model, feature_names)
    if not all(hasattr(model, a) for a in ("linear_", "gbm_", "linear_weight", "calibrator_",
                                             "explained_features_", "feature_names_in_")):
        return reference
    try:
        compiled = CompiledModel(model, feature_names)
        problem = _agrees(compiled, reference, probe_rows(len(feature_names)))
    except Exception as error:  # noqa: BLE001 - any surprise: the model's own methods serve
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        log.warning("serving %s through its own predict_proba/explain (slower): the compiled form %s",
                    type(model).__name__, problem)
        return reference
    return compiled
