"""The canonical cohort table: outcomes, Parquet round trip, row-level validation."""

import pandas as pd
import pytest
from pydantic import ValidationError

from response_model.dataset import (
    COHORT_COLUMNS,
    TreatmentOutcome,
    cohort_frame,
    derive_primary_resistance,
    parse_cohort,
    read_cohort,
    write_cohort,
)
from response_model.features import build_feature_matrix
from response_model.schema import PatientRecord, field_errors


@pytest.mark.parametrize(
    ("bor", "pfs", "event", "expected"),
    [
        ("PD", 1.8, 1, 1),     # progression as best response
        ("SD", 4.0, 1, 1),     # progression within 6 months
        ("PR", 5.9, 1, 1),
        ("SD", 8.0, 1, 0),     # progression after 6 months
        ("PR", 6.0, 0, 0),     # censored at 6 months, progression-free
        ("SD", 3.0, 0, None),  # censored before 6 months: not evaluable
        (None, None, None, None),
        ("PD", None, None, 1),
    ],
)
def test_primary_resistance_definition(bor, pfs, event, expected):
    assert derive_primary_resistance(bor, pfs, event) == expected


def test_outcome_consistency_is_checked():
    outcome = TreatmentOutcome(regimen="lenvatinib", best_overall_response="PR", pfs_months=9, pfs_event=1,
                               os_months=15, os_event=0)
    assert outcome.objective_response == 1 and outcome.primary_resistance == 0
    for bad, text in [
        ({"best_overall_response": "PD", "objective_response": 1}, "objective_response: 1 contradicts"),
        ({"regimen": "aspirin"}, "regimen: 'aspirin' is not in the catalogue"),
        ({"pfs_months": 12, "pfs_event": 1, "os_months": 10, "os_event": 1}, "pfs_months: 12 exceeds os_months 10"),
        ({"pfs_months": 3.0}, "pfs_months/pfs_event: give both or neither"),
    ]:
        with pytest.raises(ValidationError) as caught:
            TreatmentOutcome(**bad)
        assert text in str(field_errors(caught.value)[0])


def _cohort() -> pd.DataFrame:
    records = [
        PatientRecord(patient_id="A", age=61, sex="male", aetiology="HBV", albumin=3.9, bilirubin=0.8,
                      alterations="CTNNB1 p.S45P; TERT promoter", tmb=3.2, pdl1_tps=5.0, ecog=1,
                      macrovascular_invasion=True),
        PatientRecord(patient_id="B", age=72, sex="female", child_pugh_class="B"),
        PatientRecord(patient_id="C", age=55, sex="male", alterations=[]),
    ]
    outcomes = [
        TreatmentOutcome(regimen="atezolizumab_bevacizumab", best_overall_response="PR", pfs_months=8.1,
                         pfs_event=0, os_months=8.1, os_event=0),
        TreatmentOutcome(regimen="sorafenib", best_overall_response="PD", pfs_months=1.9, pfs_event=1,
                         os_months=5.0, os_event=1),
        TreatmentOutcome(),
    ]
    return cohort_frame(records, outcomes)


def test_parquet_round_trip_keeps_records_and_features(tmp_path):
    frame = _cohort()
    assert tuple(frame.columns) == COHORT_COLUMNS
    path = write_cohort(frame, tmp_path / "cohort.parquet")
    again = read_cohort(path)
    pd.testing.assert_frame_equal(again, frame)
    first, second = parse_cohort(frame), parse_cohort(again)
    assert second.ok and second.records == first.records
    pd.testing.assert_frame_equal(
        build_feature_matrix(first.records, [o.regimen for o in first.outcomes]),
        build_feature_matrix(second.records, [o.regimen for o in second.outcomes]),
    )
    write_cohort(frame, tmp_path / "again.parquet")
    assert (tmp_path / "again.parquet").read_bytes() == path.read_bytes()


def test_every_bad_row_is_reported_and_good_rows_kept():
    frame = _cohort()
    frame.loc[0, "albumin"] = 39.0
    frame.loc[2, "alterations"] = '[{"gene": "CTNB1", "kind": "missense", "protein_change": "p.S45P"}]'
    frame.loc[2, "regimen"] = "aspirin"
    parsed = parse_cohort(frame, line_numbers=[2, 3, 4])
    assert parsed.n_read == 3 and len(parsed.records) == 1
    assert [row.line for row in parsed.rejected] == [2, 4]
    assert "looks like g/L; expected g/dL" in str(parsed.rejected[0])
    assert "did you mean 'CTNNB1'" in str(parsed.rejected[1])
    assert "regimen: 'aspirin'" in str(parsed.rejected[1])
