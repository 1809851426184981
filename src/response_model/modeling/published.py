"""Published linear scores (configs/published_scores.yaml) evaluated on the feature matrix, exactly.

A :class:`LinearScore` is a fixed formula: ``intercept + Σ c_f · clip(x_f) + cancer-type term``.
Fitting learns nothing about its coefficients; it records the training rows' medians (used where an
input is missing) and means (the centre of the additive explanation), and, when ``recalibrate`` is
true, a logistic recalibration ``shift + scale · score`` fitted on the training labels (the first step
of updating a published model to a new cohort). It is both the published LORIS baseline
(:class:`~response_model.modeling.baselines.PublishedLoris`) and the fixed offset the project's
learner can start from (``ResponseClassifier(offset=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from response_model.config import load_yaml
from response_model.features import cancer_type_column
from response_model.modeling.metrics import _newton_logistic

SCORES_FILE = "published_scores.yaml"


def published_score(name: str) -> dict[str, Any]:
    """Return the published score ``name`` of configs/published_scores.yaml: intercept, coefficients
    per feature column (cancer types as their one-hot columns), clip and citation."""
    scores = load_yaml(SCORES_FILE) or {}
    if name not in scores:
        raise ValueError(f"unknown published score {name!r}; expected one of {', '.join(sorted(scores))} "
                         f"(configs/{SCORES_FILE})")
    spec = scores[name]
    coefficients = {str(k): float(v) for k, v in (spec.get("coefficients") or {}).items()}
    coefficients.update({cancer_type_column(k): float(v) for k, v in (spec.get("cancer_type") or {}).items()})
    return {"intercept": float(spec["intercept"]), "coefficients": coefficients,
            "clip": {str(k): float(v) for k, v in (spec.get("clip") or {}).items()},
            "citation": str(spec.get("citation", ""))}


class LinearScore(BaseEstimator):
    """A published linear log-odds formula on feature columns (see the module docstring).

    ``name``: a score of configs/published_scores.yaml. ``recalibrate``: fit ``shift + scale · score``
    on the training labels (False: the formula exactly as published, shift 0, scale 1).
    Fitted: ``columns_``, ``coef_`` (published, per column), ``fill_`` (training medians, NaN for a
    column never observed), ``centre_`` (training means of the clipped, filled inputs), ``shift_``,
    ``scale_``, ``citation_``.
    """

    def __init__(self, name: str = "loris_pan_cancer", recalibrate: bool = False):
        self.name = name
        self.recalibrate = recalibrate

    def _inputs(self, X: pd.DataFrame) -> np.ndarray:
        """The clipped inputs, missing ones (and absent columns) set to the training median."""
        values = X.reindex(columns=self.columns_).to_numpy(dtype=np.float64, copy=True)
        values = np.where(values > self.upper_, self.upper_, values)  # NaN stays NaN
        return np.where(np.isnan(values), self.fill_, values)

    def fit(self, X: pd.DataFrame, y: Any = None) -> LinearScore:
        spec = published_score(self.name)
        absent = [c for c in spec["coefficients"] if c not in X.columns]
        if absent:
            raise ValueError(f"published score {self.name!r} needs feature column(s) {', '.join(absent)}")
        self.columns_ = list(spec["coefficients"])
        self.coef_ = np.array([spec["coefficients"][c] for c in self.columns_])
        self.upper_ = np.array([spec["clip"].get(c, np.inf) for c in self.columns_])
        self.intercept_ = spec["intercept"]
        self.citation_ = spec["citation"]
        clipped = np.minimum(X[self.columns_].to_numpy(dtype=np.float64), self.upper_)
        observed = ~np.isnan(clipped).all(axis=0)
        self.fill_ = np.full(len(self.columns_), np.nan)
        self.fill_[observed] = np.nanmedian(clipped[:, observed], axis=0)
        inputs = self._inputs(X)
        self.centre_ = inputs.mean(axis=0) if len(inputs) else self.fill_.copy()
        self.shift_, self.scale_ = 0.0, 1.0
        if self.recalibrate:
            if y is None:
                raise ValueError("recalibrate=True needs the training labels y")
            score = self.intercept_ + inputs @ self.coef_
            a, b = _newton_logistic(np.column_stack([np.ones_like(score), score]), np.asarray(y, dtype=float),
                                    np.zeros_like(score))
            self.shift_, self.scale_ = float(a), float(b)
        return self

    def log_odds(self, X: pd.DataFrame) -> np.ndarray:
        """Return ``shift + scale · (intercept + Σ c · input)`` per row (NaN where an input was never observed)."""
        check_is_fitted(self, "coef_")
        return self.shift_ + self.scale_ * (self.intercept_ + self._inputs(X) @ self.coef_)

    @property
    def base_value_(self) -> float:
        """The log-odds at the training means of the inputs (the explanation's base value)."""
        check_is_fitted(self, "coef_")
        return float(self.shift_ + self.scale_ * (self.intercept_ + self.centre_ @ self.coef_))

    def contributions(self, X: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        """Return exact additive terms ``scale · c_f · (input_f − training mean_f)`` per column and the
        base value: ``base + terms.sum(axis=1)`` equals :meth:`log_odds` (log-odds scale)."""
        terms = self.scale_ * (self._inputs(X) - self.centre_) * self.coef_
        return pd.DataFrame(terms, columns=self.columns_, index=X.index), self.base_value_

    def as_arrays(self) -> Mapping[str, Any]:
        """The fitted formula as plain arrays (for the compiled evaluators)."""
        check_is_fitted(self, "coef_")
        return {"columns": list(self.columns_), "coef": self.coef_, "upper": self.upper_, "fill": self.fill_,
                "centre": self.centre_, "shift": self.shift_, "scale": self.scale_, "intercept": self.intercept_,
                "base": self.base_value_}
