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
import logging
import time

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle

from core.text import one_line
from deployments.inference_stage import InferenceStage
from deployments.placement import local_first
from deployments.postprocess_stage import PostprocessStage

log = logging.getLogger("ray.serve")

# How long past a group's latest deadline its downstream call may run before it is abandoned.
# Deadlines are wall-clock (time.time()): they are compared in other processes and on other nodes.
STAGE_SLACK_S = 1.0
STAGE_STATUS_TIMEOUT_S = 0.8
# While a stage is known to be down, how often it is asked whether it is back.
STAGE_PROBE_INTERVAL_S = 0.5


# Serve's own failures of a call to another deployment: its replica died, is restarting or does not
# exist. Errors in a stage's code arrive as RayTaskError instead, and are not these.
STAGE_FAILURES = (RayActorError, ActorUnavailableError, DeploymentUnavailableError, RayServeException)


class StageUnavailable(RuntimeError):
    """A downstream stage cannot answer now: a call to it failed or timed out, and no status
    call has answered since. Predict is idempotent: the client may retry (503 + Retry-After)."""


class StageTimeout(StageUnavailable):
    """A downstream stage did not answer in time (no live replica, or stuck)."""


class RemoteStages:
    """Inference and postprocess as Serve deployments, reached through handles."""

    def __init__(self, inference: DeploymentHandle, postprocess: DeploymentHandle):
        # Local first: an image stays on the node that decoded it (edge: on its Jetson).
        self.handles = {"inference": local_first(inference), "postprocess": local_first(postprocess)}
        # Why the stages count as down (None: up). Set by a failed or timed-out call, cleared by
        # the first status round that both stages answer (_probe_until_up).
        self.down: str | None = None
        self._probe: asyncio.Task | None = None  # held: the loop keeps only a weak reference to tasks

    def check(self) -> None:
        """Fail fast while a stage is known to be down: a request would otherwise wait its whole
        budget for a replica that Serve has not replaced yet (Serve queues calls meanwhile)."""
        if self.down is not None:
            raise StageUnavailable(f"{self.down} (checking again every {STAGE_PROBE_INTERVAL_S:g} s)")

    def _mark_down(self, why: str) -> None:
        if self.down is None:
            log.warning("a pipeline stage is down: %s; failing fast until it answers again", why)
            self.down = why
            self._probe = asyncio.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(STAGE_PROBE_INTERVAL_S)
            try:
                await asyncio.gather(*(self.status(stage) for stage in self.handles))
            except Exception:  # noqa: BLE001 - still down, whatever the reason
                continue
            log.warning("the pipeline stages answer again (were down: %s)", self.down)
            self.down = None
            return

    async def load(self, key: str) -> None:
        await asyncio.gather(*(h.load.remote(key) for h in self.handles.values()))

    async def run(self, key: str, images: list, confs: list, metas: list, params: list,
                  deadlines: list[float], lone: bool = False) -> list[dict]:
        """One inference call and one postprocess call for a group of requests of one version.
        (`lone` is for InProcessStages: the inference replica has threads of its own to judge by.)

        The inference response goes to postprocess as a DeploymentResponse: the model output
        travels from inference to postprocess and never through the ingress. Bounded by the
        group's latest deadline (+ slack): a stage with no live replica would otherwise hold
        these requests until Serve's request timeout.
        """
        self.check()
        inferred = self.handles["inference"].remote(key, images, confs, deadlines)
        timeout_s = max(deadlines) - time.time() + STAGE_SLACK_S
        try:
            return await asyncio.wait_for(self.handles["postprocess"].remote(key, inferred, metas, params),
                                          timeout_s)
        except asyncio.TimeoutError:
            why = (f"inference + postprocess of {key} did not answer within the request's budget "
                   f"(+{STAGE_SLACK_S:.0f} s)")
            self._mark_down(why)
            raise StageTimeout(why) from None
        except (BackPressureError, RequestCancelledError):
            raise  # busy (the ingress answers 503 overloaded) or cancelled: not down
        except STAGE_FAILURES as exc:
            # A replica died under this call; Serve starts another, which needs its load time.
            self._mark_down(one_line(exc))
            raise

    async def status(self, stage: str) -> dict:
        """A stage replica's status, or an exception within STAGE_STATUS_TIMEOUT_S (a dead stage
        must not hang /readyz: Serve would queue the call until a replica comes back)."""
        return await asyncio.wait_for(self.handles[stage].status.remote(), STAGE_STATUS_TIMEOUT_S)

    def reconfigure(self, user_config: dict | None) -> None:
        """Batching is the Inference deployment's own user_config."""


class InProcessStages:
    """Inference and postprocess as objects in this process: a call is an await, no copy."""

    down = None  # never known down: no other replica to lose (RemoteStages.down)

    def __init__(self, config: dict):
        self.inference = InferenceStage(config)
        self.postprocess = PostprocessStage(config)

    async def load(self, key: str) -> None:
        await asyncio.gather(self.inference.load(key), self.postprocess.load(key))

    async def run(self, key: str, images: list, confs: list, metas: list, params: list,
                  deadlines: list[float], lone: bool = False) -> list[dict]:
        """`lone`: this group is the ingress replica's only predict in progress (DataPlane)."""
        inferred = await self.inference(key, images, confs, deadlines, lone)
        return await self.postprocess(key, inferred, metas, params)

    async def status(self, stage: str) -> dict:
        return self.inference.status() if stage == "inference" else self.postprocess.status()

    def check(self) -> None:
        """In process: nothing to fail fast for."""

    def reconfigure(self, user_config: dict | None) -> None:
        self.inference.reconfigure(user_config)
