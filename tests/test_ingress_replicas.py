"""No single ingress replica is the service. Two replicas of the shipped
application share the own HTTP port (SO_REUSEPORT); killing one leaves the other answering."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import requests

from demo_models import evaluate
from serve.app_deploy import app_config, deploy, free_port, wait_ready

SAMPLE = evaluate.HERE / "samples" / "shapes_640x480.jpg"


@pytest.fixture(scope="module")
def twin_api(ray_cluster):
    from ray import serve

    port = free_port()
    app = app_config("twin", "/twin", [{"name": "det", "path": str(evaluate.DETECTOR_PATH)}], http_port=port)
    app["deployments"][0]["num_replicas"] = 2  # what the shipped autoscaling's min_replicas gives
    deploy([app])
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz")
    yield base
    serve.delete("twin")


def replicas() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::ServeReplica:twin:Ingress")]


def test_killing_one_of_two_ingress_replicas_leaves_the_port_serving(twin_api):
    assert len(replicas()) == 2
    data, results, done = SAMPLE.read_bytes(), [], threading.Event()

    def client():
        session = requests.Session()  # keep-alive: a connection stays on one replica until it breaks
        while not done.is_set():
            t0 = time.monotonic()
            try:
                r = session.post(f"{twin_api}/v1/models/det/predict", data=data, timeout=30,
                                 headers={"content-type": "image/jpeg"})
                outcome = r.status_code if r.status_code == 200 else r.json()["error"]["code"]
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                outcome = "connection"  # the request was on the replica that died
                session = requests.Session()
            results.append((t0, time.monotonic(), outcome))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(2)
    killed_at = time.monotonic()
    os.kill(replicas()[0].pid, signal.SIGKILL)
    time.sleep(5)
    done.set()
    for t in clients:
        t.join()

    after = [r for r in results if r[0] >= killed_at]
    failed = [r for r in after if r[2] != 200]
    # Only requests already on the dead replica's connections fail, at once, not after a timeout.
    assert len(failed) <= len(clients), failed
    assert all(end - killed_at < 2 for _, end, _ in failed), failed
    # Requests sent after the kill are answered by the live replica without a gap.
    ok = sorted(start for start, _, outcome in after if outcome == 200)
    assert ok and ok[0] - killed_at < 1.0, (ok[:3], failed)
    assert len(ok) >= 10, len(ok)
    gaps = [b - a for a, b in zip(ok, ok[1:])]
    assert max(gaps) < 1.0, max(gaps)
    print(f"\n{len(after)} requests after the kill: {len(failed)} failed ({[o for *_, o in failed]}), "
          f"longest gap between answers {max(gaps):.2f}s")
    # Serve replaces the dead replica.
    deadline = time.monotonic() + 60
    while len(replicas()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(replicas()) == 2
