"""The validation report and model card of one model version: a self-contained HTML file.

``response-model report --model-uri URI --out FILE.html`` (and ``GET /v1/model/report`` for
auditors) render ``templates/report.html`` from what the training run logged to MLflow — config,
dataset digest and source, cohort flow and Table 1, per regimen class × outcome the cross-validated
metrics of the project model and the baselines, per-fold and subgroup tables, ROC, calibration,
SHAP beeswarm and dependence plots, the global importance table and the explanation checks — plus
the model card's fixed texts (``configs/report.yaml``) and the TRIPOD+AI checklist
(``configs/tripod_ai.yaml``; Collins et al., BMJ 2024). Images are embedded as base64 PNG. Nothing
is re-derived from patient data: what the run did not log is named as missing in the report.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from response_model.config import load_yaml
from response_model.modeling.bundle import SIMULATED_DATA_LABEL
from response_model.modeling.metrics import interval
from response_model.tracking import OUTCOME_PREFIX

REPORT_ARTIFACT = "report/validation_report.html"
#: (id, heading) of every section, in order; the TRIPOD+AI items point at these ids.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("intended-use", "Intended use"),
    ("provenance", "Data provenance"),
    ("performance", "Performance"),
    ("subgroups", "Subgroups"),
    ("calibration", "Calibration"),
    ("explanations", "Explanations"),
    ("baselines", "Baselines side by side"),
    ("limitations", "Limitations"),
    ("tripod", "TRIPOD+AI checklist"),
)
METRICS = ("auc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece", "c_index")
PROJECT = "project"


class ReportError(RuntimeError):
    """The report cannot be rendered (model or run not found); the message says what is missing."""


# ---------------------------------------------------------------------------------------------
# reading the run
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelRuns:
    """The training run of a model version and its nested runs per (regimen_class, outcome)."""

    run: Any
    children: dict[tuple[str, str], Any] = field(default_factory=dict)


def model_run_id(model: Any, model_uri: str) -> str:
    """Return the id of the training run that logged the loaded pyfunc ``model`` (from ``model_uri``)."""
    from mlflow import MlflowClient

    from response_model.modeling.registry import resolve_version

    run_id = getattr(getattr(model, "metadata", None), "run_id", None)
    if run_id:
        return str(run_id)
    resolved = resolve_version(model_uri) if str(model_uri).startswith("models:/") else None
    if resolved is not None:
        return str(MlflowClient().get_model_version(*resolved).run_id)
    raise ReportError(f"{model_uri}: the model does not name the MLflow run that trained it")


def find_runs(run_id: str) -> ModelRuns:
    """Return the training run ``run_id`` and its nested class × outcome runs (tags regimen_class, outcome)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ReportError(f"training run {run_id} not found in the tracking store "
                          f"({mlflow.get_tracking_uri()}): {error}") from None
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    keyed = {(c.data.tags["regimen_class"], c.data.tags["outcome"]): c
             for c in children if "regimen_class" in c.data.tags and "outcome" in c.data.tags}
    return ModelRuns(run, dict(sorted(keyed.items())))


class Artifacts:
    """Downloads a run's artifacts once into a temporary folder; missing ones give None."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._listed: dict[tuple[str, str], set[str]] = {}

    def _files(self, run_id: str, prefix: str) -> set[str]:
        from mlflow import MlflowClient

        key = (run_id, prefix)
        if key not in self._listed:
            self._listed[key] = {f.path for f in MlflowClient().list_artifacts(run_id, prefix) if not f.is_dir}
        return self._listed[key]

    def path(self, run_id: str, artifact: str) -> Path | None:
        """Return the local copy of ``artifact`` of ``run_id``, or None when the run did not log it."""
        import mlflow
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        prefix = artifact.rpartition("/")[0]
        if artifact not in self._files(run_id, prefix):
            return None
        name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
        before = os.environ.get(name)
        os.environ[name] = "false"  # one bar per file would flood the CLI's output
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                            dst_path=str(self.folder / run_id)))
        finally:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before

    def listing(self, run_id: str, prefix: str) -> list[str]:
        """Return the artifact paths directly under ``prefix``."""
        return sorted(self._files(run_id, prefix))

    def table(self, run_id: str, artifact: str) -> pd.DataFrame | None:
        """Return a table logged with ``mlflow.log_table`` (JSON), or None."""
        path = self.path(run_id, artifact)
        if path is None:
            return None
        data = json.loads(path.read_text())
        return pd.DataFrame(data["data"], columns=data["columns"])

    def json(self, run_id: str, artifact: str) -> Any:
        """Return a JSON artifact (``mlflow.log_dict``), or None."""
        path = self.path(run_id, artifact)
        return None if path is None else json.loads(path.read_text())

    def image(self, run_id: str, artifact: str, alt: str) -> dict[str, str] | None:
        """Return {src: data URI, alt} of a PNG artifact, or None."""
        path = self.path(run_id, artifact)
        if path is None:
            return None
        return {"src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"), "alt": alt}


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """Return a number for a table cell ('—' for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def with_interval(mean: Any, lower: Any, upper: Any, digits: int = 3) -> str:
    """Return 'mean [lower, upper]' ('—' when the mean is missing)."""
    if mean is None or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} [{fmt(lower, digits)}, {fmt(upper, digits)}]"


def auc_se_hanley_mcneil(auc: float, events: int, non_events: int) -> float:
    """Return the standard error of an AUC (Hanley & McNeil 1982) from its value and class counts."""
    if not (np.isfinite(auc) and events > 0 and non_events > 0):
        return math.nan
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1 - auc) + (events - 1) * (q1 - auc * auc) + (non_events - 1) * (q2 - auc * auc))
    return math.sqrt(max(variance, 0.0) / (events * non_events))


def flag_subgroups(table: pd.DataFrame, overall_auc: float, rule: Mapping[str, Any],
                   overall_slope: float = 1.0) -> pd.DataFrame:
    """Return the subgroup table with auc_lower / auc_upper (Hanley–McNeil) and ``flag`` (reason text or '').

    A subgroup with at least ``min_n`` patients and ``min_events`` events and non-events is flagged
    when its AUC interval's upper end is below ``overall_auc``, or (with ``min_events_calibration``)
    when its calibration slope lies outside ``calibration_slope`` and is further from 1 than
    ``overall_slope`` by more than ``calibration_slope_excess`` (``configs/report.yaml``). Smaller
    subgroups are marked "too small to judge".
    """
    from scipy.stats import norm

    z = norm.ppf(0.5 + float(rule["auc_interval_level"]) / 2.0)
    low_slope, high_slope = rule["calibration_slope"]
    out = table.copy()
    lowers, uppers, flags = [], [], []
    for _, row in out.iterrows():
        n, events = int(round(row["n"])), int(round(row["events"]))
        se = auc_se_hanley_mcneil(float(row["auc"]), events, n - events)
        lowers.append(max(0.0, row["auc"] - z * se) if np.isfinite(se) else math.nan)
        uppers.append(min(1.0, row["auc"] + z * se) if np.isfinite(se) else math.nan)
        if n < rule["min_n"] or min(events, n - events) < rule["min_events"]:
            flags.append("too small to judge")
            continue
        reasons = []
        if np.isfinite(uppers[-1]) and uppers[-1] < overall_auc:
            reasons.append(f"AUC upper bound {uppers[-1]:.3f} < overall {overall_auc:.3f}")
        slope = row.get("calibration_slope", math.nan)
        overall_off = abs(overall_slope - 1.0) if np.isfinite(overall_slope) else 0.0
        if (slope is not None and np.isfinite(slope) and min(events, n - events) >= rule["min_events_calibration"]
                and not low_slope <= slope <= high_slope
                and abs(slope - 1.0) > overall_off + float(rule["calibration_slope_excess"])):
            reasons.append(f"calibration slope {slope:.2f} outside [{low_slope}, {high_slope}] and further from 1 "
                           f"than overall ({overall_slope:.2f}) by > {rule['calibration_slope_excess']}")
        flags.append("MATERIALLY WORSE: " + "; ".join(reasons) if reasons else "")
    out["auc_lower"], out["auc_upper"], out["flag"] = lowers, uppers, flags
    return out


def _summary_row(metrics: Mapping[str, float], regimen_class: str, outcome: str) -> dict[str, str]:
    prefix = f"{OUTCOME_PREFIX.get(outcome, outcome)}.{regimen_class}."
    row = {}
    for metric in METRICS:
        mean = metrics.get(prefix + metric)
        row[metric] = with_interval(mean, metrics.get(prefix + metric + "_lower"),
                                    metrics.get(prefix + metric + "_upper"))
    return row


def _fold_comparison(folds: pd.DataFrame, reference: str | None) -> list[dict[str, str]]:
    rows = []
    for model, part in folds.groupby("model", sort=False):
        row = {"model": model, "n scored": fmt(float(part["n"].mean()), 0)}
        for metric in METRICS:
            if metric in part and part[metric].notna().any():
                iv = interval(part[metric].astype(float))
                row[metric] = with_interval(iv["mean"], iv["lower"], iv["upper"])
            else:
                row[metric] = "—"
        if reference is not None and reference in set(folds["model"]):
            if model == reference:
                row["ΔAUC vs " + reference] = "(reference)"
            else:
                keyed = folds.set_index(["repeat", "fold"])
                a = keyed.loc[keyed["model"] == model, "auc"]
                b = keyed.loc[keyed["model"] == reference, "auc"].reindex(a.index)
                iv = interval((a - b).dropna())
                row["ΔAUC vs " + reference] = with_interval(iv["mean"], iv["lower"], iv["upper"])
        rows.append(row)
    return rows


def _records(frame: pd.DataFrame, columns: list[str], digits: int = 3) -> list[dict[str, str]]:
    return [{c: fmt(row[c], digits) if c in row else "—" for c in columns} for _, row in frame.iterrows()]


# ---------------------------------------------------------------------------------------------
# context and rendering
# ---------------------------------------------------------------------------------------------


def report_context(model_uri: str, workdir: Path) -> dict[str, Any]:
    """Return everything the template shows for the model at ``model_uri`` (artifacts cached in ``workdir``)."""
    from response_model.modeling.predict import as_bundle, load_model

    try:
        model = load_model(model_uri)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported with the URI
        raise ReportError(f"cannot load the model {model_uri}: {error}") from None
    bundle = as_bundle(model)
    meta = bundle.metadata
    runs = find_runs(model_run_id(model, model_uri))
    run, art = runs.run, Artifacts(workdir)
    card, tripod = load_yaml("report.yaml"), load_yaml("tripod_ai.yaml")
    rule = card["materially_worse"]
    tags, parent_metrics = run.data.tags, run.data.metrics
    simulated = bool(meta.get("trained_on_simulated_data")) or tags.get("data.simulated") == "True"
    missing: list[str] = []
    flow = _need(missing, art.json(run.info.run_id, "cohort/flow.json"), "cohort flow (inclusion and exclusion counts)")
    table1 = _need(missing, art.table(run.info.run_id, "cohort/table1.json"), "Table 1 of the training cohort")
    configs = art.listing(run.info.run_id, "config")
    models: list[dict[str, Any]] = []
    flagged: list[str] = []
    for (regimen_class, outcome), child in runs.children.items():
        models.append(_model_section(art, child, regimen_class, outcome, parent_metrics, rule, missing, flagged))
    if not models:
        raise ReportError(f"training run {run.info.run_id} has no nested class × outcome runs to report on")
    limitations = _limitations(card, simulated, flagged, missing)
    checklist = _checklist(tripod)
    return {
        "title": card["title"], "card": card,
        "label": SIMULATED_DATA_LABEL if simulated else None,
        "model": {"name": meta.get("model_name"), "version": meta.get("model_version"), "uri": model_uri,
                  "run_id": run.info.run_id, "training_date": meta.get("training_date"),
                  "intended_use": meta.get("intended_use"), "regimen_classes": meta.get("regimen_classes"),
                  "outcomes": meta.get("outcomes"), "n_features": meta.get("n_features")},
        "data": {"source": tags.get("data.source"), "digest": meta.get("data_digest"), "rows": tags.get("data.rows"),
                 "simulated": simulated, "git_commit": tags.get("git_commit"), "configs": configs,
                 "flow": flow,
                 "table1_columns": list(table1.columns) if table1 is not None else [],
                 "table1": table1.astype(str).to_dict(orient="records") if table1 is not None else []},
        "models": models, "flagged": flagged, "rule": rule, "missing": missing,
        "limitations": limitations, "tripod": {"citation": tripod["citation"], "items": checklist},
        "sections": SECTIONS, "metrics": METRICS,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "explanation_scale": "log-odds before calibration (whole model)",
    }


def _need(missing: list[str], value: Any, what: str) -> Any:
    """Return ``value``; when it is None, ``what`` is added to ``missing`` (what the run did not log)."""
    if value is None:
        missing.append(what)
    return value


def _model_section(art: Artifacts, child: Any, regimen_class: str, outcome: str, parent_metrics: Mapping[str, float],
                   rule: Mapping[str, Any], missing: list[str], flagged: list[str]) -> dict[str, Any]:
    """Return the template's entry of one class × outcome run (noting its gaps and flagged subgroups)."""
    rid, name = child.info.run_id, f"{regimen_class} / {outcome}"
    prefix = f"{regimen_class}/{outcome}"
    summary = _summary_row(parent_metrics, regimen_class, outcome)
    overall_auc = parent_metrics.get(f"{OUTCOME_PREFIX.get(outcome, outcome)}.{regimen_class}.auc", math.nan)
    overall_slope = parent_metrics.get(f"{OUTCOME_PREFIX.get(outcome, outcome)}.{regimen_class}.calibration_slope",
                                       math.nan)
    folds = _need(missing, art.table(rid, f"{prefix}/folds.json"), f"{name}: per-fold metrics")
    subgroups = _need(missing, art.table(rid, f"{prefix}/subgroups.json"), f"{name}: subgroup table")
    sub_rows = []
    if subgroups is not None:
        sub_rows, worse = _subgroup_rows(flag_subgroups(subgroups, overall_auc, rule, overall_slope), name)
        flagged.extend(worse)
    present = set(folds["model"]) if folds is not None else set()
    reference = next((m for m in ("loris_published", "loris") if m in present), "logistic")
    importance = _need(missing, art.table(rid, f"{prefix}/importance.json"), f"{name}: global importance table")
    imp_columns, imp_rows = _importance_rows(importance) if importance is not None else ([], [])
    terms = art.table(rid, f"{prefix}/term_importance.json")  # absent from runs before the terms existed
    dependence = _dependence_plots(art, rid, prefix, name, importance)
    if not dependence:
        missing.append(f"{name}: dependence plots")
    k_overlap = next((v for m, v in child.data.metrics.items() if m.startswith("explain.top")), None)
    return {
        "key": name, "anchor": prefix.replace("/", "-").replace("_", "-"),
        "summary": summary, "overall_auc": overall_auc,
        "comparison": _fold_comparison(folds, reference) if folds is not None else [],
        "subgroups": sub_rows,
        "roc": _need(missing, art.image(rid, f"{prefix}/roc.png", f"{name}: ROC curves"), f"{name}: ROC plot"),
        "calibration": _need(missing, art.image(rid, f"{prefix}/calibration.png", f"{name}: calibration plot"),
                             f"{name}: calibration plot"),
        "beeswarm": _need(missing, art.image(rid, f"{prefix}/shap_summary.png", f"{name}: SHAP beeswarm"),
                          f"{name}: SHAP beeswarm"),
        "dependence": dependence,
        "importance_columns": imp_columns, "importance": imp_rows,
        "terms": _records(terms.head(10), ["label", "importance", "rank", "of"]) if terms is not None else [],
        "additivity": child.data.metrics.get("explain.additivity_max_error"),
        "overlap": k_overlap,
    }


def _subgroup_rows(judged: pd.DataFrame, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Return (table rows, notes of the materially worse subgroups) of model ``name``'s judged subgroups."""
    rows, worse = [], []
    for _, row in judged.iterrows():
        rows.append({
            "subgroup": row["subgroup"], "level": str(row["level"]), "n": fmt(int(round(row["n"]))),
            "events": fmt(int(round(row["events"]))),
            "auc": with_interval(row["auc"], row["auc_lower"], row["auc_upper"]),
            "calibration_slope": fmt(row.get("calibration_slope")), "brier": fmt(row.get("brier")),
            "flag": row["flag"], "flagged": row["flag"].startswith("MATERIALLY"),
        })
        if row["flag"].startswith("MATERIALLY"):
            reasons = row["flag"][len("MATERIALLY WORSE: "):]
            worse.append(f"{name}: {row['subgroup']} = {row['level']} ({reasons})")
    return rows, worse


def _importance_rows(importance: pd.DataFrame) -> tuple[list[str], list[dict[str, str]]]:
    """Return (columns, rows) of the importance table shown: the top 10 and every "no effect" feature."""
    shown = importance.head(10)
    if "truth" in importance:
        shown = pd.concat([shown, importance[importance["truth"] == "no effect"]]).drop_duplicates("feature")
    columns = [c for c in ("feature", "importance", "rank", "of", "truth", "response", "pfs", "note",
                           "bottom_half") if c in importance]
    return columns, _records(shown, columns)


def _dependence_plots(art: Artifacts, rid: str, prefix: str, name: str,
                      importance: pd.DataFrame | None) -> list[dict[str, str] | None]:
    """Return one model's dependence plots, in the importance table's order (features not in it last)."""
    plotted = {path.rsplit("dependence_", 1)[1][:-4]: path for path in art.listing(rid, prefix)
               if path.rsplit("/", 1)[1].startswith("dependence_")}
    order = list(importance["feature"]) if importance is not None else []
    return [art.image(rid, plotted[f], f"{name}: dependence plot of {f}")
            for f in sorted(plotted, key=lambda f: order.index(f) if f in order else len(order))]


def _limitations(card: Mapping[str, Any], simulated: bool, flagged: list[str], missing: list[str]) -> list[str]:
    """Return the model card's limitations plus those of this run (simulated data, flagged subgroups, gaps)."""
    limitations = list(card["limitations"])
    if simulated:
        limitations.insert(0, "Trained and evaluated on simulated patients only: the performance says how well the "
                              "model recovers the simulator's assumptions, not how it performs on real patients.")
    if flagged:
        limitations.append(f"{len(flagged)} subgroup(s) perform materially worse than overall (see Subgroups).")
    if missing:
        limitations.append("This training run did not log: " + "; ".join(missing) + ".")
    return limitations


def _checklist(tripod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the TRIPOD+AI checklist items, each with the report sections that answer it."""
    section_titles = dict(SECTIONS)
    checklist = []
    for item in tripod["items"]:
        where = [{"id": s, "title": section_titles[s]} for s in item.get("answered_in", [])]
        checklist.append({"not_applicable": None, "how": "", **item, "where": where})
    return checklist


def render(context: Mapping[str, Any]) -> str:
    """Return the report HTML of a :func:`report_context`."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("response_model", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
    env.filters["fmt"] = fmt
    return env.get_template("report.html").render(**context)


def build_report(model_uri: str) -> tuple[str, str]:
    """Return (HTML of the report, id of the training run) for the model at ``model_uri``."""
    with tempfile.TemporaryDirectory(prefix="rm-report-") as folder:
        context = report_context(model_uri, Path(folder))
    return render(context), context["model"]["run_id"]


def log_report(html: str, run_id: str) -> str:
    """Log the report to the training run as :data:`REPORT_ARTIFACT`; return the artifact path."""
    from mlflow import MlflowClient

    MlflowClient().log_text(run_id, html, REPORT_ARTIFACT)
    return REPORT_ARTIFACT


def write_report(model_uri: str, out: str | Path, log: bool = True) -> tuple[Path, str]:
    """Write the report of ``model_uri`` to ``out`` (and log it to the model's run); return (path, run id)."""
    html, run_id = build_report(model_uri)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    if log:
        log_report(html, run_id)
    return out, run_id
