"""Candidate subsets: rules under which the effect of one regimen against another differs (exploratory).

:func:`discover` splits the pair population (patients given the arm or the comparator) into two
halves, stratified by regimen. On each half separately it computes every patient's doubly robust
pseudo-outcome of the effect, φ = ψ_arm − ψ_comparator (cross-fitted AIPW within the half,
:mod:`response_model.trials.estimation`), whose mean over any covariate-defined group estimates the
group's effect. On the *discovery* half it scores single-marker rules (binary markers ``== 1``,
categorical levels ``== level``, numeric thresholds ``>=`` at a few quantiles; configs/trial_effects.yaml
``discover``) and two-marker conjunctions of the best of them (kept only where
the second marker raises the first's |z|) by the heterogeneity z-statistic
(effect inside − effect outside, over its standard error). The best rules are then re-estimated on
the *held-out* half, whose p-values alone are adjusted for multiplicity (Holm and Benjamini–Hochberg
over the rules carried there). A rule *survives* when its held-out BH q-value is at most ``fdr``
and its held-out heterogeneity has the discovery half's sign.

Rules are written in the subset-rule form of configs/subsets (``wnt_activation == 1``,
``aetiology == HBV``, ``afp >= 400 and child_pugh_class == A``), so a found rule can be saved as a
subset and described or designed for. Everything here is exploratory: hypotheses for a trial, not findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from response_model.dataset import cohort_frame
from response_model.regimens import load_catalogue
from response_model.trials.estimation import (
    SETTINGS_FILE,
    CohortTable,
    check_endpoints,
    check_pair,
    fit_pair,
    settings,
)
from response_model.trials.subsets import Subset

#: Columns of :attr:`Discovery.rules`, in order.
RULE_COLUMNS: tuple[str, ...] = (
    "rank", "rule", "n_in", "n_out", "effect_in", "effect_in_lower", "effect_in_upper", "effect_out",
    "heterogeneity", "heterogeneity_lower", "heterogeneity_upper", "p", "p_holm", "q_bh", "survives",
    "discovery_heterogeneity", "discovery_z",
)


@dataclass(frozen=True)
class Condition:
    """One condition of a rule: ``field op value`` with op ``==`` or ``>=``."""

    field: str
    op: str
    value: Any

    def text(self) -> str:
        """The condition as subset-rule text."""
        return f"{self.field} {self.op} {self.value:g}" if isinstance(self.value, float) else \
            f"{self.field} {self.op} {self.value}"


@dataclass(frozen=True)
class Rule:
    """A conjunction of conditions (one or two markers), evaluated as a subset rule
    (:class:`~response_model.trials.subsets.Subset`: <NA> where the rule cannot tell)."""

    conditions: tuple[Condition, ...]

    def text(self) -> str:
        """The rule as subset-rule text."""
        return " and ".join(c.text() for c in self.conditions)

    def evaluate(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(in the rule, status known) per row of ``frame`` (a subset frame)."""
        membership = Subset("discovered", self.text()).membership(frame)
        known = membership.notna().to_numpy()
        return membership.fillna(False).to_numpy(dtype=bool), known


@dataclass
class Discovery:
    """What :func:`discover` found: ``rules`` (:data:`RULE_COLUMNS`, best first), the pair, the endpoint
    and the halves' sizes; :meth:`lines` prints it, every line labelled exploratory."""

    rules: pd.DataFrame
    arm: str
    comparator: str
    endpoint: str
    n_discovery: int
    n_held_out: int
    n_searched: int

    def lines(self) -> list[str]:
        """Human-readable lines, each starting with "exploratory:"."""
        head = (f"exploratory: {self.arm} vs {self.comparator}, {self.endpoint}: {self.n_searched} rules searched on "
                f"{self.n_discovery} patients, {len(self.rules)} re-estimated on {self.n_held_out} held-out patients "
                "(effect = difference of rates, arm − comparator; heterogeneity = effect inside − outside)")
        out = [head]
        for r in self.rules.itertuples():
            out.append(f"exploratory: #{r.rank} {r.rule}: effect inside {100 * r.effect_in:+.1f} "
                       f"({100 * r.effect_in_lower:+.1f} to {100 * r.effect_in_upper:+.1f}) vs outside "
                       f"{100 * r.effect_out:+.1f} points; heterogeneity {100 * r.heterogeneity:+.1f} "
                       f"(p {r.p:.2g}, Holm {r.p_holm:.2g}, BH q {r.q_bh:.2g}); n {r.n_in}/{r.n_out}; "
                       + ("survives the held-out half" if r.survives else "does not survive the held-out half"))
        return out


def rule_frame(table: CohortTable) -> pd.DataFrame:
    """The subset frame of the cohort (:func:`~response_model.trials.subsets.subset_frame`'s columns: the
    canonical table and the derived patient features), built from the already validated records."""
    frame = cohort_frame(table.records, table.outcomes)
    extra = table.covariates[[c for c in table.covariates.columns if c not in frame.columns]]
    return pd.concat([frame, extra.set_axis(frame.index)], axis=1)


def _threshold(value: float) -> float:
    """``value`` to four significant figures: the rule's text and the threshold applied are the same number."""
    return float(f"{value:.4g}")


def candidate_rules(frame: pd.DataFrame, spec: Mapping[str, Any]) -> list[Rule]:
    """Single-condition rules over ``frame`` (thresholds at the configured quantiles of its known values)."""
    rules = [Rule((Condition(name, "==", 1),)) for name in spec["binary"]]
    for name in spec["categorical"]:
        # "unknown" means not known: a subset rule cannot select it (its membership is <NA>)
        levels = [v for v in frame[name].dropna().unique().tolist() if v != "unknown"]
        rules += [Rule((Condition(name, "==", level),)) for level in sorted(levels, key=str)]
    for name in spec["numeric"]:
        known = pd.to_numeric(frame[name], errors="coerce").dropna()
        if known.nunique() < 2:
            continue
        thresholds = sorted({_threshold(float(known.quantile(q))) for q in spec["quantiles"]})
        rules += [Rule((Condition(name, ">=", t),)) for t in thresholds if t > known.min()]
    return rules


def heterogeneity(phi: np.ndarray, holds: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """Effect inside and outside a rule (means of the pseudo-outcome) and their difference with its
    standard error, z and two-sided p (normal approximation)."""
    inside, outside = phi[holds], phi[known & ~holds]
    n_in, n_out = len(inside), len(outside)
    if n_in < 2 or n_out < 2:
        return {"n_in": n_in, "n_out": n_out, "effect_in": np.nan, "se_in": np.nan, "effect_out": np.nan,
                "heterogeneity": np.nan, "se": np.nan, "z": np.nan, "p": np.nan}
    se_in, se_out = inside.std(ddof=1) / np.sqrt(n_in), outside.std(ddof=1) / np.sqrt(n_out)
    difference = inside.mean() - outside.mean()
    se = float(np.hypot(se_in, se_out))
    z = difference / se if se > 0 else 0.0
    return {"n_in": n_in, "n_out": n_out, "effect_in": float(inside.mean()), "se_in": float(se_in),
            "effect_out": float(outside.mean()), "heterogeneity": float(difference), "se": se,
            "z": float(z), "p": float(2 * norm.sf(abs(z)))}


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values."""
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values."""
    order = np.argsort(p)
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def _halves(treated: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of two halves of the pair population, each regimen split evenly at random."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(treated), dtype=bool)
    for group in (treated, ~treated):
        members = rng.permutation(np.flatnonzero(group))
        first[members[: len(members) // 2]] = True
    return np.flatnonzero(first), np.flatnonzero(~first)


def _pseudo_outcomes(table: CohortTable, arm: str, comparator: str, endpoint: str, rows: np.ndarray,
                     spec: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cohort positions, φ = ψ_arm − ψ_comparator) of a half, fitted within that half only."""
    fit = fit_pair(table, arm, comparator, [endpoint], spec, seed, rows=rows)
    if endpoint in fit.not_estimable:
        from response_model.errors import InputError

        raise InputError(f"cannot search for {endpoint}: {fit.not_estimable[endpoint]}")
    psi_arm, psi_comparator = fit.psi[endpoint]
    return fit.rows, psi_arm - psi_comparator


def _eligible(stats: dict[str, float], size: int, spec: Mapping[str, Any]) -> bool:
    low = max(int(spec["min_rule_patients"]), int(np.ceil(float(spec["min_rule_share"]) * size)))
    return stats["n_in"] >= low and stats["n_out"] >= low and not np.isnan(stats["z"])


def _search(frame: pd.DataFrame, phi: np.ndarray, spec: Mapping[str, Any]) -> tuple[list[tuple[Rule, dict]], int]:
    """(the rules carried to the held-out half with their discovery statistics, number searched)."""
    singles = [(rule, heterogeneity(phi, *rule.evaluate(frame))) for rule in candidate_rules(frame, spec)]
    singles = [(r, s) for r, s in singles if _eligible(s, len(frame), spec)]
    best = sorted(singles, key=lambda item: -abs(item[1]["z"]))[: int(spec["pairs_from_top"])]
    doubles = []
    for (a, stats_a), (b, stats_b) in combinations(best, 2):
        if a.conditions[0].field == b.conditions[0].field:
            continue
        rule = Rule(a.conditions + b.conditions)
        stats = heterogeneity(phi, *rule.evaluate(frame))
        # a second marker must add to both: else "WNT and anything" crowds out the other single rules
        if _eligible(stats, len(frame), spec) and abs(stats["z"]) > max(abs(stats_a["z"]), abs(stats_b["z"])):
            doubles.append((rule, stats))
    everything = sorted(singles + doubles, key=lambda item: -abs(item[1]["z"]))
    return everything[: int(spec["carried_to_held_out"])], len(singles) + len(doubles)


def discover(cohort: Any, arm: str, comparator: str, endpoint: str = "objective_response",
             config: str = SETTINGS_FILE, seed: int | None = None) -> Discovery:
    """Search rules for heterogeneity of the arm-vs-comparator effect on ``endpoint`` (module docstring).

    ``cohort``: a ParsedCohort, LoadedCohort or :class:`CohortTable`; ``seed``: the halves' split
    (default: the config's)."""
    check_endpoints([endpoint])
    check_pair(arm, comparator, list(load_catalogue()))
    table = cohort if isinstance(cohort, CohortTable) else CohortTable.of(cohort)
    cfg = settings(config)
    spec, seed = cfg["discover"], int(cfg["discover"]["seed"] if seed is None else seed)
    _require_given(table, arm, comparator, int(spec["min_given"]))
    pair_rows = np.flatnonzero(np.isin(table.given, [arm, comparator]))
    first, second = _halves(table.given[pair_rows] == arm, seed)
    frame = rule_frame(table)
    rows_a, phi_a = _pseudo_outcomes(table, arm, comparator, endpoint, pair_rows[first], cfg["adjusted"], seed)
    rows_b, phi_b = _pseudo_outcomes(table, arm, comparator, endpoint, pair_rows[second], cfg["adjusted"], seed + 1)
    carried, searched = _search(frame.iloc[rows_a].reset_index(drop=True), phi_a, spec)
    held_out = frame.iloc[rows_b].reset_index(drop=True)
    records = []
    for rule, found in carried:
        stats = heterogeneity(phi_b, *rule.evaluate(held_out))
        z = 1.959963984540054
        records.append({
            "rule": rule.text(), "n_in": stats["n_in"], "n_out": stats["n_out"], "effect_in": stats["effect_in"],
            "effect_in_lower": stats["effect_in"] - z * stats["se_in"],
            "effect_in_upper": stats["effect_in"] + z * stats["se_in"], "effect_out": stats["effect_out"],
            "heterogeneity": stats["heterogeneity"], "heterogeneity_lower": stats["heterogeneity"] - z * stats["se"],
            "heterogeneity_upper": stats["heterogeneity"] + z * stats["se"],
            "p": 1.0 if np.isnan(stats["p"]) else stats["p"],
            "same_sign": bool(np.sign(stats["heterogeneity"]) == np.sign(found["heterogeneity"])),
            "discovery_heterogeneity": found["heterogeneity"], "discovery_z": found["z"]})
    return Discovery(_ranked(pd.DataFrame(records), float(spec["fdr"])), arm, comparator, endpoint,
                     len(rows_a), len(rows_b), searched)


def _ranked(frame: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """The held-out results with Holm and BH adjustment, survival, and rank (held-out p, ascending)."""
    if frame.empty:
        return pd.DataFrame(columns=list(RULE_COLUMNS))
    p = frame["p"].to_numpy(dtype=float)
    frame["p_holm"], frame["q_bh"] = holm(p), benjamini_hochberg(p)
    frame["survives"] = (frame["q_bh"] <= fdr) & frame.pop("same_sign")
    frame = frame.sort_values(["survives", "p"], ascending=[False, True], kind="stable").reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame[list(RULE_COLUMNS)]


def _require_given(table: CohortTable, arm: str, comparator: str, least: int) -> None:
    """InputError naming the regimen(s) given to too few patients of the cohort to search with."""
    from response_model.errors import InputError

    counts = {name: int((table.given == name).sum()) for name in (arm, comparator)}
    scarce = [f"{name} (given to {k})" for name, k in counts.items() if k < least]
    if scarce:
        raise InputError(f"cannot search: {' and '.join(scarce)} in this cohort; expected at least {least} "
                         "patients given each regimen")


def save_rules(found: Discovery, path: str | Path) -> int:
    """Write ``found``'s surviving rules as a subset file (configs/subsets format: names
    ``discovered_<arm>_vs_<comparator>_<rank>``, each described as exploratory); return how many."""
    import yaml

    survivors = found.rules[found.rules["survives"].astype(bool)]
    subsets = {f"discovered_{found.arm}_vs_{found.comparator}_{r.rank}": {
        "rule": r.rule,
        "description": (f"exploratory: found by `response-model trials discover` ({found.endpoint}, heterogeneity "
                        f"{100 * r.heterogeneity:+.1f} points on the held-out half, BH q {r.q_bh:.2g}); "
                        "a hypothesis to test, not a finding")} for r in survivors.itertuples()}
    Path(path).write_text(yaml.safe_dump({"subsets": subsets}, sort_keys=False, allow_unicode=True))
    return len(subsets)
