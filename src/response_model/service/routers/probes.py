"""``/healthz`` (the process answers) and ``/readyz`` (a model is loaded): no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from response_model.service.deps import HolderDep

router = APIRouter(tags=["probes"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """`{"status": "ok"}` while the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(holder: HolderDep):  # no return annotation: it would add a title to the OpenAPI schema
    """200 `{"status": "ready"}` with the model's name, version and URI (and `fallback`: why an exported
    folder serves, if one does) once a model is loaded; 503 `{"status": "loading"}` before."""
    model = holder.current
    if model is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ready", **model.names(), **({"fallback": model.fallback} if model.fallback else {})}
