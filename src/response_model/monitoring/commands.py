"""``response-model monitor``: the monitoring state of a served model, from the audit trail.

Prints one verdict per check (ok / watch / act; ``n/a`` where a window is too small to judge), logs
the window statistics to the model's MLflow run as time series (step = the window's start day,
timestamp = its end) and writes the HTML report (:mod:`.report`). Registered lazily on the main CLI
(``cli.py``'s ``lazy={…}``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from response_model.service.commands import _clean_errors, _db_option

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_DAY_SECONDS = 86_400


def _utc(text: str | None, field: str) -> datetime | None:
    """An ISO 8601 time (a date alone: 00:00 UTC; no zone: UTC) as an aware datetime; raises BadParameter."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date or time (e.g. 2026-11-01 or "
                                 "2026-11-01T09:00:00Z)", param_hint=field) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def metric_points(state: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, step, timestamp ms) of every window statistic of ``state``: per-feature PSI, the
    missingness-pattern PSI, the domain AUC, probability PSI and live metrics per cell."""
    points = []
    for window in state["windows"]:
        start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
        step, stamp = int(start.timestamp()) // _DAY_SECONDS, int(end.timestamp() * 1000)
        checks = window["checks"]
        values: dict[str, Any] = {"monitor.requests": window["requests"],  # text ("< k") when suppressed: skipped
                                  "monitor.domain_auc": checks.get("domain_classifier", {}).get("auc"),
                                  "monitor.pattern_psi": checks.get("missingness_pattern", {}).get("psi")}
        for check, prefix in (("feature_drift", "monitor.psi"), ("probability_drift", "monitor.probability_psi")):
            for name, item in (checks.get(check, {}).get("items") or {}).items():
                values[f"{prefix}.{name}"] = item.get("psi")
        for cell, metrics in (checks.get("live_performance") or {}).items():
            for name in ("auc", "calibration_slope", "calibration_intercept", "ece"):
                values[f"monitor.live.{cell}.{name}"] = metrics.get(name)
        points += [(k, float(v), step, stamp) for k, v in values.items() if isinstance(v, (int, float))]
    return points


def log_to_run(run_id: str, state: dict[str, Any]) -> int:
    """Log :func:`metric_points` to MLflow run ``run_id`` and tag it with the verdict (the promotion
    gate's ``block_on_monitoring_act`` reads it); returns how many points were logged."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from response_model.modeling.registry import MONITORING_TAGS

    points = [Metric(key, value, stamp, step) for key, value, step, stamp in metric_points(state)]
    client = MlflowClient()
    for start in range(0, len(points), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=points[start:start + 1000])
    acts = ",".join(check for check, verdict in state["verdicts"].items() if verdict == "act")
    # what the promotion gate's block_on_monitoring_act reads (modeling/registry.monitoring_reasons)
    for key, value in zip(MONITORING_TAGS, (state["verdict"], acts or "none", datetime.now(UTC).isoformat())):
        client.set_tag(run_id, key, value)
    return len(points)


@click.command("monitor", context_settings=_CONTEXT)
@click.option("--model-uri", required=True, help="The served model (models:/NAME/V, models:/NAME@alias or a folder).")
@click.option("--since", required=True, help="Start of the period (ISO 8601, UTC; e.g. 2026-11-01).")
@click.option("--until", default=None, help="End of the period (ISO 8601, UTC). Default: now.")
@_db_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("monitoring-report.html"), show_default=True, help="Where the HTML report goes.")
@click.option("--config", default="monitoring.yaml", show_default=True, help="Thresholds (configs/monitoring.yaml).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole state as JSON instead of the verdicts.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the metrics to the model's MLflow run.")
def monitor_command(model_uri: str, since: str, until: str | None, db_url: str | None, report_path: Path,
                    config: str, as_json: bool, no_mlflow: bool) -> None:
    """Drift, live and expected performance of MODEL-URI's served predictions since SINCE: a verdict per
    check (ok / watch / act), the metrics logged to the model's run, an HTML report. Exit code 0."""
    from response_model.modeling.predict import as_bundle, load_model
    from response_model.modeling.registry import require_model
    from response_model.monitoring import checks, report
    from response_model.monitoring.profile import ProfileError
    from response_model.service.audit import AuditTrail

    start, end = _utc(since, "--since"), _utc(until, "--until") or datetime.now(UTC)
    cfg = checks.thresholds(config)
    problem = checks.period_problem(start, end, cfg)
    if problem:
        raise click.BadParameter(problem.removeprefix("since: "), param_hint="--since")
    require_model(model_uri)
    model = load_model(model_uri)
    bundle = as_bundle(model)
    with _clean_errors(), AuditTrail(db_url, create=False) as trail:
        try:
            state = checks.monitoring_state(bundle, trail, start, end, cfg)
        except ProfileError as error:
            raise click.ClickException(str(error)) from None
    report.write_report(state, report_path, cfg, f"Monitoring of {bundle.metadata.get('model_name')} "
                                                 f"version {bundle.metadata.get('model_version')}")
    run_id = getattr(model.metadata, "run_id", None)
    logged = 0 if no_mlflow or not run_id else log_to_run(run_id, state)
    if as_json:
        click.echo(json.dumps(state, indent=1, default=str))
        return
    if state.get("label"):
        click.echo(f"label: {state['label']}")
    for check, verdict in state["verdicts"].items():
        click.echo(f"{check:<22} {verdict}")
    click.echo(f"{'overall':<22} {state['verdict']}  ({state['requests']} predictions, {state['labelled']} labelled)")
    click.echo(f"report: {report_path}" + (f"; {logged} metrics logged to run {run_id}" if logged else ""))
