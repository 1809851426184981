"""Benchmark (issue 16): a simulated deployment — how many requests each monitoring check needs to flag
each shift, how often it alarms on unshifted traffic, and how many labelled outcomes the live
calibration needs to see a model whose calibration slope dropped to 0.6.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/monitoring.py --model-uri models:/hcc-response@champion [--pool 20000] [--repeats 5]

Requests are drawn from a simulated pool (:func:`~response_model.sources.simulator.simulate_cohort`,
another seed than training): the training population, or shifted by reweighting the pool —

* ``masld``: the MASLD aetiology share doubled; ``child_pugh_b``: the Child-Pugh B share doubled;
* ``pdl1_present``: PD-L1 (CPS, TPS) given in every request where training mostly lacked it;
* ``albumin_gl``: one site in four sends albumin in g/L. Every request is validated by the schema, as
  the service does: those rows are refused (422 naming albumin) and counted by the rejections check.

Each window is judged by :func:`response_model.monitoring.checks.drift_window` and the rejections
check on frames (the statistics the service computes from its trail; the service path is tested in
tests/test_monitoring.py). "Requests needed" is the smallest window on the ladder at which some check
says watch or act in every repeat (and which checks do). False alarms: windows of ``--window``
unshifted requests with any check at watch or act (target ≤ 1 in 10). Labels: outcomes drawn from the simulator's true
probability of the regimen given; the served probability is distorted to a calibration slope of 0.6
(p = expit(logit(p_true) / 0.6)); the smallest number of labelled patients at which the live verdict is
``act`` in at least 80 % of repeats, beside :func:`~response_model.monitoring.performance.labels_needed`.
Targets: unit change ≤ 200 requests, population shifts ≤ 2,000.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

import numpy as np
import pandas as pd
from pydantic import ValidationError

from response_model.dataset import row_to_record
from response_model.modeling.predict import as_bundle, load_model
from response_model.monitoring import checks, performance
from response_model.monitoring.profile import input_frame, profile_of, record_inputs
from response_model.schema import OUTCOMES
from response_model.sources.simulator import simulate_cohort

LADDER = (50, 100, 200, 500, 1000, 2000)
LABEL_LADDER = (50, 100, 200, 400, 800, 1600)
SHIFTS = ("none", "masld", "child_pugh_b", "pdl1_present", "albumin_gl")
DRIFT_CHECKS = ("feature_drift", "missingness_pattern", "domain_classifier", "probability_drift", "rejections")


def _doubling_weight(mask: pd.Series) -> np.ndarray:
    """Sampling weights that double the share s of ``mask`` rows: w = 2(1 − s)/(1 − 2s) for them, 1 otherwise."""
    s = float(mask.mean())
    return np.where(mask, 2 * (1 - s) / (1 - 2 * s), 1.0)


def draw(pool: pd.DataFrame, shift: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` request rows of ``pool`` under ``shift`` (rows drawn with replacement, seeded)."""
    if shift == "masld":
        weights = _doubling_weight(pool["aetiology"] == "MASLD")
    elif shift == "child_pugh_b":
        weights = _doubling_weight(pool["child_pugh_class"] == "B")
    elif shift == "pdl1_present":
        weights = pool["pdl1_cps"].notna().to_numpy(dtype=float)
    else:
        weights = np.ones(len(pool))
    rows = pool.iloc[rng.choice(len(pool), size=n, p=weights / weights.sum())].copy()
    if shift == "albumin_gl":
        site = rng.random(n) < 0.25
        rows.loc[site, "albumin"] = rows.loc[site, "albumin"] * 10
    return rows


def validated(rows: pd.DataFrame) -> tuple[list, pd.DataFrame]:
    """(the records that pass the schema, the refusals as rows of time/field) — what the service would store."""
    records, refused = [], []
    for row in rows.to_dict(orient="records"):
        try:
            records.append(row_to_record(row))
        except ValidationError as error:
            refused.append({"time": None, "field": "(any)"})
            refused += [{"time": None, "field": str(e["loc"][0])} for e in error.errors()]
    return records, pd.DataFrame(refused, columns=["time", "field"])


def judge(bundle, profile, cfg, rows: pd.DataFrame, seed: int) -> dict[str, str]:
    """The verdict of each drift check on one window of request ``rows``."""
    records, refused = validated(rows)
    inputs = input_frame(record_inputs(r) for r in records)
    table = bundle.predictor().predict(records).table()
    long = table.melt(id_vars=["regimen"], value_vars=[f"p_{o}" for o in OUTCOMES], var_name="outcome",
                      value_name="probability").dropna(subset=["probability"])
    long["outcome"] = long["outcome"].str.removeprefix("p_")
    found = checks.drift_window(profile, inputs, long, cfg, seed)
    found["rejections"] = checks._rejections(refused, len(records), cfg["rejections"])
    return {name: found[name]["verdict"] for name in DRIFT_CHECKS}


def requests_needed(bundle, profile, cfg, pool, repeats: int, ladder) -> pd.DataFrame:
    """Per shift: the smallest window of ``ladder`` that some check flags (watch/act) in every repeat, and
    the checks that do there (the ladder stops at the first: larger windows only flag more)."""
    rows = []
    for shift in SHIFTS[1:]:
        found = {"shift": shift, "requests": None, "flagged by": ""}
        for n in ladder:
            verdicts = [judge(bundle, profile, cfg, draw(pool, shift, n, np.random.default_rng(r)), r)
                        for r in range(repeats)]
            flagged = [c for c in DRIFT_CHECKS if all(v[c] in ("watch", "act") for v in verdicts)]
            if flagged:
                found.update({"requests": n, "flagged by": ", ".join(
                    f"{c} ({'act' if all(v[c] == 'act' for v in verdicts) else 'watch'})" for c in flagged)})
                break
        rows.append(found)
    return pd.DataFrame(rows).set_index("shift").astype({"requests": "Int64"})


def false_alarms(bundle, profile, cfg, pool, windows: int, size: int) -> pd.DataFrame:
    """Per check: windows of ``size`` unshifted requests at watch or act, out of ``windows``."""
    verdicts = [judge(bundle, profile, cfg, draw(pool, "none", size, np.random.default_rng(1000 + w)), w)
                for w in range(windows)]
    counts = {c: sum(v[c] in ("watch", "act") for v in verdicts) for c in DRIFT_CHECKS}
    counts["any"] = sum(any(v[c] in ("watch", "act") for c in DRIFT_CHECKS) for v in verdicts)
    return pd.DataFrame([counts], index=[f"alarms in {windows} windows of {size}"])


def slope_act(metrics, rule) -> bool:
    """True when the slope alone makes the live verdict act: outside ``rule["slope"]`` with its 95 %
    interval excluding 1 (checks._live_verdict's slope rule; the AUC rule, which a weakly
    discriminating class may meet on its own, left out)."""
    slope, interval = metrics["calibration_slope"], metrics["calibration_slope_interval"]
    low, high = rule["slope"]
    return bool(slope is not None and interval and not low <= slope <= high and (interval[1] < 1 or interval[0] > 1))


def labels_for_slope(truth: pd.DataFrame, cfg, repeats: int, ladder, slope: float = 0.6) -> pd.DataFrame:
    """Labelled patients needed for the slope to make the live verdict act in ≥ 80 % of repeats, per regimen class,
    for served probabilities of calibration slope ``slope`` against the simulator's truth."""
    given = truth[truth["given"]]
    rows = []
    for regimen_class, group in given.groupby("regimen_class"):
        p_true = group["p_objective_response"].clip(1e-4, 1 - 1e-4).to_numpy()
        served = 1 / (1 + np.exp(-np.log(p_true / (1 - p_true)) / slope))
        found = None
        for n in ladder:
            hits = 0
            for r in range(repeats):
                rng = np.random.default_rng(r)
                pick = rng.choice(len(p_true), size=n)
                metrics = performance.live_metrics((rng.random(n) < p_true[pick]).astype(float), served[pick], 200, r)
                hits += slope_act(metrics, cfg["performance"])
            if hits >= 0.8 * repeats:
                found = n
                break
        rows.append({"regimen_class": regimen_class, "simulated": found,
                     "analytic (labels_needed)": performance.labels_needed(served, slope)})
    return pd.DataFrame(rows).set_index("regimen_class")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", required=True, help="A model trained with a reference profile")
    parser.add_argument("--pool", type=int, default=20_000, help="Simulated patients to draw requests from")
    parser.add_argument("--seed", type=int, default=2026, help="Seed of the simulated pool")
    parser.add_argument("--repeats", type=int, default=5, help="Repeats per window size")
    parser.add_argument("--windows", type=int, default=10, help="Unshifted windows for the false-alarm count")
    parser.add_argument("--window", type=int, default=None, help="Unshifted window size (default: min_requests)")
    parser.add_argument("--ladder", type=int, nargs="+", default=list(LADDER), help="Window sizes tried")
    parser.add_argument("--label-ladder", type=int, nargs="+", default=list(LABEL_LADDER), help="Labelled sizes tried")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    bundle = as_bundle(load_model(args.model_uri))
    profile, cfg = profile_of(bundle), checks.thresholds()
    simulated = simulate_cohort(args.pool, args.seed)
    pool = simulated.cohort
    size = args.window or int(cfg["windows"]["min_requests"])
    pd.set_option("display.width", 160)
    print(f"Reference: {profile['n']} training patients; pool {len(pool)} simulated (seed {args.seed}); "
          f"{args.repeats} repeats\n")
    print("Requests needed to flag each shift (some check at watch or act in every repeat; None: not in the ladder)")
    print(requests_needed(bundle, profile, cfg, pool, args.repeats, args.ladder).to_string(), "\n")
    print(false_alarms(bundle, profile, cfg, pool, args.windows, size).to_string(), "\n")
    print("Labelled outcomes needed to detect a calibration slope of 0.6 (the slope makes the live verdict act "
          "in ≥ 80 % of repeats)")
    print(labels_for_slope(simulated.truth, cfg, args.repeats, args.label_ladder).to_string())
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
