"""One command, one table: visionray served over HTTP against its own in-process limit.

    .venv/bin/python -m load_tests.bench                 # or: make bench
    .venv/bin/python -m load_tests.bench --autoscale     # plus the ramp run and its PNG

In the same run, on the same machine:
1. the in-process limit: `LocalPipeline` (the stages' own decode / letterbox / ORT / NMS
   functions) in one Python process, same model and ONNX Runtime settings as served,
   at each concurrency (threads);
2. the served endpoint: an isolated Ray cluster of its own (own temp dir and ports) with
   serve/config.yaml's application serving the same model, loaded over HTTP by locust
   (FastHttpUser, its own process) at each concurrency.
CPU ms per request counts every process of the cluster (Ray's own included, the load
generator and this harness excluded), from psutil.
Writes load_tests/results/bench-<stamp>.{json,md} and latest.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from deployments.local_pipeline import LocalPipeline
from deployments.onnx_backend import BackendSettings
from serve.platform import RAY_TUNING_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = PROJECT_ROOT.parent / "shared" / "models"
RESULTS = PROJECT_ROOT / "load_tests" / "results"
LOCUSTFILE = PROJECT_ROOT / "load_tests" / "locustfile.py"
DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
# The targets, checked at the end of every run.
THROUGHPUT_RATIO_MIN = 0.90  # served img/s at concurrency 8 / in-process
P50_EXTRA_MS_MAX = 8.0  # served p50 at concurrency 1 - in-process serial p50
CPU_RATIO_MAX = 1.3  # served CPU ms per request / in-process


@dataclass
class Row:
    setup: str
    concurrency: int
    requests: int
    img_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_req: float
    # CPU ms per request by process kind (served only): where the overhead is.
    cpu_breakdown: dict | None = None


def default_model_and_image() -> tuple[Path, Path]:
    model = SHARED_MODELS / "yolov8n_quantized_int8.onnx"
    image = SHARED_MODELS / "images" / "bus.jpg"
    if model.is_file() and image.is_file():
        return model, image
    demo = PROJECT_ROOT / "demo_models"
    return demo / "detector.onnx", demo / "samples" / "shapes_640x480.jpg"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ---------------------------------------------------------------------------------------
# 1. In-process limit
# ---------------------------------------------------------------------------------------


def in_process(pipeline: LocalPipeline, data: bytes, concurrency: int, duration_s: float) -> Row:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0]
    for _ in range(3):
        pipeline(data)
    deadline = time.perf_counter() + duration_s

    def worker(mine: list[float]) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                json.dumps(pipeline(data))  # the service answers JSON too
            except Exception:  # noqa: BLE001 - counted, not fatal
                errors[0] += 1
            mine.append((time.perf_counter() - t0) * 1000)

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(lat,)) for lat in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    all_ms = [x for lat in latencies for x in lat]
    n = len(all_ms)
    return Row("in-process", concurrency, n, n / elapsed, percentile(all_ms, 50), percentile(all_ms, 95),
               percentile(all_ms, 99), errors[0], cpu * 1000 / n)


# ---------------------------------------------------------------------------------------
# 2. Served
# ---------------------------------------------------------------------------------------


class ServedCluster:
    """An isolated Ray cluster with the shipped application serving one model."""

    def __init__(self, model: Path, providers: list, intra_op_threads: int, user_config: dict, num_cpus: int):
        import ray
        from ray import serve

        from tests.conftest import free_port

        self.temp_dir = tempfile.mkdtemp(prefix="vrb", dir="/tmp")
        ray.init(address="local", num_cpus=num_cpus, _temp_dir=self.temp_dir, include_dashboard=True,
                 dashboard_port=free_port(), logging_level="WARNING", log_to_driver=False)
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port},
                    logging_config={"enable_access_log": False})
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.backend = {"providers": providers, "intra_op_threads": intra_op_threads}
        self.user_config = user_config

    def deploy(self, autoscaling: bool) -> None:
        from tests.conftest import app_config, deploy, wait_ready

        app = app_config("visionray", "/", [{"name": "bench", "path": str(self.model)}], backend=self.backend)
        inference = next(d for d in app["deployments"] if d["name"] == "Inference")
        inference["user_config"] = {**inference.get("user_config", {}), **self.user_config}
        if autoscaling:  # app_config pins one replica each; put the shipped autoscaling back
            shipped = {d["name"]: d for d in shipped_deployments()}
            for d in app["deployments"]:
                d.pop("num_replicas")
                d["autoscaling_config"] = shipped[d["name"]]["autoscaling_config"]
        deploy([app], self.url)
        wait_ready(f"{self.url}/readyz")

    def processes(self) -> list[psutil.Process]:
        me = psutil.Process()
        return [p for p in me.children(recursive=True) if "locust" not in " ".join(safe_cmdline(p))]

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def shipped_app() -> dict:
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "serve" / "config.yaml").read_text())["applications"][0]


def shipped_deployments() -> list[dict]:
    return shipped_app()["deployments"]


def safe_cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    """pid -> (what the process is, its user + system CPU seconds so far)."""
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (process_kind(p), t.user + t.system)
        except psutil.Error:
            pass
    return out


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


def run_locust(url: str, users: int, duration_s: float, image: Path, out_prefix: Path,
               extra: list[str] | None = None) -> dict:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "Detect", "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{round(duration_s)}s", "-H", url,
               "--detect-model", "bench", "--image", str(image), "--csv", str(out_prefix),
               "--only-summary", "--loglevel", "WARNING", *(extra or [])]
    with open(f"{out_prefix}.log", "w") as log:
        subprocess.run(command, check=False, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    with open(f"{out_prefix}_stats.csv") as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return total


def served(cluster: ServedCluster, image: Path, concurrency: int, duration_s: float, out_dir: Path) -> Row:
    run_locust(cluster.url, concurrency, 5, image, out_dir / f"warmup_c{concurrency}")
    procs = cluster.processes()
    before = cpu_seconds(procs)
    stats = run_locust(cluster.url, concurrency, duration_s, image, out_dir / f"served_c{concurrency}")
    after = cpu_seconds(procs)
    n = max(int(stats["Request Count"]), 1)
    by_kind: dict[str, float] = {}
    for pid, (kind, seconds) in after.items():
        spent = seconds - before.get(pid, (kind, 0.0))[1]
        by_kind[kind] = by_kind.get(kind, 0.0) + spent * 1000 / n
    cpu_breakdown = {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    return Row("served", concurrency, n, float(stats["Requests/s"]), float(stats["50%"]), float(stats["95%"]),
               float(stats["99%"]), int(stats["Failure Count"]), sum(by_kind.values()), cpu_breakdown)


# ---------------------------------------------------------------------------------------
# 3. Autoscaling under a ramp
# ---------------------------------------------------------------------------------------


def autoscale_run(cluster: ServedCluster, image: Path, out_dir: Path, peak: int, step_s: float) -> dict:
    from ray import serve

    cluster.deploy(autoscaling=True)
    samples: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            app = serve.status().applications.get("visionray")
            if app:
                counts = {name: d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items()}
                samples.append({"t": round(time.monotonic() - t0, 1), **counts})
            done.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    prefix = out_dir / "autoscale"
    command = [sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{LOCUSTFILE.parent / 'ramp.py'}", "Detect",
               "--headless", "-H", cluster.url, "--detect-model", "bench", "--image", str(image),
               "--ramp-peak", str(peak), "--ramp-step-s", str(step_s), "--csv", str(prefix),
               "--csv-full-history", "--only-summary", "--loglevel", "WARNING"]
    with open(f"{prefix}.log", "w") as log:
        subprocess.run(command, check=False, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    done.set()
    watcher.join()
    history = []
    with open(f"{prefix}_stats_history.csv") as f:
        for r in csv.DictReader(f):
            if r["Name"] == "Aggregated":
                history.append({"timestamp": int(r["Timestamp"]), "users": int(r["User Count"]),
                                "rps": float(r["Requests/s"]), "p99": float(r["99%"]) if r["99%"] != "N/A" else None,
                                "failures": int(r["Total Failure Count"])})
    png = out_dir / "autoscale.png"
    plot_autoscale(history, samples, png)
    return {"replicas": samples, "load": history, "png": png.name,
            "failures": history[-1]["failures"] if history else None}


def plot_autoscale(history: list[dict], samples: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = history[0]["timestamp"] if history else 0
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ts = [h["timestamp"] - t0 for h in history]
    axes[0].plot(ts, [h["rps"] for h in history], label="requests/s")
    axes[0].plot(ts, [h["users"] for h in history], "--", label="users (concurrency)")
    axes[0].legend(loc="upper left")
    axes[1].plot(ts, [h["p99"] for h in history], color="tab:red")
    axes[1].set_ylabel("p99 ms")
    for stage in ("Preprocess", "Inference", "Postprocess"):
        axes[2].step([s["t"] for s in samples], [s.get(stage, 0) for s in samples], where="post", label=stage)
    axes[2].set_ylabel("running replicas")
    axes[2].set_xlabel("seconds")
    axes[2].legend(loc="upper left")
    fig.suptitle("visionray under a locust ramp: load, p99 and replicas per stage")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def compare(rows: list[Row]) -> tuple[list[dict], list[str]]:
    limit = {r.concurrency: r for r in rows if r.setup == "in-process"}
    table = []
    for r in rows:
        ref = limit[r.concurrency]
        table.append({**asdict(r), "img_s_ratio": r.img_s / ref.img_s, "p50_ratio": r.p50_ms / ref.p50_ms,
                      "cpu_ratio": r.cpu_ms_per_req / ref.cpu_ms_per_req})
    served_rows = {r.concurrency: r for r in rows if r.setup == "served"}
    checks = []
    if 8 in served_rows:
        ratio = served_rows[8].img_s / limit[8].img_s
        checks.append(f"{'PASS' if ratio >= THROUGHPUT_RATIO_MIN else 'FAIL'} concurrency 8 throughput "
                      f"{served_rows[8].img_s:.1f} img/s = {ratio:.2f} x in-process (target >= {THROUGHPUT_RATIO_MIN})")
    if 1 in served_rows:
        extra = served_rows[1].p50_ms - limit[1].p50_ms
        checks.append(f"{'PASS' if extra <= P50_EXTRA_MS_MAX else 'FAIL'} concurrency 1 p50 {served_rows[1].p50_ms:.1f}"
                      f" ms = in-process + {extra:.1f} ms (target <= + {P50_EXTRA_MS_MAX:.0f} ms)")
    for c, r in sorted(served_rows.items()):
        ratio = r.cpu_ms_per_req / limit[c].cpu_ms_per_req
        checks.append(f"{'PASS' if ratio <= CPU_RATIO_MAX else 'FAIL'} concurrency {c} CPU {r.cpu_ms_per_req:.1f} "
                      f"ms/request = {ratio:.2f} x in-process (target <= {CPU_RATIO_MAX})")
    errors = sum(r.errors for r in served_rows.values())
    checks.append(f"{'PASS' if errors == 0 else 'FAIL'} errors: {errors}")
    return table, checks


def markdown(meta: dict, table: list[dict], checks: list[str], autoscale: dict | None) -> str:
    lines = [
        f"### Benchmark {meta['date']} — {meta['machine']}",
        "",
        f"Model `{meta['model']}`, image `{meta['image']}`, providers {meta['providers']}, "
        f"ORT intra-op threads {meta['intra_op_threads']}, {meta['duration_s']:.0f} s per point"
        f"{', env ' + ' '.join(meta['env']) if meta['env'] else ''}, inference user_config "
        f"`{json.dumps(meta['inference_user_config'])}`.",
        "",
        "| setup | conc. | img/s | p50 ms | p95 ms | p99 ms | errors | CPU ms/req | img/s ÷ limit | p50 ÷ limit "
        "| CPU ÷ limit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(f"| {r['setup']} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
                     f"| {r['p99_ms']:.1f} | {r['errors']} | {r['cpu_ms_per_req']:.1f} | {r['img_s_ratio']:.2f} "
                     f"| {r['p50_ratio']:.2f} | {r['cpu_ratio']:.2f} |")
    lines += ["", *[f"- {c}" for c in checks]]
    for r in table:
        if r.get("cpu_breakdown"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_breakdown"].items())
            lines.append(f"- CPU ms/request by process, served at concurrency {r['concurrency']}: {parts}")
    if autoscale:
        peaks = {k: max(s.get(k, 0) for s in autoscale["replicas"]) for k in ("Preprocess", "Inference", "Postprocess")}
        lines += ["", f"Autoscaling under a locust ramp (failures: {autoscale['failures']}); peak replicas {peaks}:",
                  "", f"![autoscaling]({autoscale['png']})"]
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total >> 30} GiB, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    default_model, default_image = default_model_and_image()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model)
    ap.add_argument("--image", type=Path, default=default_image)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="the sweep (default: 1 8)")
    ap.add_argument("--duration", type=float, default=30, help="seconds per point")
    ap.add_argument("--device", choices=sorted(DEVICE_PROVIDERS), default="cpu")
    ap.add_argument("--intra-op-threads", type=int, default=shipped_app()["args"]["backend"]["intra_op_threads"],
                    help="ORT threads per run, in-process and served (default: serve/config.yaml's)")
    ap.add_argument("--user-config", type=json.loads, default={},
                    help='Inference user_config overrides, e.g. \'{"max_batch_size": 4}\'')
    ap.add_argument("--autoscale", action="store_true", help="also run the ramp and plot replicas per stage")
    ap.add_argument("--ramp-peak", type=int, default=24)
    ap.add_argument("--ramp-step-s", type=float, default=20)
    ap.add_argument("--skip-served", action="store_true", help="only the in-process limit")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for the served cluster's processes (Ray/Serve tuning experiments)")
    ap.add_argument("--ray-defaults", action="store_true",
                    help="serve without the Ray settings `make up` uses (serve/platform.py RAY_TUNING_ENV)")
    args = ap.parse_args(argv)
    if not args.ray_defaults:
        args.env = [f"{k}={v}" for k, v in RAY_TUNING_ENV.items()] + args.env
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    providers = DEVICE_PROVIDERS[args.device]
    data = args.image.read_bytes()
    print(f"model {args.model}\nimage {args.image}\nproviders {providers}, results in {out_dir}", flush=True)

    rows: list[Row] = []
    pipeline = LocalPipeline(args.model, BackendSettings(providers=providers, intra_op_threads=args.intra_op_threads))
    print(f"in-process providers in use: {pipeline.model.providers}", flush=True)
    for c in args.concurrency:
        rows.append(in_process(pipeline, data, c, args.duration))
        print(rows[-1], flush=True)
    del pipeline

    autoscale = None
    if not args.skip_served:
        cluster = ServedCluster(args.model, providers, args.intra_op_threads, args.user_config,
                                num_cpus=max(4, os.cpu_count() or 1))
        try:
            cluster.deploy(autoscaling=False)
            for c in args.concurrency:
                rows.append(served(cluster, args.image, c, args.duration, out_dir))
                print(rows[-1], flush=True)
            if args.autoscale:
                autoscale = autoscale_run(cluster, args.image, out_dir, args.ramp_peak, args.ramp_step_s)
        finally:
            cluster.shutdown()

    table, checks = compare(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "model": args.model.name,
            "image": args.image.name, "providers": providers, "intra_op_threads": args.intra_op_threads,
            "duration_s": args.duration, "device": args.device, "env": args.env,
            "inference_user_config": {**next(d for d in shipped_deployments() if d["name"] == "Inference")
                                      .get("user_config", {}), **args.user_config}}
    report = markdown(meta, table, checks, autoscale)
    (out_dir / "bench.json").write_text(json.dumps({"meta": meta, "rows": table, "checks": checks,
                                                    "autoscale": autoscale}, indent=2))
    (out_dir / "bench.md").write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
