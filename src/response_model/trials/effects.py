"""Treatment effects in subsets, three ways side by side: naive, model, adjusted.

Per subset × (arm, comparator) × endpoint (objective response, primary resistance; configs/outcomes.yaml)
:func:`estimate_effects` returns each regimen's expected rate, their difference (arm − comparator) and
95 % intervals, estimated over the subset's *pair population* (its patients given the arm or the
comparator) by

* ``naive`` — observed rates among the labelled patients given each regimen (Wilson intervals; the
  difference with Newcombe's hybrid-score interval); confounded by indication in observational cohorts;
* ``model`` — the project's :class:`~response_model.modeling.predictor.Predictor`: every patient of
  the pair population predicted under both regimens, averaged (percentile bootstrap over patients,
  the model held fixed);
* ``adjusted`` — cross-fitted AIPW (:mod:`response_model.trials.estimation`), influence-function intervals.

Alongside: the covariate balance (standardised mean differences before and after inverse-probability
weighting) and a verdict per cell saying whether the adjusted estimate is trusted, and why
(:func:`verdicts`). Nothing is dropped silently: a cell that cannot be estimated keeps its row, with
NaN values and a ``warnings`` text naming what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from response_model.describe import proportion_ci
from response_model.errors import InputError
from response_model.regimens import load_catalogue
from response_model.trials.estimation import (
    ENDPOINTS,
    SETTINGS_FILE,
    CohortTable,
    PairFit,
    check_endpoints,
    check_pair,
    fit_pair,
    mean_interval,
    settings,
    standardised_differences,
)

ESTIMATORS: tuple[str, ...] = ("naive", "model", "adjusted")
EFFECT_COLUMNS: tuple[str, ...] = ("subset", "arm", "comparator", "endpoint", "estimator", "arm_rate",
                                   "comparator_rate", "difference", "lower", "upper", "n_subset", "n_arm",
                                   "n_comparator", "warnings")
BALANCE_COLUMNS: tuple[str, ...] = ("subset", "arm", "comparator", "covariate", "smd_unweighted", "smd_weighted",
                                    "n_known")
VERDICT_COLUMNS: tuple[str, ...] = ("subset", "arm", "comparator", "endpoint", "trusted", "reason",
                                    "share_outside_bounds", "max_abs_smd_weighted")


@dataclass
class EffectEstimates:
    """What :func:`estimate_effects` returns: ``effects`` (:data:`EFFECT_COLUMNS`), ``balance``
    (:data:`BALANCE_COLUMNS`) and ``verdicts`` (:data:`VERDICT_COLUMNS`)."""

    effects: pd.DataFrame
    balance: pd.DataFrame
    verdicts: pd.DataFrame


def newcombe_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid-score 95 % interval of p1 − p2 from the two Wilson intervals."""
    p1, l1, u1 = proportion_ci(x1, n1)
    p2, l2, u2 = proportion_ci(x2, n2)
    d = p1 - p2
    return (d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def subset_mask(name: str, membership: Any, n: int) -> tuple[np.ndarray, int]:
    """(True where the patient is in the subset, number whose status is unknown) of a membership
    vector (booleans, <NA>/None/NaN = unknown); InputError when its length is not the cohort's."""
    values = pd.Series(membership, dtype="boolean") if not isinstance(membership, pd.Series) \
        else membership.astype("boolean")
    if len(values) != n:
        raise InputError(f"subset {name!r}: membership has {len(values)} entries; expected one per patient ({n})")
    unknown = int(values.isna().sum())
    return values.fillna(False).to_numpy(dtype=bool), unknown


def estimate_effects(cohort: Any, subsets: Mapping[str, Any], pairs: Sequence[tuple[str, str]],
                     endpoints: Sequence[str] = ENDPOINTS, predictor: Any = None,
                     config: str = SETTINGS_FILE, seed: int = 0) -> EffectEstimates:
    """The effects of every subset × pair × endpoint (see the module docstring) as :class:`EffectEstimates`.

    ``cohort``: a ParsedCohort, LoadedCohort or CohortTable; ``subsets``: {name: membership per patient}
    (:meth:`Subset.membership` or any boolean vector, <NA> = unknown); ``pairs``: (arm, comparator)
    regimen names; ``predictor``: a Predictor for the ``model`` rows (None: no model rows)."""
    endpoints = check_endpoints(endpoints)
    catalogue = list(load_catalogue())
    for arm, comparator in pairs:
        check_pair(arm, comparator, catalogue)
    table = cohort if isinstance(cohort, CohortTable) else CohortTable.of(cohort)
    cfg = settings(config)
    masks = {name: subset_mask(name, membership, len(table)) for name, membership in subsets.items()}
    rows, balance, verdict_rows = [], [], []
    for arm, comparator in pairs:
        fit, why_not = _pair_fit(table, arm, comparator, endpoints, cfg["adjusted"], seed)
        predicted = _predicted(table, predictor, arm, comparator, endpoints) if predictor is not None else None
        for name, (mask, unknown) in masks.items():
            cell = _Cell(table, name, mask, unknown, arm, comparator)
            cell_balance = _balance(cell, fit, cfg) if fit is not None else None
            if cell_balance is not None:
                balance.append(cell_balance)
            for endpoint in endpoints:
                rows.append(cell.naive(endpoint))
                if predicted is not None:
                    rows.append(cell.model(endpoint, predicted, cfg["model"]))
                rows.append(cell.adjusted(endpoint, fit, why_not, cfg["adjusted"]))
                verdict_rows.append(_verdict(cell, endpoint, rows[-1], fit, cell_balance, cfg))
    return EffectEstimates(pd.DataFrame(rows, columns=list(EFFECT_COLUMNS)),
                           pd.concat(balance, ignore_index=True) if balance else
                           pd.DataFrame(columns=list(BALANCE_COLUMNS)),
                           pd.DataFrame(verdict_rows, columns=list(VERDICT_COLUMNS)))


def _pair_fit(table: CohortTable, arm: str, comparator: str, endpoints: list[str], spec: Mapping[str, Any],
              seed: int) -> tuple[PairFit | None, str | None]:
    """(the pair's AIPW fit, None) or (None, why it cannot be fitted: a regimen given to too few patients)."""
    counts = {name: int((table.given == name).sum()) for name in (arm, comparator)}
    scarce = [f"{name} (given to {k})" for name, k in counts.items() if k < 2]
    if scarce:
        return None, f"no adjusted estimate: {' and '.join(scarce)} in this cohort; expected at least 2 patients each"
    return fit_pair(table, arm, comparator, endpoints, spec, seed), None


def _predicted(table: CohortTable, predictor: Any, arm: str, comparator: str,
               endpoints: list[str]) -> dict[str, Any]:
    """{endpoint: (p_arm, p_comparator) per cohort patient of the pair population (NaN elsewhere)}, or
    {"error": why} when the model cannot score the pair."""
    rows = np.flatnonzero(np.isin(table.given, [arm, comparator]))
    try:
        for name in (arm, comparator):
            predictor.regimen(name)
    except ValueError as error:
        return {"error": f"no model estimate: {error}"}
    out: dict[str, Any] = {}
    if len(rows) == 0:
        return out
    predictions = predictor.predict([table.records[i] for i in rows], [[arm, comparator]] * len(rows))
    for endpoint in endpoints:
        p = predictions.probability[endpoint].reshape(len(rows), 2)
        full = np.full((len(table), 2), np.nan)
        full[rows] = p
        out[endpoint] = (full[:, 0], full[:, 1])
    return out


class _Cell:
    """One subset × pair: its rows and their counts, and the three estimators' rows."""

    def __init__(self, table: CohortTable, name: str, mask: np.ndarray, unknown: int, arm: str, comparator: str):
        self.table, self.name, self.unknown, self.arm, self.comparator = table, name, unknown, arm, comparator
        self.arm_rows = mask & (table.given == arm)
        self.comparator_rows = mask & (table.given == comparator)
        self.rows = self.arm_rows | self.comparator_rows
        self.base_warnings = []
        if unknown:
            self.base_warnings.append(f"{unknown} patient(s) of unknown {name} status excluded")
        if not mask.any():
            self.base_warnings.append(f"subset {name!r} has no patient in this cohort")
        elif not self.rows.any():
            self.base_warnings.append(f"subset {name!r}: no patient of it was given {arm} or {comparator}")

    def row(self, endpoint: str, estimator: str, values: tuple[float, ...], warnings: list[str]) -> dict[str, Any]:
        """One effects row; ``values`` = (arm_rate, comparator_rate, difference, lower, upper)."""
        labelled = ~np.isnan(self.table.labels[endpoint])
        return dict(zip(EFFECT_COLUMNS, (
            self.name, self.arm, self.comparator, endpoint, estimator, *values, int(self.rows.sum()),
            int((self.arm_rows & labelled).sum()), int((self.comparator_rows & labelled).sum()),
            "; ".join(self.base_warnings + warnings))))

    def naive(self, endpoint: str) -> dict[str, Any]:
        """Observed rates (Wilson) and their difference (Newcombe)."""
        y = self.table.labels[endpoint]
        counts = []
        for name, rows in ((self.arm, self.arm_rows), (self.comparator, self.comparator_rows)):
            known = rows & ~np.isnan(y)
            counts.append((int(y[known].sum()), int(known.sum()), name))
        empty = [name for _, n, name in counts if n == 0]
        if empty:
            return self.row(endpoint, "naive", (np.nan,) * 5,
                            [f"no naive estimate: no labelled {endpoint} among the subset's patients given "
                             f"{' or '.join(empty)}"])
        (x1, n1, _), (x2, n2, _) = counts
        lower, upper = newcombe_interval(x1, n1, x2, n2)
        return self.row(endpoint, "naive", (x1 / n1, x2 / n2, x1 / n1 - x2 / n2, lower, upper), [])

    def model(self, endpoint: str, predicted: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
        """Mean counterfactual predictions under both regimens; bootstrap interval of the difference."""
        if "error" in predicted:
            return self.row(endpoint, "model", (np.nan,) * 5, [predicted["error"]])
        if not self.rows.any():
            return self.row(endpoint, "model", (np.nan,) * 5, ["no model estimate: no patient to predict"])
        p_arm, p_comparator = (p[self.rows] for p in predicted[endpoint])
        withheld = [name for name, p in ((self.arm, p_arm), (self.comparator, p_comparator)) if np.isnan(p).all()]
        if withheld:
            return self.row(endpoint, "model", (np.nan,) * 5,
                            [f"no model estimate: the model does not serve {' or '.join(withheld)} for {endpoint}"])
        rng = np.random.default_rng(int(spec["seed"]))
        draws = rng.integers(0, len(p_arm), size=(int(spec["bootstrap"]), len(p_arm)))
        differences = (p_arm - p_comparator)[draws].mean(axis=1)
        lower, upper = np.percentile(differences, [2.5, 97.5])
        return self.row(endpoint, "model", (float(p_arm.mean()), float(p_comparator.mean()),
                                            float((p_arm - p_comparator).mean()), float(lower), float(upper)), [])

    def adjusted(self, endpoint: str, fit: PairFit | None, why_not: str | None,
                 spec: Mapping[str, Any]) -> dict[str, Any]:
        """AIPW means of the pseudo-outcomes over the subset's pair population, influence-function interval."""
        if fit is None or endpoint in fit.not_estimable:
            reason = why_not or f"no adjusted estimate: {fit.not_estimable[endpoint]}"
            return self.row(endpoint, "adjusted", (np.nan,) * 5, [reason])
        inside = self.rows[fit.rows]
        labelled = ~np.isnan(self.table.labels[endpoint])
        few = [name for name, rows in ((self.arm, self.arm_rows), (self.comparator, self.comparator_rows))
               if (rows & labelled).sum() < int(spec["min_labelled_per_arm"])]
        if few:
            return self.row(endpoint, "adjusted", (np.nan,) * 5, [
                f"no adjusted estimate: fewer than {spec['min_labelled_per_arm']} labelled patients given "
                f"{' or '.join(few)} in the subset"])
        outside = float(fit.outside()[inside].mean())
        if outside >= float(spec["no_overlap_share"]):
            return self.row(endpoint, "adjusted", (np.nan,) * 5, [
                f"no adjusted estimate: no overlap — {outside:.0%} of the subset's patients have a propensity "
                f"of {self.arm} outside {fit.bounds[0]:g}–{fit.bounds[1]:g}"])
        psi_arm, psi_comparator = (psi[inside] for psi in fit.psi[endpoint])
        difference, lower, upper = mean_interval(psi_arm - psi_comparator)
        warnings = []
        if outside > float(spec["max_share_outside"]):
            warnings.append(f"poor overlap: {outside:.0%} of the subset's patients have a propensity outside "
                            f"{fit.bounds[0]:g}–{fit.bounds[1]:g} (clipped)")
        return self.row(endpoint, "adjusted", (float(psi_arm.mean()), float(psi_comparator.mean()), difference,
                                               lower, upper), warnings)


def _balance(cell: _Cell, fit: PairFit, cfg: Mapping[str, Any]) -> pd.DataFrame | None:
    """The cell's balance rows (:data:`BALANCE_COLUMNS`), None when the subset has too few patients."""
    inside = cell.rows[fit.rows]
    treated = fit.treated[inside]
    if treated.sum() < 2 or (~treated).sum() < 2:
        return None
    covariates = cell.table.covariates.iloc[fit.rows[inside]][list(cfg["balance_covariates"])]
    frame = standardised_differences(covariates.reset_index(drop=True), treated, fit.weights()[inside])
    frame.insert(0, "comparator", cell.comparator)
    frame.insert(0, "arm", cell.arm)
    frame.insert(0, "subset", cell.name)
    return frame


def _verdict(cell: _Cell, endpoint: str, adjusted: Mapping[str, Any], fit: PairFit | None,
             balance: pd.DataFrame | None, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the adjusted estimate is trusted (overlap adequate, |SMD| after weighting below the
    threshold), with the reason either way."""
    limit = float(cfg["trust"]["max_abs_smd_weighted"])
    share = float(fit.outside()[cell.rows[fit.rows]].mean()) if fit is not None and cell.rows.any() else np.nan
    assessed = balance is not None and balance["smd_weighted"].notna().any()
    worst = float(balance["smd_weighted"].abs().max()) if assessed else np.nan
    base = dict(subset=cell.name, arm=cell.arm, comparator=cell.comparator, endpoint=endpoint,
                share_outside_bounds=share, max_abs_smd_weighted=worst)
    if np.isnan(adjusted["difference"]):
        return {**base, "trusted": "none", "reason": f"no estimate is trusted: {adjusted['warnings']}"}
    if share > float(cfg["adjusted"]["max_share_outside"]):
        return {**base, "trusted": "none",
                "reason": f"none trusted: overlap inadequate ({share:.0%} of patients outside the propensity bounds)"}
    if np.isnan(worst):
        return {**base, "trusted": "none", "reason": "none trusted: the balance after weighting could not be "
                                                     "assessed (too few patients given each regimen)"}
    if worst >= limit:
        name = balance.loc[balance["smd_weighted"].abs().idxmax(), "covariate"]
        return {**base, "trusted": "none",
                "reason": f"none trusted: after weighting {name} is still imbalanced (|SMD| {worst:.2f} ≥ {limit:g})"}
    return {**base, "trusted": "adjusted",
            "reason": f"adjusted: overlap adequate ({share:.0%} outside the bounds) and every covariate balanced "
                      f"after weighting (max |SMD| {worst:.2f} < {limit:g}); naive ignores confounding by indication, "
                      "model relies on the model being right"}


def format_effects(estimates: EffectEstimates) -> str:
    """The effects and verdicts as fixed-width text (percentage points), one line per row."""
    lines = [f"{'subset':<18} {'arm':<26} {'comparator':<26} {'endpoint':<18} {'estimator':<9} "
             f"{'arm %':>6} {'comp %':>6} {'diff':>6} {'95 % CI':>15} {'n':>6}"]
    for r in estimates.effects.itertuples():
        ci = f"{100 * r.lower:.1f} to {100 * r.upper:.1f}" if not np.isnan(r.lower) else "—"
        values = [f"{100 * v:.1f}" if not np.isnan(v) else "—" for v in (r.arm_rate, r.comparator_rate, r.difference)]
        lines.append(f"{r.subset:<18} {r.arm:<26} {r.comparator:<26} {r.endpoint:<18} {r.estimator:<9} "
                     f"{values[0]:>6} {values[1]:>6} {values[2]:>6} {ci:>15} {r.n_subset:>6}"
                     + (f"  [{r.warnings}]" if r.warnings else ""))
    for v in estimates.verdicts.itertuples():
        lines.append(f"verdict {v.subset} / {v.arm} vs {v.comparator} / {v.endpoint}: {v.reason}")
    return "\n".join(lines)
