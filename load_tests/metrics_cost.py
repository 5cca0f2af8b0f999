"""What recording one request's metrics costs (issue 13): the calls the ingress and the
inference stage make per request, timed in a Ray actor (where ray.serve.metrics records for real).

    .venv/bin/python -m load_tests.metrics_cost
"""

from __future__ import annotations

import tempfile
import time

import ray

from load_tests.bench import machine

CALLS = 5_000


@ray.remote
class Recorder:
    def run(self, n: int) -> float:
        from deployments.metrics import METRICS

        timings = {"preprocess_ms": 3.0, "inference_ms": 9.0, "postprocess_ms": 0.5, "total_ms": 13.0}
        tags = {"model": "m", "version": "1"}
        t0 = time.process_time()
        for i in range(n):
            # Per request: what Preprocess.answer and BatchedModel._run_batch record.
            METRICS.predict_answered("m", "1", "production", 200, 13.0 + i % 7, 1, timings)
            METRICS.observe("batch_size", 1, **tags)
            METRICS.set("concurrent_runs", 1, **tags)
            METRICS.set("concurrent_runs", 0, **tags)
        return (time.process_time() - t0) / n * 1000


def main() -> None:
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="vrm", dir="/tmp"),
             logging_level="WARNING", log_to_driver=False)
    try:
        recorder = Recorder.remote()
        ray.get(recorder.run.remote(200))  # the metric objects are created on first use
        ms = min(ray.get(recorder.run.remote(CALLS)) for _ in range(3))
    finally:
        ray.shutdown()
    print(f"{machine()}: {ms * 1000:.0f} µs of CPU per request to record its metrics (best of 3 × {CALLS})")


if __name__ == "__main__":
    main()
