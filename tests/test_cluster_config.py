"""Cluster conventions and configs, without a cluster: labels, pre-flight rules, edge.yaml, RayService."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster import labels, preflight, rayservice
from deployments.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
EDGE = yaml.safe_load((REPO / "serve" / "edge.yaml").read_text())


def test_jetson_start_args_carry_labels_gpu_and_edge_resource():
    args = labels.ray_start_args("jetson", "orin-nano", "6.2")
    assert args[0] == "--labels=node-type=jetson,jetson-model=orin-nano,jetpack=6.2"
    assert "--num-gpus=1" in args  # NVML cannot see a Jetson's GPU
    assert json.loads(args[-1].split("=", 1)[1]) == {"edge": labels.EDGE_RESOURCE_UNITS}
    assert labels.ray_start_args("datacenter") == ["--labels=node-type=datacenter"]


@pytest.mark.parametrize("node_type, model, jetpack", [
    ("jetson", None, "6.2"), ("jetson", "orin-nano", None), ("jetson", "orin-nano", "5.1"),
    ("datacenter", "orin-nano", None), ("tpu", None, None),
])
def test_incomplete_or_wrong_labels_are_refused(node_type, model, jetpack):
    with pytest.raises(labels.LabelError):
        labels.node_labels(node_type, model, jetpack)


def test_preflight_refuses_other_ray_or_python_minor_and_says_what_to_install():
    head = preflight.Versions(ray="2.60.0", python="3.10.12")
    with pytest.raises(preflight.PreflightError, match=r"pip install 'ray\[serve\]==2.60.0'"):
        preflight.check(head, preflight.Versions(ray="2.59.0", python="3.10.12"))
    with pytest.raises(preflight.PreflightError, match=r"Python 3\.10"):
        preflight.check(head, preflight.Versions(ray="2.60.0", python="3.11.9"))
    # A patch difference is allowed (with a warning); the join then relaxes Ray's own check.
    assert preflight.check(head, preflight.Versions(ray="2.60.0", python="3.10.14"))
    assert preflight.check(head, head) == []


def test_join_dry_run_builds_the_ray_start_command_for_a_jetson():
    out = subprocess.run([sys.executable, "-m", "visionray.cli", "cluster", "head", "--dry-run", "--port", "6390"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--head --port=6390" in out.stderr and "--labels=node-type=datacenter" in out.stderr
    assert "auth_token" in out.stderr or "RAY_AUTH_TOKEN" in out.stderr  # says where the token is


def test_edge_config_validates_and_keeps_the_datacenter_app_identical():
    ServeDeploySchema.model_validate(EDGE)
    datacenter, edge = EDGE["applications"]
    single_node = CONFIG["applications"][0]
    # The same app with its stages placed apart: only where the stages run and the way in differ.
    split_keys = {"stages", "http_port", "http_host", "grpc_port"}
    assert {k: v for k, v in datacenter["args"].items() if k not in split_keys} == {
        k: v for k, v in single_node["args"].items() if k not in split_keys}
    assert (datacenter["args"]["stages"], single_node["args"]["stages"]) == ("deployments", "in_process")
    assert {k: v for k, v in datacenter.items() if k not in ("args", "deployments")} == {
        k: v for k, v in single_node.items() if k not in ("args", "deployments")}
    assert [d["name"] for d in datacenter["deployments"]] == ["Ingress", "Inference", "Postprocess"]
    assert [d["name"] for d in single_node["deployments"]] == ["Ingress"]
    pipeline, inference = single_node["deployments"][0], datacenter["deployments"][1]
    assert pipeline["user_config"] == inference["user_config"]  # the same batching either way
    PipelineConfig.model_validate(edge["args"])
    for d in edge["deployments"]:
        opts = d["ray_actor_options"]
        assert opts["label_selector"] == {"node-type": "jetson"} and opts["resources"] == {"edge": 1}
        assert d["request_router_config"]["request_router_class"] == "deployments.edge_router.EdgeRouter"
    for d in datacenter["deployments"]:
        assert d["ray_actor_options"]["label_selector"] == {"node-type": "!jetson"}
    providers = edge["args"]["backend"]["providers"]
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1]["trt_fp16_enable"] and providers[0][1]["trt_engine_cache_enable"]


def test_rayservice_serve_config_is_serve_config_yaml_and_valid():
    committed = yaml.safe_load(rayservice.MANIFEST.read_text())
    served = yaml.safe_load(committed["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    kubernetes_apps = copy.deepcopy(CONFIG["applications"])
    for app in kubernetes_apps:
        app["args"]["http_host"] = "0.0.0.0"  # the pod's interfaces, not loopback
    assert served["applications"] == kubernetes_apps
    assert {k: v for k, v in served.items() if k not in ("http_options", "applications")} == {
        k: v for k, v in CONFIG.items() if k not in ("http_options", "applications")}
    assert served["http_options"] == {**CONFIG["http_options"], "host": "0.0.0.0"}
    import ray

    assert committed["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    # Up to date with its generator (regenerate: visionray cluster rayservice -o cluster/kuberay/rayservice.yaml).
    assert rayservice.MANIFEST.read_text() == rayservice.render()


def test_make_up_checks_and_prints_the_ports_serve_config_yaml_uses():
    from visionray import platform

    assert CONFIG["http_options"]["port"] == platform.SERVE_PROXY_PORT
    assert CONFIG["applications"][0]["args"]["http_port"] == platform.HTTP_PORT
    assert CONFIG["applications"][0]["args"]["http_host"] == "127.0.0.1"  # loopback only (make up)
