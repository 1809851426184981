"""Missing inputs: hiding fields at the feature level, missingness augmentation for training, and
what an answer says about what it rests on.

**Why augmentation, not multiple imputation.** With a field missing, the honest estimate is
E[outcome | the fields observed]. A learner trained on copies of the training rows with fields
hidden (and their true labels) fits that conditional expectation directly — the Bayes-optimal
prediction under a hiding pattern is exactly E[y | x_observed] — inside the one model, the one
feature path (hidden = the columns the feature function gives a record without the field,
:func:`response_model.features.field_columns`) and the one bundle. The returned estimate IS the
model's output, so its SHAP explanation is exact for it. Multiple imputation would need a second,
conditional model of every field given the others fitted inside each fold and shipped in the bundle,
M scorings per answer (or fixed random draws at serving), and its explanation would be an average of
explanations of imputed patients whose contributions sit on values nobody recorded; its average is
E[p | x_obs] only as far as the imputation model is right. Augmentation's assumption is stated
instead: training rows are hidden at random (the mixture of :data:`SCHEMES`), so the estimate for a
missing field averages over what the training population's values were (for patients like this one
on the fields observed), not over why it was not recorded.

Augmentation happens inside :meth:`ResponseClassifier.fit` only, so in cross-validation it touches
the training folds, never a test fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from response_model.config import load_yaml
from response_model.features import field_columns, hideable_fields

SCHEMES = ("independent", "blocks", "required_only")


@lru_cache(maxsize=1)
def missingness_config() -> dict[str, Any]:
    """``configs/missingness.yaml`` (blocks, hiding mixture, information and OOD thresholds)."""
    config = load_yaml("missingness.yaml")
    unknown = sorted({f for fields in config["blocks"].values() for f in fields} - set(hideable_fields()))
    if unknown:
        raise ValueError(f"configs/missingness.yaml blocks: {', '.join(unknown)} are not optional record fields "
                         f"that decide a feature; expected some of {', '.join(hideable_fields())}")
    return config


def mask_fields(X: pd.DataFrame, hidden: Mapping[str, np.ndarray] | Sequence[str]) -> pd.DataFrame:
    """A copy of feature matrix ``X`` with record fields hidden: ``hidden`` is a list of fields (hidden
    in every row) or {field: boolean row mask}. Each field's columns (those of ``X``) get the value the
    feature function gives them without the field (NaN, or 0 for ``genotyped``)."""
    out = X.copy()
    masks = {f: np.ones(len(X), dtype=bool) for f in hidden} if not isinstance(hidden, Mapping) else hidden
    position = {c: j for j, c in enumerate(out.columns)}
    values = out.to_numpy(dtype=np.float64, copy=True)
    for field, rows in masks.items():
        rows = np.asarray(rows, dtype=bool)
        if not rows.any():
            continue
        for column, value in field_columns()[field].items():
            if column in position:
                values[rows, position[column]] = value
    return pd.DataFrame(values, columns=out.columns, index=out.index)


def hiding_masks(n: int, rng: np.random.Generator, rate: float = 0.5, mix: Mapping[str, float] | None = None,
                 blocks: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """{optional field: rows hidden} for ``n`` rows, each row's scheme drawn from ``mix`` (see
    configs/missingness.yaml): independent (each field w.p. ``rate``), blocks (each block w.p. 1/2, at
    least one) or required_only (every optional field)."""
    config = missingness_config()
    mix = dict(mix if mix is not None else config["mix"])
    blocks = dict(blocks if blocks is not None else config["blocks"])
    unknown = sorted(set(mix) - set(SCHEMES))
    if unknown or not np.isclose(sum(mix.values()), 1.0) or min(mix.values()) < 0:
        raise ValueError(f"missing_mix: {mix!r}; expected non-negative shares of {', '.join(SCHEMES)} summing to 1")
    fields = hideable_fields()
    scheme = rng.choice(len(SCHEMES), size=n, p=[float(mix.get(s, 0.0)) for s in SCHEMES])
    hidden = {f: (scheme == 0) & (rng.random(n) < rate) for f in fields}
    block_rows = scheme == 1
    chosen = rng.random((n, len(blocks))) < 0.5
    none = ~chosen.any(axis=1)
    chosen[none, rng.integers(0, len(blocks), none.sum())] = True  # at least one block
    for k, members in enumerate(blocks.values()):
        for f in members:
            hidden[f] |= block_rows & chosen[:, k]
    for f in fields:
        hidden[f] |= scheme == 2
    return hidden


def augment(X: pd.DataFrame, y: np.ndarray, copies: int, weight: float, seed: int, rate: float = 0.5,
            mix: Mapping[str, float] | None = None, blocks: Mapping[str, Sequence[str]] | None = None,
            ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(rows, labels, sample weights): ``X`` itself (weight 1) followed by ``copies`` copies with
    fields hidden (:func:`hiding_masks`), each copy weighted ``weight / copies`` — so the hidden
    copies together weigh ``weight`` times the original rows, however many there are."""
    rng = np.random.default_rng(seed)
    parts, labels, weights = [X], [np.asarray(y)], [np.ones(len(X))]
    for _ in range(copies):
        parts.append(mask_fields(X, hiding_masks(len(X), rng, rate, mix, blocks)))
        labels.append(np.asarray(y))
        weights.append(np.full(len(X), weight / copies))
    frame = pd.concat(parts, ignore_index=True)
    return frame, np.concatenate(labels), np.concatenate(weights)


# ---------------------------------------------------------------------------------------------
# What the training cohort's missingness looks like (aggregated statistics for the bundle)
# ---------------------------------------------------------------------------------------------

GRID_STEP = 0.02  # resolution of the stored distribution of missing-influence shares


def record_fields() -> tuple[str, ...]:
    """The record fields an influence is measured for: the required ones (age, sex, cancer type) and
    every optional field that decides a feature."""
    return ("age", "sex", "cancer_type", *hideable_fields())


def _column_fields(columns: Sequence[str]) -> dict[str, list[str]]:
    """{feature column: the record fields it comes from} for the patient columns of ``columns``."""
    sources: dict[str, list[str]] = {}
    for field, decided in field_columns().items():
        for column in decided:
            sources.setdefault(column, []).append(field)
    for column in columns:
        if column == "age":
            sources[column] = ["age"]
        elif column == "sex_male":
            sources[column] = ["sex"]
        elif column.startswith("cancer_type_"):
            sources[column] = ["cancer_type"]
    return {c: sources[c] for c in columns if c in sources}


def missing_table(records: Sequence[Any]) -> pd.DataFrame:
    """One row per record, one boolean column per optional field: True where the field is None."""
    fields = hideable_fields()
    return pd.DataFrame([[getattr(r, f) is None for f in fields] for r in records], columns=list(fields))


def field_influence(model: Any, X: pd.DataFrame, missing: pd.DataFrame) -> dict[str, float]:
    """Each record field's share of the model's influence: the mean |sum of its columns' SHAP values|
    over the rows where the field is recorded (a column from several fields is split evenly between
    them), normalised to sum to 1 over :func:`record_fields`. Regimen columns are not record fields."""
    contributions, _ = model.explain(X)
    sources = _column_fields(list(contributions.columns))
    fields = record_fields()
    per_field = pd.DataFrame(0.0, index=contributions.index, columns=list(fields))
    for column, owners in sources.items():
        for field in owners:
            per_field[field] += contributions[column].to_numpy() / len(owners)
    recorded = ~missing.reindex(columns=list(fields), fill_value=False).to_numpy()
    values = np.abs(per_field.to_numpy())
    counts = recorded.sum(axis=0)
    mean = np.where(counts > 0, (values * recorded).sum(axis=0) / np.maximum(counts, 1), 0.0)
    total = mean.sum()
    return {f: float(v / total) if total > 0 else 0.0 for f, v in zip(fields, mean)}


def missing_share(influence: Mapping[str, float], missing: pd.DataFrame) -> np.ndarray:
    """Per row of ``missing``: the share of the model's influence carried by the fields it lacks."""
    weights = np.array([float(influence.get(f, 0.0)) for f in missing.columns])
    return missing.to_numpy(dtype=float) @ weights


def _share_at_least(shares: np.ndarray) -> list[float]:
    """Share of rows whose value is at least each grid point 0, GRID_STEP, …, 1 (a survival curve)."""
    grid = np.round(np.arange(0.0, 1.0 + GRID_STEP / 2, GRID_STEP), 10)
    return [round(float(np.mean(shares >= t - 1e-12)), 6) for t in grid]


def _patterns(missing: pd.DataFrame, min_count: int) -> list[dict[str, Any]]:
    """The exact patterns of missing optional fields shared by at least ``min_count`` rows, with their share."""
    keys = missing.apply(lambda row: tuple(missing.columns[row.to_numpy()]), axis=1)
    counts = keys.value_counts()
    return [{"missing": list(key), "share": round(float(count) / len(missing), 6)}
            for key, count in counts.items() if count >= min_count]


def training_summary(models: Mapping[tuple[str, str], Any], X: pd.DataFrame, records: Sequence[Any],
                     classes: pd.Series, seed: int = 0) -> dict[str, Any]:
    """The bundle's ``missingness`` metadata: per regimen class, the training patients' missing rate per
    field and the common missingness patterns (only those of at least ``min_pattern_count`` patients);
    per model, each field's share of influence and the distribution of the patients' missing-influence
    share (a survival curve on a grid). Aggregates only: no row of the cohort is stored.

    ``X``: the training features (index aligned with ``records`` by position and with ``classes``)."""
    settings = missingness_config()
    info = settings["information"]
    missing = missing_table(records)
    missing.index = X.index
    out: dict[str, Any] = {"fields": list(hideable_fields()), "grid_step": GRID_STEP, "classes": {}, "models": {},
                           "settings": {"information": dict(info), "out_of_distribution":
                                        dict(settings["out_of_distribution"])}}
    for regimen_class in sorted({c for c, _ in models}):
        rows = classes.index[classes == regimen_class]
        out["classes"][regimen_class] = {
            "n": int(len(rows)), "missing_rate": {f: round(float(v), 6) for f, v in missing.loc[rows].mean().items()},
            "patterns": _patterns(missing.loc[rows], int(info["min_pattern_count"]))}
    for (regimen_class, outcome), model in models.items():
        rows = classes.index[classes == regimen_class]
        sample = rows
        if len(rows) > int(info["influence_rows"]):
            sample = pd.Index(np.random.default_rng(seed).choice(rows, int(info["influence_rows"]), replace=False))
        influence = field_influence(model, X.loc[sample], missing.loc[sample])
        out["models"][f"{regimen_class}/{outcome}"] = {
            "influence": {f: round(v, 6) for f, v in influence.items()},
            "share_at_least": _share_at_least(missing_share(influence, missing.loc[rows]))}
    return out


# ---------------------------------------------------------------------------------------------
# What one answer rests on (the information block) and whether its missingness is unusual
# ---------------------------------------------------------------------------------------------

INFORMATION_UNCHECKED = ("this model bundle stores no summary of its training cohort's missingness, so what "
                         "the estimate rests on was not assessed")


def _label(field: str) -> str:
    from response_model.schema import PatientRecord

    info = PatientRecord.model_fields.get(field)
    description = info.description if info is not None else None
    return description.split(";")[0] if description else field.replace("_", " ")


def _tail(curve: Sequence[float], step: float, share: float) -> float:
    """Share of training patients missing at least ``share`` of the influence (read off the stored curve
    at the grid point at or below ``share``: never smaller than the true share, so never over-flags)."""
    k = min(len(curve) - 1, int(np.floor(share / step + 1e-9)))
    return float(curve[k])


def assess(metadata: Mapping[str, Any], record: Any, regimen_classes: Sequence[str]) -> tuple[dict, dict]:
    """(information block, missingness part of the out-of-distribution check) of one patient's answer,
    for the models of ``regimen_classes`` (the classes scored), from the bundle's ``missingness`` metadata.

    Information: the missing inputs among the most influential ones (share of influence: the largest
    over the models), the share of influence missing per model and how many training patients of the
    class missed at least as much, the share of the class with exactly this pattern (when stored), and
    ``rests_on_population_averages`` when the missing share reaches the configured threshold.
    Out of distribution: flagged when fewer than ``rare_share`` of the class's training patients miss as
    much influence, or miss a field this patient misses."""
    summary = metadata.get("missingness")
    fields = hideable_fields()
    absent = [f for f in fields if getattr(record, f, None) is None]
    if not isinstance(summary, dict) or not summary.get("models"):
        return ({"checked": False, "missing_fields": absent, "note": INFORMATION_UNCHECKED},
                {"checked": False, "flagged": False, "note": INFORMATION_UNCHECKED})
    info, ood_settings = summary["settings"]["information"], summary["settings"]["out_of_distribution"]
    rare, step = float(ood_settings["rare_share"]), float(summary["grid_step"])
    by_model, influential, rare_fields = [], {}, {}
    for key, model in summary["models"].items():
        regimen_class, outcome = key.split("/")
        if regimen_class not in regimen_classes:
            continue
        share = float(sum(model["influence"].get(f, 0.0) for f in absent))
        by_model.append({"regimen_class": regimen_class, "outcome": outcome, "missing_influence_share": round(share, 4),
                         "training_share_missing_as_much": round(_tail(model["share_at_least"], step, share), 4)})
        for f in absent:
            influential[f] = max(influential.get(f, 0.0), float(model["influence"].get(f, 0.0)))
    for regimen_class in regimen_classes:
        rates = summary["classes"].get(regimen_class, {}).get("missing_rate", {})
        for f in absent:
            if f in rates and float(rates[f]) < rare:
                rare_fields[f] = min(rare_fields.get(f, 1.0), float(rates[f]))
    top = sorted((f for f in influential if influential[f] > 0), key=lambda f: -influential[f])
    top = top[:int(info["top_fields"])]
    largest = max((m["missing_influence_share"] for m in by_model), default=0.0)
    rests = largest >= float(info["population_average_share"])
    information = {
        "checked": True, "missing_fields": absent, "n_missing": len(absent), "n_optional": len(fields),
        "missing_influential": [{"field": f, "label": _label(f), "influence_share": round(influential[f], 4)}
                                for f in top],
        "missing_influence_share": round(largest, 4), "by_model": by_model,
        "pattern_share": _pattern_share(summary, absent, regimen_classes, int(info["min_pattern_count"])),
        "rests_on_population_averages": rests, "message": _message(rests, largest, top, absent),
    }
    tail = min((m["training_share_missing_as_much"] for m in by_model), default=1.0)
    flagged = tail < rare or bool(rare_fields)
    ood = {"checked": True, "flagged": flagged, "training_share_missing_as_much": round(tail, 4),
           "rarely_missing_in_training": [{"field": f, "training_missing_rate": round(r, 4)}
                                          for f, r in sorted(rare_fields.items())],
           "threshold": rare,
           "note": (f"missingness pattern flagged when fewer than {rare:.0%} of the training patients miss as much "
                    "of the model's influence, or miss a field this patient misses")}
    return information, ood


def _pattern_share(summary: Mapping[str, Any], absent: Sequence[str], regimen_classes: Sequence[str],
                   min_count: int) -> dict[str, Any]:
    """{class: share of its training patients with exactly this pattern, or None when fewer than min_count}."""
    key = set(absent)
    out = {}
    for regimen_class in regimen_classes:
        stats = summary["classes"].get(regimen_class)
        if stats is None:
            continue
        found = next((p["share"] for p in stats["patterns"] if set(p["missing"]) == key), None)
        out[regimen_class] = found
    return {"by_class": out, "note": f"null: fewer than {min_count} training patients of the class share the pattern"}


def _message(rests: bool, share: float, top: Sequence[str], absent: Sequence[str]) -> str:
    named = ", ".join(_label(f) for f in top)
    if rests:
        return (f"This estimate rests mostly on population averages: the inputs not recorded carry {share:.0%} of what "
                f"this model uses to tell patients apart{f' (most: {named})' if named else ''}. Recording them would "
                "make the estimate specific to this patient.")
    if absent:
        return (f"{len(absent)} optional input(s) not recorded, carrying {share:.0%} of the model's influence"
                f"{f' (most: {named})' if named else ''}; the estimate averages over their values in the training "
                "population.")
    return "Every input the model uses is recorded."
