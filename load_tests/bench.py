"""One command, one table: visionray served over HTTP against its own in-process limit and the
single-process server a user would write instead, with PASS/FAIL per target.

    .venv/bin/python -m load_tests.bench                 # or: make bench
    .venv/bin/python -m load_tests.bench --autoscale     # plus the ramp run and its PNG

By default two models: a fast one (the shipped demo detector) and, where ../shared/models is
present, a slow one (YOLOv8n int8 on bus.jpg). For each, in the same run, on the same machine:
1. the in-process limit: `LocalPipeline` (the stages' own decode / letterbox / ORT / NMS
   functions) in this Python process, the shipped ORT settings, concurrency = threads; for the
   slow model also a lone request at every intra-op thread count (its best is the c1 target);
2. the plain server: load_tests/plain_server.py (Starlette + uvicorn around the same
   pipeline, one process): the peer to beat;
3. served: an isolated Ray cluster of its own running serve/config.yaml's application (or
   serve/edge.yaml's, stages as deployments, with --stages deployments), on its own HTTP port.
Load: closed loop at each concurrency, from wrk (load_tests/wrk_post.lua; Debian package `wrk`)
where it is installed, else locust (FastHttpUser). wrk is the default because it costs about
0.1 ms of CPU per request to locust's ~2: on 2 cores the load generator competes with the server
it measures. CPU ms per request counts every process of the cluster (Ray's own included) or the
plain server, from psutil; the load generator's own CPU is reported in a column of its own and
not counted; neither is Ray's log monitor, which `make up` does not run (ray.init, used here,
cannot leave it out).
Writes load_tests/results/<stamp>/bench.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from core.local_pipeline import LocalPipeline
from core.onnx_backend import BackendSettings, cores_available
from load_tests.harness import (
    FAST_IMAGE,
    FAST_MODEL,
    LOCUSTFILE,
    PROJECT_ROOT,
    RESULTS,
    SLOW_IMAGE,
    SLOW_MODEL,
    CpuMeter,
    LoadResult,
    ServedCluster,
    batching_deployment,
    machine,
    percentile,
    ray_env,
    run_wrk,
    settle,
    shipped_app,
    slow_available,
)
from serve.app_deploy import free_port, wait_ready

DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
# The targets, checked at the end of every run. A model is "fast" when the in-process
# pipeline costs at most FAST_MODEL_CPU_MS of CPU per request.
FAST_MODEL_CPU_MS = 20.0
FAST = {"c8_ratio": 0.85, "c8_vs_plain": 0.85, "cpu_ratio": 1.3, "c1_p50_extra_ms": 5.0}
SLOW = {"c8_ratio": 0.95, "c1_p50_extra_ms": 8.0}


@dataclass
class Row:
    model: str
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
    # The load generator's CPU ms per request (HTTP rows; not in cpu_ms_per_req).
    client_cpu_ms: float | None = None
    # Each round's img/s and CPU ms per request, in round order (rounds of all setups alternate).
    round_img_s: list[float] | None = None
    round_cpu_ms: list[float] | None = None
    round_p50_ms: list[float] | None = None


def default_workloads() -> list[tuple[str, Path, Path]]:
    """(label, model, image): the fast demo detector, and the slow YOLOv8n int8 where it is."""
    out = [("fast", FAST_MODEL, FAST_IMAGE)]
    if slow_available():
        out.append(("slow", SLOW_MODEL, SLOW_IMAGE))
    else:
        print(f"note: {SLOW_MODEL} not found: the slow-model targets are not measured", flush=True)
    return out


def median_row(runs: list[Row]) -> Row:
    """One row from several rounds of one setup: medians, errors summed, the median-CPU run's breakdown."""
    by_cpu = sorted(runs, key=lambda r: r.cpu_ms_per_req)
    mid = by_cpu[len(by_cpu) // 2]

    def med(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    return Row(mid.model, mid.setup, mid.concurrency, sum(r.requests for r in runs), med("img_s"), med("p50_ms"),
               med("p95_ms"), med("p99_ms"), sum(r.errors for r in runs), med("cpu_ms_per_req"), mid.cpu_breakdown,
               None if mid.client_cpu_ms is None else med("client_cpu_ms"),
               [r.img_s for r in runs], [r.cpu_ms_per_req for r in runs], [r.p50_ms for r in runs])


def paired_p50_extra(row: Row, ref: Row) -> float:
    """row's p50 - ref's in ms: the median of the per-round differences where both ran the same
    rounds (see paired_ratio), else the medians' difference."""
    if row.round_p50_ms and ref.round_p50_ms and len(row.round_p50_ms) == len(ref.round_p50_ms):
        return statistics.median(a - b for a, b in zip(row.round_p50_ms, ref.round_p50_ms))
    return row.p50_ms - ref.p50_ms


def paired_ratio(row: Row, ref: Row, attr: str) -> float:
    """row ÷ ref for `attr` ("img_s" or "cpu_ms"): the median of the per-round ratios, where both ran
    the same rounds. Round i of every setup runs within the same minute, so a ratio within a round
    cancels this shared VM's drift (±15-25 % over minutes), which a ratio of medians across rounds
    does not. Otherwise (different rounds, e.g. the slow model's lone runs): the medians' ratio."""
    mine, theirs = getattr(row, f"round_{attr}"), getattr(ref, f"round_{attr}")
    if mine and theirs and len(mine) == len(theirs):
        return statistics.median(a / b for a, b in zip(mine, theirs))
    field = "img_s" if attr == "img_s" else "cpu_ms_per_req"
    return getattr(row, field) / getattr(ref, field)


# ---------------------------------------------------------------------------------------
# 1. In-process limit
# ---------------------------------------------------------------------------------------


def lone_cpu_ms(pipeline: LocalPipeline, data: bytes, calls: int = 5) -> float:
    """CPU ms of one lone call (the best of `calls`): whether the model is a slow one."""
    best = float("inf")
    for _ in range(calls):
        t0 = time.process_time()
        pipeline(data)
        best = min(best, (time.process_time() - t0) * 1000)
    return best


def in_process(label: str, pipeline: LocalPipeline, data: bytes, concurrency: int, duration_s: float,
               setup: str = "in-process") -> Row:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0]
    for _ in range(3):
        pipeline(data)
    settle()
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
    return Row(label, setup, concurrency, n, n / elapsed, percentile(all_ms, 50), percentile(all_ms, 95),
               percentile(all_ms, 99), errors[0], cpu * 1000 / n)


# ---------------------------------------------------------------------------------------
# 2. Served
# ---------------------------------------------------------------------------------------


class PlainServer:
    """load_tests/plain_server.py in a process of its own."""

    def __init__(self, model: Path, providers: list, intra_op_threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "load_tests.plain_server", "--model", str(model), "--port", str(self.port),
             "--intra-op-threads", str(intra_op_threads), "--providers", ",".join(providers)],
            cwd=PROJECT_ROOT)
        wait_ready(f"{self.url}/healthz", 60)

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid)]

    def shutdown(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def shipped_batching(stages: str) -> dict:
    return batching_deployment(shipped_app(stages)["deployments"])["user_config"]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_locust(url: str, model: str, users: int, duration_s: float, image: Path, out_prefix: Path,
               extra: list[str] | None = None) -> dict:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "Detect", "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{round(duration_s)}s", "-H", url,
               "--detect-model", model, "--image", str(image), "--csv", str(out_prefix),
               "--only-summary", "--loglevel", "WARNING", *(extra or [])]
    with open(f"{out_prefix}.log", "w") as log:
        subprocess.run(command, check=False, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    with open(f"{out_prefix}_stats.csv") as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return total


def run_load(client: str, url: str, model: str, users: int, duration_s: float, image: Path,
             out_prefix: Path, oip_batch: int = 0) -> LoadResult:
    """Closed-loop load with `users` connections; the client's own CPU is measured too. With
    `oip_batch` (wrk only), each request is an OIP v2 infer of that many copies of `image`."""
    cpu0 = children_cpu_s()
    if oip_batch:
        body, header_length = oip_infer_body(image.read_bytes(), oip_batch)
        body_file = Path(f"{out_prefix}.oip-body")
        body_file.write_bytes(body)
        result = _wrk_load(run_wrk(f"{url}/v2/models/{model}/infer", body_file, users, duration_s,
                                   {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(header_length)}), out_prefix)
    elif client == "locust":
        stats = run_locust(url, model, users, duration_s, image, out_prefix)
        n = int(stats["Request Count"])
        result = LoadResult(n, float(stats["Requests/s"]), float(stats["50%"]), float(stats["95%"]),
                            float(stats["99%"]), int(stats["Failure Count"]))
    else:
        result = _wrk_load(run_wrk(f"{url}/v1/models/{model}/predict", image, users, duration_s), out_prefix)
    result.client_cpu_ms = (children_cpu_s() - cpu0) * 1000 / max(result.requests, 1)
    return result


def _wrk_load(summary: dict, out_prefix: Path) -> LoadResult:
    Path(f"{out_prefix}.json").write_text(json.dumps(summary))
    return LoadResult.from_wrk(summary)


def served(label: str, setup: str, server: ServedCluster | PlainServer, image: Path, concurrency: int,
           duration_s: float, out_dir: Path, client: str, oip_batch: int = 0) -> Row:
    """Closed-loop HTTP load on a server (the platform or the plain one); CPU by process.

    With `oip_batch`, OIP v2 requests of that many images each, on concurrency / oip_batch
    connections (the same images in flight): img/s and CPU are per image, latency per request.
    """
    name = f"{label}_{setup.replace(' ', '-').replace(',', '')}_c{concurrency}"
    connections = max(1, concurrency // oip_batch) if oip_batch else concurrency
    run_load(client, server.url, label, connections, 3, image, out_dir / f"warmup_{name}", oip_batch)
    settle()
    with CpuMeter(server.processes()) as cpu:
        load = run_load(client, server.url, label, connections, duration_s, image, out_dir / name, oip_batch)
    images = max(load.requests, 1) * (oip_batch or 1)
    by_kind = cpu.ms_per_request(images)
    cpu_breakdown = {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    return Row(label, setup, concurrency, images, load.rps * (oip_batch or 1), load.p50_ms, load.p95_ms,
               load.p99_ms, load.failures, sum(by_kind.values()), cpu_breakdown,
               None if load.client_cpu_ms is None else load.client_cpu_ms / (oip_batch or 1))


def oip_infer_body(image: bytes, n: int) -> tuple[bytes, int]:
    """An OIP v2 infer request of `n` copies of `image` as one BYTES tensor, binary tensor data
    extension (what tritonclient sends): (body, Inference-Header-Content-Length)."""
    raw = b"".join(len(image).to_bytes(4, "little") + image for _ in range(n))
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + raw, len(head)


# ---------------------------------------------------------------------------------------
# 3. Autoscaling under a ramp
# ---------------------------------------------------------------------------------------


def autoscale_run(cluster: ServedCluster, model: str, image: Path, out_dir: Path, peak: int, step_s: float) -> dict:
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
               "--headless", "-H", cluster.url, "--detect-model", model, "--image", str(image),
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
    for stage in sorted({k for s in samples for k in s if k != "t"}):
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
    """The table with ratios to the in-process limit, and PASS/FAIL per target per model."""
    limit = {(r.model, r.concurrency): r for r in rows if r.setup == "in-process"}
    table = []
    for r in rows:
        # A row at a concurrency with no limit of its own (the cores-threads reference) is compared
        # with the limit at the model's top concurrency.
        ref = limit.get((r.model, r.concurrency)) or max((v for (m, _), v in limit.items() if m == r.model),
                                                         key=lambda v: v.concurrency)
        table.append({**asdict(r), "img_s_ratio": paired_ratio(r, ref, "img_s"), "p50_ratio": r.p50_ms / ref.p50_ms,
                      "cpu_ratio": paired_ratio(r, ref, "cpu_ms")})
    checks = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = {(r.setup, r.concurrency): r for r in rows if r.model == model}
        served8, served1 = mine.get(("served", 8)), mine.get(("served", 1))
        if served8 is None and served1 is None:
            continue
        own_limit = limit.get((model, 1)) or next(r for (m, _), r in limit.items() if m == model)
        fast = own_limit.cpu_ms_per_req <= FAST_MODEL_CPU_MS
        targets = FAST if fast else SLOW
        kind = f"{model} ({'fast' if fast else 'slow'} model)"

        def check(ok: bool, text: str, kind: str = kind) -> None:
            checks.append(f"{'PASS' if ok else 'FAIL'} {kind}: {text}")

        if served8 is not None and (model, 8) in limit:
            ratio = paired_ratio(served8, limit[(model, 8)], "img_s")
            check(ratio >= targets["c8_ratio"], f"concurrency 8 throughput {served8.img_s:.1f} img/s = {ratio:.2f} x "
                  f"in-process (target >= {targets['c8_ratio']})")
            plain8 = mine.get(("plain server", 8))
            if "c8_vs_plain" in targets and plain8 is not None:
                ratio = paired_ratio(served8, plain8, "img_s")
                check(ratio >= targets["c8_vs_plain"], f"concurrency 8 throughput = {ratio:.2f} x the plain "
                      f"server's {plain8.img_s:.1f} img/s (target >= {targets['c8_vs_plain']})")
        if served1 is not None:
            # Slow model: against a lone request at its best thread count.
            lone = [r for (setup, c), r in mine.items() if c == 1 and setup.startswith("in-process")]
            ref = min(lone, key=lambda r: r.p50_ms) if not fast else own_limit
            extra = paired_p50_extra(served1, ref)
            check(extra <= targets["c1_p50_extra_ms"], f"concurrency 1 p50 {served1.p50_ms:.1f} ms, {ref.setup} "
                  f"{ref.p50_ms:.1f} ms: {extra:+.1f} ms (median of the rounds' differences; target <= + "
                  f"{targets['c1_p50_extra_ms']:.0f} ms)")
        if "cpu_ratio" in targets:
            for c, r in sorted((c, r) for (setup, c), r in mine.items() if setup == "served"):
                ratio = paired_ratio(r, limit[(model, c)], "cpu_ms")
                check(ratio <= targets["cpu_ratio"], f"concurrency {c} CPU {r.cpu_ms_per_req:.1f} ms/request = "
                      f"{ratio:.2f} x in-process (target <= {targets['cpu_ratio']})")
    errors = sum(r.errors for r in rows if r.setup.startswith("served"))
    checks.append(f"{'PASS' if errors == 0 else 'FAIL'} errors served: {errors}")
    return table, checks


def markdown(meta: dict, table: list[dict], checks: list[str], autoscale: dict | None) -> str:
    lines = [
        f"### Benchmark {meta['date']} — {meta['machine']}",
        "",
        f"Models {meta['models']}, providers {meta['providers']}, ORT intra-op threads "
        f"{meta['intra_op_threads']}, {meta['duration_s']:.0f} s per point × {meta['rounds']} rounds "
        "(medians; ratios: medians of the per-round ratios), "
        f"stages `{meta['stages']}`, load from {meta.get('client', 'locust')}"
        f"{', env ' + ' '.join(meta['env']) if meta['env'] else ''}, inference batching "
        f"`{json.dumps(meta['inference_user_config'])}`.",
        "",
        "| model | setup | conc. | img/s | p50 ms | p95 ms | p99 ms | errors | CPU ms/req | img/s ÷ limit "
        "| p50 ÷ limit | CPU ÷ limit | client CPU ms/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(f"| {r['model']} | {r['setup']} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.1f} "
                     f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['cpu_ms_per_req']:.1f} "
                     f"| {r['img_s_ratio']:.2f} | {r['p50_ratio']:.2f} | {r['cpu_ratio']:.2f} "
                     f"| {'' if r.get('client_cpu_ms') is None else format(r['client_cpu_ms'], '.2f')} |")
    lines += ["", *[f"- {c}" for c in checks]]
    for r in table:
        if r.get("cpu_breakdown") and r["setup"] == "served":
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_breakdown"].items())
            lines.append(f"- CPU ms/request by process, {r['model']} served at concurrency {r['concurrency']}: {parts}")
    if autoscale:
        stages = sorted({k for s in autoscale["replicas"] for k in s if k != "t"})
        peaks = {k: max(s.get(k, 0) for s in autoscale["replicas"]) for k in stages}
        lines += ["", f"Autoscaling under a locust ramp (failures: {autoscale['failures']}); peak replicas {peaks}:",
                  "", f"![autoscaling]({autoscale['png']})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="one model instead of the default fast + slow pair")
    ap.add_argument("--image", type=Path, help="its image (default: the demo sample)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="the sweep (default: 1 8)")
    ap.add_argument("--duration", type=float, default=8, help="seconds per point and round")
    ap.add_argument("--rounds", type=int, default=4, help="turns each setup takes per point (medians reported)")
    ap.add_argument("--device", choices=sorted(DEVICE_PROVIDERS), default="cpu")
    ap.add_argument("--stages", choices=["in_process", "deployments"], default="in_process",
                    help="serve/config.yaml's app (default) or serve/edge.yaml's (stages as deployments)")
    ap.add_argument("--intra-op-threads", type=int,
                    help="ORT threads per run, everywhere (default: the shipped config's)")
    ap.add_argument("--user-config", type=json.loads, default={},
                    help='inference batching overrides, e.g. \'{"max_batch_size": 4}\'')
    ap.add_argument("--app-args", type=json.loads, default={},
                    help='application args overrides (deployments/config.py), e.g. \'{"max_in_flight": 4}\'')
    ap.add_argument("--oip-batch", type=int, default=4,
                    help="also serve the top concurrency as OIP v2 requests of this many images (0: not)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain single-process server rows")
    ap.add_argument("--autoscale", action="store_true", help="also run the ramp and plot replicas per stage")
    ap.add_argument("--ramp-peak", type=int, default=24)
    ap.add_argument("--ramp-step-s", type=float, default=20)
    ap.add_argument("--skip-served", action="store_true", help="only the in-process limit")
    ap.add_argument("--client", choices=["wrk", "locust"], default="wrk" if shutil.which("wrk") else "locust",
                    help="load generator (default: wrk where installed, else locust)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for the served cluster's processes (Ray/Serve tuning experiments)")
    ap.add_argument("--ray-defaults", action="store_true",
                    help="serve without the Ray settings `make up` uses (visionray/platform.py RAY_TUNING_ENV)")
    args = ap.parse_args(argv)
    if args.intra_op_threads is None:
        args.intra_op_threads = shipped_app(args.stages)["args"]["backend"]["intra_op_threads"]
    args.env = ray_env(args.env, tuning=not args.ray_defaults)
    if args.model:
        workloads = [(args.model.stem, args.model, args.image or FAST_IMAGE)]
    else:
        workloads = default_workloads()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    providers = DEVICE_PROVIDERS[args.device]
    print(f"models {[(label, str(m)) for label, m, _ in workloads]}\nproviders {providers}, results in {out_dir}",
          flush=True)

    def record(row: Row) -> None:
        rows.append(row)
        print(row, flush=True)

    rows: list[Row] = []
    cores = cores_available()
    pipelines = {label: LocalPipeline(model, BackendSettings(providers=providers,
                                                             intra_op_threads=args.intra_op_threads))
                 for label, model, _ in workloads}
    print(f"in-process providers in use: {next(iter(pipelines.values())).model.providers}", flush=True)
    plains: dict[str, PlainServer] = {}
    cluster = None
    autoscale = None
    try:
        if not args.skip_served:
            if not args.no_plain:
                plains = {label: PlainServer(model, providers, args.intra_op_threads) for label, model, _ in workloads}
            cluster = ServedCluster({label: model for label, model, _ in workloads}, providers=providers,
                                    intra_op_threads=args.intra_op_threads, user_config=args.user_config,
                                    stages=args.stages, app_args=args.app_args)
            cluster.deploy(autoscaling=False)
        for label, model, image in workloads:
            data = image.read_bytes()
            # A slow model's lone request at every thread count too (its c1 target is the best),
            # in the same rounds as the other setups.
            lone_pipelines = {}
            if lone_cpu_ms(pipelines[label], data) > FAST_MODEL_CPU_MS:
                lone_pipelines = {f"in-process {threads} threads": LocalPipeline(
                    model, BackendSettings(providers=providers, intra_op_threads=threads))
                    for threads in range(1, cores + 1) if threads != args.intra_op_threads}
            for c in args.concurrency:
                # The setups take turns, round after round, so a slow minute of a shared machine
                # lands on all of them; each row is the median of its rounds.
                runs: dict[str, list[Row]] = {}
                for _ in range(args.rounds):
                    runs.setdefault("in-process", []).append(in_process(label, pipelines[label], data, c,
                                                                        args.duration))
                    for setup, lone in lone_pipelines.items() if c == 1 else ():
                        runs.setdefault(setup, []).append(in_process(label, lone, data, 1, args.duration, setup))
                    if c == max(args.concurrency) and c > cores:
                        # A reference, no target: as many threads as cores, not one per request in
                        # flight (8 threads on 2 cores pay for their switches; see the README).
                        setup = f"in-process, {cores} threads"
                        runs.setdefault(setup, []).append(in_process(label, pipelines[label], data, cores,
                                                                     args.duration, setup))
                    if label in plains:
                        runs.setdefault("plain server", []).append(
                            served(label, "plain server", plains[label], image, c, args.duration, out_dir,
                                   args.client))
                    if cluster is not None:
                        runs.setdefault("served", []).append(
                            served(label, "served", cluster, image, c, args.duration, out_dir, args.client))
                        if args.oip_batch and c == max(args.concurrency) and args.client == "wrk":
                            setup = f"served, OIP batches of {args.oip_batch}"
                            runs.setdefault(setup, []).append(
                                served(label, setup, cluster, image, c, args.duration, out_dir, args.client,
                                       args.oip_batch))
                for setup_runs in runs.values():
                    record(median_row(setup_runs))
            del lone_pipelines
        if cluster is not None and args.autoscale:
            label, _, image = workloads[0]
            autoscale = autoscale_run(cluster, label, image, out_dir, args.ramp_peak, args.ramp_step_s)
    finally:
        for plain in plains.values():
            plain.shutdown()
        if cluster is not None:
            cluster.shutdown()

    table, checks = compare(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "models": {label: f"{m.name} on {i.name}" for label, m, i in workloads},
            "providers": providers, "intra_op_threads": args.intra_op_threads, "stages": args.stages,
            "duration_s": args.duration, "rounds": args.rounds, "client": args.client, "device": args.device,
            "env": args.env, "app_args": args.app_args,
            "inference_user_config": {**shipped_batching(args.stages), **args.user_config}}
    report = markdown(meta, table, checks, autoscale)
    (out_dir / "bench.json").write_text(json.dumps({"meta": meta, "rows": table, "checks": checks,
                                                    "autoscale": autoscale}, indent=2))
    (out_dir / "bench.md").write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
