"""The SIMULATED DEVICE (benchmarks and tests only): its timing model, its answer cache, its
statistics, that a model on it answers exactly what the CPU model answers, and one served app.

Queueing is checked in virtual time (a frozen clock: the reservations, not the sleeps, decide the
order); elapsed-time checks only bound from below, with the waiting thread's CPU time bounded above.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema

import core.simulated_device as sd
from core.image_codec import decode_image
from core.local_pipeline import LocalPipeline
from core.model_spec import spec_from_onnx
from core.onnx_backend import BackendSettings, OnnxModel, sample_images
from core.postprocessing import postprocess, yolo_candidates
from core.predict_params import PredictParams
from core.preprocessing import prepare_image
from demo_models.evaluate import DETECTOR_PATH, HERE
from deployments.config import BackendConfig, PipelineConfig
from serve.app_deploy import SERVE_DIR, app_config, deploy, wait_ready
from tests.models import BUS_JPG, YOLO_DYNAMIC, YOLO_QDQ, assert_bus_detections, needs_shared_models

FAST = {"fixed_ms": 0.5, "per_image_ms": 0.25}


def run_threads(n: int, target) -> list:
    """`target(i)` on n threads released together; their results in thread order."""
    results = [None] * n
    gate = threading.Barrier(n)

    def body(i):
        gate.wait()
        results[i] = target(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


# -- the timing model -------------------------------------------------------------------------
def test_run_time_is_fixed_plus_per_image():
    curve = sd.Curve(fixed_ms=0.8, per_image_ms=0.25)
    assert [curve.run_ms(b) for b in (1, 4, 8)] == pytest.approx([1.05, 1.8, 2.8])


@pytest.mark.parametrize("options, expected", [
    ({}, sd.PRESETS["datacenter-gpu-yolov8n"]),
    ({"preset": "jetson-orin-nano-yolov8n"}, sd.PRESETS["jetson-orin-nano-yolov8n"]),
    ({"preset": "jetson-orin-nano-yolov8n", "streams": 2},
     sd.Curve(0.8, 4.4, streams=2, preset="jetson-orin-nano-yolov8n")),
    ({"fixed_ms": 0.8, "per_image_ms": 0.25, "streams": 1}, sd.Curve(0.8, 0.25)),
])
def test_options_name_a_preset_or_a_curve(options, expected):
    assert sd.parse_options(options)[0] == expected


def test_presets_match_their_published_batch_one_figures():
    """docs/accelerators.md: ~1 ms (A100, Ultralytics) and 5.2 ms host latency (Orin Nano, trtexec FP16)."""
    assert sd.PRESETS["datacenter-gpu-yolov8n"].run_ms(1) == pytest.approx(1.0)
    assert sd.PRESETS["jetson-orin-nano-yolov8n"].run_ms(1) == pytest.approx(5.2)


@pytest.mark.parametrize("options, message", [
    ({"preset": "h100"}, "unknown preset"),
    ({"fixed_ms": 1.0}, "both fixed_ms and per_image_ms"),
    ({"fixed_ms": -1, "per_image_ms": 1}, ">= 0"),
    ({**FAST, "streams": 0}, "streams"),
    ({**FAST, "cache_size": 0}, "cache_size"),
    ({**FAST, "speed": 2}, "unknown options"),
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        sd.parse_options(options)
    with pytest.raises(ValueError, match=message):
        BackendConfig(providers=[["SimulatedDevice", options]])


def test_a_run_takes_its_simulated_time_without_using_cpu():
    device = sd.SimulatedDevice()
    t0, cpu0 = time.perf_counter(), time.thread_time()
    device.occupy(4, 200.0)
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    assert elapsed >= 0.2
    assert cpu < 0.02, f"the wait used {cpu * 1000:.1f} ms of CPU"


@pytest.mark.parametrize("streams, expected_s", [(1, [0.05, 0.10, 0.15, 0.20]), (2, [0.05, 0.05, 0.10, 0.10])])
def test_concurrent_runs_queue_for_a_stream(streams, expected_s):
    """Four runs arriving together: one stream serves them one after another, two serve two at a time."""
    device = sd.SimulatedDevice(streams, clock=lambda: 0.0)  # every run arrives at t=0
    waited = run_threads(4, lambda i: device.occupy(1, 50.0))
    assert sorted(waited) == pytest.approx(expected_s)
    stats = device.stats()
    assert stats["queued_s"] == pytest.approx(sum(expected_s) - 4 * 0.05)


def test_queued_runs_sleep_for_real():
    device = sd.SimulatedDevice(1)
    t0 = time.perf_counter()
    run_threads(3, lambda i: device.occupy(1, 40.0))
    assert time.perf_counter() - t0 >= 0.12


def test_statistics_give_busy_time_batch_sizes_and_mean_batch():
    clock = iter([0.0, 0.0, 0.0, 0.0, 1.0, 1.0]).__next__  # two runs at t=0, stats at t=1
    device = sd.SimulatedDevice(1, clock=clock)
    device.occupy(8, 2.0)
    device.occupy(2, 1.5)
    stats = device.stats()
    assert stats["runs"] == 2 and stats["images"] == 10 and stats["mean_batch"] == 5
    assert stats["busy_s"] == pytest.approx(0.0035)
    assert stats["busy_fraction"] == pytest.approx(0.0035)
    assert stats["batch_sizes"] == {2: 1, 8: 1}


def test_one_device_per_process(monkeypatch):
    monkeypatch.setattr(sd, "_process_device", None)
    device = sd.process_device(1)
    assert sd.process_device(1) is device
    with pytest.raises(ValueError, match="stream"):
        sd.process_device(2)


# -- the answer cache -------------------------------------------------------------------------
def test_cache_drops_the_least_recently_used():
    cache = sd.OutputCache(max_entries=2)
    a, b, c = (np.full((2, 2), v, dtype=np.uint8) for v in (1, 2, 3))
    for x in (a, b):
        cache.put(cache.key(x), x)
    assert cache.get(cache.key(a)) is a  # a is now the most recent
    cache.put(cache.key(c), c)
    assert cache.get(cache.key(b)) is None and cache.get(cache.key(a)) is a
    assert cache.key(a) != cache.key(a.astype(np.int16)) != cache.key(a.reshape(4))
    assert cache.stats() == {"entries": 2, "max_entries": 2, "hits": 2, "misses": 1}


def test_each_distinct_input_is_computed_once(monkeypatch):
    monkeypatch.setattr(sd, "_process_device", None)
    computed = []

    def compute_one(x):
        computed.append(float(x.flat[0]))
        return x * 10

    runs = sd.SimulatedRuns(FAST, compute_one)
    images = [np.full((2, 2), v, dtype=np.uint8) for v in (1, 2)]
    x = np.stack(images).astype(np.float32)
    first = runs.run(images, x)
    again = runs.run([images[1], images[0], images[1]], x[[1, 0, 1]])
    assert computed == [1.0, 2.0]  # the second run of the same inputs costs no model run
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    again[0] += 1  # callers get copies, never the cached arrays
    np.testing.assert_array_equal(runs.run(images[1:], x[1:]), first[1:])
    status = runs.status()
    assert status["simulated"] is True and "SIMULATED DEVICE" in status["warning"]
    assert status["cache"]["misses"] == 2 and status["device"]["batch_sizes"] == {1: 1, 2: 1, 3: 1}


# -- on a real model --------------------------------------------------------------------------
def simulated(path, options=FAST) -> OnnxModel:
    return OnnxModel(path, spec_from_onnx(path), BackendSettings(providers=[["SimulatedDevice", options]]))


def test_demo_detector_answers_exactly_as_on_cpu():
    cpu = OnnxModel(DETECTOR_PATH, spec_from_onnx(DETECTOR_PATH))
    sim = simulated(DETECTOR_PATH)
    assert sim.providers == ["SimulatedDevice"] and sim.short_runs is False
    images = sample_images(sim.spec, 4, seed=11)
    for image in images:
        np.testing.assert_array_equal(sim.run([image]), cpu.run([image]))
    # A batch answers each image's own (alone) answer, from the cache.
    np.testing.assert_array_equal(sim.run(images), np.concatenate([cpu.run([i]) for i in images]))
    assert sim.simulated.cache.stats()["misses"] == 4


@needs_shared_models
@pytest.mark.parametrize("path", [YOLO_QDQ, YOLO_DYNAMIC], ids=lambda p: p.name)
def test_yolov8n_on_bus_answers_exactly_as_on_cpu(path):
    cpu = OnnxModel(path, spec_from_onnx(path))
    sim = simulated(path, {"preset": "datacenter-gpu-yolov8n"})
    x, meta = prepare_image(decode_image(BUS_JPG.read_bytes()), sim.spec.preprocessing)
    out = sim.run([x])
    np.testing.assert_array_equal(out, cpu.run([x]))
    params = PredictParams(conf=0.25, iou=0.45, max_det=300, top_k=3)
    assert_bus_detections(postprocess(sim.spec, False, yolo_candidates(out[0], 0.25), meta, params)["detections"],
                          path)


# -- config -----------------------------------------------------------------------------------
def test_split_sim_config_validates_and_gives_inference_one_gpu():
    config = yaml.safe_load((SERVE_DIR / "split-sim.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    args = PipelineConfig.model_validate(app["args"])
    assert args.stages == "deployments"
    assert sd.simulated_options(args.backend.providers) == {"preset": "datacenter-gpu-yolov8n"}
    inference = next(d for d in app["deployments"] if d["name"] == "Inference")
    assert inference["ray_actor_options"]["num_gpus"] == 1 and inference["num_replicas"] == 1
    assert all("num_gpus" not in d["ray_actor_options"] for d in app["deployments"] if d["name"] != "Inference")


# -- served -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated_app(ray_cluster):
    backend = {"providers": [["SimulatedDevice", {"fixed_ms": 2.0, "per_image_ms": 1.0}]], "intra_op_threads": 1}
    app = app_config("simdev", "/simdev", [{"name": "det", "path": str(DETECTOR_PATH)}], backend=backend)
    (ingress,) = app["deployments"]
    ingress["user_config"] = {"max_batch_size": 8, "max_concurrent_batches": 1, "batch_wait_timeout_s": 0.0}
    deploy([app])
    base = f"{ray_cluster}/simdev"
    wait_ready(f"{base}/readyz")
    return base


def test_served_answers_equal_local_pipeline_and_the_device_is_reported(simulated_app):
    files = [HERE / "samples" / name for name in ("shapes_640x480.jpg", "shapes_480x640.jpg", "circle.jpg")]
    local = LocalPipeline(DETECTOR_PATH)
    expected = {f.name: local(f.read_bytes())["detections"] for f in files}
    session = requests.Session()

    def predict(i):
        f = files[i % len(files)]
        r = session.post(f"{simulated_app}/v1/models/det/predict", data=f.read_bytes(),
                         headers={"content-type": "image/jpeg"}, timeout=60)
        return f.name, r

    for name, r in run_threads(9, predict):
        assert r.status_code == 200, r.text
        assert r.json()["detections"] == expected[name]
    detail = session.get(f"{simulated_app}/v1/models/det", timeout=30).json()
    assert detail["providers"] == ["SimulatedDevice"]
    device = detail["device"]
    assert device["simulated"] is True and "SIMULATED DEVICE" in device["warning"]
    assert device["curve"] == {"fixed_ms": 2.0, "per_image_ms": 1.0, "streams": 1, "preset": None}
    assert device["device"]["images"] == 9 and device["cache"]["misses"] == 3
