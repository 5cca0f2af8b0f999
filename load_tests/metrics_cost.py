"""What recording one request's metrics costs: the calls the ingress and the
inference stage make per request, timed in a Serve replica (where ray.serve.metrics records and
Serve's logging writes for real); and the same for the optional JSON request log line.

    .venv/bin/python -m load_tests.metrics_cost
"""

from __future__ import annotations

import tempfile
import time

import ray
from ray import serve

from load_tests.bench import machine

CALLS = 5_000


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Recorder:
    def log_lines(self, n: int) -> float:
        from deployments.dataplane import request_log
        from deployments.metrics import request_log_line

        seen = {"model": "m", "version": "1", "alias": "production",
                "timings": {"preprocess_ms": 3.0, "inference_ms": 9.0, "postprocess_ms": 0.5, "total_ms": 13.0}}
        t0 = time.process_time()
        for i in range(n):
            request_log.info(request_log_line(f"rid{i}", seen, 200, 13.0))
        return (time.process_time() - t0) / n * 1000

    def metrics(self, n: int) -> float:
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
        serve.start(http_options={"port": 0}, logging_config={"enable_access_log": False})
        recorder = serve.run(Recorder.bind(), name="metrics-cost", route_prefix=None)
        recorder.metrics.remote(200).result()  # the metric objects are created on first use
        metrics_ms = min(recorder.metrics.remote(CALLS).result() for _ in range(3))
        log_ms = min(recorder.log_lines.remote(CALLS).result() for _ in range(3))
        serve.shutdown()
    finally:
        ray.shutdown()
    print(f"{machine()}, in a Serve replica, best of 3 × {CALLS}:\n"
          f"  {metrics_ms * 1000:.0f} µs of CPU per request to record its metrics\n"
          f"  {log_ms * 1000:.0f} µs of CPU per request for the JSON request log line (request_log: true)")


if __name__ == "__main__":
    main()
