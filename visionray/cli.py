"""`visionray` command line: predict against a running platform, manage registry models, start cluster nodes."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def _predict(args: argparse.Namespace) -> int:
    image = Path(args.image)
    if not image.is_file():
        print(f"error: no such image: {image}", file=sys.stderr)
        return 1
    params = {k: v for k, v in (("conf", args.conf), ("iou", args.iou), ("max_det", args.max_det),
                                ("top_k", args.top_k), ("alias", args.alias)) if v is not None}
    url = f"{args.url.rstrip('/')}/v1/models/{urllib.parse.quote(args.model)}/predict"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, data=image.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            result = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            message = json.load(err)["error"]["message"]
        except Exception:  # noqa: BLE001 - not our JSON (proxy error page)
            message = err.reason
        print(f"error: HTTP {err.code}: {message}", file=sys.stderr)
        return 1
    except urllib.error.URLError as err:
        print(f"error: cannot reach {args.url} ({err.reason}); is the platform up? (make up)", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} v{result['version']} ({result['task']}) "
              f"{result['image']['width']}x{result['image']['height']}  {result['timings_ms']['total_ms']:.1f} ms")
        for d in result.get("detections", []):
            x1, y1, x2, y2 = d["box"]
            print(f"  {d['label']:<16} {d['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        for c in result.get("classes", []):
            print(f"  {c['label']:<16} {c['score']:.3f}")
    if args.save:
        draw_result(image, result, Path(args.save))
        print(f"saved {args.save}")
    return 0


def draw_result(image_path: Path, result: dict, out: Path) -> None:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.fromfile(str(image_path), np.uint8), cv2.IMREAD_COLOR)
    for d in result.get("detections", []):
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        hue = (d["class_id"] * 47) % 180
        color = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0])
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        cv2.putText(img, f"{d['label']} {d['score']:.2f}", (x1, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    for i, c in enumerate(result.get("classes", [])):
        cv2.putText(img, f"{c['label']} {c['score']:.2f}", (8, 20 + 18 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 255, 255), 1, cv2.LINE_AA)
    cv2.imwrite(str(out), img)


def build_parser() -> argparse.ArgumentParser:
    from model_registry.cli import add_models_commands

    parser = argparse.ArgumentParser(prog="visionray", description="Computer-vision model serving on Ray Serve")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("predict", help="send an image to a served model and print the result")
    p.add_argument("image", help="JPEG or PNG file")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--url", default=DEFAULT_URL, help=f"platform address (default {DEFAULT_URL})")
    p.add_argument("--conf", type=float)
    p.add_argument("--iou", type=float)
    p.add_argument("--max-det", type=int)
    p.add_argument("--top-k", type=int)
    p.add_argument("--alias", help="serve a registry alias other than the default")
    p.add_argument("--save", help="write the image with boxes/labels drawn to this file")
    p.add_argument("--json", action="store_true", help="print the raw JSON response")
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(run=_predict)

    from visionray import platform

    for name, fn, text in (("up", platform.up, "start Ray, register the demo models, deploy, wait until ready"),
                           ("down", platform.down, "stop exactly what `up` started"),
                           ("status", platform.status, "is the platform up and ready?")):
        commands.add_parser(name, help=text).set_defaults(run=lambda args, fn=fn: fn())

    add_models_commands(commands)
    from visionray.stream_client import add_stream_command

    add_stream_command(commands)
    from review.cli import add_review_commands

    add_review_commands(commands)
    from cluster.cli import add_cluster_commands

    add_cluster_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from model_registry.cli import run_command

        return run_command(args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
