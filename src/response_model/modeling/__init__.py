"""Models of response and primary resistance, their baselines, metrics and cross-validation.

* :mod:`~response_model.modeling.metrics` — AUC, AUPRC, Brier, calibration slope/intercept, ECE,
  c-index, fold intervals, subgroup tables.
* :mod:`~response_model.modeling.estimators` — :class:`ResponseClassifier` (the project's learner).
* :mod:`~response_model.modeling.baselines` — logistic, LORIS (refitted and published), RF16, single-marker, oracle.
* :mod:`~response_model.modeling.cv` — repeated stratified CV on shared folds, nested search.
"""

import importlib
from typing import Any

# Imported on first use (PEP 562): a module of this package (e.g. batch scoring's workers importing
# ``modeling.predictor``) must not pay for the training code and its libraries.
_EXPORTS = {
    "LogisticBaseline": "baselines", "LorisRecipe": "baselines", "Oracle": "baselines",
    "PublishedLoris": "baselines", "RF16Recipe": "baselines", "SingleMarkerRule": "baselines",
    "CVResult": "cv", "cross_validate": "cv", "paired_difference": "cv",
    "ResponseClassifier": "estimators", "StandardisedLogistic": "estimators",
    "auc_ci_delong": "metrics", "binary_metrics": "metrics", "c_index": "metrics", "interval": "metrics",
    "subgroup_columns": "metrics", "subgroup_metrics": "metrics",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CVResult", "LogisticBaseline", "LorisRecipe", "Oracle", "PublishedLoris", "RF16Recipe", "ResponseClassifier",
    "SingleMarkerRule", "StandardisedLogistic", "auc_ci_delong", "binary_metrics", "c_index",
    "cross_validate", "interval", "paired_difference", "subgroup_columns", "subgroup_metrics",
]
