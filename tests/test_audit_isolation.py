"""Isolation of the audit trail's group commit (issue 14 point 2): a record that cannot be stored fails alone.

Directly against :class:`AuditTrail` (SQLite, and PostgreSQL when ``RESPONSE_MODEL_TEST_POSTGRES_URL``
is set) and through the app with concurrent clients: every valid request is answered 200 and
audited; the poisoned one gets its own answer and its own record.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.audit import AuditError, AuditTrail
from response_model.service.audit.chain import stored_content
from response_model.service.keys import KeyStore
from response_model.service.models import EXAMPLE_PATIENT

KEY = "isolation-test-pseudonym-key-0123456789"
SURROGATE = "\ud800"


def _record(k: int, **changes) -> dict:
    record = {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "key_id": "key01",
              "role": "clinician", "prediction_id": f"valid-{k:03d}", "patient_id": f"MRN-ISO-{k:03d}",
              "outputs": {"k": k}}
    record.update(changes)
    return record


@pytest.fixture(params=["sqlite", "postgresql"])
def trail_url(request, tmp_path, monkeypatch):
    """An empty trail's URL: a SQLite file, or the PostgreSQL server of the environment (else skipped)."""
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"
    url = os.environ.get("RESPONSE_MODEL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RESPONSE_MODEL_TEST_POSTGRES_URL is not set")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS audit_records")
    engine.dispose()
    return url


def test_unstorable_text_is_refused_before_it_joins_a_group(trail_url):
    with AuditTrail(trail_url) as trail:
        for field, record in (("endpoint", _record(1, endpoint=f"POST /v1/predictions{SURROGATE}")),
                              ("patient_id", _record(2, patient_id=f"MRN{SURROGATE}")),
                              ("outputs", _record(3, outputs={"gene": f"PIK3CA{SURROGATE}"})),
                              ("model_name", _record(4, model_name="hcc\x00smoke"))):
            with pytest.raises(AuditError, match=field):
                trail.append(record)
        # a rejected value with a lone surrogate is stored, escaped, in the bounded detail
        entry = trail.append(_record(5, status="rejected", http_status=422, outputs=None, detail={"errors": [
            {"field": "alterations.0.gene", "value": f"PIK{SURROGATE}3CA", "message": "unknown gene"}]}))
        assert entry.detail["errors"][0]["value"]["preview"] == "PIK\\ud8003CA"
        assert trail.count() == 1 and trail.verify().ok


def _form_group(trail: AuditTrail, contents: list[list[dict]]) -> tuple[dict[int, object], dict[int, BaseException]]:
    """Submit every list of ``contents`` from its own thread so that all of them wait in one group,
    then let that group be written; returns (stored rows, errors) by thread."""
    group = trail._group
    with group._lock:  # as if a writer were busy: every caller below queues as a follower
        group._writing = True
    rows, errors = {}, {}

    def worker(t: int) -> None:
        try:
            rows[t] = group.submit(contents[t])
        except BaseException as error:  # noqa: BLE001 - recorded for the assertions
            errors[t] = error

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(len(contents))]
    for thread in pool:
        thread.start()
    deadline = time.monotonic() + 30
    while len(group._waiting) < len(contents) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(group._waiting) == len(contents)
    with group._lock:  # the busy writer is done: it hands over to the first waiting caller
        group._waiting[0].lead = True
        group._waiting[0].done.set()
    for thread in pool:
        thread.join(30)
    return rows, errors


def test_a_record_the_database_refuses_fails_only_its_own_caller(trail_url):
    with AuditTrail(trail_url) as trail:
        contents = [[stored_content(_record(k))] for k in range(8)]
        # a content that bypassed the checks: the database (its driver) refuses the text
        poisoned = dict(stored_content(_record(99)), endpoint=f"POST /v1/predictions{SURROGATE}")
        contents.insert(3, [poisoned])
        rows, errors = _form_group(trail, contents)
        assert set(errors) == {3}, errors
        assert sorted(rows) == [t for t in range(9) if t != 3]
        assert trail.count() == 8
        assert trail.verify().ok
        stored = {e.prediction_id for e in trail.query(limit=100)}
    assert stored == {f"valid-{k:03d}" for k in range(8)}


# -- through the app ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_client(smoke_model, tmp_path_factory):
    """(client, clinician token, trail url) of the app on the exported smoke model."""
    folder = tmp_path_factory.mktemp("isolation")
    url = f"sqlite:///{folder}/service.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, KEY)
        with KeyStore(url) as store:
            token = store.create("clinician", "isolation test").token
        from response_model.service.app import create_app

        app = create_app(str(smoke_model["export_dir"]), url)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, token, url


def _poisoned_bodies() -> list[bytes]:
    """Bodies holding lone surrogates, in the patient id and a gene symbol (JSON escapes) and as raw
    bytes (FastAPI's own 422, whose detail holds the refused value: it once failed the whole group)."""
    in_id = json.dumps({"patient": EXAMPLE_PATIENT, "patient_id": f"MRN-ISO{SURROGATE}"}).encode()
    patient = copy.deepcopy(EXAMPLE_PATIENT)
    patient["alterations"][0]["gene"] = "TP5\udc803"
    in_gene = json.dumps({"patient": patient}).encode()
    raw = json.dumps({"patient": EXAMPLE_PATIENT, "patient_id": "MRN-RAW-X"}).encode().replace(b"-X", b"-\xed\xa0\x80")
    return [in_id, in_gene, raw]


def test_poisoned_requests_among_concurrent_valid_ones(app_client, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    client, token, url = app_client
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with AuditTrail(url) as trail:
        before = trail.head_seq()
    valid, poisoned = [], []
    bodies = _poisoned_bodies()

    def good(t: int) -> None:
        for k in range(3):
            body = {"patient": EXAMPLE_PATIENT, "patient_id": f"MRN-ISO-{t}-{k}"}
            valid.append(client.post("/v1/predictions", json=body, headers=headers))

    def bad(t: int) -> None:
        for body in bodies:
            poisoned.append(client.post("/v1/predictions", content=body, headers=headers))

    pool = [threading.Thread(target=good, args=(t,)) for t in range(4)] + [threading.Thread(target=bad, args=(9,))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    assert [r.status_code for r in valid] == [200] * 12
    assert sorted(r.status_code for r in poisoned) == [422, 422, 422]
    with AuditTrail(url) as trail:
        records = trail.query(after_seq=before, limit=1000)
        assert trail.verify().ok
    by_id = {e.prediction_id: e for e in records if e.prediction_id}
    for answer in valid:  # every valid answer is audited, as accepted
        assert by_id[answer.json()["prediction_id"]].http_status == 200
    rejected = [e for e in records if e.status == "rejected"]
    # each poisoned request has its own record; the refused raw text is stored escaped and bounded
    assert [e.http_status for e in rejected] == [422] * 3 and len(records) == 15
    # the raw bytes are refused as not UTF-8 by the guard; no record holds the raw patient ids
    assert not [e for e in rejected if "MRN-RAW" in json.dumps(e.detail) or "MRN-ISO" in json.dumps(e.detail)]
    for entry in rejected:
        json.dumps(entry.to_dict(), ensure_ascii=False).encode("utf-8")  # storable, readable text
