"""Checks that explanations can be trusted: additivity, faithfulness to a known truth, stability.

Explanations are :meth:`ResponseClassifier.explain` output: exact additive contributions on the
whole model's **log-odds scale before calibration** (the logistic part's ``coef · z`` terms plus
LightGBM's own TreeSHAP ``pred_contrib``, weighted as in the model). Units of every number here
are log-odds unless stated.

* :func:`global_importance` — mean |contribution| per feature.
* :func:`additivity_error` — max |base + Σ contributions − decision_function| over rows.
* :func:`true_effects` / :func:`faithfulness_table` — global ranks beside the simulator's true
  effects (``configs/simulator.yaml``; term → feature mapping in ``configs/explanations.yaml``).
* :func:`top_features` / :func:`stability_overlap` — per-patient top-k sets of two explanations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from response_model.config import load_yaml

SCALE = "log-odds before calibration (whole model)"


def explanation_config() -> dict[str, Any]:
    """Return ``configs/explanations.yaml``."""
    return load_yaml("explanations.yaml")


def global_importance(contributions: pd.DataFrame) -> pd.Series:
    """Return mean |contribution| per feature (log-odds), largest first."""
    return contributions.abs().mean().sort_values(ascending=False, kind="mergesort")


def additivity_error(model: Any, X: pd.DataFrame) -> float:
    """Return max over rows of |base_value + Σ contributions − model.decision_function(X)| (log-odds)."""
    contributions, base = model.explain(X)
    reconstructed = base + contributions.sum(axis=1).to_numpy()
    return float(np.max(np.abs(reconstructed - np.asarray(model.decision_function(X), dtype=float))))


def importance_ranks(contributions: pd.DataFrame, X: pd.DataFrame) -> pd.DataFrame:
    """Return importance and rank (1 = largest) of each feature that varies in ``X``.

    A feature constant in ``X`` (e.g. a cancer type absent from an HCC cohort) gets no contribution
    under either part of the model, so it is left out of the ranking rather than filling its bottom.
    Columns: importance, rank, of (the number of ranked features).
    """
    importance = global_importance(contributions)
    varying = [c for c in importance.index if c in X and X[c].nunique(dropna=False) > 1]
    table = importance.loc[varying].to_frame("importance")
    table["rank"] = np.arange(1, len(table) + 1)
    table["of"] = len(table)
    return table


def true_effects(regimen_class: str, outcome: str, simulator: str = "simulator.yaml") -> pd.DataFrame:
    """Return the simulator's true effects bearing on ``outcome`` for ``regimen_class``, by feature.

    One row per feature carrying a term (``configs/explanations.yaml`` ``simulator_terms``), one
    column per effect list of that outcome (``response`` in log-odds of objective response; ``pfs``
    in log hazard ratio of progression), plus ``term`` and ``note`` (e.g. restricted to one regimen).
    """
    from response_model.sources.simulator import load_simulator_config

    cfg = explanation_config()
    sim = load_simulator_config(simulator)
    lists = cfg["outcome_effects"][outcome]
    rows: dict[str, dict[str, Any]] = {}
    for kind in lists:
        for effect in sim["outcomes"][kind]:
            if "classes" in effect and regimen_class not in effect["classes"]:
                continue
            value = float(effect["value"])
            if value == 0.0:
                continue
            for feature in cfg["simulator_terms"].get(effect["term"], []):
                row = rows.setdefault(feature, {"term": effect["term"], "note": ""})
                row[kind] = row.get(kind, 0.0) + value
                if "regimens" in effect:
                    row["note"] = f"{kind}: only {', '.join(effect['regimens'])}"
    table = pd.DataFrame.from_dict(rows, orient="index")
    for kind in lists:
        if kind not in table:
            table[kind] = np.nan
    return table.reindex(columns=["term", *lists, "note"])


def no_effect_features(simulator: str = "simulator.yaml") -> list[str]:
    """Return the features the simulator gives no effect on any outcome (``no_effect.features``)."""
    from response_model.sources.simulator import load_simulator_config

    return list(load_simulator_config(simulator)["no_effect"]["features"])


def faithfulness_table(contributions: pd.DataFrame, X: pd.DataFrame, regimen_class: str, outcome: str,
                       simulator: str = "simulator.yaml") -> pd.DataFrame:
    """Return the global ranking beside the truth: one row per ranked feature, most important first.

    Columns: importance (mean |contribution|, log-odds), rank, of, truth ("effect" / "no effect" /
    "not in simulator" — e.g. regimen indicators, whose effect is each regimen's calibrated
    intercept, and correlates of true terms), the true effect columns of :func:`true_effects`,
    and bottom_half (rank > of / 2).
    """
    table = importance_ranks(contributions, X)
    truth = true_effects(regimen_class, outcome, simulator)
    none = set(no_effect_features(simulator))
    table["truth"] = ["effect" if f in truth.index else "no effect" if f in none else "not in simulator"
                      for f in table.index]
    table = table.join(truth, how="left")
    table["bottom_half"] = table["rank"] > table["of"] / 2.0
    table.index.name = "feature"
    return table


def top_features(contributions: pd.DataFrame, k: int = 5) -> list[frozenset[str]]:
    """Return, per row, the set of the ``k`` features with the largest |contribution|."""
    values = np.abs(contributions.to_numpy())
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    names = np.asarray(contributions.columns)
    return [frozenset(names[row]) for row in order]


def stability_overlap(first: pd.DataFrame, second: pd.DataFrame, k: int = 5) -> pd.Series:
    """Return, per row, how many of the top-``k`` features two explanations of the same rows share (0…k)."""
    if not first.index.equals(second.index):
        raise ValueError("the two explanations must cover the same rows (same index)")
    columns = sorted(set(first.columns) | set(second.columns))
    a = top_features(first.reindex(columns=columns, fill_value=0.0), k)
    b = top_features(second.reindex(columns=columns, fill_value=0.0), k)
    return pd.Series([len(x & y) for x, y in zip(a, b)], index=first.index, dtype=int)


def refit_with_seed(model: Any, X: pd.DataFrame, y: Sequence[int], seed: int) -> Any:
    """Return a clone of ``model`` with ``random_state=seed``, fitted on the same ``X``, ``y``."""
    return clone(model).set_params(random_state=seed).fit(X, y)


def seed_stability(model: Any, X: pd.DataFrame, y: Sequence[int], seeds: Sequence[int] = (0, 1), k: int = 5,
                   rows: pd.DataFrame | None = None) -> pd.Series:
    """Return the per-patient top-``k`` overlap between models refitted with the first two ``seeds``.

    Explains ``rows`` (default ``X``) with both refits; mean of the result is the stability figure.
    """
    rows = X if rows is None else rows
    first = refit_with_seed(model, X, y, seeds[0]).explain(rows)[0]
    second = refit_with_seed(model, X, y, seeds[1]).explain(rows)[0]
    return stability_overlap(first, second, k)
