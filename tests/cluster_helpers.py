"""A real multi-node Ray cluster for the edge tests, started with `visionray cluster head|join`.

Every node is a `ray start --block` process (its own session, own ports, own temp dir); it
is stopped by killing exactly its process tree (psutil), never `ray stop` or a kill by name.
The nodes share this host, so each gets its own agent/metrics ports and the Jetson its own
Serve proxy port (`--serve-http-port`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from serve.app_deploy import free_port

REPO = Path(__file__).resolve().parents[1]
VISIONRAY = [sys.executable, "-m", "visionray.cli"]


def _agent_port_args() -> list[str]:
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            "--object-store-memory=200000000", "--node-ip-address=127.0.0.1"]


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a node: the `ray start --block` process and everything it started (raylet, workers, ...)."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class EdgeCluster:
    temp_dir: str
    gcs_address: str
    dashboard: str
    http_port: int
    env: dict[str, str]
    log_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}

    def join_command(self, serve_port: int, *extra: str) -> list[str]:
        ray_args = " ".join(["--block", "--num-cpus=2", f"--temp-dir={self.temp_dir}", *_agent_port_args()])
        return [*VISIONRAY, "cluster", "join", self.gcs_address, "--node-type", "jetson",
                "--jetson-model", "orin-nano", "--jetpack", "6.2", "--serve-http-port", str(serve_port),
                "--ray-args", ray_args, *extra]

    def join_jetson(self, serve_port: int) -> subprocess.Popen:
        log = open(self.log_dir / f"join-{len(self.nodes)}.log", "ab")
        proc = subprocess.Popen(self.join_command(serve_port), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, cwd=REPO, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def serve_deploy(self, config_path: Path) -> None:
        out = subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", str(config_path),
                              "-a", self.dashboard], env=self.env, cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr

    def serve_details(self) -> dict:
        r = requests.get(f"{self.dashboard}/api/serve/applications/", headers=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def alive_node_ids(self) -> set[str]:
        r = requests.get(f"{self.dashboard}/nodes?view=summary", headers=self.auth, timeout=10)
        r.raise_for_status()
        return {n["raylet"]["nodeId"] for n in r.json()["data"]["summary"] if n["raylet"]["state"] == "ALIVE"}

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            kill_tree(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(log_dir: Path, http_port: int) -> EdgeCluster:
    # Short path: Ray's unix sockets live under the temp dir and have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="vre", dir="/tmp")
    gcs_port, dashboard_port = free_port(), free_port()
    # Own token: the join must carry it (as RAY_AUTH_TOKEN here; on a Jetson, ~/.ray/auth_token).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = EdgeCluster(temp_dir, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", http_port,
                          env, log_dir)
    ray_args = " ".join(["--block", "--num-cpus=2", f"--temp-dir={temp_dir}",
                         f"--ray-client-server-port={free_port()}", *_agent_port_args()])
    command = [*VISIONRAY, "cluster", "head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard_port), "--ray-args", ray_args]
    log = open(log_dir / "head.log", "ab")
    cluster.nodes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, cwd=REPO, start_new_session=True))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert cluster.nodes[0].poll() is None, (log_dir / "head.log").read_text()[-3000:]
        try:
            if requests.get(f"{cluster.dashboard}/api/version", headers=cluster.auth, timeout=3).ok:
                return cluster
        except requests.RequestException:
            pass
        time.sleep(0.5)
    cluster.stop()
    raise TimeoutError(f"head not up: {(log_dir / 'head.log').read_text()[-3000:]}")


def wait_for(predicate, timeout_s: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except requests.RequestException as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout_s}s (last error: {last})")
