"""Plots of cohorts, saved as files (and later logged to MLflow)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # files only on servers and in CI; notebooks keep their inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _interval_bars(ax, table: pd.DataFrame, value: str, offset: float, label: str, color: str) -> None:
    y = np.arange(len(table)) + offset
    lower = (table[value] - table["lower"]).clip(lower=0)
    upper = (table["upper"] - table[value]).clip(lower=0)
    ax.errorbar(100 * table[value], y, xerr=[100 * lower, 100 * upper], fmt="o", color=color,
                capsize=3, label=label)


def prevalence_plot(observed: Mapping[str, pd.DataFrame], literature: Mapping[str, float]) -> Figure:
    """Return a dot plot of pathway prevalences (%, 95 % CI) per cohort against literature values."""
    names = list(literature)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (cohort, table) in enumerate(observed.items()):
        _interval_bars(ax, table.reindex(names), "prevalence", 0.15 * index, cohort, colors[index % len(colors)])
    ax.scatter([100 * literature[n] for n in names], np.arange(len(names)) - 0.15, marker="|", s=200,
               color="black", label="literature")
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("prevalence among sequenced tumours (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def response_rate_plot(rates: pd.DataFrame, targets: Mapping[str, float] | None = None, title: str = "") -> Figure:
    """Return a dot plot of objective response rates (%, 95 % CI) per group, with trial targets if given."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rates) + 1.5))
    _interval_bars(ax, rates, "orr", 0.0, "observed", "tab:blue")
    if targets:
        known = [(i, targets[g]) for i, g in enumerate(rates.index) if g in targets]
        ax.scatter([100 * t for _, t in known], [i for i, _ in known], marker="|", s=250, color="black",
                   label="trial ORR")
    ax.set_yticks(np.arange(len(rates)), [f"{g} (n={n})" for g, n in zip(rates.index, rates["n"])])
    ax.invert_yaxis()
    ax.set_xlabel("objective response rate (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def roc_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """Return ROC curves of several models; ``curves`` maps a label to (labels 0/1, predicted probability)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (y, p) in curves.items():
        keep = ~np.isnan(p)
        fpr, tpr, _ = roc_curve(y[keep], p[keep])
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y[keep], p[keep]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def calibration_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], bins: int = 10, title: str = "") -> Figure:
    """Return reliability curves (observed vs predicted, equal-frequency bins) of several models."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (y, p) in curves.items():
        keep = ~np.isnan(p)
        order = np.argsort(p[keep])
        groups = np.array_split(order, bins)
        predicted = [p[keep][g].mean() for g in groups if len(g)]
        observed = [y[keep][g].mean() for g in groups if len(g)]
        ax.plot(predicted, observed, marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def shap_summary_plot(contributions: pd.DataFrame, features: pd.DataFrame, title: str = "",
                      max_display: int = 15) -> Figure:
    """Return a SHAP beeswarm summary of per-patient contributions (columns = features).

    One row per feature, the ``max_display`` largest by mean |contribution| with the largest on top; each
    patient a dot at its contribution, stacked where contributions are alike, coloured by the feature's
    value (blue low to red high between its 5th and 95th percentiles; grey: missing). The layout of
    ``shap.summary_plot``, drawn with one scatter per row: training draws one per model, and shap's own is slow.
    """
    names = contributions.abs().mean().sort_values(ascending=False).index[:max_display][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    cmap = plt.get_cmap("coolwarm")
    for row, name in enumerate(names):
        x = contributions[name].to_numpy(dtype=float)
        value = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)
        y = row + _swarm_offsets(x, height=0.4)
        known = ~np.isnan(value)
        ax.scatter(x[~known], y[~known], s=10, color="#aaaaaa", linewidths=0, alpha=0.8, rasterized=True)
        if known.any():
            low, high = np.percentile(value[known], [5, 95])
            shade = np.clip((value[known] - low) / (high - low), 0, 1) if high > low else np.full(known.sum(), 0.5)
            ax.scatter(x[known], y[known], s=10, c=cmap(shade), linewidths=0, alpha=0.8, rasterized=True)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(names)), list(names))
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("SHAP value (contribution of the feature)")
    colorbar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap), ax=ax, ticks=[0, 1], aspect=40, pad=0.02)
    colorbar.ax.set_yticklabels(["low", "high"])
    colorbar.set_label("feature value")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _swarm_offsets(x: np.ndarray, height: float, bins: int = 100) -> np.ndarray:
    """Vertical offsets (within ±``height``) that stack the points of ``x`` falling in the same one of
    ``bins`` equal bins alternately above and below the row, as shap's beeswarm does."""
    span = np.ptp(x) if len(x) else 0.0
    binned = np.round((x - x.min()) / (span or 1.0) * bins).astype(int) if len(x) else x.astype(int)
    order = np.argsort(binned, kind="stable")
    sorted_bins = binned[order]
    starts = np.r_[True, sorted_bins[1:] != sorted_bins[:-1]] if len(x) else np.zeros(0, dtype=bool)
    rank = np.arange(len(x)) - np.maximum.accumulate(np.where(starts, np.arange(len(x)), 0))
    layer = ((rank + 1) // 2) * np.where(rank % 2 == 1, 1.0, -1.0)
    offsets = np.empty(len(x))
    offsets[order] = layer
    widest = np.abs(offsets).max() if len(x) else 0.0
    return offsets * (height / widest) if widest > 0 else offsets


def shap_dependence_plot(contributions: pd.DataFrame, features: pd.DataFrame, feature: str, title: str = "",
                         scale: str = "log-odds") -> Figure:
    """Return a dependence plot: one feature's value (x) against its contribution (y, ``scale``) per patient.

    Patients missing the feature are drawn at the left edge in grey (their count in the legend).
    """
    x = features[feature].to_numpy(dtype=float)
    y = contributions[feature].to_numpy(dtype=float)
    missing = np.isnan(x)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(x[~missing], y[~missing], s=8, alpha=0.5, color="tab:blue",
               label=f"observed (n={int((~missing).sum())})")
    if missing.any():
        left = np.nanmin(x) if (~missing).any() else 0.0
        spread = (np.nanmax(x) - left) if (~missing).any() else 1.0
        ax.scatter(np.full(int(missing.sum()), left - 0.08 * (spread or 1.0)), y[missing], s=8, alpha=0.5,
                   color="grey", label=f"missing (n={int(missing.sum())})")
    ax.axhline(0.0, color="grey", linestyle=":")
    ax.set_xlabel(feature)
    ax.set_ylabel(f"contribution ({scale})")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` (PNG at 120 dpi), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- monitoring (response_model.monitoring.report) ------------------------------------------------


def drift_over_time_plot(series: Mapping[str, pd.Series], watch: float, act: float, title: str = "") -> Figure:
    """Return a line plot of each feature's PSI per window (index: window start) with the watch / act levels."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in series.items():
        ax.plot(values.index, values.to_numpy(dtype=float), marker="o", label=name)
    ax.axhline(watch, color="tab:orange", linestyle="--", label=f"watch ({watch})")
    ax.axhline(act, color="tab:red", linestyle="--", label=f"act ({act})")
    ax.set_ylabel("population stability index")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def live_calibration_plot(curves: Mapping[str, Sequence[Mapping[str, float]]], title: str = "") -> Figure:
    """Return observed against predicted share per bin (each bin's n in the legend's total), one line per cell."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="ideal")
    for name, bins in curves.items():
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"{name} (n={sum(b['n'] for b in bins)})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def performance_over_time_plot(table: pd.DataFrame, title: str = "") -> Figure:
    """Return a metric per window with its interval as a band; ``table``: columns cell, start, value,
    lower, upper (one row per window and cell)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, rows in table.groupby("cell"):
        ax.plot(rows["start"], rows["value"], marker="o", label=name)
        ax.fill_between(rows["start"], rows["lower"], rows["upper"], alpha=0.2)
    ax.set_ylabel("AUC (95 % bootstrap interval)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
