"""Quality checks for the demo models against freshly generated ground truth.

The metrics take a *predict function* rather than a model, so one harness measures the
in-process pipeline (tests), a running HTTP service (integration / load tests), or any
other path: the function gets encoded image bytes (PNG by default, exactly what a client
uploads) and returns what the service returns for one image.

    detector:   predict_fn(bytes) -> [{"class_id": int, "score": float, "box": [x1, y1, x2, y2]}, ...]
                (or the service's {"detections": [...]})
    classifier: predict_fn(bytes) -> class id, or a best-first [{"class_id": ...}, ...]
                (or the service's {"classes": [...]})

The held-out images come from `shapes.sample_rng(seed, "test", i)`, a stream the training
script never draws from. numpy and cv2 only: no torch needed to evaluate.

    python -m demo_models.evaluate            # both shipped models, in process
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from demo_models.shapes import (
    CLASS_NAMES,
    NUM_CLASSES,
    make_classification_sample,
    make_detection_sample,
    sample_rng,
)

HERE = Path(__file__).resolve().parent
DETECTOR_PATH = HERE / "detector.onnx"
CLASSIFIER_PATH = HERE / "classifier.onnx"

# The split held-out images are drawn from; training uses "train" (and "val").
EVAL_SPLIT = "test"

PredictFn = Callable[[bytes], Any]


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise RuntimeError(f"cv2 could not encode {ext}")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against `[n, 4]` boxes."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC 2010+ all-point interpolation)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def average_precision_per_class(
    predictions: Sequence[Sequence[dict]],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int = NUM_CLASSES,
    iou_threshold: float = 0.5,
) -> dict[int, float]:
    """VOC-style AP@`iou_threshold` per class over a set of images.

    `predictions[i]` are image i's detections (dicts with class_id, score, box);
    `truths[i]` its (boxes xyxy `[n, 4]`, class ids `[n]`). Detections are ranked by score
    over the whole set; each is a true positive if its best-overlapping same-class ground
    truth reaches the threshold and was not already taken. Classes without ground truth
    are left out.
    """
    aps: dict[int, float] = {}
    for c in range(num_classes):
        gt = {i: boxes[ids == c] for i, (boxes, ids) in enumerate(truths)}
        n_gt = sum(len(b) for b in gt.values())
        if n_gt == 0:
            continue
        taken = {i: np.zeros(len(b), bool) for i, b in gt.items()}
        dets = [(float(d["score"]), i, np.asarray(d["box"], np.float64))
                for i, preds in enumerate(predictions) for d in preds if int(d["class_id"]) == c]
        dets.sort(key=lambda d: -d[0])
        tp = np.zeros(len(dets))
        for k, (_, i, box) in enumerate(dets):
            if len(gt[i]) == 0:
                continue
            ious = box_iou(box, gt[i])
            j = int(ious.argmax())
            if ious[j] >= iou_threshold and not taken[i][j]:
                taken[i][j] = True
                tp[k] = 1
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1 - tp)
        recall = ctp / n_gt
        precision = ctp / np.maximum(ctp + cfp, 1e-9)
        aps[c] = voc_ap(recall, precision)
    return aps


# ---------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------


def _detections_of(result: Any) -> list[dict]:
    if isinstance(result, dict):
        result = result["detections"]
    return list(result)


def _class_of(result: Any) -> int:
    if isinstance(result, dict):
        result = result.get("classes", result.get("class_id"))
    if isinstance(result, (list, tuple)):
        result = result[0]
    if isinstance(result, dict):
        result = result["class_id"]
    return int(result)


def detection_report(predict_fn: PredictFn, n_images: int = 100, seed: int = 1, ext: str = ".png") -> dict:
    """mAP@0.5 and per-class AP of `predict_fn` on `n_images` fresh detection images."""
    predictions, truths = [], []
    t0 = time.perf_counter()
    for i in range(n_images):
        img, boxes, ids = make_detection_sample(sample_rng(seed, EVAL_SPLIT, i, "detect"))
        predictions.append(_detections_of(predict_fn(encode(img, ext))))
        truths.append((boxes, ids))
    aps = average_precision_per_class(predictions, truths)
    return {
        "mAP50": float(np.mean(list(aps.values()))),
        "ap50": {CLASS_NAMES[c]: round(ap, 4) for c, ap in aps.items()},
        "images": n_images,
        "objects": int(sum(len(ids) for _, ids in truths)),
        "detections": int(sum(len(p) for p in predictions)),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def evaluate_detector(predict_fn: PredictFn, n_images: int = 100, seed: int = 1, ext: str = ".png") -> float:
    """mAP@0.5 (mean of per-class VOC AP) on fresh held-out images."""
    return detection_report(predict_fn, n_images, seed, ext)["mAP50"]


def classification_report(predict_fn: PredictFn, n_images: int = 200, seed: int = 1, ext: str = ".png") -> dict:
    """Top-1 accuracy and per-class recall of `predict_fn` on fresh classification images."""
    correct = np.zeros(NUM_CLASSES)
    seen = np.zeros(NUM_CLASSES)
    t0 = time.perf_counter()
    for i in range(n_images):
        img, label = make_classification_sample(sample_rng(seed, EVAL_SPLIT, i, "classify"))
        seen[label] += 1
        correct[label] += _class_of(predict_fn(encode(img, ext))) == label
    return {
        "top1": float(correct.sum() / max(seen.sum(), 1)),
        "recall": {CLASS_NAMES[c]: round(float(correct[c] / seen[c]), 4) for c in range(NUM_CLASSES) if seen[c]},
        "images": n_images,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def evaluate_classifier(predict_fn: PredictFn, n_images: int = 200, seed: int = 1, ext: str = ".png") -> float:
    """Top-1 accuracy on fresh held-out images."""
    return classification_report(predict_fn, n_images, seed, ext)["top1"]


# ---------------------------------------------------------------------------------------
# In-process predict functions: the serving pipeline without Ray
# ---------------------------------------------------------------------------------------


def onnx_predict_fn(path: str | Path = DETECTOR_PATH, intra_op_threads: int = 2) -> PredictFn:
    """bytes -> the service's result for one image, via the same functions the Serve stages call."""
    from core.local_pipeline import LocalPipeline
    from core.onnx_backend import BackendSettings

    return LocalPipeline(path, BackendSettings(intra_op_threads=intra_op_threads))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default=str(DETECTOR_PATH))
    ap.add_argument("--classifier", default=str(CLASSIFIER_PATH))
    ap.add_argument("--det-images", type=int, default=500)
    ap.add_argument("--cls-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1, help="held-out seed (any seed: the test split is never trained on)")
    ap.add_argument("--ext", default=".png", choices=[".png", ".jpg"], help="upload encoding")
    args = ap.parse_args(argv)
    if args.det_images:
        report = detection_report(onnx_predict_fn(args.detector), args.det_images, args.seed, args.ext)
        print("detector  ", report, flush=True)
    if args.cls_images:
        report = classification_report(onnx_predict_fn(args.classifier), args.cls_images, args.seed, args.ext)
        print("classifier", report, flush=True)


if __name__ == "__main__":
    main()
