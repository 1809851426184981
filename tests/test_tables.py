"""Table sources (CSV / XLSX / Parquet + YAML mapping): the real Chowell cohort, a synthetic hospital
table in three formats, bad rows, malformed files and pseudonymisation."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from response_model.config import load_yaml
from response_model.privacy import PSEUDONYM_KEY_ENV, PseudonymKeyError, pseudonymise
from response_model.sources import SourceFormatError, load_source
from response_model.sources.tables import SourceSpecError, read_table

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHOWELL = SHARED_DATA / "chowell2022_icb_train.csv"
DATA = Path(__file__).resolve().parent / "data"
HOSPITAL_CSV = DATA / "example_hospital.csv"
BAD_CSV = DATA / "example_hospital_bad.csv"
KEY = "test-key-not-a-secret-0123456789"

MRNS = [f"H100000{i}" for i in range(1, 7)]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    return KEY


def hospital_spec() -> dict:
    return copy.deepcopy(load_yaml(REPO / "configs" / "sources" / "example_hospital.yaml"))


# A small spec for the bad-row table (albumin and bilirubin already in the schema's units).
BAD_SPEC = {
    "format": "table",
    "id_column": "Patient",
    "pseudonymise": False,
    "columns": {
        "age": "Age",
        "sex": {"column": "Sex", "values": {"M": "male", "F": "female"}},
        "albumin": "Albumin (g/dL)",
        "bilirubin": "Bilirubin (mg/dL)",
        "ascites": "Ascites",
        "regimen": {"column": "Treatment", "values": {"Sorafenib": "sorafenib", "Lenvatinib": "lenvatinib"}},
        "alterations": "Mutations",
    },
    "constants": {"cancer_type": "Hepatobiliary"},
}


# ---------------------------------------------------------------------------------------------
# The real Chowell 2022 cohort
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CHOWELL.is_file(), reason=f"real Chowell 2022 cohort not present at {CHOWELL}")
def test_chowell_cohort_loads_every_row():
    loaded = load_source(REPO / "configs" / "sources" / "chowell2022.yaml", CHOWELL)
    parsed = loaded.parsed
    assert parsed.n_read == 964 and len(parsed.records) == 964
    assert parsed.rejected == []
    # only the three adolescents warn; no column is left unmapped
    assert len(parsed.warnings) == 3 and all("age:" in w and "below 18" in w for w in parsed.warnings)
    frame = parsed.frame()
    assert (frame["cancer_type"] == "Hepatobiliary").sum() == 36
    assert frame["cancer_type"].nunique() == 16
    assert frame["objective_response"].sum() == 282
    assert Counter(frame["regimen"]) == {"anti_pd1_pdl1": 758, "anti_ctla4_pd1_pdl1": 201, "anti_ctla4": 5}
    assert (frame["sex"] == "male").sum() == 540
    assert frame["stage_iv"].sum() == 901
    assert (frame["msi_status"] == "MSI-H").sum() == 23
    assert frame["pdl1_tps"].notna().sum() == 217
    assert frame["patient_id"].is_unique and frame["patient_id"].iloc[0] == "CHOWELL-1"
    assert frame["alterations"].isna().all()  # no gene list in this file: not "sequenced, nothing found"
    # primary resistance is derived from PFS (6-month window); a few are censored before it
    assert frame["primary_resistance"].notna().sum() > 950
    early = (frame["pfs_event"] == 1) & (frame["pfs_months"] < 6)
    assert (frame.loc[early, "primary_resistance"] == 1).all()
    first = frame.iloc[0]  # CSV line 2
    assert first["albumin"] == 3.8 and first["haemoglobin"] == 10.1 and first["prior_systemic_therapy"]


# ---------------------------------------------------------------------------------------------
# A synthetic hospital table (configs/sources/example_hospital.yaml)
# ---------------------------------------------------------------------------------------------


STAGE_B_WITH_ECOG_1 = ("bclc_stage: 'B' with ecog 1 is unusual (a cancer-related ECOG 1–2 stages BCLC C); check the "
                       "stage and the performance status")


def test_example_hospital_csv_maps_units_codes_and_alterations(key):
    parsed = load_source(REPO / "configs" / "sources" / "example_hospital.yaml", HOSPITAL_CSV).parsed
    # its second patient is BCLC B with ECOG 1: accepted, with consistency.yaml's warning
    assert parsed.n_read == 6 and parsed.ok and parsed.warnings == [f"line 3: {STAGE_B_WITH_ECOG_1}"]
    frame = parsed.frame()
    first = frame.iloc[0]
    assert first["albumin"] == pytest.approx(3.8)  # 38 g/L
    assert first["bilirubin"] == pytest.approx(12 / 17.1, rel=1e-5)  # 12 µmol/L
    assert first["sex"] == "male" and first["regimen"] == "atezolizumab_bevacizumab"
    assert first["macrovascular_invasion"] and not first["extrahepatic_spread"]
    assert first["nlr"] == pytest.approx(3.0)  # from the counts
    assert first["objective_response"] == 1 and first["primary_resistance"] == 0
    labels = [[f"{a['gene']} {a['protein_change'] or a['kind']}" for a in json.loads(text)] if text else text
              for text in frame["alterations"]]
    assert labels[0] == ["TP53 p.R249S", "TERT tert_promoter"]
    assert labels[1] == []  # "none": sequenced, nothing found
    assert labels[2] == ["TP53 p.V157F", "CTNNB1 p.S45P"]  # alterations column + CTNNB1 column
    assert labels[3] is None  # not sequenced
    assert labels[5] == []  # "no mutation" + CTNNB1 "neg"
    assert frame["aetiology"].tolist() == ["HBV", "HCV", "MASLD", "alcohol", "HBV", "unknown"]
    assert frame["ascites"].iloc[4] == "moderate_severe" and frame["encephalopathy"].iloc[2] == "grade_1_2"
    assert pd.isna(frame["afp"].iloc[5]) and frame["best_overall_response"].iloc[5] is None  # NA, NE
    assert pd.isna(frame["primary_resistance"].iloc[5])  # censored at 2.1 months
    assert frame["prior_systemic_therapy"].iloc[2]  # implied by line 2


def _variants(tmp_path: Path) -> dict[str, Path]:
    """Write the synthetic CSV as XLSX (title row + named sheet) and Parquet."""
    table = pd.read_csv(HOSPITAL_CSV)
    xlsx = tmp_path / "example_hospital.xlsx"
    with pd.ExcelWriter(xlsx, engine="openpyxl") as writer:
        pd.DataFrame([["Synthetic HCC cohort export"]]).to_excel(writer, sheet_name="Notes", index=False, header=False)
        table.to_excel(writer, sheet_name="Patients", index=False, startrow=1)  # header on sheet row 2
    parquet = tmp_path / "example_hospital.parquet"
    table.to_parquet(parquet, index=False)
    return {"xlsx": xlsx, "parquet": parquet}


def test_csv_xlsx_and_parquet_give_identical_canonical_tables(tmp_path, key):
    spec = hospital_spec()
    reference = read_table(spec, HOSPITAL_CSV)
    variants = _variants(tmp_path)
    xlsx_spec = {**spec, "sheet": "Patients", "header_row": 2}
    for kind, path in variants.items():
        parsed = read_table(xlsx_spec if kind == "xlsx" else spec, path)
        assert parsed.ok and [w.split(": ", 1)[1] for w in parsed.warnings] == [STAGE_B_WITH_ECOG_1], kind
        pd.testing.assert_frame_equal(parsed.frame(), reference.frame(), check_exact=False, rtol=1e-9)
    # the sheet can also be chosen by index
    by_index = read_table({**spec, "sheet": 1, "header_row": 2}, variants["xlsx"])
    pd.testing.assert_frame_equal(by_index.frame(), reference.frame())


# ---------------------------------------------------------------------------------------------
# Bad rows: every one reported with its line; good rows still load
# ---------------------------------------------------------------------------------------------


def test_every_bad_row_is_reported_with_its_line_and_good_rows_parse():
    parsed = read_table(BAD_SPEC, BAD_CSV)
    assert parsed.n_read == 8
    assert [r.patient_id for r in parsed.records] == ["P01", "P08"]
    by_line = {error.line: str(error) for error in parsed.rejected}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert "albumin: 35" in by_line[3] and "looks like g/L; expected g/dL" in by_line[3]
    assert "[column 'Albumin (g/dL)']" in by_line[3]
    assert "NOTAGENE1" in by_line[4] and "not an HGNC gene symbol" in by_line[4]
    assert "sex: 'X' in column 'Sex'" in by_line[5] and "'M' (male), 'F' (female)" in by_line[5]
    # a non-numeric cell names field, column and value, and the row's other problems are listed too
    assert "albumin: 'abc' in column 'Albumin (g/dL)' is not a number" in by_line[6]
    assert "age: 130 is outside the plausible range" in by_line[6]
    assert "ascites: 'lots'" in by_line[7] and "'moderate_severe'" in by_line[7]
    assert "regimen: 'Atezo' in column 'Treatment' is not one of the coded values" in by_line[8]
    assert all(str(error).startswith(f"line {error.line}: ") for error in parsed.rejected)


def test_line_numbers_follow_the_source_format(tmp_path):
    # CSV: quoted line breaks and blank lines count; XLSX: sheet rows; Parquet: row index + 1
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(
        "Patient,Age,Sex,Albumin (g/dL),Bilirubin (mg/dL),Ascites,Treatment,Mutations,Comments\n"  # line 1
        'P01,64,M,3.5,1.0,none,Sorafenib,CTNNB1 p.S45P,"a comment on\n'  # line 2
        'two lines"\n'  # line 3
        "\n"  # line 4
        "P02,70,F,35,1.1,none,Sorafenib,,\n"  # line 5
    )
    parsed = read_table({**BAD_SPEC, "ignore": ["Comments"]}, csv_path)
    assert [e.line for e in parsed.rejected] == [5] and len(parsed.records) == 1

    frame = pd.read_csv(BAD_CSV, dtype=str, keep_default_na=False)
    xlsx = tmp_path / "bad.xlsx"
    with pd.ExcelWriter(xlsx, engine="openpyxl") as writer:
        frame.to_excel(writer, index=False, startrow=2)  # header on sheet row 3
    parsed = read_table({**BAD_SPEC, "header_row": 3}, xlsx)
    assert [e.line for e in parsed.rejected] == [5, 6, 7, 8, 9, 10]
    parquet = tmp_path / "bad.parquet"
    frame.to_parquet(parquet, index=False)
    parsed = read_table(BAD_SPEC, parquet)
    assert [e.line for e in parsed.rejected] == [2, 3, 4, 5, 6, 7]


def test_ragged_csv_row_is_rejected_with_its_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("Patient,Age,Sex\nP1,60,M\nP2,61,F,extra\nP3,62\n")
    spec = {"format": "table", "id_column": "Patient", "pseudonymise": False,
            "columns": {"age": "Age", "sex": "Sex"}}
    parsed = read_table(spec, path)
    assert len(parsed.records) == 1
    assert [(e.line, "field(s) but the header has 3" in str(e)) for e in parsed.rejected] == [(3, True), (4, True)]


def test_semicolon_and_decimal_comma_with_coded_missing_tokens(tmp_path):
    path = tmp_path / "europe.csv"
    path.write_bytes(b"Age;Sex;Alb;Asc\r\n60;M;3,5;-\r\n61;F;4,1;+\r\n")
    spec = {"format": "table", "delimiter": ";", "decimal": ",",
            "columns": {"age": "Age", "sex": "Sex", "albumin": "Alb",
                        "ascites": {"column": "Asc", "values": {"-": "none", "+": "mild"}}}}
    parsed = read_table(spec, path)
    assert [(r.albumin, r.ascites.value) for r in parsed.records] == [(3.5, "none"), (4.1, "mild")]


def test_unmapped_columns_are_reported_not_silently_dropped(tmp_path):
    spec = {**BAD_SPEC, "columns": {k: v for k, v in BAD_SPEC["columns"].items() if k != "ascites"}}
    parsed = read_table(spec, BAD_CSV)
    assert any("column 'Ascites' is neither mapped nor listed under ignore" in w for w in parsed.warnings)
    parsed = read_table({**spec, "ignore": ["Ascites"]}, BAD_CSV)
    assert not any("neither mapped" in w for w in parsed.warnings)


# ---------------------------------------------------------------------------------------------
# Malformed files: SourceFormatError naming file, line and column
# ---------------------------------------------------------------------------------------------


def test_semicolon_file_read_as_comma_names_the_delimiter(tmp_path):
    path = tmp_path / "semicolon.csv"
    path.write_text(BAD_CSV.read_text().replace(",", ";"))
    with pytest.raises(SourceFormatError) as caught:
        read_table(BAD_SPEC, path)
    error = caught.value
    assert error.file == str(path) and error.line == 1 and error.column == "Patient"
    assert "expected column(s) 'Patient', 'Age'" in str(error) and "looks ';'-delimited" in str(error)
    assert str(path) in str(error)
    # with the right delimiter it reads
    assert len(read_table({**BAD_SPEC, "delimiter": ";"}, path).records) == 2


def test_missing_mapped_column_names_file_line_and_column(tmp_path):
    path = tmp_path / "no_albumin.csv"
    pd.read_csv(BAD_CSV, dtype=str).rename(columns={"Albumin (g/dL)": "Albumine"}).to_csv(path, index=False)
    with pytest.raises(SourceFormatError) as caught:
        read_table(BAD_SPEC, path)
    text = str(caught.value)
    assert text.startswith(f"{path}, line 1, column 'Albumin (g/dL)': mapped column(s) 'Albumin (g/dL)' not found")
    assert "did you mean 'Albumine'?" in text


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("empty.csv", b"", 1, "the file is empty"),
        ("blank.csv", b"\n\n  \n", 1, "the file is empty"),
        ("header_only.csv", b"Patient,Age,Sex\n", 2, "no data rows below the header"),
        ("latin1.csv", "Patient,Age,Sex\nP1,60,M\nPé,61,F\n".encode("latin-1"), 3, "not valid utf-8-sig text"),
        ("unclosed_quote.csv", b'Age,Sex\n60,"M\n61,F\n', 2, "malformed CSV"),
        ("broken.xlsx", b"PK\x03\x04 this is not really a workbook", None, "cannot read as an XLSX workbook"),
        ("text.xlsx", b"Patient,Age,Sex\nP1,60,M\n", None, "cannot read as an XLSX workbook"),
        ("broken.parquet", b"PAR1 nope", None, "cannot read as a Parquet file"),
        ("table.ods", b"whatever", None, "unknown file extension '.ods'"),
    ],
)
def test_malformed_files_raise_source_format_error(tmp_path, name, content, line, reason):
    path = tmp_path / name
    path.write_bytes(content)
    spec = {"format": "table", "columns": {"age": "Age", "sex": "Sex"}, "ignore": ["Patient"]}
    with pytest.raises(SourceFormatError) as caught:
        read_table(spec, path)
    assert caught.value.file == str(path) and caught.value.line == line
    assert reason in str(caught.value) and str(path) in str(caught.value)


def test_xlsx_sheet_errors_name_the_sheets(tmp_path):
    path = tmp_path / "one_sheet.xlsx"
    pd.DataFrame({"Age": [60], "Sex": ["M"]}).to_excel(path, sheet_name="Data", index=False)
    spec = {"format": "table", "columns": {"age": "Age", "sex": "Sex"}}
    with pytest.raises(SourceFormatError, match=r"sheet 'Patients' not found; the workbook has sheets 'Data'"):
        read_table({**spec, "sheet": "Patients"}, path)
    with pytest.raises(SourceFormatError, match=r"sheet index 3 does not exist"):
        read_table({**spec, "sheet": 3}, path)
    assert len(read_table(spec, path).records) == 1


def test_bad_specs_are_refused_with_the_key_at_fault():
    misspelt = r"columns.albumen: not a canonical cohort field \(did you mean 'albumin'\?\)"
    with pytest.raises(SourceSpecError, match=misspelt):
        read_table({**BAD_SPEC, "columns": {**BAD_SPEC["columns"], "albumen": "x"}}, BAD_CSV)
    with pytest.raises(SourceSpecError, match=r"say `pseudonymise: true`"):
        read_table({k: v for k, v in BAD_SPEC.items() if k != "pseudonymise"}, BAD_CSV)
    with pytest.raises(SourceSpecError, match=r"unknown key\(s\) colums"):
        read_table({**BAD_SPEC, "colums": {}}, BAD_CSV)
    with pytest.raises(SourceSpecError, match=r"sex must be mapped"):
        read_table({"format": "table", "columns": {"age": "Age"}}, BAD_CSV)
    with pytest.raises(SourceSpecError, match=r"constants: cancer_type: 'Liver' is not a known cancer type"):
        read_table({**BAD_SPEC, "constants": {"cancer_type": "Liver"}}, BAD_CSV)
    with pytest.raises(SourceSpecError, match=r"scale: a numeric factor on a numeric field only"):
        read_table({**BAD_SPEC, "columns": {**BAD_SPEC["columns"], "sex": {"column": "Sex", "scale": 2}}}, BAD_CSV)


# ---------------------------------------------------------------------------------------------
# Pseudonymisation
# ---------------------------------------------------------------------------------------------


def test_pseudonymise_is_keyed():
    key_a, key_b = b"a" * 32, b"b" * 32
    assert pseudonymise("H1000001", key_a) == pseudonymise(" H1000001 ", key_a)
    assert pseudonymise("H1000001", key_a) != pseudonymise("H1000001", key_b)
    assert pseudonymise("H1000001", key_a) != pseudonymise("H1000002", key_a)
    assert len(pseudonymise("H1000001", key_a)) == 16
    with pytest.raises(PseudonymKeyError, match="at least 16"):
        pseudonymise("H1000001", b"short")


def test_pseudonymised_table_never_contains_the_raw_identifier(tmp_path, monkeypatch, key):
    spec = hospital_spec()
    parsed = read_table(spec, HOSPITAL_CSV)
    ids = parsed.frame()["patient_id"].tolist()
    assert ids == [pseudonymise(mrn, KEY.encode()) for mrn in MRNS]
    dump = parsed.frame().to_csv() + "\n".join(parsed.warnings) + "\n".join(map(str, parsed.rejected))
    assert not any(mrn in dump for mrn in MRNS)
    # another key, other pseudonyms; the same key, the same pseudonyms (so files still join)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "another-key-0123456789abcdef")
    other = read_table(spec, HOSPITAL_CSV).frame()["patient_id"].tolist()
    assert set(other).isdisjoint(ids)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    assert read_table(spec, HOSPITAL_CSV).frame()["patient_id"].tolist() == ids
    # XLSX cells holding numbers hash like the same text in a CSV file
    numeric = tmp_path / "numeric_ids.xlsx"
    pd.DataFrame({"MRN": [123456], "Age": [60], "Sex": ["M"]}).to_excel(numeric, index=False)
    small = {"format": "table", "id_column": "MRN", "pseudonymise": True, "columns": {"age": "Age", "sex": "Sex"}}
    assert read_table(small, numeric).records[0].patient_id == pseudonymise("123456", KEY.encode())


def test_pseudonymisation_without_a_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    with pytest.raises(PseudonymKeyError, match=PSEUDONYM_KEY_ENV):
        read_table(hospital_spec(), HOSPITAL_CSV)


def test_local_key_file_is_created_once_private_and_never_overrides_the_environment(tmp_path, monkeypatch):
    import os
    import stat

    from response_model.privacy import ensure_local_key

    path = tmp_path / ".response-model" / "pseudonym.key"
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    assert ensure_local_key(path) is True
    first = os.environ[PSEUDONYM_KEY_ENV]
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    assert ensure_local_key(path) is False and os.environ[PSEUDONYM_KEY_ENV] == first
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    assert ensure_local_key(tmp_path / "other.key") is False
    assert os.environ[PSEUDONYM_KEY_ENV] == KEY and not (tmp_path / "other.key").exists()
