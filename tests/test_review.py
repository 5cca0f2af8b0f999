"""The review queue without Ray: capture rules, a bounded store, exports that parse back to the
same boxes, and a store that cannot write (a full disk) costing nothing but the capture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from review.capture import Capture, capture_reason
from review.config import CaptureRule, ReviewConfig
from review.export import export
from review.store import LocalReviewStore, StoreFull

SAMPLE = Path(__file__).resolve().parents[1] / "demo_models" / "samples" / "shapes_640x480.jpg"


def det(score, box=(10.0, 20.0, 110.0, 220.0), cid=1, label="circle"):
    return {"label": label, "class_id": cid, "score": score, "box": list(box)}


def item(prediction, model="det", task="detect", **extra):
    return {"model": model, "version": "3", "alias": "production", "task": task, "request_id": "r1",
            "reason": "low_top_score", "width": 640, "height": 480, "prediction": prediction, **extra}


def test_capture_rules():
    low = CaptureRule(top_score_below=0.5)
    assert capture_reason(low, "detect", [det(0.3)]) == "low_top_score"
    assert capture_reason(low, "detect", []) == "low_top_score"  # nothing found: the costliest doubt
    assert capture_reason(low, "detect", [det(0.3), det(0.9)]) is None
    band = CaptureRule(score_band=(0.3, 0.6))
    assert capture_reason(band, "detect", [det(0.95), det(0.45)]) == "score_band"
    assert capture_reason(band, "detect", [det(0.95), det(0.6)]) is None  # high end open
    sample = CaptureRule(sample_rate=0.1)
    assert capture_reason(sample, "classify", [det(0.99)], rand=lambda: 0.05) == "sample"
    assert capture_reason(sample, "classify", [det(0.99)], rand=lambda: 0.5) is None
    assert capture_reason(CaptureRule(), "detect", [det(0.01)]) is None  # a rule with nothing set: off
    cfg = ReviewConfig(rules={"*": {"sample_rate": 1.0}, "det": {"top_score_below": 0.2}})
    assert cfg.rule_for("det").top_score_below == 0.2 and cfg.rule_for("other").sample_rate == 1.0
    with pytest.raises(ValueError):
        CaptureRule(score_band=(0.6, 0.3))


def test_the_store_stays_bounded_dropping_the_oldest(tmp_path):
    store = LocalReviewStore(tmp_path, max_items=3, max_bytes=10_000)
    ids = [store.add(b"\xff\xd8\xff" + bytes(100), "jpg", item([det(0.1 * i)])) for i in range(5)]
    kept = [i.id for i in store.list()]
    assert sorted(kept) == sorted(ids[2:]) and store.stats()["items"] == 3
    assert len(list((tmp_path / "images").iterdir())) == 3  # the images went with their rows
    store.add(b"\xff\xd8\xff" + bytes(9_000), "jpg", item([]))  # over the byte bound: older ones go
    assert store.stats()["bytes"] <= 10_000


def test_a_paused_store_refuses_when_full_and_keeps_what_it_has(tmp_path):
    store = LocalReviewStore(tmp_path, max_items=2, when_full="pause")
    store.add(b"a", "jpg", item([]))
    store.add(b"b", "jpg", item([]))
    with pytest.raises(StoreFull):
        store.add(b"c", "jpg", item([]))
    assert store.stats()["items"] == 2
    assert store.purge(status="pending") == 2 and store.stats()["items"] == 0


def test_status_and_filters(tmp_path):
    store = LocalReviewStore(tmp_path)
    a = store.add(b"a", "jpg", item([det(0.2)], model="det"))
    store.add(b"b", "jpg", item([det(0.2)], model="clf", task="classify"))
    assert store.set_status(a, "accepted") and not store.set_status("missing", "accepted")
    assert [i.id for i in store.list(status="accepted")] == [a]
    assert [i.model for i in store.list(model="clf")] == ["clf"]
    assert store.image(a) == b"a" and store.get(a).prediction == [det(0.2)]


def filled_store(tmp_path) -> LocalReviewStore:
    store = LocalReviewStore(tmp_path / "queue")
    image = SAMPLE.read_bytes()
    store.add(image, "jpg", item([det(0.41, (10, 20, 110, 220), 1, "circle"), det(0.3, (300, 40, 420, 200), 0,
                                                                                    "square")]))
    store.add(image, "jpg", item([]))
    return store


def test_yolo_export_parses_back_to_the_same_boxes(tmp_path):
    store = filled_store(tmp_path)
    items = store.list()
    out = export("yolo", items, store.image_path, tmp_path / "yolo")
    assert (out / "classes.txt").read_text().split() == ["square", "circle"]
    for i in items:
        stem = store.image_path(i).stem
        assert (out / "images" / store.image_path(i).name).is_file()
        rows = [line.split() for line in (out / "labels" / f"{stem}.txt").read_text().splitlines()]
        back = []
        for cid, cx, cy, w, h in rows:
            cx, cy, w, h = float(cx) * 640, float(cy) * 480, float(w) * 640, float(h) * 480
            back.append((int(cid), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
        assert len(back) == len(i.prediction)
        for (cid, box), p in zip(back, i.prediction):
            assert cid == p["class_id"] and box == pytest.approx(p["box"], abs=1e-3)


def test_coco_and_label_studio_exports_parse_back(tmp_path):
    store = filled_store(tmp_path)
    items = store.list()
    coco = json.loads((export("coco", items, store.image_path, tmp_path / "coco") / "annotations.json").read_text())
    assert {c["name"] for c in coco["categories"]} == {"square", "circle"}
    for image, i in zip(coco["images"], items):
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)] == [p["box"] for p in i.prediction]
        assert (tmp_path / "coco" / image["file_name"]).is_file()
    tasks = json.loads((export("label-studio", items, store.image_path, tmp_path / "ls") / "tasks.json").read_text())
    for task, i in zip(tasks, items):
        results = task["predictions"][0]["result"]
        for r, p in zip(results, i.prediction):
            v = r["value"]
            box = [v["x"] * 6.4, v["y"] * 4.8, (v["x"] + v["width"]) * 6.4, (v["y"] + v["height"]) * 4.8]
            assert box == pytest.approx(p["box"]) and v["rectanglelabels"] == [p["label"]]


def test_a_store_that_cannot_write_loses_the_capture_not_the_caller(tmp_path):
    """A full disk, staged as a directory that refuses writes: offer() still returns at once and
    the writer counts the failure instead of raising anywhere."""
    store = LocalReviewStore(tmp_path / "queue")
    os.chmod(store.images, 0o500)
    if os.access(store.images, os.W_OK):  # root ignores the mode bits: stage it another way
        store.images.rmdir()
        store.images.write_text("not a directory")
    capture = Capture(store, queue_size=4)
    for _ in range(3):
        assert capture.offer(SAMPLE.read_bytes(), item([det(0.1)]))
    capture.flush()
    assert capture.stats()["failed"] == 3 and capture.stats()["captured"] == 0
    # The queue is bounded: a writer that cannot keep up drops, never blocks the caller.
    blocked = Capture(store, queue_size=1)
    offered = [blocked.offer(b"x" * 10, item([])) for _ in range(200)]
    assert not all(offered) and blocked.stats()["dropped_queue_full"] > 0


def test_the_cli_lists_and_exports(tmp_path):
    store = filled_store(tmp_path)
    run = [sys.executable, "-m", "visionray.cli", "review"]
    listed = subprocess.run([*run, "list", "--dir", str(store.dir), "--json"], capture_output=True, text=True,
                            check=True)
    assert len(json.loads(listed.stdout)) == 2
    out = tmp_path / "export"
    done = subprocess.run([*run, "export", "--dir", str(store.dir), "--format", "coco", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2
    refused = subprocess.run([*run, "purge", "--dir", str(store.dir)], capture_output=True, text=True)
    assert refused.returncode == 1 and store.stats()["items"] == 2
