"""Training: cohort → features → cross-validated models and baselines per regimen class and outcome →
one deployable bundle, every step tracked in MLflow.

``train(config)`` follows ``configs/train/*.yaml``: for each regimen class (checkpoint inhibitors,
TKI / anti-angiogenics) and outcome (objective response, primary resistance) it cross-validates the
project's :class:`ResponseClassifier` side by side with the baselines on the same folds (search,
scaling, imputation and calibration inside each fold), logs the metrics with intervals, per-fold
metrics, subgroup tables and plots in a nested run, then refits on all rows of the class. The fitted
models go into one :class:`ResponseModelBundle`, logged and registered under the configured name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from response_model import plots, tracking
from response_model.config import config_dir, resolve_config_path
from response_model.dataset import ParsedCohort, parse_cohort
from response_model.describe import table_one
from response_model.errors import ConfigError, InputError
from response_model.features import build_feature_matrix, feature_names
from response_model.modeling.baselines import LogisticBaseline, LorisRecipe, Oracle, PublishedLoris, SingleMarkerRule
from response_model.modeling.bundle import ResponseModelBundle, example_input, log_bundle
from response_model.modeling.cv import CVResult, cross_validate, search_estimator
from response_model.modeling.distributed import parallel_jobs
from response_model.modeling.estimators import ResponseClassifier, constraints_for_outcome
from response_model.modeling.metrics import subgroup_columns
from response_model.modeling.missingness import training_summary
from response_model.modeling.regimen_validation import regimen_metrics, summary_table, validation_metadata
from response_model.modeling.uncertainty import (
    FieldDistribution,
    PatientUncertainty,
    estimate_scale,
    fit_members,
    hide_at_random,
    logodds,
    training_spread,
)
from response_model.modeling.unknown_regimen import PREVALENCE_KEY, regimen_prevalence
from response_model.regimens import load_catalogue
from response_model.schema import OUTCOMES
from response_model.settings import Uncertainty, load_training_config
from response_model.sources import load_source

log = logging.getLogger(__name__)

PROJECT = "project"


@dataclass
class TrainingData:
    """A validated training cohort, its feature matrix, and the simulator's truth when known."""

    parsed: ParsedCohort
    frame: pd.DataFrame
    features: pd.DataFrame
    truth: pd.DataFrame | None
    simulated: bool
    source: str


@dataclass
class TrainingResult:
    """What :func:`train` produced."""

    run_id: str
    model_uri: str
    bundle: ResponseModelBundle
    cv: dict[tuple[str, str], CVResult] = field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    seconds: float = 0.0


def load_training_data(config: dict[str, Any], data_path: str | Path | None = None) -> TrainingData:
    """Return the training cohort of ``config['data']``: a file read through a source, or a simulation.

    A canonical cohort written by ``response-model simulate`` brings its ``truth.parquet`` (same
    folder) for the oracle baseline; training never reads the truth otherwise.
    """
    spec = config["data"]
    path = data_path or spec.get("path")
    truth = None
    if path:
        if not Path(path).exists() and (config_dir().parent / path).exists():
            path = config_dir().parent / path  # paths in configs are relative to the repository root
        loaded = load_source(spec["source"], path)
        parsed = loaded.parsed
        truth_path = Path(path).parent / "truth.parquet" if Path(path).is_file() else Path(path) / "truth.parquet"
        if truth_path.exists():
            truth = pd.read_parquet(truth_path)
        source = str(path)
    else:
        from response_model.sources.simulator import simulate_cohort

        if not spec.get("simulate"):
            raise ConfigError(f"{config.get('name', 'training configuration')}: data.path is null and there is no "
                              "data.simulate: {n: ..., seed: ...}; give --data PATH, data.path or data.simulate")
        n, seed = int(spec["simulate"]["n"]), int(spec["simulate"]["seed"])
        log.info("simulating a training cohort of %d patients (seed %d)", n, seed)
        simulation = simulate_cohort(n, seed)
        parsed, truth = parse_cohort(simulation.cohort), simulation.truth
        source = f"simulated://n={n},seed={seed}"
    if not parsed.ok:
        first = "; ".join(str(row) for row in parsed.rejected[:3])
        raise InputError(f"{len(parsed.rejected)} invalid row(s) in the training cohort ({source}); first: {first}. "
                         "Run `response-model validate` for the full report")
    frame = parsed.frame()
    features = build_feature_matrix(parsed.records, [o.regimen for o in parsed.outcomes])
    return TrainingData(parsed, frame, features, truth, simulated=truth is not None, source=source)


def training_ranges(X: pd.DataFrame, low: float = 0.01, high: float = 0.99) -> dict[str, list[float]]:
    """Return each patient feature's [1st, 99th] percentile in the training rows (for out-of-distribution flags)."""
    patient = X[[c for c in feature_names(with_regimen=False) if c in X]]
    bounds = patient.quantile([low, high]).T.dropna()
    return {name: [float(a), float(b)] for name, (a, b) in bounds.iterrows()}


def _model_params(config: dict[str, Any], regimen_class: str, outcome: str) -> dict[str, Any]:
    """ResponseClassifier parameters of one class × outcome: ``defaults``, then the class's overrides, then
    its overrides for ``outcome`` (``model.<class>.<outcome>``); monotone signs turned for the outcome."""
    section = config.get("model", {})
    per_class = dict(section.get(regimen_class, {}))
    per_outcome = {name: per_class.pop(name, None) or {} for name in OUTCOMES}[outcome]
    constraints = constraints_for_outcome(per_class.pop("monotone_constraints", None), outcome)
    return {**section.get("defaults", {}), **per_class, **per_outcome, "monotone_constraints": constraints}


def _oracle_truth(data: TrainingData, rows: pd.Index, outcome: str) -> pd.Series | None:
    if data.truth is None:
        return None
    given = data.truth[data.truth["given"]].set_index("patient_id")[f"p_{outcome}"]
    return pd.Series(data.frame.loc[rows, "patient_id"].map(given).to_numpy(dtype=float), index=rows)


def candidate_models(config: dict[str, Any], regimen_class: str, outcome: str, X: pd.DataFrame,
                     oracle: pd.Series | None) -> dict[str, Any]:
    """Return the unfitted project model and baselines to compare on the same folds, by name."""
    models: dict[str, Any] = {PROJECT: ResponseClassifier(**_model_params(config, regimen_class, outcome))}
    baselines = config.get("baselines", {})
    if "logistic" in baselines:
        models["logistic"] = LogisticBaseline(**(baselines["logistic"] or {}))
    if "loris" in baselines and LorisRecipe.applicable(X):
        models["loris"] = LorisRecipe(**(baselines["loris"] or {}))
    if "loris_published" in baselines and LorisRecipe.applicable(X):
        models["loris_published"] = PublishedLoris(**{**(baselines["loris_published"] or {}), "outcome": outcome})
    for rule in baselines.get("rules", []):
        if rule["feature"] in X and X[rule["feature"]].notna().any():
            models[f"{rule['feature']} ≥ {rule['threshold']:g}"] = SingleMarkerRule(rule["feature"], rule["threshold"])
    if baselines.get("oracle") and oracle is not None:
        models["oracle"] = Oracle(truth=oracle)
    return models


def _fit_final(model: ResponseClassifier, X: pd.DataFrame, y: pd.Series, search: dict | None, seed: int):
    """Refit on all labelled rows of the class, with the same search as inside the folds."""
    if search and PROJECT in search.get("models", [PROJECT]):
        tuned = search_estimator(model, search, seed, n_jobs=parallel_jobs(1)).fit(X, y)
        log.info("final model parameters chosen by search: %s", tuned.best_params_)
        return tuned.best_estimator_
    return model.fit(X, y)


def _log_cv(result: CVResult, prefix: str, reference: str, probabilistic: list[str]) -> None:
    """Log the side-by-side table, per-fold metrics, subgroups and plots of one class × outcome."""
    summary = result.summary()
    for model, row in summary.iterrows():
        name = model.replace(" ", "").replace("≥", "_ge_")
        tracking.log_metrics({f"{name}.{metric}": value for metric, value in row.items() if metric != "n"})
    for k, row in result.folds[result.folds["model"] == PROJECT].reset_index(drop=True).iterrows():
        tracking.log_metrics({f"fold.{m}": row[m] for m in ("auc", "brier", "calibration_slope") if m in row}, step=k)
    table = result.table(reference=reference if reference in result.models else None)
    mlflow.log_text(table.to_string(), f"{prefix}/comparison.txt")
    mlflow.log_table(result.folds.drop(columns=["params"], errors="ignore"), f"{prefix}/folds.json")
    try:
        mlflow.log_table(result.subgroups(PROJECT), f"{prefix}/subgroups.json")
    except ValueError as error:
        log.warning("no subgroup table: %s", error)
    first = result.oof[result.oof["repeat"] == 0]
    curves = {m: (first["y"].to_numpy(), first[m].to_numpy(dtype=float)) for m in result.models}
    tracking.log_figure(plots.roc_plot(curves, prefix), f"{prefix}/roc.png")
    calibrated = {m: c for m, c in curves.items() if m in probabilistic}  # rules output scores, not probabilities
    tracking.log_figure(plots.calibration_plot(calibrated, title=prefix), f"{prefix}/calibration.png")


def _log_explanations(model: ResponseClassifier, X: pd.DataFrame, y: pd.Series, prefix: str,
                      regimen_class: str, outcome: str, simulated: bool, max_rows: int = 2000,
                      top: int = 3) -> None:
    """Log the beeswarm, dependence plots of the top features, the global importance table (beside
    the simulator's true effects when simulated), the same importance of the terms a clinician reads,
    the additivity error and the top-5 seed stability."""
    from response_model.modeling import explain, explanation_groups

    sample = X.sample(n=min(len(X), max_rows), random_state=0) if len(X) > max_rows else X
    contributions, _ = model.explain(sample)
    features = sample[contributions.columns]
    tracking.log_figure(plots.shap_summary_plot(contributions, features, f"{prefix} ({explain.SCALE})"),
                        f"{prefix}/shap_summary.png")
    table = (explain.faithfulness_table(contributions, sample, regimen_class, outcome) if simulated
             else explain.importance_ranks(contributions, sample))
    mlflow.log_table(table.reset_index(names="feature"), f"{prefix}/importance.json")
    terms = explanation_groups.term_ranks(contributions, sample)  # what the clinician's terms weigh
    mlflow.log_table(terms.reset_index(names="term"), f"{prefix}/term_importance.json")
    for feature in table.index[:top]:
        tracking.log_figure(plots.shap_dependence_plot(contributions, features, feature, prefix, explain.SCALE),
                            f"{prefix}/dependence_{feature}.png")
    k = int(explain.explanation_config()["stability"]["top_k"])
    other = explain.refit_with_seed(model, X, y, int(model.get_params().get("random_state", 0)) + 1)
    overlap = explain.stability_overlap(contributions, other.explain(sample)[0], k)
    tracking.log_metrics({"explain.additivity_max_error": explain.additivity_error(model, sample),
                          f"explain.top{k}_overlap_other_seed": float(overlap.mean())})


def _cohort_flow(data: TrainingData, classes: pd.Series, enabled: list[str]) -> dict[str, Any]:
    """Inclusion and exclusion counts of the training cohort (no identifiers)."""
    flow: dict[str, Any] = {"rows_read": len(data.parsed.records) + len(data.parsed.rejected),
                            "rows_rejected_invalid": len(data.parsed.rejected),
                            "without_regimen": int(classes.isna().sum()), "per_model": []}
    for regimen_class, rows in classes.dropna().groupby(classes.dropna()).groups.items():
        for outcome in enabled:
            y = data.frame.loc[rows, outcome]
            flow["per_model"].append({"regimen_class": regimen_class, "outcome": outcome, "patients": len(rows),
                                      "labelled": int(y.notna().sum()), "not_evaluable": int(y.isna().sum()),
                                      "events": int((y == 1).sum())})
    return flow


def _compute(config: dict[str, Any], dask_scheduler: Any):
    """The context the training computes in: a Dask cluster (see :mod:`.distributed`) or this process."""
    if not dask_scheduler:
        return contextlib.nullcontext()
    from response_model.modeling.distributed import DEFAULT_LIGHTGBM_DASK_MIN_ROWS, dask_training

    return dask_training(dask_scheduler,
                         (config.get("dask") or {}).get("lightgbm_dask_min_rows", DEFAULT_LIGHTGBM_DASK_MIN_ROWS))


def train(config_path: str | Path, data_path: str | Path | None = None, register: bool = True,
          progress: bool = True, dask_scheduler: Any = None) -> TrainingResult:
    """Train every regimen class × outcome model of the config, log everything, return the result.

    ``dask_scheduler`` (``tcp://HOST:8786`` or a ``distributed.Client``): folds, search trials and
    large LightGBM fits run on that Dask cluster (:mod:`response_model.modeling.distributed`);
    tracking stays in this process, and the metrics are those of a local run."""
    started = time.perf_counter()
    config = load_training_config(config_path)  # refuses unknown keys, naming the file and the nearest valid key
    tracking.configure_tracking()
    data = load_training_data(config, data_path)
    catalogue = load_catalogue()
    classes = data.frame["regimen"].map(lambda r: catalogue[r].regimen_class if r else None)
    if classes.isna().any():
        log.warning("%d patients without a regimen are not used for training", int(classes.isna().sum()))
    enabled = [o for o in OUTCOMES if config["outcomes"].get(o, {}).get("enabled", False)]

    with _compute(config, dask_scheduler) as cluster, threadpool_limits(limits=1, user_api="blas"), \
            mlflow.start_run(run_name=config.get("name", "train"), tags=tracking.run_tags()) as run:
        if cluster is not None:
            mlflow.set_tag("compute.dask_scheduler", cluster.address)
        digest = _log_inputs(config_path, config, data, classes, enabled)
        population = FieldDistribution.of([data.parsed.records[i] for i in classes.index[classes.notna()]])
        fitted, results, parent_metrics, uncertainty = _train_models(config, data, classes, enabled, progress,
                                                                     population)
        if not fitted:
            raise InputError("no model could be trained: no regimen class had patients with both outcomes")
        tracking.log_metrics(parent_metrics)
        validation = _regimen_validation(config, data, results, catalogue)
        bundle = ResponseModelBundle(
            fitted, feature_names=feature_names(), data_digest=digest, metrics=parent_metrics,
            simulated=data.simulated,
            metadata={"data_source": data.source, "config": str(config_path),
                      "feature_ranges": training_ranges(data.features.loc[classes.notna()]),
                      # aggregated counts only: what a patient without a recorded regimen is averaged over
                      PREVALENCE_KEY: regimen_prevalence(data.frame["regimen"].tolist(), catalogue),
                      "regimen_validation": validation,
                      "missingness": training_summary(fitted, data.features, data.parsed.records, classes)},
            uncertainty=uncertainty,
        )
        bundle.attach_reference([data.parsed.records[i] for i in classes.index[classes.notna()]])
        info = log_bundle(bundle, input_example=example_input(data.parsed.records),
                          registered_model_name=config.get("registered_model") if register else None)
        seconds = time.perf_counter() - started
        mlflow.log_metric("training_seconds", seconds)
        version = getattr(info, "registered_model_version", None)
        return TrainingResult(
            run_id=run.info.run_id, model_uri=info.model_uri, bundle=bundle, cv=results,
            registered_name=config.get("registered_model") if register else None,
            registered_version=str(version) if version is not None else None, seconds=seconds,
        )


def _regimen_validation(config: dict[str, Any], data: Any, results: dict[tuple[str, str], CVResult],
                        catalogue: dict[str, Any]) -> dict[str, Any]:
    """Per-regimen out-of-fold metrics of every class × outcome, checked against ``gate.per_regimen``
    (:mod:`.regimen_validation`), logged to the run (metrics ``regimen.<outcome>.<regimen>.<metric>``,
    ``regimen_validation.json``, tags naming withheld and warned regimens); returns the bundle metadata entry."""
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for (_regimen_class, outcome), result in results.items():
        rows = result.oof["row"].unique()
        metrics.setdefault(outcome, {}).update(regimen_metrics(result, data.frame.loc[rows, "regimen"], PROJECT))
    trained = {c for c, _ in results}
    names = [r.name for r in catalogue.values() if r.is_candidate and r.regimen_class in trained]
    validation = validation_metadata(metrics, names, (config.get("gate") or {}).get("per_regimen"))
    decisions = validation["regimens"]
    for regimen, decision in decisions.items():
        for outcome, entry in decision["outcomes"].items():
            tracking.log_metrics({f"regimen.{tracking.OUTCOME_PREFIX.get(outcome, outcome)}.{regimen}.{key}": value
                                  for key, value in entry.items() if value is not None})
    mlflow.log_dict(validation, "regimen_validation.json")
    table = summary_table(decisions)
    if len(table):
        mlflow.log_table(table, "regimen_validation_table.json")
    mlflow.set_tags({
        "regimen_validation.withheld": ",".join(r for r, d in decisions.items() if not d["served"]),
        "regimen_validation.warned": ",".join(r for r, d in decisions.items() if d["served"] and d["warning"]),
        "regimen_validation.gate": json.dumps(validation["gate"], sort_keys=True, default=str)})
    for regimen, decision in decisions.items():
        if decision["warning"]:
            log.warning("regimen %s %s: %s", regimen, "withheld" if not decision["served"] else "served with a warning",
                        decision["warning"])
    return validation


def _log_inputs(config_path: str | Path, config: dict[str, Any], data: Any, classes: pd.Series,
                enabled: list[str]) -> str:
    """Log the config, the dataset, the cohort flow and Table 1 to the active run; return the dataset digest."""
    tracking.log_config(resolve_config_path(config_path))
    digest = tracking.log_dataset(data.frame, name=config.get("name", "cohort"), source=data.source)
    mlflow.set_tags({"data.source": data.source, "data.simulated": str(data.simulated),
                     "data.rows": str(len(data.frame))})
    mlflow.log_dict(_cohort_flow(data, classes, enabled), "cohort/flow.json")
    mlflow.log_table(table_one({"training cohort": data.frame}).reset_index(names="characteristic"),
                     "cohort/table1.json")
    return digest


def _train_models(config: dict[str, Any], data: Any, classes: pd.Series, enabled: list[str], progress: bool,
                  population: FieldDistribution,
                  ) -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], CVResult], dict[str, float],
                             PatientUncertainty | None]:
    """(final models, their CV results, the parent run's summary metrics, the per-patient interval's
    part or None when disabled) of every regimen class × outcome with patients of both outcome classes."""
    subgroups = {**subgroup_columns(data.parsed.records), "regimen": data.frame["regimen"]}
    fitted: dict[tuple[str, str], Any] = {}
    results: dict[tuple[str, str], CVResult] = {}
    parent_metrics: dict[str, float] = {}
    settings = Uncertainty(**(config.get("uncertainty") or {}))
    members: dict[tuple[str, str], list[Any]] = {}
    scales: dict[tuple[str, str], tuple[float, tuple[float, ...]]] = {}
    for regimen_class in config["regimen_classes"]:
        rows = classes.index[classes == regimen_class]
        if len(rows) == 0:
            log.warning("no patient received a %s regimen; no model for this class", regimen_class)
            continue
        for outcome in enabled:
            trained = _train_one(config, data, rows, regimen_class, outcome,
                                 {k: v.loc[rows] for k, v in subgroups.items()}, progress)
            if trained is None:
                continue
            key = (regimen_class, outcome)
            results[key], fitted[key] = trained
            if settings.enabled:
                members[key], scales[key] = _uncertainty_of(settings, data, rows, outcome, trained, population)
            # the project's summary (mean, lower, upper of each metric) goes to the parent run,
            # where `promote` checks the gate: response.checkpoint_inhibitor.auc_lower, …
            for metric, value in trained[0].summary().loc[PROJECT].drop("n").dropna().items():
                parent_metrics[tracking.metric_key(outcome, regimen_class, metric)] = float(value)
    uncertainty = None
    if members:
        source = ("estimated out-of-fold on the training cohort's simulated true probabilities"
                  if data.truth is not None else
                  "of 1: the training cohort has no true probabilities, so the ensemble's spread is not scaled")
        uncertainty = PatientUncertainty(members, population, scales, level=settings.level, draws=settings.draws,
                                         scale_source=source)
        tracking.log_metrics({f"uncertainty.scale_ensemble.{c}.{o}": s[0] for (c, o), s in scales.items()})
        tracking.log_metrics({f"uncertainty.scale_draws_band{k}.{c}.{o}": v for (c, o), s in scales.items()
                              for k, v in enumerate(s[1])})
    return fitted, results, parent_metrics, uncertainty


def _uncertainty_of(settings: Uncertainty, data: Any, rows: pd.Index, outcome: str, trained: tuple[CVResult, Any],
                    population: FieldDistribution) -> tuple[list[Any], tuple[float, tuple[float, ...]]]:
    """(bootstrap members of the final model, (the factor on their spread, the factors on the draws'
    spread per band of missing share)) of one class × outcome. The factors are estimated on up to
    ``settings.scale_rows`` labelled training rows against the simulator's true probabilities: as
    recorded around the project's out-of-fold estimates of the first CV repeat, with each optional field
    hidden w.p. 0.5 and with the required fields only, around the final model's draws (1 without truth)."""
    result, final = trained
    y = data.frame.loc[rows, outcome].astype(float)
    labelled = rows[y.notna().to_numpy()]
    X, target = data.features.loc[labelled], y.loc[labelled].astype(int)
    members = fit_members(final, X, target, settings.members, seed=int(final.get_params().get("random_state") or 0))
    truth = _oracle_truth(data, labelled, outcome)
    if truth is None:
        return members, (1.0, (1.0, 1.0, 1.0))
    oof = result.oof[result.oof["repeat"] == 0].set_index("row")[PROJECT]
    sample = labelled
    if len(sample) > settings.scale_rows:
        sample = pd.Index(np.random.default_rng(0).choice(labelled.to_numpy(), settings.scale_rows, replace=False))
    records = [data.parsed.records[i] for i in sample]
    regimens = data.frame.loc[sample, "regimen"].tolist()
    p_final, recorded, band = training_spread(final, members, population, records, regimens, feature_names(),
                                              settings.draws)
    # the recorded rows' centres: the out-of-fold estimate, shifted as the draws shift the final model's
    shifted = logodds(oof.loc[sample].to_numpy(dtype=float)) + (recorded.centre - logodds(p_final))
    versions = [(shifted, recorded, band)]
    for share, seed in ((0.5, 1), (1.0, 2)):  # each optional field hidden w.p. 0.5; the required fields only
        _, hidden, hidden_band = training_spread(final, members, population, hide_at_random(records, share, seed),
                                                 regimens, feature_names(), settings.draws)
        versions.append((hidden.centre, hidden, hidden_band))
    scale = estimate_scale(truth.loc[sample].to_numpy(dtype=float), versions, settings.level)
    log.info("%s: interval factors %.3f (records without draws; ensemble of %d) and %s (with draws, by share "
             "missing), %d rows", outcome, scale[0], len(members), ", ".join(f"{v:.3f}" for v in scale[1]), len(sample))
    return members, scale


def _train_one(config: dict[str, Any], data: Any, rows: pd.Index, regimen_class: str, outcome: str,
               subgroups: dict[str, pd.Series], progress: bool) -> tuple[CVResult, Any] | None:
    """(CV result, final model) of one regimen class × outcome, in a nested run; None with a single outcome class."""
    X = data.features.loc[rows]
    y = data.frame.loc[rows, outcome].astype(float)
    labelled = y.notna()
    if y[labelled].nunique() < 2:
        log.warning("%s / %s: a single outcome class; skipped", regimen_class, outcome)
        return None
    cv_cfg, search = config["cv"], (config.get("search") if config.get("search", {}).get("enabled") else None)
    prefix = f"{regimen_class}/{outcome}"
    log.info("%s: cross-validating on %d labelled patients", prefix, int(labelled.sum()))
    survival = None
    if outcome == "primary_resistance":
        survival = pd.DataFrame({"time": data.frame.loc[rows, "pfs_months"].astype(float),
                                 "event": data.frame.loc[rows, "pfs_event"].astype(float)}, index=rows)
    models = candidate_models(config, regimen_class, outcome, X, _oracle_truth(data, rows, outcome))
    with mlflow.start_run(run_name=prefix, nested=True):
        mlflow.set_tags({"regimen_class": regimen_class, "outcome": outcome})
        result = cross_validate(
            X, y, groups_for_subgroups=subgroups, models=models, n_splits=cv_cfg["n_splits"],
            n_repeats=cv_cfg["n_repeats"], seed=cv_cfg["seed"], search=search, survival=survival,
            progress=progress, n_jobs=parallel_jobs(int(cv_cfg.get("n_jobs", 1))),
        )
        # the published formula is the opponent to beat where it is configured (issue 13)
        reference = next((m for m in ("loris_published", "loris") if m in result.models), "logistic")
        probabilistic = [m for m, est in models.items() if getattr(est, "outputs_probability", True)]
        _log_cv(result, prefix, reference, probabilistic)
        log.info("%s:\n%s", prefix, result.table(reference=reference).to_string())
        final = _fit_final(models[PROJECT], X[labelled], y[labelled].astype(int), search, cv_cfg["seed"])
        _log_explanations(final, X[labelled], y[labelled].astype(int), prefix, regimen_class, outcome, data.simulated)
    return result, final
