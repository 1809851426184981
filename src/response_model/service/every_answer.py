"""Every answer audited with the status the client got, a clean 500 for any unhandled error, and the
service's own access log (a pure ASGI middleware, the outermost of the app).

* **One record per answer.** The routes and error handlers append their own records (a prediction,
  a rejection, a read of the trail, a reload); :func:`response_model.service.recording.append` notes
  each for the request being answered. An answer that left without one — a 404 or 405,
  FastAPI's own 400s and 422s outside the prediction endpoints, a 401 on the model endpoint, a page
  view, a refusal of the body guard before any route ran — gets a record here, *before* its status
  line is sent: the ``METHOD /route template`` endpoint (``(no route)`` when nothing matched: the path
  itself might be an identifier typed in the wrong place, so only its length and keyed digest are
  stored), the status, and the caller's key when a valid bearer token came with it.
* **No tracebacks to clients.** An exception that escapes the app is logged without its message (the
  message might quote patient data: only its type and where it was raised) and answered with a 500
  JSON ``{"detail": ...}``, audited as a 500 — also when the route had already recorded another
  outcome, so the trail never says 200 for an answer that failed.
* **The access log** (logger ``response_model.access``): method, route template, status and duration
  of every request — never the query string (``?access_token=…``) or the path's parameters (a
  prediction id typed by a user may be a record number). ``serve`` turns uvicorn's own access log off.

Not audited: the probes ``/healthz`` and ``/readyz`` (polled every few seconds by an orchestrator, no
key, no data) and the documentation (``/docs``, ``/redoc``, ``/openapi.json`` and their static
assets: public, no key, no data). They still appear in the access log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.routing import Match, Mount

from response_model.service.recording import NO_ROUTE, answer_records, log_failure
from response_model.service.routers import docs

log = logging.getLogger(__name__)
access_log = logging.getLogger("response_model.access")

#: paths answered without an audit record (probes and documentation; see the module docstring)
UNAUDITED_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", docs.DOCS_URL, docs.REDOC_URL,
                             docs.OAUTH2_REDIRECT_URL})
UNAUDITED_PREFIXES = (docs.ASSETS_URL + "/",)
FAILED_MESSAGE = ("the service failed to answer ({error}); the request was recorded in the audit trail and "
                  "the error in the service log")
UNRECORDED_MESSAGE = ("the audit trail could not record this request, so it was not answered; "
                      "try again, or tell the service's administrator (the error is in the service log)")


def audited(path: str) -> bool:
    """True unless ``path`` is a probe or the documentation (answered without an audit record)."""
    return path not in UNAUDITED_PATHS and not path.startswith(UNAUDITED_PREFIXES)


def route_of(scope: dict) -> str:
    """The route template of a request (e.g. ``/v1/predictions/{prediction_id}``), or ``(no route)``: the
    route that answered, else (a refusal of the body guard, before routing) the first route matching it."""
    route = scope.get("route")
    if route is None:
        route = _matching(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and not isinstance(route, Mount) else NO_ROUTE


def _matching(routes, scope: dict):
    """The first route of ``routes`` (looking into included routers) that matches ``scope``, or None."""
    for candidate in routes:
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # noqa: BLE001 - a route that cannot judge this scope does not match it
            continue
        if match == Match.NONE:
            continue
        inner = getattr(candidate, "original_router", None)  # FastAPI's wrapper of an included router
        return _matching(inner.routes, scope) if inner is not None else candidate
    return None


def endpoint_of(scope: dict) -> str:
    """``METHOD /route template`` of a request, the method bounded (it is the client's text)."""
    return f"{str(scope.get('method', '?'))[:16]} {route_of(scope)}"


class AuditEveryAnswer:
    """ASGI middleware: one audit record for every answer that has none, a clean 500 for an unhandled
    error, and the access log. ``record(scope, endpoint, status, error)`` appends the record (a plain function:
    it runs in a worker thread); see :func:`response_model.service.recording.record_answer`."""

    def __init__(self, app, record) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = _Answer(self, scope, send)
        try:
            with answer_records(answer.recorded):
                await self.app(scope, receive, answer.send)
        except Exception as error:  # noqa: BLE001 - answered with a clean 500, audited
            await answer.failed(error)
        finally:
            access_log.info("%s %s %s %.1f ms", str(scope.get("method", "?"))[:16], route_of(scope),
                            answer.status if answer.status is not None else "-",
                            (time.perf_counter() - started) * 1000)


class _Answer:
    """One request's answer as it is sent: its status, the statuses recorded for it, and the record
    appended here when the answer had none."""

    def __init__(self, middleware: AuditEveryAnswer, scope: dict, send) -> None:
        self.middleware, self.scope, self._send = middleware, scope, send
        self.recorded: list[int] = []
        self.status: int | None = None
        self.replaced = False  # the app's answer was replaced by ours: drop what it still sends

    async def _append(self, status: int, error: BaseException | None) -> bool:
        """Append the record of this answer; False (logged) when the trail could not store it."""
        try:
            await run_in_threadpool(self.middleware.record, self.scope, endpoint_of(self.scope), status, error)
        except Exception as failure:  # noqa: BLE001 - the trail is down: the answer is replaced, logged
            log_failure(log, f"audit record of {endpoint_of(self.scope)} {status}", failure)
            return False
        self.recorded.append(status)
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Forward ``message``; before the status line of an answer nothing recorded, append its record."""
        if self.replaced:
            return
        if message["type"] == "http.response.start":
            status = int(message["status"])
            if not self.recorded and audited(self.scope.get("path", "")) and not await self._append(status, None):
                self.replaced = True
                await self._answer(503, {"detail": UNRECORDED_MESSAGE})
                return
            self.status = status
        await self._send(message)

    async def _answer(self, status: int, content: dict[str, Any]) -> None:
        """Send our own JSON answer (the app's has not started)."""
        self.status = status
        response = JSONResponse(content, status_code=status)
        await response(self.scope, _no_body, self._send)

    async def failed(self, error: Exception) -> None:
        """Log ``error`` and, if no status was sent yet, answer a clean 500; audit the failure either way."""
        log_failure(log, f"{endpoint_of(self.scope)} failed", error)
        if self.replaced:
            return
        recorded = 500 in self.recorded or not audited(self.scope.get("path", "")) or await self._append(500, error)
        if self.status is None:
            self.replaced = True
            await self._answer(500, {"detail": FAILED_MESSAGE.format(error=type(error).__name__) if recorded
                                     else UNRECORDED_MESSAGE})


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
