"""The monitoring checks and their verdicts (ok / watch / act; ``n/a`` for a window too small to
judge), with the thresholds of ``configs/monitoring.yaml``, over time windows.

:func:`monitor` is the one entry point: the CLI (:mod:`.commands`) and ``GET /v1/monitoring`` both
serve its JSON. Privacy: the answer holds aggregates only (no record, no pseudonym); a window or a
regimen class × outcome cell with fewer than ``privacy.k`` distinct patients shows its size as
``"< k"`` and no statistic, and every calibration bin holds at least k patients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from response_model.config import load_yaml
from response_model.monitoring import drift, performance
from response_model.monitoring.served import Served

OK, WATCH, ACT, NA = "ok", "watch", "act", "n/a"
_ORDER = {NA: -1, OK: 0, WATCH: 1, ACT: 2}
CHECKS = ("feature_drift", "missingness_pattern", "domain_classifier", "probability_drift", "rejections",
          "live_performance", "expected_performance")


def thresholds(name: str = "monitoring.yaml") -> dict[str, Any]:
    """The monitoring thresholds (``configs/monitoring.yaml`` or another file by path or name)."""
    return load_yaml(name)


def worst(verdicts: list[str]) -> str:
    """The most severe verdict of ``verdicts`` (``n/a`` when there is none to judge)."""
    return max(verdicts, key=_ORDER.__getitem__, default=NA)


def band(value: float | None, rule: Mapping[str, Any], significant: bool = True) -> str:
    """``act`` / ``watch`` / ``ok`` of a statistic where higher is worse (``n/a`` for None); a value
    that is not ``significant`` (its test's p-value too large) is ``ok`` whatever its size."""
    if value is None:
        return NA
    if not significant:
        return OK
    return ACT if value >= rule["act"] else WATCH if value >= rule["watch"] else OK


def _psi_verdicts(results: Mapping[str, Mapping[str, Any]], rule: Mapping[str, Any]) -> dict[str, Any]:
    """Each result's verdict (PSI band, chi-square p-value Bonferroni-corrected over the results)
    and the worst, naming the result it comes from."""
    alpha = float(rule["p_value"]) / max(1, len(results))
    for result in results.values():
        result["verdict"] = band(result["psi"], rule, result["p_value"] < alpha)
    named = max(results, key=lambda k: (_ORDER[results[k]["verdict"]], results[k]["psi"] or 0), default=None)
    return {"verdict": worst([r["verdict"] for r in results.values()]), "worst": named,
            "items": dict(results)}


def patients(requests: pd.DataFrame) -> int:
    """Distinct patients of ``requests`` (or of rows with a ``prediction_id``): distinct pseudonyms, each
    prediction without one counted alone."""
    named = requests["patient_pseudonym"].dropna()
    anonymous = requests.loc[requests["patient_pseudonym"].isna()]
    alone = anonymous["prediction_id"].nunique() if "prediction_id" in anonymous else len(anonymous)
    return int(named.nunique() + alone)


def period_problem(since: datetime, until: datetime, cfg: Mapping[str, Any]) -> str | None:
    """Why ``since``–``until`` cannot be monitored (reversed, or more than ``windows.max_windows``
    windows: every window costs a classifier fit), or None."""
    if until <= since:
        return f"since: {since.isoformat()} is not before until {until.isoformat()}"
    days, most = float(cfg["windows"]["days"]), int(cfg["windows"]["max_windows"])
    n = math.ceil((until - since) / timedelta(days=days))
    if n > most:
        return (f"since: the period {since.date()} to {until.date()} holds {n} windows of {days:g} days; at most "
                f"{most} (a later since, or a longer windows.days in configs/monitoring.yaml)")
    return None


def window_edges(since: datetime, until: datetime, days: float) -> list[tuple[datetime, datetime]]:
    """Consecutive windows of ``days`` from ``since``; the last ends at ``until``."""
    edges, start, step = [], since, timedelta(days=float(days))
    while start < until:
        edges.append((start, min(start + step, until)))
        start += step
    return edges


def _rejections(rejected: pd.DataFrame, n_accepted: int, rule: Mapping[str, Any]) -> dict[str, Any]:
    """Share of prediction requests refused naming each field; verdict by the worst field."""
    total = n_accepted + int((rejected["field"] == "(any)").sum())
    if total < int(rule["min_requests"]):
        return {"verdict": NA, "requests": total, "items": {}}
    shares = rejected.loc[rejected["field"] != "(any)", "field"].value_counts() / total
    items = {f: {"share": float(s), "verdict": band(float(s), rule)} for f, s in shares.items()}
    named = max(items, key=lambda f: items[f]["share"], default=None)
    return {"verdict": worst([i["verdict"] for i in items.values()] or [OK]), "worst": named,
            "requests": total, "items": items}


def drift_window(profile: Mapping[str, Any], inputs: pd.DataFrame, probabilities: pd.DataFrame,
                 cfg: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """The drift checks of one window's served ``inputs`` and ``probabilities`` (no size rule here:
    :func:`monitor` applies the minimum and k). Returns {check: {verdict, …}}."""
    auc = drift.domain_auc(profile, inputs, seed)
    return {
        "feature_drift": _psi_verdicts(drift.feature_drift(profile, inputs), cfg["feature_psi"]),
        "missingness_pattern": {**(r := drift.pattern_drift(profile, inputs)),
                                "verdict": band(r["psi"], cfg["missingness_pattern"],
                                                r["p_value"] < float(cfg["missingness_pattern"]["p_value"]))},
        "domain_classifier": {"auc": auc, "verdict": band(auc, cfg["domain_classifier"])},
        "probability_drift": _psi_verdicts(drift.probability_drift(profile, probabilities), cfg["probability_psi"]),
    }


def _live_verdict(metrics: Mapping[str, Any], rule: Mapping[str, Any]) -> str:
    """ok / watch / act of live AUC, slope and intercept against ``rule`` (n/a below min_labelled): the
    slope is watch outside ``rule["slope"]``, act when its 95 % interval also excludes 1 (what
    :func:`~.performance.labels_needed` sizes)."""
    if metrics["n"] < int(rule["min_labelled"]) or metrics["auc"] is None:
        return NA
    low, high = rule["slope"]
    verdicts = []
    auc_ci, slope_ci = metrics["auc_interval"], metrics["calibration_slope_interval"]
    verdicts.append(ACT if auc_ci and auc_ci[1] < rule["auc_watch"] else
                    WATCH if metrics["auc"] < rule["auc_watch"] else OK)
    slope = metrics["calibration_slope"]
    outside = slope is not None and not low <= slope <= high
    verdicts.append(ACT if outside and slope_ci and (slope_ci[1] < 1 or slope_ci[0] > 1) else
                    WATCH if outside else OK)
    intercept = metrics["calibration_intercept"]
    verdicts.append(WATCH if intercept is not None and abs(intercept) > rule["intercept"] else OK)
    return worst(verdicts)


def suppressed(k: int) -> dict[str, Any]:
    """What a cell of fewer than ``k`` patients shows: its size bounded, no statistic."""
    return {"suppressed": True, "patients": f"< {k}", "verdict": NA}


def calibration_curve(joined: pd.DataFrame, k: int, max_bins: int = 10) -> list[dict[str, float]]:
    """Equal-frequency bins of predicted probability (each of at least ``k`` patients): mean predicted,
    observed share and n per bin; empty when there are fewer than ``k`` labelled rows."""
    n_bins = min(max_bins, len(joined) // max(1, k))
    if n_bins < 1:
        return []
    order = np.argsort(joined["probability"].to_numpy(), kind="stable")
    chunks = np.array_split(order, n_bins)
    p, y = joined["probability"].to_numpy(), joined["y"].to_numpy()
    return [{"predicted": float(p[c].mean()), "observed": float(y[c].mean()), "n": len(c)} for c in chunks]


def reference_expected_auc(profile: Mapping[str, Any]) -> dict[str, float | None]:
    """Per ``regimen_class/outcome``: the CBPE expected AUC of the bundle's predictions on its training
    sample — what the served expected AUC is compared with."""
    from response_model.regimens import load_catalogue

    table = pd.DataFrame(profile.get("probabilities") or {"regimen": [], "outcome": [], "probability": []})
    classes = {name: r.regimen_class for name, r in load_catalogue().items()}
    table["regimen_class"] = table["regimen"].map(classes)
    return {f"{c}/{o}": performance.expected_auc(g["probability"].to_numpy())
            for (c, o), g in table.groupby(["regimen_class", "outcome"])}


def _expected_verdict(auc: float | None, reference: float | None, rule: Mapping[str, Any]) -> str:
    """watch / act when the served expected AUC fell by ``expected_auc_drop`` watch / act below the
    training sample's; n/a without either."""
    if auc is None or reference is None:
        return NA
    return band(reference - auc, rule["expected_auc_drop"])


def _performance(joined: pd.DataFrame, served: pd.DataFrame, cfg: Mapping[str, Any], k: int,
                 reference: Mapping[str, float | None]) -> dict[str, Any]:
    """Live metrics (labelled rows), expected ones (served rows) per class × outcome, with verdicts."""
    rule = cfg["performance"]
    live = {}
    for cell, metrics in performance.live_performance(joined, int(rule["bootstrap"])).items():
        c, o = cell.split("/")
        rows = joined[(joined["regimen_class"] == c) & (joined["outcome"] == o)]
        if patients(rows) < k:
            live[cell] = suppressed(k)
            continue
        live[cell] = {**metrics, "verdict": _live_verdict(metrics, rule),
                      "calibration_curve": calibration_curve(rows, k)}
    expected = {}
    for cell, metrics in performance.expected_by_class(served, float(rule["detect_slope"])).items():
        verdict = _expected_verdict(metrics["auc"], reference.get(cell), rule)
        c, o = cell.split("/")
        rows = served[(served["regimen_class"] == c) & (served["outcome"] == o)]
        expected[cell] = suppressed(k) if patients(rows) < k else {
            **metrics, "reference_auc": reference.get(cell), "verdict": verdict}
    return {"live": live, "expected": expected,
            "verdict_live": worst([m["verdict"] for m in live.values()]),
            "verdict_expected": worst([m["verdict"] for m in expected.values()])}


def _window(profile: Mapping[str, Any], data: Served, joined: pd.DataFrame, start: datetime, end: datetime,
            cfg: Mapping[str, Any]) -> dict[str, Any]:
    """One window's checks, or its size and ``n/a`` when it has too few requests or patients."""
    k, minimum = int(cfg["privacy"]["k"]), int(cfg["windows"]["min_requests"])
    rows = (data.requests["time"] >= start) & (data.requests["time"] < end)
    requests = data.requests[rows]
    ids = set(requests["prediction_id"])
    head = {"start": start.isoformat(), "end": end.isoformat(), "requests": int(rows.sum())}
    rejected = data.rejected[(data.rejected["time"] >= start) & (data.rejected["time"] < end)]
    checks: dict[str, Any] = {"rejections": _rejections(rejected, int(rows.sum()), cfg["rejections"])}
    n_patients = patients(requests)
    with_inputs = rows & data.requests["has_inputs"]
    if n_patients < k or int(with_inputs.sum()) < minimum:
        reason = f"fewer than {minimum} requests with inputs" if n_patients >= k else f"fewer than {k} patients"
        checks.update({name: {"verdict": NA, "reason": reason} for name in CHECKS[:4]})
    else:
        probabilities = data.probabilities[data.probabilities["prediction_id"].isin(ids)]
        checks.update(drift_window(profile, data.inputs[with_inputs.to_numpy()], probabilities, cfg))
    labelled = joined[joined["prediction_id"].isin(ids)]
    if patients(labelled) >= k:
        cells = performance.live_performance(labelled, int(cfg["performance"]["bootstrap"]))
        sizes = {f"{c}/{o}": patients(g) for (c, o), g in labelled.groupby(["regimen_class", "outcome"])}
        checks["live_performance"] = {c: (m if sizes[c] >= k else suppressed(k)) for c, m in cells.items()}
    head["patients"] = n_patients if n_patients >= k else f"< {k}"
    if head["requests"] < k:  # a count under k is shown bounded, like the patients
        head["requests"] = f"< {k}"
    return {**head, "checks": checks}


def monitor(profile: Mapping[str, Any], data: Served, outcomes: pd.DataFrame | None, since: datetime,
            until: datetime, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The monitoring state of ``data`` (served in ``since <= time < until``) against the training
    ``profile``: per window the drift checks, over the whole period live and expected performance,
    and per check the verdict (the worst of its windows). Aggregates only (see the module docstring)."""
    cfg = cfg or thresholds()
    k = int(cfg["privacy"]["k"])
    joined = performance.labelled(data.probabilities, outcomes)
    windows = [_window(profile, data, joined, start, end, cfg)
               for start, end in window_edges(since, until, cfg["windows"]["days"])]
    perf = _performance(joined, data.probabilities, cfg, k, reference_expected_auc(profile))
    verdicts = {name: worst([w["checks"][name]["verdict"] for w in windows if name in w["checks"]])
                for name in CHECKS[:5]}
    verdicts["live_performance"], verdicts["expected_performance"] = perf["verdict_live"], perf["verdict_expected"]
    return {"period": {"since": since.isoformat(), "until": until.isoformat()}, "requests": len(data.requests),
            "labelled": len(joined), "k": k, "verdicts": verdicts, "verdict": worst(list(verdicts.values())),
            "windows": windows, "performance": perf}


def monitoring_state(bundle: Any, trail: Any, since: datetime, until: datetime,
                     cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`monitor` of what ``trail`` holds for ``bundle``'s model version in ``since <= time < until``
    (aware datetimes), with the model's name, version and label (its research-use label when it was
    trained on simulated data, else None). Raises ProfileError for a bundle without a reference profile."""
    from response_model.monitoring.profile import profile_of
    from response_model.monitoring.served import recorded_outcomes, served
    from response_model.service.keys import TIME_FORMAT

    profile = profile_of(bundle)
    version = bundle.metadata.get("model_version")
    data = served(trail, since=since.strftime(TIME_FORMAT), until=until.strftime(TIME_FORMAT), model_version=version)
    state = monitor(profile, data, recorded_outcomes(trail), since, until, cfg)
    return {"model_name": bundle.metadata.get("model_name"), "model_version": version,
            "label": bundle.metadata.get("label"), **state}
