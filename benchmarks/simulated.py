"""Benchmark 6b: the project's model against the oracle on simulated cohorts, and regimen ranking.

Run by hand from the repository root (use ``nice`` on a shared machine)::

    nice python benchmarks/simulated.py [--sizes 1000 5000 20000] [--test-n 50000] [--ceiling-n 50000] [--search]

For each training size a cohort is simulated (seed ``--seed`` + k), and per regimen class and
outcome the project's :class:`ResponseClassifier` is fitted on it with the settings of
``configs/train/default.yaml`` (nested search off unless ``--search``; no MLflow). Every model is
evaluated on one independent test cohort (``--test-n`` patients, seed ``--test-seed``). The test
cohort is large because the comparisons are differences of AUC of about 0.01: on 5,000 test patients
(about 2,500 per class) the test draw alone moves the gap to the ceiling by up to about 0.01
(docs/performance.md, fourth pass). Before 2026-12-02 the default was 5,000 patients, seed 999: pass
``--test-n 5000 --test-seed 999`` to repeat older runs.

* **AUC** of the model's probability for the regimen each test patient received, against the
  observed outcome; the **oracle AUC** uses the true probability of that regimen
  (``truth.parquet``); **gap** = oracle − model, with a paired bootstrap 95 % interval.
* **observed-data ceiling** (``--ceiling-n``, 0 = off): the oracle sees latent variables
  (true pathway status of the un-genotyped, hidden PD-L1 / immune scores, …) that the records
  lack, so no model of the records can reach it. The ceiling is LightGBM regressing the *true*
  probability of the given regimen on the observed features of a large simulated cohort, i.e. an
  estimate of E[p | observed record], the best calibrated predictor of the outcome from the
  record. It is itself an estimate (finite n, a tree learner), so read it as approximately the
  best achievable AUC, not a bound.
* **regimen ranking** (objective response): for each test patient the candidate regimens are
  those of the patient's line (``usual_line`` 1 for first line, 2 for later lines) for which
  the truth marks the patient eligible (``--any-line``: every eligible candidate) — per regimen
  class and across all classes. The model
  ranks them by its p_objective_response; regret = true p of the oracle's best − true p of the
  model's pick, averaged over patients. For scale, a **no-model rule** that always picks the
  regimen with the highest observed response rate in the training cohort is shown too.

Targets (issue 3 §6b): gap ≤ 0.02 and mean regret ≤ 0.02 at 5,000 training patients.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from response_model.dataset import parse_cohort
from response_model.features import _regimen_features, build_feature_matrix, regimen_feature_names
from response_model.modeling.cv import search_estimator
from response_model.modeling.estimators import ResponseClassifier
from response_model.modeling.metrics import binary_metrics
from response_model.modeling.train import OUTCOMES, _model_params
from response_model.regimens import candidate_regimens
from response_model.sources.simulator import simulate_cohort

ROOT = Path(__file__).resolve().parents[1]
TARGET_N, TARGET_GAP, TARGET_REGRET = 5000, 0.02, 0.02


@dataclass
class Cohort:
    """A simulated cohort as the models see it: patient features, the given regimen, outcomes, truth."""

    frame: pd.DataFrame          # canonical table (parsed)
    patient: pd.DataFrame        # patient features only (no regimen columns)
    X: pd.DataFrame              # patient features + features of the regimen received
    regimen_class: pd.Series     # class of the regimen received
    truth: pd.DataFrame          # long truth table (patient × candidate regimen)

    def outcome(self, name: str) -> pd.Series:
        return self.frame[name].astype(float)

    def given_truth(self, outcome: str) -> pd.Series:
        given = self.truth[self.truth["given"]].set_index("patient_id")[f"p_{outcome}"]
        return pd.Series(self.frame["patient_id"].map(given).to_numpy(dtype=float), index=self.frame.index)


def with_regimen(patient: pd.DataFrame, regimens: list[str] | str) -> pd.DataFrame:
    """Return patient features joined with the regimen features of ``regimens`` (one name, or one per row)."""
    names = [regimens] * len(patient) if isinstance(regimens, str) else list(regimens)
    block = np.array([_regimen_features(name) for name in names], dtype=float).reshape(len(patient), -1)
    regimen = pd.DataFrame(block, columns=list(regimen_feature_names()), index=patient.index)
    return pd.concat([patient, regimen], axis=1)


def load_cohort(n: int, seed: int) -> Cohort:
    """Simulate ``n`` patients and build their features through the one feature function."""
    sim = simulate_cohort(n, seed)
    parsed = parse_cohort(sim.cohort)
    if not parsed.ok:
        raise ValueError(f"simulated cohort (n={n}, seed={seed}) has invalid rows: {parsed.rejected[:3]}")
    frame = parsed.frame()
    patient = build_feature_matrix(parsed.records)
    X = with_regimen(patient, frame["regimen"].tolist())
    catalogue = {r.name: r.regimen_class for r in candidate_regimens()}
    return Cohort(frame, patient, X, frame["regimen"].map(catalogue), sim.truth)


def fit_models(cohort: Cohort, config: dict, search: dict | None,
               seed: int) -> dict[tuple[str, str], ResponseClassifier]:
    """Fit one ResponseClassifier per regimen class × outcome on the cohort's labelled rows."""
    models = {}
    for regimen_class in config["regimen_classes"]:
        rows = cohort.regimen_class == regimen_class
        for outcome in OUTCOMES:
            y = cohort.outcome(outcome)
            keep = rows & y.notna()
            model = ResponseClassifier(**_model_params(config, regimen_class, outcome))
            X, target = cohort.X[keep], y[keep].astype(int)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if search:
                    model = search_estimator(model, search, seed).fit(X, target).best_estimator_
                else:
                    model.fit(X, target)
            models[(regimen_class, outcome)] = model
    return models


def fit_ceiling(cohort: Cohort, regimen_classes: list[str], seed: int) -> dict[tuple[str, str], object]:
    """Fit E[true p of the given regimen | observed features] per class × outcome (LightGBM, cross-entropy)."""
    from lightgbm import LGBMRegressor

    models = {}
    for regimen_class in regimen_classes:
        rows = cohort.regimen_class == regimen_class
        for outcome in OUTCOMES:
            target = cohort.given_truth(outcome)[rows]
            model = LGBMRegressor(objective="cross_entropy", n_estimators=600, learning_rate=0.03, num_leaves=15,
                                  min_child_samples=100, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                  reg_lambda=1.0, random_state=seed, n_jobs=1, verbose=-1)
            models[(regimen_class, outcome)] = model.fit(cohort.X[rows], target.to_numpy())
    return models


def paired_gap(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 200,
               seed: int = 0) -> tuple[float, float, float]:
    """Return AUC(a) − AUC(b) and its paired bootstrap 95 % interval (same resampled patients)."""
    rng = np.random.default_rng(seed)
    point = roc_auc_score(y, a) - roc_auc_score(y, b)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def discrimination(models: dict, ceiling: dict | None, test: Cohort, regimen_classes: list[str]) -> list[dict]:
    """Return one row per class × outcome: model, oracle and ceiling AUC on the test cohort, and the gaps."""
    rows = []
    for regimen_class in regimen_classes:
        in_class = test.regimen_class == regimen_class
        for outcome in OUTCOMES:
            y = test.outcome(outcome)
            keep = in_class & y.notna()
            yy = y[keep].to_numpy(dtype=int)
            p_model = models[(regimen_class, outcome)].predict_proba(test.X[keep])[:, 1]
            p_oracle = test.given_truth(outcome)[keep].to_numpy()
            metrics = binary_metrics(yy, p_model)
            gap, gap_lo, gap_hi = paired_gap(yy, p_oracle, p_model)
            row = {"class": regimen_class, "outcome": outcome, "n_test": int(keep.sum()),
                   "auc_model": metrics["auc"], "auc_oracle": roc_auc_score(yy, p_oracle),
                   "gap": gap, "gap_lo": gap_lo, "gap_hi": gap_hi, "slope": metrics["calibration_slope"]}
            if ceiling is not None:
                p_ceiling = ceiling[(regimen_class, outcome)].predict(test.X[keep])
                row["auc_ceiling"] = roc_auc_score(yy, p_ceiling)
                row["gap_to_ceiling"] = row["auc_ceiling"] - row["auc_model"]
            rows.append(row)
    return rows


def ranking(models: dict, train: Cohort, test: Cohort, regimen_classes: list[str],
            any_line: bool = False) -> list[dict]:
    """Return mean regret of the model's regimen pick (objective response), per class and across classes."""
    regimens = [r for r in candidate_regimens() if r.regimen_class in regimen_classes]
    names = [r.name for r in regimens]
    truth = (test.truth.set_index(["patient_id", "regimen"]).reindex(
        pd.MultiIndex.from_product([test.frame["patient_id"], names])))
    true_p = truth["p_objective_response"].to_numpy().reshape(len(test.frame), len(names))
    eligible = truth["eligible"].to_numpy(dtype=bool).reshape(len(test.frame), len(names))
    line = test.frame["line_of_therapy"].to_numpy(dtype=float)
    usual = np.array([r.usual_line or 1 for r in regimens], dtype=float)
    in_line = np.where(np.isnan(line)[:, None], True, np.where(line[:, None] <= 1, usual[None, :] == 1,
                                                              usual[None, :] >= 2))
    candidates = eligible if any_line else eligible & in_line
    model_p = np.column_stack([
        models[(r.regimen_class, "objective_response")].predict_proba(with_regimen(test.patient, r.name))[:, 1]
        for r in regimens])
    # the no-model rule: the regimen with the highest observed response rate in the training cohort
    observed = train.frame.groupby("regimen")["objective_response"].mean()
    population = np.tile(observed.reindex(names).fillna(-1.0).to_numpy(), (len(test.frame), 1))
    classes = np.array([r.regimen_class for r in regimens])
    out = []
    for scope in [*regimen_classes, "all classes"]:
        mask = candidates & ((classes == scope)[None, :] if scope != "all classes" else True)
        ok = mask.sum(axis=1) >= 2  # a choice to make
        if not ok.any():
            continue
        m, t, pop = (np.where(mask, a, -np.inf)[ok] for a in (model_p, true_p, population))
        best = t.max(axis=1)
        rows = np.arange(ok.sum())
        picked = true_p[ok][rows, m.argmax(axis=1)]
        picked_population = true_p[ok][rows, pop.argmax(axis=1)]
        out.append({"scope": scope, "patients": int(ok.sum()), "candidates": float(mask[ok].sum(axis=1).mean()),
                    "regret_model": float(np.mean(best - picked)),
                    "regret_rule": float(np.mean(best - picked_population)),
                    "model_picks_best": float(np.mean(m.argmax(axis=1) == t.argmax(axis=1)))})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--test-n", type=int, default=50000)
    parser.add_argument("--seed", type=int, default=100, help="training cohort k gets seed + k")
    parser.add_argument("--test-seed", type=int, default=4243)
    parser.add_argument("--ceiling-n", type=int, default=50000, help="0 switches the observed-data ceiling off")
    parser.add_argument("--ceiling-seed", type=int, default=777)
    parser.add_argument("--any-line", action="store_true",
                        help="rank every eligible candidate regimen, not only those of the patient's line")
    parser.add_argument("--search", action="store_true", help="run the config's search on each training cohort")
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = yaml.safe_load(Path(args.config).read_text())
    search = config.get("search") if args.search and config.get("search", {}).get("enabled") else None
    classes = list(config["regimen_classes"])
    started = time.perf_counter()

    test = load_cohort(args.test_n, args.test_seed)
    print(f"test cohort: {len(test.frame)} patients (seed {args.test_seed}); "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    ceiling = None
    if args.ceiling_n > 0:
        big = load_cohort(args.ceiling_n, args.ceiling_seed)
        ceiling = fit_ceiling(big, classes, args.ceiling_seed)
        del big
        print(f"observed-data ceiling fitted on {args.ceiling_n} patients; {time.perf_counter() - started:.0f} s",
              flush=True)

    auc_rows, rank_rows = [], []
    for k, n in enumerate(args.sizes):
        train = load_cohort(n, args.seed + k)
        t0 = time.perf_counter()
        models = fit_models(train, config, search, seed=int(config["cv"]["seed"]))
        fit_s = time.perf_counter() - t0
        for row in discrimination(models, ceiling, test, classes):
            auc_rows.append({"n_train": n, **row})
        for row in ranking(models, train, test, classes, any_line=args.any_line):
            rank_rows.append({"n_train": n, **row})
        print(f"n = {n}: fitted {len(models)} models in {fit_s:.0f} s; {time.perf_counter() - started:.0f} s so far",
              flush=True)

    auc, rank = pd.DataFrame(auc_rows), pd.DataFrame(rank_rows)
    table = auc.copy()
    table["gap [95 % CI]"] = [f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]" for g, lo, hi in zip(auc.gap, auc.gap_lo, auc.gap_hi)]
    columns = ["n_train", "class", "outcome", "n_test", "auc_model", "auc_oracle", "gap [95 % CI]"]
    if ceiling is not None:
        columns += ["auc_ceiling", "gap_to_ceiling"]
    columns += ["slope"]
    regret = rank.rename(columns={"scope": "class"})
    regret["outcome"] = "objective_response"
    side = table[columns].merge(regret[["n_train", "class", "outcome", "candidates", "regret_model", "regret_rule",
                                        "model_picks_best"]], on=["n_train", "class", "outcome"], how="outer")
    side["n_test"] = side["n_test"].astype("Int64")
    order = {c: i for i, c in enumerate([*classes, "all classes"])}
    side = side.sort_values(["n_train", "class", "outcome"], key=lambda s: s.map(order) if s.name == "class" else s)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(f"\nproject model (configs/train/default.yaml, search {'on' if search else 'off'}) trained on simulated "
              f"cohorts, evaluated on an independent test cohort of {args.test_n} (seed {args.test_seed})\n")
        print(side.astype(object).where(side.notna(), "").to_string(index=False))
    print("\nauc_model / auc_oracle: AUC of the model's / the true probability of the regimen received, on the test "
          "patients of the class with an observed outcome; gap = oracle − model (paired bootstrap 95 % CI); slope = "
          "the model's calibration slope on the test cohort.")
    if ceiling is not None:
        print(f"auc_ceiling: LightGBM regression of the TRUE probability on the OBSERVED features of {args.ceiling_n} "
              "simulated patients — an estimate of the best AUC any model of the records can reach (the oracle also "
              "sees latent variables the records lack: true pathway status of the un-genotyped, hidden PD-L1 and "
              "immune scores, …). It is an estimate, not a bound.")
    print("regret (objective response): mean over test patients of (true p of the oracle's best regimen − true p of "
          "the pick), candidates = eligible regimens " + ("of any line" if args.any_line else "of the patient's line")
          + ", per class and across classes; "
          "regret_rule = always the regimen with the best observed ORR in the training cohort (no model); "
          "model_picks_best = share of patients whose pick is the oracle's best. Within a class the simulator's "
          "effects are shared by all its regimens except VEGFA amplification × sorafenib (configs/simulator.yaml), so "
          "within-class ranking is mostly the regimens' overall order; the patient-specific choice is between classes.")
    at = auc[auc.n_train == TARGET_N]
    if len(at):
        worst_gap = float(at.gap.max())
        r = rank[(rank.n_train == TARGET_N)]
        worst_regret = float(r.regret_model.max()) if len(r) else float("nan")
        print(f"\ntargets at n = {TARGET_N}: largest AUC gap {worst_gap:+.3f} (≤ {TARGET_GAP}: "
              f"{'MET' if worst_gap <= TARGET_GAP else 'NOT MET'}); largest mean regret {worst_regret:.3f} "
              f"(≤ {TARGET_REGRET}: {'MET' if worst_regret <= TARGET_REGRET else 'NOT MET'})")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
