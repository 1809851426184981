"""A trial design from a cohort: the checks and warnings around :func:`~response_model.trials.design.design_trial`.

:func:`plan_trial` reads the subset's prevalence from the cohort, the arm rates from the simulator's truth
or the model's counterfactual predictions (:mod:`response_model.trials.rates`), the comparator's median PFS
from the cohort when the endpoint is PFS, and says what the cohort lacks: an empty subset, an arm never
given, an endpoint no patient is labelled for, fewer subset patients than the trial enrols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from response_model.trials.design import DesignSpec, TrialDesign, design_trial, with_control_median
from response_model.trials.rates import DesignError, TruthPool, arm_rates, model_pool, truth_pool
from response_model.trials.subsets import Subset


@dataclass
class Plan:
    """A design made from a cohort: the design, the pool its Monte-Carlo check draws from (response
    endpoints with a truth table), and facts for the report (model version, label, cohort size)."""

    design: TrialDesign
    pool: TruthPool | None
    facts: dict[str, Any] = field(default_factory=dict)


def _check_regimens(spec: DesignSpec) -> None:
    from response_model.regimens import load_catalogue
    from response_model.settings import suggestion

    names = [name for name, regimen in load_catalogue().items() if regimen.is_candidate]
    for role, name in (("arm", spec.arm), ("comparator", spec.comparator)):
        if name not in names:
            raise DesignError(f"{role} {name!r} is not a regimen of the catalogue{suggestion(name, names)}; "
                              f"expected one of {', '.join(names)}")


def _cohort_warnings(frame: pd.DataFrame, membership: pd.Series, spec: DesignSpec, source: str) -> list[str]:
    """What the cohort lacks for this design: arms never given, an endpoint nobody in the subset is labelled for."""
    notes = []
    given = frame["regimen"].value_counts() if "regimen" in frame else pd.Series(dtype=int)
    for role, name in (("arm", spec.arm), ("comparator", spec.comparator)):
        if int(given.get(name, 0)) == 0:
            notes.append(f"{role} {name!r} was never given in this cohort: its rate is the {source}'s alone, "
                         "with no patient to check it against")
    inside = membership.fillna(False).to_numpy(dtype=bool)
    label = "pfs_months" if spec.endpoint == "pfs" else spec.endpoint
    if label not in frame or frame.loc[inside, label].notna().sum() == 0:
        notes.append(f"the cohort labels no subset patient's {spec.endpoint}: nothing observed backs the design's "
                     "assumptions")
    return notes


def comparator_median_pfs(frame: pd.DataFrame, membership: pd.Series, comparator: str) -> float | None:
    """The Kaplan–Meier median PFS (months) of subset patients given ``comparator``; None when the cohort
    labels none of them or the median is not reached."""
    from lifelines import KaplanMeierFitter

    rows = membership.fillna(False).to_numpy(dtype=bool) & (frame["regimen"] == comparator).to_numpy(dtype=bool)
    part = frame.loc[rows, ["pfs_months", "pfs_event"]].dropna()
    if part.empty:
        return None
    fitted = KaplanMeierFitter().fit(part["pfs_months"].astype(float), part["pfs_event"].astype(int))
    median = fitted.median_survival_time_
    return float(median) if math.isfinite(median) else None


def plan_trial(frame: pd.DataFrame, subset: Subset, spec: DesignSpec, truth: pd.DataFrame | None = None,
               predictor: Any = None) -> Plan:
    """Return the :class:`Plan` of ``spec`` for ``subset`` in ``frame`` (a subset frame), with arm rates from
    ``truth`` (a simulator's truth table) or ``predictor`` (a Predictor) — exactly one for response endpoints.
    Raises DesignError for an empty subset, an unknown regimen or a missing rate source."""
    spec = spec.checked()
    _check_regimens(spec)
    membership = subset.membership(frame)
    inside, outside = int(membership.sum()), int((~membership).sum())
    if inside == 0:
        raise DesignError(f"subset {subset.name!r} is empty in this cohort ({len(frame)} patients: 0 inside, "
                          f"{outside} outside, {len(frame) - outside} of unknown status); no trial can be designed")
    source = "simulator's truth" if truth is not None else "model"
    warnings = _cohort_warnings(frame, membership, spec, source)
    pool = None
    if spec.endpoint == "pfs":
        spec = with_control_median(spec, comparator_median_pfs(frame, membership, spec.comparator))
        rates = arm_rates(0.0, 0.0, inside / (inside + outside),
                          source="cohort prevalence; effect from the hazard ratio")
    else:
        if (truth is None) == (predictor is None):
            raise DesignError("the arm rates need one source: a simulator truth table (--truth) or a model "
                              "(--model-uri)")
        pool = (truth_pool(frame, truth, subset, spec.arm, spec.comparator, spec.endpoint) if truth is not None
                else model_pool(frame, predictor, subset, spec.arm, spec.comparator, spec.endpoint))
        rates = pool.rates(source)
    design = design_trial(spec, rates)
    design.warnings = warnings + design.warnings
    enrolled = [s.n_total for s in design.sizes if s.design == "enrichment" and s.n_total is not None]
    if enrolled and inside < min(enrolled):
        design.warnings.append(f"the cohort has {inside} patients in subset {subset.name!r}, fewer than the "
                               f"{min(enrolled)} the smallest enrichment design enrols: what the design assumes "
                               "rests on few patients")
    return Plan(design, pool if truth is not None else None,
                {"cohort_patients": len(frame), "inside": inside, "outside": outside,
                 "unknown": len(frame) - inside - outside, "rate_source": source})


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _power(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.1%}"


def plan_text(plan: Plan, monte_carlo: pd.DataFrame | None = None) -> str:
    """The text ``trials design`` prints: rates, each design's sizes and powers, the Monte-Carlo check, warnings."""
    design, spec, rates = plan.design, plan.design.spec, plan.design.rates
    split = f" (overall {spec.alphas()[0]:g}, subset {spec.alphas()[1]:g})" if spec.alpha_split == "bonferroni" else ""
    lines = [f"design: subset {spec.subset}, {spec.arm} vs {spec.comparator}, endpoint {spec.endpoint}, "
             f"two-sided α {spec.alpha:g}, α split {spec.alpha_split}{split}",
             f"prevalence among tested: {rates.prevalence:.1%} ({plan.facts.get('inside', '?')} inside, "
             f"{plan.facts.get('outside', '?')} outside, {plan.facts.get('unknown', '?')} unknown)"]
    if spec.endpoint == "pfs":
        lines.append(f"hazard ratio {spec.hazard_ratio:g} in the subset, {spec.hazard_ratio_outside:g} outside; "
                     f"comparator median PFS {spec.control_median_months:.1f} months; accrual "
                     f"{spec.accrual_months:g} + follow-up {spec.follow_up_months:g} months")
    else:
        lines.append(f"expected {spec.endpoint} rate ({rates.source}): in the subset {rates.p_arm:.1%} vs "
                     f"{rates.p_comparator:.1%}" + (f"; outside {rates.p_arm_outside:.1%} vs "
                                                     f"{rates.p_comparator_outside:.1%}" if rates.has_outside else ""))
    lines.append(f"{'design':<11} {'power':>5} {'patients':>9} {'in subset':>9} {'screened':>9} {'events':>7} "
                 f"{'power overall':>13} {'power subset':>12}  note")
    for s in design.sizes:
        lines.append(f"{s.design:<11} {s.target_power:>5.0%} {_count(s.n_total):>9} {_count(s.n_subset):>9} "
                     f"{_count(s.n_screened):>9} {_count(s.events):>7} {_power(s.power_overall):>13} "
                     f"{_power(s.power_subset):>12}  {s.note}")
    if monte_carlo is not None and not monte_carlo.empty:
        lines.append(f"Monte-Carlo check ({int(monte_carlo['n_trials'].iloc[0])} simulated trials per design, "
                     "true probabilities of the simulator):")
        for row in monte_carlo.itertuples():
            lines.append(f"  {row.design:<11} {row.target_power:>4.0%} {row.hypothesis:<8} n={row.n_total:<7} "
                         f"analytic {_power(row.analytic_power):>6}  empirical {_power(row.empirical_power):>6} "
                         f"(± {row.mc_se:.1%})")
    lines += [f"warning: {warning}" for warning in design.warnings]
    return "\n".join(lines)
