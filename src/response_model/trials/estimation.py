"""Cross-fitted augmented inverse-probability weighting (AIPW, doubly robust) for a pair of regimens.

Shared by :mod:`response_model.trials.effects` (effects in subsets) and
:mod:`response_model.trials.discover` (rules for heterogeneity). For the patients given the arm or
the comparator (the *pair population*) :func:`fit_pair` returns each patient's doubly robust
pseudo-outcomes ψ_arm, ψ_comparator: their mean over any covariate-defined subset estimates the
expected rate of the endpoint had the whole subset received that regimen, and their per-patient
spread gives the influence-function standard error.

Nuisance models (configs/trial_effects.yaml ``adjusted``): a propensity model P(arm | X) on the pair
population and an outcome model P(y = 1 | X) per regimen on its labelled patients, each a
HistGradientBoostingClassifier (missing values handled natively), cross-fitted over K folds.
Propensities are clipped to ``propensity_bounds`` (weights truncated; the share outside is reported).
Unlabelled patients carry their weight to the labelled ones: for primary resistance (unlabelled when
censored before the window without progression) by inverse probability of censoring weighting, for
objective response (no assessment) as missing at random within each regimen (1 / labelled share).

Implemented here with scikit-learn rather than EconML because the report needs each regimen's own
rate (EconML's DR learners give the difference) and discovery needs the per-patient pseudo-outcomes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from response_model.config import load_yaml
from response_model.dataset import TreatmentOutcome
from response_model.errors import InputError
from response_model.features import FeatureBlocks
from response_model.schema import PatientRecord

#: The endpoints, as labelled by configs/outcomes.yaml (TreatmentOutcome fields).
ENDPOINTS: tuple[str, ...] = ("objective_response", "primary_resistance")
SETTINGS_FILE = "trial_effects.yaml"


def settings(config: str = SETTINGS_FILE) -> dict[str, Any]:
    """The parsed estimation settings (configs/trial_effects.yaml or the path given)."""
    return load_yaml(config)


@dataclass
class CohortTable:
    """A validated cohort as arrays: the records and outcomes, the regimen given ("" if none), the endpoint labels
    (1.0 / 0.0, NaN = not labelled), the patient features (response_model.features) and PFS times."""

    records: list[PatientRecord]
    outcomes: list[TreatmentOutcome]
    given: np.ndarray
    labels: dict[str, np.ndarray]
    covariates: pd.DataFrame
    pfs: dict[str, np.ndarray] = field(default_factory=dict)  # "months", "event" (NaN = not recorded)

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def of(cls, cohort: Any) -> CohortTable:
        """The table of a ParsedCohort (or a LoadedCohort holding one)."""
        parsed = getattr(cohort, "parsed", cohort)
        records, outcomes = list(parsed.records), list(parsed.outcomes)
        given = np.array([o.regimen or "" for o in outcomes], dtype=object)
        labels = {e: np.array([np.nan if getattr(o, e) is None else float(getattr(o, e)) for o in outcomes])
                  for e in ENDPOINTS}
        covariates = FeatureBlocks.of_pairs(records, np.arange(len(records))).frame()
        pfs = {key: np.array([np.nan if getattr(o, name) is None else float(getattr(o, name)) for o in outcomes])
               for key, name in (("months", "pfs_months"), ("event", "pfs_event"))}
        return cls(records, outcomes, given, labels, covariates, pfs)

    def nuisance_matrix(self) -> np.ndarray:
        """The covariates the nuisance models read: every patient feature not constant in the cohort."""
        frame = self.covariates
        varying = [c for c in frame.columns if frame[c].nunique(dropna=False) > 1]
        return frame[varying].to_numpy(dtype=float)


def check_endpoints(endpoints: Sequence[str]) -> list[str]:
    """``endpoints`` as a list; InputError naming the nearest valid one for an unknown name."""
    for endpoint in endpoints:
        if endpoint not in ENDPOINTS:
            near = difflib.get_close_matches(endpoint, ENDPOINTS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}{hint}")
    return list(endpoints)


def check_pair(arm: str, comparator: str, catalogue: Sequence[str]) -> None:
    """InputError when the arm equals the comparator or either is not a catalogue regimen."""
    for role, name in (("arm", arm), ("comparator", comparator)):
        if name not in catalogue:
            near = difflib.get_close_matches(name, catalogue, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise InputError(f"{role} {name!r} is not a catalogue regimen; {hint}expected one of "
                             f"{', '.join(catalogue)}")
    if arm == comparator:
        raise InputError(f"comparator {comparator!r} equals the arm; expected two different regimens")


@dataclass
class PairFit:
    """What :func:`fit_pair` estimated for the pair population (``rows``: cohort positions).

    ``treated``: given the arm; ``propensity_raw``: cross-fitted P(arm | X); ``propensity``: clipped;
    ``psi``: {endpoint: (ψ_arm, ψ_comparator)} per patient; ``not_estimable``: {endpoint: why}."""

    rows: np.ndarray
    treated: np.ndarray
    propensity_raw: np.ndarray
    propensity: np.ndarray
    bounds: tuple[float, float]
    psi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    not_estimable: dict[str, str] = field(default_factory=dict)

    def weights(self) -> np.ndarray:
        """Inverse-probability weights (1 / e for the arm, 1 / (1 − e) for the comparator), clipped e."""
        return np.where(self.treated, 1.0 / self.propensity, 1.0 / (1.0 - self.propensity))

    def outside(self) -> np.ndarray:
        """True where the unclipped propensity lies outside the bounds (poor overlap)."""
        low, high = self.bounds
        return (self.propensity_raw < low) | (self.propensity_raw > high)


def _learner(spec: Mapping[str, Any], seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(**dict(spec), early_stopping=False, random_state=seed)


def _cross_fitted(X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, folds: list[np.ndarray],
                  spec: Mapping[str, Any], seed: int) -> np.ndarray:
    """P(y = 1 | X) per row, each fold's rows predicted by a model fitted on the other folds'
    ``fit_rows``; a training set with one class only predicts its share (a constant)."""
    out = np.empty(len(X))
    with threadpool_limits(limits=1, user_api="openmp"):  # the small fits lose to OpenMP's overhead on a busy machine
        _fill_folds(out, X, y, fit_rows, folds, spec, seed)
    return out


def _fill_folds(out: np.ndarray, X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, folds: list[np.ndarray],
                spec: Mapping[str, Any], seed: int) -> None:
    for k, test in enumerate(folds):
        train = np.ones(len(X), dtype=bool)
        train[test] = False
        train &= fit_rows
        if not train.any():
            out[test] = np.nan
            continue
        target = y[train]
        if target.min() == target.max():
            out[test] = target[0]
            continue
        out[test] = _learner(spec, seed + k).fit(X[train], target.astype(int)).predict_proba(X[test])[:, 1]


def _folds(treated: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K folds of the pair population, stratified by regimen (fewer when a regimen has fewer patients)."""
    k = max(2, min(k, int(treated.sum()), int((~treated).sum())))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(treated)), treated)]


def fit_pair(table: CohortTable, arm: str, comparator: str, endpoints: Sequence[str], spec: Mapping[str, Any],
             seed: int = 0, rows: np.ndarray | None = None) -> PairFit:
    """The cross-fitted AIPW pseudo-outcomes of the pair population (within ``rows`` when given).

    ``spec``: the ``adjusted`` settings. Both regimens must have been given to at least two patients
    (callers check and say so first)."""
    allowed = np.ones(len(table), dtype=bool) if rows is None else np.isin(np.arange(len(table)), rows)
    pair_rows = np.flatnonzero(allowed & np.isin(table.given, [arm, comparator]))
    treated = table.given[pair_rows] == arm
    X = table.nuisance_matrix()[pair_rows]
    folds = _folds(treated, int(spec["folds"]), seed)
    everyone = np.ones(len(pair_rows), dtype=bool)
    raw = _cross_fitted(X, treated.astype(float), everyone, folds, spec["learner"], seed)
    low, high = (float(b) for b in spec["propensity_bounds"])
    fit = PairFit(pair_rows, treated, raw, np.clip(raw, low, high), (low, high))
    for endpoint in endpoints:
        y = table.labels[endpoint][pair_rows]
        labelled = ~np.isnan(y)
        missing = [name for name, given in ((arm, treated), (comparator, ~treated)) if not (labelled & given).any()]
        if missing:
            fit.not_estimable[endpoint] = (f"the cohort labels {endpoint} for no patient given "
                                           f"{' or '.join(missing)}")
            continue
        y0 = np.nan_to_num(y)
        psi = []
        for given, e in ((treated, fit.propensity), (~treated, 1.0 - fit.propensity)):
            mu = _cross_fitted(X, y0, labelled & given, folds, spec["learner"], seed + 100)
            seen = _labelled_probability(table, endpoint, pair_rows, given, labelled)
            psi.append(mu + (given & labelled) * (y0 - mu) / (e * seen))
        fit.psi[endpoint] = (psi[0], psi[1])
    return fit


def _labelled_probability(table: CohortTable, endpoint: str, pair_rows: np.ndarray, given: np.ndarray,
                          labelled: np.ndarray) -> np.ndarray | float:
    """Each labelled patient's probability of having been labelled, given the regimen.

    Primary resistance is unlabelled when follow-up ends before the window without progression: that
    depends on the outcome, so each labelled patient is weighted by the inverse probability of remaining
    under follow-up until min(PFS time, window) — a Kaplan–Meier estimate of the regimen's censoring
    distribution (IPCW). Elsewhere (and where a labelled patient lacks PFS times) the regimen's labelled
    share: missing at random within the regimen."""
    share = (labelled & given).sum() / given.sum()
    if endpoint != "primary_resistance" or not table.pfs:
        return share
    months, event = (table.pfs[k][pair_rows] for k in ("months", "event"))
    if np.isnan(months[given]).any() or np.isnan(event[given]).any():
        return share
    from lifelines import KaplanMeierFitter

    from response_model.dataset import resistance_window_months

    censoring = KaplanMeierFitter().fit(months[given], event_observed=event[given] == 0)
    # the probability of still being followed just before min(PFS time, window): events precede censoring
    until = np.minimum(np.nan_to_num(months), resistance_window_months()) - 1e-9
    probability = np.asarray(censoring.survival_function_at_times(np.maximum(until, 0.0)), dtype=float)
    return np.where(given & labelled, np.maximum(probability, 1e-3), 1.0)


def mean_interval(values: np.ndarray, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """(mean, lower, upper): the mean of ``values`` with its normal-approximation 95 % interval."""
    n = len(values)
    mean = float(values.mean())
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.inf
    return mean, mean - z * se, mean + z * se


def standardised_differences(X: pd.DataFrame, treated: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """Per column of ``X``: the standardised mean difference arm − comparator, unweighted and weighted
    (denominator: the pooled unweighted SD of both groups; each column over its non-missing rows).
    Columns: covariate, smd_unweighted, smd_weighted, n_known."""
    rows = []
    for name in X.columns:
        x = X[name].to_numpy(dtype=float)
        known = ~np.isnan(x)
        a, b = known & treated, known & ~treated
        if a.sum() < 2 or b.sum() < 2:
            rows.append((name, np.nan, np.nan, int(known.sum())))
            continue
        sd = np.sqrt((x[a].var(ddof=1) + x[b].var(ddof=1)) / 2.0)
        if sd == 0:
            rows.append((name, 0.0, 0.0, int(known.sum())))
            continue
        plain = (x[a].mean() - x[b].mean()) / sd
        weighted = (np.average(x[a], weights=weights[a]) - np.average(x[b], weights=weights[b])) / sd
        rows.append((name, float(plain), float(weighted), int(known.sum())))
    return pd.DataFrame(rows, columns=["covariate", "smd_unweighted", "smd_weighted", "n_known"])
