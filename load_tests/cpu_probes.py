"""Small CPU measurements the README quotes, kept so they can be re-run (issue 11).

    .venv/bin/python -m load_tests.cpu_probes ort-threads [--model PATH]  # a run on 1 vs 2 threads
    .venv/bin/python -m load_tests.cpu_probes gaps                        # back to back vs with pauses
    .venv/bin/python -m load_tests.cpu_probes clients                     # wrk's vs locust's CPU per request
    .venv/bin/python -m load_tests.cpu_probes idle [--seconds 30]         # make up's Ray processes, idle
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

from deployments.image_codec import decode_image
from deployments.local_pipeline import LocalPipeline
from deployments.onnx_backend import BackendSettings, OnnxModel, sample_images
from deployments.postprocess import postprocess
from deployments.postprocessing import yolo_candidates
from deployments.preprocessing import prepare_image
from load_tests.bench import FAST_IMAGE, FAST_MODEL, PROJECT_ROOT, PlainServer, machine, run_load


def ort_threads(model: Path, runs: int = 200) -> None:
    """Wall and CPU time of one run with 1 and 2 intra-op threads (no spinning, as served)."""
    from deployments.model_spec import spec_from_onnx

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
    spec, data = pipeline.resolved.spec, FAST_IMAGE.read_bytes()
    for pause in (0.0, pause_s, 0.0):
        cpu = 0.0
        for _ in range(n):
            c = time.thread_time()
            img, meta = prepare_image(decode_image(data), spec.preprocessing)
            out = pipeline.model.run([img])[0]
            postprocess(pipeline.resolved, pipeline.model.outputs_probabilities,
                        yolo_candidates(out, pipeline.params.conf), meta, pipeline.params)
            cpu += time.thread_time() - c
            if pause:
                time.sleep(pause)
        print(f"decode + model + NMS, pause {pause * 1000:.0f} ms between requests: {cpu * 1000 / n:.2f} ms of CPU")


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


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["ort-threads", "gaps", "clients", "idle"])
    ap.add_argument("--model", type=Path, default=FAST_MODEL)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    print(machine())
    {"ort-threads": lambda: ort_threads(args.model), "gaps": gaps, "clients": clients,
     "idle": lambda: idle(args.seconds)}[args.probe]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
