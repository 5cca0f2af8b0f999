"""Metric names, labels and bucket layout (deployments/metrics.py), without Ray."""

from __future__ import annotations

import re

from deployments.metrics import LATENCY_BUCKETS_MS, SPECS, STAGES, Aggregates, Metrics, stage_times_ms

# Labels that would make series unbounded: never allowed.
UNBOUNDED = {"request_id", "rid", "path", "url", "client", "name_raw"}
# Serve adds these itself and refuses them as tag keys.
RESERVED = {"application", "deployment", "replica"}


def test_names_and_labels_are_prometheus_safe_and_bounded():
    for spec in SPECS.values():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.exported.startswith("ray_visionray_")
        assert spec.kind in ("counter", "gauge", "histogram")
        assert not (set(spec.tags) & (UNBOUNDED | RESERVED)), spec
        assert (spec.kind == "histogram") == bool(spec.boundaries), spec
        assert list(spec.boundaries) == sorted(set(spec.boundaries)), spec
    assert SPECS["requests"].exported == "ray_visionray_requests_total"
    assert set(SPECS["requests"].tags) == {"model", "version", "alias", "code"}


def test_latency_buckets_resolve_1_ms_to_30_s():
    assert LATENCY_BUCKETS_MS[0] == 1 and LATENCY_BUCKETS_MS[-1] == 30_000
    # No decade without at least two boundaries: p50/p99 stay readable at any speed.
    for low in (1, 10, 100, 1_000, 10_000):
        assert sum(low <= b < low * 10 for b in LATENCY_BUCKETS_MS) >= 2, low


def test_stage_times_account_for_the_whole_request():
    timings = {"preprocess_ms": 4.0, "inference_ms": 30.0, "postprocess_ms": 1.0, "total_ms": 41.0, "batch_size": 2}
    stages = stage_times_ms(timings)
    assert set(stages) == set(STAGES)
    assert stages["queue"] == 6.0 and sum(stages.values()) == 41.0
    assert stage_times_ms({"total_ms": 1.0, "inference_ms": 3.0})["queue"] == 0.0  # never negative


def test_points_are_summed_kept_last_and_histograms_cumulative_between_flushes():
    points = Aggregates()
    for _ in range(3):
        points.add("requests", "counter", 1, {"model": "m", "code": 200})
    points.add("requests", "counter", 1, {"model": "m", "code": 503})
    points.add("concurrent_runs", "gauge", 2, {"model": "m"})
    points.add("concurrent_runs", "gauge", 1, {"model": "m"})
    for ms in (0.5, 1.0, 3.0, 40_000.0):
        points.add("stage_latency_ms", "histogram", ms, {"stage": "queue"})

    counters, gauges, histograms = points.take()
    assert counters == {("requests", (("code", "200"), ("model", "m"))): 3,
                        ("requests", (("code", "503"), ("model", "m"))): 1}
    assert gauges == {("concurrent_runs", (("model", "m"),)): 1}
    [(buckets, count, total)] = histograms.values()
    cumulative = dict(buckets)
    # le is "less than or equal": 0.5 and 1.0 are in le=1, 3.0 in le=5, 40 s only in +Inf.
    assert [cumulative[le] for le in ("1", "2", "5", "30000", "+Inf")] == [2, 2, 3, 3, 4]
    assert list(cumulative) == [f"{b:g}" for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    assert (count, total) == (4, 40_004.5)

    counters, gauges, histograms = points.take()
    assert counters == {} and gauges == {}  # nothing new to send
    assert len(histograms) == 1  # but a histogram is sent again at every flush
    points.add("stage_latency_ms", "histogram", 3.0, {"stage": "queue"})
    [(buckets, count, _)] = points.take()[2].values()
    assert dict(buckets)["5"] == 4 and count == 5  # cumulative since the process started


def test_recording_outside_ray_never_raises():
    m = Metrics()
    m.predict_answered("m", "1", "production", 200, 12.0, 1, {"total_ms": 12.0})
    m.inc("shed", model="m", version="1")
    m.flush()  # outside Ray: dropped, and no Ray started


def test_docs_list_every_metric_and_the_dashboard_is_current():
    import json
    from pathlib import Path

    from visionray.grafana_dashboard import dashboard

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "metrics.md").read_text()
    for spec in SPECS.values():
        assert f"`{spec.exported}`" in doc, spec.exported
    committed = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    assert committed == dashboard(), "regenerate: python -m visionray.grafana_dashboard > docs/grafana-dashboard.json"
    exprs = " ".join(t["expr"] for p in committed["panels"] for t in p["targets"])
    used = set(re.findall(r"ray_visionray_[a-z_]+", exprs))
    known = {s.exported for s in SPECS.values()} | {f"{s.exported}_{part}" for s in SPECS.values()
                                                    for part in ("bucket", "sum", "count")}
    assert used and used <= known, used - known


def test_the_request_log_line_is_one_json_object_without_raw_names():
    import json

    from deployments.metrics import request_log_line

    timings = {"preprocess_ms": 4.0, "inference_ms": 30.0, "postprocess_ms": 1.0, "total_ms": 41.0}
    line = request_log_line("r1", {"model": "m", "version": "3", "alias": "production", "timings": timings}, 200, 41.0)
    assert "\n" not in line
    assert json.loads(line) == {"request_id": "r1", "model": "m", "version": "3", "alias": "production",
                                "status": 200, "total_ms": 41.0,
                                "stages_ms": {"preprocess": 4.0, "inference": 30.0, "postprocess": 1.0, "queue": 6.0}}
    assert json.loads(request_log_line("r2", None, 404, 0.5))["model"] == "_unknown"
