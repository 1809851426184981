"""'Sequenced, nothing found' is spelt the same in table files as on the clinician page, and rejected rows
are numbered 1-based: the file line for text files (header = line 1), the data row for Parquet files,
whether read through the canonical source or a table source."""

import pandas as pd

from response_model.dataset import TreatmentOutcome, cohort_frame, write_cohort
from response_model.schema import PatientRecord
from response_model.sources import load_source
from response_model.sources.tables import DEFAULT_NONE_FOUND, read_table


def test_the_table_words_for_nothing_found_are_the_pages():
    from response_model.service.web import NOTHING_FOUND

    assert set(DEFAULT_NONE_FOUND) == set(NOTHING_FOUND)


def test_an_alterations_cell_reads_as_on_the_page(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("Age,Sex,Mutations\n60,male,none\n61,male,[]\n62,male,None found\n63,male,\n"
                     "64,male,CTNNB1 p.S45P\n")
    spec = {"format": "table", "columns": {"age": "Age", "sex": "Sex", "alterations": "Mutations"}}
    records = read_table(spec, table).records
    assert [r.alterations for r in records[:4]] == [[], [], [], None]
    assert records[4].alterations[0].gene == "CTNNB1"


def _two_patients_second_invalid() -> pd.DataFrame:
    frame = cohort_frame([PatientRecord(age=60, sex="male"), PatientRecord(age=70, sex="female")],
                         [TreatmentOutcome(), TreatmentOutcome()])
    frame.loc[1, "albumin"] = 31.0
    return frame


def test_parquet_rows_are_numbered_1_based_by_either_source(tmp_path):
    path = write_cohort(_two_patients_second_invalid(), tmp_path / "c.parquet")
    canonical = load_source("sources/canonical.yaml", path).parsed.rejected
    columns = {name: name for name in ("age", "sex", "albumin")}
    as_table = read_table({"format": "table", "columns": columns}, path).rejected
    assert [e.line for e in canonical] == [e.line for e in as_table] == [2]
    assert str(canonical[0]).startswith("line 2: albumin")


def test_csv_rows_are_numbered_by_file_line(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("age,sex,albumin\n60,male,3.5\n70,female,31\n")
    spec = {"format": "table", "columns": {"age": "age", "sex": "sex", "albumin": "albumin"}}
    assert [e.line for e in read_table(spec, table).rejected] == [3]


def test_score_names_a_rejected_row_by_the_line_validate_gives(smoke_model, tmp_path):
    from response_model.modeling.batch import score_file
    from response_model.modeling.predict import load_model

    model = load_model(str(smoke_model["export_dir"]))
    for name, write in (("c.csv", lambda f, p: f.to_csv(p, index=False)), ("c.parquet", write_cohort)):
        path = tmp_path / name
        write(_two_patients_second_invalid(), path)
        columns = {name: name for name in ("age", "sex", "albumin")}
        validated = read_table({"format": "table", "columns": columns}, path).rejected  # validate's numbering
        result = score_file(model, path, tmp_path / f"{name}.out.csv", n_workers=1, progress=False)
        rejected = pd.read_csv(result.rejected_path)
        assert rejected["line"].tolist() == [e.line for e in validated], name
