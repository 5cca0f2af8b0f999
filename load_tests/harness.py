"""What the load tools share: the models they load, an isolated Ray cluster serving the shipped
application, wrk, waiting for the machine to go idle, and CPU per request by process.

A tool measures like this:

    ray_env()                                   # make up's Ray settings, before Ray starts
    with ServedCluster({"fast": FAST_MODEL}) as cluster:
        cluster.deploy()
        settle()                                # the previous run's leftovers finish first
        with CpuMeter(cluster.processes()) as cpu:
            load = LoadResult.from_wrk(run_wrk(f"{cluster.url}/v1/models/fast/predict", FAST_IMAGE, 8, 10))
        print(load.rps, cpu.ms_per_request(load.requests))

The cluster is a Ray cluster of this process's own (`ray.init(address="local")`, its own temp
dir and ports), so a tool never touches the one `make up` runs, and stopping it stops everything
it started.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from serve.app_deploy import app_config, deploy, free_port, wait_ready
from visionray.platform import RAY_TUNING_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT_ROOT / "load_tests" / "results"
WRK_SCRIPT = PROJECT_ROOT / "load_tests" / "wrk_post.lua"
LOCUSTFILE = PROJECT_ROOT / "load_tests" / "locustfile.py"
DEMO = PROJECT_ROOT / "demo_models"
SHARED_MODELS = PROJECT_ROOT.parent / "shared" / "models"
CPU_PROVIDERS = ["CPUExecutionProvider"]

# The fast model ships with the project; the slow one is there only where ../shared/models is.
FAST_MODEL, FAST_IMAGE = DEMO / "detector.onnx", DEMO / "samples" / "shapes_640x480.jpg"
SLOW_MODEL, SLOW_IMAGE = SHARED_MODELS / "yolov8n_quantized_int8.onnx", SHARED_MODELS / "images" / "bus.jpg"


def slow_available() -> bool:
    return SLOW_MODEL.is_file() and SLOW_IMAGE.is_file()


def slow_or_fast() -> tuple[Path, Path]:
    """(model, image): the slow model where it is, else the fast one. Overload needs a model slow
    enough for a queue to form."""
    return (SLOW_MODEL, SLOW_IMAGE) if slow_available() else (FAST_MODEL, FAST_IMAGE)


def machine() -> str:
    """One line for a report's heading: cores, CPU model, memory, OS."""
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total >> 30} GiB, {platform.system()}"


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ---------------------------------------------------------------------------------------
# The served cluster
# ---------------------------------------------------------------------------------------


def ray_env(extra: list[str] = (), tuning: bool = True) -> list[str]:
    """Set the environment the cluster's processes inherit, before Ray starts: `make up`'s Ray
    settings (visionray/platform.py RAY_TUNING_ENV; `tuning=False`: Ray's defaults), then `extra`
    NAME=VALUE items, which win. Returns what was set, for the report."""
    items = [f"{k}={v}" for k, v in RAY_TUNING_ENV.items()] if tuning else []
    items += list(extra)
    for item in items:
        name, _, value = item.partition("=")
        os.environ[name] = value
    return items


def shipped_app(stages: str = "in_process") -> dict:
    """The application `make up` serves: serve/config.yaml's, or serve/edge.yaml's first
    (the stages as deployments)."""
    import yaml

    config = "config.yaml" if stages == "in_process" else "edge.yaml"
    return yaml.safe_load((PROJECT_ROOT / "serve" / config).read_text())["applications"][0]


def batching_deployment(deployments: list[dict]) -> dict:
    """The deployment whose user_config is the inference batching: Inference where the stages are
    deployments, else the Ingress that runs them all."""
    return next(d for d in deployments if d["name"] in ("Inference", "Ingress"))


class ServedCluster:
    """An isolated Ray cluster with Serve started; `deploy` puts the shipped application on it
    with `models` (name -> ONNX path), answering on its own HTTP port (`url`), the way in that
    `make up` serves on. Tools that deploy their own apps (two side by side) use the cluster only.
    """

    def __init__(self, models: dict[str, Path] | None = None, *, providers: list[str] = CPU_PROVIDERS,
                 intra_op_threads: int = 1, user_config: dict | None = None, stages: str = "in_process",
                 app_args: dict | None = None, ingress_replicas: int = 1, num_cpus: int | None = None):
        from ray import serve

        from deployments.ray_compat import ray_init

        self.temp_dir = tempfile.mkdtemp(prefix="vrb", dir="/tmp")
        # At least 4 logical CPUs, so the replicas' fractional num_cpus all fit on a 2-core machine.
        ray_init(self.temp_dir, address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                 include_dashboard=True, dashboard_port=free_port(), logging_level="WARNING", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()},
                    logging_config={"enable_access_log": False})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models or {}
        self.backend = {"providers": providers, "intra_op_threads": intra_op_threads}
        self.user_config = user_config or {}
        self.stages = stages
        self.app_args = app_args or {}
        self.ingress_replicas = ingress_replicas

    def deploy(self, autoscaling: bool = False) -> None:
        """The shipped app as `visionray` on `url`; one replica per deployment, or with
        `autoscaling` the shipped autoscaling configs."""
        models = [{"name": name, "path": str(path)} for name, path in self.models.items()]
        app = app_config("visionray", "/", models, stages=self.stages, http_port=self.port,
                         **{"backend": self.backend, **self.app_args})
        batching = batching_deployment(app["deployments"])
        batching["user_config"] = {**batching.get("user_config", {}), **self.user_config}
        app["deployments"][0]["num_replicas"] = self.ingress_replicas  # the ingress
        if autoscaling:  # app_config pins one replica each; put the shipped autoscaling back
            shipped = {d["name"]: d for d in shipped_app(self.stages)["deployments"]}
            for d in app["deployments"]:
                d.pop("num_replicas")
                d["autoscaling_config"] = shipped[d["name"]]["autoscaling_config"]
        deploy([app])
        wait_ready(f"{self.url}/readyz")

    def processes(self) -> list[psutil.Process]:
        """Every process of the cluster, Ray's own included. Not the load generator, nor Ray's log
        monitor, which `make up` does not start (visionray/platform.py) but ray.init cannot leave out."""
        return [p for p in psutil.Process().children(recursive=True)
                if not any(skip in " ".join(safe_cmdline(p)) for skip in ("locust", "log_monitor.py"))]

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    def __enter__(self) -> ServedCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


# ---------------------------------------------------------------------------------------
# CPU by process
# ---------------------------------------------------------------------------------------


def safe_cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def process_kind(p: psutil.Process) -> str:
    """`ray::ServeReplica:visionray:Inference` -> `Inference`; `.../raylet` -> `raylet`; scripts by name."""
    argv = safe_cmdline(p) or [p.name()]
    first = argv[0]
    if first.startswith("ray::"):  # actors retitle themselves with the running method
        return first.rsplit(":", 1)[-1].split(".")[0]
    if first.startswith("ray-dashboard-"):
        return "dashboard"
    scripts = [a for a in argv[1:] if a.endswith(".py")]
    return Path(scripts[0] if scripts else first.split()[0]).name


class CpuMeter:
    """The CPU (user + system) that `procs` spend inside a `with` block, summed by kind:
    `process_kind`, or what `kind` says (e.g. which of two apps a replica serves).

    From psutil's counters of each process, read at the start and the end: a process that starts
    inside the block counts from zero, one that ends inside it is lost (neither happens while a
    deployed app is under steady load).
    """

    def __init__(self, procs: list[psutil.Process], kind: Callable[[psutil.Process], str] = process_kind):
        self.procs, self.kind = procs, kind
        self.before: dict[int, tuple[str, float]] = {}
        self.after: dict[int, tuple[str, float]] = {}

    def _read(self) -> dict[int, tuple[str, float]]:
        out = {}
        for p in self.procs:
            try:
                t = p.cpu_times()
                out[p.pid] = (self.kind(p), t.user + t.system)
            except psutil.Error:
                pass
        return out

    def __enter__(self) -> CpuMeter:
        self.before = self._read()
        return self

    def __exit__(self, *exc) -> None:
        self.after = self._read()

    def seconds(self) -> dict[str, float]:
        """CPU seconds by kind."""
        out: dict[str, float] = {}
        for pid, (kind, spent) in self.after.items():
            out[kind] = out.get(kind, 0.0) + spent - self.before.get(pid, (kind, 0.0))[1]
        return out

    def ms_per_request(self, requests: int) -> dict[str, float]:
        """CPU ms per request by kind."""
        return {kind: s * 1000 / max(requests, 1) for kind, s in self.seconds().items()}


def settle(max_wait_s: float = 15.0, window_s: float = 0.3, busy_below: float = 0.25) -> None:
    """Wait until the machine is nearly idle (under `busy_below` of its cores busy over a window),
    at most `max_wait_s`.

    wrk stops at its duration with a request in flight on every connection and drops them, but
    the server still computes them: at the slow model's concurrency 8 that is ~8 runs of 80-130 ms
    of CPU. Without this wait that work lands in the next measurement (the next round, or the
    measured run right after the warm-up), whichever setup it is.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        before = psutil.cpu_times()
        time.sleep(window_s)
        after = psutil.cpu_times()
        busy = sum(after) - after.idle - after.iowait - (sum(before) - before.idle - before.iowait)
        if busy / (window_s * (psutil.cpu_count() or 1)) < busy_below:
            return


# ---------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failures: int
    client_cpu_ms: float | None = None  # the load generator's CPU per request, where measured

    @classmethod
    def from_wrk(cls, summary: dict) -> LoadResult:
        n = summary["requests"]
        return cls(n, n / (summary["duration_us"] / 1e6), summary["p50_us"] / 1000, summary["p95_us"] / 1000,
                   summary["p99_us"] / 1000, summary["non_2xx"] + summary["socket_errors"])


def run_wrk(url: str, image: Path, connections: int, duration_s: float,
            headers: dict[str, str] | None = None) -> dict:
    """wrk, closed loop (each connection sends its next request when the last one answered),
    POSTing `image` to `url`: its summary, load_tests/wrk_post.lua's WRK_JSON line.

    wrk (Debian package `wrk`) rather than a Python client: it costs ~0.1 ms of CPU a request
    where locust costs ~2, and on 2 cores the load generator competes with the server it measures.
    """
    command = ["wrk", "-t1", f"-c{connections}", f"-d{round(duration_s)}s", "--timeout", "30s", "-s", str(WRK_SCRIPT),
               url]
    env = {**os.environ, "WRK_IMAGE": str(image),
           "WRK_CONTENT_TYPE": "image/png" if image.suffix.lower() == ".png" else "image/jpeg",
           "WRK_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())}
    for attempt in (1, 2):
        try:
            # wrk 4.1 has been seen to sleep for ever after its duration (rarely): bounded.
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                                 timeout=duration_s + 30).stdout
            break
        except subprocess.TimeoutExpired:
            if attempt == 2:
                raise
            print(f"wrk did not finish within {duration_s + 30:.0f} s; running it again", flush=True)
    return json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON "))[9:])
