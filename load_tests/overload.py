"""Overload scenario: ramp closed-loop clients far past capacity and see what admission does.

    .venv/bin/python -m load_tests.overload [--model PATH --image PATH] [--budget-ms 500]
                                            [--steps 1 4 16 64] [--step-s 15]

An isolated Ray cluster runs the shipped application (serve/config.yaml) on its own HTTP port;
at each step N client threads post the image in a loop with `X-Request-Timeout-Ms`, ignoring
`Retry-After` (the worst case). Per step: throughput, admitted p50/p99 against the budget, the
share refused (503 `overloaded`: before any work; `deadline_exceeded`: admitted, dropped unrun)
and how fast refusals come back, and anything else (there should be nothing else).
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
from pathlib import Path

import requests

from load_tests.harness import CpuMeter, ServedCluster, machine, percentile, ray_env, slow_or_fast


def step(cluster: ServedCluster, data: bytes, clients: int, seconds: float, budget_ms: int) -> dict:
    """One step of `clients` closed-loop threads; also the CPU each side spent (the client threads
    run in this process, on the same cores as the server)."""
    url = cluster.url
    client0 = time.process_time()
    results: list[tuple[int, str | None, float, float | None]] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                r = session.post(f"{url}/v1/models/m/predict", data=data, timeout=60,
                                 headers={"content-type": "image/jpeg", "x-request-timeout-ms": str(budget_ms)})
                answer = r.json()
                code = None if r.status_code == 200 else (answer.get("error") or {}).get("code")
                # The server's own time for a 200: the client's latency also has its threads' waits.
                server_ms = answer["timings_ms"]["total_ms"] if r.status_code == 200 else None
                status = r.status_code
            except (requests.RequestException, ValueError) as exc:  # counted: there should be none
                status, code, server_ms = 0, type(exc).__name__, None
            with lock:
                results.append((status, code, (time.monotonic() - t0) * 1000, server_ms))

    with CpuMeter(cluster.processes()) as cpu:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.monotonic() - start
    client_s = time.process_time() - client0
    spent = cpu.seconds()
    server_s, pipeline_s = sum(spent.values()), spent.get("Ingress", 0.0)
    ok = [ms for status, _, ms, _ in results if status == 200]
    ok_server = [ms for status, _, _, ms in results if status == 200]
    refused = [ms for status, code, ms, _ in results if code == "overloaded"]
    kinds = collections.Counter(code if status != 200 else "200" for status, code, _, _ in results)
    return {
        "clients": clients, "answers": len(results), "rps_ok": len(ok) / seconds,
        "ok_p50": percentile(ok, 50) if ok else None, "ok_p99": percentile(ok, 99) if ok else None,
        "over_budget": sum(ms > budget_ms for ms in ok),
        "ok_server_p99": percentile(ok_server, 99) if ok_server else None,
        "over_budget_server": sum(ms > budget_ms for ms in ok_server),
        "refused_p50": percentile(refused, 50) if refused else None,
        "refused_p99": percentile(refused, 99) if refused else None,
        "kinds": dict(kinds),
        # Cores busy on average: the whole cluster, its Ingress replica, and the client threads.
        "server_cores": server_s / elapsed, "pipeline_cores": pipeline_s / elapsed, "client_cores": client_s / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model, image = slow_or_fast()
    ap.add_argument("--model", type=Path, default=model)
    ap.add_argument("--image", type=Path, default=image)
    ap.add_argument("--budget-ms", type=int, default=500)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--step-s", type=float, default=15)
    args = ap.parse_args()
    ray_env()  # as make up runs Ray
    cluster = ServedCluster({"m": args.model})
    rows = []
    try:
        cluster.deploy()
        data = args.image.read_bytes()
        step(cluster, data, 1, 3, args.budget_ms)  # warm: admission has measured the model
        for clients in args.steps:
            rows.append(step(cluster, data, clients, args.step_s, args.budget_ms))
            print(rows[-1], flush=True)
    finally:
        cluster.shutdown()

    def ms(v):
        return "—" if v is None else f"{v:.0f}"

    print(f"\n### Overload, {args.model.name} on {args.image.name}, budget {args.budget_ms} ms — {machine()}\n")
    print("| clients | answers | 200/s | 200 p50 ms | 200 p99 ms | 200s over budget | 200 p99 ms, server "
          "| over budget, server | refused p50 ms | refused p99 ms | cores: cluster (Ingress) | cores: client "
          "| answers by kind |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['clients']} | {r['answers']} | {r['rps_ok']:.1f} | {ms(r['ok_p50'])} | {ms(r['ok_p99'])} "
              f"| {r['over_budget']} | {ms(r['ok_server_p99'])} | {r['over_budget_server']} "
              f"| {ms(r['refused_p50'])} | {ms(r['refused_p99'])} "
              f"| {r['server_cores']:.2f} ({r['pipeline_cores']:.2f}) | {r['client_cores']:.2f} | {r['kinds']} |")


if __name__ == "__main__":
    main()
