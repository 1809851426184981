"""Every answer of the service is audited once, with the status the client got (issue 14, point 3), and the
answers that used to be 500s are field errors (service/every_answer.py, recording.py, auditor.py, admin.py)."""

from __future__ import annotations

import logging
import uuid

import pytest

from response_model.service.audit import AuditTrail

from audited_service import audited_service, auth, last_seq, patient, records

PSEUDONYM_KEY = "audit-everything-test-key-0123456789"
HUGE = 10**400


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("everything")
    with pytest.MonkeyPatch.context() as mp, audited_service(smoke_model["export_dir"], folder, mp, "everything",
                                                             PSEUDONYM_KEY) as svc:
        svc["model_dir"] = smoke_model["export_dir"]
        yield svc


def call(service, method: str, path: str, role: str | None = None, **kwargs):
    """(answer, the records appended while answering it)."""
    before = last_seq(service["url"])
    headers = {**auth(service["tokens"][role] if role else None), **kwargs.pop("headers", {})}
    answer = service["client"].request(method, path, headers=headers, **kwargs)
    return answer, records(service["url"], before)


BIG_BODY = b'{"model_uri": "' + b"x" * (300 * 1024) + b'"}'

# (method, path, role, request keywords, status, the endpoint recorded)
CASES = [
    ("GET", "/v1/no-such-thing", None, {}, 404, "GET (no route)"),
    ("GET", "/v1/no-such-thing/MRN-404-PATH", "auditor", {}, 404, "GET (no route)"),
    ("DELETE", "/v1/predictions", "clinician", {}, 405, "DELETE /v1/predictions"),
    ("PUT", "/v1/admin/reload", "admin", {}, 405, "PUT /v1/admin/reload"),
    ("GET", "/v1/model", None, {}, 401, "GET /v1/model"),
    ("GET", "/v1/model", "clinician", {}, 200, "GET /v1/model"),
    ("GET", "/", None, {}, 200, "GET /"),
    ("POST", "/v1/admin/reload", "admin", {"json": {"model_uri": 5}}, 422, "POST /v1/admin/reload"),
    ("POST", "/v1/admin/reload", "admin", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     422, "POST /v1/admin/reload"),
    ("POST", "/v1/admin/reload", "admin", {"content": BIG_BODY, "headers": {"content-type": "application/json"}},
     413, "POST /v1/admin/reload"),
    ("POST", "/v1/admin/reload", "clinician", {"json": {}}, 403, "POST /v1/admin/reload"),
    ("POST", "/sign-in", None, {"content": b"x" * (300 * 1024)}, 413, "POST /sign-in"),
    ("POST", "/v1/predictions", "clinician", {"content": b"x" * (300 * 1024)}, 413, "POST /v1/predictions"),
    ("POST", "/v1/predictions", "clinician", {"json": {"patient": patient(lesion_count=HUGE)}}, 422,
     "POST /v1/predictions"),
    ("POST", "/v1/predictions", "clinician", {"json": {"patient": patient(line_of_therapy=-HUGE)}}, 422,
     "POST /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"page_token": str(2**70)}}, 422, "GET /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"page_token": "١٢"}}, 422, "GET /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"page_token": "²"}}, 422, "GET /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"page_size": "1" + "0" * 500}}, 422, "GET /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"from": "0001-01-01T00:00:00+01:00"}}, 422,
     "GET /v1/predictions"),
    ("GET", "/v1/predictions", "auditor", {"params": {"to": "9999-12-31T23:59:59-01:00"}}, 422,
     "GET /v1/predictions"),
    ("GET", "/v1/predictions:export", "auditor", {"params": {"from": "0001-01-01T00:30:00+01:00"}}, 422,
     "GET /v1/predictions:export"),
    ("GET", "/v1/predictions", "auditor", {"params": {"page_size": "2"}}, 200, "GET /v1/predictions"),
    ("GET", "/v1/predictions/5f0c8a52-3d1e-4b7a-9c2f-0e6d4a1b8c73",
     "auditor", {}, 404, "GET /v1/predictions/{prediction_id}"),
    ("GET", "/v1/predictions/MRN-TYPED-HERE", "auditor", {}, 422, "GET /v1/predictions/{prediction_id}"),
    ("GET", "/v1/predictions/MRN-TYPED-HERE", "clinician", {}, 403, "GET /v1/predictions/{prediction_id}"),
]


@pytest.mark.parametrize(("method", "path", "role", "kwargs", "status", "endpoint"), CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[4]}" for c in CASES])
def test_each_answer_has_exactly_one_record_with_its_status(service, method, path, role, kwargs, status, endpoint):
    answer, new = call(service, method, path, role, **dict(kwargs))
    assert answer.status_code == status, answer.text[:500]
    assert [(r["endpoint"], r["http_status"]) for r in new] == [(endpoint, status)]
    assert new[0]["status"] == ("accepted" if status < 400 else "rejected")
    if role is not None and status != 401:
        assert new[0]["key_id"] is not None  # who asked
    if status == 422 and answer.headers["content-type"].startswith("application/json"):
        errors = answer.json().get("errors") or []
        assert errors and all(e["message"].startswith(e["field"]) for e in errors)


def test_a_query_parameter_out_of_range_is_named(service):
    answer, _ = call(service, "GET", "/v1/predictions", "auditor", params={"page_token": str(2**64)})
    assert [e["field"] for e in answer.json()["errors"]] == ["page_token"]
    answer, _ = call(service, "GET", "/v1/predictions", "auditor", params={"to": "9999-12-31T23:00:00-01:00"})
    assert [e["field"] for e in answer.json()["errors"]] == ["to"] and "9999" in answer.json()["errors"][0]["message"]
    answer, _ = call(service, "POST", "/v1/predictions", "clinician", json={"patient": patient(lesion_count=HUGE)})
    assert [e["field"] for e in answer.json()["errors"]] == ["patient.lesion_count"]


def test_probes_and_documentation_are_not_audited(service):
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"):
        answer, new = call(service, "GET", path)
        assert answer.status_code == 200 and new == [], path


def test_a_reload_that_is_not_a_model_keeps_the_model_and_is_audited(service, tmp_path):
    before = service["client"].get("/readyz").json()
    answer, new = call(service, "POST", "/v1/admin/reload", "admin", json={"model_uri": str(tmp_path)})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "model_uri" and "previous model stays" in answer.text
    assert service["client"].get("/readyz").json() == before
    assert [r["http_status"] for r in new] == [422]
    assert new[0]["detail"]["outcome"] == "failed" and new[0]["detail"]["model_uri"] == str(tmp_path)
    answer, new = call(service, "POST", "/v1/admin/reload", "admin", json={"model_uri": str(service["model_dir"])})
    assert answer.status_code == 200
    assert [(r["endpoint"], r["http_status"]) for r in new] == [("POST /v1/admin/reload", 200)]
    assert new[0]["detail"]["outcome"] == "loaded" and new[0]["detail"]["current"] == answer.json()["current"]


def test_reloads_and_other_answers_are_not_listed_as_predictions(service):
    call(service, "POST", "/v1/admin/reload", "admin", json={"model_uri": "/nowhere"})
    listed = []
    token = None
    while True:
        page = service["client"].get("/v1/predictions", params={"page_size": 1000, **({"page_token": token} if token
                                                                                        else {})},
                                     headers=auth(service["tokens"]["auditor"])).json()
        listed += page["records"]
        token = page["next_page_token"]
        if token is None:
            break
    assert listed and {r["endpoint"] for r in listed} <= {"POST /v1/predictions", "POST /v1/predictions:batch"}


def test_a_batch_row_that_breaks_validation_fails_alone(service):
    # beyond 2**53 (no exact float), yet within the guard's 24 characters of a number
    rows = [{"patient": patient()}, {"patient": patient(lesion_count=10**17)}, {"patient": patient(age=70)}]
    answer, new = call(service, "POST", "/v1/predictions:batch", "clinician", json={"patients": rows})
    assert answer.status_code == 200
    out = answer.json()
    assert [r["ok"] for r in out["results"]] == [True, False, True]
    assert out["results"][1]["errors"][0]["field"] == "patient.lesion_count"
    assert [r["http_status"] for r in new] == [200, 422, 200]


def test_a_number_over_the_guards_limit_refuses_the_batch_naming_the_row(service):
    rows = [{"patient": patient()}, {"patient": patient(lesion_count=HUGE)}]
    answer, new = call(service, "POST", "/v1/predictions:batch", "clinician", json={"patients": rows})
    assert answer.status_code == 422 and [r["http_status"] for r in new] == [422]
    assert [e["field"] for e in answer.json()["errors"]] == ["patients.1.patient.lesion_count"]


def test_a_batch_row_that_cannot_be_scored_fails_alone(service, monkeypatch):
    import response_model.service.prediction as prediction

    real = prediction.predict_many

    def fails_on_age_71(model, requests):
        if any(r.patient.age == 71 for r in requests):
            raise RuntimeError("cannot score")
        return real(model, requests)

    monkeypatch.setattr(prediction, "predict_many", fails_on_age_71)
    rows = [{"patient": patient()}, {"patient": patient(age=71)}, {"patient": patient(age=70)}]
    answer, new = call(service, "POST", "/v1/predictions:batch", "clinician", json={"patients": rows})
    assert answer.status_code == 200
    assert [r["ok"] for r in answer.json()["results"]] == [True, False, True]
    assert [r["http_status"] for r in new] == [200, 500, 200]


def test_an_unhandled_error_is_a_clean_500_audited_without_its_message(service, monkeypatch, caplog):
    def broken(self, prediction_id):
        raise RuntimeError("MRN-IN-AN-EXCEPTION-MESSAGE")

    monkeypatch.setattr(AuditTrail, "get", broken)
    with caplog.at_level(logging.DEBUG):
        answer, new = call(service, "GET", f"/v1/predictions/{uuid.uuid4()}", "auditor")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert "RuntimeError" in answer.json()["detail"] and "MRN-IN" not in answer.text
    assert [(r["endpoint"], r["http_status"]) for r in new] == [("GET /v1/predictions/{prediction_id}", 500)]
    assert "MRN-IN-AN-EXCEPTION-MESSAGE" not in caplog.text and "RuntimeError" in caplog.text


def test_an_error_after_the_route_recorded_its_answer_is_recorded_as_the_500_it_became(service, monkeypatch):
    import response_model.service.auditor as auditor

    def broken(entry):
        raise ValueError("a stored record this reader cannot show")

    made = service["client"].post("/v1/predictions", json={"patient": patient()},
                                  headers=auth(service["tokens"]["clinician"]))
    assert made.status_code == 200  # a record for the page to show
    monkeypatch.setattr(auditor, "_summary", broken)
    answer, new = call(service, "GET", "/v1/predictions", "auditor")
    assert answer.status_code == 500
    assert [r["http_status"] for r in new][-1] == 500  # the trail does not end on the 200 the route recorded


def test_the_access_log_has_route_templates_not_ids_or_query_strings(service, caplog):
    with caplog.at_level(logging.INFO, logger="response_model.access"):
        call(service, "GET", "/v1/predictions/MRN-IN-THE-PATH", "auditor", params={"access_token": "SECRET-TOKEN"})
    lines = [r.getMessage() for r in caplog.records if r.name == "response_model.access"]
    assert any(line.startswith("GET /v1/predictions/{prediction_id} 422 ") for line in lines), lines
    assert "MRN-IN-THE-PATH" not in caplog.text and "SECRET-TOKEN" not in caplog.text


def test_an_answer_the_trail_cannot_record_is_not_sent(service, monkeypatch):
    import response_model.service.recording as recording

    def trail_down(trail, records):
        raise OSError("disk full")

    monkeypatch.setattr(recording, "append", trail_down)
    answer = service["client"].get("/v1/model", headers=auth(service["tokens"]["clinician"]))
    assert answer.status_code == 503 and "could not record" in answer.json()["detail"]
    assert "model_name" not in answer.json()  # the model endpoint's own answer was not sent
