"""Clinical consistency checks: the rules of ``configs/consistency.yaml`` and the unit hints of ``configs/ranges.yaml``.

:func:`record_problems` returns what a patient record's rules find (errors: impossible combinations,
refused by the record's own validation; warnings: implausible ones, carried by
:meth:`~response_model.schema.PatientRecord.warnings`), :func:`request_problems` what a prediction
request's rules find (two different patient ids). Rules are loaded and checked once.

This module does not import :mod:`response_model.schema` at import time: the schema calls it.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticCustomError

from response_model import clinical
from response_model.config import load_yaml
from response_model.errors import ConfigError

if TYPE_CHECKING:
    from response_model.schema import PatientRecord

CONFIG = "consistency.yaml"
SEVERITIES = ("error", "warning")
SCOPES = ("record", "alteration", "request")
TESTS = frozenset({"in", "min", "max", "present", "matches", "above_field", "differs_from_field"})
#: values computed from the record that a rule may test, by scope (not inputs, so never in ``fields``)
DERIVED = {"record": ("child_pugh_score", "child_pugh_class_from_items"), "alteration": ("kind_from_change",),
           "request": ()}
REQUEST_FIELDS = ("patient_id", "patient.patient_id")
ALTERATION_FIELDS = ("gene", "kind", "protein_change")
_IDENTIFIERS = frozenset(REQUEST_FIELDS)
_RULE_KEYS = frozenset({"id", "scope", "severity", "fields", "when", "message", "source"})


@dataclass(frozen=True)
class Problem:
    """What one rule found: its id and severity, the field it is filed under, the fields it read, the message."""

    rule: str
    severity: str
    field: str
    fields: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Rule:
    """One consistency rule of ``configs/consistency.yaml``."""

    id: str
    scope: str
    severity: str
    fields: tuple[str, ...]
    when: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    message: str
    source: str

    def fires(self, values: Mapping[str, Any]) -> bool:
        """True when every test holds on ``values`` (a field a test names must be given)."""
        return all(values.get(name) is not None and _holds(values[name], tests, values)
                   for name, tests in self.when)

    def problem(self, values: Mapping[str, Any], prefix: str = "") -> Problem:
        """The problem this rule reports on ``values``; field paths get ``prefix`` (e.g. ``alterations.0.``)."""
        derived = DERIVED[self.scope]  # computed, so shown bare: "class A", "reads as nonsense"
        shown = {name: "(identifier not shown)" if name in _IDENTIFIERS else str(value) if name in derived
                 else _shown(value) for name, value in values.items()}
        return Problem(self.id, self.severity, prefix + self.fields[0], tuple(prefix + f for f in self.fields),
                       self.message.format_map(shown))


def _holds(value: Any, tests: Sequence[tuple[str, Any]], values: Mapping[str, Any]) -> bool:
    """True when ``value`` passes every test of ``tests`` (``values``: the other fields, for comparisons)."""
    for test, expected in tests:
        if test == "in":  # expected: (options that are not yes/no, yes/no options), see _compiled
            holds = value in expected[isinstance(value, bool)]
        elif test in ("min", "max"):
            holds = _is_number(value) and (value >= expected if test == "min" else value <= expected)
        elif test == "present":
            holds = expected is (value is not None)
        elif test == "matches":
            holds = isinstance(value, str) and expected.fullmatch(value) is not None
        elif test == "above_field":
            other = values.get(expected)
            holds = _is_number(value) and _is_number(other) and value > other
        else:  # differs_from_field
            other = values.get(expected)
            holds = other is not None and not _same(value, other)
        if not holds:
            return False
    return True


def _checked_tests(where: str, tests: Any, names: frozenset[str] | set[str]) -> tuple[tuple[str, Any], ...]:
    """A field's tests, compiled (:func:`_compiled`); raises :class:`ConfigError` for an unknown test, a value
    of the wrong type, a comparison with a field ``names`` lacks or a malformed pattern."""
    if not isinstance(tests, dict) or not tests or set(tests) - TESTS:
        raise ConfigError(f"{where}: {tests!r}; expected a mapping of tests among {sorted(TESTS)}")
    expected_types = {"in": list, "min": (int, float), "max": (int, float), "present": bool, "matches": str,
                      "above_field": str, "differs_from_field": str}
    for test, value in tests.items():
        if not isinstance(value, expected_types[test]) or (test.endswith("_field") and value not in names):
            wanted = "a field the rule may read" if test.endswith("_field") else str(expected_types[test])
            raise ConfigError(f"{where}.{test}: {value!r}; expected {wanted}")
    try:
        return _compiled(tests)
    except re.error as error:
        raise ConfigError(f"{where}.matches: {tests['matches']!r} is not a regular expression ({error})") from None


def _compiled(tests: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A field's tests as :func:`_holds` reads them: ``in`` as two sets (True == 1 in Python, not in a
    record), ``matches`` as a compiled pattern."""
    compiled = []
    for test, expected in tests.items():
        if test == "in":
            options = list(expected)
            expected = (frozenset(o for o in options if not isinstance(o, bool)),
                        frozenset(o for o in options if isinstance(o, bool)))
        elif test == "matches":
            expected = re.compile(expected)
        compiled.append((test, expected))
    return tuple(compiled)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps yes/no apart from numbers (``True == 1`` in Python, not in a record)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    """How an input value appears in a message: text quoted, yes/no as true/false."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


# -- loading -------------------------------------------------------------------------------------


def _known_fields(scope: str) -> frozenset[str]:
    """The input fields a rule of ``scope`` may read."""
    if scope == "request":
        return frozenset(REQUEST_FIELDS)
    if scope == "alteration":
        return frozenset(ALTERATION_FIELDS)
    from response_model.schema import PatientRecord

    return frozenset(PatientRecord.model_fields)


def _rule(spec: Any, where: str) -> Rule:
    """The rule of one ``rules`` item, checked; raises :class:`ConfigError` naming the rule and the key."""
    if not isinstance(spec, dict) or not set(spec) >= _RULE_KEYS:
        raise ConfigError(f"{where}: expected a mapping with id, scope, severity, fields, when, message and source")
    where = f"{where} ({spec['id']})"
    if spec["scope"] not in SCOPES or spec["severity"] not in SEVERITIES:
        raise ConfigError(f"{where}: scope {spec['scope']!r} / severity {spec['severity']!r}; expected one of "
                          f"{', '.join(SCOPES)} / {', '.join(SEVERITIES)}")
    fields, when = list(spec["fields"] or []), dict(spec["when"] or {})
    known, derived = _known_fields(spec["scope"]), set(DERIVED[spec["scope"]])
    wrong = [f for f in fields if f not in known] + [f for f in when if f not in known | derived]
    wrong += [f for f in when if f in known and f not in fields]
    if not fields or not when or wrong:
        raise ConfigError(f"{where}: fields {wrong or fields} not known to a {spec['scope']} rule or not in its "
                          "'fields'; expected 'fields' to list every input field its 'when' reads")
    compiled = tuple((name, _checked_tests(f"{where}: when.{name}", tests, known | derived))
                     for name, tests in when.items())
    placeholders = {name for _, name, _, _ in string.Formatter().parse(spec["message"]) if name}
    if placeholders - set(fields) - derived:
        raise ConfigError(f"{where}: message names {sorted(placeholders - set(fields) - derived)}; expected only "
                          "fields the rule reads")
    source = str(spec["source"] or "")
    if not (source.startswith("hcc-evidence.md") or source.startswith("assumption")):
        raise ConfigError(f"{where}: source {source!r}; expected its row of hcc-evidence.md or 'assumption: …'")
    return Rule(id=str(spec["id"]), scope=spec["scope"], severity=spec["severity"], fields=tuple(fields),
                when=compiled, message=spec["message"], source=source)


@lru_cache(maxsize=1)
def rules() -> tuple[Rule, ...]:
    """The rules of ``configs/consistency.yaml``, checked (ids unique, fields known, a source each)."""
    items = (load_yaml(CONFIG) or {}).get("rules")
    if not isinstance(items, list):
        raise ConfigError(f"{CONFIG}: expected a 'rules' list")
    found = tuple(_rule(spec, f"{CONFIG}: rules[{i}]") for i, spec in enumerate(items))
    ids = [r.id for r in found]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"{CONFIG}: rule ids {repeated} repeat; expected unique ids")
    return found


@dataclass(frozen=True)
class UnitHint:
    """A value plausible in the schema's unit but typical of another (``unit_hint`` of ``configs/ranges.yaml``)."""

    field: str
    unit: str
    min: float
    max: float
    other_unit: str
    hint: str
    source: str

    def problem(self, value: float) -> Problem | None:
        """The warning for ``value``, or None when it is not in the hint's range."""
        if not self.min <= value <= self.max:
            return None
        message = (f"{self.field}: {value:g} {self.unit} is plausible but typical of {self.other_unit}; "
                   f"if it was measured in {self.other_unit}, {self.hint}; expected {self.unit}")
        return Problem(f"unit_hint.{self.field}", "warning", self.field, (self.field,), message)


@lru_cache(maxsize=1)
def unit_hints() -> tuple[UnitHint, ...]:
    """The unit hints of ``configs/ranges.yaml`` (fields with a ``unit_hint``)."""
    found = []
    for name, spec in load_yaml("ranges.yaml").items():
        hint = spec.get("unit_hint")
        if hint is None:
            continue
        if not {"min", "max", "unit", "hint", "source"} <= set(hint):
            raise ConfigError(f"ranges.yaml: {name}.unit_hint: expected min, max, unit, hint and source")
        found.append(UnitHint(name, spec["unit"], float(hint["min"]), float(hint["max"]), hint["unit"],
                              hint["hint"], hint["source"]))
    return tuple(found)


# -- checking ------------------------------------------------------------------------------------


def _record_values(record: PatientRecord) -> dict[str, Any]:
    """The record's input values with the derived values a rule may test."""
    values = dict(record.__dict__)
    points = record.child_pugh_score
    values["child_pugh_score"] = points
    values["child_pugh_class_from_items"] = None if points is None else clinical.child_pugh_class(points)
    return values


def _alteration_values(alteration: Any) -> dict[str, Any]:
    from response_model.schema import infer_kind

    change = alteration.protein_change
    return {"gene": alteration.gene, "kind": alteration.kind, "protein_change": change,
            "kind_from_change": None if change is None else infer_kind(change).value}


def record_problems(record: PatientRecord, severity: str) -> list[Problem]:
    """The problems of ``severity`` ("error" or "warning") the record and its alterations rules find;
    warnings include the unit hints."""
    found: list[Problem] = []
    active = [r for r in rules() if r.severity == severity]
    values = _record_values(record)
    found += [r.problem(values) for r in active if r.scope == "record" and r.fires(values)]
    per_alteration = [r for r in active if r.scope == "alteration"]
    for i, alteration in enumerate((record.alterations or ()) if per_alteration else ()):
        values = _alteration_values(alteration)
        found += [r.problem(values, f"alterations.{i}.") for r in per_alteration if r.fires(values)]
    if severity == "warning":
        for hint in unit_hints():
            value = getattr(record, hint.field, None)
            if _is_number(value) and (problem := hint.problem(float(value))) is not None:
                found.append(problem)
    return found


def request_problems(body: Mapping[str, Any]) -> list[Problem]:
    """The problems the request rules find in a prediction request body (raw JSON; ids compared stripped)."""
    patient = body.get("patient")
    inner = patient.get("patient_id") if isinstance(patient, Mapping) else None
    values = {"patient_id": _id_text(body.get("patient_id")), "patient.patient_id": _id_text(inner)}
    return [r.problem(values) for r in rules() if r.scope == "request" and r.fires(values)]


def _id_text(value: Any) -> str | None:
    """An identifier as compared: stripped text, None when absent or blank (a non-text id is the schema's error)."""
    return value.strip() or None if isinstance(value, str) else None


def messages(problems: Sequence[Problem]) -> list[str]:
    """The messages of ``problems``, in order."""
    return [p.message for p in problems]


#: the key of a rejection's context holding its problems as (field, message) pairs (schema.field_errors reads it)
CONTEXT_KEY = "consistency"


def rejection(problems: Sequence[Problem]) -> PydanticCustomError:
    """The validation error refusing a record for ``problems`` (one field error each in ``field_errors``)."""
    text = "; ".join(p.message for p in problems).replace("{", "{{").replace("}", "}}")
    return PydanticCustomError("inconsistent", text, {CONTEXT_KEY: tuple((p.field, p.message) for p in problems)})


def value_at(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` of raw input (``alterations.0.kind``), or None where there is none."""
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, Sequence) and not isinstance(data, str) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
