"""Pre-flight check before a node joins: its Ray and Python must be the head's.

A node with another Ray, or another Python minor version, joins and then fails in obscure
ways (pickled code and objects do not load across them). The head records its versions in
its GCS at start-up (the `CLUSTER_METADATA` key Ray itself checks); we read them over the
head's GCS port, with the cluster token, before anything starts on this node, and refuse
with the install command that fixes it.

Python: the minor version must match (refused otherwise). Ray's own join check also wants
the same *patch* level by default; a patch difference is harmless for pickling, so the join
then passes `RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor` to `ray start` (see bringup).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from deployments import ray_compat


@dataclass(frozen=True)
class Versions:
    ray: str
    python: str  # major.minor.patch

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


class PreflightError(RuntimeError):
    pass


def local_versions() -> Versions:
    import ray

    return Versions(ray=ray.__version__, python=platform.python_version())


def head_versions(gcs_address: str, timeout_s: float = 10) -> Versions:
    """The versions the head was started with, read from its GCS (needs the cluster token)."""
    try:
        versions = ray_compat.cluster_versions(gcs_address)
    except ray_compat.RayCompatError as exc:
        raise PreflightError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure here means: cannot join; say why
        raise PreflightError(
            f"cannot read the head's versions from {gcs_address}: {exc}\n"
            "Is the head up and its GCS port reachable from here? With token auth (Ray 2.60 default) this node "
            "needs the head's token: copy the head's ~/.ray/auth_token to ~/.ray/auth_token here, or set "
            "RAY_AUTH_TOKEN, and RAY_AUTH_MODE=token."
        ) from None
    if not versions:
        raise PreflightError(f"the head at {gcs_address} published no version metadata (not a Ray head?)")
    return Versions(ray=versions[0], python=versions[1])


def check(head: Versions, local: Versions) -> list[str]:
    """Refuse (PreflightError) on a Ray or Python-minor mismatch; return warnings otherwise."""
    problems = []
    if local.ray != head.ray:
        problems.append(f"Ray {local.ray} here, {head.ray} on the head: "
                        f"install it with  pip install 'ray[serve]=={head.ray}'")
    if local.python_minor != head.python_minor:
        problems.append(f"Python {local.python} here, {head.python} on the head: the Python minor version must "
                        f"match; create the environment with Python {head.python_minor} "
                        f"(e.g. python{head.python_minor} -m venv .venv) and reinstall visionray there")
    if problems:
        raise PreflightError("refusing to join: this node's versions differ from the head's.\n  - "
                             + "\n  - ".join(problems)
                             + "\nEvery node of a cluster must run the same Ray and the same Python minor version "
                               "(cluster/README.md, 'What the cluster pins').")
    warnings = []
    if local.python != head.python:
        warnings.append(f"Python patch level differs ({local.python} here, {head.python} on the head): "
                        "allowed, Ray is told to match the minor version only")
    return warnings
