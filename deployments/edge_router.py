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

from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter

from deployments import ray_compat
from deployments.placement import node_id

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = 5.0


class NoReplicaRunning(BackPressureError):
    """Serve turns a BackPressureError into its status code (503) with Retry-After."""

    def __init__(self, deployment: str):
        super().__init__(0, 0, 503, RETRY_AFTER_S)
        self._no_replica_message = (f"no replica of {deployment} is running (its edge node is down or has not "
                                    f"joined); retry in {RETRY_AFTER_S:.0f}s")

    @property
    def message(self) -> str:  # what Serve answers with
        return self._no_replica_message

    def __str__(self) -> str:
        return self._no_replica_message


class EdgeRouter(ray_compat.NoRunningReplicaHook, FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Serve's default router, power of two choices over the same public mixins (FIFO, locality,
    multiplexing), held to the caller's node's replicas when it has any."""

    def __init__(self, *args, deployment_id, **kwargs):
        super().__init__(*args, deployment_id=deployment_id, **kwargs)
        self._edge_deployment_id = deployment_id
        # The node Serve gives its own locality preference: this process's.
        self._edge_node_id = node_id()
        log.info("EdgeRouter for %s on node %s", deployment_id, self._edge_node_id)

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        local = [r for r in candidate_replicas if r.node_id == self._edge_node_id]
        if not local:
            return self._power_of_two_choices(pending_request)
        # Two random local replicas: Serve sends to the less loaded one, or backs off and asks
        # again while both are full (it never widens the set itself).
        return [random.sample(local, min(2, len(local)))]

    def _power_of_two_choices(self, pending_request):
        """What Serve's default router (PowerOfTwoChoicesRequestRouter) chooses: two random replicas
        among those its multiplexing or locality preference leaves."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            candidate_ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            candidate_ids = self.apply_locality_routing(pending_request=pending_request)
        if not candidate_ids:
            return []
        replicas = self.curr_replicas
        return [[replicas[i] for i in random.sample(tuple(candidate_ids), min(2, len(candidate_ids)))]]

    def on_no_running_replica(self) -> None:
        log.warning("no running replica of %s: answering 503", self._edge_deployment_id)
        raise NoReplicaRunning(self._edge_deployment_id.name)
