"""No identifier — or anything in an identifier's place — reaches the audit trail or the logs raw (issue 14,
point 6): non-string and over-long patient ids, identifiers used as field names, ids in batch rows and on
the page; the "appears elsewhere" check is deterministic; uvicorn's access log keeps no ids or tokens."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.audit import RawIdentifierError
from response_model.service.audit.chain import stored_content
from response_model.service.keys import KeyStore
from response_model.service.validation import REDACTED_ID, redacted_error

from audited_service import audited_service, auth, database_text, last_seq, patient, records
from service_process import start_service

PSEUDONYM_KEY = "identifiers-test-key-0123456789abcdef"
LONG_ID = "MRN-LONG-" + "7" * 200  # over the 128 characters of an id, under the guard's 256 of any string


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("identifiers")
    with pytest.MonkeyPatch.context() as mp, audited_service(smoke_model["export_dir"], folder, mp, "identifiers",
                                                             PSEUDONYM_KEY) as svc:
        yield svc


def post(service, path: str, body, role: str = "clinician"):
    """(answer, the records appended while answering it)."""
    before = last_seq(service["url"])
    answer = service["client"].post(path, json=body, headers=auth(service["tokens"][role]))
    return answer, records(service["url"], before)


# (request body, the raw texts that must not be stored, the field the answer names)
SINGLE_CASES = [
    ({"patient": patient(), "patient_id": 98765432101}, ["98765432101"], "patient_id"),
    ({"patient": patient(), "patient_id": ["MRN-IN-A-LIST-1"]}, ["MRN-IN-A-LIST-1"], "patient_id"),
    ({"patient": patient(), "patient_id": {"mrn": "MRN-IN-AN-OBJECT-1"}}, ["MRN-IN-AN-OBJECT-1"], "patient_id"),
    ({"patient": patient(), "patient_id": LONG_ID}, [LONG_ID, "7" * 100], "patient_id"),
    ({"patient": patient(patient_id=56473829101)}, ["56473829101"], "patient.patient_id"),
    ({"patient": patient(patient_id=LONG_ID)}, [LONG_ID, "7" * 100], "patient.patient_id"),
    ({"patient": patient(**{"MRN-AS-A-KEY-123": 1})}, ["MRN-AS-A-KEY-123"], None),
    ({"patient": patient(**{"Jane Doe 1961-04-02": "x"})}, ["Jane Doe 1961-04-02"], None),
    ({"patient": patient(), "MRN-TOP-LEVEL-KEY-9": True}, ["MRN-TOP-LEVEL-KEY-9"], None),
    ({"patient": patient(albumin=35), "patient_id": 31415926535}, ["31415926535"], "patient_id"),
]


@pytest.mark.parametrize(("body", "raw", "field"), SINGLE_CASES, ids=[f"case{i}" for i in range(len(SINGLE_CASES))])
def test_an_identifier_in_a_rejected_request_is_not_stored(service, body, raw, field, caplog):
    with caplog.at_level(logging.DEBUG):
        answer, new = post(service, "/v1/predictions", body)
    assert answer.status_code == 422
    if field is not None:
        assert field in [e["field"] for e in answer.json()["errors"]]
    assert [r["http_status"] for r in new] == [422]
    stored, logged = database_text(service["url"]), caplog.text
    for text in raw:
        assert text not in stored and text not in logged
    errors = new[0]["detail"]["errors"]
    if field is not None:
        (error,) = [e for e in errors if e["field"] == field]
        assert error["value"] in (None, REDACTED_ID)  # the message shows a list's or object's type only
    else:
        assert any(e["field"].startswith(("<field name:", "patient.<field name:")) for e in errors)


def test_the_answer_still_names_an_unknown_field_to_its_sender(service):
    answer, _ = post(service, "/v1/predictions", {"patient": patient(albumn=3.5)})
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "patient.albumn"


def test_ids_in_batch_rows_are_not_stored(service, caplog):
    rows = [{"patient": patient(), "patient_id": 11223344556},
            {"patient": patient(**{"MRN-BATCH-KEY-77": 2})},
            {"patient": patient(), "patient_id": "MRN-BATCH-GOOD-1"},
            {"patient": patient(), "patient_id": LONG_ID}]
    with caplog.at_level(logging.DEBUG):
        answer, new = post(service, "/v1/predictions:batch", {"patients": rows})
    assert answer.status_code == 200
    assert [r["ok"] for r in answer.json()["results"]] == [False, False, True, False]
    assert [r["http_status"] for r in new] == [422, 422, 200, 422]
    stored = database_text(service["url"])
    for text in ("11223344556", "MRN-BATCH-KEY-77", "MRN-BATCH-GOOD-1", "7" * 100):
        assert text not in stored and text not in caplog.text
    assert new[2]["patient_pseudonym"]  # the valid row's id is kept, as its keyed hash


def test_a_batch_body_error_does_not_echo_the_rows(service):
    answer, new = post(service, "/v1/predictions:batch", {"patients": "MRN-NOT-A-LIST-5"})
    assert answer.status_code == 422 and [r["http_status"] for r in new] == [422]
    answer, new = post(service, "/v1/predictions:batch", {"patient_id": "MRN-WRONG-PLACE-6", "rows": []})
    assert answer.status_code == 422 and [r["http_status"] for r in new] == [422]
    assert "MRN-WRONG-PLACE-6" not in database_text(service["url"])


def test_a_short_patient_id_is_never_refused_at_random(service):
    # "42" used to be refused whenever the random prediction id or the key id contained "42"
    for i in range(20):
        answer, new = post(service, "/v1/predictions", {"patient": patient(), "patient_id": str(40 + i % 3)})
        assert answer.status_code == 200, answer.text
        assert new[0]["patient_pseudonym"]


def test_the_appears_elsewhere_check_compares_whole_values(monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    base = {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "key_id": "a42b42c42d42",
            "model_name": "hcc-smoke", "model_version": "3", "prediction_id": "4242-4242",
            "outputs": {"note": "patient 42 of the ward"}}
    assert stored_content({**base, "patient_id": "42"})["patient_pseudonym"]
    assert stored_content({**base, "patient_id": "4"})["patient_pseudonym"]
    for echoed in ({"model_version": "MRN-9"}, {"outputs": {"echo": "MRN-9"}}, {"outputs": {"MRN-9": 1}}):
        with pytest.raises(RawIdentifierError):
            stored_content({**base, **echoed, "patient_id": " MRN-9 "})


def test_redacted_errors_keep_what_is_not_an_identifier():
    error = {"field": "patient.albumin", "value": 35, "message": "patient.albumin: 35 is outside 1–6 g/dL"}
    assert redacted_error(error) == error
    short = redacted_error({"field": "patient_id", "value": 1,
                            "message": "patient_id: 1 — Input should be a valid string of at most 128 characters"})
    assert short["message"] == ("patient_id: <patient_id redacted> — Input should be a valid string of at most "
                                "128 characters")
    named = redacted_error({"field": "patient.MRN-3", "value": {"x": 1},
                            "message": "patient.MRN-3: unknown field; expected one of the patient-record fields"})
    assert "MRN-3" not in str(named) and named["message"].endswith("expected one of the patient-record fields")
    assert named["value"] == "<dict redacted>"
    assert redacted_error({"field": "patient.MRN-3", "value": 1, "message": "m"})["field"] == named["field"]  # stable


def _sign_in(client, token: str) -> str:
    """Sign in to the page (cookies cleared); returns the page's CSRF token."""
    def csrf(page: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    client.cookies.clear()
    response = client.post("/sign-in", data={"csrf_token": csrf(client.get("/").text), "api_key": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf(client.get("/").text)


def test_ids_pasted_on_the_page_are_not_stored(service):
    client = service["client"]
    csrf = _sign_in(client, service["tokens"]["clinician"])
    pasted = '{"age": 60, "sex": "female", "MRN-PAGE-KEY-31": 1}'
    before = last_seq(service["url"])
    answer = client.post("/", data={"csrf_token": csrf, "source": "json", "patient_json": pasted,
                                    "patient_id": "MRN-PAGE-ID-32"})
    assert answer.status_code == 422
    assert [r["http_status"] for r in records(service["url"], before)] == [422]
    stored = database_text(service["url"])
    assert "MRN-PAGE-KEY-31" not in stored and "MRN-PAGE-ID-32" not in stored
    client.cookies.clear()


def test_a_real_server_logs_no_ids_tokens_or_query_strings(smoke_model, tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    url = f"sqlite:///{tmp_path}/served.db"
    with KeyStore(url) as store:
        token = store.create("auditor", "served auditor").token
        clinician = store.create("clinician", "served clinician").token
    server = start_service(str(smoke_model["export_dir"]), url, tmp_path, env={PSEUDONYM_KEY_ENV: PSEUDONYM_KEY})
    try:
        base = server.base_url
        httpx.get(f"{base}/v1/predictions/MRN-SERVED-PATH-41", params={"access_token": "SERVED-SECRET-42"},
                  headers=auth(token))
        httpx.post(f"{base}/v1/predictions", headers=auth(clinician),
                   json={"patient": patient(**{"MRN-SERVED-KEY-43": 1}), "patient_id": 44556677889})
        httpx.get(f"{base}/v1/no-route/MRN-SERVED-404-45?access_token=SERVED-SECRET-46")
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "GET /v1/predictions/{prediction_id} 422" in log and "POST /v1/predictions 422" in log
    assert "GET (no route) 404" in log
    for raw in ("MRN-SERVED-PATH-41", "SERVED-SECRET-42", "MRN-SERVED-KEY-43", "44556677889",
                "MRN-SERVED-404-45", "SERVED-SECRET-46", "access_token", token):
        assert raw not in log, raw
        assert raw not in database_text(url), raw
