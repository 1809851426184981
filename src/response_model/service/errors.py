"""The answers to refused requests — bad key (401/403), invalid body (422), body refused by the guard (413/422) —
each authenticated first and, on the prediction endpoints, audited before it is sent.

Authentication comes first: nobody without a valid key learns what is wrong with a body.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from response_model.genes import suggestions_at_most
from response_model.service.auth import ADMIN_ROLES, CLINICAL_ROLES, OUTCOME_ROLES, AuthError
from response_model.service.deps import caller_key, state_of
from response_model.service.guard import replay
from response_model.service.keys import KeyInfo
from response_model.service.prediction import PREDICTION_ENDPOINTS
from response_model.service.recording import record_rejection
from response_model.service.validation import SUGGESTED_PER_REQUEST, body_json, jsonable, request_errors

#: the endpoints whose refusals are authenticated first, with the roles they need
GUARDED_ROLES: dict[str, tuple[str, ...]] = {**dict.fromkeys(PREDICTION_ENDPOINTS, CLINICAL_ROLES),
                                             "/v1/admin/reload": ADMIN_ROLES,
                                             "/v1/outcomes": OUTCOME_ROLES, "/v1/outcomes/batch": OUTCOME_ROLES}


async def audit_rejection(request: Request, status: int, key: KeyInfo | None, detail: Any) -> None:
    """Append the record of a refused prediction request (``POST`` on a prediction endpoint); other refusals
    are recorded by :class:`~response_model.service.every_answer.AuditEveryAnswer`, under their route."""
    endpoint = PREDICTION_ENDPOINTS.get(request.url.path)
    if endpoint is None or request.method != "POST":
        return
    body, digest = await body_json(request)
    state = state_of(request)
    await run_in_threadpool(record_rejection, state.trail, state.holder.current, endpoint, status, key, body,
                            digest, detail)


async def on_auth_error(request: Request, exc: AuthError) -> JSONResponse:
    """Return the 401 / 403 answer, audited."""
    await audit_rejection(request, exc.status_code, exc.key, {"error": exc.detail})
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _authenticated(request: Request) -> KeyInfo | JSONResponse | None:
    """Return the caller's key on a guarded endpoint (None elsewhere), or the audited 401 / 403 answer."""
    roles = GUARDED_ROLES.get(request.url.path)
    if roles is None:
        return None
    try:
        return await run_in_threadpool(caller_key, request, roles)
    except AuthError as auth:
        return await on_auth_error(request, auth)


def _schema_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Return FastAPI's validation errors as field-level errors."""
    errors = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        path = ".".join(loc) or "body"
        errors.append({"field": path, "value": jsonable(item.get("input")), "message": f"{path}: {item.get('msg')}"})
    return errors


def prediction_body_errors(body: Any) -> list[dict[str, Any]]:
    """The field-level errors of a ``POST /v1/predictions`` body (the CLI's texts), gene suggestions
    bounded per request; empty when valid. Run in a worker thread: it can take milliseconds."""
    with suggestions_at_most(SUGGESTED_PER_REQUEST):
        return request_errors(body)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Return the 422 answer ``{"errors": [...]}`` (the CLI's texts for a single prediction), audited.
    The texts are made in a worker thread: validating a record can take milliseconds."""
    key = await _authenticated(request)
    if isinstance(key, JSONResponse):
        return key
    body, _ = await body_json(request)
    errors = await run_in_threadpool(prediction_body_errors, body) \
        if request.url.path == "/v1/predictions" and body is not None else []
    errors = errors or _schema_errors(exc)
    await audit_rejection(request, 422, key, {"errors": errors})
    return JSONResponse({"errors": errors}, status_code=422)


async def on_guard_refusal(scope: dict, body: bytes | None, status: int, errors: list[dict[str, Any]]) -> JSONResponse:
    """Return the answer to a body the guard refused (413 too large, 422 malformed or duplicate key):
    authenticated first, and audited on the prediction endpoints, like any other rejection."""
    request = Request(scope, receive=replay(body))
    key = await _authenticated(request)
    if isinstance(key, JSONResponse):
        return key
    if key is not None:
        await audit_rejection(request, status, key, {"errors": errors})
    return JSONResponse({"errors": errors}, status_code=status)
