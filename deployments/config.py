"""The one typed place for configuration: the application args in serve/config.yaml.

Ray Serve passes each application's `args:` mapping to `serve.app:build_app`; it is
validated here once, and every deployment receives the validated object.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.model_spec import PRESETS
from core.paths import default_data_dir
from review.config import ReviewConfig


class ModelEntry(BaseModel):
    """A model to serve, read from a local ONNX file (the MLflow source replaces `path`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    path: str
    task: str | None = None
    preset: str | None = None
    labels: list[str] | None = None
    labels_file: str | None = None
    # Defaults for requests that don't pass conf/iou/max_det/top_k.
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    top_k: int | None = None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {PRESETS}")
        return v


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Priority order; entries are provider names or [name, {options}]. `SimulatedDevice` (with
    # {preset} or {fixed_ms, per_image_ms, streams}) is a SIMULATED accelerator for benchmarks and
    # tests only: real answers computed on CPU, simulated run times (docs/accelerators.md).
    providers: list = Field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = Field(default=2, ge=1)
    # Threads of a run that has the model to itself ("auto": the cores this process may use; 0:
    # off). Lets a lone request use every core while concurrent runs stay single-threaded.
    lone_run_threads: int | Literal["auto"] = "auto"
    # ... for models whose single-threaded run takes at least this many ms (measured at load):
    # shorter runs save too little latency for the CPU the extra threads cost. None: the
    # backend's default (core/onnx_backend.py LONE_RUN_MIN_MS, with its measurements).
    lone_run_min_ms: float | None = Field(default=None, ge=0)
    allow_spinning: bool = False
    # TensorRT (docs/accelerators.md): engine and timing caches under this folder (a folder per
    # model sha256, GPU and TensorRT version); FP16; the batch profile 1..trt_max_batch, tuned for
    # trt_opt_batch (null: the max). Options in the provider's own entry win.
    trt_engine_cache_dir: str | None = None
    trt_fp16: bool = True
    trt_max_batch: int = Field(default=8, ge=1, le=256)
    trt_opt_batch: int | None = Field(default=None, ge=1, le=256)
    # Bind inputs/outputs with ORT's IOBinding (CUDA/TensorRT: one explicit copy to the device).
    io_binding: bool = False

    @field_validator("providers")
    @classmethod
    def _known_simulated_options(cls, v):
        from core.simulated_device import parse_options, simulated_options

        for entry in v:
            if not isinstance(entry, str) and not (isinstance(entry, (list, tuple)) and len(entry) == 2
                                                   and isinstance(entry[0], str) and isinstance(entry[1], dict)):
                raise ValueError(f"a provider is a name or [name, {{options}}], got {entry!r}")
        options = simulated_options(v)
        if options is not None:
            parse_options(options)  # raises ValueError naming what is wrong
        return v

    def settings(self):
        """The backend's BackendSettings, with "auto" resolved on the machine running it."""
        from core.onnx_backend import BackendSettings, cores_available

        fields = self.model_dump()
        if fields["lone_run_threads"] == "auto":
            fields["lone_run_threads"] = cores_available()
        if fields["lone_run_min_ms"] is None:
            del fields["lone_run_min_ms"]
        return BackendSettings(**fields)


class RegistryConfig(BaseModel):
    """Serving from the MLflow registry: the registry, not this file, says what serves."""

    model_config = ConfigDict(extra="forbid")

    # None: $MLFLOW_TRACKING_URI, else the embedded sqlite registry in the project's .data/.
    tracking_uri: str | None = None
    # Per-node cache of downloaded versions; None: <project>/.data/model-cache.
    cache_dir: str | None = None
    serving_alias: str = "production"
    # Served beside the serving alias, addressed with ?alias=NAME (champion/challenger).
    extra_aliases: list[str] = Field(default_factory=list)
    poll_interval_s: float = Field(default=5.0, gt=0)
    # Versions each replica keeps loaded per model: the serving one and the previous (rollback).
    keep_versions: int = Field(default=2, ge=1)

    @property
    def aliases(self) -> list[str]:
        return [self.serving_alias, *[a for a in self.extra_aliases if a != self.serving_alias]]


class PipelineConfig(BaseModel):
    """Args of one pipeline application.

    With `models` (local ONNX files) the app serves exactly those; without, it serves
    whatever the registry's aliases point at.
    """

    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(default_factory=list)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # A predict body that has not fully arrived by then gets 408 (a slow or stalled client).
    body_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # The platform's Prometheus metrics (docs/metrics.md); false: none recorded (Ray's own remain).
    metrics: bool = True
    # One JSON line per predict request in the ingress replica's log (request id, model, version,
    # alias, status, per-stage ms). Off by default: it costs CPU per request (docs/metrics.md).
    request_log: bool = False
    # Own HTTP port: a connection whose request headers have not arrived by then gets 408 and is
    # closed (a client that connects and sends nothing holds nothing for long).
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # Own HTTP port: open connections per client address; one more gets 503
    # `too_many_connections`. 0: no limit (behind a load balancer every client has its address).
    max_connections_per_client: int = Field(default=256, ge=0)
    # Most requests the ingress sends downstream in one call (deployments/call_grouping.py).
    max_group: int = Field(default=8, ge=1, le=256)
    # Grouped calls per model version in flight at once from one ingress replica.
    max_in_flight: int = Field(default=2, ge=1, le=64)
    # Latency budget of a predict request (seconds; per request: X-Request-Timeout-Ms header or
    # timeout_ms query). A request predicted to miss it is refused at once with 503 `overloaded`.
    latency_budget_s: float = Field(default=2.0, gt=0, le=600)
    # Where inference and postprocess run (deployments/stage_links.py): their own Serve
    # deployments ("deployments": placed and autoscaled apart, e.g. inference on GPU nodes), or
    # inside each ingress replica ("in_process": no hop; one deployment, Ingress).
    stages: Literal["deployments", "in_process"] = "deployments"
    # The ingress replicas' own HTTP port (serve/http_server.py), shared by every ingress replica
    # of a node; null: only through Serve's proxy. One port per application.
    http_port: int | None = Field(default=None, ge=1, le=65535)
    http_host: str = "127.0.0.1"
    # The ingress replicas' own gRPC port (serve/protocols/oip_grpc.py: OIP v2's
    # GRPCInferenceService and camera streams), on http_host; null: no gRPC.
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    # Camera streams: frames kept waiting per stream while one is in the pipeline; a newer frame
    # pushes out the oldest (latest frame wins, serve/protocols/streams.py).
    stream_max_pending: int = Field(default=1, ge=1, le=64)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v):
        names = [m.name for m in v]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique, got {names}")
        return v


class BatchingConfig(BaseModel):
    """Inference `user_config`: retunable live, without restarting replicas."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=10)
    # Model runs at once per model (each on its own thread). On CPU, 2 single-threaded runs
    # use 2 cores with less overhead than 1 run with 2 intra-op threads (see README figures).
    max_concurrent_batches: int = Field(default=1, ge=1, le=16)


def make_source(cfg: PipelineConfig):
    """The ModelSource this app reads: local files if listed, else the MLflow registry."""
    from model_registry.source import LocalFileSource

    if cfg.models:
        return LocalFileSource(cfg.models, cfg.registry.serving_alias)
    from model_registry.mlflow_source import MlflowSource

    cache = cfg.registry.cache_dir or str(default_data_dir() / "model-cache")
    return MlflowSource(cfg.registry.tracking_uri, cache, cfg.registry.aliases)
