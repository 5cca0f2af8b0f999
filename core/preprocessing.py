"""Image -> model input: geometry per request (uint8), normalisation once per batch (float).

The split is deliberate: `prepare_image` runs in the preprocess stage and produces a
compact uint8 HxWx3 BGR array (1.2 MB for 640x640, a quarter of the float tensor);
`batch_to_input` runs in the inference stage over the whole batch at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from core.model_spec import Preprocessing


@dataclass(frozen=True)
class ImageMeta:
    """What postprocessing needs to map model coordinates back to the original image."""

    width: int
    height: int
    ratio: float = 1.0
    pad_left: float = 0.0
    pad_top: float = 0.0


def letterbox(
    img: np.ndarray, height: int, width: int, pad_value: int = 114
) -> tuple[np.ndarray, ImageMeta]:
    """Ultralytics-equivalent letterbox: scale to fit, centre, pad (rounding as Ultralytics)."""
    h, w = img.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = round(w * r), round(h * r)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
    )
    return out, ImageMeta(width=w, height=h, ratio=r, pad_left=left, pad_top=top)


def resize_center_crop(
    img: np.ndarray, height: int, width: int, resize_shorter: int
) -> tuple[np.ndarray, ImageMeta]:
    """torchvision-style eval transform: shorter side to `resize_shorter`, then centre crop."""
    h, w = img.shape[:2]
    r = resize_shorter / min(h, w)
    new_w, new_h = max(width, round(w * r)), max(height, round(h * r))
    # INTER_AREA approximates PIL's antialiased bilinear when shrinking.
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    top, left = int(round((new_h - height) / 2)), int(round((new_w - width) / 2))
    crop = np.ascontiguousarray(img[top : top + height, left : left + width])
    return crop, ImageMeta(width=w, height=h, ratio=r, pad_left=-left, pad_top=-top)


def plain_resize(img: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ImageMeta]:
    h, w = img.shape[:2]
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return out, ImageMeta(width=w, height=h, ratio=width / w)


def prepare_image(img: np.ndarray, pre: Preprocessing) -> tuple[np.ndarray, ImageMeta]:
    """Geometry only: BGR uint8 in, BGR uint8 at the model's input size out."""
    if pre.mode == "letterbox":
        return letterbox(img, pre.height, pre.width, pre.pad_value)
    if pre.mode == "center_crop":
        return resize_center_crop(img, pre.height, pre.width, pre.resize_shorter or min(pre.height, pre.width))
    return plain_resize(img, pre.height, pre.width)


class InputNormaliser:
    """uint8 BGR NHWC batch -> the model's float tensor, with one reused buffer per batch size.

    The returned array is overwritten by the same thread's next call of the same size.

    Channel order, layout, scale and mean/std are folded into a single pass per channel so
    the batch is read once and written once.
    """

    def __init__(self, pre: Preprocessing, dtype: str = "float32"):
        self.pre = pre
        self.dtype = np.dtype(dtype)
        # x' = (x * scale - mean) / std  ==  x * a + b
        std = np.asarray(pre.std, dtype=np.float64)
        self._a = (pre.scale / std).astype(np.float32)
        self._b = (-np.asarray(pre.mean, dtype=np.float64) / std).astype(np.float32)
        self._identity_affine = bool(np.all(self._b == 0) and np.all(self._a == self._a[0]))
        # Per thread: a buffer is reused by the next batch, so threads must not share one.
        self._local = threading.local()

    def _buffer(self, n: int) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        buf = buffers.get(n)
        if buf is None:
            h, w = self.pre.height, self.pre.width
            shape = (n, 3, h, w) if self.pre.layout == "nchw" else (n, h, w, 3)
            buf = buffers[n] = np.empty(shape, dtype=self.dtype)
        return buf

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        n = len(images)
        out = self._buffer(n)
        # BGR source channel for each model channel.
        src = (2, 1, 0) if self.pre.channel_order == "rgb" else (0, 1, 2)
        for i, img in enumerate(images):
            for c, s in enumerate(src):
                dst = out[i, c] if self.pre.layout == "nchw" else out[i, :, :, c]
                np.multiply(img[:, :, s], self._a[c], out=dst, casting="unsafe")
                if not self._identity_affine:
                    dst += self._b[c]
        return out
