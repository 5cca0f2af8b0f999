"""The Open Inference Protocol over the real request path, in this process, without Ray.

One in-process replica (tests/in_process_replica.py) serves OIP REST on the real HTTP server and
OIP gRPC through the real servicer on a grpc.aio server, both on free loopback ports. The clients
are tritonclient's (HTTP and gRPC) and, for what they hide (error bodies, trailing metadata), plain
requests and a stub of the generated service. Every tensor equals core.local_pipeline.LocalPipeline
run here on the same image; every error is the protocol's status with the platform's error code
and a request id.
"""

from __future__ import annotations

import base64
import json

import cv2
import grpc
import numpy as np
import pytest
import requests

from demo_models import evaluate
from model_registry.source import file_sha256
from serve.protocols import inference_pb2 as pb
from serve.protocols import inference_pb2_grpc as pb_grpc
from serve.protocols.oip import serialize_bytes
from tests.in_process_replica import Reference, start_replica

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

SAMPLES = evaluate.HERE / "samples"
DETECTOR, CLASSIFIER = evaluate.DETECTOR_PATH, evaluate.CLASSIFIER_PATH
IMAGES = [(SAMPLES / name).read_bytes() for name in ("shapes_640x480.jpg", "shapes_480x640.jpg",
                                                     "shapes_720x405.jpg")]
STAR = (SAMPLES / "star.jpg").read_bytes()
DETECT_OUTPUTS = ["boxes", "scores", "classes", "labels", "num_detections", "image_size"]


@pytest.fixture(scope="module")
def replica():
    r = start_replica([{"name": "det", "path": str(DETECTOR)}, {"name": "clf", "path": str(CLASSIFIER)}])
    yield r
    r.stop()


@pytest.fixture(scope="module")
def reference(replica):
    return Reference(replica.cfg)


def client(replica, transport: str):
    if transport == "http":
        return httpclient.InferenceServerClient(replica.base.removeprefix("http://"))
    return grpcclient.InferenceServerClient(replica.grpc_address)


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


def size_of(data: bytes) -> list[int]:
    height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    return [width, height]


def assert_detections_equal(result, images: list[bytes], expected: list[dict]) -> None:
    """The OIP tensors of a detection request carry exactly the expected detections, image by image,
    and padding (score 0, class -1, label "") past each image's count."""
    boxes, scores, classes = result.as_numpy("boxes"), result.as_numpy("scores"), result.as_numpy("classes")
    labels, counts, sizes = result.as_numpy("labels"), result.as_numpy("num_detections"), result.as_numpy("image_size")
    assert counts.tolist() == [len(e["detections"]) for e in expected]
    for i, (data, answer) in enumerate(zip(images, expected)):
        dets, n = answer["detections"], len(answer["detections"])
        assert n > 0, "an image with nothing detected would prove little"
        assert np.array_equal(boxes[i, :n], np.array([d["box"] for d in dets], np.float32))
        assert np.array_equal(scores[i, :n], np.array([d["score"] for d in dets], np.float32))
        assert classes[i, :n].tolist() == [d["class_id"] for d in dets]
        assert [v.decode() if isinstance(v, bytes) else v for v in labels[i, :n]] == [d["label"] for d in dets]
        assert not scores[i, n:].any() and (classes[i, n:] == -1).all()
        assert sizes[i].tolist() == size_of(data)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_metadata_and_readiness(replica, transport):
    c = client(replica, transport)
    version = file_sha256(DETECTOR)[:12]
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("det") and c.is_model_ready("clf") and c.is_model_ready("det", version)
    assert not c.is_model_ready("det", "999")  # no alias serves that version
    meta = c.get_model_metadata("det")
    if transport == "grpc":
        meta = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
                "inputs": [{"name": t.name, "datatype": t.datatype} for t in meta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype} for t in meta.outputs]}
    assert (meta["name"], meta["versions"], meta["platform"]) == ("det", [version], "onnxruntime_onnx")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("image", "BYTES")]
    assert [t["name"] for t in meta["outputs"]] == DETECT_OUTPUTS
    if transport == "http":  # the status is the answer: 404 for a model that is not there
        assert not c.is_model_ready("nope")
        r = requests.get(f"{replica.base}/v2/models/nope/ready", timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "model_not_found"
        assert requests.get(f"{replica.base}/v2/health/live", timeout=30).json() == {"live": True}
    else:
        with pytest.raises(InferenceServerException) as err:
            c.is_model_ready("nope")
        assert str(err.value.status()) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("transport, binary", [("http", True), ("http", False), ("grpc", True)],
                         ids=["http-binary", "http-json", "grpc"])
def test_one_image_and_a_batch_equal_the_local_pipeline(replica, reference, transport, binary):
    module = httpclient if transport == "http" else grpcclient
    c = client(replica, transport)
    outputs = None
    if module is httpclient:
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in DETECT_OUTPUTS]
    expected = [reference(DETECTOR, data) for data in IMAGES]
    one = c.infer("det", [image_input(module, IMAGES[:1], binary)], outputs=outputs)
    assert_detections_equal(one, IMAGES[:1], expected[:1])
    batch = c.infer("det", [image_input(module, IMAGES, binary)], outputs=outputs, request_id="batch-1")
    assert_detections_equal(batch, IMAGES, expected)
    response = batch.get_response()
    if transport == "http":
        assert (response["model_version"], response["id"]) == (file_sha256(DETECTOR)[:12], "batch-1")
        assert response["parameters"]["alias"] == "production"
    else:
        assert (response.model_version, response.id) == (file_sha256(DETECTOR)[:12], "batch-1")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_raw_rgb_pixels_equal_the_encoded_image(replica, reference, transport):
    module = httpclient if transport == "http" else grpcclient
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(IMAGES[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    inp = module.InferInput("image", [1, *pixels.shape], "UINT8")
    inp.set_data_from_numpy(pixels[None])
    result = client(replica, transport).infer("det", [inp])
    assert_detections_equal(result, IMAGES[:1], [reference(DETECTOR, IMAGES[0])])


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_parameters_and_the_classification_extension(replica, reference, transport):
    module = httpclient if transport == "http" else grpcclient
    c = client(replica, transport)
    strict = c.infer("det", [image_input(module, IMAGES[:1])], parameters={"conf": 0.985, "max_det": 3})
    expected = reference(DETECTOR, IMAGES[0], conf=0.985, max_det=3)
    assert_detections_equal(strict, IMAGES[:1], [expected])
    assert len(expected["detections"]) < len(reference(DETECTOR, IMAGES[0])["detections"])
    top2 = reference(CLASSIFIER, STAR, top_k=2)["classes"]
    out = module.InferRequestedOutput("scores", class_count=2)
    result = c.infer("clf", [image_input(module, [STAR])], outputs=[out], parameters={"top_k": 2})
    got = [v.decode().split(":", 2) for v in result.as_numpy("scores")[0]]
    assert [(float(s), int(k), label) for s, k, label in got] == \
        [(pytest.approx(c["score"], abs=1e-6), c["class_id"], c["label"]) for c in top2]


def rest_infer(replica, model: str, doc: dict | bytes, version: str | None = None,
               headers: dict | None = None) -> requests.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return requests.post(replica.base + path, data=body, headers=headers or {}, timeout=30)


def json_image_request(images: list[bytes], **parameters) -> dict:
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                       "data": [base64.b64encode(i).decode() for i in images]}]}
    if parameters:
        doc["parameters"] = parameters
    return doc


@pytest.mark.parametrize("model, version, doc, headers, status, code", [
    ("det", None, b"{not json", {}, 400, "invalid_input"),
    ("det", None, {"inputs": "image"}, {}, 400, "invalid_input"),
    ("det", None, json_image_request([b"not an image"]), {}, 400, "invalid_image"),
    ("det", None, json_image_request(IMAGES[:1], conf=2), {}, 422, "invalid_parameter"),
    ("det", None, {**json_image_request(IMAGES[:1]), "outputs": [{"name": "nope"}]}, {}, 400, "invalid_input"),
    ("det", None, json_image_request(IMAGES[:1]), {"content-encoding": "gzip"}, 415, "unsupported_media_type"),
    ("nope", None, json_image_request(IMAGES[:1]), {}, 404, "model_not_found"),
    ("det", "7", json_image_request(IMAGES[:1]), {}, 404, "version_not_served"),
], ids=["not-json", "inputs-not-a-list", "not-an-image", "conf-2", "unknown-output", "gzip", "unknown-model",
        "unknown-version"])
def test_rest_errors_carry_the_documented_body(replica, model, version, doc, headers, status, code):
    r = rest_infer(replica, model, doc, version, headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_rest_unknown_paths_and_methods_are_oip_errors(replica):
    r = requests.get(f"{replica.base}/v2/nothing/here", timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "not_found" and r.json()["request_id"]
    r = requests.get(f"{replica.base}/v2/models/det/infer", timeout=30)
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed" and "POST" in r.headers["allow"]


def grpc_request(model: str, images: list[bytes], version: str = "", **parameters) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    msg.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
    msg.raw_input_contents.append(serialize_bytes(images))
    for key, value in parameters.items():
        if isinstance(value, int):
            msg.parameters[key].int64_param = value
        else:
            msg.parameters[key].double_param = value
    return msg


@pytest.mark.parametrize("request_msg, status, code", [
    (grpc_request("nope", IMAGES[:1]), grpc.StatusCode.NOT_FOUND, "model_not_found"),
    (grpc_request("det", IMAGES[:1], version="7"), grpc.StatusCode.NOT_FOUND, "version_not_served"),
    (grpc_request("det", [b"not an image"]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    (grpc_request("det", IMAGES[:1], conf=2.0), grpc.StatusCode.INVALID_ARGUMENT, "invalid_parameter"),
    (grpc_request("det", IMAGES[:1], max_det=0), grpc.StatusCode.INVALID_ARGUMENT, "invalid_parameter"),
    (pb.ModelInferRequest(model_name="det"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
], ids=["unknown-model", "unknown-version", "not-an-image", "conf-2", "max_det-0", "no-input"])
def test_grpc_errors_are_status_codes_with_the_error_code_and_request_id(replica, request_msg, status, code):
    with grpc.insecure_channel(replica.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request_msg, metadata=(("x-request-id", "grpc-err-1"),), timeout=30)
    assert err.value.code() == status, err.value
    trailers = dict(err.value.trailing_metadata())
    assert trailers["visionray-error-code"] == code and trailers["x-request-id"] == "grpc-err-1"
    assert err.value.details().startswith(f"{code}: ")


def test_grpc_answers_carry_the_request_id(replica, reference):
    with grpc.insecure_channel(replica.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(grpc_request("det", IMAGES[:1]), timeout=30,
                                                 metadata=(("x-request-id", "grpc-ok-1"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-ok-1"
    counts = np.frombuffer(answer.raw_output_contents[[o.name for o in answer.outputs].index("num_detections")],
                           np.int32)
    assert counts.tolist() == [len(reference(DETECTOR, IMAGES[0])["detections"])]


def test_a_camera_stream_answers_in_order_and_the_newest_frame_wins(replica, reference):
    """30 frames sent at once on one stream: answered in the order sent, stale frames dropped, and
    the newest frame always answered (with its own image's detections)."""
    frames = [IMAGES[i % len(IMAGES)] for i in range(30)]
    c = grpcclient.InferenceServerClient(replica.grpc_address)
    got = []
    c.start_stream(callback=lambda result, error: got.append((error, result)))
    for i, frame in enumerate(frames):
        c.async_stream_infer("det", [image_input(grpcclient, [frame])], request_id=f"cam-{i}")
    c.stop_stream()  # waits for the answers still owed
    assert got and all(error is None for error, _ in got), [e for e, _ in got if e][:3]
    ids = [int(result.get_response().id.split("-")[1]) for _, result in got]
    assert ids == sorted(ids) and ids[-1] == len(frames) - 1
    params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in got[-1][1].get_response().parameters.items()}
    assert params["frames_answered"] == len(ids) and params["frames_answered"] + params["frames_dropped"] == 30
    assert_detections_equal(got[-1][1], [frames[-1]], [reference(DETECTOR, frames[-1])])
