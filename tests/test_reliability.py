"""Reliability of the prediction service (issue 6 §5), against real `response-model serve` processes
(uvicorn on a free loopback port, not TestClient) serving the session's smoke model.

* load — 16 concurrent clients for $RESPONSE_MODEL_LOAD_SECONDS (default 12 s): no 5xx, and the
  audit trail gains exactly one record per answered request;
* crash — ``kill -9`` while answering; after a restart ``audit verify`` passes and every prediction
  answered 200 is in the trail;
* hot swap — the champion alias moves under load: no failed request, every response names the
  version that produced it (its audit record says the same), both versions are in the trail;
* bad input — the catalogue tests/data/bad_inputs.yaml: each case 4xx with its message, never 5xx;
  oversized bodies refused from Content-Length before the body is sent, or while it streams;
* no model — registry unreachable at start-up: served from the fallback folder (and saying so) or
  an exit with a clear message, never serving without a model.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import SMOKE_PSEUDONYM_KEY

from response_model.service.audit import AuditTrail
from response_model.service.keys import KeyStore
from response_model.service.models import EXAMPLE_PATIENT

from service_process import cli, free_port, port_open, start_service

LOAD_SECONDS_ENV = "RESPONSE_MODEL_LOAD_SECONDS"
CATALOGUE = Path(__file__).parent / "data" / "bad_inputs.yaml"
BASE_ENV = {"RESPONSE_MODEL_PSEUDONYM_KEY": SMOKE_PSEUDONYM_KEY, "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "0"}


# -- helpers -------------------------------------------------------------------------------------------


def make_keys(db_url: str) -> dict[str, str]:
    """A token per role in the key store at ``db_url``."""
    with KeyStore(db_url) as store:
        return {role: store.create(role, f"reliability {role}").token for role in ("clinician", "auditor", "admin")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_count(db_url: str) -> int:
    with AuditTrail(db_url) as trail:
        return trail.count()


def verify_cli(db_url: str) -> tuple[int, str]:
    """(exit code, output) of ``response-model audit verify --db DB_URL``."""
    import subprocess

    done = subprocess.run(cli("audit", "verify", "--db", db_url), capture_output=True, text=True, timeout=300,
                          env={**os.environ, **BASE_ENV})
    return done.returncode, done.stdout + done.stderr


def requests_mix() -> list[dict]:
    """Request bodies the clients cycle through: genotyped, clinical-only, a regimen subset, and one
    with albumin in g/L (answered 422 — rejections are audited too)."""
    genotyped = {"patient": copy.deepcopy(EXAMPLE_PATIENT), "patient_id": "load-0001"}
    clinical = {"patient": {k: v for k, v in EXAMPLE_PATIENT.items() if k not in ("alterations", "tmb", "msi_status")}}
    subset = {"patient": {"age": 58, "sex": "female", "afp": 560.0, "albumin": 3.2},
              "regimens": ["atezolizumab_bevacizumab", "lenvatinib", "ramucirumab"]}
    bad = {"patient": {"age": 70, "sex": "male", "albumin": 35}}
    return [genotyped, clinical, subset, genotyped, clinical, bad]


class Clients:
    """``n`` client threads POSTing prediction requests until stopped; every answer is recorded."""

    def __init__(self, base_url: str, token: str, n: int, bodies: list[dict] | None = None,
                 swallow_connection_errors: bool = False) -> None:
        self.base_url, self.token, self.n = base_url, token, n
        self.bodies = bodies or requests_mix()
        self.swallow = swallow_connection_errors
        self.answers: list[list[tuple[int, dict]]] = [[] for _ in range(n)]  # per client, in order
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=auth(self.token), timeout=120) as client:
            k = i
            while not self.stop_event.is_set():
                body = self.bodies[k % len(self.bodies)]
                k += 1
                try:
                    r = client.post("/v1/predictions", json=body)
                except httpx.HTTPError as error:
                    if not self.swallow:
                        self.failures.append(f"client {i}: {type(error).__name__}: {error}")
                    if self.swallow or self.stop_event.is_set():
                        self.stop_event.wait(0.05)
                        continue
                    return
                try:
                    payload = r.json()
                except ValueError:
                    payload = {"text": r.text}
                self.answers[i].append((r.status_code, payload))

    def start(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=180)

    @property
    def all(self) -> list[tuple[int, dict]]:
        return [a for answers in self.answers for a in answers]

    def count(self, status: int | None = None) -> int:
        return sum(1 for s, _ in self.all if status is None or s == status)

    def wait_for(self, condition, timeout: float = 300.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.failures:
                raise AssertionError(f"client failures while waiting for {what}: {self.failures[:3]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; answers so far: "
                             f"{Counter(s for s, _ in self.all)}")


# -- a service on the smoke model's exported folder, shared by the load, bad-input and size tests -----


@pytest.fixture(scope="module")
def service(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    db_url = f"sqlite:///{folder}/service.db"
    tokens = make_keys(db_url)
    server = start_service(str(smoke_model["export_dir"]), db_url, folder, env=BASE_ENV)
    yield {"server": server, "url": server.base_url, "db": db_url, "tokens": tokens, "folder": folder}
    server.stop()


@pytest.mark.slow
def test_load_no_5xx_and_one_audit_record_per_answer(service, smoke_model):
    seconds = float(os.environ.get(LOAD_SECONDS_ENV, "12"))
    before = audit_count(service["db"])
    clients = Clients(service["url"], service["tokens"]["clinician"], n=16).start()
    time.sleep(seconds)
    clients.stop()
    assert not clients.failures, clients.failures[:5]
    statuses = Counter(s for s, _ in clients.all)
    answered = sum(statuses.values())
    added = audit_count(service["db"]) - before
    print(f"\nload: 16 clients for {seconds:g} s: {answered} requests answered {dict(statuses)}, "
          f"{answered / seconds:.1f}/s; {added} audit records added")
    assert answered > 16
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 422}, statuses
    assert statuses[200] > 0 and statuses[422] > 0
    assert added == answered
    assert {p["model_version"] for s, p in clients.all if s == 200} == {str(smoke_model["version"])}
    code, output = verify_cli(service["db"])
    assert code == 0, output


# -- bad input -------------------------------------------------------------------------------------------


def build_request(case: dict) -> tuple[str, bytes, dict[str, str]]:
    """(path, body bytes, headers) of a catalogue case."""
    if "hex" in case:
        body = bytes.fromhex(case["hex"])
    elif "raw_repeat" in case:
        body = (case["raw_repeat"]["text"] * int(case["raw_repeat"]["times"])).encode()
    elif "raw" in case:
        body = case["raw"].encode("utf-8", "surrogatepass")
    elif "repeat_patients" in case:
        body = json.dumps({"patients": [case["json"]] * int(case["repeat_patients"])}).encode()
    else:
        body = json.dumps(case["json"], ensure_ascii=False).encode("utf-8")
    body += b" " * int(case.get("pad", 0))
    headers = {"Content-Type": case.get("content_type", "application/json")}
    return case.get("path", "/v1/predictions"), body, headers


def answer_messages(response: httpx.Response) -> list[str]:
    """Every message of an error answer: ``errors[].message``, ``detail`` text or items."""
    try:
        payload = response.json()
    except ValueError:
        return [response.text]
    messages = []
    if isinstance(payload, dict):
        for item in payload.get("errors") or []:
            messages.append(str(item.get("message", item)))
        detail = payload.get("detail")
        if isinstance(detail, str):
            messages.append(detail)
        elif isinstance(detail, list):
            messages += [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
    return messages or [response.text]


def test_bad_input_catalogue(service):
    cases = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    assert len(cases) >= 30
    before = audit_count(service["db"])
    failures = []
    with httpx.Client(base_url=service["url"], headers=auth(service["tokens"]["clinician"]), timeout=120) as client:
        for case in cases:
            path, body, headers = build_request(case)
            r = client.post(path, content=body, headers=headers)
            messages = answer_messages(r)
            assert 400 <= case["status"] < 500, case["name"]
            if r.status_code >= 500:
                failures.append(f"{case['name']}: {r.status_code} (server error) {messages}")
            elif r.status_code != case["status"]:
                failures.append(f"{case['name']}: {r.status_code}, expected {case['status']}: {messages}")
            elif not any(case["message"].lower() in m.lower() for m in messages):
                failures.append(f"{case['name']}: no message contains {case['message']!r}: {messages}")
    assert not failures, "\n".join(failures)
    # every rejected prediction request is in the audit trail (one record each), and the chain holds
    assert audit_count(service["db"]) - before == len(cases)
    code, output = verify_cli(service["db"])
    assert code == 0, output


def _raw_exchange(port: int, head: bytes, body_chunks: list[bytes] = (), read_first: bool = False) -> bytes:
    """Send an HTTP/1.1 request by hand; returns the raw answer (read until the server closes or 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head)
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        s.settimeout(60)
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
        return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_oversized_body_refused_before_it_is_sent(service):
    """A Content-Length over the limit is answered 413 at once: the client has sent only the headers."""
    token = service["tokens"]["clinician"].encode()
    head = (b"POST /v1/predictions:batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token + b"\r\nContent-Length: 104857600\r\n\r\n")
    before = audit_count(service["db"])
    answer = _raw_exchange(service["server"].port, head)  # 100 MiB announced, not one byte sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "104857600 bytes is too large" in payload["errors"][0]["message"]
    assert "at most 2097152 bytes" in payload["errors"][0]["message"]
    assert audit_count(service["db"]) == before + 1  # audited, like every rejected prediction request
    # without a valid key, nobody learns more than 401
    head_no_key = head.replace(b"Authorization: Bearer " + token, b"Authorization: Bearer nope")
    assert _raw_exchange(service["server"].port, head_no_key).startswith(b"HTTP/1.1 401")


def test_oversized_chunked_body_refused_while_streaming(service):
    """Without a length (chunked), the body is counted as it arrives and refused past the limit."""
    token = service["tokens"]["clinician"].encode()
    head = (b"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b" " * 65536
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n"] * 8  # 512 KiB of a 256 KiB limit, never finished
    answer = _raw_exchange(service["server"].port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"is too large" in answer and b"at most 262144 bytes" in answer


# -- crash -----------------------------------------------------------------------------------------------


def test_kill_9_while_answering_loses_no_answered_prediction(smoke_model, tmp_path):
    db_url = f"sqlite:///{tmp_path}/service.db"
    tokens = make_keys(db_url)
    server = start_service(str(smoke_model["export_dir"]), db_url, tmp_path, env=BASE_ENV, name="crash")
    clients = Clients(server.base_url, tokens["clinician"], n=6, swallow_connection_errors=True).start()
    try:
        clients.wait_for(lambda: clients.count(200) >= 30, what="30 answered predictions")
        server.kill9()  # SIGKILL while six clients have requests in flight
    finally:
        clients.stop()
        server.stop()
    answered = [p["prediction_id"] for s, p in clients.all if s == 200]
    statuses = Counter(s for s, _ in clients.all)
    assert not [s for s in statuses if s >= 500], statuses

    restarted = start_service(str(smoke_model["export_dir"]), db_url, tmp_path, env=BASE_ENV, name="restart")
    try:
        code, output = verify_cli(db_url)
        assert code == 0, output
        with AuditTrail(db_url) as trail:
            n_records = trail.count()
            missing = [pid for pid in answered if trail.get(pid) is None]
            assert all(trail.get(pid).status == "accepted" for pid in answered[:50])
        print(f"\ncrash: {len(answered)} predictions answered 200 before kill -9 ({dict(statuses)}); "
              f"{n_records} audit records after restart; missing from the trail: {len(missing)}")
        assert not missing, missing[:5]
        # the restarted service keeps appending to the same, intact chain
        r = httpx.post(restarted.base_url + "/v1/predictions", json=requests_mix()[0],
                       headers=auth(tokens["clinician"]), timeout=120)
        assert r.status_code == 200, r.text
        with AuditTrail(db_url) as trail:
            result = trail.verify()
        assert result.ok and result.n_records == n_records + 1, result
    finally:
        restarted.stop()


# -- hot swap ----------------------------------------------------------------------------------------


@pytest.fixture()
def swap_registry(smoke_model, tmp_path, monkeypatch):
    """A private MLflow store with the smoke model registered twice (versions 1 and 2), champion = 1."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # else the registry stays where an earlier test pointed it
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("hcc-swap")
    versions = [client.create_model_version("hcc-swap", source=str(smoke_model["export_dir"])).version
                for _ in range(2)]
    client.set_registered_model_alias("hcc-swap", "champion", versions[0])
    yield {"tracking_uri": uri, "name": "hcc-swap", "versions": [str(v) for v in versions]}
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_hot_swap_under_load(swap_registry, tmp_path):
    from response_model.modeling.registry import promote

    v1, v2 = swap_registry["versions"]
    db_url = f"sqlite:///{tmp_path}/service.db"
    tokens = make_keys(db_url)
    env = {**BASE_ENV, "MLFLOW_TRACKING_URI": swap_registry["tracking_uri"], "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "1"}
    server = start_service("models:/hcc-swap@champion", db_url, tmp_path, env=env, name="swap")
    good = [b for b in requests_mix() if b["patient"].get("albumin") != 35]
    clients = Clients(server.base_url, tokens["clinician"], n=4, bodies=good).start()
    try:
        clients.wait_for(lambda: clients.count(200) >= 12, what="answers from version 1")
        decision = promote("hcc-swap", v2, gate={}, evaluation={"metrics": []})
        assert decision.promoted, decision
        clients.wait_for(lambda: sum(p.get("model_version") == v2 for _, p in clients.all) >= 12,
                         what="answers from version 2 after the promotion")
    finally:
        clients.stop()
        server.stop()
    assert not clients.failures, clients.failures[:5]
    statuses = Counter(s for s, _ in clients.all)
    assert set(statuses) == {200}, statuses  # no failed request during the swap
    versions = Counter(p["model_version"] for _, p in clients.all)
    print(f"\nhot swap: {sum(statuses.values())} answers, by version {dict(versions)}")
    assert set(versions) == {v1, v2}
    for answers in clients.answers:  # each client's requests are sequential: once on v2, never back
        seen = [p["model_version"] for _, p in answers]
        assert seen == sorted(seen, key=lambda v: v == v2), seen
    with AuditTrail(db_url) as trail:
        for _, payload in clients.all:  # the answer names the version its audit record names
            assert trail.get(payload["prediction_id"]).model_version == payload["model_version"]
        trail_versions = {e.model_version for e in trail.query(limit=1000)}
    assert {v1, v2} <= trail_versions
    code, output = verify_cli(db_url)
    assert code == 0, output


# -- no model at start-up ----------------------------------------------------------------------------


def _unreachable_registry_env() -> dict[str, str]:
    closed = free_port()  # nothing listens there
    return {**BASE_ENV, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def test_no_registry_serves_the_fallback_folder_and_says_so(smoke_model, tmp_path):
    db_url = f"sqlite:///{tmp_path}/service.db"
    tokens = make_keys(db_url)
    server = start_service("models:/hcc-smoke@champion", db_url, tmp_path, env=_unreachable_registry_env(),
                           extra_args=("--fallback-model-dir", str(smoke_model["export_dir"])), name="fallback")
    try:
        ready = httpx.get(server.base_url + "/readyz", timeout=30).json()
        assert "could not be loaded" in ready["fallback"] and str(smoke_model["export_dir"]) in ready["fallback"]
        info = httpx.get(server.base_url + "/v1/model", headers=auth(tokens["auditor"]), timeout=30).json()
        assert info["fallback"] and "models:/hcc-smoke@champion" in info["fallback"]
        assert info["model_version"] == f"{smoke_model['version']} (FALLBACK: exported folder)"
        r = httpx.post(server.base_url + "/v1/predictions", json=requests_mix()[0],
                       headers=auth(tokens["clinician"]), timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == info["model_version"]
        log = server.log()
        assert "CRITICAL" in log and "FALLBACK MODEL IN SERVICE" in log
    finally:
        server.stop()
    with AuditTrail(db_url) as trail:
        assert trail.get(r.json()["prediction_id"]).model_version.endswith("(FALLBACK: exported folder)")


def test_fallback_gives_way_to_the_registry_model_once_it_loads(smoke_model, tmp_path, monkeypatch):
    """In process: the start-up fallback is replaced by the registry model at the next alias check."""
    import mlflow
    from mlflow import MlflowClient

    from response_model.service.holder import ModelHolder, check_alias, load_at_start

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        holder = ModelHolder()
        model = load_at_start(holder, "models:/hcc-late@champion", smoke_model["export_dir"])
        assert model.fallback and "hcc-late" in model.fallback and model.version.endswith("(FALLBACK: exported folder)")
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("hcc-late")
        version = client.create_model_version("hcc-late", source=str(smoke_model["export_dir"])).version
        client.set_registered_model_alias("hcc-late", "champion", version)
        assert check_alias(holder, "models:/hcc-late@champion")
        assert holder.current.fallback is None and holder.current.version == str(version)
        assert holder.current.name == "hcc-late"
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_no_registry_and_no_fallback_exits_with_a_clear_message(tmp_path):
    db_url = f"sqlite:///{tmp_path}/service.db"
    env = _unreachable_registry_env()
    server = start_service("models:/hcc-smoke@champion", db_url, tmp_path, env=env, name="nomodel", wait=False)
    try:
        code = server.wait_exit()
        assert code != 0
        assert not port_open(server.port)  # it never listened: no answer without a model
        log = server.log()
        assert "cannot serve: the model models:/hcc-smoke@champion could not be loaded" in log, log[-3000:]
        assert env["MLFLOW_TRACKING_URI"] in log or "Connection" in log, log[-3000:]
        assert "--fallback-model-dir" in log
    finally:
        server.stop()
