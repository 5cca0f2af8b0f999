"""What runs inside Ray Serve replicas, below the protocols.

The typed configuration (config.py), the data plane every protocol calls (dataplane.py), which
version serves (alias_watcher.py, model_versions.py), the inference and postprocess stages as
Serve deployments (inference_stage.py, postprocess_stage.py) and how the ingress reaches them
(stage_links.py), placement on nodes, metrics, and every private Ray API in one place
(ray_compat.py). Numeric work lives below, in core/.
"""
