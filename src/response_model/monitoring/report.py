"""The HTML monitoring report: the verdicts, then plots of drift per feature over time, the live
calibration curve and performance over time with bands (:mod:`response_model.plots`), as one file
with the figures embedded. It shows what :func:`~.checks.monitor` returned — aggregates only."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from response_model import plots

TOP_FEATURES = 8  # features drawn in the drift plot: the most drifted ones


def _png(fig: Any) -> str:
    """An <img> tag of ``fig`` as an embedded PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plots.plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def feature_series(state: Mapping[str, Any]) -> dict[str, pd.Series]:
    """PSI per window of the :data:`TOP_FEATURES` features with the largest PSI in any window."""
    table: dict[str, dict[pd.Timestamp, float]] = {}
    for window in state["windows"]:
        items = window["checks"].get("feature_drift", {}).get("items") or {}
        for name, item in items.items():
            if item.get("psi") is not None:
                table.setdefault(name, {})[pd.Timestamp(window["start"])] = item["psi"]
    largest = sorted(table, key=lambda n: -max(table[n].values()))[:TOP_FEATURES]
    return {name: pd.Series(table[name]).sort_index() for name in largest}


def performance_table(state: Mapping[str, Any]) -> pd.DataFrame:
    """Live AUC per window and cell with its interval (suppressed and unlabelled cells left out)."""
    rows = []
    for window in state["windows"]:
        for cell, metrics in (window["checks"].get("live_performance") or {}).items():
            interval = metrics.get("auc_interval")
            if metrics.get("auc") is not None and interval:
                rows.append({"cell": cell, "start": pd.Timestamp(window["start"]), "value": metrics["auc"],
                             "lower": interval[0], "upper": interval[1]})
    return pd.DataFrame(rows, columns=["cell", "start", "value", "lower", "upper"])


def _verdict_table(state: Mapping[str, Any]) -> str:
    """The verdicts as an HTML table."""
    rows = "".join(f"<tr><td>{html.escape(check)}</td><td class='{verdict.replace('/', '')}'>{verdict}</td></tr>"
                   for check, verdict in state["verdicts"].items())
    return f"<table><tr><th>check</th><th>verdict</th></tr>{rows}</table>"


def write_report(state: Mapping[str, Any], path: str | Path, cfg: Mapping[str, Any], title: str) -> Path:
    """Write the report of ``state`` (:func:`~.checks.monitor`) to ``path``; returns the path."""
    label = state.get("label")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class='label'><b>{html.escape(label)}</b></p>" if label else "",
             f"<p>Period {html.escape(state['period']['since'])} to {html.escape(state['period']['until'])}: "
             f"{state['requests']} served predictions, {state['labelled']} labelled rows. Overall verdict: "
             f"<b>{state['verdict']}</b>. Cells with fewer than {state['k']} patients are suppressed.</p>",
             _verdict_table(state)]
    series = feature_series(state)
    if series:
        rule = cfg["feature_psi"]
        parts += ["<h2>Drift per feature over time</h2>",
                  _png(plots.drift_over_time_plot(series, rule["watch"], rule["act"], "Input drift (PSI)"))]
    curves = {cell: m["calibration_curve"] for cell, m in state["performance"]["live"].items()
              if m.get("calibration_curve")}
    if curves:
        parts += ["<h2>Live calibration</h2>", _png(plots.live_calibration_plot(curves, "Live calibration"))]
    table = performance_table(state)
    if len(table):
        parts += ["<h2>Performance over time</h2>", _png(plots.performance_over_time_plot(table, "Live AUC"))]
    parts += ["<h2>All figures (JSON)</h2>",
              f"<pre>{html.escape(json.dumps(state, indent=1, default=str))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto} td,th{padding:2px 8px} "
             ".act{background:#f99} .watch{background:#fd8} .ok{background:#bfb} pre{font-size:small}")
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(path)
    path.write_text(document, encoding="utf-8")
    return path
