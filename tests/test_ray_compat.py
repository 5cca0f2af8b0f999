"""Every entry of deployments/ray_compat.py against the installed Ray, and that no other product
module reaches into Ray's private parts.

Each private module, attribute, signature and internal environment variable the product uses is
checked as it is used: a Ray that renamed, moved or dropped one fails here, by name, instead of
in a request (or not at all). Most checks need no cluster; those that do use the session's.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from deployments import ray_compat

REPO = Path(__file__).resolve().parents[1]
RAY_DIR = Path(ray.__file__).parent


# Internal environment variables: each one still changes what Ray does.

@pytest.fixture(scope="module")
def ray_with_settings() -> dict:
    """What a fresh process makes of the settings the platform and the cluster commands pass."""
    probe = (
        "import json\n"
        "from ray._private import services\n"
        "from ray.serve._private import constants\n"
        "print(json.dumps({'control_loop_interval_s': constants.CONTROL_LOOP_INTERVAL_S,\n"
        "                  'worker_proxy_port': constants.RAY_SERVE_WORKER_PROXY_HTTP_PORT,\n"
        "                  'loopback_node_ip': services.resolve_ip_for_localhost('127.0.0.1')}))\n"
    )
    env = {**os.environ, ray_compat.SERVE_CONTROL_LOOP_INTERVAL_ENV: "0.5",
           ray_compat.SERVE_WORKER_PROXY_HTTP_PORT_ENV: "18123", ray_compat.ENABLE_CLUSTERS_ENV: "0"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_max_direct_call_object_size_is_still_a_ray_config_entry():
    # RayConfig entries are read from RAY_<name> in C++: the name is in the compiled library.
    assert ray_compat.MAX_DIRECT_CALL_OBJECT_SIZE_ENV.encode() in Path(ray._raylet.__file__).read_bytes()
    pxd = (RAY_DIR / "includes" / "ray_config.pxd").read_text()
    assert ray_compat.MAX_DIRECT_CALL_OBJECT_SIZE_ENV.removeprefix("RAY_") + "()" in pxd


def test_serve_control_loop_interval_is_still_read_and_used(ray_with_settings):
    assert ray_with_settings["control_loop_interval_s"] == 0.5
    from ray.serve._private import controller

    assert "CONTROL_LOOP_INTERVAL_S" in inspect.getsource(controller)


def test_clusters_off_still_keeps_a_loopback_node_ip(ray_with_settings):
    assert ray_with_settings["loopback_node_ip"] == "127.0.0.1"
    from ray.scripts import scripts

    assert "resolve_ip_for_localhost(node_ip_address)" in inspect.getsource(scripts.start.callback)


def test_worker_proxy_port_is_still_read_and_used(ray_with_settings):
    assert ray_with_settings["worker_proxy_port"] == 18123
    from ray.serve._private import proxy

    assert "RAY_SERVE_WORKER_PROXY_HTTP_PORT" in inspect.getsource(proxy)


def test_python_version_match_level_still_relaxes_ray_join_check(monkeypatch):
    from ray._private import node, utils

    major, minor, patch = platform.python_version_tuple()
    other_patch = {"ray_version": ray.__version__, "python_version": f"{major}.{minor}.{int(patch) + 1}"}
    monkeypatch.setenv(ray_compat.PYTHON_VERSION_MATCH_LEVEL_ENV, "minor")
    utils.check_version_info(other_patch, "test", raise_on_mismatch=True)  # a warning only
    monkeypatch.setenv(ray_compat.PYTHON_VERSION_MATCH_LEVEL_ENV, "patch")
    with pytest.raises(RuntimeError, match="Version mismatch"):
        utils.check_version_info(other_patch, "test", raise_on_mismatch=True)
    # A joining node's check leaves the level to the environment.
    assert "python_version_match_level" not in inspect.getsource(node.Node.check_version_info)


def test_ray_start_still_takes_labels():
    from ray.scripts.scripts import start

    [option] = [p for p in start.params if ray_compat.RAY_START_LABELS_OPTION in p.opts]
    ctx = start.make_context("start", [f"{ray_compat.RAY_START_LABELS_OPTION}=node-type=jetson"])
    assert ctx.params[option.name] == "node-type=jetson"


# ray.init(_temp_dir=...)

def test_ray_init_still_takes_a_temp_dir():
    assert f'kwargs.pop("{ray_compat.TEMP_DIR_ARG}"' in inspect.getsource(ray.init)


def test_the_session_cluster_lives_in_its_temp_dir(ray_cluster, ray_temp_dir):
    assert (Path(ray_temp_dir) / "session_latest").is_dir()


def test_ray_init_says_when_ray_refuses_the_temp_dir(monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError(f"Unknown keyword argument(s): {ray_compat.TEMP_DIR_ARG}")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ray_compat.RayCompatError, match=rf"Ray {re.escape(ray.__version__)}: ray\.init\(_temp_dir"):
        ray_compat.ray_init("/tmp/x", address="local")


# The request router's per-request hook

def test_request_router_still_has_the_per_request_hook():
    from ray.serve._private import router
    from ray.serve.request_router import RequestRouter

    ray_compat.check_router_request_hook()
    hook = getattr(RequestRouter, ray_compat.ROUTER_REQUEST_HOOK)
    params = inspect.signature(hook).parameters
    assert list(params) == ["self", "pending_request", "is_retry"]
    assert params["is_retry"].kind is inspect.Parameter.KEYWORD_ONLY
    # Serve's router calls it by this name for every request.
    assert f".{ray_compat.ROUTER_REQUEST_HOOK}(" in inspect.getsource(router)
    assert ray_compat.ROUTER_REQUEST_HOOK in vars(ray_compat.NoRunningReplicaHook)


def test_a_router_using_a_missing_hook_fails_to_import(monkeypatch):
    from ray.serve.request_router import RequestRouter

    monkeypatch.delattr(RequestRouter, ray_compat.ROUTER_REQUEST_HOOK)
    hook = ray_compat.ROUTER_REQUEST_HOOK
    with pytest.raises(ray_compat.RayCompatError, match=rf"Ray {re.escape(ray.__version__)}: .*{hook}.* is gone"):
        class Router(ray_compat.NoRunningReplicaHook, RequestRouter):
            async def choose_replicas(self, candidate_replicas, pending_request=None):
                return []


def _edge_router():
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from deployments.edge_router import EdgeRouter

    # As Serve builds it (ray/serve/_private/router.py): keywords only.
    return EdgeRouter(deployment_id=DeploymentID(name="Inference", app_name="edge"),
                      handle_source=DeploymentHandleSource.UNKNOWN, self_node_id="node-a")


def _pending_request():
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    return PendingRequest(args=[], kwargs={}, metadata=RequestMetadata(request_id="r", internal_request_id="i"))


def test_edge_router_answers_503_at_once_when_no_replica_runs():
    from deployments.edge_router import NoReplicaRunning

    async def route():
        router = _edge_router()
        return await asyncio.wait_for(getattr(router, ray_compat.ROUTER_REQUEST_HOOK)(_pending_request()), 5)

    with pytest.raises(NoReplicaRunning) as err:
        asyncio.run(route())
    assert (err.value.status_code, err.value.retry_after_s) == (503, 5.0)
    assert err.value.message.startswith("no replica of Inference is running") and str(err.value) == err.value.message


def test_edge_router_keeps_to_this_nodes_replicas(monkeypatch):
    from deployments import placement

    monkeypatch.setattr(placement, "_known", {"node_id": "node-a", "labels": {}})
    here = [SimpleNamespace(node_id="node-a", replica_id=f"a{i}") for i in range(3)]
    there = [SimpleNamespace(node_id="node-b", replica_id="b0")]

    async def choose(candidates):
        return await _edge_router().choose_replicas(candidates, _pending_request())

    [chosen] = asyncio.run(choose(here + there))
    assert len(chosen) == 2 and set(r.node_id for r in chosen) == {"node-a"}
    assert asyncio.run(choose(there)) == []  # elsewhere: Serve's choice, from the replicas it knows (none here)


# DeploymentHandle._init(_prefer_local_routing=True)

def test_handle_init_still_takes_prefer_local_routing():
    from ray.serve._private import default_impl
    from ray.serve._private.handle_options import InitHandleOptions
    from ray.serve.handle import DeploymentHandle

    params = inspect.signature(DeploymentHandle._init).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = InitHandleOptions.create(**{ray_compat.PREFER_LOCAL_ROUTING_ARG: True})
    assert getattr(options, ray_compat.PREFER_LOCAL_ROUTING_ARG) is True
    # ... and the router gets it as its node preference.
    assert (f"prefer_local_node_routing=handle_options.{ray_compat.PREFER_LOCAL_ROUTING_ARG}"
            in inspect.getsource(default_impl))


def test_local_first_initializes_a_handle_once(ray_cluster):
    from ray.serve.handle import DeploymentHandle

    from deployments.placement import local_first

    handle = DeploymentHandle("NoSuchDeployment", "ray-compat-test")
    assert local_first(handle) is handle
    assert getattr(handle.init_options, ray_compat.PREFER_LOCAL_ROUTING_ARG) is True
    assert ray_compat.prefer_local_routing(handle) is False  # already initialized: keeps its options


def test_local_first_degrades_with_a_warning_on_a_ray_without_it(monkeypatch, caplog):
    def init(**kwargs):
        raise TypeError("unexpected keyword argument")

    monkeypatch.setattr(ray_compat, "_warned_local_routing", False)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert ray_compat.prefer_local_routing(SimpleNamespace(_init=init)) is False
        assert ray_compat.prefer_local_routing(SimpleNamespace()) is False
    [warning] = caplog.records  # once
    assert f"Ray {ray.__version__}: DeploymentHandle._init(_prefer_local_routing=True)" in warning.getMessage()


# ServeControllerClient.deploy_apps

def test_deploy_apps_is_still_what_serve_deploy_calls():
    from ray.dashboard.modules.serve import serve_head
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    assert list(inspect.signature(ServeControllerClient.deploy_apps).parameters)[:2] == ["self", "config"]
    assert "raise_if_no_controller_running" in inspect.signature(_get_global_client).parameters
    assert "client.deploy_apps(config)" in inspect.getsource(serve_head.ServeHead.put_all_applications)


def test_the_running_serve_has_a_client_that_deploys(ray_cluster):
    from ray.serve.context import _get_global_client

    assert callable(_get_global_client().deploy_apps)


# GcsClient + usage_lib.get_cluster_metadata

def test_cluster_metadata_reader_still_exists():
    from ray._common.usage import usage_constants, usage_lib
    from ray._raylet import GcsClient  # noqa: F401

    assert list(inspect.signature(usage_lib.get_cluster_metadata).parameters) == ["gcs_client"]
    assert usage_constants.CLUSTER_METADATA_KEY == b"CLUSTER_METADATA"


def test_cluster_versions_reads_the_running_heads_versions(ray_cluster):
    gcs_address = ray.get_runtime_context().gcs_address
    assert ray_compat.cluster_versions(gcs_address) == (ray.__version__, platform.python_version())


def test_other_cluster_metadata_is_a_preflight_error_naming_it(monkeypatch):
    from ray._common.usage import usage_lib

    from cluster import preflight

    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: address)
    monkeypatch.setattr(usage_lib, "get_cluster_metadata", lambda gcs: {"ray": "9.9", "python": "3.99.0"})
    with pytest.raises(ray_compat.RayCompatError, match="no ray_version, python_version"):
        ray_compat.cluster_versions("127.0.0.1:1")
    with pytest.raises(preflight.PreflightError, match=rf"Ray {re.escape(ray.__version__)}: ray\._raylet\.GcsClient"):
        preflight.head_versions("127.0.0.1:1")


# AutoscalingContext.total_num_requests

def _autoscaling_context(total_num_requests: float, own_http_ongoing: float):
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from deployments.autoscaling import OWN_HTTP_ONGOING

    return AutoscalingContext(
        deployment_id=None, deployment_name="Ingress", app_name="app", current_num_replicas=1,
        target_num_replicas=1, running_replicas=[], total_num_requests=total_num_requests, total_queued_requests=0,
        aggregated_metrics={OWN_HTTP_ONGOING: {"replica-1": own_http_ongoing}}, raw_metrics=None,
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=10, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=0.0,
        config=AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2))


def test_serves_default_policy_counts_an_assigned_total_num_requests():
    from deployments.autoscaling import own_http_aware_policy

    # 8 requests on the replica's own port, none through Serve, 2 per replica wanted: 4 replicas.
    assert own_http_aware_policy(_autoscaling_context(0, 8))[0] == pytest.approx(4)
    assert own_http_aware_policy(_autoscaling_context(2, 0))[0] == pytest.approx(1)


def test_a_read_only_total_num_requests_is_named():
    class ReadOnly:
        total_num_requests = property(lambda self: 1.0)

    with pytest.raises(ray_compat.RayCompatError, match=r"total_num_requests \(assigned\) is read-only"):
        ray_compat.set_total_num_requests(ReadOnly(), 2.0)


# Ray's private parts stay in ray_compat

PRODUCT_PACKAGES = ("core", "model_registry", "review", "deployments", "serve", "cluster", "visionray", "demo_models")
PRIVATE_MODULES = ("ray._private", "ray._raylet", "ray.serve._private", "ray._common")
COMPAT = REPO / "deployments" / "ray_compat.py"
# Documented in Ray's token authentication guide.
PUBLIC_RAY_ENV = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}


def _product_modules():
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path != COMPAT and "_pb2" not in path.name:  # generated protobuf/gRPC code
                yield path, ast.parse(path.read_text(), filename=str(path))


def _is_private(dotted: str) -> bool:
    return any(dotted == m or dotted.startswith(m + ".") for m in PRIVATE_MODULES)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _ray_private_uses(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (f"import {a.name}" for a in node.names if _is_private(a.name))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if _is_private(node.module) or _is_private(f"{node.module}.{alias.name}"):
                    yield f"from {node.module} import {alias.name}"
                elif node.module.split(".")[0] == "ray" and alias.name.startswith("_"):
                    yield f"from {node.module} import {alias.name} (a hidden name)"
        elif isinstance(node, ast.Attribute) and (dotted := _dotted(node)) and _is_private(dotted):
            yield dotted


def test_no_product_module_but_ray_compat_reaches_into_rays_private_modules():
    found = [f"{path.relative_to(REPO)}:{use}" for path, tree in _product_modules()
             for use in sorted(set(_ray_private_uses(tree)))]
    assert not found, f"private Ray APIs belong in deployments/ray_compat.py: {found}"


def test_no_product_module_but_ray_compat_passes_hidden_arguments():
    found = [f"{path.relative_to(REPO)}:{node.lineno}: {kw.arg}=" for path, tree in _product_modules()
             for node in ast.walk(tree) if isinstance(node, ast.Call)
             for kw in node.keywords if kw.arg and kw.arg.startswith("_")]
    assert not found, f"hidden (underscore) arguments belong in deployments/ray_compat.py: {found}"


def test_no_product_module_but_ray_compat_names_rays_internal_variables():
    found = [f"{path.relative_to(REPO)}:{node.lineno}: {node.value}" for path, tree in _product_modules()
             for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"RAY_\w+", node.value) and node.value not in PUBLIC_RAY_ENV]
    assert not found, f"Ray's internal environment variables belong in deployments/ray_compat.py: {found}"


def test_no_product_module_but_ray_compat_uses_what_it_wraps():
    wrapped = {ray_compat.ROUTER_REQUEST_HOOK, "_get_global_client", "_init"}
    found = []
    for path, tree in _product_modules():
        for node in ast.walk(tree):
            name = getattr(node, "attr", None) or (node.name if isinstance(node, ast.AsyncFunctionDef) else None)
            if name in wrapped:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(getattr(t, "attr", None) == "total_num_requests" for t in targets):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: total_num_requests assigned")
    assert not found, f"use deployments/ray_compat.py's wrappers: {found}"


def test_the_pin_finds_what_it_looks_for():
    tree = ast.parse("import ray._private.services\nfrom ray._common.usage import usage_lib\n"
                     "from ray.serve.context import _get_global_client\nfrom ray import _raylet\n"
                     "import ray\nray._raylet.GcsClient(address='x')\n")
    assert sorted(set(_ray_private_uses(tree))) == [
        "from ray import _raylet", "from ray._common.usage import usage_lib",
        "from ray.serve.context import _get_global_client (a hidden name)", "import ray._private.services",
        "ray._raylet", "ray._raylet.GcsClient"]


def test_ray_compat_imports_no_ray():
    out = subprocess.run([sys.executable, "-c", "import sys, deployments.ray_compat; print('ray' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
