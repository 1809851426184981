"""Figures of the trial-design report (in the style of :mod:`response_model.plots`): prevalence bars, power
curves against sample size, a forest plot of effects by subset and a covariate-balance plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from response_model.errors import InputError
from response_model.plots import plt

#: columns of the effects frame (from response_model.trials.effects) the forest plot reads
EFFECT_COLUMNS = ("subset", "arm", "comparator", "endpoint", "estimator", "arm_rate", "comparator_rate",
                  "difference", "lower", "upper", "n_subset")
#: columns of the balance frame the balance plot reads
BALANCE_COLUMNS = ("covariate", "smd_unweighted", "smd_weighted")
ESTIMATORS = ("naive", "model", "adjusted")


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise InputError naming the columns of ``columns`` that ``frame`` lacks."""
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise InputError(f"the {what} frame lacks column(s) {', '.join(absent)}; expected {', '.join(columns)}")


def prevalence_bars(table: pd.DataFrame) -> Figure:
    """Horizontal bars of each subset's prevalence among tested patients (%, 95 % CI), with the share of
    unknown status beside the label; ``table``: index subset, columns prevalence, lower, upper, unknown_share."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.5))
    y = np.arange(len(table))
    values = 100 * table["prevalence"].to_numpy(dtype=float)
    low = values - 100 * table["lower"].to_numpy(dtype=float)
    high = 100 * table["upper"].to_numpy(dtype=float) - values
    ax.barh(y, values, xerr=[np.clip(low, 0, None), np.clip(high, 0, None)], color="tab:blue", alpha=0.8, capsize=3)
    ax.set_yticks(y, [f"{name} ({share:.0%} unknown)" for name, share in zip(table.index, table["unknown_share"])])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("prevalence among tested patients (%, 95 % CI)")
    fig.tight_layout()
    return fig


def power_curves(curve: pd.DataFrame, designed: pd.DataFrame, monte_carlo: pd.DataFrame | None = None) -> Figure:
    """Analytic power against patients randomised (one line per design and hypothesis), the designed sizes
    marked, and the Monte-Carlo estimates (± 2 SE) where given."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = {"enrichment": "enrichment (subset only)", "all_comers_overall": "all-comers: overall",
              "all_comers_subset": "all-comers: subset (secondary)"}
    for column, label in labels.items():
        if column in curve:
            ax.plot(curve["n_total"], 100 * curve[column], label=label)
    for power in sorted(set(designed["target_power"])):
        ax.axhline(100 * power, color="grey", lw=0.6, ls=":")
    if monte_carlo is not None and not monte_carlo.empty:
        ax.errorbar(monte_carlo["n_total"], 100 * monte_carlo["empirical_power"], yerr=200 * monte_carlo["mc_se"],
                    fmt="o", color="black", ms=4, capsize=2, label="Monte-Carlo (simulator truth)")
    ax.set_xlabel("patients randomised (1:1)")
    ax.set_ylabel("power (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def forest_plot(effects: pd.DataFrame) -> Figure:
    """Differences arm − comparator (percentage points, interval) per subset × pair × endpoint, one marker per
    estimator (naive, model, adjusted)."""
    require_columns(effects, EFFECT_COLUMNS, "effects")
    cells = effects[["subset", "arm", "comparator", "endpoint"]].drop_duplicates().reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(cells) + 1.6))
    colors = {"naive": "tab:grey", "model": "tab:orange", "adjusted": "tab:blue"}
    for k, estimator in enumerate(ESTIMATORS):
        rows = effects[effects["estimator"] == estimator].merge(cells.reset_index(), on=list(cells.columns))
        if rows.empty:
            continue
        y = rows["index"].to_numpy() + (k - 1) * 0.22
        diff = 100 * rows["difference"].to_numpy(dtype=float)
        err = [np.clip(diff - 100 * rows["lower"].to_numpy(dtype=float), 0, None),
               np.clip(100 * rows["upper"].to_numpy(dtype=float) - diff, 0, None)]
        ax.errorbar(diff, y, xerr=err, fmt="o", color=colors[estimator], capsize=2, label=estimator)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(cells)), [f"{c.subset}: {c.arm} vs {c.comparator} ({c.endpoint})"
                                          for c in cells.itertuples()], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference in rate, arm − comparator (percentage points)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def balance_plot(balance: pd.DataFrame, threshold: float = 0.1) -> Figure:
    """Absolute standardised mean differences per covariate before and after weighting, with the usual
    0.1 threshold."""
    require_columns(balance, BALANCE_COLUMNS, "balance")
    table = balance.assign(order=balance["smd_unweighted"].abs()).sort_values("order")
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(table) + 1.5))
    y = np.arange(len(table))
    ax.scatter(table["smd_unweighted"].abs(), y, color="tab:grey", label="unweighted")
    ax.scatter(table["smd_weighted"].abs(), y, color="tab:blue", label="weighted")
    ax.axvline(threshold, color="tab:red", lw=0.8, ls="--")
    ax.set_yticks(y, table["covariate"], fontsize=8)
    ax.set_xlabel("|standardised mean difference|")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
