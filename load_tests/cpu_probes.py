"""Small CPU measurements the performance notes quote (docs/performance.md), kept so they can be re-run.

    .venv/bin/python -m load_tests.cpu_probes ort-threads [--model PATH]  # a run on 1 vs 2 threads
    .venv/bin/python -m load_tests.cpu_probes gaps                        # back to back vs with pauses
    .venv/bin/python -m load_tests.cpu_probes clients                     # wrk's vs locust's CPU per request
    .venv/bin/python -m load_tests.cpu_probes idle [--seconds 30]         # make up's Ray processes, idle
    .venv/bin/python -m load_tests.cpu_probes idle-served [--seconds 30]  # the bench's cluster, app up, idle
    .venv/bin/python -m load_tests.cpu_probes threads [--concurrency 1]   # served: CPU per request by thread
    .venv/bin/python -m load_tests.cpu_probes ab --a '{...}' --b '{...}'  # two batching configs, paired
    .venv/bin/python -m load_tests.cpu_probes gil [--concurrency 8]      # served: who holds the GIL, for what
    .venv/bin/python -m load_tests.cpu_probes inproc-threads [--seconds 8]  # the in-process loop, 1-8 threads
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from core.image_codec import decode_image
from core.local_pipeline import LocalPipeline
from core.onnx_backend import BackendSettings, OnnxModel, sample_images
from core.postprocessing import postprocess, yolo_candidates
from core.preprocessing import prepare_image
from load_tests.bench import (
    FAST_IMAGE,
    FAST_MODEL,
    PROJECT_ROOT,
    PlainServer,
    ServedCluster,
    cpu_ms_per_request_by_kind,
    cpu_seconds,
    machine,
    process_kind,
    run_load,
)
from visionray.platform import RAY_TUNING_ENV


def ort_threads(model: Path, runs: int = 200) -> None:
    """Wall and CPU time of one run with 1 and 2 intra-op threads (no spinning, as served)."""
    from core.model_spec import spec_from_onnx

    for threads in (1, 2):
        m = OnnxModel(model, spec_from_onnx(model), BackendSettings(intra_op_threads=threads, lone_run_threads=0))
        x = sample_images(m.spec, 1, seed=3)
        for _ in range(10):
            m.run(x)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(runs):
            m.run(x)
        print(f"{model.name}, {threads} thread(s): {(time.perf_counter() - t0) * 1000 / runs:.2f} ms a run, "
              f"{(time.process_time() - c0) * 1000 / runs:.2f} ms of CPU")


def gaps(n: int = 500, pause_s: float = 0.004) -> None:
    """The fast pipeline's steps, back to back and with a pause between requests (as served at c1)."""
    pipeline = LocalPipeline(FAST_MODEL, BackendSettings(intra_op_threads=1))
    spec, data = pipeline.spec, FAST_IMAGE.read_bytes()
    for pause in (0.0, pause_s, 0.0):
        cpu = 0.0
        for _ in range(n):
            c = time.thread_time()
            img, meta = prepare_image(decode_image(data), spec.preprocessing)
            out = pipeline.model.run([img])[0]
            postprocess(pipeline.spec, pipeline.model.outputs_probabilities,
                        yolo_candidates(out, pipeline.params.conf), meta, pipeline.params)
            cpu += time.thread_time() - c
            if pause:
                time.sleep(pause)
        print(f"decode + model + NMS, pause {pause * 1000:.0f} ms between requests: {cpu * 1000 / n:.2f} ms of CPU")


def inproc_threads(seconds: float, counts: tuple[int, ...] = (2, 8, 3, 1), rounds: int = 3) -> None:
    """The fast pipeline's in-process loop (the bench's limit) at several thread counts, in turns:
    img/s, CPU per image, and each step's CPU (the threads' own clocks)."""
    pipeline = LocalPipeline(FAST_MODEL, BackendSettings(intra_op_threads=1))
    spec, data = pipeline.spec, FAST_IMAGE.read_bytes()
    for _ in range(3):
        pipeline(data)

    def worker(deadline: float, totals: list[float], lock: threading.Lock) -> None:
        mine = [0.0, 0.0, 0.0, 0]
        while time.perf_counter() < deadline:
            c0 = time.thread_time()
            img, meta = prepare_image(decode_image(data), spec.preprocessing)
            c1 = time.thread_time()
            out = yolo_candidates(pipeline.model.run([img])[0], pipeline.params.conf)
            c2 = time.thread_time()
            postprocess(pipeline.spec, pipeline.model.outputs_probabilities, out, meta, pipeline.params)
            mine = [mine[0] + c1 - c0, mine[1] + c2 - c1, mine[2] + time.thread_time() - c2, mine[3] + 1]
        with lock:
            for i, v in enumerate(mine):
                totals[i] += v

    for r in range(rounds):
        for count in counts:
            totals, lock = [0.0, 0.0, 0.0, 0], threading.Lock()
            cpu0, t0 = time.process_time(), time.perf_counter()
            workers = [threading.Thread(target=worker, args=(t0 + seconds, totals, lock)) for _ in range(count)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            n, elapsed = max(totals[3], 1), time.perf_counter() - t0
            print(f"round {r + 1}, {count} thread(s): {n / elapsed:.1f} img/s, "
                  f"{(time.process_time() - cpu0) * 1000 / n:.2f} ms of CPU per image (decode + letterbox "
                  f"{totals[0] * 1000 / n:.2f}, model + candidates {totals[1] * 1000 / n:.2f}, "
                  f"NMS {totals[2] * 1000 / n:.2f})", flush=True)


def idle_served(seconds: float) -> None:
    """The bench's served cluster with the fast app deployed and no load: ms of CPU a second by
    process (the actors included, unlike `idle`)."""
    os.environ.update(RAY_TUNING_ENV)
    cluster = ServedCluster({"fast": FAST_MODEL}, ["CPUExecutionProvider"], 1, {}, num_cpus=4, stages="in_process")
    try:
        cluster.deploy(autoscaling=False)
        time.sleep(10)  # start-up's last work
        procs = cluster.processes()
        before = cpu_seconds(procs)
        time.sleep(seconds)
        per_s = cpu_ms_per_request_by_kind(before, cpu_seconds(procs), seconds)  # "per request" = per second
    finally:
        cluster.shutdown()
    print(f"idle, {seconds:.0f} s: {sum(per_s.values()):.1f} ms of CPU a second: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(per_s.items(), key=lambda kv: -kv[1]) if v >= 0.05))


def clients(seconds: float = 10, concurrency: int = 8) -> None:
    """The load generators' own CPU per request, against the plain server."""
    server = PlainServer(FAST_MODEL, ["CPUExecutionProvider"], 1)
    try:
        out = Path(tempfile.mkdtemp(prefix="vrprobe"))
        for client in ("wrk", "locust"):
            load = run_load(client, server.url, "fast", concurrency, seconds, FAST_IMAGE, out / client)
            print(f"{client}: {load.rps:.0f} requests/s at concurrency {concurrency}, "
                  f"{load.client_cpu_ms:.2f} ms of client CPU per request (start-up included)")
    finally:
        server.shutdown()


def idle(seconds: float) -> None:
    """CPU per second of the processes in make up's Ray process group (not the actors), idle."""
    pgid = json.loads((PROJECT_ROOT / ".data" / "platform.json").read_text())["pgid"]
    procs = [p for p in psutil.process_iter() if _pgid(p.pid) == pgid]
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    time.sleep(seconds)
    by_name: dict[str, float] = {}
    for p in procs:
        try:
            name = " ".join(a.rsplit("/", 1)[-1] for a in p.cmdline()[:2])[:40]
            by_name[name] = by_name.get(name, 0.0) + sum(p.cpu_times()[:2]) - before[p.pid]
        except psutil.NoSuchProcess:
            continue
    print(f"make up's Ray processes (group {pgid}), idle for {seconds:.0f} s: "
          f"{sum(by_name.values()) * 1000 / seconds:.1f} ms of CPU per second")
    for name, cpu in sorted(by_name.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name:<40} {cpu * 1000 / seconds:.1f}")


def _thread_cpu_s(pid: int) -> dict[int, float]:
    """Thread id -> CPU seconds so far (user + system) of each thread of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _busiest_ingress(procs: list[psutil.Process]) -> psutil.Process:
    """The Ingress replica that has used the most CPU (the one the warm-up load went to)."""
    return max((p for p in procs if process_kind(p) == "Ingress"), key=lambda p: sum(p.cpu_times()[:2]))


def _thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from py-spy (Ray names every OS thread of a worker alike;
    threads without Python frames, ORT's pool and Ray's C++ threads, are not listed)."""
    spy = Path(sys.executable).with_name("py-spy")
    out = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    names = {}
    for match in re.finditer(r'^Thread (0x[0-9A-Fa-f]+|\d+) \((?:[^)]*)\): "([^"]*)"', out, re.M):
        tid = match.group(1)
        names[int(tid, 16) if tid.startswith("0x") else int(tid)] = match.group(2)
    return names


def threads(concurrency: int, seconds: float, client: str, app_args: dict, user_config: dict,
            replicas: int = 1) -> None:
    """The served fast model (serve/config.yaml's app, `replicas` Ingress replicas), closed-loop
    load: CPU per request of each thread of the busiest ingress replica, and of every process."""
    os.environ.update(RAY_TUNING_ENV)  # as make up and the bench run Ray
    cluster = ServedCluster({"fast": FAST_MODEL}, ["CPUExecutionProvider"], 1, user_config, num_cpus=4,
                            stages="in_process", app_args=app_args, ingress_replicas=replicas)
    try:
        cluster.deploy(autoscaling=False)
        out = Path(tempfile.mkdtemp(prefix="vrprobe"))
        run_load(client, cluster.url, "fast", concurrency, 5, FAST_IMAGE, out / "warmup")
        procs = cluster.processes()
        ingress = _busiest_ingress(procs)
        before, threads0, machine0 = cpu_seconds(procs), _thread_cpu_s(ingress.pid), psutil.cpu_times()
        load = run_load(client, cluster.url, "fast", concurrency, seconds, FAST_IMAGE, out / "load")
        after, threads1, machine1 = cpu_seconds(procs), _thread_cpu_s(ingress.pid), psutil.cpu_times()
        names = _thread_names(ingress.pid)
    finally:
        cluster.shutdown()
    n = max(load.requests, 1)
    per_process = cpu_ms_per_request_by_kind(before, after, n)
    print(f"served fast model, concurrency {concurrency}, {client}: {load.rps:.1f} req/s, p50 {load.p50_ms:.1f} ms, "
          f"{sum(per_process.values()):.2f} ms of CPU per request; the machine's cores "
          f"{(machine1.idle - machine0.idle) / (sum(machine1) - sum(machine0)):.0%} idle")
    print("  by process:", ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_process.items(), key=lambda kv: -kv[1])
                                     if v >= 0.05))
    print("  ingress replica by thread (Python threads by name, numbered pools as one row):")
    spent: dict[str, float] = {}
    for tid, cpu in threads1.items():
        name = names.get(tid, "no Python frames (Ray's C++ threads, ORT's pool)")
        name = re.sub(r"_\d+$", "_*", name)
        spent[name] = spent.get(name, 0.0) + (cpu - threads0.get(tid, 0.0)) * 1000 / n
    for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]):
        if ms >= 0.02:
            print(f"    {name:<48} {ms:.2f}")


def ab(a: dict, b: dict, concurrency: int, pairs: int, seconds: float) -> None:
    """Two inference user_configs (e.g. max_concurrent_batches 2 vs 3) on one served cluster, in
    turns (A B, B A, ...): this VM's speed drifts more between runs than such settings move, so
    only paired runs a few seconds apart compare. Reconfigured live (user_config), no restart."""
    os.environ.update(RAY_TUNING_ENV)
    cluster = ServedCluster({"fast": FAST_MODEL}, ["CPUExecutionProvider"], 1, a, num_cpus=4, stages="in_process")
    out = Path(tempfile.mkdtemp(prefix="vrprobe"))
    runs: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    try:
        cluster.deploy(autoscaling=False)
        procs = cluster.processes()
        for i in range(pairs):
            for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                cluster.user_config = a if side == "A" else b
                cluster.deploy(autoscaling=False)
                run_load("wrk", cluster.url, "fast", concurrency, 2, FAST_IMAGE, out / "warmup")
                before = cpu_seconds(procs)
                load = run_load("wrk", cluster.url, "fast", concurrency, seconds, FAST_IMAGE, out / "load")
                after = cpu_seconds(procs)
                runs[side].append((load.rps, sum(cpu_ms_per_request_by_kind(before, after, load.requests).values())))
    finally:
        cluster.shutdown()
    for side, config in (("A", a), ("B", b)):
        rows = runs[side]
        print(f"{side} {json.dumps(config)}: req/s {[round(r) for r, _ in rows]}, median "
              f"{statistics.median(r for r, _ in rows):.1f}; CPU ms/req median "
              f"{statistics.median(c for _, c in rows):.2f}")
    ratios = [(rb / ra, cb / ca) for (ra, ca), (rb, cb) in zip(runs["A"], runs["B"])]
    print(f"B / A per pair, concurrency {concurrency}: req/s median {statistics.median(r for r, _ in ratios):.3f}, "
          f"CPU per request median {statistics.median(c for _, c in ratios):.3f}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def gil(concurrency: int, seconds: float) -> None:
    """The served fast model under closed-loop wrk load, its ingress replica sampled by
    `py-spy record --gil` (only the thread holding the GIL is sampled): the share of GIL samples
    per thread, and, within the event loop's thread, per function (inclusive). On 2 cores the
    GIL-holding Python of the loop is what the decode and run threads wait for. Sampling slows
    the replica (py-spy pauses it 100 times a second), so read shares, not times."""
    os.environ.update(RAY_TUNING_ENV)
    cluster = ServedCluster({"fast": FAST_MODEL}, ["CPUExecutionProvider"], 1, {}, num_cpus=4, stages="in_process")
    out = Path(tempfile.mkdtemp(prefix="vrprobe"))
    try:
        cluster.deploy(autoscaling=False)
        run_load("wrk", cluster.url, "fast", concurrency, 5, FAST_IMAGE, out / "warmup")
        ingress = _busiest_ingress(cluster.processes())
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy), "record", "--pid", str(ingress.pid), "--gil", "--threads", "--rate", "100",
                   "--duration", str(int(seconds)), "--format", "raw", "--output", str(out / "gil.txt")]
        record = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load = run_load("wrk", cluster.url, "fast", concurrency, seconds + 2, FAST_IMAGE, out / "load")
        record.wait(timeout=seconds + 60)
    finally:
        cluster.shutdown()
    by_thread: dict[str, int] = {}
    loop: dict[str, int] = {}
    loop_total = 0
    for line in (out / "gil.txt").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        # "thread (tid): name"; numbered pool threads as one row
        thread = re.sub(r"_\d+$", "_*", re.sub(r"^thread \([^)]*\): ", "", frames[0]))
        by_thread[thread] = by_thread.get(thread, 0) + int(count)
        if "_run_user_code_event_loop" in thread:
            loop_total += int(count)
            for function in {re.sub(r" \(.*", "", f) for f in frames[1:]}:
                loop[function] = loop.get(function, 0) + int(count)
    total = sum(by_thread.values()) or 1
    print(f"served fast model, concurrency {concurrency}, {load.rps:.1f} req/s while sampled; "
          f"GIL samples by thread:")
    for thread, n in sorted(by_thread.items(), key=lambda kv: -kv[1]):
        if n / total >= 0.002:
            print(f"  {n / total:6.1%}  {thread}")
    print("within the event loop's thread, by function (inclusive, >= 1 %):")
    loop_total = max(loop_total, 1)
    for function, n in sorted(loop.items(), key=lambda kv: -kv[1]):
        if n / loop_total >= 0.01 and not function.startswith(("Thread.", "UserCallableWrapper")):
            print(f"  {n / loop_total:6.1%}  {function}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["ort-threads", "gaps", "clients", "idle", "threads", "ab", "gil",
                                          "inproc-threads", "idle-served"])
    ap.add_argument("--model", type=Path, default=FAST_MODEL)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--client", choices=["wrk", "locust"], default="wrk")
    ap.add_argument("--app-args", type=json.loads, default={}, help="threads: application args overrides")
    ap.add_argument("--user-config", type=json.loads, default={}, help="threads: inference batching overrides")
    ap.add_argument("--replicas", type=int, default=1, help="threads: Ingress replicas")
    ap.add_argument("--a", type=json.loads, default={}, help="ab: user_config A")
    ap.add_argument("--b", type=json.loads, default={}, help="ab: user_config B")
    ap.add_argument("--pairs", type=int, default=6, help="ab: pairs of runs")
    args = ap.parse_args()
    print(machine())
    {"ort-threads": lambda: ort_threads(args.model), "gaps": gaps, "clients": clients,
     "idle": lambda: idle(args.seconds),
     "threads": lambda: threads(args.concurrency, args.seconds, args.client, args.app_args,
                                        args.user_config, args.replicas),
     "ab": lambda: ab(args.a, args.b, args.concurrency, args.pairs, args.seconds),
     "gil": lambda: gil(args.concurrency, args.seconds),
     "inproc-threads": lambda: inproc_threads(args.seconds),
     "idle-served": lambda: idle_served(args.seconds)}[args.probe]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
