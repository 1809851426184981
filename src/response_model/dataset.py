"""The canonical cohort table: patient-record fields + regimen given + outcomes, stored as Parquet.

Every source (simulator, cBioPortal study, hospital table) produces this table; training reads it.
One row per patient. ``alterations`` is stored as a JSON list (``null`` = not sequenced).
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from response_model.config import load_yaml
from response_model.regimens import load_catalogue
from response_model.schema import (
    INPUT_FIELDS,
    Alteration,
    FieldError,
    PatientRecord,
    _reject,
    field_errors,
    unseen_cancer_type_warning,
)


class BestOverallResponse(StrEnum):
    """RECIST 1.1 best overall response."""

    CR = "CR"
    PR = "PR"
    SD = "SD"
    PD = "PD"


def resistance_window_months() -> float:
    """Return the primary-resistance window (months) of ``configs/outcomes.yaml``."""
    return float(load_yaml("outcomes.yaml")["primary_resistance"]["window_months"])


def derive_primary_resistance(
    best_overall_response: str | None, pfs_months: float | None, pfs_event: int | None
) -> int | None:
    """Return primary resistance (1/0) by the definition in hcc-evidence.md, or None if not evaluable.

    1: progression as best response, or progression/death within the window (6 months);
    0: neither, with progression-free follow-up reaching the window; None: censored before it.
    """
    window = resistance_window_months()
    if best_overall_response == BestOverallResponse.PD:
        return 1
    if pfs_months is None:
        return None
    if pfs_event == 1 and pfs_months < window:
        return 1
    if pfs_months >= window:
        return 0
    return None


class TreatmentOutcome(BaseModel):
    """The regimen a patient received and what happened."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    regimen: str | None = Field(default=None, description="Catalogue regimen or drug class given")
    best_overall_response: BestOverallResponse | None = None
    objective_response: int | None = Field(default=None, ge=0, le=1, description="1 = CR or PR")
    primary_resistance: int | None = Field(default=None, ge=0, le=1)
    pfs_months: float | None = Field(default=None, ge=0, le=600)
    pfs_event: int | None = Field(default=None, ge=0, le=1, description="1 = progressed or died")
    os_months: float | None = Field(default=None, ge=0, le=600)
    os_event: int | None = Field(default=None, ge=0, le=1, description="1 = died")

    @field_validator("regimen")
    @classmethod
    def _known_regimen(cls, value: str | None) -> str | None:
        if value is not None and value not in load_catalogue():
            raise _reject(
                "unknown_regimen",
                f"regimen: {value!r} is not in the catalogue; expected one of {', '.join(load_catalogue())}",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TreatmentOutcome:
        bor = self.best_overall_response
        if bor is not None:
            implied = int(bor in (BestOverallResponse.CR, BestOverallResponse.PR))
            if self.objective_response is None:
                self.objective_response = implied
            elif self.objective_response != implied:
                raise _reject(
                    "inconsistent_response",
                    f"objective_response: {self.objective_response} contradicts best_overall_response "
                    f"{bor.value}; expected {implied}",
                )
        for months, event in (("pfs_months", "pfs_event"), ("os_months", "os_event")):
            if (getattr(self, months) is None) != (getattr(self, event) is None):
                raise _reject("incomplete_survival", f"{months}/{event}: give both or neither")
        if self.pfs_months is not None and self.os_months is not None and self.pfs_months > self.os_months + 0.01:
            raise _reject(
                "inconsistent_survival",
                f"pfs_months: {self.pfs_months:g} exceeds os_months {self.os_months:g}; expected PFS ≤ OS",
            )
        derived = derive_primary_resistance(
            bor.value if bor is not None else None, self.pfs_months, self.pfs_event
        )
        if self.primary_resistance is None:
            self.primary_resistance = derived
        elif derived is not None and derived != self.primary_resistance:
            raise _reject(
                "inconsistent_resistance",
                f"primary_resistance: {self.primary_resistance} contradicts best response and PFS "
                f"(which give {derived})",
            )
        return self


OUTCOME_FIELDS: tuple[str, ...] = tuple(TreatmentOutcome.model_fields)
COHORT_COLUMNS: tuple[str, ...] = INPUT_FIELDS + OUTCOME_FIELDS


def _pandas_dtype(annotation: Any) -> str:
    """Return the canonical pandas dtype of a pydantic field annotation."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)] if isinstance(
        annotation, UnionType) or typing.get_origin(annotation) is typing.Union else [annotation]
    base = args[0] if args else annotation
    if base is bool:
        return "boolean"
    if base is int:
        return "Int64"
    if base is float:
        return "float64"
    return "object"


COLUMN_DTYPES: dict[str, str] = {
    **{name: _pandas_dtype(info.annotation) for name, info in PatientRecord.model_fields.items()},
    **{name: _pandas_dtype(info.annotation) for name, info in TreatmentOutcome.model_fields.items()},
}
COLUMN_DTYPES["alterations"] = "object"


# ---------------------------------------------------------------------------------------------
# Record ⇄ row
# ---------------------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    """Return True for None, NaN and pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def alterations_to_json(alterations: Sequence[Alteration] | None) -> str | None:
    """Return the JSON text stored in the ``alterations`` column (None = not sequenced)."""
    if alterations is None:
        return None
    return json.dumps([alt.model_dump(mode="json") for alt in alterations], separators=(",", ":"))


def record_to_row(record: PatientRecord) -> dict[str, Any]:
    """Return the input fields of ``record`` as one table row (enums as strings)."""
    row = record.model_dump(mode="json", include=set(INPUT_FIELDS))
    row["alterations"] = alterations_to_json(record.alterations)
    return row


def _clean(value: Any) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def row_to_record(row: Mapping[str, Any]) -> PatientRecord:
    """Return the patient record of one table row; raises ``ValidationError``.

    ``alterations`` may be a JSON list, the compact text ``GENE p.CHANGE; GENE KIND``, or a list.
    """
    data = {name: _clean(row[name]) for name in INPUT_FIELDS if name in row}
    return clean_row_to_record({name: value for name, value in data.items() if value is not None})


def clean_row_to_record(data: dict[str, Any]) -> PatientRecord:
    """:func:`row_to_record` of a row already cleaned: input fields only, Python values, missing ones
    left out (batch scoring cleans whole columns at once); raises ``ValidationError``."""
    alterations = data.get("alterations")
    if isinstance(alterations, str) and alterations.lstrip().startswith("["):
        try:
            data["alterations"] = json.loads(alterations)
        except json.JSONDecodeError as error:
            raise ValidationError.from_exception_data(
                "PatientRecord",
                [{"type": _reject("alterations_json", f"alterations: not valid JSON ({error.msg})"),
                  "loc": ("alterations",), "input": alterations}],
            ) from None
    # lax: a table's cells are text or numbers of any kind ("64", 1 for yes), converted by the schema;
    # JSON clients are held to the strict schema
    return PatientRecord.model_validate(data, strict=False)


def row_to_outcome(row: Mapping[str, Any]) -> TreatmentOutcome:
    """Return the treatment outcome of one table row; raises ``ValidationError``."""
    data = {name: _clean(row[name]) for name in OUTCOME_FIELDS if name in row}
    return TreatmentOutcome.model_validate({k: v for k, v in data.items() if v is not None})


def cohort_frame(records: Sequence[PatientRecord], outcomes: Sequence[TreatmentOutcome]) -> pd.DataFrame:
    """Return the canonical cohort table of matched records and outcomes (one row each)."""
    if len(records) != len(outcomes):
        raise ValueError(f"{len(records)} records but {len(outcomes)} outcomes; expected one each")
    rows = [{**record_to_row(r), **o.model_dump(mode="json")} for r, o in zip(records, outcomes)]
    return normalise_frame(pd.DataFrame(rows, columns=list(COHORT_COLUMNS)))


def normalise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every canonical column, in canonical order and dtype."""
    out = pd.DataFrame(index=range(len(frame)))
    for column in COHORT_COLUMNS:
        values = frame[column].tolist() if column in frame else [None] * len(frame)
        values = [None if is_missing(v) else v for v in values]
        dtype = COLUMN_DTYPES[column]
        out[column] = pd.array(values, dtype=dtype) if dtype != "object" else pd.Series(values, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------
# Validation of a whole table: every bad row reported, nothing dropped silently
# ---------------------------------------------------------------------------------------------


@dataclass
class RowError:
    """A rejected row: its position, the source line it came from (if known) and why."""

    row: int
    line: int | None
    errors: list[FieldError]

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else f"row {self.row}"
        return f"{where}: " + "; ".join(str(error) for error in self.errors)


@dataclass
class ParsedCohort:
    """The result of validating a cohort table."""

    n_read: int
    records: list[PatientRecord] = field(default_factory=list)
    outcomes: list[TreatmentOutcome] = field(default_factory=list)
    rejected: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: File-level facts reported once (not per row): optional columns absent, unseen cancer types, …
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return not self.rejected

    def frame(self) -> pd.DataFrame:
        """Return the canonical table of the valid rows."""
        return cohort_frame(self.records, self.outcomes)


def parse_cohort(frame: pd.DataFrame, line_numbers: Sequence[int] | None = None) -> ParsedCohort:
    """Validate every row of a canonical table; return the records and every rejected row with its reasons."""
    missing = [c for c in ("age", "sex") if c not in frame.columns]
    if missing:
        raise ValueError(f"cohort table lacks required column(s) {', '.join(missing)}")
    parsed = ParsedCohort(n_read=len(frame))
    unseen: dict[str, list[str]] = {}
    for position, row in enumerate(frame.to_dict(orient="records")):
        line = line_numbers[position] if line_numbers is not None else None
        errors: list[FieldError] = []
        record = outcome = None
        try:
            record = row_to_record(row)
        except ValidationError as error:
            errors.extend(field_errors(error))
        try:
            outcome = row_to_outcome(row)
        except ValidationError as error:
            errors.extend(field_errors(error))
        if errors:
            parsed.rejected.append(RowError(position, line, errors))
            continue
        parsed.records.append(record)
        parsed.outcomes.append(outcome)
        where = f"line {line}" if line is not None else f"row {position}"
        if record.unseen_cancer_type:  # one notice per value below, not one warning per row
            unseen.setdefault(record.cancer_type, []).append(where)
        parsed.warnings.extend(f"{where}: {warning}" for warning in record.warnings()
                               if not (record.unseen_cancer_type and warning.startswith("cancer_type:")))
    parsed.notices.extend(_unseen_notice(value, wheres) for value, wheres in unseen.items())
    return parsed


def _unseen_notice(value: str, wheres: Sequence[str], shown: int = 5) -> str:
    more = f", … ({len(wheres) - shown} more)" if len(wheres) > shown else ""
    return f"{len(wheres)} row(s) ({', '.join(wheres[:shown])}{more}): {unseen_cancer_type_warning(value)}"


def missingness(frame: pd.DataFrame, columns: Iterable[str] = COHORT_COLUMNS) -> pd.Series:
    """Return the fraction (0–1) of missing values per canonical column."""
    return pd.Series({c: float(frame[c].isna().mean()) if c in frame else 1.0 for c in columns}, name="missing")


# ---------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------


def write_cohort(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the canonical table to Parquet (deterministic bytes for identical content); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(normalise_frame(frame), preserve_index=False)
    pq.write_table(table, path, compression="zstd", write_statistics=False)
    return path


def read_cohort(path: str | Path) -> pd.DataFrame:
    """Read a canonical cohort Parquet file (columns in canonical order and dtype)."""
    frame = pd.read_parquet(path)
    unknown = set(frame.columns) - set(COHORT_COLUMNS)
    if unknown:
        raise ValueError(f"{path}: unexpected column(s) {', '.join(sorted(unknown))}; not a canonical cohort table")
    return normalise_frame(frame)
