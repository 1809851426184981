"""Clinical consistency checks (configs/consistency.yaml, the unit hints of configs/ranges.yaml): each rule
fires alone on its case, a consistent record passes silently, and errors and warnings reach every way in:
the record's validation, the JSON API (single and batch), the page, batch scoring, table sources and the trail."""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from response_model import consistency
from response_model.dataset import parse_cohort
from response_model.errors import ConfigError
from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.schema import PatientRecord, field_errors
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.models import EXAMPLE_PATIENT

BASE = {"age": 64, "sex": "male"}
CHILD_PUGH_C = {"bilirubin": 3.5, "albumin": 2.5, "inr": 2.5, "ascites": "moderate_severe",
                "encephalopathy": "grade_3_4"}
RAW_ID, OTHER_ID = "MRN-CONSISTENCY-0042", "MRN-CONSISTENCY-0099"
EVIDENCE = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "hcc-evidence.md"

# rule id: (record fields, the field the error is filed under, a field its message names besides)
ERRORS = {
    "bclc_early_with_macrovascular_invasion": ({"bclc_stage": "A", "macrovascular_invasion": True},
                                               "bclc_stage", "macrovascular_invasion"),
    "bclc_early_with_extrahepatic_spread": ({"bclc_stage": "0", "extrahepatic_spread": True},
                                            "bclc_stage", "extrahepatic_spread"),
    "child_pugh_class_vs_items": ({"child_pugh_class": "B", "bilirubin": 1.0, "albumin": 4.0, "inr": 1.0,
                                   "ascites": "none", "encephalopathy": "none"}, "child_pugh_class", "five items"),
    "later_line_without_prior_therapy": ({"line_of_therapy": 2, "prior_systemic_therapy": False},
                                         "prior_systemic_therapy", "line_of_therapy"),
    "pdl1_tps_above_cps": ({"pdl1_tps": 50, "pdl1_cps": 10}, "pdl1_tps", "pdl1_cps"),
    "tert_promoter_with_protein_change": (
        {"alterations": [{"gene": "TERT", "kind": "tert_promoter", "protein_change": "p.R12C"}]},
        "alterations.0.protein_change", "TERT promoter"),
    "fusion_with_point_change": (
        {"alterations": [{"gene": "CTNNB1", "kind": "missense", "protein_change": "p.S45P"},
                         {"gene": "FGFR2", "kind": "fusion", "protein_change": "p.S45P"}]},
        "alterations.1.protein_change", "fusion"),
}
# rule id: (record fields, a text its warning holds)
WARNINGS = {
    "bclc_early_with_ecog_1_2": ({"bclc_stage": "B", "ecog": 1}, "ecog 1"),
    "bclc_not_terminal_with_ecog_3_4": ({"bclc_stage": "C", "ecog": 3, "macrovascular_invasion": True}, "ecog 3"),
    "bclc_not_terminal_with_child_pugh_c": ({"bclc_stage": "C", "macrovascular_invasion": True, **CHILD_PUGH_C},
                                            "child_pugh_class 'C'"),
    "bclc_advanced_without_its_items": ({"bclc_stage": "C", "ecog": 0, "macrovascular_invasion": False,
                                         "extrahepatic_spread": False}, "define BCLC C"),
    "first_line_with_prior_therapy": ({"line_of_therapy": 1, "prior_systemic_therapy": True}, "line_of_therapy: 1"),
    "alcohol_aetiology_never_drinker": ({"aetiology": "alcohol", "alcohol_use": "never"}, "alcohol_use 'never'"),
    "bilirubin_high_with_normal_liver_tests": ({"bilirubin": 6, "albumin": 4.0, "inr": 1.0, "ascites": "none",
                                                "encephalopathy": "none"}, "looks like µmol/L"),
    "kind_disagrees_with_protein_change": (
        {"alterations": [{"gene": "TP53", "kind": "nonsense", "protein_change": "p.R249S"}]}, "reads as missense"),
    "unit_hint.bilirubin": ({"bilirubin": 17.1}, "typical of µmol/L"),
    "unit_hint.lymphocytes": ({"lymphocytes": 25}, "typical of % of white cells"),
    "unit_hint.neutrophils": ({"neutrophils": 60}, "typical of % of white cells"),
    "unit_hint.largest_lesion_cm": ({"largest_lesion_cm": 35}, "typical of mm"),
}
ALCOHOL_WARNING = consistency.messages(consistency.record_problems(
    PatientRecord(**BASE, aetiology="alcohol", alcohol_use="never"), "warning"))[0]


def rejected(**fields) -> list:
    with pytest.raises(ValidationError) as caught:
        PatientRecord(**{**BASE, **fields})
    return field_errors(caught.value)


# -- the configuration ----------------------------------------------------------------------------------


def test_every_rule_and_unit_hint_cites_its_evidence_row_or_says_assumption():
    sources = {r.id: r.source for r in consistency.rules()} | {
        f"unit_hint.{h.field}": h.source for h in consistency.unit_hints()}
    assert set(sources) == set(ERRORS) | set(WARNINGS) | {"two_patient_ids"}  # every rule has a case here
    for rule, source in sources.items():
        assert source.startswith("hcc-evidence.md") or source.startswith("assumption"), rule
    if EVIDENCE.is_file():  # the quoted heading or row must be in the evidence document
        text = EVIDENCE.read_text(encoding="utf-8")
        for rule, source in sources.items():
            for quoted in re.findall(r"'([^']+)'", source):
                if "hcc-evidence.md" in source and not quoted.startswith(("C advanced", "2–500")):
                    assert quoted in text, (rule, quoted)


def test_a_malformed_rule_is_a_configuration_error_naming_the_rule():
    good = {"id": "x", "scope": "record", "severity": "error", "fields": ["ecog"], "when": {"ecog": {"min": 3}},
            "message": "ecog: {ecog}", "source": "assumption"}
    assert consistency._rule(good, "r").fires({"ecog": 3})
    for change, named in [({"fields": ["ecogg"], "when": {"ecogg": {"min": 3}}}, "ecogg"),
                          ({"when": {"ecog": {"above": 3}}}, "above"), ({"severity": "fatal"}, "fatal"),
                          ({"when": {"ecog": {"in": 3}}}, "when.ecog.in"),
                          ({"when": {"ecog": {"above_field": "ecogg"}}}, "ecogg"),
                          ({"when": {"ecog": {"matches": "("}}}, "not a regular expression"),
                          ({"message": "{albumin}"}, "albumin"), ({"source": "a hunch"}, "a hunch")]:
        with pytest.raises(ConfigError, match=named) as caught:
            consistency._rule({**good, **change}, "consistency.yaml: rules[0]")
        assert "rules[0] (x)" in str(caught.value)


# -- each rule, on the record ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(ERRORS))
def test_an_impossible_combination_is_refused_naming_its_fields(rule):
    fields, filed_under, also_named = ERRORS[rule]
    (error,) = rejected(**fields)
    assert error.field == filed_under
    assert error.message.startswith(filed_under.split(".")[-1] + ":") and also_named in error.message


@pytest.mark.parametrize("rule", sorted(WARNINGS))
def test_an_implausible_value_or_combination_is_accepted_with_its_warning(rule):
    fields, text = WARNINGS[rule]
    record = PatientRecord(**BASE, **fields)
    assert [p.rule for p in consistency.record_problems(record, "warning")] == [rule]
    (warning,) = record.warnings()
    assert text in warning


def test_every_inconsistency_of_a_record_is_reported_at_once():
    errors = rejected(bclc_stage="A", macrovascular_invasion=True, extrahepatic_spread=True, pdl1_tps=20, pdl1_cps=5)
    assert [e.field for e in errors] == ["bclc_stage", "bclc_stage", "pdl1_tps"]
    assert [e.value for e in errors] == ["A", "A", 20]


def test_a_consistent_record_passes_silently():
    full = {**EXAMPLE_PATIENT, "bclc_stage": "C", "child_pugh_class": "A", "prior_systemic_therapy": False,
            "pdl1_tps": 5, "pdl1_cps": 5, "alterations": [*EXAMPLE_PATIENT["alterations"],
                                                          {"gene": "CTNNB1", "kind": "missense",
                                                           "protein_change": "p.S45P"},
                                                          {"gene": "FGFR2", "kind": "fusion"}]}
    record = PatientRecord(**full)
    assert record.warnings() == [] and consistency.record_problems(record, "error") == []
    # the neighbours of each rule's case: stage C with invasion, line 2 with prior therapy, a count in range
    for fields in ({"bclc_stage": "C", "macrovascular_invasion": True, "ecog": 2}, {"line_of_therapy": 2},
                   {"bilirubin": 9.9, "albumin": 2.9}, {"lymphocytes": 9.5, "neutrophils": 24},
                   {"largest_lesion_cm": 19.9}, {"aetiology": "alcohol", "alcohol_use": "former"}):
        assert PatientRecord(**BASE, **fields).warnings() == [], fields


def test_a_value_impossible_in_the_schema_unit_is_an_error_naming_the_likely_unit():
    for field, value, unit in [("lymphocytes", 1400, "per µL"), ("largest_lesion_cm", 75, "mm"),
                               ("bilirubin", 85, "µmol/L")]:
        (error,) = rejected(**{field: value})
        assert error.field == field and f"looks like {unit}" in error.message


def test_two_patient_ids_in_one_request_are_refused_without_showing_either():
    (problem,) = consistency.request_problems({"patient_id": RAW_ID, "patient": {"patient_id": OTHER_ID}})
    assert (problem.rule, problem.field) == ("two_patient_ids", "patient_id")
    assert RAW_ID not in problem.message and OTHER_ID not in problem.message
    for same in ({"patient_id": RAW_ID, "patient": {"patient_id": f" {RAW_ID} "}}, {"patient_id": RAW_ID},
                 {"patient": {"patient_id": RAW_ID}}):
        assert consistency.request_problems(same) == []


# -- every way in ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    """(client, clinician token, db url) of a service on the exported smoke model."""
    folder = tmp_path_factory.mktemp("consistency")
    url = f"sqlite:///{folder}/consistency.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, "consistency-test-pseudonym-key-0123456789")
        mp.delenv(DB_URL_ENV, raising=False)
        with KeyStore(url) as store:
            token = store.create("clinician", "consistency").token
        with TestClient(create_app(str(smoke_model["export_dir"]), url, alias_check=0)) as client:
            yield client, token, url


def records(url: str) -> list[dict]:
    with AuditTrail(url) as trail:
        return [e.to_dict() for e in trail.query(limit=1000)]


def patient(**changes) -> dict:
    return {**copy.deepcopy(EXAMPLE_PATIENT), **changes}


def test_the_api_refuses_an_impossible_record_naming_the_fields_and_audits_it(service):
    client, token, url = service
    before = len(records(url))
    body = {"patient": patient(bclc_stage="B", pdl1_tps=20, pdl1_cps=5), "patient_id": RAW_ID}
    response = client.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["patient.bclc_stage", "patient.pdl1_tps"]
    assert "macrovascular_invasion true" in errors[0]["message"] and "pdl1_cps 5" in errors[1]["message"]
    (record,) = records(url)[before:]
    assert (record["status"], record["http_status"], record["detail"]) == ("rejected", 422, {"errors": errors})


def test_the_api_refuses_two_patient_ids_and_stores_neither(service):
    client, token, url = service
    before = len(records(url))
    headers = {"Authorization": f"Bearer {token}"}
    body = {"patient": patient(patient_id=OTHER_ID), "patient_id": RAW_ID}
    response = client.post("/v1/predictions", json=body, headers=headers)
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == ["patient_id"]
    batch = client.post("/v1/predictions:batch", json={"patients": [body]}, headers=headers).json()
    assert batch["n_rejected"] == 1 and batch["results"][0]["errors"][0]["field"] == "patient_id"
    stored = records(url)[before:]
    assert [(r["status"], r["http_status"]) for r in stored] == [("rejected", 422)] * 2
    for text in (response.text, json.dumps(batch), json.dumps(stored)):
        assert RAW_ID not in text and OTHER_ID not in text
    same = client.post("/v1/predictions", json={**body, "patient": patient(patient_id=RAW_ID)}, headers=headers)
    assert same.status_code == 200


def test_a_warning_reaches_the_answer_and_the_audit_record_a_consistent_one_none(service):
    client, token, url = service
    headers = {"Authorization": f"Bearer {token}"}
    before = len(records(url))
    warned = client.post("/v1/predictions", json={"patient": patient(aetiology="alcohol", alcohol_use="never")},
                         headers=headers)
    quiet = client.post("/v1/predictions", json={"patient": patient()}, headers=headers)
    assert (warned.status_code, quiet.status_code) == (200, 200)
    assert warned.json()["warnings"] == [ALCOHOL_WARNING] and quiet.json()["warnings"] == []
    first, second = records(url)[before:]
    assert first["detail"] == {"warnings": [ALCOHOL_WARNING]} and second["detail"] is None
    rows = [{"patient": patient(aetiology="alcohol", alcohol_use="never")},
            {"patient": patient(bclc_stage="A")}, {"patient": patient()}]
    batch = client.post("/v1/predictions:batch", json={"patients": rows}, headers=headers).json()
    ok, bad, fine = batch["results"]
    assert ok["ok"] and ok["prediction"]["warnings"] == [ALCOHOL_WARNING] and fine["prediction"]["warnings"] == []
    assert not bad["ok"] and [e["field"] for e in bad["errors"]] == ["patient.bclc_stage"]
    stored = records(url)[before + 2:]
    assert [r["detail"] for r in stored] == [{"warnings": [ALCOHOL_WARNING]}, {"index": 1, "errors": bad["errors"]},
                                             None]


def _signed_in(client: TestClient, token: str) -> str:
    """Sign in afresh; return the page's CSRF token."""
    client.cookies.clear()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)
    client.post("/sign-in", data={"csrf_token": csrf, "api_key": token}, follow_redirects=False)
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)


def test_the_page_shows_a_warning_and_an_impossible_combination_beside_its_field(service):
    client, token, url = service
    csrf = _signed_in(client, token)
    regimens = re.findall(r'name="regimens" value="([^"]+)"', client.get("/").text)
    form = {"csrf_token": csrf, "regimens": regimens, "source": "fields", "age": "64", "sex": "male",
            "aetiology": "alcohol", "alcohol_use": "never"}
    page = client.post("/", data=form)
    assert page.status_code == 200 and ALCOHOL_WARNING in html.unescape(page.text)
    assert records(url)[-1]["detail"] == {"warnings": [ALCOHOL_WARNING]}
    refused = client.post("/", data={**form, "bclc_stage": "A", "extrahepatic_spread": "true"})
    assert refused.status_code == 422
    block = re.search(r'<div class="field[^"]*" id="field-bclc_stage">(.*?)</div>', refused.text, re.S).group(1)
    assert "contradicts extrahepatic_spread true" in html.unescape(block)


def test_batch_scoring_and_table_sources_carry_the_warnings_and_reject_the_impossible(smoke_model):
    from response_model.modeling.batch import score_partition
    from response_model.modeling.predict import as_bundle, load_model

    frame = pd.DataFrame([{**BASE, "patient_id": "a", "aetiology": "alcohol", "alcohol_use": "never"},
                          {**BASE, "patient_id": "b", "bclc_stage": "A", "macrovascular_invasion": True},
                          {**BASE, "patient_id": "c", "aetiology": "HBV", "alcohol_use": "never"}])
    predictor = as_bundle(load_model(str(smoke_model["export_dir"]))).predictor()
    table, rejected_rows = score_partition(predictor, frame, [10, 11, 12])
    warnings = table.drop_duplicates("input_row").set_index("input_row")["warnings"]
    assert warnings[10] == ALCOHOL_WARNING and warnings[12] is None
    assert rejected_rows["input_row"].tolist() == [11]
    assert "contradicts macrovascular_invasion true" in rejected_rows["errors"].iloc[0]
    parsed = parse_cohort(frame.drop(columns="patient_id"))
    assert len(parsed.records) == 2 and [r.row for r in parsed.rejected] == [1]
    assert parsed.warnings == [f"row 0: {ALCOHOL_WARNING}"]
