"""The request router of edge deployments: stay on the receiving node, fail fast when none.

Two rules on top of Serve's default router (power of two choices), for deployments pinned
to Jetsons (`request_router_config.request_router_class` in serve/edge.yaml):

- **Node-local only, when possible.** If the caller's node (the proxy's, or the calling
  replica's) has replicas of the deployment, only those are candidates, even when they are
  busy: a camera's image is decoded, inferred and post-processed on the Jetson it was
  posted to, never copied to another Jetson. (Serve's own locality preference falls back
  to other nodes as soon as the local replicas are busy.) A caller on a node without
  replicas (e.g. the head's proxy) may use any node's.
- **503 at once when no replica runs.** Serve queues a request for a deployment without
  replicas until one starts, which for an edge pipeline whose Jetson died can be forever.
  Here the caller (proxy or handle) gets `503` + `Retry-After` right away; when a Jetson
  joins again Serve starts the pending replicas on it and requests flow, no redeploy.
"""

from __future__ import annotations

import logging
import random

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.exceptions import BackPressureError

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = 5.0


class NoReplicaRunning(BackPressureError):
    """Serve turns a BackPressureError into its status code (503) with Retry-After."""

    def __init__(self, deployment: str):
        super().__init__(0, 0, 503, RETRY_AFTER_S)
        self._message = (f"no replica of {deployment} is running (its edge node is down or has not joined); "
                         f"retry in {RETRY_AFTER_S:.0f}s")


class EdgeRouter(PowerOfTwoChoicesRequestRouter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        log.info("EdgeRouter for %s on node %s", self._deployment_id, self._self_node_id)

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        local = [r for r in candidate_replicas if r.node_id == self._self_node_id]
        if not local:
            return await super().choose_replicas(candidate_replicas, pending_request)
        # Two random local replicas: Serve sends to the less loaded one, or backs off and asks
        # again while both are full (it never widens the set itself).
        return [random.sample(local, min(2, len(local)))]

    async def _choose_replica_for_request(self, pending_request, *, is_retry: bool = False):
        # Serve's (private) hook that would otherwise wait for a replica indefinitely.
        if not self.curr_replicas:
            log.warning("no running replica of %s: answering 503", self._deployment_id)
            raise NoReplicaRunning(self._deployment_id.name)
        return await super()._choose_replica_for_request(pending_request, is_retry=is_retry)
