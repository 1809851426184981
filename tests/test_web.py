"""The clinician page (response_model.service.web): sign-in, roles, CSRF, validation beside the fields,
audited predictions — through TestClient — and an end-to-end run in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import tempfile

import pytest
from conftest import require_service
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV, pseudonymise
from response_model.schema import PatientRecord
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.web import PAGE_ENDPOINT, PRESESSION_COOKIE, SESSION_COOKIE, contribution_chart

from service_process import served_in_thread

PSEUDONYM_KEY = "web-test-pseudonym-key-0123456789"
RAW_ID = "MRN-WEB-TEST-0042"
PATIENT_FORM = {"age": "64", "sex": "male", "ecog": "1", "aetiology": "HBV", "albumin": "3.6", "bilirubin": "0.9",
                "afp": "850", "alterations": "CTNNB1 p.S45P; TERT promoter", "tmb": "3.2"}


@pytest.fixture(scope="module")
def web(smoke_model, tmp_path_factory):
    """(client, tokens by role, key ids by role, db url) of a service on the exported smoke model."""
    folder = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{folder}/web.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        mp.delenv(DB_URL_ENV, raising=False)
        with KeyStore(url) as store:
            created = {role: store.create(role, f"web {role}") for role in ("clinician", "auditor", "admin")}
        app = create_app(str(smoke_model["export_dir"]), url, alias_check=0)
        with TestClient(app) as client:
            yield {"client": client, "url": url, "tokens": {r: c.token for r, c in created.items()},
                   "key_ids": {r: c.key_id for r, c in created.items()}}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in afresh (cookies cleared) and return the page's CSRF token."""
    client.cookies.clear()
    first = client.get("/")
    response = client.post("/sign-in", data={"csrf_token": csrf_of(first.text), "api_key": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


def field_block(page: str, name: str) -> str:
    """The HTML of one field's box (input, help and errors)."""
    match = re.search(rf'<div class="field[^"]*" id="field-{name}">(.*?)</div>', page, re.S)
    assert match, f"no field {name}"
    return match.group(1)


def errors_in(block: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<p class="error"[^>]*>(.*?)</p>', block, re.S)]


def regimens_of(page: str) -> list[str]:
    return re.findall(r'name="regimens" value="([^"]+)"', page)


def all_records(url: str) -> list[dict]:
    with AuditTrail(url) as trail:
        return [e.to_dict() for e in trail.query(limit=1000)]


# -- sign-in and access ------------------------------------------------------------------------------


def test_without_a_key_the_page_asks_to_sign_in(web):
    client = web["client"]
    client.cookies.clear()
    response = client.get("/")
    assert response.status_code == 200
    assert 'action="/sign-in"' in response.text and 'id="patient-form"' not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "<script" not in response.text
    # a form post without a session is refused with the sign-in page (401) and audited
    before = len(all_records(web["url"]))
    refused = client.post("/", data={"csrf_token": csrf_of(response.text), **PATIENT_FORM})
    assert refused.status_code == 401 and 'action="/sign-in"' in refused.text
    records = all_records(web["url"])[before:]
    assert [(r["endpoint"], r["status"], r["http_status"], r["key_id"]) for r in records] == [
        (PAGE_ENDPOINT, "rejected", 401, None)]


def test_sign_in_starts_a_session_in_an_httponly_strict_cookie_never_the_key(web):
    client, token = web["client"], web["tokens"]["clinician"]
    client.cookies.clear()
    page = client.get("/")
    (presession,) = [c.lower() for c in page.headers.get_list("set-cookie") if c.startswith(f"{PRESESSION_COOKIE}=")]
    assert "httponly" in presession and "samesite=strict" in presession
    bad = client.post("/sign-in", data={"csrf_token": csrf_of(page.text), "api_key": token[:-3] + "xyz"})
    assert bad.status_code == 401
    assert "not a valid, active API key" in " ".join(errors_in(field_block(bad.text, "api_key")))
    assert token[:-3] not in bad.text
    response = client.post("/sign-in", data={"csrf_token": csrf_of(page.text), "api_key": token},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookies = {c.split("=", 1)[0]: c.lower() for c in response.headers.get_list("set-cookie")}
    assert "httponly" in cookies[SESSION_COOKIE] and "samesite=strict" in cookies[SESSION_COOKIE]
    assert "max-age=0" in cookies[PRESESSION_COOKIE]  # the pre-session ends at sign-in
    assert token.split("_")[-1] not in cookies[SESSION_COOKIE].lower()
    form = client.get("/")
    assert form.status_code == 200 and 'id="patient-form"' in form.text
    assert token not in form.text and "web clinician (clinician)" in form.text
    # the CSRF token changed at sign-in
    assert csrf_of(form.text) != csrf_of(page.text)
    # sign-out needs the token, then forgets the session
    assert client.post("/sign-out", data={"csrf_token": "wrong"}).status_code == 403
    out = client.post("/sign-out", data={"csrf_token": csrf_of(form.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert 'action="/sign-in"' in client.get("/").text


def test_a_revoked_key_is_sent_back_to_sign_in(web):
    client = web["client"]
    with KeyStore(web["url"]) as store:
        created = store.create("clinician", "web short-lived")
        sign_in(client, created.token)
        store.revoke(created.key_id)
    response = client.get("/")
    assert response.status_code == 401 and "not valid any more" in response.text and "revoked" in response.text
    assert any(c.startswith(f"{SESSION_COOKIE}=") and "max-age=0" in c.lower()
               for c in response.headers.get_list("set-cookie"))


def test_an_auditor_key_gets_a_403_page_and_the_attempt_is_audited(web):
    client = web["client"]
    csrf = sign_in(client, web["tokens"]["auditor"])
    page = client.get("/")
    assert page.status_code == 403
    text = html.unescape(page.text)
    assert "Access denied" in text and "'auditor'" in text and "clinician or admin" in text
    assert 'id="patient-form"' not in page.text and 'action="/sign-out"' in page.text
    before = len(all_records(web["url"]))
    response = client.post("/", data={"csrf_token": csrf, **PATIENT_FORM})
    assert response.status_code == 403
    (record,) = all_records(web["url"])[before:]
    assert (record["endpoint"], record["http_status"], record["key_id"], record["role"]) == (
        PAGE_ENDPOINT, 403, web["key_ids"]["auditor"], "auditor")


def test_form_posts_need_the_csrf_token(web):
    client = web["client"]
    csrf = sign_in(client, web["tokens"]["clinician"])
    before = all_records(web["url"])
    for data in ({**PATIENT_FORM}, {**PATIENT_FORM, "csrf_token": csrf[:-2] + "xx"}):
        response = client.post("/", data=data)
        assert response.status_code == 403 and "security token" in response.text
        assert 'id="ranking"' not in response.text
    records = all_records(web["url"])[len(before):]
    assert [(r["status"], r["http_status"], r["prediction_id"]) for r in records] == [("rejected", 403, None)] * 2
    # sign-in needs it too (login CSRF)
    client.cookies.clear()
    assert client.post("/sign-in", data={"api_key": web["tokens"]["clinician"]}).status_code == 403


# -- the form ---------------------------------------------------------------------------------------


def test_the_form_has_an_input_for_every_field_of_the_schema(web):
    client = web["client"]
    sign_in(client, web["tokens"]["clinician"])
    page = client.get("/").text
    for name in PatientRecord.model_fields:
        assert f'name="{name}"' in page, name
    assert "(g/dL)" in field_block(page, "albumin") and "plausible 1–6 g/dL" in field_block(page, "albumin")
    assert 'value="Hepatobiliary" selected' in field_block(page, "cancer_type")
    assert "research use — trained on simulated data" in page
    # every candidate regimen is offered and ticked by default
    regimens = regimens_of(page)
    assert len(regimens) > 5 and page.count('name="regimens"') == page.count("checked>")


def test_a_bad_value_is_shown_beside_its_field_with_the_api_text_and_the_form_refilled(web):
    client, token = web["client"], web["tokens"]["clinician"]
    csrf = sign_in(client, token)
    regimens = regimens_of(client.get("/").text)
    before = len(all_records(web["url"]))
    data = {**PATIENT_FORM, "albumin": "35", "alterations": "CTNB1 p.S45P", "csrf_token": csrf,
            "regimens": regimens[:3], "patient_id": RAW_ID, "source": "fields"}
    response = client.post("/", data=data)
    assert response.status_code == 422 and 'id="ranking"' not in response.text
    # the same texts as the JSON API (and the CLI) for the same patient
    api = client.post("/v1/predictions", headers={"Authorization": f"Bearer {token}"},
                      json={"patient": {"age": 64, "sex": "male", "albumin": 35, "alterations": "CTNB1 p.S45P"}})
    messages = {e["field"]: e["message"] for e in api.json()["errors"]}
    assert errors_in(field_block(response.text, "albumin")) == [messages["patient.albumin"]]
    assert "looks like g/L" in messages["patient.albumin"]
    assert errors_in(field_block(response.text, "alterations")) == [messages["patient.alterations.0.gene"]]
    assert errors_in(field_block(response.text, "afp")) == []
    # re-filled with what was entered; only the chosen regimens still ticked; no raw id
    assert 'value="35"' in field_block(response.text, "albumin")
    assert 'value="850"' in field_block(response.text, "afp")
    assert response.text.count("checked>") == 3
    assert RAW_ID not in response.text
    records = all_records(web["url"])[before:]
    assert [(r["endpoint"], r["status"], r["http_status"]) for r in records[:1]] == [(PAGE_ENDPOINT, "rejected", 422)]
    assert records[0]["patient_pseudonym"] == pseudonymise(RAW_ID)
    assert RAW_ID not in json.dumps(records)


def test_no_regimen_ticked_is_an_error_beside_the_regimens(web):
    client = web["client"]
    csrf = sign_in(client, web["tokens"]["clinician"])
    response = client.post("/", data={**PATIENT_FORM, "csrf_token": csrf})
    assert response.status_code == 422
    block = re.search(r'<fieldset id="regimens">(.*?)</fieldset>', response.text, re.S).group(1)
    assert errors_in(block) == ["regimens: none chosen; tick at least one"]


def test_a_page_prediction_is_audited_like_the_api_with_no_raw_id_or_key(web):
    client, token = web["client"], web["tokens"]["clinician"]
    csrf = sign_in(client, token)
    regimens = regimens_of(client.get("/").text)
    before = len(all_records(web["url"]))
    data = {**PATIENT_FORM, "csrf_token": csrf, "regimens": regimens, "patient_id": RAW_ID, "source": "fields"}
    response = client.post("/", data=data)
    assert response.status_code == 200, errors_in(response.text)
    page = response.text
    prediction_id = re.search(r'id="prediction-id">([^<]+)<', page).group(1)
    rows = re.findall(r'<tr data-regimen="([^"]+)">', page)
    assert len(rows) == len(regimens) and page.count("<svg") >= len(regimens)
    assert 'id="clinical-only"' not in page  # sequenced
    records = all_records(web["url"])[before:]
    assert len(records) == 1
    (record,) = records
    assert (record["endpoint"], record["status"], record["http_status"], record["prediction_id"]) == (
        PAGE_ENDPOINT, "accepted", 200, prediction_id)
    assert (record["key_id"], record["role"]) == (web["key_ids"]["clinician"], "clinician")
    assert record["patient_pseudonym"] == pseudonymise(RAW_ID)
    assert record["regimens"] == rows
    # the same outputs as the JSON API for the same request
    body = {"patient": {"age": 64, "sex": "male", "ecog": 1, "aetiology": "HBV", "albumin": 3.6, "bilirubin": 0.9,
                        "afp": 850.0, "alterations": "CTNNB1 p.S45P; TERT promoter", "tmb": 3.2},
            "regimens": regimens, "patient_id": RAW_ID}
    api = client.post("/v1/predictions", headers={"Authorization": f"Bearer {token}"}, json=body).json()
    api_record = all_records(web["url"])[-1]
    assert api_record["input_digest"] == record["input_digest"]
    assert api_record["outputs"] == record["outputs"] and api_record["explanations"] == record["explanations"]
    first = api["regimens"][0]
    assert rows[0] == first["regimen"]
    assert f'{100 * first["objective_response"]["probability"]:.0f} %' in page
    # nothing secret in the page or the trail
    for text in (page, json.dumps(records)):
        assert RAW_ID not in text and token not in text and token.split("_")[-1] not in text


def test_clinical_only_ineligible_and_pasted_json(web):
    client = web["client"]
    csrf = sign_in(client, web["tokens"]["clinician"])
    regimens = regimens_of(client.get("/").text)
    patient = {"age": 58, "sex": "female", "albumin": 3.9, "afp": 35, "patient_id": RAW_ID}
    response = client.post("/", data={"csrf_token": csrf, "regimens": regimens, "source": "json",
                                      "patient_json": json.dumps(patient), "age": "999"})
    assert response.status_code == 200, errors_in(response.text)
    page = response.text
    assert 'id="clinical-only"' in page and 'id="genomic-tests"' in page
    # a sparse record: the information block says it rests on population averages, the OOD check flags its pattern
    information = re.search(r'<div id="information"[^>]*>(.*?)</div>', page, re.S)
    assert information and "rests mostly on population averages" in information.group(1)
    assert 'data-field="bilirubin"' in information.group(1) or 'class="missing-input"' in information.group(1)
    assert 'id="ood-missingness"' in page
    if "ramucirumab" in regimens:
        assert re.search(r'<li data-regimen="ramucirumab">.*AFP', page, re.S)
        assert 'tr data-regimen="ramucirumab"' not in page
    assert RAW_ID not in page and '"albumin": 3.9' in html.unescape(page)  # the JSON shown again without the id
    # malformed JSON: the error beside the box, with line and column
    bad = client.post("/", data={"csrf_token": csrf, "regimens": regimens, "source": "json",
                                 "patient_json": '{"age": 58,\n "sex": }'})
    assert bad.status_code == 422
    (message,) = errors_in(re.search(r'<fieldset id="json">(.*?)</fieldset>', bad.text, re.S).group(1))
    assert message.startswith("patient_json: not valid JSON") and "line 2, column" in message


def test_contribution_chart_draws_signed_bars_from_one_zero_line():
    long = "Fraction of genome with copy-number alteration: 0.31 fraction"
    chart = contribution_chart([
        {"term": "albi", "text": "Liver function (ALBI): albumin 3.6 g/dL", "contribution": 0.4, "direction": "raises"},
        {"term": "fcna", "text": long, "contribution": -0.2, "direction": "lowers"},
        {"term": "not_recorded", "label": "Not recorded", "text": "Not recorded: Ascites, BMI",
         "missing": [{"field": "ascites"}, {"field": "bmi"}], "contribution": 0.1, "direction": "raises"},
    ])
    up, down, missing = chart["bars"]
    assert up["positive"] and up["x"] == chart["zero"] and not down["positive"]
    assert down["x"] + down["width"] == pytest.approx(chart["zero"])
    assert up["width"] == pytest.approx(2 * down["width"])
    assert up["label"] == "Liver function (ALBI): albumin 3.6 g/dL" and up["y"] < down["y"]
    # a long label is wrapped onto lines, never cut: the lines put back together are the whole label
    assert len(down["lines"]) == 2
    assert " ".join(line["text"] for line in down["lines"]).replace("\u00a0", " ") == long
    assert down["lines"][-1]["text"].endswith("0.31\u00a0fraction")  # a number kept with its unit
    assert missing["y"] >= down["y"] + 2 * 13 and chart["height"] > missing["y"]
    assert missing["label"] == "Not recorded: 2 inputs, listed below"


# -- end to end in headless Chromium ----------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def live_server(smoke_model, tmp_path):
    """(base URL, clinician token) of the service run by uvicorn in a thread on a free port."""
    url = f"sqlite:///{tmp_path}/e2e.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        with KeyStore(url) as store:
            token = store.create("clinician", "e2e tablet").token
        app = create_app(str(smoke_model["export_dir"]), url, alias_check=0)
        with served_in_thread(app) as base:
            yield base, token, url


def test_end_to_end_in_headless_chromium(live_server):
    chromium = require_service("RESPONSE_MODEL_TEST_CHROMIUM", "Chromium")
    from playwright.sync_api import expect, sync_playwright

    base, token, url = live_server
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            refused = []  # what the page's Content-Security-Policy blocked (none expected; Chromium's own
            # favicon request, which the page does not make, aside)

            def on_console(message) -> None:
                if "Content Security Policy" in message.text and "favicon" not in message.text:
                    refused.append(message.text)

            page.on("console", on_console)
            page.goto(base + "/")
            # the style sheet applies under the policy (allowed by its hash): the body has the page's background
            assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 248, 250)"
            page.fill("#api_key", token)
            page.click("button[type=submit]")
            expect(page.locator("#patient-form")).to_be_visible()
            assert token not in page.content()
            page.fill("#age", "64")
            page.select_option("#sex", "male")
            page.select_option("#aetiology", "HCV")
            page.fill("#albumin", "3.4")
            page.fill("#afp", "1200")
            page.fill("#alterations", "CTNNB1 p.S45P; TERT promoter")
            page.uncheck("input[name=regimens][value=sorafenib]")
            page.click("#submit-fields")
            rows = page.locator("#ranking tbody tr")
            expect(rows.first).to_be_visible()
            n_offered = page.locator("input[name=regimens]").count()
            assert rows.count() == n_offered - 1  # sorafenib unticked; AFP ≥ 400, so all eligible
            assert rows.first.locator("td").first.inner_text() == "1"
            assert page.locator("#ranking tr[data-regimen=sorafenib]").count() == 0
            # the per-patient interval with its level: in the header, each cell containing its estimate
            assert "80 % interval" in page.locator("#ranking thead").inner_text()
            expect(page.locator("#interval-method")).to_contain_text("80% per-patient interval")
            cells = page.locator("#ranking tbody td.interval")
            assert cells.count() == 2 * rows.count()
            for k in range(cells.count()):
                lower, upper = (float(cells.nth(k).get_attribute(f"data-{end}")) for end in ("lower", "upper"))
                assert 0 <= lower < upper <= 1
            expect(page.locator("#model-label")).to_have_text("research use — trained on simulated data")
            expect(page.locator("#information")).to_contain_text("population averages")  # a sparse record
            expect(page.locator("#ood-missingness")).to_be_visible()
            chart = page.locator(".regimen-chart svg.chart").first
            expect(chart).to_be_visible()
            assert chart.locator("rect").count() >= 1 and chart.bounding_box()["width"] > 100
            # the explanations read as the record: the regimen named, no model column, labels whole
            explanations = page.locator("#explanations")
            text = explanations.inner_text()
            assert not [name for name in ("regimen_", "target_", "class_", "afp_log10", "aetiology_", "…")
                        if name in text], text[:500]
            regimen_labels = page.locator(".regimen-chart h3").all_inner_texts()
            first_chart = page.locator(".regimen-chart").first
            label = page.locator("#ranking tbody tr").first.locator("td").nth(1).inner_text()
            assert label in regimen_labels[0]
            terms = first_chart.locator("text.term").all_text_contents()
            assert all("Regimen: " not in t or t == f"Regimen: {label}" for t in terms), terms
            assert any(t.startswith("Aetiology: HCV") for t in page.locator("text.term").all_text_contents())
            # every label inside its chart (wrapped, never cut), bilirubin & co. in one not-recorded term
            inside = page.evaluate("""() => [...document.querySelectorAll('svg.chart text.term')].every(t => {
                const box = t.getBBox();
                return box.x >= 0 && box.x + box.width <= t.ownerSVGElement.width.baseVal.value; })""")
            assert inside
            missing = first_chart.locator("p.not-recorded").first
            expect(missing).to_be_visible()
            assert "Total bilirubin" in missing.inner_text() and "Serum albumin" not in missing.inner_text()
            assert first_chart.locator("text.term", has_text="Not recorded:").count() >= 1
            prediction_id = page.locator("#prediction-id").inner_text()
            with AuditTrail(url) as trail:
                assert trail.get(prediction_id).endpoint == PAGE_ENDPOINT
            # a value in the wrong unit: the message beside the field, the form kept
            page.fill("#albumin", "34")
            page.click("#submit-fields")
            error = page.locator("#field-albumin .error")
            expect(error).to_be_visible()
            assert "looks like g/L" in error.inner_text()
            expect(page.locator("#albumin")).to_have_value("34")
            expect(page.locator("#afp")).to_have_value("1200")
            assert page.locator("#ranking").count() == 0
            # signing out ends the session: back to the sign-in form
            page.click("form[action='/sign-out'] button")
            expect(page.locator("#api_key")).to_be_visible()
            assert not refused, refused
        finally:
            context.close()
