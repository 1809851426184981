"""Reading the audit trail for auditors: one filter, one flat export (the API and ``audit export`` share both).

Records of prediction requests have one of the endpoints :data:`PREDICTION_REQUEST_ENDPOINTS`; every
other record is an *access* record (someone read the trail: ``GET /v1/predictions…`` or ``CLI audit
export``; an admin reloaded the model; any other answer of the service), kept in the same chain.
The auditors' endpoints in :mod:`response_model.service.auditor` and ``response-model audit export``
read the trail through this module: :func:`parse_filter` validates a filter given as text,
:func:`select_records` (``AuditTrail.select``) pages with a cursor on ``seq``, and
:func:`start_export` flattens the selected prediction records into one table (:data:`EXPORT_COLUMNS`,
then ``shap.<feature>`` columns) written as CSV or Parquet chunk by chunk. ``AuditTrail.check_record``
(:mod:`response_model.service.audit.store`) checks one record cheaply.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from response_model.service.audit.chain import (
    _TEXT_LIMITS,
    STATUSES,
    AuditError,
    _time_text,
    canonical_json,
    expand_explanations,
)
from response_model.service.audit.records import (
    PREDICTION_REQUEST_ENDPOINTS,
    AuditEntry,
    audit_records,
    parse_stored,
    row_to_entry,
    side_blobs,
)
from response_model.service.keys import TIME_FORMAT

if TYPE_CHECKING:
    from response_model.service.audit.store import AuditTrail

MAX_QUERY_LIMIT = 1_000

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
    "probability", "interval_lower", "interval_upper", "interval_level", "band", "explanation_scale", "base_value",
    "observed", "outcome_id", "outcome_versions", "detail", "record_hash",
)
EXPORT_COLUMN_DOC: dict[str, str] = {
    "seq": "sequence number of the audit record (its place in the hash chain)",
    "time": "time of the request, UTC (Parquet: timestamp; CSV: ISO 8601 text ending in Z)",
    "prediction_id": "id returned to the caller; GET /v1/predictions/{id} gives the whole record",
    "status": "accepted or rejected", "http_status": "HTTP status of the answer",
    "endpoint": "the endpoint called (POST /v1/predictions or POST /v1/predictions:batch)",
    "key_id": "API key that asked (public key id, never the token)", "role": "that key's role",
    "model_name": "registered model name",
    "model_version": "registered model version (text: with pandas.read_csv pass dtype={'model_version': str}; "
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
    "interval_level": "nominal coverage of a per-patient interval (0–1); empty for the population-level margin",
    "band": "low / moderate / high",
    "explanation_scale": "scale of base_value and the shap.* columns",
    "base_value": "explanation base value: base_value + the sum of the shap.* columns = the model's output "
                  "on explanation_scale",
    "observed": "what happened (POST /v1/outcomes): the current recorded outcome's value of this outcome for "
                "this regimen (configs/outcomes.yaml); empty when none is recorded or it cannot tell yet",
    "outcome_id": "the current recorded outcome of this prediction and regimen (GET /v1/outcomes has its history)",
    "outcome_versions": "how many outcomes were recorded for this prediction and regimen (corrections included)",
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
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise FilterError([{"field": field, "value": text,
                            "message": f"{field}: {text!r} is not an ISO 8601 date or time; {example}"}]) from None
    if parsed.tzinfo is None:
        raise FilterError([{"field": field, "value": text,
                            "message": f"{field}: {text!r} has no time zone; add 'Z' for UTC or an offset "
                                       f"like '+01:00' ({example})"}])
    try:
        return parsed.astimezone(UTC).strftime(TIME_FORMAT)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00: its UTC time is before year 1
        raise FilterError([{"field": field, "value": text,
                            "message": f"{field}: {text!r} is outside the years 1–9999 once converted to UTC; "
                                       f"{example}"}]) from None


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
    elif model_version is not None and not (model_version.isascii() and model_version.isprintable()):
        # a version is printable ASCII; U+FFFD is what undecodable bytes of a query string become
        odd = sorted({f"U+{ord(c):04X}" for c in model_version if not (c.isascii() and c.isprintable())})
        errors.append({"field": "model_version", "value": None,
                       "message": f"model_version: holds {', '.join(odd[:5])}; a model version is printable ASCII"})
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


def query_records(trail: AuditTrail, from_: datetime | str | None = None, to: datetime | str | None = None,
                  model_version: str | None = None, regimen: str | None = None, limit: int = 100, offset: int = 0,
                  *, status: str | None = None, after_seq: int | None = None, through_seq: int | None = None,
                  kind: str | None = None) -> list[AuditEntry]:
    """``AuditTrail.query``: the records with ``from_ <= time < to`` (aware datetimes or ISO text)
    and the other conditions, oldest first, as a list of at most ``limit`` entries after ``offset``.

    Raises AuditError for a limit outside 1–1,000, a negative offset or a time without a zone.
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
    return select_records(trail, flt, after_seq=after_seq, through_seq=through_seq, kind=kind, limit=limit,
                          offset=offset)


def select_records(trail: AuditTrail, flt: TrailFilter, *, after_seq: int | None = None,
                   through_seq: int | None = None, kind: str | None = None, limit: int = 100, offset: int = 0,
                   explanations: bool = True) -> list[AuditEntry]:
    """``AuditTrail.select``: the records ``flt`` selects with ``after_seq < seq <= through_seq`` and
    of ``kind``, oldest first, as a list of at most ``limit`` (≤ 1,000) entries after skipping
    ``offset``. ``explanations=False`` leaves out the largest field (``None`` in the entries)."""
    if not 0 < int(limit) <= MAX_QUERY_LIMIT:
        raise AuditError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
    columns = [c for c in audit_records.columns if explanations or c.name != "explanations"]
    query = _filtered(sa.select(*columns), flt, after_seq, through_seq, kind)
    query = query.order_by(audit_records.c.seq).limit(int(limit)).offset(int(offset))
    with trail.engine.connect() as conn:
        rows = conn.execute(query).all()
        blobs = side_blobs(conn, rows)
    return [row_to_entry(row, blobs) for row in rows]


def count_records(trail: AuditTrail, flt: TrailFilter, *, through_seq: int | None = None,
                  kind: str | None = PREDICTION_KIND) -> int:
    """``AuditTrail.count_matching``: the number of records that ``flt`` (and ``kind``,
    ``seq <= through_seq``) selects."""
    query = _filtered(sa.select(sa.func.count()).select_from(audit_records), flt, None, through_seq, kind)
    with trail.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


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
        query = query.where(c.endpoint.in_(PREDICTION_REQUEST_ENDPOINTS))
    elif kind == ACCESS_KIND:
        query = query.where(c.endpoint.not_in(PREDICTION_REQUEST_ENDPOINTS))
    elif kind is not None:
        raise AuditError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    return query


def iter_records(trail: AuditTrail, flt: TrailFilter, *, through_seq: int | None = None,
                 kind: str | None = PREDICTION_KIND, chunk: int = EXPORT_CHUNK) -> Iterable[list[AuditEntry]]:
    """The records ``flt`` selects, oldest first, in lists of up to ``chunk`` (cursor on seq)."""
    after = 0
    while True:
        entries = select_records(trail, flt, after_seq=after, through_seq=through_seq, kind=kind, limit=chunk)
        if not entries:
            return
        yield entries
        after = entries[-1].seq


def shap_features(trail: AuditTrail, flt: TrailFilter, *, through_seq: int | None = None) -> list[str]:
    """Every feature with a SHAP value in the records ``flt`` selects, in model order.

    The feature set is fixed per model and regimen class, so only the first record of each model
    name × version × regimen is parsed; :meth:`Export.frames` checks every other record against it.
    """
    c = audit_records.c
    query = _filtered(sa.select(c.seq, c.model_name, c.model_version, c.regimens), flt, None, through_seq,
                      PREDICTION_KIND).where(c.explanations.is_not(None)).order_by(c.seq)
    firsts: list[int] = []
    seen: set[tuple] = set()
    with trail.engine.connect() as conn:
        for row in conn.execute(query):
            new = False
            regimens = parse_stored("regimens", row.regimens)
            for regimen in regimens if isinstance(regimens, list) else []:
                key = (row.model_name, row.model_version, regimen)
                if key not in seen:
                    seen.add(key)
                    new = True
            if new:
                firsts.append(int(row.seq))
        features: dict[str, None] = {}
        for start in range(0, len(firsts), 500):
            rows = conn.execute(sa.select(c.explanations).where(c.seq.in_(firsts[start:start + 500]))
                                .order_by(c.seq)).all()
            blobs = side_blobs(conn, rows)
            for row in rows:
                stored = parse_stored("explanations", row.explanations, blobs)
                for outcomes in _mapping(expand_explanations(stored)).values():
                    for explanation in _mapping(outcomes).values():
                        features.update(dict.fromkeys(_mapping(_mapping(explanation).get("values"))))
    return list(features)


def _mapping(value: Any) -> Mapping:
    """``value`` if it is a mapping, else an empty one (a stored record of another shape is skipped)."""
    return value if isinstance(value, Mapping) else {}


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
        out = _mapping(out)  # a damaged record's other shapes read as empty, never fail the export
        for outcome in ("objective_response", "primary_resistance"):
            estimate = out.get(outcome)
            if not isinstance(estimate, Mapping):
                continue
            interval = _mapping(estimate.get("interval"))
            row = {**base, "regimen": regimen, "outcome": outcome, "rank": out.get("rank"),
                   "eligible": out.get("eligible"), "ineligible_reason": out.get("ineligible_reason"),
                   "probability": estimate.get("probability"), "interval_lower": interval.get("lower"),
                   "interval_upper": interval.get("upper"), "interval_level": interval.get("level"),
                   "band": estimate.get("band")}
            explanation = _mapping(_mapping(explanations.get(regimen)).get(outcome))
            values = _mapping(explanation.get("values"))
            if values or explanation.get("base_value") is not None:
                row["explanation_scale"] = explanation.get("scale")
                row["base_value"] = explanation.get("base_value")
            positions = _shap_positions(entry, tuple(values), shap_index, layouts) if values else None
            rows.append((row, positions, None if positions is None else
                         np.array(list(values.values()), dtype=np.float64)))  # None → NaN
    return rows or [(base, None, None)]  # a record without estimates still has its row


def _shap_positions(entry: AuditEntry, order: tuple[str, ...], shap_index: Mapping[str, int],
                    layouts: dict[tuple[str, ...], Any]) -> Any:
    """The positions among the SHAP columns of the features in ``order`` (a numpy int array, cached
    in ``layouts``). Raises AuditError for a feature that has no column: the columns come from the
    first record of each model × version × regimen (:func:`shap_features`)."""
    import numpy as np

    positions = layouts.get(order)
    if positions is None:
        missing = [f for f in order if f not in shap_index]
        if missing:
            raise AuditError(
                f"audit record {entry.seq} has a SHAP value for {missing[0]!r}, which the first record "
                f"of model {entry.model_name} version {entry.model_version} lacks; export with a "
                "narrower filter (one model version)")
        positions = layouts[order] = np.array([shap_index[f] for f in order], dtype=np.intp)
    return positions


def _with_observed(trail: AuditTrail, rows: list[tuple[dict[str, Any], Any, Any]]) -> None:
    """Fill in the rows' ``observed``, ``outcome_id`` and ``outcome_versions`` from the current outcomes
    recorded for their predictions (one query per chunk; :mod:`.outcomes`)."""
    from response_model.service.audit.outcomes import current_of, derived_outcomes, outcome_definitions, outcome_history

    ids = {row["prediction_id"] for row, _, _ in rows if row.get("regimen") and row.get("prediction_id")}
    current = current_of(outcome_history(trail, ids)) if ids else {}
    if not current:
        return
    definitions = outcome_definitions()
    for row, _, _ in rows:
        outcome = current.get((row.get("prediction_id"), row.get("regimen")))
        if outcome is not None:
            row["observed"] = derived_outcomes(outcome, definitions).get(row.get("outcome"))
            row["outcome_id"], row["outcome_versions"] = outcome["outcome_id"], outcome["n_versions"]


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
            _with_observed(self.trail, rows)
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
        """The CSV file's bytes, one block per chunk of records (the header with the first)."""
        # pyarrow's writer rather than DataFrame.to_csv, which is slower on the wide float columns;
        # it writes shortest round-trip float text, empty for missing, true/false, quotes only where needed
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
        """The Parquet file's bytes, as written: one row group per chunk of records (zstd)."""
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


_FLOAT_COLUMNS = {"probability", "interval_lower", "interval_upper", "interval_level", "base_value"}
_INT_COLUMNS = {"seq", "http_status", "rank", "outcome_versions"}
_BOOL_COLUMNS = {"out_of_distribution_flagged", "eligible", "observed"}


def _arrow_types():
    """The Arrow type of each typed fixed column (name → type); the others are text, ``shap.*`` float64."""
    import pyarrow as pa

    types = {name: pa.int64() for name in _INT_COLUMNS}
    types.update({name: pa.bool_() for name in _BOOL_COLUMNS})
    types.update({name: pa.float64() for name in _FLOAT_COLUMNS})
    types["time"] = pa.timestamp("us", tz="UTC")
    return types


def _utc_timestamps(values):
    """The stored UTC times (text in TIME_FORMAT) as pandas' UTC timestamps."""
    import pandas as pd

    return pd.to_datetime(values, format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)


def _typed(frame):
    """``frame`` with fixed dtypes (converted in place and returned), so that every chunk has the
    same columns and types."""
    for name in frame.columns:
        if name in ("seq", "http_status"):
            frame[name] = frame[name].astype("int64")
        elif name in ("rank", "outcome_versions"):
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
    n = count_records(trail, flt, through_seq=through)
    return Export(trail, flt, list(EXPORT_COLUMNS) + [SHAP_PREFIX + f for f in features], features, n, through)
