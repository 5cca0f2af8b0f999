"""The shipped demo models: file layout, metadata, and quality on freshly generated images.

No Ray: the models run through the same in-process functions the Serve stages call
(`spec_from_onnx`, `OnnxModel`, `prepare_image`, `yolo_candidates`, `detections`), so a
preprocessing or decoding change that breaks the models fails here first.
"""

from __future__ import annotations

import ast

import numpy as np
import onnx
import pytest

from core.model_spec import spec_from_onnx
from core.onnx_backend import OnnxModel
from core.preprocessing import prepare_image
from demo_models import evaluate
from demo_models.shapes import (
    CLASS_NAMES,
    make_classification_sample,
    make_detection_sample,
    sample_rng,
)

DETECTOR = evaluate.DETECTOR_PATH
CLASSIFIER = evaluate.CLASSIFIER_PATH
# The quality bar; the shipped models clear it with a margin (see demo_models/README.md).
MIN_MAP50 = 0.90
MIN_TOP1 = 0.95
# A seed the committed numbers in the README were not measured on, so this is a fresh draw.
HELD_OUT_SEED = 2024


def _metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _names() -> str:
    return repr(dict(enumerate(CLASS_NAMES)))


@pytest.mark.parametrize("path", [DETECTOR, CLASSIFIER], ids=["detector", "classifier"])
def test_files_are_small(path):
    assert path.exists(), f"{path} missing: run python -m demo_models.train --seed 0"
    assert path.stat().st_size < 5 * 1024 * 1024


def test_detector_layout_and_metadata():
    meta = _metadata(DETECTOR)
    assert meta["task"] == "detect"
    assert meta["names"] == _names()
    assert ast.literal_eval(meta["imgsz"]) == [320, 320]
    assert int(meta["stride"]) > 0

    spec = spec_from_onnx(DETECTOR)
    assert spec.task == "detect"
    assert spec.input_name == "images" and spec.output_name == "output0"
    assert spec.input_shape[1:] == [3, 320, 320]
    assert spec.output_shape[1] == 4 + len(CLASS_NAMES)
    assert spec.labels == list(CLASS_NAMES)
    pre = spec.preprocessing
    assert (pre.mode, pre.height, pre.width, pre.pad_value, pre.channel_order) == ("letterbox", 320, 320, 114, "rgb")

    model = OnnxModel(DETECTOR, spec)
    assert model.batch_mode == "native" and model.batch_invariant
    img, _, _ = make_detection_sample(sample_rng(0, "samples", 0))
    out = model.run([prepare_image(img, pre)[0]] * 2)
    assert out.shape == (2, 4 + len(CLASS_NAMES), spec.output_shape[2])
    scores = out[:, 4:]
    assert scores.min() >= 0 and scores.max() <= 1, "class scores must already be sigmoided"
    # Boxes are cx, cy, w, h in input pixels.
    assert np.all(out[:, 2:4] >= 0) and np.all(np.abs(out[:, 0:2] - 160) < 320)


def test_classifier_layout_and_metadata():
    meta = _metadata(CLASSIFIER)
    assert meta["task"] == "classify"
    assert meta["names"] == _names()
    assert meta["visionray.preset"] == "imagenet"

    spec = spec_from_onnx(CLASSIFIER)
    assert spec.task == "classify"
    assert spec.input_name == "images"
    assert spec.output_shape[1] == len(CLASS_NAMES)
    assert spec.labels == list(CLASS_NAMES)
    pre = spec.preprocessing
    assert pre.mode == "center_crop" and pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)

    model = OnnxModel(CLASSIFIER, spec)
    assert not model.outputs_probabilities, "the classifier returns logits"
    img, _ = make_classification_sample(sample_rng(0, "samples", 0, "classify"))
    out = model.run([prepare_image(img, pre)[0]])
    assert out.shape == (1, len(CLASS_NAMES))


def test_detector_quality_in_process():
    report = evaluate.detection_report(evaluate.onnx_predict_fn(DETECTOR), n_images=100, seed=HELD_OUT_SEED)
    assert report["mAP50"] >= MIN_MAP50, report


def test_classifier_quality_in_process():
    report = evaluate.classification_report(evaluate.onnx_predict_fn(CLASSIFIER), n_images=200, seed=HELD_OUT_SEED)
    assert report["top1"] >= MIN_TOP1, report


def test_generator_is_deterministic():
    for i in range(3):
        a_img, a_boxes, a_ids = make_detection_sample(sample_rng(7, "test", i))
        b_img, b_boxes, b_ids = make_detection_sample(sample_rng(7, "test", i))
        assert np.array_equal(a_img, b_img) and np.array_equal(a_boxes, b_boxes) and np.array_equal(a_ids, b_ids)
        c_img, c_label = make_classification_sample(sample_rng(7, "test", i, "classify"))
        d_img, d_label = make_classification_sample(sample_rng(7, "test", i, "classify"))
        assert np.array_equal(c_img, d_img) and c_label == d_label
    # Different seeds and splits give different images.
    assert not np.array_equal(make_detection_sample(sample_rng(7, "test", 0))[0],
                              make_detection_sample(sample_rng(8, "test", 0))[0])
    assert not np.array_equal(make_detection_sample(sample_rng(7, "train", 0))[0],
                              make_detection_sample(sample_rng(7, "test", 0))[0])


def test_detection_samples_are_well_formed():
    rng = sample_rng(3, "test", 0)
    for size in [(320, 240), (800, 600), (400, 800)]:
        img, boxes, ids = make_detection_sample(rng, size)
        assert img.shape == (size[1], size[0], 3) and img.dtype == np.uint8
        assert boxes.shape == (len(ids), 4) and boxes.dtype == np.float32
        if len(boxes):
            assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= size[0])
            assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= size[1])
            assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
            assert set(ids.tolist()) <= set(range(len(CLASS_NAMES)))


def test_average_precision_metric():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    truths = [(boxes, np.array([0, 1]))]
    perfect = [[{"class_id": 0, "score": 0.9, "box": [0, 0, 10, 10]},
                {"class_id": 1, "score": 0.8, "box": [21, 21, 40, 40]}]]
    assert evaluate.average_precision_per_class(perfect, truths, num_classes=2) == {0: 1.0, 1: 1.0}
    # A higher-scored false positive halves class 0's precision at full recall; a wrong class misses.
    noisy = [[{"class_id": 0, "score": 0.95, "box": [50, 50, 60, 60]},
              {"class_id": 0, "score": 0.9, "box": [0, 0, 10, 10]},
              {"class_id": 0, "score": 0.8, "box": [20, 20, 40, 40]}]]
    aps = evaluate.average_precision_per_class(noisy, truths, num_classes=2)
    assert aps[0] == pytest.approx(0.5) and aps[1] == 0.0
