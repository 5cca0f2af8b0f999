"""Two settings of the served app, side by side in one cluster, wrk taking turns.

A shared VM's speed drifts by 15-25 % within minutes, more than most settings move, so two
settings only compare when they run a few seconds apart under the same conditions: both apps
are up at once (apps `a` and `b`, each its own Ingress replica and HTTP port) and wrk loads one,
then the other, `--rounds` times, in alternating order, each run after the machine settled.
Reported per concurrency: medians of img/s, p50, p99 and CPU per request (the app's own Ingress
replica plus Ray's shared processes, not the other app's), and b against a round by round.

    .venv/bin/python -m load_tests.app_ab --preset metrics            # metrics on (a) vs off (b)
    .venv/bin/python -m load_tests.app_ab --preset review             # capture off (a) vs on (b)
    .venv/bin/python -m load_tests.app_ab --b '{"max_in_flight": 3}'  # the shipped app vs an override
    .venv/bin/python -m load_tests.app_ab --preset review-sampled --concurrency 1 8 --rounds 4

--a / --b are application args (deployments/config.py), merged key by key over the preset's
(or the shipped app's). Writes load_tests/results/<stamp>/ab.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from load_tests.harness import (
    FAST_IMAGE,
    FAST_MODEL,
    RESULTS,
    SLOW_IMAGE,
    SLOW_MODEL,
    CpuMeter,
    LoadResult,
    ServedCluster,
    machine,
    ray_env,
    run_wrk,
    safe_cmdline,
    settle,
    shipped_app,
)
from serve.app_deploy import app_config, deploy, free_port, wait_ready

SIDES = ("a", "b")
PRESETS = {
    "metrics": "a: the shipped app (metrics recorded); b: `metrics: false`",
    "review": "a: the shipped app (review capture off); b: every prediction captured (the worst case)",
    "review-sampled": "a: the shipped app (review capture off); b: one prediction in 20 captured (a sampled rule)",
}


def preset_args(name: str | None, scratch: Path) -> tuple[dict, dict]:
    """(a's, b's) application args for a preset; `scratch` holds what the apps write."""
    if name is None:
        return {}, {}
    if name == "metrics":
        return {}, {"metrics": False}
    # Sampling alone, not the shipped top_score_below rule: the demo detector's scores would make
    # the captured share depend on the image.
    rate = 1.0 if name == "review" else 0.05
    return {}, {"review": {"enabled": True, "dir": str(scratch / "review"), "max_items": 2000,
                           "rules": {"*": {"sample_rate": rate}}}}


def merged(base: dict, override: dict) -> dict:
    """`override` over `base`, nested dicts key by key (so `{"backend": {"intra_op_threads": 2}}`
    keeps the shipped providers)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def side_of(p: psutil.Process) -> str:
    """`a` or `b` for a replica of that app, else `shared` (Ray's own processes, Serve's controller)."""
    title = " ".join(safe_cmdline(p))
    return next((side for side in SIDES if f":{side}:" in title), "shared")


def summary(runs: list[dict]) -> dict:
    return {"img_s": statistics.median(r["img_s"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in runs),
            "own_cpu_ms": statistics.median(r["own_cpu_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs)}


def report(meta: dict, runs: dict[str, list[dict]]) -> str:
    lines = [f"### App A/B {meta['date']} — {meta['machine']}", "",
             f"{meta['model']}, {meta['rounds']} rounds × {meta['duration_s']:.0f} s per side and concurrency, "
             "wrk, turns taken (a b, b a, …), each run after the machine settled."
             + (f" Preset `{meta['preset']}`: {PRESETS[meta['preset']]}." if meta["preset"] else ""), ""]
    for side in SIDES:
        env = meta[f"{side}_env"]
        lines.append(f"- {side}: `{json.dumps(meta[side])}` over the shipped app"
                     + (f", env `{json.dumps(env)}`" if env else ""))
    if meta.get("review_images_kept") is not None:
        lines.append(f"- review store at the end: {meta['review_images_kept']} images kept")
    lines += ["", "| side | conc. | img/s | p50 ms | p99 ms | CPU ms/req | own replica CPU ms/req | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in meta["concurrency"]:
        for side in SIDES:
            s = summary(runs[f"{side}{c}"])
            lines.append(f"| {side} | {c} | {s['img_s']:.1f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
                         f"| {s['cpu_ms']:.2f} | {s['own_cpu_ms']:.2f} | {s['errors']} |")
    lines.append("")
    for c in meta["concurrency"]:
        # Ratios and differences within a round, then their median: a round's two runs share the
        # machine's speed of that minute.
        pairs = list(zip(runs[f"a{c}"], runs[f"b{c}"]))
        img = [b["img_s"] / a["img_s"] for a, b in pairs]
        cpu = [b["cpu_ms"] / a["cpu_ms"] for a, b in pairs]
        p50 = [b["p50_ms"] - a["p50_ms"] for a, b in pairs]
        lines.append(f"- concurrency {c}, b against a, medians of the rounds: img/s {statistics.median(img):.3f} ×, "
                     f"CPU per request {statistics.median(cpu):.3f} ×, p50 {statistics.median(p50):+.2f} ms "
                     f"(img/s ratio per round: {[round(r, 3) for r in img]})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    ap.add_argument("--a", type=json.loads, default={}, help="application args of app a (JSON)")
    ap.add_argument("--b", type=json.loads, default={}, help="application args of app b (JSON)")
    ap.add_argument("--a-env", type=json.loads, default={}, help="environment variables of app a's replicas")
    ap.add_argument("--b-env", type=json.loads, default={}, help="environment variables of app b's replicas")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=8, help="seconds per run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8])
    ap.add_argument("--model", choices=["fast", "slow"], default="fast",
                    help="the demo detector, or YOLOv8n int8 on bus.jpg (../shared/models)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.preset or args.a or args.b or args.a_env or args.b_env):
        ap.error("nothing to compare: give --preset, or --a / --b settings")
    if not shutil.which("wrk"):
        sys.exit("needs wrk (Debian package `wrk`)")
    model, image = (FAST_MODEL, FAST_IMAGE) if args.model == "fast" else (SLOW_MODEL, SLOW_IMAGE)
    ray_env()  # as make up runs Ray
    scratch = Path(tempfile.mkdtemp(prefix="vrab"))
    preset = preset_args(args.preset, scratch)
    overrides = {side: merged(preset[i], args.a if side == "a" else args.b) for i, side in enumerate(SIDES)}
    base = {"backend": shipped_app()["args"]["backend"]}
    envs = {"a": args.a_env, "b": args.b_env}
    ports = {side: free_port() for side in SIDES}
    urls = {side: f"http://127.0.0.1:{ports[side]}/v1/models/det/predict" for side in SIDES}
    runs: dict[str, list[dict]] = {}
    try:
        with ServedCluster() as cluster:
            apps = []
            for side in SIDES:
                app = app_config(side, f"/{side}", [{"name": "det", "path": str(model)}], http_port=ports[side],
                                 **merged(base, overrides[side]))
                if envs[side]:
                    app["runtime_env"] = {"env_vars": envs[side]}
                apps.append(app)
            deploy(apps)
            for port in ports.values():
                wait_ready(f"http://127.0.0.1:{port}/readyz")
            procs = cluster.processes()
            for c in args.concurrency:
                for side in SIDES:  # warm-up
                    run_wrk(urls[side], image, c, 3)
                for i in range(args.rounds):
                    for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                        settle()  # the other app's dropped in-flight requests finish first
                        with CpuMeter(procs, kind=side_of) as cpu:
                            load = LoadResult.from_wrk(run_wrk(urls[side], image, c, args.duration))
                        spent = cpu.seconds()
                        n = max(load.requests, 1)
                        run = {"img_s": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                               "cpu_ms": (spent.get(side, 0.0) + spent.get("shared", 0.0)) * 1000 / n,
                               "own_cpu_ms": spent.get(side, 0.0) * 1000 / n, "errors": load.failures}
                        runs.setdefault(f"{side}{c}", []).append(run)
                        print(f"  c{c} round {i + 1} {side}: {run['img_s']:.1f} img/s, p50 {run['p50_ms']:.2f} ms, "
                              f"{run['cpu_ms']:.2f} ms CPU/req ({run['own_cpu_ms']:.2f} in the app's own replica)"
                              + (f", {load.failures} errors" if load.failures else ""), flush=True)
        # Proof that b captured at all (the review presets): what its store kept.
        kept = len(list((scratch / "review" / "images").glob("*"))) if (scratch / "review").is_dir() else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "model": f"{model.name} on {image.name}",
            "preset": args.preset, "a": overrides["a"], "b": overrides["b"], "a_env": args.a_env, "b_env": args.b_env,
            "rounds": args.rounds, "duration_s": args.duration, "concurrency": args.concurrency,
            "review_images_kept": kept}
    text = report(meta, runs)
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.md").write_text(text)
    (out / "ab.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
