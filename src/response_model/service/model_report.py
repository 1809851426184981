"""``GET /v1/model/report``: the validation report and model card of the model in service (auditor, admin).

The report (:mod:`response_model.report`) is rendered from the model version's MLflow run the first
time it is asked for, then kept for the loaded model (a reload or alias change renders it afresh).
Rendering needs the tracking store that holds the training run; where it cannot be reached the
answer is 503 naming what is missing.

The page is served with a strict Content-Security-Policy (:func:`report_policy`): no scripts, no
requests of any kind, its one inline style sheet allowed by hash and its figures as ``data:`` PNGs only,
never framed — so a model name or label shown in the report can never become active content.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse

from response_model.service.deps import CurrentModel, ReportKey, ServiceDep
from response_model.service.headers import style_policy
from response_model.service.holder import LoadedModel
from response_model.service.state import RenderedReport, ServiceState

log = logging.getLogger(__name__)

router = APIRouter(tags=["model"])


@lru_cache(maxsize=1)
def report_policy() -> str:
    """Return the Content-Security-Policy of the report page (its style sheet by the hash of the template's)."""
    template = (files("response_model") / "templates" / "report.html").read_text(encoding="utf-8")
    return (f"default-src 'none'; style-src {style_policy(template)}; img-src data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def cached_report(state: ServiceState, loaded: LoadedModel) -> str:
    """Return the report HTML of ``loaded``, rendering it once per loaded model; HTTPException 503 if it cannot be."""
    from response_model.report import ReportError, build_report

    key = (loaded.uri, loaded.name, loaded.version, id(loaded.bundle))
    with state.report_lock:  # one rendering at a time; later callers get the kept page
        if state.report is not None and state.report.key == key:
            return state.report.html
        try:
            html, _ = build_report(loaded.uri)
        except ReportError as error:
            raise HTTPException(503, f"the validation report cannot be rendered: {error}") from None
        state.report = RenderedReport(key, html)
        log.info("rendered the validation report of %s version %s", loaded.name, loaded.version)
        return html


@router.get("/v1/model/report", response_class=HTMLResponse,
            responses={401: {"description": "missing or invalid key"}, 403: {"description": "not an auditor or admin"},
                       503: {"description": "model not loaded, or its training run not reachable"}})
def model_report(key: ReportKey, state: ServiceDep, model: CurrentModel) -> HTMLResponse:
    """The validation report and model card of the model in service (self-contained HTML)."""
    return HTMLResponse(cached_report(state, model), headers={"Content-Security-Policy": report_policy()})
