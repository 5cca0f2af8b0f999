import pytest

from core.model_spec import SpecError, spec_from_onnx
from tests.models import COCO_LABELS, YOLO_QDQ, color_classifier, needs_shared_models


@needs_shared_models
def test_yolo_export_needs_no_hand_written_spec():
    spec = spec_from_onnx(YOLO_QDQ)
    assert spec.task == "detect"
    assert spec.input_name == "images" and spec.input_shape == [1, 3, 640, 640]
    assert spec.output_shape == [1, 84, 8400]
    assert spec.preprocessing.mode == "letterbox" and spec.preprocessing.pad_value == 114
    assert (spec.preprocessing.height, spec.preprocessing.width) == (640, 640)
    assert len(spec.labels) == 80 and spec.labels[5] == "bus"
    assert spec.labels == [line.strip() for line in COCO_LABELS.read_text().splitlines() if line.strip()]


def test_classifier_needs_only_its_preset(tmp_path):
    spec = spec_from_onnx(color_classifier(tmp_path / "c.onnx", size=32))
    assert spec.task == "classify" and spec.labels == ["red", "green", "blue"]
    pre = spec.preprocessing
    assert pre.mode == "center_crop" and (pre.height, pre.width) == (32, 32)
    assert pre.resize_shorter == round(32 * 256 / 224)
    assert pre.mean == (0.485, 0.456, 0.406)
    assert spec.fixed_batch is None


def test_wrong_label_count_and_unknown_preset_are_refused(tmp_path):
    path = color_classifier(tmp_path / "c.onnx")
    with pytest.raises(SpecError, match="labels"):
        spec_from_onnx(path, labels=["a", "b"])
    with pytest.raises(ValueError, match="preset"):
        spec_from_onnx(path, preset_name="fancy")


def test_output_shape_must_fit_the_task(tmp_path):
    path = color_classifier(tmp_path / "c.onnx")
    with pytest.raises(SpecError, match="detect model output"):
        spec_from_onnx(path, task="detect")
