"""The regimen catalogue (``configs/regimens.yaml``): classes, mechanisms, trial figures and eligibility."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from response_model.config import load_yaml
from response_model.schema import PatientRecord

TARGETS = ("pd1_pdl1", "ctla4", "vegf", "multikinase")
_OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class EligibilityRule:
    """A condition on one record field that a patient must meet to receive a regimen."""

    field: str
    op: str
    value: Any
    unit: str
    reason: str

    def holds(self, values: Any) -> Any:
        """Return whether ``values`` (a number or an array; NaN = missing, which fails) meet the rule."""
        values = np.asarray(values, dtype=float)
        return ~np.isnan(values) & _OPERATORS[self.op](np.nan_to_num(values, nan=-np.inf), self.value)

    def check(self, record: PatientRecord) -> str | None:
        """Return None if ``record`` meets the rule, else why not (missing value included)."""
        given = getattr(record, self.field)
        if given is None:
            return f"{self.reason}; {self.field} is missing"
        value = float(given)  # one number: what ``holds`` computes, without building arrays
        if not math.isnan(value) and _OPERATORS[self.op](value, self.value):
            return None
        return f"{self.reason}; {self.field} is {given:g} {self.unit}"


@dataclass(frozen=True)
class Regimen:
    """One catalogue entry (or pan-cancer drug class)."""

    name: str
    label: str
    regimen_class: str
    category: str
    targets: tuple[str, ...]
    source: str
    usual_line: int | None = None
    trial: dict[str, Any] = field(default_factory=dict)
    eligibility: tuple[EligibilityRule, ...] = ()
    is_candidate: bool = True  # False for drug classes, which are never ranked

    def ineligibility(self, record: PatientRecord) -> list[str]:
        """Return the reasons ``record`` is not eligible (empty when eligible)."""
        return [reason for rule in self.eligibility if (reason := rule.check(record)) is not None]


def _regimen(name: str, spec: dict[str, Any], is_candidate: bool) -> Regimen:
    unknown = set(spec["targets"]) - set(TARGETS)
    if unknown:
        raise ValueError(f"regimens.yaml: {name}: unknown targets {sorted(unknown)}; expected {TARGETS}")
    return Regimen(
        name=name, label=spec["label"], regimen_class=spec["class"], category=spec["category"],
        targets=tuple(spec["targets"]), source=spec["source"], usual_line=spec.get("usual_line"),
        trial=dict(spec.get("trial", {})),
        eligibility=tuple(EligibilityRule(**rule) for rule in spec.get("eligibility", [])),
        is_candidate=is_candidate,
    )


@lru_cache(maxsize=4)
def load_catalogue(name: str = "regimens.yaml") -> dict[str, Regimen]:
    """Return every regimen and drug class of the catalogue, keyed by name (regimens first)."""
    config = load_yaml(name)
    catalogue = {key: _regimen(key, spec, True) for key, spec in config["regimens"].items()}
    catalogue.update({key: _regimen(key, spec, False) for key, spec in config.get("drug_classes", {}).items()})
    return catalogue


@lru_cache(maxsize=1)
def candidate_regimens() -> tuple[Regimen, ...]:
    """Return the regimens a patient can be scored under (drug classes excluded)."""
    return tuple(regimen for regimen in load_catalogue().values() if regimen.is_candidate)


@lru_cache(maxsize=1)
def regimen_classes() -> tuple[str, ...]:
    """Return the model families (``checkpoint_inhibitor``, ``tki_antiangiogenic``)."""
    return tuple(load_yaml("regimens.yaml")["classes"])


def get_regimen(name: str) -> Regimen:
    """Return the catalogue entry ``name``; raise ``KeyError`` naming the valid choices."""
    catalogue = load_catalogue()
    if name not in catalogue:
        raise KeyError(f"regimen {name!r} is not in the catalogue; expected one of {', '.join(catalogue)}")
    return catalogue[name]
