"""`visionray up|down|status`: the whole platform on one machine, started and stopped exactly.

`up` starts a Ray head of our own (its own temp dir under .data/, loopback dashboard) as
one process group, registers the shipped demo models in the embedded MLflow registry if
they are missing, deploys serve/config.yaml with `serve deploy`, waits until every model
is warm and runs one sample request. `down` stops exactly the processes of that platform and
returns once they are gone and their ports are free: no `ray stop`, which would kill every Ray on
the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cluster import auth
from deployments import ray_compat
from visionray.prometheus_config import service_discovery_file, write_prometheus_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / ".data"
STATE_FILE = DATA_DIR / "platform.json"
LOG_DIR = DATA_DIR / "logs"
CONFIG_YAML = PROJECT_ROOT / "serve" / "config.yaml"
DASHBOARD_PORT = 8265
HTTP_PORT = 8000  # serve/config.yaml's app `http_port`: the ingress replicas' own server
GRPC_PORT = 8002  # serve/config.yaml's app `grpc_port`: OIP v2 over gRPC, camera streams
SERVE_PROXY_PORT = 8001  # serve/config.yaml's http_options.port: Serve's proxy, the same API
HTTP_URL = f"http://127.0.0.1:{HTTP_PORT}"
DEMO_MODELS = {
    "shapes-detector": PROJECT_ROOT / "demo_models" / "detector.onnx",
    "shapes-classifier": PROJECT_ROOT / "demo_models" / "classifier.onnx",
}
SAMPLE = PROJECT_ROOT / "demo_models" / "samples"


# Ray settings the platform starts its head with, measured on 2 cores (AMD EPYC):
# - images up to 4 MiB go inline in the actor call instead of through the object store (-2 ms CPU
#   per request in the raylet, when the stages are deployments);
# - Serve's controller loop runs every 0.5 s instead of 0.1 s: controller ~42 -> 15 ms of CPU per
#   second, GCS ~22 -> 8 (make bench runs in docs/benchmarks/); Serve notices a dead replica or a
#   new target up to 0.4 s later.
# Ray's HAProxy ingress is not used: the ingress replica serves HTTP itself (README, Performance).
RAY_TUNING_ENV = {
    ray_compat.MAX_DIRECT_CALL_OBJECT_SIZE_ENV: str(4 << 20),
    ray_compat.SERVE_CONTROL_LOOP_INTERVAL_ENV: "0.5",
}
# Ray turns a loopback --node-ip-address into the machine's network address on Linux, unless
# clusters are off (the setting it uses on macOS/Windows): then the node's IP is 127.0.0.1 and
# its servers bind there, and no other machine can join this head.
LOOPBACK_ENV = {ray_compat.ENABLE_CLUSTERS_ENV: "0"}

# Every process of the platform inherits this from the head: with the head's session id, it is how
# `down` finds the replicas and the proxy, which run in process groups of their own.
PLATFORM_MARKER_ENV = "VISIONRAY_PLATFORM_DIR"
# How long `down` waits for the platform to exit after SIGTERM before it SIGKILLs what is left,
# and how long `up` waits for a platform that is still stopping to let go of its ports. Measured
# on a 2-core AMD EPYC: the replicas exit within ~1 s of SIGTERM (in-flight requests answered);
# Ray's GCS, the Serve controller and proxy and `ray start --block` itself take 30-45 s, waiting
# on each other's timeouts, so after the grace they are killed, as `ray stop` does after its own.
STOP_GRACE_S = 10
PORT_RELEASE_S = 15

# Ray's logs, object spilling, the MLflow store and the model cache all live under .data/.
MIN_FREE_DISK_BYTES = 1 << 30


class StepFailed(RuntimeError):
    def __init__(self, message: str, log: Path | str | None = None):
        super().__init__(f"{message}; see {log}" if log else message)


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _port_free(port: int) -> bool:
    """Nothing listens on the port. SO_REUSEADDR, as every server we start sets it: connections
    the old server closed (TIME_WAIT) must not count as "in use"."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _http_ok(url: str, timeout: float = 3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "not up"
        return False


def _http_answers(url: str, timeout: float = 3) -> bool:
    """The server is up, whatever it answers (the dashboard may demand Ray's auth token)."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except Exception:  # noqa: BLE001
        return False


def _wait(predicate, timeout_s: float, what: str, log: Path | str | None = None, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if not alive():
            raise StepFailed(f"{what} exited while starting", log)
        time.sleep(1)
    raise StepFailed(f"{what} not ready after {timeout_s:.0f}s", log)


def _free_port(preferred: int, step: int = 1) -> int:
    port = preferred
    while not _port_free(port):
        port += step
    return port


def _is_ray_dashboard(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=3) as r:
            return "ray_version" in json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code == 401  # a Ray dashboard behind token auth
    except Exception:  # noqa: BLE001
        return False


def _check_disk() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(DATA_DIR).free
    if free < MIN_FREE_DISK_BYTES:
        raise StepFailed(f"only {free >> 20} MiB free on the disk of {DATA_DIR}; visionray needs at least "
                         f"{MIN_FREE_DISK_BYTES >> 20} MiB there (Ray logs and spilling, registry, model cache)")


def _check_ports() -> None:
    if not _port_free(DASHBOARD_PORT) and _is_ray_dashboard(DASHBOARD_PORT):
        raise StepFailed(f"another Ray cluster (not the one this checkout's `visionray up` started) has its "
                         f"dashboard on port {DASHBOARD_PORT}; stop it the way it was started (visionray never "
                         f"stops other clusters) or free the port")
    for port, what in ((HTTP_PORT, "HTTP"), (GRPC_PORT, "gRPC"), (SERVE_PROXY_PORT, "Serve's proxy"),
                       (DASHBOARD_PORT, "Ray dashboard")):
        if not _port_free(port):
            raise StepFailed(f"port {port} ({what}) is in use by another program (`ss -ltnp 'sport = :{port}'` "
                             f"shows which); stop it or free the port")


def platform_pids(session_id: int | None = None, data_dir: Path | None = None) -> dict[int, str]:
    """The live processes of the platform started in `session_id` or marked with `data_dir`: pid -> name.

    The head runs as a session of its own (`start_new_session`), and Ray's workers, the Serve
    proxy and the replicas stay in it though each makes a process group of its own. The marker
    variable also finds them should one ever leave the session. Nothing else on the machine is
    looked at twice: not by name, never another Ray.
    """
    marker = f"{PLATFORM_MARKER_ENV}={data_dir or DATA_DIR}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            ours = session_id is not None and os.getsid(pid) == session_id
            if not ours:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    ours = marker in f.read().split(b"\0")
            if ours and not _is_zombie(pid):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found[pid] = f.read().split(b"\0")[0].decode(errors="replace")[:80] or entry
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _is_zombie(pid: int) -> bool:
    """Exited, waiting for a parent to reap it: holds no port and no memory, and no signal ends it."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"


def _signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_platform(session_id: int | None, grace_s: float = STOP_GRACE_S, quiet: bool = False) -> dict[int, str]:
    """SIGTERM every process of this platform, wait up to `grace_s`, SIGKILL exactly those left.

    Returns what had to be killed, and says so unless `quiet`.
    """
    _signal_all(platform_pids(session_id), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := platform_pids(session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        if not quiet:
            print(f"    still running {grace_s:.0f} s after SIGTERM, killed: "
                  + ", ".join(f"{pid} {name.rsplit('/', 1)[-1]}" for pid, name in sorted(left.items())))
        _signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while platform_pids(session_id) and time.monotonic() < deadline:
            time.sleep(0.2)
    return left


def platform_ports(state: dict | None = None) -> dict[int, str]:
    ports = {HTTP_PORT: "HTTP", GRPC_PORT: "gRPC", SERVE_PROXY_PORT: "Serve's proxy", DASHBOARD_PORT: "Ray dashboard"}
    if state and state.get("gcs_address"):
        ports[int(state["gcs_address"].rsplit(":", 1)[1])] = "Ray GCS"
    return ports


def _wait_ports_free(ports, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (held := [p for p in ports if not _port_free(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return held


def _state() -> dict | None:
    if not STATE_FILE.is_file():
        return None
    state = json.loads(STATE_FILE.read_text())
    try:
        os.killpg(state["pgid"], 0)
    except ProcessLookupError:
        return None
    return state


def _let_a_stopping_platform_go() -> None:
    """Processes of this checkout's platform with no live head are a platform still stopping (or
    left by a crash): give them a moment to exit, then stop them, so its ports come free."""
    if not platform_pids():
        return
    step("a previous platform of this checkout is still stopping; waiting for it")
    stop_platform(None, grace_s=PORT_RELEASE_S)
    _wait_ports_free(platform_ports(), PORT_RELEASE_S)


def _start_ray() -> dict:
    _check_disk()
    _let_a_stopping_platform_go()
    _check_ports()
    token, created = auth.ensure_token()
    step(f"cluster token: {'created ' if created else ''}{token} (token auth is on)")
    step(f"starting a local Ray head (dashboard on 127.0.0.1:{DASHBOARD_PORT})")
    # Ports of our own, so that another Ray on this machine (on its defaults 6379, 10001, 52365)
    # neither blocks this head nor is disturbed by it.
    gcs_port = _free_port(6380)
    client_port = _free_port(10001, step=-1)  # below Ray's worker port range (10002-19999)
    agent_port = _free_port(52375)
    temp_dir = DATA_DIR / "ray"
    temp_dir.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "ray-head.log"
    # Loopback only: this is the single-machine platform. `visionray cluster head` is the command
    # that opens a head to the network.
    command = [
        _bin("ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}",
        f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        # The log monitor copies every worker's output into GCS for drivers to print; nothing
        # `make up` runs reads it (logs stay in files, read by the dashboard through its agent),
        # and it cost ~17 ms of CPU per second on an idle 2-core EPYC, measured by process.
        "--include-log-monitor=False",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=PROJECT_ROOT,
                                env=auth.token_env({**os.environ, **RAY_TUNING_ENV, **LOOPBACK_ENV,
                                                    PLATFORM_MARKER_ENV: str(DATA_DIR)}))
    state = {"pgid": proc.pid, "gcs_address": f"127.0.0.1:{gcs_port}", "temp_dir": str(temp_dir),
             "dashboard": f"http://127.0.0.1:{DASHBOARD_PORT}", "started": time.time()}
    STATE_FILE.write_text(json.dumps(state, indent=2))
    try:
        _wait(lambda: _http_answers(f"{state['dashboard']}/api/version"), 120, "the Ray head and dashboard",
              log, alive=lambda: proc.poll() is None)
    except StepFailed:
        down(quiet=True)
        raise
    return state


def _register_demo_models() -> None:
    from model_registry import registry

    present = {m.name: m for m in registry.list_models()}
    for name, path in DEMO_MODELS.items():
        if name in present and "production" in present[name].aliases:
            print(f"    {name}: already registered (production -> v{present[name].aliases['production']})")
            continue
        if not path.is_file():
            raise StepFailed(f"demo model {path} is missing (restore it with git, or retrain: demo_models/README.md)")
        try:
            info = registry.register(path, name=name, alias="production")
        except Exception as exc:  # noqa: BLE001 - any registry failure stops `up` with its reason
            raise StepFailed(f"registering {name} failed: {exc}", registry.default_tracking_uri()) from exc
        print(f"    {name}: registered v{info.version}, alias production")


def up() -> int:
    try:
        state = _state()
        if state:
            step(f"Ray head already running (pid {state['pgid']}); reusing it")
        else:
            state = _start_ray()
        token = auth.token_source(os.environ)
        step("registering the demo models in the embedded MLflow registry (.data/mlflow.db)")
        _register_demo_models()
        step("deploying serve/config.yaml (serve deploy)")
        log = LOG_DIR / "serve-deploy.log"
        with open(log, "ab") as out:
            rc = subprocess.call([_bin("serve"), "deploy", str(CONFIG_YAML), "-a", state["dashboard"]],
                                 stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=auth.token_env())
        if rc != 0:
            raise StepFailed(f"serve deploy failed (exit {rc})", log)
        step("waiting for every model to be loaded and warmed (/readyz)")
        _wait(lambda: _http_ok(f"{HTTP_URL}/readyz"), 300, "the app", state["temp_dir"] + "/session_latest/logs")
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    prometheus_yml = write_prometheus_config(state["temp_dir"], DATA_DIR / "prometheus.yml")
    sample = next(iter(sorted(SAMPLE.glob("shapes_*.jpg"))), None)
    print(f"""
visionray is up.
  try it     {HTTP_URL}/  (the try-it page: drop an image, see the boxes)
  API        {HTTP_URL}/v1/models
  OIP v2     {HTTP_URL}/v2/models/shapes-detector  (KServe/Triton REST; tritonclient works)
  gRPC       127.0.0.1:{GRPC_PORT}  (OIP v2 GRPCInferenceService, camera streams: visionray stream)
  ready      {HTTP_URL}/readyz
  also       http://127.0.0.1:{SERVE_PROXY_PORT}  (the same API through Serve's proxy)
  dashboard  {state['dashboard']}  (Serve tab: replicas per stage)
  logs       {state['temp_dir']}/session_latest/logs
  metrics    {service_discovery_file(state['temp_dir'])}  (Ray's Prometheus file-SD: every node's
             metrics port); a ready config: prometheus --config.file={prometheus_yml.relative_to(PROJECT_ROOT)}
             (metric list: docs/metrics.md; Grafana dashboard: docs/grafana-dashboard.json)
  token      {token}  (Ray's CLIs read it from there; RAY_AUTH_MODE=token)

This head listens on 127.0.0.1 only; no other machine can join it. For a cluster, start the
head with `visionray cluster head` instead: a node joins with this token (copied to its
~/.ray/auth_token) and `visionray cluster join <head IP>:6379` (cluster/README.md).

Try:
  curl -s -X POST --data-binary @{sample.relative_to(PROJECT_ROOT) if sample else 'IMAGE'} \\
       -H 'Content-Type: image/jpeg' {HTTP_URL}/v1/models/shapes-detector/predict
  .venv/bin/visionray predict {sample.relative_to(PROJECT_ROOT) if sample else 'IMAGE'} --model shapes-detector
""")
    if sample:
        step("sample request")
        from visionray.cli import main as cli

        cli(["predict", str(sample), "--model", "shapes-detector"])
    return 0


def down(quiet: bool = False) -> int:
    """Stop the platform and return only when all of its processes are gone and its ports free."""
    state = json.loads(STATE_FILE.read_text()) if STATE_FILE.is_file() else None
    if state is None and not platform_pids():
        if not quiet:
            print("visionray is not running (no .data/platform.json)")
        return 0
    session_id = state["pgid"] if state else None
    if not quiet:
        step(f"stopping the platform (Ray head session {session_id})" if state else
             "stopping what is left of a platform of this checkout")
    stop_platform(session_id, quiet=quiet)
    STATE_FILE.unlink(missing_ok=True)
    if state:
        shutil.rmtree(Path(state["temp_dir"]) / "sockets", ignore_errors=True)
    held = _wait_ports_free(platform_ports(state), PORT_RELEASE_S)
    if held:
        print(f"error: port(s) {', '.join(map(str, held))} still in use after the platform stopped; "
              f"`ss -ltnp` shows by whom", file=sys.stderr)
        return 1
    if not quiet:
        print("stopped")
    return 0


def status() -> int:
    state = _state()
    if not state:
        print("visionray is not running")
        return 1
    print(f"Ray head: running (process group {state['pgid']}, {state['gcs_address']}), dashboard {state['dashboard']}")
    try:
        with urllib.request.urlopen(f"{HTTP_URL}/readyz", timeout=5) as r:
            print(f"readyz: {r.status} {r.read().decode()}")
    except urllib.error.HTTPError as err:
        print(f"readyz: {err.code} {err.read().decode()}")
    except Exception as exc:  # noqa: BLE001
        print(f"readyz: unreachable ({exc})")
    return 0
