"""Named patient subsets: rules over the patient record and its derived features, as data.

A rule is text in a tiny grammar (never ``eval``)::

    rule    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | "(" or ")" | compare
    compare := FIELD OP VALUE | FIELD ["not"] "in" "[" VALUE ("," VALUE)* "]"
    OP      := == | != | < | <= | > | >=

FIELD is a patient-record field (``afp``, ``aetiology``, ``child_pugh_class``, …) or a derived feature of
:func:`response_model.features.build_feature_matrix` (``wnt_activation``, ``aetiology_viral``, …). Every
field and value is checked when the rule is read: an unknown one is refused naming the nearest valid one.

Membership is three-valued (Kleene logic, pandas' ``boolean`` dtype): a patient whose status the rule
cannot decide — not sequenced, marker not measured, aetiology unknown — is ``<NA>``, never counted as
outside the subset. Subsets are read from ``configs/subsets/*.yaml``.
"""

from __future__ import annotations

import operator
import os
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import Field

from response_model.config import config_dir, load_yaml
from response_model.errors import ConfigError, InputError
from response_model.schema import PatientRecord, cancer_types, shown

if TYPE_CHECKING:
    from response_model.dataset import ParsedCohort

#: record fields a rule cannot name: identifiers, and the alteration list (use its pathway features)
_NOT_RULE_FIELDS = frozenset({"patient_id", "alterations"})
#: an enumerated value that means "not known": such a patient's membership is <NA>, not False
_UNKNOWN_VALUE = "unknown"
_COMPARISONS: dict[str, Callable] = {"==": operator.eq, "!=": operator.ne, "<": operator.lt,
                                     "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class SubsetError(ConfigError):
    """A subset rule or subset file that cannot be used: names the subset, the field or value at fault and
    the nearest valid one."""


class SubsetInputError(InputError):
    """A cohort a subset cannot be evaluated on (invalid rows, a column the rule needs is absent)."""


# ---------------------------------------------------------------------------------------------
# The fields a rule may name
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleField:
    """A field a rule may name: ``kind`` is number, flag (0/1, true/false), choice (one of ``choices``)
    or text (any value)."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()


def _record_field(name: str, annotation: typing.Any) -> RuleField:
    """The :class:`RuleField` of a patient-record field, from its type."""
    base = next(a for a in typing.get_args(annotation) or (annotation,) if a is not type(None))
    if base is bool:
        return RuleField(name, "flag")
    if base in (int, float):
        return RuleField(name, "number")
    if isinstance(base, type) and issubclass(base, StrEnum):
        return RuleField(name, "choice", tuple(m.value for m in base))
    if name == "cancer_type":
        return RuleField(name, "choice", cancer_types())
    return RuleField(name, "text")


@lru_cache(maxsize=1)
def rule_fields() -> dict[str, RuleField]:
    """Return {name: field} of every field a rule may name: the record's fields, then the derived
    features that are not record fields (0/1 features are flags, the scores numbers)."""
    from response_model.features import patient_feature_names

    fields = {name: _record_field(name, info.annotation) for name, info in PatientRecord.model_fields.items()
              if name not in _NOT_RULE_FIELDS}
    numbers = {"afp_log10", "albi_score", "albi_grade", "child_pugh_score", "n_alterations"}
    for name in patient_feature_names():
        if name not in fields:
            fields[name] = RuleField(name, "number" if name in numbers else "flag")
    return fields


def _suggest(word: str, valid: Sequence[str]) -> str:
    from response_model.settings import suggestion

    return suggestion(word, list(valid))


# ---------------------------------------------------------------------------------------------
# Rule expressions
# ---------------------------------------------------------------------------------------------


class _Node:
    def evaluate(self, frame: pd.DataFrame) -> pd.Series:  # pragma: no cover - abstract
        raise NotImplementedError

    def fields(self) -> set[str]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class _Compare(_Node):
    field: RuleField
    op: str  # one of _COMPARISONS, "in", "not in"
    values: tuple  # one value for a comparison, several for in / not in

    def fields(self) -> set[str]:
        return {self.field.name}

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        column = frame[self.field.name]
        if self.field.kind in ("number", "flag"):
            numbers = _as_float(column)
            missing = np.isnan(numbers)
            if self.op in ("in", "not in"):
                hit = np.isin(numbers, np.array(self.values, dtype=float))
                hit = hit if self.op == "in" else ~hit
            else:
                with np.errstate(invalid="ignore"):
                    hit = _COMPARISONS[self.op](numbers, float(self.values[0]))
        else:
            text = column.astype(object)
            missing = (text.isna() | (text == _UNKNOWN_VALUE)).to_numpy(dtype=bool)
            hit = text.isin(self.values).to_numpy(dtype=bool)
            hit = hit if self.op in ("==", "in") else ~hit
        return pd.Series(pd.arrays.BooleanArray(np.asarray(hit, dtype=bool), missing), index=frame.index)


@dataclass(frozen=True)
class _Logic(_Node):
    op: str  # and, or, not
    parts: tuple[_Node, ...]

    def fields(self) -> set[str]:
        return set().union(*(part.fields() for part in self.parts))

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        values = [part.evaluate(frame) for part in self.parts]
        if self.op == "not":
            return ~values[0]
        out = values[0]
        for value in values[1:]:  # Kleene logic: NA and False = False, NA or True = True
            out = (out & value) if self.op == "and" else (out | value)
        return out


def _as_float(column: pd.Series) -> np.ndarray:
    """``column`` (float, nullable integer or boolean) as float64 with NaN where missing."""
    if isinstance(column.dtype, pd.BooleanDtype) or column.dtype == object:
        column = column.astype("Float64")
    return column.astype("Float64").to_numpy(dtype=float, na_value=np.nan)


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[()\[\],])|"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'"""
                    r"""|(?P<word>[A-Za-z0-9_.+\-]+)|(?P<bad>\S))""")
_KEYWORDS = frozenset({"and", "or", "not", "in"})


@dataclass
class _Parser:
    """Recursive-descent parser of one rule; errors name the subset and the rule."""

    subset: str
    text: str
    tokens: list[tuple[str, str]] = field(default_factory=list)
    at: int = 0

    def fail(self, message: str) -> SubsetError:
        return SubsetError(f"subset {self.subset!r}: rule {shown(self.text, 120)}: {message}")

    def tokenize(self) -> None:
        for match in _TOKEN.finditer(self.text):
            kind = match.lastgroup
            if kind == "bad":
                raise self.fail(f"unexpected character {match.group(kind)!r} at position {match.start(kind) + 1}")
            value = match.group(kind)
            if kind in ("dq", "sq"):
                kind = "text"
            elif kind == "word" and value.lower() in _KEYWORDS:
                kind, value = "keyword", value.lower()
            self.tokens.append((kind, value))

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        found = self.peek()
        if found[0] != kind or (value is not None and found[1] != value):
            wanted = repr(value) if value is not None else {"word": "a field name"}.get(kind, kind)
            got = "the end of the rule" if found[0] == "end" else repr(found[1])
            raise self.fail(f"expected {wanted}, got {got}")
        self.at += 1
        return found[1]

    def parse(self) -> _Node:
        self.tokenize()
        if not self.tokens:
            raise self.fail("empty rule; expected e.g. 'wnt_activation == 1' or 'afp >= 400 and child_pugh_class == A'")
        node = self.either()
        if self.peek()[0] != "end":
            raise self.fail(f"unexpected {self.peek()[1]!r} after a complete rule; join conditions with 'and' / 'or'")
        return node

    def either(self) -> _Node:
        parts = [self.both()]
        while self.peek() == ("keyword", "or"):
            self.at += 1
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else _Logic("or", tuple(parts))

    def both(self) -> _Node:
        parts = [self.negation()]
        while self.peek() == ("keyword", "and"):
            self.at += 1
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else _Logic("and", tuple(parts))

    def negation(self) -> _Node:
        if self.peek() == ("keyword", "not"):
            self.at += 1
            return _Logic("not", (self.negation(),))
        if self.peek() == ("punct", "("):
            self.at += 1
            node = self.either()
            self.take("punct", ")")
            return node
        return self.comparison()

    def comparison(self) -> _Node:
        name = self.take("word")
        known = rule_fields()
        if name not in known:
            raise self.fail(f"unknown field {shown(name)}{_suggest(name, list(known))}; expected a patient-record "
                            "field or a derived feature (response_model.features.patient_feature_names)")
        rule_field = known[name]
        if self.peek() == ("keyword", "not"):
            self.at += 1
            self.take("keyword", "in")
            return _Compare(rule_field, "not in", self.value_list(rule_field))
        if self.peek() == ("keyword", "in"):
            self.at += 1
            return _Compare(rule_field, "in", self.value_list(rule_field))
        op = self.take("op")
        return _Compare(rule_field, op, (self.value(rule_field, op),))

    def value_list(self, rule_field: RuleField) -> tuple:
        self.take("punct", "[")
        values = [self.value(rule_field, "in")]
        while self.peek() == ("punct", ","):
            self.at += 1
            values.append(self.value(rule_field, "in"))
        self.take("punct", "]")
        return tuple(values)

    def value(self, rule_field: RuleField, op: str):
        kind, raw = self.peek()
        if kind not in ("word", "text"):
            got = "the end of the rule" if kind == "end" else repr(raw)
            raise self.fail(f"{rule_field.name}: expected a value after {op!r}, got {got}")
        self.at += 1
        try:
            return _checked_value(rule_field, op, raw)
        except ValueError as error:
            raise self.fail(str(error)) from None


_FLAG_WORDS = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


def _checked_value(rule_field: RuleField, op: str, raw: str):
    """The value ``raw`` as ``rule_field`` compares it (float, or the canonical choice); raises ValueError
    naming the field, the value and what was expected."""
    name = rule_field.name
    if rule_field.kind == "flag":
        if op not in ("==", "!=", "in"):
            raise ValueError(f"{name}: a yes/no feature compares only with == or !=, not {op!r}")
        if raw.lower() not in _FLAG_WORDS:
            raise ValueError(f"{name}: {shown(raw)} is not a yes/no value; expected 1 or 0 (true or false)")
        return _FLAG_WORDS[raw.lower()]
    if rule_field.kind == "number":
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"{name}: {shown(raw)} is not a number; expected a number (e.g. {name} >= 1)") from None
        if not np.isfinite(number):
            raise ValueError(f"{name}: {shown(raw)} is not a finite number")
        return number
    if op not in ("==", "!=", "in"):
        raise ValueError(f"{name}: a categorical field compares only with ==, != or in [...], not {op!r}")
    if rule_field.kind == "text":
        return raw
    by_lower = {choice.lower(): choice for choice in rule_field.choices}
    if raw.lower() == _UNKNOWN_VALUE and _UNKNOWN_VALUE in by_lower:
        raise ValueError(f"{name}: {raw!r} means 'not known'; such patients' membership is <NA> whatever "
                         "the rule, so a rule cannot select them")
    if raw.lower() not in by_lower:
        choices = ", ".join(repr(c) for c in rule_field.choices if c != _UNKNOWN_VALUE)
        raise ValueError(f"{name}: {shown(raw)} is not one of {choices}{_suggest(raw, rule_field.choices)}")
    return by_lower[raw.lower()]


def parse_rule(text: str, subset: str = "(unnamed)") -> _Node:
    """Return the parsed, checked rule ``text``; raises :class:`SubsetError` naming ``subset``."""
    if not isinstance(text, str):
        raise SubsetError(f"subset {subset!r}: rule must be text, got {type(text).__name__}")
    return _Parser(subset, text).parse()


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subset:
    """A named subset: ``rule`` (text, checked when made), the hcc-evidence.md row it rests on and a
    one-line description."""

    name: str
    rule: str
    citation: str | None = None
    description: str = ""
    _expression: _Node = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_expression", parse_rule(self.rule, self.name))

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the rule reads, sorted."""
        return tuple(sorted(self._expression.fields()))

    def membership(self, frame: pd.DataFrame) -> pd.Series:
        """Return, per row of ``frame`` (a :func:`subset_frame`), True inside the subset, False outside and
        <NA> where the rule cannot tell (a field it needs is missing); pandas ``boolean`` dtype."""
        absent = [name for name in self.fields if name not in frame.columns]
        if absent:
            raise SubsetInputError(f"subset {self.name!r} needs column(s) {', '.join(absent)}, absent from the "
                                   "frame; expected the output of subset_frame(cohort)")
        return self._expression.evaluate(frame).rename(self.name)


def subset_frame(cohort: pd.DataFrame | ParsedCohort) -> pd.DataFrame:
    """Return ``cohort`` (a canonical cohort table, or one already validated: a ParsedCohort) with the derived
    patient features added: one row per patient, on the table's index; the record's own columns keep their
    values (``child_pugh_class`` is 'A'/'B'/'C', not the feature's ordinal). Raises :class:`SubsetInputError`
    if a row of a table is invalid (a ParsedCohort's rejected rows are already left out)."""
    from response_model.dataset import ParsedCohort, parse_cohort
    from response_model.features import build_feature_matrix

    parsed = cohort if isinstance(cohort, ParsedCohort) else parse_cohort(cohort.reset_index(drop=True))
    if not parsed.ok and not isinstance(cohort, ParsedCohort):
        raise SubsetInputError(f"{len(parsed.rejected)} invalid row(s) in the cohort; first: {parsed.rejected[0]}; "
                               "validate it first (response-model validate)")
    frame = parsed.frame()
    features = build_feature_matrix(parsed.records)
    extra = features[[c for c in features.columns if c not in frame.columns]]
    frame = pd.concat([frame, extra], axis=1)
    if not isinstance(cohort, ParsedCohort):
        frame.index = cohort.index
    return frame


# ---------------------------------------------------------------------------------------------
# Subset files
# ---------------------------------------------------------------------------------------------


def _file_model():
    from response_model.settings import Strict

    class SubsetSpec(Strict):
        rule: str = Field(description="the rule, e.g. 'wnt_activation == 1'")
        citation: str | None = Field(None, description="the hcc-evidence.md row the subset rests on")
        description: str = ""

    class SubsetFile(Strict):
        subsets: dict[str, SubsetSpec] = Field(description="{name: {rule, citation, description}}")

    return SubsetFile


def default_subset_files() -> list[Path]:
    """Return ``configs/subsets/*.yaml``, sorted by name."""
    return sorted((config_dir() / "subsets").glob("*.yaml"))


def load_subsets(paths: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Subset]:
    """Return {name: subset} of the subset files ``paths`` (default :func:`default_subset_files`), in file
    order; raises :class:`SubsetError` for a malformed file, a bad rule or a name given twice."""
    from response_model.settings import check

    subsets: dict[str, Subset] = {}
    where: dict[str, str] = {}
    for path in (default_subset_files() if paths is None else list(paths)):
        spec = check(load_yaml(path), _file_model(), path, "subset file")
        for name, entry in spec.subsets.items():
            if name in subsets:
                raise SubsetError(f"{path}: subset {name!r} is defined twice (also in {where[name]}); "
                                  "expected each name once")
            try:
                subsets[name] = Subset(name, entry.rule, entry.citation, entry.description)
            except SubsetError as error:
                raise SubsetError(f"{path}: {error}") from None
            where[name] = str(path)
    return subsets


def get_subset(name: str, subsets: dict[str, Subset] | None = None) -> Subset:
    """Return the subset ``name`` (of ``subsets``, default :func:`load_subsets`); raises SubsetError naming
    the nearest defined one."""
    subsets = load_subsets() if subsets is None else subsets
    if name not in subsets:
        raise SubsetError(f"unknown subset {shown(name)}{_suggest(name, list(subsets))}; expected one of "
                          f"{', '.join(subsets) or '(none defined)'} (configs/subsets/*.yaml)")
    return subsets[name]
