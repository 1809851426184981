"""``/healthz`` (the process answers) and ``/readyz`` (a model is loaded): no key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from response_model.service.deps import ServiceDep

router = APIRouter(tags=["probes"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Return ``{"status": "ok"}`` while the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: ServiceDep) -> Any:
    """Return 200 with the model's names (and why a fallback serves, if one does) once a model is loaded, else 503."""
    model = state.holder.current
    if model is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ready", **model.names(), **({"fallback": model.fallback} if model.fallback else {})}
