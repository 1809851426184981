"""The stored form of an audit record: the ``audit_records`` table, the ``audit_blobs`` side table of
packed records, and :class:`AuditEntry`, the record as read back (JSON fields parsed, explanations
expanded). Used by the store, which writes records, and by the readers, which select them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from response_model.service.audit.chain import _JSON_FIELDS, CONTENT_FIELDS, OPTIONAL_FIELDS, expand_explanations
from response_model.service.audit.packing import PACKED_FIELDS, PackingError, blob_digest, blob_reference, unpack_field
from response_model.service.keys import TIME_FORMAT, parse_time

#: the endpoints of prediction requests (the JSON API's and the clinician page's); every other record is
#: an access one (readers' kinds) or an outcome (.outcomes)
PREDICTION_REQUEST_ENDPOINTS = ("POST /v1/predictions", "POST /v1/predictions:batch", "POST / (clinician page)")

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
    # added for drift monitoring (issue 16): a trail created before has no such column until opened
    sa.Column("inputs", sa.Text, nullable=True),  # canonical JSON: the scored record without its id (~0.7 KB)
)

# The side blobs of packed records (audit/packing.py): content-addressed, the key is the SHA-256 (hex) of the
# bytes. A record refers to its blob by that digest in its packed fields' text, which its MAC covers; a
# blob shared by identical records is stored once.
audit_blobs = sa.Table(
    "audit_blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# What the chain checks read of each record: its links and every field the hash covers.
_CHAIN_COLUMNS = [audit_records.c.seq, audit_records.c.prev_hash, audit_records.c.hash] + [
    audit_records.c[name] for name in CONTENT_FIELDS + OPTIONAL_FIELDS
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
    inputs: Any = None  # the scored patient record without its id (accepted predictions since issue 16)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (time as UTC ISO text)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["time"] = self.time.strftime(TIME_FORMAT)
        return out


MAX_READ_DEPTH = 32  # deeper stored JSON is shown as a summary: no reader recurses without bound


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and objects more than ``limit`` levels deep (iterative walk)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _unreadable(text: str, reason: str) -> dict[str, Any]:
    """The stand-in for a stored JSON field that cannot be read safely: why, its length and digest."""
    return {"unreadable": reason, "length": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}


def blob_references(rows: Iterable[Any]) -> set[str]:
    """The digests of the side blobs that the rows' packed fields refer to (fields not selected skipped)."""
    found = set()
    for row in rows:
        mapping = row._mapping
        for name in PACKED_FIELDS:
            digest = blob_reference(mapping.get(name))
            if digest is not None:
                found.add(digest)
    return found


def side_blobs(conn: Connection, rows: Iterable[Any]) -> dict[str, bytes]:
    """The side blobs (digest → bytes) that ``rows`` refer to, read in ``conn``; a missing one is
    absent (its field then reads as unreadable). Reads nothing when no row refers to one, so trails
    written before side blobs need no ``audit_blobs`` table."""
    wanted = sorted(blob_references(rows))
    blobs: dict[str, bytes] = {}
    for start in range(0, len(wanted), 500):
        query = sa.select(audit_blobs.c.sha256, audit_blobs.c.data).where(
            audit_blobs.c.sha256.in_(wanted[start:start + 500]))
        blobs.update((digest, bytes(data)) for digest, data in conn.execute(query))
    return blobs


def blob_problem(row: Any, blobs: Mapping[str, bytes]) -> str | None:
    """Why a record's side blob is not the one its MAC covers (missing, or its bytes changed), or None."""
    mapping = row._mapping
    for name in PACKED_FIELDS:
        digest = blob_reference(mapping.get(name))
        if digest is None:
            continue
        data = blobs.get(digest)
        if data is None:
            return f"the side blob of its {name} (audit_blobs {digest[:16]}…) is missing"
        if blob_digest(data) != digest:
            return (f"the side blob of its {name} (audit_blobs {digest[:16]}…) was changed: its bytes no longer "
                    "hash to its key")
    return None


def parse_stored(name: str, text: str | None, blobs: Mapping[str, bytes] | None = None) -> Any:
    """A stored JSON field's value (None for None), tolerant of any stored text: text that is not
    JSON, or nests more than :data:`MAX_READ_DEPTH` levels, reads as a summary
    (``{"unreadable", "length", "sha256"}``) rather than failing the page or export that reads it;
    outputs and explanations in a packed form are unpacked (:mod:`.packing`; ``blobs``: the side blobs
    by digest, :func:`side_blobs`), a side blob missing or changed also reading as a summary."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        return _unreadable(text, f"nested more than {MAX_READ_DEPTH} levels")
    except ValueError:
        return _unreadable(text, "not JSON")
    try:
        unpacked = unpack_field(name, value, blobs)
    except PackingError as exc:
        return _unreadable(text, str(exc))
    shallow = unpacked is value and text.count("[") + text.count("{") <= MAX_READ_DEPTH
    if not shallow and _depth_exceeds(unpacked, MAX_READ_DEPTH):
        return _unreadable(text, f"nested more than {MAX_READ_DEPTH} levels")
    return unpacked


def row_to_entry(row, blobs: Mapping[str, bytes] | None = None) -> AuditEntry:
    """An :class:`AuditEntry` from a fetched row (or :class:`_Row`): JSON parsed, explanations expanded.
    ``blobs``: the side blobs the row refers to (:func:`side_blobs`)."""
    values = dict(row._mapping)
    for name in _JSON_FIELDS:
        values[name] = parse_stored(name, values.get(name), blobs)  # absent: not selected (explanations=False)
    values["explanations"] = expand_explanations(values.get("explanations"))
    regimens = values.get("regimens")  # a list of ids; anything else (a damaged record) reads as None
    values["regimens"] = [str(r) for r in regimens] if isinstance(regimens, list) else None
    values["time"] = parse_time(values["time"])
    return AuditEntry(**values)


class _Row:
    """Adapter so that freshly inserted values go through the same conversion as fetched rows."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = {c.name: values.get(c.name) for c in audit_records.columns}
