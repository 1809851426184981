"""The patient record: one typed definition used by ingestion, training, batch scoring and the API.

Strict by default: numbers must be numbers and yes/no fields booleans (``"64"`` or ``1`` for a yes/no
field are refused), as a JSON client must send them. Table sources, whose cells are text or numbers of
any kind, validate with ``model_validate(..., strict=False)`` (:func:`response_model.dataset.clean_row_to_record`):
one schema, two input modes. Code-like text (gene symbols, protein changes, enumerated values) must be
printable ASCII: a dotless ı or a Cyrillic look-alike is refused naming its code point, never folded.

Units are fixed by the schema (albumin g/dL, bilirubin mg/dL, AFP ng/mL, platelets 10^3/µL, …);
plausible ranges and unit mix-up hints come from ``configs/ranges.yaml``. Every field but ``age``
and ``sex`` may be missing (``None``); the models cope with missing values.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, lru_cache
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from response_model import clinical, consistency
from response_model.config import load_yaml
from response_model.genes import UnknownGeneError, normalise_symbol


class Sex(StrEnum):
    female = "female"
    male = "male"


class Aetiology(StrEnum):
    HBV = "HBV"
    HCV = "HCV"
    alcohol = "alcohol"
    MASLD = "MASLD"
    other = "other"
    unknown = "unknown"


VIRAL_AETIOLOGIES = frozenset({Aetiology.HBV, Aetiology.HCV})


class Ascites(StrEnum):
    none = "none"
    mild = "mild"
    moderate_severe = "moderate_severe"


class Encephalopathy(StrEnum):
    none = "none"
    grade_1_2 = "grade_1_2"
    grade_3_4 = "grade_3_4"


class ChildPughClass(StrEnum):
    A = "A"
    B = "B"
    C = "C"


class BCLCStage(StrEnum):
    very_early = "0"
    early = "A"
    intermediate = "B"
    advanced = "C"
    terminal = "D"


class Exposure(StrEnum):
    never = "never"
    former = "former"
    current = "current"


class MSIStatus(StrEnum):
    MSS = "MSS"
    MSI_H = "MSI-H"


class AlterationKind(StrEnum):
    missense = "missense"
    nonsense = "nonsense"
    frameshift = "frameshift"
    splice = "splice"
    inframe_indel = "inframe_indel"
    tert_promoter = "tert_promoter"
    amplification = "amplification"
    deep_deletion = "deep_deletion"
    fusion = "fusion"


TRUNCATING_KINDS = frozenset({AlterationKind.nonsense, AlterationKind.frameshift, AlterationKind.splice})
COPY_NUMBER_KINDS = frozenset({AlterationKind.amplification, AlterationKind.deep_deletion})

# Spellings accepted for enumerated fields, mapped to the canonical value (case-insensitive).
_SYNONYMS: dict[str, dict[str, str]] = {
    "sex": {"f": "female", "m": "male", "woman": "female", "man": "male"},
    "aetiology": {"hepatitis b": "HBV", "hepatitis c": "HCV", "nash": "MASLD", "nafld": "MASLD",
                  "mafld": "MASLD", "masld": "MASLD", "alcohol-related": "alcohol"},
    "msi_status": {"msi-high": "MSI-H", "msi_h": "MSI-H", "msih": "MSI-H", "mss/msi-l": "MSS", "msi-l": "MSS"},
    "kind": {"amp": "amplification", "homdel": "deep_deletion", "deletion": "deep_deletion",
             "in_frame_indel": "inframe_indel", "inframe": "inframe_indel", "promoter": "tert_promoter",
             "truncating": "nonsense"},
    "bclc_stage": {"bclc-0": "0", "bclc-a": "A", "bclc-b": "B", "bclc-c": "C", "bclc-d": "D"},
}


def _reject(kind: str, message: str) -> PydanticCustomError:
    """Return a validation error whose text is ``message`` verbatim (no context, so no substitution)."""
    return PydanticCustomError(kind, message)


def shown(value: str, limit: int = 40) -> str:
    """``repr`` of ``value``, cut to ``limit`` characters (a message never echoes a whole huge value)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} characters)"


def odd_code_points(value: str) -> str | None:
    """The characters of ``value`` outside printable ASCII, as ``U+0131 LATIN SMALL LETTER DOTLESS I``
    (the first three, then how many more); None when there are none."""
    odd = [ch for ch in dict.fromkeys(value) if not " " <= ch <= "~"]
    if not odd:
        return None
    names = ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, 'CONTROL CHARACTER')}" for ch in odd[:3])
    return names + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")


def ascii_code(field: str, value: str) -> str:
    """``value`` if it is printable ASCII; else raises a validation error naming the odd code points:
    ``str.upper`` would fold 'ı' to 'I' and 'ſ' to 'S', and a look-alike reads as another code on screen."""
    odd = odd_code_points(value)
    if odd is not None:
        raise _reject("non_ascii_code", f"{field}: {shown(value)} contains {odd}; expected ASCII letters, digits "
                                        "and punctuation only")
    return value


def _canonical_enum(field: str, value: Any, enum: type[StrEnum]) -> Any:
    """Return the member of ``enum`` a case-insensitive spelling or synonym names; raises a validation
    error naming the value (bounded) and the choices for anything else."""
    if value is None or isinstance(value, enum):
        return value
    if not isinstance(value, str):
        kind = "true/false" if isinstance(value, bool) else type(value).__name__
        raise _reject("enum_type", f"{field}: a {kind} value; expected text, one of {_choices(enum)}")
    lowered = ascii_code(field, value).strip().lower()
    found = _enum_values(enum).get(lowered) or _SYNONYMS.get(field, {}).get(lowered)
    if found is None:
        raise _reject("enum", f"{field}: {shown(value)} is not one of {_choices(enum)}")
    return enum(found)


@cache
def _choices(enum: type[StrEnum]) -> str:
    """The values of ``enum`` as a message lists them: ``'A', 'B', 'C'``."""
    return ", ".join(repr(m.value) for m in enum)


@cache
def _enum_values(enum: type[StrEnum]) -> dict[str, str]:
    """{lower-cased value: value} of ``enum``'s members (the first member wins, as a loop over them would)."""
    values: dict[str, str] = {}
    for member in enum:
        values.setdefault(member.value.lower(), member.value)
    return values


# ---------------------------------------------------------------------------------------------
# Plausible ranges
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRange:
    """Plausible range of a numeric field, with the unit mix-up it most likely signals."""

    field: str
    unit: str
    min: float
    max: float
    warn_min: float | None = None
    warn_max: float | None = None
    mix_up_min: float | None = None
    mix_up_max: float | None = None
    mix_up_unit: str | None = None
    mix_up_hint: str | None = None

    def error(self, value: float) -> str | None:
        """Return the rejection message for ``value``, or None if it is plausible."""
        if self.min <= value <= self.max:
            return None
        message = (
            f"{self.field}: {value:g} is outside the plausible range "
            f"{self.min:g}–{self.max:g} {self.unit}"
        )
        if self.mix_up_unit is not None and self.mix_up_min <= value <= self.mix_up_max:
            message += f"; looks like {self.mix_up_unit}; expected {self.unit}"
            if self.mix_up_hint:
                message += f" ({self.mix_up_hint})"
        return message

    def warning(self, value: float) -> str | None:
        """Return a warning for a plausible but unusual ``value``, or None."""
        low = self.warn_min is not None and value < self.warn_min
        high = self.warn_max is not None and value > self.warn_max
        if not (low or high):
            return None
        bound = f"below {self.warn_min:g}" if low else f"above {self.warn_max:g}"
        return f"{self.field}: {value:g} {self.unit} is {bound}, unusual for this population"


@lru_cache(maxsize=1)
def field_ranges() -> dict[str, FieldRange]:
    """Return the plausible ranges of ``configs/ranges.yaml`` keyed by field name."""
    ranges = {}
    for name, spec in load_yaml("ranges.yaml").items():
        mix = spec.get("mix_up") or {}
        ranges[name] = FieldRange(
            field=name, unit=spec["unit"], min=float(spec["min"]), max=float(spec["max"]),
            warn_min=spec.get("warn_min"), warn_max=spec.get("warn_max"),
            mix_up_min=mix.get("min"), mix_up_max=mix.get("max"),
            mix_up_unit=mix.get("unit"), mix_up_hint=mix.get("hint"),
        )
    return ranges


@lru_cache(maxsize=1)
def cancer_types() -> tuple[str, ...]:
    """Return the accepted cancer types (``configs/vocabulary.yaml``)."""
    return tuple(load_yaml("vocabulary.yaml")["cancer_types"])


@lru_cache(maxsize=1)
def _cancer_types_by_lower() -> dict[str, str]:
    return {name.lower(): name for name in cancer_types()}


#: An unknown cancer type at least this similar (difflib ratio, case-insensitive) to a known one is taken
#: for a typo of it and refused naming it ("Melanom" → "Melanoma"); "CNS" or "Unknown primary" are not.
TYPO_CUTOFF = 0.85


def unseen_cancer_type_warning(value: str) -> str:
    """The warning an answer or a scored row carries for a cancer type the vocabulary lacks."""
    return (f"cancer_type: {value!r} is not one of the {len(cancer_types())} cancer types of the training "
            "vocabulary (configs/vocabulary.yaml); scored as an unseen cancer type, with every cancer-type "
            "feature missing, and flagged out of distribution")


# ---------------------------------------------------------------------------------------------
# Somatic alterations
# ---------------------------------------------------------------------------------------------

_PROTEIN_CHANGE = re.compile(r"^p\.([A-Z*](\d+)[A-Za-z0-9_*>=?]*|\?|=|0)$")
_PROTEIN_POSITION = re.compile(r"^p\.[A-Z*](\d+)")


def infer_kind(protein_change: str) -> AlterationKind:
    """Return the alteration kind implied by an HGVS short protein change (``p.R146*`` → nonsense)."""
    change = protein_change.strip()
    if "fs" in change:
        return AlterationKind.frameshift
    if "splice" in change.lower():
        return AlterationKind.splice
    if change.endswith("*") or change.endswith("Ter") or change.endswith("X"):
        return AlterationKind.nonsense
    if any(token in change for token in ("del", "ins", "dup")):
        return AlterationKind.inframe_indel
    return AlterationKind.missense


class Alteration(BaseModel):
    """One somatic alteration: an HGNC gene, the kind of change and, for variants, the protein change."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    gene: str = Field(description="HGNC approved gene symbol", examples=["CTNNB1"])
    kind: AlterationKind = Field(description="Kind of alteration")
    protein_change: str | None = Field(
        default=None, description="HGVS short protein change, e.g. p.S45P", examples=["p.S45P"]
    )

    @field_validator("gene", mode="before")
    @classmethod
    def _known_gene(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        ascii_code("gene", value)
        try:
            return normalise_symbol(value)
        except UnknownGeneError as error:
            raise _reject("unknown_gene", f"gene: {error}") from None

    @field_validator("kind", mode="before")
    @classmethod
    def _kind_spelling(cls, value: Any) -> Any:
        return _canonical_enum("kind", value, AlterationKind)

    @field_validator("protein_change", mode="before")
    @classmethod
    def _protein_change_format(cls, value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if not isinstance(value, str):
            return value
        value = ascii_code("protein_change", value).strip()
        if not value:
            return None
        if not value.startswith("p."):
            value = "p." + value
        if not _PROTEIN_CHANGE.match(value):
            raise _reject(
                "protein_change_format",
                f"protein_change: {value!r} is not an HGVS short protein change; expected e.g. 'p.S45P', "
                "'p.R146*', 'p.K20fs' or 'p.S45del'",
            )
        return value

    @model_validator(mode="after")
    def _kind_matches_gene_and_change(self) -> Alteration:
        if self.kind is AlterationKind.tert_promoter and self.gene != "TERT":
            raise _reject("kind_gene", f"kind: 'tert_promoter' applies only to TERT, not to {self.gene}")
        if self.kind in COPY_NUMBER_KINDS and self.protein_change is not None:
            raise _reject(
                "kind_change",
                f"protein_change: {self.protein_change!r} given for a copy-number {self.kind.value}; "
                "expected no protein change",
            )
        return self

    @property
    def protein_position(self) -> int | None:
        """Return the first amino-acid position of the protein change, or None."""
        match = _PROTEIN_POSITION.match(self.protein_change or "")
        return int(match.group(1)) if match else None

    def label(self) -> str:
        """Return a compact text form, e.g. ``CTNNB1 p.S45P`` or ``FGF19 amplification``."""
        return f"{self.gene} {self.protein_change}" if self.protein_change else f"{self.gene} {self.kind.value}"

    @staticmethod
    def fields_from_text(text: str) -> dict[str, str]:
        """Return the fields of the compact form ``GENE p.CHANGE`` or ``GENE KIND`` (``FGF19 amp``)."""
        parts = text.replace(":", " ").split()
        if len(parts) != 2:
            raise _reject(
                "alteration_text", f"alterations: {text!r} is not of the form 'GENE p.CHANGE' or 'GENE KIND'"
            )
        gene, detail = parts
        if detail.startswith("p."):
            return {"gene": gene, "kind": infer_kind(detail).value, "protein_change": detail}
        return {"gene": gene, "kind": detail}

    @classmethod
    def parse(cls, text: str) -> Alteration:
        """Return the alteration written in compact form (``CTNNB1 p.S45P``, ``FGF19 amp``)."""
        return cls(**cls.fields_from_text(text))


# ---------------------------------------------------------------------------------------------
# The patient record
# ---------------------------------------------------------------------------------------------


_ENUM_OF_FIELD: dict[str, type[StrEnum]] = {
    "sex": Sex, "aetiology": Aetiology, "ascites": Ascites, "encephalopathy": Encephalopathy,
    "child_pugh_class": ChildPughClass, "bclc_stage": BCLCStage, "alcohol_use": Exposure,
    "smoking": Exposure, "msi_status": MSIStatus,
}
# The numeric fields: those with a plausible range (configs/ranges.yaml) and the ECOG grade (0–4 by its
# own constraint); checked against the annotations below the class, so a new one cannot be left out.
_DECLARED_NUMERIC_FIELDS: tuple[str, ...] = (*field_ranges(), "ecog")


#: the yes/no fields: JSON true or false only (strict), whatever a table source writes (lax)
_BOOLEAN_FIELDS: tuple[str, ...] = ("macrovascular_invasion", "extrahepatic_spread", "stage_iv", "diabetes",
                                    "prior_systemic_therapy", "hla_loh")
#: the longest patient id accepted (characters)
MAX_PATIENT_ID_CHARS = 128


def checked_patient_id(value: Any) -> Any:
    """``value`` if it can be a patient id (None, or printable text of at most
    :data:`MAX_PATIENT_ID_CHARS` characters); raises a validation error that says its type or length
    but never echoes it (it is an identifier)."""
    if value is None:
        return None
    if not isinstance(value, str):
        kind = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
            type(value), type(value).__name__)
        raise _reject("patient_id_type", f"patient_id: {kind} given; expected text of at most "
                                         f"{MAX_PATIENT_ID_CHARS} printable characters")
    if len(value) > MAX_PATIENT_ID_CHARS:
        raise _reject("patient_id_length", f"patient_id: a text of {len(value)} characters given; expected at most "
                                           f"{MAX_PATIENT_ID_CHARS}")
    bad = next((i for i, ch in enumerate(value) if not ch.isprintable()), None)
    if bad is not None:
        ch = value[bad]
        raise _reject("patient_id_text", f"patient_id: holds U+{ord(ch):04X} "
                                         f"{unicodedata.name(ch, 'CONTROL CHARACTER')} at position {bad}, which is "
                                         "not printable; expected printable text")
    return value


def _unit(unit: str) -> dict[str, Any]:
    return {"json_schema_extra": {"unit": unit}}


class PatientRecord(BaseModel):
    """Genomic and clinical features of one patient with advanced HCC (or, in pan-cancer cohorts, another cancer)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=False, strict=True)

    patient_id: str | None = Field(
        default=None, max_length=128,
        description="Pseudonymous identifier; never a name or a medical-record number",
    )
    # Demographics
    age: float = Field(description="Age at start of the regimen", **_unit("years"))
    sex: Sex
    ecog: int | None = Field(default=None, ge=0, le=4, description="ECOG performance status 0–4")
    cancer_type: str = Field(
        default="Hepatobiliary", max_length=64,
        description="Cancer type (pan-cancer cohorts): one of configs/vocabulary.yaml; another type is kept as "
                    "given and scored as unseen (cancer-type features missing, a warning, out of distribution)")
    # Liver
    aetiology: Aetiology | None = None
    albumin: float | None = Field(default=None, description="Serum albumin", **_unit("g/dL"))
    bilirubin: float | None = Field(default=None, description="Total bilirubin", **_unit("mg/dL"))
    inr: float | None = Field(default=None, description="International normalised ratio", **_unit("ratio"))
    ascites: Ascites | None = None
    encephalopathy: Encephalopathy | None = None
    child_pugh_class: ChildPughClass | None = Field(
        default=None, description="Computed from the five items when all are present; accepted as given otherwise"
    )
    # Tumour
    bclc_stage: BCLCStage | None = None
    afp: float | None = Field(default=None, description="Serum alpha-fetoprotein", **_unit("ng/mL"))
    macrovascular_invasion: bool | None = None
    extrahepatic_spread: bool | None = None
    lesion_count: int | None = Field(default=None, description="Number of lesions", **_unit("lesions"))
    largest_lesion_cm: float | None = Field(default=None, description="Largest lesion diameter", **_unit("cm"))
    stage_iv: bool | None = Field(default=None, description="AJCC stage IV at start (pan-cancer cohorts)")
    # Blood
    nlr: float | None = Field(
        default=None, description="Neutrophil-to-lymphocyte ratio; computed from the counts when absent",
        **_unit("ratio"),
    )
    neutrophils: float | None = Field(default=None, description="Neutrophil count", **_unit("10^3/µL"))
    lymphocytes: float | None = Field(default=None, description="Lymphocyte count", **_unit("10^3/µL"))
    platelets: float | None = Field(default=None, description="Platelet count", **_unit("10^3/µL"))
    haemoglobin: float | None = Field(default=None, description="Haemoglobin", **_unit("g/dL"))
    # Lifestyle
    bmi: float | None = Field(default=None, description="Body-mass index", **_unit("kg/m²"))
    diabetes: bool | None = None
    alcohol_use: Exposure | None = None
    smoking: Exposure | None = None
    # Treatment context
    line_of_therapy: int | None = Field(default=None, description="Line of systemic therapy (1 = first)")
    prior_systemic_therapy: bool | None = Field(
        default=None, description="Any systemic therapy before this regimen; implied by a line above 1"
    )
    # Tumour microenvironment
    pdl1_tps: float | None = Field(default=None, description="PD-L1 tumour proportion score", **_unit("%"))
    pdl1_cps: float | None = Field(default=None, description="PD-L1 combined positive score", **_unit("score"))
    cd8_density: float | None = Field(default=None, description="Intratumoural CD8+ T cells", **_unit("cells/mm²"))
    teff_signature: float | None = Field(default=None, description="T-effector signature (Zhu 2022)",
                                         **_unit("z-score"))
    treg_signature: float | None = Field(default=None, description="Regulatory T-cell signature", **_unit("z-score"))
    myeloid_signature: float | None = Field(default=None, description="Myeloid inflammation signature",
                                            **_unit("z-score"))
    # Genomics
    alterations: list[Alteration] | None = Field(
        default=None,
        description="Somatic alterations found; [] = sequenced with none found; null = not sequenced",
    )
    tmb: float | None = Field(default=None, description="Tumour mutational burden", **_unit("mut/Mb"))
    msi_status: MSIStatus | None = None
    sequencing_panel: str | None = Field(default=None, max_length=64, description="e.g. MSK-IMPACT468")
    fcna: float | None = Field(default=None, description="Fraction of genome with copy-number alteration",
                               **_unit("fraction"))
    hla_loh: bool | None = Field(default=None, description="Loss of heterozygosity at HLA class I")
    hed: float | None = Field(default=None, description="HLA class I evolutionary divergence (mean)",
                              **_unit("divergence"))

    # -- field checks -------------------------------------------------------------------------

    @field_validator(*_ENUM_OF_FIELD, mode="before")
    @classmethod
    def _enum_spelling(cls, value: Any, info: ValidationInfo) -> Any:
        return _canonical_enum(info.field_name, value, _ENUM_OF_FIELD[info.field_name])

    @field_validator("cancer_type")
    @classmethod
    def _known_cancer_type(cls, value: str) -> str:
        found = _cancer_types_by_lower().get(value.strip().lower())
        if found is not None:
            return found
        # a spelling close to a known type is most likely a typo of it: refused, naming the type meant;
        # any other value is a cancer type the vocabulary lacks, kept as given and scored as unseen
        close = difflib.get_close_matches(value.strip().lower(), list(_cancer_types_by_lower()), n=1,
                                          cutoff=TYPO_CUTOFF)
        if close or not value.strip():
            hint = f" (did you mean {_cancer_types_by_lower()[close[0]]!r}?)" if close else ""
            raise _reject(
                "cancer_type",
                f"cancer_type: {value!r} is not a known cancer type{hint}; expected one of "
                f"{', '.join(cancer_types())}, or a type the vocabulary lacks (scored as unseen, with a warning)",
            )
        return value.strip()

    @field_validator(*_DECLARED_NUMERIC_FIELDS, mode="wrap")
    @classmethod
    def _plausible_number(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        # pydantic would read true/false as 1/0 in a numeric field and the range check would then
        # report "1 is outside …": say what is really wrong
        if isinstance(value, bool):
            raise _reject("number_type", f"{info.field_name}: {str(value).lower()} is a yes/no value; "
                                         f"expected a number{_unit_text(info.field_name)}")
        try:
            value = handler(value)
        except ValidationError:
            if isinstance(value, str):  # strict input: "64" is text, not a number
                raise _reject("number_type", f"{info.field_name}: {shown(value)} is text; expected a "
                                             f"number{_unit_text(info.field_name)}") from None
            raise
        spec = field_ranges().get(info.field_name)
        if spec is not None and value is not None and not spec.min <= value <= spec.max:
            raise _reject("implausible_value", spec.error(float(value)))
        return value

    @field_validator(*_BOOLEAN_FIELDS, mode="wrap")
    @classmethod
    def _yes_no(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError:
            if isinstance(value, (str, int, float)):
                given = f"{shown(value)} is text" if isinstance(value, str) else f"{value!r} is a number"
                raise _reject("bool_type", f"{info.field_name}: {given}; expected true or false") from None
            raise

    @field_validator("patient_id", mode="before")
    @classmethod
    def _pseudonymous_id(cls, value: Any) -> Any:
        return checked_patient_id(value)

    @field_validator("alterations")
    @classmethod
    def _each_alteration_once(cls, value: list[Alteration] | None) -> list[Alteration] | None:
        # refused rather than merged: a repeat is a copy-paste or export error the sender should see, and
        # counted twice it would raise a probability (the features count each alteration once anyway)
        first: dict[str, int] = {}
        for position, alteration in enumerate(value or ()):
            earlier = first.setdefault(alteration.label(), position)
            if earlier != position:
                raise _reject("duplicate_alteration",
                              f"alterations: {alteration.label()!r} is listed twice, at positions {earlier} and "
                              f"{position} (counting from 0); give each alteration once")
        return value

    @field_validator("alterations", mode="before")
    @classmethod
    def _compact_alterations(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Alteration.fields_from_text(item) for item in value.split(";") if item.strip()]
        return value

    # -- cross-field checks and derived inputs ------------------------------------------------

    @model_validator(mode="after")
    def _derive_and_check(self) -> PatientRecord:
        # impossible combinations (configs/consistency.yaml), judged on the values as given
        if errors := consistency.record_problems(self, "error"):
            raise consistency.rejection(errors)
        self._derive_nlr()
        self._derive_child_pugh_class()
        if self.line_of_therapy is not None and self.line_of_therapy > 1:
            self.prior_systemic_therapy = True  # a later line implies one (the contrary is refused above)
        return self

    def _derive_nlr(self) -> None:
        if self.neutrophils is None or self.lymphocytes is None:
            return
        from_counts = self.neutrophils / self.lymphocytes
        if self.nlr is None:
            message = field_ranges()["nlr"].error(from_counts)
            if message is not None:
                raise _reject("implausible_value", f"{message} (computed from neutrophils / lymphocytes)")
            self.nlr = round(from_counts, 4)
        elif abs(self.nlr - from_counts) > 0.05 * from_counts + 0.05:
            raise _reject(
                "inconsistent_nlr",
                f"nlr: {self.nlr:g} disagrees with neutrophils / lymphocytes = {from_counts:.2f}; "
                "expected them to agree within 5 %",
            )

    def _derive_child_pugh_class(self) -> None:
        points = self.child_pugh_score
        if points is None:
            return
        # a class given that disagrees with the items is refused by consistency.yaml's child_pugh_class_vs_items
        self.child_pugh_class = ChildPughClass(clinical.child_pugh_class(points))

    # -- computed scores ----------------------------------------------------------------------

    @computed_field  # type: ignore[prop-decorator]
    @property
    def albi_score(self) -> float | None:
        """ALBI score from albumin and bilirubin, or None when either is missing."""
        if self.albumin is None or self.bilirubin is None:
            return None
        return round(clinical.albi_score(self.albumin, self.bilirubin), 4)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def albi_grade(self) -> int | None:
        """ALBI grade 1–3, or None when the score cannot be computed."""
        score = self.albi_score
        return None if score is None else clinical.albi_grade(score)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def child_pugh_score(self) -> int | None:
        """Child-Pugh points 5–15 when all five items are present, else None."""
        items = (self.bilirubin, self.albumin, self.inr, self.ascites, self.encephalopathy)
        if any(item is None for item in items):
            return None
        return clinical.child_pugh_points(
            self.bilirubin, self.albumin, self.inr, self.ascites.value, self.encephalopathy.value
        )

    @property
    def is_genotyped(self) -> bool:
        """True when the tumour was sequenced (``alterations`` is a list, possibly empty)."""
        return self.alterations is not None

    @property
    def unseen_cancer_type(self) -> bool:
        """True when ``cancer_type`` is not one of the vocabulary's (the models never saw it)."""
        return self.cancer_type not in cancer_types()

    def warnings(self) -> list[str]:
        """Return warnings for plausible but unusual values (e.g. age under 18), an unseen cancer type and
        implausible combinations or units (configs/consistency.yaml, the unit hints of configs/ranges.yaml)."""
        found = [unseen_cancer_type_warning(self.cancer_type)] if self.unseen_cancer_type else []
        for name, spec in field_ranges().items():
            value = getattr(self, name, None)
            if value is not None and (message := spec.warning(float(value))):
                found.append(message)
        return found + consistency.messages(consistency.record_problems(self, "warning"))


INPUT_FIELDS: tuple[str, ...] = tuple(PatientRecord.model_fields)
_NUMERIC_FIELDS = frozenset(name for name, f in PatientRecord.model_fields.items()
                            if set(typing.get_args(f.annotation) or (f.annotation,)) - {type(None)} <= {int, float})
if set(_DECLARED_NUMERIC_FIELDS) != _NUMERIC_FIELDS:
    raise RuntimeError(f"fields {sorted(_NUMERIC_FIELDS ^ set(_DECLARED_NUMERIC_FIELDS))} lack or have a plausible "
                       "range in configs/ranges.yaml; expected one for each numeric field but ecog")


def _unit_text(field: str) -> str:
    extra = PatientRecord.model_fields[field].json_schema_extra
    unit = extra.get("unit") if isinstance(extra, dict) else None
    return f" in {unit}" if unit else ""


DERIVED_FIELDS: tuple[str, ...] = tuple(PatientRecord.model_computed_fields)


# ---------------------------------------------------------------------------------------------
# Error reporting shared by the CLI, batch ingestion and the API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One rejected value: the field (dotted path), the value given and the message."""

    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        return self.message


def field_errors(error: ValidationError, known_fields: str = "the patient-record fields") -> list[FieldError]:
    """Return one :class:`FieldError` per problem in a pydantic ``ValidationError``.

    Messages name the field, the value and what was expected; ``known_fields`` says which fields an
    unknown one should have been (the patient record's, unless the error is another model's).
    """
    found = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        if problems := (item.get("ctx") or {}).get(consistency.CONTEXT_KEY):  # one error per inconsistency
            prefix = f"{path}." if path else ""
            found += [FieldError(field=prefix + name, value=consistency.value_at(item.get("input"), name),
                                 message=message) for name, message in problems]
            continue
        value = item.get("input")
        message = item["msg"]
        if not path:  # a cross-field check names its field at the start of its message
            named = re.match(r"^(\w+):", message)
            path = named.group(1) if named else "record"
            value = value.get(path) if isinstance(value, dict) else None
        if path.split(".")[-1] == "patient_id":  # an identifier: never echoed, neither as value nor in text
            value = None
        if item["type"] in {"missing"}:
            message = f"{path}: required field is missing"
        elif item["type"] == "extra_forbidden":
            message = f"{path}: unknown field; expected one of {known_fields}"
        elif not _names_field(message, path):
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            message = f"{path}: {shown} — {message}"
        found.append(FieldError(field=path, value=value, message=message))
    return found


def _names_field(message: str, path: str) -> bool:
    last = path.split(".")[-1]
    return message.startswith(f"{path}:") or message.startswith(f"{last}:")


Outcome = Literal["objective_response", "primary_resistance"]
#: The outcomes every model predicts, in order.
OUTCOMES: tuple[str, ...] = get_args(Outcome)
