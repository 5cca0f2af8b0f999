"""The floor under the pipeline: what Ray Serve's machinery costs with no work at all.

    .venv/bin/python -m load_tests.floor [--direct-ingress] [--requests 2000] [--concurrency 1 8]

On an isolated Ray cluster of its own, three trivial apps:
  empty-http    an ingress that answers b"ok"                      (1 HTTP request)
  one-hop       an ingress that awaits one empty handle call        (+1 Serve hop)
  two-hops      an ingress that awaits two chained empty calls      (+2 Serve hops, like the pipeline)
  own-port      an ingress replica answering b"ok" on its own HTTP port (serve/http_server.py),
                as the shipped config's ingress does: Serve is not on the request path
Closed-loop HTTP clients in a separate process; CPU per request summed over every process of
the cluster (psutil), the client excluded. With --direct-ingress the ingress replicas serve
HTTP themselves (RAY_SERVE_ENABLE_DIRECT_INGRESS=1) instead of Serve's Python proxy.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import platform
import statistics
import tempfile
import time

import psutil
from ray import serve
from starlette.responses import Response

from serve.app_deploy import free_port
from serve.http_server import IngressHttpServer


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Leaf:
    async def __call__(self, x=None):
        return x


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Ingress:
    def __init__(self, hops: int, leaf=None):
        self.hops, self.leaf = hops, leaf

    async def __call__(self, request):
        value = b"ok"
        for _ in range(self.hops):
            value = await self.leaf.remote(value)
        return Response(value)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class OwnPortIngress:
    async def __init__(self, port: int):
        self.http = IngressHttpServer(self.answer, "127.0.0.1", port)
        await self.http.start()

    async def answer(self, request):
        return Response(b"ok")

    async def __call__(self, request):
        return Response(b"ok")


def _client(port: int, path: str, n: int, out) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        lat.append((time.perf_counter() - t0) * 1000)
    out.put(lat)


def cluster_cpu_s() -> float:
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if "floor-client" not in " ".join(p.cmdline()):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(port: int, path: str, concurrency: int, requests: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, cluster CPU ms per request)."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    per = max(1, requests // concurrency)
    procs = [ctx.Process(target=_client, args=(port, path, per, q), name="floor-client") for _ in range(concurrency)]
    cpu0, t0 = cluster_cpu_s(), time.perf_counter()
    for p in procs:
        p.start()
    lat = [x for _ in procs for x in q.get()]
    for p in procs:
        p.join()
    elapsed, cpu = time.perf_counter() - t0, cluster_cpu_s() - cpu0
    return len(lat) / elapsed, statistics.median(lat), cpu * 1000 / len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direct-ingress", action="store_true")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="Ray/Serve setting for the cluster, e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    for setting in args.env:
        name, _, value = setting.partition("=")
        os.environ[name] = value
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="vrf", dir="/tmp"))
    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    apps = {"empty-http": 0, "one-hop": 1, "two-hops": 2}
    rows = []
    try:
        for name, hops in apps.items():
            app = Ingress.bind(hops, Leaf.bind()) if hops else Ingress.bind(0)
            serve.run(app, name=name, route_prefix="/")  # one app at a time: direct ingress owns the port
            measure(port, "/", 1, 50)  # warm-up
            for c in args.concurrency:
                rps, p50, cpu = measure(port, "/", c, args.requests)
                rows.append((name, c, rps, p50, cpu))
            serve.delete(name)
        own_port = free_port()
        serve.run(OwnPortIngress.bind(own_port), name="own-port", route_prefix="/")
        measure(own_port, "/", 1, 50)
        for c in args.concurrency:
            rps, p50, cpu = measure(own_port, "/", c, args.requests)
            rows.append(("own-port", c, rps, p50, cpu))
        serve.delete("own-port")
    finally:
        serve.shutdown()
        ray.shutdown()
    cpu_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    print(f"\n### Serve floor, {'direct ingress' if args.direct_ingress else 'Python proxy'} {args.env} — "
          f"{os.cpu_count()} cores ({cpu_name}), {platform.system()}\n")
    print("| app | conc. | req/s | p50 ms | cluster CPU ms/req |\n| --- | ---: | ---: | ---: | ---: |")
    for name, c, rps, p50, cpu in rows:
        print(f"| {name} | {c} | {rps:.0f} | {p50:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
