"""Where a replica runs: its Ray node id and labels, and local-first handles.

Edge pipelines must process a request on the node that received it; each stage reports its
node so that placement is visible (`GET /v1/models/{name}`) and provable per request.
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from deployments import ray_compat

_known: dict | None = None  # this process's node, once Ray has said: a process never changes node


def node_info() -> dict:
    """{"node_id", "labels"} of this process's node (asked a few times a request: cached)."""
    global _known
    if _known is None:
        import ray

        if not ray.is_initialized():  # outside Ray (unit tests): asking would start a Ray of its own
            return {"node_id": None, "labels": {}}
        ctx = ray.get_runtime_context()
        labels = {k: v for k, v in ctx.get_node_labels().items() if not k.startswith("ray.io/")}
        _known = {"node_id": ctx.get_node_id(), "labels": labels}
    return _known


def node_id() -> str:
    return node_info()["node_id"]


def local_first(handle: DeploymentHandle) -> DeploymentHandle:
    """Route this handle's calls to replicas on this node when there is one with capacity.

    Serve's proxy already prefers its own node; handles created in replicas do not by
    default. Local first keeps an image on the node that decoded it (no network copy; on a
    Jetson, never off the device while that device has the stage). A handle already initialized
    (e.g. reused) keeps its options.
    """
    ray_compat.prefer_local_routing(handle)
    return handle
