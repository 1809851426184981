"""Property-based run of the service against its own OpenAPI schema (schemathesis + hypothesis).

Every operation of ``/openapi.json`` is called with requests generated from the schema — valid
and deliberately invalid ones — by a clinician key, against the smoke model's exported folder.
Properties: no answer is a server error (5xx), and every answer whose status the schema documents
has the documented shape. Bounded by ``max_examples`` per operation so the module runs in about
half a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import KeyStore

PSEUDONYM_KEY = "openapi-property-test-pseudonym-key-0123"
MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    """(app, clinician token, db url): the service on the exported smoke model, keys in a fresh store."""
    folder = tmp_path_factory.mktemp("openapi-properties")
    url = f"sqlite:///{folder}/service.db"
    with pytest.MonkeyPatch.context() as mp:
        # the pseudonym key is read at start-up and at every audit append, so it stays set throughout
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        with KeyStore(url) as store:
            token = store.create("clinician", "schemathesis").token
        app = create_app(str(smoke_model["export_dir"]), url, alias_check=0)
        yield app, token, url


@pytest.fixture(scope="module")
def api_schema(service):
    """The app's OpenAPI schema, loaded through the app itself (schemathesis runs its lifespan)."""
    app, _, _ = service
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# The operations of this module's app; routes that other modules add are covered by the last test.
# (Per-operation strategies with @given rather than ``schema.parametrize()``: schemathesis's lazy
# fixture loader sets a pytest node attribute that pytest 9 no longer has.)
CORE_OPERATIONS = [("POST", "/v1/predictions"), ("POST", "/v1/predictions:batch"), ("GET", "/v1/model"),
                   ("POST", "/v1/admin/reload"), ("GET", "/healthz"), ("GET", "/readyz")]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def _run(operation, mode, token: str, max_examples: int) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def check(case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        label = f"{case.method} {case.formatted_path} ({mode.value})"
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    try:
        check()
    except Unsatisfiable:
        # an operation without parameters or body has no invalid request to generate
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", CORE_OPERATIONS, ids=lambda x: x)
def test_no_server_error_and_documented_shapes(api_schema, service, method, path, mode):
    _, token, _ = service
    _run(api_schema[path][method], mode, token, MAX_EXAMPLES)


def test_every_other_operation(api_schema, service):
    """Routes added by other modules (the page, the auditors' endpoints): no 5xx either, fewer examples."""
    _, token, _ = service
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in CORE_OPERATIONS:
            continue
        for mode in MODES:
            _run(operation, mode, token, MAX_EXAMPLES // 3)


def test_the_run_was_audited_and_the_chain_holds(service):
    """Runs after the property test: the requests it generated left an intact, verifiable hash chain."""
    _, _, url = service
    with AuditTrail(url) as trail:
        result = trail.verify()
    assert result.ok, f"record {result.first_bad}: {result.reason}"


def test_a_one_letter_patient_id_is_accepted_not_a_server_error(smoke_model, tmp_path, monkeypatch):
    """Found by the property run: a raw id inside another field of the record ('T' in 'POST …') was a 500,
    then a refusal; only a whole value equal to the id is an echo of it, so 'T' is now accepted (its
    pseudonym stored), every time."""
    from fastapi.testclient import TestClient

    from response_model.service.models import EXAMPLE_PATIENT

    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    url = f"sqlite:///{tmp_path}/service.db"
    with KeyStore(url) as store:
        headers = {"Authorization": f"Bearer {store.create('clinician', 'one letter').token}"}
    with TestClient(create_app(str(smoke_model["export_dir"]), url, alias_check=0)) as client:
        one = client.post("/v1/predictions", json={"patient": EXAMPLE_PATIENT, "patient_id": "T"}, headers=headers)
        assert one.status_code == 200, one.text
        bad_regimen = {"patient": EXAMPLE_PATIENT, "patient_id": "T", "regimens": ["no-such-regimen"]}
        batch = client.post("/v1/predictions:batch", headers=headers, json={"patients": [
            {"patient": EXAMPLE_PATIENT, "patient_id": "T"}, bad_regimen,
            {"patient": EXAMPLE_PATIENT, "patient_id": "ward3-000123"}]})
        assert batch.status_code == 200
        rows = batch.json()["results"]
        assert [r["ok"] for r in rows] == [True, False, True]
        assert rows[1]["errors"][0]["field"] == "regimens.0"
    with AuditTrail(url) as trail:
        entries = trail.query(limit=10)
        assert [e.http_status for e in entries] == [200, 200, 422, 200]
        assert all(e.patient_pseudonym for e in entries)
        assert trail.verify().ok
