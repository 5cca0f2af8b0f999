"""Test inputs: paths to the shared real models and small ONNX models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import yolo_reference
from tests.yolo_reference import iou

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
YOLO_QDQ = SHARED_MODELS / "yolov8n_quantized_int8.onnx"
YOLO_DYNAMIC = SHARED_MODELS / "yolov8n_int8.onnx"
BUS_JPG = SHARED_MODELS / "images" / "bus.jpg"
COCO_LABELS = SHARED_MODELS / "labels" / "coco-labels-2014_2017.txt"

needs_shared_models = pytest.mark.skipif(
    not YOLO_QDQ.is_file(), reason=f"real YOLOv8n models not found at {SHARED_MODELS} (outside the workplace)"
)

# Detections on bus.jpg from ../shared/models/README.md, taken on an AMD EPYC (AVX2): (label, score, box).
BUS_TABLE = {
    "yolov8n_quantized_int8.onnx": [
        ("person", 0.899, [51.2, 401.0, 243.6, 905.3]),
        ("person", 0.899, [671.5, 377.7, 808.5, 876.1]),
        ("person", 0.899, [222.0, 405.3, 347.3, 854.2]),
        ("bus", 0.879, [28.2, 231.6, 800.7, 765.1]),
        ("person", 0.299, [0.4, 553.7, 55.8, 865.6]),
    ],
    "yolov8n_int8.onnx": [
        ("person", 0.899, [50.5, 397.8, 243.5, 903.4]),
        ("person", 0.896, [221.4, 407.7, 342.8, 856.2]),
        ("person", 0.890, [671.6, 372.3, 809.8, 879.2]),
        ("bus", 0.822, [34.4, 230.8, 800.0, 766.4]),
        ("person", 0.312, [0.1, 561.7, 55.8, 868.2]),
    ],
}
# Models whose output is the same on every CPU checked (AVX2 EPYC, AVX-512 Xeon without VNNI): the
# dynamically quantized model computes its int8 activations the same way on both. The static QDQ
# model does not (ORT takes other int8 kernels per instruction set; README of ../shared/models).
CPU_INDEPENDENT = {"yolov8n_int8.onnx"}


def _match_all(detections: list[dict], expected: list[tuple[str, float, list[float]]], close) -> None:
    """Every expected (label, score, box) has its own detection for which close(d, score, box) holds."""
    assert len(detections) == len(expected), f"{len(detections)} detections, expected {len(expected)}: {detections}"
    unmatched = list(detections)
    for label, score, box in expected:
        match = next((d for d in unmatched if d["label"] == label and close(d, score, box)), None)
        assert match is not None, f"no detection matches {label} {score} {box} in {detections}"
        unmatched.remove(match)


def _exact(d: dict, score: float, box: list[float]) -> bool:
    return abs(d["score"] - score) <= 0.005 and max(abs(a - b) for a, b in zip(d["box"], box)) <= 1.0


def _portable(d: dict, score: float, box: list[float]) -> bool:
    return abs(d["score"] - score) <= 0.06 and iou(d["box"], box) >= 0.85


def assert_same_detections(detections: list[dict], reference: list[dict]) -> None:
    """The same detections as `reference` (computed here, same machine), within 1 px and 0.005: what
    another batch size or thread count may move, and far less than a bug in letterbox or NMS does."""
    _match_all(detections, [(d["label"], d["score"], d["box"]) for d in reference], _exact)


def assert_bus_detections(detections: list[dict], model: Path) -> None:
    """The served or computed detections of `model` on bus.jpg are right, on whatever CPU runs the test.

    Exact, same machine: equal to a plain onnxruntime reference computed here (tests/yolo_reference.py)
    within 1 px and 0.005 -- this is what catches a bug in preprocessing, batching or NMS.
    Portable, any machine: the README's table within what a change of CPU moves: same classes and
    count, IoU >= 0.85, score within 0.06. Measured between AVX2 and AVX-512 (no VNNI) for the QDQ
    model: IoU >= 0.89, scores within 0.047; a wrong letterbox, box mapping or class shifts far more.
    Models in CPU_INDEPENDENT must also equal the table exactly.
    """
    reference = yolo_reference.detections(model, BUS_JPG)
    _match_all(detections, [(d["label"], d["score"], d["box"]) for d in reference], _exact)
    table = BUS_TABLE[model.name]
    _match_all(detections, table, _exact if model.name in CPU_INDEPENDENT else _portable)


COLOR_CLASSES = ["red", "green", "blue"]


def color_classifier(path: Path, size: int = 32, softmax: bool = False, fixed_batch: bool = False) -> Path:
    """A classifier whose answer is known: the dominant colour channel wins.

    Global average pool over RGB, then identity weights x 10: class i's logit is the mean
    of normalised channel i. Exported with a symbolic or fixed batch dimension.
    """
    batch = 1 if fixed_batch else "N"
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])
    w = numpy_helper.from_array((np.eye(3) * 10).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["raw" if softmax else "logits"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["raw"], ["logits"], axis=1))
    graph = helper.make_graph(nodes, "color_classifier", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"task": "classify", "names": str(dict(enumerate(COLOR_CLASSES)))}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def solid_image(bgr: tuple[int, int, int], width: int = 120, height: int = 80) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = bgr
    return img
