"""The one feature function."""

import math

import numpy as np
import pandas as pd
import pytest

from response_model.features import build_feature_matrix, feature_names
from response_model.schema import PatientRecord


def test_columns_are_fixed_and_float():
    records = [PatientRecord(age=60, sex="male"), PatientRecord(age=70, sex="female", albumin=3.2)]
    matrix = build_feature_matrix(records, "nivolumab")
    assert tuple(matrix.columns) == feature_names()
    assert all(dtype == np.float64 for dtype in matrix.dtypes)
    assert tuple(build_feature_matrix(records).columns) == feature_names(with_regimen=False)


def test_missing_genomics_is_nan_not_zero():
    unsequenced = PatientRecord(age=60, sex="male")
    wild_type = PatientRecord(age=60, sex="male", alterations=[])
    wnt = PatientRecord(age=60, sex="male", alterations="CTNNB1 p.S45P")
    matrix = build_feature_matrix([unsequenced, wild_type, wnt])
    assert math.isnan(matrix.loc[0, "wnt_activation"]) and matrix.loc[0, "genotyped"] == 0
    assert matrix.loc[1, "wnt_activation"] == 0 and matrix.loc[1, "genotyped"] == 1
    assert matrix.loc[2, "wnt_activation"] == 1


def test_derived_scores_and_encodings():
    record = PatientRecord(age=60, sex="male", bilirubin=1.0, albumin=3.5, inr=1.0, ascites="none",
                           encephalopathy="none", aetiology="HCV", afp=999, bclc_stage="C")
    row = build_feature_matrix([record]).iloc[0]
    assert row["albi_score"] == pytest.approx(-2.1612)
    assert row["child_pugh_score"] == 6 and row["child_pugh_class"] == 1
    assert row["aetiology_viral"] == 1 and row["aetiology_HCV"] == 1 and row["aetiology_HBV"] == 0
    assert row["afp_log10"] == pytest.approx(3.0)
    assert row["bclc_stage"] == 3


def test_regimen_features_encode_class_targets_and_identity():
    records = [PatientRecord(age=60, sex="male")] * 3
    matrix = build_feature_matrix(records, ["atezolizumab_bevacizumab", "anti_ctla4", None])
    first, drug_class, unknown = matrix.iloc[0], matrix.iloc[1], matrix.iloc[2]
    assert first["class_checkpoint_inhibitor"] == 1 and first["target_vegf"] == 1
    assert first["regimen_atezolizumab_bevacizumab"] == 1 and first["target_ctla4"] == 0
    assert drug_class["target_ctla4"] == 1 and drug_class.filter(like="regimen_").sum() == 0
    assert unknown.filter(like="target_").isna().all()
    with pytest.raises(KeyError, match="not in the catalogue"):
        build_feature_matrix(records[:1], "aspirin")


def test_factored_blocks_give_the_row_by_row_matrix():
    """The scoring path's factored blocks (each patient and regimen once, gathered by index) give the
    matrix built row by row, for patients repeated in any order and regimens of both classes."""
    from response_model.dataset import row_to_record
    from response_model.features import FeatureBlocks
    from response_model.regimens import candidate_regimens
    from response_model.sources.simulator import simulate_cohort

    records = [row_to_record(r) for r in simulate_cohort(40, 2).cohort.to_dict(orient="records")]
    names = [r.name for r in candidate_regimens()]
    rng = np.random.default_rng(0)
    patient_index = rng.integers(0, len(records), size=300)
    regimen_index = rng.integers(0, len(names), size=300)
    blocks = FeatureBlocks.of_pairs(records, patient_index, names, regimen_index)
    by_row = pd.concat([build_feature_matrix([records[i]], [names[j]]) for i, j in zip(patient_index, regimen_index)],
                       ignore_index=True)
    pd.testing.assert_frame_equal(blocks.frame(), by_row)
    pd.testing.assert_frame_equal(FeatureBlocks.of_pairs(records, np.arange(len(records))).frame(),
                                  build_feature_matrix(records))
