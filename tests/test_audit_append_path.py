"""The audit trail's append path (service/audit/store.py, chain.py): group commit across threads, stored JSON."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.audit import AuditError, AuditTrail, canonical_json, stored_json


def _record(thread: int, k: int) -> dict:
    return {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200,
            "key_id": f"key{thread:02d}", "role": "clinician", "prediction_id": f"t{thread:02d}-{k:03d}",
            "patient_id": f"MRN-GROUP-{thread:02d}-{k:03d}", "outputs": {"thread": thread, "k": k}}


def test_concurrent_appends_are_grouped_durably_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "group-commit-test-key-0123456789")
    url = f"sqlite:///{tmp_path}/audit.db"
    threads, calls = 8, 15
    commits = []
    with AuditTrail(url) as trail:
        sa.event.listen(trail.engine, "commit", lambda conn: commits.append(1))
        returned: dict[int, list] = {t: [] for t in range(threads)}
        start = threading.Barrier(threads)

        def worker(t: int) -> None:
            start.wait()
            for k in range(calls):
                pair = [_record(t, 2 * k), _record(t, 2 * k + 1)]  # one call = one request's two records
                returned[t].append(trail.append_many(pair))

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

        assert trail.count() == threads * calls * 2
        result = trail.verify()
        assert result.ok, result.reason
        stored = trail.query(limit=1000)
    by_id = {e.prediction_id: e for e in stored}
    for t, results in returned.items():
        for k, entries in enumerate(results):
            # each call gets back exactly its own records, as stored, next to each other in the chain
            assert [e.prediction_id for e in entries] == [f"t{t:02d}-{2 * k:03d}", f"t{t:02d}-{2 * k + 1:03d}"]
            assert entries[1].seq == entries[0].seq + 1
            assert all(by_id[e.prediction_id].hash == e.hash for e in entries)
            assert "MRN-GROUP" not in str(entries[0].to_dict())
    # never more transactions than calls (fewer whenever calls overlapped)
    assert len(commits) <= threads * calls


def test_a_bad_record_fails_only_its_own_call(tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "group-commit-test-key-0123456789")
    with AuditTrail(f"sqlite:///{tmp_path}/audit.db") as trail:
        with pytest.raises(AuditError, match="status"):
            trail.append_many([_record(0, 0), {**_record(0, 1), "status": "maybe"}])
        trail.append_many([_record(1, 0)])
        assert trail.count() == 1 and trail.verify().ok


@pytest.mark.parametrize("value", [
    {"b": [1e-05, 1e16, 0.1, -0.0, 3, True, None], "a": {"z": 1.0, "é": "\u0001\u2028\"\\"}},
    {"values": {f"f{i}": (-1) ** i * 10.0 ** (i - 20) for i in range(40)}, "base_value": -1.6190241442842161},
    [], {}, "text", 12345678901234567890123,  # an int beyond 64 bits: the json module writes it
])
def test_stored_json_is_sorted_compact_json_of_the_same_value(value):
    text = stored_json(value)
    assert json.loads(text) == json.loads(canonical_json(value))
    assert stored_json(json.loads(text)) == text  # deterministic: the same value, the same text
    if isinstance(value, dict):
        assert list(json.loads(text)) == sorted(value)
    assert ": " not in text and ", " not in text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_stored_json_refuses_what_json_cannot_hold(bad):
    for value in ({"values": {"a": 1.0, "b": bad}}, [1.0, bad], {"x": [{"y": bad}]}, bad,
                  {"top": [{"feature": "afp", "unit": None, "display": "850", "contribution": bad}]},
                  {"features": [["a", "b"]], "values": [[0.5, "x", None, bad]]}):
        with pytest.raises(AuditError, match="NaN"):
            stored_json(value)


def test_records_written_either_way_verify(tmp_path, monkeypatch):
    import response_model.service.audit.chain as audit

    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "group-commit-test-key-0123456789")
    with AuditTrail(f"sqlite:///{tmp_path}/audit.db") as trail:
        trail.append({**_record(0, 0), "outputs": {"p": 1e-05, "when": datetime(2026, 1, 1, tzinfo=UTC)}})
        monkeypatch.setattr(audit, "_orjson", None)  # as without orjson installed
        trail.append({**_record(0, 1), "outputs": {"p": 1e-05}})
        assert trail.verify().ok
        first, second = trail.query(limit=10)
        assert first.outputs["p"] == second.outputs["p"] == 1e-05


def test_compact_explanations_read_as_the_documented_layout_and_old_records_still_verify(tmp_path, monkeypatch):
    from response_model.service.audit import compact_explanations, parse_filter, shap_features, start_export

    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "group-commit-test-key-0123456789")
    linear = {"afp_log10": -0.25, "albumin": 0.125, "regimen_lenvatinib": 0.0}
    gbm = {"wnt_activation": 1e-05, "albumin": -3.5}
    documented = {  # explanations[regimen][outcome], as auditors read them
        "lenvatinib": {"objective_response": {"top": [{"feature": "afp_log10"}], "scale": "log-odds",
                                              "base_value": -0.5, "values": linear},
                       "primary_resistance": {"top": [], "scale": "log-odds", "base_value": 0.25, "values": gbm}},
        "sorafenib": {"objective_response": {"top": [], "scale": "log-odds", "base_value": -0.5,
                                             "values": {**linear, "regimen_lenvatinib": 0.5}}},
    }
    compact = compact_explanations(documented)
    assert len(compact["features"]) == 2  # one name list per model, not per regimen
    estimate = {"probability": 0.25}
    outputs = {"regimens": {"lenvatinib": {"rank": 1, "eligible": True, "objective_response": estimate,
                                           "primary_resistance": estimate},
                            "sorafenib": {"rank": 2, "eligible": True, "objective_response": estimate}}}
    record = {"endpoint": "POST /v1/predictions", "status": "accepted", "http_status": 200, "model_name": "m",
              "regimens": list(documented), "outputs": outputs}
    with AuditTrail(f"sqlite:///{tmp_path}/audit.db") as trail:
        trail.append({**record, "prediction_id": "old", "model_version": "1",
                      "explanations": documented})  # written before the compact format
        trail.append({**record, "prediction_id": "new", "model_version": "2", "explanations": compact})
        assert trail.verify().ok
        old, new = trail.get("old"), trail.get("new")
        assert old.explanations == new.explanations == documented
        assert list(new.explanations["lenvatinib"]["objective_response"]["values"]) == list(linear)  # model order
        assert set(shap_features(trail, parse_filter(model_version="2"))) == set(linear) | set(gbm)
        frame = start_export(trail, parse_filter()).frame()
        shap = frame[[c for c in frame.columns if c.startswith("shap.")]]
        assert len(frame) == 2 * 3 and shap.iloc[:3].equals(shap.iloc[3:].reset_index(drop=True))
        assert frame.loc[frame["outcome"] == "primary_resistance", "shap.albumin"].tolist() == [-3.5, -3.5]
        from response_model.service.audit.packing import pack_fields, unpack_field

        with trail.engine.begin() as conn:  # an edited SHAP value of a compact (packed) record breaks the chain
            text = conn.execute(sa.text("SELECT explanations FROM audit_records WHERE seq = 2")).scalar()
            digest = json.loads(text)["blob"]  # stored packed, in the record's side blob
            blob = conn.execute(sa.text("SELECT data FROM audit_blobs WHERE sha256 = :d"), {"d": digest}).scalar()
            plain = json.dumps(unpack_field("explanations", json.loads(text), {digest: blob}))
            assert "-3.5" in plain and "-3.5" not in text
            edited = pack_fields({"explanations": plain.replace("-3.5", "-3.25")})[1][1]
            conn.execute(sa.text("UPDATE audit_blobs SET data = :b WHERE sha256 = :d"), {"b": edited, "d": digest})
        assert trail.verify().first_bad == 2


def test_values_orjson_would_write_its_own_way_go_to_the_json_module():
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = "red"

    when = datetime(2026, 1, 1, tzinfo=UTC)
    for value in ({"when": when}, {"nested": [{"when": when}]}, {"pair": (1.0, 1e-05)}):
        assert stored_json(value) == canonical_json(value)
    for value in ({"id": uuid.UUID(int=1)}, {"colour": Colour.RED}):  # refused by both, not written by orjson
        with pytest.raises(TypeError):
            stored_json(value)
