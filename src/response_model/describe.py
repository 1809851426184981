"""Descriptive statistics of canonical cohort tables: Table 1, prevalences, response rates with intervals."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from response_model.config import load_yaml
from response_model.dataset import parse_cohort
from response_model.features import build_feature_matrix
from response_model.pathways import Pathway, load_pathways
from response_model.schema import Alteration, AlterationKind


def proportion_ci(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Return (proportion, lower, upper) with a Wilson interval; NaNs when ``total`` is 0."""
    if total == 0:
        return (np.nan, np.nan, np.nan)
    interval = binomtest(int(successes), int(total)).proportion_ci(confidence, method="wilson")
    return (successes / total, interval.low, interval.high)


def _median_iqr(values: pd.Series) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return "—"
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.1f} ({q1:.1f}–{q3:.1f})"


def _percent(mask: pd.Series, of: pd.Series | None = None) -> str:
    of = mask.notna() if of is None else of
    total = int(of.sum())
    if total == 0:
        return "—"
    count = int(mask[of].fillna(False).astype(bool).sum())
    return f"{count} ({100 * count / total:.1f} %)"


def _km_median(months: pd.Series, events: pd.Series) -> str:
    from lifelines import KaplanMeierFitter

    keep = months.notna() & events.notna()
    if keep.sum() == 0:
        return "—"
    fitter = KaplanMeierFitter().fit(months[keep].astype(float), events[keep].astype(int))
    median = fitter.median_survival_time_
    return "not reached" if not np.isfinite(median) else f"{median:.1f}"


def table_one(cohorts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Return Table 1 (rows: characteristics; columns: cohorts) of canonical cohort tables.

    Continuous values are median (IQR); categorical n (%), percentages of non-missing values;
    survival medians are Kaplan–Meier estimates in months.
    """
    columns = {}
    for name, frame in cohorts.items():
        genotyped = frame["alterations"].notna()
        rows = {
            "patients, n": f"{len(frame)}",
            "age, years": _median_iqr(frame["age"]),
            "male": _percent(frame["sex"] == "male"),
            "hepatobiliary cancer": _percent(frame["cancer_type"] == "Hepatobiliary"),
            "viral aetiology (HBV/HCV)": _percent(frame["aetiology"].isin(["HBV", "HCV"]),
                                                  frame["aetiology"].notna()),
            "ECOG ≥ 1": _percent(frame["ecog"] >= 1, frame["ecog"].notna()),
            "Child-Pugh B or C": _percent(frame["child_pugh_class"].isin(["B", "C"]),
                                          frame["child_pugh_class"].notna()),
            "albumin, g/dL": _median_iqr(frame["albumin"]),
            "NLR": _median_iqr(frame["nlr"]),
            "AFP ≥ 400 ng/mL": _percent(frame["afp"] >= 400, frame["afp"].notna()),
            "macrovascular invasion": _percent(frame["macrovascular_invasion"] == True,  # noqa: E712
                                               frame["macrovascular_invasion"].notna()),
            "prior systemic therapy": _percent(frame["prior_systemic_therapy"] == True,  # noqa: E712
                                               frame["prior_systemic_therapy"].notna()),
            "TMB, mut/Mb": _median_iqr(frame["tmb"]),
            "PD-L1 TPS ≥ 1 %": _percent(frame["pdl1_tps"] >= 1, frame["pdl1_tps"].notna()),
            "PD-L1 missing": _percent(frame["pdl1_tps"].isna() & frame["pdl1_cps"].isna(),
                                      pd.Series(True, index=frame.index)),
            "tumour sequenced": _percent(genotyped, pd.Series(True, index=frame.index)),
            "objective response": _percent(frame["objective_response"] == 1,
                                           frame["objective_response"].notna()),
            "primary resistance": _percent(frame["primary_resistance"] == 1,
                                           frame["primary_resistance"].notna()),
            "median PFS, months (KM)": _km_median(frame["pfs_months"], frame["pfs_event"]),
            "median OS, months (KM)": _km_median(frame["os_months"], frame["os_event"]),
        }
        columns[name] = rows
    return pd.DataFrame(columns)


def _valid_records(frame: pd.DataFrame):
    parsed = parse_cohort(frame)
    if not parsed.ok:
        raise ValueError(f"{len(parsed.rejected)} invalid row(s); first: {parsed.rejected[0]}")
    return parsed.records


def pathway_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the pathway features (1/0, NaN = not sequenced) of a canonical table, one row per patient."""
    names = [p.name for p in load_pathways()]
    return build_feature_matrix(_valid_records(frame))[names]


def literature_prevalence() -> dict[str, float]:
    """Return the published prevalence (fraction) of each alteration row of ``configs/literature.yaml``."""
    return {row["label"]: float(row["value"]) for row in load_yaml("literature.yaml")["prevalence"]}


def _carries(alterations: list[Alteration], genes: set[str], kinds: set[AlterationKind],
             pathway: Pathway | None) -> bool:
    """Return whether ``alterations`` count for a literature row (its genes, kinds and pathway)."""
    hits = [a for a in alterations if a.gene in genes and (not kinds or a.kind in kinds)]
    return bool(pathway.drivers(hits) if pathway is not None else hits)


def alteration_prevalence(frame: pd.DataFrame) -> pd.DataFrame:
    """Return, per literature row, the prevalence among sequenced patients with a 95 % Wilson interval."""
    pathways = {p.name: p for p in load_pathways()}
    sequenced = [r for r in _valid_records(frame) if r.alterations is not None]
    rows = {}
    for spec in load_yaml("literature.yaml")["prevalence"]:
        genes, kinds = set(spec["genes"]), {AlterationKind(k) for k in spec.get("kinds", [])}
        pathway = pathways[spec["pathway"]] if "pathway" in spec else None
        carriers = sum(_carries(record.alterations, genes, kinds, pathway) for record in sequenced)
        rows[spec["label"]] = proportion_ci(carriers, len(sequenced))
    return pd.DataFrame(rows, index=["prevalence", "lower", "upper"]).T


def pathway_prevalence(frame: pd.DataFrame) -> pd.DataFrame:
    """Return, per pathway, the prevalence among sequenced patients with a 95 % Wilson interval."""
    pathways = pathway_frame(frame)
    rows = {}
    for name in pathways.columns:
        known = pathways[name].dropna()
        rows[name] = proportion_ci(int(known.sum()), len(known))
    return pd.DataFrame(rows, index=["prevalence", "lower", "upper"]).T


def response_rate_by(frame: pd.DataFrame, by: pd.Series | str) -> pd.DataFrame:
    """Return the objective response rate per group with n and a 95 % Wilson interval."""
    groups = frame[by] if isinstance(by, str) else by
    labelled = frame["objective_response"].notna() & groups.notna()
    rows = {}
    for group, part in frame[labelled].groupby(groups[labelled]):
        responders = int((part["objective_response"] == 1).sum())
        rate, low, high = proportion_ci(responders, len(part))
        rows[group] = {"n": len(part), "responders": responders, "orr": rate, "lower": low, "upper": high}
    return pd.DataFrame(rows).T.astype({"n": int, "responders": int})
