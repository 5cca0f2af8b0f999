"""What a refusal costs the server: wrk floods one model with a tight budget and no
pause, so nearly every answer is a 503 `overloaded`; the ingress replica's CPU is measured.

    .venv/bin/python -m load_tests.refusal_cost [--connections 16] [--budget-ms 300] [--seconds 15]

wrk (Debian package `wrk`) is the client because it costs the shared cores little. CPU per
refusal = (replica CPU - 200s x the CPU of one 200 measured alone) / refusals.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from load_tests.bench import ServedCluster, machine, run_wrk, slow_or_fast


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model, image = slow_or_fast()
    ap.add_argument("--model", type=Path, default=model)
    ap.add_argument("--image", type=Path, default=image)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--budget-ms", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt install wrk)")
    cluster = ServedCluster({"m": args.model}, ["CPUExecutionProvider"], 1, {}, 4, "in_process")
    try:
        cluster.deploy(autoscaling=False)
        replica = next(p for p in cluster.processes() if "Ingress" in " ".join(p.cmdline()))
        url, budget = f"{cluster.url}/v1/models/m/predict", {"X-Request-Timeout-Ms": str(args.budget_ms)}

        def measured(connections: int) -> tuple[dict, float]:
            before = replica.cpu_times()
            t0 = time.monotonic()
            result = run_wrk(url, args.image, connections, args.seconds, budget)
            after, elapsed = replica.cpu_times(), time.monotonic() - t0
            return result, (after.user + after.system - before.user - before.system) / elapsed

        run_wrk(url, args.image, 1, 3, budget)  # warm: admission has measured the model
        alone, alone_cores = measured(1)
        per_ok_s = alone_cores * args.seconds / alone["requests"]
        result, cores = measured(args.connections)
    finally:
        cluster.shutdown()
    refused = result["non_2xx"]
    ok = result["requests"] - refused
    per_refusal_ms = (cores * args.seconds - ok * per_ok_s) / max(refused, 1) * 1000
    print(f"\n{args.model.name} on {args.image.name}, budget {args.budget_ms} ms, {args.connections} wrk "
          f"connections, {args.seconds:.0f} s — {machine()}")
    print(f"one 200 alone: {per_ok_s * 1000:.1f} ms of replica CPU")
    print(f"flood: {refused / args.seconds:.0f} refusals/s and {ok / args.seconds:.1f} 200s/s; replica "
          f"{cores:.2f} cores; about {per_refusal_ms:.2f} ms of replica CPU per refusal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
