"""Shared fixtures: one isolated Ray cluster for the whole session, shut down at the end.

The cluster has its own temp dir and random ports; nothing here touches another Ray
instance on the machine (no `ray stop`, no kill by name).
"""

from __future__ import annotations

import tempfile

import pytest

from serve.app_deploy import free_port


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
