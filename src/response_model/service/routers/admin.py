"""``POST /v1/admin/reload`` (admin): load a model fully, then swap it in; on failure the old one stays."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException

from response_model.service.deps import AdminKey, HolderDep, SettingsDep
from response_model.service.models import ReloadRequest, ReloadResponse

log = logging.getLogger(__name__)

router = APIRouter(tags=["admin"])


@router.post("/v1/admin/reload", response_model=ReloadResponse)
def reload(key: AdminKey, holder: HolderDep, settings: SettingsDep,
           body: ReloadRequest | None = None) -> dict[str, Any]:
    """The names of the previous and the new model, once the new one is loaded and swapped in; 500, the
    previous model staying in service, when it does not load. Default: the model URI the service started with."""
    target = (body.model_uri if body is not None else None) or settings.model_uri
    try:
        previous, current = holder.load(target)
    except Exception as error:  # noqa: BLE001 - the old model stays in service
        log.exception("reload of %s failed", target)
        raise HTTPException(500, f"could not load {target}: {error}; the previous model stays in service") from None
    log.info("key %s reloaded the model: %s", key.key_id, current.names())
    return {"previous": previous.names() if previous else {}, "current": current.names()}
