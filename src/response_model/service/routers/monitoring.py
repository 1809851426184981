"""``GET /v1/monitoring`` (auditor, admin): the monitoring state of the model in service — the JSON
``response-model monitor --json`` prints (:func:`response_model.monitoring.checks.monitoring_state`).

Aggregates only (no record, no pseudonym; cells under k patients suppressed). Every answer is an
access record of the trail: who asked, the period, and the verdict (or why it was refused)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from response_model.monitoring.checks import monitoring_state, period_problem, thresholds
from response_model.monitoring.profile import ProfileError
from response_model.service.audit import FilterError, parse_filter
from response_model.service.deps import AuditorKey, CurrentModel, TrailDep
from response_model.service.keys import parse_time
from response_model.service.recording import record_access

router = APIRouter(tags=["audit"])

ENDPOINT = "GET /v1/monitoring"
DEFAULT_DAYS = 28  # the default period: the last four weeks


def _period(since: str | None, until: str | None, cfg: dict[str, Any]) -> tuple[datetime, datetime]:
    """The aware (since, until) of the query; raises FilterError naming a bad, reversed or too long period."""
    flt = parse_filter(from_=since, to=until)
    end = parse_time(flt.to) if flt.to else datetime.now(UTC)
    start = parse_time(flt.from_) if flt.from_ else end - timedelta(days=DEFAULT_DAYS)
    problem = period_problem(start, end, cfg)
    if problem:
        raise FilterError([{"field": "since", "value": since, "message": problem}])
    return start, end


@router.get("/v1/monitoring", summary="Drift and performance of the model in service, with verdicts",
            responses={401: {"description": "No or unknown API key"},
                       403: {"description": "Not an auditor or admin key"},
                       409: {"description": "The model has no reference profile (retrain it)"},
                       422: {"description": "Bad since / until, each named with the value given"}})
def get_monitoring(key: AuditorKey, trail: TrailDep, model: CurrentModel,
                   since: str | None = Query(None, description="Start (ISO 8601 with a zone, or a date); default: "
                                             f"{DEFAULT_DAYS} days before until"),
                   until: str | None = Query(None, description="End, exclusive; default: now")) -> Any:
    """Per check a verdict (ok / watch / act; n/a where a window is too small), the statistics per time
    window, live performance once outcomes are recorded and the expected performance before."""
    cfg = thresholds()
    try:
        start, end = _period(since, until, cfg)
    except FilterError as exc:
        errors = [{**e, "field": {"from": "since", "to": "until"}.get(e["field"], e["field"]),
                   "message": e["message"].replace("from:", "since:").replace("to:", "until:")} for e in exc.errors]
        record_access(trail, key, ENDPOINT, 422, {"access": "refused", "errors": errors})
        return JSONResponse({"errors": errors}, status_code=422)
    try:
        state = monitoring_state(model.bundle, trail, start, end, cfg)
    except ProfileError as exc:
        record_access(trail, key, ENDPOINT, 409, {"access": "refused", "error": str(exc)})
        return JSONResponse({"detail": str(exc)}, status_code=409)
    record_access(trail, key, ENDPOINT, 200, {"access": "monitoring", "since": state["period"]["since"],
                                              "until": state["period"]["until"], "verdict": state["verdict"]})
    return state
