"""Scoring a patient whose regimen is not recorded: the training mix of the regimens of a class.

An external cohort may say only that its patients had a checkpoint inhibitor, not which (Chowell's
``Drug`` column absent). The estimate for such a patient averages the :class:`~response_model.modeling.
predictor.Predictor`'s estimates under each regimen of the class, weighted by how many training patients
had it (stored in the bundle metadata at training time as aggregated counts, :data:`PREVALENCE_KEY`).

The average is taken on the log-odds scale (a logarithmic pool, ``Σ w_r · logit p_r``): the log-odds of
the mixture is then the same weighted average of the regimens' log-odds before calibration (calibration
is affine on that scale), so its explanation is the weighted average of theirs and stays exactly
additive (base value + Σ contributions = the mixture's log-odds). The arithmetic average of the
probabilities differs from it by Jensen's gap, small when the regimens' estimates are close.

Nothing is re-derived here: every number comes from ``Predictor.predict`` (the one feature path).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit, logit

from response_model.modeling.predictor import Explanation, Predictor
from response_model.regimens import Regimen
from response_model.schema import OUTCOMES, PatientRecord

#: Bundle metadata key: {regimen_class: {regimen: training patients}} (counts only, no identifiers).
PREVALENCE_KEY = "regimen_prevalence"
#: The ``regimen`` shown for a patient scored under the training mix (batch output, evaluate).
UNKNOWN_REGIMEN = "unrecorded"
_EPS = 1e-12  # probabilities are kept inside (ε, 1 − ε) before the logit


def regimen_prevalence(regimens: Sequence[str | None], catalogue: Mapping[str, Regimen]) -> dict[str, dict[str, int]]:
    """{regimen_class: {regimen: number of patients}} of a training cohort's regimens (None left out),
    regimens of a class in descending count, then name."""
    counts = Counter(name for name in regimens if isinstance(name, str) and name)
    out: dict[str, dict[str, int]] = {}
    for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        out.setdefault(catalogue[name].regimen_class, {})[name] = int(n)
    return out


def mixture_weights(metadata: Mapping[str, Any], regimen_class: str) -> dict[str, float]:
    """{regimen: weight} (summing to 1) of ``regimen_class`` in the training cohort; ValueError naming what
    is missing when the bundle has no counts for it (bundles trained before they were stored)."""
    counts = (metadata.get(PREVALENCE_KEY) or {}).get(regimen_class) or {}
    total = sum(counts.values())
    if not total:
        raise ValueError(f"the model's metadata has no training regimen counts for {regimen_class!r} "
                         f"({PREVALENCE_KEY}; stored by training since issue 13): a patient without a regimen "
                         "cannot be scored with it; expected a regimen per patient")
    return {name: n / total for name, n in counts.items()}


def only_class(predictor: Predictor) -> str | None:
    """The predictor's regimen class when it has exactly one (a patient without a regimen then has no other
    plausible class), else None."""
    return predictor.regimen_classes[0] if len(predictor.regimen_classes) == 1 else None


def mixture_warning(regimen_class: str, weights: Mapping[str, float]) -> str:
    """The warning carried by every estimate made under the training mix."""
    mix = ", ".join(f"{name} {w:.0%}" for name, w in weights.items())
    return (f"regimen: not recorded; the estimate averages the {regimen_class} regimens weighted by their "
            f"training prevalence ({mix}), on the log-odds scale")


@dataclass(frozen=True)
class MixedPredictions:
    """Estimates under the training mix of one class, one per record (in input order).

    ``probability``: outcome → probability per record (NaN where the class has no model for it);
    ``explanations``: outcome → :class:`Explanation` whose rows are the record positions (the weighted
    average of the regimens' contributions; base value + Σ values = the mixture's log-odds)."""

    regimen_class: str
    weights: dict[str, float]
    probability: dict[str, np.ndarray]
    explanations: dict[str, Explanation] = field(default_factory=dict)

    @property
    def warning(self) -> str:
        """The warning every estimate of the mixture carries."""
        return mixture_warning(self.regimen_class, self.weights)


def predict_unknown_regimen(predictor: Predictor, records: Sequence[PatientRecord], regimen_class: str,
                            explain: bool = False) -> MixedPredictions:
    """Score ``records`` under the training mix of ``regimen_class`` (see the module docstring)."""
    weights = mixture_weights(predictor.metadata, regimen_class)
    names, w = list(weights), np.array(list(weights.values()))
    n, k = len(records), len(names)
    predictions = predictor.predict(list(records), [names] * n, explain=explain)  # rows: patient-major
    probability, explanations = {}, {}
    for outcome in OUTCOMES:
        p = np.clip(predictions.probability[outcome].reshape(n, k), _EPS, 1 - _EPS)
        probability[outcome] = expit(logit(p) @ w)
        explained = predictions.explanations.get((regimen_class, outcome))
        if explained is not None:
            values = explained.values.reshape(n, k, -1)
            explanations[outcome] = Explanation(np.arange(n), np.einsum("nkf,k->nf", values, w),
                                                list(explained.names), explained.base_value)
    return MixedPredictions(regimen_class, weights, probability, explanations)
