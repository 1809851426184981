"""Benchmark (issue 4 §6): this service against ``mlflow models serve``, same model, same machine, same run.

Run by hand from the repository root (a few minutes; ``--quick`` trains the small test config)::

    python benchmarks/serving.py [--quick] [--model-uri URI] [--requests 300] [--duration 30] [--clients 8]

1. A model: trained with ``configs/train/default.yaml`` (``--quick``: ``tests/data/train_smoke.yaml``)
   and registered in a private MLflow store in a temporary folder — or, with ``--model-uri``
   (``models:/NAME/V`` of ``$MLFLOW_TRACKING_URI``, ``runs:/…`` or an exported folder), that model's
   bundle logged and registered there instead.
2. Both servers as real subprocesses on loopback, each loading ``models:/NAME/V`` from that store:
   ours (``response-model serve``: every candidate regimen, both outcomes, intervals, bands, the top
   SHAP contributions, what-if tests, out-of-distribution check, and an audit record made durable —
   SQLite WAL, ``synchronous=FULL`` — before the answer) and MLflow's (``mlflow models serve
   --env-manager local``: the bundle's pyfunc ``predict``, which scores every regimen and returns the
   probabilities only). Default uvicorn settings for both (one worker).
3. Real HTTP clients (httpx, keep-alive): a warm-up, then ``--requests`` one-patient requests to each
   server one at a time, interleaved (ours, theirs, ours, …) so that both see the same machine load —
   p50 / p95 / p99 latency; then ``--clients`` concurrent clients for ``--duration`` seconds against
   each server in turn — throughput. Every non-200 answer or transport error counts as an error.
4. Our audit trail is verified at the end (hash chain intact, one record per request we sent).

Prints a side-by-side table and whether each target is met: our p50 no higher than theirs, our
throughput at least theirs, zero errors. The machine's load average is printed too: the numbers
are only comparable within one run.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PSEUDONYM_KEY = "serving-benchmark-pseudonym-key-0123456789"
NAME = "hcc-serving-benchmark"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_model(folder: Path, model_uri: str | None, quick: bool) -> str:
    """Register the benchmark model in the private store at ``folder``; return ``models:/NAME/V``."""
    import mlflow

    from response_model.modeling.bundle import example_input, log_bundle
    from response_model.modeling.predict import as_bundle, load_model
    from response_model.schema import PatientRecord
    from response_model.service.models import EXAMPLE_PATIENT

    source_uri = os.environ.get("MLFLOW_TRACKING_URI")
    store = f"sqlite:///{folder}/mlflow.db"
    previous_cwd = Path.cwd()
    os.chdir(folder)  # mlartifacts/ of the private store lands here
    try:
        if model_uri:
            bundle = as_bundle(load_model(model_uri))  # read from the caller's store, before switching
            os.environ["MLFLOW_TRACKING_URI"] = store
            mlflow.set_tracking_uri(store)
            mlflow.set_registry_uri(store)
            mlflow.set_experiment("serving-benchmark")
            example = example_input([PatientRecord.model_validate(EXAMPLE_PATIENT)])
            info = log_bundle(bundle, input_example=example, registered_model_name=NAME)
            return f"models:/{NAME}/{info.registered_model_version}"
        from response_model.modeling.train import train

        os.environ["MLFLOW_TRACKING_URI"] = store
        config = ROOT / ("tests/data/train_smoke.yaml" if quick else "configs/train/default.yaml")
        print(f"training {config.relative_to(ROOT)} into {store} …", flush=True)
        result = train(config, register=True, progress=False)
        return f"models:/{result.registered_name}/{result.registered_version}"
    finally:
        os.chdir(previous_cwd)
        if source_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = source_uri


class Server:
    """A server subprocess; output goes to a log file (its tail is printed if it fails)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, ready_url: str) -> None:
        self.name, self.ready_url = name, ready_url
        self.log = cwd / f"{name}.log"
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds until the readiness URL answers 200; raises if the process dies or time runs out."""
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Target:
    """How to call one server: URL, headers and the one-patient body; counts errors."""

    def __init__(self, name: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                 check=None) -> None:
        self.name, self.url, self.body, self.headers = name, url, body, headers or {}
        self.check = check
        self.errors = 0
        self.sent = 0
        self.first_error: str | None = None
        self._lock = threading.Lock()

    def call(self, client) -> float | None:
        """One request; its latency in seconds, or None (counted as an error)."""
        started = time.perf_counter()
        try:
            response = client.post(self.url, json=self.body, headers=self.headers)
            elapsed = time.perf_counter() - started
            ok = response.status_code == 200 and (self.check is None or self.check(response.json()))
            detail = f"HTTP {response.status_code}: {response.text[:300]}"
        except Exception as error:  # noqa: BLE001 - a transport failure is an error of this target
            elapsed, ok, detail = None, False, f"{type(error).__name__}: {error}"
        with self._lock:
            self.sent += 1
            if not ok:
                self.errors += 1
                self.first_error = self.first_error or detail
        return elapsed if ok else None


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 (ms) of latencies in seconds (nearest-rank)."""
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan}

    def rank(q: float) -> float:
        return 1000.0 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": 1000.0 * statistics.median(ordered), "p95": rank(0.95), "p99": rank(0.99)}


def latency(targets: list[Target], n: int, warmup: int) -> dict[str, dict[str, float]]:
    """Interleaved sequential requests (one client per target, keep-alive): percentiles per target."""
    import httpx

    clients = {t.name: httpx.Client(timeout=60.0) for t in targets}
    try:
        for _ in range(warmup):
            for t in targets:
                t.call(clients[t.name])
        times: dict[str, list[float]] = {t.name: [] for t in targets}
        for i in range(n):
            for t in (targets if i % 2 == 0 else targets[::-1]):
                elapsed = t.call(clients[t.name])
                if elapsed is not None:
                    times[t.name].append(elapsed)
            if (i + 1) % max(1, n // 5) == 0:
                print(f"  latency: {i + 1}/{n} requests to each server", flush=True)
        return {name: percentiles(values) for name, values in times.items()}
    finally:
        for client in clients.values():
            client.close()


def throughput(target: Target, clients: int, duration: float) -> dict[str, float]:
    """``clients`` threads, each with its own keep-alive client, for ``duration`` s: answers per second."""
    import httpx

    done: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def worker() -> None:
        mine = []
        with httpx.Client(timeout=60.0) as client:
            while time.perf_counter() < stop_at:
                elapsed = target.call(client)
                if elapsed is not None:
                    mine.append(elapsed)
        with lock:
            done.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"rps": len(done) / wall, "n": len(done), **{f"loaded_{k}": v for k, v in percentiles(done).items()}}


def mlflow_row() -> dict[str, Any]:
    """The example patient as one pyfunc input row (patient-record columns; JSON-safe)."""
    from response_model.modeling.bundle import example_input
    from response_model.schema import PatientRecord
    from response_model.service.models import EXAMPLE_PATIENT

    row = example_input([PatientRecord.model_validate(EXAMPLE_PATIENT)]).iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="train the small test config (fast check)")
    parser.add_argument("--model-uri", default=None, help="use this model instead of training one")
    parser.add_argument("--requests", type=int, default=300, help="sequential one-patient requests per server")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per server")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of concurrent load per server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stores)")
    args = parser.parse_args(argv)

    import httpx  # noqa: F401 - fail early if the client library is missing

    from response_model.service.audit import AuditTrail
    from response_model.service.keys import KeyStore
    from response_model.service.models import EXAMPLE_PATIENT

    folder = Path(tempfile.mkdtemp(prefix="serving-benchmark-"))
    servers: list[Server] = []
    try:
        os.environ["RESPONSE_MODEL_PSEUDONYM_KEY"] = PSEUDONYM_KEY
        uri = prepare_model(folder, args.model_uri, args.quick)
        db_url = f"sqlite:///{folder}/service.db"
        with KeyStore(db_url) as store:
            token = store.create("clinician", "serving benchmark").token
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
               "RESPONSE_MODEL_PSEUDONYM_KEY": PSEUDONYM_KEY, "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "0",
               "PYTHONUNBUFFERED": "1",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow runs `uvicorn` from PATH
        ours_port, theirs_port = free_port(), free_port()
        servers.append(Server("ours", [str(BIN / "response-model"), "serve", "--model-uri", uri, "--host", "127.0.0.1",
                                       "--port", str(ours_port), "--db", db_url],
                              env, folder, f"http://127.0.0.1:{ours_port}/readyz"))
        servers.append(Server("mlflow", [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                         "--host", "127.0.0.1", "--port", str(theirs_port)],
                              env, folder, f"http://127.0.0.1:{theirs_port}/ping"))
        for server in servers:
            print(f"{server.name}: ready after {server.wait_ready():.1f} s", flush=True)

        def ours_ok(answer: dict[str, Any]) -> bool:
            return bool(answer.get("regimens")) and all(r["explanations"] for r in answer["regimens"] if r["eligible"])

        ours = Target("ours", f"http://127.0.0.1:{ours_port}/v1/predictions", {"patient": EXAMPLE_PATIENT},
                      {"Authorization": f"Bearer {token}"}, ours_ok)
        theirs = Target("mlflow", f"http://127.0.0.1:{theirs_port}/invocations", {"dataframe_records": [mlflow_row()]})
        import httpx

        first = httpx.post(ours.url, json=ours.body, headers=ours.headers, timeout=60).json()
        n_regimens = len(first.get("regimens", []))
        print(f"ours answers {n_regimens} regimens × 2 outcomes with explanations; "
              f"mlflow answers {len(httpx.post(theirs.url, json=theirs.body, timeout=60).json().get('predictions', []))} "
              f"rows of probabilities", flush=True)

        print(f"latency: {args.warmup} warm-up + {args.requests} requests per server, interleaved …", flush=True)
        lat = latency([ours, theirs], args.requests, args.warmup)
        load: dict[str, dict[str, float]] = {}
        for target in (ours, theirs):
            print(f"throughput: {args.clients} clients × {args.duration:.0f} s against {target.name} …", flush=True)
            load[target.name] = throughput(target, args.clients, args.duration)
        load_average = os.getloadavg()

        with AuditTrail(db_url, create=False) as trail:
            verified, n_records = trail.verify(), trail.count()
        audited_ok = verified.ok and n_records >= ours.sent

        def ms(v: float) -> str:
            return f"{v:.1f} ms"

        rows = [("metric", "ours (every regimen, explanations, audit)", "mlflow models serve (probabilities)",
                 "target", "met")]
        for q in ("p50", "p95", "p99"):
            rows.append((f"latency {q}, one patient", ms(lat["ours"][q]), ms(lat["mlflow"][q]),
                         "ours ≤ theirs" if q == "p50" else "", ("yes" if lat["ours"]["p50"] <= lat["mlflow"]["p50"]
                                                                 else "NO") if q == "p50" else ""))
        rows.append((f"throughput, {args.clients} clients × {args.duration:.0f} s", f"{load['ours']['rps']:.1f} req/s",
                     f"{load['mlflow']['rps']:.1f} req/s", "ours ≥ theirs",
                     "yes" if load["ours"]["rps"] >= load["mlflow"]["rps"] else "NO"))
        for q in ("p50", "p99"):
            rows.append((f"latency {q} under that load", ms(load["ours"][f"loaded_{q}"]),
                         ms(load["mlflow"][f"loaded_{q}"]), "", ""))
        rows.append(("requests / errors", f"{ours.sent} / {ours.errors}", f"{theirs.sent} / {theirs.errors}",
                     "0 errors", "yes" if ours.errors == 0 and theirs.errors == 0 else "NO"))
        rows.append(("audit records / chain", f"{n_records} / {'intact' if verified.ok else 'BROKEN'}", "none",
                     "one per request", "yes" if audited_ok else "NO"))
        print()
        print(f"model {uri} (private store in {folder}); load average {load_average[0]:.2f} "
              f"{load_average[1]:.2f} {load_average[2]:.2f} on {os.cpu_count()} CPUs")
        print(table(rows))
        for target in (ours, theirs):
            if target.first_error:
                print(f"first error from {target.name}: {target.first_error}")
        met = (lat["ours"]["p50"] <= lat["mlflow"]["p50"] and load["ours"]["rps"] >= load["mlflow"]["rps"]
               and ours.errors == 0 and theirs.errors == 0 and audited_ok)
        print(f"\ntargets {'met' if met else 'NOT met'}")
        return 0 if met else 1
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
