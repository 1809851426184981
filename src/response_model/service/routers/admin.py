"""``POST /v1/admin/reload`` (admin): load a model fully, then swap it in; on failure the old one stays.

Every reload is recorded in the audit trail (an access record of ``POST /v1/admin/reload``): who asked,
the URI (bounded), and the outcome — the names of the previous and the new model, or why it failed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from response_model.service.deps import AdminKey, HolderDep, SettingsDep, TrailDep
from response_model.service.models import ReloadRequest, ReloadResponse
from response_model.service.recording import log_failure, record_access

log = logging.getLogger(__name__)

router = APIRouter(tags=["admin"])

RELOAD_ENDPOINT = "POST /v1/admin/reload"
MAX_SHOWN = 300  # characters of a URI or an error message kept in the answer and the record


def _bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_SHOWN` characters, saying how long it was."""
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}… ({len(text)} characters)"


@router.post("/v1/admin/reload", response_model=ReloadResponse,
             responses={422: {"description": "The URI could not be loaded as a model; the previous model "
                                             "stays in service"}})
def reload(key: AdminKey, holder: HolderDep, settings: SettingsDep, trail: TrailDep,
           body: ReloadRequest | None = None) -> Any:
    """The names of the previous and the new model, once the new one is loaded and swapped in; 422, the
    previous model staying in service, when it does not load. Default: the model URI the service started
    with. Recorded in the audit trail either way."""
    target = (body.model_uri if body is not None else None) or settings.model_uri
    try:
        previous, current = holder.load(target)
    except Exception as error:  # noqa: BLE001 - the old model stays in service
        log_failure(log, f"reload of {_bounded(target)!r}", error)
        kept = holder.current.names() if holder.current else {}
        message = (f"model_uri: could not load {_bounded(target)!r} as a model ({type(error).__name__}: "
                   f"{_bounded(str(error))}); the previous model stays in service")
        record_access(trail, key, RELOAD_ENDPOINT, 422, {"action": "reload", "model_uri": _bounded(target),
                                                         "outcome": "failed", "error": message, "kept": kept})
        return JSONResponse({"errors": [{"field": "model_uri", "value": _bounded(target), "message": message}]},
                            status_code=422)
    answer = {"previous": previous.names() if previous else {}, "current": current.names()}
    record_access(trail, key, RELOAD_ENDPOINT, 200, {"action": "reload", "model_uri": _bounded(target),
                                                     "outcome": "loaded", **answer})
    log.info("key %s reloaded the model: %s", key.key_id, current.names())
    return answer
