"""The serving pipeline in one process, without Ray: the same functions the three stages
call, in the same order. Used to evaluate models and as the benchmark's in-process limit.
"""

from __future__ import annotations

from pathlib import Path

from deployments.image_codec import decode_image
from deployments.model_spec import spec_from_onnx
from deployments.onnx_backend import BackendSettings, OnnxModel
from deployments.postprocess import postprocess
from deployments.postprocessing import yolo_candidates
from deployments.predict_params import PredictParams
from deployments.preprocessing import prepare_image
from model_registry.source import ResolvedModel


class LocalPipeline:
    """bytes -> the service's result dict for one image. Thread-safe (ORT sessions are)."""

    def __init__(self, path: str | Path, backend: BackendSettings | None = None):
        spec = spec_from_onnx(path)
        self.resolved = ResolvedModel(name=Path(path).stem, version="local", path=str(path), spec=spec)
        self.model = OnnxModel(path, spec, backend or BackendSettings())
        self.params = PredictParams(conf=spec.conf, iou=spec.iou, max_det=spec.max_det, top_k=spec.top_k)

    def __call__(self, data: bytes) -> dict:
        spec = self.resolved.spec
        img, meta = prepare_image(decode_image(data), spec.preprocessing)
        out = self.model.run([img])[0]
        if spec.task == "detect":
            out = yolo_candidates(out, self.params.conf)
        return postprocess(self.resolved, self.model.outputs_probabilities, out, meta, self.params)
