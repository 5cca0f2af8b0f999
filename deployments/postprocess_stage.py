"""Postprocess stage: candidates -> detections or classes, in original-image terms."""

from __future__ import annotations

import time

from ray import serve

from core.postprocessing import postprocess
from core.predict_params import PredictParams
from core.preprocessing import ImageMeta
from deployments.config import PipelineConfig, make_source
from deployments.model_versions import LoadedVersions
from deployments.placement import node_id, node_info


class PostprocessStage:
    """The postprocess stage: a Serve deployment (`Postprocess`) or in-process (stage_links.py)."""

    def __init__(self, config: dict):
        cfg = PipelineConfig.model_validate(config)
        self.versions = LoadedVersions(make_source(cfg), lambda resolved: resolved, cfg.registry.keep_versions)

    async def load(self, key: str) -> dict:
        resolved = await self.versions.get(key)
        return {"version": resolved.version, "state": "ready"}

    async def __call__(self, key: str, inferred: tuple, metas: list[ImageMeta], params: list[PredictParams]):
        """A group of inference outputs (one ingress call) -> one JSON-ready dict per image."""
        resolved = await self.versions.get(key)
        outputs, timings, probabilities = inferred
        timings = dict(timings)
        served_by = {"inference": timings.pop("node_id", None), "postprocess": node_id()}
        results = []
        for output, meta, item_params in zip(outputs, metas, params):
            if output is None:  # not run: its deadline passed (inference counted it)
                results.append({"expired": True})
                continue
            # Sub-millisecond numpy work: cheaper inline than a thread hop.
            t0 = time.perf_counter()
            result = postprocess(resolved.spec, probabilities, output, meta, item_params)
            result["served_by"] = dict(served_by)
            result["timings_ms"] = {**timings, "postprocess_ms": round((time.perf_counter() - t0) * 1000, 2)}
            results.append(result)
        return results

    def status(self) -> dict:
        return {"models": {key: {"version": r.version, "state": "ready"} for key, r in self.versions.items()},
                "failures": dict(self.versions.failures), "node": node_info()}


Postprocess = serve.deployment(name="Postprocess", ray_actor_options={"num_cpus": 0.25},
                               max_ongoing_requests=64)(PostprocessStage)
