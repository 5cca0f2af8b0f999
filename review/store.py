"""Where captured predictions wait for a person: image files plus a sqlite index.

`ReviewStore` is the interface the platform writes to and the CLI and page read from;
`LocalReviewStore` keeps the images as files under one directory and the index in
`index.sqlite` beside them (WAL: the node's ingress replicas write, the CLI reads, at once; WAL
needs them on one host, so the directory is on the node's own disk, not a network filesystem).
Each node keeps its own queue; an edge node's stays on the device until exported. A store for a
whole cluster on shared storage (fsspec, MLflow artifacts) would implement `ReviewStore`.

Bounded: at most `max_items` items and `max_bytes` of images. When full, `when_full` says what
gives: `drop_oldest` (the default: the newest doubts are the ones worth labelling) deletes the
oldest items, `pause` refuses new ones until some are purged or exported.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

STATUSES = ("pending", "accepted", "discarded")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    alias TEXT NOT NULL,
    task TEXT NOT NULL,
    request_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    image_file TEXT NOT NULL,
    image_bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    prediction TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_model ON items (model, created);
"""


class StoreFull(Exception):
    """`when_full: pause` and the store is at a bound: the item is not kept."""


@dataclass
class ReviewItem:
    id: str
    created: float
    model: str
    version: str
    alias: str
    task: str
    request_id: str
    reason: str
    status: str
    image_file: str
    image_bytes: int
    width: int
    height: int
    prediction: list[dict]  # the /v1 detections or classes

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "image_file"}


class ReviewStore(Protocol):
    def add(self, image: bytes, ext: str, item: dict) -> str: ...
    def list(self, model: str | None = None, status: str | None = None, limit: int = 100,
             offset: int = 0) -> list[ReviewItem]: ...
    def get(self, item_id: str) -> ReviewItem | None: ...
    def image(self, item_id: str) -> bytes | None: ...
    def set_status(self, item_id: str, status: str) -> bool: ...
    def purge(self, model: str | None = None, status: str | None = None) -> int: ...
    def stats(self) -> dict: ...


class LocalReviewStore:
    def __init__(self, directory: str | Path, max_items: int = 10_000, max_bytes: int = 1 << 30,
                 when_full: Literal["drop_oldest", "pause"] = "drop_oldest"):
        self.dir = Path(directory)
        self.images = self.dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.max_items, self.max_bytes, self.when_full = max_items, max_bytes, when_full
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "index.sqlite", timeout=10, check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per item (a power cut may lose the last captures, never the index).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._totals: tuple[int, int] | None = None  # (items, bytes), re-read from the index now and then
        self._totals_read = 0.0

    def add(self, image: bytes, ext: str, item: dict) -> str:
        """Keep one captured image and its prediction; its id. StoreFull under `pause` at a bound."""
        item_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:10]}"
        name = f"{item_id}.{ext}"
        with self._lock:
            self._make_room(len(image))
            path = self.images / name
            tmp = path.with_suffix(".part")
            tmp.write_bytes(image)  # a full disk raises here, before the index knows the item
            os.replace(tmp, path)
            try:
                self._db.execute(
                    "INSERT INTO items (id, created, model, version, alias, task, request_id, reason, image_file, "
                    "image_bytes, width, height, prediction) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (item_id, item.get("created", time.time()), item["model"], item["version"], item["alias"],
                     item["task"], item["request_id"], item["reason"], name, len(image), item["width"],
                     item["height"], json.dumps(item["prediction"], separators=(",", ":"))))
            except sqlite3.Error:
                path.unlink(missing_ok=True)
                raise
        return item_id

    def _make_room(self, incoming: int) -> None:
        """Under the bounds after this item: the oldest go (a batch at a time), or StoreFull."""
        count, size = self._current_totals()
        if count + 1 <= self.max_items and size + incoming <= self.max_bytes:
            self._totals = (count + 1, size + incoming)
            return
        count, size = self._current_totals(fresh=True)  # other writers (replicas, the CLI) may have purged
        if count + 1 <= self.max_items and size + incoming <= self.max_bytes:
            self._totals = (count + 1, size + incoming)
            return
        if self.when_full == "pause":
            raise StoreFull(f"the review queue is full ({count} items, {size} bytes; limits {self.max_items}, "
                            f"{self.max_bytes}): capture is paused until items are exported or purged")
        # 1 % more than needed: the next items find room without a delete each.
        target_items = self.max_items - 1 - self.max_items // 100
        target_bytes = self.max_bytes - incoming - self.max_bytes // 100
        for item_id, name, nbytes in self._db.execute(
                "SELECT id, image_file, image_bytes FROM items ORDER BY created").fetchall():
            if count <= target_items and size <= target_bytes:
                break
            self._delete(item_id, name)
            count, size = count - 1, size - nbytes
        self._totals = (count + 1, size + incoming)

    def _current_totals(self, fresh: bool = False) -> tuple[int, int]:
        """(items, bytes): kept in memory between reads of the index at most a second apart, so an
        add costs no table scan; with several writers a bound may be passed by what they add in
        that second, until the next read."""
        if fresh or self._totals is None or time.monotonic() - self._totals_read > 1.0:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM items").fetchone()
            self._totals = (row[0], row[1])
            self._totals_read = time.monotonic()
        return self._totals

    def _delete(self, item_id: str, name: str) -> None:
        self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
        (self.images / name).unlink(missing_ok=True)

    def list(self, model: str | None = None, status: str | None = None, limit: int = 100,
             offset: int = 0) -> list[ReviewItem]:
        where, args = _filters(model, status)
        rows = self._db.execute(f"SELECT * FROM items{where} ORDER BY created DESC LIMIT ? OFFSET ?",
                                (*args, limit, offset)).fetchall()
        return [_item(row) for row in rows]

    def get(self, item_id: str) -> ReviewItem | None:
        row = self._db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def image(self, item_id: str) -> bytes | None:
        item = self.get(item_id)
        if item is None:
            return None
        try:
            return (self.images / item.image_file).read_bytes()
        except FileNotFoundError:
            return None

    def image_path(self, item: ReviewItem) -> Path:
        return self.images / item.image_file

    def set_status(self, item_id: str, status: str) -> bool:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        with self._lock:
            return self._db.execute("UPDATE items SET status = ? WHERE id = ?", (status, item_id)).rowcount == 1

    def purge(self, model: str | None = None, status: str | None = None) -> int:
        where, args = _filters(model, status)
        with self._lock:
            rows = self._db.execute(f"SELECT id, image_file FROM items{where}", args).fetchall()
            for item_id, name in rows:
                self._delete(item_id, name)
            self._totals = None
        return len(rows)

    def stats(self) -> dict:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM items").fetchone()
        by_status = dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {"items": count, "bytes": size, "by_status": by_status, "max_items": self.max_items,
                "max_bytes": self.max_bytes, "when_full": self.when_full}


def _filters(model: str | None, status: str | None) -> tuple[str, tuple]:
    clauses, args = [], []
    if model:
        clauses.append("model = ?")
        args.append(model)
    if status:
        clauses.append("status = ?")
        args.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _item(row: sqlite3.Row) -> ReviewItem:
    values = dict(row)
    values["prediction"] = json.loads(values["prediction"])
    return ReviewItem(**values)
