"""Issue 14 point 7: server-side page sessions, CSRF tokens bound to them, and the security headers of every
answer (JSON, HTML, the guard's and the handlers' refusals, a 500) — through TestClient on the smoke model.

The report's Content-Security-Policy is checked where the report is already rendered through the endpoint
(tests/test_report.py::test_endpoint_roles_and_cache), as rendering it again here would cost ~10 s."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import SMOKE_PSEUDONYM_KEY
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.audit import AuditTrail
from response_model.service.keys import DB_URL_ENV, TIME_FORMAT, KeyStore, make_engine
from response_model.service.models import EXAMPLE_PATIENT
from response_model.service.sessions import (
    ABSOLUTE_ENV,
    IDLE_ENV,
    Lifetimes,
    SessionEnded,
    SessionStore,
    form_token,
    page_sessions,
    session_hash,
)
from response_model.service.web import (
    PAGE_ENDPOINT,
    PAGE_PURPOSE,
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    SIGN_IN_PURPOSE,
)

PATIENT_FORM = {"age": "64", "sex": "male", "ecog": "1", "aetiology": "HBV", "albumin": "3.6", "afp": "850",
                "source": "fields"}
BOOM = "/test-only/boom"


@pytest.fixture(scope="module")
def svc(smoke_model, tmp_path_factory):
    """(client, tokens by role, key ids by role, db url) of a service on the exported smoke model, with one
    extra route that raises, for the 500 path."""
    folder = tmp_path_factory.mktemp("sessions")
    url = f"sqlite:///{folder}/sessions.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, SMOKE_PSEUDONYM_KEY)
        mp.delenv(DB_URL_ENV, raising=False)
        mp.delenv(IDLE_ENV, raising=False)
        mp.delenv(ABSOLUTE_ENV, raising=False)
        with KeyStore(url) as store:
            created = {role: store.create(role, f"sessions {role}") for role in ("clinician", "auditor", "admin")}
        app = create_app(str(smoke_model["export_dir"]), url, alias_check=0)

        def boom() -> None:
            raise RuntimeError("a bug in a route")

        app.add_api_route(BOOM, boom, methods=["GET"])
        with TestClient(app, raise_server_exceptions=False) as client:
            yield {"client": client, "url": url, "tokens": {r: c.token for r, c in created.items()},
                   "key_ids": {r: c.key_id for r, c in created.items()}}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client: TestClient, token: str) -> tuple[str, str]:
    """Sign in afresh (cookies cleared); return (the session cookie, the signed-in page's CSRF token)."""
    client.cookies.clear()
    first = client.get("/")
    response = client.post("/sign-in", data={"csrf_token": csrf_of(first.text), "api_key": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return client.cookies[SESSION_COOKIE], csrf_of(client.get("/").text)


def plant(client: TestClient, name: str, value: str) -> None:
    """Put a cookie into the browser, as an attacker (or a thief) would; replaces one the service set."""
    client.cookies.set(name, value, domain="testserver.local")


def session_rows(url: str) -> list[dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.select(page_sessions))]
    finally:
        engine.dispose()


def set_times(url: str, session_id: str, **times: datetime) -> None:
    """Move a session's stored times (as if that much time had passed)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(page_sessions.update().where(page_sessions.c.session_hash == session_hash(session_id))
                         .values({k: v.strftime(TIME_FORMAT) for k, v in times.items()}))
    finally:
        engine.dispose()


def page_records(url: str, after: int) -> list[dict]:
    with AuditTrail(url) as trail:
        return [e.to_dict() for e in trail.query(limit=1000)][after:]


def count(url: str) -> int:
    with AuditTrail(url) as trail:
        return trail.count()


def submit(client: TestClient, csrf: str, **extra) -> object:
    return client.post("/", data={**PATIENT_FORM, "csrf_token": csrf, "regimens": ["sorafenib"], **extra})


# -- sessions -----------------------------------------------------------------------------------------


def test_the_cookie_is_an_opaque_session_id_and_the_database_keeps_only_its_hash(svc):
    client, token, url = svc["client"], svc["tokens"]["clinician"], svc["url"]
    cookie, csrf = sign_in(client, token)
    secret = token.split("_")[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie) and cookie != token and secret not in cookie
    (row,) = [r for r in session_rows(url) if r["session_hash"] == session_hash(cookie)]
    assert row["key_id"] == svc["key_ids"]["clinician"] and row["ended"] is None
    stored = json.dumps(session_rows(url))
    assert cookie not in stored and secret not in stored and token not in stored
    assert cookie not in client.get("/").text and csrf != cookie
    response = submit(client, csrf)
    assert response.status_code == 200, response.text[:2000]
    assert 'id="ranking"' in response.text


def test_a_stolen_cookie_is_refused_after_sign_out(svc):
    client, url = svc["client"], svc["url"]
    stolen, csrf = sign_in(client, svc["tokens"]["clinician"])
    out = client.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    (row,) = [r for r in session_rows(url) if r["session_hash"] == session_hash(stolen)]
    assert row["ended"] is not None
    client.cookies.clear()
    plant(client, SESSION_COOKIE, stolen)
    page = client.get("/")
    assert page.status_code == 401 and "ended by signing out" in page.text and 'id="patient-form"' not in page.text
    before = count(url)
    # the thief holds the id, so can compute its token: the session is still refused, and the attempt audited
    plant(client, SESSION_COOKIE, stolen)
    refused = submit(client, form_token(stolen, PAGE_PURPOSE))
    assert refused.status_code == 401 and 'id="ranking"' not in refused.text
    assert [(r["endpoint"], r["http_status"], r["key_id"]) for r in page_records(url, before)] == [
        (PAGE_ENDPOINT, 401, None)]


def test_revoking_the_key_ends_its_sessions_at_once(svc):
    client, url = svc["client"], svc["url"]
    with KeyStore(url) as store:  # another process's store, as for `response-model keys revoke`
        created = store.create("clinician", "sessions short-lived")
        cookie, csrf = sign_in(client, created.token)
        assert submit(client, csrf).status_code == 200
        store.revoke(created.key_id)
    before = count(url)
    refused = submit(client, csrf)
    assert refused.status_code == 401 and "revoked" in refused.text
    assert [(r["http_status"], r["key_id"]) for r in page_records(url, before)] == [(401, None)]
    plant(client, SESSION_COOKIE, cookie)
    page = client.get("/")
    assert page.status_code == 401 and "revoked" in page.text
    assert any(c.startswith(f"{SESSION_COOKIE}=") and "max-age=0" in c.lower()
               for c in page.headers.get_list("set-cookie"))


@pytest.mark.parametrize("which", ["idle", "absolute"])
def test_an_expired_session_is_refused(svc, which):
    client, url = svc["client"], svc["url"]
    cookie, csrf = sign_in(client, svc["tokens"]["clinician"])
    now = datetime.now(UTC)
    if which == "idle":  # last used 31 minutes ago (default idle lifetime 30 minutes)
        set_times(url, cookie, last_used=now - timedelta(minutes=31))
        reason = "30 minutes without use"
    else:  # used a second ago, but the 12 hours since sign-in are over
        set_times(url, cookie, created=now - timedelta(hours=12, minutes=1), expires=now - timedelta(minutes=1))
        reason = "12 hours after signing in"
    refused = submit(client, csrf)
    assert refused.status_code == 401 and reason in refused.text and 'id="ranking"' not in refused.text


def test_session_lifetimes_idle_renewed_by_use_absolute_not(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    with KeyStore(url) as keys:
        key = keys.get(keys.create("clinician", "store test").key_id)
        sessions = SessionStore(keys.engine, Lifetimes(idle=timedelta(minutes=10), absolute=timedelta(hours=1)))
        start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
        session_id = sessions.start(key, now=start)
        for minutes in range(9, 60, 9):  # used every 9 minutes: the idle lifetime keeps being renewed
            assert sessions.resume(session_id, now=start + timedelta(minutes=minutes)).key.key_id == key.key_id
        with pytest.raises(SessionEnded, match="60 minutes after signing in"):
            sessions.resume(session_id, now=start + timedelta(minutes=60))
        idle = sessions.start(key, now=start)
        # a use within the touch interval (a tenth of the idle lifetime, at most a minute) is not written:
        # the session ends up to that much early, never late
        sessions.resume(idle, now=start + timedelta(seconds=30))
        with pytest.raises(SessionEnded, match="10 minutes without use"):
            sessions.resume(idle, now=start + timedelta(minutes=10))
        # an unknown, a malformed and an ended id are refused; ending twice is harmless
        with pytest.raises(SessionEnded, match="not known"):
            sessions.resume("A" * 43, now=start)
        with pytest.raises(SessionEnded, match="not valid"):
            sessions.resume("rm_0123456789ab_" + "x" * 43, now=start)
        fresh = sessions.start(key, now=start + timedelta(minutes=61))  # prunes the expired ones
        assert sessions.end(fresh) and not sessions.end(fresh)
        with pytest.raises(SessionEnded, match="signing out"):
            sessions.resume(fresh, now=start + timedelta(minutes=62))
        with keys.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(page_sessions)).scalar() == 1


def test_lifetimes_from_the_environment(monkeypatch):
    monkeypatch.setenv(IDLE_ENV, "15")
    monkeypatch.setenv(ABSOLUTE_ENV, "8")
    assert Lifetimes.from_env() == Lifetimes(timedelta(minutes=15), timedelta(hours=8))
    assert Lifetimes.from_env().describe() == "15 minutes without use, 8 hours after signing in"
    for bad in ("0", "-3", "nan", "inf", "half an hour"):
        monkeypatch.setenv(IDLE_ENV, bad)
        with pytest.raises(ValueError, match=rf"\${IDLE_ENV}=.*positive"):
            Lifetimes.from_env()


def test_sign_in_always_issues_a_new_session_id(svc):
    client, token = svc["client"], svc["tokens"]["clinician"]
    client.cookies.clear()
    planted = "P" * 43  # an id an attacker chose and planted before the victim signs in
    plant(client, SESSION_COOKIE, planted)
    page = client.get("/")
    client.post("/sign-in", data={"csrf_token": csrf_of(page.text), "api_key": token}, follow_redirects=False)
    assert client.cookies[SESSION_COOKIE] != planted
    assert not [r for r in session_rows(svc["url"]) if r["session_hash"] == session_hash(planted)]


# -- CSRF ---------------------------------------------------------------------------------------------


def test_a_planted_csrf_cookie_or_another_sessions_token_is_refused(svc):
    client, url = svc["client"], svc["url"]
    _, attacker_csrf = sign_in(client, svc["tokens"]["admin"])  # the attacker's own session and token
    victim, victim_csrf = sign_in(client, svc["tokens"]["clinician"])
    presession = "Q" * 43
    plants = [
        ({"rm_csrf": "attacker-token-0123456789abcdef"}, "attacker-token-0123456789abcdef"),  # the old double submit
        ({PRESESSION_COOKIE: presession}, form_token(presession, SIGN_IN_PURPOSE)),  # a sign-in token of its own
        ({PRESESSION_COOKIE: presession}, form_token(presession, PAGE_PURPOSE)),
        ({}, attacker_csrf),  # a valid token of another session
        ({}, ""),
    ]
    before = count(url)
    for cookies, token in plants:
        for name, value in cookies.items():
            plant(client, name, value)
        response = submit(client, token)
        assert response.status_code == 403 and "security token" in response.text, (cookies, token)
        assert 'id="ranking"' not in response.text
    records = page_records(url, before)
    assert [(r["http_status"], r["key_id"], r["prediction_id"]) for r in records] == [
        (403, svc["key_ids"]["clinician"], None)] * len(plants)
    # sign-out needs the session's token too; a form another site sent is refused even with the right token
    assert client.post("/sign-out", data={"csrf_token": attacker_csrf}).status_code == 403
    assert submit(client, victim_csrf).status_code == 200
    cross = client.post("/", data={**PATIENT_FORM, "csrf_token": victim_csrf, "regimens": ["sorafenib"]},
                        headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert client.cookies[SESSION_COOKIE] == victim


def test_the_sign_in_form_token_is_bound_to_the_pre_session_cookie(svc):
    client, token = svc["client"], svc["tokens"]["clinician"]
    client.cookies.clear()
    page = client.get("/")
    presession = client.cookies[PRESESSION_COOKIE]
    assert csrf_of(page.text) == form_token(presession, SIGN_IN_PURPOSE) and presession not in page.text
    # an attacker's planted rm_csrf cookie and token, or another pre-session's token, do not sign anybody in
    plant(client, "rm_csrf", "attacker-token-0123456789abcdef")
    for sent in ("attacker-token-0123456789abcdef", form_token("R" * 43, SIGN_IN_PURPOSE)):
        refused = client.post("/sign-in", data={"csrf_token": sent, "api_key": token}, follow_redirects=False)
        assert refused.status_code == 403 and SESSION_COOKIE not in client.cookies
    signed = client.post("/sign-in", data={"csrf_token": csrf_of(page.text), "api_key": token},
                         follow_redirects=False)
    assert signed.status_code == 303 and SESSION_COOKIE in client.cookies


# -- headers ------------------------------------------------------------------------------------------


def assert_api_headers(response) -> None:
    headers = response.headers
    assert headers.get("cache-control") == "no-store", (response.request.url, response.status_code)
    assert headers.get("x-content-type-options") == "nosniff", (response.request.url, response.status_code)
    assert headers.get("x-frame-options") == "DENY" and headers.get("referrer-policy") == "no-referrer"
    (policy,) = headers.get_list("content-security-policy")
    assert "frame-ancestors 'none'" in policy


def test_security_headers_on_every_answer(svc):
    client, tokens = svc["client"], svc["tokens"]
    clinician, auditor = ({"Authorization": f"Bearer {tokens[r]}"} for r in ("clinician", "auditor"))
    body = {"patient": EXAMPLE_PATIENT, "regimens": ["sorafenib"]}
    answers = {
        200: [client.get("/healthz"), client.get("/readyz"), client.get("/v1/model", headers=clinician),
              client.post("/v1/predictions", headers=clinician, json=body),
              client.get("/v1/predictions", headers=auditor)],
        401: [client.post("/v1/predictions", json=body), client.get("/v1/predictions")],
        403: [client.get("/v1/predictions", headers=clinician)],
        404: [client.get("/v1/predictions/3f2b8c1e-5d4a-4e7b-9c61-2a8f0d7e4b19", headers=auditor),
              client.get("/nowhere")],
        405: [client.delete("/v1/model", headers=clinician)],
        413: [client.post("/v1/predictions", headers={**clinician, "Content-Type": "application/json"},
                          content=b" " * (257 * 1024))],
        422: [client.post("/v1/predictions", headers=clinician, json={"patient": {"age": "old"}}),
              client.post("/v1/predictions", headers={**clinician, "Content-Type": "application/json"},
                          content=b'{"patient": {"age": 60, "age": 61}}'),
              client.get("/v1/predictions?page_size=0", headers=auditor),
              client.get("/v1/predictions/not-a-prediction", headers=auditor)],
        500: [client.get(BOOM)],
    }
    for status, responses in answers.items():
        for response in responses:
            assert response.status_code == status, (response.request.url, response.status_code, response.text[:300])
            assert_api_headers(response)
            if response.headers["content-type"].startswith("application/json"):
                assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_page_keeps_its_own_policy_and_its_style_is_allowed_by_hash(svc):
    client = svc["client"]
    client.cookies.clear()
    answers = [client.get("/")]
    answers.append(client.post("/sign-in", data={"csrf_token": csrf_of(answers[0].text),
                                                 "api_key": svc["tokens"]["clinician"]}, follow_redirects=False))
    answers.append(client.get("/"))
    answers.append(client.post("/", data={"csrf_token": "wrong"}))
    for response in answers:
        assert_api_headers(response)
        policy = response.headers["content-security-policy"]
        assert "form-action 'self'" in policy and "unsafe-inline" not in policy
    page = answers[2].text
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert styles and "<script" not in page and " style=" not in page
    for style in styles:
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in answers[2].headers["content-security-policy"]
