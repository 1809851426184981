"""Evaluation metrics for binary outcomes, survival concordance, fold intervals and subgroups.

Conventions
-----------
* ``p`` is a predicted probability of the positive class (objective response, or primary
  resistance). A NaN prediction means "no score" (e.g. a single-marker rule on a patient whose
  marker is missing): such rows are dropped and ``n`` reports how many were scored.
* Calibration slope and intercept come from the *unpenalised* logistic recalibration model
  ``logit P(y=1) = intercept + slope · logit(p)`` with ``p`` clipped to [1e-6, 1 − 1e-6]
  (Cox 1958; Van Calster 2019). ``calibration_intercept`` is that model's intercept (slope free);
  ``calibration_in_the_large`` is the intercept with the slope fixed at 1 (offset model). Perfect
  calibration: slope 1, both intercepts 0. Both are fitted by Newton–Raphson on two parameters.
* ``ece``: expected calibration error over 10 equal-frequency bins of ``p`` —
  Σ_b (n_b/n)·|mean(y)_b − mean(p)_b|.
* Fold intervals (:func:`interval`): ``lower``/``upper`` are the 2.5th and 97.5th percentiles
  of the fold values (what a single held-out fold of this size would show); ``se_lower``/
  ``se_upper`` are mean ± 1.96·sd/√k, which is optimistic for repeated CV because folds share
  patients. Tables report the percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

CLIP = 1e-6
BINARY_METRICS = ("auc", "auprc", "brier", "calibration_slope", "calibration_intercept",
                  "calibration_in_the_large", "ece")


def _as_arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y has {y.size} values but p has {p.size}")
    keep = ~(np.isnan(y) | np.isnan(p))
    return y[keep], p[keep]


def logit(p) -> np.ndarray:
    """Return log(p / (1 − p)) with ``p`` clipped to [1e-6, 1 − 1e-6]."""
    p = np.clip(np.asarray(p, dtype=float), CLIP, 1.0 - CLIP)
    return np.log(p) - np.log1p(-p)


def _newton_logistic(design: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """Unpenalised logistic regression of ``y`` on ``design`` (+ ``offset``) by Newton–Raphson."""
    beta = np.zeros(design.shape[1])
    for _ in range(max_iter):
        eta = np.clip(design @ beta + offset, -30, 30)
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1.0 - mu)
        hessian = design.T @ (design * w[:, None])
        try:
            step = np.linalg.solve(hessian + 1e-10 * np.eye(len(beta)), design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return np.full(len(beta), np.nan)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-9:
            break
    return beta


def calibration(y, p) -> dict[str, float]:
    """Return calibration slope, intercept (slope free) and calibration-in-the-large (slope 1)."""
    y, p = _as_arrays(y, p)
    nan = {"calibration_slope": math.nan, "calibration_intercept": math.nan, "calibration_in_the_large": math.nan}
    if len(np.unique(y)) < 2:
        return nan
    lp = logit(p)
    intercept, slope = _newton_logistic(np.column_stack([np.ones_like(lp), lp]), y, np.zeros_like(lp))
    (citl,) = _newton_logistic(np.ones((len(lp), 1)), y, lp)
    return {"calibration_slope": float(slope), "calibration_intercept": float(intercept),
            "calibration_in_the_large": float(citl)}


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """Return the ECE over ``n_bins`` equal-frequency bins of ``p``."""
    y, p = _as_arrays(y, p)
    if len(y) == 0:
        return math.nan
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, len(y))):
        total += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(total / len(y))


def binary_metrics(y, p) -> dict[str, float]:
    """Return n, events, auc, auprc, brier, calibration slope/intercepts and ece of ``p`` for ``y``.

    Rows where ``y`` or ``p`` is NaN are dropped (``n`` counts the rest). With a single class
    present AUC, AUPRC and the calibration terms are NaN rather than an error.
    """
    y, p = _as_arrays(y, p)
    out: dict[str, float] = {"n": float(len(y)), "events": float(y.sum())}
    two_classes = len(np.unique(y)) == 2
    out["auc"] = float(roc_auc_score(y, p)) if two_classes else math.nan
    out["auprc"] = float(average_precision_score(y, p)) if two_classes else math.nan
    out["brier"] = float(brier_score_loss(y, p)) if len(y) else math.nan
    out.update(calibration(y, p))
    out["ece"] = expected_calibration_error(y, p)
    return out


def c_index(risk, time, event) -> float:
    """Return Harrell's concordance index of ``risk`` against (time, event); higher risk = earlier event.

    Uses ``lifelines.utils.concordance_index`` (which scores *survival-like* predictions, so the
    risk is negated). Rows with any NaN are dropped.
    """
    from lifelines.utils import concordance_index

    risk = np.asarray(risk, dtype=float).ravel()
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event, dtype=float).ravel()
    keep = ~(np.isnan(risk) | np.isnan(time) | np.isnan(event))
    if keep.sum() < 2 or event[keep].sum() == 0:
        return math.nan
    return float(concordance_index(time[keep], -risk[keep], event[keep]))


def interval(values: Sequence[float] | np.ndarray | pd.Series, level: float = 0.95) -> dict[str, float]:
    """Return the mean and intervals of fold values (NaNs ignored).

    ``lower``/``upper``: percentile interval of the fold values (reported in tables).
    ``se_lower``/``se_upper``: mean ± z·sd/√k (normal, optimistic for repeated CV).
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    k = len(v)
    if k == 0:
        return {"mean": math.nan, "lower": math.nan, "upper": math.nan, "sd": math.nan,
                "se_lower": math.nan, "se_upper": math.nan, "k": 0}
    alpha = (1.0 - level) / 2.0
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if k > 1 else math.nan
    half = stats.norm.ppf(1.0 - alpha) * sd / math.sqrt(k) if k > 1 else math.nan
    return {"mean": mean, "lower": float(np.quantile(v, alpha)), "upper": float(np.quantile(v, 1.0 - alpha)),
            "sd": sd, "se_lower": mean - half, "se_upper": mean + half, "k": k}


def auc_ci_delong(y, p, level: float = 0.95) -> dict[str, float]:
    """Return the AUC with its DeLong (1988) standard error and interval (single sample)."""
    y, p = _as_arrays(y, p)
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return {"auc": math.nan, "se": math.nan, "lower": math.nan, "upper": math.nan}
    # placement values via midranks
    all_rank = stats.rankdata(np.concatenate([pos, neg]))
    pos_rank, neg_rank = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (all_rank[:m] - pos_rank) / n          # for each positive: share of negatives below
    v01 = 1.0 - (all_rank[m:] - neg_rank) / m    # for each negative: share of positives above
    auc = float(v10.mean())
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    se = math.sqrt(var)
    z = stats.norm.ppf(1.0 - (1.0 - level) / 2.0)
    return {"auc": auc, "se": se, "lower": max(0.0, auc - z * se), "upper": min(1.0, auc + z * se)}


def age_band(age) -> pd.Series:
    """Return the age band (<65, 65–74, ≥75) of each age; NaN stays missing."""
    age = pd.Series(age, dtype=float)
    return pd.cut(age, [-np.inf, 65, 75, np.inf], right=False, labels=["<65", "65-74", ">=75"]).astype(object)


def subgroup_columns(records) -> dict[str, pd.Series]:
    """Return the standard subgroup labels of patient records: sex, age band, aetiology, Child-Pugh, cancer type."""
    def value(v):
        return None if v is None else getattr(v, "value", v)

    frame = pd.DataFrame({
        "sex": [value(r.sex) for r in records],
        "age_band": age_band([math.nan if r.age is None else r.age for r in records]),
        "aetiology": [value(r.aetiology) for r in records],
        "child_pugh_class": [value(r.child_pugh_class) for r in records],
        "cancer_type": [value(r.cancer_type) for r in records],
    })
    return {name: frame[name] for name in frame.columns}


def subgroup_metrics(frame: pd.DataFrame, by: Mapping[str, pd.Series], y: str = "y", p: str = "p",
                     min_n: int = 1, min_class_for_calibration: int = 5) -> pd.DataFrame:
    """Return :func:`binary_metrics` per level of each subgrouping in ``by``.

    ``frame`` holds the outcome column ``y`` and prediction column ``p``; each Series of ``by`` is
    aligned to ``frame`` by index (or by position when lengths match and indexes differ). Missing
    labels are skipped. A subgroup with a single outcome class gets NaN AUC; one with fewer than
    ``min_class_for_calibration`` events or non-events gets NaN calibration slope/intercepts
    (a logistic fit on a handful of events is meaningless). Columns: subgroup, level, n, events,
    then the metrics.
    """
    rows = []
    for name, labels in by.items():
        labels = pd.Series(labels)
        if not labels.index.equals(frame.index):
            labels = (labels.reindex(frame.index) if labels.index.isin(frame.index).all()
                      else pd.Series(labels.to_numpy(), index=frame.index))
        for level in sorted(labels.dropna().unique(), key=str):
            part = frame.loc[labels == level]
            if len(part) < min_n:
                continue
            metrics = binary_metrics(part[y], part[p])
            if min(metrics["events"], metrics["n"] - metrics["events"]) < min_class_for_calibration:
                metrics.update(calibration_slope=math.nan, calibration_intercept=math.nan,
                               calibration_in_the_large=math.nan)
            rows.append({"subgroup": name, "level": level, **metrics})
    return pd.DataFrame(rows, columns=["subgroup", "level", "n", "events", *BINARY_METRICS])


# ---------------------------------------------------------------------------------------------
# Held-out evaluation details (`response-model evaluate`): bootstrap intervals, labelled n, per class
# ---------------------------------------------------------------------------------------------

#: The metrics ``evaluate`` reports per outcome (resistance adds ``c_index`` against PFS).
HELD_OUT_METRICS = ("auc", "auprc", "brier", "calibration_slope")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _labelled(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return ~np.isnan(y) & ~np.isnan(p)


def held_out_metrics(y, p, time=None, event=None) -> dict[str, float | None] | None:
    """Return ``evaluate``'s metrics of one outcome (None when the labels have fewer than two rows or
    one class): :data:`HELD_OUT_METRICS`, and ``c_index`` of ``p`` against (time, event) when given."""
    y, p = np.asarray(y, dtype=float).ravel(), np.asarray(p, dtype=float).ravel()
    keep = _labelled(y, p)
    if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
        return None
    found = binary_metrics(y[keep].astype(int), p[keep])
    out = {name: _finite(found.get(name)) for name in HELD_OUT_METRICS}
    if time is not None:
        time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
        usable = ~(np.isnan(time) | np.isnan(event) | np.isnan(p))
        out["c_index"] = _finite(c_index(p[usable], time[usable], event[usable])) if usable.any() else None
    return out


def _resampled_binary(y: np.ndarray, p: np.ndarray, copies: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`HELD_OUT_METRICS` of each bootstrap resample, one value per row of ``copies`` (each patient's
    number of copies in that resample), as :func:`binary_metrics` computes them on the resampled rows (AUC =
    Mann–Whitney with mid-ranks for ties, AUPRC = scikit-learn's average precision, calibration slope by
    Newton–Raphson), all resamples at once (tests check they agree); NaN where a resample has one class."""
    order = np.argsort(-p, kind="mergesort")
    w, y_desc = copies[:, order], y[order]
    groups = np.r_[0, np.flatnonzero(np.diff(p[order])) + 1]  # runs of tied scores, highest first
    pos = np.add.reduceat(w * y_desc, groups, axis=1)
    neg = np.add.reduceat(w * (1.0 - y_desc), groups, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored lower than each run
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        tps, predicted = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
        precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted > 0)
        recall_gain = np.diff(np.c_[np.zeros(len(w)), tps], axis=1) / n_pos[:, None]
        auprc = (recall_gain * precision).sum(axis=1)
    brier = (copies * (p - y) ** 2).sum(axis=1) / copies.sum(axis=1)
    slope = _resampled_slope(y, logit(p), copies)
    return {name: np.where(both, value, np.nan)
            for name, value in (("auc", auc), ("auprc", auprc), ("brier", brier), ("calibration_slope", slope))}


def _resampled_slope(y: np.ndarray, lp: np.ndarray, copies: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """The calibration slope (logistic regression of ``y`` on intercept + ``lp``) of each row of ``copies``
    (weights): :func:`_newton_logistic` for every resample at once, with the 2 × 2 systems solved in closed
    form; NaN where a system is singular."""
    beta = np.zeros((len(copies), 2))
    for _ in range(max_iter):
        eta = np.clip(beta[:, :1] + beta[:, 1:] * lp, -30, 30)
        mu = 1.0 / (1.0 + np.exp(-eta))
        v, r = copies * mu * (1.0 - mu), copies * (y - mu)
        h00, h01, h11 = v.sum(axis=1) + 1e-10, (v * lp).sum(axis=1), (v * lp * lp).sum(axis=1) + 1e-10
        g0, g1 = r.sum(axis=1), (r * lp).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            det = h00 * h11 - h01 * h01
            step = np.column_stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det])
        step[~np.isfinite(det) | (det == 0)] = np.nan
        beta = beta + step
        if not np.any(np.abs(step) >= 1e-9):  # every resample converged (or singular: NaN)
            break
    return beta[:, 1]


def _copies(draws: np.ndarray, n: int) -> np.ndarray:
    """(resamples × ``n``) copies of each patient in each row of ``draws`` (indices drawn with replacement)."""
    copies = np.zeros((len(draws), n))
    np.add.at(copies, (np.repeat(np.arange(len(draws)), draws.shape[1]), draws.ravel()), 1.0)
    return copies


#: resample × patient cells computed at once by :func:`bootstrap_intervals` (bounds its memory to ~0.2 GB)
_RESAMPLE_BLOCK_CELLS = 2_000_000


#: pair-matrix cells computed at once by :func:`resampled_c_index` (bounds its memory to ~0.3 GB)
_PAIR_BLOCK_CELLS = 20_000_000


def resampled_c_index(risk, time, event, draws: np.ndarray) -> np.ndarray:
    """Return Harrell's c-index (as :func:`c_index` computes it) of each bootstrap resample: one value per
    row of ``draws`` (indices into the arrays, drawn with replacement); NaN where a resample has no
    comparable pair.

    A resample's c-index is a ratio of weighted pair counts, the weight of a pair of patients being the
    product of their copies in the resample, so every resample comes from one pair matrix of the
    original patients: lifelines' count per resample is the slow part of a bootstrap. The pair rule is
    lifelines' (i's event precedes j's exit, or j was censored at i's event time; a tie in risk counts
    one half); a patient's copies never pair with each other (same time), so the values are exactly
    lifelines' on the resampled rows."""
    risk, time, event = (np.asarray(a, dtype=float).ravel() for a in (risk, time, event))
    usable = ~(np.isnan(risk) | np.isnan(time) | np.isnan(event))
    died = usable & (np.nan_to_num(event) != 0)
    n = len(risk)
    weights = _copies(draws, n)
    credit, pairs = np.zeros(len(draws)), np.zeros(len(draws))
    step = max(1, _PAIR_BLOCK_CELLS // max(n, 1))
    for start in range(0, n, step):
        block = slice(start, min(n, start + step))
        t_i, t_j = time[block, None], time[None, :]
        comparable = died[block, None] & usable[None, :] & ((t_i < t_j) | ((t_i == t_j) & ~died[None, :]))
        r_i, r_j = risk[block, None], risk[None, :]
        score = comparable * ((r_i > r_j) + 0.5 * (r_i == r_j))
        credit += np.einsum("bi,bi->b", weights[:, block], weights @ score.T)
        pairs += np.einsum("bi,bi->b", weights[:, block], weights @ comparable.T.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, credit / np.where(pairs > 0, pairs, 1.0), np.nan)


def bootstrap_intervals(y, p, time=None, event=None, n_resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict[str, list[float | None]]:
    """Return ``{metric: [lower, upper]}``: percentile intervals of :func:`held_out_metrics` over
    ``n_resamples`` bootstrap resamples of the patients (rows, drawn with replacement; seeded, so the
    same data give the same intervals). Resamples with a single class are skipped for that metric."""
    y, p = np.asarray(y, dtype=float).ravel(), np.asarray(p, dtype=float).ravel()
    has_time = time is not None
    time = np.asarray(time, dtype=float) if has_time else None
    event = np.asarray(event, dtype=float) if has_time else None
    rows = np.flatnonzero(_labelled(y, p))
    if len(rows) < 2:
        return {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rows), size=(n_resamples, len(rows)))
    values: dict[str, list[float]] = {}
    step = max(1, _RESAMPLE_BLOCK_CELLS // len(rows))
    for start in range(0, n_resamples, step):
        found = _resampled_binary(y[rows], p[rows], _copies(draws[start:start + step], len(rows)))
        for name, value in found.items():
            if np.isfinite(value).any():
                values.setdefault(name, []).extend(value[np.isfinite(value)].tolist())
    if has_time:
        both_classes = np.ptp(y[rows][draws], axis=1) > 0  # a one-class resample is skipped for every metric
        found = resampled_c_index(p[rows], time[rows], event[rows], draws[both_classes])
        if np.isfinite(found).any():
            values["c_index"] = list(found[np.isfinite(found)])
    tail = 100 * (1 - level) / 2
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
            for name, v in values.items()}


def _outcome_details(y, p, time=None, event=None, *, with_intervals: bool = True) -> dict[str, Any]:
    y, p = np.asarray(y, dtype=float).ravel(), np.asarray(p, dtype=float).ravel()
    keep = _labelled(y, p)
    details: dict[str, Any] = {"n_labelled": int(keep.sum()), "events": int(y[keep].sum())}
    details["metrics"] = held_out_metrics(y, p, time, event)
    if with_intervals:
        details["intervals_95"] = bootstrap_intervals(y, p, time, event) if details["metrics"] else None
    return details


def held_out_details(outcomes: Mapping[str, tuple], classes: Sequence[str | None]) -> dict[str, Any]:
    """Return the keys ``evaluate`` adds to its result (the existing ones are left as they are):

    * ``labelled``: per outcome, the patients with a label (``n``) and the events among them;
    * ``intervals_95``: per outcome, ``{metric: [lower, upper]}`` over :data:`BOOTSTRAP_RESAMPLES`
      bootstrap resamples of the patients (seed :data:`BOOTSTRAP_SEED`), and how they were made;
    * ``by_regimen_class``: per regimen class, the patients, and per outcome the labelled n, events,
      metrics (None when not computable) and their bootstrap intervals.

    ``outcomes``: ``{"response": (y, p), "resistance": (y, p, pfs_months, pfs_event)}``; ``classes``:
    each row's regimen class.
    """
    overall = {name: _outcome_details(*arrays) for name, arrays in outcomes.items()}
    result: dict[str, Any] = {
        "labelled": {name: {"n": d["n_labelled"], "events": d["events"]} for name, d in overall.items()},
        "intervals_95": {name: d["intervals_95"] for name, d in overall.items()},
        "interval_method": f"percentile bootstrap over patients, {BOOTSTRAP_RESAMPLES} resamples, seed "
                           f"{BOOTSTRAP_SEED}",
        "by_regimen_class": {},
    }
    labels = np.asarray(classes, dtype=object)
    for regimen_class in sorted({c for c in classes if c is not None}):
        rows = np.flatnonzero(labels == regimen_class)
        entry: dict[str, Any] = {"n": int(len(rows))}
        for name, arrays in outcomes.items():
            entry[name] = _outcome_details(*(np.asarray(a, dtype=float)[rows] for a in arrays))
        result["by_regimen_class"][regimen_class] = entry
    return result
