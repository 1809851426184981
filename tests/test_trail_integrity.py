"""The keyed audit chain and its signed checkpoints (issue 14, point 8): what an insider with write access
to the trail's database can do, and what ``audit verify`` says about it."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from response_model.privacy import (
    AUDIT_KEY_ENV,
    AUDIT_KEY_FILE_ENV,
    PSEUDONYM_KEY_ENV,
    AuditKeyError,
    AuditKeyring,
    audit_keyring,
    ensure_local_audit_key,
)
from response_model.service.audit import CONTENT_FIELDS, AuditTrail, audit_records, record_hash
from response_model.service.audit.checkpoints import (
    PUBLIC_KEYS_ENV,
    SIGNING_KEY_FILE_ENV,
    WITNESS_ENV,
    new_signing_key,
    open_witness,
)
from response_model.service.commands import audit_group

N = 10


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "trail-integrity-pseudonym-key-0123456789")


def record(i: int) -> dict:
    return {"key_id": "0123456789ab", "role": "clinician", "endpoint": "POST /v1/predictions",
            "status": "accepted", "http_status": 200, "model_name": "hcc-smoke", "model_version": "1",
            "request_body": {"patient": {"age": 50 + i}}, "patient_id": f"P{i:05d}", "prediction_id": f"pred-{i}",
            "regimens": ["sorafenib"], "outputs": {"sorafenib": {"p_response": i / 100}}}


@pytest.fixture
def url(tmp_path) -> str:
    """A trail of N keyed records with a signed checkpoint of record N in the test's witness file."""
    url = f"sqlite:///{tmp_path}/service.db"
    with AuditTrail(url) as trail:
        trail.append_many([record(i) for i in range(1, N + 1)])
        assert trail.checkpoint().seq == N
    return url


def execute(url: str, *statements: str, params: tuple = ()) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement, params) if params else conn.exec_driver_sql(statement)
    engine.dispose()


def verify(url: str, **kwargs):
    with AuditTrail(url, **kwargs) as trail:
        return trail.verify()


def rehash_unkeyed(url: str, start: int, **changes) -> None:
    """What an insider without the key can do: change record ``start`` and recompute every MAC from there
    with the old, unkeyed SHA-256 (format 1), so that every link holds."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(audit_records).where(audit_records.c.seq >= start)
                            .order_by(audit_records.c.seq)).all()
        prev = rows[0].prev_hash
        for k, row in enumerate(rows):
            content = {name: getattr(row, name) for name in CONTENT_FIELDS}
            if k == 0:
                content.update(changes)
            new = record_hash(row.seq, prev, content)
            conn.execute(audit_records.update().where(audit_records.c.seq == row.seq)
                         .values(**(changes if k == 0 else {}), prev_hash=prev, hash=new))
            prev = new
    engine.dispose()


# -- the six tamper cases -------------------------------------------------------------------------------


def test_an_intact_keyed_trail_verifies_against_its_checkpoint(url):
    result = verify(url)
    assert (result.ok, result.n_records, result.checkpoints, result.checkpoint_seq) == (True, N, 1, N)
    assert result.key_ids == (audit_keyring().current.key_id,) and result.n_legacy == 0


def test_edited_record(url):
    execute(url, "UPDATE audit_records SET outputs = '{\"sorafenib\":{\"p_response\":0.99}}' WHERE seq = 4")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 4, "edited")
    assert "record 4" in result.reason and "changed after it was written" in result.reason


def test_deleted_middle_record(url):
    execute(url, "DELETE FROM audit_records WHERE seq = 5")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 6, "deleted-middle")
    assert "record 5 deleted" in result.reason


def test_deleted_and_renumbered_middle_record(url):
    execute(url, "DELETE FROM audit_records WHERE seq = 5",
            *[f"UPDATE audit_records SET seq = {s - 1} WHERE seq = {s}" for s in range(6, N + 1)])
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 5, "deleted-middle")
    assert "written as record 6" in result.reason


def test_deleted_newest_records(url):
    execute(url, "DELETE FROM audit_records WHERE seq >= 8")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case, result.n_records) == (False, 8, "deleted-newest", 7)
    assert "records 8–10 deleted" in result.reason and "covers record 10" in result.reason


def test_every_record_deleted(url):
    execute(url, "DELETE FROM audit_records")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 1, "deleted-newest")


def test_swapped_records(url):
    execute(url, "UPDATE audit_records SET seq = -1 WHERE seq = 3", "UPDATE audit_records SET seq = 3 WHERE seq = 6",
            "UPDATE audit_records SET seq = 6 WHERE seq = -1")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 3, "swapped")
    assert "now stored as 5" in result.reason


def test_swapped_contents(url):
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = {r.seq: r for r in conn.execute(sa.select(audit_records).where(audit_records.c.seq.in_((2, 7))))}
        for seq, other in ((2, 7), (7, 2)):
            conn.execute(audit_records.update().where(audit_records.c.seq == seq).values(
                {name: getattr(rows[other], name) for name in CONTENT_FIELDS}))
    engine.dispose()
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 2, "swapped")
    assert "written as record 7" in result.reason


def test_forged_appended_record(url):
    """An insider appends a record that links to the head, with a MAC made up (no key) or the old SHA-256."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        head = conn.execute(sa.select(audit_records).where(audit_records.c.seq == N)).one()
        forged = {**head._mapping, "seq": N + 1, "prev_hash": head.hash, "prediction_id": "forged"}
        content = {name: forged[name] for name in CONTENT_FIELDS}
        forged["hash"] = record_hash(N + 1, head.hash, content)  # the unkeyed hash: all the insider can make
        conn.execute(audit_records.insert().values(forged))
    engine.dispose()
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, N + 1, "forged")
    assert "unkeyed record" in result.reason and "appended" in result.reason


def test_forged_record_with_a_made_up_mac(url):
    execute(url, "INSERT INTO audit_records SELECT seq + 1, time, key_id, role, endpoint, status, http_status, "
            "model_name, model_version, input_digest, patient_pseudonym, 'forged', regimens, outputs, explanations, "
            f"detail, hash, '{'ab' * 32}', inputs FROM audit_records WHERE seq = {N}")
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, N + 1, "forged")


def test_edited_record_with_the_tail_rehashed(url):
    rehash_unkeyed(url, 4, outputs='{"sorafenib":{"p_response":0.99}}')
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 4, "rehashed")
    assert "tail re-hashed" in result.reason


def test_rehashed_tail_of_keyed_looking_macs_is_caught_by_the_checkpoint(url):
    """Even someone who could make valid-looking MACs of the tail (here: with the key — an insider who
    stole it) cannot make the checkpoint's signed MAC of record N come out."""
    engine = sa.create_engine(url)
    key = audit_keyring().current
    with engine.begin() as conn:
        rows = conn.execute(sa.select(audit_records).where(audit_records.c.seq >= 6)
                            .order_by(audit_records.c.seq)).all()
        prev = None
        for row in rows:
            content = {name: getattr(row, name) for name in CONTENT_FIELDS}
            if row.seq == 6:
                content["outputs"] = '{"forged":1}'
            link = row.prev_hash if prev is None else prev
            prev = record_hash(row.seq, link, content, key)
            conn.execute(audit_records.update().where(audit_records.c.seq == row.seq).values(
                outputs=content["outputs"], prev_hash=link, hash=prev))
    engine.dispose()
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, N, "rehashed")
    assert "checkpoint" in result.reason


# -- checkpoints ----------------------------------------------------------------------------------------


def test_altered_checkpoint_fails_its_signature(url):
    path = os.environ[WITNESS_ENV]
    with open(path) as handle:
        line = json.loads(handle.readline())
    line["seq"] = 7  # an insider who also reached the witness file moves the checkpoint back
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    result = verify(url)
    assert (result.ok, result.case, result.first_bad) == (False, "bad-checkpoint", None)
    assert "checkpoint 2" in result.reason and "(record 7)" in result.reason and "signature" in result.reason


def test_checkpoint_by_an_unknown_key_is_refused(url, tmp_path):
    with pytest.MonkeyPatch.context() as mp:  # a checkpoint signed with a key of the insider's own
        mp.setenv(SIGNING_KEY_FILE_ENV, str(tmp_path / "rogue.key"))
        mp.setenv(PUBLIC_KEYS_ENV, str(tmp_path / "rogue.pub"))
        new_signing_key()
        with AuditTrail(url) as trail:
            trail.checkpoint()
    result = verify(url)
    assert (result.ok, result.case) == (False, "bad-checkpoint")
    assert "checkpoint 2" in result.reason and "not among the trusted public keys" in result.reason


def test_a_forged_head_is_never_signed(url):
    execute(url, f"UPDATE audit_records SET outputs = '{{}}' WHERE seq = {N}")
    with AuditTrail(url) as trail, pytest.raises(AuditKeyError, match="does not verify"):
        trail.checkpoint()


def test_witness_in_a_second_database(tmp_path):
    url, witness = f"sqlite:///{tmp_path}/service.db", f"sqlite:///{tmp_path}/witness.db"
    with AuditTrail(url, witness=witness, checkpoint_every=4) as trail:
        for i in range(1, N + 1):
            trail.append(record(i))
        trail.checkpoint_if_moved()
        assert trail.checkpoint_if_moved() is None  # the head has not moved
    entries = open_witness(witness).read()
    assert [e.checkpoint.seq for e in entries] == [4, 8, N]
    assert verify(url, witness=witness).ok and verify(url, witness=witness).checkpoints == 3
    execute(url, f"DELETE FROM audit_records WHERE seq = {N}")
    result = verify(url, witness=witness)
    assert (result.ok, result.first_bad, result.case) == (False, N, "deleted-newest")


def test_checkpoints_name_their_trail(url, tmp_path):
    """A witness holding another trail's checkpoints (or a trail rewritten from record 1) is not taken for this one."""
    other = f"sqlite:///{tmp_path}/other.db"
    with AuditTrail(other) as trail:
        trail.append(record(99))
    result = verify(other, witness=os.environ[WITNESS_ENV])
    assert (result.ok, result.first_bad, result.case) == (False, 1, "rehashed")
    assert "another trail" in result.reason


# -- records written before the chain was keyed ------------------------------------------------------


def legacy_trail(url: str, n: int) -> None:
    """A trail of ``n`` records as the previous version wrote them (format 1: unkeyed SHA-256)."""
    with AuditTrail(url) as trail:
        trail.append_many([record(i) for i in range(1, n + 1)])
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        prev = "0" * 64
        for row in conn.execute(sa.select(audit_records).order_by(audit_records.c.seq)).all():
            content = {name: getattr(row, name) for name in CONTENT_FIELDS}
            new = record_hash(row.seq, prev, content)
            conn.execute(audit_records.update().where(audit_records.c.seq == row.seq).values(prev_hash=prev, hash=new))
            prev = new
    engine.dispose()


def test_legacy_unkeyed_records_verify_and_are_labelled(tmp_path):
    url = f"sqlite:///{tmp_path}/service.db"
    legacy_trail(url, 4)
    with AuditTrail(url) as trail:
        trail.append_many([record(i) for i in range(5, 8)])
        trail.checkpoint()
        assert trail.check_record(2).ok and trail.check_record(5).ok
    result = verify(url)
    assert (result.ok, result.n_records, result.n_legacy, result.legacy_through) == (True, 7, 4, 4)
    out = CliRunner().invoke(audit_group, ["verify", "--db", url])
    assert out.exit_code == 0, out.output
    assert "4 records of the old, unkeyed kind (chain format 1): records 1–4" in out.output
    execute(url, "UPDATE audit_records SET outputs = '{}' WHERE seq = 2")  # edits among them still show
    result = verify(url)
    assert (result.ok, result.first_bad, result.case) == (False, 2, "edited")


def test_an_unkeyed_record_after_keyed_ones_is_refused(url):
    rehash_unkeyed(url, N)  # the newest record re-hashed the old way, content unchanged
    with AuditTrail(url) as trail:
        assert not trail.check_record(N).hash_intact
    result = verify(url)
    assert (result.ok, result.first_bad) == (False, N) and "unkeyed record" in result.reason


# -- keys -------------------------------------------------------------------------------------------


def test_appends_need_the_chain_key(tmp_path, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV)
    monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "none.key"))
    with AuditTrail(f"sqlite:///{tmp_path}/service.db") as trail, pytest.raises(AuditKeyError, match=AUDIT_KEY_ENV):
        trail.append(record(1))
    assert ensure_local_audit_key() is True and ensure_local_audit_key() is False
    assert oct((tmp_path / "none.key").stat().st_mode & 0o777) == "0o600"
    with AuditTrail(f"sqlite:///{tmp_path}/service.db") as trail:
        assert trail.append(record(1)).seq == 1


def test_chain_key_rotation(tmp_path, monkeypatch):
    """New records carry the new key id; the old key, kept in the keyring, verifies the old records."""
    url = f"sqlite:///{tmp_path}/service.db"
    old, new = "old-audit-key-0123456789abcdef", "new-audit-key-0123456789abcdef"
    monkeypatch.setenv(AUDIT_KEY_ENV, old)
    with AuditTrail(url) as trail:
        trail.append_many([record(i) for i in range(1, 4)])
    monkeypatch.setenv(AUDIT_KEY_ENV, f"{old},{new}")
    with AuditTrail(url) as trail:
        trail.append_many([record(i) for i in range(4, 7)])
        trail.checkpoint()
    ring = AuditKeyring.of(old, new)
    result = verify(url)
    assert result.ok and result.key_ids == tuple(sorted(ring.keys)) and result.checkpoints == 1
    assert verify(url, keyring=AuditKeyring.of(new)).first_bad == 1  # the old key dropped: old records fail
    # the rotate command of the local keyring file does the same
    monkeypatch.delenv(AUDIT_KEY_ENV)
    monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "audit.key"))
    (tmp_path / "audit.key").write_text(f"{old}\n{new}\n")
    out = CliRunner().invoke(audit_group, ["rotate-key"])
    assert out.exit_code == 0, out.output
    newest = audit_keyring().current
    assert newest.key_id in out.output and len(audit_keyring().keys) == 3
    with AuditTrail(url) as trail:
        trail.append(record(7))
    assert verify(url).ok and newest.key_id in verify(url).key_ids


def test_signing_key_rotation(tmp_path, monkeypatch):
    """Checkpoints signed before a rotation still verify with the old public key, kept among the trusted ones."""
    url, public = f"sqlite:///{tmp_path}/service.db", tmp_path / "checkpoint.pub"
    monkeypatch.setenv(SIGNING_KEY_FILE_ENV, str(tmp_path / "checkpoint.key"))
    monkeypatch.setenv(PUBLIC_KEYS_ENV, str(public))
    new_signing_key()
    with AuditTrail(url) as trail:
        trail.append(record(1))
        first = trail.checkpoint()
    out = CliRunner().invoke(audit_group, ["rotate-signing-key"])
    assert out.exit_code == 0, out.output
    with AuditTrail(url) as trail:
        trail.append(record(2))
        second = trail.checkpoint()
    assert first.signer != second.signer and second.signer in out.output
    result = verify(url)
    assert (result.ok, result.checkpoints, result.checkpoint_seq) == (True, 2, 2)
    public.write_text(public.read_text().splitlines()[1] + "\n")  # the old public key lost
    result = verify(url)
    assert (result.ok, result.case) == (False, "bad-checkpoint") and first.signer in result.reason


def test_cli_checkpoint_and_verify_name_the_case(url):
    runner = CliRunner()
    out = runner.invoke(audit_group, ["checkpoint", "--db", url])
    assert out.exit_code == 0 and f"checkpoint of record {N}" in out.output
    out = runner.invoke(audit_group, ["verify", "--db", url])
    assert out.exit_code == 0 and "checkpoints: 2 signed, verified" in out.output, out.output
    execute(url, "DELETE FROM audit_records WHERE seq = 10")
    out = runner.invoke(audit_group, ["verify", "--db", url])
    assert out.exit_code == 1 and "BROKEN at record 10 [deleted-newest]" in out.output, out.output


# -- the service ------------------------------------------------------------------------------------


def test_the_service_needs_both_trail_keys(tmp_path, monkeypatch):
    from response_model.service.app import create_app

    url = f"sqlite:///{tmp_path}/service.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(AUDIT_KEY_ENV)
        mp.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "missing.key"))
        with pytest.raises(AuditKeyError, match=f"cannot start the prediction service.*{AUDIT_KEY_ENV}"):
            create_app("models:/hcc-smoke/1", url)
    monkeypatch.setenv(SIGNING_KEY_FILE_ENV, str(tmp_path / "missing-checkpoint.key"))
    with pytest.raises(AuditKeyError, match=f"cannot start the prediction service.*{SIGNING_KEY_FILE_ENV}"):
        create_app("models:/hcc-smoke/1", url)


def test_the_service_checkpoints_its_head_at_shutdown(smoke_model, tmp_path):
    from fastapi.testclient import TestClient

    from response_model.service.app import create_app
    from response_model.service.keys import KeyStore
    from response_model.service.models import EXAMPLE_PATIENT

    url = f"sqlite:///{tmp_path}/service.db"
    with KeyStore(url) as store:
        token = store.create("clinician", "trail test").token
    with TestClient(create_app(str(smoke_model["export_dir"]), url)) as client:
        answer = client.post("/v1/predictions", json={"patient": EXAMPLE_PATIENT},
                             headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    with AuditTrail(url) as trail:
        head = trail.head_seq()
        result = trail.verify()
    assert head >= 1 and (result.ok, result.checkpoint_seq) == (True, head)
    assert [e.checkpoint.seq for e in open_witness().read()] == [head]


def test_postgresql_trail_with_a_witness_database(tmp_path):
    from conftest import require_service

    url = require_service("RESPONSE_MODEL_TEST_POSTGRES_URL", "PostgreSQL server (e.g. postgresql+psycopg://user@host/db)")
    execute(url, "DROP TABLE IF EXISTS audit_records", "DROP TABLE IF EXISTS audit_checkpoints",
            "DROP TABLE IF EXISTS audit_blobs")
    witness = f"sqlite:///{tmp_path}/witness.db"
    with AuditTrail(url, witness=witness, checkpoint_every=5) as trail:
        trail.append_many([record(i) for i in range(1, N + 1)])
        assert trail.verify().ok and trail.verify().checkpoint_seq == N
    execute(url, "UPDATE audit_records SET seq = -1 WHERE seq = 3", "UPDATE audit_records SET seq = 3 WHERE seq = 6",
            "UPDATE audit_records SET seq = 6 WHERE seq = -1")
    assert verify(url, witness=witness).case == "swapped"
    execute(url, "UPDATE audit_records SET seq = -1 WHERE seq = 3", "UPDATE audit_records SET seq = 3 WHERE seq = 6",
            "UPDATE audit_records SET seq = 6 WHERE seq = -1", f"DELETE FROM audit_records WHERE seq > {N - 2}")
    result = verify(url, witness=witness)
    assert (result.ok, result.first_bad, result.case) == (False, N - 1, "deleted-newest")
