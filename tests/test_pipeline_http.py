"""The whole pipeline over real HTTP on a real (isolated) Ray cluster.

The apps serve the shipped demo detector (`det`) and a colour classifier built here, so every test
runs on any checkout; the tests about the real YOLOv8n exports (`yolo`, `yolo-dyn`: exact
detections on bus.jpg, a rewritten batch dimension, a batch-variant model, overload calibrated on
a ~100 ms model) skip without ../shared/models. No test depends on another having run: the one
that kills a replica kills one of an app of its own (`victim`).

The /v1 contract itself (every bad input's JSON error, multipart, parameters, hostile images,
requests the HTTP layer cannot parse) is checked without Ray in tests/test_request_path_v1.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import threading
import time

import cv2
import numpy as np
import psutil
import pytest
import requests

from core.local_pipeline import LocalPipeline
from demo_models import evaluate
from serve.app_deploy import app_config, deploy, free_port, wait_ready
from tests.models import (
    BUS_JPG,
    YOLO_DYNAMIC,
    YOLO_QDQ,
    assert_bus_detections,
    assert_same_detections,
    color_classifier,
    needs_shared_models,
    solid_image,
)

MAX_BODY = 2_000_000
BODY_TIMEOUT_S = 3.0
DETECTOR = evaluate.DETECTOR_PATH
SHAPES = evaluate.HERE / "samples" / "shapes_640x480.jpg"


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("models")
    models = [
        {"name": "det", "path": str(DETECTOR)},
        {"name": "colors", "path": str(color_classifier(tmp / "colors.onnx"))},
    ]
    if YOLO_QDQ.is_file():
        models += [{"name": "yolo", "path": str(YOLO_QDQ)}, {"name": "yolo-dyn", "path": str(YOLO_DYNAMIC)}]
    broken = [
        {"name": "colors", "path": str(color_classifier(tmp / "colors2.onnx", softmax=True))},
        {"name": "missing", "path": str(tmp / "does-not-exist.onnx")},
    ]
    # The stages as three deployments, reached on the ingress's own HTTP port; the "partial" app
    # (stages in process) through Serve's proxy: both ways in, both placements.
    port = free_port()
    pipeline = app_config("pipeline", "/", models, stages="deployments", http_port=port, max_body_bytes=MAX_BODY,
                          body_timeout_s=BODY_TIMEOUT_S)
    # The shipped CPU tuning runs unbatched; these tests exercise dynamic batching itself.
    inference = next(d for d in pipeline["deployments"] if d["name"] == "Inference")
    inference["user_config"] = {"max_batch_size": 8, "max_concurrent_batches": 1, "batch_wait_timeout_s": 0.0}
    # Its own app for the test that kills its Inference replica: the others' app never loses one.
    victim_port = free_port()
    victim = app_config("victim", "/victim", [{"name": "det", "path": str(DETECTOR)}], stages="deployments",
                        http_port=victim_port)
    deploy([pipeline, app_config("partial", "/partial", broken), victim])
    urls = {"api": f"http://127.0.0.1:{port}", "victim": f"http://127.0.0.1:{victim_port}"}
    for base in urls.values():
        wait_ready(f"{base}/readyz")
    return urls


@pytest.fixture(scope="module")
def api(apps) -> str:
    return apps["api"]


@pytest.fixture(scope="module")
def victim(apps) -> str:
    return apps["victim"]


def predict(base, model, data, content_type="image/jpeg", **params):
    return requests.post(f"{base}/v1/models/{model}/predict", data=data, params=params,
                         headers={"content-type": content_type}, timeout=60)


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@needs_shared_models
@pytest.mark.parametrize("model, file", [("yolo", YOLO_QDQ), ("yolo-dyn", YOLO_DYNAMIC)], ids=["qdq", "dynamic"])
def test_bus_detections_over_http(api, model, file):
    r = predict(api, model, BUS_JPG.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["task"] == "detect"
    assert body["image"] == {"width": 810, "height": 1080}
    assert_bus_detections(body["detections"], file)
    assert {"preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"} <= set(body["timings_ms"])
    assert body["request_id"] and body["version"]


def test_classifier_over_http(api):
    for bgr, label in [((0, 0, 255), "red"), ((0, 255, 0), "green"), ((255, 0, 0), "blue")]:
        r = predict(api, "colors", png(solid_image(bgr)), "image/png", top_k=2)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "classify" and len(body["classes"]) == 2
        assert body["classes"][0]["label"] == label and body["classes"][0]["score"] > 0.9


def test_model_listing_and_details(api):
    listed = {m["name"]: m for m in requests.get(f"{api}/v1/models").json()["models"]}
    assert set(listed) == {"det", "colors"} | ({"yolo", "yolo-dyn"} if YOLO_QDQ.is_file() else set())
    assert all(m["state"] == "ready" for m in listed.values())
    detail = requests.get(f"{api}/v1/models/det").json()
    assert detail["providers"] == ["CPUExecutionProvider"]
    assert detail["spec"]["input_shape"] == [None, 3, 320, 320]
    assert detail["batch_invariant"] is True and detail["batch_mode"] == "native"
    assert detail["max_batch_size"] == 8
    assert requests.get(f"{api}/healthz").json() == {"status": "ok"}


@needs_shared_models
def test_a_fixed_batch_export_is_rewritten_and_a_batch_variant_model_runs_alone(api):
    detail = requests.get(f"{api}/v1/models/yolo").json()
    assert detail["spec"]["input_shape"] == [1, 3, 640, 640]
    assert detail["batch_invariant"] is True and detail["batch_mode"] == "rewritten"
    dyn = requests.get(f"{api}/v1/models/yolo-dyn").json()
    assert dyn["batch_invariant"] is False and dyn["max_batch_size"] == 1


@pytest.mark.parametrize("model", ["det", pytest.param("yolo", marks=needs_shared_models)])
def test_concurrent_requests_are_batched_and_results_do_not_depend_on_batch(api, model):
    """Each answer equals the image's own answer computed here, alone (LocalPipeline; for YOLO also
    the README's table), whatever batch it ran in."""
    data = (BUS_JPG if model == "yolo" else SHAPES).read_bytes()
    before = requests.get(f"{api}/v1/models/{model}").json()["batch_sizes"]
    # A budget past what 48 requests at once need on 2 cores: this test is about batching, not admission.
    with cf.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: predict(api, model, data, timeout_ms=30_000), range(48)))
    assert all(r.status_code == 200 for r in responses), {r.status_code: r.text[:200] for r in responses}
    after = requests.get(f"{api}/v1/models/{model}").json()["batch_sizes"]
    grew = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    assert max(grew) > 1, f"no batch larger than 1 observed: {grew}"
    assert max(r.json()["timings_ms"]["batch_size"] for r in responses) > 1
    alone = None if model == "yolo" else LocalPipeline(DETECTOR)(data)["detections"]
    for r in responses:
        if model == "yolo":
            assert_bus_detections(r.json()["detections"], YOLO_QDQ)
        else:
            assert_same_detections(r.json()["detections"], alone)


@needs_shared_models
def test_batch_variant_model_never_shares_a_batch(api):
    data = BUS_JPG.read_bytes()
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: predict(api, "yolo-dyn", data), range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["timings_ms"]["batch_size"] for r in responses} == {1}
    sizes = requests.get(f"{api}/v1/models/yolo-dyn").json()["batch_sizes"]
    assert set(sizes) == {"1"}


def test_a_flood_of_decompression_bombs_is_refused_and_the_ingress_memory_stays_bounded(api):
    """42 KB JPEGs declaring 20000x20000 behind three fill bytes (once decoded
    at 2.9 GB each) and PNGs declaring 50000x50000, sent 40 at a time: each a JSON 400, and the
    ingress replica's resident memory grows by less than 200 MB."""
    jpeg = SHAPES.read_bytes()
    sof = jpeg.index(b"\xff\xc0")
    header = bytearray(jpeg[sof:sof + 9])
    header[5:9] = (20_000).to_bytes(2, "big") + (20_000).to_bytes(2, "big")
    jpeg_bomb = jpeg[:sof] + b"\xff\xff\xff" + bytes(header) + jpeg[sof + 9:]
    png_bomb = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    png_bomb[16:24] = (50_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big")
    ingress = next(p for p in psutil.process_iter(["cmdline"])
                   if (p.info["cmdline"] or [""])[0].startswith("ray::ServeReplica:pipeline:Ingress"))
    rss_before = ingress.memory_info().rss

    def send(i: int) -> requests.Response:
        body, kind = (jpeg_bomb, "image/jpeg") if i % 2 == 0 else (bytes(png_bomb), "image/png")
        return predict(api, "det", body, kind)

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(40)))
    assert all(r.status_code == 400 and r.json()["error"]["code"] == "invalid_image" for r in answers), \
        {(r.status_code, r.text[:200]) for r in answers}
    grown_mb = (ingress.memory_info().rss - rss_before) / 2**20
    assert grown_mb < 200, grown_mb
    assert predict(api, "det", jpeg).status_code == 200


def test_a_model_that_fails_to_load_does_not_take_down_the_others(api, ray_cluster):
    base = f"{ray_cluster}/partial"  # Serve's proxy
    r = requests.get(f"{base}/readyz", timeout=30)
    assert r.status_code == 503 and r.json()["models"]["missing"] == "failed"
    r = predict(base, "missing", SHAPES.read_bytes())
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert "Retry-After" in r.headers
    assert "does-not-exist" in requests.get(f"{base}/v1/models/missing", timeout=30).json()["error"]
    r = predict(base, "colors", png(solid_image((0, 255, 0))), "image/png")
    assert r.status_code == 200 and r.json()["classes"][0]["label"] == "green"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_sent_whole_before_reading_gets_the_413_json(api, declared):
    """80 MB the way `requests` sends it: the whole body first, then read the answer.

    The server answers before it has read the body; without a lingering read the client's
    remaining bytes meet a closed socket and it sees a connection reset, not the 413.
    """
    body = bytes(80 << 20)
    view = memoryview(body)
    data = body if declared else (view[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))
    r = requests.post(f"{api}/v1/models/det/predict", data=data, headers={"content-type": "image/jpeg"},
                      timeout=120)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large" and r.json()["request_id"]
    # An error decided before the body is read (unknown model) is answered the same way.
    r = requests.post(f"{api}/v1/models/nope/predict", data=body, timeout=120)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_long_model_name_is_not_echoed_whole_and_the_request_id_header_is_single(api):
    r = requests.post(f"{api}/v1/models/{'n' * 10_000}/predict", data=b"x", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert len(r.json()["error"]["message"]) < 400
    r = predict(api, "det", SHAPES.read_bytes())
    assert r.status_code == 200
    ids = r.raw.headers.getlist("x-request-id")
    assert ids == [r.json()["request_id"]], ids


def read_response(s: socket.socket) -> str:
    """One HTTP response from `s`: its head, then as many body bytes as its Content-Length says."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a whole response head: {out[:200]!r}"
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_slow_clients_hold_no_slot_and_a_stalled_body_gets_a_json_408(api):
    """70 connections sending 1 byte/s used to block all traffic for 30 s
    (Serve's replica slots). On the ingress's own port a slow client holds a coroutine, not a slot,
    and its body is cut off after `body_timeout_s` with a JSON 408."""
    host, port = api.removeprefix("http://").split(":")
    slow = []
    for _ in range(100):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"POST /v1/models/det/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 100000\r\n\r\n")
        slow.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in slow:
                try:
                    s.send(b"\xff")
                except OSError:
                    pass
            stop.wait(1.0)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        data, times = SHAPES.read_bytes(), []
        for _ in range(10):
            t0 = time.monotonic()
            assert predict(api, "det", data).status_code == 200
            times.append(time.monotonic() - t0)
        assert max(times) < 2.0, times  # a lone request for the demo detector takes ~10-20 ms on 2 cores
        answer = read_response(slow[0])  # blocks until the server cuts the body off
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        body = json.loads(answer.split("\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout" and body["request_id"]
    finally:
        stop.set()
        trickler.join()
        for s in slow:
            s.close()


@needs_shared_models
def test_overload_is_shed_with_json_503_and_nothing_waits_for_serves_timeout(api):
    """Far past capacity, every answer is a 200 or a JSON 503 `overloaded`
    with Retry-After, at once, and none waits for Serve's 30 s timeout (before admission: p50
    8.5 s, then 408s). 20 Python client threads on the same 2 cores as the server, 0.5 s budget,
    ~10x capacity. On a 2-core AMD EPYC: 57 x 200 p50 0.34 s / p99 0.55 s,
    3,544 refusals p50 27 ms / p99 63 ms alone; in the whole suite's run on CI the admitted p99
    reached 1.0 s. On a ~3x slower 2-core AMD EPYC: 18 x 200 p50 0.43 s / p99 1.08 s, refusals p50
    52 ms / p99 128 ms. Asserted with room for such a VM: refusals p50 under 150 ms and p99 under
    500 ms (before reservations the median alone was 0.15-0.25 s), admitted p99 under 4x the
    budget (before admission: p50 8.5 s).

    On YOLOv8n: these figures are a ~100 ms model's. The demo detector's ~5 ms runs put the same
    clients nowhere near a budget that admitted requests on a busy 2-core machine reliably meet;
    admission itself is checked on every checkout without Ray (tests/test_request_path_admission.py)
    and over gRPC with the demo models (tests/test_oip.py)."""
    budget_ms, clients, seconds = 500, 20, 6
    data = BUS_JPG.read_bytes()
    predict(api, "yolo", data)  # the ingress has measured the model

    def client(_):
        out, session = [], requests.Session()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            r = session.post(f"{api}/v1/models/yolo/predict", data=data, timeout=60,
                             headers={"content-type": "image/jpeg", "x-request-timeout-ms": str(budget_ms)})
            out.append((r.status_code, time.monotonic() - t0, r.headers.get("retry-after"),
                        r.json()["error"]["code"] if r.status_code != 200 else None))
        return out

    with cf.ThreadPoolExecutor(clients) as pool:
        results = [x for chunk in pool.map(client, range(clients)) for x in chunk]
    ok = sorted(t for status, t, _, _ in results if status == 200)
    shed = [(t, retry, code) for status, t, retry, code in results if status == 503]
    assert len(ok) + len(shed) == len(results), {s for s, *_ in results}  # no 408, no 500
    assert ok and shed, (len(ok), len(shed))
    assert all(code in ("overloaded", "deadline_exceeded") and retry and int(retry) >= 1 for _, retry, code in shed)
    assert max(t for _, t, *_ in results) < 5.0
    refusals = sorted(t for t, _, code in shed if code == "overloaded")
    assert refusals and refusals[len(refusals) // 2] < 0.15 and refusals[int(len(refusals) * 0.99)] < 0.5, refusals
    assert ok[int(len(ok) * 0.99)] < 4 * budget_ms / 1000, ok
    print(f"\n{len(results)} answers: {len(ok)} x 200 (p50 {ok[len(ok) // 2]:.3f}s, p99 "
          f"{ok[int(len(ok) * 0.99)]:.3f}s), {len(refusals)} x 503 overloaded (p50 "
          f"{refusals[len(refusals) // 2] if refusals else 0:.3f}s, p99 "
          f"{refusals[int(len(refusals) * 0.99)] if refusals else 0:.3f}s), "
          f"{len(shed) - len(refusals)} x 503 deadline_exceeded")


def test_a_killed_inference_replica_gives_json_503s_and_readyz_says_so_until_it_is_back(victim):
    """It kills the Inference replica of an app of its own (`victim`, the demo detector, stages as
    deployments), so no other test meets the dead replica or its replacement.

    Before: in-flight requests hung until Serve's 30 s timeout (plain-text 408), /readyz said 200
    throughout. Now every failure is a JSON 503 within the request's budget (+ slack); once one
    call has failed, the ingress fails fast (JSON 503 at once) until the stage answers again;
    /readyz answers within a second and says 503 while the stage is gone; serving comes back."""
    api, data, budget_ms, results = victim, SHAPES.read_bytes(), 2000, []
    replica = next(p for p in psutil.process_iter(["cmdline"])
                   if (p.info["cmdline"] or [""])[0].startswith("ray::ServeReplica:victim:Inference"))
    done = threading.Event()

    def client():
        session = requests.Session()
        while not done.is_set():
            t0 = time.monotonic()
            r = session.post(f"{api}/v1/models/det/predict", data=data, timeout=60,
                             headers={"content-type": "image/jpeg", "x-request-timeout-ms": str(budget_ms)})
            code = r.json()["error"]["code"] if r.status_code != 200 else None  # JSON, or this raises
            results.append((r.status_code, time.monotonic() - t0, code, t0))
            if r.status_code != 200:
                time.sleep(0.1)  # a client that ignores Retry-After, but does not spin

    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    time.sleep(1)
    os.kill(replica.pid, signal.SIGKILL)
    killed_at, probes, back_after = time.monotonic(), [], None
    while time.monotonic() - killed_at < 90:
        t0 = time.monotonic()
        status = requests.get(f"{api}/readyz", timeout=10).status_code
        probes.append((status, time.monotonic() - t0))
        if status == 503 or not any(s == 503 for s, _ in probes):
            time.sleep(0.25)
            continue
        back_after = time.monotonic() - killed_at
        break
    done.set()
    for t in clients:
        t.join()

    assert any(s == 503 for s, _ in probes), "readyz never reported the dead stage"
    assert back_after is not None, "the pipeline did not come back within 90 s"
    assert max(t for _, t in probes) < 1.5, "readyz must answer promptly while a stage is down"
    failures = [(s, t, code, start) for s, t, code, start in results if s != 200]
    assert all(s == 503 and code in ("stage_unavailable", "overloaded", "deadline_exceeded")
               for s, _, code, _ in failures), failures
    assert all(t < budget_ms / 1000 + 1.0 + 1.0 for _, t, _, _ in failures), failures  # budget + slack + margin
    # Requests sent after the first failure was answered are refused at once (the stage is known down).
    first_answered = min(start + t for _, t, _, start in failures)
    later = sorted(t for _, t, _, start in failures if start > first_answered)
    assert later and later[len(later) // 2] < 0.5 and later[-1] < 1.5, later
    assert predict(api, "det", data).status_code == 200
    print(f"\nreadyz 503 for {back_after:.1f}s after the kill; {len(results)} requests, "
          f"{len(failures)} JSON 503s (all within {max(t for _, t, _, _ in failures):.2f}s; "
          f"{len(later)} at once: median {later[len(later) // 2] * 1000:.0f} ms, max {later[-1] * 1000:.0f} ms)")
