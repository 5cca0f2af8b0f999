"""The platform's metrics, scraped by a real Prometheus with the config `make up` writes.

The Debian `prometheus` binary is started on a free port with visionray/prometheus_config.py's config
(file-SD on Ray's discovery file); requests go over real HTTP to a real Serve app; the answers
are read back through Prometheus' HTTP API.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest
import requests

from demo_models import evaluate
from serve.app_deploy import app_config, deploy, free_port, wait_ready
from visionray.prometheus_config import service_discovery_file, write_prometheus_config

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs the prometheus binary (Debian package `prometheus`; .ci/run installs it)")

APP = "metrics"
SAMPLE = evaluate.HERE / "samples" / "shapes_640x480.jpg"


@pytest.fixture(scope="module")
def prometheus(ray_cluster, ray_temp_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    deadline = time.monotonic() + 60
    while not service_discovery_file(ray_temp_dir).exists():  # written by Ray's dashboard
        assert time.monotonic() < deadline, f"Ray wrote no {service_discovery_file(ray_temp_dir)}"
        time.sleep(0.5)
    config = write_prometheus_config(ray_temp_dir, tmp / "prometheus.yml", scrape_interval_s=1)
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def metrics_api(ray_cluster):
    """The app, with a model of its own for each test: what one test sends never adds to what the
    other counts, whichever runs first. The names are new at each deployment, so that series an
    earlier deployment left in Ray's exporter are never this one's."""
    from ray import serve

    port, tag = free_port(), secrets.token_hex(3)
    models = {"counted": f"metrics-det-{tag}", "dashboard": f"metrics-dash-{tag}"}
    deploy([app_config(APP, "/metrics-app", [{"name": name, "path": str(evaluate.DETECTOR_PATH)}
                                             for name in models.values()], http_port=port)])
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz")
    yield {"base": base, **models}
    serve.delete(APP)


def query(prometheus: str, promql: str) -> list[dict]:
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def value(prometheus: str, promql: str) -> float | None:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None


def eventually(prometheus: str, promql: str, expected: float, timeout_s: float = 90) -> float | None:
    """Ray reports metrics to its agent every few seconds and Prometheus scrapes every second."""
    deadline, got = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        got = value(prometheus, promql)
        if got == expected:
            return got
        time.sleep(1)
    return got


def test_prometheus_sees_requests_by_code_stage_latencies_and_the_version_in_service(prometheus, metrics_api):
    base, model = metrics_api["base"], metrics_api["counted"]
    data = SAMPLE.read_bytes()
    url = f"{base}/v1/models/{model}/predict"
    good, bad = 9, 3
    for _ in range(good):
        assert requests.post(url, data=data, headers={"content-type": "image/jpeg"}, timeout=30).status_code == 200
    assert requests.post(url, data=data[:300], headers={"content-type": "image/jpeg"},  # truncated
                         timeout=30).status_code == 400
    assert requests.post(url, data=data, params={"conf": "2"}, timeout=30).status_code == 422
    assert requests.post(url, data=b"", headers={"content-type": "image/jpeg"}, timeout=30).status_code == 400
    unknown = requests.post(f"{base}/v1/models/{'x' * 300}/predict", data=data, timeout=30)
    assert unknown.status_code == 404

    ok = f'sum(ray_visionray_requests_total{{model="{model}",code="200"}})'
    assert eventually(prometheus, ok, good) == good
    assert eventually(prometheus, f'sum(ray_visionray_requests_total{{model="{model}",code=~"4.."}})', bad) == bad
    # The unknown name is not a label value: it is counted under one bounded name (this app's: other
    # tests' apps in the same cluster count their own).
    unknown_404 = f'sum(ray_visionray_requests_total{{model="_unknown",code="404",application="{APP}"}})'
    assert eventually(prometheus, unknown_404, 1) == 1
    assert not query(prometheus, f'ray_visionray_requests_total{{model="{"x" * 300}"}}')

    stages = {r["metric"]["stage"]: float(r["value"][1]) for r in query(
        prometheus, f'sum by (stage) (ray_visionray_stage_latency_ms_count{{model="{model}"}})')}
    assert stages == {"queue": good, "preprocess": good, "inference": good, "postprocess": good}, stages
    p50 = value(prometheus, f'histogram_quantile(0.5, sum by (le) '
                            f'(ray_visionray_stage_latency_ms_bucket{{model="{model}",stage="inference"}}))')
    assert p50 is not None and 0 < p50 < 5_000
    assert value(prometheus, f'sum(ray_visionray_batch_size_count{{model="{model}"}})') == good

    version = requests.get(f"{base}/v1/models/{model}", timeout=30).json()["version"]
    serving = query(prometheus, f'ray_visionray_model_serving{{model="{model}"}} == 1')
    assert [(r["metric"]["version"], r["metric"]["alias"]) for r in serving] == [(version, "production")], serving
    assert value(prometheus, "max(ray_visionray_registry_seconds_since_success)") is not None


def test_every_dashboard_query_runs_in_prometheus_and_the_traffic_panels_show_this_model(prometheus, metrics_api):
    """The Grafana dashboard (docs/grafana-dashboard.json, the file an operator imports): each
    panel's PromQL is accepted by a real Prometheus, and after traffic the panels of requests,
    latency, batch size and version in service have a series for the model (rates over 1m)."""
    import json
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json").read_text())
    base, model = metrics_api["base"], metrics_api["dashboard"]
    data = SAMPLE.read_bytes()
    for _ in range(5):
        assert requests.post(f"{base}/v1/models/{model}/predict", data=data,
                             headers={"content-type": "image/jpeg"}, timeout=30).status_code == 200
    must_show = {"Requests/s by model and status", "Latency p50 / p99 by model (ms)",
                 "Images per model run (batch size, mean)", "Version in service (1 = serving)"}
    shown_by = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            r = requests.get(f"{prometheus}/api/v1/query", params={"query": target["expr"]}, timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "success", (panel["title"], target["expr"], r.text)
        if panel["title"] in must_show:
            shown_by[panel["title"]] = panel["targets"][0]["expr"]
    assert set(shown_by) == must_show, set(shown_by) ^ must_show
    deadline = time.monotonic() + 90
    missing = dict(shown_by)
    while missing and time.monotonic() < deadline:
        for title, expr in list(missing.items()):
            if any(r["metric"].get("model") == model for r in query(prometheus, expr)):
                del missing[title]
        time.sleep(1)
    assert not missing, f"panels without a series for {model}: {sorted(missing)}"
