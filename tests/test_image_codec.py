import cv2
import numpy as np
import pytest

from deployments.image_codec import ImageDecodeError, decode_image


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
