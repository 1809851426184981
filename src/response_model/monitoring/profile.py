"""The training cohort's reference profile for drift monitoring, and the served inputs' form.

:func:`record_inputs` is what the audit trail stores of a scored patient (``inputs``): the validated
record as JSON, without its identifier and without empty fields. :func:`input_frame` turns such
dicts into the monitored columns; :func:`reference_profile` summarises the training cohort in those
columns once, when the bundle is built (numeric: quantile bin edges and shares; categorical: level
shares; missingness shares and patterns; a sample without identifiers for the domain classifier;
the bundle's predicted probabilities on that sample), so nothing is re-derived at serving time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from response_model.schema import _NUMERIC_FIELDS, INPUT_FIELDS, PatientRecord

PROFILE_FORMAT = "monitoring-reference/1"
MISSING = "(missing)"  # the level of a categorical field that was not given
#: The monitored columns: every record field but the identifier; ``alterations`` as its count.
NUMERIC_COLUMNS: tuple[str, ...] = tuple(f for f in INPUT_FIELDS if f in _NUMERIC_FIELDS) + ("n_alterations",)
CATEGORICAL_COLUMNS: tuple[str, ...] = tuple(
    f for f in INPUT_FIELDS if f not in _NUMERIC_FIELDS and f not in ("patient_id", "alterations"))
N_BINS = 10  # deciles of the training cohort (the usual PSI binning)
SAMPLE_ROWS = 500  # training rows kept for the domain classifier
TOP_PATTERNS = 20  # missingness patterns kept by share; the rest pooled as "other"


class ProfileError(ValueError):
    """The model has no usable reference profile (built before monitoring existed, or damaged)."""


def record_inputs(record: PatientRecord) -> dict[str, Any]:
    """The stored form of a scored record: its JSON fields without ``patient_id`` and empty fields."""
    return record.model_dump(mode="json", exclude={"patient_id"}, exclude_none=True)


def input_frame(inputs: Iterable[Mapping[str, Any] | None]) -> pd.DataFrame:
    """The monitored columns of stored inputs (one row each; numeric as float, categorical as text,
    missing as NaN / None). ``alterations`` becomes ``n_alterations`` (missing when not genotyped)."""
    rows = []
    for item in inputs:
        item = dict(item or {})
        alterations = item.pop("alterations", None)
        item["n_alterations"] = None if alterations is None else len(alterations)
        rows.append(item)
    frame = pd.DataFrame.from_records(rows, columns=[*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS])
    for name in NUMERIC_COLUMNS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    for name in CATEGORICAL_COLUMNS:
        frame[name] = frame[name].map(lambda v: None if v is None or v != v else str(v).lower()
                                      if isinstance(v, bool) else str(v))
    return frame


def missing_pattern(frame: pd.DataFrame) -> pd.Series:
    """Each row's missingness pattern as text: the sorted names of its missing columns ('' = none)."""
    missing = frame.isna()
    names = np.array(frame.columns)
    return pd.Series([",".join(names[row]) for row in missing.to_numpy()], index=frame.index)


def _numeric(values: pd.Series) -> dict[str, Any]:
    """Decile edges of the given values and the shares in each bin (PSI reference), the missing share
    and the range seen (values beyond it are binned apart when served: a unit change lands there)."""
    present = values.dropna().to_numpy()
    missing = float(values.isna().mean()) if len(values) else 0.0
    if present.size == 0:
        return {"edges": [], "shares": [], "missing": missing}
    edges = np.unique(np.quantile(present, np.linspace(0, 1, N_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / present.size).tolist(), "missing": missing,
            "range": [float(present.min()), float(present.max())]}


def _categorical(values: pd.Series) -> dict[str, Any]:
    """Level shares (missing as :data:`MISSING`) and the missing share."""
    shares = values.fillna(MISSING).value_counts(normalize=True)
    return {"levels": {str(k): float(v) for k, v in shares.items()}, "missing": float(values.isna().mean())}


def reference_profile(records: Sequence[PatientRecord], probabilities: pd.DataFrame | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """The reference profile (JSON-safe) of the training ``records``; ``probabilities``: the bundle's
    predictions of :data:`SAMPLE_ROWS` sampled records (:func:`sample_records`: columns regimen,
    outcome, probability), kept as the predicted-probability reference."""
    frame = input_frame(record_inputs(r) for r in records)
    patterns = missing_pattern(frame).value_counts(normalize=True)
    kept = patterns.head(TOP_PATTERNS)
    sample = frame.loc[sample_records(len(frame), seed)]
    return {
        "format": PROFILE_FORMAT, "n": len(frame),
        "numeric": {c: _numeric(frame[c]) for c in NUMERIC_COLUMNS},
        "categorical": {c: _categorical(frame[c]) for c in CATEGORICAL_COLUMNS},
        "patterns": {**{k: float(v) for k, v in kept.items()}, "other": float(max(0.0, 1 - kept.sum()))},
        "sample": sample.astype(object).where(sample.notna(), None).to_dict(orient="list"),
        "probabilities": None if probabilities is None else
        probabilities[["regimen", "outcome", "probability"]].to_dict(orient="list"),
    }


def sample_records(n: int, seed: int = 0) -> np.ndarray:
    """Positions of the (at most :data:`SAMPLE_ROWS`) training rows kept in the profile, seeded."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, SAMPLE_ROWS), replace=False))


def profile_of(bundle: Any) -> dict[str, Any]:
    """The bundle's reference profile; raises ProfileError saying how to get one when it has none."""
    profile = getattr(bundle, "monitoring_reference", None)
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise ProfileError("the model has no monitoring reference profile of its training cohort (it was "
                           "built before monitoring existed): retrain it with this version of response-model "
                           "(`response-model train`) to monitor drift")
    return profile


def sample_frame(profile: Mapping[str, Any]) -> pd.DataFrame:
    """The profile's training sample as monitored columns (as :func:`input_frame` gives them)."""
    frame = pd.DataFrame(profile["sample"]).reindex(columns=[*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS])
    for name in NUMERIC_COLUMNS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return frame
