"""Named subsets (issue 15 point 1): rules as data, checked against the schema, three-valued membership."""

import re
from pathlib import Path

import pandas as pd
import pytest

from response_model.dataset import normalise_frame
from response_model.errors import ConfigError
from response_model.trials.subsets import (
    Subset,
    SubsetError,
    SubsetInputError,
    get_subset,
    load_subsets,
    subset_frame,
)

EVIDENCE = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "hcc-evidence.md"


@pytest.fixture(scope="module")
def patients():
    """Five hand-written patients whose membership of every built-in subset is known."""
    rows = [
        # WNT-activated, HBV, AFP high, Child-Pugh A, PD-L1 TPS 5
        {"age": 60, "sex": "male", "aetiology": "HBV", "afp": 800.0, "child_pugh_class": "A",
         "alterations": "CTNNB1 p.S45P; TERT promoter", "pdl1_tps": 5.0},
        # sequenced, nothing found; alcohol; AFP low; Child-Pugh B; PD-L1 TPS 0, CPS not measured
        {"age": 70, "sex": "female", "aetiology": "alcohol", "afp": 12.0, "child_pugh_class": "B",
         "alterations": "[]", "pdl1_tps": 0.0},
        # not sequenced, aetiology unknown, AFP not measured, Child-Pugh B; PD-L1 CPS 3 (TPS not measured)
        {"age": 55, "sex": "male", "aetiology": "unknown", "child_pugh_class": "B", "pdl1_cps": 3.0},
        # PI3K-mTOR altered (PTEN loss), HCV, AFP high, Child-Pugh class not recorded
        {"age": 66, "sex": "male", "aetiology": "HCV", "afp": 400.0, "alterations": "PTEN deep_deletion"},
        # AFP high but Child-Pugh B: outside the AFP-and-A subset whatever else is missing
        {"age": 48, "sex": "female", "afp": 1000.0, "child_pugh_class": "B"},
    ]
    cohort = normalise_frame(pd.DataFrame(rows))
    cohort.index = [10, 11, 12, 13, 14]  # membership follows the cohort's own index
    return subset_frame(cohort)


NA = "NA"  # compared as text: pandas' NA is not equal to itself


def values(membership: pd.Series) -> list:
    """The membership as a list of True, False and "NA"."""
    return [NA if pd.isna(v) else bool(v) for v in membership]

EXPECTED = {
    "wnt_activated": [True, False, NA, False, NA],
    "pi3k_mtor_altered": [False, False, NA, True, NA],
    "viral": [True, False, NA, True, NA],
    "non_viral": [False, True, NA, False, NA],
    "pdl1_positive": [True, False, NA, NA, NA],  # the third has a CPS only: the TPS decides
    "afp_400": [True, False, NA, True, True],
    "afp_400_child_pugh_a": [True, False, False, NA, False],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_built_in_subset_gives_true_false_or_unknown_per_patient(patients, name):
    membership = get_subset(name).membership(patients)
    assert membership.dtype == "boolean"
    assert list(membership.index) == [10, 11, 12, 13, 14]
    assert values(membership) == EXPECTED[name]


def test_the_frame_keeps_record_values_and_adds_the_derived_features(patients):
    assert list(patients["child_pugh_class"].iloc[:2]) == ["A", "B"]  # the record's class, not the ordinal
    assert list(patients["genotyped"]) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert "wnt_activation" in patients and "aetiology_viral" in patients


def test_every_built_in_subset_cites_a_row_of_the_evidence_document():
    subsets = load_subsets()
    assert set(EXPECTED) <= set(subsets)
    text = EVIDENCE.read_text(encoding="utf-8") if EVIDENCE.is_file() else None
    for subset in subsets.values():
        assert subset.citation and subset.citation.startswith("hcc-evidence.md"), subset.name
        quoted = re.findall(r"'([^']+)'", subset.citation)
        assert quoted, subset.name
        if text is not None:
            assert all(q in text for q in quoted), (subset.name, quoted)


def test_combinations_follow_kleene_logic(patients):
    either = Subset("x", "not (wnt_activation == 1 or afp < 100)").membership(patients)
    assert values(either) == [False, False, NA, True, NA]
    listed = Subset("y", "aetiology in [hbv, HCV] and sex != female").membership(patients)
    assert values(listed) == [True, False, NA, True, False]  # NA and False
    excluded = Subset("z", "child_pugh_class not in [B, C]").membership(patients)
    assert values(excluded) == [True, False, False, NA, False]


@pytest.mark.parametrize(("rule", "says"), [
    ("wnt_activaton == 1", "unknown field 'wnt_activaton' (did you mean 'wnt_activation'?)"),
    ("aetiology in [HBV, HBC]", "'HBC' is not one of 'HBV', 'HCV', 'alcohol', 'MASLD', 'other'"),
    ("child_pugh_class == D", "child_pugh_class: 'D' is not one of 'A', 'B', 'C'"),
    ("afp >= high", "afp: 'high' is not a number"),
    ("wnt_activation == 2", "wnt_activation: '2' is not a yes/no value"),
    ("child_pugh_class < B", "compares only with ==, != or in"),
    ("afp >= 400 and", "expected a field name, got the end of the rule"),
    ("(afp > 3", "expected ')'"),
    ("afp >= 400 child_pugh_class == A", "join conditions with 'and' / 'or'"),
    ("__import__('os').system('x')", "unknown field '__import__'"),
    ("afp >= 400; drop", "unexpected character ';' at position 11"),
    ("aetiology == unknown", "means 'not known'"),
    ("", "empty rule"),
])
def test_a_bad_rule_is_refused_naming_the_subset_the_field_and_the_nearest_valid_one(rule, says):
    with pytest.raises(SubsetError) as caught:
        Subset("mine", rule)
    assert "subset 'mine'" in str(caught.value) and says in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # exit 2 on the command line


def test_a_subset_file_with_a_misspelt_key_or_a_repeated_name_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("subsets:\n  x:\n    rul: afp >= 400\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) rul \(did you mean 'rule'\?\)"):
        load_subsets([bad])
    again = tmp_path / "again.yaml"
    again.write_text("subsets:\n  afp_400:\n    rule: afp >= 1000\n", encoding="utf-8")
    with pytest.raises(SubsetError, match="'afp_400' is defined twice"):
        load_subsets([*sorted((Path(__file__).parents[1] / "configs" / "subsets").glob("*.yaml")), again])
    with pytest.raises(SubsetError, match=r"unknown subset 'afp400' \(did you mean 'afp_400'\?\)"):
        get_subset("afp400")


def test_an_invalid_cohort_or_a_frame_without_the_rules_column_is_an_input_error(patients):
    with pytest.raises(SubsetInputError, match="invalid row"):
        subset_frame(normalise_frame(pd.DataFrame([{"age": 60, "sex": "male", "albumin": 40.0}])))
    with pytest.raises(SubsetInputError, match="needs column"):
        get_subset("wnt_activated").membership(patients.drop(columns=["wnt_activation"]))


def test_describe_counts_prevalence_among_all_and_tested_and_the_screening_burden(patients):
    from response_model.trials.describe import describe_subset, description_text

    described = describe_subset(patients, get_subset("wnt_activated"))
    p = described.overall
    assert (p.n, p.inside, p.outside, p.unknown) == (5, 1, 2, 2) and p.share_unknown == pytest.approx(0.4)
    assert p.among_all[0] == pytest.approx(0.2) and p.among_tested[0] == pytest.approx(1 / 3)
    assert p.among_tested[1] < 1 / 3 < p.among_tested[2]  # a Wilson interval around it
    assert p.screen_per_enrolled[0] == pytest.approx(3.0)
    assert list(described.table_one.columns) == ["inside", "outside", "unknown"]
    assert described.table_one.loc["patients, n"].tolist() == ["1", "2", "2"]
    assert "patients to screen per patient enrolled: 3.0" in description_text(described)


def test_describe_warns_of_an_empty_subset_and_of_one_nobody_was_tested_for(patients):
    from response_model.trials.describe import describe_subset, description_text

    empty = describe_subset(patients, Subset("none", "afp < 0"))
    assert empty.overall.screen_per_enrolled is None
    assert any("empty — none of the 4 patients tested is inside" in w for w in empty.warnings)
    untested = describe_subset(patients.iloc[[2, 4]], get_subset("wnt_activated"))
    assert untested.overall.among_tested is None
    assert untested.warnings == ["wnt_activated: no patient's status is known (wnt_activation missing for all 2); "
                                 "prevalence is not estimable from this cohort"]
    assert "not estimable" in description_text(untested) and "nan" not in description_text(untested).lower()
