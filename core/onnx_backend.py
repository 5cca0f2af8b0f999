"""ONNX Runtime backend: one session per model, batch-capable, warmed, with known providers.

Exports that fix the batch dimension at 1 (typical `yolo export` output) are rewritten into
a batch-dynamic copy at load time and checked against the original; if the copy does not
reproduce the original's outputs, items run one by one inside each batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from core.model_spec import ModelSpec, check_output_shape
from core.postprocessing import looks_like_probabilities
from core.preprocessing import InputNormaliser

log = logging.getLogger("visionray.onnx")

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Outputs of the rewritten copy and the original must agree this closely.
VERIFY_ATOL = 1e-4


# The default for lone_run_min_ms. More threads save a lone run a share of its time and cost CPU
# (fork/join, idle waits). 2-core AMD EPYC, 1 -> 2 threads: YOLOv8n int8 89 -> 64 ms p50 (25 ms
# saved); the demo detector 9.8 -> 6.4 ms for 9.8 -> 11.7 ms of CPU per run (3.4 ms saved at +20%
# CPU, measured in process). Below ~20 ms the few ms saved are not worth the
# cores they take from other work.
LONE_RUN_MIN_MS = 20.0


@dataclass
class BackendSettings:
    providers: list = field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    intra_op_threads: int = 2
    # Spinning threads burn a core each while idle; on a shared CPU that costs more
    # than the microseconds of wake-up latency it saves.
    allow_spinning: bool = False
    trt_engine_cache_dir: str | None = None
    # Threads of a run that has the model to itself (0: same as intra_op_threads). A lone request
    # should not pay for the throughput setting: see OnnxModel.run.
    lone_run_threads: int = 0
    # ... for models whose single-threaded run takes at least this long.
    lone_run_min_ms: float = LONE_RUN_MIN_MS


def cores_available() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(settings: BackendSettings, threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or settings.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if settings.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def resolve_providers(requested: list, cache_dir: str | None = None) -> list:
    """Keep the requested providers this onnxruntime build has, in priority order.

    Entries are names or (name, options) pairs. The TensorRT engine cache defaults to a
    directory beside the model cache so engines survive restarts.
    """
    available = set(ort.get_available_providers())
    out = []
    for entry in requested:
        name, opts = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider" and cache_dir:
            opts.setdefault("trt_engine_cache_enable", True)
            opts.setdefault("trt_engine_cache_path", cache_dir)
            opts.setdefault("trt_timing_cache_enable", True)
            opts.setdefault("trt_timing_cache_path", cache_dir)
        out.append((name, opts) if opts else name)
    if not out:
        out.append("CPUExecutionProvider")
    return out


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` whose batch dimension is symbolic.

    Ultralytics heads reshape activations with constant shapes whose leading entry is the
    export batch (1); ONNX Reshape reads 0 as "copy this dim", which makes them
    batch-agnostic. Only reshapes of tensors computed from the image input are touched:
    a reshaped bias or weight keeps its shape.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]

    init_names = {i.name for i in m.graph.initializer}
    from_input = {i.name for i in m.graph.input if i.name not in init_names}
    for node in m.graph.node:  # nodes are topologically sorted
        if any(i in from_input for i in node.input):
            from_input.update(node.output)
    shape_inputs = {
        n.input[1] for n in m.graph.node
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[0] in from_input
    }

    def batch_agnostic(t: onnx.TensorProto) -> onnx.TensorProto | None:
        shape = onnx.numpy_helper.to_array(t)
        if shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
            shape = shape.copy()
            shape[0] = 0
            return onnx.numpy_helper.from_array(shape, t.name)
        return None

    for init in m.graph.initializer:
        if init.name in shape_inputs and (new := batch_agnostic(init)) is not None:
            init.CopyFrom(new)
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output[0] in shape_inputs:
            for attr in node.attribute:
                if attr.name == "value" and (new := batch_agnostic(attr.t)) is not None:
                    attr.t.CopyFrom(new)
    return m


def sample_images(spec: ModelSpec, n: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic, structured (not pure noise) uint8 BGR samples at the input size."""
    rng = np.random.default_rng(seed)
    h, w = spec.preprocessing.height, spec.preprocessing.width
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
        out.append(np.ascontiguousarray(img))
    return out


def _median_run_s(run, repeats: int = 5) -> float:
    run()  # the first run allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2]


class OnnxModel:
    """A loaded, verified, warmed model that runs uint8 image batches."""

    def __init__(self, path: str | Path, spec: ModelSpec, settings: BackendSettings | None = None):
        self.path = str(path)
        self.spec = spec
        self.settings = settings or BackendSettings()
        self.normalise = InputNormaliser(spec.preprocessing, spec.input_dtype)
        self._opts = session_options(self.settings)
        self._providers = resolve_providers(self.settings.providers, self.settings.trt_engine_cache_dir)
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(self.path, self._opts, providers=self._providers)
        self.providers = self.session.get_providers()
        self.batch_mode, self._batch_session = self._prepare_batching()
        # A single-threaded CPU run's time at load (ms; None on other providers).
        self.run_ms = self._measure_run_ms()
        self.lone_run_threads, self._lone_session = self._prepare_lone_runs()
        self.outputs_probabilities = self._detect_output_kind()
        self.batch_invariant = self._check_batch_invariance()
        self.load_ms = (time.perf_counter() - t0) * 1000
        log.info(
            "loaded %s: providers=%s batch_mode=%s batch_invariant=%s (%.0f ms)",
            Path(self.path).name, self.providers, self.batch_mode, self.batch_invariant, self.load_ms,
        )

    # -- batching -----------------------------------------------------------------------
    def _raw(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        return session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def _prepare_batching(self) -> tuple[str, ort.InferenceSession | None]:
        if self.spec.fixed_batch in (None, 0):
            return "native", self.session
        samples = self.normalise(sample_images(self.spec, 1)).copy()
        reference = self._raw(self.session, samples)
        try:
            rewritten = make_batch_dynamic(onnx.load(self.path))
            with tempfile.TemporaryDirectory() as tmp:
                p = os.path.join(tmp, "batch_dynamic.onnx")
                onnx.save(rewritten, p)
                session = ort.InferenceSession(p, self._opts, providers=self._providers)
            pair = np.concatenate([samples, samples])
            out = self._raw(session, pair)
            if out.shape[0] == 2 and all(np.allclose(o, reference[0], atol=VERIFY_ATOL) for o in out):
                log.info("%s: fixed batch %s; using a verified batch-dynamic copy", self.path, self.spec.fixed_batch)
                return "rewritten", session
            log.warning("%s: batch-dynamic copy disagrees with the original; running items one by one", self.path)
        except Exception as exc:  # noqa: BLE001 - any failure means "fall back", and we say why
            log.warning("%s: could not make a batch-dynamic copy (%s); running items one by one", self.path, exc)
        return "per_item", None

    def _measure_run_ms(self) -> float | None:
        if self.providers[0] != "CPUExecutionProvider":
            return None
        x = self.normalise(sample_images(self.spec, 1, seed=4)).copy()
        return _median_run_s(lambda: self._raw(self.session, x)) * 1000

    @property
    def short_runs(self) -> bool:
        """A run short enough to take on the caller's thread when it is alone (below
        lone_run_min_ms: the runs that get no lone-run session either)."""
        return self.run_ms is not None and self.run_ms < self.settings.lone_run_min_ms

    def _prepare_lone_runs(self) -> tuple[int, ort.InferenceSession | None]:
        """A second session of the same model with more threads, for a run with the cores to itself.

        Throughput on CPU is best with single-threaded runs side by side, but a lone request then
        uses one core of several. More threads cost a fork/join per operator, which only a run of
        at least `lone_run_min_ms` (LONE_RUN_MIN_MS) repays. Decided from the run's length, not from timing both
        sessions: a replica loads while its neighbours start, and such timings said "2 threads are
        no faster" for YOLOv8n int8 (quiet machine: 89 -> 64 ms). CPU sessions only.
        """
        threads = self.settings.lone_run_threads
        narrow = (self.settings.intra_op_threads, None)
        if threads <= self.settings.intra_op_threads or self.run_ms is None:
            return narrow
        narrow_ms = self.run_ms
        if narrow_ms < self.settings.lone_run_min_ms:
            log.info("%s: runs take %.1f ms; a lone run stays on %d thread(s)", Path(self.path).name, narrow_ms,
                     self.settings.intra_op_threads)
            return narrow
        session = ort.InferenceSession(self.path, session_options(self.settings, threads),
                                       providers=self._providers)
        log.info("%s: runs take %.1f ms; a lone run uses %d threads", Path(self.path).name, narrow_ms, threads)
        return threads, session

    def _check_batch_invariance(self) -> bool:
        """Does an item's output stay the same whatever its batch mates are?"""
        if self.batch_mode == "per_item":
            return True  # items never share a run
        a, b = sample_images(self.spec, 2, seed=1)
        single_a = self._run(self.normalise([a]).copy())[0]
        pair = self._run(self.normalise([a, b]).copy())[0]
        return bool(np.allclose(pair, single_a, atol=VERIFY_ATOL, rtol=1e-3))

    def _detect_output_kind(self) -> bool:
        out = self._run(self.normalise(sample_images(self.spec, 1, seed=2)))
        check_output_shape(self.spec, out.shape)
        return self.spec.task == "classify" and looks_like_probabilities(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.batch_mode == "per_item" and len(x) > 1:
            return np.concatenate([self._raw(self.session, x[i : i + 1]) for i in range(len(x))])
        return self._raw(self._batch_session or self.session, x)

    # -- public -------------------------------------------------------------------------
    def run(self, images: list[np.ndarray], alone: bool = False) -> np.ndarray:
        """uint8 BGR images at the input size -> raw model output `[B, ...]`.

        `alone`: no other run of this model is in progress, so one image may use the lone-run
        session's threads. (Its outputs equal the narrow session's within float rounding.)
        """
        x = self.normalise(images)
        if alone and self._lone_session is not None and len(images) == 1:
            return self._raw(self._lone_session, x)
        return self._run(x)

    def warm_up(self, max_batch_size: int) -> None:
        """Run every batch size once so no request pays for first-run allocation."""
        images = sample_images(self.spec, max_batch_size, seed=3)
        for n in range(1, max_batch_size + 1):
            self.run(images[:n])
        self.run(images[:1], alone=True)
