"""Models of response and primary resistance, their baselines, metrics and cross-validation.

* :mod:`~response_model.modeling.metrics` — AUC, AUPRC, Brier, calibration slope/intercept, ECE,
  c-index, fold intervals, subgroup tables.
* :mod:`~response_model.modeling.estimators` — :class:`ResponseClassifier` (the project's learner).
* :mod:`~response_model.modeling.baselines` — logistic, LORIS, RF16, single-marker, oracle.
* :mod:`~response_model.modeling.cv` — repeated stratified CV on shared folds, nested search.
"""

from response_model.modeling.baselines import (
    LogisticBaseline,
    LorisRecipe,
    Oracle,
    RF16Recipe,
    SingleMarkerRule,
)
from response_model.modeling.cv import CVResult, cross_validate, paired_difference
from response_model.modeling.estimators import ResponseClassifier, StandardisedLogistic
from response_model.modeling.metrics import (
    auc_ci_delong,
    binary_metrics,
    c_index,
    interval,
    subgroup_columns,
    subgroup_metrics,
)

__all__ = [
    "CVResult", "LogisticBaseline", "LorisRecipe", "Oracle", "RF16Recipe", "ResponseClassifier",
    "SingleMarkerRule", "StandardisedLogistic", "auc_ci_delong", "binary_metrics", "c_index",
    "cross_validate", "interval", "paired_difference", "subgroup_columns", "subgroup_metrics",
]
