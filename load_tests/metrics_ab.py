"""Metrics on against metrics off, in the same cluster, taking turns (what the metrics cost).

Two copies of the shipped app serve the demo detector on their own ports, one with
`metrics: false`; wrk loads each in turn at concurrency 8 and the replica's CPU per request is
measured. Turns, because this VM's speed drifts more between minutes than metrics could cost.

    .venv/bin/python -m load_tests.metrics_ab [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
import ray
from ray import serve

from load_tests.bench import FAST_IMAGE, FAST_MODEL, machine, run_load
from serve.app_deploy import app_config, deploy, free_port, wait_ready


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    image = FAST_IMAGE
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_port=free_port(),
             _temp_dir=tempfile.mkdtemp(prefix="vra", dir="/tmp"), logging_level="WARNING", log_to_driver=False)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()},
                    logging_config={"enable_access_log": False})
        urls, apps = {}, []
        for setting in ("on", "off"):
            port = free_port()
            models = [{"name": "det", "path": str(FAST_MODEL)}]
            apps.append(app_config(f"metrics-{setting}", f"/{setting}", models, http_port=port,
                                   metrics=setting == "on"))
            urls[setting] = f"http://127.0.0.1:{port}"
        deploy(apps)
        replicas = {}
        for setting, url in urls.items():
            wait_ready(f"{url}/readyz")
            title = f"ray::ServeReplica:metrics-{setting}:"
            replicas[setting] = next(p for p in psutil.process_iter(["cmdline"])
                                     if (p.info["cmdline"] or [""])[0].startswith(title))
        out = tempfile.mkdtemp(prefix="vra-out")
        for setting, url in urls.items():  # warm
            run_load("wrk", url, "det", args.concurrency, 5, image, Path(out) / f"w{setting}")
        for r in range(args.rounds):
            for setting, url in urls.items():
                proc = replicas[setting]
                t0 = proc.cpu_times()
                load = run_load("wrk", url, "det", args.concurrency, args.seconds, image,
                                Path(out) / f"{setting}{r}")
                t1 = proc.cpu_times()
                cpu[setting].append((t1.user + t1.system - t0.user - t0.system) * 1000 / load.requests)
                print(f"round {r + 1} metrics {setting}: {load.rps:.1f} img/s, replica "
                      f"{cpu[setting][-1]:.2f} ms CPU/req", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    on, off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"\n{machine()}: demo detector, concurrency {args.concurrency}, medians of {args.rounds} turns: "
          f"replica CPU per request {on:.2f} ms with metrics, {off:.2f} without: {on - off:+.2f} ms "
          f"({(on / off - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
