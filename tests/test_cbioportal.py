"""cBioPortal study folders: reading a hand-built study, write → read round trips, format errors."""

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from response_model.config import load_yaml
from response_model.dataset import COHORT_COLUMNS, TreatmentOutcome, cohort_frame, normalise_frame, parse_cohort
from response_model.features import build_feature_matrix
from response_model.schema import PatientRecord
from response_model.sources import SourceFormatError, load_source
from response_model.sources.cbioportal import in_study_order, read_study, unmapped_fields, write_study

SPEC = load_yaml("sources/cbioportal.yaml")

PATIENT_TEXT = """\
#Patient Identifier\tAge\tSex\tOverall Survival Status\tOverall Survival (Months)\tProgression Free Status\tProgression Free Survival (Months)\tRegimen\tBest Overall Response\tAlbumin\tAetiology\tBCLC Stage\tMacrovascular Invasion
#Identifier to uniquely specify a patient.\tAge at start\tSex\tOS status\tOS months\tPFS status\tPFS months\tRegimen\tRECIST BOR\tAlbumin g/dL\tAetiology\tBCLC\tMVI
#STRING\tNUMBER\tSTRING\tSTRING\tNUMBER\tSTRING\tNUMBER\tSTRING\tSTRING\tNUMBER\tSTRING\tSTRING\tBOOLEAN
#1\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1
PATIENT_ID\tAGE\tSEX\tOS_STATUS\tOS_MONTHS\tPFS_STATUS\tPFS_MONTHS\tREGIMEN\tBEST_OVERALL_RESPONSE\tALBUMIN\tAETIOLOGY\tBCLC_STAGE\tMACROVASCULAR_INVASION
P1\t63\tMale\t1:DECEASED\t11.2\t1:Progression\t3.1\tsorafenib\tPD\t3.4\tHBV\tC\tTRUE
P2\t58\tFemale\t0:LIVING\t20.5\t0:CENSORED\t9.0\tatezolizumab_bevacizumab\tPR\t[Not Available]\tHCV\tB\tFALSE
P3\t70\tMale\tNA\tNA\tNA\tNA\tlenvatinib\tSD\t4.0\tMASLD\tC\tNA
P4\t66\tFemale\t[Not Available]\t\t\t\t\t\t\tunknown\t\t
"""  # noqa: E501 - a cBioPortal file's header lines, as such files have them

SAMPLE_TEXT = """\
#Patient Identifier\tSample Identifier\tCancer Type\tTMB (nonsynonymous)\tMSI Type\tSample Type
#Patient\tSample\tCancer type\tTMB\tMSI\tPrimary or metastasis
#STRING\tSTRING\tSTRING\tNUMBER\tSTRING\tSTRING
#1\t1\t1\t1\t1\t1
PATIENT_ID\tSAMPLE_ID\tCANCER_TYPE\tTMB_NONSYNONYMOUS\tMSI_TYPE\tSAMPLE_TYPE
P1\tS1\tHepatobiliary Cancer\t4.2\tStable\tPrimary
P2\tS2\tHepatobiliary Cancer\t35.5\tInstable\tPrimary
P3\tS3a\tHepatobiliary Cancer\t1.1\tStable\tPrimary
P3\tS3b\tHepatobiliary Cancer\t2.0\tStable\tMetastasis
P4\tS4\tHepatobiliary Cancer\tNA\tNA\tPrimary
"""

MAF_TEXT = """\
#version 2.4
Hugo_Symbol\tEntrez_Gene_Id\tVariant_Classification\tHGVSp_Short\tTumor_Sample_Barcode
CTNNB1\t1499\tMissense_Mutation\tp.S45P\tS1
AXIN1\t8312\tNonsense_Mutation\tp.R146*\tS1
TERT\t7015\t5'Flank\t\tS2
TP53\t7157\tSilent\tp.L344=\tS2
ALB\t213\tIntron\t\tS1
TP53\t7157\tMissense_Mutation\tp.R249S\tS3b
"""

CNA_TEXT = """\
Hugo_Symbol\tEntrez_Gene_Id\tS1\tS2\tS3a\tS3b
FGF19\t9965\t2\t0\t1\tNA
CDKN2A\t1029\t-1\t-2\t0\t-2
"""


def _case_list(role: str, ids: list[str]) -> str:
    return (f"cancer_study_identifier: tiny\nstable_id: tiny_{role}\ncase_list_name: {role}\n"
            f"case_list_description: {role}\ncase_list_ids: " + "\t".join(ids) + "\n")


def _study(folder: Path, replace: dict[str, str] | None = None) -> Path:
    """Write the tiny study into ``folder``; ``replace`` overrides files' texts by name."""
    files = {
        "data_clinical_patient.txt": PATIENT_TEXT,
        "data_clinical_sample.txt": SAMPLE_TEXT,
        "data_mutations.txt": MAF_TEXT,
        "data_cna.txt": CNA_TEXT,
        "case_lists/cases_sequenced.txt": _case_list("sequenced", ["S1", "S2", "S3a", "S3b"]),
        "case_lists/cases_cna.txt": _case_list("cna", ["S1", "S2", "S3a", "S3b"]),
    }
    files.update(replace or {})
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _labels(record: PatientRecord) -> list[str] | None:
    return None if record.alterations is None else [alt.label() for alt in record.alterations]


# ---------------------------------------------------------------------------------------------
# Reading a hand-built study
# ---------------------------------------------------------------------------------------------


def test_tiny_study_is_read(tmp_path):
    parsed = read_study(SPEC, _study(tmp_path))
    assert parsed.ok and parsed.n_read == 4
    by_id = {record.patient_id: (record, outcome) for record, outcome in zip(parsed.records, parsed.outcomes)}
    assert list(by_id) == ["P1", "P2", "P3", "P4"]

    p1, o1 = by_id["P1"]
    assert _labels(p1) == ["CTNNB1 p.S45P", "AXIN1 p.R146*", "FGF19 amplification"]
    assert [alt.kind.value for alt in p1.alterations] == ["missense", "nonsense", "amplification"]
    assert (p1.age, p1.sex.value, p1.albumin, p1.aetiology.value, p1.bclc_stage.value) == (63, "male", 3.4, "HBV", "C")
    assert p1.macrovascular_invasion is True and p1.msi_status.value == "MSS" and p1.tmb == 4.2
    assert p1.cancer_type == "Hepatobiliary"
    assert (o1.regimen, o1.os_event, o1.os_months, o1.pfs_event, o1.pfs_months) == ("sorafenib", 1, 11.2, 1, 3.1)
    assert (o1.objective_response, o1.primary_resistance) == (0, 1)

    p2, o2 = by_id["P2"]
    assert _labels(p2) == ["TERT tert_promoter", "CDKN2A deep_deletion"]  # shallow −1 / gain 1 ignored
    assert p2.albumin is None and p2.macrovascular_invasion is False and p2.msi_status.value == "MSI-H"
    assert (o2.os_event, o2.pfs_event, o2.objective_response, o2.primary_resistance) == (0, 0, 1, 0)

    p3, o3 = by_id["P3"]
    assert p3.alterations == [] and p3.tmb == 1.1  # first sample S3a: sequenced, nothing found
    assert o3.os_months is None and o3.best_overall_response.value == "SD"

    p4, o4 = by_id["P4"]
    assert p4.alterations is None and not p4.is_genotyped  # not in the case lists: not sequenced
    assert p4.aetiology.value == "unknown" and o4.regimen is None and o4.os_event is None

    warnings = "\n".join(parsed.warnings)
    assert "skipped 2 silent or non-coding MAF rows (Intron ×1, Silent ×1)" in warnings
    assert "patient P3 has 2 samples; used the first listed, S3a, and ignored S3b" in warnings
    assert "ignored 1 attribute(s) not in the source mapping: SAMPLE_TYPE" in warnings

    features = build_feature_matrix(parsed.records, [o.regimen for o in parsed.outcomes])
    assert features["wnt_activation"].tolist()[:3] == [1.0, 0.0, 0.0]
    assert features["genotyped"].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_without_case_lists_every_sample_counts_as_sequenced(tmp_path):
    folder = _study(tmp_path)
    shutil.rmtree(folder / "case_lists")
    parsed = read_study(SPEC, folder)
    assert [_labels(r) for r in parsed.records][2:] == [[], []]  # P4 now sequenced, nothing found


def test_load_source_dispatches_to_the_study_reader(tmp_path):
    loaded = load_source("sources/cbioportal.yaml", _study(tmp_path))
    assert loaded.parsed.ok and len(loaded.parsed.records) == 4


def test_every_canonical_field_has_an_attribute():
    assert unmapped_fields() == []


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def _hand_cohort() -> pd.DataFrame:
    records = [
        PatientRecord(
            patient_id="HCC-001", age=61.7, sex="male", ecog=1, aetiology="HBV", albumin=0.1 + 3.2,
            bilirubin=1 / 3, inr=1.12, ascites="mild", encephalopathy="none", bclc_stage="C", afp=123456.789,
            macrovascular_invasion=True, extrahepatic_spread=False, lesion_count=3, largest_lesion_cm=7.25,
            neutrophils=4.1, lymphocytes=1.3, platelets=151.0, haemoglobin=12.9, bmi=24.123456789,
            diabetes=False, alcohol_use="former", smoking="never", line_of_therapy=2, pdl1_tps=1e-05,
            teff_signature=-0.75, treg_signature=0.3333333333333333, myeloid_signature=-1.5, tmb=2.630434782608696,
            msi_status="MSS", sequencing_panel="MSK-IMPACT468", fcna=0.2, hla_loh=True, hed=6.9,
            alterations=[
                {"gene": "CTNNB1", "kind": "missense", "protein_change": "p.S45P"},
                {"gene": "AXIN1", "kind": "nonsense", "protein_change": "p.R146*"},
                {"gene": "ARID1A", "kind": "frameshift", "protein_change": "p.Q372fs"},
                {"gene": "TSC2", "kind": "splice", "protein_change": "p.X1031_splice"},
                {"gene": "CTNNB1", "kind": "inframe_indel", "protein_change": "p.S45del"},
                {"gene": "PIK3CA", "kind": "inframe_indel", "protein_change": "p.E545_A546insK"},
                {"gene": "TERT", "kind": "tert_promoter"},
                {"gene": "FGFR2", "kind": "fusion"},
                {"gene": "CDKN2A", "kind": "deep_deletion"},
                {"gene": "FGF19", "kind": "amplification"},
            ],
        ),
        PatientRecord(patient_id="HCC-002", age=72, sex="female", child_pugh_class="B", stage_iv=True,
                      prior_systemic_therapy=False, nlr=3.0, alterations=[]),
        PatientRecord(patient_id="HCC-003", age=55.5, sex="male", cancer_type="Head & Neck", msi_status="MSI-H",
                      pdl1_cps=12.0, cd8_density=250.5, alterations=None),
        PatientRecord(patient_id="HCC.004", age=48, sex="female", cancer_type="Mesothelioma", hla_loh=False,
                      alterations=[{"gene": "TP53", "kind": "missense", "protein_change": "p.R249S"},
                                   {"gene": "MYC", "kind": "amplification"}]),
        PatientRecord(patient_id="HCC_005", age=80.25, sex="male", cancer_type="Esophageal", aetiology="MASLD",
                      albumin=4.4, bilirubin=0.6, inr=1.0, ascites="none", encephalopathy="none"),
    ]
    outcomes = [
        TreatmentOutcome(regimen="atezolizumab_bevacizumab", best_overall_response="PR", pfs_months=8.1,
                         pfs_event=0, os_months=8.1, os_event=0),
        TreatmentOutcome(regimen="sorafenib", best_overall_response="PD", pfs_months=1.9, pfs_event=1,
                         os_months=5.0, os_event=1),
        TreatmentOutcome(regimen="lenvatinib", pfs_months=2.2, pfs_event=0, os_months=2.2, os_event=0),
        TreatmentOutcome(objective_response=1, primary_resistance=0),
        TreatmentOutcome(),
    ]
    return cohort_frame(records, outcomes)


def _assert_round_trip(cohort: pd.DataFrame, folder: Path) -> None:
    expected = in_study_order(normalise_frame(cohort))
    reference = parse_cohort(expected)
    assert reference.ok
    write_study(cohort, folder)
    parsed = read_study(SPEC, folder)
    assert parsed.ok, parsed.rejected[:3]
    assert parsed.n_read == len(cohort)
    pd.testing.assert_frame_equal(parsed.frame(), expected, check_exact=True)
    pd.testing.assert_frame_equal(
        build_feature_matrix(parsed.records, [o.regimen for o in parsed.outcomes]),
        build_feature_matrix(parse_cohort(cohort).records, [o.regimen for o in parse_cohort(cohort).outcomes]),
        check_exact=True,
    )


def test_hand_written_cohort_round_trips_exactly(tmp_path):
    cohort = _hand_cohort()
    pd.testing.assert_frame_equal(in_study_order(cohort), cohort)  # already in study order: tables identical
    _assert_round_trip(cohort, tmp_path / "study")
    folder = tmp_path / "study"
    assert (folder / "data_mutations.txt").read_text().count("\n") == 2 + 9  # #version, header, 9 mutations
    sequenced = (folder / "case_lists" / "cases_sequenced.txt").read_text()
    assert "case_list_ids: HCC-001-T\tHCC-002-T\tHCC.004-T\n" in sequenced
    assert "datatype: DISCRETE" in (folder / "meta_cna.txt").read_text()
    assert "genetic_alteration_type: MUTATION_EXTENDED" in (folder / "meta_mutations.txt").read_text()
    patient_lines = (folder / "data_clinical_patient.txt").read_text().splitlines()
    assert [line.startswith("#") for line in patient_lines[:5]] == [True] * 4 + [False]


def test_write_is_deterministic(tmp_path):
    cohort = _hand_cohort()
    first, second = write_study(cohort, tmp_path / "a"), write_study(cohort, tmp_path / "b")
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    assert len(names) == 12
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_alterations_come_back_in_study_order(tmp_path):
    cohort = _hand_cohort()
    shuffled = cohort.copy()
    items = json.loads(cohort.loc[0, "alterations"])
    shuffled.loc[0, "alterations"] = json.dumps(items[::-1], separators=(",", ":"))
    write_study(shuffled, tmp_path)
    parsed = read_study(SPEC, tmp_path)
    pd.testing.assert_frame_equal(parsed.frame(), in_study_order(shuffled))
    assert parsed.frame().loc[0, "alterations"] == json.dumps(
        [a for a in items[::-1] if a["kind"] not in ("amplification", "deep_deletion")]
        + [a for a in items if a["kind"] in ("amplification", "deep_deletion")], separators=(",", ":"))


def test_simulated_cohort_round_trips_exactly(tmp_path):
    simulator = pytest.importorskip("response_model.sources.simulator")
    cohort = simulator.simulate_cohort(300, seed=7).cohort
    assert tuple(cohort.columns) == COHORT_COLUMNS
    _assert_round_trip(cohort, tmp_path / "sim")


def test_write_refuses_what_cbioportal_cannot_hold(tmp_path):
    cohort = _hand_cohort()
    cohort.loc[1, "patient_id"] = "HCC 002"
    with pytest.raises(ValueError, match="patient_id 'HCC 002' is not a valid cBioPortal id"):
        write_study(cohort, tmp_path)


# ---------------------------------------------------------------------------------------------
# Errors: structural problems raise, value problems reject the patient
# ---------------------------------------------------------------------------------------------


def test_comma_delimited_clinical_file_is_refused(tmp_path):
    folder = _study(tmp_path, {"data_clinical_patient.txt": PATIENT_TEXT.replace("\t", ",")})
    with pytest.raises(SourceFormatError) as caught:
        read_study(SPEC, folder)
    assert caught.value.file == "data_clinical_patient.txt" and caught.value.line == 5
    assert "not tab-separated" in str(caught.value) and "line 5" in str(caught.value)


def test_missing_patient_id_column_is_refused(tmp_path):
    folder = _study(tmp_path, {"data_clinical_patient.txt": PATIENT_TEXT.replace("PATIENT_ID\tAGE", "PATIENT\tAGE")})
    with pytest.raises(SourceFormatError) as caught:
        read_study(SPEC, folder)
    error = caught.value
    assert (error.file, error.line, error.column) == ("data_clinical_patient.txt", 5, "PATIENT_ID")
    assert "required column 'PATIENT_ID' is missing" in str(error)


def test_missing_required_file_is_refused(tmp_path):
    folder = _study(tmp_path)
    (folder / "data_clinical_sample.txt").unlink()
    with pytest.raises(SourceFormatError, match="data_clinical_sample.txt: required file is missing"):
        read_study(SPEC, folder)


def test_non_numeric_age_names_file_line_and_column(tmp_path):
    folder = _study(tmp_path, {"data_clinical_patient.txt": PATIENT_TEXT.replace("P2\t58\t", "P2\tfifty-eight\t")})
    with pytest.raises(SourceFormatError) as caught:
        read_study(SPEC, folder)
    error = caught.value
    assert (error.file, error.line, error.column) == ("data_clinical_patient.txt", 7, "AGE")
    assert "'fifty-eight' is not a number" in str(error)


def test_bad_copy_number_value_names_file_line_and_sample(tmp_path):
    folder = _study(tmp_path, {"data_cna.txt": CNA_TEXT.replace("\t-2\t0\t-2", "\tdel\t0\t-2")})
    with pytest.raises(SourceFormatError) as caught:
        read_study(SPEC, folder)
    assert (caught.value.file, caught.value.line, caught.value.column) == ("data_cna.txt", 3, "S2")


def test_unknown_gene_rejects_that_patient_only(tmp_path):
    folder = _study(tmp_path, {"data_mutations.txt": MAF_TEXT.replace("CTNNB1\t1499", "CTNB1\t1499")})
    parsed = read_study(SPEC, folder)
    assert [r.patient_id for r in parsed.records] == ["P2", "P3", "P4"]
    assert len(parsed.rejected) == 1
    rejected = parsed.rejected[0]
    assert rejected.line == 6  # P1's line in data_clinical_patient.txt
    assert "'CTNB1' is not an HGNC gene symbol; did you mean 'CTNNB1'" in str(rejected)
    assert "data_mutations.txt line 3" in str(rejected)


def test_implausible_value_rejects_the_row_with_its_line(tmp_path):
    folder = _study(tmp_path, {"data_clinical_patient.txt": PATIENT_TEXT.replace("\t4.0\tMASLD", "\t40\tMASLD")})
    parsed = read_study(SPEC, folder)
    assert [r.line for r in parsed.rejected] == [8]
    assert "looks like g/L" in str(parsed.rejected[0])


def test_pseudonymised_ids(tmp_path, monkeypatch):
    privacy = pytest.importorskip("response_model.privacy")
    folder = _study(tmp_path)
    spec = {**SPEC, "pseudonymise": True}
    monkeypatch.delenv("RESPONSE_MODEL_PSEUDONYM_KEY", raising=False)
    with pytest.raises(privacy.PseudonymKeyError, match="RESPONSE_MODEL_PSEUDONYM_KEY"):
        read_study(spec, folder)
    key = "0123456789abcdef-test-key"
    monkeypatch.setenv("RESPONSE_MODEL_PSEUDONYM_KEY", key)
    parsed = read_study(spec, folder)
    assert parsed.records[0].patient_id == privacy.pseudonymise("P1", key)
    assert parsed.records[0].patient_id == hmac.new(key.encode(), b"P1", hashlib.sha256).hexdigest()[:16]
    warnings = "\n".join(parsed.warnings)
    assert "P3" not in warnings and "S3" not in warnings  # warnings name pseudonyms only
    assert f"patient {privacy.pseudonymise('P3', key)} has 2 samples" in warnings
