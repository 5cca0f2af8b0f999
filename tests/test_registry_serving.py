"""Serving from a real MLflow registry: promotion and rollback under load, bad versions.

Runs against both backends: the embedded sqlite registry and a real `mlflow server`
subprocess that the fixture starts and stops.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import mlflow
import psutil
import pytest
import requests
from ray import serve

from model_registry import registry
from model_registry.mlflow_server import running_mlflow_server
from serve.app_deploy import app_config, deploy, wait_ready
from tests.conftest_registry_helpers import write_classifier
from tests.models import COLOR_CLASSES, color_classifier, solid_image

POLL_S = 1.0
V2_LABELS = ["v2-red", "v2-green", "v2-blue", "v2-gray"]
RED_PNG = cv2.imencode(".png", solid_image((0, 0, 255)))[1].tobytes()


def four_class_classifier(path: Path) -> Path:
    """A v2 that answers differently: 4 classes, other labels (a v2 tensor would not fit v1)."""
    write_classifier(path, classes=4, seed=3)
    return path


def raw_version(uri: str, name: str, onnx_path: Path) -> str:
    """A version created straight through MLflow, skipping visionray's validation."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # Artifacts beside the model file, never in the working directory.
    location = None if uri.startswith("http") else (onnx_path.parent / "raw-artifacts").as_uri()
    exp = client.get_experiment_by_name("raw") or client.get_experiment(
        client.create_experiment("raw", artifact_location=location))
    run = client.create_run(exp.experiment_id)
    staged = onnx_path.parent / f"raw-{onnx_path.stem}"
    staged.mkdir(exist_ok=True)
    (staged / "model.onnx").write_bytes(onnx_path.read_bytes())
    client.log_artifacts(run.info.run_id, str(staged), artifact_path="model")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return str(mv.version)


class Load:
    """Continuous concurrent requests; records (start time, status, version, labels) of each."""

    def __init__(self, url: str, threads: int = 3):
        self.url, self.stop = url, threading.Event()
        self.results: list[tuple[float, int, str | None, tuple]] = []
        self._pool = cf.ThreadPoolExecutor(threads)
        self._futures = [self._pool.submit(self._loop) for _ in range(threads)]

    def _loop(self):
        session = requests.Session()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                r = session.post(self.url, data=RED_PNG, headers={"content-type": "image/png"}, timeout=30)
                body = r.json()
                labels = tuple(c["label"] for c in body.get("classes", []))
                self.results.append((started, r.status_code, body.get("version"), labels))
            except Exception as exc:  # noqa: BLE001 - a failure is a result to assert on
                self.results.append((started, 0, None, (repr(exc),)))

    def finish(self):
        self.stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()
        return self.results


def wait_for_version(url: str, version: str, timeout_s: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        r = requests.post(url, data=RED_PNG, headers={"content-type": "image/png"}, timeout=30)
        if r.status_code == 200 and r.json()["version"] == version:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"version {version} not served after {timeout_s}s")


@pytest.fixture(scope="module", params=["sqlite", "server"])
def backend(request, tmp_path_factory, ray_cluster):
    data = tmp_path_factory.mktemp(f"registry-{request.param}")
    if request.param == "sqlite":
        yield request.param, registry.default_tracking_uri(data), data
    else:
        with running_mlflow_server(data) as server:
            yield request.param, server.url, data


@pytest.fixture(scope="module")
def served(backend, ray_cluster, tmp_path_factory):
    kind, uri, data = backend
    models = tmp_path_factory.mktemp(f"models-{kind}")
    v1 = registry.register(color_classifier(models / "v1.onnx"), name="colors", tracking_uri=uri)
    v2 = registry.register(four_class_classifier(models / "v2.onnx"), name="colors", labels=V2_LABELS,
                           tracking_uri=uri)
    registry.promote("colors", v1.version, "production", tracking_uri=uri)
    registry.promote("colors", v2.version, "staging", tracking_uri=uri)
    name, prefix = f"reg-{kind}", f"/reg-{kind}"
    args = {"registry": {"tracking_uri": uri, "cache_dir": str(data / "cache"), "poll_interval_s": POLL_S,
                         "extra_aliases": ["staging"]}}
    app = app_config(name, prefix, [])
    app["args"] = {**app["args"], **args}
    app["args"].pop("models")
    deploy([app])
    base = f"{ray_cluster}{prefix}"
    wait_ready(f"{base}/readyz")
    yield {"base": base, "uri": uri, "v1": v1.version, "v2": v2.version, "models": models, "data": data}
    serve.delete(name)


def test_serves_the_production_alias_and_staging_by_query(served):
    url = f"{served['base']}/v1/models/colors/predict"
    r = requests.post(url, data=RED_PNG, headers={"content-type": "image/png"}, timeout=30).json()
    assert (r["version"], r["alias"], r["classes"][0]["label"]) == (served["v1"], "production", "red")
    r = requests.post(url, params={"alias": "staging"}, data=RED_PNG, timeout=30).json()
    assert r["version"] == served["v2"] and r["alias"] == "staging"
    assert all(c["label"] in V2_LABELS for c in r["classes"])
    r = requests.post(url, params={"alias": "nope"}, data=RED_PNG, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "alias_not_served"


def _assert_consistent(results, served):
    assert results, "no requests were made"
    failures = [r for r in results if r[1] != 200]
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:3]}"
    for _, _, version, labels in results:
        allowed = COLOR_CLASSES if version == served["v1"] else V2_LABELS
        assert version in (served["v1"], served["v2"]) and set(labels) <= set(allowed), (version, labels)


def test_promotion_and_rollback_under_load_fail_no_request(served):
    url = f"{served['base']}/v1/models/colors/predict"
    load = Load(url)
    time.sleep(1.0)
    registry.promote("colors", served["v2"], "production", tracking_uri=served["uri"])
    t_switch = time.monotonic()
    switch_s = wait_for_version(url, served["v2"])
    time.sleep(3.0)
    t_back = time.monotonic()  # before the call: the alias moves while it runs
    registry.rollback("colors", "production", tracking_uri=served["uri"])
    back_s = wait_for_version(url, served["v1"])
    time_v1_seen = time.monotonic()
    time.sleep(3.0)
    results = load.finish()
    _assert_consistent(results, served)
    assert switch_s < POLL_S + 10 and back_s < POLL_S + 10
    # The one ingress replica switched when v2 was first seen: every request started later is v2.
    settled = [r for r in results if t_switch + switch_s < r[0] < t_back]
    assert settled and {r[2] for r in settled} == {served["v2"]}
    after = [r for r in results if r[0] > time_v1_seen]
    assert after and {r[2] for r in after} == {served["v1"]}


@pytest.mark.parametrize("kind", ["corrupt", "wrong_output_shape"])
def test_a_bad_version_never_replaces_the_serving_one(served, kind):
    models: Path = served["models"]
    if kind == "corrupt":
        bad = models / "corrupt.onnx"
        bad.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    else:  # declares 3 classes, computes 5: only running it shows the problem
        bad = write_classifier(models / "wrong.onnx", classes=5, declared_classes=3, seed=7)
    version = raw_version(served["uri"], "colors", bad)
    url = f"{served['base']}/v1/models/colors/predict"
    load = Load(url, threads=2)
    registry.promote("colors", version, "production", tracking_uri=served["uri"])
    deadline = time.monotonic() + 30
    info = {}
    while time.monotonic() < deadline:
        info = requests.get(f"{served['base']}/v1/models/colors", timeout=30).json()
        if info["aliases"]["production"].get("failed_version") == version:
            break
        time.sleep(0.3)
    time.sleep(POLL_S * 2)
    results = load.finish()
    registry.rollback("colors", "production", tracking_uri=served["uri"])
    prod = info["aliases"]["production"]
    assert prod["failed_version"] == version and prod["error"], info
    assert prod["version"] == served["v1"] and info["state"] == "ready"
    assert {r[2] for r in results} == {served["v1"]}
    _assert_consistent(results, served)


def test_removing_the_alias_stops_serving(served):
    uri = served["uri"]
    url = f"{served['base']}/v1/models/colors/predict"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.delete_registered_model_alias("colors", "staging")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = requests.post(url, params={"alias": "staging"}, data=RED_PNG, timeout=30)
            if r.status_code == 404:
                break
            time.sleep(0.3)
        assert r.status_code == 404 and "staging" in r.json()["error"]["message"]
        assert requests.post(url, data=RED_PNG, timeout=30).status_code == 200
    finally:
        registry.promote("colors", served["v2"], "staging", tracking_uri=uri)


def _replica_pids(app: str) -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith(f"ray::ServeReplica:{app}:Ingress")}


def test_registry_gone_and_the_replica_killed_keeps_serving_from_the_cache(served, backend):
    """The sqlite store moved away, then the serving replica
    killed. The new replica serves the cached catalog, creates nothing at the store's path and
    reports `registry_error`; once the store is back it recovers without a restart."""
    kind, uri, _ = backend
    if kind != "sqlite":
        pytest.skip("the outage is staged by moving the sqlite file away")
    base, app = served["base"], f"reg-{kind}"
    url = f"{base}/v1/models/colors/predict"
    db = registry.sqlite_path(uri)
    moved = db.with_name("moved-away.db")
    old = _replica_pids(app)
    db.rename(moved)
    try:
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline, answer = killed_at + 120, None
        while time.monotonic() < deadline:
            if _replica_pids(app) - old:
                try:
                    answer = requests.post(url, data=RED_PNG, headers={"content-type": "image/png"}, timeout=10)
                    if answer.status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, answer and answer.text
        assert answer.json()["version"] == served["v1"]
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and "registry_error" in ready.json(), ready.text
        assert "registry_error" in requests.get(f"{base}/v1/models", timeout=10).json()
        assert not db.exists(), "a serving replica must never create a registry"
        print(f"\nregistry gone, replica killed: serving from the cache after {time.monotonic() - killed_at:.1f}s")
    finally:
        moved.rename(db)
    deadline = time.monotonic() + POLL_S + 30
    while "registry_error" in requests.get(f"{base}/readyz", timeout=10).json():
        assert time.monotonic() < deadline, "the registry came back but the replica still reports it gone"
        time.sleep(0.5)
    assert requests.post(url, data=RED_PNG, headers={"content-type": "image/png"}, timeout=30).status_code == 200
