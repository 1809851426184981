"""The HTML trial-design report: the subset and its prevalence, sample sizes with power curves and the
Monte-Carlo check, and — from the frames :mod:`response_model.trials.effects` produces — a forest plot of
effects by subset and the covariate balance after weighting. Self-contained (images as base64 PNG), logged
to MLflow with the cohort digest and the model version; labelled research use when the data are simulated."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from response_model.modeling.bundle import SIMULATED_DATA_LABEL
from response_model.trials import figures
from response_model.trials.design import power_curve
from response_model.trials.planning import Plan
from response_model.trials.subsets import Subset

TRIAL_REPORT_ARTIFACT = "trial_design/report.html"
EXPERIMENT = "trial-design"
SIZE_COLUMNS = ("design", "target_power", "n_total", "n_subset", "n_screened", "events", "power_overall",
                "power_subset", "note")


@dataclass
class ReportInputs:
    """What a report shows besides the plan: the subset, the Monte-Carlo table, the prevalence table of
    :func:`response_model.trials.describe.prevalence_table`, the effects and balance frames (optional),
    the model's metadata (name, version, label) and whether the data are simulated."""

    subset: Subset
    prevalences: pd.DataFrame
    monte_carlo: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    balance: pd.DataFrame | None = None
    model: dict[str, Any] | None = None
    simulated: bool = False


def _png(fig) -> str:
    """The figure as a data URI (then closed)."""
    from response_model.plots import plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pct(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f} %"


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,}" if isinstance(value, (int, np.integer)) else f"{value:.3g}"


def _size_rows(plan: Plan) -> list[dict[str, str]]:
    rows = []
    for size in plan.design.sizes:
        row = asdict(size)
        rows.append({c: _pct(row[c]) if c.startswith(("power", "target")) else
                     (row[c] if isinstance(row[c], str) else _num(row[c])) for c in SIZE_COLUMNS})
    return rows


def _curve_grid(plan: Plan) -> np.ndarray:
    """Sample sizes the power curve runs over: up to 1.5 × the largest designed size."""
    largest = max([s.n_total for s in plan.design.sizes if s.n_total is not None] or [200])
    return np.unique(np.linspace(10, 1.5 * largest, 60).round().astype(int))


def trust_statement(balance: pd.DataFrame | None) -> str:
    """Which effect estimate the report trusts, and why (from the balance after weighting)."""
    if balance is None or balance.empty:
        return ("Without a balance table the adjusted estimate cannot be checked: read the naive and model "
                "estimates as confounded by who received which regimen.")
    worst = float(balance["smd_weighted"].abs().max())
    if worst < 0.1:
        return (f"Trusted: the adjusted estimate. After weighting every covariate is balanced (largest |SMD| "
                f"{worst:.2f} < 0.1), so the comparison no longer depends on who received which regimen; the naive "
                "estimate is confounded and the model's rests on its fit.")
    return (f"Caution: after weighting some covariate is still imbalanced (largest |SMD| {worst:.2f} ≥ 0.1); the "
            "adjusted estimate may remain confounded. None of the three is fully trusted.")


def report_context(plan: Plan, inputs: ReportInputs, cohort_digest: str | None) -> dict[str, Any]:
    """Everything ``templates/trial_design.html`` shows."""
    design = plan.design
    curve = power_curve(design, _curve_grid(plan))
    context = {
        "label": SIMULATED_DATA_LABEL if inputs.simulated else None,
        "spec": design.spec, "rates": design.rates, "alphas": design.spec.alphas(), "facts": plan.facts,
        "subset": inputs.subset, "warnings": design.warnings, "rate_source": design.rates.source,
        "model": inputs.model or {}, "cohort": {"digest": cohort_digest, "patients": plan.facts.get("cohort_patients")},
        "size_columns": SIZE_COLUMNS, "sizes": _size_rows(plan),
        "monte_carlo": None if inputs.monte_carlo is None else inputs.monte_carlo.to_dict(orient="records"),
        "power_figure": _png(figures.power_curves(curve, design.table(), inputs.monte_carlo)),
        "prevalence_figure": _png(figures.prevalence_bars(inputs.prevalences)) if len(inputs.prevalences) else None,
        "forest_figure": None, "balance_figure": None, "trust": trust_statement(inputs.balance),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if inputs.effects is not None and not inputs.effects.empty:
        context["forest_figure"] = _png(figures.forest_plot(inputs.effects))
    if inputs.balance is not None and not inputs.balance.empty:
        context["balance_figure"] = _png(figures.balance_plot(inputs.balance))
    return context


def render(context: dict[str, Any]) -> str:
    """The report HTML of a :func:`report_context`."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("response_model", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
    env.filters["pct"], env.filters["num"] = _pct, _num
    return env.get_template("trial_design.html").render(**context)


def cohort_digest(cohort: pd.DataFrame) -> str:
    """The MLflow dataset digest of the cohort (identifier columns dropped, as every logged dataset)."""
    import mlflow

    from response_model.tracking import drop_identifiers

    return mlflow.data.from_pandas(drop_identifiers(cohort)).digest


def write_trial_report(out: str | Path, plan: Plan, inputs: ReportInputs, cohort: pd.DataFrame,
                       log: bool = True) -> tuple[Path, str | None]:
    """Write the report to ``out``; with ``log`` also log it, its tables, the cohort (digest, no rows) and
    the design's parameters to a run of the ``trial-design`` MLflow experiment. Returns (path, run id)."""
    from response_model.dataset import COHORT_COLUMNS

    canonical = cohort[[c for c in COHORT_COLUMNS if c in cohort.columns]]
    digest = cohort_digest(canonical)
    html = render(report_context(plan, inputs, digest))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out, (_log_run(html, plan, inputs, canonical) if log else None)


def _log_run(html: str, plan: Plan, inputs: ReportInputs, cohort: pd.DataFrame) -> str:
    """Log the report and its tables to a new run; return its id."""
    import mlflow

    from response_model import tracking

    tracking.configure_tracking(EXPERIMENT)
    spec, model = plan.design.spec, inputs.model or {}
    tags = {"subset": spec.subset, "arm": spec.arm, "comparator": spec.comparator, "endpoint": spec.endpoint,
            "rate_source": plan.design.rates.source, "data.simulated": str(inputs.simulated)}
    tags |= {f"model.{k}": str(v) for k, v in model.items() if k in ("name", "version", "uri") and v is not None}
    with mlflow.start_run(run_name=f"{spec.subset}: {spec.arm} vs {spec.comparator}",
                          tags=tracking.run_tags(tags)) as run:
        tracking.log_dataset(cohort, name="cohort", source="trial-design cohort", context="trial_design")
        mlflow.log_params({k: str(v) for k, v in asdict(spec).items() if v is not None})
        mlflow.log_text(html, TRIAL_REPORT_ARTIFACT)
        mlflow.log_text(plan.design.table().to_csv(index=False), "trial_design/sizes.csv")
        if inputs.monte_carlo is not None:
            mlflow.log_text(inputs.monte_carlo.to_csv(index=False), "trial_design/monte_carlo.csv")
        mlflow.log_text(inputs.prevalences.to_csv(), "trial_design/prevalence.csv")
        for frame, name in ((inputs.effects, "effects"), (inputs.balance, "balance")):
            if frame is not None:
                mlflow.log_text(frame.to_csv(index=False), f"trial_design/{name}.csv")
        tracking.log_metrics({f"{s.design}.n_total.power_{round(100 * s.target_power)}": s.n_total
                              for s in plan.design.sizes})
        return run.info.run_id
