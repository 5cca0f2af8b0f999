"""The try-it page in a real browser, and the review queue filling from real
predictions. Headless Chromium (Debian package `chromium`) driven by Playwright; skipped with a
reason where either is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from demo_models import evaluate
from serve.app_deploy import app_config, deploy, free_port, wait_ready

SAMPLE = evaluate.HERE / "samples" / "shapes_640x480.jpg"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "try-it.png"


@pytest.fixture(scope="module")
def page_api(ray_cluster, tmp_path_factory):
    from ray import serve

    port = free_port()
    review_dir = tmp_path_factory.mktemp("review")
    models = [{"name": "det", "path": str(evaluate.DETECTOR_PATH)},
              {"name": "clf", "path": str(evaluate.CLASSIFIER_PATH)}]
    review = {"enabled": True, "dir": str(review_dir), "rules": {"det": {"top_score_below": 0.5}}}
    deploy([app_config("page", "/page", models, http_port=port, review=review)])
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz")
    yield {"base": base, "review_dir": review_dir}
    serve.delete("page")


def predict(base: str, image: bytes, **params) -> requests.Response:
    return requests.post(f"{base}/v1/models/det/predict", data=image, params=params,
                         headers={"content-type": "image/jpeg"}, timeout=30)


def blank_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))[1].tobytes()


def test_low_confidence_predictions_reach_the_queue_and_export(page_api, tmp_path):
    base = page_api["base"]
    sure = predict(base, SAMPLE.read_bytes())
    unsure = predict(base, blank_jpeg(), conf=0.05)  # nothing there: top score 0
    assert sure.status_code == unsure.status_code == 200
    assert max(d["score"] for d in sure.json()["detections"]) >= 0.5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queue = requests.get(f"{base}/v1/review", timeout=10).json()
        if queue["items"]:
            break
        time.sleep(0.2)
    [item] = queue["items"]  # only the unsure one: the sure one's top score is over the rule's 0.5
    assert item["request_id"] == unsure.json()["request_id"] and item["reason"] == "low_top_score"
    assert item["model"] == "det" and item["version"] == unsure.json()["version"]
    image = requests.get(f"{base}/v1/review/{item['id']}/image", timeout=10)
    assert image.headers["content-type"] == "image/jpeg" and image.content == blank_jpeg()
    assert requests.post(f"{base}/v1/review/{item['id']}/accept", timeout=10).json()["status"] == "accepted"
    # The CLI reads the same queue from its directory, while the platform serves.
    out = tmp_path / "ls"
    done = subprocess.run([sys.executable, "-m", "visionray.cli", "review", "export",
                           "--dir", str(page_api["review_dir"]),
                           "--format", "label-studio", "--status", "accepted", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [task] = json.loads((out / "tasks.json").read_text())
    assert task["data"]["visionray_id"] == item["id"] and (out / task["data"]["image"]).is_file()
    for path, code in (("/v1/review/nope", 404), ("/v1/review?status=odd", 422)):
        r = requests.get(base + path, timeout=10)
        assert r.status_code == code and r.json()["request_id"]


def test_the_page_and_its_files_are_served(page_api):
    base = page_api["base"]
    r = requests.get(base + "/", timeout=10, allow_redirects=True)
    assert r.status_code == 200 and "visionray" in r.text and r.url.endswith("/ui/")
    assert "fetch(" in requests.get(base + "/ui/app.js", timeout=10).text
    samples = requests.get(base + "/ui/samples/", timeout=10).json()["samples"]
    assert SAMPLE.name in samples
    assert requests.get(base + f"/ui/samples/{SAMPLE.name}", timeout=10).content == SAMPLE.read_bytes()
    assert requests.get(base + "/ui/../../etc/passwd", timeout=10).status_code == 404
    assert predict(base, SAMPLE.read_bytes()).status_code == 200
    stats = requests.get(base + "/v1/stats", timeout=10).json()
    assert stats["window_s"] == 60 and stats["models"]["det"]["requests"] >= 1


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian package chromium; .ci/run installs it)")
def test_a_user_drops_an_image_and_sees_the_boxes(page_api, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    base = page_api["base"]
    expected = predict(base, SAMPLE.read_bytes()).json()["detections"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(base + "/", wait_until="load")
            page.wait_for_selector("#model option[value=det]", state="attached")
            page.select_option("#model", "det")
            page.set_input_files("#file", str(SAMPLE))
            page.wait_for_selector("#result[data-state=done]", timeout=30_000)
            assert int(page.get_attribute("#result", "data-boxes")) == len(expected) > 0
            assert "preprocess" in page.inner_text("#timings")
            # A slider re-runs the request: at conf 0.95 fewer (or as many) boxes, the API's count.
            page.eval_on_selector("#conf", "el => { el.value = '0.95'; el.dispatchEvent(new Event('input')); }")
            strict = predict(base, SAMPLE.read_bytes(), conf=0.95).json()["detections"]
            page.wait_for_function(f"document.querySelector('#result').dataset.boxes === '{len(strict)}' && "
                                   "document.querySelector('#result').dataset.state === 'done'", timeout=30_000)
            page.eval_on_selector("#conf", "el => { el.value = '0.25'; el.dispatchEvent(new Event('input')); }")
            page.wait_for_function(f"document.querySelector('#result').dataset.boxes === '{len(expected)}'",
                                   timeout=30_000)
            page.wait_for_function("document.querySelector('#live tbody').innerText.includes('det')", timeout=10_000)
            shot = tmp_path / "try-it.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("VISIONRAY_UPDATE_SCREENSHOT"):
                shutil.copyfile(shot, SCREENSHOT)
            # The review tab lists the queue (the queue test's item, accepted there: none pending here).
            page.click("#tab-review")
            page.wait_for_function("document.querySelector('#review-state').innerText.includes('items kept')",
                                   timeout=10_000)
        finally:
            browser.close()
