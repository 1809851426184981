"""Request and response models of the prediction API (pydantic; they document the OpenAPI schema).

The patient itself is :class:`response_model.schema.PatientRecord`, the package's one schema: the API
accepts exactly what the CLI and batch ingestion accept, with the same validation messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from response_model import consistency
from response_model.schema import PatientRecord, checked_patient_id

MAX_BATCH = 1_000

#: A realistic patient with advanced HCC (BCLC C, Child-Pugh A, HBV), used as the OpenAPI example.
EXAMPLE_PATIENT: dict[str, Any] = {
    "age": 64, "sex": "male", "ecog": 1, "aetiology": "HBV",
    "albumin": 3.8, "bilirubin": 0.9, "inr": 1.1, "ascites": "none", "encephalopathy": "none",
    "bclc_stage": "C", "afp": 850.0, "macrovascular_invasion": True, "extrahepatic_spread": False,
    "lesion_count": 3, "largest_lesion_cm": 7.5, "neutrophils": 4.2, "lymphocytes": 1.4,
    "platelets": 165, "haemoglobin": 13.1, "bmi": 24.5, "diabetes": False,
    "alcohol_use": "former", "smoking": "former", "line_of_therapy": 1,
    "pdl1_cps": 5, "alterations": [
        {"gene": "TP53", "kind": "missense", "protein_change": "p.R249S"},
        {"gene": "TERT", "kind": "tert_promoter"},
    ],
    "tmb": 3.2, "msi_status": "MSS",
}
EXAMPLE_REQUEST: dict[str, Any] = {"patient": EXAMPLE_PATIENT, "regimens": None, "patient_id": "ward3-0042"}
EXAMPLE_CLINICAL_ONLY: dict[str, Any] = {
    "patient": {**{k: v for k, v in EXAMPLE_PATIENT.items() if k not in ("alterations", "tmb", "msi_status")},
                "afp": 35.0},
    "regimens": ["atezolizumab_bevacizumab", "lenvatinib", "ramucirumab"],
}


class PredictionRequest(BaseModel):
    """One patient and, optionally, the regimens to estimate (default: every candidate regimen)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [EXAMPLE_REQUEST, EXAMPLE_CLINICAL_ONLY]},
    )

    patient: PatientRecord = Field(description="The patient record (the package's one schema)")
    regimens: list[str] | None = Field(
        default=None, description="Candidate regimen ids; null = every candidate regimen the model can score",
    )
    patient_id: str | None = Field(
        default=None, max_length=128,
        description="Raw local identifier; stored in the audit trail only as a keyed hash, never returned",
    )

    @field_validator("patient_id", mode="before")
    @classmethod
    def _pseudonymous_id(cls, value: Any) -> Any:
        return checked_patient_id(value)

    @model_validator(mode="after")
    def _one_patient(self) -> PredictionRequest:
        # the request's rules of configs/consistency.yaml (two different patient ids); the 422 answer's
        # texts come from validation.request_errors, which applies the same rules to the raw body
        ids = {"patient_id": self.patient_id, "patient": {"patient_id": self.patient.patient_id}}
        if problems := consistency.request_problems(ids):
            raise consistency.rejection(problems)
        return self

    @model_validator(mode="before")
    @classmethod
    def _exact_numbers(cls, value: Any) -> Any:
        # checked before the fields: pydantic would fail on a whole number of hundreds of digits with an
        # OverflowError (a 500), not a field error; the 422 handler names the field (validation.number_errors)
        if _beyond_exact(value):
            raise ValueError(f"a whole number beyond ±{MAX_EXACT_INT}")
        return value


#: the largest whole number read exactly: past it a count has no exact float value (and past ~10^308 none)
MAX_EXACT_INT = 2**53


def _beyond_exact(value: Any) -> bool:
    """True when a JSON value holds a whole number beyond ±:data:`MAX_EXACT_INT`, at any depth."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            return True
        stack.extend(value.values() if isinstance(value, dict) else value if isinstance(value, list) else ())
    return False


class BatchRequest(BaseModel):
    """Up to 1,000 prediction requests; each row is validated on its own."""

    model_config = ConfigDict(extra="forbid")

    patients: list[Any] = Field(
        description=f"Up to {MAX_BATCH} items, each shaped like the body of POST /v1/predictions",
        json_schema_extra={"items": {"$ref": "#/components/schemas/PredictionRequest"}},
    )


class FieldErrorModel(BaseModel):
    field: str = Field(description="Dotted path of the field")
    value: Any = Field(default=None, description="The value given")
    message: str = Field(description="What is wrong and what was expected (same text as the CLI)")


class ErrorResponse(BaseModel):
    errors: list[FieldErrorModel]


class Interval(BaseModel):
    lower: float
    upper: float
    level: float | None = Field(default=None, description="Nominal coverage of a per-patient interval (0–1, e.g. "
                                                          "0.8); null for the population-level calibration margin")


class OutcomeEstimate(BaseModel):
    probability: float | None = Field(description="Estimated probability (null if the model has no estimator)")
    interval: Interval | None = Field(default=None, description="Uncertainty interval; see uncertainty_method")
    band: str | None = Field(default=None, description="Plain-words band: low, moderate or high; see bands")


class Contribution(BaseModel):
    """One explanation term a clinician reads: an exact sum of per-feature SHAP values
    (:mod:`response_model.modeling.explanation_groups`); the per-feature values are in the audit record."""

    term: str = Field(description="Term: regimen, a record field, a group of fields (e.g. albi) or not_recorded")
    label: str = Field(description="What the term is, in words")
    display: str = Field(description="The patient's values behind the term, with units (for not_recorded: "
                                     "the missing inputs, largest weight first)")
    text: str = Field(description="label: display, never shortened")
    fields: list[str] = Field(description="Patient-record fields the term comes from (or 'regimen')")
    contribution: float = Field(description="Sum of the SHAP contributions of the term's features")
    scale: str = Field(description="Scale of the contribution")
    direction: str = Field(description="Direction in words")
    missing: list[dict[str, str]] | None = Field(
        default=None, description="not_recorded only: each missing field and its label, largest weight first")
    tests: list[dict[str, Any]] | None = Field(
        default=None, description="not_recorded only: genomic tests that would move this estimate most")


class RegimenValidation(BaseModel):
    """How this regimen's estimates fared in training's cross-validation, and what the per-regimen gate decided."""

    status: Literal["validated", "failed", "too_few", "unchecked"] = Field(
        description="validated; failed (a per-regimen gate rule); too_few (not validated — too few patients); "
                    "unchecked (no per-regimen gate when the model was trained)")
    status_text: str = Field(description="The status in words")
    served: bool = Field(description="False: withheld by the per-regimen gate — no estimate is given")
    warning: str | None = Field(default=None, description="Shown with every answer for a regimen not validated: "
                                                          "names the metric, its value and the gate's rule")
    reasons: list[str] = Field(default_factory=list)
    metrics: dict[str, dict[str, float | int | None]] = Field(
        default_factory=dict, description="Per outcome: n, events, auc, calibration_slope, calibration_intercept "
                                          "(out-of-fold, mean over CV repeats) with _lower/_upper (95 % bootstrap)")


class RegimenPrediction(BaseModel):
    rank: int | None = Field(
        description="1 = highest probability of response among eligible regimens; null if ineligible")
    regimen: str
    label: str
    regimen_class: str
    eligible: bool
    ineligible_reason: str | None = None
    objective_response: OutcomeEstimate
    primary_resistance: OutcomeEstimate
    explanations: dict[str, list[Contribution]] = Field(
        description="Per outcome (objective_response, primary_resistance): the five largest explanation terms, "
                    "and the not-recorded term whenever inputs are missing"
    )
    validation: RegimenValidation = Field(description="This regimen's validation status (per-regimen gate)")


class GenomicTest(BaseModel):
    test: str = Field(description="Genes whose status decides the pathway feature")
    pathway: str
    regimen: str
    p_if_not_altered: float = Field(description="Probability of response if sequenced and the pathway is not altered")
    p_if_altered: float = Field(description="Probability of response if the pathway is altered")
    spread: float = Field(description="|p_if_altered − p_if_not_altered|: how far the result could move the estimate")


class MissingnessCheck(BaseModel):
    checked: bool = Field(description="False when the model bundle has no summary of its training missingness")
    flagged: bool = Field(default=False, description="The pattern of missing inputs is rare in training")
    training_share_missing_as_much: float | None = Field(
        default=None, description="Smallest share, over the models scored, of training patients of the class who "
                                  "miss at least as much of the model's influence (0–1)")
    rarely_missing_in_training: list[dict[str, Any]] = Field(
        default_factory=list, description="Fields missing here but missing in fewer than `threshold` of training")
    threshold: float | None = Field(default=None, description="Rarity threshold (share of training patients)")
    note: str | None = None


class OutOfDistribution(BaseModel):
    checked: bool = Field(description="False when the model bundle has no training-distribution summary")
    flagged: bool = Field(default=False, description="A value or the missingness pattern lies outside training")
    features: list[dict[str, Any]] = Field(default_factory=list)
    note: str | None = None
    unseen_categories: list[dict[str, Any]] = Field(
        default_factory=list, description="Values the training vocabulary lacks (e.g. an unseen cancer type): "
                                          "scored with their features missing, and flagged")
    missingness: MissingnessCheck | None = Field(default=None, description="The check of the missingness pattern")


class MissingInput(BaseModel):
    field: str = Field(description="Patient-record field not recorded")
    label: str = Field(description="What the field is")
    influence_share: float = Field(description="Its share of the model's influence (mean |SHAP| in training; 0–1; "
                                               "the largest over the models scored)")


class ModelInformation(BaseModel):
    regimen_class: str
    outcome: str
    missing_influence_share: float = Field(description="Share of this model's influence carried by missing inputs")
    training_share_missing_as_much: float = Field(
        description="Share of the class's training patients missing at least as much influence")


class Information(BaseModel):
    """How much of what the models use is known for this patient."""

    checked: bool = Field(description="False when the bundle stores no summary of its training missingness")
    missing_fields: list[str] = Field(default_factory=list, description="Optional inputs not recorded")
    n_missing: int | None = None
    n_optional: int | None = Field(default=None, description="Optional inputs the models use")
    missing_influential: list[MissingInput] = Field(
        default_factory=list, description="The most influential inputs among those not recorded, largest first")
    missing_influence_share: float | None = Field(
        default=None, description="Share of influence carried by the missing inputs (largest over the models)")
    by_model: list[ModelInformation] = Field(default_factory=list)
    pattern_share: dict[str, Any] | None = Field(
        default=None, description="Share of each class's training patients with exactly this pattern of missing "
                                  "inputs (null when fewer than the configured minimum share it)")
    rests_on_population_averages: bool = Field(
        default=False, description="True when the missing inputs carry at least the configured share of influence")
    message: str | None = None
    note: str | None = None


class PredictionResponse(BaseModel):
    prediction_id: str
    model_name: str | None
    model_version: str | None
    label: str | None = Field(default=None, description="Research-use label of the model, when it has one")
    genomics: Literal["genotyped", "clinical-only estimate"]
    genomic_tests: list[GenomicTest] = Field(
        default_factory=list,
        description="When not sequenced: the tests whose results would move the estimate most, per eligible regimen",
    )
    out_of_distribution: OutOfDistribution
    information: Information = Field(description="Which influential inputs are missing and how typical that is")
    regimens: list[RegimenPrediction] = Field(
        description="Eligible regimens ranked by probability of response, then those withheld by the per-regimen "
                    "gate (not scored), then ineligible ones")
    ineligible: list[dict[str, str]] = Field(description="Ineligible regimens with the reason")
    not_scored: list[dict[str, str]] = Field(
        default_factory=list, description="Regimens withheld by the per-regimen gate, with the reason (the metric)")
    uncertainty_method: str = Field(description="How the intervals were made, with their level")
    interval_level: float | None = Field(default=None, description="Nominal coverage of every interval of this "
                                                                   "answer (0–1); null: population-level margin")
    bands: dict[str, str]
    warnings: list[str] = Field(default_factory=list, description="Plausible but unusual values")


class BatchItem(BaseModel):
    index: int
    ok: bool
    prediction: PredictionResponse | None = None
    errors: list[FieldErrorModel] | None = None


class BatchResponse(BaseModel):
    model_name: str | None
    model_version: str | None
    n_ok: int
    n_rejected: int
    results: list[BatchItem]


class ModelInfo(BaseModel):
    model_name: str | None
    model_version: str | None
    model_uri: str | None
    training_date: str | None
    data_digest: str | None
    metrics: dict[str, float]
    intended_use: str | None
    limitations: list[str]
    label: str | None
    regimen_classes: list[str]
    candidate_regimens: list[str]
    fallback: str | None = Field(
        default=None, description="Set when the registry model could not be loaded at start-up and an exported "
                                  "fallback folder is serving instead: why, and which folder",
    )


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str | None = Field(default=None, description="URI to load; default: the URI the service started with")


class ReloadResponse(BaseModel):
    previous: dict[str, str | None]
    current: dict[str, str | None]
