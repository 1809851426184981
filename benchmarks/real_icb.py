"""Benchmark 6a: the project's model against the published LORIS formula and refitted recipes on the real ICB cohort.

Run by hand from the repository root::

    python benchmarks/real_icb.py [--data ../shared/data/chowell2022_icb_train.csv] [--repeats 5] [--seed 0]
                                  [--cv-seeds 20]

Reads the Chowell 2022 training cohort through configs/sources/chowell2022.yaml and the one
feature function (regimen = drug class, so target_* encode the Drug column), runs repeated
stratified CV with the same folds for every model (the project's nested search inside each
training fold when configs/train/chowell2022.yaml enables it), and prints two side-by-side tables:
the published LORIS formula (Chang et al. 2024, not refitted: in-sample on this cohort, so a
flattered opponent), the LORIS recipe refitted per fold, the RF16 recipe, TMB alone, the TMB ≥ 10
rule and the project's model (configs/train/chowell2022.yaml) — first with every column, then with
the columns external cohorts lack (``--hide``) set missing in the test folds only. ΔAUC is paired
by fold against the published formula. Target: ΔAUC ≥ +0.01 with calibration slope in [0.8, 1.2],
in both tables.

One CV seed's ΔAUC moves by about ±0.002 with the split alone, which is the size of the margin, so
``--cv-seeds K`` then repeats the project-against-published comparison alone (the fast pair) over
the CV seeds ``--seed`` … ``--seed`` + K − 1, complete and without the external-cohort columns, and
prints the distribution of ΔAUC over seeds. The seeds split one cohort, so they are not
independent replicates: the spread is that of the CV split, not of a new cohort.
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
    PublishedLoris,
    ResponseClassifier,
    RF16Recipe,
    SingleMarkerRule,
    cross_validate,
    paired_difference,
    subgroup_columns,
)
from response_model.modeling.train import _model_params
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


#: Columns the larger held-out external cohort lacks (issue 13): BMI, stage, haemoglobin, MSI, HLA-LOH,
#: HED, PD-L1 — as feature columns.
EXTERNAL_MISSING = ("bmi", "stage_iv", "haemoglobin", "msi_high", "hla_loh", "hed", "pdl1_tps")
PROJECT = "project"
PUBLISHED = "LORIS published"
METRICS = ("auc", "calibration_slope", "calibration_intercept", "brier")


def candidate_models(cfg: dict, outcome: str) -> dict:
    """The unfitted models compared, by display name (the project's parameters from the training config)."""
    params = _model_params(cfg, "checkpoint_inhibitor", outcome)  # as training reads them (per-outcome overrides)
    baselines = cfg["baselines"]
    return {
        PUBLISHED: PublishedLoris(**{**(baselines.get("loris_published") or {}), "outcome": outcome}),
        "LORIS recipe refitted": LorisRecipe(**baselines["loris"]),
        "RF16 recipe": RF16Recipe(**baselines["rf16"], random_state=0, n_jobs=1),
        "TMB alone": MarkerScore("tmb"),
        "TMB ≥ 10 rule": SingleMarkerRule("tmb", 10.0),
        PROJECT: ResponseClassifier(**params),
    }


def load_cohort(cfg: dict, data: str, outcome: str) -> tuple:
    """(records, feature matrix, outcome labels, PFS frame) of the cohort file read through the config's source."""
    loaded = load_source(ROOT / cfg["data"]["source"], data)
    records, outcomes = loaded.parsed.records, loaded.parsed.outcomes
    X = build_feature_matrix(records, [o.regimen for o in outcomes])
    y = pd.Series([getattr(o, outcome) for o in outcomes], dtype=float)
    survival = pd.DataFrame({"time": [o.pfs_months for o in outcomes], "event": [o.pfs_event for o in outcomes]},
                            dtype=float)
    return records, X, y, survival


def report(result, title: str, metrics: tuple[str, ...]) -> bool:
    """Print one side-by-side table and the project's paired ΔAUC against the published formula; return
    whether the target is met."""
    table = result.table(metrics=metrics, reference=PUBLISHED)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"\n{title}\n")
        print(table.to_string())
    d = paired_difference(result, PROJECT, PUBLISHED, "auc")
    slope = result.summary().loc[PROJECT, "calibration_slope"]
    ok = d["mean"] >= 0.01 and 0.8 <= slope <= 1.2
    print(f"project − published LORIS: ΔAUC {d['mean']:+.4f} (fold percentiles {d['lower']:+.4f} … {d['upper']:+.4f}; "
          f"normal 95 % of the mean {d['se_lower']:+.4f} … {d['se_upper']:+.4f}; better in {d['share_positive']:.0%} "
          f"of folds); calibration slope {slope:.2f} → target (ΔAUC ≥ +0.01, slope in [0.8, 1.2]) "
          f"{'MET' if ok else 'NOT MET'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "chowell2022.yaml"))
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outcome", default="objective_response", choices=["objective_response", "primary_resistance"])
    parser.add_argument("--hide", default=",".join(EXTERNAL_MISSING),
                        help="feature columns set missing in the test folds of the second table (comma-separated)")
    parser.add_argument("--subgroups", action="store_true", help="also print the project model's metrics per subgroup")
    parser.add_argument("--cv-seeds", type=int, default=0,
                        help="then repeat project vs published over this many CV seeds (0 = off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if not Path(args.data).exists():
        print(f"data file not found: {args.data}", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(Path(args.config).read_text())
    started = time.perf_counter()
    records, X, y, survival = load_cohort(cfg, args.data, args.outcome)
    print(f"{len(records)} patients, {int(y.notna().sum())} labelled, {int(y.sum())} events "
          f"({args.outcome}); features built in {time.perf_counter() - started:.1f} s")
    search = cfg.get("search") if (cfg.get("search") or {}).get("enabled") else None
    if search:
        search = {**search, "models": [PROJECT]}
        print(f"project: nested {search.get('method', 'random')} search inside each training fold over "
              f"{dict(search['space'])} ({search.get('inner_splits', 3)} inner folds, {search.get('scoring')})")
    metrics = METRICS + (("c_index",) if args.outcome == "primary_resistance" else ())
    hidden = [c for c in args.hide.split(",") if c]
    verdicts = []
    for hide, label in (((), "every column"), (hidden, f"test folds without {', '.join(hidden)}")):
        result = cross_validate(X, y, groups_for_subgroups=subgroup_columns(records),
                                models=candidate_models(cfg, args.outcome), n_splits=args.splits,
                                n_repeats=args.repeats, seed=args.seed, search=search,
                                survival=survival if args.outcome == "primary_resistance" else None,
                                progress=True, hide_in_test=hide)
        verdicts.append(report(result, f"{args.splits} × {args.repeats} repeated stratified CV (seed {args.seed}), "
                               f"{label}; mean [2.5th, 97.5th percentile over folds]", metrics))
        chosen = result.folds.loc[result.folds["model"] == PROJECT, "params"].dropna()
        if len(chosen):
            print("parameters chosen in the folds: "
                  + ", ".join(f"{k} × {v}" for k, v in chosen.map(lambda p: str(p)).value_counts().items()))
        print("seconds per model: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
        if args.subgroups and not hide:
            print_subgroups(result)
    print(f"\ntarget verdict: {'MET' if all(verdicts) else 'NOT MET'} "
          f"(complete: {'met' if verdicts[0] else 'not met'}; without external-cohort columns: "
          f"{'met' if verdicts[1] else 'not met'})")
    if args.cv_seeds:
        lead_over_seeds(cfg, X, y, args, hidden, search)
    return 0


def lead_over_seeds(cfg: dict, X: pd.DataFrame, y: pd.Series, args, hidden: list[str], search: dict | None) -> None:
    """Print the project's ΔAUC against the published formula (mean over each seed's folds) for
    ``args.cv_seeds`` CV seeds, complete and with ``hidden`` missing in the test folds."""
    models = candidate_models(cfg, args.outcome)
    pair = {PUBLISHED: models[PUBLISHED], PROJECT: models[PROJECT]}
    seeds = range(args.seed, args.seed + args.cv_seeds)
    print(f"\nproject − published LORIS over CV seeds {seeds.start}–{seeds.stop - 1} "
          f"({args.splits} × {args.repeats} each; mean ΔAUC of each seed's folds)")
    for hide, label in (((), "every column"), (hidden, "without external-cohort columns")):
        leads = np.array([paired_difference(cross_validate(X, y, models=pair, n_splits=args.splits,
                                                           n_repeats=args.repeats, seed=seed, search=search,
                                                           progress=False, hide_in_test=hide),
                                            PROJECT, PUBLISHED, "auc")["mean"] for seed in seeds])
        print(f"  {label}: mean {leads.mean():+.4f}, SD {leads.std(ddof=1) if len(leads) > 1 else 0.0:.4f}, "
              f"range {leads.min():+.4f} … {leads.max():+.4f}; ≥ +0.01 on {int((leads >= 0.01).sum())} of "
              f"{len(leads)} seeds")


def print_subgroups(result) -> None:
    """Print the project model's out-of-fold metrics per sex, age band and cancer type."""
    sub = result.subgroups(PROJECT)
    sub = sub[sub["subgroup"].isin(("sex", "age_band", "cancer_type"))]
    with pd.option_context("display.width", 200):
        print("\nproject model per subgroup (out-of-fold predictions, mean over repeats):")
        print(sub[["subgroup", "level", "n", "events", "auc", "calibration_slope", "brier"]]
              .round(3).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
