"""The shipped demo models where users meet them: quality over the served HTTP API, and a
short smoke run of the locust scenarios (the full load runs live in load_tests/).

Fresh held-out images are generated, encoded and POSTed to the deployed pipeline (the
shipped serve/config.yaml application, serving demo_models/*.onnx); the metrics are
computed from the JSON answers. Needs nothing from ../shared.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from demo_models import evaluate
from serve.app_deploy import app_config, deploy, wait_ready

# The quality bars; the in-process figures are in demo_models/README.md.
MIN_MAP50 = 0.90
MIN_TOP1 = 0.95
# Not a seed the models were trained or tuned on: the generator's eval split is never trained on.
HELD_OUT_SEED = 7
LOCUSTFILE = Path(__file__).resolve().parents[1] / "load_tests" / "locustfile.py"


@pytest.fixture(scope="module")
def demo_api(ray_cluster):
    models = [
        {"name": "shapes-detector", "path": str(evaluate.DETECTOR_PATH)},
        {"name": "shapes-classifier", "path": str(evaluate.CLASSIFIER_PATH)},
        # Its own model version: no call measured yet when the deadline test bursts it.
        {"name": "fresh-detector", "path": str(evaluate.DETECTOR_PATH)},
    ]
    deploy([app_config("demo", "/demo", models)])
    base = f"{ray_cluster}/demo"
    wait_ready(f"{base}/readyz")
    return base


def http_predict_fn(base: str, model: str, content_type: str):
    session = requests.Session()

    def predict(data: bytes) -> dict:
        r = session.post(f"{base}/v1/models/{model}/predict", data=data,
                         headers={"content-type": content_type}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    return predict


def test_detector_quality_over_http(demo_api):
    predict = http_predict_fn(demo_api, "shapes-detector", "image/png")
    report = evaluate.detection_report(predict, n_images=100, seed=HELD_OUT_SEED, ext=".png")
    assert report["mAP50"] >= MIN_MAP50, report
    assert report["detections"] > 0.8 * report["objects"], report


def test_classifier_quality_over_http(demo_api):
    predict = http_predict_fn(demo_api, "shapes-classifier", "image/jpeg")
    report = evaluate.classification_report(predict, n_images=200, seed=HELD_OUT_SEED, ext=".jpg")
    assert report["top1"] >= MIN_TOP1, report


def test_locust_smoke_run_has_no_failures(demo_api, tmp_path):
    """The load-test scenarios themselves, briefly: both user classes, a mix of images, zero failures."""
    # Only look: importing locust here would monkey-patch this process (gevent) under Ray.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (it needs Python >= 3.11)")
    prefix = tmp_path / "smoke"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "Detect", "Classify", "--headless",
               "-u", "4", "-r", "4", "-t", "8s", "-H", demo_api, "--csv", str(prefix),
               "--only-summary", "--exit-code-on-error", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["detect shapes-detector"]["Request Count"]) > 0
    assert int(rows["classify shapes-classifier"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0


def images_run_and_dropped(base: str, model: str) -> tuple[int, int]:
    info = requests.get(f"{base}/v1/models/{model}", timeout=30).json()
    return sum(int(size) * n for size, n in info["batch_sizes"].items()), info["deadline_dropped"]


def test_images_whose_deadline_passes_while_queued_never_reach_the_model(demo_api):
    """Work nobody waits for is not run. A burst on a model with no cost
    measured yet is admitted; the images still queued when their 20 ms budget is gone are
    dropped before their run (503 `deadline_exceeded`), and the model runs exactly once per 200."""
    data = (Path(evaluate.__file__).parent / "samples" / "shapes_640x480.jpg").read_bytes()
    before = images_run_and_dropped(demo_api, "fresh-detector")

    def send(_):
        r = requests.post(f"{demo_api}/v1/models/fresh-detector/predict", data=data, timeout=60,
                          headers={"content-type": "image/jpeg", "x-request-timeout-ms": "20"})
        return r.status_code, (r.json().get("error") or {}).get("code"), r.headers.get("retry-after")

    with cf.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, range(24)))
    run, dropped = (a - b for a, b in zip(images_run_and_dropped(demo_api, "fresh-detector"), before))
    ok = sum(status == 200 for status, _, _ in answers)
    expired = [a for a in answers if a[1] == "deadline_exceeded"]
    assert all(status == 200 or (status == 503 and code in ("deadline_exceeded", "overloaded") and retry)
               for status, code, retry in answers), answers
    assert expired, answers  # 24 images, 2 run slots, ~4-8 ms a run: many cannot start within 20 ms
    assert run == ok and dropped == len(expired), (run, ok, dropped, answers)
