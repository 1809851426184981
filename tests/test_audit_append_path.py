"""Group commit of audit records (service/audit.py): concurrent appends from many threads."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.audit import AuditError, AuditTrail


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
