"""``GET /v1/model``: what the model in service is, how it was validated and what it must not be used for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from response_model.modeling.interpret import finite
from response_model.service.answers import LIMITATIONS
from response_model.service.deps import CurrentModel, ModelReaderKey
from response_model.service.models import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo)
def model_info(key: ModelReaderKey, model: CurrentModel) -> dict[str, Any]:
    """The model in service: its names, training date, data digest, metrics, intended use, limitations and label."""
    meta = model.bundle.metadata
    metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items() if finite(v) is not None}
    return {"model_name": model.name, "model_version": model.version, "model_uri": model.uri,
            "training_date": meta.get("training_date"), "data_digest": meta.get("data_digest"),
            "metrics": metrics, "intended_use": meta.get("intended_use"), "limitations": LIMITATIONS,
            "label": meta.get("label"), "regimen_classes": list(model.bundle.regimen_classes),
            "candidate_regimens": [r.name for r in model.bundle.candidate_regimens()],
            "fallback": model.fallback}
