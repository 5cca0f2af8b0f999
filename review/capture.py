"""Which predictions go to the review queue, and writing them off the request path.

`capture_reason` is the rule (pure: tests/test_review.py): a prediction is worth a person's
look when its top score is low, when any detection falls in an unsure score band, or by random
sample. `Capture.offer` is all a request pays: a bounded in-memory queue put (no I/O, no
encoding); one writer thread stores the items. When the writer falls behind, or the store
fails (a full disk), items are dropped and counted, never the request.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable

import cv2
import numpy as np

from core.image_codec import sniff_format
from review.store import ReviewStore, StoreFull

log = logging.getLogger("ray.serve")


def capture_reason(rule, task: str, prediction: list[dict], rand: Callable[[], float] = random.random) -> str | None:
    """Why this prediction should be reviewed ("low_top_score", "score_band", "sample"), or None.

    `rule` has `top_score_below`, `score_band` ([low, high)) and `sample_rate`, each optional.
    A detector with no detections has top score 0: a missed object is the costliest doubt.
    """
    scores = [p["score"] for p in prediction]
    top = max(scores, default=0.0)
    if rule.top_score_below is not None and top < rule.top_score_below:
        return "low_top_score"
    if rule.score_band is not None:
        low, high = rule.score_band
        if any(low <= s < high for s in scores):
            return "score_band"
    if rule.sample_rate and rand() < rule.sample_rate:
        return "sample"
    return None


class Capture:
    """A bounded queue of items to store, drained by one daemon thread."""

    def __init__(self, store: ReviewStore, queue_size: int = 256):
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.captured = self.dropped_queue_full = self.dropped_store_full = self.failed = 0
        self._thread = threading.Thread(target=self._drain, name="review-writer", daemon=True)
        self._thread.start()

    def offer(self, image: bytes | np.ndarray, item: dict) -> bool:
        """Queue one capture; False (counted) when the writer is that far behind."""
        try:
            self._queue.put_nowait((image, item))
            return True
        except queue.Full:
            self.dropped_queue_full += 1
            return False

    def flush(self, timeout_s: float = 10.0) -> None:
        """Until every queued item is stored (tests, shutdown)."""
        done = threading.Event()
        self._queue.put((None, done))
        done.wait(timeout_s)

    def _drain(self) -> None:
        while True:
            image, item = self._queue.get()
            if image is None:
                item.set()
                continue
            try:
                data, ext = encoded(image)
                self.store.add(data, ext, item)
                self.captured += 1
            except StoreFull:
                self.dropped_store_full += 1
            except Exception as exc:  # noqa: BLE001 - a full disk or a broken store must not reach requests
                self.failed += 1
                if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                    log.warning("review capture could not store an item (%d so far): %s", self.failed, exc)

    def stats(self) -> dict:
        return {"captured": self.captured, "queued": self._queue.qsize(),
                "dropped_queue_full": self.dropped_queue_full, "dropped_store_full": self.dropped_store_full,
                "failed": self.failed}


def encoded(image: bytes | np.ndarray) -> tuple[bytes, str]:
    """The image as stored: encoded bytes as they came (JPEG or PNG), decoded RGB pixels as PNG."""
    if isinstance(image, np.ndarray):
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:
            raise ValueError("cannot encode the pixels as PNG")
        return buf.tobytes(), "png"
    return bytes(image), "png" if sniff_format(image) == "png" else "jpg"
