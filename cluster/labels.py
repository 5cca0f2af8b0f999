"""Node label conventions, in one place: what every node of a visionray cluster declares.

Ray labels place deployments (`label_selector: {node-type: jetson}`); the `edge` custom
resource is the stable fallback where labels (beta in Ray 2.60) are not honoured.
Jetsons also get `--num-gpus=1`: Ray finds GPUs through NVML, which a Jetson's integrated
GPU does not have, so Ray would otherwise report GPU: 0.
"""

from __future__ import annotations

import json
import re

from deployments import ray_compat

NODE_TYPE = "node-type"
JETSON_MODEL = "jetson-model"
JETPACK = "jetpack"

DATACENTER = "datacenter"
JETSON = "jetson"
NODE_TYPES = (DATACENTER, JETSON)

# Custom resource every Jetson offers; edge deployments ask for a small fraction of it.
EDGE_RESOURCE = "edge"
EDGE_RESOURCE_UNITS = 100

JETSON_MODELS = ("orin-nano", "orin-nx", "agx-orin", "agx-thor", "xavier-nx", "agx-xavier")
JETPACK_MAJORS = ("6", "7")

# Kubernetes label value syntax, which Ray enforces.
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class LabelError(ValueError):
    pass


def node_labels(node_type: str, jetson_model: str | None = None, jetpack: str | None = None) -> dict[str, str]:
    """The labels of one node; Jetsons must say which model and JetPack they run."""
    if node_type not in NODE_TYPES:
        raise LabelError(f"unknown node type {node_type!r}; choose one of {NODE_TYPES}")
    labels = {NODE_TYPE: node_type}
    if node_type == JETSON:
        if jetson_model not in JETSON_MODELS:
            raise LabelError(f"a Jetson needs --jetson-model, one of {JETSON_MODELS} (got {jetson_model!r})")
        if not jetpack or jetpack.split(".")[0] not in JETPACK_MAJORS or not _LABEL_VALUE.match(jetpack):
            raise LabelError(f"a Jetson needs --jetpack, e.g. 6.2 or 7.0 (JetPack {'/'.join(JETPACK_MAJORS)}), "
                             f"got {jetpack!r}")
        labels.update({JETSON_MODEL: jetson_model, JETPACK: jetpack})
    elif jetson_model or jetpack:
        raise LabelError("--jetson-model and --jetpack are for Jetson nodes only")
    return labels


def ray_start_args(node_type: str, jetson_model: str | None = None, jetpack: str | None = None) -> list[str]:
    """The `ray start` options that declare a node of this type (labels, GPU, resources)."""
    labels = node_labels(node_type, jetson_model, jetpack)
    args = [f"{ray_compat.RAY_START_LABELS_OPTION}=" + ",".join(f"{k}={v}" for k, v in labels.items())]
    if node_type == JETSON:
        args += ["--num-gpus=1", "--resources=" + json.dumps({EDGE_RESOURCE: EDGE_RESOURCE_UNITS})]
    return args
