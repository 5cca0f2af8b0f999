"""Train the two demo models from a seed and export them as the ONNX files the project ships.

    pip install -e .[train]
    python -m demo_models.train --seed 0          # writes demo_models/{detector,classifier}.onnx

Why this shape of model: the files must be small (well under the 5 MB limit), train in a few
minutes on two CPU cores, and look to the serving side exactly like the models it serves in
production, so they exercise the real code paths:

* detector.onnx mimics a `yolo export` of YOLOv8: input `images` [B, 3, 320, 320] RGB 0..1
  (letterboxed), output `output0` [B, 4+nc, N] with rows cx, cy, w, h in input pixels and
  per-class sigmoid scores (no objectness, no NMS), Ultralytics metadata (`names`, `imgsz`,
  `stride`, `task`). Internally it is a tiny anchor-free CNN with one stride-8 grid
  (N = 40 x 40 = 1600) fed by stride-8 and stride-16 features: each cell predicts class
  logits and distances to the four box edges (as YOLOv8/FCOS do); the decode to
  cx, cy, w, h and the sigmoid happen inside the graph.
* classifier.onnx: input `images` [B, 3, 96, 96] (ImageNet-normalised), output `output0`
  logits [B, nc], metadata `task`=classify, `names`, `visionray.preset`=imagenet. It is the
  detector's backbone fine-tuned with a pooled linear head (see `Classifier`).

Train/serve skew is avoided by construction: training images go through the serving side's
own `prepare_image` (letterbox / resize + centre crop) and `InputNormaliser`.

Reproducibility: images are generated from `shapes.sample_rng(seed, "train", i)`; torch is
seeded and runs with a fixed thread count and deterministic algorithms, so a rerun on the
same torch version and CPU reproduces the weights (other versions or CPUs may differ in the
last bits of float arithmetic, and so in the files, not in their quality).
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model_spec import PRESET_METADATA_KEY, preset, spec_from_onnx
from core.onnx_backend import OnnxModel
from core.preprocessing import InputNormaliser, prepare_image
from demo_models.shapes import (
    CLASS_NAMES,
    DET_MAX_OBJECTS,
    NUM_CLASSES,
    jpeg_roundtrip,
    make_classification_sample,
    make_detection_sample,
    sample_rng,
)

HERE = Path(__file__).resolve().parent

DET_SIZE = 320
DET_STRIDE = 8
# The deepest feature map's stride (what `stride` means in Ultralytics metadata).
DET_MAX_STRIDE = 16
CLS_SIZE = 96
DET_PRE = preset("letterbox", DET_SIZE, DET_SIZE)
CLS_PRE = preset("imagenet", CLS_SIZE, CLS_SIZE)
# Share of training images re-encoded as JPEG, so uploads' artefacts are nothing new.
JPEG_SHARE = 0.3
OPSET = 17


# ---------------------------------------------------------------------------------------
# Data: generated once per run, preprocessed by the serving code, kept as uint8 arrays
# ---------------------------------------------------------------------------------------


def _maybe_jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return jpeg_roundtrip(img, int(rng.integers(50, 96))) if rng.random() < JPEG_SHARE else img


def _detection_item(job: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One letterboxed training image and its boxes in letterboxed (model input) pixels."""
    seed, index = job
    rng = sample_rng(seed, "train", index, "detect")
    img, boxes, ids = make_detection_sample(rng)
    img, meta = prepare_image(_maybe_jpeg(img, rng), DET_PRE)
    boxes = boxes * meta.ratio + np.array([meta.pad_left, meta.pad_top] * 2, np.float32)
    return img, boxes.astype(np.float32), ids


def _classification_item(job: tuple[int, int]) -> tuple[np.ndarray, int]:
    seed, index = job
    rng = sample_rng(seed, "train", index, "classify")
    # Classes in turn, so every class has the same number of images.
    img, label = make_classification_sample(rng, class_id=index % NUM_CLASSES)
    img, _ = prepare_image(_maybe_jpeg(img, rng), CLS_PRE)
    return img, label


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _generate(fn, seed: int, n: int, workers: int) -> list:
    jobs = [(seed, i) for i in range(n)]
    if workers <= 1:
        return [fn(j) for j in jobs]
    # The workers only run numpy/cv2, so fork is safe and starts fast; imap keeps job order.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers, initializer=_init_worker) as pool:
        return list(pool.imap(fn, jobs, chunksize=32))


def detection_dataset(seed: int, n: int, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [n, 320, 320, 3] BGR, boxes [n, M, 4], class ids [n, M] with -1 padding)."""
    items = _generate(_detection_item, seed, n, workers)
    images = np.stack([it[0] for it in items])
    boxes = np.zeros((n, DET_MAX_OBJECTS, 4), np.float32)
    ids = np.full((n, DET_MAX_OBJECTS), -1, np.int64)
    for i, (_, b, c) in enumerate(items):
        boxes[i, : len(b)] = b
        ids[i, : len(c)] = c
    return images, boxes, ids


def classification_dataset(seed: int, n: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    items = _generate(_classification_item, seed, n, workers)
    return np.stack([it[0] for it in items]), np.array([it[1] for it in items], np.int64)


def dihedral(images: np.ndarray, k: int, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One of the 8 flips/transposes of a square NHWC batch (and its xyxy boxes).

    Every shape class is closed under these, and a transposed letterbox is just the
    letterbox of a portrait image, so the augmented images stay in distribution.
    """
    size = images.shape[1]
    if boxes is not None:
        boxes = boxes.copy()
    if k & 1:
        images = images[:, :, ::-1]
        if boxes is not None:
            boxes[..., [0, 2]] = size - boxes[..., [2, 0]]
    if k & 2:
        images = images[:, ::-1]
        if boxes is not None:
            boxes[..., [1, 3]] = size - boxes[..., [3, 1]]
    if k & 4:
        images = images.transpose(0, 2, 1, 3)
        if boxes is not None:
            boxes = boxes[..., [1, 0, 3, 2]]
    return np.ascontiguousarray(images), boxes


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(inplace=True),
    )


class Detector(nn.Module):
    """Anchor-free detector on one stride-8 grid; `forward` emits the YOLOv8 export layout.

    A 4x4 patch stem keeps full-resolution work cheap; a stride-16 branch (with a dilated
    conv) sees the largest shapes whole, and its features are upsampled onto the stride-8
    grid, which keeps small shapes apart and well located. Class and box heads are separate
    branches, as in YOLOv8: what a shape is and where its edges are need different features.
    """

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (24, 32, 48, 80)):
        super().__init__()
        a, b, c, d = widths
        self.channels = c
        self.fine = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, a, 4, 4, bias=False), nn.BatchNorm2d(a), nn.SiLU(inplace=True)),  # 80
            conv(a, b),
            conv(b, c, 2),  # 40 = 320 / DET_STRIDE
            conv(c, c),
            conv(c, c),
        )
        self.coarse = nn.Sequential(
            conv(c, d, 2),  # 20
            conv(d, d),
            conv(d, d, dilation=2),  # receptive field for the largest shapes
            conv(d, c),
        )
        self.fuse = conv(c, c)
        self.box_head = nn.Sequential(conv(c, c), nn.Conv2d(c, 4, 1))
        self.cls_head = nn.Sequential(conv(c, c), nn.Conv2d(c, num_classes, 1))
        nn.init.constant_(self.cls_head[-1].bias, -math.log(99))  # start at p = 0.01: mostly background
        cells = DET_SIZE // DET_STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5).mul(DET_STRIDE)
        self.register_buffer("anchors", centres[None])  # [1, 2, N], anchor n = row * cells + col

    def features(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        coarse = F.interpolate(self.coarse(fine), scale_factor=2.0, mode="nearest")
        return self.fuse(fine + coarse)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(edge distances in strides before softplus [B, 4, N], class logits [B, nc, N])."""
        f = self.features(x)
        return self.box_head(f).flatten(2), self.cls_head(f).flatten(2)

    def boxes(self, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw distances -> (x1y1, x2y2) in input pixels, each [B, 2, N]."""
        ltrb = F.softplus(dist) * DET_STRIDE
        return self.anchors - ltrb[:, :2], self.anchors + ltrb[:, 2:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist, logits = self.raw(x)
        x1y1, x2y2 = self.boxes(dist)
        return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1, logits.sigmoid()], dim=1)


class Classifier(nn.Module):
    """The detector's backbone, fine-tuned with a pooled linear head.

    Trained from scratch on one label per image, a network this small sits for many epochs
    at chance level before it discovers shape features (colours and textures are random
    and explain nothing). The detector learns them fast from dense per-cell supervision, so
    the classifier starts from its backbone: transfer learning, as from ImageNet weights.
    The backbone saw RGB in 0..1, so the ImageNet normalisation is undone in the graph.
    """

    def __init__(self, num_classes: int, backbone: Detector):
        super().__init__()
        backbone = copy.deepcopy(backbone)
        self.fine, self.coarse = backbone.fine, backbone.coarse
        channels = backbone.channels
        self.register_buffer("mean", torch.tensor(CLS_PRE.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLS_PRE.std).view(1, 3, 1, 1))
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.coarse(self.fine(x * self.std + self.mean))
        return self.fc(torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1))


# ---------------------------------------------------------------------------------------
# Detection loss: centre-sampled positives, BCE for classes, GIoU for boxes
# ---------------------------------------------------------------------------------------


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU, generalised IoU) of matching rows of two `[k, 4]` xyxy tensors."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    iou = inter / union.clamp(min=1e-6)
    cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
    ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    hull = (cw * ch).clamp(min=1e-6)
    return iou, iou - (hull - union) / hull


def assign(anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_ids: torch.Tensor, radius: float = 2.5):
    """Positive anchors and the ground truth each one learns.

    An anchor is positive for a box if its centre lies inside the box and within `radius`
    strides of the box centre; the anchor nearest each centre always is. An anchor claimed
    by several boxes takes the smallest. Returns (positive mask [B, N], box index [B, N]).
    """
    ax, ay = anchors[0, 0], anchors[0, 1]  # [N]
    valid = gt_ids >= 0  # [B, M]
    x1, y1, x2, y2 = (t[..., None] for t in gt_boxes.unbind(-1))  # [B, M, 1]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    r = radius * DET_STRIDE
    near = ((ax - cx).abs() < r) & ((ay - cy).abs() < r)
    cand = inside & near & valid[..., None]  # [B, M, N]
    nearest = ((ax - cx) ** 2 + (ay - cy) ** 2).argmin(-1, keepdim=True)  # [B, M, 1]
    cand = cand.scatter(2, nearest, valid[..., None] | cand.gather(2, nearest))
    area = ((x2 - x1) * (y2 - y1)).expand_as(cand)
    cost = torch.where(cand, area, torch.full_like(area, float("inf")))
    best, index = cost.min(1)  # [B, N]
    return torch.isfinite(best), index


def detection_loss(model: Detector, x: torch.Tensor, gt_boxes: torch.Tensor, gt_ids: torch.Tensor):
    """(total, class part, box part) for one batch.

    The class target of a positive anchor grows with the IoU its box achieves (as in TOOD /
    YOLOv8's task-aligned targets), so scores rank an object's boxes by quality: NMS keeps the
    best-placed one, and badly placed ones score low instead of competing with good ones for
    the top of the precision curve. Normalising by each object's best IoU keeps small objects,
    whose boxes are hardest to place, from scoring below the confidence threshold.
    """
    dist, logits = model.raw(x)
    pos, index = assign(model.anchors, gt_boxes, gt_ids)
    n_pos = pos.sum().clamp(min=1)
    b_idx, n_idx = pos.nonzero(as_tuple=True)

    x1y1, x2y2 = model.boxes(dist)
    pred = torch.cat([x1y1, x2y2], 1).transpose(1, 2)[b_idx, n_idx]  # [P, 4]
    truth = gt_boxes[b_idx, index[b_idx, n_idx]]
    iou, g = giou(pred, truth)
    box_loss = (1 - g).sum() / n_pos

    # Each box's best-placed anchor aims at 1, the others at their IoU relative to it.
    key = b_idx * gt_ids.shape[1] + index[b_idx, n_idx]
    iou = iou.detach().clamp(min=1e-3)
    best = torch.zeros(gt_ids.numel()).scatter_reduce(0, key, iou, "amax", include_self=False)
    target = torch.zeros_like(logits)  # [B, nc, N]
    labels = gt_ids.gather(1, index)  # [B, N]
    target[b_idx, labels[b_idx, n_idx], n_idx] = iou / best[key]
    cls_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / n_pos
    return cls_loss + 2.5 * box_loss, cls_loss.detach(), box_loss.detach()


# ---------------------------------------------------------------------------------------
# Training loops
# ---------------------------------------------------------------------------------------


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _batches(rng: np.random.Generator, n: int, batch: int):
    order = rng.permutation(n)
    for i in range(0, n - batch + 1, batch):  # drop the ragged tail: BatchNorm likes full batches
        yield order[i : i + batch]


def train_detector(data, seed: int, epochs: int, batch: int, lr: float, log_every: int = 50) -> Detector:
    images, boxes, ids = data
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 100])
    model = Detector(NUM_CLASSES).to(memory_format=torch.channels_last)  # ~1.4x faster convs on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    normalise = InputNormaliser(DET_PRE)
    total = epochs * (len(images) // batch)
    step, t0 = 0, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for idx in _batches(rng, len(images), batch):
            imgs, bxs = dihedral(images[idx], int(rng.integers(8)), boxes[idx])
            x = torch.from_numpy(normalise(list(imgs)).copy()).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, warmup=100)
            loss, cls_loss, box_loss = detection_loss(model, x, torch.from_numpy(bxs), torch.from_numpy(ids[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % log_every == 0 or step == total:
                print(f"detector  epoch {epoch + 1}/{epochs} step {step}/{total} cls {cls_loss:.3f} "
                      f"box {box_loss:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.to(memory_format=torch.contiguous_format).eval()


def train_classifier(
    data, backbone: Detector, seed: int, epochs: int, batch: int, lr: float, log_every: int = 50
) -> Classifier:
    images, labels = data
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 200])
    model = Classifier(NUM_CLASSES, backbone).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    normalise = InputNormaliser(CLS_PRE)
    total = epochs * (len(images) // batch)
    step, t0 = 0, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for idx in _batches(rng, len(images), batch):
            imgs, _ = dihedral(images[idx], int(rng.integers(8)))
            x = torch.from_numpy(normalise(list(imgs)).copy()).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, warmup=50)
            loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % log_every == 0 or step == total:
                print(f"classifier epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.to(memory_format=torch.contiguous_format).eval()


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def names_literal() -> str:
    """Ultralytics writes `names` as a Python dict literal."""
    return repr(dict(enumerate(CLASS_NAMES)))


def export(model: nn.Module, path: Path, size: int, metadata: dict[str, str]) -> None:
    """Legacy (TorchScript) exporter: no onnxscript needed; batch dimension symbolic."""
    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        out_dims = list(model(dummy).shape[1:])
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    # The tracer leaves the output's non-batch dims symbolic; state them, as `yolo export` does,
    # so the serving side can check the class count against `names` before running anything.
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(dims[1:], out_dims, strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "visionray.demo_models"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    # Same input, same answer: the file must reproduce the torch model.
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    spec = spec_from_onnx(path)
    got = OnnxModel(path, spec).session.run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB), spec input {spec.input_shape} -> "
          f"output {spec.output_shape}, preprocessing {spec.preprocessing.mode}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where the .onnx files go")
    ap.add_argument("--checkpoint-dir", type=Path, help="also save torch state dicts here")
    ap.add_argument("--only", choices=["detector", "classifier"],
                    help="train one model; the classifier then needs --backbone")
    ap.add_argument("--backbone", type=Path, help="detector.pt (from --checkpoint-dir) the classifier starts from")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed, for reproducibility)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating images")
    ap.add_argument("--det-images", type=int, default=4000)
    ap.add_argument("--det-epochs", type=int, default=5)
    ap.add_argument("--det-batch", type=int, default=32)
    ap.add_argument("--det-lr", type=float, default=3e-3)
    ap.add_argument("--cls-images", type=int, default=4000)
    ap.add_argument("--cls-epochs", type=int, default=3)
    ap.add_argument("--cls-batch", type=int, default=64)
    ap.add_argument("--cls-lr", type=float, default=2e-3)
    ap.add_argument("--evaluate", action="store_true", help="measure the exported files on held-out images")
    args = ap.parse_args(argv)
    if args.only == "classifier" and not args.backbone:
        ap.error("--only classifier needs --backbone (a detector.pt saved with --checkpoint-dir)")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cv2.setNumThreads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint_dir:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if args.only == "classifier":
        detector = Detector(NUM_CLASSES)
        detector.load_state_dict(torch.load(args.backbone, weights_only=True))
    else:
        t0 = time.perf_counter()
        data = detection_dataset(args.seed, args.det_images, args.workers)
        print(f"detector data: {len(data[0])} images, {(data[2] >= 0).sum()} shapes "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        detector = train_detector(data, args.seed, args.det_epochs, args.det_batch, args.det_lr)
        del data
        if args.checkpoint_dir:
            torch.save(detector.state_dict(), args.checkpoint_dir / "detector.pt")
        export(detector, args.out_dir / "detector.onnx", DET_SIZE, {
            "names": names_literal(),
            "imgsz": str([DET_SIZE, DET_SIZE]),
            "stride": str(DET_MAX_STRIDE),
            "task": "detect",
            "description": f"visionray demo shape detector (seed {args.seed}); see demo_models/README.md",
        })
        print(f"detector done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    if args.only != "detector":
        t0 = time.perf_counter()
        data = classification_dataset(args.seed, args.cls_images, args.workers)
        print(f"classifier data: {len(data[0])} images ({time.perf_counter() - t0:.0f} s)", flush=True)
        classifier = train_classifier(data, detector, args.seed, args.cls_epochs, args.cls_batch, args.cls_lr)
        del data
        if args.checkpoint_dir:
            torch.save(classifier.state_dict(), args.checkpoint_dir / "classifier.pt")
        export(classifier, args.out_dir / "classifier.onnx", CLS_SIZE, {
            "names": names_literal(),
            "imgsz": str([CLS_SIZE, CLS_SIZE]),
            "task": "classify",
            PRESET_METADATA_KEY: "imagenet",
            "description": f"visionray demo shape classifier (seed {args.seed}); see demo_models/README.md",
        })

    print(f"total training time {time.perf_counter() - t_start:.0f} s", flush=True)
    if args.evaluate:
        from demo_models import evaluate

        evaluate.main([
            "--det-images", "0" if args.only == "classifier" else "200",
            "--cls-images", "0" if args.only == "detector" else "500",
            "--detector", str(args.out_dir / "detector.onnx"),
            "--classifier", str(args.out_dir / "classifier.onnx"),
        ])


if __name__ == "__main__":
    main()
