"""Repeated stratified cross-validation of several models on the same folds, with nested search.

Every model sees exactly the same (repeat, fold) splits (one ``RepeatedStratifiedKFold``), so
per-fold metrics are paired and differences between models can be judged fold by fold
(:func:`paired_difference`). All preprocessing lives inside the estimators, so it is fitted on
the training part of each fold only. A hyper-parameter search, when configured, runs inside each
outer training fold (inner stratified K-fold), never touching the outer test fold.

``search`` (dict, or None = off)::

    models: [project]          # which models are tuned (names in ``models``)
    method: random             # random | grid
    n_iter: 8                  # random search: candidates per outer fold
    inner_splits: 3            # inner stratified folds
    scoring: neg_log_loss      # any sklearn scorer name (roc_auc, neg_brier_score, …)
    space:                     # parameter → list of values
A model with ``calibrate=True`` is tuned uncalibrated, then refitted (calibrated) with the
chosen parameters on the whole outer training fold.
      num_leaves: [4, 8]
      min_child_samples: [30, 50, 100]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, RepeatedStratifiedKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from response_model.modeling.metrics import BINARY_METRICS, binary_metrics, c_index, interval, subgroup_metrics

log = logging.getLogger(__name__)

NON_RANK_METRICS = ("brier", "calibration_slope", "calibration_intercept", "calibration_in_the_large", "ece")
SUMMARY_METRICS = ("auc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece", "c_index")


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    ``folds``: one row per (model, repeat, fold) with n, events, every binary metric (and
    ``c_index`` when survival was given) and ``params`` (the search's choice, if any).
    ``oof``: out-of-fold predictions, one row per (repeat, patient row): ``repeat``, ``fold``,
    ``row`` (index label of X), ``y``, then one probability column per model.
    """

    folds: pd.DataFrame
    oof: pd.DataFrame
    models: list[str]
    n_splits: int
    n_repeats: int
    seed: int
    groups: dict[str, pd.Series] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self, metrics: tuple[str, ...] = SUMMARY_METRICS) -> pd.DataFrame:
        """Return mean, lower, upper (95 % percentile interval over folds) per model and metric."""
        rows = []
        for model in self.models:
            part = self.folds[self.folds["model"] == model]
            row: dict[str, Any] = {"model": model, "n": part["n"].mean()}
            for metric in metrics:
                if metric not in part or part[metric].isna().all():
                    continue
                iv = interval(part[metric])
                row[f"{metric}"] = iv["mean"]
                row[f"{metric}_lower"] = iv["lower"]
                row[f"{metric}_upper"] = iv["upper"]
            rows.append(row)
        return pd.DataFrame(rows).set_index("model")

    def table(self,
              metrics: tuple[str, ...] = ("auc", "calibration_slope", "calibration_intercept", "brier", "auprc", "ece",
                                          "c_index"),
              reference: str | None = None, digits: int = 3) -> pd.DataFrame:
        """Return a printable side-by-side table: 'mean [lower, upper]' per metric, and ΔAUC vs ``reference``."""
        summary = self.summary(metrics)
        out = pd.DataFrame(index=summary.index)
        out["n scored"] = summary["n"].round(0).astype(int)
        for metric in metrics:
            if metric not in summary:
                continue
            out[metric] = [
                f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if pd.notna(m) else "—"
                for m, lo, hi in zip(summary[metric], summary[f"{metric}_lower"], summary[f"{metric}_upper"])]
        if reference is not None:
            cells = []
            for model in summary.index:
                if model == reference:
                    cells.append("(reference)")
                    continue
                d = paired_difference(self, model, reference, "auc")
                cells.append(f"{d['mean']:+.{digits}f} [{d['lower']:+.{digits}f}, {d['upper']:+.{digits}f}]")
            out[f"ΔAUC vs {reference}"] = cells
        return out

    def subgroups(self, model: str, by: Mapping[str, pd.Series] | None = None) -> pd.DataFrame:
        """Return subgroup metrics of ``model``'s out-of-fold predictions, averaged over repeats.

        ``by`` defaults to the ``groups_for_subgroups`` given to :func:`cross_validate`.
        """
        by = dict(by if by is not None else self.groups)
        if not by:
            raise ValueError("no subgroup labels: pass groups_for_subgroups to cross_validate or by= here")
        tables = []
        for repeat, part in self.oof.groupby("repeat"):
            frame = pd.DataFrame({"y": part["y"].to_numpy(), "p": part[model].to_numpy()}, index=part["row"].to_numpy())
            aligned = {k: pd.Series(v).reindex(frame.index) for k, v in by.items()}
            tables.append(subgroup_metrics(frame, aligned).assign(repeat=repeat))
        stacked = pd.concat(tables, ignore_index=True)
        return (stacked.groupby(["subgroup", "level"], sort=False)
                .mean(numeric_only=True).drop(columns="repeat").reset_index())


def paired_difference(result: CVResult, a: str, b: str, metric: str = "auc") -> dict[str, float]:
    """Return the fold-paired difference ``a − b`` of ``metric``: mean, percentile and normal 95 %
    intervals over folds (see :func:`metrics.interval`), and the share of folds where a > b."""
    folds = result.folds.set_index(["repeat", "fold"])
    da = folds.loc[folds["model"] == a, metric]
    db = folds.loc[folds["model"] == b, metric]
    diff = (da - db.reindex(da.index)).dropna()
    out = interval(diff)
    out["share_positive"] = float((diff > 0).mean()) if len(diff) else float("nan")
    return out


def _instantiate(factory: Callable[[], BaseEstimator] | BaseEstimator) -> BaseEstimator:
    return clone(factory) if isinstance(factory, BaseEstimator) else factory()


def search_estimator(estimator: BaseEstimator, search: Mapping[str, Any], seed: int, n_jobs: int = 1) -> BaseEstimator:
    """Return the unfitted nested search (inner stratified K-fold) over ``search['space']`` for ``estimator``.

    ``n_jobs``: parallel (candidate, inner fold) fits (-1 = all; Dask tasks under joblib's dask backend)."""
    inner = StratifiedKFold(int(search.get("inner_splits", 3)), shuffle=True, random_state=seed)
    scoring = search.get("scoring", "neg_log_loss")
    space = {k: list(v) for k, v in dict(search["space"]).items()}
    if search.get("method", "random") == "grid":
        return GridSearchCV(estimator, space, cv=inner, scoring=scoring, n_jobs=n_jobs, refit=True)
    return RandomizedSearchCV(estimator, space, n_iter=int(search.get("n_iter", 8)), cv=inner, scoring=scoring,
                              n_jobs=n_jobs, refit=True, random_state=seed)


def cross_validate(
    X: pd.DataFrame,
    y: pd.Series | np.ndarray,
    groups_for_subgroups: Mapping[str, pd.Series] | None = None,
    models: Mapping[str, Callable[[], BaseEstimator] | BaseEstimator] | None = None,
    n_splits: int = 5,
    n_repeats: int = 5,
    seed: int = 0,
    search: Mapping[str, Any] | None = None,
    survival: pd.DataFrame | None = None,
    progress: bool = True,
    n_jobs: int = 1,
    hide_in_test: Sequence[str] = (),
) -> CVResult:
    """Cross-validate every model in ``models`` ({name: factory or unfitted estimator}) on the same folds.

    A model whose class sets ``outputs_probability = False`` (a rule or raw marker score) gets
    only rank metrics (AUC, AUPRC, c-index); calibration metrics and Brier are left empty.
    ``X`` keeps its index through the folds (the :class:`~response_model.modeling.baselines.Oracle`
    looks rows up by it). Rows with a missing ``y`` are dropped. ``survival`` (optional, aligned
    to ``X``; columns ``time`` and ``event``) adds the concordance index of each model's predicted
    probability (as a risk: higher = earlier event) per fold — for primary resistance against PFS.
    ``search``: nested hyper-parameter search (see the module docstring); None switches it off.
    ``n_jobs``: folds run in that many parallel processes (each model fit stays single-threaded).
    ``hide_in_test``: feature columns set missing in every outer test fold only (training, and any
    nested search, see them as recorded): how a model fares on a cohort that lacks those columns.
    """
    if not models:
        raise ValueError("no models to cross-validate")
    y = pd.Series(np.asarray(y, dtype=float), index=X.index)
    keep = y.notna().to_numpy()
    if not keep.all():
        log.info("dropping %d rows without a label", int((~keep).sum()))
    X, y = X.loc[keep], y.loc[keep].astype(int)
    surv = survival.loc[keep] if survival is not None else None
    names = list(models)
    tuned = set((search or {}).get("models", names)) if search else set()
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y.to_numpy()))
    oof = {name: np.full((n_repeats, len(y)), np.nan) for name in names}
    fold_of = np.full((n_repeats, len(y)), -1)
    rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys(names, 0.0)

    bar = _progress_bar(len(splits)) if progress else None
    # Folds are independent: with n_jobs > 1 they run in parallel processes; results come back in order.
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_run_fold)(k, train, test, X, y, surv, models, names, tuned, search, seed, tuple(hide_in_test))
        for k, (train, test) in enumerate(splits))
    for k, ((_train, test), fold_result) in enumerate(zip(splits, results)):
        repeat, fold = divmod(k, n_splits)
        fold_of[repeat, test] = fold
        for name, p, row, took in fold_result:
            seconds[name] += took
            oof[name][repeat, test] = p
            rows.append({"model": name, "repeat": repeat, "fold": fold,
                         **{key: value for key, value in row.items() if key != "model"}})
        log.info("fold %d/%d (repeat %d, fold %d): %s", k + 1, len(splits), repeat + 1, fold + 1,
                 ", ".join(f"{r['model']} AUC {r['auc']:.3f}" for r in rows[-len(names):]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    groups = {k: pd.Series(v) for k, v in (groups_for_subgroups or {}).items()}
    return CVResult(folds=pd.DataFrame(rows), oof=_oof_table(oof, fold_of, X, y, names, n_repeats), models=names,
                    n_splits=n_splits, n_repeats=n_repeats, seed=seed, groups=groups, seconds=seconds)


def _progress_bar(total: int) -> Any:
    """Return a tqdm bar of ``total`` folds, or None when tqdm cannot be imported."""
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="cross-validation", unit="fold", leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


def _run_fold(k: int, train: np.ndarray, test: np.ndarray, X: pd.DataFrame, y: pd.Series,
              surv: pd.DataFrame | None, models: Mapping[str, Callable[[], BaseEstimator] | BaseEstimator],
              names: list[str], tuned: set[str], search: Mapping[str, Any] | None,
              seed: int, hidden: tuple[str, ...] = ()) -> list[tuple[str, np.ndarray, dict, float]]:
    """Return (name, test-fold probabilities, metrics row, seconds) of every model fitted on fold ``k``."""
    # one BLAS thread per fit: these problems are small, and BLAS threads competing with the
    # parallel folds (or with anything else on the machine) made a logistic fit 4x slower
    with threadpool_limits(limits=1, user_api="blas"):
        X_train, y_train, X_test, y_test = X.iloc[train], y.iloc[train], X.iloc[test], y.iloc[test]
        if hidden:
            X_test = X_test.copy()
            X_test[[c for c in hidden if c in X_test.columns]] = np.nan
        out = []
        for name in names:
            started = time.perf_counter()
            estimator = _instantiate(models[name])
            params = None
            if name in tuned:
                estimator, params = _tuned_fit(estimator, search, seed + k, X_train, y_train)
            else:
                estimator.fit(X_train, y_train)
            p = estimator.predict_proba(X_test)[:, 1]
            row = {"model": name, **binary_metrics(y_test, p)}
            if not getattr(estimator, "outputs_probability", True):  # a rank score, not a probability
                row.update({m: np.nan for m in NON_RANK_METRICS})
            if surv is not None:
                s = surv.iloc[test]
                row["c_index"] = c_index(p, s["time"], s["event"])
            row["params"] = params
            out.append((name, p, row, time.perf_counter() - started))
        return out


def _tuned_fit(estimator: BaseEstimator, search: Mapping[str, Any], seed: int, X_train: pd.DataFrame,
               y_train: pd.Series) -> tuple[BaseEstimator, dict[str, Any]]:
    """Return (the fitted estimator, the search's chosen parameters) of a nested search on one training fold."""
    # Tune the uncalibrated model (calibration's own internal CV inside every inner
    # fit would multiply the cost), then refit with the chosen parameters as configured.
    calibrated = bool(estimator.get_params().get("calibrate", False))
    searcher = search_estimator(clone(estimator).set_params(calibrate=False) if calibrated else estimator,
                                search, seed)
    searcher.fit(X_train, y_train)
    params = dict(searcher.best_params_)
    estimator = (clone(estimator).set_params(**params).fit(X_train, y_train) if calibrated
                 else searcher.best_estimator_)
    return estimator, params


def _oof_table(oof: dict[str, np.ndarray], fold_of: np.ndarray, X: pd.DataFrame, y: pd.Series, names: list[str],
               n_repeats: int) -> pd.DataFrame:
    """Return the out-of-fold predictions, one row per (repeat, patient row), one column per model."""
    oof_frames = []
    for repeat in range(n_repeats):
        frame = pd.DataFrame({"repeat": repeat, "fold": fold_of[repeat], "row": X.index.to_numpy(), "y": y.to_numpy()})
        for name in names:
            frame[name] = oof[name][repeat]
        oof_frames.append(frame)
    return pd.concat(oof_frames, ignore_index=True)


__all__ = ["BINARY_METRICS", "CVResult", "cross_validate", "paired_difference", "search_estimator"]
