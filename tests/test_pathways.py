"""Genomic interpretation rules of configs/pathways.yaml, on real variants."""

import pytest

from response_model.pathways import load_pathways, pathway_status
from response_model.schema import Alteration


def active(*texts: str) -> set[str]:
    return {name for name, on in pathway_status([Alteration.parse(t) for t in texts]).items() if on}


@pytest.mark.parametrize(
    ("variant", "pathways"),
    [
        ("CTNNB1 p.S45P", {"wnt_activation"}),
        ("CTNNB1 p.T41A", {"wnt_activation"}),
        ("CTNNB1 p.D32G", {"wnt_activation"}),
        ("CTNNB1 p.S45del", {"wnt_activation"}),
        ("AXIN1 p.R146*", {"wnt_activation"}),
        ("AXIN1 deep_deletion", {"wnt_activation"}),
        ("TP53 p.R249S", {"tp53_loss"}),
        ("TP53 p.R175H", {"tp53_loss"}),
        ("PIK3CA p.H1047R", {"pi3k_mtor"}),
        ("PIK3CA p.E545K", {"pi3k_mtor"}),
        ("TSC2 p.Q1503*", {"pi3k_mtor"}),
        ("PTEN deep_deletion", {"pi3k_mtor"}),
        ("TERT promoter", {"tert_promoter"}),
        ("CDKN2A deep_deletion", {"cell_cycle"}),
        ("CCND1 amplification", {"cell_cycle"}),
        ("FGF19 amplification", {"fgf19_amplification"}),
        ("VEGFA amplification", {"vegfa_amplification"}),
        ("MET amplification", {"met_amplification"}),
        ("ARID1A p.Q586*", {"chromatin"}),
        ("ARID2 p.R1234fs", {"chromatin"}),
        ("KEAP1 p.R413*", {"oxidative_stress"}),
        ("NFE2L2 p.R34G", {"oxidative_stress"}),
    ],
)
def test_real_variants_switch_on_their_pathway(variant, pathways):
    assert active(variant) == pathways


@pytest.mark.parametrize(
    "variant",
    ["CTNNB1 p.A21T", "CTNNB1 p.K335I", "PIK3CA p.R88Q", "AXIN1 p.P345L", "NFE2L2 p.T400M", "TP53 p.P72R",
     "MET p.N375S", "TERT amplification", "FGF19 deep_deletion"],
)
def test_variants_outside_hot_spots_or_of_other_kinds_do_not(variant):
    assert active(variant) == set()


def test_not_sequenced_is_unknown_not_negative():
    assert set(pathway_status(None).values()) == {None}
    assert set(pathway_status([]).values()) == {False}


def test_every_pathway_cites_its_evidence_row():
    for pathway in load_pathways():
        assert "hcc-evidence.md" in pathway.source, pathway.name
        assert pathway.rules


def test_pathway_flags_are_each_pathways_drivers():
    """The one-pass flags the feature function uses say what each pathway's own ``drivers`` says."""
    from response_model.dataset import row_to_record
    from response_model.pathways import pathway_flags
    from response_model.sources.simulator import simulate_cohort

    pathways = load_pathways()
    records = [row_to_record(r) for r in simulate_cohort(300, 11).cohort.to_dict(orient="records")]
    genotyped = [r.alterations for r in records if r.alterations]
    assert len(genotyped) > 100
    switched_on = 0
    for alterations in genotyped:
        flags = pathway_flags(alterations)
        assert flags == [bool(p.drivers(alterations)) for p in pathways]
        switched_on += sum(flags)
    assert switched_on > 50  # the check compared real positives, not only negatives


def test_each_pathway_has_an_alteration_that_switches_it_on_alone():
    """The what-if genomic tests score a never-sequenced patient as if one pathway were altered."""
    from response_model.pathways import pathway_flags, representative_alteration

    pathways = load_pathways()
    for k, pathway in enumerate(pathways):
        flags = pathway_flags([representative_alteration(pathway)])
        assert flags == [j == k for j in range(len(pathways))], pathway.name
