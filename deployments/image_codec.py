"""Decode uploaded image bytes into 3-channel 8-bit BGR arrays."""

from __future__ import annotations

import cv2
import numpy as np

# Magic numbers of the formats we accept; anything else is refused before cv2 sees it.
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
}

# Decompression-bomb guard: a tiny PNG can claim a 100k x 100k canvas.
MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode (the caller answers 400/415)."""

    def __init__(self, message: str, unsupported_type: bool = False):
        super().__init__(message)
        self.unsupported_type = unsupported_type


def sniff_format(data: bytes) -> str | None:
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            return name
    return None


def _png_or_jpeg_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Read (width, height) from the header without decoding pixels."""
    if fmt == "png" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "jpeg":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h = int.from_bytes(data[i + 5 : i + 7], "big")
                w = int.from_bytes(data[i + 7 : i + 9], "big")
                return w, h
            i += 2 + length
    return None


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return an HxWx3 uint8 BGR image; grayscale, 16-bit and alpha inputs are converted."""
    if not data:
        raise ImageDecodeError("request body is empty; send JPEG or PNG bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(
            "body is not a JPEG or PNG image (unrecognised file signature)",
            unsupported_type=True,
        )
    dims = _png_or_jpeg_dimensions(data, fmt)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise ImageDecodeError(
            f"image is {dims[0]}x{dims[1]}, over the {max_pixels} pixel limit"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageDecodeError(f"could not decode the {fmt.upper()} image (corrupt or truncated)")
    return to_bgr8(img)


def to_bgr8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 3:
        return img
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    raise ImageDecodeError(f"unsupported channel count {channels}")
