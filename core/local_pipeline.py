"""The serving pipeline in one process, without Ray: the same functions the three stages
call, in the same order. Used to evaluate models and as the benchmark's in-process limit.
"""

from __future__ import annotations

from pathlib import Path

from core.image_codec import decode_image
from core.model_spec import spec_from_onnx
from core.onnx_backend import BackendSettings, OnnxModel
from core.postprocessing import postprocess, yolo_candidates
from core.predict_params import PredictParams
from core.preprocessing import prepare_image


class LocalPipeline:
    """bytes -> the service's result dict for one image. Thread-safe (ORT sessions are)."""

    def __init__(self, path: str | Path, backend: BackendSettings | None = None):
        spec = spec_from_onnx(path)
        self.spec = spec
        self.model = OnnxModel(path, spec, backend or BackendSettings())
        self.params = PredictParams(conf=spec.conf, iou=spec.iou, max_det=spec.max_det, top_k=spec.top_k)

    def __call__(self, data: bytes) -> dict:
        spec = self.spec
        img, meta = prepare_image(decode_image(data), spec.preprocessing)
        out = self.model.run([img])[0]
        if spec.task == "detect":
            out = yolo_candidates(out, self.params.conf)
        return postprocess(spec, self.model.outputs_probabilities, out, meta, self.params)
