import numpy as np
import pytest

from core.model_spec import Preprocessing, preset
from core.preprocessing import InputNormaliser, letterbox, prepare_image, resize_center_crop


def test_letterbox_matches_ultralytics_geometry_for_bus_sized_image():
    img = np.zeros((1080, 810, 3), np.uint8)
    out, meta = letterbox(img, 640, 640)
    assert out.shape == (640, 640, 3)
    r = 640 / 1080
    assert meta.ratio == pytest.approx(r)
    # new size (480, 640): 160 px of horizontal padding split 80/80
    assert (meta.pad_left, meta.pad_top) == (80, 0)
    assert out[:, :80].max() == 114 and out[:, 80:560].max() == 0 and out[:, 560:].min() == 114


@pytest.mark.parametrize("h, w, size", [(480, 640, 320), (100, 300, 320), (640, 640, 640), (333, 517, 640)])
def test_letterbox_any_size_fits_and_centres(h, w, size):
    out, meta = letterbox(np.full((h, w, 3), 7, np.uint8), size, size)
    assert out.shape == (size, size, 3)
    content = np.argwhere(out[..., 0] == 7)
    top, left = content.min(axis=0)
    assert (left, top) == (meta.pad_left, meta.pad_top)


def test_odd_padding_puts_the_extra_pixel_after_the_image():
    # 641-wide content area leaves 1 px that Ultralytics rounds to the bottom/right.
    out, meta = letterbox(np.zeros((100, 201, 3), np.uint8), 64, 64)
    assert out.shape == (64, 64, 3)
    assert meta.pad_top == round((64 - round(100 * 64 / 201)) / 2 - 0.1)


def test_center_crop_resizes_shorter_side_then_crops():
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, 200:] = 255  # right half white
    out, meta = resize_center_crop(img, 224, 224, 256)
    assert out.shape == (224, 224, 3)
    assert (meta.width, meta.height) == (400, 300)
    # resized to 341x256, crop x from 58: left part black, right part white
    assert out[:, :100].max() == 0 and out[:, 130:].min() == 255


def test_prepare_image_dispatches_on_mode():
    img = np.zeros((50, 80, 3), np.uint8)
    for mode in ("letterbox", "center_crop", "resize"):
        pre = Preprocessing(mode=mode, height=32, width=48, resize_shorter=40)
        out, _ = prepare_image(img, pre)
        assert out.shape == (32, 48, 3) and out.dtype == np.uint8


def test_normaliser_matches_reference_formula():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in range(3)]
    pre = preset("imagenet", 8, 6)
    x = InputNormaliser(pre)(imgs)
    mean, std = np.array(pre.mean), np.array(pre.std)
    for i, img in enumerate(imgs):
        rgb = img[..., ::-1].astype(np.float64) / 255
        ref = ((rgb - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(x[i], ref, atol=1e-5)
    assert x.dtype == np.float32 and x.shape == (3, 3, 8, 6)


def test_normaliser_letterbox_is_rgb_over_255_and_nhwc_layout():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    pre = preset("letterbox", 4, 4)
    x = InputNormaliser(pre)([img])
    assert x[0, 2].min() == 1.0 and x[0, :2].max() == 0.0  # blue is the last RGB channel
    nhwc = InputNormaliser(pre.model_copy(update={"layout": "nhwc", "channel_order": "bgr"}))([img])
    assert nhwc.shape == (1, 4, 4, 3) and nhwc[0, ..., 0].min() == 1.0
