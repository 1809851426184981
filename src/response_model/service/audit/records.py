"""The stored form of an audit record: the ``audit_records`` table and :class:`AuditEntry`, the record as
read back (JSON fields parsed, explanations expanded). Used by the store, which writes records, and by
the readers, which select them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from response_model.service.audit.chain import _JSON_FIELDS, CONTENT_FIELDS, expand_explanations
from response_model.service.keys import TIME_FORMAT, parse_time

metadata = sa.MetaData()

audit_records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("time", sa.String(32), nullable=False, index=True),  # UTC, TIME_FORMAT: text order = time order
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("role", sa.String(16), nullable=True),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("model_name", sa.String(200), nullable=True),
    sa.Column("model_version", sa.String(64), nullable=True, index=True),
    sa.Column("input_digest", sa.String(64), nullable=True),
    sa.Column("patient_pseudonym", sa.String(64), nullable=True),
    sa.Column("prediction_id", sa.String(64), nullable=True, index=True),
    sa.Column("regimens", sa.Text, nullable=True),  # canonical JSON list of regimen ids
    sa.Column("outputs", sa.Text, nullable=True),  # canonical JSON
    sa.Column("explanations", sa.Text, nullable=True),  # canonical JSON
    sa.Column("detail", sa.Text, nullable=True),  # canonical JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# What the chain checks read of each record: its links and every field the hash covers.
_CHAIN_COLUMNS = [audit_records.c.seq, audit_records.c.prev_hash, audit_records.c.hash] + [
    audit_records.c[name] for name in CONTENT_FIELDS
]


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class AuditEntry:
    """One stored record, with its JSON fields parsed."""

    seq: int
    time: datetime
    key_id: str | None
    role: str | None
    endpoint: str
    status: str
    http_status: int
    model_name: str | None
    model_version: str | None
    input_digest: str | None
    patient_pseudonym: str | None
    prediction_id: str | None
    regimens: list[str] | None
    outputs: Any
    explanations: Any
    detail: Any
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (time as UTC ISO text)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["time"] = self.time.strftime(TIME_FORMAT)
        return out


def row_to_entry(row) -> AuditEntry:
    """An :class:`AuditEntry` from a fetched row (or :class:`_Row`): JSON parsed, explanations expanded."""
    values = dict(row._mapping)
    for name in _JSON_FIELDS:
        text = values.get(name)  # absent: not selected (AuditTrail.select(explanations=False))
        values[name] = None if text is None else json.loads(text)
    values["explanations"] = expand_explanations(values.get("explanations"))
    values["time"] = parse_time(values["time"])
    return AuditEntry(**values)


class _Row:
    """Adapter so that freshly inserted values go through the same conversion as fetched rows."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = {c.name: values[c.name] for c in audit_records.columns}
