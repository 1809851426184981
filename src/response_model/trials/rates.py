"""Expected rates of an arm and its comparator inside and outside a subset — what a trial design rests on.

:func:`arm_rates` is the one way to make them (any source: the model's counterfactual predictions,
the simulator's truth, or adjusted estimates from :mod:`response_model.trials.effects`); the two sources
here are :func:`model_rates` (the :class:`~response_model.modeling.predictor.Predictor`) and
:func:`truth_rates` (``truth.parquet`` of ``response-model simulate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from response_model.errors import InputError
from response_model.trials.subsets import Subset

#: response endpoints: the probability column of the truth table and the model's outcome
RESPONSE_ENDPOINTS = ("objective_response", "primary_resistance")


class DesignError(InputError):
    """A design that cannot be made as asked: names what is missing or wrong, and what was expected."""


@dataclass(frozen=True)
class ArmRates:
    """Expected rates (0–1) of ``arm`` and ``comparator`` in the subset (``p_arm``, ``p_comparator``) and,
    for an all-comers design, outside it; ``prevalence`` of the subset among tested patients; ``source``
    says where the rates come from."""

    p_arm: float
    p_comparator: float
    prevalence: float
    p_arm_outside: float | None = None
    p_comparator_outside: float | None = None
    source: str = "given"

    @property
    def has_outside(self) -> bool:
        """Whether the rates outside the subset are known (needed by the all-comers design)."""
        return self.p_arm_outside is not None and self.p_comparator_outside is not None

    def overall(self) -> tuple[float, float]:
        """(arm, comparator) rates among all patients: the prevalence-weighted mix inside and outside."""
        if not self.has_outside:
            raise DesignError("the rates outside the subset are not known; expected p_arm_outside and "
                              "p_comparator_outside for an all-comers design")
        w = self.prevalence
        return (w * self.p_arm + (1 - w) * self.p_arm_outside,
                w * self.p_comparator + (1 - w) * self.p_comparator_outside)


def _rate(name: str, value: float | None, allow_none: bool = False) -> float | None:
    """``value`` as a float in [0, 1]; DesignError naming ``name`` otherwise (NaN included)."""
    if value is None and allow_none:
        return None
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DesignError(f"{name}: {value!r} is not a rate; expected a number from 0 to 1")
    return float(value)


def arm_rates(p_arm: float, p_comparator: float, prevalence: float, p_arm_outside: float | None = None,
              p_comparator_outside: float | None = None, source: str = "given") -> ArmRates:
    """Return checked :class:`ArmRates`; raises DesignError naming a rate that is not in [0, 1] or an
    empty subset (prevalence 0)."""
    rates = ArmRates(_rate("p_arm", p_arm), _rate("p_comparator", p_comparator), _rate("prevalence", prevalence),
                     _rate("p_arm_outside", p_arm_outside, True),
                     _rate("p_comparator_outside", p_comparator_outside, True), source)
    if rates.prevalence == 0:
        raise DesignError("prevalence: 0 — the subset is empty; no trial can enrol it")
    return rates


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthPool:
    """Patients whose subset status is known, with their true (or predicted) probability of the endpoint
    under the arm and the comparator: what :func:`response_model.trials.design.simulate_power` draws from."""

    p_arm: np.ndarray
    p_comparator: np.ndarray
    member: np.ndarray  # bool

    def rates(self, source: str) -> ArmRates:
        """The pool's mean rates inside and outside the subset."""
        inside, outside = self.member, ~self.member
        if not inside.any():
            raise DesignError("the subset is empty among patients whose status is known; no trial can enrol it")
        out = (float(self.p_arm[outside].mean()), float(self.p_comparator[outside].mean())) if outside.any() \
            else (None, None)
        return arm_rates(float(self.p_arm[inside].mean()), float(self.p_comparator[inside].mean()),
                         float(inside.mean()), *out, source=source)


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in RESPONSE_ENDPOINTS:
        raise DesignError(f"endpoint {endpoint!r}: rates per patient exist for {', '.join(RESPONSE_ENDPOINTS)} only")


def truth_pool(frame: pd.DataFrame, truth: pd.DataFrame, subset: Subset, arm: str, comparator: str,
               endpoint: str) -> TruthPool:
    """The :class:`TruthPool` of ``frame`` (a subset frame of a simulated cohort) from its ``truth`` table
    (one row per patient × regimen with ``p_<endpoint>``); raises DesignError naming a regimen or patient
    the truth lacks."""
    _check_endpoint(endpoint)
    column = f"p_{endpoint}"
    membership = subset.membership(frame)
    known = membership.notna().to_numpy()
    ids = frame["patient_id"].to_numpy(dtype=object)[known]
    table = truth.pivot_table(index="patient_id", columns="regimen", values=column, aggfunc="first")
    for regimen in (arm, comparator):
        if regimen not in table.columns:
            raise DesignError(f"the truth table has no regimen {regimen!r}; it has {', '.join(table.columns)}")
    probabilities = table.reindex(ids)[[arm, comparator]].to_numpy(dtype=float)
    if np.isnan(probabilities).any():
        raise DesignError(f"the truth table lacks {int(np.isnan(probabilities).any(axis=1).sum())} patient(s) of "
                          "the cohort; expected the truth.parquet written with this cohort")
    return TruthPool(probabilities[:, 0], probabilities[:, 1], membership[known].to_numpy(dtype=bool))


def model_pool(frame: pd.DataFrame, predictor, subset: Subset, arm: str, comparator: str,
               endpoint: str) -> TruthPool:
    """The pool of ``frame``'s patients of known status with the model's counterfactual probabilities
    under ``arm`` and ``comparator`` (:meth:`Predictor.predict`); raises DesignError when the model
    cannot score a regimen or gives no probability of the endpoint."""
    from response_model.dataset import INPUT_FIELDS, row_to_record

    _check_endpoint(endpoint)
    for regimen in (arm, comparator):
        try:
            predictor.regimen(regimen)
        except ValueError as error:
            raise DesignError(str(error)) from None
    membership = subset.membership(frame)
    known = membership.notna().to_numpy()
    records = [row_to_record(row) for row in frame.loc[known, list(INPUT_FIELDS)].to_dict(orient="records")]
    if not records:
        raise DesignError(f"subset {subset.name!r}: no patient's status is known; nothing to predict")
    predictions = predictor.predict(records, [[arm, comparator]] * len(records))
    p = predictions.probability[endpoint].reshape(len(records), 2)
    if np.isnan(p).any():
        raise DesignError(f"the model gives no {endpoint} probability for {arm!r} or {comparator!r} (no model of "
                          "that class and outcome, or the regimen is withheld by its gate); expected both scored")
    return TruthPool(p[:, 0], p[:, 1], membership[known].to_numpy(dtype=bool))
