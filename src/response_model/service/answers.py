"""What an answer to a prediction request holds: per regimen the probabilities, intervals, bands,
ranks and top contributions described for the clinician, the what-if genomic tests, the
out-of-distribution check; and the audit record's outputs of an answer.

Choices documented for the clinician (also returned in every prediction):

* **Bands** — objective response: low < 0.15 ≤ moderate < 0.35 ≤ high; primary resistance:
  low < 0.25 ≤ moderate < 0.50 ≤ high.
* **Uncertainty interval** — probability ± the upper end of the 95 % interval over cross-validation
  folds of the expected calibration error (ECE) of that regimen class × outcome model (clipped to
  [0, 1]). It is a population-level calibration margin recorded at training time, not a
  patient-specific confidence interval; the bundle holds one fitted model, no bootstrap ensemble.
* **Explanations** — exact additive contributions of the whole model on its log-odds scale before
  calibration (logistic terms + LightGBM TreeSHAP); the five largest in absolute value per outcome.
* **Clinical-only estimates** — when ``alterations`` is null, every pathway feature is missing; for
  each eligible regimen the probability of response is recomputed as if sequenced with the
  pathway not altered (all pathways 0) and altered (that pathway 1), and the pathways whose
  result would move it most are reported.
* **Out-of-distribution** — checked only when the bundle's metadata holds ``feature_ranges``
  ({feature: [p1, p99]} of the training data).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from response_model.modeling.bundle import OUTCOMES, ResponseModelBundle
from response_model.pathways import load_pathways
from response_model.schema import PatientRecord
from response_model.service.audit import compact_explanations
from response_model.service.models import PredictionRequest

if TYPE_CHECKING:
    from response_model.service.app import LoadedModel

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
TOP_CONTRIBUTIONS = 5
LIMITATIONS = [
    "Estimates are associations learned from the training cohort, not causal effects of a regimen.",
    "Explanations are on the log-odds scale before any recalibration (exact for the whole model; "
    "relative to the training cohort: a patient at the training mean for the logistic part, the average "
    "tree output for LightGBM), not on the probability scale.",
    "Uncertainty intervals are a population-level calibration margin (cross-validated ECE), not "
    "patient-specific confidence intervals.",
    "No out-of-distribution check unless the bundle stores training-feature ranges (current bundles do not).",
    "Clinical-only estimates (no genomic profile) average over unknown genomic status.",
    "Not validated for prospective clinical use.",
]
OOD_UNCHECKED = ("this model bundle stores no summary of its training distribution (per-feature 1st–99th "
                 "percentiles), so the patient was not checked against it")

# -- feature → record field ---------------------------------------------------------------------

_DERIVED_FIELD = {
    "afp_log10": "afp", "sex_male": "sex", "msi_high": "msi_status", "aetiology_viral": "aetiology",
    "genotyped": "alterations", "n_alterations": "alterations",
}
_COMPUTED = {"albi_score": "score", "albi_grade": "grade", "child_pugh_score": "points"}


@lru_cache(maxsize=4096)
def feature_field(feature: str) -> str | None:
    """The patient-record field (or ``regimen``) a model feature comes from."""
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


@lru_cache(maxsize=1024)
def _unit(field: str | None) -> str | None:
    if field in _COMPUTED:
        return _COMPUTED[field]
    info = PatientRecord.model_fields.get(field or "")
    extra = info.json_schema_extra if info is not None else None
    return extra.get("unit") if isinstance(extra, dict) else None


def _field_value(record: PatientRecord, field: str | None, feature: str, regimen: str) -> Any:
    if field == "regimen":
        return regimen
    if field == "alterations":
        if record.alterations is None:
            return "not sequenced"
        pathway = next((p for p in load_pathways() if p.name == feature), None)
        if pathway is not None:
            found = [a.label() for a in pathway.drivers(record.alterations)]
            return ", ".join(found) if found else "not altered"
        return ", ".join(a.label() for a in record.alterations) or "none found"
    if field is None:
        return None
    value = getattr(record, field, None)
    return value.value if hasattr(value, "value") else value


def _display(value: Any, unit: str | None) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit and not isinstance(value, (bool, str)) else text


def _band(outcome: str, p: float | None) -> str | None:
    if p is None:
        return None
    low, high = BANDS[outcome]
    return "low" if p < low else "moderate" if p < high else "high"


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None



def _predict_proba(bundle: ResponseModelBundle, key: tuple[str, str], X: np.ndarray) -> np.ndarray:
    """Probability of the outcome of model ``key`` per row of ``X`` (the bundle's feature columns)."""
    model = bundle.compiled(key)
    if model is None or len(X) == 0:
        return np.full(len(X), math.nan)
    return model.probabilities(X)


def _genomic_tests(bundle: ResponseModelBundle, X: np.ndarray, regimens: Sequence[str]) -> list[list[dict[str, Any]]]:
    """For each row of ``X`` (a not-sequenced patient × regimen; the bundle's feature columns), every
    pathway's what-if test result.

    The probability of response is recomputed as if sequenced with no pathway altered
    (``genotyped`` 1, ``n_alterations`` 0, every pathway 0) and with that one pathway altered
    (pathway 1, ``n_alterations`` 1); all rows and pathways go through one prediction per class.
    """
    position = {name: j for j, name in enumerate(bundle.feature_names)}
    pathways = [p for p in load_pathways() if p.name in position]
    n = len(X)
    if n == 0 or not pathways:
        return [[] for _ in range(n)]
    columns = [position[p.name] for p in pathways]
    variants = np.repeat(X[np.newaxis, :, :], 2 * len(pathways), axis=0)  # (variant, row, feature)
    if "genotyped" in position:
        variants[:, :, position["genotyped"]] = 1.0
    variants[:, :, columns] = 0.0
    for k, column in enumerate(columns):
        variants[2 * k + 1, :, column] = 1.0
        if "n_alterations" in position:
            variants[2 * k, :, position["n_alterations"]] = 0.0
            variants[2 * k + 1, :, position["n_alterations"]] = 1.0
    X_all = variants.reshape(-1, X.shape[1])
    classes = np.array([bundle.catalogue[r].regimen_class for r in regimens] * (2 * len(pathways)))
    p = np.full(len(X_all), math.nan)
    for regimen_class in dict.fromkeys(classes.tolist()):
        mask = classes == regimen_class
        p[mask] = _predict_proba(bundle, (regimen_class, "objective_response"), X_all[mask])
    p = p.tolist()
    tests: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for k, pathway in enumerate(pathways):
        genes = list(dict.fromkeys(rule.gene for rule in pathway.rules))
        name = f"{'/'.join(genes)} ({pathway.label})"
        for j in range(n):
            p0, p1 = p[(2 * k) * n + j], p[(2 * k + 1) * n + j]
            if math.isfinite(p0) and math.isfinite(p1):
                tests[j].append({"test": name, "pathway": pathway.name, "regimen": regimens[j],
                                 "p_if_not_altered": round(p0, 4), "p_if_altered": round(p1, 4),
                                 "spread": round(abs(p1 - p0), 4)})
    return tests


def _best_tests(per_regimen: list[list[dict[str, Any]]], per_regimen_count: int = 2) -> list[dict[str, Any]]:
    """The tests that would move each regimen's estimate most (two per regimen), largest spread first."""
    best = []
    for tests in per_regimen:
        best += sorted(tests, key=lambda t: -t["spread"])[:per_regimen_count]
    return sorted(best, key=lambda t: -t["spread"])


def _out_of_distribution(bundle: ResponseModelBundle, X_patient: dict[str, float]) -> dict[str, Any]:
    """The out-of-distribution check of one patient's features ({feature: value})."""
    ranges = bundle.metadata.get("feature_ranges")
    if not isinstance(ranges, dict) or not ranges:
        return {"checked": False, "flagged": False, "features": [], "note": OOD_UNCHECKED}
    outside = []
    for feature, bounds in ranges.items():
        value = _finite(X_patient.get(feature))
        if value is None or not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            continue
        low, high = float(bounds[0]), float(bounds[1])
        if value < low or value > high:
            outside.append({"feature": feature, "field": feature_field(feature), "value": value,
                            "training_p1": low, "training_p99": high})
    return {"checked": True, "flagged": bool(outside), "features": outside,
            "note": "features outside the 1st–99th percentiles of the training data"}


_THREADPOOLS: Any = None


def _one_thread():
    """A context limiting OpenMP (LightGBM) to one thread in the calling thread.

    A request scores a few dozen rows: LightGBM's default of one OpenMP thread per core costs more in
    start-up and contention (about 60 ms instead of 24 ms per prediction on a loaded 2-core machine)
    than it gains; the server gets its parallelism from concurrent requests instead.
    """
    global _THREADPOOLS
    if _THREADPOOLS is None:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="openmp")


def predict_many(loaded: LoadedModel, requests: Sequence[PredictionRequest]) -> list[dict[str, Any]]:
    """Score, explain and describe every request with one model (one pass per regimen class)."""
    with _one_thread():
        return _predict_many(loaded, requests)


def _predict_many(loaded: LoadedModel, requests: Sequence[PredictionRequest]) -> list[dict[str, Any]]:
    bundle = loaded.bundle
    records = [r.patient for r in requests]
    default = [r.name for r in bundle.candidate_regimens()]
    wanted = [list(dict.fromkeys(r.regimens)) if r.regimens is not None else default for r in requests]
    # the models' compiled forms: the same numbers as their own predict_proba / explain, less overhead
    # and the same explanation pass as batch scoring (response_model.modeling.batch), without pandas,
    # computed while the probabilities are
    scores, X, explained = bundle.score_explain_rows(records, wanted, per_record=True)
    matrix = X.to_numpy()
    contributions: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    columns: dict[tuple[str, str], list[str]] = {}
    for key, (where, values, names, base_value) in explained.items():
        columns[key] = names
        contributions[key] = (where, values, base_value)
    # what-if genomic tests for the eligible regimens of patients who were not sequenced: one pass
    score_rows = [dict(zip(scores, values)) for values in zip(*scores.values())]
    unsequenced = [k for k, row in enumerate(score_rows)
                   if row["eligible"] and records[int(row["row"])].alterations is None]
    what_if = dict(zip(unsequenced, _genomic_tests(bundle, matrix[unsequenced],
                                                   [score_rows[k]["regimen"] for k in unsequenced])))
    groups: dict[int, list[int]] = {}
    for position, row in enumerate(score_rows):
        groups.setdefault(int(row["row"]), []).append(position)
    feature_names = list(X.columns)
    responses = []
    for i, request in enumerate(requests):
        record = request.patient
        rows = groups.get(i, [])
        shown_values: dict[str, tuple[Any, str]] = {}
        items = []
        for position in rows:
            row = score_rows[position]
            regimen = row["regimen"]
            item: dict[str, Any] = {
                "regimen": regimen, "label": bundle.catalogue[regimen].label,
                "regimen_class": row["regimen_class"], "eligible": bool(row["eligible"]),
                "ineligible_reason": row["ineligible_reason"], "explanations": {}, "shap": {},
            }
            for outcome in OUTCOMES:
                p = _finite(row[f"p_{outcome}"])
                margin = loaded.margin(row["regimen_class"], outcome)
                interval = None
                if p is not None and margin is not None:
                    interval = {"lower": round(max(0.0, p - margin), 4), "upper": round(min(1.0, p + margin), 4)}
                item[outcome] = {"probability": None if p is None else round(p, 4), "interval": interval,
                                 "band": _band(outcome, p)}
                explained = contributions.get((row["regimen_class"], outcome))
                if explained is not None:
                    where, values, base_value = explained
                    k = int(np.searchsorted(where, position))
                    names = columns[(row["regimen_class"], outcome)]
                    item["explanations"][outcome] = _top(record, regimen, outcome, names, values[k], shown_values)
                    # every feature's SHAP value, unrounded (exactly the model's, as batch scoring writes
                    # them), for the audit trail only (not in the answer)
                    item["shap"][outcome] = {"scale": SHAP_SCALE, "base_value": float(base_value),
                                             "names": names, "values": values[k].tolist()}
            items.append(item)
        eligible = sorted((it for it in items if it["eligible"]),
                          key=lambda it: -(it["objective_response"]["probability"] or -1.0))
        ineligible = [it for it in items if not it["eligible"]]
        for rank, it in enumerate(eligible, start=1):
            it["rank"] = rank
        for it in ineligible:
            it["rank"] = None
        genotyped = record.alterations is not None
        first = int(rows[0]) if len(rows) else None
        responses.append({
            "prediction_id": str(uuid.uuid4()),
            "model_name": loaded.name, "model_version": loaded.version,
            "label": bundle.metadata.get("label"),
            "genomics": "genotyped" if genotyped else "clinical-only estimate",
            "genomic_tests": [] if genotyped else _best_tests([what_if.get(int(k), []) for k in rows]),
            "out_of_distribution": (_out_of_distribution(bundle, dict(zip(feature_names, matrix[first].tolist())))
                                    if first is not None else
                                    {"checked": False, "flagged": False, "features": [], "note": OOD_UNCHECKED}),
            "regimens": eligible + ineligible,
            "ineligible": [{"regimen": it["regimen"], "reason": it["ineligible_reason"] or ""} for it in ineligible],
            "uncertainty_method": UNCERTAINTY_METHOD,
            "bands": BANDS_TEXT,
            "warnings": record.warnings(),
        })
    return responses


def _top(record: PatientRecord, regimen: str, outcome: str, names: list[str], values: np.ndarray,
         shown_values: dict[str, tuple[Any, str]] | None = None) -> list[dict]:
    """The largest contributions (at most :data:`TOP_CONTRIBUTIONS`), described for the clinician.

    ``shown_values``: a per-patient memo {feature: (value shown, display)} shared across regimens."""
    order = np.argsort(-np.abs(values))
    what = "response" if outcome == "objective_response" else "primary resistance"
    memo = {} if shown_values is None else shown_values
    top = []
    for j in order[:TOP_CONTRIBUTIONS].tolist():
        value = float(values[j])
        if value == 0.0:
            break
        feature = names[j]
        field = feature_field(feature)
        unit = _unit(field)
        if field == "regimen":
            shown = _field_value(record, field, feature, regimen)
            display = _display(shown, unit)
        else:  # the patient's own value: the same under every regimen
            if feature not in memo:
                shown = _field_value(record, field, feature, regimen)
                memo[feature] = (shown, _display(shown, unit))
            shown, display = memo[feature]
        top.append({"feature": feature, "field": field, "value": shown, "unit": unit,
                    "display": display, "contribution": round(value, 5), "scale": SHAP_SCALE,
                    "direction": f"{'raises' if value > 0 else 'lowers'} the probability of {what}"})
    return top


def _audit_outputs(response: dict[str, Any]) -> tuple[dict, dict]:
    """(outputs, explanations) of a response for its audit record; removes the full SHAP vectors
    from the response's regimens. ``explanations[regimen][outcome]`` holds the top contributions
    shown (``top``), the base value and every feature's SHAP value (``values``) on ``scale``, in
    the trail's compact form (:func:`response_model.service.audit.compact_explanations`: each model's
    feature names once); the trail's readers see ``values`` as {feature: SHAP value}."""
    outputs = {"genomics": response["genomics"], "genomic_tests": response["genomic_tests"],
               "out_of_distribution_flagged": response["out_of_distribution"].get("flagged", False),
               "regimens": {}}
    explanations = {}
    for it in response["regimens"]:
        outputs["regimens"][it["regimen"]] = {
            "rank": it["rank"], "eligible": it["eligible"], "ineligible_reason": it["ineligible_reason"],
            **{o: it[o] for o in OUTCOMES},
        }
        shap_values = it.pop("shap", {})
        explanations[it["regimen"]] = {outcome: {"top": top, **shap_values.get(outcome, {})}
                                       for outcome, top in it["explanations"].items()}
    return outputs, compact_explanations(explanations)
