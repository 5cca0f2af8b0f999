"""The platform's own Prometheus metrics: what each is called, its labels and buckets (plain data,
unit-tested without Ray), and `Metrics`, a thin recorder over `ray.serve.metrics`.

Ray exports them where it exports everything else (each node's metrics export port, listed in
Ray's Prometheus service-discovery file), prefixed `ray_`, counters suffixed `_total`; Serve adds
`application`, `deployment` and `replica` labels. docs/metrics.md lists them with their PromQL.

Labels are bounded: model names come from the served catalog (a request for an unknown model is
counted as UNKNOWN_MODEL), versions from the registry, `code` is the HTTP status. No request ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

log = logging.getLogger("ray.serve")

PREFIX = "visionray_"
UNKNOWN_MODEL = "_unknown"
# 1 ms to 30 s, about three buckets per decade: enough to read p50/p99 per stage on CPU and GPU.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000)
# Ray 2.60 exports a histogram's _sum from its buckets' midpoints, not the values: boundaries
# halfway between integers make the midpoint of each small bucket the batch size itself, so
# _sum / _count is the mean batch size.
BATCH_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 8.5, 12.5, 16.5, 24.5, 32.5, 48.5, 64.5, 128.5)
IMAGE_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LOAD_BUCKETS_MS = (50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000)
STAGES = ("queue", "preprocess", "inference", "postprocess")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # without PREFIX
    kind: str  # counter | gauge | histogram
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The name Prometheus sees (Ray adds `ray_`; counters get `_total`)."""
        return f"ray_{PREFIX}{self.name}" + ("_total" if self.kind == "counter" else "")


SPECS = {s.name: s for s in (
    MetricSpec("requests", "counter", "Predict requests answered, by model, version, alias and HTTP status",
               ("model", "version", "alias", "code")),
    MetricSpec("request_images", "histogram", "Images per predict request", ("model",), IMAGE_COUNT_BUCKETS),
    MetricSpec("request_latency_ms", "histogram", "Predict latency in the ingress, end to end",
               ("model", "version", "code"), LATENCY_BUCKETS_MS),
    MetricSpec("stage_latency_ms", "histogram", "Time per stage of a 200: queue (waiting for the model), "
               "preprocess (body, decode, letterbox), inference (the model run), postprocess (NMS, labels)",
               ("model", "version", "stage"), LATENCY_BUCKETS_MS),
    MetricSpec("batch_size", "histogram", "Images per model run", ("model", "version"), BATCH_BUCKETS),
    MetricSpec("concurrent_runs", "gauge", "Model runs in progress in this replica", ("model", "version")),
    MetricSpec("ingress_requests_in_progress", "gauge",
               "Requests being answered on this ingress replica's own HTTP port (sampled)", ()),
    MetricSpec("deadline_dropped", "counter", "Images dropped unrun because their deadline had passed",
               ("model", "version")),
    MetricSpec("shed", "counter", "Requests refused by admission (503 overloaded)", ("model", "version")),
    MetricSpec("abandoned", "counter", "Requests dropped unsent because their client had gone", ("model",)),
    MetricSpec("model_serving", "gauge", "1 for the version an alias serves in this replica (set at each poll), "
               "0 once replaced",
               ("model", "version", "alias")),
    MetricSpec("model_load_ms", "histogram", "Time to load and warm a model version", ("model", "version"),
               LOAD_BUCKETS_MS),
    MetricSpec("model_load_failures", "counter", "Versions that failed to download, validate, load or warm",
               ("model", "version")),
    MetricSpec("registry_poll_ms", "histogram", "Time of one registry poll", (), LATENCY_BUCKETS_MS),
    MetricSpec("registry_poll_errors", "counter", "Registry polls that failed", ()),
    MetricSpec("registry_seconds_since_success", "gauge", "Seconds since the last successful registry poll", ()),
)}


def stage_times_ms(timings: dict) -> dict[str, float]:
    """Per-stage ms of a 200 from its `timings_ms`; `queue` is what the stages do not account for."""
    stages = {"preprocess": timings.get("preprocess_ms", 0.0), "inference": timings.get("inference_ms", 0.0),
              "postprocess": timings.get("postprocess_ms", 0.0)}
    stages["queue"] = max(0.0, timings.get("total_ms", 0.0) - sum(stages.values()))
    return stages


def request_log_line(rid: str, seen: dict | None, status: int, total_ms: float) -> str:
    """The structured log line of one predict request (config `request_log`): one JSON object."""
    seen = seen or {}
    line = {"request_id": rid, "model": seen.get("model", UNKNOWN_MODEL), "version": seen.get("version"),
            "alias": seen.get("alias"), "status": status, "total_ms": round(total_ms, 2)}
    if seen.get("timings"):
        line["stages_ms"] = {k: round(v, 2) for k, v in stage_times_ms(seen["timings"]).items()}
    return json.dumps(line, separators=(",", ":"))


class Metrics:
    """Records into ray.serve.metrics objects, created on first use (so importing this needs no Ray).

    A metric that cannot be recorded (outside a Ray worker, a bad tag) is logged once and skipped:
    metrics must never fail a request.
    """

    def __init__(self) -> None:
        self.enabled = True  # the app's `metrics` setting
        self._objects: dict[str, object] = {}
        self._broken: set[str] = set()

    def _metric(self, name: str):
        found = self._objects.get(name)
        if found is None:
            from ray.serve import metrics as serve_metrics

            spec = SPECS[name]
            kind = {"counter": serve_metrics.Counter, "gauge": serve_metrics.Gauge,
                    "histogram": serve_metrics.Histogram}[spec.kind]
            kwargs = {"boundaries": list(spec.boundaries)} if spec.kind == "histogram" else {}
            found = self._objects[name] = kind(PREFIX + name, description=spec.description, tag_keys=spec.tags,
                                               **kwargs)
        return found

    def _record(self, name: str, method: str, value: float, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        try:
            getattr(self._metric(name), method)(value, tags={k: str(v) for k, v in tags.items()})
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if name not in self._broken:
                self._broken.add(name)
                log.warning("metric %s not recorded: %s", name, exc)

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        self._record(name, "inc", value, tags)

    def set(self, name: str, value: float, **tags: str) -> None:
        self._record(name, "set", value, tags)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._record(name, "observe", value, tags)

    def predict_answered(self, model: str, version: str, alias: str, code: int, total_ms: float,
                         images: int, timings: dict | None) -> None:
        """One predict request: its count, latency and, for a 200, its per-stage times."""
        self.inc("requests", model=model, version=version, alias=alias, code=str(code))
        self.observe("request_latency_ms", total_ms, model=model, version=version, code=str(code))
        if images:
            self.observe("request_images", images, model=model)
        if timings is not None:
            for stage, ms in stage_times_ms(timings).items():
                self.observe("stage_latency_ms", ms, model=model, version=version, stage=stage)


# One recorder per process: every stage and model in a replica records into the same metric objects.
METRICS = Metrics()
