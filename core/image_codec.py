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
    """(width, height) from the header without decoding pixels, or None if the header does not say."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return _jpeg_dimensions(data)


# Markers without a length field: TEM and RST0..RST7 (SOI was consumed already).
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers (ITU T.81 B.1) to the frame header; any number of 0xFF fill bytes
    may precede a marker, and decoders skip them, so this must too."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA, 0x00):  # EOI or scan data before any frame header
            return None
        if i + 2 > n:
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 3:i + 5], "big")
        if length < 2:
            return None
        i += length
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
    # No size in the header, no decode: the limit must hold before cv2 allocates anything.
    if dims is None:
        raise ImageDecodeError(f"the {fmt.upper()} header does not state the image size (corrupt or truncated)")
    if dims[0] * dims[1] > max_pixels:
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
