"""OIP tensors without Ray: the BYTES layout, inputs to images, results to tensors, the REST body."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from core.errors import DataPlaneError
from serve.protocols.oip import (
    RequestedOutput,
    Tensor,
    deserialize_bytes,
    images_from_inputs,
    output_tensors,
    select_outputs,
    serialize_bytes,
    tensor_from_json,
    tensor_from_raw,
)
from serve.protocols.oip_rest import parse_infer_request

JPEG_HEAD = b"\xff\xd8\xff\xe0fake"


def test_bytes_tensors_round_trip_and_truncation_is_an_invalid_input():
    items = [b"", b"abc", JPEG_HEAD * 100]
    assert deserialize_bytes(serialize_bytes(items)) == items
    with pytest.raises(DataPlaneError) as err:
        deserialize_bytes(serialize_bytes(items)[:-1])
    assert err.value.status == 400 and err.value.code == "invalid_input"


def test_raw_inputs_must_match_their_shape():
    t = tensor_from_raw("image", "BYTES", [2], serialize_bytes([b"a", b"b"]))
    assert list(t.data) == [b"a", b"b"]
    with pytest.raises(DataPlaneError, match="needs 3 elements"):
        tensor_from_raw("image", "BYTES", [3], serialize_bytes([b"a", b"b"]))
    pixels = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    t = tensor_from_raw("image", "UINT8", [2, 4, 5, 3], pixels.tobytes())
    assert np.array_equal(t.data, pixels)
    with pytest.raises(DataPlaneError, match="needs 120 bytes"):
        tensor_from_raw("image", "UINT8", [2, 4, 5, 3], pixels.tobytes()[:-1])
    with pytest.raises(DataPlaneError, match="unknown datatype"):
        tensor_from_raw("image", "JPEG", [1], b"x")


def test_json_bytes_are_base64_images():
    t = tensor_from_json("image", "BYTES", [1], [base64.b64encode(JPEG_HEAD).decode()])
    assert images_from_inputs([t]) == [JPEG_HEAD]
    with pytest.raises(DataPlaneError, match="base64"):
        tensor_from_json("image", "BYTES", [1], ["not an image"])


def test_images_from_inputs_takes_bytes_or_rgb_pixels_and_nothing_else():
    pixels = np.zeros((3, 8, 9, 3), np.uint8)
    assert len(images_from_inputs([Tensor("image", "UINT8", [3, 8, 9, 3], pixels)])) == 3
    for bad in ([Tensor("image", "FP32", [1], np.zeros(1, np.float32))],
                [Tensor("image", "UINT8", [1, 8, 9, 4], np.zeros((1, 8, 9, 4), np.uint8))],
                [Tensor("a", "BYTES", [0], np.empty(0, object))],
                []):
        with pytest.raises(DataPlaneError) as err:
            images_from_inputs(bad)
        assert err.value.status == 400


def detection(label, cid, score, box):
    return {"label": label, "class_id": cid, "score": score, "box": box}


def test_detections_become_padded_tensors_with_counts():
    results = [
        {"image": {"width": 640, "height": 480},
         "detections": [detection("a", 0, 0.9, [1, 2, 3, 4]), detection("b", 1, 0.5, [5, 6, 7, 8])]},
        {"image": {"width": 10, "height": 20}, "detections": []},
    ]
    out = {t.name: t for t in output_tensors("detect", results)}
    assert out["boxes"].shape == [2, 2, 4] and out["boxes"].data[0, 1].tolist() == [5, 6, 7, 8]
    assert out["num_detections"].data.tolist() == [2, 0]
    assert out["classes"].data.tolist() == [[0, 1], [-1, -1]]
    assert out["labels"].data.tolist() == [[b"a", b"b"], [b"", b""]]
    assert out["scores"].data[1].tolist() == [0.0, 0.0]
    assert out["image_size"].data.tolist() == [[640, 480], [10, 20]]


def test_classification_extension_and_output_selection():
    results = [{"image": {"width": 1, "height": 1},
                "classes": [{"label": "cat", "class_id": 3, "score": 0.75}, {"label": "dog", "class_id": 1,
                                                                              "score": 0.25}]}]
    tensors = output_tensors("classify", results)
    [cls] = select_outputs(tensors, [RequestedOutput("scores", classification=1)])
    assert cls.datatype == "BYTES" and cls.shape == [1, 1] and cls.data[0, 0] == b"0.750000:3:cat"
    picked = select_outputs(tensors, [RequestedOutput("labels"), RequestedOutput("scores")])
    assert [t.name for t in picked] == ["labels", "scores"]
    with pytest.raises(DataPlaneError, match="unknown output"):
        select_outputs(tensors, [RequestedOutput("boxes")])


def test_rest_body_splits_json_and_binary_at_the_header_length():
    images = [JPEG_HEAD, JPEG_HEAD + b"2"]
    raw = serialize_bytes(images)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "boxes", "parameters": {"binary_data": True}}],
                       "parameters": {"conf": 0.5}}).encode()
    req = parse_infer_request("m", None, head + raw, str(len(head)))
    assert images_from_inputs(req.inputs) == images
    assert req.outputs[0].binary and req.parameters["conf"] == 0.5
    for body, length in ((head + raw, str(len(head) + len(raw) + 1)), (head + raw[:-1], str(len(head))),
                         (b"[1]", None), (head, "x")):
        with pytest.raises(DataPlaneError) as err:
            parse_infer_request("m", None, body, length)
        assert err.value.status == 400
