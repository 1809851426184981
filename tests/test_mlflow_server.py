"""train → register → promote → serve → predict against a real `mlflow server` on PostgreSQL (issue 6 §3).

The recipe of docs/mlflow-server.md, run for real: ``mlflow server`` with a PostgreSQL backend store
(``$RESPONSE_MODEL_TEST_MLFLOW_POSTGRES_URL``, driver psycopg 3) and a proxied artifact root on a
free loopback port; ``response-model train`` and ``promote`` talk to it over HTTP;
``response-model serve`` loads ``models:/hcc-smoke@champion`` from it and keeps its keys and audit
trail in PostgreSQL too (``$RESPONSE_MODEL_TEST_POSTGRES_URL``). Each run uses fresh PostgreSQL
schemas (dropped afterwards), so reruns start clean and never touch other tests' tables.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import SMOKE_PSEUDONYM_KEY, require_service

from response_model.service.audit import AuditTrail
from response_model.service.keys import KeyStore
from response_model.service.models import EXAMPLE_REQUEST

from service_process import ServerProcess, cli, free_port, start_service

TRAIN_CONFIG = Path(__file__).parent / "data" / "train_tiny.yaml"  # where the model goes, not what it learns


def with_schema(url: str, schema: str) -> str:
    """``url`` with libpq's ``options=-csearch_path=SCHEMA``: every table (MLflow's migrations, the
    audit trail) is created in, and read from, that schema."""
    return sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


@pytest.fixture()
def fresh_schema():
    """A factory: ``make(url)`` creates a new schema in the database of ``url`` and returns the URL using
    it; every schema made is dropped (with its tables) at the end."""
    made: list[tuple[str, str]] = []

    def make(url: str) -> str:
        schema = f"rm_test_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine.dispose()
        made.append((url, schema))
        return with_schema(url, schema)

    yield make
    for url, schema in made:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> str:
    """Run a command; fail with its output unless it exits 0; returns stdout + stderr."""
    import os

    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{args[:5]} exited {done.returncode}:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_train_register_promote_serve_predict_on_mlflow_server_with_postgresql(tmp_path, fresh_schema):
    mlflow_db = fresh_schema(require_service("RESPONSE_MODEL_TEST_MLFLOW_POSTGRES_URL", "PostgreSQL for MLflow"))
    audit_db = fresh_schema(require_service("RESPONSE_MODEL_TEST_POSTGRES_URL", "PostgreSQL for the audit trail"))
    artifacts = tmp_path / "mlflow-artifacts"
    port = free_port()
    mlflow_server = ServerProcess(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_db,
         "--artifacts-destination", str(artifacts), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        port, tmp_path / "mlflow-server.log", cwd=tmp_path)
    service = None
    try:
        mlflow_server.wait_ready("/health")
        env = {"MLFLOW_TRACKING_URI": mlflow_server.base_url, "RESPONSE_MODEL_PSEUDONYM_KEY": SMOKE_PSEUDONYM_KEY,
               "RESPONSE_MODEL_DB_URL": audit_db, "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "0"}

        # train and register through the server
        output = run(cli("train", "--config", str(TRAIN_CONFIG)), env, tmp_path)
        registered = re.search(r"registered: models:/(?P<name>[\w-]+)/(?P<version>\d+)", output)
        assert registered, output[-3000:]
        name, version = registered["name"], registered["version"]
        assert name == "hcc-smoke" and version == "1"  # a fresh store
        stored = [p for p in artifacts.rglob("*") if p.is_file()]
        assert any(p.name == "MLmodel" for p in stored), "the model was not written to the shared artifact root"
        assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

        # promote through the gate
        output = run(cli("promote", "--name", name, "--version", version, "--config", str(TRAIN_CONFIG)), env, tmp_path)
        assert f"{name} version {version} promoted to champion" in output, output[-2000:]

        # keys and audit trail in PostgreSQL ($RESPONSE_MODEL_DB_URL), the champion from the server
        with KeyStore(audit_db) as store:
            clinician = store.create("clinician", "mlflow-server test").token
            auditor = store.create("auditor", "mlflow-server test").token
        service = start_service(f"models:/{name}@champion", None, tmp_path, env=env, name="serve-pg")
        headers = {"Authorization": f"Bearer {clinician}"}
        r = httpx.post(service.base_url + "/v1/predictions", json=EXAMPLE_REQUEST, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["model_name"], answer["model_version"]) == (name, version)
        assert answer["regimens"] and answer["regimens"][0]["rank"] == 1
        info = httpx.get(service.base_url + "/v1/model", headers={"Authorization": f"Bearer {auditor}"},
                         timeout=60).json()
        assert info["model_uri"] == f"models:/{name}@champion" and info["fallback"] is None

        # the audit record is in PostgreSQL, pseudonymised, and the chain verifies
        with AuditTrail(audit_db) as trail:
            assert trail.engine.dialect.name == "postgresql"
            entry = trail.get(answer["prediction_id"])
            assert entry is not None and entry.status == "accepted"
            assert (entry.model_name, entry.model_version) == (name, version)
            assert entry.patient_pseudonym and EXAMPLE_REQUEST["patient_id"] not in repr(entry.to_dict())
        output = run(cli("audit", "verify"), env, tmp_path)
        # the prediction and the read of /v1/model (every answer is audited)
        assert "audit trail intact: 2 records" in output and "postgresql" in output, output
    finally:
        if service is not None:
            service.stop()
        mlflow_server.stop()
