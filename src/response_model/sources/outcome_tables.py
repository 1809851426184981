"""Registry extracts of outcomes (CSV, XLSX, Parquet) mapped to outcome rows by a YAML spec (``format:
outcome_table``), for ``response-model outcomes import``.

The file is read as cohort tables are (:func:`response_model.sources.tables.read_raw`: delimiter,
encoding, sheet, header row, missing values, source line of every row; the header checked the same way,
an absent mapped column named with the nearest header), and the spec uses the same column forms
(``field: Column``, ``{column, values, optional}``, ``constants``, ``ignore``); its fields are those of
``POST /v1/outcomes`` (:class:`~response_model.service.outcome_models.OutcomeRequest`), dates may come
with a ``date_format`` (``"%d/%m/%Y"``). A cell that cannot be converted is passed on as its text, so
the outcome validation refuses its row naming the field (and the column). See
``configs/sources/registry-outcomes.yaml``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from response_model.service.audit.outcomes import DATE_FIELDS
from response_model.service.outcome_models import OutcomeRequest
from response_model.sources.tables import (
    DEFAULT_MISSING,
    ColumnMapping,
    SourceSpecError,
    TableSpec,
    cell_key,
    cell_text,
    check_header,
    is_missing_cell,
    read_raw,
)

FIELDS = tuple(OutcomeRequest.model_fields)
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}


class _OutcomeColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str | int
    values: dict[str | int | float | bool, Any] | None = None
    date_format: str | None = None
    optional: bool = False


class OutcomeSourceConfig(BaseModel):
    """``format: outcome_table``: a table of outcomes and how its columns map to outcome fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["outcome_table"]
    description: str | None = None
    source: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8-sig"
    sheet: str | int | None = None
    header_row: int = Field(1, ge=1, strict=True)
    missing_values: list[str | int | float] | None = None
    columns: dict[str, str | _OutcomeColumn]
    constants: dict[str, Any] | None = None
    ignore: list[str | int] | None = None


@dataclass(frozen=True)
class OutcomeTable:
    """The rows of an extract as outcome bodies, with the source line of each, the header's warnings and
    the rows that could not be read as rows (``problems``: line → why; e.g. more fields than the header)."""

    rows: list[dict[str, Any]]
    lines: list[int]
    columns: dict[str, str]  # field → source column, for messages
    warnings: list[str]
    problems: dict[int, str]


def _checked_names(names: list[str], where: str) -> None:
    """Raise SourceSpecError for a name that is not an outcome field (the nearest one suggested)."""
    for name in names:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SourceSpecError(f"outcome spec: {where}.{name}: not an outcome field{hint}; expected one of "
                                  f"{', '.join(FIELDS)}")


def parse_spec(spec: Mapping[str, Any]) -> tuple[OutcomeSourceConfig, TableSpec, dict[str, _OutcomeColumn]]:
    """(the config, the TableSpec the file is read with, field → column entry); raises SourceSpecError."""
    from response_model.settings import describe_errors

    try:
        config = OutcomeSourceConfig.model_validate(dict(spec))
    except ValidationError as error:
        raise SourceSpecError("outcome spec: " + "; ".join(describe_errors(error, OutcomeSourceConfig))) from None
    _checked_names(list(config.columns), "columns")
    _checked_names(list(config.constants or {}), "constants")
    entries = {name: entry if isinstance(entry, _OutcomeColumn) else _OutcomeColumn(column=entry)
               for name, entry in config.columns.items()}
    missing = config.missing_values
    table_spec = TableSpec(
        # read as text: the outcome fields are converted here, not by the cohort table's types
        columns={name: ColumnMapping(field=name, column=str(e.column).strip(), optional=e.optional)
                 for name, e in entries.items()},
        ignore=frozenset(str(name).strip() for name in config.ignore or ()), delimiter=config.delimiter,
        encoding=config.encoding, sheet=config.sheet, header_row=config.header_row,
        missing=frozenset(DEFAULT_MISSING if missing is None else (str(m).strip().lower() for m in missing)))
    return config, table_spec, entries


def _date(raw: Any, fmt: str | None) -> Any:
    """A date cell as ``YYYY-MM-DD`` text (a sheet's dates, or text in ``fmt``); else its text, refused later."""
    if isinstance(raw, (datetime, pd.Timestamp)):
        return raw.date().isoformat()
    if isinstance(raw, date):
        return raw.isoformat()
    text = cell_text(raw)
    if fmt is not None:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            return text
    return text


def _cell(name: str, entry: _OutcomeColumn, raw: Any) -> Any:
    """The outcome value of one non-missing cell (codes of ``values`` translated)."""
    if entry.values is not None:
        codes = {cell_key(k): v for k, v in entry.values.items()}
        if cell_key(raw) in codes:
            return codes[cell_key(raw)]
        return cell_text(raw)  # not a listed code: refused by the outcome's own validation, which names the field
    if name in DATE_FIELDS:
        return _date(raw, entry.date_format)
    if name == "started" and not isinstance(raw, bool):
        code = cell_key(raw)
        return True if code in _TRUE else False if code in _FALSE else cell_text(raw)
    return raw if isinstance(raw, bool) else cell_text(raw)


def read_outcomes(spec: Mapping[str, Any], path: str | Path) -> OutcomeTable:
    """Read ``path`` through an ``outcome_table`` spec: one outcome body per row (missing cells left out).

    Raises SourceSpecError for a bad spec and SourceFormatError when the file cannot be read as a table
    (as :func:`response_model.sources.tables.read_table` does)."""
    config, table_spec, entries = parse_spec(spec)
    path = Path(path)
    table = read_raw(table_spec, path)
    index, warnings = check_header(table, table_spec, path)
    present = {name: e for name, e in entries.items() if str(e.column).strip() in index}
    rows = []
    for cells in table.rows:
        row = dict(config.constants or {})
        for name, entry in present.items():
            raw = cells[index[str(entry.column).strip()]]
            listed = (entry.values is not None and raw is not None
                      and cell_key(raw) in {cell_key(k) for k in entry.values})
            if listed or not is_missing_cell(raw, table_spec.missing):
                row[name] = _cell(name, entry, raw)
        rows.append({k: v for k, v in row.items() if v is not None})
    return OutcomeTable(rows=rows, lines=list(table.lines), warnings=warnings,
                        columns={name: str(e.column).strip() for name, e in present.items()},
                        problems={table.lines[p]: problem for p, problem in table.problems.items()})
