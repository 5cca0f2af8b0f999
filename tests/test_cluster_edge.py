"""Edge pipelines on a real multi-node Ray cluster: a datacenter head and a Jetson-labeled worker.

The cluster is brought up with the real `visionray cluster head|join` commands (subprocesses,
own temp dir, ports and token), the apps with `serve deploy serve/edge.yaml`-shaped config,
the edge model from a real `mlflow server` over HTTP. What is faked is only the hardware: the
"Jetson" is a second Ray node on this host, labeled and with `--num-gpus=1` as on a Jetson;
its ONNX Runtime has no TensorRT/CUDA, so the edge app falls back to CPU (and says so).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from model_registry import registry
from model_registry.mlflow_server import running_mlflow_server
from serve.app_deploy import free_port
from tests.cluster_helpers import kill_tree, start_head, wait_for
from tests.models import BUS_JPG, YOLO_QDQ, assert_bus_detections, needs_shared_models

pytestmark = needs_shared_models

EDGE_YAML = Path(__file__).resolve().parents[1] / "serve" / "edge.yaml"


def cluster_config(http_port: int, tracking_uri: str, cache_dir: str) -> dict:
    """serve/edge.yaml with this test's ports, registry and cache, one replica per stage."""
    config = yaml.safe_load(EDGE_YAML.read_text())
    config["http_options"].update(host="127.0.0.1", port=http_port)
    datacenter, edge = config["applications"]
    datacenter["args"] = {**datacenter["args"], "models": [{"name": "yolo", "path": str(YOLO_QDQ)}]}
    edge["args"]["registry"].update(tracking_uri=tracking_uri, cache_dir=f"{cache_dir}/models", poll_interval_s=1)
    edge["args"]["backend"]["trt_engine_cache_dir"] = f"{cache_dir}/trt"
    for d in datacenter["deployments"]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return config


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge")
    with running_mlflow_server(tmp / "registry") as server:
        registry.register(YOLO_QDQ, name="yolo", alias="edge", tracking_uri=server.url)
        cluster = start_head(tmp, free_port())
        try:
            jetson_port = free_port()
            cluster.join_jetson(jetson_port)
            config_path = tmp / "cluster.yaml"
            config_path.write_text(yaml.safe_dump(cluster_config(cluster.http_port, server.url,
                                                                 str(tmp / "jetson-cache"))))
            cluster.serve_deploy(config_path)
            head_url = f"http://127.0.0.1:{cluster.http_port}"
            jetson_url = f"http://127.0.0.1:{jetson_port}"
            wait_for(lambda: requests.get(f"{head_url}/readyz", timeout=5).ok, 240, "datacenter app ready")
            wait_for(lambda: requests.get(f"{jetson_url}/edge/readyz", timeout=5).ok, 240,
                     "edge app ready on the Jetson's proxy")
            yield {"cluster": cluster, "server": server, "head": head_url, "jetson": jetson_url, "tmp": tmp}
        finally:
            cluster.stop()


def predict(base: str, timeout: float = 60) -> requests.Response:
    return requests.post(f"{base}/v1/models/yolo/predict", data=BUS_JPG.read_bytes(),
                         headers={"content-type": "image/jpeg"}, timeout=timeout)


def model_info(base: str) -> dict:
    r = requests.get(f"{base}/v1/models/yolo", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def replica_nodes(cluster, app: str) -> set[str]:
    deployments = cluster.serve_details()["applications"][app]["deployments"]
    return {r["node_id"] for d in deployments.values() for r in d["replicas"] if r["state"] == "RUNNING"}


def test_edge_replicas_run_only_on_the_jetson_and_datacenter_ones_never(edge):
    edge_info, dc_info = model_info(f"{edge['jetson']}/edge"), model_info(edge["head"])
    jetson_node = edge_info["placement"]["preprocess"]["node_id"]
    for stage, where in edge_info["placement"].items():
        assert where["labels"] == {"node-type": "jetson", "jetson-model": "orin-nano", "jetpack": "6.2"}, stage
        assert where["node_id"] == jetson_node, stage
    for stage, where in dc_info["placement"].items():
        assert where["labels"] == {"node-type": "datacenter"}, stage
        assert where["node_id"] != jetson_node, stage
    # Every replica, from Serve's own view: edge ones on the Jetson, datacenter ones not.
    assert replica_nodes(edge["cluster"], "edge") == {jetson_node}
    assert jetson_node not in replica_nodes(edge["cluster"], "visionray")
    # TensorRT and CUDA are not on this host: the edge app says it fell back to CPU.
    assert edge_info["providers"] == ["CPUExecutionProvider"]


def test_a_request_to_the_jetson_proxy_is_processed_on_the_jetson(edge):
    jetson_node = model_info(f"{edge['jetson']}/edge")["placement"]["preprocess"]["node_id"]
    for _ in range(3):
        r = predict(f"{edge['jetson']}/edge")
        assert r.status_code == 200, r.text
        body = r.json()
        assert_bus_detections(body["detections"], YOLO_QDQ)
        assert body["served_by"] == {"preprocess": jetson_node, "inference": jetson_node, "postprocess": jetson_node}


def test_a_join_with_another_ray_version_is_refused(edge):
    import subprocess

    import ray

    cluster = edge["cluster"]
    nodes_before = cluster.alive_node_ids()
    out = subprocess.run(cluster.join_command(free_port(), "--assume-local-ray-version", "2.59.0"),
                         env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "refusing to join" in out.stderr
    assert f"pip install 'ray[serve]=={ray.__version__}'" in out.stderr  # read from the head's GCS
    assert "ray start" not in out.stderr  # nothing was started
    assert cluster.alive_node_ids() == nodes_before


def test_jetson_death_edge_503_datacenter_unaffected_then_recovery_offline(edge):
    cluster = edge["cluster"]
    old_node = model_info(f"{edge['jetson']}/edge")["placement"]["preprocess"]["node_id"]

    # Steady datacenter traffic through the whole episode: no request may fail.
    results, stop = [], threading.Event()

    def datacenter_load():
        while not stop.is_set():
            try:
                r = predict(edge["head"], timeout=30)
                results.append(r.status_code)
            except requests.RequestException as exc:
                results.append(repr(exc))

    load = threading.Thread(target=datacenter_load, daemon=True)
    load.start()
    try:
        time.sleep(2)
        kill_tree(cluster.nodes[1])  # the Jetson loses power: raylet and workers SIGKILLed
        # The registry goes away too: the next Jetson must serve from its device cache.
        edge["server"].stop()

        seen = []

        def edge_answers_503():
            t0 = time.monotonic()
            r = predict(f"{edge['head']}/edge", timeout=20)
            seen.append((r.status_code, r.text[:200]))
            assert time.monotonic() - t0 < 15, "the edge app hung instead of answering"
            return [r] if r.status_code == 503 else None  # a list: a 503 Response is falsy

        try:
            [r] = wait_for(edge_answers_503, 90, "a 503 from the edge app", interval=1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; answers seen: {seen[-3:]}") from None
        assert r.headers.get("retry-after"), r.headers
        assert "no replica" in r.text
        # While no Jetson is up, it keeps answering fast.
        t0 = time.monotonic()
        assert predict(f"{edge['head']}/edge", timeout=20).status_code == 503
        assert time.monotonic() - t0 < 5

        # A new Jetson joins: Serve starts the pending edge replicas on it, no redeploy.
        new_port = free_port()
        cluster.join_jetson(new_port)
        new_url = f"http://127.0.0.1:{new_port}/edge"
        wait_for(lambda: predict(new_url, timeout=30).status_code == 200, 240, "edge app back on the new Jetson")
        body = predict(new_url).json()
        assert_bus_detections(body["detections"], YOLO_QDQ)
        new_node = body["served_by"]["preprocess"]
        assert new_node != old_node
        assert set(body["served_by"].values()) == {new_node}
    finally:
        stop.set()
        load.join(timeout=60)
    assert results and all(code == 200 for code in results), [c for c in results if c != 200][:5]
