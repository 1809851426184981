"""The hostile catalogue (tests/data/hostile_catalogue.yaml, issue 14 "Tests and measurements") against
one app on the smoke model, through TestClient: every case is checked for its status, the field its
error names, exactly one new audit record with the status answered, no raw identifier in the database
or the logs, an answer no larger than max(4 × the request, 16 KB), and never a 5xx.

The case format is described at the top of the catalogue. A last test sends identifiers in the query
string and the path to a real ``response-model serve`` process and reads its log (uvicorn's access log
is not run by TestClient).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.web import PRESESSION_COOKIE, SESSION_COOKIE

CATALOGUE_PATH = Path(__file__).parent / "data" / "hostile_catalogue.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CATALOGUE_PATH.read_text(encoding="utf-8"))
PSEUDONYM_KEY = "hostile-catalogue-pseudonym-key-0123456789"
ATTACKER_CSRF = "attacker-chosen-csrf-token-0123456789abcdef"
MIN_SIZE_BOUND = 16 * 1024
CLIENT_LOGGERS = ("httpx", "httpcore")  # the test's own client logs the URLs it sends; not the service
_REPEAT = re.compile(r"<<(\d+)(,?)\*(.*?)>>", re.S)
_TOKEN = re.compile(r"\{token:(\w+)\}")


@dataclass
class Service:
    client: TestClient
    tokens: dict[str, str]
    engine: sa.Engine
    page_bytes: int = 0  # the signed-in clinician's empty page: what any page answer holds anyway


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    """The service on the exported smoke model, keys per role (and a revoked clinician key) in a fresh store."""
    folder = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{folder}/service.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        mp.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])  # reloads of models:/… look here
        mp.delenv(DB_URL_ENV, raising=False)
        mp.chdir(folder)  # a reload of a relative path resolves here, never in the checkout
        with KeyStore(url) as store:
            tokens = {role: store.create(role, f"hostile {role}").token
                      for role in ("clinician", "auditor", "registrar", "admin")}
            revoked = store.create("clinician", "hostile revoked")
            store.revoke(revoked.key_id)
            tokens["revoked"] = revoked.token
        app = create_app(str(smoke_model["export_dir"]), url, alias_check=0)
        engine = sa.create_engine(url)
        with TestClient(app, raise_server_exceptions=False) as client:
            svc = Service(client, tokens, engine)
            page_session({"role": "page-clinician"}, svc)
            svc.page_bytes = len(client.get("/").content)
            yield svc
        engine.dispose()


# -- building a request ---------------------------------------------------------------------------------


def expand(text: str, tokens: dict[str, str], csrf: str | None = None) -> str:
    """``text`` with ``<<N*TEXT>>`` / ``<<N,*TEXT>>`` repeated, ``{token:ROLE}`` and ``{csrf}`` filled in."""
    text = _REPEAT.sub(lambda m: (m.group(2) or "").join([m.group(3)] * int(m.group(1))), text)
    text = _TOKEN.sub(lambda m: tokens[m.group(1)], text)
    return text.replace("{csrf}", csrf or "")


def identifiers(case: dict[str, Any], tokens: dict[str, str]) -> list[str]:
    """The raw identifiers of ``case`` that must never be stored or logged."""
    given = case.get("identifier") or []
    return [expand(str(v), tokens) for v in ([given] if isinstance(given, (str, int, float)) else given)]


def _form_body(case: dict[str, Any], tokens: dict[str, str], csrf: str | None) -> bytes:
    fields = [(k, expand(str(v), tokens)) for k, v in case["form"].items()]
    if csrf is not None:
        fields.append(("csrf_token", csrf))
    return urlencode(fields, doseq=True).encode()


def request_body(case: dict[str, Any], tokens: dict[str, str], csrf: str | None) -> tuple[bytes | None, str | None]:
    """(body bytes, default content type) of ``case``."""
    if "form" in case:
        return _form_body(case, tokens, csrf), "application/x-www-form-urlencoded"
    if "b64" in case:
        return base64.b64decode(case["b64"]), "application/json"
    if "json" in case:
        text = json.dumps(case["json"], ensure_ascii=False)
    elif "raw" in case:
        text = case["raw"]
    else:
        return None, None
    body = expand(text, tokens, csrf).encode(case.get("encoding", "utf-8"), "surrogatepass")
    return body, "application/json"


def build_request(case: dict[str, Any], svc: Service, csrf: str | None) -> httpx.Request:
    """The HTTP request of ``case`` (body, headers, the caller's key)."""
    body, default_type = request_body(case, svc.tokens, csrf)
    if body is not None and case.get("gzip"):
        body = gzip.compress(body)
    headers: list[tuple[bytes, bytes]] = []
    content_type = case.get("content_type", default_type)
    if body is not None and content_type:
        headers.append((b"content-type", content_type.encode("latin-1")))
    for name, value in (case.get("headers") or {}).items():
        headers.append((name.lower().encode(), expand(str(value), svc.tokens).encode("latin-1")))
    role = case.get("role", "clinician")
    if role in svc.tokens and not any(h[0] == b"authorization" for h in headers):
        headers.append((b"authorization", f"Bearer {svc.tokens[role]}".encode()))
    path = expand(case.get("path", "/v1/predictions"), svc.tokens)
    if case.get("query"):
        query = [(k, expand(str(v), svc.tokens)) for k, v in case["query"].items()]
        path += ("&" if "?" in path else "?") + urlencode(query, quote_via=quote)
    return svc.client.build_request(case.get("method", "POST"), path, content=body, headers=headers)


# -- page sessions ---------------------------------------------------------------------------------------


def csrf_of(page: str) -> str | None:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    return found.group(1) if found else None


def put_cookie(client: TestClient, name: str, value: str) -> None:
    """Replace every cookie called ``name`` by one holding ``value``."""
    domain = "testserver.local"
    for cookie in list(client.cookies.jar):
        if cookie.name == name:
            domain = cookie.domain
            client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)
    client.cookies.set(name, value, domain=domain, path="/")


def page_session(case: dict[str, Any], svc: Service) -> str | None:
    """Set up the browser state a page case starts from; returns the CSRF token its form sends (None: none)."""
    client, role, mode = svc.client, case["role"], case.get("csrf", "ok")
    client.cookies.clear()
    token = csrf_of(client.get("/").text)
    if role in ("page-clinician", "page-auditor", "page-signed-out"):
        key = svc.tokens["auditor" if role == "page-auditor" else "clinician"]
        signed = client.post("/sign-in", data={"csrf_token": token, "api_key": key}, follow_redirects=False)
        assert signed.status_code == 303, f"set-up: sign-in answered {signed.status_code}"
        token = csrf_of(client.get("/").text) or token
    if role == "page-signed-out":
        session = client.cookies.get(SESSION_COOKIE)
        client.post("/sign-out", data={"csrf_token": token}, follow_redirects=False)
        put_cookie(client, SESSION_COOKIE, session)
        token = csrf_of(client.get("/").text) or token
    if mode == "planted":
        # the old scheme's double-submit cookie and a pre-session id of the attacker's choosing
        put_cookie(client, "rm_csrf", ATTACKER_CSRF)
        put_cookie(client, PRESESSION_COOKIE, ATTACKER_CSRF)
        return ATTACKER_CSRF
    if mode == "raw-key-cookie":
        put_cookie(client, SESSION_COOKIE, svc.tokens["clinician"])
    return None if mode == "missing" else token


# -- reading the outcome ---------------------------------------------------------------------------------


def head_seq(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM audit_records")).scalar_one()


def new_records(engine: sa.Engine, after: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_records WHERE seq > :s ORDER BY seq"), {"s": after})
        return [dict(r._mapping) for r in rows]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def database_text(engine: sa.Engine, after_seq: int) -> str:
    """Every text (and byte) value in the database that a request may have written: the audit records after
    ``after_seq`` and every row of every other table (keys, sessions, …), one value per line."""
    parts = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            where = " WHERE seq > :s" if table == "audit_records" else ""
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"{where}'), {"s": after_seq}):
                parts.extend(_text(v) for v in row)
    return "\n".join(parts)


def logged_text(caplog) -> str:
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS))


def _errors(value: Any) -> list[dict[str, Any]]:
    """Every field-level error (an item of an ``errors`` list) anywhere in an answer."""
    if isinstance(value, dict):
        listed = value.get("errors") if isinstance(value.get("errors"), list) else []
        own = [e for e in listed if isinstance(e, dict)]
        return own + [e for k, v in value.items() if k != "errors" for e in _errors(v)]
    if isinstance(value, list):
        return [e for v in value for e in _errors(v)]
    return []


def _names(field: str, wanted: str) -> bool:
    """Whether the error field ``field`` names ``wanted`` (as a whole dotted part of it)."""
    return f".{wanted}." in f".{field}."


def _warnings(value: Any) -> list[Any]:
    """Every ``warnings`` list anywhere in an answer (per answer, per regimen or per batch row)."""
    if isinstance(value, dict):
        own = [value["warnings"]] if isinstance(value.get("warnings"), list) else []
        return own + [w for k, v in value.items() if k != "warnings" for w in _warnings(v)]
    if isinstance(value, list):
        return [w for v in value for w in _warnings(v)]
    return []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def field_problems(case: dict[str, Any], response: httpx.Response, batch_200: bool) -> list[str]:
    """What is wrong with the fields the answer names (empty when it names the case's field)."""
    wanted = _as_list(case["field"])
    if "html" in response.headers.get("content-type", ""):
        if any(f'id="err-{w}' in response.text for w in wanted):
            return []
        return [f"the page shows no error beside {wanted}"]
    answer = _json(response)
    fields = [str(e.get("field")) for e in _errors(answer)]
    if any(_names(f, w) for f in fields for w in wanted):
        return []
    where = "a batch row's errors" if batch_200 else "the errors"
    return [f"{where} name {fields[:6]}, not {wanted}"]


def audit_problems(case: dict[str, Any], response: httpx.Response, records: list[dict[str, Any]],
                   batch_200: bool, request_json: Any) -> list[str]:
    """What is wrong with the audit records the answer left (empty when they are as the issue asks)."""
    statuses = [r.get("http_status") for r in records]
    if batch_200:
        rows = request_json.get("patients") if isinstance(request_json, dict) else None
        expected = max(1, len(rows)) if isinstance(rows, list) else 1
        answer = _json(response) or {}
        n_ok = answer.get("n_ok") if isinstance(answer, dict) else None
        problems = [] if len(records) == expected else [f"{len(records)} new audit records for {expected} rows"]
        if n_ok is not None and rows and statuses.count(200) != n_ok:
            problems.append(f"records' statuses {statuses} for {n_ok} rows scored")
        return problems
    if statuses != [response.status_code]:
        return [f"new audit records' statuses {statuses}; expected exactly [{response.status_code}]"]
    return []


def _predictions_bytes(answer: Any) -> int:
    """The size of the predictions an answer carries (a single prediction, or a batch's scored rows)."""
    if not isinstance(answer, dict):
        return 0
    if "prediction_id" in answer and "regimens" in answer:
        return len(json.dumps(answer, ensure_ascii=False).encode())
    rows = answer.get("results") if isinstance(answer.get("results"), list) else []
    return sum(len(json.dumps(r["prediction"], ensure_ascii=False).encode()) for r in rows
               if isinstance(r, dict) and isinstance(r.get("prediction"), dict))


def size_bound_problems(svc: Service, request: httpx.Request, response: httpx.Response) -> list[str]:
    """The answer-size bound: what an answer holds beyond its predictions (and, for a page, beyond the empty
    page) is at most max(4 × the request, 16 KB). 2xx reads of the trail are as large as the records they hold."""
    if request.method == "GET" and request.url.path.startswith("/v1/predictions") and response.status_code < 300:
        return []
    request_size = len(request.content or b"") + len(str(request.url))
    bound = max(4 * request_size, MIN_SIZE_BOUND)
    if "html" in response.headers.get("content-type", ""):
        bound += svc.page_bytes
    size = len(response.content)
    if response.status_code < 300:
        size -= _predictions_bytes(_json(response))
    return [] if size <= bound else [f"answer of {len(response.content)} bytes ({size} beyond its predictions) "
                                     f"> bound {bound}"]


def check_case(case: dict[str, Any], svc: Service, caplog) -> list[str]:
    """Send ``case`` once; returns what is wrong with its answer, its records and the logs (empty: all good)."""
    csrf = page_session(case, svc) if str(case.get("role", "")).startswith("page-") else None
    if not str(case.get("role", "")).startswith("page-"):
        svc.client.cookies.clear()
    before = head_seq(svc.engine)
    caplog.clear()
    request = build_request(case, svc, csrf)
    response = svc.client.send(request, follow_redirects=False)
    status = response.status_code
    problems = [] if status < 500 else [f"server error {status}"]
    expected = _as_list(case["status"])
    if status not in expected:
        problems.append(f"status {status}, expected {expected} — answer {response.text[:200]!r}")
    batch_200 = case.get("path") == "/v1/predictions:batch" and status == 200
    if case.get("field") and (status >= 400 or batch_200) and status in expected:
        problems += field_problems(case, response, batch_200)
    if case.get("says") and status >= 400:
        text = response.text.lower()
        problems += [f"the answer does not say {s!r}" for s in case["says"] if s.lower() not in text]
    records = new_records(svc.engine, before)
    if case.get("warns") and status == 200 and "json" in response.headers.get("content-type", ""):
        if not any(case["warns"] in json.dumps(w, ensure_ascii=False) for w in _warnings(_json(response))):
            problems.append(f"a 200 answer without a warning naming {case['warns']!r}")
        elif not any("warnings" in json.dumps(r, default=str) and case["warns"] in json.dumps(r, default=str)
                     for r in records):
            problems.append("the warning is not in the audit record")
    if case.get("audited", True):
        try:
            request_json = json.loads(request.content) if request.content else None
        except ValueError:
            request_json = None
        problems += audit_problems(case, response, records, batch_200, request_json)
    problems += size_bound_problems(svc, request, response)
    for raw in identifiers(case, svc.tokens):
        if raw in database_text(svc.engine, before):
            problems.append(f"the raw identifier {raw[:40]!r} is stored in the database")
        if raw in logged_text(caplog):
            problems.append(f"the raw identifier {raw[:40]!r} is in the logs")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hostile_case(service, case, caplog):
    caplog.set_level(logging.DEBUG)
    for attempt in range(case.get("repeat", 1)):
        problems = check_case(case, service, caplog)
        assert not problems, f"[{case['category']}] attempt {attempt + 1}: " + " || ".join(problems)


def test_the_catalogue_is_large_and_well_formed():
    """At least 150 cases, names unique, every case with a category and a status, no unknown keys."""
    known = {"name", "category", "method", "path", "query", "role", "csrf", "headers", "json", "raw", "b64", "form",
             "encoding", "gzip", "content_type", "status", "field", "warns", "says", "identifier", "repeat", "audited"}
    assert len(CASES) >= 150
    assert len({c["name"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert set(case) <= known, (case["name"], set(case) - known)
        assert case.get("category") and case.get("status"), case["name"]
        assert sum(k in case for k in ("json", "raw", "b64", "form")) <= 1, case["name"]


# -- the access log of a real server ------------------------------------------------------------------------


def test_the_access_log_keeps_no_query_string_or_path_id(smoke_model, tmp_path):
    """uvicorn's access log (or the service's own) must not keep ``?access_token=…`` or an id typed in a path."""
    from conftest import SMOKE_PSEUDONYM_KEY

    from service_process import start_service

    url = f"sqlite:///{tmp_path}/access.db"
    with KeyStore(url) as store:
        auditor = store.create("auditor", "access log").token
    env = {PSEUDONYM_KEY_ENV: SMOKE_PSEUDONYM_KEY, "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "0"}
    server = start_service(str(smoke_model["export_dir"]), url, tmp_path, env=env)
    secret, typed_id = "rm_querysecret_0000000000000000000000000000", "MRN-ACCESSLOG-4242"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            client.get(f"/v1/predictions/{typed_id}", headers={"Authorization": f"Bearer {auditor}"})
            client.get("/v1/predictions", params={"access_token": secret})
            client.post("/v1/predictions", params={"patient_id": typed_id}, json={"patient": {"age": 64}})
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert secret not in log, "the access log keeps the query string (?access_token=…)"
    assert typed_id not in log, "the access log keeps an identifier typed in the path or query"
