"""Explanations a clinician reads: per-feature contributions summed into terms of the patient record.

The model's explanation is one exact contribution per feature (log-odds before calibration; see
:mod:`response_model.modeling.explain`). For display they are summed into **terms**
(``configs/explanations.yaml`` ``display``):

* the regimen as one term ("Regimen: Lenvatinib" = Σ of its class, mechanism and regimen indicators);
* derived features with their source fields (ALBI grade and score with albumin and bilirubin,
  Child-Pugh class and points with INR, ascites and encephalopathy, the aetiology and cancer-type
  indicators as one term each, AFP as ng/mL, each genomic pathway as one term);
* every feature whose record field(s) are missing in one **not recorded** term, which names the
  fields (largest weight first) and, for a patient never sequenced, the genomic tests that would move
  the estimate most (:func:`response_model.modeling.interpret.genomic_tests`).

Each term is an exact sum of per-feature values and every feature is in exactly one term, so
base value + Σ terms = the log-odds, as for the per-feature values (which stay in the audit record
and in batch output). Labels and units come from the schema (field descriptions, units), never cut.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from response_model.config import load_yaml
from response_model.pathways import load_pathways
from response_model.schema import PatientRecord

SCALE = "log-odds before calibration (whole model)"
NOT_RECORDED = "not_recorded"
TERM_PREFIX = "term_"  # batch output columns: term_<outcome>__<term>
_COMPUTED = ("albi_score", "albi_grade", "child_pugh_score")  # computed values of the record


@lru_cache(maxsize=1)
def display_config() -> dict[str, Any]:
    """The ``display`` section of ``configs/explanations.yaml``."""
    return load_yaml("explanations.yaml")["display"]


@lru_cache(maxsize=256)
def field_label(field: str) -> str:
    """The human label of a record field (or computed value): the config's, else the schema
    description up to its first ';', else the name in words. Never shortened."""
    labels = display_config()["field_labels"]
    if field in labels:
        return str(labels[field])
    info = PatientRecord.model_fields.get(field)
    if info is not None and info.description:
        return info.description.split(";")[0].strip()
    return field.replace("_", " ").capitalize()


@lru_cache(maxsize=256)
def field_unit(field: str) -> str | None:
    """The unit of a record field, as the schema declares it (None if it has none)."""
    info = PatientRecord.model_fields.get(field)
    extra = info.json_schema_extra if info is not None else None
    return extra.get("unit") if isinstance(extra, dict) else None


@dataclass(frozen=True)
class Term:
    """One displayed term: ``features`` (positions in the explanation's names) summed into it."""

    term: str
    label: str
    kind: str  # regimen, pathway, sequencing or fields
    features: tuple[int, ...]
    parts: tuple[tuple[str, str], ...]  # (record attribute, short name) named in the term's text


@dataclass(frozen=True)
class Grouping:
    """The terms of one explanation's feature names and the record fields behind each feature."""

    names: tuple[str, ...]
    terms: tuple[Term, ...]
    term_of: np.ndarray  # (features,) index of each feature's term
    fields: tuple[str, ...]  # the record fields behind the features
    sources: np.ndarray  # (features, fields) bool: feature j is computed from field f
    feature_fields: tuple[tuple[str, ...], ...]  # the fields of each feature

    @property
    def columns(self) -> list[str]:
        """The grouped values' column names: every term, then :data:`NOT_RECORDED`."""
        return [t.term for t in self.terms] + [NOT_RECORDED]

    def field_missing(self, records: Sequence[PatientRecord]) -> np.ndarray:
        """(records, fields) bool: the field is missing (None) in the record."""
        return np.array([[getattr(r, f) is None for f in self.fields] for r in records],
                        dtype=bool).reshape(len(records), len(self.fields))

    def feature_missing(self, field_missing: np.ndarray) -> np.ndarray:
        """(rows, features) bool: some field the feature is computed from is missing."""
        return (field_missing.astype(np.int64) @ self.sources.T.astype(np.int64)) > 0

    def sums(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """(rows, terms + 1): each term's Σ of its recorded features' values, then Σ of the missing
        features' values (not recorded); rows sum to the rows of ``values``."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        out = np.empty((values.shape[0], len(self.terms) + 1))
        out[:, :-1] = np.where(missing, 0.0, values) @ self.indicator
        out[:, -1] = np.where(missing, values, 0.0).sum(axis=1)
        return out

    @property
    def indicator(self) -> np.ndarray:
        """(features, terms) float64: 1 where the feature is in the term (one 1 per row)."""
        return _indicator(self.term_of.tobytes(), len(self.terms))


@lru_cache(maxsize=16)
def _indicator(term_of: bytes, n_terms: int) -> np.ndarray:
    index = np.frombuffer(term_of, dtype=np.intp)
    out = np.zeros((len(index), n_terms))
    out[np.arange(len(index)), index] = 1.0
    return out


def _feature_fields(feature: str) -> tuple[str, ...]:
    from response_model.modeling.interpret import feature_field

    mapped = display_config()["feature_fields"].get(feature)
    if mapped is not None:
        return tuple(mapped)
    field = feature_field(feature)
    return () if field in (None, "regimen") or field not in PatientRecord.model_fields else (field,)


def _parts(spec: Mapping[str, Any], features: Sequence[str]) -> tuple[tuple[str, str], ...]:
    if "parts" in spec:
        return tuple((str(k), str(v)) for k, v in spec["parts"].items())
    fields = dict.fromkeys(f for name in features for f in _feature_fields(name))
    return tuple((f, field_label(f)) for f in fields)


def _single_term(name: str, position: int) -> Term:
    from response_model.modeling.interpret import feature_field

    pathway = next((p for p in load_pathways() if p.name == name), None)
    if pathway is not None:
        return Term(name, pathway.label, "pathway", (position,), ())
    field = feature_field(name)
    if field in PatientRecord.model_fields or field in _COMPUTED:  # named as the record names it
        return Term(field, field_label(field), "fields", (position,), ((field, ""),))
    return Term(name, name.replace("_", " "), "fields", (position,), ())


@lru_cache(maxsize=16)
def grouping(names: tuple[str, ...]) -> Grouping:
    """The terms of the feature ``names`` of one explanation (each feature in exactly one term)."""
    term_of = np.full(len(names), -1, dtype=np.intp)
    terms: list[Term] = []
    for spec in display_config()["terms"]:
        members = [j for j, n in enumerate(names)
                   if term_of[j] < 0 and any(fnmatch.fnmatchcase(n, p) for p in spec["features"])]
        if not members:
            continue
        kind = "regimen" if spec["term"] == "regimen" else "sequencing" if spec["term"] == "sequencing" else "fields"
        term_of[members] = len(terms)
        terms.append(Term(spec["term"], spec["label"], kind, tuple(members), _parts(spec, [names[j] for j in members])))
    for j in np.flatnonzero(term_of < 0).tolist():
        term = _single_term(names[j], j)
        if term.term in {t.term for t in terms}:  # two features of one field not gathered by the config
            term = Term(names[j], term.label, term.kind, term.features, term.parts)
        term_of[j] = len(terms)
        terms.append(term)
    per_feature = [_feature_fields(n) for n in names]
    fields = tuple(dict.fromkeys(f for fs in per_feature for f in fs))
    sources = np.array([[f in fs for f in fields] for fs in per_feature], dtype=bool).reshape(len(names), len(fields))
    return Grouping(tuple(names), tuple(terms), term_of, fields, sources, tuple(per_feature))


# -- grouped values: tables ------------------------------------------------------------------------


def grouped_frame(contributions: pd.DataFrame, records: Sequence[PatientRecord]) -> pd.DataFrame:
    """The terms' values of each row of ``contributions`` (rows × features, log-odds; row k is
    ``records[k]``): one column per term and :data:`NOT_RECORDED`, same index. Rows sum to the rows
    of ``contributions``."""
    g = grouping(tuple(str(c) for c in contributions.columns))
    missing = g.feature_missing(g.field_missing(records))
    return pd.DataFrame(g.sums(contributions.to_numpy(), missing), index=contributions.index, columns=g.columns)


def term_frame(contributions: pd.DataFrame) -> pd.DataFrame:
    """The terms' values with nothing moved to not recorded (every feature in its own term): the
    terms' global importance compared across patients of any missingness."""
    g = grouping(tuple(str(c) for c in contributions.columns))
    sums = g.sums(contributions.to_numpy(), np.zeros(contributions.shape, dtype=bool))
    return pd.DataFrame(sums[:, :-1], index=contributions.index, columns=g.columns[:-1])


def term_of(names: Sequence[str], feature: str) -> str:
    """The term that ``feature`` (one of ``names``) is summed into."""
    g = grouping(tuple(names))
    return g.terms[int(g.term_of[list(names).index(feature)])].term


def terms_made_of(names: Sequence[str], features: set[str]) -> set[str]:
    """The terms of ``names`` whose every feature is one of ``features`` (e.g. the simulator's no-effect ones)."""
    g = grouping(tuple(names))
    return {t.term for t in g.terms if all(names[j] in features for j in t.features)}


def term_ranks(contributions: pd.DataFrame, X: pd.DataFrame,
               records: Sequence[PatientRecord] | None = None) -> pd.DataFrame:
    """Global importance (mean |value|, log-odds) and rank (1 = largest) of each term that varies in
    ``X`` (some feature of it does; not recorded varies when it is non-zero somewhere): with
    ``records``, of the terms shown (:func:`grouped_frame`), else of :func:`term_frame`'s.
    Columns: label, importance, rank, of."""
    names = [str(c) for c in contributions.columns]
    g = grouping(tuple(names))
    terms = grouped_frame(contributions, records) if records is not None else term_frame(contributions)
    varies = {c for c in names if c in X and X[c].nunique(dropna=False) > 1}
    keep = [t.term for t in g.terms if any(names[j] in varies for j in t.features)]
    if NOT_RECORDED in terms and terms[NOT_RECORDED].abs().max() > 0:
        keep.append(NOT_RECORDED)
    importance = terms[keep].abs().mean().sort_values(ascending=False, kind="mergesort")
    labels = {t.term: t.label for t in g.terms} | {NOT_RECORDED: display_config()["not_recorded"]["label"]}
    table = importance.to_frame("importance")
    table.insert(0, "label", [labels[t] for t in table.index])
    table["rank"] = np.arange(1, len(table) + 1)
    table["of"] = len(table)
    table.index.name = "term"
    return table


def term_column(outcome: str, term: str) -> str:
    """Name of the batch output column holding ``term``'s value for ``outcome``."""
    return f"{TERM_PREFIX}{outcome}__{term}"


def batch_columns(predictions: Any, records: Sequence[PatientRecord], names: Sequence[str],
                  outcomes: Sequence[str]) -> pd.DataFrame:
    """The grouped columns of batch output for ``predictions`` (of ``records``): each outcome × every
    term of ``names`` then not recorded (null where a model's explanation is absent), and
    ``not_recorded`` — the labels of the patient's missing fields, '; '-joined."""
    g = grouping(tuple(names))
    missing_fields = g.field_missing(records)
    patient_missing = missing_fields[predictions.patient] if len(predictions) else missing_fields[:0]
    columns = {}
    for outcome in outcomes:
        block = np.full((len(predictions), len(g.columns)), np.nan)
        for (_, explained_outcome), explained in predictions.explanations.items():
            if explained_outcome != outcome:
                continue
            own = grouping(tuple(explained.names))
            sums = own.sums(explained.values, own.feature_missing(own.field_missing(
                [records[i] for i in predictions.patient[explained.rows]])))
            where = [g.columns.index(c) for c in own.columns]
            block[np.ix_(explained.rows, where)] = sums
        columns.update({term_column(outcome, c): block[:, j] for j, c in enumerate(g.columns)})
    labels = [field_label(f) for f in g.fields]
    text = ["; ".join(lab for lab, m in zip(labels, row) if m) for row in patient_missing]
    return pd.DataFrame({**columns, NOT_RECORDED: np.array(text, dtype=object)})


# -- terms a clinician reads -----------------------------------------------------------------------


def _value_text(record: PatientRecord, attribute: str) -> str | None:
    """The record's value of ``attribute`` as text with its unit (None when missing)."""
    value = getattr(record, attribute, None)
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "value"):
        return str(value.value).replace("_", " ")
    unit = field_unit(attribute)
    unit = None if unit in display_config()["units_not_shown"] else unit
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def _display(term: Term, record: PatientRecord, regimen: str) -> str:
    """What the term shows of the patient: the record's values named by the term (recorded ones)."""
    if term.kind == "regimen":
        from response_model.regimens import get_regimen

        return get_regimen(regimen).label
    if term.kind == "pathway":
        pathway = next(p for p in load_pathways() if p.name == term.term)
        found = [a.label() for a in pathway.drivers(record.alterations or [])]
        return ", ".join(found) if found else "not altered"
    if term.kind == "sequencing":
        n = len(record.alterations or [])
        return f"sequenced, {n} alteration{'s' if n != 1 else ''} found" if n else "sequenced, none found"
    shown = []
    for attribute, name in term.parts:
        text = _value_text(record, attribute)
        if text is not None:
            shown.append(f"{name} {text}" if name else text)
    return ", ".join(shown)


def _direction(value: float, outcome: str) -> str:
    what = "response" if outcome == "objective_response" else "primary resistance"
    if value == 0.0:
        return f"does not change the probability of {what}"
    return f"{'raises' if value > 0 else 'lowers'} the probability of {what}"


def _not_recorded(g: Grouping, values: np.ndarray, missing: np.ndarray, field_missing: np.ndarray,
                  total: float, outcome: str, tests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The not-recorded term: the missing fields, largest weight first (the |Σ| of the missing
    features computed from each), and the genomic tests that would move the estimate most."""
    behind = field_missing & g.sources[missing].any(axis=0)
    weight = np.abs(np.where(missing, values, 0.0) @ g.sources)
    fields = sorted(np.flatnonzero(behind).tolist(), key=lambda k: -weight[k])
    named = [{"field": g.fields[k], "label": field_label(g.fields[k])} for k in fields]
    labels = ", ".join(n["label"] for n in named)
    label = display_config()["not_recorded"]["label"]
    return {"term": NOT_RECORDED, "label": label, "display": labels, "text": f"{label}: {labels}",
            "fields": [n["field"] for n in named], "contribution": round(total, 5), "scale": SCALE,
            "direction": _direction(total, outcome), "missing": named,
            "tests": [dict(t) for t in tests][:int(display_config()["not_recorded"]["tests"])]}


@dataclass(frozen=True)
class _Patient:
    """What one patient's rows share, whatever the regimen or outcome (for one list of feature names)."""

    field_missing: np.ndarray  # (fields,) bool
    missing: np.ndarray  # (features,) bool
    features: dict[str, list[str]]  # term → its recorded features; not recorded → the missing ones
    fields: list[list[str]]  # per term: the record fields of its recorded features
    display: dict[str, str]  # term → the patient's values (every term but the regimen)


def _patient(g: Grouping, record: PatientRecord) -> _Patient:
    field_missing = g.field_missing([record])
    missing = g.feature_missing(field_missing)[0]
    any_missing = np.bincount(g.term_of, weights=missing, minlength=len(g.terms)) > 0
    features, fields = {}, []
    for k, t in enumerate(g.terms):
        kept = [j for j in t.features if not missing[j]] if any_missing[k] else list(t.features)
        features[t.term] = [g.names[j] for j in kept]
        fields.append(["regimen"] if t.kind == "regimen" else list(dict.fromkeys(
            f for j in kept for f in g.feature_fields[j])))
    features[NOT_RECORDED] = [g.names[j] for j in np.flatnonzero(missing).tolist()]
    return _Patient(field_missing[0], missing, features, fields, {})


def row_terms(record: PatientRecord, regimen: str, outcome: str, names: Sequence[str], values: np.ndarray,
              tests: Sequence[Mapping[str, Any]] = (), top: int | None = None,
              memo: dict[Any, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """(terms shown, {term: its features}) for one prediction row.

    Terms shown: the ``top`` (default: the config's) largest non-zero terms by |value|, with the
    not-recorded term whenever a field behind a feature is missing (added even when small: it names
    what is missing); each with ``term``, ``label``, ``display`` (the patient's values, with units),
    ``text`` (label: display), ``fields``, ``contribution`` (log-odds, rounded to 5 decimals),
    ``scale``, ``direction``, and for not recorded ``missing`` and ``tests`` (``tests``: this row's
    genomic what-if tests, largest spread first). The map of features covers every term, shown or
    not: the auditor's way back to the per-feature values. ``memo``: one dict per patient, shared by
    its rows (what does not change with the regimen is worked out once)."""
    g = grouping(tuple(names))
    memo = {} if memo is None else memo
    if g.names not in memo:
        memo[g.names] = _patient(g, record)
    patient: _Patient = memo[g.names]
    values = np.asarray(values, dtype=np.float64)
    missing = patient.missing
    sums = g.sums(values, missing[None, :])[0]
    top = int(display_config()["top"]) if top is None else top
    order = [k for k in np.argsort(-np.abs(sums), kind="stable").tolist() if sums[k] != 0.0 or k == len(g.terms)]
    chosen = [k for k in order if k < len(g.terms) or missing.any()][:top]
    if missing.any() and len(g.terms) not in chosen:
        chosen.append(len(g.terms))  # whatever its size: it names what is missing
    shown = []
    for k in chosen:
        if k == len(g.terms):
            shown.append(_not_recorded(g, values, missing, patient.field_missing, float(sums[-1]), outcome, tests))
            continue
        value, term = float(sums[k]), g.terms[k]
        if term.kind == "regimen":
            display = _display(term, record, regimen)
        elif term.term in patient.display:
            display = patient.display[term.term]
        else:
            display = patient.display[term.term] = _display(term, record, regimen)
        shown.append({"term": term.term, "label": term.label, "display": display, "text": f"{term.label}: {display}",
                      "fields": list(patient.fields[k]), "contribution": round(value, 5), "scale": SCALE,
                      "direction": _direction(value, outcome), "missing": None, "tests": None})
    return shown, patient.features
