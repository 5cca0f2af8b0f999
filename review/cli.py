"""`visionray review list|show|export|purge`: the review queue from its directory, no server needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from review.export import FORMATS, export
from review.store import STATUSES, LocalReviewStore


def _default_dir() -> str:
    from review.config import ReviewConfig

    return ReviewConfig().directory()


def add_review_commands(commands) -> None:
    p = commands.add_parser("review", help="the review queue: list, show, export (yolo, coco, label-studio), purge")
    sub = p.add_subparsers(dest="review_command", metavar="ACTION", required=True)

    def common(q):
        q.add_argument("--dir", default=None,
                       help="the queue's directory (default: the app's review.dir, .data/review)")
        q.add_argument("--model", help="only this model's items")
        q.add_argument("--status", choices=STATUSES, help="only items with this status")

    q = sub.add_parser("list", help="the newest items")
    common(q)
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    q.set_defaults(run=_list)
    q = sub.add_parser("show", help="one item, its prediction and image path")
    q.add_argument("id")
    q.add_argument("--dir", default=None)
    q.set_defaults(run=_show)
    q = sub.add_parser("export", help="images with the predictions as pre-annotations")
    common(q)
    q.add_argument("--format", choices=FORMATS, required=True)
    q.add_argument("--out", required=True, help="a directory to write")
    q.set_defaults(run=_export)
    q = sub.add_parser("purge", help="delete items (and their images)")
    common(q)
    q.add_argument("--yes", action="store_true", help="do not ask")
    q.set_defaults(run=_purge)


def _store(args) -> LocalReviewStore:
    directory = args.dir or _default_dir()
    if not (Path(directory) / "index.sqlite").is_file():
        raise SystemExit(f"error: no review queue at {directory} (capture is off until the app's review.enabled)")
    return LocalReviewStore(directory)


def _items(store, args):
    items, offset = [], 0
    while batch := store.list(args.model, args.status, limit=500, offset=offset):
        items += batch
        offset += len(batch)
    return items


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    items = store.list(args.model, args.status, limit=args.limit)
    if args.json:
        print(json.dumps([i.summary() for i in items], indent=1))
        return 0
    for i in items:
        top = max((p["score"] for p in i.prediction), default=0.0)
        print(f"{i.id}  {i.status:<9} {i.model}:{i.version[:12]:<12} {i.reason:<14} top {top:.2f}  "
              f"{len(i.prediction)} {'objects' if i.task == 'detect' else 'classes'}")
    stats = store.stats()
    print(f"{stats['items']} items, {stats['bytes'] / 1e6:.1f} MB ({stats['by_status']}); limits "
          f"{stats['max_items']} items, {stats['max_bytes'] / 1e6:.0f} MB", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _store(args)
    item = store.get(args.id)
    if item is None:
        print(f"error: no item {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps({**item.summary(), "image": str(store.image_path(item))}, indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    items = _items(store, args)
    if not items:
        print("nothing to export", file=sys.stderr)
        return 1
    try:
        out = export(args.format, items, store.image_path, Path(args.out))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {len(items)} items as {args.format} to {out}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    store = _store(args)
    if not args.yes:
        print("error: purge deletes images; pass --yes", file=sys.stderr)
        return 1
    print(f"purged {store.purge(args.model, args.status)} items")
    return 0
