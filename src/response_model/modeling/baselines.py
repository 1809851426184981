"""Baselines evaluated on the same folds as the project's model (``fit(X, y)`` / ``predict_proba(X)``).

* :class:`LogisticBaseline` — standardised L2 logistic regression on all features.
* :class:`LorisRecipe` — the LORIS recipe (Chang et al., Nat Cancer 2024): standardised logistic
  regression on TMB (≤ 50), prior systemic therapy, albumin, NLR (≤ 25), age (≤ 85) and cancer
  type one-hots, refitted in each fold. Needs those columns (:meth:`LorisRecipe.applicable`).
* :class:`PublishedLoris` — the published LORIS formula (Chang et al., Nat Cancer 2024) exactly as
  published, coefficients in configs/published_scores.yaml; nothing is refitted.
* :class:`RF16Recipe` — random forest on the 16 RF16 features of Chowell et al. (Nat Biotechnol 2022).
* :class:`SingleMarkerRule` — score 1 if ``feature ≥ threshold`` else 0; NaN where the marker is
  missing (metrics then cover the scored patients only and report their ``n``).
* :class:`Oracle` — the true probabilities (simulated cohorts), looked up by row index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from response_model.modeling.estimators import StandardisedLogistic, align_columns, as_frame, select_features
from response_model.modeling.published import LinearScore

LORIS_FEATURES = ("tmb", "prior_systemic_therapy", "albumin", "nlr", "age", "cancer_type_*")
LORIS_CLIP = {"tmb": 50.0, "nlr": 25.0, "age": 85.0}
RF16_FEATURES = ("tmb", "fcna", "hed", "hla_loh", "msi_high", "bmi", "nlr", "albumin", "platelets",
                 "haemoglobin", "age", "sex_male", "target_*", "stage_iv", "prior_systemic_therapy",
                 "cancer_type_*")


class LogisticBaseline(StandardisedLogistic):
    """Standardised logistic regression (median imputation + indicators + scaler) on all features."""


class LorisRecipe(ClassifierMixin, BaseEstimator):
    """The LORIS recipe refitted: standardised L2 logistic regression on its six inputs.

    ``C`` is the inverse regularisation strength (LORIS tuned it; 1.0 by default here).
    """

    REQUIRED = ("tmb", "prior_systemic_therapy", "albumin", "nlr", "age")

    def __init__(self, C: float = 1.0):
        self.C = C

    @classmethod
    def applicable(cls, X: pd.DataFrame) -> bool:
        """Return True when every LORIS input exists with some observed values and cancer type is encoded."""
        return (all(c in X.columns and X[c].notna().any() for c in cls.REQUIRED)
                and any(c.startswith("cancer_type_") for c in X.columns))

    def fit(self, X, y):
        X = as_frame(X)
        if not self.applicable(X):
            raise ValueError(f"the LORIS recipe needs columns {', '.join(self.REQUIRED)} and cancer_type_*")
        self.model_ = StandardisedLogistic(features=list(LORIS_FEATURES), clip=dict(LORIS_CLIP), C=self.C).fit(X, y)
        self.feature_names_in_ = self.model_.feature_names_in_
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)


class PublishedLoris(ClassifierMixin, BaseEstimator):
    """The published LORIS score, ``expit(S)`` with S the formula of configs/published_scores.yaml.

    ``score``: the entry of that file (default the pan-cancer six-feature LORIS). Fitting learns no
    coefficient: it only records the training rows' medians, used where an input is missing (this
    cohort has none missing). A cancer type the formula does not list adds 0. LORIS scores response:
    with ``outcome="primary_resistance"`` the score is turned round (log-odds −S, probability 1 − LORIS).
    """

    def __init__(self, score: str = "loris_pan_cancer", outcome: str = "objective_response"):
        self.score = score
        self.outcome = outcome

    def fit(self, X, y=None):
        X = as_frame(X)
        if self.outcome not in ("objective_response", "primary_resistance"):
            raise ValueError(f"unknown outcome {self.outcome!r}; expected objective_response or primary_resistance")
        self.formula_ = LinearScore(self.score, recalibrate=False).fit(X)
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X) -> np.ndarray:
        """Return the published log-odds S per row (−S for primary resistance)."""
        check_is_fitted(self, "formula_")
        sign = -1.0 if self.outcome == "primary_resistance" else 1.0
        return sign * self.formula_.log_odds(as_frame(X, self.feature_names_in_))

    def predict_proba(self, X):
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])


class RF16Recipe(ClassifierMixin, BaseEstimator):
    """Random forest on the RF16 features (cancer type and drug as one-hots; median imputation).

    Defaults follow a regularised forest (500 trees, min 20 samples per leaf, sqrt features).
    """

    def __init__(self, features: Sequence[str] = RF16_FEATURES, n_estimators: int = 500,
                 min_samples_leaf: int = 20, max_features: str | float = "sqrt", max_depth: int | None = None,
                 random_state: int = 0, n_jobs: int = 1):
        self.features = features
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_depth = max_depth
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y):
        X = as_frame(X)
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.columns_ = [c for c in select_features(X.columns, self.features, "features") if X[c].notna().any()]
        self.pipeline_ = Pipeline([
            ("impute", SimpleImputer(strategy="median")),
            ("forest", RandomForestClassifier(
                n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                max_features=self.max_features, max_depth=self.max_depth,
                random_state=self.random_state, n_jobs=self.n_jobs)),
        ]).fit(X[self.columns_].to_numpy(), np.asarray(y, dtype=int))
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "pipeline_")
        X = align_columns(as_frame(X, self.feature_names_in_), self.feature_names_in_)
        return self.pipeline_.predict_proba(X[self.columns_].to_numpy())


class SingleMarkerRule(ClassifierMixin, BaseEstimator):
    """Score = 1 if ``feature ≥ threshold`` else 0; NaN where the marker is missing.

    E.g. ``SingleMarkerRule("pdl1_tps", 1.0)`` (PD-L1 ≥ 1 %), ``SingleMarkerRule("tmb", 10.0)``.
    Nothing is learned. A binary score has ties, so its AUC is the balanced accuracy of the rule.
    The score is not a probability: cross-validation reports rank metrics only.
    """

    outputs_probability = False

    def __init__(self, feature: str = "tmb", threshold: float = 10.0):
        self.feature = feature
        self.threshold = threshold

    def fit(self, X, y=None):
        X = as_frame(X)
        if self.feature not in X.columns:
            raise ValueError(f"no feature column {self.feature!r}")
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "classes_")
        x = as_frame(X, self.feature_names_in_)[self.feature].to_numpy(dtype=float)
        s = np.where(np.isnan(x), np.nan, (x >= self.threshold).astype(float))
        return np.column_stack([1.0 - s, s])


class Oracle(ClassifierMixin, BaseEstimator):
    """The true probability of the outcome for each row (simulated cohorts only).

    ``truth`` is a Series of probabilities indexed like the feature matrix; ``predict_proba(X)``
    looks rows up by ``X.index`` (so pass DataFrames that keep their index through the CV).
    """

    def __init__(self, truth: pd.Series | Mapping | None = None):
        self.truth = truth

    def fit(self, X, y=None):
        if self.truth is None:
            raise ValueError("Oracle needs the true probabilities (truth=Series indexed like X)")
        self.truth_ = pd.Series(self.truth, dtype=float)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "truth_")
        if not isinstance(X, pd.DataFrame):
            raise TypeError("Oracle looks rows up by index: pass a DataFrame")
        p = self.truth_.reindex(X.index).to_numpy(dtype=float)
        return np.column_stack([1.0 - p, p])
