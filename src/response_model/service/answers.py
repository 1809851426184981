"""The JSON answer to a prediction request, built from :class:`~response_model.modeling.predictor.Predictions`
and what :mod:`response_model.modeling.interpret` says they mean; and the audit record's outputs of an answer.

The answer's shape is :class:`response_model.service.models.PredictionResponse`; this module only
arranges values the Predictor and interpret computed, and never reads feature columns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from response_model.modeling import explanation_groups, interpret, missingness
from response_model.modeling.predictor import Predictions, Predictor
from response_model.modeling.regimen_validation import answer_validation
from response_model.schema import OUTCOMES, PatientRecord
from response_model.service.audit import compact_explanations
from response_model.service.models import Information, OutOfDistribution, PredictionRequest

if TYPE_CHECKING:
    from response_model.service.holder import LoadedModel

LIMITATIONS = [
    "Estimates are associations learned from the training cohort, not causal effects of a regimen.",
    "Explanations are on the log-odds scale before any recalibration (exact for the whole model; "
    "relative to the training cohort: a patient at the training mean for the logistic part, the average "
    "tree output for LightGBM), not on the probability scale.",
    "Uncertainty intervals are per patient, at the level they state: a bootstrap ensemble's spread (scaled "
    "out-of-fold against the simulator's true probabilities when trained on simulated data, unscaled otherwise) "
    "and the spread over the missing fields drawn independently from the training population's per-field "
    "distribution, which ignores how fields go together. Bundles without an ensemble fall back to a "
    "population-level calibration margin (cross-validated ECE), and say so.",
    "The out-of-distribution check compares each value with the training cohort's 1st–99th percentiles and "
    "the pattern of missing inputs with training's (bundles without these summaries say it was not checked); "
    "a category the training vocabulary lacks is flagged.",
    "With inputs missing, estimates approximate the probability given what is recorded, as learned from "
    "training copies with fields hidden (missingness augmentation); the information block says how much "
    "of the model's influence is missing.",
    "A regimen whose own validation (per-regimen discrimination and calibration) failed or rests on too few "
    "patients is served with a warning naming the metric, or withheld, as the model's gate says.",
    "Not validated for prospective clinical use.",
]


def predict_many(loaded: LoadedModel, requests: Sequence[PredictionRequest]) -> list[dict[str, Any]]:
    """The answer to each request (valid ones: see :func:`response_model.service.app.request_errors`),
    scored together with one model; each answer's regimens carry every feature's SHAP value under
    ``shap`` for the audit record (:func:`audit_outputs` takes them out)."""
    predictor = loaded.bundle.predictor()
    records = [r.patient for r in requests]
    wanted = [list(dict.fromkeys(r.regimens)) if r.regimens is not None else None for r in requests]
    predictions = predictor.predict(records, wanted, explain=True)
    what_if = interpret.genomic_tests(predictor, records, predictions)
    bounds = predictor.intervals(records, predictions)
    return [_answer(loaded, predictor, predictions, i, record, what_if, bounds) for i, record in enumerate(records)]


def _answer(loaded: LoadedModel, predictor: Predictor, predictions: Predictions, patient: int,
            record: PatientRecord, what_if: dict[int, list[dict[str, Any]]],
            bounds: dict[str, tuple[Any, Any]] | None) -> dict[str, Any]:
    rows = predictions.rows_of(patient).tolist()
    memo: dict = {}  # what the patient's rows share (explanation_groups.row_terms)
    items = [_regimen_item(predictor, predictions, row, record, memo, what_if.get(row, ()), bounds) for row in rows]
    eligible = sorted((it for it in items if it["rank"] is not None), key=lambda it: it["rank"])
    withheld = [it for it in items if not it["validation"]["served"]]
    ineligible = [it for it in items if not it["eligible"] and it["validation"]["served"]]
    genotyped = record.alterations is not None
    information, missing_pattern = missingness.assess(
        predictor.metadata, record, sorted({it["regimen_class"] for it in items}))
    return {
        "prediction_id": str(uuid.uuid4()),
        "model_name": loaded.name, "model_version": loaded.version,
        "label": predictor.metadata.get("label"),
        "genomics": "genotyped" if genotyped else "clinical-only estimate",
        "genomic_tests": [] if genotyped else interpret.best_tests([what_if.get(row, []) for row in rows]),
        # in the documented shapes exactly (every field present), as FastAPI's response-model pass would send them
        "out_of_distribution": OutOfDistribution.model_validate(interpret.out_of_distribution(
            predictor.metadata, predictions.feature_row(rows[0]) if rows else None, record, missing_pattern,
        )).model_dump(mode="json"),
        "information": Information.model_validate(information).model_dump(mode="json"),
        "regimens": eligible + withheld + ineligible,
        "ineligible": [{"regimen": it["regimen"], "reason": it["ineligible_reason"] or ""}
                       for it in items if not it["eligible"]],
        "not_scored": [{"regimen": it["regimen"], "reason": it["validation"]["warning"] or ""} for it in withheld],
        "uncertainty_method": interpret.UNCERTAINTY_METHOD if bounds is None else predictor.uncertainty.method(),
        "interval_level": None if bounds is None else predictor.uncertainty.level,
        "bands": interpret.BANDS_TEXT,
        "warnings": record.warnings(),
    }


def _regimen_item(predictor: Predictor, predictions: Predictions, row: int, record: PatientRecord,
                  memo: dict, tests: Sequence[dict[str, Any]] = (),
                  bounds: dict[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """One regimen of an answer: probabilities with interval and band, rank, the largest explanation
    terms a clinician reads (:func:`response_model.modeling.explanation_groups.row_terms`; ``tests``: this
    row's genomic what-if tests) and (for the audit record only) every feature's SHAP value with the
    features of each term."""
    regimen, regimen_class = predictions.regimen[row], predictions.regimen_class[row]
    eligible, served = bool(predictions.eligible[row]), predictions.served_row(row)
    item: dict[str, Any] = {
        "regimen": regimen, "label": predictor.catalogue[regimen].label, "regimen_class": regimen_class,
        "eligible": eligible, "ineligible_reason": predictions.ineligible_reason[row],
        "explanations": {}, "shap": {}, "rank": int(predictions.rank[row]) if eligible and served else None,
        "validation": answer_validation(predictor.metadata, regimen),
    }
    for outcome in OUTCOMES:
        p = interpret.finite(predictions.probability[outcome][row])
        if bounds is None:
            interval = interpret.interval(p, interpret.margin(predictor.metadata, regimen_class, outcome))
        else:
            level = predictor.uncertainty.level
            interval = interpret.patient_interval(p, bounds[outcome][0][row], bounds[outcome][1][row], level)
        item[outcome] = {"probability": None if p is None else round(p, interpret.SHOWN_DECIMALS),
                         "interval": interval, "band": interpret.band(outcome, p)}
        explained = predictions.explanations.get((regimen_class, outcome))
        if explained is not None and served:  # a withheld regimen shows no estimate, so nothing to explain
            values = explained.of_row(row)
            ranked = sorted(tests, key=lambda t: -t["spread"])
            item["explanations"][outcome], terms = explanation_groups.row_terms(
                record, regimen, outcome, explained.names, values, ranked, memo=memo)
            item["shap"][outcome] = {"scale": interpret.SHAP_SCALE, "base_value": float(explained.base_value),
                                     "names": explained.names, "values": values.tolist(), "terms": terms}
    return item


def audit_outputs(response: dict[str, Any]) -> tuple[dict, dict]:
    """(outputs, explanations) of a response for its audit record; removes the full SHAP vectors
    from the response's regimens. ``explanations[regimen][outcome]`` holds the top contributions
    shown (``top``), the base value and every feature's SHAP value (``values``) on ``scale``, in
    the trail's compact form (:func:`response_model.service.audit.compact_explanations`: each model's
    feature names once); the trail's readers see ``values`` as {feature: SHAP value}."""
    outputs = {"genomics": response["genomics"], "genomic_tests": response["genomic_tests"],
               "out_of_distribution_flagged": response["out_of_distribution"].get("flagged", False),
               "information": {k: response["information"].get(k) for k in (
                   "checked", "missing_fields", "missing_influence_share", "rests_on_population_averages")},
               "out_of_distribution_missingness": response["out_of_distribution"].get("missingness"),
               "uncertainty_method": response["uncertainty_method"], "interval_level": response["interval_level"],
               "regimens": {}}
    explanations = {}
    for it in response["regimens"]:
        outputs["regimens"][it["regimen"]] = {
            "rank": it["rank"], "eligible": it["eligible"], "ineligible_reason": it["ineligible_reason"],
            "validation": {k: it["validation"][k] for k in ("status", "served", "warning")},
            **{o: it[o] for o in OUTCOMES},
        }
        shap_values = it.pop("shap", {})
        explanations[it["regimen"]] = {outcome: {"top": top, **shap_values.get(outcome, {})}
                                       for outcome, top in it["explanations"].items()}
    return outputs, compact_explanations(explanations)
