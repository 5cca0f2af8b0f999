"""Shared fixtures: one isolated Ray cluster for the whole session, shut down at the end.

The cluster has its own temp dir and random ports; nothing here touches another Ray
instance on the machine (no `ray stop`, no kill by name).
"""

from __future__ import annotations

import copy
import socket
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_YAML = REPO / "serve" / "config.yaml"
EDGE_YAML = REPO / "serve" / "edge.yaml"  # its first app: the same pipeline, stages as deployments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray import serve

    # Short path: Ray's unix sockets live under the temp dir and have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="vrt", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=4,  # logical CPUs: room for a few small apps on a 2-core machine
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level="WARNING",
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def app_config(name: str, route_prefix: str, models: list[dict], stages: str = "in_process",
               http_port: int | None = None, **arg_overrides) -> dict:
    """The shipped application with other models: serve/config.yaml's (stages in process), or with
    `stages="deployments"` serve/edge.yaml's datacenter app (three deployments).

    `http_port`: the ingress replicas' own HTTP port (None: only through Serve's proxy).
    """
    source = CONFIG_YAML if stages == "in_process" else EDGE_YAML
    app = copy.deepcopy(yaml.safe_load(source.read_text())["applications"][0])
    app.update(name=name, route_prefix=route_prefix)
    app["args"] = {**app["args"], "models": models, "http_port": http_port, **arg_overrides}
    for d in app["deployments"]:
        # One replica each keeps the test cluster small and batch statistics in one place.
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return app


def deploy(apps: list[dict], base_url: str, timeout_s: float = 180) -> None:
    """Deploy like `serve deploy` does (same schema, same controller call), then wait."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate({"applications": apps})
    _get_global_client().deploy_apps(config)
    deadline = time.monotonic() + timeout_s
    from ray import serve

    while time.monotonic() < deadline:
        status = serve.status().applications
        if all(a["name"] in status and status[a["name"]].status == "RUNNING" for a in apps):
            return
        failed = [a["name"] for a in apps if a["name"] in status and status[a["name"]].status == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError(f"deploy failed: {[status[n].message for n in failed]}")
        time.sleep(0.5)
    raise TimeoutError(f"apps not running after {timeout_s}s: {serve.status()}")


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")
