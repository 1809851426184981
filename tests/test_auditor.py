"""The auditors' endpoints (service/auditor.py) and `response-model audit export`, on the smoke model."""

from __future__ import annotations

import copy
import io
import json
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from response_model.cli import main
from response_model.modeling.predict import as_bundle, load_model
from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.schema import PatientRecord
from response_model.service.app import create_app
from response_model.service.audit import EXPORT_COLUMNS, SHAP_PREFIX, AuditTrail
from response_model.service.audit.packing import pack_fields, unpack_field
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.models import EXAMPLE_PATIENT

import reference

RAW_IDS = [f"MRN-AUDITOR-TEST-{i:04d}" for i in range(6)]
ONE_REGIMEN = "atezolizumab_bevacizumab"
OTHER_CLASS_REGIMEN = "lenvatinib"
ENDPOINTS = ("/v1/predictions", "/v1/predictions:export", "/v1/predictions/{id}")


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def patient(**changes) -> dict:
    record = copy.deepcopy(EXAMPLE_PATIENT)
    record.update(changes)
    return record


def _start(url: str, model_dir) -> tuple[TestClient, dict[str, str]]:
    with KeyStore(url) as store:
        tokens = {role: store.create(role, f"test {role}").token for role in ("clinician", "auditor", "admin")}
    return TestClient(create_app(str(model_dir), url, alias_check=0)), tokens


def _predict_some(client: TestClient, token: str) -> dict:
    """Four single predictions (one for one regimen only), one rejected request, a batch of two."""
    made = {"ids": [], "patients": {}, "regimens": {}}
    requests = [
        {"patient": patient(), "patient_id": RAW_IDS[0]},
        {"patient": patient(age=71, sex="female", albumin=3.1, afp=12.0), "patient_id": RAW_IDS[1]},
        {"patient": patient(alterations=None, tmb=None), "patient_id": RAW_IDS[2]},
        {"patient": patient(age=55), "patient_id": RAW_IDS[3], "regimens": [ONE_REGIMEN]},
    ]
    for body in requests:
        answer = client.post("/v1/predictions", json=body, headers=auth(token))
        assert answer.status_code == 200, answer.text
        pid = answer.json()["prediction_id"]
        made["ids"].append(pid)
        made["patients"][pid] = body["patient"]
        made["regimens"][pid] = [it["regimen"] for it in answer.json()["regimens"]]
    bad = client.post("/v1/predictions", json={"patient": patient(albumin=35), "patient_id": RAW_IDS[4]},
                      headers=auth(token))
    assert bad.status_code == 422
    batch = client.post("/v1/predictions:batch", headers=auth(token),
                        json={"patients": [{"patient": patient(age=60 + i), "patient_id": f"{RAW_IDS[5]}-{i}"}
                                           for i in range(2)]})
    assert batch.status_code == 200 and batch.json()["n_ok"] == 2
    for item in batch.json()["results"]:
        made["ids"].append(item["prediction"]["prediction_id"])
    return made


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auditor")
    url = f"sqlite:///{folder}/trail.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, "auditor-test-pseudonym-key-0123456789")
        mp.delenv(DB_URL_ENV, raising=False)
        client, tokens = _start(url, smoke_model["export_dir"])
        with client:
            made = _predict_some(client, tokens["clinician"])
            yield {"client": client, "tokens": tokens, "url": url, "made": made, "folder": folder,
                   "model_dir": smoke_model["export_dir"]}


@pytest.fixture(scope="module")
def bundle(smoke_model):
    return as_bundle(load_model(str(smoke_model["export_dir"])))


def _all_records(client, token, **params) -> list[dict]:
    records, token_ = [], None
    while True:
        paging = {"page_size": 2, **({"page_token": token_} if token_ else {})}
        page = client.get("/v1/predictions", params={**params, **paging}, headers=auth(token))
        assert page.status_code == 200, page.text
        body = page.json()
        records += body["records"]
        token_ = body["next_page_token"]
        if token_ is None:
            return records


# -- roles -------------------------------------------------------------------------------------------


def test_role_matrix_and_refusals_are_recorded(service):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    with AuditTrail(service["url"]) as trail:
        before = trail.head_seq()
    for template in ENDPOINTS:
        path = template.format(id=made["ids"][0])
        assert client.get(path).status_code == 401, path
        denied = client.get(path, headers=auth(tokens["clinician"]))
        assert denied.status_code == 403 and "auditor" in denied.json()["detail"], path
        for role in ("auditor", "admin"):
            assert client.get(path, headers=auth(tokens[role])).status_code == 200, (path, role)
    with AuditTrail(service["url"]) as trail:
        access = trail.query(limit=100, after_seq=before)
        assert trail.verify().ok
    # every read, allowed or not, is in the hash chain: 4 per endpoint (401, 403, auditor, admin)
    assert len(access) == 4 * len(ENDPOINTS)
    assert all(not e.endpoint.startswith("POST ") for e in access)
    assert sorted(e.http_status for e in access) == sorted([401, 403, 200, 200] * len(ENDPOINTS))
    refused = [e for e in access if e.http_status == 403]
    assert {e.role for e in refused} == {"clinician"} and all(e.status == "rejected" for e in refused)
    read = [e for e in access if e.http_status == 200 and e.endpoint == "GET /v1/predictions/{prediction_id}"]
    assert {e.role for e in read} == {"auditor", "admin"}
    assert all(e.detail["prediction_id"] == made["ids"][0] for e in read)


def test_a_refused_read_names_its_endpoint_as_an_allowed_read_does(service):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    for template in ENDPOINTS:
        path = template.format(id=made["ids"][0])
        with AuditTrail(service["url"]) as trail:
            before = trail.head_seq()
        for token in (None, tokens["clinician"], tokens["auditor"]):
            client.get(path, headers=auth(token))
        with AuditTrail(service["url"]) as trail:
            access = trail.query(limit=10, after_seq=before)
        assert [e.http_status for e in access] == [401, 403, 200], path
        assert len({e.endpoint for e in access}) == 1 and access[0].endpoint.startswith("GET /v1/predictions"), path


# -- one record ----------------------------------------------------------------------------------------


def test_record_has_every_shap_value_and_base_value_of_the_model(service, bundle):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    for pid in (made["ids"][0], made["ids"][2]):  # genotyped and clinical-only
        answer = client.get(f"/v1/predictions/{pid}", headers=auth(tokens["auditor"]))
        assert answer.status_code == 200
        record = answer.json()
        assert record["prediction_id"] == pid and record["status"] == "accepted"
        assert record["model_name"] == "hcc-smoke" and record["model_version"] == bundle.metadata["model_version"]
        assert record["role"] == "clinician" and record["key_id"] and len(record["input_digest"]) == 64
        assert record["patient_pseudonym"] and record["label"] == "research use — trained on simulated data"
        assert record["integrity"]["ok"] and record["integrity"]["hash_intact"]
        assert set(record["explanations"]) == set(made["regimens"][pid])
        person = PatientRecord.model_validate(made["patients"][pid])
        for regimen, outcomes in record["explanations"].items():
            recomputed = reference.explain(bundle, person, regimen)
            assert set(outcomes) == set(recomputed)
            for outcome, stored in outcomes.items():
                frame, base = recomputed[outcome]
                expected = frame.iloc[0]
                assert set(stored["values"]) == set(expected.index)  # every feature, not only the top five
                assert stored["base_value"] == pytest.approx(base, abs=1e-6)
                for feature, value in stored["values"].items():
                    assert value == pytest.approx(expected[feature], abs=1e-6), (regimen, outcome, feature)
                total = stored["base_value"] + sum(stored["values"].values())
                assert total == pytest.approx(base + expected.sum(), abs=1e-6)
                assert stored["scale"] and len(stored["top"]) <= 6  # five terms and the not-recorded one
                for term in stored["top"]:  # each term shown: the sum of its features' stored values
                    total = sum(stored["values"][f] for f in stored["terms"][term["term"]])
                    assert term["contribution"] == pytest.approx(total, abs=1e-5)
            probability = record["outputs"]["regimens"][regimen]["objective_response"]["probability"]
            assert probability == pytest.approx(
                float(reference.scores(bundle, [person], [regimen])["p_objective_response"].iloc[0]), abs=1e-4)


def test_unknown_malformed_and_tampered_records(service):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    missing = str(uuid.uuid4())
    answer = client.get(f"/v1/predictions/{missing}", headers=auth(tokens["auditor"]))
    assert answer.status_code == 404 and missing in answer.json()["detail"]
    typed = "MRN-TYPED-IN-WRONG-PLACE-77"
    answer = client.get(f"/v1/predictions/{typed}", headers=auth(tokens["auditor"]))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "prediction_id"
    with AuditTrail(service["url"]) as trail:
        last = trail.query(limit=1000)[-2:]
        assert [e.http_status for e in last] == [404, 422]
        assert all(typed not in str(e.to_dict()) for e in trail.query(limit=1000))

    # a record edited in the database: the per-record check says so (restored afterwards)
    pid = made["ids"][1]
    engine = sa.create_engine(service["url"])
    with engine.begin() as conn:  # stored packed: the outputs are in the record's side blob
        reference = json.loads(conn.execute(sa.text("SELECT outputs FROM audit_records WHERE prediction_id = :p"),
                                            {"p": pid}).scalar_one())
        digest = reference["blob"]
        original = conn.execute(sa.text("SELECT data FROM audit_blobs WHERE sha256 = :d"), {"d": digest}).scalar_one()
        plain = json.dumps(unpack_field("outputs", reference, {digest: original}), separators=(",", ":"))
        assert '"rank":1' in plain
        edited = pack_fields({"outputs": plain.replace('"rank":1', '"rank":2', 1)})[1][1]
        conn.execute(sa.text("UPDATE audit_blobs SET data = :b WHERE sha256 = :d"), {"b": edited, "d": digest})
    try:
        record = client.get(f"/v1/predictions/{pid}", headers=auth(tokens["auditor"])).json()
        assert record["integrity"]["hash_intact"] is False and record["integrity"]["ok"] is False
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_blobs SET data = :b WHERE sha256 = :d"), {"b": original, "d": digest})
        engine.dispose()
    assert client.get(f"/v1/predictions/{pid}", headers=auth(tokens["auditor"])).json()["integrity"]["ok"]


# -- listing, filters, paging ----------------------------------------------------------------------------


def test_paging_covers_every_prediction_record_exactly_once(service):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    records = _all_records(client, tokens["auditor"])
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs))  # oldest first, no repeats
    with AuditTrail(service["url"]) as trail:
        expected = [e.seq for e in trail.query(limit=1000) if e.endpoint.startswith("POST ")]
    assert seqs == expected  # no record skipped, no access record listed
    assert {r["prediction_id"] for r in records if r["prediction_id"]} >= set(made["ids"])
    assert all(r["href"] == f"/v1/predictions/{r['prediction_id']}" for r in records if r["prediction_id"])

    # the cursor is stable: a prediction made between two pages neither shifts nor repeats a record
    first = client.get("/v1/predictions", params={"page_size": 3}, headers=auth(tokens["auditor"])).json()
    new = client.post("/v1/predictions", json={"patient": patient(age=80)}, headers=auth(tokens["clinician"]))
    rest = []
    token = first["next_page_token"]
    while token:
        page = client.get("/v1/predictions", params={"page_size": 3, "page_token": token},
                          headers=auth(tokens["auditor"])).json()
        rest += page["records"]
        token = page["next_page_token"]
    both = [r["seq"] for r in first["records"] + rest]
    assert both == expected + [both[-1]] and len(set(both)) == len(both)
    assert rest[-1]["prediction_id"] == new.json()["prediction_id"]


def test_filters(service):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    token = tokens["auditor"]
    everything = _all_records(client, token)
    version = everything[0]["model_version"]
    assert len(_all_records(client, token, model_version=version)) == len(everything)
    assert _all_records(client, token, model_version="999") == []

    rejected = _all_records(client, token, status="rejected")
    assert rejected and all(r["status"] == "rejected" and r["prediction_id"] is None for r in rejected)
    accepted = _all_records(client, token, status="accepted")
    assert len(accepted) + len(rejected) == len(everything)

    # regimen: the one-regimen prediction (a checkpoint-inhibitor regimen) is not among a TKI's records
    tki = {r["prediction_id"] for r in _all_records(client, token, regimen=OTHER_CLASS_REGIMEN)}
    atezo = {r["prediction_id"] for r in _all_records(client, token, regimen=ONE_REGIMEN)}
    assert made["ids"][3] in atezo and made["ids"][3] not in tki
    assert tki == {r["prediction_id"] for r in accepted if OTHER_CLASS_REGIMEN in (r["regimens"] or [])}

    # time window: from (inclusive) the second record's time to (exclusive) the fifth's
    times = [r["time"] for r in everything]
    window = _all_records(client, token, **{"from": times[1], "to": times[4]})
    assert [r["seq"] for r in window] == [r["seq"] for r in everything if times[1] <= r["time"] < times[4]]
    assert 1 <= len(window) <= 3
    shifted = times[1].replace("Z", "+00:00")
    in_paris = pd.Timestamp(shifted).tz_convert("Europe/Paris").isoformat()
    assert [r["seq"] for r in _all_records(client, token, **{"from": in_paris, "to": times[4]})] == \
        [r["seq"] for r in window]
    assert _all_records(client, token, **{"from": "2000-01-01", "to": "2000-01-02"}) == []


@pytest.mark.parametrize("params, field, words", [
    ({"from": "yesterday"}, "from", "ISO 8601"),
    ({"from": "2026-11-27T09:00:00"}, "from", "no time zone"),
    ({"from": "2026-11-27", "to": "2026-11-26"}, "to", "not after"),
    ({"regimen": "atezolizumab-bev"}, "regimen", "atezolizumab_bevacizumab"),
    ({"status": "ok"}, "status", "accepted"),
    ({"page_size": "0"}, "page_size", "1 to 1000"),
    ({"page_token": "abc"}, "page_token", "next_page_token"),
])
def test_bad_parameters_get_clear_422(service, params, field, words):
    client, tokens = service["client"], service["tokens"]
    answer = client.get("/v1/predictions", params=params, headers=auth(tokens["auditor"]))
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert errors[0]["field"] == field and words in errors[0]["message"]
    # a clinician learns nothing about the parameters: authentication comes first
    assert client.get("/v1/predictions", params=params, headers=auth(tokens["clinician"])).status_code == 403
    if field not in ("page_size", "page_token"):
        export = client.get("/v1/predictions:export", params=params, headers=auth(tokens["auditor"]))
        assert export.status_code == 422 and export.json()["errors"][0]["field"] == field
    bad_format = client.get("/v1/predictions:export", params={"format": "xlsx"}, headers=auth(tokens["auditor"]))
    assert bad_format.status_code == 422 and "csv" in bad_format.json()["errors"][0]["message"]


# -- export ------------------------------------------------------------------------------------------------


def _export(client, token, fmt, **params) -> bytes:
    answer = client.get("/v1/predictions:export", params={**params, "format": fmt}, headers=auth(token))
    assert answer.status_code == 200, answer.text
    return answer.content


def test_export_csv_and_parquet_are_flat_tables_with_the_documented_columns(service, bundle):
    client, tokens, made = service["client"], service["tokens"], service["made"]
    token = tokens["auditor"]
    csv = pd.read_csv(io.BytesIO(_export(client, token, "csv")))
    parquet = pd.read_parquet(io.BytesIO(_export(client, token, "parquet")))
    for table in (csv, parquet):
        assert list(table.columns[:len(EXPORT_COLUMNS)]) == list(EXPORT_COLUMNS)
        shap_columns = [c for c in table.columns if c.startswith(SHAP_PREFIX)]
        assert len(shap_columns) == len(table.columns) - len(EXPORT_COLUMNS) > 10
        assert set(c[len(SHAP_PREFIX):] for c in shap_columns) <= set(bundle.feature_names)
        accepted = table[table["status"] == "accepted"]
        # one row per prediction × regimen × outcome; a rejected request is one row without regimen
        for pid in made["ids"][:4]:
            rows = accepted[accepted["prediction_id"] == pid]
            assert len(rows) == 2 * len(made["regimens"][pid])
            assert set(rows["outcome"]) == {"objective_response", "primary_resistance"}
        rejected = table[table["status"] == "rejected"]
        assert len(rejected) >= 1 and rejected["regimen"].isna().all() and rejected["detail"].notna().all()
    assert str(parquet["time"].dtype).startswith("datetime64") and str(parquet["time"].dt.tz) == "UTC"
    assert parquet["rank"].dtype == "Int64" and parquet["seq"].dtype == "int64"
    # same numbers in both formats
    key = ["seq", "regimen", "outcome"]
    merged = csv.merge(parquet, on=key, suffixes=("_csv", "_pq"))
    assert len(merged) == len(csv) == len(parquet)
    assert np.allclose(merged["probability_csv"], merged["probability_pq"], equal_nan=True)

    # one row against the stored record and the model: base_value + Σ shap = the model's output
    pid = made["ids"][0]
    record = client.get(f"/v1/predictions/{pid}", headers=auth(token)).json()
    person = PatientRecord.model_validate(made["patients"][pid])
    for regimen in (ONE_REGIMEN, OTHER_CLASS_REGIMEN):
        for outcome in ("objective_response", "primary_resistance"):
            row = parquet[(parquet["prediction_id"] == pid) & (parquet["regimen"] == regimen)
                          & (parquet["outcome"] == outcome)].iloc[0]
            stored = record["explanations"][regimen][outcome]
            assert row["base_value"] == pytest.approx(stored["base_value"])
            assert row["probability"] == record["outputs"]["regimens"][regimen][outcome]["probability"]
            values = row[[SHAP_PREFIX + f for f in stored["values"]]].to_numpy(dtype=float)
            assert np.allclose(values, list(stored["values"].values()))
            others = [c for c in parquet.columns if c.startswith(SHAP_PREFIX) and c[5:] not in stored["values"]]
            assert row[others].isna().all()  # not an input of this model: empty, not 0
            frame, base = reference.explain(bundle, person, regimen)[outcome]
            assert row["base_value"] + np.nansum(values) == pytest.approx(base + frame.iloc[0].sum(), abs=1e-6)
            assert row["explanation_scale"] == stored["scale"]

    # the filter applies to the export too
    only = pd.read_csv(io.BytesIO(_export(client, token, "csv", regimen=ONE_REGIMEN, status="accepted")))
    assert set(only["status"]) == {"accepted"} and made["ids"][3] in set(only["prediction_id"])
    assert pd.read_csv(io.BytesIO(_export(client, token, "csv", model_version="999"))).empty


def test_cli_export_equals_the_endpoint_export(service, tmp_path, monkeypatch):
    client, tokens = service["client"], service["tokens"]
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "auditor-test-pseudonym-key-0123456789")
    for fmt, params in (("csv", {}), ("parquet", {"regimen": OTHER_CLASS_REGIMEN}), ("csv", {"status": "rejected"})):
        api = _export(client, tokens["auditor"], fmt, **params)
        out = tmp_path / f"export.{fmt}"
        args = ["audit", "export", "--db", service["url"], "--format", fmt, "--out", str(out)]
        for name, value in params.items():
            args += [f"--{name.replace('_', '-')}", value]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        if fmt == "csv":
            assert out.read_bytes() == api
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(io.BytesIO(api)))
    with AuditTrail(service["url"]) as trail:
        cli = [e for e in trail.query(limit=1000) if e.endpoint == "CLI audit export"]
        assert len(cli) == 3 and cli[1].detail["filter"] == {"regimen": OTHER_CLASS_REGIMEN}
        assert trail.verify().ok
    bad = CliRunner().invoke(main, ["audit", "export", "--db", service["url"], "--from", "2026-13-01",
                                    "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "from: '2026-13-01' is not an ISO 8601" in bad.output


def test_no_raw_patient_id_anywhere(service):
    client, tokens = service["client"], service["tokens"]
    token = tokens["admin"]
    texts = [client.get("/v1/predictions", params={"page_size": 1000}, headers=auth(token)).text,
             _export(client, token, "csv").decode("utf-8")]
    for record in client.get("/v1/predictions", params={"page_size": 1000}, headers=auth(token)).json()["records"]:
        if record["prediction_id"]:
            texts.append(client.get(f"/v1/predictions/{record['prediction_id']}", headers=auth(token)).text)
    parquet = pd.read_parquet(io.BytesIO(_export(client, token, "parquet")))
    texts.append(parquet.astype(str).to_csv())
    engine = sa.create_engine(service["url"])
    with engine.connect() as conn:
        texts += [str(tuple(row)) for row in conn.execute(sa.text("SELECT * FROM audit_records"))]
    engine.dispose()
    for raw in RAW_IDS:
        assert not any(raw in text for text in texts), raw
    assert any("MRN" not in t and "patient_pseudonym" in t for t in texts)


def test_openapi_documents_the_auditors_endpoints(service):
    schema = service["client"].get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/v1/predictions"]) == {"get", "post"} and "post" in paths["/v1/predictions:batch"]
    export = paths["/v1/predictions:export"]["get"]
    assert {p["name"] for p in export["parameters"]} >= {"from", "to", "model_version", "regimen", "format"}
    assert "shap.<feature>" in export["responses"]["200"]["description"]
    record = schema["components"]["schemas"]["PredictionRecord"]
    assert record["examples"][0]["explanations"]
    assert paths["/v1/predictions/{prediction_id}"]["get"]["tags"] == ["audit"]


# -- PostgreSQL ------------------------------------------------------------------------------------------


def test_postgresql_listing_and_export(smoke_model, monkeypatch):
    from conftest import require_service

    base = require_service("RESPONSE_MODEL_TEST_POSTGRES_URL", "PostgreSQL server")
    schema = f"auditor_{uuid.uuid4().hex[:8]}"  # a private schema: other tests use the same database
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    try:
        monkeypatch.setenv(PSEUDONYM_KEY_ENV, "auditor-test-pseudonym-key-0123456789")
        client, tokens = _start(url, smoke_model["export_dir"])
        with client:
            made = _predict_some(client, tokens["clinician"])
            records = _all_records(client, tokens["auditor"])
            assert {r["prediction_id"] for r in records if r["prediction_id"]} == set(made["ids"])
            tki = {r["prediction_id"] for r in _all_records(client, tokens["auditor"], regimen=OTHER_CLASS_REGIMEN)}
            assert made["ids"][3] not in tki and made["ids"][0] in tki
            table = pd.read_parquet(io.BytesIO(_export(client, tokens["auditor"], "parquet")))
            assert set(table["prediction_id"].dropna()) == set(made["ids"])
            record = client.get(f"/v1/predictions/{made['ids'][0]}", headers=auth(tokens["auditor"])).json()
            assert record["integrity"]["ok"]
        with AuditTrail(url) as trail:
            assert trail.verify().ok
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
