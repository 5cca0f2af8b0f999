"""The platform's own Prometheus metrics: what each is called, its labels and buckets (plain data,
unit-tested without Ray), and `Metrics`, a thin recorder over `ray.serve.metrics`.

Ray exports them where it exports everything else (each node's metrics export port, listed in
Ray's Prometheus service-discovery file), prefixed `ray_`, counters suffixed `_total`; Serve adds
`application`, `deployment` and `replica` labels. docs/metrics.md lists them with their PromQL.

Points are aggregated here and handed to Ray once a second (`Aggregates`, `Metrics.flush`):
every call into Ray's metrics releases and retakes the GIL, and at ~10 points per request those
switches cost the served fast model 8.6 % of its img/s (docs/metrics.md, Cost). Histograms are
kept here, cumulative, and exported as the series a Prometheus histogram has (`_bucket` with
`le`, `_count`, `_sum`), so a flush costs the same whatever the request rate.

Labels are bounded: model names come from the served catalog (a request for an unknown model is
counted as UNKNOWN_MODEL), versions from the registry, `code` is the HTTP status. No request ids.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("ray.serve")

PREFIX = "visionray_"
UNKNOWN_MODEL = "_unknown"
# 1 ms to 30 s, about three buckets per decade: enough to read p50/p99 per stage on CPU and GPU.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000)
# Boundaries halfway between integers: each small bucket holds exactly one batch size.
BATCH_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 8.5, 12.5, 16.5, 24.5, 32.5, 48.5, 64.5, 128.5)
IMAGE_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LOAD_BUCKETS_MS = (50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000)
STAGES = ("queue", "preprocess", "inference", "postprocess")
# How often aggregated points go to Ray. Ray reports to its agent every few seconds and Prometheus
# scrapes every 5-15 s, so a second's delay hides nothing.
FLUSH_INTERVAL_S = 1.0


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


Key = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted tags)


@dataclass
class LocalHistogram:
    """One histogram series, cumulative since this process started (as Prometheus expects)."""

    boundaries: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, the last one above every boundary
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.boundaries) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.boundaries, value)] += 1  # le: value <= boundary
        self.count += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """(le, observations <= le) for every boundary and +Inf."""
        out, running = [], 0
        for boundary, n in zip([*(f"{b:g}" for b in self.boundaries), "+Inf"], self.counts):
            running += n
            out.append((boundary, running))
        return out


class Aggregates:
    """The points recorded since the last flush: counter increments summed, gauges' last values;
    and every histogram's cumulative state, which is sent at every flush (Ray stops exporting a
    gauge that is not set again). Pure: unit-tested without Ray."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # points come from the event loop and from run threads
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, float] = {}
        self.histograms: dict[Key, LocalHistogram] = {}

    def add(self, name: str, kind: str, value: float, tags: dict) -> None:
        key = (name, tuple(sorted((k, str(v)) for k, v in tags.items())))
        with self._lock:
            if kind == "counter":
                self.counters[key] = self.counters.get(key, 0.0) + value
            elif kind == "gauge":
                self.gauges[key] = value
            else:
                hist = self.histograms.get(key)
                if hist is None:
                    hist = self.histograms[key] = LocalHistogram(SPECS[name].boundaries)
                hist.observe(value)

    def take(self) -> tuple[dict[Key, float], dict[Key, float], dict[Key, tuple[list, int, float]]]:
        """(counter increments and gauge values since the last take, every histogram's snapshot)."""
        with self._lock:
            counters, self.counters = self.counters, {}
            gauges, self.gauges = self.gauges, {}
            histograms = {key: (h.buckets(), h.count, h.total) for key, h in self.histograms.items()}
        return counters, gauges, histograms


class Metrics:
    """Aggregates points (`Aggregates`) and hands them to ray.serve.metrics objects once a second,
    from a thread of its own started by the first point (so importing this needs no Ray). Points
    of a process's last second before it stops are lost.

    A metric that cannot be recorded (outside a Ray worker, a bad tag) is logged once and skipped:
    metrics must never fail a request.
    """

    def __init__(self) -> None:
        self.enabled = True  # the app's `metrics` setting
        self._objects: dict[str, object] = {}
        self._broken: set[str] = set()
        self._points = Aggregates()
        self._flusher: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Ray pickles this module global along with the deployment classes: a fresh one arrives.
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.enabled = state["enabled"]

    def _record(self, name: str, value: float, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        self._points.add(name, SPECS[name].kind, value, tags)
        if self._flusher is None:
            with self._start_lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_forever, name="visionray-metrics",
                                                     daemon=True)
                    self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Hand what was recorded since the last flush to Ray (outside Ray: drop it; creating a
        Ray metric there would start a Ray of its own)."""
        import ray

        counters, gauges, histograms = self._points.take()
        if not ray.is_initialized():
            return
        for (name, tags), value in counters.items():
            self._send(name, name, "inc", value, dict(tags))
        for (name, tags), value in gauges.items():
            self._send(name, name, "set", value, dict(tags))
        for (name, tags), (buckets, count, total) in histograms.items():
            for le, cumulative in buckets:
                self._send(name, f"{name}_bucket", "set", cumulative, {**dict(tags), "le": le})
            self._send(name, f"{name}_count", "set", count, dict(tags))
            self._send(name, f"{name}_sum", "set", total, dict(tags))

    def _metric(self, name: str, series: str):
        """The Ray object of one exported series: the metric itself, or a histogram's _bucket,
        _count or _sum gauge."""
        found = self._objects.get(series)
        if found is None:
            from ray.serve import metrics as serve_metrics

            spec = SPECS[name]
            if spec.kind == "counter":
                found = serve_metrics.Counter(PREFIX + series, description=spec.description, tag_keys=spec.tags)
            else:
                tags = (*spec.tags, "le") if series.endswith("_bucket") else spec.tags
                found = serve_metrics.Gauge(PREFIX + series, description=spec.description, tag_keys=tags)
            self._objects[series] = found
        return found

    def _send(self, name: str, series: str, method: str, value: float, tags: dict[str, str]) -> None:
        try:
            getattr(self._metric(name, series), method)(value, tags=tags)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if series not in self._broken:
                self._broken.add(series)
                log.warning("metric %s not recorded: %s", series, exc)

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        self._record(name, value, tags)

    def set(self, name: str, value: float, **tags: str) -> None:
        self._record(name, value, tags)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._record(name, value, tags)

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
