"""A plain YOLOv8 reference, written apart from `deployments/` so that the tests compare the
pipeline with something it does not share code with.

A bare `onnxruntime.InferenceSession` (default threads and options) on the preprocessing and
decoding documented in ../shared/models/README.md (Ultralytics-equivalent), with Ultralytics'
NMS tie-breaking (among equal scores the later anchor is kept). int8 models give slightly
different outputs on different CPU instruction sets, so this is computed on the machine that
runs the test, never stored.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

SIZE = 640


def letterbox(bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
    h, w = bgr.shape[:2]
    r = min(SIZE / h, SIZE / w)
    new_w, new_h = round(w * r), round(h * r)
    dw, dh = (SIZE - new_w) / 2, (SIZE - new_h) / 2
    if (new_w, new_h) != (w, h):
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded, r, (left, top)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    # Score descending; among equal scores the later anchor first (as torchvision's sort in Ultralytics).
    order = list(np.lexsort((-np.arange(len(scores)), -scores)))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if iou(boxes[i], boxes[j]) <= iou_threshold]
    return keep


@functools.lru_cache(maxsize=8)
def detections(model: Path, image: Path, conf: float = 0.25, iou_threshold: float = 0.45) -> list[dict]:
    """[{label, class_id, score, box}] in original-image pixels, as the README's tables list them."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
    bgr = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    padded, r, (left, top) = letterbox(bgr)
    x = padded[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0].T  # [8400, 4 + classes]
    cls_scores = out[:, 4:]
    class_ids = cls_scores.argmax(1)
    scores = cls_scores.max(1)
    keep = scores > conf
    xywh, class_ids, scores = out[keep, :4], class_ids[keep], scores[keep]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    result = []
    for c in np.unique(class_ids):  # class-aware NMS
        idx = np.flatnonzero(class_ids == c)
        for k in nms(boxes[idx], scores[idx], iou_threshold):
            i = idx[k]
            box = (boxes[i] - [left, top, left, top]) / r
            box = np.clip(box, 0, [bgr.shape[1], bgr.shape[0]] * 2)
            result.append({"label": names[int(c)], "class_id": int(c), "score": float(scores[i]),
                           "box": [float(v) for v in box]})
    return sorted(result, key=lambda d: -d["score"])
