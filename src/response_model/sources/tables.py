"""Cohort tables (CSV, Parquet, XLSX) mapped to the canonical cohort table by a YAML spec.

:func:`read_table` reads the file (the kind is chosen by its extension), maps its columns to
canonical fields as the spec says, and validates every row with :func:`dataset.parse_cohort`:
each bad row is reported with its source line (CSV: file line, header = line 1; XLSX: sheet row;
Parquet: row index + 1) while the good rows still load. A file that cannot be read as a table at
all raises :class:`SourceFormatError` naming the file and, where known, the line and the column.

The spec format is documented at the top of ``configs/sources/example_hospital.yaml``; in short::

    format: table
    delimiter: ","              # CSV only (default "," or tab for .tsv)
    sheet: Patients             # XLSX only (name or 0-based index; default the first sheet)
    columns:                    # canonical field: how to get it
      age: Age                  # shorthand for {column: Age}
      sex: {column: Gender, values: {M: male, F: female}}
      albumin: {column: "Albumin (g/L)", scale: 0.1}
      patient_id: {column: SAMPLE_ID, format: "CHOWELL-{value}"}
      alterations: {column: Mutations}          # "CTNNB1 p.S45P; FGF19 amp"
    gene_columns: {CTNNB1: "CTNNB1 status"}     # optional per-gene columns
    constants: {cancer_type: Hepatobiliary}
    ignore: [Comments]
    id_column: MRN              # → patient_id
    pseudonymise: true          # HMAC-SHA256 with $RESPONSE_MODEL_PSEUDONYM_KEY
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from response_model.dataset import (
    COHORT_COLUMNS,
    COLUMN_DTYPES,
    OUTCOME_FIELDS,
    ParsedCohort,
    RowError,
    TreatmentOutcome,
    parse_cohort,
)
from response_model.errors import ConfigError
from response_model.privacy import pseudonym_key, pseudonymise
from response_model.schema import INPUT_FIELDS, FieldError, PatientRecord, cancer_types, field_errors
from response_model.sources import SourceFormatError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
XLSX_SUFFIXES = (".xlsx", ".xlsm")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Cell texts read as missing (compared after stripping, case-insensitively), unless the spec
# gives its own `missing_values`.
DEFAULT_MISSING = ("", "na", "n/a", "nan", "null", "#n/a", "-")
# Texts of an alterations cell meaning "sequenced, nothing found" (default of `columns.alterations.none_found`):
# the words the clinician page's alterations box accepts (service/web.py NOTHING_FOUND); an empty cell is
# "not sequenced" in both. In the canonical table and the API: [] = sequenced, nothing found; null = not sequenced.
DEFAULT_NONE_FOUND = ("none", "[]", "none found")
# Texts of a per-gene column meaning "tested, no alteration" (default of `gene_columns.*.wildtype`).
DEFAULT_WILDTYPE = ("wt", "wildtype", "wild-type", "wild type", "neg", "negative", "0", "no", "none")

#: Fields a mapping cannot mark optional: the patient record requires them.
REQUIRED_FIELDS = ("age", "sex")

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


class SourceSpecError(ConfigError):
    """A table source configuration that cannot be used: names the key at fault."""


# ---------------------------------------------------------------------------------------------
# Cell conversion
# ---------------------------------------------------------------------------------------------


class _CellError(ValueError):
    """One cell that cannot become its canonical field; the message names field, column and value."""


def is_missing_cell(value: Any, missing: frozenset[str]) -> bool:
    """True when a cell is empty: None, NA, NaN, or text that is one of ``missing`` (lower case, stripped)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in missing


def cell_text(value: Any) -> str:
    """Return a cell as text; integral numbers without a decimal part (``1.0`` → ``"1"``)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value).strip()


def cell_key(value: Any) -> str:
    """Return the key a cell (or a `values:` key) is matched by: text, lower case, ``"1.0"`` → ``"1"``."""
    text = cell_text(value)
    try:
        number = float(text)
    except ValueError:
        return text.lower()
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return text.lower()


def _unit(name: str) -> str | None:
    model = PatientRecord if name in PatientRecord.model_fields else TreatmentOutcome
    extra = model.model_fields[name].json_schema_extra
    return extra.get("unit") if isinstance(extra, dict) else None


def _to_number(name: str, column: str | None, value: Any, decimal: str) -> float:
    where = f" in column {column!r}" if column is not None else ""
    unit = _unit(name)
    expected = f"expected a number in {unit}" if unit else "expected a number"
    if isinstance(value, (bool, np.bool_)):
        raise _CellError(f"{name}: {value!r}{where} is not a number; {expected}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    else:
        text = str(value).strip()
        candidate = text.replace(decimal, ".") if decimal != "." else text
        try:
            number = float(candidate)
        except ValueError:
            raise _CellError(f"{name}: {text!r}{where} is not a number; {expected}") from None
    if not math.isfinite(number):
        raise _CellError(f"{name}: {value!r}{where} is not a finite number; {expected}")
    return number


def _to_bool(name: str, column: str | None, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    code = cell_key(value)
    if code in _TRUE:
        return True
    if code in _FALSE:
        return False
    where = f" in column {column!r}" if column is not None else ""
    raise _CellError(f"{name}: {cell_text(value)!r}{where} is not a yes/no value; expected 1/0, true/false or yes/no")


def _typed(name: str, column: str | None, value: Any, decimal: str) -> Any:
    """Return ``value`` converted to the canonical type of field ``name`` (range checks are the schema's)."""
    dtype = COLUMN_DTYPES[name]
    if dtype in ("float64", "Int64"):
        number = _to_number(name, column, value, decimal)
        return int(number) if dtype == "Int64" and number.is_integer() else number
    if dtype == "boolean":
        return _to_bool(name, column, value)
    return value if isinstance(value, (list, dict)) else cell_text(value)


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMapping:
    """How one canonical field is read from one source column."""

    field: str
    column: str
    values: dict[str, Any] | None = None  # code (see cell_key) → canonical value (None = missing)
    labels: tuple[str, ...] = ()  # the codes as written in the spec, for messages
    scale: float | None = None
    template: str | None = None
    separator: str = ";"
    none_found: frozenset[str] = frozenset(DEFAULT_NONE_FOUND)
    optional: bool = False  # the column may be absent from the file: the field is then missing for every row
    unlisted: str = "reject"  # a code not under `values:`: "reject" its row, or read it as "missing" (a notice)

    def reads_as_missing(self, raw: Any) -> bool:
        """True when ``raw`` is a code outside ``values`` that this mapping reads as missing (``unlisted: missing``)."""
        return self.unlisted == "missing" and self.values is not None and cell_key(raw) not in self.values

    def convert(self, raw: Any, decimal: str) -> Any:
        """Return the canonical value of a non-missing cell; raises _CellError."""
        value = raw
        if self.values is not None:
            code = cell_key(raw)
            if code not in self.values:
                raise _CellError(
                    f"{self.field}: {cell_text(raw)!r} in column {self.column!r} is not one of the coded values; "
                    f"expected one of {', '.join(self.labels)}"
                )
            value = self.values[code]
            if value is None:
                return None
        if self.field == "alterations":
            return self._alterations(value)
        value = _typed(self.field, self.column, value, decimal)
        if self.scale is not None:
            value = float(f"{value * self.scale:.12g}")
            if COLUMN_DTYPES[self.field] == "Int64" and value.is_integer():
                value = int(value)
        if self.template is not None:
            value = self.template.format(value=value)
        return value

    def _alterations(self, value: Any) -> str:
        text = cell_text(value)
        if text.lower() in self.none_found:
            return ""
        items = [item.strip() for item in text.split(self.separator)]
        return "; ".join(item for item in items if item)


@dataclass(frozen=True)
class GeneColumn:
    """A per-gene column: a cell holds the change(s) of that gene, a wild-type word or nothing (not tested)."""

    gene: str
    column: str
    wildtype: frozenset[str] = frozenset(DEFAULT_WILDTYPE)
    separator: str = ";"

    def items(self, raw: Any) -> list[str]:
        """Return the compact alteration texts (``GENE p.CHANGE``) of a non-missing cell."""
        text = cell_text(raw)
        if text.lower() in self.wildtype:
            return []
        return [f"{self.gene} {part.strip()}" for part in text.split(self.separator) if part.strip()]


@dataclass(frozen=True)
class TableSpec:
    """A validated table source configuration (see the module docstring)."""

    columns: dict[str, ColumnMapping]
    constants: dict[str, Any] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    gene_columns: tuple[GeneColumn, ...] = ()
    delimiter: str | None = None
    encoding: str = "utf-8-sig"
    decimal: str = "."
    sheet: str | int | None = None
    header_row: int = 1
    missing: frozenset[str] = frozenset(DEFAULT_MISSING)
    pseudonymise: bool = False

    @property
    def used_columns(self) -> set[str]:
        """Return every source column the spec reads."""
        return {m.column for m in self.columns.values()} | {g.column for g in self.gene_columns}

    @property
    def fields(self) -> list[str]:
        """Return the canonical fields the mapped table has, in canonical order."""
        given = set(self.columns) | set(self.constants) | ({"alterations"} if self.gene_columns else set())
        return [name for name in COHORT_COLUMNS if name in given]

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TableSpec:
        """Return the spec of a parsed YAML mapping; raises SourceSpecError naming the bad key."""
        return TableSourceConfig.parse(spec).to_spec()


# The source configuration's schema: keys and their types (pydantic, unknown keys refused with the
# nearest valid one); TableSourceConfig.to_spec() then checks what depends on the canonical fields.


def _shorthand(entry: Any) -> Any:
    """``age: Age`` is short for ``age: {column: Age}``."""
    return {"column": str(entry)} if isinstance(entry, (str, int)) and not isinstance(entry, bool) else entry


class _ColumnEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str | int
    values: dict[Any, Any] | None = None
    scale: Any = None
    format: str | None = None
    separator: str | None = None
    none_found: list[str] | None = None
    optional: bool = Field(False, strict=True, description="true: the column may be absent from the file "
                                                          "(the field is then missing for every row, with a notice)")
    unlisted: Literal["reject", "missing"] = Field(
        "reject", description="a cell whose code is not under `values:`: reject its row (default), or read the "
                              "field as missing for that row (one notice per code)")


class _GeneEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str | int
    wildtype: list[str | int] | None = None
    separator: str | None = None


class TableSourceConfig(BaseModel):
    """``format: table``: a CSV / Parquet / XLSX table and how its columns map to canonical fields
    (documented at the top of ``configs/sources/example_hospital.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["table"] = "table"
    description: str | None = None
    source: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8-sig"
    decimal: Literal[".", ","] = "."
    sheet: str | int | None = None
    header_row: int = Field(1, ge=1, strict=True)
    missing_values: list[str | int | float] | None = None
    columns: dict[str, Annotated[_ColumnEntry, BeforeValidator(_shorthand)]] = Field(default_factory=dict)
    constants: dict[str, Any] | None = None
    ignore: list[str | int] | None = None
    id_column: str | int | None = None
    pseudonymise: bool | None = None
    gene_columns: dict[str, Annotated[_GeneEntry, BeforeValidator(_shorthand)]] | None = None

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, delimiter: str | None) -> str | None:
        if delimiter is not None:
            delimiter = "\t" if delimiter.lower() in ("tab", "\\t") else delimiter
            if len(delimiter) != 1:
                raise ValueError(f"delimiter {delimiter!r}; expected one character (or 'tab')")
        return delimiter

    @classmethod
    def parse(cls, spec: Any) -> TableSourceConfig:
        """Return ``spec`` validated; raises SourceSpecError naming every key at fault."""
        from response_model.settings import describe_errors

        if not isinstance(spec, Mapping):
            raise SourceSpecError(f"table spec: expected a mapping, got {type(spec).__name__}")
        try:
            return cls.model_validate(dict(spec))
        except ValidationError as error:
            raise SourceSpecError("table spec: " + "; ".join(describe_errors(error, cls))) from None

    def _raw_columns(self) -> dict[str, Any]:
        raw = {name: entry.model_dump(exclude_unset=True) for name, entry in self.columns.items()}
        if self.id_column is not None:
            if "patient_id" in raw:
                raise SourceSpecError("table spec: give either id_column or columns.patient_id, not both")
            raw = {"patient_id": {"column": str(self.id_column)}, **raw}
        return raw

    def _check_identifiers(self, columns: Mapping[str, ColumnMapping]) -> None:
        if "patient_id" in columns and self.pseudonymise is None:
            raise SourceSpecError(
                "table spec: patient_id is read from a column; say `pseudonymise: true` (hospital identifiers, "
                "replaced by keyed hashes) or `pseudonymise: false` (identifiers that are already pseudonymous)"
            )
        if self.pseudonymise and "patient_id" not in columns:
            raise SourceSpecError("table spec: pseudonymise is true but no id_column (or columns.patient_id) is given")
        if self.pseudonymise and columns["patient_id"].template is not None:
            raise SourceSpecError("table spec: columns.patient_id.format cannot be combined with pseudonymise: true")

    def to_spec(self) -> TableSpec:
        """Return the TableSpec; raises SourceSpecError for mappings the canonical fields do not allow."""
        columns = {name: _column_mapping(name, entry) for name, entry in self._raw_columns().items()}
        constants = _constants(self.constants or {}, columns)
        for required in ("age", "sex"):
            if required not in columns and required not in constants:
                raise SourceSpecError(f"table spec: {required} must be mapped under columns (it is required)")
        self._check_identifiers(columns)
        genes = tuple(_gene_column(gene, entry.model_dump(exclude_unset=True))
                      for gene, entry in (self.gene_columns or {}).items())
        if genes and "alterations" in constants:
            raise SourceSpecError("table spec: alterations cannot be both a constant and read from gene_columns")
        missing = self.missing_values
        return TableSpec(
            columns=columns, constants=constants,
            ignore=frozenset(str(name).strip() for name in self.ignore or ()),
            gene_columns=genes, delimiter=self.delimiter, encoding=self.encoding, decimal=self.decimal,
            sheet=self.sheet, header_row=self.header_row,
            missing=frozenset(DEFAULT_MISSING if missing is None else (str(m).strip().lower() for m in missing)),
            pseudonymise=bool(self.pseudonymise),
        )


def _column_mapping(name: str, entry: Any) -> ColumnMapping:
    where = f"table spec: columns.{name}"
    if name not in COHORT_COLUMNS:
        close = difflib.get_close_matches(str(name), COHORT_COLUMNS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SourceSpecError(f"{where}: not a canonical cohort field{hint}")
    if isinstance(entry, str):
        entry = {"column": entry}
    if not isinstance(entry, Mapping) or "column" not in entry:
        raise SourceSpecError(f"{where}: expected a column name or {{column: NAME, ...}}")
    dtype = COLUMN_DTYPES[name]
    values = labels = None
    if entry.get("values") is not None:
        if not isinstance(entry["values"], Mapping) or not entry["values"]:
            raise SourceSpecError(f"{where}.values: expected a mapping of source value → canonical value")
        values = {cell_key(key): value for key, value in entry["values"].items()}
        if len(values) != len(entry["values"]):
            raise SourceSpecError(f"{where}.values: two source values differ only in case or spelling of a number")
        labels = tuple(f"{cell_text(key)!r} ({value})" for key, value in entry["values"].items())
    scale = entry.get("scale")
    if scale is not None:
        if dtype not in ("float64", "Int64") or isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise SourceSpecError(f"{where}.scale: a numeric factor on a numeric field only")
        if scale <= 0:
            raise SourceSpecError(f"{where}.scale: {scale!r}; expected a positive factor")
    template = entry.get("format")
    if template is not None:
        if dtype != "object" or name == "alterations" or "{value}" not in str(template):
            raise SourceSpecError(f"{where}.format: a text template containing {{value}}, on a text field only")
        try:
            str(template).format(value="x")
        except (KeyError, IndexError, ValueError) as error:
            raise SourceSpecError(f"{where}.format: {template!r} is not a valid template ({error})") from None
    if name != "alterations" and ("separator" in entry or "none_found" in entry):
        raise SourceSpecError(f"{where}: separator and none_found apply to alterations only")
    optional, unlisted = _missing_options(where, name, entry, values)
    return ColumnMapping(
        field=name, column=str(entry["column"]).strip(), values=values, labels=labels or (),
        scale=float(scale) if scale is not None else None,
        template=str(template) if template is not None else None,
        separator=str(entry.get("separator", ";")),
        none_found=frozenset(str(word).lower() for word in entry.get("none_found", DEFAULT_NONE_FOUND)),
        optional=optional, unlisted=unlisted,
    )


def _missing_options(where: str, name: str, entry: Mapping[str, Any], values: dict | None) -> tuple[bool, str]:
    """Return the entry's ``optional`` and ``unlisted`` settings, refused where the record requires the field."""
    optional = bool(entry.get("optional", False))
    if optional and name in REQUIRED_FIELDS:
        raise SourceSpecError(f"{where}.optional: {name} is required by the patient record; "
                              "expected its column in every file (remove `optional: true`)")
    unlisted = str(entry.get("unlisted", "reject"))
    if unlisted == "missing" and (values is None or name in REQUIRED_FIELDS):
        raise SourceSpecError(f"{where}.unlisted: 'missing' needs a `values:` map on a field the record does not "
                              f"require ({name} {'is required' if name in REQUIRED_FIELDS else 'has no values:'})")
    return optional, unlisted


def _constants(raw: Mapping[str, Any], columns: Mapping[str, ColumnMapping]) -> dict[str, Any]:
    constants = {}
    for name, value in raw.items():
        if name not in COHORT_COLUMNS:
            raise SourceSpecError(f"table spec: constants.{name}: not a canonical cohort field")
        if name in columns:
            raise SourceSpecError(f"table spec: {name} is both a constant and a mapped column")
        try:
            constants[name] = None if value is None else _typed(name, None, value, ".")
        except _CellError as error:
            raise SourceSpecError(f"table spec: constants.{error}") from None
        if name == "cancer_type" and value is not None and str(value).strip().lower() not in \
                {c.lower() for c in cancer_types()}:
            # a whole file's type written by the mapping's author: a type outside the vocabulary is a mistake
            raise SourceSpecError(f"table spec: constants: cancer_type: {value!r} is not a known cancer type; "
                                  f"expected one of {', '.join(cancer_types())}")
    inputs = {k: v for k, v in constants.items() if k in INPUT_FIELDS and v is not None}
    outcomes = {k: v for k, v in constants.items() if k in OUTCOME_FIELDS and v is not None}
    try:
        PatientRecord.model_validate({"age": 50, "sex": "male", **inputs}, strict=False)
        TreatmentOutcome.model_validate(outcomes)
    except ValidationError as error:
        raise SourceSpecError(
            "table spec: constants: " + "; ".join(str(e) for e in field_errors(error))
        ) from None
    return constants


def _gene_column(gene: str, entry: Any) -> GeneColumn:
    where = f"table spec: gene_columns.{gene}"
    if isinstance(entry, str):
        entry = {"column": entry}
    if not isinstance(entry, Mapping) or "column" not in entry:
        raise SourceSpecError(f"{where}: expected a column name or {{column: NAME, wildtype: [...]}}")
    unknown = set(entry) - {"column", "wildtype", "separator"}
    if unknown:
        raise SourceSpecError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    wildtype = entry.get("wildtype", DEFAULT_WILDTYPE)
    return GeneColumn(
        gene=str(gene), column=str(entry["column"]).strip(),
        wildtype=frozenset(cell_key(word) for word in wildtype), separator=str(entry.get("separator", ";")),
    )


# ---------------------------------------------------------------------------------------------
# Reading the file: header, rows and their source line numbers
# ---------------------------------------------------------------------------------------------


@dataclass
class RawTable:
    """A file read as text/values: the header, the data rows and the source line of each."""

    header: list[str]
    header_line: int
    rows: list[list[Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)  # row position → why it cannot be read
    header_text: str | None = None  # CSV: the raw header line, for the delimiter hint


def _is_empty_row(cells: Sequence[Any]) -> bool:
    return all(is_missing_cell(cell, frozenset({""})) for cell in cells)


def _collect(path: Path, numbered_rows, header_row: int, is_csv: bool = False) -> RawTable:
    """Build a RawTable from ``(line, cells)`` pairs; the first non-empty one at or after ``header_row`` is the header.

    In a CSV file a row with fewer fields than the header is broken; in a sheet it just ends with empty cells.
    """
    table: RawTable | None = None
    for line, cells in numbered_rows:
        if table is None:
            if line < header_row or _is_empty_row(cells):
                continue
            header = ["" if cell is None else cell_text(cell) for cell in cells]
            while header and not header[-1]:
                header.pop()  # trailing empty header cells (trailing delimiters, formatted sheet columns)
            seen: set[str] = set()
            for name in header:
                if name.strip() and name.strip() in seen:
                    raise SourceFormatError(path, "duplicate column name in the header", line=line,
                                            column=name.strip())
                seen.add(name.strip())
            table = RawTable(header=header, header_line=line)
            continue
        if _is_empty_row(cells):
            continue  # blank line / empty spreadsheet row: nothing to read
        cells = list(cells)
        width = len(table.header)
        position = len(table.rows)
        extra = cells[width:]
        if any(not is_missing_cell(cell, frozenset({""})) for cell in extra) or (is_csv and len(cells) < width):
            table.problems[position] = (
                f"row: {len(cells)} field(s) but the header has {width}; "
                "expected one value per header column (check the delimiter and quoting)"
            )
        cells = cells[:width] + [None] * (width - len(cells))
        table.rows.append(cells)
        table.lines.append(line)
    if table is None:
        where = "the file is empty" if header_row == 1 else f"nothing at or below line {header_row} (header_row)"
        raise SourceFormatError(path, f"{where}; expected a header row and one row per patient", line=header_row)
    if not table.rows:
        raise SourceFormatError(path, "no data rows below the header; expected one row per patient",
                                line=table.header_line + 1)
    return table


def _read_csv(path: Path, spec: TableSpec) -> RawTable:
    data = path.read_bytes()
    try:
        text = data.decode(spec.encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SourceFormatError(
            path, f"not valid {spec.encoding} text (byte 0x{data[error.start]:02x}); set `encoding:` in the "
            "source configuration (e.g. latin-1 or cp1252 for files saved by older spreadsheet software)",
            line=line,
        ) from None
    except LookupError:
        raise SourceSpecError(f"table spec: encoding {spec.encoding!r} is not a known text encoding") from None
    if not text.strip():
        raise SourceFormatError(path, "the file is empty; expected a header row and one row per patient", line=1)
    if "\x00" in text:
        raise SourceFormatError(path, "binary content, not a delimited text file (is it a spreadsheet? "
                                      "save it as .xlsx or CSV)", line=text[: text.index("\x00")].count("\n") + 1)
    delimiter = spec.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    handle = io.StringIO(text, newline="")
    for _ in range(spec.header_row - 1):
        handle.readline()
    offset = spec.header_row - 1
    reader = csv.reader(handle, delimiter=delimiter, strict=True)

    def numbered():
        previous = offset
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise SourceFormatError(
                    path, f"malformed CSV in the record starting here ({error}; check quotes)", line=previous + 1
                ) from None
            yield previous + 1, cells
            previous = offset + reader.line_num

    table = _collect(path, numbered(), spec.header_row, is_csv=True)
    lines = io.StringIO(text, newline="")
    for _ in range(table.header_line):
        table.header_text = lines.readline().rstrip("\r\n")  # the raw header line, for the delimiter hint
    return table


def _read_xlsx(path: Path, spec: TableSpec) -> RawTable:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as error:
        raise SourceFormatError(path, f"cannot read as an XLSX workbook ({type(error).__name__}: {error}); "
                                      "expected an Excel .xlsx file") from None
    except Exception as error:  # openpyxl raises assorted errors on corrupt parts
        raise SourceFormatError(path, f"cannot read as an XLSX workbook ({type(error).__name__}: {error})") from None
    try:
        names = workbook.sheetnames
        if spec.sheet is None:
            sheet = workbook.worksheets[0]
        elif isinstance(spec.sheet, int):
            if not 0 <= spec.sheet < len(names):
                raise SourceFormatError(path, f"sheet index {spec.sheet} does not exist; the workbook has sheets "
                                              f"{', '.join(map(repr, names))} (index from 0)")
            sheet = workbook.worksheets[spec.sheet]
        elif str(spec.sheet) in names:
            sheet = workbook[str(spec.sheet)]
        else:
            raise SourceFormatError(path, f"sheet {spec.sheet!r} not found; the workbook has sheets "
                                          f"{', '.join(map(repr, names))}")
        if hasattr(sheet, "reset_dimensions"):
            sheet.reset_dimensions()  # some writers record wrong dimensions; read every cell present
        try:
            rows = [(number, list(cells)) for number, cells in
                    enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1)]
        except Exception as error:
            raise SourceFormatError(path, f"cannot read sheet {sheet.title!r} ({type(error).__name__}: {error})") \
                from None
    finally:
        workbook.close()
    return _collect(path, rows, spec.header_row)


def _read_parquet(path: Path, spec: TableSpec) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise SourceFormatError(path, f"cannot read as a Parquet file ({error})") from None
    if frame.columns.empty:
        raise SourceFormatError(path, "the file has no columns; expected one column per source field", line=1)
    frame = frame.astype(object).where(frame.notna(), None)
    if spec.header_row != 1:
        raise SourceSpecError("table spec: header_row applies to CSV and XLSX files, not Parquet")
    header = [str(name) for name in frame.columns]
    # Parquet has no lines: the schema is reported as line 1 and row i (from 0) as line i + 1
    rows = ((index + 1, list(values)) for index, values in enumerate(frame.itertuples(index=False, name=None)))
    table = _collect(path, [(0, header), *rows], header_row=0)
    table.header_line = 1
    return table


def read_raw(spec: TableSpec, path: Path) -> RawTable:
    """Return the header, rows and source lines of ``path`` (kind chosen by its extension)."""
    if not path.exists():
        raise SourceFormatError(path, "file not found")
    if path.is_dir():
        raise SourceFormatError(path, "is a folder; expected a CSV, Parquet or XLSX file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, spec)
    if suffix in XLSX_SUFFIXES:
        return _read_xlsx(path, spec)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, spec)
    if suffix == ".xls":
        raise SourceFormatError(path, "legacy .xls workbooks are not read; save the sheet as .xlsx or CSV")
    raise SourceFormatError(
        path, f"unknown file extension {suffix!r}; expected one of "
              f"{', '.join(CSV_SUFFIXES + XLSX_SUFFIXES + PARQUET_SUFFIXES)}"
    )


# ---------------------------------------------------------------------------------------------
# Mapping to the canonical table
# ---------------------------------------------------------------------------------------------


def _delimiter_hint(table: RawTable, spec: TableSpec, missing: Sequence[str], path: Path) -> str:
    if table.header_text is None:
        return ""
    configured = spec.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    best, best_found = None, 0
    for candidate in _DELIMITER_NAMES:
        if candidate == configured:
            continue
        names = {name.strip() for name in next(csv.reader([table.header_text], delimiter=candidate), [])}
        found = sum(column in names for column in missing)
        if found > best_found:
            best, best_found = candidate, found
    if best is None:
        return ""
    return (f"; the file looks {best!r}-delimited ({_DELIMITER_NAMES[best]}), not {configured!r}: "
            f"set delimiter: {best!r} in the source configuration")


def _closest(column: str, names: Sequence[str]) -> str | None:
    """Return the header name most like ``column`` (case and unit brackets ignored), or None."""

    def bare(text: str) -> str:
        return re.sub(r"\s*[(\[].*?[)\]]", "", text).strip().lower()

    def score(name: str) -> float:
        return max(difflib.SequenceMatcher(None, column.lower(), name.lower()).ratio(),
                   difflib.SequenceMatcher(None, bare(column), bare(name)).ratio())

    best = max(names, key=score, default=None)
    return best if best is not None and score(best) >= 0.75 else None


def check_header(table: RawTable, spec: TableSpec, path: Path) -> tuple[dict[str, int], list[str]]:
    """Return the position of each header name and the table-level warnings; raise if a mapped column is absent."""
    index = {name.strip(): i for i, name in enumerate(table.header) if name.strip()}
    wanted = [m.column for m in spec.columns.values() if not (m.optional and m.column not in index)]
    wanted += [g.column for g in spec.gene_columns]
    absent = list(dict.fromkeys(column for column in wanted if column not in index))
    if absent:
        hint = _delimiter_hint(table, spec, absent, path)
        if hint:
            message = f"expected column(s) {', '.join(map(repr, absent))} not found{hint}"
        else:
            suggestions = []
            for column in absent:
                close = _closest(column, list(index))
                if close:
                    suggestions.append(f"{column!r} → did you mean {close!r}?")
            message = (
                f"mapped column(s) {', '.join(map(repr, absent))} not found in the header"
                + (f" ({'; '.join(suggestions)})" if suggestions else "")
                + f"; the file has {', '.join(map(repr, index)) or 'no named columns'}"
            )
        raise SourceFormatError(path, message, line=table.header_line, column=absent[0])
    warnings = []
    used = spec.used_columns
    unused = [name for name in index if name not in used and name not in spec.ignore]
    for name in unused:
        warnings.append(
            f"column {name!r} is neither mapped nor listed under ignore; its values are not used "
            "(map it or add it to `ignore:` in the source configuration)"
        )
    for position, name in enumerate(table.header):
        if not name.strip() and any(not is_missing_cell(row[position], frozenset({""})) for row in table.rows):
            warnings.append(f"column {position + 1} has no header name but holds values; they are not used")
    return index, warnings


def _map_row(cells: Sequence[Any], spec: TableSpec, index: Mapping[str, int], key: bytes | None
             ) -> tuple[dict[str, Any], list[FieldError], list[tuple[str, str]]]:
    """Return one row's canonical fields, its cell errors and the (field, code) pairs read as missing
    under ``unlisted: missing``."""
    row: dict[str, Any] = dict(spec.constants)
    errors: list[FieldError] = []
    unlisted: list[tuple[str, str]] = []
    for name, mapping in spec.columns.items():
        raw = cells[index[mapping.column]]
        listed = mapping.values is not None and raw is not None and cell_key(raw) in mapping.values
        if not listed and is_missing_cell(raw, spec.missing):  # a code listed under `values:` wins
            row[name] = None
            continue
        if mapping.reads_as_missing(raw):
            unlisted.append((name, cell_text(raw)))
            row[name] = None
            continue
        try:
            value = mapping.convert(raw, spec.decimal)
        except _CellError as error:
            errors.append(FieldError(field=name, value=raw, message=str(error)))
            row[name] = None
            continue
        if name == "patient_id" and spec.pseudonymise and value is not None:
            value = pseudonymise(value, key)
        row[name] = value
    if spec.gene_columns:
        given = row.get("alterations")  # None = no alterations column or not sequenced
        items = [given] if given else []
        tested = given is not None
        for gene in spec.gene_columns:
            raw = cells[index[gene.column]]
            if not is_missing_cell(raw, spec.missing):
                tested = True
                items.extend(gene.items(raw))
        row["alterations"] = "; ".join(items) if tested else None
    return row, errors, unlisted


def absent_optional(table: RawTable, spec: TableSpec) -> list[ColumnMapping]:
    """The mappings marked ``optional`` whose column is not in ``table``'s header."""
    header = {name.strip() for name in table.header}
    return [m for m in spec.columns.values() if m.optional and m.column not in header]


def absent_notice(absent: Sequence[ColumnMapping]) -> str:
    """The one notice naming the optional columns a file lacks and the fields missing for every row."""
    pairs = ", ".join(f"{m.column!r} → {m.field}" for m in absent)
    regimen = any(m.field == "regimen" for m in absent)
    return (f"{len(absent)} optional column(s) absent from the file: {pairs}; "
            "these fields are missing for every row (the models score them as missing)"
            + ("; with the regimen unrecorded, `evaluate` and `score` average over the regimens of the class "
               "weighted by their training prevalence" if regimen else ""))


def map_table(table: RawTable, spec: TableSpec,
              path: Path) -> tuple[pd.DataFrame, dict[int, list[FieldError]], list[str], list[str]]:
    """Return the canonical-field frame of ``table``, the cell errors per row position, table warnings and
    notices (one per code read as missing under ``unlisted: missing``, naming its lines).

    An optional mapping whose column the file lacks gives its field as missing (None) in every row."""
    index, warnings = check_header(table, spec, path)
    absent = absent_optional(table, spec)
    if absent:
        spec = replace(spec, columns={name: m for name, m in spec.columns.items() if m not in absent})
    key = pseudonym_key() if spec.pseudonymise else None
    rows, errors = [], {}
    unlisted: dict[tuple[str, str], list[int]] = defaultdict(list)  # (field, code) → file lines
    for position, cells in enumerate(table.rows):
        if position in table.problems:
            rows.append({})
            errors[position] = [FieldError(field="row", value=None, message=table.problems[position])]
            continue
        row, row_errors, codes = _map_row(cells, spec, index, key)
        for code in codes:
            unlisted[code].append(table.lines[position])
        rows.append(row)
        if row_errors:
            errors[position] = row_errors
    frame = pd.DataFrame(rows, columns=[*spec.fields, *(m.field for m in absent)], dtype=object)
    frame = frame[[name for name in COHORT_COLUMNS if name in frame.columns]]
    frame = frame.astype(object).where(frame.notna(), None)
    return frame, errors, warnings, [_unlisted_notice(spec.columns[name], code, lines)
                                    for (name, code), lines in unlisted.items()]


def _unlisted_notice(mapping: ColumnMapping, code: str, lines: Sequence[int], shown: int = 5) -> str:
    """The notice for one code outside ``mapping.values`` read as missing on ``lines`` (file lines)."""
    more = f", … {len(lines) - shown} more" if len(lines) > shown else ""
    where = ", ".join(map(str, lines[:shown])) + more
    what = ("scored with the regimen unrecorded (the training mix of its class)" if mapping.field == "regimen"
            else "scored with the field missing")
    return (f"{len(lines)} row(s) (line {where}): {mapping.field}: {code!r} in column {mapping.column!r} is not "
            f"one of the coded values ({', '.join(mapping.labels)}); read as missing (`unlisted: missing`), {what}")


def _duplicate_ids(frame: pd.DataFrame, lines: Sequence[int]) -> list[str]:
    if "patient_id" not in frame:
        return []
    seen: dict[str, list[int]] = defaultdict(list)
    for value, line in zip(frame["patient_id"], lines):
        if value is not None:
            seen[value].append(line)
    return [f"patient_id {value!r} appears on lines {', '.join(map(str, found))}; expected one row per patient"
            for value, found in seen.items() if len(found) > 1]


def _with_columns(errors: Sequence[FieldError], spec: TableSpec) -> list[FieldError]:
    """Return schema errors with the source column of their field appended (``[column 'Albumin (g/L)' × 0.1]``)."""
    named = []
    for error in errors:
        root = error.field.split(".")[0]
        columns = [spec.columns[root].column] if root in spec.columns else []
        if root == "alterations":
            columns += [gene.column for gene in spec.gene_columns]
        if not columns:
            named.append(error)
            continue
        scale = spec.columns[root].scale if root in spec.columns else None
        where = " or ".join(repr(column) for column in columns)
        where = f"column {where}" + (f" × {scale:g}" if scale not in (None, 1.0) else "")
        named.append(FieldError(field=error.field, value=error.value, message=f"{error.message} [{where}]"))
    return named


def read_table(spec: dict, path: str | Path) -> ParsedCohort:
    """Read a CSV / Parquet / XLSX cohort table through ``spec``; return every valid row and every rejected one.

    Rows are validated by :func:`dataset.parse_cohort`; a row is rejected (with its source line) when a
    cell cannot be converted (not a number, a code outside its `values:` map) or the record fails the
    schema. Raises :class:`SourceFormatError` when the file cannot be read as a table (empty, wrong
    delimiter, a mapped column absent, not a workbook), and :class:`SourceSpecError` for a bad spec.
    """
    path = Path(path)
    table_spec = TableSpec.from_dict(spec)
    if table_spec.pseudonymise:
        pseudonym_key()  # fail before reading anything if the key is not set
    table = read_raw(table_spec, path)
    frame, cell_errors, warnings, unlisted = map_table(table, table_spec, path)
    absent = absent_optional(table, table_spec)
    notices = ([absent_notice(absent)] if absent else []) + unlisted
    lines = table.lines
    warnings += _duplicate_ids(frame, lines)
    if "cancer_type" not in table_spec.fields:
        default = PatientRecord.model_fields["cancer_type"].default
        warnings.append(f"cancer_type is neither mapped nor a constant: every patient is taken as {default!r} "
                        "(the schema default)")

    good = [i for i in range(len(frame)) if i not in cell_errors]
    checked = parse_cohort(frame.iloc[good].reset_index(drop=True), [lines[i] for i in good])
    rejected = [RowError(good[e.row], e.line, _with_columns(e.errors, table_spec)) for e in checked.rejected]

    bad = [i for i in sorted(cell_errors) if i not in table.problems]
    schema_errors: dict[int, list[FieldError]] = {}
    if bad:
        rechecked = parse_cohort(frame.iloc[bad].reset_index(drop=True), [lines[i] for i in bad])
        schema_errors = {bad[e.row]: e.errors for e in rechecked.rejected}
    for position, errors in cell_errors.items():
        cells_at_fault = {error.field for error in errors}
        also = [e for e in schema_errors.get(position, []) if e.field.split(".")[0] not in cells_at_fault]
        rejected.append(RowError(position, lines[position], errors + _with_columns(also, table_spec)))
    rejected.sort(key=lambda error: error.row)

    return ParsedCohort(
        n_read=len(frame), records=checked.records, outcomes=checked.outcomes, rejected=rejected,
        warnings=warnings + checked.warnings, notices=notices + checked.notices,
    )
