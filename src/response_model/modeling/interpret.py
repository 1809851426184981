"""What a prediction means, in one place: ranks, bands, intervals, the out-of-distribution check,
the what-if genomic tests for patients never sequenced, and the patient-record field of each model
feature (the explanation terms a clinician reads: :mod:`response_model.modeling.explanation_groups`).
Pure functions over :class:`~response_model.modeling.predictor.Predictions`,
used by the API, the clinician page and batch scoring alike.

* **Ranks** — within a patient, eligible regimens by the probability of objective response as
  shown (rounded to :data:`SHOWN_DECIMALS`), highest first; ties keep the order asked; a regimen
  with no or a zero probability comes last; ineligible regimens have no rank (0).
* **Bands** — objective response: low < 0.15 ≤ moderate < 0.35 ≤ high; primary resistance:
  low < 0.25 ≤ moderate < 0.50 ≤ high.
* **Uncertainty interval** — per patient, at the level it states, where the bundle stores an ensemble
  (:mod:`response_model.modeling.uncertainty`): the ensemble's spread and the spread over the patient's
  missing fields, containing the estimate shown. Bundles without one: probability ± the upper end of the
  95 % interval over cross-validation folds of the expected calibration error (ECE) of that regimen
  class × outcome model, clipped to [0, 1] — a population-level calibration margin (:data:`UNCERTAINTY_METHOD`).
* **What-if genomic tests** — for a patient never sequenced, the probability of response is
  recomputed for the same patient as if sequenced with nothing found, and with one alteration that
  switches on one pathway (:func:`response_model.pathways.representative_alteration`); the tests
  whose result would move the estimate most are reported.
* **Out-of-distribution** — checked when the bundle's metadata holds ``feature_ranges``
  ({feature: [p1, p99]} of the training data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from response_model.pathways import load_pathways, representative_alteration
from response_model.schema import PatientRecord

if TYPE_CHECKING:
    from response_model.modeling.predictor import Predictions, Predictor

SHOWN_DECIMALS = 4  # probabilities are shown, and ranked, rounded to this many decimals
BANDS: dict[str, tuple[float, float]] = {"objective_response": (0.15, 0.35), "primary_resistance": (0.25, 0.50)}
BANDS_TEXT = {
    "objective_response": "low < 0.15 ≤ moderate < 0.35 ≤ high",
    "primary_resistance": "low < 0.25 ≤ moderate < 0.50 ≤ high",
}
UNCERTAINTY_METHOD = (
    "probability ± the upper end of the 95 % interval over cross-validation folds of the expected "
    "calibration error (ECE) of this regimen class × outcome model, clipped to [0, 1]: a population-level "
    "calibration margin from training, not a patient-specific confidence interval"
)
SHAP_SCALE = "log-odds before calibration (whole model)"
TESTS_PER_REGIMEN = 2
OOD_UNCHECKED = ("this model bundle stores no summary of its training distribution (per-feature 1st–99th "
                 "percentiles), so the patient was not checked against it")

# -- ranks, bands, intervals --------------------------------------------------------------------


def shown(p: np.ndarray) -> np.ndarray:
    """``p`` rounded to :data:`SHOWN_DECIMALS` exactly as Python's ``round`` does (correctly rounded):
    NumPy's scaled rounding, with Python's for the values within a hair of a tie, where they can differ."""
    shown_p = np.round(p, SHOWN_DECIMALS)
    scaled = p * 10.0 ** SHOWN_DECIMALS
    near_tie = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    shown_p[near_tie] = [round(float(v), SHOWN_DECIMALS) for v in p[near_tie]]
    return shown_p


def ranks(patient: np.ndarray, eligible: np.ndarray, p_response: np.ndarray) -> np.ndarray:
    """Rank of each row within its patient (see the module docstring); int64, 0 where ineligible.

    ``patient``: the patient of each row (a patient's rows contiguous); ``p_response``: probability of
    objective response per row."""
    rank = np.zeros(len(patient), dtype=np.int64)
    key = -shown(np.asarray(p_response, dtype=np.float64))
    key[~np.isfinite(key) | (key == 0.0)] = 1.0
    where = np.flatnonzero(eligible)
    if len(where):
        order = where[np.lexsort((key[where], patient[where]))]  # stable: ties keep the order asked
        sorted_patients = patient[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_patients)) + 1]
        counts = np.diff(np.r_[starts, len(order)])
        rank[order] = np.arange(len(order)) - np.repeat(starts, counts) + 1
    return rank


def band(outcome: str, p: float | None) -> str | None:
    """``low``, ``moderate`` or ``high`` for probability ``p`` of ``outcome`` (None when ``p`` is)."""
    if p is None:
        return None
    low, high = BANDS[outcome]
    return "low" if p < low else "moderate" if p < high else "high"


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def margin(metadata: Mapping[str, Any], regimen_class: str, outcome: str) -> float | None:
    """The calibration margin of model (``regimen_class``, ``outcome``) recorded at training (probability units)."""
    from response_model import (
        tracking,  # imports MLflow: not at import time (batch workers load this module)
    )

    metrics = metadata.get("metrics") or {}
    return finite(metrics.get(tracking.metric_key(outcome, regimen_class, "ece_upper")))


def interval(p: float | None, half_width: float | None) -> dict[str, float | None] | None:
    """``{"lower", "upper", "level"}``: ``p`` ± ``half_width`` clipped to [0, 1] and shown rounded (None if
    either is); ``level`` None: a population-level margin (bundles without an ensemble), no stated coverage."""
    if p is None or half_width is None:
        return None
    return {"lower": round(max(0.0, p - half_width), SHOWN_DECIMALS),
            "upper": round(min(1.0, p + half_width), SHOWN_DECIMALS), "level": None}


def patient_interval(p: float | None, lower: Any, upper: Any, level: float) -> dict[str, float] | None:
    """``{"lower", "upper", "level"}``: a per-patient interval shown rounded so that it still contains
    ``p`` as shown (None if ``p`` or a bound is missing); ``level`` its nominal coverage (0–1)."""
    lower, upper = finite(lower), finite(upper)
    if p is None or lower is None or upper is None:
        return None
    shown_p = round(p, SHOWN_DECIMALS)
    return {"lower": min(round(lower, SHOWN_DECIMALS), shown_p), "upper": max(round(upper, SHOWN_DECIMALS), shown_p),
            "level": level}


# -- out of distribution -------------------------------------------------------------------------


def out_of_distribution(metadata: Mapping[str, Any], features: Mapping[str, float] | None,
                        record: PatientRecord | None = None,
                        missingness: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The out-of-distribution check of one patient's features ({feature: value}; None = nothing scored),
    plus ``unseen_categories``: values of ``record`` the training vocabulary lacks (a reason of its own), and
    ``missingness``: the check of the patient's missingness pattern
    (:func:`response_model.modeling.missingness.assess`), reported under ``missingness`` and flagging too."""
    unseen = unseen_categories(record)
    check = {**_outside_ranges(metadata, features), "unseen_categories": unseen}
    check["flagged"] = bool(check["flagged"] or unseen)
    if missingness is not None:
        check["missingness"] = dict(missingness)
        check["flagged"] = bool(check["flagged"] or missingness.get("flagged", False))
    return check


def unseen_categories(record: PatientRecord | None) -> list[dict[str, Any]]:
    """The record's values outside the training vocabulary: today an unseen cancer type, scored with every
    cancer-type feature missing (the published LORIS formula gives such a patient a cancer-type term of 0)."""
    if record is None or not record.unseen_cancer_type:
        return []
    return [{"field": "cancer_type", "value": record.cancer_type,
             "note": "not a cancer type of the training vocabulary; its cancer-type features are missing"}]


def _outside_ranges(metadata: Mapping[str, Any], features: Mapping[str, float] | None) -> dict[str, Any]:
    """The check of the feature values against the training 1st–99th percentiles."""
    ranges = metadata.get("feature_ranges")
    if features is None or not isinstance(ranges, dict) or not ranges:
        return {"checked": False, "flagged": False, "features": [], "note": OOD_UNCHECKED}
    outside = []
    for feature, bounds in ranges.items():
        value = finite(features.get(feature))
        if value is None or not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            continue
        low, high = float(bounds[0]), float(bounds[1])
        if value < low or value > high:
            outside.append({"feature": feature, "field": feature_field(feature), "value": value,
                            "training_p1": low, "training_p99": high})
    return {"checked": True, "flagged": bool(outside), "features": outside,
            "note": "features outside the 1st–99th percentiles of the training data"}


# -- features in the record's terms -------------------------------------------------------------

_DERIVED_FIELD = {
    "afp_log10": "afp", "sex_male": "sex", "msi_high": "msi_status", "aetiology_viral": "aetiology",
    "genotyped": "alterations", "n_alterations": "alterations",
}
_COMPUTED = {"albi_score": "score", "albi_grade": "grade", "child_pugh_score": "points"}


@lru_cache(maxsize=4096)
def feature_field(feature: str) -> str | None:
    """The patient-record field (or ``regimen``) a model feature comes from (None if unknown)."""
    if feature in PatientRecord.model_fields or feature in _COMPUTED:
        return feature
    if feature in _DERIVED_FIELD:
        return _DERIVED_FIELD[feature]
    if feature.startswith("aetiology_"):
        return "aetiology"
    if feature.startswith("cancer_type_"):
        return "cancer_type"
    if feature in {p.name for p in load_pathways()}:
        return "alterations"
    if feature.startswith(("class_", "target_", "regimen_")):
        return "regimen"
    return None


# -- what-if genomic tests -----------------------------------------------------------------------


def genomic_tests(predictor: Predictor, records: Sequence[PatientRecord],
                  predictions: Predictions) -> dict[int, list[dict[str, Any]]]:
    """{prediction row: every pathway's what-if test} for the eligible rows of records never sequenced.

    Each test gives the probability of response as if sequenced with nothing found
    (``p_if_not_altered``) and with the pathway altered (``p_if_altered``), and their ``spread``."""
    pathways = [p for p in load_pathways() if p.name in predictor.feature_names]
    rows = [k for k in np.flatnonzero(predictions.eligible).tolist()
            if records[predictions.patient[k]].alterations is None]
    if not rows or not pathways:
        return {k: [] for k in rows}
    findings = [[], *([representative_alteration(p)] for p in pathways)]  # nothing found, then each pathway
    variants, regimens = [], []
    for k in rows:
        record = records[predictions.patient[k]]
        variants += [record.model_copy(update={"alterations": found}) for found in findings]
        regimens += [[predictions.regimen[k]]] * len(findings)
    p = predictor.predict(variants, regimens).probability["objective_response"].reshape(len(rows), len(findings))
    return {k: _tests(pathways, predictions.regimen[k], p[n]) for n, k in enumerate(rows)}


def _tests(pathways: Sequence[Any], regimen: str, p: np.ndarray) -> list[dict[str, Any]]:
    """The tests of one row: ``p[0]`` if nothing is found, ``p[1 + k]`` if pathway k is altered."""
    tests = []
    for pathway, p1 in zip(pathways, p[1:].tolist()):
        p0 = float(p[0])
        if math.isfinite(p0) and math.isfinite(p1):
            genes = list(dict.fromkeys(rule.gene for rule in pathway.rules))
            tests.append({"test": f"{'/'.join(genes)} ({pathway.label})", "pathway": pathway.name, "regimen": regimen,
                          "p_if_not_altered": round(p0, 4), "p_if_altered": round(p1, 4),
                          "spread": round(abs(p1 - p0), 4)})
    return tests


def best_tests(per_regimen: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The tests that would move each regimen's estimate most (:data:`TESTS_PER_REGIMEN` each), largest first."""
    best = []
    for tests in per_regimen:
        best += sorted(tests, key=lambda t: -t["spread"])[:TESTS_PER_REGIMEN]
    return sorted(best, key=lambda t: -t["spread"])
