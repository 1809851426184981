"""Benchmark (issue 4 §6): this service against ``mlflow models serve``, same model, same machine, same run.

Run by hand from the repository root (a few minutes; ``--quick`` trains the small test config)::

    python benchmarks/serving.py [--quick] [--model-uri URI] [--requests 300] [--duration 30]
        [--rounds 6] [--clients 8] [--startups 3] [--no-pin]

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
3. Pinning: with at least two CPUs both servers run on one CPU and this process — the load
   generator — on another (``os.sched_setaffinity``; the servers' children inherit it), so that the
   clients do not take the measured server's CPU. ``--no-pin`` leaves scheduling to the OS. Other
   processes on the machine are not kept off either CPU. The output says which pinning was used.
4. Start-up, each server alone: ours started and waited for until ``/readyz`` answers, then
   MLflow's until ``/ping`` answers (the other one stopped or idle), ``--startups`` times in
   alternating order; the last start of each stays up for the rest. Median and range are reported.
5. Real HTTP clients (httpx, keep-alive), one server loaded at a time (both stay up): a warm-up,
   then ``--requests`` one-patient requests to each server one at a time, interleaved (ours,
   theirs, theirs, ours, …) — p50 / p95 / p99 latency; then ``--clients`` concurrent clients in
   ``--rounds`` rounds of one window per server (``--duration`` / ``--rounds`` seconds each; the
   order alternates: ours first, then theirs first, …) so that a change of the machine's load hits
   both. Reported: per-server throughput over all its windows, the median and range of the
   per-round ratio ours / theirs, and the CPU the server and the load generator used during its
   windows (a load generator near 100 % of its CPU means the clients, not the server, set the
   pace). Every non-200 answer or transport error counts as an error.
6. Our audit trail is verified at the end (hash chain intact, one record per request we sent).

Prints a side-by-side table and whether each target is met: our p50 no higher than theirs, our
throughput at least theirs, zero errors. The machine's load average is printed too: the numbers
are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PSEUDONYM_KEY = "serving-benchmark-pseudonym-key-0123456789"
NAME = "hcc-serving-benchmark"
OURS, THEIRS = "ours", "mlflow"


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


def plan_pinning(enabled: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(CPUs of the servers, CPUs of the load generator, a description); ``None`` means not pinned."""
    if not enabled:
        return None, None, "none (--no-pin): servers and load generator share every CPU"
    if not hasattr(os, "sched_setaffinity"):
        return None, None, "none (no os.sched_setaffinity on this platform)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"none (only CPU {cpus[0]} available): servers and load generator share it"
    text = (f"servers on CPU {cpus[0]}, load generator on CPU {cpus[1]} (os.sched_setaffinity; "
            f"{len(cpus)} CPUs available; other processes of the machine not kept off)")
    return {cpus[0]}, {cpus[1]}, text


@contextlib.contextmanager
def pinned(cpus: set[int] | None):
    """This thread on ``cpus`` for the block (a process started in it inherits them), then as before."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Server:
    """A server subprocess (its own process group, optionally pinned); output goes to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, ready_url: str,
                 cpus: set[int] | None = None) -> None:
        self.name, self.ready_url = name, ready_url
        self.log = cwd / f"{name}.log"
        with pinned(cpus):  # the child and its own children inherit the CPUs
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.log.open("a"),
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
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of the server and its live descendants (``mlflow``'s uvicorn)."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        """SIGTERM to the server's process group (``mlflow models serve`` runs uvicorn as a child)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError):  # children outliving the parent
            os.killpg(self.process.pid, signal.SIGKILL)


class Spec:
    """How to start one server on a given port, and the path that answers 200 when it is ready."""

    def __init__(self, name: str, command: Callable[[int], list[str]], ready_path: str) -> None:
        self.name, self.command, self.ready_path = name, command, ready_path


def alternating(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: as given, reversed, as given, … (A B, B A, A B, …)."""
    return [list(names) if r % 2 == 0 else list(names)[::-1] for r in range(rounds)]


def time_startups(specs: list[Spec], env: dict[str, str], folder: Path, cpus: set[int] | None,
                  rounds: int) -> tuple[dict[str, Server], dict[str, list[float]]]:
    """Start each server alone (the other stopped, or idle in the last round), ``rounds`` times in
    alternating order; returns the servers of the last round (left up) and every start-up time."""
    by_name = {spec.name: spec for spec in specs}
    times: dict[str, list[float]] = {spec.name: [] for spec in specs}
    servers: dict[str, Server] = {}
    try:
        for r, order in enumerate(alternating(list(by_name), rounds)):
            for name in order:
                spec, port = by_name[name], free_port()
                servers[name] = Server(name, spec.command(port), env, folder,
                                       f"http://127.0.0.1:{port}{spec.ready_path}", cpus)
                times[name].append(servers[name].wait_ready())
                print(f"  start-up {r + 1}/{rounds}: {name} ready after {times[name][-1]:.1f} s", flush=True)
                if r < rounds - 1:
                    servers.pop(name).stop()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers, times


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


def window(target: Target, server: Server, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive client, against one server for ``seconds``:
    its answers' latencies, the wall time, and the CPU seconds of the server and of this process."""
    import httpx

    done: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        with httpx.Client(timeout=60.0) as client:
            while time.perf_counter() < stop_at:
                elapsed = target.call(client)
                if elapsed is not None:
                    mine.append(elapsed)
        with lock:
            done.extend(mine)

    server_cpu, own_cpu, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
    stop_at = started + seconds
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": done, "wall": time.perf_counter() - started,
            "server_cpu": server.cpu_seconds() - server_cpu, "generator_cpu": time.process_time() - own_cpu}


def rate(w: dict[str, Any]) -> float:
    """Answers per second of one window."""
    return len(w["latencies"]) / w["wall"]


def alternating_throughput(targets: dict[str, Target], servers: dict[str, Server], clients: int,
                           rounds: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` rounds of one ``seconds`` window per server, the order alternating; one server loaded
    at a time. A 1 s window per server first warms up the clients' connections (not counted)."""
    for name, target in targets.items():
        window(target, servers[name], clients, 1.0)
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for r, order in enumerate(alternating(list(targets), rounds)):
        for name in order:
            windows[name].append(window(targets[name], servers[name], clients, seconds))
        rates = {name: rate(windows[name][-1]) for name in targets}
        print(f"  round {r + 1}/{rounds} ({' then '.join(order)}): "
              + ", ".join(f"{name} {value:.1f} req/s" for name, value in rates.items())
              + f", ratio {ratio(rates[OURS], rates[THEIRS]):.2f}", flush=True)
    return windows


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def summarise(windows: list[dict[str, Any]]) -> dict[str, float]:
    """One server's windows together: answers per second, loaded percentiles, CPU shares of one CPU."""
    wall = sum(w["wall"] for w in windows)
    latencies = [v for w in windows for v in w["latencies"]]
    return {"rps": len(latencies) / wall, "n": len(latencies), "wall": wall,
            "server_cpu": sum(w["server_cpu"] for w in windows) / wall,
            "generator_cpu": sum(w["generator_cpu"] for w in windows) / wall,
            **{f"loaded_{k}": v for k, v in percentiles(latencies).items()}}


def round_ratios(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, float]:
    """Median, min and max over rounds of throughput ours / theirs (each round: one window of each)."""
    values = [ratio(rate(a), rate(b)) for a, b in zip(ours, theirs)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="train the small test config (fast check)")
    parser.add_argument("--model-uri", default=None, help="use this model instead of training one")
    parser.add_argument("--requests", type=int, default=300, help="sequential one-patient requests per server")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per server")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of concurrent load per server, split into --rounds windows")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of one load window per server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--startups", type=int, default=3, help="start-ups timed per server, alternating")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator to CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stores)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.startups < 1 or args.duration <= 0:
        parser.error("--rounds and --startups must be at least 1, --duration positive")
    return args


def server_specs(uri: str, db_url: str) -> list[Spec]:
    """Our service and ``mlflow models serve``, both loading ``uri`` (one uvicorn worker each)."""
    ours = Spec(OURS, lambda port: [str(BIN / "response-model"), "serve", "--model-uri", uri,
                                    "--host", "127.0.0.1", "--port", str(port), "--db", db_url], "/readyz")
    theirs = Spec(THEIRS, lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                                        "local", "--host", "127.0.0.1", "--port", str(port)], "/ping")
    return [ours, theirs]


def make_targets(servers: dict[str, Server], token: str) -> dict[str, Target]:
    """The one-patient request of each server; ours must answer regimens with explanations."""
    from response_model.service.models import EXAMPLE_PATIENT

    def ours_ok(answer: dict[str, Any]) -> bool:
        return bool(answer.get("regimens")) and all(r["explanations"] for r in answer["regimens"] if r["eligible"])

    def base(name: str) -> str:
        return servers[name].ready_url.rsplit("/", 1)[0]

    return {OURS: Target(OURS, f"{base(OURS)}/v1/predictions", {"patient": EXAMPLE_PATIENT},
                         {"Authorization": f"Bearer {token}"}, ours_ok),
            THEIRS: Target(THEIRS, f"{base(THEIRS)}/invocations", {"dataframe_records": [mlflow_row()]})}


def describe_answers(targets: dict[str, Target]) -> None:
    import httpx

    ours, theirs = targets[OURS], targets[THEIRS]
    n_regimens = len(httpx.post(ours.url, json=ours.body, headers=ours.headers, timeout=60).json().get("regimens", []))
    n_rows = len(httpx.post(theirs.url, json=theirs.body, timeout=60).json().get("predictions", []))
    print(f"ours answers {n_regimens} regimens × 2 outcomes with explanations; "
          f"mlflow answers {n_rows} rows of probabilities", flush=True)


def spread(values: list[float], unit: str) -> str:
    """``median unit`` and, for several values, ``(min–max, n×)``."""
    text = f"{statistics.median(values):.1f} {unit}"
    return text if len(values) == 1 else f"{text} ({min(values):.1f}–{max(values):.1f}, {len(values)}×)"


def report_rows(args, startups, lat, load, ratios, audit) -> list[tuple[str, str, str, str, str]]:
    """The side-by-side table's rows: metric, ours, theirs, target, met."""
    def ms(v: float) -> str:
        return f"{v:.1f} ms"

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    ours, theirs = load[OURS], load[THEIRS]
    rows = [("metric", "ours (every regimen, explanations, audit)", "mlflow models serve (probabilities)",
             "target", "met"),
            ("start-up alone, median (range)", spread(startups[OURS], "s"), spread(startups[THEIRS], "s"), "", "")]
    for q in ("p50", "p95", "p99"):
        first = q == "p50"
        rows.append((f"latency {q}, one patient", ms(lat[OURS][q]), ms(lat[THEIRS][q]),
                     "ours ≤ theirs" if first else "", yes(lat[OURS]["p50"] <= lat[THEIRS]["p50"]) if first else ""))
    windows = f"{args.rounds} × {args.duration / args.rounds:.0f} s alternating"
    rows.append((f"throughput, {args.clients} clients, {windows}",
                 f"{ours['rps']:.1f} req/s", f"{theirs['rps']:.1f} req/s", "ours ≥ theirs",
                 yes(ours["rps"] >= theirs["rps"])))
    per_round = f"median {ratios['median']:.2f} ({ratios['min']:.2f}–{ratios['max']:.2f}, {ratios['n']} rounds)"
    rows.append(("  ratio ours / theirs per round", per_round, "", "", ""))
    for q in ("p50", "p99"):
        rows.append((f"  latency {q} under that load", ms(ours[f"loaded_{q}"]), ms(theirs[f"loaded_{q}"]), "", ""))
    rows.append(("  CPU in its windows: server / load gen.", f"{ours['server_cpu']:.0%} / {ours['generator_cpu']:.0%}",
                 f"{theirs['server_cpu']:.0%} / {theirs['generator_cpu']:.0%}", "(of one CPU)", ""))
    t_ours, t_theirs = audit["targets"][OURS], audit["targets"][THEIRS]
    rows.append(("requests / errors", f"{t_ours.sent} / {t_ours.errors}", f"{t_theirs.sent} / {t_theirs.errors}",
                 "0 errors", yes(t_ours.errors == 0 and t_theirs.errors == 0)))
    rows.append(("audit records / chain", f"{audit['records']} / {'intact' if audit['verified'] else 'BROKEN'}", "none",
                 "one per request", yes(audit["ok"])))
    return rows


def check_audit(db_url: str, targets: dict[str, Target]) -> dict[str, Any]:
    from response_model.service.audit import AuditTrail

    with AuditTrail(db_url, create=False) as trail:
        verified, n_records = trail.verify(), trail.count()
    return {"targets": targets, "records": n_records, "verified": verified.ok,
            "ok": verified.ok and n_records >= targets[OURS].sent}


def measure(args, servers: dict[str, Server], targets: dict[str, Target]) -> tuple[dict, dict, dict]:
    """Latency (interleaved) then throughput (alternating windows): percentiles, summaries, ratios."""
    print(f"latency: {args.warmup} warm-up + {args.requests} requests per server, interleaved …", flush=True)
    lat = latency(list(targets.values()), args.requests, args.warmup)
    seconds = args.duration / args.rounds
    print(f"throughput: {args.clients} clients, {args.rounds} rounds × ({seconds:.1f} s per server), "
          f"alternating order …", flush=True)
    windows = alternating_throughput(targets, servers, args.clients, args.rounds, seconds)
    load = {name: summarise(ws) for name, ws in windows.items()}
    return lat, load, round_ratios(windows[OURS], windows[THEIRS])


def trail_keys(folder: Path) -> None:
    """The audit trail's keys for this run, in ``folder`` (the environment, inherited by our server): a
    throwaway chain key, a new checkpoint signing key and its public key, and the witness file."""
    from response_model.service.audit.checkpoints import (
        PUBLIC_KEYS_ENV,
        SIGNING_KEY_FILE_ENV,
        WITNESS_ENV,
        ensure_local_signing_key,
    )

    os.environ["RESPONSE_MODEL_AUDIT_KEY"] = os.urandom(32).hex()
    os.environ[SIGNING_KEY_FILE_ENV] = str(folder / "checkpoint.key")
    os.environ[PUBLIC_KEYS_ENV] = str(folder / "checkpoint.pub")
    os.environ[WITNESS_ENV] = str(folder / "witness.jsonl")
    ensure_local_signing_key()


def run(args, folder: Path, servers: dict[str, Server]) -> int:
    """Everything after the temporary folder exists; ``servers`` is filled in so the caller stops them."""
    from response_model.service.keys import KeyStore

    os.environ["RESPONSE_MODEL_PSEUDONYM_KEY"] = PSEUDONYM_KEY
    trail_keys(folder)
    uri = prepare_model(folder, args.model_uri, args.quick)
    db_url = f"sqlite:///{folder}/service.db"
    with KeyStore(db_url) as store:
        token = store.create("clinician", "serving benchmark").token
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "RESPONSE_MODEL_PSEUDONYM_KEY": PSEUDONYM_KEY, "RESPONSE_MODEL_ALIAS_CHECK_SECONDS": "0",
           "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow runs `uvicorn` from PATH
    server_cpus, generator_cpus, pinning = plan_pinning(not args.no_pin)
    if generator_cpus:
        os.sched_setaffinity(0, generator_cpus)  # this thread; the client threads started later inherit it
    print(f"pinning: {pinning}", flush=True)
    print(f"start-up: each server alone, {args.startups}× in alternating order …", flush=True)
    started, startups = time_startups(server_specs(uri, db_url), env, folder, server_cpus, args.startups)
    servers.update(started)
    targets = make_targets(servers, token)
    describe_answers(targets)
    lat, load, ratios = measure(args, servers, targets)
    load_average = os.getloadavg()
    audit = check_audit(db_url, targets)
    print(f"\nmodel {uri} (private store in {folder}); load average {load_average[0]:.2f} "
          f"{load_average[1]:.2f} {load_average[2]:.2f} on {os.cpu_count()} CPUs; pinning: {pinning}")
    print(table(report_rows(args, startups, lat, load, ratios, audit)))
    for target in targets.values():
        if target.first_error:
            print(f"first error from {target.name}: {target.first_error}")
    met = (lat[OURS]["p50"] <= lat[THEIRS]["p50"] and load[OURS]["rps"] >= load[THEIRS]["rps"]
           and all(t.errors == 0 for t in targets.values()) and audit["ok"])
    print(f"\ntargets {'met' if met else 'NOT met'}")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import httpx  # noqa: F401 - fail early if the client library is missing

    folder = Path(tempfile.mkdtemp(prefix="serving-benchmark-"))
    servers: dict[str, Server] = {}
    try:
        return run(args, folder, servers)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
