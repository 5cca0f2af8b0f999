"""Test inputs: paths to the shared real models and small ONNX models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
YOLO_QDQ = SHARED_MODELS / "yolov8n_quantized_int8.onnx"
YOLO_DYNAMIC = SHARED_MODELS / "yolov8n_int8.onnx"
BUS_JPG = SHARED_MODELS / "images" / "bus.jpg"
COCO_LABELS = SHARED_MODELS / "labels" / "coco-labels-2014_2017.txt"

needs_shared_models = pytest.mark.skipif(
    not YOLO_QDQ.is_file(), reason=f"real YOLOv8n models not found at {SHARED_MODELS} (outside the workplace)"
)

# Expected detections on bus.jpg from ../shared/models/README.md: (label, score, box).
BUS_EXPECTED = {
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


def assert_bus_detections(detections: list[dict], model_file: str) -> None:
    """Same classes, boxes within 1 px, scores within 0.005 (order-free: ties exist)."""
    expected = BUS_EXPECTED[model_file]
    assert len(detections) == len(expected), detections
    unmatched = list(detections)
    for label, score, box in expected:
        match = next(
            (d for d in unmatched
             if d["label"] == label and abs(d["score"] - score) <= 0.005
             and max(abs(a - b) for a, b in zip(d["box"], box)) <= 1.0),
            None,
        )
        assert match is not None, f"no detection matches {label} {score} {box} in {detections}"
        unmatched.remove(match)


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
