"""Procedural images of coloured shapes: the data behind the project's own demo models.

Why procedural: the demo models must be reproducible from a seed, carry no third-party
weights or data licences, and be checkable against ground truth generated on the spot
(a held-out set is just another seed). Only numpy and cv2 are used, so the serving side
and the tests can import this module without torch.

Everything is deterministic from a `numpy.random.Generator`; `sample_rng(seed, split, i)`
gives an independent generator per image, so any single image can be regenerated alone.

Coordinates are continuous pixel-edge coordinates (pixel (x, y) covers [x, x+1) x [y, y+1)),
which is what the serving side's letterbox mapping assumes. Boxes are float32 `[n, 4]` xyxy.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
NUM_CLASSES = len(CLASS_NAMES)

# Detection images: width and height ranges (either orientation, rarely square).
DET_WIDTH = (320, 800)
DET_HEIGHT = (240, 800)
# Shape size as a fraction of the longer image side, i.e. 26..100 px after a 320 letterbox.
DET_SIZE = (0.08, 0.31)
DET_MAX_OBJECTS = 8

# Classification images: small canvases, one dominant shape inside the central square.
CLS_SIDE = (96, 320)

# Stream ids for sample_rng: keep training and evaluation draws apart whatever the seed.
SPLITS = {"train": 0, "val": 1, "test": 2, "samples": 3}
TASKS = {"detect": 0, "classify": 1}

_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS


def sample_rng(seed: int, split: str, index: int, task: str = "detect") -> np.random.Generator:
    """Independent generator for one image of one split; the same arguments give the same image."""
    return np.random.default_rng([int(seed), SPLITS[split], TASKS[task], int(index)])


# ---------------------------------------------------------------------------------------
# Shape geometry
# ---------------------------------------------------------------------------------------


def _regular(n: int, radius: float, angle: float, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + angle + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def shape_outline(class_id: int, radius: float, angle: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon vertices `[k, 2]` around (0, 0), or None for a circle. `radius` bounds the shape."""
    name = CLASS_NAMES[class_id]
    if name == "circle":
        return None
    if name == "square":
        return _regular(4, radius, angle, phase=math.pi / 4)
    if name == "triangle":
        pts = _regular(3, radius, angle)
        # Slightly irregular, so the model learns "three corners", not one exact triangle.
        return pts + rng.uniform(-0.08, 0.08, size=pts.shape) * radius
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        outer = _regular(5, radius, angle)
        inner_pts = _regular(5, radius * inner, angle + math.pi / 5)
        return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)
    if name == "cross":
        a = radius * rng.uniform(0.26, 0.36)  # half arm width
        r = radius / math.sqrt(1 + (a / radius) ** 2)  # arm tip corners lie on the circle
        q = np.array(
            [[a, -r], [a, -a], [r, -a], [r, a], [a, a], [a, r], [-a, r], [-a, a], [-r, a], [-r, -a], [-a, -a], [-a, -r]]
        )
        c, s = math.cos(angle), math.sin(angle)
        return q @ np.array([[c, s], [-s, c]])
    raise ValueError(f"unknown class id {class_id}")


def _extent(class_id: int, cx: float, cy: float, radius: float, outline: np.ndarray | None) -> np.ndarray:
    if outline is None:
        return np.array([cx - radius, cy - radius, cx + radius, cy + radius], dtype=np.float32)
    xs, ys = outline[:, 0] + cx, outline[:, 1] + cy
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def _fill(img: np.ndarray, cx: float, cy: float, radius: float, outline: np.ndarray | None, colour) -> None:
    """Anti-aliased fill; pixel centres sit at +0.5 in edge coordinates, hence the shift."""
    colour = tuple(int(c) for c in colour)
    if outline is None:
        centre = (round((cx - 0.5) * _SUBPIXEL), round((cy - 0.5) * _SUBPIXEL))
        cv2.circle(img, centre, round(radius * _SUBPIXEL), colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        return
    pts = np.round((outline + [cx - 0.5, cy - 0.5]) * _SUBPIXEL).astype(np.int32)
    cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, _SUBPIXEL_BITS)


def _edge(img: np.ndarray, cx: float, cy: float, radius: float, outline: np.ndarray | None, colour, px: int) -> None:
    colour = tuple(int(c) for c in colour)
    if outline is None:
        centre = (round((cx - 0.5) * _SUBPIXEL), round((cy - 0.5) * _SUBPIXEL))
        r = round((radius - px / 2) * _SUBPIXEL)
        cv2.circle(img, centre, r, colour, px, cv2.LINE_AA, _SUBPIXEL_BITS)
        return
    pts = np.round((outline + [cx - 0.5, cy - 0.5]) * _SUBPIXEL).astype(np.int32)
    cv2.polylines(img, [pts], True, colour, px, cv2.LINE_AA, _SUBPIXEL_BITS)


# ---------------------------------------------------------------------------------------
# Colours and backgrounds
# ---------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator, saturated: bool = True) -> np.ndarray:
    """A BGR colour; saturated ones come from HSV so every hue is equally likely."""
    if not saturated:
        return rng.integers(0, 256, size=3).astype(np.float32)
    hsv = np.array([[[rng.integers(0, 180), rng.integers(110, 256), rng.integers(90, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled smoothly."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    grid = rng.uniform(-1, 1, size=(gh, gw, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 BGR canvas: base colour, blotches, and one or two textures."""
    base = _random_colour(rng, saturated=rng.random() < 0.3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base * rng.uniform(0.5, 1.0) + rng.uniform(0, 60)
    img += _smooth_noise(rng, h, w, int(rng.integers(2, 7))) * np.float32(rng.uniform(10, 70))

    def ramp(theta: float) -> np.ndarray:
        xs = np.arange(w, dtype=np.float32) * np.float32(math.cos(theta))
        ys = np.arange(h, dtype=np.float32)[:, None] * np.float32(math.sin(theta))
        return xs[None, :] + ys

    for _ in range(int(rng.integers(1, 3))):
        kind = rng.choice(["stripes", "grid", "speckle", "gradient", "plain"])
        if kind == "stripes":
            theta = rng.uniform(0, math.pi)
            period = rng.uniform(6, 60)
            wave = np.sin(ramp(theta) * np.float32(2 * math.pi / period))
            if rng.random() < 0.5:
                wave = np.sign(wave)
            img += wave[..., None] * rng.uniform(-40, 40, size=3).astype(np.float32)
        elif kind == "grid":
            period = int(rng.integers(10, 50))
            thick = int(rng.integers(1, 3))
            colour = _random_colour(rng, saturated=False) * np.float32(0.5)
            cols = (np.arange(w) % period) < thick
            rows = (np.arange(h) % period) < thick
            img[:, cols] = img[:, cols] * np.float32(0.5) + colour
            img[rows] = img[rows] * np.float32(0.5) + colour
        elif kind == "speckle":
            sigma = rng.uniform(0.6, 2.5)
            speckle = cv2.GaussianBlur(rng.standard_normal(size=(h, w), dtype=np.float32), (0, 0), sigma)
            img += (speckle * np.float32(rng.uniform(5, 30) / (speckle.std() + 1e-6)))[..., None]
        elif kind == "gradient":
            theta = rng.uniform(0, 2 * math.pi)
            img += (ramp(theta) / np.float32(max(h, w)))[..., None] * rng.uniform(-80, 80, size=3).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    """Lines, arcs and letters: clutter the detector must learn to ignore."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 6))):
        colour = tuple(int(c) for c in _random_colour(rng, saturated=rng.random() < 0.5))
        kind = rng.integers(0, 3)
        if kind == 0:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(10, max(11, w // 3))), int(rng.integers(10, max(11, h // 3))))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(30, 200)),
                        colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            text = "".join(rng.choice(list("ABDEFGHKMNPRSTUVWXYZ0123456789"), size=int(rng.integers(1, 5))))
            org = (int(rng.integers(0, max(1, w - 40))), int(rng.integers(15, h)))
            cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.4, 1.2)), colour,
                        int(rng.integers(1, 3)), cv2.LINE_AA)


def _contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """A colour that stands out from the background under the shape (best of a few tries)."""
    ref = patch.reshape(-1, 3).mean(axis=0).astype(np.float32)
    best, best_d = None, -1.0
    for _ in range(8):
        c = _random_colour(rng, saturated=rng.random() < 0.85)
        d = float(np.abs(c - ref).sum())
        if d > best_d:
            best, best_d = c, d
        if d > 150:
            break
    return best


def _draw_shape(rng: np.random.Generator, img: np.ndarray, class_id: int, cx: float, cy: float, radius: float,
                angle: float, outline: np.ndarray | None) -> None:
    h, w = img.shape[:2]
    x0, y0 = max(0, int(cx - radius)), max(0, int(cy - radius))
    x1, y1 = min(w, int(cx + radius) + 1), min(h, int(cy + radius) + 1)
    colour = _contrasting_colour(rng, img[y0:y1, x0:x1])
    style = rng.random()
    if style < 0.6:
        _fill(img, cx, cy, radius, outline, colour)
    else:
        # Shaded fill: draw into an anti-aliased mask, blend a colour ramp through it.
        mask = np.zeros((h, w), np.uint8)
        _fill(mask, cx, cy, radius, outline, (255,))
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ramp = ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / max(radius, 1.0)
        shade = colour[None, None] * (1 + 0.3 * ramp[..., None])
        m = mask[y0:y1, x0:x1, None].astype(np.float32) / 255
        blended = img[y0:y1, x0:x1] * (1 - m) + shade * m
        img[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.35:
        edge_colour = colour * rng.uniform(0.3, 0.7)
        _edge(img, cx, cy, radius, outline, edge_colour, int(rng.integers(1, 3)))


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Photometric noise common to both tasks: blur, exposure, sensor noise."""
    img = img.astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.3))
    img *= np.float32(rng.uniform(0.75, 1.2))
    img += np.float32(rng.uniform(-25, 25) + 0.5)
    sigma = rng.uniform(0, 12)
    if sigma > 1:
        img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    """Shapes may overlap a little; none may hide much of an earlier one or share its box."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        b_area = (b[2] - b[0]) * (b[3] - b[1])
        if inter / b_area > 0.3 or inter / area > 0.5 or inter / (area + b_area - inter) > 0.25:
            return False
    return True


# ---------------------------------------------------------------------------------------
# Public samplers
# ---------------------------------------------------------------------------------------


def make_detection_sample(
    rng: np.random.Generator, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One detection image: (uint8 BGR HxWx3, boxes float32 [n, 4] xyxy, class ids int64 [n]).

    `size` is (width, height); by default both are drawn so most images are not square and
    the letterbox pads. Up to `DET_MAX_OBJECTS` shapes, rotated, of 26..100 letterboxed pixels,
    possibly overlapping a little; a few images hold none.
    """
    if size is None:
        w, h = int(rng.integers(*DET_WIDTH, endpoint=True)), int(rng.integers(*DET_HEIGHT, endpoint=True))
    else:
        w, h = int(size[0]), int(size[1])
    img = make_background(rng, h, w)
    _distractors(rng, img)

    n_target = 0 if rng.random() < 0.04 else int(rng.integers(1, DET_MAX_OBJECTS + 1))
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    long_side, short_side = max(w, h), min(w, h)
    for _ in range(n_target * 6):
        if len(boxes) == n_target:
            break
        class_id = int(rng.integers(0, NUM_CLASSES))
        diameter = min(rng.uniform(*DET_SIZE) * long_side, 0.9 * short_side)
        radius = diameter / 2
        angle = rng.uniform(0, 2 * math.pi)
        outline = shape_outline(class_id, radius, angle, rng)
        ext = _extent(class_id, 0.0, 0.0, radius, outline)
        cx = rng.uniform(-ext[0] + 1, w - ext[2] - 1)
        cy = rng.uniform(-ext[1] + 1, h - ext[3] - 1)
        box = ext + np.array([cx, cy, cx, cy], dtype=np.float32)
        if not _overlap_ok(box, boxes):
            continue
        _draw_shape(rng, img, class_id, cx, cy, radius, angle, outline)
        boxes.append(box)
        classes.append(class_id)

    out = _finish(rng, img)
    boxes_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return out, boxes_arr, np.asarray(classes, dtype=np.int64)


def make_classification_sample(rng: np.random.Generator, class_id: int | None = None) -> tuple[np.ndarray, int]:
    """One classification image: (uint8 BGR HxWx3, class id).

    One dominant shape lies inside the central square (what an ImageNet-style centre crop
    keeps); up to two much smaller shapes of any class may sit anywhere as clutter.
    """
    w, h = (int(rng.integers(*CLS_SIDE, endpoint=True)) for _ in range(2))
    if rng.random() < 0.3:
        h = w  # square images are common input for a classifier
    if class_id is None:
        class_id = int(rng.integers(0, NUM_CLASSES))
    img = make_background(rng, h, w)
    _distractors(rng, img)

    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    radius = rng.uniform(0.2, 0.44) * side
    angle = rng.uniform(0, 2 * math.pi)
    outline = shape_outline(class_id, radius, angle, rng)
    ext = _extent(class_id, 0.0, 0.0, radius, outline)
    margin = 0.03 * side
    cx = left + rng.uniform(-ext[0] + margin, max(-ext[0] + margin, side - ext[2] - margin))
    cy = top + rng.uniform(-ext[1] + margin, max(-ext[1] + margin, side - ext[3] - margin))
    main_box = ext + np.array([cx, cy, cx, cy], dtype=np.float32)

    placed = [main_box]
    for _ in range(int(rng.integers(0, 3))):
        other = int(rng.integers(0, NUM_CLASSES))
        r = radius * rng.uniform(0.15, 0.35)
        a = rng.uniform(0, 2 * math.pi)
        o = shape_outline(other, r, a, rng)
        e = _extent(other, 0.0, 0.0, r, o)
        ox, oy = rng.uniform(-e[0], w - e[2]), rng.uniform(-e[1], h - e[3])
        box = e + np.array([ox, oy, ox, oy], dtype=np.float32)
        if _overlap_ok(box, placed) and _overlap_ok(main_box, [box]):
            _draw_shape(rng, img, other, ox, oy, r, a, o)
            placed.append(box)
    # The dominant shape goes on top, so clutter never hides it.
    _draw_shape(rng, img, class_id, cx, cy, radius, angle, outline)
    return _finish(rng, img), class_id


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode as JPEG: training sees compression artefacts that real uploads carry."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2 could not encode a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def draw_boxes(
    img: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray | None = None
) -> np.ndarray:
    """A copy of `img` with labelled boxes, for looking at samples and predictions."""
    out = img.copy()
    for i, (b, c) in enumerate(zip(boxes, class_ids)):
        p1, p2 = (int(round(b[0])), int(round(b[1]))), (int(round(b[2])), int(round(b[3])))
        cv2.rectangle(out, p1, p2, (0, 255, 0), 1)
        text = CLASS_NAMES[int(c)] + ("" if scores is None else f" {scores[i]:.2f}")
        cv2.putText(out, text, (p1[0], max(10, p1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1)
    return out


# ---------------------------------------------------------------------------------------
# Shipped sample images: `python -m demo_models.shapes` rewrites demo_models/samples/
# ---------------------------------------------------------------------------------------

SAMPLE_DETECTION_SIZES = ((640, 480), (480, 640), (720, 405))
SAMPLE_CLASSIFICATION_CLASSES = (0, 3, 4)  # circle, star, cross


def write_samples(out_dir, seed: int = 0, quality: int = 85) -> dict:
    """A few JPEGs from the "samples" split plus their ground truth as `ground_truth.json`."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict] = {}
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for i, size in enumerate(SAMPLE_DETECTION_SIZES):
        img, boxes, ids = make_detection_sample(sample_rng(seed, "samples", i, "detect"), size)
        name = f"shapes_{size[0]}x{size[1]}.jpg"
        cv2.imwrite(str(out / name), img, params)
        truth[name] = {
            "task": "detect",
            "objects": [
                {"label": CLASS_NAMES[c], "class_id": int(c), "box": [round(float(v), 1) for v in b]}
                for b, c in zip(boxes, ids)
            ],
        }
    for i, class_id in enumerate(SAMPLE_CLASSIFICATION_CLASSES):
        img, label = make_classification_sample(sample_rng(seed, "samples", i, "classify"), class_id)
        name = f"{CLASS_NAMES[label]}.jpg"
        cv2.imwrite(str(out / name), img, params)
        truth[name] = {"task": "classify", "label": CLASS_NAMES[label], "class_id": int(label)}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


if __name__ == "__main__":
    from pathlib import Path

    write_samples(Path(__file__).resolve().parent / "samples")
