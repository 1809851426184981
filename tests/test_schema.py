"""The patient record: computed scores and every rejection with its message."""

import re

import pytest
from pydantic import ValidationError

from response_model import clinical, schema
from response_model.schema import Alteration, AlterationKind, PatientRecord, field_errors, infer_kind

BASE = {"age": 64, "sex": "male"}


def messages(**fields) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        PatientRecord(**{**BASE, **fields})
    return [str(error) for error in field_errors(caught.value)]


def test_only_age_and_sex_are_required():
    record = PatientRecord(**BASE)
    assert record.albi_score is None and record.child_pugh_score is None and record.alterations is None
    assert messages(age=None) == ["age: None — Input should be a valid number"]
    with pytest.raises(ValidationError) as caught:
        PatientRecord(age=60)
    assert [str(e) for e in field_errors(caught.value)] == ["sex: required field is missing"]


def test_albi_worked_example_from_evidence():
    # hcc-evidence.md: bilirubin 1.0 mg/dL, albumin 3.5 g/dL → −2.161, grade 2
    record = PatientRecord(**BASE, bilirubin=1.0, albumin=3.5)
    assert record.albi_score == pytest.approx(-2.161, abs=5e-4)
    assert record.albi_grade == 2
    assert clinical.albi_grade(-2.61) == 1 and clinical.albi_grade(-2.60) == 1
    assert clinical.albi_grade(-1.39) == 2 and clinical.albi_grade(-1.38) == 3


@pytest.mark.parametrize(
    ("items", "points", "cp_class"),
    [
        ({"bilirubin": 1.0, "albumin": 4.0, "inr": 1.1, "ascites": "none", "encephalopathy": "none"}, 5, "A"),
        ({"bilirubin": 1.9, "albumin": 3.5, "inr": 1.2, "ascites": "none", "encephalopathy": "none"}, 6, "A"),
        ({"bilirubin": 2.5, "albumin": 3.0, "inr": 1.8, "ascites": "mild", "encephalopathy": "none"}, 9, "B"),
        ({"bilirubin": 2.0, "albumin": 2.8, "inr": 1.7, "ascites": "none", "encephalopathy": "none"}, 8, "B"),
        ({"bilirubin": 3.5, "albumin": 2.5, "inr": 2.5, "ascites": "moderate_severe",
          "encephalopathy": "grade_3_4"}, 15, "C"),
        ({"bilirubin": 3.0, "albumin": 2.7, "inr": 2.3, "ascites": "mild", "encephalopathy": "grade_1_2"}, 11, "C"),
    ],
)
def test_child_pugh_examples(items, points, cp_class):
    record = PatientRecord(**BASE, **items)
    assert record.child_pugh_score == points
    assert record.child_pugh_class.value == cp_class


def test_child_pugh_class_given_is_accepted_when_items_missing_and_checked_when_present():
    assert PatientRecord(**BASE, child_pugh_class="B", albumin=3.0).child_pugh_class.value == "B"
    found = messages(child_pugh_class="B", bilirubin=1.0, albumin=4.0, inr=1.0, ascites="none",
                     encephalopathy="none")
    assert found == ["child_pugh_class: given 'B' but the five items give 5 points, class A"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("albumin", 35, "albumin: 35 is outside the plausible range 1–6 g/dL; looks like g/L; expected g/dL"),
        ("bilirubin", 85,
         "bilirubin: 85 is outside the plausible range 0.1–30 mg/dL; looks like µmol/L; expected mg/dL"),
        ("platelets", 150000, "platelets: 150000 is outside the plausible range 5–1500 10^3/µL; looks like per µL"),
        ("haemoglobin", 120, "haemoglobin: 120 is outside the plausible range 3–25 g/dL; looks like g/L"),
        ("largest_lesion_cm", 85, "largest_lesion_cm: 85 is outside the plausible range 0.1–40 cm; looks like mm"),
        ("age", 130, "age: 130 is outside the plausible range 12–110 years"),
        ("afp", -1, "afp: -1 is outside the plausible range 0–1e+06 ng/mL"),
        ("nlr", 250, "nlr: 250 is outside the plausible range 0.1–100 ratio"),
        ("inr", 0.2, "inr: 0.2 is outside the plausible range 0.8–10 ratio"),
        ("tmb", 900, "tmb: 900 is outside the plausible range 0–500 mut/Mb"),
        ("pdl1_tps", 150, "pdl1_tps: 150 is outside the plausible range 0–100 %"),
    ],
)
def test_out_of_range_values_are_rejected_naming_field_value_range_and_unit_mix_up(field, value, expected):
    found = messages(**{field: value})
    assert len(found) == 1
    assert found[0].startswith(expected)


def test_plausible_but_unusual_age_is_accepted_with_a_warning():
    record = PatientRecord(age=15, sex="female")
    assert record.warnings() == ["age: 15 years is below 18, unusual for this population"]


def test_enumerations_name_the_value_and_expected_choices():
    assert messages(aetiology="hepatitis X") == [
        "aetiology: 'hepatitis X' is not one of 'HBV', 'HCV', 'alcohol', 'MASLD', 'other', 'unknown'"
    ]
    assert PatientRecord(**BASE, aetiology="NASH").aetiology.value == "MASLD"
    assert PatientRecord(age=50, sex="F").sex.value == "female"
    assert messages(ecog=5) == ["ecog: 5 — Input should be less than or equal to 4"]
    # a near-spelling of a known type is a typo, refused naming it; another type is kept and scored as unseen
    assert messages(cancer_type="Hepatobilary")[0].startswith(
        "cancer_type: 'Hepatobilary' is not a known cancer type (did you mean 'Hepatobiliary'?)")
    assert messages(cancer_type=" ")[0].startswith("cancer_type: ' ' is not a known cancer type")
    unseen = PatientRecord(**BASE, cancer_type="Liver")
    assert unseen.cancer_type == "Liver" and unseen.warnings()[0].startswith("cancer_type: 'Liver' is not one of")


def test_unknown_field_and_non_numeric_values_are_named():
    assert messages(albumn=3.5) == ["albumn: unknown field; expected one of the patient-record fields"]
    assert messages(albumin="low") == ["albumin: 'low' is text; expected a number in g/dL"]


def test_unknown_gene_is_rejected_with_the_nearest_symbol():
    found = messages(alterations=[{"gene": "CTNB1", "kind": "missense", "protein_change": "p.S45P"}])
    assert len(found) == 1
    assert found[0].startswith("gene: 'CTNB1' is not an HGNC gene symbol; did you mean 'CTNNB1'")
    assert "alterations.0.gene" in [e.field for e in field_errors(_error(alterations="CTNB1 p.S45P"))]


def _error(**fields) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        PatientRecord(**{**BASE, **fields})
    return caught.value


def test_gene_symbols_are_normalised():
    assert Alteration(gene="ctnnb1", kind="missense", protein_change="S45P").gene == "CTNNB1"
    assert Alteration(gene="C11orf30", kind="amplification").gene == "EMSY"  # previous HGNC symbol


def test_alteration_consistency_rules():
    assert "applies only to TERT" in messages(alterations=[{"gene": "TP53", "kind": "tert_promoter"}])[0]
    assert "copy-number amplification" in messages(
        alterations=[{"gene": "FGF19", "kind": "amplification", "protein_change": "p.S45P"}])[0]
    assert "not an HGVS short protein change" in messages(
        alterations=[{"gene": "TP53", "kind": "missense", "protein_change": "R249 to S"}])[0]


def test_compact_alteration_text_and_kind_inference():
    record = PatientRecord(**BASE, alterations="CTNNB1 p.S45P; AXIN1 p.R146*; TP53 p.K132fs; TERT promoter; FGF19 amp")
    kinds = [alt.kind for alt in record.alterations]
    assert kinds == [AlterationKind.missense, AlterationKind.nonsense, AlterationKind.frameshift,
                     AlterationKind.tert_promoter, AlterationKind.amplification]
    assert infer_kind("p.S45del") is AlterationKind.inframe_indel
    assert infer_kind("p.X123_splice") is AlterationKind.splice
    assert PatientRecord(**BASE, alterations=[]).is_genotyped


def test_nlr_is_computed_from_counts_and_checked():
    assert PatientRecord(**BASE, neutrophils=6.0, lymphocytes=1.5).nlr == 4.0
    assert messages(nlr=2.0, neutrophils=6.0, lymphocytes=1.5) == [
        "nlr: 2 disagrees with neutrophils / lymphocytes = 4.00; expected them to agree within 5 %"
    ]
    assert "computed from neutrophils / lymphocytes" in messages(neutrophils=50, lymphocytes=0.2)[0]


def test_line_of_therapy_implies_prior_systemic_therapy():
    assert PatientRecord(**BASE, line_of_therapy=2).prior_systemic_therapy is True
    assert messages(line_of_therapy=2, prior_systemic_therapy=False)[0].startswith(
        "prior_systemic_therapy: false contradicts line_of_therapy 2"
    )


def test_every_problem_in_a_record_is_reported_at_once():
    found = messages(albumin=35, platelets=150000, sex="x")
    assert len(found) == 3


@pytest.mark.parametrize("field", sorted(schema._NUMERIC_FIELDS))
@pytest.mark.parametrize("value", [True, False])
def test_a_yes_no_value_in_a_numeric_field_is_named_as_such(field, value):
    record = {"age": 60, "sex": "male", field: value}
    with pytest.raises(ValidationError, match=rf"{field}: {str(value).lower()} is a yes/no value; expected a number"):
        PatientRecord(**record)


@pytest.mark.parametrize("field", sorted(schema.field_ranges()))
def test_every_ranged_field_refuses_a_value_above_its_range(field):
    above = int(schema.field_ranges()[field].max) + 1  # an integer: also valid input for the integer fields
    shown = re.escape(f"{above:g}")
    with pytest.raises(ValidationError, match=rf"{field}: {shown} is outside the plausible range"):
        PatientRecord(**{"age": 60, "sex": "male", field: above})
