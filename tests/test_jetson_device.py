"""On a real Jetson only (`pytest -m jetson` there): the edge backend builds a TensorRT FP16
engine on the device, caches it, and still detects what the CPU reference detects.

Runs where TensorRT is actually usable (a Jetson with JetPack's TensorRT 10 and NVIDIA's
Jetson onnxruntime-gpu wheel, cluster/README.md); skips everywhere else, so CI on x86 stays
green while the real path stays written and runnable on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.models import BUS_JPG, YOLO_QDQ, needs_shared_models

REPO = Path(__file__).resolve().parents[1]
IS_JETSON = Path("/etc/nv_tegra_release").is_file()

pytestmark = [
    pytest.mark.jetson,
    needs_shared_models,
    pytest.mark.skipif(not IS_JETSON, reason="needs a Jetson (no /etc/nv_tegra_release)"),
]


def edge_backend() -> dict:
    edge = yaml.safe_load((REPO / "serve" / "edge.yaml").read_text())["applications"][1]
    return edge["args"]["backend"]


def letterboxed_bus() -> np.ndarray:
    import cv2

    from core.preprocessing import letterbox

    img = cv2.imread(str(BUS_JPG))
    return letterbox(img, 640, 640)[0]


def test_tensorrt_fp16_engine_is_built_on_the_device_and_cached(tmp_path):
    import onnxruntime as ort

    from core.onnx_backend import resolve_providers

    assert "TensorrtExecutionProvider" in ort.get_available_providers(), "install NVIDIA's Jetson onnxruntime-gpu"
    providers = resolve_providers(edge_backend()["providers"], str(tmp_path))
    session = ort.InferenceSession(str(YOLO_QDQ), providers=providers)
    assert session.get_providers()[0] == "TensorrtExecutionProvider"
    x = letterboxed_bus()[None].transpose(0, 3, 1, 2)[:, ::-1].astype(np.float32) / 255
    name = session.get_inputs()[0].name
    trt_out = session.run(None, {name: np.ascontiguousarray(x)})[0]
    assert any(p.suffix == ".engine" for p in tmp_path.iterdir()), "no engine cached"
    cpu_out = ort.InferenceSession(str(YOLO_QDQ), providers=["CPUExecutionProvider"]).run(
        None, {name: np.ascontiguousarray(x)})[0]
    # FP16 on the device: the strongest boxes keep their class and score to within 0.05.
    best = cpu_out[0, 4:].max(axis=0).argsort()[-20:]
    assert np.allclose(trt_out[0, 4:, best], cpu_out[0, 4:, best], atol=0.05)
