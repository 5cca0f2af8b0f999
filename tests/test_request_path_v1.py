"""The /v1 HTTP API over the real request path, in this process, without Ray.

One in-process replica (tests/in_process_replica.py: the real in-process stages, alias watcher
over the shipped demo models, data plane and /v1 adapter behind the real HTTP server on a free
loopback port) answers real HTTP requests. Every answer equals core.local_pipeline.LocalPipeline
run here on the same bytes; every error is the documented JSON with the request id of its
x-request-id header.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import re
import socket

import cv2
import numpy as np
import pytest
import requests

from demo_models import evaluate
from model_registry.source import file_sha256
from tests.in_process_replica import Reference, start_replica

SAMPLES = evaluate.HERE / "samples"
DETECTOR, CLASSIFIER = evaluate.DETECTOR_PATH, evaluate.CLASSIFIER_PATH
SHAPES = SAMPLES / "shapes_640x480.jpg"
DETECTOR_IMAGES = ["shapes_640x480.jpg", "shapes_480x640.jpg", "shapes_720x405.jpg"]
CLASSIFIER_IMAGES = ["star.jpg", "circle.jpg", "cross.jpg"]
MAX_BODY = 2_000_000
BODY_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def replica():
    r = start_replica([{"name": "det", "path": str(DETECTOR)}, {"name": "clf", "path": str(CLASSIFIER)}],
                      grpc=False, max_body_bytes=MAX_BODY, body_timeout_s=BODY_TIMEOUT_S)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def reference(replica):
    return Reference(replica.cfg)


def predict(base: str, model: str, data, content_type: str = "image/jpeg", headers: dict | None = None,
            **params) -> requests.Response:
    return requests.post(f"{base}/v1/models/{model}/predict", data=data, params=params,
                         headers={"content-type": content_type, **(headers or {})}, timeout=60)


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def assert_json_error(r: requests.Response, status: int, code: str) -> dict:
    """The documented error: {"error": {"code", "message"}, "request_id"}, the id also in the header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert body["request_id"] and body["request_id"] == r.headers["x-request-id"]
    return body


@pytest.mark.parametrize("name", DETECTOR_IMAGES + ["shapes_640x480.png"])
def test_detections_are_the_local_pipelines_on_the_same_image(replica, reference, name):
    if name.endswith(".png"):
        data, kind = png(cv2.imread(str(SHAPES))), "image/png"
    else:
        data, kind = (SAMPLES / name).read_bytes(), "image/jpeg"
    r = predict(replica.base, "det", data, kind)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reference(DETECTOR, data)
    assert expected["detections"], "a sample with nothing detected would prove little"
    assert body["detections"] == expected["detections"]
    assert body["image"] == dict(zip(("height", "width"), cv2.imdecode(np.frombuffer(data, np.uint8), 1).shape))
    assert (body["model"], body["task"], body["alias"]) == ("det", "detect", "production")
    assert body["version"] == file_sha256(DETECTOR)[:12]  # a local file's version is its content hash
    assert {"preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"} <= set(body["timings_ms"])
    assert body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("name", CLASSIFIER_IMAGES)
def test_classes_are_the_local_pipelines_on_the_same_image(replica, reference, name):
    data = (SAMPLES / name).read_bytes()
    r = predict(replica.base, "clf", data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "classify"
    assert body["classes"] == reference(CLASSIFIER, data)["classes"]
    assert body["classes"][0]["label"] == name.removesuffix(".jpg")


def test_query_parameters_reach_the_model_as_they_reach_the_local_pipeline(replica, reference):
    data = SHAPES.read_bytes()
    r = predict(replica.base, "det", data, conf=0.985, iou=0.3, max_det=3)
    assert r.status_code == 200, r.text
    expected = reference(DETECTOR, data, conf=0.985, iou=0.3, max_det=3)["detections"]
    assert r.json()["detections"] == expected
    assert len(expected) < len(reference(DETECTOR, data)["detections"])  # the parameters did change something
    r = predict(replica.base, "clf", (SAMPLES / "star.jpg").read_bytes(), top_k=2)
    assert r.json()["classes"] == reference(CLASSIFIER, (SAMPLES / "star.jpg").read_bytes(), top_k=2)["classes"]
    assert len(r.json()["classes"]) == 2


def test_multipart_upload_and_query_parameters(replica, reference):
    data = SHAPES.read_bytes()
    files = {"image": ("shapes.jpg", data, "image/jpeg")}
    r = requests.post(f"{replica.base}/v1/models/det/predict", files=files, params={"conf": 0.5, "max_det": 2},
                      timeout=60)
    assert r.status_code == 200, r.text
    dets = r.json()["detections"]
    assert len(dets) == 2 and all(d["score"] > 0.5 for d in dets)
    assert dets == reference(DETECTOR, data, conf=0.5, max_det=2)["detections"]


def test_concurrent_requests_each_get_their_own_images_answer(replica, reference):
    """Requests in flight together share downstream calls; each still gets its own image's answer."""
    images = [("det", DETECTOR, (SAMPLES / n).read_bytes()) for n in DETECTOR_IMAGES]
    images += [("clf", CLASSIFIER, (SAMPLES / n).read_bytes()) for n in CLASSIFIER_IMAGES]
    jobs = images * 4
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: predict(replica.base, job[0], job[2]), jobs))
    for (model, path, data), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        field = "detections" if model == "det" else "classes"
        assert r.json()[field] == reference(path, data)[field]
    assert len({r.json()["request_id"] for r in answers}) == len(jobs)


def test_the_clients_request_id_is_kept_and_a_bad_one_replaced(replica):
    r = predict(replica.base, "det", SHAPES.read_bytes(), headers={"x-request-id": "client-7.a_b"})
    assert r.headers["x-request-id"] == r.json()["request_id"] == "client-7.a_b"
    r = predict(replica.base, "nope", b"x", headers={"x-request-id": "no spaces allowed"})
    body = assert_json_error(r, 404, "model_not_found")
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"]), body


def test_health_readiness_listing_and_model_detail(replica):
    base = replica.base
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "models": {"det": "ready", "clf": "ready"},
                            "stages": {"inference": "ready", "postprocess": "ready"}}
    listed = {m["name"]: m for m in requests.get(f"{base}/v1/models", timeout=10).json()["models"]}
    assert {n: (m["task"], m["version"], m["state"]) for n, m in listed.items()} == {
        "det": ("detect", file_sha256(DETECTOR)[:12], "ready"),
        "clf": ("classify", file_sha256(CLASSIFIER)[:12], "ready")}
    detail = requests.get(f"{base}/v1/models/det", timeout=10).json()
    assert detail["name"] == "det" and detail["state"] == "ready" and detail["task"] == "detect"
    assert detail["spec"]["input_shape"] == [None, 3, 320, 320]
    assert detail["spec"]["labels"] == ["circle", "square", "triangle", "star", "cross"]
    assert detail["providers"] == ["CPUExecutionProvider"]
    assert detail["max_batch_size"] == 1  # the shipped CPU batching: unbatched runs
    assert set(detail["placement"]) == {"preprocess", "inference", "postprocess"}
    assert_json_error(requests.get(f"{base}/v1/models/nope", timeout=10), 404, "model_not_found")
    root = requests.get(f"{base}/", timeout=10, allow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    "path, body, content_type, params, status, code",
    [
        ("/v1/models/nope/predict", b"x", "image/jpeg", {}, 404, "model_not_found"),
        ("/v1/models/det/predict", b"not an image at all", "image/jpeg", {}, 415, "unsupported_media_type"),
        ("/v1/models/det/predict", b"\xff\xd8\xff\xe0garbage", "image/jpeg", {}, 400, "invalid_image"),
        ("/v1/models/det/predict", b"", "image/jpeg", {}, 400, "invalid_image"),
        ("/v1/models/det/predict", b"x", "text/plain", {}, 415, "unsupported_media_type"),
        ("/v1/models/det/predict", b"x" * (MAX_BODY + 1), "image/jpeg", {}, 413, "payload_too_large"),
        ("/v1/models/det/predict", None, "image/jpeg", {"conf": "abc"}, 422, "invalid_parameter"),
        ("/v1/models/det/predict", None, "image/jpeg", {"conf": "1.5"}, 422, "invalid_parameter"),
        ("/v1/models/det/predict", None, "image/jpeg", {"iou": "-1"}, 422, "invalid_parameter"),
        ("/v1/models/det/predict", None, "image/jpeg", {"max_det": "0"}, 422, "invalid_parameter"),
        ("/v1/models/clf/predict", None, "image/jpeg", {"top_k": "6"}, 422, "invalid_parameter"),
        ("/v1/models/det/predict", None, "image/jpeg", {"timeout_ms": "0"}, 422, "invalid_parameter"),
        ("/v1/models/det/predict", None, "image/jpeg", {"alias": "nope"}, 404, "alias_not_served"),
        # A served alias under which this model has no version (local files serve only the serving alias).
        ("/v1/models/det/predict", None, "image/jpeg", {"alias": "staging"}, 404, "model_not_found"),
        ("/v1/nothing", b"", "image/jpeg", {}, 404, "not_found"),
    ],
    ids=["unknown-model", "not-an-image", "corrupt-jpeg", "empty-body", "text-plain", "too-large", "conf-abc",
         "conf-1.5", "iou-negative", "max_det-0", "top_k-over-classes", "timeout_ms-0", "unknown-alias",
         "alias-without-model", "unknown-path"],
)
def test_bad_input_gets_a_clear_json_error(replica, path, body, content_type, params, status, code):
    data = SHAPES.read_bytes() if body is None else body
    r = requests.post(replica.base + path, data=data, params=params, headers={"content-type": content_type},
                      timeout=60)
    assert_json_error(r, status, code)


def test_multipart_without_image_field_and_wrong_method(replica):
    r = requests.post(f"{replica.base}/v1/models/det/predict", files={"file": ("a.jpg", b"x")}, timeout=30)
    assert_json_error(r, 400, "missing_image")
    r = requests.get(f"{replica.base}/v1/models/det/predict", timeout=30)
    assert_json_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_hostile_images_are_refused_not_crashed(replica):
    # 16-bit grayscale: converted, not refused.
    r = predict(replica.base, "det", png(np.zeros((64, 64), np.uint16)), "image/png")
    assert r.status_code == 200, r.text
    # A PNG header claiming a huge canvas is refused before decoding.
    header = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    header[16:24] = (50_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big")
    r = predict(replica.base, "det", bytes(header), "image/png")
    assert "pixel limit" in assert_json_error(r, 400, "invalid_image")["error"]["message"]
    # Truncated JPEG.
    r = predict(replica.base, "det", SHAPES.read_bytes()[:2000])
    assert r.status_code in (200, 400), r.text  # cv2 may recover a partial image; it must never 500


def test_truncated_stream_of_garbage_is_not_a_500(replica):
    payload = io.BytesIO(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    r = requests.post(f"{replica.base}/v1/models/det/predict", data=payload, timeout=30)
    assert_json_error(r, 415, "unsupported_media_type")


def raw_http(base: str, payload: bytes) -> str:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/models/det/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
], ids=["bad-content-length", "100KB-path"])
def test_requests_the_http_layer_cannot_parse_get_the_json_error_too(replica, request_bytes):
    """uvicorn's own 400s are replaced by the API's JSON, with a request id."""
    answer = raw_http(replica.base, request_bytes)
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "content-type: application/json" in head.lower(), head
    error = json.loads(body)
    assert error["error"]["code"] == "bad_request" and error["request_id"] in head


def test_a_budget_spent_before_the_model_runs_is_503_deadline_exceeded(replica):
    """1 ms of budget for a 12-megapixel image: its decoding alone takes longer, so the model never
    runs it and the answer says so, with Retry-After."""
    big = cv2.resize(cv2.imread(str(SHAPES)), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    assert len(data) < MAX_BODY
    r = predict(replica.base, "det", data, headers={"x-request-timeout-ms": "1"})
    assert_json_error(r, 503, "deadline_exceeded")
    assert int(r.headers["retry-after"]) >= 1
    assert predict(replica.base, "det", data).status_code == 200  # the default budget is enough for it


@pytest.fixture(scope="module")
def broken_replica():
    r = start_replica([{"name": "clf", "path": str(CLASSIFIER)},
                       {"name": "missing", "path": str(SAMPLES / "does-not-exist.onnx")}], grpc=False)
    yield r
    r.stop()


def test_a_model_that_fails_to_load_does_not_take_down_the_others(broken_replica):
    base = broken_replica.base
    r = requests.get(f"{base}/readyz", timeout=30)
    assert r.status_code == 503 and r.json()["models"] == {"clf": "ready", "missing": "failed"}
    assert "Retry-After" in r.headers
    r = predict(base, "missing", SHAPES.read_bytes())
    assert_json_error(r, 503, "model_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert "does-not-exist" in requests.get(f"{base}/v1/models/missing", timeout=30).json()["error"]
    data = (SAMPLES / "circle.jpg").read_bytes()
    r = predict(base, "clf", data)
    assert r.status_code == 200 and r.json()["classes"] == Reference(broken_replica.cfg)(CLASSIFIER, data)["classes"]
