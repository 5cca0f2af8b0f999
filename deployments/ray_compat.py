"""Every private Ray API, hidden argument and internal setting visionray relies on, in one place.

Ray keeps these out of its public API: an upgrade may rename, move or drop any of them without a
deprecation, and most would then fail silently (a setting ignored, an override never called) or
as an AttributeError deep inside a request. Product code reaches them only through this module.
Each entry says what it is for and what breaks if Ray changes it; its wrapper raises
`RayCompatError`, naming the installed Ray and the missing API, or degrades with a warning where
that is noted. tests/test_ray_compat.py checks every entry against the installed Ray (and that no
other product module imports Ray's private modules): after changing Ray, run it first.

Ray itself is imported lazily: the CLI and the cluster commands read the settings below without it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging

log = logging.getLogger("ray.serve")


def ray_version() -> str:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


class RayCompatError(RuntimeError):
    """The installed Ray lacks, or changed, a private API visionray uses."""

    def __init__(self, api: str, problem: str, consequence: str):
        super().__init__(f"Ray {ray_version()}: {api} {problem}. {consequence} visionray's uses of Ray's "
                         "private APIs are in deployments/ray_compat.py; tests/test_ray_compat.py checks them.")
        self.api = api


# Internal environment variables. Ray reads them when a process starts and ignores a name it does
# not know without a word, so a wrapper cannot notice a renamed one: tests/test_ray_compat.py
# checks that each still has its effect.

# RayConfig `max_direct_call_object_size` (C++, read from RAY_<name>): arguments and results up to
# this size travel inline in the actor call instead of through the object store. `make up` raises
# it to 4 MiB for the images passed between stages (visionray/platform.py RAY_TUNING_ENV). If Ray
# drops it: images above the 100 KiB default go through the object store again (about 2 ms more
# raylet CPU per request when the stages are deployments); nothing fails.
MAX_DIRECT_CALL_OBJECT_SIZE_ENV = "RAY_max_direct_call_object_size"

# Serve's controller loop period (ray/serve/_private/constants.py CONTROL_LOOP_INTERVAL_S, 0.1 s).
# `make up` slows it to 0.5 s to cut the controller's and the GCS's idle CPU (visionray/platform.py
# RAY_TUNING_ENV). If Ray drops it: the controller loops at its default again; nothing fails.
SERVE_CONTROL_LOOP_INTERVAL_ENV = "RAY_SERVE_CONTROL_LOOP_INTERVAL_S"

# Ray's multi-node switch meant for macOS and Windows (ray/_private/ray_constants.py
# ENABLE_RAY_CLUSTER). `make up` turns it off so that its head stays on loopback: with clusters
# off, Ray keeps --node-ip-address=127.0.0.1 instead of replacing it with the machine's network
# address (visionray/platform.py LOOPBACK_ENV). If Ray drops it: the single-machine head binds its
# servers to the network address and other machines could reach it (.ci/check_loopback.py says so).
ENABLE_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# The Python version level Ray's own join check compares (ray/_private/utils.py check_version_info,
# default "patch"). A join sets it to "minor" once the pre-flight check found the same minor
# version (cluster/bringup.py). If Ray drops it: `ray start` refuses a node whose Python differs
# from the head's in the patch level only, with Ray's version-mismatch error.
PYTHON_VERSION_MATCH_LEVEL_ENV = "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL"

# The HTTP port of Serve's proxy on worker nodes only (ray/serve/_private/constants.py), behind
# `visionray cluster join --serve-http-port` (cluster/bringup.py): several nodes share one host in
# the tests. If Ray drops it: a worker's proxy takes http_options.port like the head's, and a
# second node on the same host gets no proxy (tests/test_cluster_edge.py fails).
SERVE_WORKER_PROXY_HTTP_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"


# A hidden `ray start` option (not in `ray start --help` in Ray 2.60): the node's labels, which
# serve/edge.yaml's label_selector places the stages by (cluster/labels.py; cluster/rayservice.py's
# rayStartParams `labels` is KubeRay's way of passing it). If Ray drops it: every
# `visionray cluster head|join` fails in `ray start` with "No such option: --labels".
RAY_START_LABELS_OPTION = "--labels"


# ray.init's hidden `_temp_dir` (`ray start --temp-dir` is its public twin): the root temp dir of
# a cluster that ray.init starts itself. The test suite and the load tools give each cluster its
# own, short one (Ray's unix socket paths have a length limit, and nothing of theirs may land in
# another Ray's /tmp/ray). If Ray drops it: ray.init refuses the argument, and ray_init says why.
TEMP_DIR_ARG = "_temp_dir"


def ray_init(temp_dir: str, **kwargs):
    """`ray.init(**kwargs)` with its cluster's root temp dir (for a cluster of its own: address="local")."""
    import ray

    try:
        return ray.init(**kwargs, **{TEMP_DIR_ARG: temp_dir})
    except RuntimeError as exc:
        if TEMP_DIR_ARG in str(exc):
            raise RayCompatError(f"ray.init({TEMP_DIR_ARG}=...)", "is no longer accepted",
                                 "A cluster started by ray.init cannot be given its own temp dir.") from exc
        raise


# RequestRouter._choose_replica_for_request: Serve's router calls it for every request a handle or
# a proxy sends, and it is where a request waits for a replica. The public hook, choose_replicas,
# is only called once a replica exists, so requests for a deployment without any running replica
# queue indefinitely. deployments/edge_router.py answers 503 at once instead, by overriding this
# hook through NoRunningReplicaHook. If Ray renames or drops it: the override would never run and
# edge requests would hang while their Jetson is down, so a router class using the hook fails to
# import (RayCompatError): a deploy naming it fails, saying why.
ROUTER_REQUEST_HOOK = "_choose_replica_for_request"


def check_router_request_hook() -> None:
    """RequestRouter still has the per-request hook, as a coroutine taking the pending request first."""
    from ray.serve.request_router import RequestRouter

    api = f"ray.serve.request_router.RequestRouter.{ROUTER_REQUEST_HOOK}(pending_request, ...)"
    hook = getattr(RequestRouter, ROUTER_REQUEST_HOOK, None)
    if hook is None:
        raise RayCompatError(api, "is gone", "The edge router cannot answer 503 when no replica runs.")
    params = list(inspect.signature(hook).parameters)
    if not inspect.iscoroutinefunction(hook) or params[:2] != ["self", "pending_request"]:
        raise RayCompatError(api, f"has changed (now {ROUTER_REQUEST_HOOK}{inspect.signature(hook)})",
                             "The edge router cannot answer 503 when no replica runs.")


class NoRunningReplicaHook:
    """Request-router mixin: `on_no_running_replica()` runs instead of queueing a request for a
    deployment that has no running replica; it raises the error the caller gets.

    Put it first among the bases, before Serve's mixins and RequestRouter.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_router_request_hook()

    def on_no_running_replica(self) -> None:
        raise NotImplementedError

    async def _choose_replica_for_request(self, pending_request, *args, **kwargs):
        if not self.curr_replicas:
            self.on_no_running_replica()
        return await super()._choose_replica_for_request(pending_request, *args, **kwargs)


# DeploymentHandle._init(_prefer_local_routing=True): the only way to make a handle created in a
# replica prefer replicas on its own node (Serve's proxy does by default, handles do not; the
# `handle.options(_prefer_local_routing=...)` route is deprecated). `_init` is private and the
# option hidden. Used by deployments/placement.py local_first for the ingress's handles to its
# stages. If Ray drops either: the handle stays as Serve makes it and a warning names the missing
# API; calls may then go to another node's replica (the image copied over the network). Edge
# deployments stay on their node regardless: their EdgeRouter keeps them there.
PREFER_LOCAL_ROUTING_ARG = "_prefer_local_routing"
_warned_local_routing = False


def prefer_local_routing(handle) -> bool:
    """Make `handle` prefer replicas on this node. False if it was already initialized (it keeps its
    options) or this Ray cannot (warned once)."""
    global _warned_local_routing
    init = getattr(handle, "_init", None)
    if init is None:
        problem = "is gone"
    else:
        try:
            init(**{PREFER_LOCAL_ROUTING_ARG: True})
            return True
        except RuntimeError:  # already initialized (e.g. reused): keeps its options
            return False
        except TypeError as exc:
            problem = f"is no longer accepted ({exc})"
    if not _warned_local_routing:
        _warned_local_routing = True
        log.warning("%s", RayCompatError(f"DeploymentHandle._init({PREFER_LOCAL_ROUTING_ARG}=True)", problem,
                                         "Handles to the stages are left as Serve makes them: not local first."))
    return False


# ServeControllerClient.deploy_apps through ray.serve.context._get_global_client: what `serve
# deploy` ends in (the dashboard's PUT /api/serve/applications/ calls it), deploying a
# ServeDeploySchema through the controller. The public routes do not fit a program that started
# its own cluster in-process: the REST route needs the dashboard's address and the cluster token,
# and serve.run takes built applications, not a config (no app-level runtime_env, deployment
# options applied by the controller). Used by serve/app_deploy.py (the tests, the load tools). If
# Ray drops either: deploying raises RayCompatError.
def deploy_apps(config) -> None:
    """Deploy a ServeDeploySchema on the running Serve instance, as `serve deploy` does."""
    api = "ray.serve.context._get_global_client().deploy_apps(config)"
    try:
        from ray.serve.context import _get_global_client
    except ImportError as exc:
        raise RayCompatError(api, "is gone", "Applications cannot be deployed from a config in-process.") from exc
    deploy = getattr(_get_global_client(), "deploy_apps", None)
    if deploy is None:
        raise RayCompatError(api, "is gone", "Applications cannot be deployed from a config in-process.")
    deploy(config)


# ray._raylet.GcsClient and ray._common.usage.usage_lib.get_cluster_metadata: read the
# CLUSTER_METADATA record a head writes into its GCS at start-up, the one Ray's own join check
# compares. cluster/preflight.py reads the head's Ray and Python versions there before a node
# joins, to refuse a mismatch with the install command that fixes it; Ray has no public client for
# a cluster one has not joined. If Ray moves either, or renames the record's keys:
# `visionray cluster join` stops with this error (as its pre-flight error); plain `ray start` still joins.
CLUSTER_METADATA_VERSION_KEYS = ("ray_version", "python_version")


def cluster_versions(gcs_address: str) -> tuple[str, str] | None:
    """(Ray version, Python version) the head at `gcs_address` was started with; None if it
    published none. Connection and auth failures propagate as Ray raises them."""
    api = "ray._raylet.GcsClient(address=...) and ray._common.usage.usage_lib.get_cluster_metadata(gcs_client)"
    consequence = "The join's pre-flight check cannot read the head's versions."
    try:
        from ray._common.usage import usage_lib
        from ray._raylet import GcsClient

        get_cluster_metadata = usage_lib.get_cluster_metadata
    except (ImportError, AttributeError) as exc:
        raise RayCompatError(api, "is gone", consequence) from exc
    meta = get_cluster_metadata(GcsClient(address=gcs_address))
    if not meta:
        return None
    missing = [k for k in CLUSTER_METADATA_VERSION_KEYS if k not in meta]
    if missing:
        raise RayCompatError(api, f"returns other metadata (no {', '.join(missing)}; has {sorted(meta)})",
                             consequence)
    return tuple(meta[k] for k in CLUSTER_METADATA_VERSION_KEYS)


# AutoscalingContext.total_num_requests is a functools.cached_property of a public class:
# assigning it replaces the value Serve's default policy reads. deployments/autoscaling.py adds the
# requests served on the ingress replicas' own HTTP ports, which Serve never sees, before handing
# the context to the default policy. If Ray makes it read-only: this raises RayCompatError in the
# controller's autoscaling loop, every period (Serve logs it; the deployment does not scale). If
# the default policy stops reading it, own-port requests stop counting without an error:
# tests/test_ray_compat.py runs the policy to catch that.
def set_total_num_requests(ctx, value: float) -> None:
    api = "AutoscalingContext.total_num_requests (assigned)"
    try:
        ctx.total_num_requests = value
    except AttributeError as exc:
        raise RayCompatError(api, "is read-only",
                             "Requests on the ingress replicas' own ports cannot count for autoscaling.") from exc
    if ctx.total_num_requests != value:
        raise RayCompatError(api, "no longer keeps an assigned value",
                             "Requests on the ingress replicas' own ports cannot count for autoscaling.")
