"""The audit trail's records and their hash chain: what a record holds, its stored text and its hash.

Each record holds the time (UTC), the API key id and role, the endpoint, the outcome (``accepted`` or
``rejected``) with the HTTP status, the model name and version, the SHA-256 digest of the request
body's canonical JSON, the *pseudonymised* patient id, the prediction id, the regimens covered, the
outputs and explanations (JSON), an optional detail (JSON, e.g. validation errors) and, for an accepted
prediction, the ``inputs`` scored (the validated patient record without its identifier; for drift
monitoring; hashed when present, so records written before it keep their hashes). Callers pass
the raw patient id as ``patient_id``; :func:`stored_content` (which ``AuditTrail.append`` calls)
replaces it by ``response_model.privacy.pseudonymise(patient_id)`` (a keyed hash) before anything is
written, and refuses to append — rather than store the raw id — when no pseudonymisation key is
configured. Nothing else in a record may identify a patient: no names, record numbers or dates of birth.

Keyed chain: record ``n`` (``seq`` = 1, 2, 3, … without gaps) stores ``prev_hash`` = the ``hash`` of
record ``n − 1`` (:data:`GENESIS_HASH` for the first) and ``hash`` = its MAC, HMAC-SHA-256 with the
audit key (``response_model.privacy.audit_keyring``, kept outside the database) of the canonical JSON
of ``{"v": 2, "seq": n, "prev_hash": …, "key_id": …, "record": {every stored field}}``. Records
written before the chain was keyed (format 1) have ``hash`` = SHA-256 of the same without ``key_id``;
they still verify, and only before the first keyed record. Without the key nobody can compute a MAC,
so an edited record cannot be re-hashed and a record cannot be forged; signed checkpoints of the head
(:mod:`.checkpoints`) reveal records cut off the end. ``AuditTrail.verify`` (:mod:`.verify`) tells
the cases apart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from response_model.privacy import AuditKeyring, ChainKey, pseudonymise
from response_model.service.audit.bounded import bounded_detail
from response_model.service.audit.packing import PACKED_FIELDS, pack_fields
from response_model.service.keys import ROLES, TIME_FORMAT

try:  # optional: a faster writer of the records' JSON fields (see stored_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - the json module writes them
    _orjson = None
_ORJSON_OPTIONS = 0 if _orjson is None else (  # sorted keys; anything not plain JSON goes to _not_plain
    _orjson.OPT_SORT_KEYS | _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
    | _orjson.OPT_PASSTHROUGH_SUBCLASS)

GENESIS_HASH = "0" * 64
CHAIN_FORMAT = 2  # keyed: HMAC-SHA-256 (format 1: unkeyed SHA-256, the records written before)
LEGACY_FORMAT = 1
LEGACY_KEY = "v1"  # what record_key answers for an unkeyed record of format 1
STATUSES = ("accepted", "rejected")

# The stored fields that the hash covers, in the table's order (besides seq and prev_hash).
CONTENT_FIELDS: tuple[str, ...] = (
    "time", "key_id", "role", "endpoint", "status", "http_status", "model_name", "model_version",
    "input_digest", "patient_pseudonym", "prediction_id", "regimens", "outputs", "explanations", "detail",
)
# Stored fields added later: hashed only when present, so records written before keep their hashes.
# ``inputs``: the validated patient record that was scored, without its identifier (issue 16: drift).
OPTIONAL_FIELDS: tuple[str, ...] = ("inputs",)
_JSON_FIELDS = ("regimens", "outputs", "explanations", "detail", "inputs")
# The short text fields and their column lengths (store.audit_records), in the table's order.
_TEXT_LIMITS = {"key_id": 32, "role": 16, "endpoint": 200, "model_name": 200, "model_version": 64,
                "prediction_id": 64}
# What a caller may pass to append(): the content fields, except that the patient id comes raw and
# the input digest may be computed here from the request body (which is not stored).
RECORD_KEYS = frozenset(CONTENT_FIELDS + OPTIONAL_FIELDS) - {"patient_pseudonym"} | {"patient_id", "request_body"}
# The key of stored_content's answer that holds the record's side blob, (sha256, bytes) or None: a row
# of the audit_blobs table (records.audit_blobs), written with the record (see .packing).
SIDE_BLOB = "side_blob"


class AuditError(RuntimeError):
    """An audit record could not be appended (bad record) or the trail could not be opened."""


class RawIdentifierError(AuditError):
    """The raw patient id also appears elsewhere in the record (e.g. echoed in an output), so storing
    the record would store the identifier: the record is refused."""


# ---------------------------------------------------------------------------------------------------
# Canonical JSON and digests


def _json_default(value: Any) -> Any:
    """The plain JSON form of a value the json module cannot write (numpy, dates, pydantic models)."""
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
    """JSON with sorted keys, no spaces, UTF-8 text; NaN and infinity are refused (use null).

    Returns the text; raises AuditError for NaN or infinity, TypeError for a value with no JSON form.
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
            default=_json_default,
        )
    except ValueError as exc:
        raise AuditError(f"cannot write {exc}: NaN and infinity have no JSON form; use null") from exc


def _not_plain(value: Any) -> Any:
    """orjson's ``default``: refuse anything that is not plain JSON, so the json module writes it."""
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def stored_json(value: Any) -> str:
    """The stored text of a record's JSON field: sorted keys, no spaces, UTF-8; NaN and infinity refused.

    orjson writes it when installed and ``value`` is plain JSON — dicts with text keys, lists, text,
    ints, booleans, None and finite floats — because it is faster than the json module on an
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
    # surrogatepass: a body holding lone surrogates (json.loads lets them through) still has a digest;
    # every other text encodes exactly as before, so digests already stored stay valid
    return hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# The hash chain


def record_hash(seq: int, prev_hash: str, content: Mapping[str, Any], key: ChainKey | None = None) -> str:
    """The record's MAC (hex): HMAC-SHA-256 with ``key`` of the canonical JSON of ``{"v": 2, "seq",
    "prev_hash", "key_id", "record"}`` (chain format 2); without a key, SHA-256 of ``{"v": 1, "seq",
    "prev_hash", "record"}`` (format 1, the unkeyed records written before the chain was keyed).

    ``content`` maps every name in :data:`CONTENT_FIELDS` to its stored value (JSON fields as their
    stored canonical text), so verification never depends on how a database round-trips floats; a
    name of :data:`OPTIONAL_FIELDS` is covered when its value is not None (absent or None: the hash
    is the one computed before the field existed).
    """
    record = {name: content[name] for name in CONTENT_FIELDS}
    record.update({name: content[name] for name in OPTIONAL_FIELDS if content.get(name) is not None})
    envelope = {
        "v": LEGACY_FORMAT if key is None else CHAIN_FORMAT,
        "seq": int(seq),
        "prev_hash": prev_hash,
        "record": record,
    }
    if key is None:
        return hashlib.sha256(canonical_json(envelope).encode("utf-8")).hexdigest()
    envelope["key_id"] = key.key_id
    return hmac.new(key.secret, canonical_json(envelope).encode("utf-8"), hashlib.sha256).hexdigest()


def _row_content(row: Any) -> dict[str, Any]:
    """A stored row's hashed fields (``http_status`` as an int, whatever the driver returned)."""
    content = {name: getattr(row, name) for name in CONTENT_FIELDS}
    content.update({name: getattr(row, name, None) for name in OPTIONAL_FIELDS})
    if content["http_status"] is not None:
        content["http_status"] = int(content["http_status"])
    return content


def record_key(row: Any, keyring: AuditKeyring | None, hint: str | None = None, *,
               seq: int | None = None, prev_hash: str | None = None) -> str | None:
    """Which key made the stored row's MAC: a key id of ``keyring``, :data:`LEGACY_KEY` when its hash is
    the unkeyed SHA-256 of format 1, None when nothing recomputes it (edited or forged).

    ``hint`` (the answer for the previous record) is tried first, so a chain costs one MAC a record.
    ``seq``/``prev_hash`` override the row's own (to ask whether the row was written at another place).
    """
    seq = int(row.seq) if seq is None else seq
    prev_hash = row.prev_hash if prev_hash is None else prev_hash
    content = _row_content(row)
    keys: list[ChainKey | None] = list(keyring.keys.values()) if keyring is not None else []
    keys.append(None)
    keys.sort(key=lambda k: (LEGACY_KEY if k is None else k.key_id) != hint)
    for key in keys:
        if hmac.compare_digest(record_hash(seq, prev_hash, content, key), str(row.hash)):
            return LEGACY_KEY if key is None else key.key_id
    return None


def _sequence_break(seq: int, expected_seq: int) -> str | None:
    """Why record ``seq`` cannot stand where record ``expected_seq`` should, or None if they are equal."""
    if seq == expected_seq:
        return None
    if seq < expected_seq:
        return f"sequence out of order: expected {expected_seq}, found {seq}"
    missing = f"record {expected_seq}" if seq == expected_seq + 1 else f"records {expected_seq}–{seq - 1}"
    return f"sequence gap: expected record {expected_seq}, found {seq} ({missing} deleted)"


def chain_break(row: Any, expected_seq: int, prev_hash: str) -> str | None:
    """Why a stored record does not stand where it should in the chain, or None when it links.

    ``row`` has the record's ``seq``, ``prev_hash`` and ``hash`` (attributes); ``expected_seq`` is the
    sequence number due at its place and ``prev_hash`` the MAC of the record before it
    (:data:`GENESIS_HASH` for the first). Returns the reason as text: a sequence gap (deletion) or
    disorder, or a prev_hash that does not link. Whether the MAC recomputes: :func:`record_key`.
    """
    seq = int(row.seq)
    reason = _sequence_break(seq, expected_seq)
    if reason is not None:
        return reason
    if row.prev_hash != prev_hash:
        where = f"the hash of record {seq - 1}" if seq > 1 else "the genesis value"
        return f"prev_hash does not match {where} (a record before it was deleted, edited or moved)"
    return None


#: The six ways of tampering that ``AuditTrail.verify`` tells apart, and a failed checkpoint.
TAMPER_CASES = ("edited", "deleted-middle", "deleted-newest", "swapped", "forged", "rehashed", "bad-checkpoint")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``AuditTrail.verify``.

    ``first_bad`` is the sequence number of the first bad record (or of the checkpoint's record) and
    ``reason`` says why, ``case`` which of :data:`TAMPER_CASES` it is (all None when ``ok``);
    ``n_records`` counts the records read; ``head_hash`` is the MAC of the last record. ``n_legacy``
    records (seqs 1…``legacy_through``) are of the old, unkeyed kind (format 1): their chain shows
    edits and deletions, but not a rewrite by someone with write access. ``checkpoints`` counts the
    signed checkpoints checked, ``checkpoint_seq`` the newest one's record; ``key_ids`` the chain keys met.
    """

    ok: bool
    n_records: int
    first_bad: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    case: str | None = None
    n_legacy: int = 0
    legacy_through: int | None = None
    checkpoints: int = 0
    checkpoint_seq: int | None = None
    key_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordCheck:
    """``AuditTrail.check_record``: the record's MAC recomputes (``hash_intact``), its
    ``prev_hash`` is the previous record's MAC, and the next record (None: there is none yet)
    points back to it."""

    seq: int
    hash_intact: bool
    linked_to_previous: bool
    linked_to_next: bool | None

    @property
    def ok(self) -> bool:
        """True when the MAC recomputes and both links hold (a missing next record is no fault)."""
        return self.hash_intact and self.linked_to_previous and self.linked_to_next is not False


def record_check(row: Any, before: Any | None, after: Any | None, keyring: AuditKeyring | None) -> RecordCheck:
    """The :class:`RecordCheck` of one stored record ``row`` from it and its neighbours as stored
    (``before``/``after``: records ``seq − 1`` and ``seq + 1``, None where there is none; rows as
    for :func:`chain_break`): its MAC recomputes with a key of ``keyring`` (or it is an unkeyed
    record of format 1 before any keyed neighbour), and it links to both."""
    seq = int(row.seq)
    key = record_key(row, keyring, keyring.current.key_id if keyring is not None else None)
    # an unkeyed record stands only before the first keyed one
    downgraded = key == LEGACY_KEY and before is not None and record_key(before, keyring) not in (None, LEGACY_KEY)
    intact = key is not None and not downgraded
    expected_prev = GENESIS_HASH if seq == 1 else (before.hash if before is not None else None)
    return RecordCheck(seq=seq, hash_intact=intact, linked_to_previous=row.prev_hash == expected_prev,
                       linked_to_next=None if after is None else after.prev_hash == row.hash)


# ---------------------------------------------------------------------------------------------------
# Explanations, stored compactly

EXPLANATIONS_FORMAT = "feature-lists/1"


def compact_explanations(explanations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The stored form of ``explanations[regimen][outcome]`` = ``{"top", "scale", "base_value",
    "values": {feature: SHAP value}}``: each model's feature names once, each explanation's values
    as a list in that order (``"features"``: the index of its name list) — every SHAP value kept, at
    full precision, in less text. :func:`expand_explanations` reverses it.

    An explanation's ``values`` may also come as ``"names"`` (list) + ``"values"`` (list, same order).
    Returns ``{"format": EXPLANATIONS_FORMAT, "features": [name lists], "regimens": {…}}``.
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


# ---------------------------------------------------------------------------------------------------
# A caller's record → the stored content


def _time_text(value: datetime | str) -> str:
    """An aware datetime or ISO 8601 text with a zone → UTC text in TIME_FORMAT; raises AuditError."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise AuditError(f"expected a datetime or ISO 8601 text, got {type(value).__name__}")
    if value.tzinfo is None:
        raise AuditError(f"time {value.isoformat()} has no time zone; give UTC (e.g. '…Z' or '+00:00')")
    return value.astimezone(UTC).strftime(TIME_FORMAT)


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


def _text_fields(record: Mapping[str, Any]) -> dict[str, str | None]:
    """The short text fields (key id, role, endpoint, model name and version, prediction id) as
    stored: text or None. Raises AuditError for text longer than its column, a missing endpoint or
    an unknown role."""
    texts: dict[str, str | None] = {}
    for name, limit in _TEXT_LIMITS.items():
        value = record.get(name)
        if value is not None:
            value = str(value)
            if len(value) > limit:
                raise AuditError(f"audit field {name} is longer than {limit} characters")
        texts[name] = value
    if not texts["endpoint"]:
        raise AuditError("an audit record needs the endpoint (e.g. 'POST /v1/predictions')")
    if texts["role"] is not None and texts["role"] not in ROLES:
        raise AuditError(f"unknown role {texts['role']!r}; expected one of {', '.join(ROLES)}")
    return texts


def _outcome(record: Mapping[str, Any]) -> tuple[str, int]:
    """``(status, http_status)``; raises AuditError unless they are known and agree (accepted < 400)."""
    status, http_status = record.get("status"), record.get("http_status")
    if status not in STATUSES:
        raise AuditError(f"audit field status must be one of {', '.join(STATUSES)}, not {status!r}")
    if isinstance(http_status, bool) or not isinstance(http_status, int) or not 100 <= http_status <= 599:
        raise AuditError(f"audit field http_status must be an HTTP status code, not {http_status!r}")
    if (status == "accepted") != (http_status < 400):
        raise AuditError(f"status {status!r} does not fit HTTP status {http_status}")
    return status, http_status


def _digest(record: Mapping[str, Any]) -> str | None:
    """The input digest to store: of ``request_body`` if given, else the caller's ``input_digest``
    (None: none). Raises AuditError if both are given or the digest is not 64 lower-case hex digits."""
    if "request_body" in record:
        if record.get("input_digest") is not None:
            raise AuditError("give either request_body or input_digest, not both")
        return input_digest(record["request_body"])
    digest = record.get("input_digest")
    if digest is not None and (not isinstance(digest, str) or len(digest) != 64
                               or any(c not in "0123456789abcdef" for c in digest)):
        raise AuditError("audit field input_digest must be a SHA-256 hex digest (64 lower-case hex digits)")
    return digest


def _json_texts(record: Mapping[str, Any]) -> dict[str, str | None]:
    """The JSON fields (regimens, outputs, explanations, detail, inputs) as their stored text, None if absent;
    ``detail`` bounded first (:func:`~.bounded.bounded_detail`: no rejected value is stored whole).
    Raises AuditError if ``regimens`` is not a list of ids or a value has no JSON form."""
    regimens = record.get("regimens")
    if regimens is not None:
        if isinstance(regimens, str) or not all(isinstance(r, str) for r in regimens):
            raise AuditError("audit field regimens must be a list of regimen ids")
        regimens = list(regimens)
    inputs = record.get("inputs")
    if inputs is not None and (not isinstance(inputs, Mapping) or "patient_id" in inputs):
        raise AuditError("audit field inputs must be the scored patient record (a dict) without its patient_id")
    detail, raw_id = record.get("detail"), record.get("patient_id")
    hide = str(raw_id).strip() or None if raw_id is not None else None  # no preview may show the raw id
    values = {"regimens": regimens, "outputs": record.get("outputs"), "explanations": record.get("explanations"),
              "detail": None if detail is None else bounded_detail(detail, hide=hide), "inputs": record.get("inputs")}
    return {name: None if value is None else stored_json(value) for name, value in values.items()}


def _refuse_raw_id(raw: str, record: Mapping[str, Any], content: Mapping[str, Any]) -> None:
    """Raise RawIdentifierError if the raw patient id leaks through another field (e.g. an output
    echoing the input): equal to a short text field, or to a string (key or value) in a JSON field.

    Whole values only, so the outcome is deterministic: a part of the random prediction id or of
    the key id that happens to equal a short patient id (``"42"``) is not the id leaking."""
    for name in ("key_id", "endpoint", "model_name", "model_version", "prediction_id"):
        if content[name] is not None and content[name].strip() == raw:
            raise RawIdentifierError(f"audit field {name} is the raw patient id; it must not be stored")
    # JSON escaping maps each character on its own, so a string equal to the raw id (after
    # stripping) can only be in a field whose canonical text contains the escaped id: walk only those
    needle = stored_json(raw)[1:-1]
    for name in _JSON_FIELDS:
        value = record.get(name)
        if value is not None and needle in content[name] and any(s.strip() == raw for s in strings_in(value)):
            raise RawIdentifierError(f"audit field {name} contains the raw patient id; it must not be stored")


def _pseudonym(record: Mapping[str, Any], content: Mapping[str, Any],
               pseudonym_key: bytes | str | None) -> str | None:
    """The pseudonym of the record's raw ``patient_id`` (None when there is none), once no other
    field holds the raw id. Raises RawIdentifierError, or PseudonymKeyError (with instructions) when
    no key is configured: the raw id is never stored."""
    raw_id = record.get("patient_id")
    if raw_id is None or not str(raw_id).strip():
        return None
    raw = str(raw_id).strip()
    _require_utf8("patient_id", raw)
    _refuse_raw_id(raw, record, content)
    return pseudonymise(raw, key=pseudonym_key)


def _require_utf8(name: str, text: str) -> None:
    """Raise AuditError naming the field and the code point when ``text`` cannot be stored as UTF-8
    (a lone surrogate): checked before the record joins a group commit, so it fails alone."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        raise AuditError(f"audit field {name} holds a lone surrogate U+{bad:04X} at character {exc.start}; "
                         "text that is not valid Unicode cannot be stored") from None


def _require_storable(content: Mapping[str, Any]) -> None:
    """Raise AuditError unless every text of the stored content encodes as UTF-8 and holds no NUL
    (PostgreSQL refuses it in text), i.e. unless the database can store the record as it is."""
    for name, value in content.items():
        if isinstance(value, str):
            _require_utf8(name, value)
            if "\x00" in value:
                raise AuditError(f"audit field {name} holds a NUL character (U+0000), which cannot be stored")


def stored_content(record: Mapping[str, Any], pseudonym_key: bytes | str | None = None) -> dict[str, Any]:
    """Check a caller's record (see ``AuditTrail.append``) and turn it into the stored content.

    Returns a dict of every name in :data:`CONTENT_FIELDS` and :data:`OPTIONAL_FIELDS` → its stored
    value: JSON fields as their stored text (outputs and explanations packed into a side blob, at
    :data:`SIDE_BLOB`, that their texts refer to: :mod:`.packing`; detail bounded: :mod:`.bounded`),
    the raw patient id replaced by its pseudonym, the input digest computed from
    ``request_body`` if given, ``time`` as UTC text (None: the append takes the time under its lock).
    Raises AuditError (or RawIdentifierError) for a bad record and PseudonymKeyError when a patient
    id is given but no pseudonymisation key is configured (``pseudonym_key`` None: the environment's).
    """
    if not isinstance(record, Mapping):
        raise AuditError(f"an audit record is a dict, not {type(record).__name__}")
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        raise AuditError(
            f"unknown audit field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(RECORD_KEYS))}"
        )
    content: dict[str, Any] = dict.fromkeys(CONTENT_FIELDS + OPTIONAL_FIELDS)
    content.update(_text_fields(record))
    content["status"], content["http_status"] = _outcome(record)
    content["input_digest"] = _digest(record)
    content.update(_json_texts(record))
    content["patient_pseudonym"] = _pseudonym(record, content, pseudonym_key)
    content["time"] = _time_text(record["time"]) if record.get("time") is not None else None
    _require_storable(content)
    # packed after the checks, which read the plain text; the side blob is not a hashed field: the MAC
    # covers it through its digest, in the packed fields' reference texts
    content[SIDE_BLOB] = None
    if PACKED_FIELDS:
        refs, content[SIDE_BLOB] = pack_fields({name: content[name] for name in PACKED_FIELDS})
        content.update(refs)
    return content
