"""The audit records the HTTP layer appends: rejected requests, failed predictions and reads of the trail.

Every function appends before the caller answers, so no answer leaves without its record.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from response_model.service.audit import AuditTrail, RawIdentifierError
from response_model.service.keys import KeyInfo
from response_model.service.validation import raw_patient_id

if TYPE_CHECKING:
    from response_model.service.holder import LoadedModel

log = logging.getLogger(__name__)


def append(trail: AuditTrail, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to the trail in one transaction (raises what the trail raises)."""
    trail.append_many(records, entries=False)


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
    log.exception("prediction failed")
    message = f"the prediction failed ({type(error).__name__}); the request was recorded in the audit trail"
    append(trail, [{**base, "status": "rejected", "http_status": 500, "detail": {"error": message}}])
    return {"detail": message}


def record_access(trail: AuditTrail, key: KeyInfo | None, endpoint: str, http_status: int,
                  detail: dict[str, Any]) -> None:
    """Append the access record of a read of the trail: who read what, and whether it was allowed."""
    append(trail, [{
        "endpoint": endpoint, "status": "accepted" if http_status < 400 else "rejected",
        "http_status": http_status, "key_id": key.key_id if key else None, "role": key.role if key else None,
        "detail": detail,
    }])
