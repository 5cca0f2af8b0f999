"""Application builder: `import_path: serve.app:build_app` in serve/config.yaml."""

from __future__ import annotations

from ray.serve import Application

from deployments.inference import Inference
from deployments.postprocess import Postprocess
from deployments.preprocess import Preprocess
from serve.settings import PipelineConfig

PIPELINE_DEPLOYMENT = "Pipeline"


def build_app(args: dict) -> Application:
    settings = PipelineConfig.model_validate(args)
    config = settings.model_dump()
    if settings.stages == "in_process":
        # All three stages in each replica of one deployment (deployments/stage_links.py).
        return Preprocess.options(name=PIPELINE_DEPLOYMENT).bind(config)
    return Preprocess.bind(config, Inference.bind(config), Postprocess.bind(config))
