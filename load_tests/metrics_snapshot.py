"""The Grafana dashboard's panels rendered from real data, without Grafana.

An isolated Ray cluster serves the shipped app (demo detector and classifier); a real Prometheus
(Debian package) scrapes it with the config `make up` writes; wrk sends load in phases (steady,
a burst past capacity, bad requests, quiet). Then every panel's PromQL from
visionray/grafana_dashboard.py is queried over the run and drawn with matplotlib, one subplot per
panel, into docs/metrics-dashboard.png. Grafana itself is not installable here (no Debian
package), so this is the panels' data, not Grafana's rendering.

    .venv/bin/python -m load_tests.metrics_snapshot [--out docs/metrics-dashboard.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from load_tests.harness import DEMO, FAST_IMAGE, PROJECT_ROOT, ServedCluster, machine, ray_env, run_wrk
from serve.app_deploy import free_port, wait_ready
from visionray.grafana_dashboard import PANELS
from visionray.prometheus_config import service_discovery_file, write_prometheus_config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "metrics-dashboard.png")
    ap.add_argument("--phase-s", type=float, default=40)
    args = ap.parse_args()
    if not (shutil.which("wrk") and shutil.which("prometheus")):
        sys.exit("needs wrk and prometheus (apt install wrk prometheus)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {"shapes-detector": DEMO / "detector.onnx", "shapes-classifier": DEMO / "classifier.onnx"}
    ray_env()  # as make up runs Ray
    cluster = ServedCluster(models, num_cpus=4)
    tmp = Path(tempfile.mkdtemp(prefix="vrsnap"))
    prometheus = None
    try:
        cluster.deploy()
        sd = service_discovery_file(cluster.temp_dir)
        while not sd.exists():
            time.sleep(0.5)
        config = write_prometheus_config(cluster.temp_dir, tmp / "prometheus.yml", scrape_interval_s=2)
        port = free_port()
        prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        prom = f"http://127.0.0.1:{port}"
        wait_ready(f"{prom}/-/ready", 60)
        detect = f"{cluster.url}/v1/models/shapes-detector/predict"
        classify = f"{cluster.url}/v1/models/shapes-classifier/predict"
        sample = FAST_IMAGE
        start = time.time()
        print("steady load", flush=True)
        run_wrk(detect, sample, 4, args.phase_s)
        print("burst past capacity, 300 ms budget", flush=True)
        run_wrk(detect, sample, 32, args.phase_s, {"X-Request-Timeout-Ms": "300"})
        print("classifier and bad requests", flush=True)
        run_wrk(classify, sample, 2, args.phase_s / 2)
        run_wrk(f"{detect}?conf=7", sample, 2, args.phase_s / 2)
        print("quiet", flush=True)
        time.sleep(args.phase_s / 2)
        end = time.time()

        cols = 2
        rows = (len(PANELS) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows))
        for ax, (title, unit, queries) in zip(axes.flat, PANELS):
            for expr, legend in queries:
                r = requests.get(f"{prom}/api/v1/query_range", timeout=30,
                                 params={"query": expr, "start": start, "end": end, "step": 2}).json()
                for series in r["data"]["result"]:
                    label = legend
                    for key, value in series["metric"].items():
                        label = label.replace("{{" + key + "}}", value)
                    ts = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                    if ts:
                        ax.plot(*zip(*ts), label=label[:40])
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("s", fontsize=8)
            ax.set_ylabel(unit, fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper right")
        for ax in list(axes.flat)[len(PANELS):]:
            ax.axis("off")
        fig.suptitle(f"visionray dashboard panels from Prometheus ({machine()}; phases: steady c4, burst c32 "
                     f"with 300 ms budget, classifier + bad requests, quiet)", fontsize=9)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=80)
        print(f"wrote {args.out}")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
