"""Admission over the real request path, in this process, without Ray, driven by events.

The in-process replica's stages sit behind a gate (tests/in_process_replica.py `GatedStages`):
a call that reaches them waits there until the test opens it, and the test knows when one is
held. With work held in front of the model, a request whose budget the measured queue cannot
meet is refused at once by every protocol (503 `overloaded` with Retry-After, gRPC UNAVAILABLE),
while the held work is answered once the gate opens. No timing is guessed: the app's default
budget is 1 ms, so any measured time per image with 16 images ahead misses it.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json

import grpc
import pytest
import requests

from demo_models import evaluate
from serve.protocols import inference_pb2 as pb
from serve.protocols import inference_pb2_grpc as pb_grpc
from serve.protocols.oip import serialize_bytes
from tests.in_process_replica import Reference, start_replica

DETECTOR = evaluate.DETECTOR_PATH
SHAPES = (evaluate.HERE / "samples" / "shapes_640x480.jpg").read_bytes()
BUDGET_S = 0.001  # the app's default budget: only requests that say otherwise can wait for anything
LONG = {"x-request-timeout-ms": "60000"}
HELD_IMAGES = 16


@pytest.fixture
def gated():
    r = start_replica([{"name": "det", "path": str(DETECTOR)}], gated=True, latency_budget_s=BUDGET_S,
                      max_in_flight=1)
    yield r
    r.loop.call(r.gate.open)  # nothing stays held past the test
    r.stop()


def v1_predict(base: str, headers: dict | None = None) -> requests.Response:
    return requests.post(f"{base}/v1/models/det/predict", data=SHAPES, timeout=60,
                         headers={"content-type": "image/jpeg", **(headers or {})})


def rest_infer(base: str, images: list[bytes], headers: dict | None = None) -> requests.Response:
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                       "data": [base64.b64encode(i).decode() for i in images]}]}
    return requests.post(f"{base}/v2/models/det/infer", data=json.dumps(doc), headers=headers or {}, timeout=60)


def test_a_request_predicted_to_miss_its_budget_is_refused_at_once_on_every_protocol(gated):
    base = gated.base
    assert v1_predict(base, LONG).status_code == 200  # the ingress measures the model's time per image
    gated.loop.call(gated.gate.close)
    with cf.ThreadPoolExecutor(1) as pool:
        held = pool.submit(rest_infer, base, [SHAPES] * HELD_IMAGES, LONG)
        assert gated.gate.entered.wait(60), "the held request never reached the stages"
        # 16 images ahead of any new one, the model held: each answer below comes while it still is.
        r = v1_predict(base)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded" and r.json()["request_id"] == r.headers["x-request-id"]
        assert int(r.headers["retry-after"]) >= 1
        r = rest_infer(base, [SHAPES])
        assert r.status_code == 503 and r.json()["code"] == "overloaded", r.text
        assert int(r.headers["retry-after"]) >= 1 and r.json()["request_id"] == r.headers["x-request-id"]
        msg = pb.ModelInferRequest(model_name="det")
        msg.inputs.add(name="image", datatype="BYTES", shape=[1])
        msg.raw_input_contents.append(serialize_bytes([SHAPES]))
        with grpc.insecure_channel(gated.grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as err:  # no gRPC deadline: the app's budget
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(msg, metadata=(("x-request-id", "probe"),))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        trailers = dict(err.value.trailing_metadata())
        assert trailers["visionray-error-code"] == "overloaded" and trailers["x-request-id"] == "probe"
        assert int(trailers["retry-after"]) >= 1
        assert not held.done()
        gated.loop.call(gated.gate.open)
        answer = held.result(60)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    expected = Reference(gated.cfg)(DETECTOR, SHAPES)["detections"]
    assert outputs["num_detections"] == [len(expected)] * HELD_IMAGES
    assert outputs["scores"][:len(expected)] == [d["score"] for d in expected]
    # The refused requests hold no place: with the queue drained, a request with time to wait is served.
    assert v1_predict(base, LONG).status_code == 200
