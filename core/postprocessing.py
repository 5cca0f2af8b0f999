"""Model output -> JSON-ready results: YOLO decode, class-aware NMS, box mapping, top-k."""

from __future__ import annotations

import cv2
import numpy as np

from core.model_spec import ModelSpec
from core.predict_params import PredictParams
from core.preprocessing import ImageMeta


def yolo_candidates(output: np.ndarray, conf: float) -> np.ndarray:
    """Rows of one image's `[4+nc, N]` output whose best class score is above `conf`.

    Runs in the inference stage so that a few KB, not the 2.8 MB raw output, crosses
    to postprocessing. Returns `[k, 4+nc]` float32.
    """
    best = output[4:].max(axis=0)
    keep = np.flatnonzero(best > conf)
    return np.ascontiguousarray(output[:, keep].T)


def decode_yolo(candidates: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[k, 4+nc]` (cx, cy, w, h, scores...) -> xyxy boxes, scores, class ids above `conf`."""
    if candidates.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    class_scores = candidates[:, 4:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(class_ids)), class_ids]
    mask = scores > conf
    xywh, scores, class_ids = candidates[mask, :4], scores[mask], class_ids[mask]
    half = xywh[:, 2:4] / 2
    boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
    return boxes.astype(np.float32), scores.astype(np.float32), class_ids


def nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_det: int
) -> np.ndarray:
    """Class-aware NMS; indices of kept boxes, best score first, at most `max_det`.

    Equal scores are common in quantized models (the bus.jpg persons tie at 0.899). Among
    ties the later anchor wins, as in Ultralytics' torch-sorted NMS; cv2 keeps the earlier
    of equal scores, so the candidates go in reversed.
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rev = boxes[::-1]
    xywh = np.concatenate([rev[:, :2], rev[:, 2:] - rev[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(), scores[::-1].tolist(), class_ids[::-1].tolist(), 0.0, iou
    )
    keep = (n - 1) - np.asarray(keep, dtype=np.int64).reshape(-1)
    # Best first; among ties, the later anchor first.
    keep = keep[np.lexsort((-keep, -scores[keep]))]
    return keep[:max_det]


def map_boxes(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Model-input pixels -> original-image pixels, clipped to the image."""
    out = boxes.copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - meta.pad_left) / meta.ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - meta.pad_top) / meta.ratio
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, meta.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, meta.height)
    return out


def detections(
    candidates: np.ndarray,
    meta: ImageMeta,
    labels: list[str],
    conf: float,
    iou: float,
    max_det: int,
) -> list[dict]:
    boxes, scores, class_ids = decode_yolo(candidates, conf)
    keep = nms(boxes, scores, class_ids, iou, max_det)
    mapped = map_boxes(boxes[keep], meta)
    return [
        {
            "label": labels[c] if c < len(labels) else str(c),
            "class_id": int(c),
            "score": round(float(s), 4),
            "box": [round(float(v), 2) for v in b],
        }
        for b, s, c in zip(mapped, scores[keep], class_ids[keep])
    ]


def looks_like_probabilities(rows: np.ndarray, atol: float = 1e-3) -> bool:
    """True when every row is already a distribution (softmax in the graph)."""
    return bool(
        np.all(rows >= -atol) and np.all(rows <= 1 + atol) and np.allclose(rows.sum(axis=-1), 1, atol=atol * 10)
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int, labels: list[str]) -> list[dict]:
    k = min(k, len(probabilities))
    idx = np.argpartition(-probabilities, k - 1)[:k]
    idx = idx[np.argsort(-probabilities[idx], kind="stable")]
    return [
        {
            "label": labels[i] if i < len(labels) else str(i),
            "class_id": int(i),
            "score": round(float(probabilities[i]), 4),
        }
        for i in idx
    ]


def postprocess(
    spec: ModelSpec, outputs_probabilities: bool, output: np.ndarray, meta: ImageMeta, params: PredictParams
) -> dict:
    """The JSON-ready result for one image (pure: also used by the in-process benchmark)."""
    if spec.task == "detect":
        return {"detections": detections(output, meta, spec.labels, params.conf, params.iou, params.max_det)}
    probs = output if outputs_probabilities else softmax(output.astype(np.float64))
    return {"classes": top_k(probs, params.top_k, spec.labels)}
