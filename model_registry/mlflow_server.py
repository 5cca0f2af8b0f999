"""Start and stop a real `mlflow server` for the registry, as one process group.

The embedded sqlite registry is enough on one machine. A cluster needs the registry
over HTTP: replicas on other nodes resolve aliases and download model files through
`mlflow server`, which proxies artifacts (`--artifacts-destination`), so clients need
no shared filesystem and no storage credentials.

`mlflow server` is a launcher: it spawns uvicorn workers (and, unless disabled, huey job
runners). Stopping only the launcher's pid can leave those behind, so the server is
started in a new session (its own process group) and stopped by signalling that group.
Job execution (GenAI evaluation jobs, trace rollups) is not used by a model registry and
is switched off by default: fewer processes, faster start.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.paths import default_data_dir
from model_registry.registry import ARTIFACTS_DIRNAME, DATABASE_FILENAME

LOOPBACK = "127.0.0.1"
LOG_FILENAME = "mlflow-server.log"


class ServerError(RuntimeError):
    """The server did not come up, or did not go away."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now (another process could still take it before the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(data_dir: str | Path, host: str = LOOPBACK, port: int = 5000, workers: int = 1) -> list[str]:
    """The `mlflow server` command line for a registry whose files live under `data_dir`.

    The same database and artifact folder as the embedded default, so a registry
    started embedded can later be served without moving anything.
    """
    data_dir = Path(data_dir).resolve()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "server",
        "--backend-store-uri", f"sqlite:///{data_dir / DATABASE_FILENAME}",
        "--artifacts-destination", str(data_dir / ARTIFACTS_DIRNAME),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]


@dataclass
class MlflowServer:
    """A running `mlflow server`; `url` is its tracking URI."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200 and response.read().strip() == b"OK"
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after `timeout`."""
        pgid = self.process.pid  # start_new_session=True: the launcher leads its own group
        _signal_group(pgid, signal.SIGTERM)
        if not _wait_group_gone(self.process, pgid, timeout):
            _signal_group(pgid, signal.SIGKILL)
            if not _wait_group_gone(self.process, pgid, 5.0):
                raise ServerError(f"mlflow server process group {pgid} survived SIGKILL")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(leader: subprocess.Popen, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader.poll()  # reap the launcher so it stops counting as a group member
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def start_mlflow_server(
    data_dir: str | Path | None = None,
    host: str = LOOPBACK,
    port: int | None = None,
    workers: int = 1,
    startup_timeout: float = 90.0,
    job_execution: bool = False,
) -> MlflowServer:
    """Start `mlflow server` on `host:port` (a free port if None) and wait for `GET /health`."""
    data_dir = Path(data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    command = server_command(data_dir, host, port, workers)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false"}
    log_path = data_dir / LOG_FILENAME
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=data_dir, start_new_session=True,
        )
    server = MlflowServer(process=process, url=f"http://{host}:{port}", log_path=log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if server.is_healthy():
            return server
        if process.poll() is not None:
            server.stop()
            raise ServerError(
                f"mlflow server exited with code {process.returncode} during start-up: "
                f"{shlex.join(command)}; see {log_path}"
            )
        time.sleep(0.25)
    server.stop()
    raise ServerError(f"mlflow server not healthy after {startup_timeout:.0f}s: {shlex.join(command)}; see {log_path}")


@contextmanager
def running_mlflow_server(data_dir: str | Path | None = None, **options) -> Iterator[MlflowServer]:
    """`with running_mlflow_server(dir) as server:` ... the whole process group is gone afterwards."""
    server = start_mlflow_server(data_dir, **options)
    try:
        yield server
    finally:
        server.stop()
