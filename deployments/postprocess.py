"""Postprocess stage: candidates -> detections or classes, in original-image terms."""

from __future__ import annotations

import logging
import time

import numpy as np
from ray import serve

from deployments.postprocessing import detections, softmax, top_k
from deployments.preprocessing import ImageMeta
from model_registry.source import LocalFileSource, ResolvedModel
from serve.http_api import PredictParams
from serve.settings import PipelineConfig

log = logging.getLogger("ray.serve")


def postprocess(
    resolved: ResolvedModel, outputs_probabilities: bool, output: np.ndarray, meta: ImageMeta, params: PredictParams
) -> dict:
    """The JSON-ready result for one image (pure: also used by the in-process benchmark)."""
    spec = resolved.spec
    if spec.task == "detect":
        return {"detections": detections(output, meta, spec.labels, params.conf, params.iou, params.max_det)}
    probs = output if outputs_probabilities else softmax(output.astype(np.float64))
    return {"classes": top_k(probs, params.top_k, spec.labels)}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Postprocess:
    def __init__(self, config: dict):
        cfg = PipelineConfig.model_validate(config)
        self.models: dict[str, ResolvedModel] = {}
        self.failures: dict[str, str] = {}
        source = LocalFileSource(cfg.models)
        for name in source.names():
            try:
                resolved = source.resolve(name)
                self.models[resolved.key] = resolved
            except Exception as exc:  # noqa: BLE001
                log.exception("model %s failed to load", name)
                self.failures[name] = f"{type(exc).__name__}: {exc}"

    async def __call__(self, key: str, inferred: tuple, meta: ImageMeta, params: PredictParams):
        # Sub-millisecond numpy work: cheaper inline than a thread hop.
        t0 = time.perf_counter()
        output, timings, probabilities = inferred
        result = postprocess(self.models[key], probabilities, output, meta, params)
        result["timings_ms"] = {**timings, "postprocess_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return result

    def status(self) -> dict:
        return {"models": {r.name: {"version": r.version, "state": "ready"} for r in self.models.values()},
                "failures": self.failures}
