"""API keys and the tamper-evident audit trail (response_model.service.keys / .audit / .commands)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from response_model.privacy import PSEUDONYM_KEY_ENV, PseudonymKeyError, pseudonymise
from response_model.service.audit import GENESIS_HASH, AuditError, AuditTrail, input_digest
from response_model.service.commands import audit_group, keys_group
from response_model.service.keys import DB_URL_ENV, KeyStore, KeyStoreError, UnknownKeyError

PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"
RAW_PATIENT_ID = "MRN-4711-0815-XQ"


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    monkeypatch.delenv(DB_URL_ENV, raising=False)


@pytest.fixture
def db(tmp_path):
    """(url, path) of a fresh SQLite database."""
    path = tmp_path / "service.db"
    return f"sqlite:///{path}", path


def db_bytes(path) -> bytes:
    """The database file and its WAL / shared-memory files, concatenated."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def record(i: int, **extra) -> dict:
    base = {
        "key_id": "0123456789ab",
        "role": "clinician",
        "endpoint": "POST /v1/predictions",
        "status": "accepted",
        "http_status": 200,
        "model_name": "hcc-response",
        "model_version": "3",
        "request_body": {"patient": {"age": 60 + i % 20, "afp": 10.0 * i}},
        "patient_id": f"P{i:05d}",
        "prediction_id": f"pred-{i}",
        "regimens": ["sorafenib", "atezolizumab_bevacizumab"],
        "outputs": {"sorafenib": {"p_response": 0.1 + i / 1000, "p_resistance": 0.4}},
        "explanations": {"sorafenib": [{"feature": "afp", "contribution": -0.02 * i}]},
    }
    base.update(extra)
    return base


def filled_trail(url: str, n: int = 20) -> AuditTrail:
    trail = AuditTrail(url)
    for i in range(1, n + 1):
        trail.append(record(i))
    return trail


def run_threads(worker, n: int) -> list[BaseException]:
    """Run ``worker(t)`` for t in range(n) in n threads at once; return what they raised."""
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            worker(t)
        except BaseException as exc:  # noqa: BLE001 - reported to the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


# ---------------------------------------------------------------------------------------------------
# Keys


def test_create_list_authenticate_revoke(db):
    url, _ = db
    with KeyStore(url) as store:
        key_id, token = store.create("clinician", "ward-3 tablet")
        auditor = store.create("auditor", "audit office")
        assert token.startswith(f"rm_{key_id}_")
        info = store.authenticate(token)
        assert (info.key_id, info.role, info.name, info.revoked) == (key_id, "clinician", "ward-3 tablet", None)
        assert store.authenticate(f"  {token}\n") == info
        assert store.authenticate(auditor.token).role == "auditor"

        listed = store.list()
        assert [k.key_id for k in listed] == [key_id, auditor.key_id]
        assert all(not hasattr(k, "token") and not hasattr(k, "secret_hash") for k in listed)
        assert token not in repr(listed) and token not in repr(store.create("admin", "ops"))

        revoked = store.revoke(key_id)
        assert revoked.revoked is not None and not revoked.active
        assert store.authenticate(token) is None
        assert store.authenticate(auditor.token) is not None  # other keys unaffected
        assert store.revoke(key_id).revoked == revoked.revoked  # idempotent, keeps the first time
        with pytest.raises(UnknownKeyError):
            store.revoke("ffffffffffff")


def test_bad_tokens_are_refused(db):
    url, _ = db
    with KeyStore(url) as store:
        key_id, token = store.create("admin", "ops laptop")
        secret = token.split("_", 2)[2]
        other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
        for bad in [
            None, "", "Bearer " + token, token[:-1], token + "x", f"rm_{key_id}_{other_secret}",
            f"rm_ffffffffffff_{secret}", token.replace("rm_", "xx_", 1), token.upper(), secret,
            token + "a" * 10_000, 12345,
        ]:
            assert store.authenticate(bad) is None, bad


def test_verified_keys_are_remembered_without_the_secret_and_revocation_is_immediate(db, monkeypatch):
    import response_model.service.keys as keys_module

    url, _ = db
    with KeyStore(url) as store, KeyStore(url) as other_process:
        key_id, token = store.create("clinician", "ward-3 tablet")
        secret = token.split("_", 2)[2]
        checks = []
        real_check = keys_module._check_secret
        monkeypatch.setattr(keys_module, "_check_secret", lambda s, h: checks.append(s) or real_check(s, h))
        assert store.authenticate(token).key_id == key_id
        assert store.authenticate(token).key_id == key_id
        assert len(checks) == 1  # the second request did not run PBKDF2 again
        assert token not in repr(store._memo) and secret not in repr(store._memo)
        assert all(secret.encode() not in v for v in store._memo.values())
        wrong = ("A" if secret[0] != "A" else "B") + secret[1:]
        assert store.authenticate(f"rm_{key_id}_{wrong}") is None  # a remembered key still checks the secret
        other_process.revoke(key_id)  # e.g. `response-model keys revoke` while the service runs
        assert store.authenticate(token) is None


def test_tokens_are_not_recoverable_from_the_database(db):
    url, path = db
    with KeyStore(url) as store:
        tokens = [store.create(role, f"holder {role}").token for role in ("clinician", "auditor", "admin")]
    content = db_bytes(path)
    for token in tokens:
        secret = token.split("_", 2)[2]
        assert token.encode() not in content and secret.encode() not in content
        assert secret[:16].encode() not in content


def test_create_checks_role_and_name(db):
    url, _ = db
    with KeyStore(url) as store:
        with pytest.raises(KeyStoreError, match="unknown role"):
            store.create("superuser", "x")
        with pytest.raises(KeyStoreError, match="needs a name"):
            store.create("clinician", "  ")
        assert store.list() == []


# ---------------------------------------------------------------------------------------------------
# Audit trail


def test_append_and_verify(db):
    url, _ = db
    with filled_trail(url, 12) as trail:
        result = trail.verify()
        assert (result.ok, result.n_records, result.first_bad, result.reason) == (True, 12, None, None)
        entries = trail.query(limit=100)
        assert [e.seq for e in entries] == list(range(1, 13))
        assert entries[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
        assert result.head_hash == entries[-1].hash
        assert entries == sorted(entries, key=lambda e: e.time)

        e = trail.get("pred-5")
        assert e.seq == 5 and e.patient_pseudonym == pseudonymise("P00005", key=PSEUDONYM_KEY)
        assert e.input_digest == input_digest(record(5)["request_body"])
        assert e.outputs == record(5)["outputs"] and e.explanations == record(5)["explanations"]
        assert trail.get("no-such-prediction") is None

        rejected = trail.append({"endpoint": "POST /v1/predictions", "status": "rejected", "http_status": 401})
        assert rejected.seq == 13 and rejected.key_id is None and rejected.patient_pseudonym is None
    assert AuditTrail(url).verify().ok


def test_empty_trail_verifies(db):
    url, _ = db
    with AuditTrail(url) as trail:
        assert trail.verify() == trail.verify().__class__(True, 0, None, None, None)


def test_edited_record_is_named(db):
    url, _ = db
    filled_trail(url).close()
    execute(url, "UPDATE audit_records SET outputs = '{\"sorafenib\":{\"p_response\":0.9}}' WHERE seq = 7")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 7) and "hash mismatch" in result.reason


def test_edited_record_with_recomputed_hash_is_caught_at_once(db):
    """A forger who also recomputes the edited record's own hash (unkeyed SHA-256: the forger has no
    audit key) is caught at that record, and the next record's prev_hash says it was re-hashed."""
    from response_model.service.audit import CONTENT_FIELDS, audit_records, record_hash

    url, _ = db
    filled_trail(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(audit_records).where(audit_records.c.seq == 9)).one()
        content = {name: getattr(row, name) for name in CONTENT_FIELDS}
        content["outputs"] = '{"forged":true}'
        conn.execute(audit_records.update().where(audit_records.c.seq == 9).values(
            outputs=content["outputs"], hash=record_hash(9, row.prev_hash, content)))
    engine.dispose()
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad, result.case) == (False, 9, "rehashed")
    assert "record 10 links to another MAC" in result.reason


def test_deleted_middle_record_names_the_next(db):
    url, _ = db
    filled_trail(url).close()
    execute(url, "DELETE FROM audit_records WHERE seq = 10")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad, result.n_records) == (False, 11, 10)
    assert "gap" in result.reason and "10" in result.reason


def test_deleted_first_record_is_detected(db):
    url, _ = db
    filled_trail(url, 5).close()
    execute(url, "DELETE FROM audit_records WHERE seq = 1")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 2)


def test_deleted_and_renumbered_records_are_detected(db):
    url, _ = db
    filled_trail(url, 8).close()
    execute(url, "DELETE FROM audit_records WHERE seq = 4",
            *[f"UPDATE audit_records SET seq = {s - 1} WHERE seq = {s}" for s in range(5, 9)])
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 4)


def test_swapped_sequence_numbers_are_detected(db):
    url, _ = db
    filled_trail(url).close()
    execute(url, "UPDATE audit_records SET seq = -1 WHERE seq = 3",
            "UPDATE audit_records SET seq = 3 WHERE seq = 5",
            "UPDATE audit_records SET seq = 5 WHERE seq = -1")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 3)


def test_swapped_contents_are_detected(db):
    url, _ = db
    filled_trail(url).close()
    cols = "outputs, explanations, prediction_id, patient_pseudonym, input_digest"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        a = conn.exec_driver_sql(f"SELECT {cols} FROM audit_records WHERE seq = 12").one()
        b = conn.exec_driver_sql(f"SELECT {cols} FROM audit_records WHERE seq = 15").one()
        for seq, values in ((12, b), (15, a)):
            conn.exec_driver_sql(
                "UPDATE audit_records SET outputs=?, explanations=?, prediction_id=?, patient_pseudonym=?, "
                "input_digest=? WHERE seq=?", (*values, seq))
    engine.dispose()
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 12) and "hash mismatch" in result.reason


def test_raw_patient_id_never_stored(db):
    url, path = db
    with AuditTrail(url) as trail:
        entry = trail.append(record(1, patient_id=RAW_PATIENT_ID))
        assert entry.patient_pseudonym == pseudonymise(RAW_PATIENT_ID, key=PSEUDONYM_KEY)
        assert RAW_PATIENT_ID not in repr(entry)
        with pytest.raises(AuditError, match="raw patient id"):
            trail.append(record(2, patient_id=RAW_PATIENT_ID, outputs={"patient_id": RAW_PATIENT_ID}))
        with pytest.raises(AuditError, match="unknown audit field"):
            trail.append(record(3, patient_name="Jane Doe"))
        assert trail.count() == 1
    content = db_bytes(path)
    assert RAW_PATIENT_ID.encode() not in content
    assert b"Jane Doe" not in content


def test_no_pseudonym_key_refuses_rather_than_stores(db, monkeypatch):
    url, path = db
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    with AuditTrail(url) as trail:
        with pytest.raises(PseudonymKeyError, match=PSEUDONYM_KEY_ENV):
            trail.append(record(1, patient_id=RAW_PATIENT_ID))
        assert trail.count() == 0
        # a request without a patient id (e.g. 401 before the body was read) needs no key
        trail.append({"endpoint": "POST /v1/predictions", "status": "rejected", "http_status": 401})
    assert RAW_PATIENT_ID.encode() not in db_bytes(path)


def test_bad_records_are_refused(db):
    url, _ = db
    with AuditTrail(url) as trail:
        for bad, match in [
            ({"status": "accepted", "http_status": 200}, "endpoint"),
            (record(1, status="ok"), "status"),
            (record(1, http_status="200"), "http_status"),
            (record(1, status="accepted", http_status=422), "does not fit"),
            (record(1, role="root"), "unknown role"),
            (record(1, outputs={"p": float("nan")}), "NaN"),
            (record(1, input_digest="abc"), "both"),
            (record(1, time=datetime(2026, 1, 1)), "time zone"),
        ]:
            with pytest.raises(AuditError, match=match):
                trail.append(bad)
        assert trail.count() == 0


def test_query_filters_and_pages(db):
    url, _ = db
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    with AuditTrail(url) as trail:
        for i in range(10):
            trail.append(record(
                i, time=t0 + timedelta(hours=i), model_version="3" if i < 6 else "4",
                regimens=["atezolizumab_bevacizumab"] if i % 2 else ["atezolizumab", "sorafenib"],
            ))
        assert [e.seq for e in trail.query(t0 + timedelta(hours=2), t0 + timedelta(hours=5))] == [3, 4, 5]
        assert [e.seq for e in trail.query("2026-03-01T07:00:00Z")] == [8, 9, 10]
        assert [e.seq for e in trail.query(model_version="4")] == [7, 8, 9, 10]
        assert [e.seq for e in trail.query(regimen="atezolizumab")] == [1, 3, 5, 7, 9]
        assert [e.seq for e in trail.query(regimen="atezolizumab_bevacizumab")] == [2, 4, 6, 8, 10]
        assert [e.seq for e in trail.query(regimen="atezolizumab%")] == []
        assert [e.seq for e in trail.query(limit=3, offset=4)] == [5, 6, 7]
        assert [e.seq for e in trail.query(model_version="3", regimen="sorafenib", limit=2)] == [1, 3]
        with pytest.raises(AuditError):
            trail.query(limit=0)
        assert trail.verify().ok


def test_append_many_is_one_chain(db):
    url, _ = db
    with AuditTrail(url) as trail:
        trail.append(record(0))
        entries = trail.append_many([record(i) for i in range(1, 6)])
        assert [e.seq for e in entries] == [2, 3, 4, 5, 6]
        assert trail.verify().ok and trail.count() == 6


def test_concurrent_appends_keep_one_chain(db):
    url, _ = db
    AuditTrail(url).close()  # create the table once
    n_threads, per_thread = 8, 25
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        with AuditTrail(url) as trail:  # one engine per thread, like separate worker processes
            barrier.wait()
            for i in range(per_thread):
                trail.append(record(t * 1000 + i))

    assert run_threads(worker, n_threads) == []
    with AuditTrail(url) as trail:
        result = trail.verify()
        assert (result.ok, result.n_records) == (True, n_threads * per_thread)
        ids = {e.prediction_id for page in range(0, 200, 100) for e in trail.query(limit=100, offset=page)}
        assert len(ids) == n_threads * per_thread


def test_sqlite_is_wal_and_synchronous_full(db):
    url, _ = db
    with AuditTrail(url) as trail, trail.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_default_url_is_service_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with KeyStore() as store:
        store.create("admin", "ops")
    assert (tmp_path / "service.db").exists()
    monkeypatch.setenv(DB_URL_ENV, f"sqlite:///{tmp_path / 'other.db'}")
    with AuditTrail() as trail:
        trail.append(record(1))
    assert (tmp_path / "other.db").exists()


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_keys(db):
    url, _ = db
    runner = CliRunner()
    result = runner.invoke(keys_group, ["create", "--role", "clinician", "--name", "ward-3 tablet", "--db", url])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "shown only once" in result.stderr and token not in result.stderr
    with KeyStore(url) as store:
        info = store.authenticate(token)
    assert info is not None and info.role == "clinician"

    listed = runner.invoke(keys_group, ["list", "--db", url])
    assert listed.exit_code == 0 and info.key_id in listed.output and "active" in listed.output
    assert token.split("_", 2)[2] not in listed.output

    assert runner.invoke(keys_group, ["revoke", info.key_id, "--db", url]).exit_code == 0
    with KeyStore(url) as store:
        assert store.authenticate(token) is None
    assert "revoked" in runner.invoke(keys_group, ["list", "--db", url]).output

    unknown = runner.invoke(keys_group, ["revoke", "ffffffffffff", "--db", url])
    assert unknown.exit_code == 1 and "no API key" in unknown.output
    bad_role = runner.invoke(keys_group, ["create", "--role", "root", "--name", "x", "--db", url])
    assert bad_role.exit_code == 2
    for args in (["create", "--help"], ["list", "--help"], ["revoke", "--help"], ["--help"]):
        assert runner.invoke(keys_group, args).exit_code == 0


def test_cli_audit_verify(db, tmp_path):
    url, _ = db
    filled_trail(url, 10).close()
    runner = CliRunner()
    ok = runner.invoke(audit_group, ["verify", "--db", url])
    assert ok.exit_code == 0 and "intact: 10 records" in ok.output

    execute(url, "UPDATE audit_records SET model_version = '99' WHERE seq = 6")
    broken = runner.invoke(audit_group, ["verify", "--db", url])
    assert broken.exit_code == 1 and "record 6" in broken.output and "hash mismatch" in broken.output

    missing = runner.invoke(audit_group, ["verify", "--db", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not (tmp_path / "nope.db").exists()
    assert runner.invoke(audit_group, ["verify", "--help"]).exit_code == 0


# ---------------------------------------------------------------------------------------------------
# PostgreSQL (only where a server is given)

POSTGRES_URL_ENV = "RESPONSE_MODEL_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url():
    from conftest import require_service

    url = require_service(POSTGRES_URL_ENV, "PostgreSQL server (e.g. postgresql+psycopg://user@host/db)")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS audit_records")
        conn.exec_driver_sql("DROP TABLE IF EXISTS audit_blobs")
        conn.exec_driver_sql("DROP TABLE IF EXISTS api_keys")
    engine.dispose()
    return url


def test_postgresql_keys_and_concurrent_audit_chain(postgres_url):
    url = postgres_url
    with KeyStore(url) as store:
        key_id, token = store.create("auditor", "audit office")
        assert store.authenticate(token).role == "auditor"
        store.revoke(key_id)
        assert store.authenticate(token) is None

    AuditTrail(url).close()

    def worker(t: int) -> None:
        with AuditTrail(url) as trail:
            for i in range(25):
                trail.append(record(t * 1000 + i, time=datetime.now(UTC)))

    assert run_threads(worker, 8) == []
    with AuditTrail(url) as trail:
        assert (trail.verify().ok, trail.verify().n_records) == (True, 200)
        assert len(trail.query(regimen="sorafenib", limit=1000)) == 200
    execute(url, "UPDATE audit_records SET outputs = '{}' WHERE seq = 50")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 50)
    execute(url, "DELETE FROM audit_records WHERE seq = 50")
    result = AuditTrail(url).verify()
    assert (result.ok, result.first_bad) == (False, 51) and "gap" in result.reason
