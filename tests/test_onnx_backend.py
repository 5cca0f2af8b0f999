import numpy as np
import onnx
import pytest

from core.image_codec import decode_image
from core.model_spec import spec_from_onnx
from core.onnx_backend import BackendSettings, OnnxModel, make_batch_dynamic, resolve_providers, sample_images
from core.postprocessing import postprocess, yolo_candidates
from core.predict_params import PredictParams
from core.preprocessing import prepare_image
from demo_models.evaluate import DETECTOR_PATH
from tests.models import (
    BUS_JPG,
    YOLO_DYNAMIC,
    YOLO_QDQ,
    assert_bus_detections,
    color_classifier,
    needs_shared_models,
    solid_image,
)

PARAMS = PredictParams(conf=0.25, iou=0.45, max_det=300, top_k=3)


def _bus(model: OnnxModel):
    img = decode_image(BUS_JPG.read_bytes())
    x, meta = prepare_image(img, model.spec.preprocessing)
    return x, meta


@needs_shared_models
@pytest.mark.parametrize("path", [YOLO_QDQ, YOLO_DYNAMIC], ids=lambda p: p.name)
def test_reference_detections_on_bus(path):
    spec = spec_from_onnx(path)
    model = OnnxModel(path, spec)
    x, meta = _bus(model)
    out = model.run([x])
    result = postprocess(spec, False, yolo_candidates(out[0], 0.25), meta, PARAMS)
    assert_bus_detections(result["detections"], path)


@needs_shared_models
def test_fixed_batch_export_gets_a_verified_batch_dynamic_copy():
    model = OnnxModel(YOLO_QDQ, spec_from_onnx(YOLO_QDQ))
    assert model.batch_mode == "rewritten" and model.batch_invariant
    x, _ = _bus(model)
    other = sample_images(model.spec, 3, seed=9)
    alone = model.run([x])[0]
    batched = model.run([other[0], x, other[1], other[2]])
    np.testing.assert_allclose(batched[1], alone, atol=1e-4)


@needs_shared_models
def test_dynamic_quantization_is_detected_as_batch_variant():
    model = OnnxModel(YOLO_DYNAMIC, spec_from_onnx(YOLO_DYNAMIC))
    assert model.batch_mode == "rewritten"
    assert model.batch_invariant is False


@needs_shared_models
def test_rewrite_only_touches_activation_reshapes():
    original = onnx.load(YOLO_DYNAMIC)
    rewritten = make_batch_dynamic(original)
    assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    changed = [
        a.name for a, b in zip(original.graph.initializer, rewritten.graph.initializer)
        if a.raw_data != b.raw_data or list(a.int64_data) != list(b.int64_data)
    ]
    assert changed and all(name.startswith("/model.22/") for name in changed)


def test_classifier_logits_vs_probabilities(tmp_path):
    logits = OnnxModel(color_classifier(tmp_path / "a.onnx"), spec_from_onnx(tmp_path / "a.onnx"))
    probs = OnnxModel(color_classifier(tmp_path / "b.onnx", softmax=True), spec_from_onnx(tmp_path / "b.onnx"))
    assert logits.batch_mode == "native" and not logits.outputs_probabilities
    assert probs.outputs_probabilities
    for model in (logits, probs):
        x, meta = prepare_image(solid_image((255, 0, 0)), model.spec.preprocessing)  # blue
        out = model.run([x])[0]
        classes = postprocess(model.spec, model.outputs_probabilities, out, meta, PARAMS)["classes"]
        assert classes[0]["label"] == "blue" and classes[0]["score"] > 0.9
        assert sum(c["score"] for c in classes) == pytest.approx(1, abs=1e-3)


def test_fixed_batch_classifier_is_rewritten(tmp_path):
    path = color_classifier(tmp_path / "f.onnx", fixed_batch=True)
    model = OnnxModel(path, spec_from_onnx(path))
    assert model.batch_mode == "rewritten"
    assert model.run(sample_images(model.spec, 3)).shape == (3, 3)


def test_unavailable_providers_are_dropped_and_cpu_remains():
    providers = resolve_providers(["TensorrtExecutionProvider", ("CUDAExecutionProvider", {"device_id": 0})])
    assert providers[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("min_ms, expect_lone", [(0.0, True), (1e6, False)])
def test_lone_run_session_only_for_runs_long_enough(min_ms, expect_lone):
    """A second, wider session exists only when a run is at least lone_run_min_ms long, and it
    gives the narrow session's answer."""
    path = DETECTOR_PATH
    settings = BackendSettings(intra_op_threads=1, lone_run_threads=2, lone_run_min_ms=min_ms)
    model = OnnxModel(path, spec_from_onnx(path), settings)
    assert model.lone_run_threads == (2 if expect_lone else 1)
    x = sample_images(model.spec, 1, seed=3)[0]
    np.testing.assert_allclose(model.run([x], alone=True)[0], model.run([x])[0], atol=1e-4)
