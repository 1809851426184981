"""Benchmark 6c: the value of genomic testing — the same models with and without the genomic features.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/genomics_value.py [--n 5000] [--splits 5] [--repeats 2]
        [--real-config configs/train/chowell2022.yaml] [--real-data ../shared/data/chowell2022_icb_train.csv]

For each cohort, regimen class and outcome, repeated stratified CV (default 5 × 2, the same folds
for every model) compares the project's :class:`ResponseClassifier` with the settings of the
cohort's training config

* **with genomics**: every feature of the config, and
* **without genomics**: the same model with the genomic features removed from both of its parts
  (``linear_features`` / ``gbm_features``): the pathway flags, ``n_alterations``, ``genotyped``,
  ``tmb``, ``msi_high``, ``fcna``, ``hla_loh``, ``hed``.

Cohorts: a simulated HCC cohort (``configs/train/default.yaml``; the oracle — the true
probabilities of the regimen received — is shown as the ceiling, and the simulator says which
genomic effects exist: WNT activation for checkpoint inhibitors, PI3K–mTOR for TKIs, VEGFA
amplification for sorafenib; TMB has none) and the real Chowell 2022 checkpoint-inhibitor cohort
(``configs/train/chowell2022.yaml``; genomic features there: tmb, msi_high, fcna, hla_loh, hed),
skipped with a message when the file is absent. Printed: AUC with the 95 % fold interval for both
models, the fold-paired ΔAUC (with − without) with its percentile interval over folds and a normal
interval, and the share of folds where genomics helped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml

from response_model.modeling.baselines import Oracle
from response_model.modeling.cv import cross_validate, paired_difference
from response_model.modeling.estimators import ResponseClassifier, select_features
from response_model.modeling.train import OUTCOMES, _model_params, load_training_data
from response_model.pathways import load_pathways
from response_model.regimens import load_catalogue

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "chowell2022_icb_train.csv"
WITH, WITHOUT, ORACLE = "with genomics", "without genomics", "oracle"


def genomic_features() -> list[str]:
    """Return the genomic feature names: pathway flags, alteration count, genotyped, TMB, MSI, FCNA, HLA LOH, HED."""
    return [p.name for p in load_pathways()] + ["n_alterations", "genotyped", "tmb", "msi_high", "fcna",
                                                 "hla_loh", "hed"]


def without_genomics(params: dict, columns: list[str]) -> dict:
    """Return ``params`` with the genomic features removed from both parts of the model."""
    genomic = set(genomic_features())
    out = dict(params)
    for key in ("linear_features", "gbm_features"):
        chosen = select_features(columns, params.get(key), key)
        out[key] = [c for c in chosen if c not in genomic]
    return out


def compare(config: dict, data, splits: int, repeats: int, seed: int) -> list[dict]:
    """Return one row per regimen class × outcome of ``config`` with the with/without comparison."""
    catalogue = load_catalogue()
    classes = data.frame["regimen"].map(lambda r: catalogue[r].regimen_class if r else None)
    enabled = [o for o in OUTCOMES if config["outcomes"].get(o, {}).get("enabled", False)]
    present = [c for c in genomic_features() if c in data.features and data.features[c].notna().any()]
    rows = []
    for regimen_class in config["regimen_classes"]:
        idx = classes.index[classes == regimen_class]
        if len(idx) == 0:
            continue
        X = data.features.loc[idx]
        for outcome in enabled:
            y = data.frame.loc[idx, outcome].astype(float)
            if y.dropna().nunique() < 2:
                continue
            params = _model_params(config, regimen_class, outcome)
            models = {WITH: ResponseClassifier(**params),
                      WITHOUT: ResponseClassifier(**without_genomics(params, list(X.columns)))}
            if data.truth is not None:
                given = data.truth[data.truth["given"]].set_index("patient_id")[f"p_{outcome}"]
                models[ORACLE] = Oracle(truth=pd.Series(data.frame.loc[idx, "patient_id"].map(given)
                                                        .to_numpy(dtype=float), index=idx))
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constraints naming a dropped feature are ignored, with a warning
                result = cross_validate(X, y, models=models, n_splits=splits, n_repeats=repeats, seed=seed,
                                        progress=False)
            summary = result.summary()
            d = paired_difference(result, WITH, WITHOUT, "auc")
            row = {"cohort": data.source_label, "class": regimen_class, "outcome": outcome,
                   "n": int(y.notna().sum()), "events": int(y.sum()),
                   "genomic features": ", ".join(present) if len(present) <= 6 else f"{len(present)} columns"}
            for name in (WITH, WITHOUT, ORACLE):
                if name in summary.index:
                    s = summary.loc[name]
                    row[f"AUC {name}"] = f"{s['auc']:.3f} [{s['auc_lower']:.3f}, {s['auc_upper']:.3f}]"
            row["ΔAUC with − without [fold 95 %]"] = f"{d['mean']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]"
            row["ΔAUC normal 95 %"] = f"[{d['se_lower']:+.3f}, {d['se_upper']:+.3f}]"
            row["folds better"] = f"{d['share_positive']:.0%}"
            rows.append(row)
            print(f"{data.source_label} {regimen_class}/{outcome}: ΔAUC {d['mean']:+.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="simulated cohort size")
    parser.add_argument("--sim-seed", type=int, default=2026)
    parser.add_argument("--sim-config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    parser.add_argument("--real-config", default=str(ROOT / "configs" / "train" / "chowell2022.yaml"))
    parser.add_argument("--real-data", default=str(DEFAULT_REAL))
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-simulated", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    rows: list[dict] = []
    if not args.skip_simulated:
        config = yaml.safe_load(Path(args.sim_config).read_text())
        config["data"] = {**config["data"], "path": None, "simulate": {"n": args.n, "seed": args.sim_seed}}
        data = load_training_data(config)
        data.source_label = f"simulated (n={args.n})"
        rows += compare(config, data, args.splits, args.repeats, args.seed)
    if not args.skip_real:
        if not Path(args.real_data).exists():
            print(f"real cohort skipped: {args.real_data} not found", file=sys.stderr)
        else:
            config = yaml.safe_load(Path(args.real_config).read_text())
            config["data"] = {**config["data"], "source": str(ROOT / config["data"]["source"])}
            data = load_training_data(config, args.real_data)
            data.source_label = f"Chowell 2022 ICB (n={len(data.frame)})"
            rows += compare(config, data, args.splits, args.repeats, args.seed)
    if not rows:
        print("nothing to compare", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 300, "display.max_columns", 30, "display.max_colwidth", 60):
        print(f"\nvalue of genomic testing: the project's model with and without the genomic features, "
              f"{args.splits} × {args.repeats} repeated stratified CV (seed {args.seed}, same folds); "
              "AUC mean [2.5th, 97.5th percentile over folds]\n")
        print(table.drop(columns=["genomic features"]).to_string(index=False))
        print("\ngenomic features present per cohort: " + "; ".join(
            f"{c}: {g}" for c, g in table.groupby("cohort", sort=False)["genomic features"].first().items()))
    print("removed when 'without': " + ", ".join(genomic_features()) + " (where present). Simulated truth: "
          "genomic effects on response are WNT activation (checkpoint inhibitors, log-odds −1.5), PI3K–mTOR "
          "(TKIs, −0.7) and VEGFA amplification (sorafenib, +0.4); TMB has none (configs/simulator.yaml); "
          "25 % of simulated patients are not genotyped.")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
