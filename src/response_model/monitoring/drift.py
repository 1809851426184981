"""Drift of what the service is asked against the training cohort's reference profile (:mod:`.profile`).

Each statistic compares one window of served requests with the reference:

- :func:`feature_drift`: per input feature, the population stability index (PSI) over the training
  cohort's decile bins (numeric; values beyond its range in bins of their own) or levels
  (categorical), missing values a bin of their own, and a
  chi-square test of the same counts (reference counts = its shares × its n).
- :func:`pattern_drift`: PSI and chi-square over the missingness patterns (which fields are missing
  together), the training cohort's most frequent patterns and the rest pooled.
- :func:`domain_auc`: a classifier told to separate served requests from the training sample,
  cross-validated; its AUC is 0.5 when they cannot be told apart, whatever the features' joint shift.
- :func:`probability_drift`: PSI and chi-square of the predicted probabilities per regimen ×
  outcome over the deciles of the bundle's own predictions on its training sample.

PSI = Σ (a − e) · ln(a / e) over bins, shares a (served) and e (reference) floored at
:data:`SHARE_FLOOR` so that an empty bin does not make it infinite. PSI is an effect size whose
sampling noise grows as the window shrinks (≈ (bins − 1) · (1/n + 1/N)), so the verdicts
(:mod:`.checks`) also ask the chi-square p-value to be small: a small window cannot raise an alarm on
noise alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from response_model.monitoring.profile import (
    CATEGORICAL_COLUMNS,
    MISSING,
    NUMERIC_COLUMNS,
    missing_pattern,
    sample_frame,
)

SHARE_FLOOR = 1e-4
MIN_EXPECTED = 5.0
NEW_LEVEL = "(not in training)"


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of ``actual`` shares against ``expected`` shares (same bins)."""
    e = np.clip(np.asarray(expected, dtype=float), SHARE_FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=float), SHARE_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def chi_square_p(expected_shares: np.ndarray, n_reference: int, counts: np.ndarray) -> float:
    """The p-value of the chi-square test that served ``counts`` and the reference (its shares × its
    n) come from one distribution over the bins; 1.0 when fewer than two bins are occupied. Bins where
    fewer than :data:`MIN_EXPECTED` served rows are expected are pooled first, into one bin or, still
    sparse, with the smallest other bin (Cochran's rule: the chi-square approximation fails on sparse
    cells — a level two training patients had — and would alarm on noise)."""
    shares, counts = np.asarray(expected_shares, dtype=float), np.asarray(counts, dtype=float)
    rare = shares * counts.sum() < MIN_EXPECTED
    if rare.any() and (~rare).any():
        shares, counts = np.append(shares[~rare], shares[rare].sum()), np.append(counts[~rare], counts[rare].sum())
        if shares[-1] * counts.sum() < MIN_EXPECTED:  # still sparse: into the smallest other bin
            j = int(np.argmin(shares[:-1]))
            shares[j], counts[j] = shares[j] + shares[-1], counts[j] + counts[-1]
            shares, counts = shares[:-1], counts[:-1]
    table = np.vstack([shares * n_reference, counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table[1].sum() == 0:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False)[1])


def _result(expected: np.ndarray, counts: np.ndarray, n_reference: int) -> dict[str, Any]:
    """PSI, chi-square p-value and n of one comparison."""
    n = int(counts.sum())
    shares = counts / n if n else counts.astype(float)
    return {"psi": psi(expected, shares) if n else None, "p_value": chi_square_p(expected, n_reference, counts),
            "n": n}


def _numeric_counts(spec: Mapping[str, Any], values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(reference shares, served counts) over the decile bins, a missing bin and two bins beyond the
    training range (below its minimum, above its maximum: reference share 0)."""
    edges = np.asarray(spec["edges"], dtype=float)
    missing = float(spec["missing"])
    shares = np.asarray(spec["shares"] or [0.0], dtype=float)  # [0.0]: never given in training
    expected = np.concatenate([(1 - missing) * shares, [missing, 0.0, 0.0]])
    present = values.dropna().to_numpy()
    low, high = spec.get("range") or (-np.inf, np.inf)
    inside = present[(present >= low) & (present <= high)]
    counts = np.bincount(np.searchsorted(edges, inside, side="right"), minlength=len(edges) + 1)
    return expected, np.concatenate([counts, [values.isna().sum(), (present < low).sum(), (present > high).sum()]])


def _categorical_counts(spec: Mapping[str, Any], values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(reference shares, served counts) over the training levels (missing one of them) and a bin of
    levels training never saw."""
    levels = list(spec["levels"])
    seen = values.fillna(MISSING).value_counts()
    counts = [int(seen.get(level, 0)) for level in levels] + [int(seen[~seen.index.isin(levels)].sum())]
    return np.array([*spec["levels"].values(), 0.0]), np.array(counts)


def feature_drift(profile: Mapping[str, Any], inputs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per monitored feature: ``psi``, ``p_value``, ``n`` and the served and reference missing shares."""
    n_ref, out = int(profile["n"]), {}
    for name in NUMERIC_COLUMNS + CATEGORICAL_COLUMNS:
        numeric = name in NUMERIC_COLUMNS
        spec = profile["numeric" if numeric else "categorical"][name]
        expected, counts = (_numeric_counts if numeric else _categorical_counts)(spec, inputs[name])
        out[name] = {**_result(expected, counts, n_ref), "missing_reference": float(spec["missing"]),
                     "missing_served": float(inputs[name].isna().mean()) if len(inputs) else None}
    return out


def pattern_drift(profile: Mapping[str, Any], inputs: pd.DataFrame) -> dict[str, Any]:
    """PSI and chi-square of the served missingness patterns against training's."""
    shares = dict(profile["patterns"])
    seen = missing_pattern(inputs).value_counts()
    named = [k for k in shares if k != "other"]
    counts = np.array([int(seen.get(k, 0)) for k in named] + [int(seen[~seen.index.isin(named)].sum())])
    return _result(np.array([shares[k] for k in named] + [shares.get("other", 0.0)]), counts, int(profile["n"]))


def _design(frame: pd.DataFrame, categories: Mapping[str, list[str]]) -> pd.DataFrame:
    """Numeric columns as they are (NaN kept; a column missing throughout left out, which the
    classifier cannot bin) and categorical ones as pandas categories, for the classifier."""
    out = frame[[c for c in NUMERIC_COLUMNS if frame[c].notna().any()]].copy()
    for name in CATEGORICAL_COLUMNS:
        out[name] = pd.Categorical(frame[name].fillna(MISSING), categories=categories[name])
    return out


def domain_auc(profile: Mapping[str, Any], inputs: pd.DataFrame, seed: int = 0, folds: int = 3) -> float | None:
    """The cross-validated AUC of a gradient-boosted classifier separating served ``inputs`` from the
    profile's training sample (None when either side has fewer than ``folds`` rows); at most as many
    served rows as the sample has are used (drawn, seeded), so the classes stay balanced."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    reference = sample_frame(profile)
    if len(inputs) < folds or len(reference) < folds:
        return None
    rng = np.random.default_rng(seed)
    served = inputs.iloc[np.sort(rng.choice(len(inputs), size=min(len(inputs), len(reference)), replace=False))]
    both = pd.concat([reference, served], ignore_index=True)
    categories = {c: sorted(set(both[c].fillna(MISSING).astype(str))) for c in CATEGORICAL_COLUMNS}
    X, y = _design(both, categories), np.r_[np.zeros(len(reference)), np.ones(len(served))]
    model = HistGradientBoostingClassifier(max_iter=40, max_depth=3, learning_rate=0.1,
                                           categorical_features="from_dtype", random_state=seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):  # small data: threads only contend (as the training does: train.py)
        scores = cross_val_predict(model, X, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def probability_drift(profile: Mapping[str, Any], probabilities: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per ``regimen/outcome`` served: PSI and chi-square of the predicted probabilities over the
    deciles of the bundle's predictions on its training sample. Empty when the profile has none."""
    reference = pd.DataFrame(profile.get("probabilities") or {"regimen": [], "outcome": [], "probability": []})
    out = {}
    for (regimen, outcome), served in probabilities.groupby(["regimen", "outcome"]):
        ref = reference.loc[(reference["regimen"] == regimen) & (reference["outcome"] == outcome), "probability"]
        if len(ref) < 10:
            continue
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
        expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
        counts = np.bincount(np.searchsorted(edges, served["probability"], side="right"), minlength=len(edges) + 1)
        out[f"{regimen}/{outcome}"] = _result(expected, counts, len(ref))
    return out
