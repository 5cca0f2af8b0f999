"""Review items out in the formats labelling tools import, the model's predictions as
pre-annotations (pure: each writer takes items and paths; tests/test_review.py parses them back).

- `yolo` (Ultralytics, CVAT "YOLO 1.1"): images/, labels/<stem>.txt with one
  "class cx cy w h" line per box (normalised), classes.txt and data.yaml;
- `coco` (CVAT, Label Studio, most tools): images/ and annotations.json (bbox = x, y, w, h in pixels;
  every annotation carries its `score`);
- `label-studio`: images/ and tasks.json, one task per image with the prediction as Label Studio's
  `predictions` (rectanglelabels in percent, or choices for a classifier).
Classifier items export to coco (one image-level category per image, no bbox) and label-studio.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FORMATS = ("yolo", "coco", "label-studio")


def _labels(items) -> list[str]:
    """Every label seen, ordered by class id (gaps named by their id)."""
    by_id = {}
    for item in items:
        for p in item.prediction:
            by_id.setdefault(p["class_id"], p["label"])
    if not by_id:
        return []
    return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]


def _copy_images(items, image_path, out: Path) -> dict[str, str]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = {}
    for item in items:
        src = image_path(item)
        dst = out / "images" / src.name
        shutil.copyfile(src, dst)
        names[item.id] = src.name
    return names


def export_yolo(items, image_path, out: Path) -> Path:
    detect = [i for i in items if i.task == "detect"]
    if len(detect) != len(items):
        raise ValueError("YOLO format holds boxes: export classifier items as coco or label-studio")
    names = _copy_images(detect, image_path, out)
    labels = _labels(detect)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for item in detect:
        lines = []
        for p in item.prediction:
            x1, y1, x2, y2 = p["box"]
            cx, cy = (x1 + x2) / 2 / item.width, (y1 + y2) / 2 / item.height
            w, h = (x2 - x1) / item.width, (y2 - y1) / item.height
            lines.append(f"{p['class_id']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (out / "labels" / (Path(names[item.id]).stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
    (out / "classes.txt").write_text("\n".join(labels) + "\n")
    (out / "data.yaml").write_text(f"path: .\ntrain: images\nval: images\nnames: {json.dumps(labels)}\n")
    return out


def export_coco(items, image_path, out: Path) -> Path:
    names = _copy_images(items, image_path, out)
    labels = _labels(items)
    images, annotations = [], []
    for n, item in enumerate(items, start=1):
        images.append({"id": n, "file_name": f"images/{names[item.id]}", "width": item.width, "height": item.height,
                       "visionray": {"id": item.id, "model": item.model, "version": item.version,
                                     "request_id": item.request_id, "reason": item.reason, "status": item.status}})
        for p in item.prediction:
            ann = {"id": len(annotations) + 1, "image_id": n, "category_id": p["class_id"], "score": p["score"]}
            if "box" in p:
                x1, y1, x2, y2 = p["box"]
                ann.update(bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0)
            annotations.append(ann)
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i, "name": name} for i, name in enumerate(labels)]}
    (out / "annotations.json").write_text(json.dumps(doc, indent=1))
    return out


def export_label_studio(items, image_path, out: Path) -> Path:
    names = _copy_images(items, image_path, out)
    tasks = []
    for item in items:
        results = []
        for p in item.prediction:
            if "box" in p:
                x1, y1, x2, y2 = p["box"]
                results.append({"type": "rectanglelabels", "from_name": "label", "to_name": "image",
                                "original_width": item.width, "original_height": item.height, "score": p["score"],
                                "value": {"x": 100 * x1 / item.width, "y": 100 * y1 / item.height,
                                          "width": 100 * (x2 - x1) / item.width,
                                          "height": 100 * (y2 - y1) / item.height,
                                          "rotation": 0, "rectanglelabels": [p["label"]]}})
            else:
                results.append({"type": "choices", "from_name": "label", "to_name": "image", "score": p["score"],
                                "value": {"choices": [p["label"]]}})
                break  # the top class is the pre-annotation
        top = max((p["score"] for p in item.prediction), default=0.0)
        tasks.append({"data": {"image": f"images/{names[item.id]}", "visionray_id": item.id,
                               "model": item.model, "reason": item.reason},
                      "predictions": [{"model_version": f"{item.model}:{item.version}", "score": top,
                                       "result": results}]})
    (out / "tasks.json").write_text(json.dumps(tasks, indent=1))
    return out


def export(fmt: str, items, image_path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    writer = {"yolo": export_yolo, "coco": export_coco, "label-studio": export_label_studio}.get(fmt)
    if writer is None:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return writer(list(items), image_path, out)
