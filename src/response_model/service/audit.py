"""The audit trail: an append-only, tamper-evident record of every prediction request.

Each record holds the time (UTC), the API key id and role, the endpoint, the outcome (``accepted`` or
``rejected``) with the HTTP status, the model name and version, the SHA-256 digest of the request
body's canonical JSON, the *pseudonymised* patient id, the prediction id, the regimens covered, the
outputs and explanations (JSON) and an optional detail (JSON, e.g. validation errors). Callers pass
the raw patient id as ``patient_id``; :meth:`AuditTrail.append` replaces it by
``response_model.privacy.pseudonymise(patient_id)`` (a keyed hash) before anything is written, and
refuses to append — rather than store the raw id — when no pseudonymisation key is configured.
Nothing else in a record may identify a patient: no names, record numbers or dates of birth.

Hash chain: record ``n`` (``seq`` = 1, 2, 3, … without gaps) stores ``prev_hash`` = the ``hash`` of
record ``n − 1`` (:data:`GENESIS_HASH` for the first) and ``hash`` = SHA-256 of the canonical JSON of
``{"v": 1, "seq": n, "prev_hash": …, "record": {every stored field}}``. :meth:`AuditTrail.verify`
recomputes the chain and names the first record that was edited (hash mismatch), follows a deletion
(sequence gap or prev_hash mismatch) or was moved (a record's hash covers its sequence number).
The chain alone cannot reveal that the *newest* records were cut off, or that somebody with write
access rewrote the whole chain; keep the head hash that ``verify`` reports somewhere else
(a ticket, a signed e-mail) and compare it later.

Appends are serialised: on SQLite in a ``BEGIN IMMEDIATE`` transaction (the database's write lock
is taken before the last hash is read), on PostgreSQL under ``LOCK TABLE … IN EXCLUSIVE MODE``
(readers are not blocked). ``seq`` is the primary key, so on any other database two appends that
raced would collide there, and the loser retries. :meth:`AuditTrail.append` returns only after the
transaction has committed: with SQLite's ``synchronous=FULL`` (and PostgreSQL's default
``synchronous_commit=on``) the record is then on disk.

Reading (the auditors' endpoints in :mod:`response_model.service.auditor` and ``audit export``):
records of prediction requests have a ``POST …`` endpoint; every other record is an *access* record
(someone read the trail: ``GET /v1/predictions…`` or ``CLI audit export``), kept in the same chain.
:func:`parse_filter` validates a filter given as text, :meth:`AuditTrail.select` pages with a
cursor on ``seq``, :meth:`AuditTrail.check_record` checks one record cheaply, and
:func:`start_export` flattens the selected prediction records into one table
(:data:`EXPORT_COLUMNS`, then ``shap.<feature>`` columns) written as CSV or Parquet chunk by chunk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Iterable, Mapping

import sqlalchemy as sa

try:  # optional: a faster writer of the records' JSON fields (see stored_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - the json module writes them
    _orjson = None
_ORJSON_OPTIONS = 0 if _orjson is None else (  # sorted keys; anything not plain JSON goes to _not_plain
    _orjson.OPT_SORT_KEYS | _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
    | _orjson.OPT_PASSTHROUGH_SUBCLASS)
from sqlalchemy.engine import Connection, Engine

from response_model.privacy import pseudonymise
from response_model.service.keys import (
    ROLES,
    TIME_FORMAT,
    KeyStoreError,
    describe_url,
    make_engine,
    parse_time,
    require_table,
    utc_now_text,
)

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
CHAIN_FORMAT = 1
STATUSES = ("accepted", "rejected")
MAX_QUERY_LIMIT = 1_000
_APPEND_RETRIES = 20


class AuditError(RuntimeError):
    """An audit record could not be appended (bad record) or the trail could not be opened."""


class RawIdentifierError(AuditError):
    """The raw patient id also appears elsewhere in the record (e.g. echoed in an output), so storing
    the record would store the identifier: the record is refused."""


# ---------------------------------------------------------------------------------------------------
# Canonical JSON and digests


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "model_dump"):  # pydantic models
        return value.model_dump(mode="json")
    raise TypeError(f"cannot write a {type(value).__name__} into the audit trail as JSON")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces, UTF-8 text; NaN and infinity are refused (use null)."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
            default=_json_default,
        )
    except ValueError as exc:
        raise AuditError(f"cannot write {exc}: NaN and infinity have no JSON form; use null") from exc


def _not_plain(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def stored_json(value: Any) -> str:
    """The stored text of a record's JSON field: sorted keys, no spaces, UTF-8; NaN and infinity refused.

    orjson writes it when installed and ``value`` is plain JSON — dicts with text keys, lists, text,
    ints, booleans, None and finite floats — about ten times faster than the json module on an
    explanation's thousands of floats, which it writes in their shortest round-trip form
    (``0.00001`` where json writes ``1e-05``: the same number); else :func:`canonical_json`. Plain
    is checked by reading the text back: it must give ``value`` again (orjson writes NaN and infinity
    as null, and has its own forms for datetimes, dataclasses, UUIDs and enums — all of which then
    differ, or fail, and go to the json module). The record hash covers the stored text, so
    verification never depends on which of the two wrote it.
    """
    if _orjson is not None:
        try:
            text = _orjson.dumps(value, option=_ORJSON_OPTIONS, default=_not_plain)
            if _orjson.loads(text) == value:
                return text.decode("utf-8")
        except (TypeError, ValueError, OverflowError):  # e.g. an int beyond 64 bits: the json module's turn
            pass
    return canonical_json(value)


def input_digest(body: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a request body (a parsed JSON value)."""
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Table

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

# The stored fields that the hash covers, in the table's order (besides seq and prev_hash).
CONTENT_FIELDS: tuple[str, ...] = (
    "time", "key_id", "role", "endpoint", "status", "http_status", "model_name", "model_version",
    "input_digest", "patient_pseudonym", "prediction_id", "regimens", "outputs", "explanations", "detail",
)
_JSON_FIELDS = ("regimens", "outputs", "explanations", "detail")
_TEXT_LIMITS = {"key_id": 32, "role": 16, "endpoint": 200, "model_name": 200, "model_version": 64,
                "prediction_id": 64}
# What a caller may pass to append(): the content fields, except that the patient id comes raw and
# the input digest may be computed here from the request body (which is not stored).
RECORD_KEYS = frozenset(CONTENT_FIELDS) - {"patient_pseudonym"} | {"patient_id", "request_body"}


def record_hash(seq: int, prev_hash: str, content: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``{"v", "seq", "prev_hash", "record"}``.

    ``content`` maps every name in :data:`CONTENT_FIELDS` to its stored value (JSON fields as their
    stored canonical text), so verification never depends on how a database round-trips floats.
    """
    envelope = {
        "v": CHAIN_FORMAT,
        "seq": int(seq),
        "prev_hash": prev_hash,
        "record": {name: content[name] for name in CONTENT_FIELDS},
    }
    return hashlib.sha256(canonical_json(envelope).encode("utf-8")).hexdigest()


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


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditTrail.verify`.

    ``first_bad`` is the sequence number of the first bad record and ``reason`` says why (both None
    when ``ok``); ``n_records`` counts the records read; ``head_hash`` is the hash of the last record
    (keep it elsewhere to detect later truncation or a rewritten chain).
    """

    ok: bool
    n_records: int
    first_bad: int | None = None
    reason: str | None = None
    head_hash: str | None = None


EXPLANATIONS_FORMAT = "feature-lists/1"


def compact_explanations(explanations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The stored form of ``explanations[regimen][outcome]`` = ``{"top", "scale", "base_value",
    "values": {feature: SHAP value}}``: each model's feature names once, each explanation's values
    as a list in that order (``"features"``: the index of its name list) — every SHAP value kept, at
    full precision, in about two thirds of the text. :func:`expand_explanations` reverses it.

    An explanation's ``values`` may also come as ``"names"`` (list) + ``"values"`` (list, same order).
    """
    lists: list[list[str]] = []
    index: dict[tuple[str, ...], int] = {}
    regimens: dict[str, dict[str, Any]] = {}
    for regimen, outcomes in explanations.items():
        regimens[regimen] = {}
        for outcome, explanation in outcomes.items():
            explanation = dict(explanation)
            names = explanation.pop("names", None)
            values = explanation.get("values")
            if names is None and isinstance(values, Mapping):
                names, values = list(values), list(values.values())
            if names is not None:
                key = tuple(names)
                if key not in index:
                    index[key] = len(lists)
                    lists.append(list(names))
                explanation["features"], explanation["values"] = index[key], list(values)
            regimens[regimen][outcome] = explanation
    return {"format": EXPLANATIONS_FORMAT, "features": lists, "regimens": regimens}


def expand_explanations(stored: Any) -> Any:
    """``explanations[regimen][outcome]`` with ``values`` as {feature: SHAP value}, from a record's
    stored explanations: the compact form of :func:`compact_explanations`, or (records written
    before it) already that layout, returned as it is."""
    if not (isinstance(stored, dict) and stored.get("format") == EXPLANATIONS_FORMAT):
        return stored
    lists = stored.get("features") or []
    expanded: dict[str, dict[str, Any]] = {}
    for regimen, outcomes in (stored.get("regimens") or {}).items():
        expanded[regimen] = {}
        for outcome, explanation in outcomes.items():
            explanation = dict(explanation)
            j = explanation.pop("features", None)
            if j is not None:
                explanation["values"] = dict(zip(lists[j], explanation.get("values") or []))
            expanded[regimen][outcome] = explanation
    return expanded


def _row_to_entry(row) -> AuditEntry:
    values = dict(row._mapping)
    for name in _JSON_FIELDS:
        text = values.get(name)  # absent: not selected (AuditTrail.select(explanations=False))
        values[name] = None if text is None else json.loads(text)
    values["explanations"] = expand_explanations(values.get("explanations"))
    values["time"] = parse_time(values["time"])
    return AuditEntry(**values)


def _time_text(value: datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise AuditError(f"expected a datetime or ISO 8601 text, got {type(value).__name__}")
    if value.tzinfo is None:
        raise AuditError(f"time {value.isoformat()} has no time zone; give UTC (e.g. '…Z' or '+00:00')")
    return value.astimezone(timezone.utc).strftime(TIME_FORMAT)


def strings_in(value: Any) -> Iterable[str]:
    """Every string in a JSON value: keys and values, recursively (in no particular order)."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, (int, float)) or value is None:  # most of an explanation: numbers
            continue
        elif isinstance(value, (dict, Mapping)):
            for k, v in value.items():
                yield str(k)
                stack.append(v)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


# ---------------------------------------------------------------------------------------------------


class AuditTrail:
    """The audit trail in a SQL database. ``url``: SQLAlchemy URL or engine (default: ``default_db_url()``).

    ``pseudonym_key`` defaults to ``$RESPONSE_MODEL_PSEUDONYM_KEY`` (read at each append).
    ``create=False`` opens an existing trail only (raises AuditError if there is none).
    """

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        pseudonym_key: bytes | str | None = None,
        create: bool = True,
    ) -> None:
        self._owns_engine = not isinstance(url, Engine)
        self.engine: Engine = url if isinstance(url, Engine) else make_engine(url)
        self._pseudonym_key = pseudonym_key
        self._group = _GroupCommit(self._append_durably)
        if create:
            metadata.create_all(self.engine, tables=[audit_records])
        else:
            try:
                require_table(self.engine, audit_records, "audit trail")
            except KeyStoreError as exc:
                raise AuditError(str(exc)) from None

    def close(self) -> None:
        """Release the database connections (only if this trail created the engine)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> "AuditTrail":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return describe_url(self.engine)

    # -- writing ------------------------------------------------------------------------------------

    def _content(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Check a caller's record and turn it into the stored content (raw patient id replaced)."""
        if not isinstance(record, Mapping):
            raise AuditError(f"an audit record is a dict, not {type(record).__name__}")
        unknown = sorted(set(record) - RECORD_KEYS)
        if unknown:
            raise AuditError(
                f"unknown audit field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(RECORD_KEYS))}"
            )
        content: dict[str, Any] = {name: None for name in CONTENT_FIELDS}

        for name in ("key_id", "role", "endpoint", "model_name", "model_version", "prediction_id"):
            value = record.get(name)
            if value is not None:
                value = str(value)
                if len(value) > _TEXT_LIMITS[name]:
                    raise AuditError(f"audit field {name} is longer than {_TEXT_LIMITS[name]} characters")
            content[name] = value
        if not content["endpoint"]:
            raise AuditError("an audit record needs the endpoint (e.g. 'POST /v1/predictions')")
        if content["role"] is not None and content["role"] not in ROLES:
            raise AuditError(f"unknown role {content['role']!r}; expected one of {', '.join(ROLES)}")

        status, http_status = record.get("status"), record.get("http_status")
        if status not in STATUSES:
            raise AuditError(f"audit field status must be one of {', '.join(STATUSES)}, not {status!r}")
        if isinstance(http_status, bool) or not isinstance(http_status, int) or not 100 <= http_status <= 599:
            raise AuditError(f"audit field http_status must be an HTTP status code, not {http_status!r}")
        if (status == "accepted") != (http_status < 400):
            raise AuditError(f"status {status!r} does not fit HTTP status {http_status}")
        content["status"], content["http_status"] = status, http_status

        if "request_body" in record:
            if record.get("input_digest") is not None:
                raise AuditError("give either request_body or input_digest, not both")
            content["input_digest"] = input_digest(record["request_body"])
        else:
            digest = record.get("input_digest")
            if digest is not None and (not isinstance(digest, str) or len(digest) != 64
                                       or any(c not in "0123456789abcdef" for c in digest)):
                raise AuditError("audit field input_digest must be a SHA-256 hex digest (64 lower-case hex digits)")
            content["input_digest"] = digest

        regimens = record.get("regimens")
        if regimens is not None:
            if isinstance(regimens, str) or not all(isinstance(r, str) for r in regimens):
                raise AuditError("audit field regimens must be a list of regimen ids")
            regimens = list(regimens)
        for name, value in (("regimens", regimens), ("outputs", record.get("outputs")),
                            ("explanations", record.get("explanations")), ("detail", record.get("detail"))):
            content[name] = None if value is None else stored_json(value)

        raw_id = record.get("patient_id")
        if raw_id is not None and str(raw_id).strip():
            raw = str(raw_id).strip()
            # Guard against the raw id leaking through another field (e.g. an output echoing the input).
            for name in ("key_id", "endpoint", "model_name", "model_version", "prediction_id"):
                if content[name] is not None and raw in content[name]:
                    raise RawIdentifierError(f"audit field {name} contains the raw patient id; it must not be stored")
            # JSON escaping maps each character on its own, so a string equal to the raw id (after
            # stripping) can only be in a field whose canonical text contains the escaped id: walk only those
            needle = stored_json(raw)[1:-1]
            for name in _JSON_FIELDS:
                value = record.get(name)
                if (value is not None and needle in content[name]
                        and any(s.strip() == raw for s in strings_in(value))):
                    raise RawIdentifierError(f"audit field {name} contains the raw patient id; it must not be stored")
            # Raises PseudonymKeyError (with instructions) when no key is configured: never store raw.
            content["patient_pseudonym"] = pseudonymise(raw, key=self._pseudonym_key)

        content["time"] = _time_text(record["time"]) if record.get("time") is not None else None
        return content

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise what :meth:`append` would raise for ``record`` (AuditError, RawIdentifierError,
        PseudonymKeyError); write nothing."""
        self._content(record)

    def _lock(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"LOCK TABLE {audit_records.name} IN EXCLUSIVE MODE")
        # SQLite: the transaction began with BEGIN IMMEDIATE, which holds the write lock already.
        # Elsewhere: the primary key on seq turns a race into an IntegrityError, and we retry.

    def append(self, record: Mapping[str, Any]) -> AuditEntry:
        """Append one record; returns it as stored once it is committed (durable).

        ``record`` keys: ``endpoint`` and ``status`` (``accepted``/``rejected``) and ``http_status``
        are required; optional ``time`` (aware datetime or ISO text; default now, taken under the
        lock so that times follow the sequence), ``key_id``, ``role``, ``model_name``,
        ``model_version``, ``input_digest`` or ``request_body`` (digested, not stored),
        ``patient_id`` (raw; stored only as its pseudonym), ``prediction_id``, ``regimens`` (list of
        ids), ``outputs``, ``explanations``, ``detail`` (JSON values; ``detail`` for a rejection's
        reasons, e.g. field-level validation messages — never identifiers: a string equal to the raw
        patient id anywhere in these fields is refused). Other keys are refused.
        Raises AuditError for a bad record and PseudonymKeyError if a patient id is given but no
        pseudonymisation key is configured.
        """
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Mapping[str, Any]], *, entries: bool = True) -> list[AuditEntry] | None:
        """Append several records in one transaction (one durable commit), e.g. a batch request's rows.

        Returns them as stored (``entries=False``: None, saving the parsing of their JSON fields).

        Group commit: records that threads of this process append at the same time are written by
        one of them in a single transaction, in arrival order (each call's records stay together),
        and every call returns only once the transaction holding its records has committed —
        one disk flush for many requests instead of one each, and no waiting on the database lock.
        """
        contents = [self._content(record) for record in records]  # checked in the caller's thread
        if not contents:
            return [] if entries else None
        rows = self._group.submit(contents)
        return [_row_to_entry(_Row(values)) for values in rows] if entries else None

    def _append_durably(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for attempt in range(_APPEND_RETRIES):
            try:
                return self._append_contents(contents)
            except sa.exc.IntegrityError:
                if attempt == _APPEND_RETRIES - 1:
                    raise
                log.debug("audit append raced another writer; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    def _append_contents(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                self._lock(conn)
                last = conn.execute(
                    sa.select(audit_records.c.seq, audit_records.c.hash)
                    .order_by(audit_records.c.seq.desc()).limit(1)
                ).first()
                seq, prev_hash = (0, GENESIS_HASH) if last is None else (int(last.seq), last.hash)
                now = utc_now_text()
                for content in contents:
                    seq += 1
                    values = dict(content)
                    if values["time"] is None:
                        values["time"] = now
                    values["seq"], values["prev_hash"] = seq, prev_hash
                    values["hash"] = prev_hash = record_hash(seq, values["prev_hash"], values)
                    rows.append(values)
                conn.execute(audit_records.insert(), rows)
            # leaving conn.begin() commits: with synchronous=FULL the records are on disk now
        return rows

    # -- reading ------------------------------------------------------------------------------------

    def verify(self, *, batch_size: int = 1_000) -> VerifyResult:
        """Recompute the chain from the first record; stop at the first bad one and say why."""
        expected_seq, prev_hash, n = 1, GENESIS_HASH, 0
        columns = [audit_records.c.seq, audit_records.c.prev_hash, audit_records.c.hash] + [
            audit_records.c[name] for name in CONTENT_FIELDS
        ]
        with self.engine.connect() as conn:
            # One read transaction: a single snapshot on SQLite (WAL); on PostgreSQL (read committed)
            # records appended meanwhile may be included, which cannot break a chain read in seq order.
            with conn.begin():
                last_seq = 0
                while True:
                    chunk = conn.execute(
                        sa.select(*columns).where(audit_records.c.seq > last_seq)
                        .order_by(audit_records.c.seq).limit(batch_size)
                    ).all()
                    if not chunk:
                        break
                    for row in chunk:
                        n += 1
                        seq = int(row.seq)
                        last_seq = seq
                        if seq != expected_seq:
                            what = "deleted" if seq > expected_seq else "duplicated or moved"
                            missing = (f"record {expected_seq}" if seq == expected_seq + 1
                                       else f"records {expected_seq}–{seq - 1}")
                            reason = (f"sequence gap: expected record {expected_seq}, found {seq} "
                                      f"({missing} {what})" if seq > expected_seq
                                      else f"sequence out of order: expected {expected_seq}, found {seq}")
                            return VerifyResult(False, n, seq, reason)
                        if row.prev_hash != prev_hash:
                            where = (f"the hash of record {seq - 1}" if seq > 1 else "the genesis value")
                            return VerifyResult(
                                False, n, seq,
                                f"prev_hash does not match {where} (a record before it was deleted, "
                                "edited or moved)",
                            )
                        content = {name: getattr(row, name) for name in CONTENT_FIELDS}
                        if content["http_status"] is not None:
                            content["http_status"] = int(content["http_status"])
                        if record_hash(seq, row.prev_hash, content) != row.hash:
                            return VerifyResult(
                                False, n, seq,
                                "hash mismatch: the record's content, sequence number or hash was changed",
                            )
                        prev_hash = row.hash
                        expected_seq += 1
        return VerifyResult(True, n, None, None, None if n == 0 else prev_hash)

    def get(self, prediction_id: str) -> AuditEntry | None:
        """The record of a prediction (the earliest, if the id was used twice), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_records).where(audit_records.c.prediction_id == prediction_id)
                .order_by(audit_records.c.seq).limit(1)
            ).first()
        return None if row is None else _row_to_entry(row)

    def query(
        self,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        model_version: str | None = None,
        regimen: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        status: str | None = None,
        after_seq: int | None = None,
        through_seq: int | None = None,
        kind: str | None = None,
    ) -> list[AuditEntry]:
        """Records with ``from_ <= time < to`` (aware datetimes or ISO text), oldest first.

        Optionally only one model version, records covering one regimen id, or one status;
        ``limit`` (at most 1,000) and ``offset`` page through the result. Keywords for cursor
        paging: only records with ``seq > after_seq`` and ``seq <= through_seq``; ``kind``
        ``"prediction"`` (prediction requests: endpoint ``POST …``) or ``"access"`` (everything
        else, e.g. auditors reading the trail); None = both.
        """
        if not 0 < int(limit) <= MAX_QUERY_LIMIT:
            raise AuditError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if int(offset) < 0:
            raise AuditError("offset must not be negative")
        flt = TrailFilter(
            from_=None if from_ is None else _time_text(from_), to=None if to is None else _time_text(to),
            model_version=None if model_version is None else str(model_version),
            regimen=None if regimen is None else str(regimen), status=status,
        )
        return self.select(flt, after_seq=after_seq, through_seq=through_seq, kind=kind, limit=limit, offset=offset)

    def select(self, flt: "TrailFilter", *, after_seq: int | None = None, through_seq: int | None = None,
               kind: str | None = None, limit: int = 100, offset: int = 0,
               explanations: bool = True) -> list[AuditEntry]:
        """The records ``flt`` selects with ``after_seq < seq <= through_seq`` and of ``kind``
        (see :meth:`query`), oldest first, at most ``limit`` (≤ 1,000) after skipping ``offset``.
        ``explanations=False`` leaves out the largest field (every SHAP value; ``None`` in the entries)."""
        if not 0 < int(limit) <= MAX_QUERY_LIMIT:
            raise AuditError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        columns = [c for c in audit_records.columns if explanations or c.name != "explanations"]
        query = _filtered(sa.select(*columns), flt, after_seq, through_seq, kind)
        query = query.order_by(audit_records.c.seq).limit(int(limit)).offset(int(offset))
        with self.engine.connect() as conn:
            return [_row_to_entry(row) for row in conn.execute(query)]

    def count_matching(self, flt: "TrailFilter", *, through_seq: int | None = None,
                       kind: str | None = "prediction") -> int:
        """The number of records that ``flt`` (and ``kind``, ``seq <= through_seq``) selects."""
        query = _filtered(sa.select(sa.func.count()).select_from(audit_records), flt, None, through_seq, kind)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def head_seq(self) -> int:
        """The sequence number of the newest record (0 for an empty trail)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(audit_records.c.seq), 0))).scalar_one())

    def check_record(self, seq: int) -> RecordCheck:
        """Cheap integrity check of one record: its own hash and its links to both neighbours.

        Reads records ``seq − 1``, ``seq`` and ``seq + 1`` only. It cannot see an edit elsewhere in
        the chain; :meth:`verify` (``response-model audit verify``) recomputes the whole chain.
        """
        columns = [audit_records.c.seq, audit_records.c.prev_hash, audit_records.c.hash] + [
            audit_records.c[name] for name in CONTENT_FIELDS
        ]
        with self.engine.connect() as conn:
            rows = {int(r.seq): r for r in conn.execute(
                sa.select(*columns).where(audit_records.c.seq.between(int(seq) - 1, int(seq) + 1)))}
        row = rows.get(int(seq))
        if row is None:
            raise AuditError(f"no audit record {seq}")
        content = {name: getattr(row, name) for name in CONTENT_FIELDS}
        content["http_status"] = int(content["http_status"])
        intact = record_hash(int(seq), row.prev_hash, content) == row.hash
        before = rows.get(int(seq) - 1)
        expected_prev = GENESIS_HASH if int(seq) == 1 else (before.hash if before is not None else None)
        after = rows.get(int(seq) + 1)
        return RecordCheck(seq=int(seq), hash_intact=intact, linked_to_previous=row.prev_hash == expected_prev,
                           linked_to_next=None if after is None else after.prev_hash == row.hash)

    def count(self) -> int:
        """The number of records."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_records)).scalar_one())


class _Ticket:
    """One caller's records waiting for a group commit."""

    __slots__ = ("contents", "done", "lead", "entries", "error")

    def __init__(self, contents: list[dict[str, Any]]) -> None:
        self.contents = contents
        self.done = threading.Event()
        self.lead = False
        self.entries: list[dict[str, Any]] | None = None
        self.error: BaseException | None = None


class _GroupCommit:
    """Leader/follower group commit: the first caller writes every waiting caller's records in one
    transaction; callers arriving meanwhile wait, and the first of them writes the next group."""

    def __init__(self, write) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._writing = False

    def submit(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``contents`` (with a group); returns the stored rows once they are committed."""
        ticket = _Ticket(contents)
        with self._lock:
            self._waiting.append(ticket)
            if not self._writing:
                self._writing = ticket.lead = True
        if not ticket.lead:
            ticket.done.wait()
        if ticket.lead:  # the first caller, or promoted by the previous writer
            self._write_group()
        if ticket.error is not None:
            raise ticket.error
        return ticket.entries

    def _write_group(self) -> None:
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            entries = self._write([content for ticket in group for content in ticket.contents])
        except BaseException as error:  # every caller of the group learns that its records are not stored
            for ticket in group:
                ticket.error = error
        else:
            start = 0
            for ticket in group:
                ticket.entries = entries[start:start + len(ticket.contents)]
                start += len(ticket.contents)
        finally:
            with self._lock:
                if self._waiting:  # hand over: the first waiting caller writes the next group
                    self._waiting[0].lead = True
                    self._waiting[0].done.set()
                else:
                    self._writing = False
            for ticket in group:
                ticket.lead = False
                ticket.done.set()


class _Row:
    """Adapter so that freshly inserted values go through the same conversion as fetched rows."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = {c.name: values[c.name] for c in audit_records.columns}


# ---------------------------------------------------------------------------------------------------
# Reading the trail for auditors: one filter, one flat export (the API and ``audit export`` share both)

PREDICTION_KIND, ACCESS_KIND = "prediction", "access"
KINDS = (PREDICTION_KIND, ACCESS_KIND)
EXPORT_FORMATS = ("csv", "parquet")
SHAP_PREFIX = "shap."
EXPORT_CHUNK = 500  # records per chunk (one Parquet row group, one CSV block)

#: The fixed columns of the export, in order; then one ``shap.<feature>`` column per model feature.
#: One row per prediction × regimen × outcome (a rejected request: one row, regimen and outcome empty).
EXPORT_COLUMNS: tuple[str, ...] = (
    "seq", "time", "prediction_id", "status", "http_status", "endpoint", "key_id", "role",
    "model_name", "model_version", "input_digest", "patient_pseudonym", "genomics",
    "out_of_distribution_flagged", "regimen", "outcome", "rank", "eligible", "ineligible_reason",
    "probability", "interval_lower", "interval_upper", "band", "explanation_scale", "base_value",
    "detail", "record_hash",
)
EXPORT_COLUMN_DOC: dict[str, str] = {
    "seq": "sequence number of the audit record (its place in the hash chain)",
    "time": "time of the request, UTC (Parquet: timestamp; CSV: ISO 8601 text ending in Z)",
    "prediction_id": "id returned to the caller; GET /v1/predictions/{id} gives the whole record",
    "status": "accepted or rejected", "http_status": "HTTP status of the answer",
    "endpoint": "the endpoint called (POST /v1/predictions or POST /v1/predictions:batch)",
    "key_id": "API key that asked (public key id, never the token)", "role": "that key's role",
    "model_name": "registered model name", "model_version": "registered model version (text: with pandas.read_csv pass dtype={'model_version': str}; "
                     "Parquet keeps every column's type)",
    "input_digest": "SHA-256 of the request body's canonical JSON (the body itself is not stored)",
    "patient_pseudonym": "keyed hash of the patient id given (never the raw id)",
    "genomics": "'genotyped' or 'clinical-only estimate'",
    "out_of_distribution_flagged": "the patient lay outside the training distribution",
    "regimen": "regimen id", "outcome": "objective_response or primary_resistance",
    "rank": "1 = highest probability of response among eligible regimens; empty if ineligible",
    "eligible": "the catalogue's eligibility rules allow the regimen", "ineligible_reason": "why not",
    "probability": "estimated probability of the outcome",
    "interval_lower": "lower end of the uncertainty interval", "interval_upper": "upper end",
    "band": "low / moderate / high",
    "explanation_scale": "scale of base_value and the shap.* columns",
    "base_value": "explanation base value: base_value + the sum of the shap.* columns = the model's output "
                  "on explanation_scale",
    "detail": "JSON text: why a request was rejected (field-level errors); empty when accepted",
    "record_hash": "the record's hash in the chain (response-model audit verify checks it)",
    "shap.<feature>": "SHAP value of that feature; empty when the feature is not an input of the model "
                      "that scored this regimen and outcome (0.0 is a real value)",
}


class FilterError(AuditError):
    """Bad filter values: ``errors`` is a list of {field, value, message}, one per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class TrailFilter:
    """Which records to read: ``from_ <= time < to`` (UTC text in TIME_FORMAT), a model version,
    records covering a regimen id, a status. None = no condition."""

    from_: str | None = None
    to: str | None = None
    model_version: str | None = None
    regimen: str | None = None
    status: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The conditions set, as query-parameter names (``from``, ``to``, …) → values."""
        names = {"from_": "from", "to": "to", "model_version": "model_version", "regimen": "regimen",
                 "status": "status"}
        return {names[k]: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class RecordCheck:
    """:meth:`AuditTrail.check_record`: the record's hash recomputes (``hash_intact``), its
    ``prev_hash`` is the previous record's hash, and the next record (None: there is none yet)
    points back to it."""

    seq: int
    hash_intact: bool
    linked_to_previous: bool
    linked_to_next: bool | None

    @property
    def ok(self) -> bool:
        return self.hash_intact and self.linked_to_previous and self.linked_to_next is not False


def parse_time_filter(value: str | None, field: str) -> str | None:
    """ISO 8601 text → UTC text in TIME_FORMAT (None for empty). A date alone means 00:00 UTC.

    Raises FilterError naming the field and value when the text is no ISO 8601 time or has no zone.
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    example = "e.g. 2026-11-27T09:00:00Z or 2026-11-27T10:00:00+01:00 or 2026-11-27 (00:00 UTC)"
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time(), timezone.utc)
        else:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise FilterError([{"field": field, "value": text,
                            "message": f"{field}: {text!r} is not an ISO 8601 date or time; {example}"}]) from None
    if parsed.tzinfo is None:
        raise FilterError([{"field": field, "value": text,
                            "message": f"{field}: {text!r} has no time zone; add 'Z' for UTC or an offset "
                                       f"like '+01:00' ({example})"}])
    return parsed.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_filter(from_: str | None = None, to: str | None = None, model_version: str | None = None,
                 regimen: str | None = None, status: str | None = None) -> TrailFilter:
    """Validate filter values given as text (query parameters, command-line options).

    Returns a :class:`TrailFilter`; raises :class:`FilterError` listing every bad value: times must
    be ISO 8601 with a zone (``from`` inclusive, ``to`` exclusive, ``from`` before ``to``),
    ``regimen`` an id of the catalogue (``configs/regimens.yaml``), ``status`` accepted or rejected.
    """
    errors: list[dict[str, Any]] = []
    times = {}
    for field, value in (("from", from_), ("to", to)):
        try:
            times[field] = parse_time_filter(value, field)
        except FilterError as exc:
            errors += exc.errors
    if times.get("from") and times.get("to") and times["from"] >= times["to"]:
        errors.append({"field": "to", "value": to,
                       "message": f"to: {to!r} is not after from {from_!r}; the window is from ≤ time < to"})
    model_version = str(model_version).strip() if model_version is not None and str(model_version).strip() else None
    if model_version is not None and len(model_version) > _TEXT_LIMITS["model_version"]:
        errors.append({"field": "model_version", "value": model_version[:80],
                       "message": f"model_version: longer than {_TEXT_LIMITS['model_version']} characters"})
    regimen = str(regimen).strip() if regimen is not None and str(regimen).strip() else None
    if regimen is not None:
        from response_model.regimens import load_catalogue

        known = list(load_catalogue())
        if regimen not in known:
            errors.append({"field": "regimen", "value": regimen,
                           "message": f"regimen: {regimen!r} is not a regimen id of the catalogue; expected one "
                                      f"of {', '.join(known)}"})
    status = str(status).strip() if status is not None and str(status).strip() else None
    if status is not None and status not in STATUSES:
        errors.append({"field": "status", "value": status,
                       "message": f"status: {status!r}; expected one of {', '.join(STATUSES)}"})
    if errors:
        raise FilterError(errors)
    return TrailFilter(times.get("from"), times.get("to"), model_version, regimen, status)


def _filtered(query, flt: TrailFilter, after_seq: int | None = None, through_seq: int | None = None,
              kind: str | None = None):
    """``query`` with the WHERE clauses of ``flt``, the seq window and the record kind."""
    c = audit_records.c
    if flt.from_ is not None:
        query = query.where(c.time >= flt.from_)
    if flt.to is not None:
        query = query.where(c.time < flt.to)
    if flt.model_version is not None:
        query = query.where(c.model_version == flt.model_version)
    if flt.regimen is not None:
        # regimens is canonical JSON text: match the quoted id exactly, wildcards escaped
        query = query.where(c.regimens.contains(canonical_json(flt.regimen), autoescape=True))
    if flt.status is not None:
        query = query.where(c.status == flt.status)
    if after_seq is not None:
        query = query.where(c.seq > int(after_seq))
    if through_seq is not None:
        query = query.where(c.seq <= int(through_seq))
    if kind == PREDICTION_KIND:
        query = query.where(c.endpoint.startswith("POST ", autoescape=True))
    elif kind == ACCESS_KIND:
        query = query.where(sa.not_(c.endpoint.startswith("POST ", autoescape=True)))
    elif kind is not None:
        raise AuditError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    return query


def iter_records(trail: AuditTrail, flt: TrailFilter, *, through_seq: int | None = None,
                 kind: str | None = PREDICTION_KIND, chunk: int = EXPORT_CHUNK) -> Iterable[list[AuditEntry]]:
    """The records ``flt`` selects, oldest first, in lists of up to ``chunk`` (cursor on seq)."""
    after = 0
    while True:
        entries = trail.select(flt, after_seq=after, through_seq=through_seq, kind=kind, limit=chunk)
        if not entries:
            return
        yield entries
        after = entries[-1].seq


def shap_features(trail: AuditTrail, flt: TrailFilter, *, through_seq: int | None = None) -> list[str]:
    """Every feature with a SHAP value in the records ``flt`` selects, in model order.

    The feature set is fixed per model and regimen class, so only the first record of each model
    name × version × regimen is parsed; :func:`export_frames` checks every other record against it.
    """
    c = audit_records.c
    query = _filtered(sa.select(c.seq, c.model_name, c.model_version, c.regimens), flt, None, through_seq,
                      PREDICTION_KIND).where(c.explanations.is_not(None)).order_by(c.seq)
    firsts: list[int] = []
    seen: set[tuple] = set()
    with trail.engine.connect() as conn:
        for row in conn.execute(query):
            new = False
            for regimen in json.loads(row.regimens or "[]"):
                key = (row.model_name, row.model_version, regimen)
                if key not in seen:
                    seen.add(key)
                    new = True
            if new:
                firsts.append(int(row.seq))
        features: dict[str, None] = {}
        for start in range(0, len(firsts), 500):
            rows = conn.execute(sa.select(c.explanations).where(c.seq.in_(firsts[start:start + 500]))
                                .order_by(c.seq))
            for row in rows:
                for outcomes in expand_explanations(json.loads(row.explanations)).values():
                    for explanation in outcomes.values():
                        features.update(dict.fromkeys((explanation or {}).get("values") or {}))
    return list(features)


def _export_rows(entry: AuditEntry, shap_index: Mapping[str, int],
                 layouts: dict[tuple[str, ...], Any]) -> list[tuple[dict[str, Any], Any, Any]]:
    """The export rows of one record: (fixed columns, SHAP column positions, SHAP values) per row.

    ``shap_index`` maps each feature to its position among the SHAP columns; ``layouts`` caches the
    positions of each distinct feature order (one per model), so a row costs one array, not a dict
    operation per feature.
    """
    import numpy as np

    base = {"seq": entry.seq, "time": entry.time.strftime(TIME_FORMAT), "prediction_id": entry.prediction_id,
            "status": entry.status, "http_status": entry.http_status, "endpoint": entry.endpoint,
            "key_id": entry.key_id, "role": entry.role, "model_name": entry.model_name,
            "model_version": entry.model_version, "input_digest": entry.input_digest,
            "patient_pseudonym": entry.patient_pseudonym,
            "detail": None if entry.detail is None else canonical_json(entry.detail), "record_hash": entry.hash}
    outputs = entry.outputs if isinstance(entry.outputs, Mapping) else {}
    regimens = outputs.get("regimens") if isinstance(outputs.get("regimens"), Mapping) else {}
    if not regimens:
        return [(base, None, None)]
    base["genomics"] = outputs.get("genomics")
    base["out_of_distribution_flagged"] = outputs.get("out_of_distribution_flagged")
    explanations = entry.explanations if isinstance(entry.explanations, Mapping) else {}
    rows = []
    for regimen, out in regimens.items():
        for outcome in ("objective_response", "primary_resistance"):
            estimate = out.get(outcome)
            if estimate is None:
                continue
            interval = estimate.get("interval") or {}
            row = {**base, "regimen": regimen, "outcome": outcome, "rank": out.get("rank"),
                   "eligible": out.get("eligible"), "ineligible_reason": out.get("ineligible_reason"),
                   "probability": estimate.get("probability"), "interval_lower": interval.get("lower"),
                   "interval_upper": interval.get("upper"), "band": estimate.get("band")}
            explanation = (explanations.get(regimen) or {}).get(outcome) or {}
            values = explanation.get("values") or {}
            if values or explanation.get("base_value") is not None:
                row["explanation_scale"] = explanation.get("scale")
                row["base_value"] = explanation.get("base_value")
            positions = None
            if values:
                order = tuple(values)
                positions = layouts.get(order)
                if positions is None:
                    missing = [f for f in order if f not in shap_index]
                    if missing:
                        raise AuditError(
                            f"audit record {entry.seq} has a SHAP value for {missing[0]!r}, which the first record "
                            f"of model {entry.model_name} version {entry.model_version} lacks; export with a "
                            "narrower filter (one model version)")
                    positions = layouts[order] = np.array([shap_index[f] for f in order], dtype=np.intp)
            rows.append((row, positions, None if positions is None else
                         np.array(list(values.values()), dtype=np.float64)))  # None → NaN
    return rows


@dataclass
class Export:
    """A flat export in progress: ``columns`` (fixed before the first row), ``n_records`` selected,
    ``through_seq`` (records appended later are not included) and the frames, one per chunk."""

    trail: AuditTrail
    filter: TrailFilter
    columns: list[str]
    features: list[str]
    n_records: int
    through_seq: int

    def frames(self):
        """DataFrames of the export's rows, one per chunk of records (columns :attr:`columns`)."""
        import numpy as np
        import pandas as pd

        shap_index = {f: k for k, f in enumerate(self.features)}
        shap_names = [SHAP_PREFIX + f for f in self.features]
        layouts: dict[tuple[str, ...], Any] = {}
        for entries in iter_records(self.trail, self.filter, through_seq=self.through_seq):
            rows = [row for entry in entries for row in _export_rows(entry, shap_index, layouts)]
            fixed = pd.DataFrame.from_records([r for r, _, _ in rows], columns=list(EXPORT_COLUMNS))
            shap_values = np.full((len(rows), len(shap_names)), np.nan)
            for k, (_, positions, values) in enumerate(rows):
                if positions is not None:
                    shap_values[k, positions] = values
            frame = pd.concat([fixed, pd.DataFrame(shap_values, columns=shap_names)], axis=1)
            yield _typed(frame)

    def frame(self):
        """The whole export as one DataFrame (small exports: notebooks, tests)."""
        import pandas as pd

        frames = list(self.frames())
        return pd.concat(frames, ignore_index=True) if frames else _typed(pd.DataFrame(columns=self.columns))

    def chunks(self, fmt: str) -> Iterable[bytes]:
        """The export as bytes in ``fmt`` (csv or parquet), chunk by chunk, for streaming or a file."""
        if fmt == "csv":
            return self._csv()
        if fmt == "parquet":
            return self._parquet()
        raise AuditError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")

    def _schema(self, time_as_text: bool):
        """The Arrow schema of the export (with pandas' metadata, so that ``read_parquet`` gives back
        the nullable Int64 and boolean columns); ``time`` as text for CSV, a UTC timestamp for Parquet."""
        import pandas as pd
        import pyarrow as pa

        types = _arrow_types()
        if time_as_text:
            types["time"] = pa.string()
        schema = pa.schema([(name, types.get(name, pa.float64() if name.startswith(SHAP_PREFIX) else pa.string()))
                            for name in self.columns])
        empty = _typed(pd.DataFrame(columns=self.columns))
        if not time_as_text:
            empty = empty.assign(time=_utc_timestamps(empty["time"]))
        return pa.Table.from_pandas(empty, schema=schema, preserve_index=False).schema

    def _csv(self):
        # pyarrow's writer (several times faster than DataFrame.to_csv on the wide float columns):
        # shortest round-trip float text, empty for missing, true/false, quotes only where needed
        import pyarrow as pa
        import pyarrow.csv as pacsv

        schema = self._schema(time_as_text=True)
        header = True
        for frame in self.frames():
            sink = io.BytesIO()
            pacsv.write_csv(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), sink,
                            pacsv.WriteOptions(include_header=header))
            header = False
            yield sink.getvalue()
        if header:
            sink = io.BytesIO()
            pacsv.write_csv(schema.empty_table(), sink, pacsv.WriteOptions(include_header=True))
            yield sink.getvalue()

    def _parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self._schema(time_as_text=False)
        sink = _ByteSink()
        with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            wrote = False
            for frame in self.frames():
                frame = frame.assign(time=_utc_timestamps(frame["time"]))
                writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
                wrote = True
                yield sink.drain()
            if not wrote:
                writer.write_table(schema.empty_table())
        yield sink.drain()


_FLOAT_COLUMNS = {"probability", "interval_lower", "interval_upper", "base_value"}
_INT_COLUMNS = {"seq", "http_status", "rank"}
_BOOL_COLUMNS = {"out_of_distribution_flagged", "eligible"}


def _arrow_types():
    import pyarrow as pa

    types = {name: pa.int64() for name in _INT_COLUMNS}
    types.update({name: pa.bool_() for name in _BOOL_COLUMNS})
    types.update({name: pa.float64() for name in _FLOAT_COLUMNS})
    types["time"] = pa.timestamp("us", tz="UTC")
    return types


def _utc_timestamps(values):
    import pandas as pd

    return pd.to_datetime(values, format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)


def _typed(frame):
    """Fixed dtypes, so that every chunk has the same columns and types."""
    for name in frame.columns:
        if name in ("seq", "http_status"):
            frame[name] = frame[name].astype("int64")
        elif name == "rank":
            frame[name] = frame[name].astype("Int64")
        elif name in _BOOL_COLUMNS:
            frame[name] = frame[name].astype("boolean")
        elif name in _FLOAT_COLUMNS or name.startswith(SHAP_PREFIX):
            frame[name] = frame[name].astype("float64")
        else:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


class _ByteSink:
    """A write-only file for pyarrow that hands its bytes out as they are written (for streaming)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def drain(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def start_export(trail: AuditTrail, flt: TrailFilter) -> Export:
    """Prepare the flat export of the prediction records ``flt`` selects (see :data:`EXPORT_COLUMNS`).

    The records are those up to the trail's current head (a consistent cut: later appends, such as
    the access record of this very export, are not included). Returns an :class:`Export` whose
    ``chunks("csv" | "parquet")`` yields the file's bytes. The API's ``GET /v1/predictions:export``
    and ``response-model audit export`` both call this, so their files have the same rows and columns.
    """
    through = trail.head_seq()
    features = shap_features(trail, flt, through_seq=through)
    n = trail.count_matching(flt, through_seq=through)
    return Export(trail, flt, list(EXPORT_COLUMNS) + [SHAP_PREFIX + f for f in features], features, n, through)
