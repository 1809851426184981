"""Per-regimen validation: how well each regimen's estimates discriminate and are calibrated, and the
per-regimen part of the gate that decides whether a regimen is served, served with a warning, or withheld.

Training computes :func:`regimen_metrics` from the out-of-fold predictions of its cross-validation (the
same table :meth:`CVResult.subgroups` gives for the ``regimen`` subgroup — point estimates are means over
repeats — plus percentile-bootstrap intervals over the regimen's patients of the first repeat's
out-of-fold predictions), then :func:`regimen_decisions` checks them against ``gate.per_regimen`` of
the training configuration. The decisions go into the bundle's metadata (``regimen_validation``),
so serving reads them and never re-derives them.

A regimen's decision (``status``):

* ``validated`` — every outcome has enough patients and passes every rule: served;
* ``failed`` — some outcome fails a rule (the reason names the metric, value and rule): handled as
  ``on_fail`` says (``withhold``: not served; ``warn``: served with that reason as a warning);
* ``too_few`` — some outcome has fewer patients or events than the gate asks ("not validated — too few
  patients"): handled as ``on_too_few`` says;
* ``unchecked`` — the configuration has no ``gate.per_regimen``: served, saying it was not checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from response_model.schema import OUTCOMES

#: Metrics computed per regimen × outcome; each also gets ``_lower`` / ``_upper`` (bootstrap 95 %).
REGIMEN_METRICS = ("auc", "calibration_slope", "calibration_intercept", "calibration_in_the_large")
CALIBRATION_TERMS = ("calibration_slope", "calibration_intercept", "calibration_in_the_large")
RULE_KEYS = tuple(f"{m}{s}" for m in REGIMEN_METRICS for s in ("", "_lower", "_upper"))
ACTIONS = ("withhold", "warn")
BOOTSTRAP_RESAMPLES = 200
MIN_CLASS_FOR_CALIBRATION = 5  # as metrics.subgroup_metrics: no logistic fit on a handful of events
OUTCOME_WORDS = {"objective_response": "objective response", "primary_resistance": "primary resistance"}
METRIC_WORDS = {"auc": "AUC", "calibration_slope": "calibration slope",
                "calibration_intercept": "calibration intercept",
                "calibration_in_the_large": "calibration-in-the-large (log-odds)"}
INTERVAL_METHOD = (f"point: mean over CV repeats of the regimen's out-of-fold metrics; interval: 95 % percentile "
                   f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the regimen's patients, first repeat)")


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann–Whitney AUC with mid-ranks (NaN with a single class)."""
    from scipy.stats import rankdata

    positives = y.sum()
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    return float((rankdata(p)[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _weighted_auc(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC (ties count ½) of each row of ``counts`` (how often each patient is drawn)."""
    order = np.argsort(p, kind="stable")
    ps, ys, cs = p[order], y[order], counts[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(ps)) + 1]  # groups of tied probabilities
    pos = np.add.reduceat(cs * ys, starts, axis=1)
    neg = np.add.reduceat(cs * (1 - ys), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def _weighted_logistic(y: np.ndarray, lp: np.ndarray, counts: np.ndarray, free_slope: bool,
                       iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope) per row of ``counts`` of the logistic recalibration ``y ~ a + b·lp`` (``free_slope``)
    or ``y ~ a + offset(lp)`` (slope 1: calibration-in-the-large), by Newton–Raphson on all rows at once."""
    a, b = np.zeros(len(counts)), np.ones(len(counts))
    if free_slope:
        b[:] = 0.0
    for _ in range(iterations):
        mu = 1.0 / (1.0 + np.exp(-np.clip(a[:, None] + b[:, None] * lp[None, :], -30, 30)))
        w, r = counts * mu * (1 - mu), counts * (y[None, :] - mu)
        if not free_slope:
            step_a, step_b = r.sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12), 0.0
        else:
            h00, h01, h11 = w.sum(axis=1) + 1e-10, (w * lp).sum(axis=1), (w * lp * lp).sum(axis=1) + 1e-10
            g0, g1 = r.sum(axis=1), (r * lp).sum(axis=1)
            det = h00 * h11 - h01 * h01
            with np.errstate(invalid="ignore", divide="ignore"):
                step_a, step_b = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        a, b = a + step_a, b + step_b
        if np.nanmax(np.abs(np.r_[np.atleast_1d(step_a), np.atleast_1d(step_b)]), initial=0.0) < 1e-9:
            break
    return a, b


def bootstrap(y: np.ndarray, p: np.ndarray, n_resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0) -> dict[str, tuple[float, float]]:
    """{metric: (lower, upper)}: 95 % percentile intervals of :data:`REGIMEN_METRICS` over bootstrap
    resamples of the patients (NaN where fewer than 20 resamples could compute the metric). Calibration
    terms of a resample with fewer than :data:`MIN_CLASS_FOR_CALIBRATION` events or non-events are left out."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    if len(y) == 0:
        return dict.fromkeys(REGIMEN_METRICS, (math.nan, math.nan))
    counts = np.random.default_rng(seed).multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=n_resamples)
    counts = counts.astype(float)
    events = counts @ y
    enough = np.minimum(events, len(y) - events) >= MIN_CLASS_FOR_CALIBRATION
    lp = np.log(p) - np.log1p(-p)
    intercept, slope = _weighted_logistic(y, lp, counts[enough], free_slope=True)
    citl, _ = _weighted_logistic(y, lp, counts[enough], free_slope=False)
    draws = {"auc": _weighted_auc(y, p, counts), "calibration_slope": slope, "calibration_intercept": intercept,
             "calibration_in_the_large": citl}
    out = {}
    for metric in REGIMEN_METRICS:
        v = draws[metric][np.isfinite(draws[metric])]
        out[metric] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) >= 20 \
            else (math.nan, math.nan)
    return out


def regimen_metrics(result: Any, regimens: pd.Series, model: str = "project", n_resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Return {regimen: {n, events, auc, auc_lower, auc_upper, calibration_slope, …}} of ``model``'s
    out-of-fold predictions in ``result`` (a :class:`~response_model.modeling.cv.CVResult`); ``regimens``:
    the regimen of each row of the cross-validated X (same index). Calibration terms are NaN with fewer than
    :data:`MIN_CLASS_FOR_CALIBRATION` events or non-events."""
    means = result.subgroups(model, by={"regimen": regimens})
    first = result.oof[result.oof["repeat"] == result.oof["repeat"].min()]
    labels = pd.Series(regimens).reindex(first["row"].to_numpy()).to_numpy()
    out: dict[str, dict[str, float]] = {}
    for _, row in means.iterrows():
        regimen = str(row["level"])
        entry = {"n": int(row["n"]), "events": int(row["events"])}
        mask = labels == regimen
        y, p = first["y"].to_numpy(dtype=int)[mask], first[model].to_numpy(dtype=float)[mask]
        # the subgroup table's calibration terms are the same fits; recomputed here for the shared NaN rule
        point = {m: float(row[m]) for m in REGIMEN_METRICS}
        if min(entry["events"], entry["n"] - entry["events"]) < MIN_CLASS_FOR_CALIBRATION:
            point.update(dict.fromkeys(CALIBRATION_TERMS, math.nan))
        intervals = bootstrap(y, p, n_resamples, seed)
        for metric in REGIMEN_METRICS:
            entry[metric] = point[metric]
            entry[f"{metric}_lower"], entry[f"{metric}_upper"] = intervals[metric]
        out[regimen] = entry
    return out


# -- the per-regimen gate -------------------------------------------------------------------------


def _bounds(rule: Any) -> tuple[float | None, float | None]:
    """(low, high) of a rule: a number is a floor, ``[low, high]`` an interval, ``{min, max}`` explicit."""
    if isinstance(rule, Mapping):
        return rule.get("min"), rule.get("max")
    if isinstance(rule, Sequence) and not isinstance(rule, str):
        low, high = rule
        return float(low), float(high)
    return float(rule), None


def _wanted(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"gate {low:g} to {high:g}"
    return f"gate ≥ {low:g}" if low is not None else f"gate ≤ {high:g}"


def rules_of(per_regimen: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metric rules of a ``gate.per_regimen`` section (its keys among :data:`RULE_KEYS`)."""
    return {k: v for k, v in (per_regimen or {}).items() if k in RULE_KEYS}


def check_outcome(outcome: str, metrics: Mapping[str, float] | None,
                  per_regimen: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(``validated`` | ``failed`` | ``too_few``, reasons) of one regimen × outcome against the gate."""
    words = OUTCOME_WORDS.get(outcome, outcome)
    n = int((metrics or {}).get("n", 0))
    events = int((metrics or {}).get("events", 0))
    rarer = min(events, n - events)
    min_n, min_events = int(per_regimen.get("min_patients", 0)), int(per_regimen.get("min_events", 0))
    if n < min_n or rarer < min_events:
        return "too_few", [f"{words}: not validated — too few patients ({n} patients, {rarer} in the rarer outcome "
                           f"class; gate ≥ {min_n} patients and ≥ {min_events})"]
    reasons = []
    for key, rule in rules_of(per_regimen).items():
        low, high = _bounds(rule)
        value = float(metrics.get(key, math.nan)) if metrics else math.nan
        ok = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            metric = METRIC_WORDS.get(key.removesuffix("_lower").removesuffix("_upper"), key)
            side = " (lower 95 % bound)" if key.endswith("_lower") else " (upper 95 % bound)" \
                if key.endswith("_upper") else ""
            shown = f"{value:.2f}" if math.isfinite(value) else "not computable"
            reasons.append(f"{words}: {metric}{side} {shown} ({_wanted(low, high)})")
    return ("failed" if reasons else "validated"), reasons


def regimen_decisions(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], regimens: Sequence[str],
                      per_regimen: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Return {regimen: {status, served, warning, reasons, outcomes}} for every regimen in ``regimens``.

    ``metrics``: {outcome: {regimen: :func:`regimen_metrics` entry}}; a regimen absent there had no
    training patients (``too_few``). ``per_regimen``: the gate section (None: every regimen ``unchecked``).
    ``warning``: the text every answer for a served regimen that did not pass shows; None when validated."""
    out = {}
    for regimen in regimens:
        outcomes = {o: dict(metrics[o].get(regimen) or {"n": 0, "events": 0}) for o in OUTCOMES if o in metrics}
        if not per_regimen:
            out[regimen] = {"status": "unchecked", "served": True, "reasons": [], "outcomes": outcomes,
                            "warning": "not checked per regimen: this model's configuration has no per-regimen gate"}
            continue
        found = {o: check_outcome(o, m, per_regimen) for o, m in outcomes.items()}
        reasons = [r for _, (_, rs) in found.items() for r in rs]
        statuses = {s for s, _ in found.values()}
        status = "failed" if "failed" in statuses else "too_few" if "too_few" in statuses else "validated"
        action = {"failed": per_regimen.get("on_fail", "withhold"),
                  "too_few": per_regimen.get("on_too_few", "warn")}.get(status, "serve")
        out[regimen] = {"status": status, "served": action != "withhold", "reasons": reasons, "outcomes": outcomes,
                        "warning": None if status == "validated" else
                        ("not validated for this regimen: " + "; ".join(reasons))}
    return out


def validation_metadata(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], regimens: Sequence[str],
                        per_regimen: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bundle metadata entry ``regimen_validation``: the gate used, how intervals were made, and
    the decision of every regimen (:func:`regimen_decisions`), JSON-ready (NaN → None)."""
    decisions = regimen_decisions(metrics, regimens, per_regimen)
    for decision in decisions.values():
        for entry in decision["outcomes"].values():
            for key, value in entry.items():
                if isinstance(value, float) and not math.isfinite(value):
                    entry[key] = None
    return {"gate": dict(per_regimen) if per_regimen else None, "interval_method": INTERVAL_METHOD,
            "regimens": decisions}


def decision_of(metadata: Mapping[str, Any], regimen: str) -> dict[str, Any]:
    """The stored decision for ``regimen``; bundles trained before per-regimen validation say so."""
    stored = (metadata.get("regimen_validation") or {}).get("regimens") or {}
    if regimen in stored:
        return stored[regimen]
    why = ("no per-regimen validation stored in this model bundle" if not stored
           else "no training patients received this regimen")
    return {"status": "unchecked" if not stored else "too_few", "served": True, "reasons": [why], "outcomes": {},
            "warning": f"not validated for this regimen: {why}"}


STATUS_TEXT = {"validated": "validated", "failed": "not validated — fails the per-regimen gate",
               "too_few": "not validated — too few patients", "unchecked": "not checked per regimen"}


def answer_validation(metadata: Mapping[str, Any], regimen: str) -> dict[str, Any]:
    """The ``validation`` block of an answer's regimen: status (and its words), served, the warning every
    answer for a regimen that is not validated shows (None when validated), the reasons, and the
    regimen's out-of-fold metrics per outcome."""
    decision = decision_of(metadata, regimen)
    return {"status": decision["status"], "status_text": STATUS_TEXT.get(decision["status"], decision["status"]),
            "served": bool(decision["served"]), "warning": decision.get("warning"),
            "reasons": list(decision.get("reasons") or []),
            "metrics": {o: dict(m) for o, m in (decision.get("outcomes") or {}).items()}}


#: Statuses from best to worst: the mixture of several regimens takes its worst member's.
STATUS_ORDER = ("validated", "unchecked", "too_few", "failed")


def mixture_validation(metadata: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, Any]:
    """The ``status`` and ``warning`` of an estimate averaged over regimens with ``weights`` (a patient whose
    regimen is unrecorded): the worst member's status, and a warning naming every member not validated with
    its share of the mix (None when all are validated)."""
    decisions = {name: decision_of(metadata, name) for name, w in weights.items() if w > 0}
    worst = max((d["status"] for d in decisions.values()), key=STATUS_ORDER.index, default="unchecked")
    weak = [f"{name} ({weights[name]:.0%} of the mix: {STATUS_TEXT.get(d['status'], d['status'])})"
            for name, d in decisions.items() if d["status"] != "validated"]
    warning = f"the training mix includes regimens not validated: {', '.join(weak)}" if weak else None
    return {"status": worst, "warning": warning}


def withheld_regimens(metadata: Mapping[str, Any]) -> frozenset[str]:
    """The regimens the bundle's per-regimen gate withholds (not served)."""
    stored = (metadata.get("regimen_validation") or {}).get("regimens") or {}
    return frozenset(name for name, d in stored.items() if not d.get("served", True))


def summary_table(decisions: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per regimen × outcome: n, events, the metrics with intervals, status and served."""
    rows = []
    for regimen, decision in decisions.items():
        for outcome, entry in decision["outcomes"].items():
            rows.append({"regimen": regimen, "outcome": outcome, **entry, "status": decision["status"],
                         "served": decision["served"]})
    return pd.DataFrame(rows)
