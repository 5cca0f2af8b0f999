"""The Open Inference Protocol v2, spoken to by clients nobody here wrote.

tritonclient (PyPI), HTTP and gRPC, against the shipped application on its own HTTP and gRPC
ports: health, metadata, readiness, inference with one image and with a batch of 4, binary data
on and off, raw pixels; every answer equal to /v1's for the same image; errors as the protocol's
statuses, never UNKNOWN. Then camera streams through tritonclient's stream API, and the
`visionray stream` CLI on a generated video.
"""

from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np
import pytest
import requests

from demo_models import evaluate
from serve.app_deploy import app_config, deploy, free_port, wait_ready

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

SAMPLES = evaluate.HERE / "samples"
IMAGES = [(SAMPLES / name).read_bytes() for name in
          ("shapes_640x480.jpg", "shapes_480x640.jpg", "shapes_720x405.jpg", "star.jpg")]


@pytest.fixture(scope="module")
def oip_api(ray_cluster):
    from ray import serve

    http_port, grpc_port = free_port(), free_port()
    models = [{"name": "det", "path": str(evaluate.DETECTOR_PATH)},
              {"name": "clf", "path": str(evaluate.CLASSIFIER_PATH)}]
    deploy([app_config("oip", "/oip", models, http_port=http_port, grpc_port=grpc_port)])
    base = f"http://127.0.0.1:{http_port}"
    wait_ready(f"{base}/readyz")
    yield {"base": base, "http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    serve.delete("oip")


def v1(base: str, model: str, image: bytes, **params) -> dict:
    r = requests.post(f"{base}/v1/models/{model}/predict", data=image, params=params,
                      headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def image_input(module, images: list[bytes], binary: bool = True):
    inp = module.InferInput("image", [len(images)], "BYTES")
    if module is httpclient and not binary:
        # JSON carries strings: an image goes base64-encoded.
        inp.set_data_from_numpy(np.array([base64.b64encode(i) for i in images], dtype=object), binary_data=False)
    elif module is httpclient:
        inp.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    else:
        inp.set_data_from_numpy(np.array(images, dtype=object))
    return inp


def assert_equals_v1(result, v1_answers: list[dict]) -> None:
    """The OIP tensors of a detection request carry exactly /v1's detections, image by image."""
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    classes, counts, labels = result.as_numpy("classes"), result.as_numpy("num_detections"), result.as_numpy("labels")
    assert len(counts) == len(v1_answers)
    for i, answer in enumerate(v1_answers):
        dets = answer["detections"]
        assert counts[i] == len(dets) > 0
        assert np.array_equal(boxes[i, :len(dets)], np.array([d["box"] for d in dets], np.float32))
        assert np.array_equal(scores[i, :len(dets)], np.array([d["score"] for d in dets], np.float32))
        assert classes[i, :len(dets)].tolist() == [d["class_id"] for d in dets]
        got = [v.decode() if isinstance(v, bytes) else v for v in labels[i, :len(dets)]]
        assert got == [d["label"] for d in dets]
        assert result.as_numpy("image_size")[i].tolist() == [answer["image"]["width"], answer["image"]["height"]]


@pytest.fixture(scope="module")
def v1_answers(oip_api):
    return [v1(oip_api["base"], "det", image) for image in IMAGES]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_metadata_and_readiness(oip_api, transport):
    module = httpclient if transport == "http" else grpcclient
    client = module.InferenceServerClient(oip_api[transport])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("det") and client.is_model_ready("clf")
    meta = client.get_model_metadata("det")
    if transport == "grpc":
        meta = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
                "inputs": [{"name": t.name, "datatype": t.datatype} for t in meta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype} for t in meta.outputs]}
    # A local file's version is its content hash (a registry's: its version number).
    served = requests.get(f"{oip_api['base']}/v1/models/det", timeout=30).json()["version"]
    assert meta["name"] == "det" and meta["versions"] == [served]
    assert client.is_model_ready("det", served)
    assert not client.is_model_ready("det", "999")  # registered or not: not served
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("image", "BYTES")]
    assert [t["name"] for t in meta["outputs"]] == ["boxes", "scores", "classes", "labels", "num_detections",
                                                    "image_size"]
    if transport == "http":  # the status is the answer: 404 for a model that is not there
        assert not client.is_model_ready("nope")
        assert requests.get(f"{oip_api['base']}/v2/models/nope/ready", timeout=30).status_code == 404
    else:
        with pytest.raises(InferenceServerException) as err:
            client.is_model_ready("nope")
        assert str(err.value.status()) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("transport, binary", [("http", True), ("http", False), ("grpc", True)])
def test_infer_one_image_and_a_batch_of_four_equal_v1(oip_api, v1_answers, transport, binary):
    module = httpclient if transport == "http" else grpcclient
    client = module.InferenceServerClient(oip_api[transport])
    outputs = None
    if module is httpclient:
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary)
                   for name in ("boxes", "scores", "classes", "labels", "num_detections", "image_size")]
    one = client.infer("det", [image_input(module, IMAGES[:1], binary)], outputs=outputs)
    assert_equals_v1(one, v1_answers[:1])
    batch = client.infer("det", [image_input(module, IMAGES, binary)], outputs=outputs)
    assert_equals_v1(batch, v1_answers)
    if transport == "http":
        assert batch.get_response()["model_version"] == v1_answers[0]["version"]


def test_a_batch_is_one_trip_through_the_pipeline(oip_api):
    """The 4 images of one request leave the ingress together: one downstream call, not four."""
    client = httpclient.InferenceServerClient(oip_api["http"])

    def groups():
        return requests.get(f"{oip_api['base']}/v1/models/det", timeout=30).json()["ingress"]["group_sizes"]

    before = groups()
    result = client.infer("det", [image_input(httpclient, IMAGES)])
    after = groups()
    assert result.as_numpy("num_detections").shape == (4,)
    assert after.get("4", 0) == before.get("4", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1


def test_raw_rgb_pixels_equal_the_encoded_image(oip_api, v1_answers):
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(IMAGES[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    for module in (httpclient, grpcclient):
        client = module.InferenceServerClient(oip_api["http" if module is httpclient else "grpc"])
        inp = module.InferInput("image", [1, *pixels.shape], "UINT8")
        inp.set_data_from_numpy(pixels[None])
        assert_equals_v1(client.infer("det", [inp]), v1_answers[:1])


def test_parameters_and_the_classification_extension(oip_api):
    base = oip_api["base"]
    client = httpclient.InferenceServerClient(oip_api["http"])
    strict = client.infer("det", [image_input(httpclient, IMAGES[:1])], parameters={"conf": 0.9})
    assert strict.as_numpy("num_detections")[0] == len(v1(base, "det", IMAGES[0], conf=0.9)["detections"])
    answer = v1(base, "clf", IMAGES[3], top_k=2)
    for module in (httpclient, grpcclient):
        c = module.InferenceServerClient(oip_api["http" if module is httpclient else "grpc"])
        out = module.InferRequestedOutput("scores", class_count=2)
        result = c.infer("clf", [image_input(module, IMAGES[3:])], outputs=[out])
        got = [v.decode() for v in result.as_numpy("scores")[0]]
        assert [g.split(":", 2)[1:] for g in got] == [[str(c["class_id"]), c["label"]] for c in answer["classes"]]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_errors_are_the_protocols_statuses(oip_api, transport):
    module = httpclient if transport == "http" else grpcclient
    client = module.InferenceServerClient(oip_api[transport])
    expected = {"http": {"unknown": "404", "bad": "400", "version": "404"},
                "grpc": {"unknown": "StatusCode.NOT_FOUND", "bad": "StatusCode.INVALID_ARGUMENT",
                         "version": "StatusCode.NOT_FOUND"}}[transport]
    cases = {"unknown": ("nope", "", IMAGES[:1]), "bad": ("det", "", [b"not an image"]),
             "version": ("det", "7", IMAGES[:1])}
    for case, (model, version, images) in cases.items():
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, [image_input(module, images)], model_version=version)
        assert str(err.value.status()) == expected[case], (case, err.value)
        assert "UNKNOWN" not in str(err.value.status())


def test_rest_errors_carry_the_documented_body(oip_api):
    r = requests.post(f"{oip_api['base']}/v2/models/det/infer", data=b"{not json", timeout=30)
    body = r.json()
    assert r.status_code == 400 and body["code"] == "invalid_input" and body["request_id"]
    assert isinstance(body["error"], str)
    r = requests.get(f"{oip_api['base']}/v2/nothing/here", timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_grpc_overload_is_unavailable_with_retry_after(oip_api):
    """A budget too short for the work queued: refused at once with UNAVAILABLE, never UNKNOWN."""
    client = grpcclient.InferenceServerClient(oip_api["grpc"])
    stop, codes = threading.Event(), []

    def flood():
        c = grpcclient.InferenceServerClient(oip_api["grpc"])
        while not stop.is_set():
            try:
                c.infer("det", [image_input(grpcclient, IMAGES)], client_timeout=5)
            except InferenceServerException as exc:
                codes.append(str(exc.status()))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    refused = None
    try:
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            try:
                # 20 ms of budget behind 4 floods of 4 images: predicted to miss it.
                client.infer("det", [image_input(grpcclient, IMAGES[:1])], client_timeout=0.02)
            except InferenceServerException as exc:
                if str(exc.status()) == "StatusCode.UNAVAILABLE":
                    refused = exc
                else:
                    assert str(exc.status()) == "StatusCode.DEADLINE_EXCEEDED", exc  # the client's own clock
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert refused is not None and "overloaded" in refused.message()
    assert not [c for c in codes if "UNKNOWN" in c or "INTERNAL" in c], codes


def video_frames(n: int, tmp_path) -> list[bytes]:
    """A generated video (cv2.VideoWriter), read back and encoded frame by frame as a camera would."""
    path = str(tmp_path / "moving.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(n):
        frame = np.full((240, 320, 3), 40, np.uint8)
        cv2.rectangle(frame, (10 + 2 * i, 60), (90 + 2 * i, 140), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    capture, frames = cv2.VideoCapture(path), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", frame)[1].tobytes())
    assert len(frames) == n
    return frames


def run_stream(address: str, frames: list[bytes], interval_s: float, stream_id: str) -> list:
    """One camera: every frame sent on one tritonclient stream; (id, result or error) as they come."""
    client = grpcclient.InferenceServerClient(address)
    got = []

    def callback(result, error):
        got.append((error, result))

    client.start_stream(callback=callback)
    for i, frame in enumerate(frames):
        client.async_stream_infer("det", [image_input(grpcclient, [frame])], request_id=f"{stream_id}-{i}")
        if interval_s:
            time.sleep(interval_s)
    client.stop_stream()  # waits for the answers still owed
    return got


def test_streams_answer_in_order_and_drop_stale_frames(oip_api, tmp_path):
    frames = video_frames(100, tmp_path)
    # Low rate (3 cameras, a frame every 60 ms each: well under capacity): every frame answered, in order.
    results: dict[str, list] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, run_stream(oip_api["grpc"], frames[:40],
                                                                                     0.06, s)))
               for s in ("cam0", "cam1", "cam2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for stream, got in results.items():
        assert all(error is None for error, _ in got), [e for e, _ in got if e][:3]
        ids = [r.get_response().id for _, r in got]
        assert ids == [f"{stream}-{i}" for i in range(40)], ids
        last = r_params(got[-1][1])
        assert last["frames_answered"] == 40 and last["frames_dropped"] == 0 and last["stream_fps"] > 0
    # All 100 frames at once: far above capacity. Stale frames are dropped, the rest stay in order.
    got = run_stream(oip_api["grpc"], frames, 0.0, "burst")
    assert all(error is None for error, _ in got)
    ids = [int(r.get_response().id.split("-")[1]) for _, r in got]
    assert ids == sorted(ids) and ids[-1] == 99  # in order, and the newest frame is answered
    last = r_params(got[-1][1])
    assert last["frames_dropped"] > 0 and last["frames_dropped"] + last["frames_answered"] == 100


def r_params(result) -> dict:
    params = result.get_response().parameters
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()}


def test_the_stream_cli_runs_a_video_end_to_end(oip_api, tmp_path):
    """`visionray stream VIDEO --model det --grpc HOST:PORT`, a separate process as a user runs it."""
    import json
    import subprocess
    import sys

    video_frames(30, tmp_path)
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "-m", "visionray.cli", "stream", str(tmp_path / "moving.avi"),
                           "--model", "det",
                           "--grpc", oip_api["grpc"], "--rate", "20", "--jsonl", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"frame-{i}" for i in range(30)]  # 20 fps: none stale
    assert all(line["detections"] for line in lines)
    assert "30 frames answered" in proc.stderr and "0 dropped" in proc.stderr
    assert "fps" in proc.stdout
