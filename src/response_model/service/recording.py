"""The audit records the HTTP layer appends: rejected requests, failed predictions, reads of the trail,
reloads and (:func:`record_answer`) every other answer.

Every function appends before the caller answers, so no answer leaves without its record; each append
is noted for the request being answered (:func:`answer_records`), so that
:class:`~response_model.service.every_answer.AuditEveryAnswer` adds a record only to answers that have none.
What a rejection stores of the request is redacted first (:func:`~response_model.service.validation.redacted_errors`):
no identifier value and no unknown field name (which may be one) reaches the trail raw.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from response_model.service.audit import AuditEntry, AuditTrail, RawIdentifierError
from response_model.service.audit.readers import PREDICTION_REQUEST_ENDPOINTS
from response_model.service.keys import KeyInfo
from response_model.service.validation import raw_patient_id, redacted_errors, redacted_name

if TYPE_CHECKING:
    from response_model.service.holder import LoadedModel
    from response_model.service.state import ServiceState


#: the endpoint text of an answer to a path no route matched (its path may be an identifier)
NO_ROUTE = "(no route)"

log = logging.getLogger(__name__)

#: the HTTP statuses recorded so far for the request being answered (None outside a request)
_recorded: ContextVar[list[int] | None] = ContextVar("response_model_recorded", default=None)


@contextmanager
def answer_records(statuses: list[int]) -> Iterator[list[int]]:
    """While the body runs, every append adds its records' HTTP statuses to ``statuses`` (also from the
    worker threads a request's routes run in: they copy the context, and share the list)."""
    token = _recorded.set(statuses)
    try:
        yield statuses
    finally:
        _recorded.reset(token)


def where_raised(error: BaseException, frames: int = 4) -> str:
    """Where ``error`` was raised: ``file:line in function`` of its innermost frames, never its message."""
    stack = traceback.extract_tb(error.__traceback__)[-frames:]
    return " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in reversed(stack)) or "?"


def log_failure(logger: logging.Logger, what: str, error: BaseException) -> None:
    """Log that ``what`` failed with ``error``: its type and where, not its message nor a traceback
    (either may quote the request, e.g. a patient id)."""
    logger.error("%s: %s at %s", what, type(error).__name__, where_raised(error))


def _stored(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as stored: the field-level errors of a rejected prediction request redacted."""
    detail = record.get("detail")
    if record.get("endpoint") in PREDICTION_REQUEST_ENDPOINTS and isinstance(detail, dict) and "errors" in detail:
        return {**record, "detail": {**detail, "errors": redacted_errors(detail["errors"])}}
    return record


def append(trail: AuditTrail, records: list[dict[str, Any]], *, entries: bool = False) -> list[AuditEntry] | None:
    """Append ``records`` to the trail in one transaction (raises what the trail raises), noted for the answer;
    returns them as stored when ``entries`` (else None)."""
    stored = trail.append_many([_stored(r) for r in records], entries=entries)
    noted = _recorded.get()
    if noted is not None:
        noted.extend(int(r["http_status"]) for r in records)
    return stored


def record_rejected(trail: AuditTrail, record: dict[str, Any]) -> None:
    """Append a rejection; without its raw patient id if the trail refuses that id (echoed elsewhere)."""
    try:
        append(trail, [record])
    except RawIdentifierError:
        append(trail, [{**record, "patient_id": None}])


def record_rejection(trail: AuditTrail, model: LoadedModel | None, endpoint: str, status: int, key: KeyInfo | None,
                     body: Any, digest: str | None, detail: Any) -> None:
    """Append the audit record of a rejected prediction request (raw patient id pseudonymised)."""
    patient_id = raw_patient_id(body) if status != 401 else None
    record = {"endpoint": endpoint, "status": "rejected", "http_status": status,
              "key_id": key.key_id if key else None, "role": key.role if key else None,
              "model_name": model.name if model else None, "model_version": model.version if model else None,
              "input_digest": digest, "patient_id": patient_id, "detail": detail}
    try:
        append(trail, [record])
    except Exception:  # the record naming the raw id elsewhere, etc.: keep a record without it
        record["patient_id"] = None
        append(trail, [record])


def record_server_failure(trail: AuditTrail, base: dict[str, Any], error: Exception) -> dict[str, Any]:
    """Log and append a prediction that failed with ``error``; returns the 500 answer ``{"detail": ...}``."""
    log_failure(log, f"{base.get('endpoint', 'prediction')} failed", error)
    message = f"the prediction failed ({type(error).__name__}); the request was recorded in the audit trail"
    append(trail, [{**base, "status": "rejected", "http_status": 500, "detail": {"error": message}}])
    return {"detail": message}


def record_access(trail: AuditTrail, key: KeyInfo | None, endpoint: str, http_status: int,
                  detail: dict[str, Any]) -> None:
    """Append the access record of a read of the trail (or of an admin call): who did what, and whether
    it was allowed."""
    append(trail, [{
        "endpoint": endpoint, "status": "accepted" if http_status < 400 else "rejected",
        "http_status": http_status, "key_id": key.key_id if key else None, "role": key.role if key else None,
        "detail": detail,
    }])


def _bearer(scope: dict) -> str | None:
    """The bearer token of a request's headers (None without one)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def record_answer(state: ServiceState, scope: dict, endpoint: str, status: int,
                  error: BaseException | None) -> None:
    """Append the record of an answer that its route did not record (see
    :class:`~response_model.service.every_answer.AuditEveryAnswer`): ``METHOD /route template``, the status,
    the caller's key if a valid bearer token came with it, and — when no route matched (``endpoint``
    ends with :data:`NO_ROUTE`) — the path's length and keyed digest only (it may be an identifier
    typed in the wrong place)."""
    try:
        key = state.keys.authenticate(_bearer(scope))
    except Exception:  # noqa: BLE001 - a failing key store must not stop the record
        key = None
    detail: dict[str, Any] = {"answer": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_
                              else str(status)}
    if endpoint.endswith(NO_ROUTE):
        detail["path"] = redacted_name(str(scope.get("path", "")), "path")
    if error is not None:
        detail["error"] = f"{type(error).__name__} at {where_raised(error)}"
    model = state.holder.current
    append(state.trail, [{"endpoint": endpoint, "status": "accepted" if status < 400 else "rejected",
                          "http_status": status, "key_id": key.key_id if key else None,
                          "role": key.role if key else None, "model_name": model.name if model else None,
                          "model_version": model.version if model else None, "detail": detail}])
