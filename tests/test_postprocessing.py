import numpy as np
import pytest

from core.postprocessing import (
    decode_yolo,
    detections,
    looks_like_probabilities,
    map_boxes,
    nms,
    softmax,
    top_k,
    yolo_candidates,
)
from core.preprocessing import ImageMeta


def _yolo_output(rows: list[tuple], nc: int = 3, n: int = 50) -> np.ndarray:
    """[4+nc, n] with the given (cx, cy, w, h, class, score) anchors, rest zero."""
    out = np.zeros((4 + nc, n), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(rows):
        out[:4, i] = (cx, cy, w, h)
        out[4 + c, i] = s
    return out


def test_candidates_keep_only_rows_above_threshold():
    out = _yolo_output([(10, 10, 4, 4, 0, 0.9), (20, 20, 4, 4, 1, 0.2), (30, 30, 4, 4, 2, 0.5)])
    cand = yolo_candidates(out, 0.25)
    assert cand.shape == (2, 7)
    assert cand[:, 0].tolist() == [10, 30]


def test_decode_converts_xywh_to_xyxy_and_picks_best_class():
    cand = yolo_candidates(_yolo_output([(10, 20, 4, 6, 2, 0.8)]), 0.1)
    boxes, scores, classes = decode_yolo(cand, 0.25)
    assert boxes.tolist() == [[8, 17, 12, 23]]
    assert scores.tolist() == pytest.approx([0.8]) and classes.tolist() == [2]


def test_nms_is_class_aware_and_respects_max_det():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    keep = nms(boxes, scores, classes, iou=0.45, max_det=10)
    assert keep.tolist() == [0, 2, 3]  # box 1 suppressed by 0; box 2 is another class
    assert nms(boxes, scores, classes, 0.45, max_det=2).tolist() == [0, 2]
    assert nms(boxes, scores, classes, iou=0.95, max_det=10).tolist() == [0, 1, 2, 3]


def test_nms_tie_goes_to_the_later_anchor():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.5], np.float32), np.array([0, 0]), 0.45, 10)
    assert keep.tolist() == [1]


def test_map_boxes_undoes_letterbox_and_clips():
    meta = ImageMeta(width=100, height=50, ratio=0.5, pad_left=0, pad_top=7)
    boxes = np.array([[10, 17, 20, 27], [-5, 0, 60, 40]], np.float32)
    out = map_boxes(boxes, meta)
    assert out[0].tolist() == [20, 20, 40, 40]
    assert out[1].tolist() == [0, 0, 100, 50]


def test_detections_end_to_end_on_a_synthetic_output():
    out = _yolo_output([(40, 40, 20, 20, 1, 0.9), (41, 40, 20, 20, 1, 0.85), (80, 80, 10, 10, 0, 0.3)])
    meta = ImageMeta(width=200, height=200, ratio=0.5)
    dets = detections(yolo_candidates(out, 0.25), meta, ["a", "b", "c"], conf=0.25, iou=0.45, max_det=300)
    assert [(d["label"], d["score"]) for d in dets] == [("b", 0.9), ("a", 0.3)]
    assert dets[0]["box"] == [60, 60, 100, 100]
    assert detections(yolo_candidates(out, 0.5), meta, ["a", "b", "c"], 0.5, 0.45, 300)[0]["label"] == "b"
    assert detections(np.zeros((0, 7), np.float32), meta, ["a", "b", "c"], 0.25, 0.45, 300) == []


def test_softmax_top_k_and_probability_detection():
    logits = np.array([1.0, 3.0, 2.0])
    p = softmax(logits)
    assert p.sum() == pytest.approx(1) and p.argmax() == 1
    assert [c["label"] for c in top_k(p, 2, ["x", "y", "z"])] == ["y", "z"]
    assert top_k(p, 10, ["x", "y", "z"])[-1]["label"] == "x"
    assert looks_like_probabilities(p[None]) and not looks_like_probabilities(logits[None])
