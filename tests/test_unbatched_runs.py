"""Unbatched inference (the CPU default): a group's images in one share per run thread
(deployments/inference_stage.py), without Ray: the answers must be the image-by-image answers, in
order, and an image whose deadline has passed is not run."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from core.model_spec import spec_from_onnx
from core.onnx_backend import BackendSettings, sample_images
from core.postprocessing import yolo_candidates
from demo_models.evaluate import DETECTOR_PATH
from deployments.config import BatchingConfig
from deployments.inference_stage import BatchedModel
from deployments.metrics import METRICS
from model_registry.source import ResolvedModel


@pytest.fixture(autouse=True)
def no_ray_metrics():
    # A Ray metric object starts a Ray of its own in this process (auto-init), which the suite's
    # shared cluster would then collide with.
    enabled, METRICS.enabled = METRICS.enabled, False
    yield
    METRICS.enabled = enabled


def _model(concurrent: int) -> BatchedModel:
    resolved = ResolvedModel("det", "1", str(DETECTOR_PATH), spec_from_onnx(DETECTOR_PATH))
    return BatchedModel(resolved, BackendSettings(intra_op_threads=1, lone_run_threads=0),
                        BatchingConfig(max_batch_size=1, max_concurrent_batches=concurrent))


def test_a_group_gives_each_images_own_answer_in_order_and_skips_the_expired():
    model = _model(concurrent=2)
    images = sample_images(model.model.spec, 5, seed=11)
    expected = [yolo_candidates(model.model.run([image])[0], 0.1) for image in images]
    now = time.time()
    deadlines = [now + 60, now + 60, now - 1, now + 60, now + 60]  # the third has already expired

    outputs, timings, _ = asyncio.run(model.infer(images, [0.1] * 5, deadlines))

    assert outputs[2] is None
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(outputs[i], expected[i], rtol=1e-5, atol=1e-5)
    assert model.deadline_dropped == 1
    assert model.batch_sizes == {1: 4}
    assert timings["batch_size"] == 1 and timings["inference_ms"] > 0


def test_every_run_expired_reports_no_run():
    model = _model(concurrent=2)
    images = sample_images(model.model.spec, 3, seed=5)
    outputs, timings, _ = asyncio.run(model.infer(images, [0.1] * 3, [time.time() - 1] * 3))
    assert outputs == [None, None, None]
    assert timings["batch_size"] == 0 and model.deadline_dropped == 3


def test_a_lone_short_run_stays_on_the_callers_thread_and_gives_the_same_answer():
    model = _model(concurrent=2)
    assert model.model.short_runs  # the demo detector runs in a few ms on any CPU here
    [image] = sample_images(model.model.spec, 1, seed=2)
    expected = yolo_candidates(model.model.run([image])[0], 0.1)

    outputs, _, _ = asyncio.run(model.infer([image], [0.1], [time.time() + 60], lone=True))

    np.testing.assert_allclose(outputs[0], expected, rtol=1e-5, atol=1e-5)
    assert not model._executor._threads  # no run thread was ever started
    asyncio.run(model.infer([image], [0.1], [time.time() + 60]))  # not lone: a run thread
    assert len(model._executor._threads) == 1
