"""Two settings of the served app, side by side in one cluster, wrk taking turns.

This VM's speed drifts by 15-25 % within minutes, more than most settings move, so two settings
only compare when they run a few seconds apart under the same conditions: both apps are up at
once (apps `a` and `b`, each its own Ingress replica and HTTP port) and wrk loads one, then the
other, `--rounds` times, in alternating order. Reported: medians of img/s and of CPU per
request (the app's own Ingress replica, plus Ray's shared processes), and b / a per round.

    .venv/bin/python -m load_tests.app_ab --b '{"max_in_flight": 3}' [--a '{}'] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import psutil

from load_tests.bench import (
    FAST_IMAGE,
    FAST_MODEL,
    SLOW_IMAGE,
    SLOW_MODEL,
    ServedCluster,
    machine,
    run_wrk,
    safe_cmdline,
    settle,
)
from serve.app_deploy import app_config, deploy, free_port, wait_ready
from visionray.platform import RAY_TUNING_ENV


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=json.loads, default={}, help="application args of app a (JSON)")
    ap.add_argument("--b", type=json.loads, required=True, help="application args of app b (JSON)")
    ap.add_argument("--a-env", type=json.loads, default={}, help="environment variables of app a's replicas")
    ap.add_argument("--b-env", type=json.loads, default={}, help="environment variables of app b's replicas")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--model", choices=["fast", "slow"], default="fast",
                    help="the demo detector, or YOLOv8n int8 on bus.jpg (../shared/models)")
    args = ap.parse_args(argv)
    model, image = (FAST_MODEL, FAST_IMAGE) if args.model == "fast" else (SLOW_MODEL, SLOW_IMAGE)
    os.environ.update(RAY_TUNING_ENV)  # as make up and the bench run Ray
    cluster = ServedCluster({}, ["CPUExecutionProvider"], 1, {}, num_cpus=max(4, os.cpu_count() or 1),
                            stages="in_process")
    models = [{"name": "det", "path": str(model)}]
    ports = {"a": free_port(), "b": free_port()}
    backend = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    try:
        apps = []
        for side in ports:
            app_args = dict(args.a if side == "a" else args.b)
            app = app_config(side, f"/{side}", models, http_port=ports[side],
                             backend={**backend, **app_args.pop("backend", {})}, **app_args)
            env = args.a_env if side == "a" else args.b_env
            if env:
                app["runtime_env"] = {"env_vars": env}
            apps.append(app)
        deploy(apps)
        for port in ports.values():
            wait_ready(f"http://127.0.0.1:{port}/readyz")
        procs = cluster.processes()
        own = {side: [p for p in procs if f":{side}:" in " ".join(safe_cmdline(p))] for side in ports}
        shared = [p for p in procs if not any(p in own[side] for side in ports)]
        for side in ports:  # warm-up
            run_wrk(f"http://127.0.0.1:{ports[side]}/v1/models/det/predict", image, args.concurrency, 3)
        for i in range(args.rounds):
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                settle()  # the other app's dropped in-flight requests finish first
                before, before_own = _cpu_s(own[side]) + _cpu_s(shared), _cpu_s(own[side])
                s = run_wrk(f"http://127.0.0.1:{ports[side]}/v1/models/det/predict", image,
                            args.concurrency, args.duration)
                cpu_ms = (_cpu_s(own[side]) + _cpu_s(shared) - before) * 1000 / max(s["requests"], 1)
                own_ms = (_cpu_s(own[side]) - before_own) * 1000 / max(s["requests"], 1)
                if s["non_2xx"] or s["socket_errors"]:
                    print(f"  {side}: {s['non_2xx']} non-2xx, {s['socket_errors']} socket errors")
                runs[side].append((s["requests"] / (s["duration_us"] / 1e6), cpu_ms))
                print(f"  round {i + 1} {side}: {runs[side][-1][0]:.1f} img/s, {cpu_ms:.2f} ms CPU/req "
                      f"({own_ms:.2f} in the app's own replicas)", flush=True)
    finally:
        cluster.shutdown()
    print(f"\n{machine()}; {model.name}, concurrency {args.concurrency}, {args.rounds} rounds × "
          f"{args.duration:.0f} s each, wrk")
    for side in ports:
        rows = runs[side]
        env = args.a_env if side == "a" else args.b_env
        setting = json.dumps(args.a if side == "a" else args.b) + (f" env {json.dumps(env)}" if env else "")
        print(f"{side} {setting}: img/s median {statistics.median(r for r, _ in rows):.1f}, "
              f"CPU ms/req median {statistics.median(c for _, c in rows):.2f}")
    ratios = [(b[0] / a[0], b[1] / a[1]) for a, b in zip(runs["a"], runs["b"])]
    print(f"b / a per round: img/s {[round(r, 3) for r, _ in ratios]} median "
          f"{statistics.median(r for r, _ in ratios):.3f}; CPU per request median "
          f"{statistics.median(c for _, c in ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
