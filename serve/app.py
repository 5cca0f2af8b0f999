"""Application builder: `import_path: serve.app:build_app` in serve/config.yaml."""

from __future__ import annotations

from ray.serve import Application

from deployments.inference import Inference
from deployments.postprocess import Postprocess
from deployments.preprocess import Preprocess
from serve.settings import PipelineConfig


def build_app(args: dict) -> Application:
    config = PipelineConfig.model_validate(args).model_dump()
    return Preprocess.bind(config, Inference.bind(config), Postprocess.bind(config))
