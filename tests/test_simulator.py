"""The cohort simulator: published prevalences and effects, calibration to the trials, confounding,
missingness, validity of the canonical table and reproducibility.

The main checks run on one cohort of 20,000 patients (seed 1). A "null" simulation with the WNT,
PI3K–mTOR and non-viral effects and the TP53–WNT exclusivity switched off shows that the same checks
fail on a wrong model.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import CoxPHFitter, KaplanMeierFitter
from scipy.stats import rankdata

from response_model.config import load_yaml
from response_model.dataset import COHORT_COLUMNS, normalise_frame, parse_cohort
from response_model.pathways import load_pathways
from response_model.regimens import candidate_regimens, load_catalogue
from response_model.schema import Alteration
from response_model.sources.simulator import (
    TRUTH_COLUMNS,
    SimulatedCohort,
    calibration,
    simulate_cohort,
    write_simulation,
)

N = 20_000
SEED = 1
PRECISE = ("sorafenib", "lenvatinib", "atezolizumab_bevacizumab", "durvalumab_tremelimumab", "nivolumab")
FIRST_LINE = {"sorafenib", "lenvatinib", "atezolizumab_bevacizumab", "durvalumab_tremelimumab", "durvalumab",
              "nivolumab", "nivolumab_ipilimumab", "camrelizumab_rivoceranib", "tislelizumab"}
LATER_LINE = {"pembrolizumab", "regorafenib", "cabozantinib", "ramucirumab"}


# ---------------------------------------------------------------------------------------------
# Statistics used by the checks (also on the null model)
# ---------------------------------------------------------------------------------------------


@cache
def _alteration(item: str) -> Alteration:
    return Alteration(**json.loads(item))


def genomic_status(cohort: pd.DataFrame) -> pd.DataFrame:
    """Return, per genotyped patient, pathway status (configs/pathways.yaml) and per-gene flags."""
    pathways = load_pathways()
    wnt = next(p for p in pathways if p.name == "wnt_activation")
    pi3k = next(p for p in pathways if p.name == "pi3k_mtor")
    rows = []
    genotyped = cohort[cohort["alterations"].notna()]
    for text in genotyped["alterations"]:
        alterations = [_alteration(json.dumps(item, separators=(",", ":"))) for item in json.loads(text)]
        genes = {a.gene for a in alterations}
        row = {p.name: bool(p.drivers(alterations)) for p in pathways}
        row["CTNNB1_activating"] = any(a.gene == "CTNNB1" for a in wnt.drivers(alterations))
        row["PIK3CA_hot_spot"] = any(a.gene == "PIK3CA" for a in pi3k.drivers(alterations))
        for gene in ("AXIN1", "ARID1A", "ARID2", "PTEN", "CDKN2A", "MET", "CTNNB1"):
            row[gene] = gene in genes
        row["TSC1_TSC2"] = bool(genes & {"TSC1", "TSC2"})
        row["FGF19_CCND1"] = {"FGF19", "CCND1"} <= genes
        row["KEAP1_NFE2L2"] = bool(genes & {"KEAP1", "NFE2L2"})
        rows.append(row)
    return pd.DataFrame(rows, index=genotyped.index)


def is_ici(cohort: pd.DataFrame) -> pd.Series:
    classes = {r.name: r.regimen_class for r in candidate_regimens()}
    return cohort["regimen"].map(classes).eq("checkpoint_inhibitor")


def tp53_wnt_odds_ratio(status: pd.DataFrame) -> float:
    table = pd.crosstab(status["tp53_loss"], status["wnt_activation"])
    return (table.loc[True, True] * table.loc[False, False]) / (table.loc[True, False] * table.loc[False, True])


def ici_orr_by_wnt(cohort: pd.DataFrame, status: pd.DataFrame) -> tuple[float, float]:
    rows = cohort.loc[status.index]
    treated = is_ici(rows) & rows["objective_response"].notna()
    response = rows["objective_response"].astype(float)
    return (float(response[treated & status["wnt_activation"]].mean()),
            float(response[treated & ~status["wnt_activation"]].mean()))


def sorafenib_pi3k_hazard_ratio(cohort: pd.DataFrame, status: pd.DataFrame) -> float:
    rows = cohort.loc[status.index]
    treated = rows["regimen"].eq("sorafenib")
    data = pd.DataFrame({
        "T": rows.loc[treated, "pfs_months"].astype(float),
        "E": rows.loc[treated, "pfs_event"].astype(int),
        "pi3k": status.loc[treated, "pi3k_mtor"].astype(int),
    })
    return float(np.exp(CoxPHFitter().fit(data, "T", "E").params_["pi3k"]))


def ici_advantage_by_aetiology(sim: SimulatedCohort) -> tuple[float, float]:
    """Return the mean true (ICI − TKI) response probability in viral and in non-viral patients."""
    by_class = sim.truth.pivot_table(index="patient_id", columns="regimen_class",
                                     values="p_objective_response", aggfunc="mean")
    advantage = by_class["checkpoint_inhibitor"] - by_class["tki_antiangiogenic"]
    viral = sim.cohort.set_index("patient_id")["aetiology"].isin(["HBV", "HCV"]).reindex(advantage.index)
    return float(advantage[viral].mean()), float(advantage[~viral].mean())


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the ROC AUC (sklearn's roc_auc_score when installed, else the Mann–Whitney formula)."""
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:  # pragma: no cover - same number, no extra dependency
        ranks = rankdata(scores)
        positives = labels == 1
        n_pos, n_neg = positives.sum(), (~positives).sum()
        return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(roc_auc_score(labels, scores))


def given_truth(sim: SimulatedCohort) -> pd.DataFrame:
    """Return the truth rows of the regimen each patient received, in cohort order."""
    return sim.truth[sim.truth["given"]].set_index("patient_id").loc[sim.cohort["patient_id"]].reset_index()


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> SimulatedCohort:
    return simulate_cohort(N, SEED)


@pytest.fixture(scope="module")
def status(sim) -> pd.DataFrame:
    return genomic_status(sim.cohort)


@pytest.fixture(scope="module")
def null_sim(tmp_path_factory) -> SimulatedCohort:
    """A wrong model: no WNT, PI3K–mTOR or non-viral effect, no TP53–WNT exclusivity."""
    config = load_yaml("simulator.yaml")
    config = json.loads(json.dumps(config))  # deep copy
    config["calibration"]["n"] = 20_000
    config["genomics"]["events"]["ctnnb1"]["p_if_tp53"] = config["genomics"]["events"]["ctnnb1"]["p"]
    config["microenvironment"]["wnt_immune_exclusion"]["value"] = 0.0
    for section in ("response", "pfs", "post_progression"):
        for effect in config["outcomes"][section]:
            if effect["term"] in ("wnt_activation", "pi3k_mtor", "non_viral"):
                effect["value"] = 0.0
    path = tmp_path_factory.mktemp("null") / "simulator_null.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return simulate_cohort(N, SEED, config=str(path))


# ---------------------------------------------------------------------------------------------
# Public API and the canonical table
# ---------------------------------------------------------------------------------------------


def test_layout_of_cohort_and_truth(sim):
    cohort, truth = sim.cohort, sim.truth
    regimens = [r.name for r in candidate_regimens()]
    assert tuple(cohort.columns) == COHORT_COLUMNS and len(cohort) == N
    pd.testing.assert_frame_equal(cohort, normalise_frame(cohort))
    assert cohort["patient_id"].iloc[0] == "SIM-000001" and cohort["patient_id"].iloc[-1] == f"SIM-{N:06d}"
    assert cohort["patient_id"].is_unique and cohort["cancer_type"].eq("Hepatobiliary").all()
    assert tuple(truth.columns) == TRUTH_COLUMNS and len(truth) == N * len(regimens)
    assert truth["given"].dtype == bool and truth["eligible"].dtype == bool
    assert truth.groupby("patient_id")["regimen"].apply(list).map(lambda x: x == regimens).all()
    assert truth.groupby("patient_id")["given"].sum().eq(1).all()
    given = given_truth(sim)
    assert (given["regimen"].to_numpy() == cohort["regimen"].to_numpy()).all()
    assert given["eligible"].all(), "every patient received a regimen they were eligible for"
    for column in ("p_objective_response", "p_primary_resistance"):
        assert truth[column].between(0, 1).all() and truth[column].notna().all()
    ramucirumab = truth[truth["regimen"] == "ramucirumab"].set_index("patient_id")["eligible"]
    afp = cohort.set_index("patient_id")["afp"]
    assert (ramucirumab == (afp >= 400).fillna(False).astype(bool)).all()
    assert not truth.loc[truth["regimen"] != "ramucirumab", "eligible"].eq(False).any()


def test_canonical_table_validates_without_a_rejected_row(simulated_small):
    parsed = parse_cohort(simulated_small.cohort)
    assert parsed.ok and parsed.n_read == 2000 and not parsed.rejected
    # the vectorised table is exactly what cohort_frame builds from the validated records
    pd.testing.assert_frame_equal(parsed.frame(), simulated_small.cohort, check_exact=True)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    paths = [write_simulation(simulate_cohort(400, seed), tmp_path / name)
             for seed, name in ((3, "a"), (3, "b"), (4, "c"))]
    assert set(paths[0]) == {"cohort", "truth"}
    for name in ("cohort", "truth"):
        assert paths[0][name].name == f"{name}.parquet"
        assert paths[0][name].read_bytes() == paths[1][name].read_bytes()
        assert paths[0][name].read_bytes() != paths[2][name].read_bytes()


def test_calibration_is_cached_and_covers_every_regimen():
    first, second = calibration(), calibration()
    assert first is second
    assert first.regimens == tuple(r.name for r in candidate_regimens())
    assert (first.n_reference > 0).all()


# ---------------------------------------------------------------------------------------------
# Demographics, liver function and treatment context
# ---------------------------------------------------------------------------------------------


def test_clinical_mix(sim):
    c = sim.cohort
    assert c["age"].between(18, 95).all() and abs(c["age"].mean() - 64) < 0.5
    assert abs(c["sex"].eq("male").mean() - 0.82) < 0.02
    assert abs(c["aetiology"].isin(["HBV", "HCV"]).mean() - 0.48) < 0.02
    child_pugh = c["child_pugh_class"].dropna().value_counts(normalize=True)
    assert abs(child_pugh["A"] - 0.85) < 0.03 and abs(child_pugh["B"] - 0.14) < 0.03
    assert 0.002 < child_pugh.get("C", 0) < 0.02
    assert abs((c["afp"].dropna() >= 400).mean() - 0.40) < 0.03
    assert abs(c["nlr"].dropna().median() - 3.0) < 0.3
    assert set(c["bclc_stage"].dropna()) <= {"B", "C", "D"} and c["bclc_stage"].eq("C").mean() > 0.6
    lines = c["line_of_therapy"].value_counts(normalize=True)
    assert lines[1] > 0.6 and lines[2] > 0.15 and lines[3] > 0.04
    assert (c["prior_systemic_therapy"] == (c["line_of_therapy"] > 1)).all()
    genotyped = c[c["alterations"].notna()]
    assert abs(genotyped["tmb"].median() - 4.1) < 0.3
    assert 0.015 < (genotyped["tmb"] >= 10).mean() < 0.035
    msi = genotyped["msi_status"].eq("MSI-H")
    assert 0 < msi.mean() < 0.01 and (genotyped.loc[msi, "tmb"] >= 10).mean() > 0.9


# ---------------------------------------------------------------------------------------------
# Genomics
# ---------------------------------------------------------------------------------------------


PREVALENCE = {  # hcc-evidence.md, "Genomic alterations: prevalence in HCC"
    "tert_promoter": 0.556,
    "CTNNB1_activating": 0.357,
    "tp53_loss": 0.325,
    "AXIN1": 0.08,
    "ARID1A": 0.127,
    "ARID2": 0.06,
    "TSC1_TSC2": 0.10,
    "FGF19_CCND1": 0.063,
    "fgf19_amplification": 0.063,
    "vegfa_amplification": 0.06,
    "CDKN2A": 0.065,
    "KEAP1_NFE2L2": 0.05,
    "oxidative_stress": 0.05,
    "PTEN": 0.039,
    "PIK3CA_hot_spot": 0.025,
    "met_amplification": 0.015,
}


@pytest.mark.parametrize("name", sorted(PREVALENCE))
def test_alteration_prevalence_matches_the_literature(status, name):
    measured = status[name].mean()
    assert abs(measured - PREVALENCE[name]) <= 0.03, f"{name}: {measured:.3f} vs {PREVALENCE[name]}"


def test_passengers_activate_nothing(sim, status):
    assert status["CTNNB1"].mean() > status["CTNNB1_activating"].mean()  # p.A21T carriers exist
    assert sim.cohort["alterations"].dropna().str.contains('"CTNNB1","kind":"missense","protein_change":"p.A21T"',
                                                           regex=False).any()
    # PIK3CA hot spots only: the pathway share is about TSC + PTEN + PIK3CA hot spots
    assert status["pi3k_mtor"].mean() < status["TSC1_TSC2"].mean() + status["PTEN"].mean() + 0.03 + 0.01


def test_tp53_and_wnt_are_mutually_exclusive(status):
    assert tp53_wnt_odds_ratio(status) < 0.5


def test_tp53_is_enriched_in_viral_hcc(sim, status):
    viral = sim.cohort.loc[status.index, "aetiology"].isin(["HBV", "HCV"])
    in_viral, in_non_viral = status.loc[viral, "tp53_loss"].mean(), status.loc[~viral, "tp53_loss"].mean()
    assert abs(in_viral - 0.45) < 0.03 and abs(in_non_viral - 0.21) < 0.03


# ---------------------------------------------------------------------------------------------
# Regimen assignment
# ---------------------------------------------------------------------------------------------


def test_every_regimen_is_given_and_lines_are_respected(sim):
    c = sim.cohort
    share = c["regimen"].value_counts(normalize=True)
    assert set(share.index) == {r.name for r in candidate_regimens()}
    assert (share > 0.005).all()
    for name in PRECISE:
        assert share[name] >= 0.05, f"{name}: {share[name]:.3f}"
    assert set(c.loc[c["line_of_therapy"] == 1, "regimen"]) <= FIRST_LINE
    assert set(c.loc[c["line_of_therapy"] > 1, "regimen"]) <= LATER_LINE
    assert (c.loc[c["regimen"] == "ramucirumab", "afp"] >= 400).all()


def test_frail_patients_more_often_get_a_tki(sim):
    c = sim.cohort
    tki = ~is_ici(c)
    assert tki[c["child_pugh_class"] == "B"].mean() > tki[c["child_pugh_class"] == "A"].mean() + 0.1
    assert tki[c["age"] >= 75].mean() > tki[c["age"] < 75].mean() + 0.05
    assert tki[c["ecog"] == 2].mean() > tki[c["ecog"] < 2].mean() + 0.05


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("regimen", PRECISE)
def test_orr_matches_the_trial(sim, regimen):
    trial = load_catalogue()[regimen].trial["orr"]
    c = sim.cohort
    observed = c.loc[c["regimen"] == regimen, "objective_response"].dropna().astype(float).mean()
    assert abs(observed - trial) <= 0.03, f"{regimen}: ORR {observed:.3f} vs trial {trial}"
    truth = given_truth(sim)
    expected = truth.loc[truth["regimen"] == regimen, "p_objective_response"].mean()
    assert abs(expected - trial) <= 0.015


@pytest.mark.parametrize("regimen", PRECISE)
def test_survival_medians_are_near_the_trial(sim, regimen):
    trial = load_catalogue()[regimen].trial
    rows = sim.cohort[sim.cohort["regimen"] == regimen]
    for months, event, target in (("pfs_months", "pfs_event", "median_pfs_months"),
                                  ("os_months", "os_event", "median_os_months")):
        fitted = KaplanMeierFitter().fit(rows[months].astype(float), rows[event].astype(int))
        assert abs(fitted.median_survival_time_ / trial[target] - 1) < 0.2, (months, fitted.median_survival_time_)


def test_wnt_activation_blunts_checkpoint_inhibitors(sim, status, null_sim):
    with_wnt, without = ici_orr_by_wnt(sim.cohort, status)
    assert with_wnt <= without / 3
    null_with, null_without = ici_orr_by_wnt(null_sim.cohort, genomic_status(null_sim.cohort))
    assert null_with > null_without / 3, "the check must fail on a model without a WNT effect"


def test_tp53_wnt_check_fails_without_exclusivity(null_sim):
    assert tp53_wnt_odds_ratio(genomic_status(null_sim.cohort)) > 0.5


def test_pi3k_mtor_shortens_sorafenib_pfs(sim, status, null_sim):
    assert 2.5 <= sorafenib_pi3k_hazard_ratio(sim.cohort, status) <= 5
    assert sorafenib_pi3k_hazard_ratio(null_sim.cohort, genomic_status(null_sim.cohort)) < 2.5


def test_checkpoint_benefit_is_weaker_in_non_viral_hcc(sim, null_sim):
    viral, non_viral = ici_advantage_by_aetiology(sim)
    assert non_viral < viral - 0.03
    null_viral, null_non_viral = ici_advantage_by_aetiology(null_sim)
    assert abs(null_non_viral - null_viral) < 0.03
    c = sim.cohort
    ici, is_viral = is_ici(c), c["aetiology"].isin(["HBV", "HCV"])
    response = c["objective_response"].astype(float)
    assert response[ici & ~is_viral].mean() < response[ici & is_viral].mean() - 0.03


def test_oracle_auc_is_realistic(sim):
    truth = given_truth(sim)
    observed = sim.cohort["objective_response"].notna().to_numpy()
    labels = sim.cohort.loc[observed, "objective_response"].astype(int).to_numpy()
    value = auc(labels, truth.loc[observed, "p_objective_response"].to_numpy())
    assert 0.70 <= value <= 0.85, value


def test_primary_resistance_labels_and_truth(sim):
    c, truth = sim.cohort, given_truth(sim)
    assert c["primary_resistance"].isna().mean() > 0  # censored before 6 months without progression
    assert c.loc[c["best_overall_response"] == "PD", "primary_resistance"].eq(1).all()
    assert 0 < c["pfs_event"].mean() < 1 and 0 < c["os_event"].mean() < 1
    assert (c["pfs_months"] <= c["os_months"]).all()
    corr = np.corrcoef(truth["p_objective_response"], truth["p_primary_resistance"])[0, 1]
    assert corr < -0.3
    labelled = c["primary_resistance"].notna().to_numpy()
    value = auc(c.loc[labelled, "primary_resistance"].astype(int).to_numpy(),
                truth.loc[labelled, "p_primary_resistance"].to_numpy())
    assert value > 0.6


def test_no_effect_features_have_none(sim):
    config = load_yaml("simulator.yaml")
    silent = set(config["no_effect"]["features"])
    used = {e["term"] for section in ("response", "pfs", "post_progression") for e in config["outcomes"][section]}
    used |= set(config["assignment"]["tki_preference"])
    assert not silent & used
    truth = given_truth(sim)
    c = sim.cohort
    for column in ("bmi", "haemoglobin", "tmb"):
        known = c[column].notna().to_numpy()
        corr = np.corrcoef(c.loc[known, column].astype(float), truth.loc[known, "p_objective_response"])[0, 1]
        assert abs(corr) < 0.03, (column, corr)
    for column in ("smoking", "diabetes"):
        means = truth["p_objective_response"].groupby(c[column].astype(object).fillna("missing").to_numpy()).mean()
        assert means.max() - means.min() < 0.015, (column, means.to_dict())


# ---------------------------------------------------------------------------------------------
# Missingness
# ---------------------------------------------------------------------------------------------


def test_missingness(sim):
    c = sim.cohort
    assert c["pdl1_tps"].isna().mean() >= 0.5 and (c["pdl1_tps"].isna() == c["pdl1_cps"].isna()).all()
    assert 0.2 < c["alterations"].isna().mean() < 0.3
    assert (c["alterations"].isna() == c["tmb"].isna()).all()
    assert 0.75 < c["cd8_density"].isna().mean() < 0.85
    assert 0.07 < c["inr"].isna().mean() < 0.13 and 0.1 < c["bmi"].isna().mean() < 0.2
    assert c["age"].notna().all() and c["sex"].notna().all()


# ---------------------------------------------------------------------------------------------
# Configuration: every number cites its row
# ---------------------------------------------------------------------------------------------


def _uncited(node, path="", parent_cited=False):
    if isinstance(node, dict):
        cited = isinstance(node.get("source"), str)
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not (cited or parent_cited):
                yield f"{path}.{key}"
            yield from _uncited(value, f"{path}.{key}", cited)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, (int, float)) and not parent_cited:
                yield f"{path}[{index}]"
            yield from _uncited(value, f"{path}[{index}]", parent_cited)


def _sources(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "source":
                yield value
            else:
                yield from _sources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _sources(value)


def test_every_parameter_cites_its_source():
    config = load_yaml("simulator.yaml")
    assert list(_uncited(config)) == []
    for source in _sources(config):
        assert "hcc-evidence.md" in source or source.startswith("assumption"), source


def test_debated_effects_are_single_flagged_numbers():
    outcomes = load_yaml("simulator.yaml")["outcomes"]
    debated_terms = {"wnt_activation", "non_viral", "vegfa_amplification"}
    for section in ("response", "pfs", "post_progression"):
        for effect in outcomes[section]:
            assert isinstance(effect["value"], (int, float)) and math.isfinite(effect["value"])
            if effect["term"] in debated_terms:
                assert effect.get("debated"), effect


def test_literature_rows_of_the_notebook_are_matched(sim):
    from response_model.describe import alteration_prevalence, literature_prevalence

    measured = alteration_prevalence(sim.cohort)["prevalence"]
    for label, value in literature_prevalence().items():
        assert abs(measured[label] - value) <= 0.03, f"{label}: {measured[label]:.3f} vs {value}"
