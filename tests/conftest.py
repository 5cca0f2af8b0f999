"""Shared fixtures: one isolated Ray cluster for the whole session, shut down at the end.

The cluster has its own temp dir and random ports; nothing here touches another Ray
instance on the machine (no `ray stop`, no kill by name).
"""

from __future__ import annotations

import tempfile

import pytest

from deployments import ray_compat
from serve.app_deploy import free_port


@pytest.fixture(scope="session")
def ray_temp_dir() -> str:
    # Short path: Ray's unix sockets live under the temp dir and have a length limit.
    return tempfile.mkdtemp(prefix="vrt", dir="/tmp")


@pytest.fixture(scope="session")
def ray_cluster(ray_temp_dir):
    import ray
    from ray import serve

    ray_compat.ray_init(
        ray_temp_dir,
        address="local",
        num_cpus=4,  # logical CPUs: room for a few small apps on a 2-core machine
        # The dashboard writes Prometheus' service-discovery file (tests/test_metrics_prometheus.py),
        # as in `make up`.
        include_dashboard=True,
        dashboard_port=free_port(),
        logging_level="WARNING",
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
