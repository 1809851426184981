"""Helpers for tests that run real servers as subprocesses on free loopback ports.

``ServerProcess`` starts a command (``response-model serve``, ``mlflow server``), writes its output to
a log file, waits until a URL answers and stops or kills it. Used by tests/test_reliability.py and
tests/test_mlflow_server.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT = float(os.environ.get("RESPONSE_MODEL_TEST_START_TIMEOUT", "300"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A server subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, args: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args, self.port, self.log_path = args, port, Path(log_path)
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the server's lifetime, closed in stop()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                        env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything the server wrote so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str = "/readyz", timeout: float = START_TIMEOUT) -> None:
        """Wait until GET ``path`` answers 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.args[:4]} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.base_url + path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"{self.args[:4]} not ready after {timeout:.0f} s:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to end by itself; returns its exit code."""
        return self.process.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL the server process (and its process group: the workers of ``mlflow server``)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 30 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        self._log.close()


def cli(*args: str) -> list[str]:
    """The command line of ``response-model ARGS`` with this interpreter."""
    return [sys.executable, "-m", "response_model.cli", *args]


def start_service(model_uri: str, db_url: str | None, folder: Path, env: dict[str, str] | None = None,
                  extra_args: tuple[str, ...] = (), name: str = "serve", wait: bool = True) -> ServerProcess:
    """``response-model serve --model-uri MODEL_URI --db DB_URL`` on a free port, started in ``folder``
    (without ``--db`` when ``db_url`` is None: ``$RESPONSE_MODEL_DB_URL`` or the default then)."""
    port = free_port()
    db = ("--db", db_url) if db_url else ()
    server = ServerProcess(cli("serve", "--model-uri", model_uri, *db, "--host", "127.0.0.1",
                               "--port", str(port), *extra_args),
                           port, Path(folder) / f"{name}-{port}.log", env=env, cwd=folder)
    if wait:
        server.wait_ready()
    return server


@contextlib.contextmanager
def served_in_thread(app):
    """The base URL of ``app`` run by uvicorn in a thread of this process on a free loopback port, once
    its lifespan has started (the model is loaded); stopped on the way out."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server stopped during start-up"
            thread.join(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
