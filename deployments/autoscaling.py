"""Autoscaling that counts requests Serve does not see.

Requests on an ingress replica's own HTTP port (serve/http_server.py) never pass Serve's proxy
or a handle, so Serve's default policy would see an idle deployment under full load. Each
ingress replica reports its own in-flight count (`record_autoscaling_stats`); this policy adds
the replicas' latest reports to Serve's count and then decides exactly as Serve's default
policy does (targets, delays, min/max). Set in serve/config.yaml:
`autoscaling_config: {policy: {policy_function: deployments.autoscaling:own_http_aware_policy}}`.
"""

from __future__ import annotations

from ray.serve.autoscaling_policy import default_autoscaling_policy
from ray.serve.config import AutoscalingContext

from deployments import ray_compat

OWN_HTTP_ONGOING = "own_http_ongoing"  # the key Ingress.record_autoscaling_stats reports


def own_http_ongoing(aggregated_metrics: dict | None) -> float:
    """Sum over replicas of the requests in flight on their own HTTP ports."""
    per_replica = (aggregated_metrics or {}).get(OWN_HTTP_ONGOING) or {}
    return float(sum(per_replica.values()))


def own_http_aware_policy(ctx: AutoscalingContext):
    extra = own_http_ongoing(ctx.aggregated_metrics)
    if extra:
        ray_compat.set_total_num_requests(ctx, ctx.total_num_requests + extra)
    return default_autoscaling_policy(ctx)
