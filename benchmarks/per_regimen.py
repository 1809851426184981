"""Benchmark: per-regimen discrimination and calibration, and the share of regimens meeting the gate,
before and after letting small regimens borrow strength from their class and mechanism.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/per_regimen.py [--n 5000] [--seeds 42 11] [--repeats 2] [--variants default borrow]

For each simulation seed a cohort of ``--n`` patients is simulated (the default simulated cohort of
``configs/train/default.yaml``, only the seed changes), and per regimen class × outcome the project's
:class:`ResponseClassifier` is cross-validated exactly as training does (``cross_validate``: repeated
stratified 5-fold, ``--repeats`` repeats, CV seed of the config; nested search off — its parameters are
the config's defaults) under each variant:

* ``default`` — the parameters of ``configs/train/default.yaml``;
* ``borrow`` — the same, but LightGBM does not see the regimen one-hot columns (``regimen_*``): the
  trees model the patient × class/mechanism (``class_*``, ``target_*``) structure shared by every
  regimen of a mechanism, and a regimen's own level comes only from the penalised logistic part, whose
  L2 penalty shrinks it towards its mechanism — a small regimen borrows strength from its class;
* ``regularised`` — ``borrow`` with stronger regularisation (logistic C 0.03, LightGBM
  min_child_samples 100, reg_lambda 20): fewer spurious patient effects in small, low-signal regimens;
* ``trees_regularised`` — the default features (regimen one-hots kept) with only LightGBM regularised
  more (min_child_samples 100, reg_lambda 20): a regimen keeps its own level, its patients' effects are
  shrunk;
* ``mechanism`` — neither part sees ``regimen_*``: a regimen is its class and targets only.

``oracle`` is the AUC of the simulator's true probability of the regimen received on the same patients:
what any model could reach within the regimen (within a TKI regimen the true probability of response
barely varies, so no model can discriminate there).

Per regimen × outcome the table gives n, events, AUC and calibration slope / intercept of the
out-of-fold predictions with 95 % bootstrap intervals (:mod:`response_model.modeling.regimen_validation`,
the same code training uses) and whether the regimen meets ``gate.per_regimen`` of the config; the
summary gives, per seed and variant, the share of regimens meeting the per-regimen gate and whether the
pooled gate (``check_gate`` on the class-level CV summary) passes.
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

from response_model.dataset import parse_cohort
from response_model.features import build_feature_matrix, feature_names
from response_model.modeling.cv import cross_validate
from response_model.modeling.estimators import ResponseClassifier
from response_model.modeling.regimen_validation import regimen_decisions, regimen_metrics
from response_model.modeling.registry import check_gate
from response_model.modeling.train import OUTCOMES, _model_params
from response_model.regimens import candidate_regimens, load_catalogue
from response_model.sources.simulator import simulate_cohort
from response_model.tracking import metric_key

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "borrow", "regularised", "trees_regularised", "mechanism")


def variant_params(params: dict, variant: str) -> dict:
    """The ResponseClassifier parameters of ``variant`` (see the module docstring)."""
    without_regimen = [c for c in feature_names() if not c.startswith("regimen_")]
    if variant == "default":
        return params
    if variant == "borrow":
        return {**params, "gbm_features": without_regimen}
    if variant == "regularised":
        return {**params, "gbm_features": without_regimen, "C": 0.03, "min_child_samples": 100, "reg_lambda": 20.0}
    if variant == "trees_regularised":
        return {**params, "min_child_samples": 100, "reg_lambda": 20.0}
    if variant == "mechanism":
        return {**params, "gbm_features": without_regimen, "linear_features": without_regimen}
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def oracle_auc(frame: pd.DataFrame, truth: pd.Series, outcome: str) -> dict[str, float]:
    """{regimen: AUC of the true probability of the regimen received} over its labelled patients."""
    from response_model.modeling.regimen_validation import _auc

    out = {}
    for regimen, part in frame.groupby("regimen"):
        keep = part[outcome].notna()
        out[regimen] = _auc(part.loc[keep, outcome].to_numpy(dtype=int), truth[part.index][keep].to_numpy())
    return out


def run_seed(config: dict, n: int, seed: int, variants: list[str], repeats: int) -> tuple[list[dict], list[dict]]:
    """(per-regimen rows, per-variant summary rows) of one simulated cohort."""
    simulation = simulate_cohort(n, seed)
    parsed = parse_cohort(simulation.cohort)
    frame = parsed.frame()
    given = simulation.truth[simulation.truth["given"]].set_index("patient_id")
    oracle = {o: oracle_auc(frame, frame["patient_id"].map(given[f"p_{o}"]), o) for o in OUTCOMES}
    X_all = build_feature_matrix(parsed.records, frame["regimen"].tolist())
    catalogue = load_catalogue()
    classes = frame["regimen"].map(lambda r: catalogue[r].regimen_class)
    gate = {k: v for k, v in config["gate"].items() if k not in ("not_worse_than_champion", "per_regimen")}
    per_regimen = config["gate"].get("per_regimen")
    rows, summary = [], []
    for variant in variants:
        metrics: dict[str, dict] = {o: {} for o in OUTCOMES}
        pooled: dict[str, float] = {}
        for regimen_class in config["regimen_classes"]:
            in_class = classes == regimen_class
            for outcome in OUTCOMES:
                y = frame.loc[in_class, outcome].astype(float)
                model = ResponseClassifier(**variant_params(_model_params(config, regimen_class, outcome), variant))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = cross_validate(X_all[in_class], y, models={"project": model}, n_splits=5,
                                            n_repeats=repeats, seed=int(config["cv"]["seed"]), progress=False)
                metrics[outcome].update(regimen_metrics(result, frame.loc[in_class, "regimen"]))
                for metric, value in result.summary().loc["project"].drop("n").dropna().items():
                    pooled[metric_key(outcome, regimen_class, metric)] = float(value)
        names = [r.name for r in candidate_regimens() if r.regimen_class in config["regimen_classes"]]
        decisions = regimen_decisions(metrics, names, per_regimen)
        passed, _ = check_gate(pooled, gate)
        for regimen, decision in decisions.items():
            for outcome, entry in decision["outcomes"].items():
                rows.append({"seed": seed, "variant": variant, "regimen": regimen, "outcome": outcome, **entry,
                             "oracle": oracle[outcome].get(regimen), "status": decision["status"]})
        meets = sum(d["status"] == "validated" for d in decisions.values())
        summary.append({"seed": seed, "variant": variant, "regimens_meeting_gate": f"{meets}/{len(decisions)}",
                        "share": meets / len(decisions), "pooled_gate": "passes" if passed else "fails",
                        **{k.replace("response.", "resp.").replace("resistance.", "resist.")
                           .replace("checkpoint_inhibitor", "ICI").replace("tki_antiangiogenic", "TKI"): v
                           for k, v in pooled.items() if k.endswith((".auc_lower", ".calibration_slope"))}})
    return rows, summary


def _cell(mean: float, lower: float, upper: float) -> str:
    return "—" if pd.isna(mean) else f"{mean:.2f} [{lower:.2f}, {upper:.2f}]"


def print_tables(rows: pd.DataFrame, summary: pd.DataFrame, per_regimen: dict) -> None:
    table = rows[["seed", "variant", "regimen", "outcome", "n", "events", "oracle", "status"]].copy()
    table["oracle"] = table["oracle"].round(2)
    table["outcome"] = table["outcome"].map({"objective_response": "response", "primary_resistance": "resistance"})
    for metric, short in (("auc", "AUC"), ("calibration_slope", "slope"), ("calibration_in_the_large", "CITL")):
        table[short] = [_cell(m, lo, hi) for m, lo, hi in
                        zip(rows[metric], rows[f"{metric}_lower"], rows[f"{metric}_upper"])]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 1000,
                           "display.float_format", "{:.3f}".format):
        for seed, part in table.groupby("seed", sort=False):
            print(f"\nseed {seed}: per regimen × outcome, out-of-fold (mean over repeats [95 % bootstrap])\n")
            wide = part.pivot_table(index=["regimen", "outcome", "n", "events", "oracle"], columns="variant",
                                    values=["AUC", "slope", "CITL", "status"], aggfunc="first", sort=False)
            print(wide.to_string())
        print(f"\nper-regimen gate (configs/train/default.yaml gate.per_regimen): {per_regimen}")
        print("\nsummary: share of regimens meeting the per-regimen gate, pooled gate, pooled auc_lower / slope\n")
        print(summary.drop(columns="share").to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 11])
    parser.add_argument("--repeats", type=int, default=2, help="CV repeats (training uses the config's, 5)")
    parser.add_argument("--variants", nargs="+", default=["default", "borrow", "regularised", "trees_regularised"])
    parser.add_argument("--save", default=None, help="also write the per-regimen rows to this CSV")
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = yaml.safe_load(Path(args.config).read_text())
    started = time.perf_counter()
    rows, summary = [], []
    for seed in args.seeds:
        found, totals = run_seed(config, args.n, seed, args.variants, args.repeats)
        rows += found
        summary += totals
        print(f"seed {seed}: done; {time.perf_counter() - started:.0f} s", flush=True)
    if args.save:
        pd.DataFrame(rows).to_csv(args.save, index=False)
    print_tables(pd.DataFrame(rows), pd.DataFrame(summary), config["gate"].get("per_regimen"))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
