"""The audit trail: an append-only, tamper-evident record of every prediction request (keyed chain +
signed checkpoints; docs/audit-trail.md).

- :mod:`.chain`: what a record holds, its canonical JSON, its hash and the rules of the hash chain;
  the checks that keep the raw patient id out of the trail.
- :mod:`.records`: the ``audit_records`` table and :class:`AuditEntry` (a record as read back).
- :mod:`.store`: :class:`AuditTrail` (appends with group commit, verify, checkpoint, get, check_record, count).
- :mod:`.checkpoints`: signed (Ed25519) checkpoints of the chain's head and the witnesses they go to.
- :mod:`.verify`: the walk of ``AuditTrail.verify`` that names the tamper case and the record.
- :mod:`.readers`: filters, paging and the flat CSV/Parquet export for auditors.

This package re-exports the names that the rest of the project imports from
``response_model.service.audit``.
"""

from response_model.service.audit.chain import (
    CONTENT_FIELDS,
    GENESIS_HASH,
    AuditError,
    RawIdentifierError,
    canonical_json,
    compact_explanations,
    expand_explanations,
    input_digest,
    record_hash,
    stored_json,
)
from response_model.service.audit.readers import (
    EXPORT_COLUMN_DOC,
    EXPORT_COLUMNS,
    EXPORT_FORMATS,
    MAX_QUERY_LIMIT,
    SHAP_PREFIX,
    FilterError,
    TrailFilter,
    parse_filter,
    shap_features,
    start_export,
)
from response_model.service.audit.records import AuditEntry, audit_records
from response_model.service.audit.store import AuditTrail

__all__ = [
    "CONTENT_FIELDS",
    "EXPORT_COLUMN_DOC",
    "EXPORT_COLUMNS",
    "EXPORT_FORMATS",
    "GENESIS_HASH",
    "MAX_QUERY_LIMIT",
    "SHAP_PREFIX",
    "AuditEntry",
    "AuditError",
    "AuditTrail",
    "FilterError",
    "RawIdentifierError",
    "TrailFilter",
    "audit_records",
    "canonical_json",
    "compact_explanations",
    "expand_explanations",
    "input_digest",
    "parse_filter",
    "record_hash",
    "shap_features",
    "start_export",
    "stored_json",
]
