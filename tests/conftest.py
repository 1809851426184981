"""Shared fixtures. Simulated cohorts are session-scoped: simulate once, use everywhere."""

import os

import pytest


def require_service(env_var: str, what: str) -> str:
    """The value of ``env_var`` (a URL or path of a service the test needs).

    Where it is unset the test is skipped with the reason, except under ``.ci/run``
    (``RESPONSE_MODEL_REQUIRE_SERVICES=1``), which starts every service: there it fails.
    """
    value = os.environ.get(env_var)
    if not value:
        message = f"no {what}: set {env_var}"
        if os.environ.get("RESPONSE_MODEL_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (.ci/run should have started it)")
        pytest.skip(message)
    return value


POSTGRES_URL_ENVS = ("RESPONSE_MODEL_TEST_POSTGRES_URL", "RESPONSE_MODEL_TEST_MLFLOW_POSTGRES_URL")


def pytest_configure(config):
    """Under pytest-xdist each worker gets PostgreSQL schemas of its own: tests that drop and create
    tables in the database they are given must not drop another worker's tables mid-test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    import sqlalchemy as sa

    for name in POSTGRES_URL_ENVS:
        url = os.environ.get(name)
        if not url:
            continue
        schema = f"xdist_{worker}"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine.dispose()
        os.environ[name] = sa.make_url(url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


#: the test files that take longest on CI (``--durations``), longest first: under ``make test`` (pytest-xdist,
#: a file per worker in collection order, ``--no-loadscope-reorder``) they start first, so no worker is
#: left with a minutes-long file when the others have finished
LONGEST_FILES = ("test_readme.py", "test_notebooks.py", "test_mlflow_server.py", "test_dask_training.py",
                 "test_reliability.py", "test_web.py", "test_cli.py")


def pytest_collection_modifyitems(session, config, items):
    """Run the :data:`LONGEST_FILES` first, then the other files with ``slow`` tests, then the rest
    (each file's tests keep their order)."""
    slow_files = {item.path.name for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        name = item.path.name
        if name in LONGEST_FILES:
            return LONGEST_FILES.index(name)
        return len(LONGEST_FILES) + (0 if name in slow_files else 1)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _pseudonym_key_as_before(tmp_path_factory, monkeypatch):
    """Every test starts without a local key file — a ``.response-model/pseudonym.key`` that ``make run``
    left in the checkout must not stand in for the key a test sets, or removes on purpose — and leaves
    the key variable as it found it (``run`` puts the key it creates into the environment)."""
    from response_model.privacy import PSEUDONYM_KEY_ENV, PSEUDONYM_KEY_FILE_ENV

    if PSEUDONYM_KEY_FILE_ENV not in os.environ:
        # a path of this test's own: `run` creates the key file where this points
        monkeypatch.setenv(PSEUDONYM_KEY_FILE_ENV, str(tmp_path_factory.mktemp("key") / "pseudonym.key"))
    if PSEUDONYM_KEY_ENV in os.environ:  # restored after the test, whatever the test did to it
        monkeypatch.setenv(PSEUDONYM_KEY_ENV, os.environ[PSEUDONYM_KEY_ENV])
    else:  # recorded as unset, so removed again after the test
        monkeypatch.setenv(PSEUDONYM_KEY_ENV, "")
        monkeypatch.delenv(PSEUDONYM_KEY_ENV)


TEST_AUDIT_KEY = "shared-test-audit-chain-key-0123456789"


@pytest.fixture(scope="session", autouse=True)
def _audit_trail_keys(tmp_path_factory):
    """The whole session (module-scoped services included) has the audit chain's HMAC key, a checkpoint
    signing key and its public key, and a witness file, unless the environment sets them — so that no
    test's keys or checkpoints land in the checkout's ``.response-model``. Returns the names set here."""
    from response_model.privacy import AUDIT_KEY_ENV, AUDIT_KEY_FILE_ENV
    from response_model.service.audit.checkpoints import (
        PUBLIC_KEYS_ENV,
        SIGNING_KEY_FILE_ENV,
        WITNESS_ENV,
        new_signing_key,
    )

    folder = tmp_path_factory.mktemp("trail-keys")
    new_signing_key(folder / "checkpoint.key", folder / "checkpoint.pub")
    defaults = {AUDIT_KEY_ENV: TEST_AUDIT_KEY, AUDIT_KEY_FILE_ENV: str(folder / "audit.key"),
                SIGNING_KEY_FILE_ENV: str(folder / "checkpoint.key"), PUBLIC_KEYS_ENV: str(folder / "checkpoint.pub"),
                WITNESS_ENV: str(folder / "witness.jsonl")}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in defaults.items():
            if not os.environ.get(name):
                mp.setenv(name, value)
        yield {name for name in defaults if os.environ[name] == defaults[name]}


@pytest.fixture(autouse=True)
def _witness_per_test(tmp_path_factory, monkeypatch, _audit_trail_keys):
    """Each test verifies against a witness file of its own (one witness serves one trail), unless the
    environment names one."""
    from response_model.service.audit.checkpoints import WITNESS_ENV

    if WITNESS_ENV in _audit_trail_keys:
        monkeypatch.setenv(WITNESS_ENV, str(tmp_path_factory.mktemp("witness") / "witness.jsonl"))


@pytest.fixture(scope="session")
def simulated_small():
    """A simulated cohort of 2,000 patients (seed 7): ``SimulatedCohort`` with ``cohort`` and ``truth``."""
    from response_model.sources.simulator import simulate_cohort

    return simulate_cohort(2000, seed=7)


SMOKE_PSEUDONYM_KEY = "shared-test-pseudonym-key-0123456789"


def _train_smoke_model(folder):
    """Train, register and export the smoke model with ``folder`` as the working directory and its
    SQLite MLflow store; returns the fields of :func:`smoke_model` (paths as text)."""
    from pathlib import Path

    import mlflow

    from response_model.modeling.registry import export
    from response_model.modeling.train import train
    from response_model.privacy import PSEUDONYM_KEY_ENV

    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.setenv(PSEUDONYM_KEY_ENV, SMOKE_PSEUDONYM_KEY)
        result = train(Path(__file__).parent / "data" / "train_smoke.yaml", register=True, progress=False)
        model_uri = f"models:/{result.registered_name}/{result.registered_version}"
        export_dir = export(model_uri, folder / "models" / "hcc-smoke-export")
    mlflow.set_tracking_uri(previous)
    return {"tracking_uri": tracking_uri, "name": result.registered_name, "version": result.registered_version,
            "model_uri": model_uri, "export_dir": str(export_dir), "folder": str(folder), "run_id": result.run_id}


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory):
    """The smoke model (``tests/data/train_smoke.yaml``) trained once per test run.

    Returns a dict: ``tracking_uri`` (a private SQLite MLflow store), ``name`` and ``version`` of the
    registered model, ``model_uri`` (``models:/hcc-smoke/<v>``), ``export_dir`` (a self-contained
    exported folder that serves without the store) and ``folder`` (the working directory used).
    The tracking URI is restored afterwards; tests that use the registry set ``MLFLOW_TRACKING_URI``
    to ``tracking_uri`` themselves.

    Under pytest-xdist the first worker to need it trains it, under a file lock, in the run's shared
    temporary folder; every worker then gets its own copy of the MLflow database (so no two processes
    write one SQLite file; the runs' artifacts stay where they were written, by absolute path) and of the
    exported folder.
    """
    import fcntl
    import json
    import shutil
    from pathlib import Path

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        info = _train_smoke_model(tmp_path_factory.mktemp("smoke-model"))
    else:
        shared = tmp_path_factory.getbasetemp().parent / "smoke-model"
        with open(shared.parent / "smoke-model.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            done = shared / "smoke-model.json"
            if not done.exists():
                shared.mkdir(exist_ok=True)
                done.write_text(json.dumps(_train_smoke_model(shared)))
            trained = json.loads(done.read_text())
        mine = tmp_path_factory.mktemp("smoke-model")
        shutil.copy2(shared / "mlflow.db", mine / "mlflow.db")
        export_dir = mine / "models" / "hcc-smoke-export"
        shutil.copytree(trained["export_dir"], export_dir)
        info = {**trained, "tracking_uri": f"sqlite:///{mine}/mlflow.db", "export_dir": str(export_dir),
                "folder": str(mine)}
    return {**info, "export_dir": Path(info["export_dir"]), "folder": Path(info["folder"])}
