"""``GET /v1/model/report``: the validation report and model card of the model in service (auditor, admin).

The report (:mod:`response_model.report`) is rendered from the model version's MLflow run the first
time it is asked for, then cached per loaded model (a reload or alias change renders it afresh).
Rendering needs the tracking store that holds the training run; where it cannot be reached the
answer is 503 naming what is missing.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from response_model.service.keys import KeyInfo

log = logging.getLogger(__name__)

REPORT_ROLES = ("auditor", "admin")
router = APIRouter(tags=["model"])
_lock = threading.Lock()


def report_key(request: Request) -> KeyInfo:
    """FastAPI dependency: the caller's key if its role is auditor or admin (else 401 / 403)."""
    return request.app.state.authenticate(request, REPORT_ROLES)


def cached_report(request: Request) -> str:
    """Return the report HTML of the loaded model, rendering it once per loaded model."""
    from response_model.report import ReportError, build_report

    loaded = request.app.state.holder.require()
    key = (loaded.uri, loaded.name, loaded.version, id(loaded.bundle))
    with _lock:  # one rendering at a time; later callers get the cached page
        cache = getattr(request.app.state, "model_report", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        try:
            html, _ = build_report(loaded.uri)
        except ReportError as error:
            raise HTTPException(503, f"the validation report cannot be rendered: {error}") from None
        request.app.state.model_report = (key, html)
        log.info("rendered the validation report of %s version %s", loaded.name, loaded.version)
        return html


@router.get("/v1/model/report", response_class=HTMLResponse,
            responses={401: {"description": "missing or invalid key"}, 403: {"description": "not an auditor or admin"},
                       503: {"description": "model not loaded, or its training run not reachable"}})
def model_report(request: Request, key: KeyInfo = Depends(report_key)) -> HTMLResponse:
    """The validation report and model card of the model in service (self-contained HTML)."""
    return HTMLResponse(cached_report(request))
