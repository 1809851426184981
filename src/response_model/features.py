"""The one feature function: patient records (+ regimen) → feature matrix.

Training, batch scoring and the API all call :func:`build_feature_matrix`, so what a model sees
at serving time is computed exactly as at training time. Every column is float64; a missing
input is NaN (the learners handle it), never imputed here.
"""

from __future__ import annotations

import enum
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter

import numpy as np
import pandas as pd

from response_model.pathways import load_pathways, pathway_flags
from response_model.regimens import TARGETS, candidate_regimens, get_regimen, regimen_classes
from response_model.schema import (
    VIRAL_AETIOLOGIES,
    Aetiology,
    Ascites,
    BCLCStage,
    Encephalopathy,
    Exposure,
    MSIStatus,
    PatientRecord,
    Sex,
    cancer_types,
)

NUMERIC_FIELDS = (
    "age", "ecog", "albumin", "bilirubin", "inr", "lesion_count", "largest_lesion_cm", "nlr",
    "platelets", "haemoglobin", "bmi", "line_of_therapy", "pdl1_tps", "pdl1_cps", "cd8_density",
    "teff_signature", "treg_signature", "myeloid_signature", "tmb", "fcna", "hed",
)
BINARY_FIELDS = (
    "macrovascular_invasion", "extrahepatic_spread", "stage_iv", "diabetes", "prior_systemic_therapy",
    "hla_loh",
)
ORDINAL_FIELDS = {
    "ascites": list(Ascites),
    "encephalopathy": list(Encephalopathy),
    "bclc_stage": list(BCLCStage),
    "alcohol_use": list(Exposure),
    "smoking": list(Exposure),
}
CHILD_PUGH_ORDINAL = {"A": 1.0, "B": 2.0, "C": 3.0}


def _cancer_type_column(name: str) -> str:
    return "cancer_type_" + "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def cancer_type_column(name: str) -> str:
    """Return the one-hot feature column of cancer type ``name`` (``Head & Neck`` → ``cancer_type_head___neck``)."""
    return _cancer_type_column(name)


@lru_cache(maxsize=1)
def patient_feature_names() -> tuple[str, ...]:
    """Return the names of the patient (regimen-independent) features, in matrix order."""
    names = list(NUMERIC_FIELDS)
    names += ["afp_log10", "albi_score", "albi_grade", "child_pugh_score", "child_pugh_class", "sex_male"]
    names += list(BINARY_FIELDS) + list(ORDINAL_FIELDS)
    names += ["msi_high", "aetiology_viral"] + [f"aetiology_{a.value}" for a in Aetiology]
    names += [_cancer_type_column(c) for c in cancer_types()]
    names += ["genotyped", "n_alterations"] + [p.name for p in load_pathways()]
    return tuple(names)


@lru_cache(maxsize=1)
def regimen_feature_names() -> tuple[str, ...]:
    """Return the names of the regimen features: class, mechanism targets and regimen one-hot."""
    return (
        tuple(f"class_{c}" for c in regimen_classes())
        + tuple(f"target_{t}" for t in TARGETS)
        + tuple(f"regimen_{r.name}" for r in candidate_regimens())
    )


def feature_names(with_regimen: bool = True) -> tuple[str, ...]:
    """Return the column names of :func:`build_feature_matrix`, in order."""
    return patient_feature_names() + (regimen_feature_names() if with_regimen else ())


@lru_cache(maxsize=2)
def _column_index(with_regimen: bool) -> pd.Index:
    # built once: making an Index of ~170 names costs more than filling a one-patient matrix
    return pd.Index(feature_names(with_regimen), dtype=object)


def _patient_block(records: Sequence[PatientRecord]) -> np.ndarray:
    """The patient features of ``records``, one row each, in :func:`patient_feature_names` order;
    float64, NaN = missing. Built column by column (one pass over the records per field)."""
    nan = math.nan
    out = np.empty((len(records), len(patient_feature_names())))
    columns = iter(range(out.shape[1]))

    def put(values: Sequence[float]) -> None:
        out[:, next(columns)] = values

    def field(name: str) -> list:
        return list(map(attrgetter(name), records))

    # a float array takes None as NaN and booleans as 0 / 1: such lists go in as they are
    for name in NUMERIC_FIELDS:
        put(field(name))
    put([nan if v is None else math.log10(v + 1.0) for v in field("afp")])
    put(field("albi_score"))
    put(field("albi_grade"))
    put(field("child_pugh_score"))
    put([CHILD_PUGH_ORDINAL.get(v.value if v else "", nan) for v in field("child_pugh_class")])
    put([v is Sex.male for v in field("sex")])
    for name in BINARY_FIELDS:
        put(field(name))
    for name, levels in ORDINAL_FIELDS.items():
        level = {value: float(k) for k, value in enumerate(levels)}
        put([nan if v is None else level[v] for v in field(name)])
    put([nan if v is None else v is MSIStatus.MSI_H for v in field("msi_status")])
    aetiology = field("aetiology")
    put([nan if v in (None, Aetiology.unknown) else v in VIRAL_AETIOLOGIES for v in aetiology])
    for a in Aetiology:
        put([nan if v is None else v is a for v in aetiology])
    cancer_type = field("cancer_type")
    # a type the vocabulary lacks has every cancer-type column missing, not 0: the model knows nothing of
    # it, and 0 in all of them is a pattern training never had (every patient there has exactly one 1)
    known = frozenset(cancer_types())
    unseen = [v not in known for v in cancer_type]
    for c in cancer_types():
        put([nan if u else v == c for v, u in zip(cancer_type, unseen)] if any(unseen) else
            [v == c for v in cancer_type])
    alterations = field("alterations")
    put([v is not None for v in alterations])
    # each distinct alteration once (the schema refuses repeats; a record built another way counts the same)
    put([nan if v is None else len({alt.label() for alt in v}) for v in alterations])
    n_pathways = len(load_pathways())
    flags = np.array([[nan] * n_pathways if v is None else pathway_flags(v) for v in alterations],
                     dtype=np.float64).reshape(len(records), n_pathways)
    for k in range(n_pathways):
        put(flags[:, k])
    if next(columns, None) is not None:
        raise RuntimeError("patient feature columns left unfilled")
    return out


def _regimen_features(regimen_name: str | None) -> list[float]:
    width = len(regimen_feature_names())
    if regimen_name is None:
        return [math.nan] * width
    regimen = get_regimen(regimen_name)
    values = [float(regimen.regimen_class == c) for c in regimen_classes()]
    values += [float(t in regimen.targets) for t in TARGETS]
    values += [float(r.name == regimen.name) for r in candidate_regimens()]
    return values


@dataclass(frozen=True)
class FeatureBlocks:
    """The feature matrix in factored form: row k is ``patient[patient_index[k]]`` followed (when
    there are regimens) by ``regimen[regimen_index[k]]`` — each patient's and each regimen's features
    computed once, however many rows they appear in."""

    patient: np.ndarray  # (patients, len(patient_feature_names())) float64
    patient_index: np.ndarray  # one patient position per row
    regimen: np.ndarray | None = None  # (regimens, len(regimen_feature_names())) float64
    regimen_index: np.ndarray | None = None  # one regimen position per row

    @classmethod
    def of_pairs(cls, records: Sequence[PatientRecord], patient_index: np.ndarray,
                 regimens: Sequence[str | None] | None = None,
                 regimen_index: np.ndarray | None = None) -> FeatureBlocks:
        """The blocks of rows (``records[patient_index[k]]``, ``regimens[regimen_index[k]]``)."""
        patient = _patient_block(records)
        if regimens is None:
            return cls(patient, np.asarray(patient_index, dtype=np.intp))
        regimen = np.array([_regimen_features(name) for name in regimens], dtype=np.float64).reshape(
            len(regimens), len(regimen_feature_names()))
        return cls(patient, np.asarray(patient_index, dtype=np.intp), regimen,
                   np.asarray(regimen_index, dtype=np.intp))

    def __len__(self) -> int:
        return len(self.patient_index)

    def subset(self, rows: np.ndarray) -> FeatureBlocks:
        """The blocks of the rows ``rows`` (positions or a boolean mask) only."""
        return FeatureBlocks(self.patient, self.patient_index[rows], self.regimen,
                             None if self.regimen_index is None else self.regimen_index[rows])

    def take(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``matrix()[np.ix_(rows, columns)]`` without building the whole matrix (columns: positions
        in :func:`feature_names` order)."""
        columns = np.asarray(columns, dtype=np.intp)
        width = self.patient.shape[1]
        out = np.empty((len(rows), len(columns)))
        of_patient = columns < width
        # np.take row- then column-wise: quicker than indexing with np.ix_
        out[:, of_patient] = np.take(np.take(self.patient, self.patient_index[rows], axis=0),
                                     columns[of_patient], axis=1)
        if not of_patient.all():
            out[:, ~of_patient] = np.take(np.take(self.regimen, self.regimen_index[rows], axis=0),
                                          columns[~of_patient] - width, axis=1)
        return out

    def matrix(self) -> np.ndarray:
        """The feature matrix (rows × :func:`feature_names`), float64, NaN = missing."""
        if self.regimen is None:
            return self.patient[self.patient_index]
        return np.hstack([self.patient[self.patient_index], self.regimen[self.regimen_index]])

    def frame(self) -> pd.DataFrame:
        """:meth:`matrix` with its column names (:func:`feature_names`)."""
        columns = _column_index(self.regimen is not None)
        return pd.DataFrame(self.matrix(), columns=columns.copy())  # a copy: renaming one must not rename the cache


def build_feature_matrix(
    records: Sequence[PatientRecord],
    regimens: Sequence[str | None] | str | None = None,
) -> pd.DataFrame:
    """Return the feature matrix (one float64 row per record; NaN = missing).

    ``regimens`` gives the regimen of each row (one name for all rows, or one per record); with
    ``None`` the matrix holds patient features only. Column order is :func:`feature_names`.
    """
    # a record repeated (one row per candidate regimen) and a regimen repeated are computed once,
    # then gathered by index (the same float64 values as building every row in Python)
    position: dict[int, int] = {}
    unique: list[PatientRecord] = []
    for record in records:
        if id(record) not in position:
            position[id(record)] = len(unique)
            unique.append(record)
    which = np.fromiter((position[id(record)] for record in records), dtype=np.intp, count=len(records))
    if regimens is None:
        return FeatureBlocks.of_pairs(unique, which).frame()
    per_row = [regimens] * len(records) if isinstance(regimens, str) else list(regimens)
    if len(per_row) != len(records):
        raise ValueError(f"{len(records)} records but {len(per_row)} regimens; expected one each")
    names = list(dict.fromkeys(per_row))
    index = {name: k for k, name in enumerate(names)}
    regimen_index = np.fromiter((index[name] for name in per_row), dtype=np.intp, count=len(per_row))
    return FeatureBlocks.of_pairs(unique, which, names, regimen_index).frame()


# ---------------------------------------------------------------------------------------------
# Which columns a record field decides (for masking fields at the column level)
# ---------------------------------------------------------------------------------------------

REQUIRED_FIELDS: tuple[str, ...] = tuple(
    name for name, info in PatientRecord.model_fields.items() if info.is_required())


def _optional(name: str) -> bool:
    """True when the record field ``name`` may be None (``cancer_type`` has a default, not None)."""
    return type(None) in typing.get_args(PatientRecord.model_fields[name].annotation)


def hide_fields(record: PatientRecord, fields: Sequence[str]) -> PatientRecord:
    """``record`` with ``fields`` set to None (not re-validated: values derived at validation, such as
    NLR from the counts or a Child-Pugh class from its five items, stay as recorded; the computed scores
    — ALBI, Child-Pugh points — follow from what is left)."""
    return record.model_copy(update=dict.fromkeys(fields))


def _probe_value(name: str, variant: int):
    """A valid value of field ``name`` (variant 0 or 1 differ wherever the type allows)."""
    from response_model.schema import Alteration, field_ranges

    info = PatientRecord.model_fields[name]
    base = next(a for a in typing.get_args(info.annotation) if a is not type(None))
    if name == "line_of_therapy":
        return 1 + variant
    if name == "prior_systemic_therapy":
        return bool(variant)  # consistent with the line above
    if name == "bclc_stage":  # consistent with the invasion and spread below (true in variant 0)
        return BCLCStage.terminal if variant == 0 else BCLCStage.advanced
    if base is bool:
        return not variant
    if isinstance(base, type) and issubclass(base, enum.Enum):
        members = list(base)
        return members[0] if variant == 0 else members[-2 if len(members) > 2 else -1]
    if base in (int, float):
        spec = field_ranges().get(name)
        low, high = (spec.min, spec.max) if spec else (0, 4)
        value = low + (high - low) * (0.3 if variant == 0 else 0.6)
        return int(round(value)) if base is int else value
    if typing.get_origin(base) is list:  # alterations: sequenced, something found / nothing found
        return [Alteration.parse("CTNNB1 p.S45P")] if variant == 0 else []
    return f"probe{variant}"


def _probe_records() -> list[PatientRecord]:
    """Two complete records (every optional field given, counts left out so NLR is the given one)."""
    skip = {"neutrophils", "lymphocytes", "child_pugh_class"}  # the class follows from its five items
    records = []
    for variant in (0, 1):
        values = {name: _probe_value(name, variant) for name in PatientRecord.model_fields
                  if _optional(name) and name not in skip and name != "patient_id"}
        records.append(PatientRecord(age=60.0 + variant, sex=list(Sex)[variant], **values))
    return records


@lru_cache(maxsize=1)
def field_columns() -> dict[str, dict[str, float]]:
    """{optional record field: {patient feature column: the column's value when the field is None}}.

    Found by probing :func:`build_feature_matrix` itself (complete records, each field hidden in
    turn), so it cannot drift from the feature logic: hiding a set of fields in a record gives the
    feature row that setting these columns to these values gives
    (:func:`response_model.modeling.missingness.mask_fields`; tested on simulated records and random
    subsets). Fields that decide no column (the counts, the panel name) are left out; hiding
    ``alterations`` sets ``genotyped`` to 0 and its other columns to NaN."""
    probes = _probe_records()
    full = build_feature_matrix(probes).to_numpy()
    found: dict[str, dict[str, float]] = {}
    names = patient_feature_names()
    for name in PatientRecord.model_fields:
        if not _optional(name):
            continue
        hidden = build_feature_matrix([hide_fields(r, [name]) for r in probes]).to_numpy()
        changed = ~((full == hidden) | (np.isnan(full) & np.isnan(hidden)))
        columns: dict[str, float] = {}
        for j in np.flatnonzero(changed.any(axis=0)).tolist():
            values = hidden[:, j]
            if not (np.all(np.isnan(values)) or np.all(values == values[0])):
                raise RuntimeError(f"hiding {name} gives {names[j]} a value that depends on the record")
            columns[names[j]] = float(values[0])
        if columns:
            found[name] = columns
    return found


def hideable_fields() -> tuple[str, ...]:
    """The optional record fields that decide at least one feature column, in schema order."""
    return tuple(field_columns())
