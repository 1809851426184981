"""cBioPortal study folders: read one into the canonical cohort table, or write one from it.

A study folder holds ``data_clinical_patient.txt`` and ``data_clinical_sample.txt`` (tab-separated,
four ``#`` metadata lines before the column header), ``data_mutations.txt`` (or
``data_mutations_extended.txt``; MAF), ``data_cna.txt`` (discrete copy number, −2…2) and
``case_lists/`` (which samples were sequenced / profiled for copy number). Clinical attributes map
to canonical fields through ``configs/sources/cbioportal.yaml``.

Structural problems (a missing file or column, a wrong delimiter, a ragged row, a non-numeric value
in a numeric attribute) raise :class:`~response_model.sources.SourceFormatError` naming file, line
and column. Value problems (an implausible lab value, an unknown gene, an unknown regimen) reject
that patient's row, reported with its line in ``data_clinical_patient.txt``. Everything not used
(several samples of one patient, silent MAF rows, unmapped attributes, …) is reported in
``ParsedCohort.warnings``.

Alteration order: :func:`read_study` returns a sample's mutations in MAF order followed by its
copy-number changes in ``data_cna.txt`` row order; :func:`write_study` writes the copy-number genes
sorted by symbol, so a cohort whose alterations are in that order (see :func:`in_study_order`)
comes back identical.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from response_model.config import load_yaml
from response_model.dataset import (
    COHORT_COLUMNS,
    COLUMN_DTYPES,
    ParsedCohort,
    RowError,
    is_missing,
    normalise_frame,
    parse_cohort,
)
from response_model.schema import COPY_NUMBER_KINDS, AlterationKind, FieldError, PatientRecord
from response_model.sources import SourceFormatError

DEFAULT_CONFIG = "sources/cbioportal.yaml"

PATIENT_FILE = "data_clinical_patient.txt"
SAMPLE_FILE = "data_clinical_sample.txt"
MUTATION_FILES = ("data_mutations.txt", "data_mutations_extended.txt")
CNA_FILE = "data_cna.txt"
CASE_LIST_DIR = "case_lists"

# Spellings of "missing" in cBioPortal files (compared case-insensitively).
NA_VALUES = frozenset({
    "", "na", "n/a", "nan", "null", "[not available]", "[not applicable]", "[unknown]", "[not evaluated]",
    "[pending]", "[discrepancy]", "[completed]", "[null]", "[not reported]",
})
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False,
             "y": True, "n": False, "t": True, "f": False}

# MAF Variant_Classification → alteration kind. 5'Flank / 5'UTR count only on TERT (its promoter).
VARIANT_KINDS: dict[str, AlterationKind] = {
    "Missense_Mutation": AlterationKind.missense,
    "Nonsense_Mutation": AlterationKind.nonsense,
    "Frame_Shift_Del": AlterationKind.frameshift,
    "Frame_Shift_Ins": AlterationKind.frameshift,
    "Splice_Site": AlterationKind.splice,
    "Splice_Region": AlterationKind.splice,
    "In_Frame_Del": AlterationKind.inframe_indel,
    "In_Frame_Ins": AlterationKind.inframe_indel,
    "Fusion": AlterationKind.fusion,
}
TERT_PROMOTER_CLASSES = frozenset({"5'Flank", "5'UTR"})
NON_CODING_CLASSES = frozenset({
    "Silent", "Intron", "3'UTR", "3'Flank", "5'UTR", "5'Flank", "IGR", "RNA", "lincRNA", "Targeted_Region",
    "De_novo_Start_InFrame", "De_novo_Start_OutOfFrame", "Start_Codon_SNP", "Start_Codon_Del",
    "Start_Codon_Ins", "Stop_Codon_Del", "Stop_Codon_Ins", "Unknown",
})
CNA_KINDS = {2.0: AlterationKind.amplification, -2.0: AlterationKind.deep_deletion}
CNA_VALUES = frozenset({-2.0, -1.5, -1.0, 0.0, 1.0, 2.0})

_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_DISPLAY_NAMES = {
    "PATIENT_ID": "Patient Identifier", "SAMPLE_ID": "Sample Identifier", "AGE": "Age", "SEX": "Sex",
    "OS_MONTHS": "Overall Survival (Months)", "OS_STATUS": "Overall Survival Status",
    "PFS_MONTHS": "Progression Free Survival (Months)", "PFS_STATUS": "Progression Free Status",
    "TMB_NONSYNONYMOUS": "TMB (nonsynonymous)", "MSI_TYPE": "MSI Type", "CANCER_TYPE": "Cancer Type",
    "GENE_PANEL": "Gene Panel", "FRACTION_GENOME_ALTERED": "Fraction Genome Altered",
}


# ---------------------------------------------------------------------------------------------
# The attribute mapping
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """One clinical attribute of the mapping: its cBioPortal name, file level, field and value spellings."""

    name: str
    level: str  # "patient" or "sample"
    field: str
    values: tuple[tuple[str, Any], ...] = ()

    @property
    def dtype(self) -> str:
        """Return the cohort-table dtype of the attribute's field."""
        return COLUMN_DTYPES[self.field]

    def lookup(self, text: str) -> tuple[bool, Any]:
        """Return (True, canonical value) when ``text`` is a listed spelling, else (False, None)."""
        lowered = text.lower()
        for spelling, value in self.values:
            if spelling.lower() == lowered:
                if value is not None and self.dtype == "object":
                    value = str(value)
                return True, value
        return False, None


def attribute_map(spec: Mapping[str, Any] | None = None) -> list[Attribute]:
    """Return the attributes of a source spec (default ``configs/sources/cbioportal.yaml``), in order."""
    if spec is None or ("patient_attributes" not in spec and "sample_attributes" not in spec):
        spec = load_yaml(DEFAULT_CONFIG)
    mappable = set(COHORT_COLUMNS) - {"patient_id", "alterations"}
    attributes = []
    for level in ("patient", "sample"):
        for name, entry in (spec.get(f"{level}_attributes") or {}).items():
            if isinstance(entry, str):
                field, values = entry, {}
            elif isinstance(entry, Mapping) and "field" in entry:
                field, values = entry["field"], entry.get("values") or {}
            else:
                raise ValueError(f"{level}_attributes.{name}: expected a field name or {{field: ..., values: ...}}")
            if field not in mappable:
                raise ValueError(
                    f"{level}_attributes.{name}: {field!r} is not a canonical field; expected one of "
                    f"{', '.join(sorted(mappable))}"
                )
            attributes.append(Attribute(str(name), level, field, tuple((str(k), v) for k, v in values.items())))
    return attributes


def unmapped_fields(attributes: Sequence[Attribute] | None = None) -> list[str]:
    """Return the canonical fields (besides patient_id and alterations) no attribute maps to."""
    attributes = attribute_map() if attributes is None else attributes
    mapped = {a.field for a in attributes}
    return [c for c in COHORT_COLUMNS if c not in mapped and c not in ("patient_id", "alterations")]


# ---------------------------------------------------------------------------------------------
# Tab-separated files
# ---------------------------------------------------------------------------------------------


@dataclass
class _Table:
    """A tab-separated file as read: its columns, data rows and their lines."""

    path: Path
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]  # 1-based line of each row, counting the # lines
    header_line: int

    @property
    def name(self) -> str:
        """Return the file name as reported in messages."""
        return _shown(self.path)

    def index(self, column: str) -> int:
        """Return the position of ``column`` in the header."""
        return self.columns.index(column)


def _shown(path: Path) -> str:
    """Return a path as reported in messages: relative to the study folder when possible."""
    if path.parent.name == CASE_LIST_DIR:
        return f"{CASE_LIST_DIR}/{path.name}"
    return path.name


def _read_tsv(path: Path, required: Sequence[str], *, clinical: bool = False, pad_short_rows: bool = False) -> _Table:
    """Read a tab-separated cBioPortal file: leading ``#`` lines, a header, data rows; check its shape."""
    name = _shown(path)
    if not path.is_file():
        raise SourceFormatError(name, "required file is missing from the study folder")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    metadata: list[tuple[int, str]] = []
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        if header is None:
            if line.startswith("#"):
                metadata.append((number, line))
            elif line.strip():
                header_line = number
                header = _header(name, line, number, required)
        elif line.strip():
            rows.append(_row(name, line, number, len(header), pad_short_rows))
            numbers.append(number)
    if header is None:
        raise SourceFormatError(name, "no column header line found; the file is empty")
    if clinical:  # the # lines (display names, descriptions, datatypes, priorities): one cell per column
        for number, line in metadata:
            width = len(line.split("\t"))
            if width != len(header):
                raise SourceFormatError(
                    name, f"the metadata line has {width} field(s) but the header has {len(header)}", line=number)
    return _Table(path, header, rows, numbers, header_line)


def _header(name: str, line: str, number: int, required: Sequence[str]) -> list[str]:
    """Return the column names of a header line, refusing other delimiters and repeated or missing columns."""
    header = [cell.strip() for cell in line.split("\t")]
    if len(header) == 1 and any(sep in line for sep in (",", ";")):
        sep = "commas" if "," in line else "semicolons"
        raise SourceFormatError(
            name, f"not tab-separated: the header line has {sep} but no tabs; cBioPortal files are "
            "tab-separated", line=number)
    duplicated = [c for c, n in Counter(header).items() if n > 1]
    if duplicated:
        raise SourceFormatError(name, f"column {duplicated[0]!r} appears twice in the header",
                                line=number, column=duplicated[0])
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceFormatError(
            name, f"required column {missing[0]!r} is missing from the header "
            f"(found {', '.join(header)})", line=number, column=missing[0])
    return header


def _row(name: str, line: str, number: int, width: int, pad_short_rows: bool) -> list[str]:
    """Return the cells of a data row, padded when asked; refuse a row whose width is not the header's."""
    cells = [cell.strip() for cell in line.split("\t")]
    if len(cells) < width and pad_short_rows:
        cells += [""] * (width - len(cells))
    if len(cells) != width:
        hint = " (is the file tab-separated?)" if len(cells) == 1 and "," in line else ""
        raise SourceFormatError(
            name, f"the row has {len(cells)} field(s) but the header has {width}{hint}", line=number)
    return cells


def _read_case_lists(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """Return the case lists by role (``sequenced``, ``cna``, ``all``, …): the file and its sample ids."""
    found: dict[str, tuple[Path, list[str]]] = {}
    directory = folder / CASE_LIST_DIR
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.txt")):
        fields: dict[str, str] = {}
        with open(path, encoding="utf-8-sig") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip()] = value.strip()
        if "case_list_ids" not in fields:
            raise SourceFormatError(_shown(path), "no 'case_list_ids:' line; expected tab-separated sample ids")
        stable_id = fields.get("stable_id", "")
        role = stable_id.rsplit("_", 1)[-1] if "_" in stable_id else path.stem.removeprefix("cases_")
        found.setdefault(role, (path, fields["case_list_ids"].split()))
    return found


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _decode(attribute: Attribute, raw: str, table: _Table, line: int) -> Any:
    """Return the canonical value of one clinical cell (None = missing)."""
    text = raw.strip()
    if text.lower() in NA_VALUES:
        return None
    listed, value = attribute.lookup(text)
    if listed:
        return value
    if attribute.dtype in ("float64", "Int64"):
        try:
            number = float(text)
        except ValueError:
            raise SourceFormatError(
                table.name, f"{text!r} is not a number; attribute {attribute.name} ({attribute.field}) is numeric",
                line=line, column=attribute.name) from None
        if math.isnan(number):
            return None
        return int(number) if attribute.dtype == "Int64" and number.is_integer() else number
    if attribute.dtype == "boolean":
        return _BOOLEANS.get(text.lower(), text)
    return text


# A sample's alterations, each with the file and line it came from ("data_mutations.txt line 7").
_Found = dict[str, list[tuple[dict[str, Any], str]]]


def _pseudonymiser(spec: Mapping[str, Any]):
    """Return the patient-id transform: identity, or (``pseudonymise: true``) the keyed hash of ``privacy``."""
    if not spec.get("pseudonymise"):
        return lambda patient_id: patient_id
    from response_model.privacy import pseudonym_key, pseudonymise

    key = pseudonym_key()  # raises PseudonymKeyError naming $RESPONSE_MODEL_PSEUDONYM_KEY when unset
    return lambda patient_id: pseudonymise(patient_id, key)


def _mutation_path(folder: Path) -> Path | None:
    """Return the study's MAF (None when it has none), refusing a study with both spellings."""
    present = [folder / name for name in MUTATION_FILES if (folder / name).is_file()]
    if len(present) > 1:
        raise SourceFormatError(
            present[1].name, f"both {MUTATION_FILES[0]} and {MUTATION_FILES[1]} are present; expected one MAF")
    return present[0] if present else None


def _read_mutations(path: Path, warnings: list[str]) -> _Found:
    """Return each sample's alterations from a MAF, with the line each came from; count skipped rows."""
    table = _read_tsv(path, ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode"), pad_short_rows=True)
    gene_at, class_at, sample_at = (table.index(c) for c in
                                    ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode"))
    change_at = table.index("HGVSp_Short") if "HGVSp_Short" in table.columns else None
    found: _Found = defaultdict(list)
    non_coding: Counter[str] = Counter()
    unsupported: Counter[str] = Counter()
    for cells, line in zip(table.rows, table.lines):
        gene, classification, sample = cells[gene_at], cells[class_at], cells[sample_at]
        if not sample:
            raise SourceFormatError(table.name, "empty Tumor_Sample_Barcode", line=line, column="Tumor_Sample_Barcode")
        if classification in TERT_PROMOTER_CLASSES and gene.upper() == "TERT":
            kind = AlterationKind.tert_promoter
        elif classification in VARIANT_KINDS:
            kind = VARIANT_KINDS[classification]
        elif classification in NON_CODING_CLASSES:
            non_coding[classification] += 1
            continue
        else:
            unsupported[classification or "(empty)"] += 1
            continue
        change = cells[change_at] if change_at is not None else ""
        fusion_text = kind is AlterationKind.fusion and not change.startswith("p.")  # e.g. "FGFR2-BICC1 fusion"
        if change.lower() in NA_VALUES or change == "." or fusion_text:
            change = None
        found[sample].append(({"gene": gene, "kind": kind.value, "protein_change": change},
                              f"{table.name} line {line}"))
    if non_coding:
        warnings.append(f"{table.name}: skipped {sum(non_coding.values())} silent or non-coding MAF rows "
                        f"({_counts(non_coding)}); they are not somatic protein alterations")
    if unsupported:
        warnings.append(f"{table.name}: skipped {sum(unsupported.values())} MAF rows whose Variant_Classification "
                        f"has no alteration kind ({_counts(unsupported)})")
    return found


def _read_cna(path: Path) -> tuple[_Found, set[str], list[str]]:
    """Return each sample's copy-number alterations, the samples with any call, and the sample columns."""
    table = _read_tsv(path, ("Hugo_Symbol",))
    gene_at = table.index("Hugo_Symbol")
    samples = [(i, c) for i, c in enumerate(table.columns) if c not in ("Hugo_Symbol", "Entrez_Gene_Id", "Cytoband")]
    found: _Found = defaultdict(list)
    called: set[str] = set()
    for cells, line in zip(table.rows, table.lines):
        gene = cells[gene_at]
        if not gene:
            raise SourceFormatError(table.name, "empty Hugo_Symbol", line=line, column="Hugo_Symbol")
        for at, sample in samples:
            text = cells[at]
            if text.lower() in NA_VALUES:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if value not in CNA_VALUES:
                raise SourceFormatError(
                    table.name, f"{text!r} is not a discrete copy-number value; expected -2, -1, 0, 1, 2 or NA",
                    line=line, column=sample)
            called.add(sample)
            if value in CNA_KINDS:
                found[sample].append(({"gene": gene, "kind": CNA_KINDS[value].value, "protein_change": None},
                                      f"{table.name} line {line}"))
    return found, called, [sample for _, sample in samples]


def _counts(counter: Counter[str]) -> str:
    """Return the counts as text, most frequent first ("Silent ×2, Intron ×1")."""
    return ", ".join(f"{name} ×{n}" for name, n in sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _few(items: Sequence[str], limit: int = 5) -> str:
    """Return the first ``limit`` items joined by commas, with how many more were left out."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class _Genomics:
    """What the mutation and copy-number files found, and which samples they profiled."""

    mutations: _Found
    copy_numbers: _Found
    sequenced: set[str]
    cna_profiled: set[str]
    cna_columns: list[str]  # the sample columns of data_cna.txt (none without the file)
    case_lists: dict[str, tuple[Path, list[str]]]


def read_study(spec: Mapping[str, Any], path: str | Path) -> ParsedCohort:
    """Read a cBioPortal study folder into validated records and outcomes (one per patient).

    ``spec`` is the source configuration (``configs/sources/cbioportal.yaml``; its attribute maps are
    used, or the default ones when it has none). Raises :class:`SourceFormatError` for structural
    problems; rejects (with the ``data_clinical_patient.txt`` line) patients whose values are invalid.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SourceFormatError(str(folder), "not a folder; expected a cBioPortal study folder")
    attributes = attribute_map(spec)
    pseudonym = _pseudonymiser(spec)  # also applied to the patient and sample ids named in warnings

    patients, samples = _read_clinical(folder, attributes)
    patient_line = _patient_lines(patients)
    chosen, sample_line, warnings = _choose_samples(patients, samples, patient_line, pseudonym)
    warnings += _unmapped_attribute_warnings(attributes, patients, samples)
    genomics = _read_genomics(folder, set(sample_line), warnings)
    chosen_samples = {sample: p for p, (sample, _, _) in chosen.items()}
    warnings += _profile_warnings(genomics, set(sample_line), chosen_samples, samples.name, pseudonym)

    # One canonical row per patient, in file order
    rows: list[dict[str, Any]] = []
    sources: list[list[str]] = []
    for patient_cells, patient_id in zip(patients.rows, patient_line):
        row: dict[str, Any] = dict.fromkeys(COHORT_COLUMNS)
        row["patient_id"] = pseudonym(patient_id)
        sample = chosen.get(patient_id)
        row.update(_clinical_values(attributes, patients, patient_cells, patient_line[patient_id], samples, sample))
        where: list[str] = []
        if sample is not None:
            row["alterations"], where = _alterations(sample[0], genomics)
        rows.append(row)
        sources.append(where)

    frame = pd.DataFrame(rows, columns=list(COHORT_COLUMNS), dtype=object)
    parsed = parse_cohort(frame, line_numbers=list(patient_line.values()))
    parsed.rejected = [_with_alteration_source(error, sources[error.row]) for error in parsed.rejected]
    parsed.warnings = warnings + parsed.warnings
    return parsed


def _read_clinical(folder: Path, attributes: Sequence[Attribute]) -> tuple[_Table, _Table]:
    """Return the patient and sample tables, refusing them when no column holds age or sex."""
    patients = _read_tsv(folder / PATIENT_FILE, ("PATIENT_ID",), clinical=True)
    samples = _read_tsv(folder / SAMPLE_FILE, ("PATIENT_ID", "SAMPLE_ID"), clinical=True)
    for required in ("age", "sex"):
        names = [a.name for a in attributes if a.field == required]
        if not any(n in patients.columns or n in samples.columns for n in names):
            raise SourceFormatError(
                patients.name, f"no column for the required field {required}; expected "
                f"{' or '.join(names) or 'an attribute mapped to it'}", line=patients.header_line,
                column=names[0] if names else None)
    return patients, samples


def _patient_lines(patients: _Table) -> dict[str, int]:
    """Return each PATIENT_ID's line, in file order, refusing empty and repeated ids."""
    patient_at = patients.index("PATIENT_ID")
    patient_line: dict[str, int] = {}
    for cells, line in zip(patients.rows, patients.lines):
        patient_id = cells[patient_at]
        if not patient_id:
            raise SourceFormatError(patients.name, "empty PATIENT_ID", line=line, column="PATIENT_ID")
        if patient_id in patient_line:
            raise SourceFormatError(patients.name, f"PATIENT_ID {patient_id!r} appears twice (first on line "
                                    f"{patient_line[patient_id]})", line=line, column="PATIENT_ID")
        patient_line[patient_id] = line
    return patient_line


def _choose_samples(
    patients: _Table, samples: _Table, patient_line: Mapping[str, int], pseudonym: Callable[[str], str],
) -> tuple[dict[str, tuple[str, list[str], int]], dict[str, int], list[str]]:
    """Return each patient's first listed sample (id, cells, line), every SAMPLE_ID's line, and the warnings."""
    sample_at, owner_at = samples.index("SAMPLE_ID"), samples.index("PATIENT_ID")
    by_patient: dict[str, list[tuple[str, list[str], int]]] = defaultdict(list)
    sample_line: dict[str, int] = {}
    orphans: list[str] = []
    for cells, line in zip(samples.rows, samples.lines):
        sample_id, patient_id = cells[sample_at], cells[owner_at]
        for column, value in (("SAMPLE_ID", sample_id), ("PATIENT_ID", patient_id)):
            if not value:
                raise SourceFormatError(samples.name, f"empty {column}", line=line, column=column)
        if sample_id in sample_line:
            raise SourceFormatError(samples.name, f"SAMPLE_ID {sample_id!r} appears twice (first on line "
                                    f"{sample_line[sample_id]})", line=line, column="SAMPLE_ID")
        sample_line[sample_id] = line
        if patient_id in patient_line:
            by_patient[patient_id].append((sample_id, cells, line))
        else:
            orphans.append(sample_id)

    warnings: list[str] = []
    if orphans:
        warnings.append(f"{samples.name}: ignored {len(orphans)} sample(s) whose PATIENT_ID is not in "
                        f"{patients.name}: {_few([pseudonym(s) for s in orphans])}")
    for patient_id, listed in by_patient.items():
        if len(listed) > 1:
            others = [pseudonym(sample) for sample, _, _ in listed[1:]]
            warnings.append(
                f"patient {pseudonym(patient_id)} has {len(listed)} samples; used the first listed, "
                f"{pseudonym(listed[0][0])}, and ignored {_few(others)} "
                "(their attributes, mutations and copy-number calls)")
    without_sample = [p for p in patient_line if p not in by_patient]
    if without_sample:
        warnings.append(f"{len(without_sample)} patient(s) have no sample in {samples.name}; their sample "
                        f"attributes are missing and they count as not sequenced: "
                        f"{_few([pseudonym(p) for p in without_sample])}")
    return {p: listed[0] for p, listed in by_patient.items()}, sample_line, warnings


def _unmapped_attribute_warnings(attributes: Sequence[Attribute], patients: _Table, samples: _Table) -> list[str]:
    """Return a warning for each clinical file with columns the attribute mapping does not name."""
    mapped_names = {a.name for a in attributes}
    warnings = []
    for table, own in ((patients, {"PATIENT_ID"}), (samples, {"PATIENT_ID", "SAMPLE_ID"})):
        ignored = [c for c in table.columns if c not in mapped_names and c not in own]
        if ignored:
            warnings.append(f"{table.name}: ignored {len(ignored)} attribute(s) not in the source mapping: "
                            f"{_few(ignored, 10)}")
    return warnings


def _read_genomics(folder: Path, sample_ids: set[str], warnings: list[str]) -> _Genomics:
    """Return the study's alterations and the samples profiled for them (MAF warnings go to ``warnings``)."""
    mutation_path = _mutation_path(folder)
    cna_path = folder / CNA_FILE if (folder / CNA_FILE).is_file() else None
    case_lists = _read_case_lists(folder)
    mutations = _read_mutations(mutation_path, warnings) if mutation_path else {}
    copy_numbers, cna_called, cna_columns = _read_cna(cna_path) if cna_path else ({}, set(), [])
    for role, data_path, data_name in (("sequenced", mutation_path, MUTATION_FILES[0]), ("cna", cna_path, CNA_FILE)):
        if role in case_lists and data_path is None:
            raise SourceFormatError(_shown(case_lists[role][0]),
                                    f"lists profiled samples but the study has no {data_name}")
    # Without a case list, a MAF profiles every sample, and data_cna.txt those with any non-NA call.
    if "sequenced" in case_lists:
        sequenced = set(case_lists["sequenced"][1])
    else:
        sequenced = set(sample_ids) if mutation_path else set()
    cna_profiled = set(case_lists["cna"][1]) if "cna" in case_lists else cna_called
    return _Genomics(mutations, copy_numbers, sequenced, cna_profiled, cna_columns, case_lists)


def _profile_warnings(
    genomics: _Genomics, sample_ids: set[str], chosen_samples: Mapping[str, str], sample_file: str,
    pseudonym: Callable[[str], str],
) -> list[str]:
    """Return warnings for alterations of unknown or unlisted samples and for all-NA copy-number columns."""
    warnings = []
    for found, profiled, role, data_name in ((genomics.mutations, genomics.sequenced, "sequenced", MUTATION_FILES[0]),
                                             (genomics.copy_numbers, genomics.cna_profiled, "cna", CNA_FILE)):
        unknown = sorted(s for s in found if s not in sample_ids)
        if unknown:
            warnings.append(f"{data_name}: ignored the alterations of {len(unknown)} sample(s) not in "
                            f"{sample_file}: {_few([pseudonym(s) for s in unknown])}")
        unlisted = sorted(s for s in found if s in chosen_samples and s not in profiled)
        if unlisted:
            shown = _few([pseudonym(s) for s in unlisted])
            warnings.append(f"{len(unlisted)} sample(s) have alterations in {data_name} but are not in "
                            f"{_shown(genomics.case_lists[role][0])}; counted as profiled: {shown}")
    if "cna" not in genomics.case_lists:  # then the profiled samples are those with a call
        uncalled = [s for s in genomics.cna_columns if s in chosen_samples and s not in genomics.cna_profiled]
        if uncalled:
            warnings.append(f"{CNA_FILE}: {len(uncalled)} sample(s) have only NA; not profiled for copy number")
    return warnings


def _clinical_values(
    attributes: Sequence[Attribute], patients: _Table, patient_cells: Sequence[str], patient_line: int,
    samples: _Table, sample: tuple[str, list[str], int] | None,
) -> dict[str, Any]:
    """Return each mapped field's value: the first attribute, in mapping order, that is present and not missing."""
    values: dict[str, Any] = {}
    for attribute in attributes:
        if values.get(attribute.field) is not None:
            continue
        if attribute.name in patients.columns:
            raw = patient_cells[patients.index(attribute.name)]
            values[attribute.field] = _decode(attribute, raw, patients, patient_line)
        elif sample is not None and attribute.name in samples.columns:
            values[attribute.field] = _decode(attribute, sample[1][samples.index(attribute.name)], samples, sample[2])
    return values


def _alterations(sample_id: str, genomics: _Genomics) -> tuple[str | None, list[str]]:
    """Return a sample's alterations as JSON (None when it was not profiled) and where each came from."""
    found = genomics.mutations.get(sample_id, []) + genomics.copy_numbers.get(sample_id, [])
    text = None
    if found or sample_id in genomics.sequenced or sample_id in genomics.cna_profiled:
        text = json.dumps([item for item, _ in found], separators=(",", ":"))
    return text, [where for _, where in found]


def _with_alteration_source(error: RowError, sources: Sequence[str]) -> RowError:
    """Add the MAF / CNA line each rejected alteration came from to its message."""
    errors = []
    for item in error.errors:
        match = re.match(r"^alterations\.(\d+)\b", item.field)
        if match and int(match.group(1)) < len(sources):
            item = FieldError(item.field, item.value, f"{item.message} ({sources[int(match.group(1))]})")
        errors.append(item)
    return RowError(error.row, error.line, errors)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _encode(attribute: Attribute, value: Any) -> str:
    """Return the file text of one canonical value (floats in shortest round-trip form)."""
    if value is None or is_missing(value):
        return "NA"
    for spelling, listed in attribute.values:
        if listed is None:
            continue
        if attribute.dtype == "object" and str(listed) == str(value):
            return spelling
        if attribute.dtype != "object" and not isinstance(listed, str) and listed == value:
            return spelling
    if attribute.dtype == "float64":
        return repr(float(value))
    if attribute.dtype == "Int64":
        return str(int(value))
    if attribute.dtype == "boolean":
        return "TRUE" if value else "FALSE"
    return _text(str(value), attribute.name)


def _text(text: str, what: str) -> str:
    """Return ``text`` unchanged; refuse tabs, line breaks, surrounding spaces and spellings of missing."""
    if any(ch in text for ch in "\t\r\n") or text != text.strip() or text.lower() in NA_VALUES:
        raise ValueError(f"{what}: {text!r} cannot be written to a cBioPortal file (tab, line break, "
                         "surrounding spaces or a spelling of missing)")
    return text


_OUTCOME_DESCRIPTIONS = {
    "regimen": "Regimen given (catalogue name)",
    "best_overall_response": "Best overall response (RECIST 1.1)",
    "objective_response": "Objective response: 1 = CR or PR",
    "primary_resistance": "Primary resistance: 1 = progression as best response or within the window",
    "pfs_months": "Progression-free survival (months)",
    "pfs_event": "Progression-free survival status: 1 = progressed or died",
    "os_months": "Overall survival (months)",
    "os_event": "Overall survival status: 1 = died",
}


def _description(attribute: Attribute) -> str:
    """Return the attribute's description line: the field's description and unit."""
    if attribute.field in _OUTCOME_DESCRIPTIONS:
        return _OUTCOME_DESCRIPTIONS[attribute.field]
    info = PatientRecord.model_fields[attribute.field]
    text = info.description or attribute.field.replace("_", " ").capitalize()
    unit = (info.json_schema_extra or {}).get("unit") if isinstance(info.json_schema_extra, dict) else None
    return f"{text} ({unit})" if unit else text


def _datatype(attribute: Attribute) -> str:
    """Return the attribute's cBioPortal datatype: NUMBER, BOOLEAN or STRING."""
    if attribute.values:
        return "STRING"
    return {"float64": "NUMBER", "Int64": "NUMBER", "boolean": "BOOLEAN"}.get(attribute.dtype, "STRING")


def _clinical_file(columns: Sequence[Attribute | str], rows: Iterable[Sequence[str]]) -> str:
    """Return the text of a clinical file: four ``#`` metadata lines, the header, the rows."""
    meta = [
        [_DISPLAY_NAMES.get(c if isinstance(c, str) else c.name, (c if isinstance(c, str) else c.name)
                            .replace("_", " ").title()) for c in columns],
        [{"PATIENT_ID": "Identifier to uniquely specify a patient.", "SAMPLE_ID": "A unique sample identifier."}[c]
         if isinstance(c, str) else _description(c) for c in columns],
        ["STRING" if isinstance(c, str) else _datatype(c) for c in columns],
        ["1"] * len(columns),
    ]
    lines = ["#" + "\t".join(line) for line in meta]
    lines.append("\t".join(c if isinstance(c, str) else c.name for c in columns))
    lines += ["\t".join(row) for row in rows]
    return "\n".join(lines) + "\n"


def _meta(fields: Sequence[tuple[str, str]]) -> str:
    """Return ``key: value`` lines, the format of meta files and case lists."""
    return "".join(f"{key}: {value}\n" for key, value in fields)


def _variant_classification(alteration: Mapping[str, Any]) -> str:
    """Return the MAF Variant_Classification of a (non copy-number) alteration."""
    kind, change = AlterationKind(alteration["kind"]), alteration.get("protein_change") or ""
    if kind is AlterationKind.inframe_indel:
        return "In_Frame_Ins" if ("ins" in change or "dup" in change) else "In_Frame_Del"
    return {
        AlterationKind.missense: "Missense_Mutation", AlterationKind.nonsense: "Nonsense_Mutation",
        AlterationKind.frameshift: "Frame_Shift_Del", AlterationKind.splice: "Splice_Site",
        AlterationKind.tert_promoter: "5'Flank", AlterationKind.fusion: "Fusion",
    }[kind]


def in_study_order(cohort: pd.DataFrame) -> pd.DataFrame:
    """Return ``cohort`` with each patient's alterations in the order :func:`read_study` gives them.

    Mutations keep their order; copy-number changes follow them, sorted by gene symbol.
    """
    def reorder(text: Any) -> Any:
        """Return one alterations cell in study order."""
        if is_missing(text):
            return text
        items = json.loads(text)
        mutations = [a for a in items if a["kind"] not in COPY_NUMBER_KINDS]
        copies = sorted((a for a in items if a["kind"] in COPY_NUMBER_KINDS), key=lambda a: a["gene"])
        return json.dumps(mutations + copies, separators=(",", ":"))

    out = cohort.copy()
    out["alterations"] = [reorder(value) for value in out["alterations"]]
    return out


def write_study(
    cohort: pd.DataFrame,
    out_dir: str | Path,
    study_id: str = "response_model_sim",
    name: str | None = None,
    *,
    description: str | None = None,
    spec: Mapping[str, Any] | None = None,
) -> Path:
    """Write a canonical cohort table as a cBioPortal study folder; return the folder.

    Every row is validated first (a ``ValueError`` lists rejected rows) and needs a unique
    ``patient_id`` of letters, digits, ``.``, ``_`` and ``-``. Attributes come from ``spec``
    (default ``configs/sources/cbioportal.yaml``). The output is deterministic, and floats are
    written in shortest round-trip form so that :func:`read_study` gives back the same values.
    """
    if not _ID.match(study_id):
        raise ValueError(f"study_id {study_id!r}: expected letters, digits, '.', '_' and '-' only")
    parsed = parse_cohort(normalise_frame(cohort))
    if parsed.rejected:
        raise ValueError(f"cannot write a study: {len(parsed.rejected)} row(s) of the cohort are invalid; first: "
                         f"{parsed.rejected[0]}")
    frame = parsed.frame()
    columns = _written_attributes(frame, spec)
    patient_columns = [a for a in columns if a.level == "patient"]
    sample_columns = [a for a in columns if a.level == "sample"]

    records = frame.to_dict(orient="records")
    patient_ids = _patient_ids(records)
    sample_ids = [f"{p}-T" for p in patient_ids]
    patient_rows = [[pid, *_cells(row, patient_columns)] for pid, row in zip(patient_ids, records)]
    sample_rows = [[pid, sid, *_cells(row, sample_columns)]
                   for pid, sid, row in zip(patient_ids, sample_ids, records)]
    maf_rows, copy_number, genotyped = _genomic_rows(sample_ids, records)

    hepatobiliary = frame["cancer_type"].eq("Hepatobiliary").all()
    name = name or f"Response model cohort ({study_id})"
    description = description or f"{len(frame)} patients written from the canonical cohort table by response_model."
    files = _meta_files(study_id, name, description, hepatobiliary)
    files[PATIENT_FILE] = _clinical_file(["PATIENT_ID", *patient_columns], patient_rows)
    files[SAMPLE_FILE] = _clinical_file(["PATIENT_ID", "SAMPLE_ID", *sample_columns], sample_rows)
    files[MUTATION_FILES[0]] = _maf_file(maf_rows)
    files[CNA_FILE] = _cna_file(copy_number, genotyped)
    files.update(_case_list_files(study_id, sample_ids, genotyped))

    out = Path(out_dir)
    (out / CASE_LIST_DIR).mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        with open(out / relative, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
    return out


def _written_attributes(frame: pd.DataFrame, spec: Mapping[str, Any] | None) -> list[Attribute]:
    """Return the first attribute mapped to each field, refusing a cohort with values no attribute can hold."""
    primary: dict[str, Attribute] = {}
    for attribute in attribute_map(spec):
        primary.setdefault(attribute.field, attribute)
    lost = [c for c in COHORT_COLUMNS if c not in primary and c not in ("patient_id", "alterations")
            and frame[c].notna().any()]
    if lost:
        raise ValueError(f"no attribute maps to {', '.join(lost)}; they would be lost in the study")
    return list(primary.values())


def _patient_ids(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the records' patient ids, refusing ones cBioPortal cannot hold and repeated ones."""
    patient_ids: list[str] = []
    for position, row in enumerate(records):
        patient_id = row["patient_id"]
        if is_missing(patient_id) or not _ID.match(str(patient_id)):
            raise ValueError(f"row {position}: patient_id {patient_id!r} is not a valid cBioPortal id; expected "
                             "letters, digits, '.', '_' and '-'")
        patient_ids.append(str(patient_id))
    duplicated = [p for p, n in Counter(patient_ids).items() if n > 1]
    if duplicated:
        raise ValueError(f"patient_id {duplicated[0]!r} appears more than once; cBioPortal needs unique ids")
    return patient_ids


def _cells(row: Mapping[str, Any], attributes: Sequence[Attribute]) -> list[str]:
    """Return the file text of a record's value for each attribute."""
    return [_encode(a, None if is_missing(row[a.field]) else row[a.field]) for a in attributes]


def _genomic_rows(
    sample_ids: Sequence[str], records: Sequence[Mapping[str, Any]],
) -> tuple[list[list[str]], dict[str, dict[str, str]], list[str]]:
    """Return the MAF rows, each gene's copy-number calls by sample, and the samples with alteration data."""
    maf_rows: list[list[str]] = []
    copy_number: dict[str, dict[str, str]] = defaultdict(dict)
    genotyped: list[str] = []
    for sid, row in zip(sample_ids, records):
        if is_missing(row["alterations"]):
            continue
        genotyped.append(sid)
        for alteration in json.loads(row["alterations"]):
            if alteration["kind"] in COPY_NUMBER_KINDS:
                if sid in copy_number[alteration["gene"]]:
                    raise ValueError(f"sample {sid}: {alteration['gene']} has more than one copy-number change; "
                                     "data_cna.txt holds one value per gene and sample")
                copy_number[alteration["gene"]][sid] = "2" if alteration["kind"] == "amplification" else "-2"
            else:
                maf_rows.append([alteration["gene"], sid, _variant_classification(alteration),
                                 alteration.get("protein_change") or ""])
    return maf_rows, copy_number, genotyped


def _maf_file(maf_rows: Iterable[Sequence[str]]) -> str:
    """Return the text of data_mutations.txt for these rows."""
    return "#version 2.4\n" + "\n".join(
        "\t".join(cells) for cells in
        [["Hugo_Symbol", "Tumor_Sample_Barcode", "Variant_Classification", "HGVSp_Short"], *maf_rows]) + "\n"


def _cna_file(copy_number: Mapping[str, Mapping[str, str]], genotyped: Sequence[str]) -> str:
    """Return the text of data_cna.txt: one row per gene, sorted by symbol, 0 where a sample has no call."""
    cna_lines = ["\t".join(["Hugo_Symbol", *genotyped])]
    cna_lines += ["\t".join([gene, *(copy_number[gene].get(sid, "0") for sid in genotyped)])
                  for gene in sorted(copy_number)]
    return "\n".join(cna_lines) + "\n"


def _meta_files(study_id: str, name: str, description: str, hepatobiliary: bool) -> dict[str, str]:
    """Return the text of each meta_*.txt file of the study, by file name."""
    return {
        "meta_study.txt": _meta([
            ("type_of_cancer", "hcc" if hepatobiliary else "mixed"), ("cancer_study_identifier", study_id),
            ("name", _text(name, "name")), ("description", _text(description, "description")),
            ("short_name", study_id),
        ]),
        "meta_clinical_patient.txt": _meta([
            ("cancer_study_identifier", study_id), ("genetic_alteration_type", "CLINICAL"),
            ("datatype", "PATIENT_ATTRIBUTES"), ("data_filename", PATIENT_FILE),
        ]),
        "meta_clinical_sample.txt": _meta([
            ("cancer_study_identifier", study_id), ("genetic_alteration_type", "CLINICAL"),
            ("datatype", "SAMPLE_ATTRIBUTES"), ("data_filename", SAMPLE_FILE),
        ]),
        "meta_mutations.txt": _meta([
            ("cancer_study_identifier", study_id), ("genetic_alteration_type", "MUTATION_EXTENDED"),
            ("datatype", "MAF"), ("stable_id", "mutations"), ("show_profile_in_analysis_tab", "true"),
            ("profile_name", "Mutations"), ("profile_description", "Somatic mutations (protein-altering)."),
            ("data_filename", MUTATION_FILES[0]),
        ]),
        "meta_cna.txt": _meta([
            ("cancer_study_identifier", study_id), ("genetic_alteration_type", "COPY_NUMBER_ALTERATION"),
            ("datatype", "DISCRETE"), ("stable_id", "gistic"), ("show_profile_in_analysis_tab", "true"),
            ("profile_name", "Putative copy-number alterations"),
            ("profile_description", "Discrete copy number: 2 = amplification, -2 = deep deletion."),
            ("data_filename", CNA_FILE),
        ]),
    }


def _case_list_files(study_id: str, sample_ids: Sequence[str], genotyped: Sequence[str]) -> dict[str, str]:
    """Return the text of each case list (all, sequenced, cna samples), by path in the study folder."""
    files = {}
    for role, label, category, ids in (
        ("all", "All samples", "all_cases_in_study", sample_ids),
        ("sequenced", "Samples with mutation data", "all_cases_with_mutation_data", genotyped),
        ("cna", "Samples with copy-number data", "all_cases_with_cna_data", genotyped),
    ):
        files[f"{CASE_LIST_DIR}/cases_{role}.txt"] = _meta([
            ("cancer_study_identifier", study_id), ("stable_id", f"{study_id}_{role}"),
            ("case_list_name", label), ("case_list_description", f"{label} ({len(ids)} samples)"),
            ("case_list_category", category), ("case_list_ids", "\t".join(ids)),
        ])
    return files
