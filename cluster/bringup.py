"""`visionray cluster head|join`: start a Ray node with the project's labels, via `ray start`.

Scale-out is more Ray nodes: these commands only build the `ray start` command line (labels,
GPUs, resources from cluster/labels.py), make sure token auth is on, run the pre-flight
check on a join, and then *become* `ray start` (exec), so the process the operator (or a
systemd unit) runs is Ray's own.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster import labels, preflight
from cluster.auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, ensure_token, token_env, token_source
from deployments import ray_compat

# Ray's own join check wants the same Python patch level unless told otherwise (see preflight).
PYTHON_MATCH_ENV = ray_compat.PYTHON_VERSION_MATCH_LEVEL_ENV
# Serve's per-node proxy port knob (worker nodes only): lets several nodes share one host in tests.
WORKER_PROXY_PORT_ENV = ray_compat.SERVE_WORKER_PROXY_HTTP_PORT_ENV
DEFAULT_GCS_PORT = 6379


def ray_executable() -> str:
    """The `ray` of this very environment: the one the pre-flight check vouched for."""
    return str(Path(sys.executable).with_name("ray"))


def head_command(node_type: str, port: int, dashboard_host: str, dashboard_port: int,
                 ray_args: Sequence[str] = ()) -> list[str]:
    return [ray_executable(), "start", "--head", f"--port={port}", f"--dashboard-host={dashboard_host}",
            f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
            *labels.ray_start_args(node_type), *ray_args]


def join_command(address: str, node_type: str, jetson_model: str | None, jetpack: str | None,
                 ray_args: Sequence[str] = ()) -> list[str]:
    return [ray_executable(), "start", f"--address={address}", "--disable-usage-stats",
            *labels.ray_start_args(node_type, jetson_model, jetpack), *ray_args]


def head(node_type: str = labels.DATACENTER, port: int = DEFAULT_GCS_PORT, dashboard_host: str = "0.0.0.0",
         dashboard_port: int = 8265, ray_args: Sequence[str] = (), dry_run: bool = False) -> int:
    env = token_env()
    # Ray 2.60 would generate one too; doing it here lets us say where it is.
    source = token_source(env) if dry_run else ensure_token(env)[0]
    command = head_command(node_type, port, dashboard_host, dashboard_port, ray_args)
    print(f"token auth: on; this cluster's token is {source or '~/.ray/auth_token (to be created)'}.\n"
          "Copy it to every node that joins (same path, or RAY_AUTH_TOKEN).\n"
          f"This head listens on the network: GCS port {port}, dashboard {dashboard_host}:{dashboard_port}.\n"
          f"join with:  visionray cluster join <this host's IP>:{port} --node-type jetson "
          "--jetson-model orin-nano --jetpack 6.2", file=sys.stderr)
    return _run(command, env, dry_run)


def join(address: str, node_type: str, jetson_model: str | None = None, jetpack: str | None = None,
         serve_http_port: int | None = None, ray_args: Sequence[str] = (), dry_run: bool = False,
         assume_local_versions: preflight.Versions | None = None) -> int:
    """Pre-flight, then `ray start --address`. `assume_local_versions` exists for the refusal test only."""
    command = join_command(address, node_type, jetson_model, jetpack, ray_args)  # validates the labels first
    env = token_env()
    if token_source(env) is None:
        print("error: no cluster token on this node. Copy the head's ~/.ray/auth_token to ~/.ray/auth_token here "
              f"(or set {TOKEN_ENV} / {TOKEN_PATH_ENV}).", file=sys.stderr)
        return 2
    os.environ[AUTH_MODE_ENV] = "token"  # the GCS client below reads it
    try:
        local = assume_local_versions or preflight.local_versions()
        warnings = preflight.check(preflight.head_versions(address), local)
    except preflight.PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    env[PYTHON_MATCH_ENV] = "minor"
    if serve_http_port is not None:
        env[WORKER_PROXY_PORT_ENV] = str(serve_http_port)
    return _run(command, env, dry_run)


def _run(command: list[str], env: dict[str, str], dry_run: bool) -> int:
    print("+ " + shlex.join(command), file=sys.stderr)
    if dry_run:
        return 0
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(command[0], command, env)  # become `ray start`: same pid, same process group
    return 0  # not reached
