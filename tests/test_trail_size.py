"""The audit trail's size and its readers' robustness (issue 14 points 3 and 9).

An accepted one-patient prediction is stored packed (audit/packing.py: a binary side blob in
``audit_blobs``) and reads back exactly as the plain form did; records written in the plain form and
in the packed forms before (``zlib-json/1``, ``packed-f64/3``) still read; a changed side blob is
reported; no stored record, however deep or damaged, breaks a page, a record read or an export.
"""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.audit import AuditTrail, TrailFilter, audit_records, start_export, stored_json
from response_model.service.audit import chain as chain_module
from response_model.service.audit.packing import pack_fields, unpack_field
from response_model.service.audit.records import audit_blobs
from response_model.service.keys import KeyStore
from response_model.service.models import EXAMPLE_PATIENT

KEY = "trail-size-test-pseudonym-key-0123456789"
# The smoke model (13 regimens × 2 outcomes × 93 SHAP values): ~190 KB plain, ~14.1 KB in packed-f64/3,
# ~6.7 KB in packed-f64/4. Counted: every column of the record's row and of its side blob's row (a
# blob is the record's own, shared only by identical records: nothing is amortised).
MAX_RECORD_BYTES = 8_000
VARYING = {"seq", "time", "prediction_id", "prev_hash", "hash", "href", "integrity"}


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    """(client, tokens by role, trail url) of the app on the exported smoke model."""
    folder = tmp_path_factory.mktemp("trail-size")
    url = f"sqlite:///{folder}/service.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, KEY)
        with KeyStore(url) as store:
            tokens = {role: store.create(role, "trail size test").token for role in ("clinician", "auditor")}
        from response_model.service.app import create_app

        with TestClient(create_app(str(smoke_model["export_dir"]), url), raise_server_exceptions=False) as client:
            yield client, tokens, url


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stored_bytes(url: str, prediction_id: str) -> int:
    """The bytes of every stored column of one record (text as UTF-8) and of the side blob it refers to."""
    with sa.create_engine(url).connect() as conn:
        row = conn.execute(sa.select(audit_records).where(audit_records.c.prediction_id == prediction_id)).one()
        digests = {json.loads(row.explanations).get("blob"), json.loads(row.outputs).get("blob")} - {None}
        blobs = conn.execute(sa.select(audit_blobs).where(audit_blobs.c.sha256.in_(digests))).all()
    assert len(blobs) == len(digests)
    size = sum(len(str(v).encode("utf-8")) for v in row._mapping.values() if v is not None)
    return size + sum(len(b.sha256) + len(b.data) for b in blobs)


def _blob(url: str, prediction_id: str) -> tuple[dict, bytes]:
    """(the parsed explanations reference, its side blob's bytes) of a stored record."""
    with sa.create_engine(url).connect() as conn:
        text = conn.execute(sa.select(audit_records.c.explanations)
                            .where(audit_records.c.prediction_id == prediction_id)).scalar_one()
        reference = json.loads(text)
        data = conn.execute(sa.select(audit_blobs.c.data).where(audit_blobs.c.sha256 == reference["blob"])).scalar_one()
    return reference, data


def _plain_record(url: str, prediction_id: str) -> dict:
    """The caller's record of a stored prediction again, with outputs and explanations as the service gave them."""
    with sa.create_engine(url).connect() as conn:
        row = conn.execute(sa.select(audit_records).where(audit_records.c.prediction_id == prediction_id)).one()
    names = ("endpoint", "status", "http_status", "key_id", "role", "model_name", "model_version", "input_digest")
    record = {name: getattr(row, name) for name in names} | {"patient_id": "MRN-SIZE-1"}
    record["regimens"] = json.loads(row.regimens)
    reference, data = _blob(url, prediction_id)
    record["outputs"] = unpack_field("outputs", json.loads(row.outputs), {reference["blob"]: data})
    record["explanations"] = unpack_field("explanations", reference, {reference["blob"]: data})
    return record


def test_an_accepted_prediction_is_stored_small_and_reads_exactly_as_before(service, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    client, tokens, url = service
    answer = client.post("/v1/predictions", json={"patient": EXAMPLE_PATIENT, "patient_id": "MRN-SIZE-1"},
                         headers=_auth(tokens["clinician"]))
    assert answer.status_code == 200
    served_id = answer.json()["prediction_id"]
    assert _stored_bytes(url, served_id) <= MAX_RECORD_BYTES
    record = _plain_record(url, served_id)
    with AuditTrail(url) as trail:
        with monkeypatch.context() as mp:  # the same record written as before packing, and as packed-f64/3
            mp.setattr(chain_module, "PACKED_FIELDS", ())
            old = trail.append({**record, "prediction_id": "00000000-0000-4000-8000-000000000001"})
            v3 = trail.append({**record, **_packed_v3(record), "prediction_id": "00000000-0000-4000-8000-000000000003"})
        new = trail.append({**record, "prediction_id": "00000000-0000-4000-8000-000000000002"})
        assert trail.verify().ok
    assert _stored_bytes(url, old.prediction_id) > 20 * _stored_bytes(url, new.prediction_id)
    assert _stored_bytes(url, v3.prediction_id) > 1.8 * _stored_bytes(url, new.prediction_id)  # 14.1 KB then
    for entry in (new, trail.get(new.prediction_id), v3, trail.get(v3.prediction_id)):
        assert entry.outputs == old.outputs and entry.explanations == old.explanations
    ids = (old.prediction_id, new.prediction_id, served_id, v3.prediction_id)
    reads = [client.get(f"/v1/predictions/{i}", headers=_auth(tokens["auditor"])) for i in ids]
    assert [r.status_code for r in reads] == [200] * 4
    bodies = [{k: v for k, v in r.json().items() if k not in VARYING} for r in reads]
    texts = [json.dumps(b, ensure_ascii=False) for b in bodies]  # key order kept: byte-equal answers
    for a, b in zip(bodies[0].items(), bodies[2].items()):
        assert a == b, (a[0], str(a[1])[:300], str(b[1])[:300])
    assert texts[0] == texts[1] == texts[2] == texts[3]
    values = bodies[0]["explanations"][record["regimens"][0]]["objective_response"]["values"]
    assert len(values) > 50 and all(isinstance(v, float) for v in values.values())
    with AuditTrail(url) as trail:
        frame = start_export(trail, TrailFilter()).frame()
    rows = [frame[frame.prediction_id == i].drop(columns=["seq", "time", "prediction_id", "record_hash"])
            .reset_index(drop=True) for i in ids]
    assert len(rows[0]) == 2 * len(record["regimens"])
    assert all(rows[0].equals(other) for other in rows[1:])


def _squeeze(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def _packed_v3(record: dict) -> dict:
    """The record's outputs and explanations in the inline formats before side blobs (``zlib-json/1``,
    ``packed-f64/3``), written as that version of audit/packing.py wrote them."""
    compact = json.loads(stored_json(record["explanations"]))
    where, floats = [], []
    for regimen, outcomes in compact["regimens"].items():
        for outcome, explanation in outcomes.items():
            where.append([regimen, outcome, len(explanation["values"])])
            floats.extend(explanation.pop("values"))
    rest = stored_json({"value": compact, "values_at": where}).encode("utf-8")
    return {"outputs": {"format": "zlib-json/1", "json": _squeeze(stored_json(record["outputs"]).encode("utf-8"))},
            "explanations": {"format": "packed-f64/3", "json": _squeeze(rest),
                             "values": _squeeze(np.asarray(floats, dtype="<f8").tobytes())}}


def test_a_changed_or_missing_side_blob_is_reported(service, tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    client, tokens, url = service
    answer = client.post("/v1/predictions", json={"patient": EXAMPLE_PATIENT, "patient_id": "MRN-SIZE-2"},
                         headers=_auth(tokens["clinician"]))
    record = _plain_record(url, answer.json()["prediction_id"])
    with AuditTrail(f"sqlite:///{tmp_path}/trail.db", witness=tmp_path / "witness.jsonl") as trail:
        trail.append({**record, "prediction_id": "p1"})
        trail.append({"endpoint": "GET /v1/predictions", "status": "accepted", "http_status": 200})
        with trail.engine.connect() as conn:
            digest = json.loads(conn.execute(sa.select(audit_records.c.explanations)
                                             .where(audit_records.c.seq == 1)).scalar_one())["blob"]
        changed = json.loads(stored_json(record["explanations"]))
        changed["regimens"][record["regimens"][0]]["objective_response"]["base_value"] += 0.5
        forged = pack_fields({"outputs": stored_json(record["outputs"]), "explanations": stored_json(changed)})[1][1]
        assert trail.verify().ok and trail.check_record(1).ok
        with trail.engine.begin() as conn:  # an insider re-packs an edited explanation under the old key
            conn.execute(audit_blobs.update().where(audit_blobs.c.sha256 == digest), {"data": forged})
        result = trail.verify()
        assert (result.ok, result.case, result.first_bad) == (False, "edited", 1)
        assert "side blob" in result.reason and "changed" in result.reason
        assert trail.check_record(1).hash_intact is False
        read = trail.get("p1")
        assert read.explanations["unreadable"].startswith("the side blob") and "changed" in read.outputs["unreadable"]
        with trail.engine.begin() as conn:  # ... or deletes it
            conn.execute(audit_blobs.delete().where(audit_blobs.c.sha256 == digest))
        result = trail.verify()
        assert (result.ok, result.case, result.first_bad) == (False, "edited", 1) and "missing" in result.reason
        assert trail.check_record(1).hash_intact is False


def _raw_row(seq: int, prediction_id: str, **texts) -> dict:
    """A stored row written behind the trail's back (hashes made up): what an insider or an old bug left."""
    row = {"seq": seq, "time": "2026-12-01T00:00:00.000000Z", "key_id": "k", "role": "clinician",
           "endpoint": "POST /v1/predictions", "status": "rejected", "http_status": 422, "model_name": None,
           "model_version": None, "input_digest": None, "patient_pseudonym": None, "prediction_id": prediction_id,
           "regimens": None, "outputs": None, "explanations": None, "detail": None,
           "prev_hash": "0" * 64, "hash": "f" * 64}
    row.update(texts)
    return row


def test_readers_tolerate_any_stored_record(service, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    client, tokens, url = service
    with AuditTrail(url) as trail:
        seq = trail.head_seq()
    deep = '{"errors":[{"field":"x","value":' + "[" * 500 + "]" * 500 + "}]}"
    deeper = "[" * 5000 + "]" * 5000
    ids = [f"00000000-0000-4000-9000-00000000000{k}" for k in range(5)]
    rows = [_raw_row(seq + 1, ids[0], detail=deep), _raw_row(seq + 2, ids[1], detail=deeper),
            _raw_row(seq + 3, ids[2], detail="{not json"),
            _raw_row(seq + 4, ids[3], status="accepted", http_status=200, regimens='["sorafenib"]',
                     outputs='{"format":"zlib-json/1","json":"bm90IHpsaWI="}',
                     explanations='{"format":"packed-f64/2","json":"AAAA","values":"AAAA"}'),
            _raw_row(seq + 5, ids[4], status="accepted", http_status=200, regimens='{"a":1}',
                     outputs='{"regimens":{"sorafenib":[1,2]}}', explanations='{"sorafenib":7}')]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(audit_records.insert(), rows)
    engine.dispose()
    auditor = _auth(tokens["auditor"])
    page = client.get("/v1/predictions", params={"page_token": str(seq), "page_size": "10"}, headers=auditor)
    assert page.status_code == 200, page.text[:500]
    listed = {r["prediction_id"]: r for r in page.json()["records"]}
    assert set(ids) <= set(listed)
    for prediction_id in ids:
        read = client.get(f"/v1/predictions/{prediction_id}", headers=auditor)
        assert read.status_code == 200, (prediction_id, read.text[:300])
        assert read.json()["integrity"]["ok"] is False  # and the made-up hashes are seen
    deep_read = client.get(f"/v1/predictions/{ids[0]}", headers=auditor)
    deep_detail = deep_read.json()["detail"]
    assert isinstance(deep_detail, dict), deep_read.text[:400]
    assert deep_detail["unreadable"].startswith("nested more than") and deep_detail["length"] == len(deep)
    export = client.get("/v1/predictions:export", params={"format": "csv"}, headers=auditor)
    assert export.status_code == 200, export.text[:300]
    missing = [i for i in ids if i not in export.text]
    assert missing == [], (missing, export.text[:200])


def test_a_rejected_value_is_stored_bounded(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    huge = "GENE" * 50_000
    nested: list = []
    for _ in range(500):
        nested = [nested]
    errors = [{"field": "alterations", "value": huge, "message": f"unknown gene {huge}"},
              {"field": "age", "value": 150, "message": "age: 150 is above 120"},
              {"field": "patient.deep", "value": nested, "message": "nested"},
              {"field": "count", "value": 10**5000, "message": "too many digits"}]
    errors += [{"field": f"regimens.{k}", "value": f"r{k}", "message": "unknown"} for k in range(200)]
    record = {"endpoint": "POST /v1/predictions", "status": "rejected", "http_status": 422,
              "detail": {"errors": errors}}
    with AuditTrail(f"sqlite:///{tmp_path}/audit.db") as trail:
        entry = trail.append(record)
        with trail.engine.connect() as conn:
            stored = conn.execute(sa.select(audit_records.c.detail)).scalar_one()
    assert len(stored) < 20_000  # from a detail of more than 400 KB
    kept = entry.detail["errors"]
    big = kept[0]["value"]
    assert big["type"] == "string" and big["length"] == len(huge) and big["preview"] == huge[:24]
    assert big["sha256"] == hashlib.sha256(json.dumps(huge).encode()).hexdigest()
    assert kept[0]["message"].endswith(f"[{len(huge) + 13} characters, sha256 "
                                       f"{hashlib.sha256(json.dumps(f'unknown gene {huge}').encode()).hexdigest()}]")
    assert kept[1] == errors[1]  # a short scalar is kept as it is
    assert kept[2]["value"]["type"] == "array" and kept[2]["value"]["sha256"] is not None
    assert kept[3]["value"]["type"] == "integer" and kept[3]["value"]["length"] == 5001
    assert len(kept) == 51 and kept[-1] == {"truncated": f"{len(errors) - 50} more items left out"}


def test_a_summary_never_previews_the_raw_patient_id(tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    raw = "MRN-" + "7" * 80  # an over-long id, echoed in the refused value
    record = {"endpoint": "POST /v1/predictions", "status": "rejected", "http_status": 422, "patient_id": "MRN-X1",
              "detail": {"errors": [{"field": "patient_id", "value": raw + "!", "message": "too long"}]}}
    with AuditTrail(f"sqlite:///{tmp_path}/audit.db") as trail:
        shown = trail.append(record).detail["errors"][0]["value"]
        hidden = trail.append({**record, "patient_id": raw}).detail["errors"][0]["value"]
    assert shown["preview"] == (raw + "!")[:24] and hidden["preview"] is None
    assert hidden["length"] == len(raw) + 1 and hidden["sha256"] == shown["sha256"]


def _same(a, b) -> bool:
    """Equal values of equal types, keys in the same order, floats bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.hex() == b.hex() if isinstance(a, float) else a == b


def _entry(term: str, contribution, **changes) -> dict:
    entry = {"contribution": contribution, "direction": "raises", "display": "v", "fields": [term],
             "label": term.upper(),
             "missing": None, "scale": "s", "term": term, "tests": None, "text": f"{term.upper()}: v"}
    return entry | changes


def test_packing_is_lossless_off_the_usual_path():
    names = ["a", "b", "c"]
    missing = [{"field": "x", "label": "X"}, {"field": "y", "label": "Y"}]
    explanation = {"base_value": -0.0, "features": 0, "scale": "s", "terms": {"t": ["a", "b"], "u": ["c"]},
                   "top": [_entry("a", 0.5), _entry("b", -0.0, text="other"),
                           _entry("n", 1.5, missing=missing, display="X, Y", fields=["x", "y"], text="N: X, Y")],
                   "values": [0.0, -0.0, 1e-300]}
    odd = {"features": 0, "terms": {"t": ["a", "zz"]}, "top": [_entry("a", 1)], "values": [1, 2.5, None]}
    regimens = {f"r{k}": {"objective_response": json.loads(json.dumps(explanation)) | {"values": [k * 0.1, -0.0, 0.5]},
                          "primary_resistance": explanation} for k in range(300)}  # > 256 rows: wider indices
    regimens["odd"] = {"objective_response": odd, "primary_resistance": {**explanation, "values": [0.25] * 5}}
    explanations = {"features": [names], "format": "feature-lists/1", "regimens": regimens}
    outputs = {"big": 10**30, "text": "é\u2028", "regimens": {"r0": {"probability": 0.1}}}
    for texts in ({"outputs": stored_json(outputs), "explanations": stored_json(explanations)},
                  {"explanations": stored_json({"r": {"o": {"values": {"a": 1.0}}}})},  # the layout before compact
                  {"outputs": stored_json(outputs)}):
        refs, (digest, data) = pack_fields(texts)
        for name, text in texts.items():
            assert _same(unpack_field(name, json.loads(refs[name]), {digest: data}), json.loads(text)), name
    assert pack_fields({"outputs": None, "explanations": None}) == ({"outputs": None, "explanations": None}, None)


def test_side_blobs_on_postgresql(tmp_path, monkeypatch):
    from conftest import require_service

    url = require_service("RESPONSE_MODEL_TEST_POSTGRES_URL", "PostgreSQL server (e.g. postgresql+psycopg://user@host/db)")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in ("audit_records", "audit_blobs", "audit_checkpoints"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    engine.dispose()
    values = [0.1 * k for k in range(5)] + [-0.0, 0.0, 1e-300]
    compact = {"features": [[f"f{k}" for k in range(8)]], "format": "feature-lists/1",
               "regimens": {r: {o: {"base_value": -1.5, "features": 0, "scale": "s", "terms": {"t": ["f0", "f7"]},
                                    "top": [_entry("t", 0.25)], "values": values}
                                for o in ("objective_response", "primary_resistance")} for r in ("a", "b")}}
    record = {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "regimens": ["a", "b"],
              "outputs": {"regimens": {"a": {"probability": 0.25}}, "big": 10**30}, "explanations": compact}
    with AuditTrail(url, witness=tmp_path / "witness.jsonl") as trail:
        with monkeypatch.context() as mp:
            mp.setattr(chain_module, "PACKED_FIELDS", ())
            plain = trail.append({**record, "prediction_id": "plain"})
        trail.append({**record, "prediction_id": "packed"})
        trail.append({**record, "prediction_id": "again"})  # the same blob: stored once
        packed = trail.get("packed")
        assert _same(packed.outputs, plain.outputs) and _same(packed.explanations, plain.explanations)
        assert trail.verify().ok
        with trail.engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit_blobs)).scalar_one() == 1
            conn.execute(audit_blobs.update().values(data=b"x"))
        result = trail.verify()
        assert (result.ok, result.case, result.first_bad) == (False, "edited", 2)
