"""Cohort simulator: synthetic patients with advanced HCC, the regimen each received, outcomes and ground truth.

The generative model and every number in it live in ``configs/simulator.yaml``, each with the row of
``shared/docs/hcc-evidence.md`` it rests on. Generation is vectorised with numpy; all randomness comes
from one ``np.random.default_rng(seed)``, so the same seed gives byte-identical files.

Outcomes exist under every catalogue regimen for every patient (potential outcomes): the response
intercept and the baseline hazards of each regimen are calibrated by bisection on a fixed reference
population so that, among the patients who receive it, the regimen's mean true response probability
equals its trial ORR and its true PFS / OS curves cross 0.5 at the trial medians. The observed cohort
shows only the regimen given; ``truth`` holds the true probabilities under all of them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import expit
from scipy.stats import norm

from response_model import clinical
from response_model.config import load_yaml, resolve_config_path
from response_model.dataset import (
    derive_primary_resistance,
    normalise_frame,
    resistance_window_months,
    write_cohort,
)
from response_model.pathways import load_pathways
from response_model.regimens import Regimen, candidate_regimens
from response_model.schema import Alteration

log = logging.getLogger(__name__)

VIRAL = ("HBV", "HCV")
ASCITES_LEVELS = ("none", "mild", "moderate_severe")
ENCEPHALOPATHY_LEVELS = ("none", "grade_1_2", "grade_3_4")
TRUTH_COLUMNS = ("patient_id", "regimen", "regimen_class", "given", "p_objective_response",
                 "p_primary_resistance", "eligible")


@dataclass
class SimulatedCohort:
    """A simulated cohort: the canonical cohort table and the long ground-truth table.

    ``cohort``: one row per patient, canonical columns (``response_model.dataset.COHORT_COLUMNS``).
    ``truth``: one row per patient × candidate regimen with ``given``, the true probabilities of
    objective response and of primary resistance (0–1) and ``eligible``; never read by training.
    """

    cohort: pd.DataFrame
    truth: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def load_simulator_config(config: str = "simulator.yaml") -> dict[str, Any]:
    """Return the parsed simulator configuration (a path, or a name under ``configs/``)."""
    return load_yaml(config)


def _value(node: Any) -> Any:
    """Return ``node['value']`` for a ``{value: …, source: …}`` leaf, else ``node``."""
    return node["value"] if isinstance(node, Mapping) and "value" in node else node


def _weights(mapping: Mapping[Any, Any]) -> tuple[list[Any], np.ndarray]:
    keys = [key for key in mapping if key not in ("source", "debated")]
    weights = np.array([float(mapping[key]) for key in keys])
    return keys, weights / weights.sum()


def _regimens() -> list[Regimen]:
    return list(candidate_regimens())


# ---------------------------------------------------------------------------------------------
# Small vectorised helpers
# ---------------------------------------------------------------------------------------------


def _categorical(rng: np.random.Generator, mapping: Mapping[Any, Any], n: int) -> np.ndarray:
    """Return ``n`` draws of the keys of ``mapping`` with probabilities proportional to its values."""
    keys, weights = _weights(mapping)
    index = np.searchsorted(np.cumsum(weights), rng.random(n), side="right")
    return np.array(keys, dtype=object)[np.minimum(index, len(keys) - 1)]


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float,
                      n: int) -> np.ndarray:
    """Return ``n`` normal draws, redrawing those outside [low, high]."""
    values = rng.normal(mean, sd, n)
    bad = (values < low) | (values > high)
    while bad.any():
        values[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (values < low) | (values > high)
    return values


def _ordinal(rng: np.random.Generator, linear: np.ndarray, intercepts: list[float]) -> np.ndarray:
    """Return levels 0..k of a cumulative-logit model with decreasing ``intercepts``."""
    u = rng.random(len(linear))
    return sum((u < expit(c + linear)).astype(int) for c in intercepts)


def _bisect(func, low: float, high: float, tol: float, max_iter: int, what: str) -> float:
    """Return the root of a monotone ``func`` on [low, high] by bisection."""
    f_low, f_high = func(low), func(high)
    if np.sign(f_low) == np.sign(f_high):
        raise ValueError(f"calibration of {what}: no root in [{low:g}, {high:g}] "
                         f"(f = {f_low:.4g}, {f_high:.4g}); check the trial figures and effect sizes")
    for _ in range(max_iter):
        middle = 0.5 * (low + high)
        f_mid = func(middle)
        if np.sign(f_mid) == np.sign(f_low):
            low, f_low = middle, f_mid
        else:
            high = middle
        if high - low < tol:
            break
    return 0.5 * (low + high)


def _sf_sum_exponentials(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return P(Exp(a) + Exp(b) > t) (rates a, b per month; t in months)."""
    t = np.maximum(t, 0.0)
    close = np.abs(b - a) < 1e-9 * np.maximum(a, b)
    safe = np.where(close, 1.0, b - a)
    general = (b * np.exp(-a * t) - a * np.exp(-b * t)) / safe
    equal = (1.0 + a * t) * np.exp(-a * t)
    return np.clip(np.where(close, equal, general), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Genomic events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Variant:
    event: str
    text: str
    alterations: tuple[Alteration, ...]
    json_items: tuple[str, ...]


@lru_cache(maxsize=8)
def _variant_table(config_key: tuple[str, float]) -> tuple[tuple[_Variant, ...], np.ndarray]:
    """Return every configured variant and its pathway matrix (variant × pathway, bool)."""
    cfg = load_yaml(config_key[0])
    variants = []
    seen: set[tuple[str, str]] = set()
    for event, spec in cfg["genomics"]["events"].items():
        texts = list(spec["variants"]) + [t for t in spec.get("variants_hbv", {}) if t not in spec["variants"]]
        for text in texts:
            if (event, text) in seen:
                continue
            seen.add((event, text))
            alterations = tuple(Alteration.parse(part.strip()) for part in text.split(";"))
            items = tuple(json.dumps(a.model_dump(mode="json"), separators=(",", ":")) for a in alterations)
            variants.append(_Variant(event, text, alterations, items))
    pathways = load_pathways()
    matrix = np.array([[bool(p.drivers(v.alterations)) for p in pathways] for v in variants], dtype=bool)
    return tuple(variants), matrix


def _config_key(config: str) -> tuple[str, float]:
    path = resolve_config_path(config).resolve()
    return str(path), path.stat().st_mtime


def _event_order(events: Mapping[str, Any]) -> list[str]:
    """Return the event names in configuration order, each after the event it is conditioned on."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in events:
            raise ValueError(f"simulator.yaml genomics: event {chain[-1]!r} refers to unknown event {name!r}")
        if name in chain:
            raise ValueError(f"simulator.yaml genomics: circular condition {' → '.join(chain + (name,))}")
        spec = events[name]
        needs = ["tp53"] if "p_if_tp53" in spec else [spec["exclusive_with"]] if "exclusive_with" in spec else []
        for other in needs:
            visit(other, chain + (name,))
        order.append(name)

    for name in events:
        visit(name, ())
    return order


def _draw_genomics(rng: np.random.Generator, cfg: Mapping[str, Any], aetiology: np.ndarray,
                   config_key: tuple[str, float]) -> np.ndarray:
    """Return the variant occurrence matrix (patients × variants, bool) of the true genome."""
    variants, _ = _variant_table(config_key)
    index = {(v.event, v.text): k for k, v in enumerate(variants)}
    events = cfg["genomics"]["events"]
    n = len(aetiology)
    occurs = np.zeros((n, len(variants)), dtype=bool)
    carriers: dict[str, np.ndarray] = {}
    viral = np.isin(aetiology, VIRAL)
    for event in _event_order(events):
        spec = events[event]
        if "p_viral" in spec:
            prob = np.where(viral, spec["p_viral"], spec["p_non_viral"])
        elif "p_if_tp53" in spec:
            p_tp53 = float(events["tp53"]["marginal"])
            p_wild = (spec["p"] - p_tp53 * spec["p_if_tp53"]) / (1.0 - p_tp53)
            prob = np.where(carriers["tp53"], spec["p_if_tp53"], p_wild)
        elif "exclusive_with" in spec:
            other = spec["exclusive_with"]
            prob = np.where(carriers[other], 0.0, spec["p"] / (1.0 - events[other]["p"]))
        else:
            prob = np.full(n, float(spec["p"]))
        has = rng.random(n) < prob
        carriers[event] = has
        u = rng.random(n)

        # this iteration's draws and event, bound now: pick() is only called within this iteration
        def pick(mix: Mapping[str, float], u: np.ndarray = u, event: str = event) -> np.ndarray:
            keys, weights = _weights(mix)
            choice = np.minimum(np.searchsorted(np.cumsum(weights), u, side="right"), len(keys) - 1)
            return np.array([index[(event, key)] for key in keys])[choice]

        picked = pick(spec["variants"])
        if "variants_hbv" in spec:  # a variant mix of its own in HBV-related HCC (e.g. TP53 R249S)
            picked = np.where(aetiology == "HBV", pick(spec["variants_hbv"]), picked)
        occurs[np.flatnonzero(has), picked[has]] = True
    return occurs


def _alteration_json(occurs: np.ndarray, config_key: tuple[str, float]) -> list[str]:
    """Return the canonical ``alterations`` JSON of each patient (variants in configuration order)."""
    variants, _ = _variant_table(config_key)
    out = []
    for row in occurs:
        items = [item for k in np.flatnonzero(row) for item in variants[k].json_items]
        out.append("[" + ",".join(items) + "]")
    return out


# ---------------------------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------------------------


def _draw_patients(n: int, rng: np.random.Generator, cfg: Mapping[str, Any],
                   config_key: tuple[str, float]) -> dict[str, np.ndarray]:
    """Return the TRUE patient variables (no missingness) as arrays of length ``n``; the parts are drawn
    in this order, each from the same generator (the order fixes every draw of a seed)."""
    p: dict[str, np.ndarray] = {}
    _draw_demographics(p, n, rng, cfg)
    _draw_liver(p, n, rng, cfg)
    _draw_tumour(p, n, rng, cfg)
    _draw_blood(p, n, rng, cfg)
    _draw_lifestyle(p, n, rng, cfg)
    _draw_genomics_of(p, n, rng, cfg, config_key)
    _draw_microenvironment(p, n, rng, cfg)
    return p


def _draw_demographics(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                       cfg: Mapping[str, Any]) -> None:
    """Draw age, sex, ECOG and aetiology into ``p``."""
    demo = cfg["demographics"]
    age = demo["age"]
    p["age"] = np.round(_truncated_normal(rng, age["mean"], age["sd"], age["min"], age["max"], n), 1)
    p["male"] = rng.random(n) < _value(demo["male"])
    p["ecog"] = _categorical(rng, demo["ecog"]["weights"], n).astype(int)
    p["aetiology"] = _categorical(rng, demo["aetiology"]["weights"], n)


def _draw_liver(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                cfg: Mapping[str, Any]) -> None:
    """Draw the five Child-Pugh items (driven by one latent dysfunction score), the Child-Pugh class and
    the ALBI grade into ``p``."""
    liver = cfg["liver"]
    z = rng.normal(size=n)
    spec = liver["albumin"]
    p["albumin"] = np.round(np.clip(spec["intercept"] + spec["per_z"] * z + rng.normal(0, spec["noise_sd"], n),
                                    spec["min"], spec["max"]), 1)
    spec = liver["bilirubin"]
    p["bilirubin"] = np.round(np.clip(np.exp(spec["log_median"] + spec["per_z"] * z
                                             + rng.normal(0, spec["noise_sd"], n)), spec["min"], spec["max"]), 2)
    spec = liver["inr"]
    p["inr"] = np.round(np.clip(1.0 + np.exp(spec["log_excess_median"] + spec["per_z"] * z
                                             + rng.normal(0, spec["noise_sd"], n)), spec["min"], spec["max"]), 2)
    spec = liver["ascites"]
    level = _ordinal(rng, spec["per_z"] * z, [spec["mild_intercept"], spec["moderate_severe_intercept"]])
    p["ascites"] = np.array(ASCITES_LEVELS, dtype=object)[level]
    spec = liver["encephalopathy"]
    level = _ordinal(rng, spec["per_z"] * z, [spec["grade_1_2_intercept"], spec["grade_3_4_intercept"]])
    p["encephalopathy"] = np.array(ENCEPHALOPATHY_LEVELS, dtype=object)[level]
    points = np.array([clinical.child_pugh_points(b, a, i, asc, enc) for b, a, i, asc, enc in zip(
        p["bilirubin"].tolist(), p["albumin"].tolist(), p["inr"].tolist(), p["ascites"], p["encephalopathy"])])
    p["child_pugh_class"] = np.array([clinical.child_pugh_class(int(x)) for x in points], dtype=object)
    p["albi_grade"] = np.array([clinical.albi_grade(clinical.albi_score(a, b)) for a, b in zip(
        p["albumin"].tolist(), p["bilirubin"].tolist())])


def _draw_tumour(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                 cfg: Mapping[str, Any]) -> None:
    """Draw AFP, invasion, spread, lesions and the BCLC stage into ``p``."""
    tumour = cfg["tumour"]
    spec = tumour["afp"]
    p["afp"] = np.round(np.clip(10.0 ** rng.normal(spec["log10_mean"], spec["log10_sd"], n),
                                spec["min"], spec["max"]), 1)
    p["macrovascular_invasion"] = rng.random(n) < _value(tumour["macrovascular_invasion"])
    p["extrahepatic_spread"] = rng.random(n) < _value(tumour["extrahepatic_spread"])
    spec = tumour["lesion_count"]
    p["lesion_count"] = np.minimum(1 + rng.poisson(spec["poisson_mean"], n), spec["max"])
    spec = tumour["largest_lesion_cm"]
    p["largest_lesion_cm"] = np.round(np.clip(np.exp(rng.normal(spec["log_median"], spec["log_sd"], n)),
                                              spec["min"], spec["max"]), 1)
    advanced = p["macrovascular_invasion"] | p["extrahepatic_spread"] | (p["ecog"] >= 1)
    p["bclc_stage"] = np.where(p["child_pugh_class"] == "C", "D", np.where(advanced, "C", "B")).astype(object)


def _draw_blood(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                cfg: Mapping[str, Any]) -> None:
    """Draw the blood counts into ``p``; lymphocytes are rounded up so that NLR = neutrophils /
    lymphocytes stays within range."""
    blood = cfg["blood"]
    spec = blood["neutrophils"]
    p["neutrophils"] = np.round(np.clip(np.exp(rng.normal(spec["log_median"], spec["log_sd"], n)),
                                        spec["min"], spec["max"]), 2)
    spec = blood["nlr"]
    nlr_draw = np.clip(np.exp(rng.normal(spec["log_median"], spec["log_sd"], n)), spec["min"], spec["max"])
    p["lymphocytes"] = np.ceil(p["neutrophils"] / nlr_draw * 100.0) / 100.0
    p["nlr"] = np.round(p["neutrophils"] / p["lymphocytes"], 4)
    spec = blood["platelets"]
    p["platelets"] = np.round(np.clip(np.exp(rng.normal(spec["log_median"], spec["log_sd"], n)),
                                      spec["min"], spec["max"]), 0)


def _draw_lifestyle(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                    cfg: Mapping[str, Any]) -> None:
    """Draw haemoglobin, BMI, diabetes, smoking, alcohol use (independent of everything with an
    effect: the no-effect features) and the line of therapy into ``p``."""
    demo = cfg["demographics"]
    spec = demo["haemoglobin"]
    p["haemoglobin"] = np.round(_truncated_normal(rng, spec["mean"], spec["sd"], spec["min"], spec["max"], n), 1)
    spec = demo["bmi"]
    p["bmi"] = np.round(_truncated_normal(rng, spec["mean"], spec["sd"], spec["min"], spec["max"], n), 1)
    p["diabetes"] = rng.random(n) < _value(demo["diabetes"])
    p["smoking"] = _categorical(rng, demo["smoking"]["weights"], n)
    alcohol = _categorical(rng, demo["alcohol_use"]["alcohol"], n)
    other = _categorical(rng, demo["alcohol_use"]["other_aetiologies"], n)
    p["alcohol_use"] = np.where(p["aetiology"] == "alcohol", alcohol, other).astype(object)

    p["line_of_therapy"] = _categorical(rng, cfg["treatment_context"]["line_of_therapy"]["weights"], n).astype(int)


def _draw_genomics_of(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                      cfg: Mapping[str, Any], config_key: tuple[str, float]) -> None:
    """Draw every patient's true genome, pathway status, TMB, MSI status and sequencing panel into ``p``."""
    gen = cfg["genomics"]
    p["variants"] = _draw_genomics(rng, cfg, p["aetiology"], config_key)
    _, pathway_matrix = _variant_table(config_key)
    status = (p["variants"].astype(np.int64) @ pathway_matrix.astype(np.int64)) > 0
    for k, pathway in enumerate(load_pathways()):
        p[f"pathway_{pathway.name}"] = status[:, k]
    spec = gen["tmb"]
    tmb = np.clip(np.exp(rng.normal(spec["log_median"], spec["log_sd"], n)), 0.0, spec["max"])
    spec = gen["msi_high"]
    msi = rng.random(n) < _value(spec)
    tmb_msi = np.clip(np.exp(rng.normal(spec["tmb_log_median"], spec["tmb_log_sd"], n)), 0.0, gen["tmb"]["max"])
    p["tmb"] = np.round(np.where(msi, tmb_msi, tmb), 2)
    p["msi_status"] = np.where(msi, "MSI-H", "MSS").astype(object)
    p["sequencing_panel"] = _categorical(rng, gen["panels"]["weights"], n)


def _draw_microenvironment(p: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                           cfg: Mapping[str, Any]) -> None:
    """Draw the tumour microenvironment (a latent immune score, lower in WNT-active tumours) into ``p``."""
    tme = cfg["microenvironment"]
    m = rng.normal(size=n) + _value(tme["wnt_immune_exclusion"]) * p["pathway_wnt_activation"]
    load = tme["loadings"]

    def loaded(weight: float) -> np.ndarray:
        return weight * m + np.sqrt(1.0 - weight ** 2) * rng.normal(size=n)

    for name in ("teff_signature", "treg_signature", "myeloid_signature"):
        p[name] = np.round(np.clip(loaded(load[name]), -9.5, 9.5), 3)
    p["cd8_z"] = loaded(load["cd8"])
    spec = tme["cd8_density"]
    p["cd8_density"] = np.round(np.clip(np.exp(spec["log_median"] + spec["log_sd"] * p["cd8_z"]), 0, spec["max"]), 1)
    spec = tme["pdl1_tps"]
    positive = loaded(load["pdl1"]) > norm.ppf(1.0 - spec["p_positive"])
    level = np.clip(np.round(np.exp(rng.normal(spec["log_median_if_positive"], spec["log_sd_if_positive"], n))),
                    1, 100)
    p["pdl1_tps"] = np.where(positive, level, 0.0)
    spec = tme["pdl1_cps"]
    immune = np.exp(rng.normal(spec["log_median_immune"], spec["log_sd"], n) + spec["per_m"] * m)
    p["pdl1_cps"] = np.minimum(100.0, np.round(p["pdl1_tps"] + immune))


def _terms(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the model terms (float arrays) named in ``configs/simulator.yaml``, from TRUE values."""
    return {
        "wnt_activation": p["pathway_wnt_activation"].astype(float),
        "pi3k_mtor": p["pathway_pi3k_mtor"].astype(float),
        "vegfa_amplification": p["pathway_vegfa_amplification"].astype(float),
        "non_viral": (~np.isin(p["aetiology"], VIRAL)).astype(float),
        "pdl1_tps_ge_1": (p["pdl1_tps"] >= 1).astype(float),
        "teff_signature": p["teff_signature"].astype(float),
        "treg_signature": p["treg_signature"].astype(float),
        "cd8_z": p["cd8_z"].astype(float),
        "nlr_ge_5": (p["nlr"] >= 5).astype(float),
        "albumin_minus_3_5": p["albumin"] - 3.5,
        "ecog": p["ecog"].astype(float),
        "ecog_2": (p["ecog"] >= 2).astype(float),
        "age_ge_75": (p["age"] >= 75).astype(float),
        "child_pugh_b_or_c": np.isin(p["child_pugh_class"], ("B", "C")).astype(float),
        "albi_grade_2_3": (p["albi_grade"] >= 2).astype(float),
        "afp_ge_400": (p["afp"] >= 400).astype(float),
        "macrovascular_invasion": p["macrovascular_invasion"].astype(float),
        "extrahepatic_spread": p["extrahepatic_spread"].astype(float),
    }


def _linear(terms: Mapping[str, np.ndarray], effects: list[Mapping[str, Any]], regimens: list[Regimen]) -> np.ndarray:
    """Return the linear predictor (patients × regimens) of a list of configured effects."""
    n = len(next(iter(terms.values())))
    out = np.zeros((n, len(regimens)))
    for effect in effects:
        term = effect["term"]
        if term not in terms:
            raise ValueError(f"simulator.yaml: unknown term {term!r}; expected one of {', '.join(sorted(terms))}")
        applies = np.array([
            ("classes" not in effect or r.regimen_class in effect["classes"])
            and ("regimens" not in effect or r.name in effect["regimens"])
            for r in regimens
        ], dtype=float)
        out += float(effect["value"]) * terms[term][:, None] * applies[None, :]
    return out


def _eligible(values: Mapping[str, np.ndarray], regimen: Regimen) -> np.ndarray:
    """Return, per patient, whether every eligibility rule holds (a missing value fails), as bool."""
    n = len(next(iter(values.values())))
    ok = np.ones(n, dtype=bool)
    for rule in regimen.eligibility:
        ok &= rule.holds(values[rule.field])
    return ok


def _assign(p: Mapping[str, np.ndarray], terms: Mapping[str, np.ndarray], rng: np.random.Generator,
            cfg: Mapping[str, Any], regimens: list[Regimen]) -> np.ndarray:
    """Return the index (into ``regimens``) of the regimen each patient receives."""
    spec = cfg["assignment"]
    first, later = spec["first_line"]["weights"], spec["later_line"]["weights"]
    unknown = (set(first) | set(later)) - {r.name for r in regimens}
    if unknown:
        raise ValueError(f"simulator.yaml assignment: unknown regimen(s) {', '.join(sorted(unknown))}")
    n = len(p["age"])
    tki_shift = sum(float(v) * terms[name] for name, v in spec["tki_preference"].items() if name != "source")
    utility = np.full((n, len(regimens)), -np.inf)
    line_one = p["line_of_therapy"] == 1
    for k, regimen in enumerate(regimens):
        allowed = np.where(line_one, regimen.name in first, regimen.name in later)
        if regimen.eligibility:  # catalogue rules, on the true values
            allowed &= _eligible({rule.field: p[rule.field] for rule in regimen.eligibility}, regimen)
        weight = first.get(regimen.name) or later.get(regimen.name) or 0.0
        if weight <= 0:
            continue
        shift = tki_shift if regimen.regimen_class == "tki_antiangiogenic" else 0.0
        utility[:, k] = np.where(allowed, np.log(weight) + shift, -np.inf)
    utility -= utility.max(axis=1, keepdims=True)
    prob = np.exp(utility)
    prob /= prob.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(prob, axis=1)
    u = rng.random(n)[:, None]
    return np.minimum((u > cumulative).sum(axis=1), len(regimens) - 1)


# ---------------------------------------------------------------------------------------------
# Calibration to the trials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Per-regimen calibrated parameters (arrays in ``regimens`` order).

    ``alpha``: response intercept (log odds); ``log_pfs_rate``: log baseline progression hazard
    (per month); ``log_pps_rate``: log baseline post-progression death hazard (per month);
    ``n_reference``: receivers of each regimen in the reference population.
    """

    regimens: tuple[str, ...]
    alpha: np.ndarray
    log_pfs_rate: np.ndarray
    log_pps_rate: np.ndarray
    n_reference: np.ndarray


def _class_values(mapping: Mapping[str, Any], regimens: list[Regimen]) -> np.ndarray:
    return np.array([float(mapping[r.regimen_class]) for r in regimens])


def _pfs_sf(t: float | np.ndarray, p: np.ndarray, rate: np.ndarray, hr: np.ndarray, t_scan: float) -> np.ndarray:
    """Return the true progression-free survival at ``t`` months, per patient."""
    responder = np.where(t < t_scan, 1.0, np.exp(-rate * hr * np.maximum(t - t_scan, 0.0)))
    return p * responder + (1.0 - p) * np.exp(-rate * t)


def _os_sf(t: float, p: np.ndarray, rate: np.ndarray, hr: np.ndarray, pps: np.ndarray, t_scan: float) -> np.ndarray:
    """Return the true overall survival at ``t`` months, per patient (OS = PFS + post-progression)."""
    responder = 1.0 if t < t_scan else _sf_sum_exponentials(np.full_like(rate, t - t_scan), rate * hr, pps)
    return p * responder + (1.0 - p) * _sf_sum_exponentials(np.full_like(rate, t), rate, pps)


@lru_cache(maxsize=8)
def _calibrate(config_key: tuple[str, float]) -> Calibration:
    cfg = load_yaml(config_key[0])
    spec = cfg["calibration"]
    regimens = _regimens()
    started = time.perf_counter()
    log.info("calibrating %d regimens on a reference population of %d (seed %d)",
             len(regimens), spec["n"], spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    p = _draw_patients(int(spec["n"]), rng, cfg, config_key)
    terms = _terms(p)
    given = _assign(p, terms, rng, cfg, regimens)
    outcomes = cfg["outcomes"]
    lin_resp = _linear(terms, outcomes["response"], regimens)
    lin_pfs = _linear(terms, outcomes["pfs"], regimens)
    lin_pps = _linear(terms, outcomes["post_progression"], regimens)
    hr = _class_values(outcomes["responder_hazard_ratio"], regimens)
    t_scan = float(_value(outcomes["first_scan_months"]))
    tol, iters = float(spec["tolerance"]), int(spec["max_iterations"])
    alpha, log_pfs, log_pps, counts = [], [], [], []
    for k, regimen in enumerate(regimens):
        rows = given == k
        counts.append(int(rows.sum()))
        if not rows.any():
            raise ValueError(f"calibration: no patient of the reference population receives {regimen.name}; "
                             "raise its assignment weight or the calibration n")
        trial = regimen.trial
        x_resp, x_pfs, x_pps = lin_resp[rows, k], lin_pfs[rows, k], lin_pps[rows, k]
        # the objectives bind this iteration's values as defaults: _bisect calls them right away
        a = _bisect(lambda v, x_resp=x_resp, trial=trial: expit(v + x_resp).mean() - trial["orr"],
                    -30, 30, tol, iters, f"{regimen.name} ORR")
        prob = expit(a + x_resp)
        median_pfs = float(trial["median_pfs_months"])
        lp = _bisect(lambda v, median_pfs=median_pfs, prob=prob, x_pfs=x_pfs, hr_k=hr[k]:
                     _pfs_sf(median_pfs, prob, np.exp(v + x_pfs), hr_k, t_scan).mean() - 0.5,
                     -20, 10, tol, iters, f"{regimen.name} median PFS")
        rate = np.exp(lp + x_pfs)
        median_os = float(trial["median_os_months"])
        lo = _bisect(lambda v, median_os=median_os, prob=prob, rate=rate, hr_k=hr[k], x_pps=x_pps:
                     _os_sf(median_os, prob, rate, hr_k, np.exp(v + x_pps), t_scan).mean() - 0.5,
                     -20, 10, tol, iters, f"{regimen.name} median OS")
        alpha.append(a)
        log_pfs.append(lp)
        log_pps.append(lo)
        log.debug("%s: n=%d alpha=%.3f log_pfs_rate=%.3f log_pps_rate=%.3f",
                  regimen.name, rows.sum(), a, lp, lo)
    log.info("calibration done in %.1f s", time.perf_counter() - started)
    return Calibration(tuple(r.name for r in regimens), np.array(alpha), np.array(log_pfs),
                       np.array(log_pps), np.array(counts))


def calibration(config: str = "simulator.yaml") -> Calibration:
    """Return the per-regimen calibrated parameters for ``config`` (cached per file and version)."""
    return _calibrate(_config_key(config))


# ---------------------------------------------------------------------------------------------
# The cohort
# ---------------------------------------------------------------------------------------------


def _masked(values: np.ndarray, missing: np.ndarray) -> list[Any]:
    """Return ``values`` as a Python list with None where ``missing``."""
    return [None if gone else value for value, gone in zip(values.tolist(), missing.tolist())]


def simulate_cohort(n: int, seed: int, config: str = "simulator.yaml") -> SimulatedCohort:
    """Return a simulated cohort of ``n`` patients (seeded) and its ground truth.

    ``cohort`` is the canonical cohort table (months for PFS/OS, usual record units); ``truth``
    has one row per patient × candidate regimen with the true probabilities (0–1).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    started = time.perf_counter()
    key = _config_key(config)
    cfg = load_yaml(key[0])
    regimens = _regimens()
    cal = _calibrate(key)
    rng = np.random.default_rng(seed)

    log.info("step 1/4: drawing %d patients (seed %d)", n, seed)
    p = _draw_patients(n, rng, cfg, key)
    terms = _terms(p)
    given = _assign(p, terms, rng, cfg, regimens)

    log.info("step 2/4: outcomes under %d regimens", len(regimens))
    outcomes = cfg["outcomes"]
    t_scan = float(_value(outcomes["first_scan_months"]))
    hr = _class_values(outcomes["responder_hazard_ratio"], regimens)
    cr_share = _class_values(outcomes["complete_response_share"], regimens)
    p_resp = expit(cal.alpha[None, :] + _linear(terms, outcomes["response"], regimens))
    pfs_rate = np.exp(cal.log_pfs_rate[None, :] + _linear(terms, outcomes["pfs"], regimens))
    pps_rate = np.exp(cal.log_pps_rate[None, :] + _linear(terms, outcomes["post_progression"], regimens))
    window = resistance_window_months()
    p_resistance = (p_resp * (1.0 - np.exp(-pfs_rate * hr[None, :] * (window - t_scan)))
                    + (1.0 - p_resp) * (1.0 - np.exp(-pfs_rate * window)))

    bor, pfs_months, pfs_event, os_months, os_event = _observed_outcomes(
        rng, given, p_resp, pfs_rate, pps_rate, hr, cr_share, t_scan, cfg["outcomes"]["censoring"])

    log.info("step 3/4: missingness and the canonical table")
    frame = _cohort_columns(p, given, regimens, bor, pfs_months, pfs_event, os_months, os_event, rng, cfg, key)
    cohort = normalise_frame(frame)

    log.info("step 4/4: ground truth")
    truth = _truth_table(cohort, given, regimens, p_resp, p_resistance)
    log.info("simulated %d patients in %.1f s", n, time.perf_counter() - started)
    return SimulatedCohort(cohort=cohort, truth=truth)


def _observed_outcomes(rng: np.random.Generator, given: np.ndarray, p_resp: np.ndarray, pfs_rate: np.ndarray,
                       pps_rate: np.ndarray, hr: np.ndarray, cr_share: np.ndarray, t_scan: float,
                       censor: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """(best overall response, PFS months, PFS event, OS months, OS event) under each patient's given
    regimen, with censoring by accrual and dropout."""
    n = len(given)
    rows = np.arange(n)
    responder = rng.random(n) < p_resp[rows, given]
    complete = responder & (rng.random(n) < cr_share[given])
    rate = pfs_rate[rows, given]
    progression = np.where(responder, t_scan + rng.exponential(size=n) / (rate * hr[given]),
                           rng.exponential(size=n) / rate)
    death = progression + rng.exponential(size=n) / pps_rate[rows, given]
    follow_up = np.minimum(censor["minimum_follow_up_months"] + censor["accrual_months"] * rng.random(n),
                           rng.exponential(1.0 / censor["dropout_per_month"], n))
    pfs_event = progression <= follow_up
    os_event = death <= follow_up
    pfs_months = np.round(np.minimum(progression, follow_up), 2)
    os_months = np.round(np.minimum(death, follow_up), 2)
    seen_at_scan = follow_up >= t_scan
    bor = np.full(n, None, dtype=object)
    bor[responder & seen_at_scan] = "PR"
    bor[complete & seen_at_scan] = "CR"
    bor[~responder & (progression < t_scan) & pfs_event] = "PD"
    bor[~responder & (progression >= t_scan) & seen_at_scan] = "SD"
    return bor, pfs_months, pfs_event, os_months, os_event


def _cohort_columns(p: Mapping[str, np.ndarray], given: np.ndarray, regimens: list[Regimen], bor: np.ndarray,
                    pfs_months: np.ndarray, pfs_event: np.ndarray, os_months: np.ndarray, os_event: np.ndarray,
                    rng: np.random.Generator, cfg: Mapping[str, Any], key: tuple[str, float]) -> pd.DataFrame:
    """Return the observed cohort columns: true values with the configured missingness applied."""
    n = len(given)
    miss = cfg["missingness"]
    fields = miss["fields"]

    def gone(rate: float) -> np.ndarray:
        return rng.random(n) < float(rate)

    genotyped = ~gone(_value(miss["genomics"]))
    no_pdl1 = gone(_value(miss["pdl1"]))
    no_tme = gone(_value(miss["microenvironment"]))
    missing = {name: gone(rate) for name, rate in fields.items() if name != "source"}
    ramucirumab = np.array([regimens[k].name == "ramucirumab" for k in given])
    missing["afp"] &= ~ramucirumab
    no_counts = missing.pop("counts")
    items = ("albumin", "bilirubin", "inr", "ascites", "encephalopathy")
    incomplete = np.any([missing[item] for item in items], axis=0)
    missing["child_pugh_class"] &= incomplete  # with all five items the class follows from them
    missing["nlr"] &= no_counts

    spec = cfg["ids"]
    columns: dict[str, Any] = {
        "patient_id": [f"{spec['prefix']}{i:0{spec['digits']}d}" for i in range(1, n + 1)],
        "age": p["age"].tolist(),
        "sex": np.where(p["male"], "male", "female").tolist(),
        "cancer_type": ["Hepatobiliary"] * n,
        "neutrophils": _masked(p["neutrophils"], no_counts),
        "lymphocytes": _masked(p["lymphocytes"], no_counts),
        "line_of_therapy": p["line_of_therapy"].tolist(),
        "prior_systemic_therapy": (p["line_of_therapy"] > 1).tolist(),
    }
    for name in ("ecog", "aetiology", "albumin", "bilirubin", "inr", "ascites", "encephalopathy",
                 "child_pugh_class", "bclc_stage", "afp", "macrovascular_invasion", "extrahepatic_spread",
                 "lesion_count", "largest_lesion_cm", "nlr", "platelets", "haemoglobin", "bmi", "diabetes",
                 "alcohol_use", "smoking"):
        columns[name] = _masked(p[name], missing[name])
    columns["pdl1_tps"] = _masked(p["pdl1_tps"], no_pdl1)
    columns["pdl1_cps"] = _masked(p["pdl1_cps"], no_pdl1)
    for name in ("cd8_density", "teff_signature", "treg_signature", "myeloid_signature"):
        columns[name] = _masked(p[name], no_tme)
    alterations = np.array(_alteration_json(p["variants"], key), dtype=object)
    columns["alterations"] = _masked(alterations, ~genotyped)
    for name in ("tmb", "msi_status", "sequencing_panel"):
        columns[name] = _masked(p[name], ~genotyped)

    columns["regimen"] = [regimens[k].name for k in given]
    columns["best_overall_response"] = bor.tolist()
    columns["objective_response"] = [None if b is None else int(b in ("CR", "PR")) for b in bor]
    columns["pfs_months"] = pfs_months.tolist()
    columns["pfs_event"] = pfs_event.astype(int).tolist()
    columns["os_months"] = os_months.tolist()
    columns["os_event"] = os_event.astype(int).tolist()
    columns["primary_resistance"] = [derive_primary_resistance(b, m, e) for b, m, e in zip(
        columns["best_overall_response"], columns["pfs_months"], columns["pfs_event"])]
    return pd.DataFrame(columns)


def _truth_table(cohort: pd.DataFrame, given: np.ndarray, regimens: list[Regimen], p_resp: np.ndarray,
                 p_resistance: np.ndarray) -> pd.DataFrame:
    """Return the long ground-truth table (patient × regimen) in ``TRUTH_COLUMNS`` order."""
    n, k = p_resp.shape
    observed = {name: cohort[name].to_numpy(dtype=float, na_value=np.nan)
                for r in regimens for name in {rule.field for rule in r.eligibility}}
    eligible = np.column_stack([
        _eligible(observed, r) if r.eligibility else np.ones(n, dtype=bool) for r in regimens])
    return pd.DataFrame({
        "patient_id": np.repeat(cohort["patient_id"].to_numpy(dtype=object), k),
        "regimen": np.tile(np.array([r.name for r in regimens], dtype=object), n),
        "regimen_class": np.tile(np.array([r.regimen_class for r in regimens], dtype=object), n),
        "given": (given[:, None] == np.arange(k)[None, :]).ravel(),
        "p_objective_response": p_resp.ravel(),
        "p_primary_resistance": p_resistance.ravel(),
        "eligible": eligible.ravel(),
    }, columns=list(TRUTH_COLUMNS))


def write_simulation(sim: SimulatedCohort, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write the simulation into ``out_dir``; return the written paths by name.

    ``fmt="parquet"``: ``cohort.parquet``; ``fmt="cbioportal"``: a cBioPortal study folder (``study``).
    ``truth.parquet`` is written in both cases. The same simulation always gives byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        written = {"cohort": write_cohort(sim.cohort, out / "cohort.parquet")}
    elif fmt == "cbioportal":
        from response_model.sources.cbioportal import write_study

        written = {"study": write_study(sim.cohort, out)}
    else:
        raise ValueError(f"format {fmt!r} is not one of parquet, cbioportal")
    truth_path = out / "truth.parquet"
    table = pa.Table.from_pandas(sim.truth.reset_index(drop=True), preserve_index=False)
    pq.write_table(table, truth_path, compression="zstd", write_statistics=False)
    written["truth"] = truth_path
    log.info("wrote %s", ", ".join(str(path) for path in written.values()))
    return written
