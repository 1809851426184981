"""Property-based run of the service against its own OpenAPI schema (schemathesis + hypothesis).

Every operation of ``/openapi.json`` is called with requests generated from the schema — valid
and deliberately invalid ones (schemathesis's positive and negative modes) — by a clinician key,
against the smoke model's exported folder; a stateful run follows links from a prediction to its
record; Hypothesis strategies send hostile strings (lone surrogates, controls, look-alikes) and
numbers (hundreds of digits, NaN, numbers as strings) in every kind of patient field.
Properties (issue 14): no answer is a server error (5xx); every answer whose status the schema
documents has the documented shape; every answer but the probes' leaves exactly one new audit
record with the status answered (a batch answered 200: one per row); no raw patient identifier is
stored. Bounded by ``max_examples`` so the module runs in well under a minute.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import KeyStore

PSEUDONYM_KEY = "openapi-property-test-pseudonym-key-0123"
MAX_EXAMPLES = 20
PROBES = {"/healthz", "/readyz"}  # the only answers that are not audited
ID_PREFIX = "PID-"  # generated identifiers start with it, so a stored one cannot be a coincidence


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


# -- the audit invariants -------------------------------------------------------------------------------


def head_seq(url: str) -> int:
    """The sequence number of the newest audit record (0: none)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM audit_records")).scalar_one()
    finally:
        engine.dispose()


def records_after(url: str, seq: int) -> list[dict]:
    """The audit records appended after ``seq``, oldest first, as dicts of their columns."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM audit_records WHERE seq > :s ORDER BY seq"), {"s": seq})
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def raw_ids(body) -> list[str]:
    """The generated identifiers (strings starting with :data:`ID_PREFIX`) anywhere in a request body,
    as values or as keys."""
    if isinstance(body, dict):
        own = [k for k in body if isinstance(k, str) and k.startswith(ID_PREFIX)]
        return own + [i for v in body.values() for i in raw_ids(v)]
    if isinstance(body, list):
        return [i for v in body for i in raw_ids(v)]
    return [body] if isinstance(body, str) and body.startswith(ID_PREFIX) and len(body) >= 8 else []


def audit_problems(url: str, before: int, path: str, status: int, body, answer_text: str) -> list[str]:
    """What breaks the invariants "every answer audited with its status" and "no raw identifier stored"."""
    if path in PROBES:
        return []
    records = records_after(url, before)
    statuses = [r.get("http_status") for r in records]
    rows = body.get("patients") if isinstance(body, dict) else None
    problems = []
    if path.endswith(":batch") and status == 200 and isinstance(rows, list):
        if len(records) != max(1, len(rows)):
            problems.append(f"{len(records)} audit records for a batch of {len(rows)} rows answered 200")
    elif statuses != [status]:
        problems.append(f"audit records {statuses} for an answer {status}")
    stored = "\n".join(str(v) for r in records for v in r.values() if isinstance(v, (str, bytes)))
    for raw in raw_ids(body):
        if raw in stored or json.dumps(raw)[1:-1] in stored:
            problems.append(f"the raw identifier {raw[:30]!r} is stored")
    return problems


def _body_of(case):
    body = getattr(case, "body", None)
    return body if isinstance(body, (dict, list)) else None


def _run(operation, mode, token: str, max_examples: int, url: str) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def check(case) -> None:
        before = head_seq(url)
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        label = f"{case.method} {case.formatted_path} ({mode.value})"
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        problems = audit_problems(url, before, operation.path, response.status_code, _body_of(case), response.text)
        assert not problems, f"{label}: " + "; ".join(problems)

    try:
        check()
    except Unsatisfiable:
        # an operation without parameters or body has no invalid request to generate
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", CORE_OPERATIONS, ids=lambda x: x)
def test_no_server_error_and_documented_shapes(api_schema, service, method, path, mode):
    _, token, url = service
    _run(api_schema[path][method], mode, token, MAX_EXAMPLES, url)


def test_every_other_operation(api_schema, service):
    """Routes added by other modules (the page, the auditors' endpoints): no 5xx either, fewer examples."""
    _, token, url = service
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in CORE_OPERATIONS:
            continue
        for mode in MODES:
            _run(operation, mode, token, MAX_EXAMPLES // 3, url)


# -- stateful: from a prediction to its record ------------------------------------------------------------


def linked_schema(app):
    """The app's schema with OpenAPI links from an answer holding a prediction id to ``GET /v1/predictions/{id}``
    (the service declares none), so schemathesis's state machine chains a prediction, a page of records
    and the reads of one record."""
    from fastapi.openapi.utils import get_openapi

    raw = get_openapi(title=app.title, version=app.version, routes=app.routes)
    read = raw["paths"]["/v1/predictions/{prediction_id}"]["get"]["operationId"]
    links = {"/v1/predictions": ("post", "$response.body#/prediction_id"),
             "/v1/predictions:batch": ("post", "$response.body#/results/0/prediction/prediction_id")}
    for path, (method, pointer) in links.items():
        ok = raw["paths"][path][method]["responses"]["200"]
        ok["links"] = {"ReadTheRecord": {"operationId": read, "parameters": {"prediction_id": pointer}}}
    listing = raw["paths"]["/v1/predictions"]["get"]["responses"]["200"]
    first = "$response.body#/records/0/prediction_id"
    listing["links"] = {"ReadTheFirstRecord": {"operationId": read, "parameters": {"prediction_id": first}}}
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = app
    schema.location = "/openapi.json"
    return schema


def test_stateful_runs_keep_the_invariants(service, smoke_model):
    """Chains of calls (prediction → its record, list → a record) by an admin key (allowed everywhere):
    no 5xx, every answer audited once with its status, no raw identifier stored."""
    app, _, url = service
    with KeyStore(url) as store:
        admin = store.create("admin", "stateful").token
    schema = linked_schema(app)
    problems: list[str] = []
    called: set[str] = set()

    class Machine(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": {"Authorization": f"Bearer {admin}"}}

        def before_call(self, case):
            self._before = head_seq(url)

        def after_call(self, response, case):
            super().after_call(response, case)
            label = f"{case.method} {case.formatted_path}"
            called.add(f"{case.method} {case.operation.path}")
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code}")
            found = audit_problems(url, self._before, case.operation.path, response.status_code, _body_of(case),
                                   response.text)
            problems.extend(f"{label}: {p}" for p in found)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=[not_a_server_error])

    from fastapi.testclient import TestClient

    with TestClient(app):  # the app's lifespan (model, key store, trail) runs while the machine calls it
        Machine.run(settings=settings(max_examples=4, stateful_step_count=3, deadline=None, database=None,
                                      derandomize=True, suppress_health_check=list(HealthCheck)))
    assert "GET /v1/predictions/{prediction_id}" in called, f"the links were never followed: {sorted(called)}"
    assert not problems, "; ".join(dict.fromkeys(problems))


# -- Hypothesis: hostile strings and numbers --------------------------------------------------------------

# every code point, lone surrogates included (sent as JSON escapes \udXXX), controls, look-alikes
HOSTILE_CHARS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
LOOK_ALIKES = st.sampled_from(["PıK3CA", "ſMAD4", "СTNNB1", "ТР53", "ＴＰ53", "TP53\u200b", "CTN\u00adNB1", "m\u0430le",
                               "lenvat\u0131nib", "H\u0392V", "\ud800", "\udfff", "\x00", "\x1b[2J", "\u202e"])
HOSTILE_TEXT = st.one_of(st.text(HOSTILE_CHARS, max_size=24), LOOK_ALIKES,
                         st.builds(lambda a, b: a + b, LOOK_ALIKES, st.text(HOSTILE_CHARS, max_size=6)))
NUMBER_TEXT = st.from_regex(r"\A\s?[+-]?(\d{1,4}|\d+\.\d+|\d\.?\d*e[+-]?\d{1,3}|0x[0-9a-f]+|NaN|Infinity)\s?\Z")
# JSON number tokens that Python's parser reads: hundreds of digits, NaN, huge exponents
NUMBER_TOKENS = st.one_of(st.integers(-(10 ** 900), 10 ** 900).map(str), st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-0", "1e-400", "4" * 2000, "0." + "0" * 500 + "1", "1E+999999"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))
HOSTILE_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), HOSTILE_TEXT, NUMBER_TEXT, NUMBER_TOKENS.map(lambda t: _Token(t))),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=2)),
    max_leaves=6)
PATIENT_FIELDS = ["age", "sex", "ecog", "albumin", "bilirubin", "afp", "lesion_count", "line_of_therapy",
                  "diabetes", "macrovascular_invasion", "aetiology", "bclc_stage", "cancer_type", "msi_status",
                  "sequencing_panel", "alterations", "patient_id", "pdl1_tps", "largest_lesion_cm"]
HOSTILE_ID = st.builds(lambda tail: ID_PREFIX + tail, st.text(HOSTILE_CHARS, min_size=6, max_size=40))


class _Token:
    """A JSON number token written into the body as it is (``NaN``, 900 digits), not as a string."""

    def __init__(self, text: str) -> None:
        self.text = text


def to_json(value) -> str:
    """JSON text of ``value`` (ASCII, lone surrogates as \\udXXX escapes) with :class:`_Token` s written bare."""
    if isinstance(value, _Token):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


@st.composite
def hostile_requests(draw):
    """(path, body) of a prediction request with one hostile patient field and a generated identifier
    placed where an identifier goes, or where it should not."""
    patient = {"age": 64, "sex": "male"}
    field = draw(st.sampled_from(PATIENT_FIELDS))
    patient[field] = draw(HOSTILE_VALUE)
    if field == "alterations" and draw(st.booleans()):
        patient[field] = [{"gene": draw(HOSTILE_TEXT), "kind": draw(st.sampled_from(["missense", "fusion"])),
                           "protein_change": draw(HOSTILE_TEXT)}]
    body = {"patient": patient, "regimens": ["lenvatinib"]}
    raw_id = draw(HOSTILE_ID)
    place = draw(st.sampled_from(["top", "patient", "key", "list", "nowhere"]))
    if place == "top":
        body["patient_id"] = raw_id
    elif place == "patient":
        patient["patient_id"] = raw_id
    elif place == "key":
        patient[raw_id] = draw(HOSTILE_VALUE)
    elif place == "list":
        body["patient_id"] = [raw_id]
    if draw(st.booleans()):
        return "/v1/predictions:batch", {"patients": [body, {"patient": {"age": 70, "sex": "female"}}]}, raw_id
    return "/v1/predictions", body, raw_id


def test_hostile_strings_and_numbers_keep_the_invariants(service):
    """Hostile values in every kind of patient field, and identifiers in odd places: no 5xx, one audit
    record per answer (per row for a batch answered 200), no raw identifier stored."""
    from fastapi.testclient import TestClient

    app, token, url = service
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with TestClient(app, raise_server_exceptions=False) as client:

        @given(request=hostile_requests())
        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(request) -> None:
            path, body, _ = request
            before = head_seq(url)
            text = to_json(body)
            response = client.post(path, content=text.encode("utf-8", "surrogatepass"), headers=headers)
            assert response.status_code < 500, f"{path} {text[:300]}: {response.status_code} {response.text[:300]}"
            problems = audit_problems(url, before, path, response.status_code, json.loads(text), response.text)
            assert not problems, f"{path} {text[:300]}: " + "; ".join(problems)

        check()


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
