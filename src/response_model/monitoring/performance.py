"""Is the model still right? Live discrimination and calibration once outcomes arrive, and before
they do, the performance the predictions themselves lead one to expect.

Live (:func:`live_performance`): per regimen class × outcome, the served probability of the regimen
the patient actually started against the recorded outcome: AUC, calibration slope and intercept
(logistic recalibration, Cox 1958), ECE (equal-frequency deciles), each with a percentile bootstrap
interval over patients, and the number labelled (:mod:`response_model.modeling.metrics`).

Expected (:func:`expected_performance`, NannyML's confidence-based performance estimation, CBPE):
ASSUMING THE MODEL IS CALIBRATED on the served population (each outcome ~ Bernoulli(p)), the
expected AUC is Σ p_i (1 − p_j) [p_i > p_j] / Σ p_i (1 − p_j) over pairs i ≠ j, the expected slope 1
and intercept 0, and the expected ECE the value that sampling noise alone gives (simulated). It sees
a changed case mix (a narrower spread of probabilities lowers the expected AUC) but not a model that
has become wrong — only outcomes show that.

:func:`labels_needed`: how many labelled outcomes detect a calibration slope of 0.6 (two-sided 5 %,
80 % power) on the served case mix, from the Fisher information of the recalibration model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from response_model.modeling.metrics import (
    binary_metrics,
    calibration,
    expected_calibration_error,
    logit,
)

LIVE_METRICS = ("auc", "calibration_slope", "calibration_intercept", "ece")


def _finite(value: Any) -> float | None:
    """``value`` as a float, None when it is NaN or infinite."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def live_metrics(y: np.ndarray, p: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """AUC, calibration slope / intercept and ECE of ``p`` for outcomes ``y`` (0/1), each with a 95 %
    percentile bootstrap interval, and ``n`` / ``events``; metrics None where both classes are not present."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    found = binary_metrics(y, p)
    out: dict[str, Any] = {"n": len(y), "events": int(y.sum())}
    out.update({name: _finite(found.get(name)) for name in LIVE_METRICS})
    draws: dict[str, list[float]] = {name: [] for name in LIVE_METRICS}
    rng = np.random.default_rng(seed)
    for rows in rng.integers(0, len(y), size=(n_boot, len(y))) if len(y) > 1 else []:
        yb, pb = y[rows], p[rows]
        if len(np.unique(yb)) < 2:
            continue
        ranks = stats.rankdata(pb)
        pos = yb.sum()
        draws["auc"].append((ranks[yb == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(yb) - pos)))
        cal = calibration(yb, pb)
        draws["calibration_slope"].append(cal["calibration_slope"])
        draws["calibration_intercept"].append(cal["calibration_intercept"])
        draws["ece"].append(expected_calibration_error(yb, pb))
    for name, values in draws.items():
        values = [v for v in values if math.isfinite(v)]
        out[f"{name}_interval"] = ([float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
                                   if len(values) >= 20 else None)
    return out


def expected_auc(p: np.ndarray) -> float | None:
    """The AUC expected if outcomes were drawn from ``p`` (CBPE; ties count a half), None for < 2 values."""
    p = np.sort(np.asarray(p, dtype=float))
    if len(p) < 2:
        return None
    # for each i as the positive: Σ_j (1 − p_j) over j with a lower p (+ half the ties), excluding j = i
    q = 1.0 - p
    below = np.concatenate([[0.0], np.cumsum(q)])
    lo, hi = np.searchsorted(p, p, side="left"), np.searchsorted(p, p, side="right")
    tied = below[hi] - below[lo] - q  # ties other than i itself
    numerator = float(np.sum(p * (below[lo] + 0.5 * tied)))
    denominator = float(p.sum() * q.sum() - np.sum(p * q))
    return numerator / denominator if denominator > 0 else None


def expected_performance(p: np.ndarray, seed: int = 0, draws: int = 200) -> dict[str, Any]:
    """CBPE-style expected AUC, slope (1), intercept (0) and ECE (its noise floor, simulated) of
    predictions ``p``, assuming calibration holds on the served population; ``n`` served."""
    p = np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    eces = [expected_calibration_error((rng.random(len(p)) < p).astype(float), p)
            for _ in range(draws if len(p) else 0)]
    return {"n": len(p), "assumption": "calibration holds on the served population (outcome ~ Bernoulli(p))",
            "auc": expected_auc(p), "calibration_slope": 1.0, "calibration_intercept": 0.0,
            "ece": float(np.mean(eces)) if eces else None}


def labels_needed(p: np.ndarray, slope: float = 0.6, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Labelled outcomes needed to tell a calibration slope of ``slope`` from 1 (two-sided ``alpha``,
    ``power``) on the case mix of ``p``: n = (z₁₋α/₂ + z_power)² · v / (1 − slope)², v the slope's
    per-patient variance from the Fisher information of the recalibration model logit P(y) = a + b ·
    logit(p) at the truth a = 0, b = ``slope`` (the estimates too extreme about even odds, as
    benchmarks/monitoring.py simulates). None for fewer than 10 predictions."""
    p = np.asarray(p, dtype=float)
    if len(p) < 10:
        return None
    x = logit(p)
    q = 1 / (1 + np.exp(-slope * x))
    w = q * (1 - q)
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum()]]) / len(x)
    try:
        v = float(np.linalg.inv(info)[1, 1])
    except np.linalg.LinAlgError:
        return None
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return int(math.ceil(z * z * v / (1 - slope) ** 2))


def labelled(probabilities: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Served probabilities joined with outcomes on prediction id and the regimen actually started:
    columns of ``probabilities`` plus ``y`` (0/1) for the outcome of the row; unlabelled rows dropped."""
    if outcomes is not None and "started" in outcomes:  # an outcome of a regimen not started labels nothing
        outcomes = outcomes[outcomes["started"].astype(bool)]
    if outcomes is None or not len(outcomes) or not len(probabilities):
        return probabilities.assign(y=pd.Series(dtype=float)).iloc[0:0]
    long = outcomes.melt(id_vars=["prediction_id", "regimen"],
                         value_vars=[c for c in ("objective_response", "primary_resistance") if c in outcomes],
                         var_name="outcome", value_name="y")
    long = long[long["y"].notna()]
    long = long.assign(y=long["y"].astype(float))  # pandas boolean (<NA> dropped) or 0/1
    return probabilities.merge(long, on=["prediction_id", "regimen", "outcome"], how="inner")


def live_performance(joined: pd.DataFrame, n_boot: int = 200) -> dict[str, dict[str, Any]]:
    """Per ``regimen_class/outcome`` of :func:`labelled` rows: :func:`live_metrics`."""
    return {f"{c}/{o}": live_metrics(g["y"].to_numpy(), g["probability"].to_numpy(), n_boot)
            for (c, o), g in joined.groupby(["regimen_class", "outcome"])}


def expected_by_class(probabilities: pd.DataFrame, slope: float) -> dict[str, dict[str, Any]]:
    """Per ``regimen_class/outcome`` served: :func:`expected_performance` and :func:`labels_needed`,
    over every regimen of the class each answer estimated (which one a patient will start is not
    known before the outcome is recorded)."""
    out: dict[str, dict[str, Any]] = {}
    for (c, o), g in probabilities.groupby(["regimen_class", "outcome"]):
        p = g["probability"].to_numpy()
        out[f"{c}/{o}"] = {**expected_performance(p), "labels_needed_for_slope": labels_needed(p, slope)}
    return out


