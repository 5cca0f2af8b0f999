"""Deploy the shipped application, with other models or ports, onto a running Ray cluster.

What `serve deploy` does (same schema, same controller call), for programs that start their own
isolated cluster: the test suite and the benchmark. The application is the shipped one
(serve/config.yaml, or serve/edge.yaml's datacenter app for the stages as deployments), so what
they measure and check is what `make up` serves.
"""

from __future__ import annotations

import copy
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from deployments import ray_compat

SERVE_DIR = Path(__file__).resolve().parent
CONFIG_YAML = SERVE_DIR / "config.yaml"
EDGE_YAML = SERVE_DIR / "edge.yaml"  # its first app: the same pipeline, stages as deployments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(name: str, route_prefix: str, models: list[dict], stages: str = "in_process",
               http_port: int | None = None, grpc_port: int | None = None, **arg_overrides) -> dict:
    """The shipped application with other models: serve/config.yaml's (stages in process), or with
    `stages="deployments"` serve/edge.yaml's datacenter app (three deployments).

    `http_port`: the ingress replicas' own HTTP port (None: only through Serve's proxy);
    `grpc_port`: their gRPC port (None: none).
    """
    source = CONFIG_YAML if stages == "in_process" else EDGE_YAML
    app = copy.deepcopy(yaml.safe_load(source.read_text())["applications"][0])
    app.update(name=name, route_prefix=route_prefix)
    app["args"] = {**app["args"], "models": models, "http_port": http_port, "grpc_port": grpc_port,
                   **arg_overrides}
    for d in app["deployments"]:
        # One replica each keeps a test or benchmark cluster small and its statistics in one place.
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return app


def deploy(apps: list[dict], timeout_s: float = 180) -> None:
    """Deploy like `serve deploy` does, then wait until every app is RUNNING."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    ray_compat.deploy_apps(ServeDeploySchema.model_validate({"applications": apps}))
    deadline = time.monotonic() + timeout_s
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
    """Until GET `url` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")
