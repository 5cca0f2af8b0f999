import cv2
import numpy as np
import pytest

from core.image_codec import ImageDecodeError, decode_image


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_jpeg_and_png_decode_to_bgr8():
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    out = decode_image(_png(img))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert np.array_equal(out, img)
    ok, jpg = cv2.imencode(".jpg", img)
    assert decode_image(jpg.tobytes()).shape == (30, 40, 3)


def test_grayscale_16bit_and_alpha_become_3_channel_8bit():
    gray = np.full((10, 12), 200, np.uint8)
    assert decode_image(_png(gray)).shape == (10, 12, 3)
    deep = np.full((10, 12, 3), 40000, np.uint16)
    out = decode_image(_png(deep))
    assert out.dtype == np.uint8 and out[0, 0, 0] == 40000 >> 8
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 2] = 255
    out = decode_image(_png(rgba))
    assert out.shape == (10, 12, 3) and out[0, 0, 2] == 255


@pytest.mark.parametrize(
    "data, unsupported",
    [
        (b"", False),
        (b"hello, I am text", True),
        (b"GIF89a" + b"\0" * 20, True),
        (b"\xff\xd8\xff\xe0" + b"\0" * 50, False),  # JPEG signature, garbage after it
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 10, False),  # truncated PNG
    ],
)
def test_bad_bytes_raise_a_clear_error(data, unsupported):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data)
    assert err.value.unsupported_type is unsupported
    assert str(err.value)


def test_decompression_bomb_is_refused_before_decoding():
    img = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(_png(img), max_pixels=5000)


def _jpeg(width: int = 40, height: int = 30) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def _with_declared_size(jpeg: bytes, width: int, height: int, fill: bytes = b"") -> bytes:
    """The same JPEG with its frame header claiming another size, `fill` 0xFF bytes before it."""
    sof = jpeg.index(b"\xff\xc0")
    header = bytearray(jpeg[sof:sof + 9])
    header[5:7], header[7:9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return jpeg[:sof] + fill + bytes(header) + jpeg[sof + 9:]


@pytest.mark.parametrize("fill", [b"", b"\xff", b"\xff\xff\xff"], ids=["plain", "1-fill", "3-fill"])
def test_jpeg_size_limit_holds_with_fill_bytes_before_the_frame_header(fill):
    """Fill bytes before a marker are legal; they once made the header parser give up and the
    limit go unchecked, so a 42 KB file declaring 20000x20000 was decoded at 2.9 GB."""
    bomb = _with_declared_size(_jpeg(), 20_000, 20_000, fill)
    with pytest.raises(ImageDecodeError, match="20000x20000, over the"):
        decode_image(bomb)
    # The same structure at an honest size still decodes: the parser accepts fill bytes.
    assert decode_image(_jpeg()[:2] + fill + _jpeg()[2:]).shape == (30, 40, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xda" + b"\0" * 100,  # scan data before any frame header
        b"\xff\xd8\xff\xe0\x00\x10" + b"\0" * 14 + b"\xff\xd9",  # APP0 then end of image
        b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 40,  # impossible segment length
        b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dJUNK" + b"\0" * 20,  # PNG whose first chunk is not IHDR
    ],
    ids=["sos-first", "no-frame", "bad-length", "png-no-ihdr"],
)
def test_an_image_whose_header_does_not_state_its_size_is_refused(data):
    with pytest.raises(ImageDecodeError, match="does not state the image size"):
        decode_image(data)
