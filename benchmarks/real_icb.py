"""Benchmark 6a: the project's model against published recipes on the real ICB cohort.

Run by hand from the repository root::

    python benchmarks/real_icb.py [--data ../shared/data/chowell2022_icb_train.csv] [--repeats 5]

Reads the Chowell 2022 training cohort through configs/sources/chowell2022.yaml and the one
feature function (regimen = drug class, so target_* encode the Drug column), runs 5 × 5 repeated
stratified CV with the same folds for every model, and prints a side-by-side table: the project's
model (ResponseClassifier with configs/train/chowell2022.yaml), the LORIS recipe refitted, the
RF16 recipe (random forest on its 16 features), TMB alone (continuous score) and the TMB ≥ 10 rule.
Target: AUC ≥ LORIS + 0.01 with calibration slope in [0.8, 1.2].
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin

from response_model.features import build_feature_matrix
from response_model.modeling import (
    LorisRecipe,
    ResponseClassifier,
    RF16Recipe,
    SingleMarkerRule,
    cross_validate,
    paired_difference,
    subgroup_columns,
)
from response_model.modeling.estimators import constraints_for_outcome
from response_model.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chowell2022_icb_train.csv"


class MarkerScore(ClassifierMixin, BaseEstimator):
    """A single marker as a continuous score (TMB alone): AUC of the raw value, no fitting."""

    outputs_probability = False  # rank metrics only

    def __init__(self, feature: str = "tmb"):
        self.feature = feature

    def fit(self, X, y=None):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        x = X[self.feature].to_numpy(dtype=float)
        s = np.clip(x / (1.0 + np.nanmax(np.abs(x))), 0.0, 1.0)  # rank-preserving, in [0, 1]
        return np.column_stack([1.0 - s, s])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "chowell2022.yaml"))
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outcome", default="objective_response", choices=["objective_response", "primary_resistance"])
    parser.add_argument("--subgroups", action="store_true", help="also print the project model's metrics per subgroup")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if not Path(args.data).exists():
        print(f"data file not found: {args.data}", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(Path(args.config).read_text())
    started = time.perf_counter()
    loaded = load_source(ROOT / cfg["data"]["source"], args.data)
    records, outcomes = loaded.parsed.records, loaded.parsed.outcomes
    X = build_feature_matrix(records, [o.regimen for o in outcomes])
    y = pd.Series([getattr(o, args.outcome) for o in outcomes], dtype=float)
    survival = pd.DataFrame({"time": [o.pfs_months for o in outcomes], "event": [o.pfs_event for o in outcomes]},
                            dtype=float)
    print(f"{len(records)} patients, {int(y.notna().sum())} labelled, {int(y.sum())} events "
          f"({args.outcome}); features built in {time.perf_counter() - started:.1f} s")

    params = dict(cfg["model"]["checkpoint_inhibitor"])
    params["monotone_constraints"] = constraints_for_outcome(params["monotone_constraints"], args.outcome)
    rf = cfg["baselines"]["rf16"]
    models = {
        "project (LR+LightGBM)": lambda: ResponseClassifier(**params),
        "LORIS recipe": lambda: LorisRecipe(**cfg["baselines"]["loris"]),
        "RF16 recipe": lambda: RF16Recipe(**rf, random_state=0, n_jobs=1),
        "TMB alone": lambda: MarkerScore("tmb"),
        "TMB ≥ 10 rule": lambda: SingleMarkerRule("tmb", 10.0),
    }
    result = cross_validate(X, y, groups_for_subgroups=subgroup_columns(records), models=models,
                            n_splits=args.splits, n_repeats=args.repeats, seed=args.seed,
                            survival=survival if args.outcome == "primary_resistance" else None, progress=True)
    metrics = ("auc", "calibration_slope", "calibration_intercept", "brier")
    if args.outcome == "primary_resistance":
        metrics += ("c_index",)
    table = result.table(metrics=metrics, reference="LORIS recipe")
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"\n{args.splits} × {args.repeats} repeated stratified CV (seed {args.seed}); "
              "mean [2.5th, 97.5th percentile over folds]\n")
        print(table.to_string())
    d = paired_difference(result, "project (LR+LightGBM)", "LORIS recipe", "auc")
    slope = result.summary().loc["project (LR+LightGBM)", "calibration_slope"]
    print(f"\nproject − LORIS: ΔAUC {d['mean']:+.4f} (normal 95 % {d['se_lower']:+.4f} … {d['se_upper']:+.4f}; "
          f"better in {d['share_positive']:.0%} of folds); slope {slope:.2f}")
    ok = d["mean"] >= 0.01 and 0.8 <= slope <= 1.2
    print(f"target (ΔAUC ≥ +0.01, slope in [0.8, 1.2]): {'MET' if ok else 'NOT MET'}")
    if args.subgroups:
        sub = result.subgroups("project (LR+LightGBM)")
        groups = {k: v for k, v in result.groups.items() if k in ("sex", "age_band", "cancer_type")}
        sub = sub[sub["subgroup"].isin(groups)]
        with pd.option_context("display.width", 200):
            print("\nproject model per subgroup (out-of-fold predictions, mean over repeats):")
            print(sub[["subgroup", "level", "n", "events", "auc", "calibration_slope", "brier"]]
                  .round(3).to_string(index=False))
    print("seconds per model: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
