"""Benchmark (issue 15): effect estimates and discovery checked against the simulator's truth.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/trial_design.py [--n 20000] [--seed 2027] [--model-uri URI | --train-n 4000 | --no-model]
                                           [--power-trials 1000] [--skip-discover] [--skip-power]

A cohort of ``--n`` patients is simulated. For every built-in subset (configs/subsets) and "all", and
for each regimen pair of :data:`PAIRS`, per endpoint, :func:`response_model.trials.effects.estimate_effects`
gives the naive, model and adjusted estimates of the difference arm − comparator over the subset's
patients given either regimen; beside them the **truth**: the mean over the same patients of the
simulator's true probability under the arm minus that under the comparator (``truth``).

Targets: the adjusted interval covers the truth in ≥ 90 % of cells; its |bias| is below the naive one
wherever confounding matters (cells whose naive interval misses the truth). The model estimate
comes from ``--model-uri`` or, by default, the smoke training recipe (tests/data/train_smoke.yaml) fitted
on an independent simulated cohort of ``--train-n`` patients (no registry).

Discovery (``trials discover``): recovers WNT activation for ICI vs TKI (objective response) and
PI3K–mTOR for ICI vs sorafenib (primary resistance: the simulator's PI3K effect on the TKI class acts
mostly on progression) in its top three; no rule on BMI or smoking survives the held-out half.

Power: for the designs ``trials design`` produces (objective response, arm rates from the truth),
the empirical power of ``--power-trials`` simulated trials (``simulate_power``) beside the analytic one;
target within ±3 points.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from response_model.dataset import parse_cohort
from response_model.sources.simulator import simulate_cohort
from response_model.trials.discover import discover, rule_frame
from response_model.trials.effects import estimate_effects
from response_model.trials.estimation import ENDPOINTS, CohortTable
from response_model.trials.subsets import load_subsets

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("atezolizumab_bevacizumab", "sorafenib"), ("atezolizumab_bevacizumab", "lenvatinib"),
         ("durvalumab_tremelimumab", "sorafenib"), ("lenvatinib", "sorafenib")]
#: (arm, comparator, endpoint, the rule discovery should find in its top three)
DISCOVERIES = [("atezolizumab_bevacizumab", "lenvatinib", "objective_response", "wnt_activation == 1"),
               ("atezolizumab_bevacizumab", "sorafenib", "primary_resistance", "pi3k_mtor == 1"),
               ("atezolizumab_bevacizumab", "sorafenib", "objective_response", "wnt_activation == 1")]
NO_EFFECT = ("bmi", "smoking")
POWER_CELLS = [("wnt_activated", "atezolizumab_bevacizumab", "sorafenib"),
               ("viral", "atezolizumab_bevacizumab", "sorafenib"),
               ("pi3k_mtor_altered", "atezolizumab_bevacizumab", "lenvatinib")]


def trained_predictor(n: int, seed: int):
    """The smoke recipe trained on a fresh simulated cohort of ``n`` (own MLflow store, nothing registered)."""
    import os

    import yaml

    from response_model.modeling.train import train

    folder = Path(tempfile.mkdtemp(prefix="trial-design-model-"))
    config = yaml.safe_load((ROOT / "tests" / "data" / "train_smoke.yaml").read_text())
    config["data"]["simulate"] = {"n": n, "seed": seed}
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ.setdefault("RESPONSE_MODEL_PSEUDONYM_KEY", "benchmark-only-pseudonym-key-0123456789")
    return train(path, register=False, progress=False).bundle.predictor()


def loaded_predictor(model_uri: str):
    from response_model import tracking
    from response_model.modeling.predict import as_bundle, load_model

    tracking.configure_tracking()
    return as_bundle(load_model(model_uri)).predictor()


def truth_differences(table: CohortTable, truth: pd.DataFrame, ids: np.ndarray, memberships: dict) -> pd.DataFrame:
    """The true difference per subset × pair × endpoint over the subset's patients given either regimen."""
    rows = []
    for endpoint in ENDPOINTS:
        wide = truth.pivot_table(index="patient_id", columns="regimen", values=f"p_{endpoint}", aggfunc="first")
        wide = wide.reindex(ids)
        for arm, comparator in PAIRS:
            pair = np.isin(table.given, [arm, comparator])
            for name, membership in memberships.items():
                inside = pd.Series(membership, dtype="boolean").fillna(False).to_numpy(dtype=bool) & pair
                diff = (wide[arm].to_numpy() - wide[comparator].to_numpy())[inside]
                rows.append({"subset": name, "arm": arm, "comparator": comparator, "endpoint": endpoint,
                             "truth": float(diff.mean()) if inside.any() else np.nan})
    return pd.DataFrame(rows)


def side_by_side(effects: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: truth, each estimator's difference, the adjusted interval, coverage and |bias|."""
    keys = ["subset", "arm", "comparator", "endpoint"]
    wide = effects.pivot_table(index=keys, columns="estimator", values=["difference", "lower", "upper"],
                               aggfunc="first")
    wide.columns = [f"{est}_{what}" for what, est in wide.columns]
    out = truth.merge(wide.reset_index(), on=keys, how="left")
    out["adjusted_covers"] = (out["adjusted_lower"] <= out["truth"]) & (out["truth"] <= out["adjusted_upper"])
    out["naive_misses"] = ~((out["naive_lower"] <= out["truth"]) & (out["truth"] <= out["naive_upper"]))
    out["bias_naive"] = (out["naive_difference"] - out["truth"]).abs()
    out["bias_adjusted"] = (out["adjusted_difference"] - out["truth"]).abs()
    return out


def print_effects(cells: pd.DataFrame) -> dict:
    """Print the side-by-side table and the summary; return the summary numbers."""
    shown = cells.copy()
    shown["pair"] = shown["arm"].str.slice(0, 14) + " vs " + shown["comparator"].str.slice(0, 10)
    columns = ["subset", "pair", "endpoint", "truth", "naive_difference", "model_difference", "adjusted_difference",
               "adjusted_lower", "adjusted_upper", "adjusted_covers", "bias_naive", "bias_adjusted"]
    columns = [c for c in columns if c in shown.columns]
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_columns", 20):
        print((shown[columns].set_index(["subset", "pair", "endpoint"]) * 1).round(3).to_string())
    estimable = cells.dropna(subset=["adjusted_difference", "truth"])
    confounded = estimable[estimable["naive_misses"]]
    summary = {
        "cells": len(cells), "adjusted_estimable": len(estimable),
        "adjusted_coverage": float(estimable["adjusted_covers"].mean()),
        "mean_bias_naive": float(estimable["bias_naive"].mean()),
        "mean_bias_adjusted": float(estimable["bias_adjusted"].mean()),
        "confounded_cells": len(confounded),
        "adjusted_less_biased_where_confounded": int((confounded["bias_adjusted"] < confounded["bias_naive"]).sum()),
    }
    if "model_difference" in cells:
        summary["mean_bias_model"] = float((estimable["model_difference"] - estimable["truth"]).abs().mean())
    print(f"\nadjusted interval covers the truth in {summary['adjusted_coverage']:.1%} of "
          f"{summary['adjusted_estimable']} estimable cells (target ≥ 90 %); mean |bias| naive "
          f"{summary['mean_bias_naive']:.4f}, adjusted {summary['mean_bias_adjusted']:.4f}"
          + (f", model {summary['mean_bias_model']:.4f}" if "mean_bias_model" in summary else "")
          + f"; where the naive interval misses the truth ({summary['confounded_cells']} cells) adjusted is less "
            f"biased in {summary['adjusted_less_biased_where_confounded']}")
    return summary


def run_discovery(table: CohortTable) -> bool:
    """Print each discovery's top rules; True when every expected rule is in its top three and no BMI or
    smoking rule survives."""
    ok = True
    for arm, comparator, endpoint, expected in DISCOVERIES:
        found = discover(table, arm, comparator, endpoint)
        print("\n".join(found.lines()[:6]))
        top = found.rules.head(3)
        hit = top["rule"].str.contains(expected, regex=False).any()
        noise = found.rules[found.rules["rule"].str.contains("|".join(NO_EFFECT)) & found.rules["survives"]]
        print(f"exploratory: expected {expected!r} in the top three: {'yes' if hit else 'NO'}; "
              f"surviving BMI/smoking rules: {len(noise)}\n")
        ok &= bool(hit) and noise.empty
    return ok


def run_power(frame: pd.DataFrame, truth: pd.DataFrame, trials: int) -> pd.DataFrame:
    """Empirical vs analytic power of the designs `trials design` produces for :data:`POWER_CELLS`."""
    from response_model.trials.design import DesignSpec, simulate_power
    from response_model.trials.planning import plan_trial
    from response_model.trials.rates import truth_pool

    subsets = load_subsets()
    tables = []
    for name, arm, comparator in POWER_CELLS:
        spec = DesignSpec.with_defaults(name, arm, comparator, endpoint="objective_response")
        plan = plan_trial(frame, subsets[name], spec, truth=truth)
        pool = truth_pool(frame, truth, subsets[name], arm, comparator, "objective_response")
        table = simulate_power(plan.design, pool, n_trials=trials, seed=0)
        table.insert(0, "cell", f"{name}: {arm} vs {comparator}")
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out["gap_points"] = 100 * (out["empirical_power"] - out["analytic_power"])
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(out.round(3).to_string(index=False))
    print(f"largest |empirical − analytic| {out['gap_points'].abs().max():.1f} points (target ≤ 3)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--train-n", type=int, default=4000)
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--power-trials", type=int, default=1000)
    parser.add_argument("--skip-discover", action="store_true")
    parser.add_argument("--skip-power", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    started = time.perf_counter()
    sim = simulate_cohort(args.n, seed=args.seed)
    table = CohortTable.of(parse_cohort(sim.cohort))
    frame = rule_frame(table)
    memberships = {"all": np.ones(len(table), dtype=bool),
                   **{s.name: s.membership(frame) for s in load_subsets().values()}}
    predictor = None if args.no_model else (loaded_predictor(args.model_uri) if args.model_uri
                                            else trained_predictor(args.train_n, args.seed + 1))
    print(f"n = {args.n} simulated (seed {args.seed}); model: "
          f"{'none' if predictor is None else args.model_uri or f'smoke recipe on {args.train_n}'}; "
          f"{time.perf_counter() - started:.0f} s to here")
    estimates = estimate_effects(table, memberships, PAIRS, predictor=predictor)
    truth = truth_differences(table, sim.truth, sim.cohort["patient_id"].to_numpy(dtype=object), memberships)
    summary = print_effects(side_by_side(estimates.effects, truth))
    discovered = True if args.skip_discover else run_discovery(table)
    if not args.skip_power:
        run_power(frame, sim.truth, args.power_trials)
    coverage = "met" if summary["adjusted_coverage"] >= 0.9 else "NOT met"
    print(f"\ndone in {time.perf_counter() - started:.0f} s; coverage target {coverage}; "
          f"discovery targets {'met' if discovered else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
