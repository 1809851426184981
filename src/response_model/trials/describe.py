"""A subset in a cohort: prevalence (among all and among tested, Wilson 95 %), the share whose status is
unknown, prevalence per sequencing panel (unequal access to testing), patients to screen per patient
enrolled, and Table 1 inside vs outside (:func:`response_model.describe.table_one`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from response_model.describe import proportion_ci, table_one
from response_model.trials.subsets import Subset

#: columns of the cohort that say where or how a patient was tested, described when present
GROUP_COLUMNS = ("site", "sequencing_panel")


@dataclass(frozen=True)
class Prevalence:
    """Counts and prevalences of one subset (one group of patients): ``inside``/``outside``/``unknown``
    patients; ``all_*`` = inside / all, ``tested_*`` = inside / (inside + outside), each (estimate, lower,
    upper) of a Wilson 95 % interval, None when not estimable (no patient, or none tested)."""

    n: int
    inside: int
    outside: int
    unknown: int
    among_all: tuple[float, float, float] | None
    among_tested: tuple[float, float, float] | None

    @property
    def share_unknown(self) -> float | None:
        """The share of patients whose status is unknown; None without patients."""
        return self.unknown / self.n if self.n else None

    @property
    def screen_per_enrolled(self) -> tuple[float, float, float] | None:
        """Patients to screen (test) per patient enrolled, 1 / prevalence among tested, with the interval
        bounds inverted; None when nobody tested is inside (no number of screened patients enrols one)."""
        if self.among_tested is None or self.inside == 0:
            return None
        estimate, lower, upper = self.among_tested
        return (1.0 / estimate, 1.0 / upper, 1.0 / lower if lower > 0 else math.inf)


def prevalence(membership: pd.Series) -> Prevalence:
    """Return the :class:`Prevalence` of a membership (True / False / <NA>)."""
    inside = int((membership == True).sum())  # noqa: E712 - <NA> counts as neither
    outside = int((membership == False).sum())  # noqa: E712
    n = len(membership)
    tested = inside + outside
    return Prevalence(n, inside, outside, n - tested,
                      proportion_ci(inside, n) if n else None,
                      proportion_ci(inside, tested) if tested else None)


@dataclass
class SubsetDescription:
    """What ``trials describe`` says of one subset: overall prevalence, per group column (panel, site),
    Table 1 (inside / outside / unknown) and warnings naming what is missing."""

    subset: Subset
    overall: Prevalence
    by_group: dict[str, dict[str, Prevalence]] = field(default_factory=dict)
    table_one: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)


def describe_subset(frame: pd.DataFrame, subset: Subset) -> SubsetDescription:
    """Return the description of ``subset`` in ``frame`` (:func:`~response_model.trials.subsets.subset_frame`)."""
    membership = subset.membership(frame)
    overall = prevalence(membership)
    described = SubsetDescription(subset, overall)
    for column in GROUP_COLUMNS:
        if column in frame.columns and frame[column].notna().any():
            groups = frame[column].astype(object).where(frame[column].notna(), "(not recorded)")
            described.by_group[column] = {str(g): prevalence(membership[groups == g])
                                          for g in sorted(groups.unique(), key=str)}
    parts = {"inside": membership.fillna(False), "outside": (~membership).fillna(False),
             "unknown": membership.isna()}
    described.table_one = table_one({name: frame[mask.to_numpy(dtype=bool)] for name, mask in parts.items()})
    described.warnings = _warnings(subset, overall)
    return described


def _warnings(subset: Subset, overall: Prevalence) -> list[str]:
    """The warnings of a description: empty cohort, empty subset, nobody tested, most patients unknown."""
    name, fields = subset.name, ", ".join(subset.fields)
    if overall.n == 0:
        return [f"{name}: the cohort has no patient"]
    notes = []
    if overall.inside + overall.outside == 0:
        notes.append(f"{name}: no patient's status is known ({fields} missing for all {overall.n}); "
                     "prevalence is not estimable from this cohort")
    elif overall.inside == 0:
        notes.append(f"{name}: empty — none of the {overall.inside + overall.outside} patients tested is inside; "
                     "no number of screened patients is known to enrol one")
    if overall.inside + overall.outside and overall.share_unknown >= 0.5:
        notes.append(f"{name}: status unknown for {overall.unknown} of {overall.n} patients "
                     f"({overall.share_unknown:.0%}; {fields} missing); the prevalence among tested rests on "
                     "the others, who may differ (unequal access to testing)")
    return notes


def _interval(values: tuple[float, float, float] | None, percent: bool = True) -> str:
    if values is None:
        return "not estimable"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    estimate, lower, upper = (scale * v for v in values)
    high = "∞" if math.isinf(upper) else f"{upper:.1f}"
    return f"{estimate:.1f}{unit} (95 % CI {lower:.1f}–{high})"


def prevalence_lines(p: Prevalence, indent: str = "  ") -> list[str]:
    """The text lines of one :class:`Prevalence`."""
    unknown = "—" if p.share_unknown is None else f"{p.share_unknown:.1%}"
    return [f"{indent}patients {p.n}: inside {p.inside}, outside {p.outside}, unknown {p.unknown} ({unknown})",
            f"{indent}prevalence among all:    {_interval(p.among_all)}",
            f"{indent}prevalence among tested: {_interval(p.among_tested)}",
            f"{indent}patients to screen per patient enrolled: {_interval(p.screen_per_enrolled, percent=False)}"]


def description_text(described: SubsetDescription) -> str:
    """The text ``trials describe`` prints for one subset."""
    subset = described.subset
    lines = [f"subset {subset.name}: {subset.rule}", *prevalence_lines(described.overall)]
    for column, groups in described.by_group.items():
        lines.append(f"  by {column}:")
        for group, p in groups.items():
            lines.append(f"    {group}:")
            lines += prevalence_lines(p, indent="      ")
    if described.table_one is not None:
        lines += ["  Table 1 (inside / outside / unknown):",
                  *("    " + line for line in described.table_one.to_string().splitlines())]
    lines += [f"  warning: {warning}" for warning in described.warnings]
    return "\n".join(lines)


def prevalence_table(frame: pd.DataFrame, subsets: list[Subset]) -> pd.DataFrame:
    """One row per subset (index): prevalence among tested with its Wilson 95 % interval (lower, upper), the
    share of unknown status and the counts; a subset nobody was tested for is left out (its description
    says so)."""
    rows = {}
    for subset in subsets:
        p = prevalence(subset.membership(frame))
        if p.among_tested is None:
            continue
        rows[subset.name] = {"prevalence": p.among_tested[0], "lower": p.among_tested[1], "upper": p.among_tested[2],
                             "unknown_share": p.share_unknown, "inside": p.inside, "outside": p.outside,
                             "unknown": p.unknown}
    columns = ["prevalence", "lower", "upper", "unknown_share", "inside", "outside", "unknown"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)
