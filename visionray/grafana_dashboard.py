"""The Grafana dashboard for an operator (docs/grafana-dashboard.json), built from the platform's
metrics (deployments/metrics.py) and Serve's own. Import it in Grafana and pick the Prometheus
data source that scrapes the cluster (visionray/prometheus_config.py).

    .venv/bin/python -m visionray.grafana_dashboard > docs/grafana-dashboard.json
"""

from __future__ import annotations

import json

RATE = "[1m]"

# (title, unit, [(PromQL, legend)]); one row of two panels per pair.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests/s by model and status", "reqps",
     [(f"sum by (model, code) (rate(ray_visionray_requests_total{RATE}))", "{{model}} {{code}}")]),
    ("Errors/s by model (non-2xx)", "reqps",
     [(f'sum by (model, code) (rate(ray_visionray_requests_total{{code!~"2.."}}{RATE}))', "{{model}} {{code}}")]),
    ("Latency p50 / p99 by model (ms)", "ms",
     [(f"histogram_quantile(0.5, sum by (le, model) (rate(ray_visionray_request_latency_ms_bucket{RATE})))",
       "p50 {{model}}"),
      (f"histogram_quantile(0.99, sum by (le, model) (rate(ray_visionray_request_latency_ms_bucket{RATE})))",
       "p99 {{model}}")]),
    ("Latency p50 / p99 by stage (ms)", "ms",
     [(f"histogram_quantile(0.5, sum by (le, stage) (rate(ray_visionray_stage_latency_ms_bucket{RATE})))",
       "p50 {{stage}}"),
      (f"histogram_quantile(0.99, sum by (le, stage) (rate(ray_visionray_stage_latency_ms_bucket{RATE})))",
       "p99 {{stage}}")]),
    ("Requests in progress (queue depth) and model runs", "short",
     [("sum(ray_visionray_ingress_requests_in_progress)", "own HTTP port"),
      ("sum by (deployment) (ray_serve_replica_processing_queries)", "via Serve: {{deployment}}"),
      ("sum by (model) (ray_visionray_concurrent_runs)", "model runs {{model}}")]),
    ("Images per model run (batch size, mean)", "short",
     [(f"sum by (model) (rate(ray_visionray_batch_size_sum{RATE})) / "
       f"sum by (model) (rate(ray_visionray_batch_size_count{RATE}))", "{{model}}")]),
    ("Shed and dropped per second", "reqps",
     [(f"sum by (model) (rate(ray_visionray_shed_total{RATE}))", "shed (503 overloaded) {{model}}"),
      (f"sum by (model) (rate(ray_visionray_deadline_dropped_total{RATE}))", "deadline dropped {{model}}"),
      (f"sum by (model) (rate(ray_visionray_abandoned_total{RATE}))", "client gone {{model}}")]),
    ("Replicas per deployment", "short",
     [("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")]),
    ("Version in service (1 = serving)", "short",
     [("max by (model, alias, version) (ray_visionray_model_serving) == 1", "{{model}}@{{alias}} v{{version}}")]),
    ("Registry: seconds since the last good poll, poll errors/s", "s",
     [("max(ray_visionray_registry_seconds_since_success)", "since last good poll"),
      (f"sum(rate(ray_visionray_registry_poll_errors_total{RATE}))", "poll errors/s")]),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (expr, legend) in enumerate(queries)],
        })
    return {
        "title": "visionray",
        "uid": "visionray",
        "tags": ["visionray", "ray-serve"],
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus"}]},
        "panels": panels,
    }


def main() -> None:
    print(json.dumps(dashboard(), indent=2))


if __name__ == "__main__":
    main()
