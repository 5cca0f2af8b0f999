"""What the review queue's capture costs a request: capture off against capture of a
share of the predictions (`--sample-rate`, default 1: every one, the worst case), two apps in one
cluster, wrk taking turns on each, several rounds; medians of p50, p99 and img/s.

    .venv/bin/python -m load_tests.review_ab [--sample-rate 0.05 --rounds 4 --duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from load_tests.bench import FAST_IMAGE, FAST_MODEL, RESULTS, ServedCluster, machine, run_wrk
from serve.app_deploy import app_config, deploy, free_port, wait_ready


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sample-rate", type=float, default=1.0, help="share of predictions captured by `on`")
    args = ap.parse_args(argv)
    cluster = ServedCluster({}, ["CPUExecutionProvider"], 1, {}, num_cpus=max(4, os.cpu_count() or 1),
                            stages="in_process")
    review_dir = tempfile.mkdtemp(prefix="vr-review-ab")
    models = [{"name": "det", "path": str(FAST_MODEL)}]
    ports = {"off": free_port(), "on": free_port()}
    review = {"enabled": True, "dir": review_dir, "rules": {"*": {"sample_rate": args.sample_rate}}, "max_items": 2000}
    try:
        deploy([app_config("off", "/off", models, http_port=ports["off"]),
                app_config("on", "/on", models, http_port=ports["on"], review=review)])
        for port in ports.values():
            wait_ready(f"http://127.0.0.1:{port}/readyz")
        runs: dict[tuple[str, int], list[dict]] = {}
        for c in args.concurrency:
            for side in ports:  # warm-up
                run_wrk(f"http://127.0.0.1:{ports[side]}/v1/models/det/predict", FAST_IMAGE, c, 3)
            for _ in range(args.rounds):
                for side in ("off", "on"):
                    s = run_wrk(f"http://127.0.0.1:{ports[side]}/v1/models/det/predict", FAST_IMAGE, c,
                                args.duration)
                    runs.setdefault((side, c), []).append(s)
        rows = []
        for (side, c), summaries in runs.items():
            rows.append({"capture": side, "concurrency": c,
                         "img_s": statistics.median(s["requests"] / (s["duration_us"] / 1e6) for s in summaries),
                         "p50_ms": statistics.median(s["p50_us"] / 1000 for s in summaries),
                         "p99_ms": statistics.median(s["p99_us"] / 1000 for s in summaries),
                         "errors": sum(s["non_2xx"] + s["socket_errors"] for s in summaries)})
        stored = len(os.listdir(os.path.join(review_dir, "images")))
    finally:
        cluster.shutdown()
    out = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"### Review capture A/B {time.strftime('%Y-%m-%d %H:%M')} — {machine()}", "",
             f"Demo detector, {args.rounds} rounds × {args.duration:.0f} s per side and concurrency, wrk, turns "
             f"taken; capture `on` stores a share {args.sample_rate:g} of the predictions ({stored} images kept at "
             "the end, max_items 2000).", "",
             "| capture | conc. | img/s | p50 ms | p99 ms | errors |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["capture"])):
        lines.append(f"| {r['capture']} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} |")
    for c in args.concurrency:
        on = next(r for r in rows if r["capture"] == "on" and r["concurrency"] == c)
        off = next(r for r in rows if r["capture"] == "off" and r["concurrency"] == c)
        lines.append(f"\nconcurrency {c}: p50 {on['p50_ms'] - off['p50_ms']:+.2f} ms, img/s "
                     f"{on['img_s'] / off['img_s']:.3f} × with capture")
    report = "\n".join(lines) + "\n"
    (out / "review_ab.md").write_text(report)
    (out / "review_ab.json").write_text(json.dumps(rows, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
