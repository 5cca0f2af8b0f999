"""Application builder: `import_path: serve.app:build_app` in serve/config.yaml."""

from __future__ import annotations

from ray.serve import Application

from deployments.config import PipelineConfig
from deployments.inference_stage import Inference
from deployments.postprocess_stage import Postprocess
from serve.ingress import Ingress

# The front door's deployment name in `serve status`, the dashboard and the metrics, whichever
# way the stages run.
INGRESS_DEPLOYMENT = "Ingress"


def build_app(args: dict) -> Application:
    settings = PipelineConfig.model_validate(args)
    config = settings.model_dump()
    if settings.stages == "in_process":
        # All three stages in each ingress replica (deployments/stage_links.py).
        return Ingress.bind(config)
    return Ingress.bind(config, Inference.bind(config), Postprocess.bind(config))
