"""How the ingress reaches the inference and postprocess stages: other deployments, or itself.

`stages: deployments` (serve/edge.yaml): each stage is its own Serve
deployment, placed and autoscaled on its own (inference on GPU nodes, preprocess on CPU
nodes); every grouped call crosses two Serve hops.

`stages: in_process` (serve/config.yaml, the single-node default): the same stage classes
run inside each ingress replica, and a call is a plain `await`. A Serve hop costs ~10 ms of
CPU on a 2-core EPYC (docs/benchmarks/floor.md), as much as the whole pipeline of a fast
model; when the stages would share a node anyway, the split buys nothing and costs that.
Replicas of the one deployment then scale the whole pipeline together.

Both links answer the same four calls, so the ingress does not know which it has.
"""

from __future__ import annotations

import asyncio
import time

from ray.serve.handle import DeploymentHandle

from deployments.inference import InferenceStage
from deployments.placement import local_first
from deployments.postprocess import PostprocessStage

# How long past a group's latest deadline its downstream call may run before it is abandoned.
# Deadlines are wall-clock (time.time()): they are compared in other processes and on other nodes.
STAGE_SLACK_S = 1.0
STAGE_STATUS_TIMEOUT_S = 0.8


class StageTimeout(RuntimeError):
    """A downstream stage did not answer in time (no live replica, or stuck)."""


class RemoteStages:
    """Inference and postprocess as Serve deployments, reached through handles."""

    def __init__(self, inference: DeploymentHandle, postprocess: DeploymentHandle):
        # Local first: an image stays on the node that decoded it (edge: on its Jetson).
        self.handles = {"inference": local_first(inference), "postprocess": local_first(postprocess)}

    async def load(self, key: str) -> None:
        await asyncio.gather(*(h.load.remote(key) for h in self.handles.values()))

    async def run(self, key: str, images: list, confs: list, metas: list, params: list,
                  deadlines: list[float]) -> list[dict]:
        """One inference call and one postprocess call for a group of requests of one version.

        The inference response goes to postprocess as a DeploymentResponse: the model output
        travels from inference to postprocess and never through the ingress. Bounded by the
        group's latest deadline (+ slack): a stage with no live replica would otherwise hold
        these requests until Serve's request timeout.
        """
        inferred = self.handles["inference"].remote(key, images, confs, deadlines)
        timeout_s = max(deadlines) - time.time() + STAGE_SLACK_S
        try:
            return await asyncio.wait_for(self.handles["postprocess"].remote(key, inferred, metas, params),
                                          timeout_s)
        except asyncio.TimeoutError:
            raise StageTimeout(f"inference + postprocess of {key} did not answer within the "
                               f"request's budget (+{STAGE_SLACK_S:.0f} s)") from None

    async def status(self, stage: str) -> dict:
        """A stage replica's status, or an exception within STAGE_STATUS_TIMEOUT_S (a dead stage
        must not hang /readyz: Serve would queue the call until a replica comes back)."""
        return await asyncio.wait_for(self.handles[stage].status.remote(), STAGE_STATUS_TIMEOUT_S)

    def reconfigure(self, user_config: dict | None) -> None:
        """Batching is the Inference deployment's own user_config."""


class InProcessStages:
    """Inference and postprocess as objects in this process: a call is an await, no copy."""

    def __init__(self, config: dict):
        self.inference = InferenceStage(config)
        self.postprocess = PostprocessStage(config)

    async def load(self, key: str) -> None:
        await asyncio.gather(self.inference.load(key), self.postprocess.load(key))

    async def run(self, key: str, images: list, confs: list, metas: list, params: list,
                  deadlines: list[float]) -> list[dict]:
        inferred = await self.inference(key, images, confs, deadlines)
        return await self.postprocess(key, inferred, metas, params)

    async def status(self, stage: str) -> dict:
        return self.inference.status() if stage == "inference" else self.postprocess.status()

    def reconfigure(self, user_config: dict | None) -> None:
        self.inference.reconfigure(user_config)
