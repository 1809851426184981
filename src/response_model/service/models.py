"""Request and response models of the prediction API (pydantic; they document the OpenAPI schema).

The patient itself is :class:`response_model.schema.PatientRecord`, the package's one schema: the API
accepts exactly what the CLI and batch ingestion accept, with the same validation messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from response_model.schema import PatientRecord

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
    feature: str = Field(description="Model feature")
    field: str | None = Field(description="Patient-record field the feature comes from (or 'regimen')")
    value: Any = Field(description="The patient's value of that field")
    unit: str | None = Field(default=None, description="Unit of the value")
    display: str = Field(description="Value with its unit, as text")
    contribution: float = Field(description="SHAP contribution")
    scale: str = Field(description="Scale of the contribution")
    direction: str = Field(description="Direction in words")


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
        description="Top five SHAP contributions per outcome (objective_response, primary_resistance)"
    )


class GenomicTest(BaseModel):
    test: str = Field(description="Genes whose status decides the pathway feature")
    pathway: str
    regimen: str
    p_if_not_altered: float = Field(description="Probability of response if sequenced and the pathway is not altered")
    p_if_altered: float = Field(description="Probability of response if the pathway is altered")
    spread: float = Field(description="|p_if_altered − p_if_not_altered|: how far the result could move the estimate")


class OutOfDistribution(BaseModel):
    checked: bool = Field(description="False when the model bundle has no training-distribution summary")
    flagged: bool = False
    features: list[dict[str, Any]] = Field(default_factory=list)
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
    regimens: list[RegimenPrediction] = Field(
        description="Eligible regimens ranked by probability of response, then ineligible ones")
    ineligible: list[dict[str, str]] = Field(description="Ineligible regimens with the reason")
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
