"""Benchmark (issue 13): estimates when inputs are missing — today's model (missingness augmentation
off) beside the configured one (augmentation on), trained on the same simulated cohort and scored on
the same simulated test cohort.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/missing_inputs.py [--train-n 5000] [--test-n 50000] [--ceiling-n 50000] [--quick]

The test cohort is as large as ``benchmarks/simulated.py``'s (50,000 patients, seed 4243), because the
gaps to the ceiling compared here are about 0.01 and 5,000 test patients move them by about that much.
Before 2026-12-03 the default was 5,000 patients, seed 999: ``--test-n 5000 --test-seed 999`` repeats it.

Per regimen class × outcome both models are fitted with the settings of ``configs/train/default.yaml``
(no search, no MLflow); "off" is the same settings with ``missing_copies: 0``.

* **Required fields only**: every test patient with only age and sex (and the default cancer type)
  scored under every candidate regimen; per regimen, the mean predicted probability of response beside
  the simulator's population mean true probability for that regimen (the mean over all test patients of
  ``truth.p_objective_response``; target ±3 points).
* **The same over further training draws** (``--draws``, seeds ``--seed`` + 1 …): per regimen the mean
  error (bias), its SD across draws (noise) and the binomial SE of the regimen's response rate in one
  training cohort of that size — with a few hundred patients per regimen the noise alone is about 2 points,
  so a single draw's ±3-point table mixes bias with chance.
* **Each optional field hidden with probability 1/2** (independently, on top of the cohort's own
  missingness): calibration slope (target 0.85–1.15) and AUC against the observed outcome of the regimen
  received, beside an **observed-data ceiling fitted on the same hiding pattern**: LightGBM regressing
  the *true* probability of the regimen received (cross-entropy objective) on the features of
  ``--ceiling-n`` simulated patients with the same independent hiding — an estimate of
  E[p | what is observed], the best calibrated prediction from the hidden records (an estimate from
  finite data, not a bound). Target: AUC within 0.02 of it. The same table on the test cohort as
  simulated (no extra hiding) shows what augmentation costs complete records.

Sections are functions of :class:`Context` listed in :data:`SECTIONS`. The issue's other two
measurements have benchmarks of their own, as they need a trained bundle rather than bare learners:
interval coverage of the true probability for complete and sparse patients in
``benchmarks/intervals.py``, the explanation checks on grouped and per-feature values in
``benchmarks/explanations.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from response_model.dataset import parse_cohort
from response_model.features import build_feature_matrix, hide_fields, hideable_fields
from response_model.modeling.estimators import ResponseClassifier
from response_model.modeling.metrics import binary_metrics
from response_model.modeling.missingness import mask_fields
from response_model.modeling.train import _model_params
from response_model.regimens import candidate_regimens
from response_model.schema import OUTCOMES
from response_model.sources.simulator import simulate_cohort

ROOT = Path(__file__).resolve().parents[1]
TARGET_POINTS, TARGET_SLOPE, TARGET_AUC_GAP = 0.03, (0.85, 1.15), 0.02
HIDE_RATE = 0.5


@dataclass
class Cohort:
    """A simulated cohort: parsed records, canonical table, features of the regimen received, truth."""

    records: list
    frame: pd.DataFrame
    X: pd.DataFrame
    regimen_class: pd.Series
    truth: pd.DataFrame

    def given_truth(self, outcome: str) -> np.ndarray:
        given = self.truth[self.truth["given"]].set_index("patient_id")[f"p_{outcome}"]
        return self.frame["patient_id"].map(given).to_numpy(dtype=float)


def load_cohort(n: int, seed: int) -> Cohort:
    """Simulate ``n`` patients (seeded); features through the one feature function."""
    sim = simulate_cohort(n, seed)
    parsed = parse_cohort(sim.cohort)
    frame = parsed.frame()
    X = build_feature_matrix(parsed.records, frame["regimen"].tolist())
    classes = {r.name: r.regimen_class for r in candidate_regimens()}
    return Cohort(parsed.records, frame, X, frame["regimen"].map(classes), sim.truth)


def independent_hiding(n: int, seed: int) -> dict[str, np.ndarray]:
    """{optional field: rows hidden}, each field hidden with probability :data:`HIDE_RATE`."""
    rng = np.random.default_rng(seed)
    return {f: rng.random(n) < HIDE_RATE for f in hideable_fields()}


def _fit(train: Cohort, config: dict, regimen_class: str, outcome: str, extra: dict) -> ResponseClassifier:
    """The configured model of ``regimen_class`` × ``outcome`` (``extra`` overrides parameters), fitted."""
    y = train.frame[outcome].astype(float)
    keep = (train.regimen_class == regimen_class) & y.notna()
    params = {**_model_params(config, regimen_class, outcome), **extra}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ResponseClassifier(**params).fit(train.X[keep], y[keep].astype(int))


def fit_pair(train: Cohort, config: dict) -> dict[str, dict[tuple[str, str], ResponseClassifier]]:
    """{"off" | "on": {(class, outcome): model}}: the config's settings without and with augmentation."""
    models: dict[str, dict] = {"off": {}, "on": {}}
    seconds = {"off": 0.0, "on": 0.0}
    for regimen_class in config["regimen_classes"]:
        for outcome in OUTCOMES:
            for name, extra in (("off", {"missing_copies": 0}), ("on", {})):
                started = time.perf_counter()
                models[name][(regimen_class, outcome)] = _fit(train, config, regimen_class, outcome, extra)
                seconds[name] += time.perf_counter() - started
    print(f"fit time: off {seconds['off']:.1f} s, on {seconds['on']:.1f} s "
          f"(factor {seconds['on'] / max(seconds['off'], 1e-9):.1f})", flush=True)
    return models


def fit_ceiling(cohort: Cohort, X: pd.DataFrame, regimen_classes: list[str], seed: int) -> dict:
    """E[true p of the regimen received | features ``X``] per class × outcome (LightGBM, cross-entropy)."""
    from lightgbm import LGBMRegressor

    out = {}
    for regimen_class in regimen_classes:
        rows = (cohort.regimen_class == regimen_class).to_numpy()
        for outcome in OUTCOMES:
            model = LGBMRegressor(objective="cross_entropy", n_estimators=600, learning_rate=0.03, num_leaves=15,
                                  min_child_samples=100, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                  reg_lambda=1.0, random_state=seed, n_jobs=1, verbose=-1)
            out[(regimen_class, outcome)] = model.fit(X[rows], cohort.given_truth(outcome)[rows])
    return out


@dataclass
class Context:
    """What every section reads: the cohorts, both model sets, the hidden test features and ceilings."""

    args: argparse.Namespace
    config: dict
    train: Cohort
    test: Cohort
    models: dict[str, dict[tuple[str, str], ResponseClassifier]]
    test_hidden: pd.DataFrame          # test features with each optional field hidden w.p. 1/2
    ceiling_hidden: dict | None        # ceiling fitted on the same hiding pattern
    ceiling_natural: dict | None       # ceiling on the cohort as simulated


def required_only(ctx: Context) -> pd.DataFrame:
    """Per regimen: mean predicted response of the required-fields-only patients, off / on, vs the truth."""
    sparse = [hide_fields(r, hideable_fields()) for r in ctx.test.records]
    population = ctx.test.truth.groupby("regimen")["p_objective_response"].mean()
    rows = []
    for regimen in candidate_regimens():
        key = (regimen.regimen_class, "objective_response")
        if key not in ctx.models["off"]:
            continue
        X = build_feature_matrix(sparse, regimen.name)
        row = {"regimen": regimen.name, "class": regimen.regimen_class, "true_mean": float(population[regimen.name])}
        for name in ("off", "on"):
            row[f"mean_{name}"] = float(ctx.models[name][key].predict_proba(X)[:, 1].mean())
            row[f"error_{name}"] = row[f"mean_{name}"] - row["true_mean"]
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in ("off", "on"):
        table[f"within ±{TARGET_POINTS * 100:.0f} pts ({name})"] = table[f"error_{name}"].abs() <= TARGET_POINTS
    return table


def required_only_draws(ctx: Context) -> pd.DataFrame:
    """Per regimen, over ``--draws`` further training cohorts (seeds ``--seed`` + 1 …): the mean and SD of the
    required-fields-only error (bias and noise), beside the binomial SE of the regimen's observed response
    rate in one training cohort — the noise no estimate from that cohort's outcomes can avoid."""
    if ctx.args.draws < 1:
        return pd.DataFrame()
    sparse = [hide_fields(r, hideable_fields()) for r in ctx.test.records]
    population = ctx.test.truth.groupby("regimen")["p_objective_response"].mean()
    errors: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for draw in range(1, ctx.args.draws + 1):
        train = load_cohort(ctx.args.train_n, ctx.args.seed + draw)
        models = {c: _fit(train, ctx.config, c, "objective_response", {}) for c in ctx.config["regimen_classes"]}
        for regimen in candidate_regimens():
            if regimen.regimen_class not in models:
                continue
            X = build_feature_matrix(sparse, regimen.name)
            mean = float(models[regimen.regimen_class].predict_proba(X)[:, 1].mean())
            errors.setdefault(regimen.name, []).append(mean - float(population[regimen.name]))
            counts.setdefault(regimen.name, []).append(int((train.frame["regimen"] == regimen.name).sum()))
        print(f"required fields only: training draw {draw}/{ctx.args.draws} done", flush=True)
    rows = []
    for name, found in errors.items():
        p, n = float(population[name]), float(np.mean(counts[name]))
        rows.append({"regimen": name, "train_patients": n, "mean_error": float(np.mean(found)),
                     "sd_error": float(np.std(found, ddof=1)) if len(found) > 1 else np.nan,
                     "binomial_se": float(np.sqrt(p * (1 - p) / n)) if n else np.nan,
                     "share_within_3": float(np.mean(np.abs(found) <= TARGET_POINTS))})
    return pd.DataFrame(rows)


def _discrimination(ctx: Context, X: pd.DataFrame, ceiling: dict | None, label: str) -> pd.DataFrame:
    rows = []
    for (regimen_class, outcome) in ctx.models["off"]:
        y = ctx.test.frame[outcome].astype(float)
        keep = ((ctx.test.regimen_class == regimen_class) & y.notna()).to_numpy()
        yy = y.to_numpy()[keep].astype(int)
        row = {"test records": label, "class": regimen_class, "outcome": outcome, "n_test": int(keep.sum())}
        for name in ("off", "on"):
            metrics = binary_metrics(yy, ctx.models[name][(regimen_class, outcome)].predict_proba(X[keep])[:, 1])
            row[f"auc_{name}"], row[f"slope_{name}"] = metrics["auc"], metrics["calibration_slope"]
        if ceiling is not None:
            row["auc_ceiling"] = float(roc_auc_score(yy, ceiling[(regimen_class, outcome)].predict(X[keep])))
            for name in ("off", "on"):
                row[f"gap_{name}"] = row["auc_ceiling"] - row[f"auc_{name}"]
        rows.append(row)
    return pd.DataFrame(rows)


def hidden_fields(ctx: Context) -> pd.DataFrame:
    """Calibration slope and AUC, off / on, with fields hidden w.p. 1/2 and as simulated, vs the ceilings."""
    return pd.concat([_discrimination(ctx, ctx.test_hidden, ctx.ceiling_hidden, "fields hidden w.p. 1/2"),
                      _discrimination(ctx, ctx.test.X, ctx.ceiling_natural, "as simulated")], ignore_index=True)


#: The benchmark's sections, in order: (title, function of the Context returning a table).
SECTIONS: list[tuple[str, Callable[[Context], pd.DataFrame]]] = [
    ("patients with only the required fields: mean predicted response per regimen", required_only),
    ("discrimination and calibration with missing inputs", hidden_fields),
    ("patients with only the required fields, over further training draws: bias (mean) and noise (SD)",
     required_only_draws),
]


def _verdicts(tables: dict[str, pd.DataFrame]) -> list[str]:
    lines = []
    required = tables.get(SECTIONS[0][0])
    if required is not None and len(required):
        for name in ("off", "on"):
            worst = required.loc[required[f"error_{name}"].abs().idxmax()]
            met = int((required[f"error_{name}"].abs() <= TARGET_POINTS).sum())
            lines.append(f"required fields only ({name}): {met}/{len(required)} regimens within ±3 points; "
                         f"worst {worst['regimen']} {worst[f'error_{name}'] * 100:+.1f} points")
    draws = tables.get(SECTIONS[2][0])
    if draws is not None and len(draws):
        met = int((draws["mean_error"].abs() <= TARGET_POINTS).sum())
        lines.append(f"required fields only, over further training draws: mean error within ±3 points for "
                     f"{met}/{len(draws)} regimens; largest |mean| {draws['mean_error'].abs().max() * 100:.1f} points; "
                     f"SD across draws {draws['sd_error'].min() * 100:.1f}–{draws['sd_error'].max() * 100:.1f} points "
                     f"(binomial SE {draws['binomial_se'].min() * 100:.1f}–{draws['binomial_se'].max() * 100:.1f})")
    hidden = tables.get(SECTIONS[1][0])
    if hidden is not None and len(hidden):
        rows = hidden[hidden["test records"] == "fields hidden w.p. 1/2"]
        for name in ("off", "on"):
            slopes = rows[f"slope_{name}"]
            ok = int(slopes.between(*TARGET_SLOPE).sum())
            text = (f"fields hidden w.p. 1/2 ({name}): slope in {TARGET_SLOPE[0]}–{TARGET_SLOPE[1]} for "
                    f"{ok}/{len(rows)} models (range {slopes.min():.2f}–{slopes.max():.2f})")
            if f"gap_{name}" in rows:
                gaps = rows[f"gap_{name}"]
                text += (f"; AUC within {TARGET_AUC_GAP} of the ceiling for {int((gaps <= TARGET_AUC_GAP).sum())}/"
                         f"{len(rows)} (largest gap {gaps.max():+.3f})")
            lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-n", type=int, default=5000)
    parser.add_argument("--test-n", type=int, default=50000)
    parser.add_argument("--ceiling-n", type=int, default=50000, help="0 switches the observed-data ceilings off")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--test-seed", type=int, default=4243)
    parser.add_argument("--ceiling-seed", type=int, default=777)
    parser.add_argument("--draws", type=int, default=4,
                        help="further training cohorts for the required-fields-only bias / noise table (0: none)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (600 / 600, ceiling 1,000): a smoke run")
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_n, args.test_n, args.ceiling_n = 600, 600, min(args.ceiling_n, 1000)
        args.draws = min(args.draws, 2)
    logging.basicConfig(level=logging.WARNING)
    config = yaml.safe_load(Path(args.config).read_text())
    started = time.perf_counter()
    train, test = load_cohort(args.train_n, args.seed), load_cohort(args.test_n, args.test_seed)
    models = fit_pair(train, config)
    hiding = independent_hiding(len(test.records), args.test_seed)
    hidden_records = [hide_fields(r, [f for f, rows in hiding.items() if rows[k]]) for k, r in enumerate(test.records)]
    test_hidden = build_feature_matrix(hidden_records, test.frame["regimen"].tolist())
    ceiling_hidden = ceiling_natural = None
    if args.ceiling_n > 0:
        big = load_cohort(args.ceiling_n, args.ceiling_seed)
        classes = list(config["regimen_classes"])
        ceiling_natural = fit_ceiling(big, big.X, classes, args.ceiling_seed)
        big_hidden = mask_fields(big.X, independent_hiding(len(big.X), args.ceiling_seed + 1))
        ceiling_hidden = fit_ceiling(big, big_hidden, classes, args.ceiling_seed)
        print(f"observed-data ceilings fitted on {args.ceiling_n} patients; {time.perf_counter() - started:.0f} s",
              flush=True)
    ctx = Context(args, config, train, test, models, test_hidden, ceiling_hidden, ceiling_natural)
    tables = {}
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        for title, section in SECTIONS:
            tables[title] = section(ctx)
            print(f"\n{title} (train n = {args.train_n}, test n = {args.test_n}; off = missing_copies 0, "
                  f"on = {args.config})\n")
            print(tables[title].to_string(index=False))
    print("\n" + "\n".join(_verdicts(tables)))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
