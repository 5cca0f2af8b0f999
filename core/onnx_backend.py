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

from core import accelerators
from core.model_spec import ModelSpec, check_output_shape
from core.postprocessing import looks_like_probabilities
from core.preprocessing import InputNormaliser
from core.simulated_device import NAME as SIMULATED_DEVICE
from core.simulated_device import SimulatedRuns, simulated_options

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
    # TensorRT (core/accelerators.py): engines and timing cache under this folder, per model,
    # GPU and TensorRT version; None: engines built at every start.
    trt_engine_cache_dir: str | None = None
    # FP16 engines (an explicit trt_fp16_enable in the provider's options wins).
    trt_fp16: bool = True
    # The optimization profile of a batch-dynamic input: batches 1..trt_max_batch, tuned for
    # trt_opt_batch (None: the max). The inference stage never forms a larger batch.
    trt_max_batch: int = 8
    trt_opt_batch: int | None = None
    # Bind inputs and outputs with ORT's IOBinding (CUDA/TensorRT: the input is copied to the
    # device once, by us; CPU: the same run through the binding API).
    io_binding: bool = False
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

    Entries are names or (name, options) pairs. With `cache_dir`, TensorRT caches its engines
    there (OnnxModel instead keys a folder per model, GPU and TensorRT version under its
    trt_engine_cache_dir: core/accelerators.py).
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
    """A loaded, verified, warmed model that runs uint8 image batches.

    With `SimulatedDevice` among the providers (benchmarks and tests only) the sessions run on the
    CPU and `run` answers through core/simulated_device.py: the real outputs, at simulated times.
    """

    def __init__(self, path: str | Path, spec: ModelSpec, settings: BackendSettings | None = None):
        self.path = str(path)
        self.spec = spec
        self.settings = settings or BackendSettings()
        self.normalise = InputNormaliser(spec.preprocessing, spec.input_dtype)
        self._opts = session_options(self.settings)
        simulated = simulated_options(self.settings.providers)
        requested = ["CPUExecutionProvider"] if simulated is not None else self.settings.providers
        accelerators.preload_gpu_libraries(requested)
        self._providers = resolve_providers(requested)
        self._trt_host: dict | None = None
        t0 = time.perf_counter()
        self.session = self._new_session(self.path, dynamic_batch=self.spec.fixed_batch in (None, 0))
        self.providers = self.session.get_providers()
        self._io_device = self._io_binding_device()
        self.simulated = None
        if simulated is not None:
            self.simulated = SimulatedRuns(simulated, self._run, Path(self.path).name)
            self.providers = [SIMULATED_DEVICE]
        self.batch_mode, self._batch_session = self._prepare_batching()
        # A single-threaded CPU run's time at load (ms; None on other providers).
        self.run_ms = self._measure_run_ms()
        self.lone_run_threads, self._lone_session = self._prepare_lone_runs()
        self.outputs_probabilities = self._detect_output_kind()
        self.batch_invariant = self._check_batch_invariance()
        # The largest batch a run may have (None: any): a TensorRT engine's profile ends there.
        self.max_batch_size = self._profile_max_batch()
        if self.providers[0] == accelerators.TRT:
            # Build the engine for every batch size of the profile now, not on a first request.
            t_build = time.perf_counter()
            self.warm_up(self.max_batch_size or 1)
            log.info("%s: TensorRT engine ready for batches 1..%s in %.0f ms", Path(self.path).name,
                     self.max_batch_size or 1, (time.perf_counter() - t_build) * 1000)
        self.load_ms = (time.perf_counter() - t0) * 1000
        log.info(
            "loaded %s: providers=%s batch_mode=%s batch_invariant=%s (%.0f ms)",
            Path(self.path).name, self.providers, self.batch_mode, self.batch_invariant, self.load_ms,
        )

    # -- sessions -----------------------------------------------------------------------
    def _new_session(self, path: str, dynamic_batch: bool, threads: int | None = None) -> ort.InferenceSession:
        opts = session_options(self.settings, threads) if threads else self._opts
        return ort.InferenceSession(path, opts, providers=self._session_providers(dynamic_batch))

    def _session_providers(self, dynamic_batch: bool) -> list:
        """The resolved providers, TensorRT's options completed for this model (core/accelerators.py)."""
        out = []
        for entry in self._providers:
            name, opts = (entry, {}) if isinstance(entry, str) else entry
            if name == accelerators.TRT:
                out.append((name, self._tensorrt_options(opts, dynamic_batch)))
            else:
                out.append(entry)
        return out

    def _tensorrt_options(self, opts: dict, dynamic_batch: bool) -> dict:
        if self._trt_host is None:  # read once: the model's hash, the GPU, TensorRT's version
            self._trt_host = {"model_sha256": accelerators.file_sha256(self.path),
                              "gpu_name": accelerators.gpu_name(accelerators.cuda_device_id(self._providers)),
                              "trt_version": accelerators.tensorrt_version()}
        pre = self.spec.preprocessing
        item = (3, pre.height, pre.width) if pre.layout == "nchw" else (pre.height, pre.width, 3)
        out = accelerators.tensorrt_options(
            opts, input_name=self.spec.input_name, item_shape=item, dynamic_batch=dynamic_batch,
            max_batch=self.settings.trt_max_batch, opt_batch=self.settings.trt_opt_batch,
            fp16=self.settings.trt_fp16, cache_root=self.settings.trt_engine_cache_dir, **self._trt_host)
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if out.get(key):
                Path(out[key]).mkdir(parents=True, exist_ok=True)
        return out

    def _profile_max_batch(self) -> int | None:
        """The largest batch the TensorRT engine's profile takes (None: not on TensorRT, or runs of one)."""
        if self.providers[0] != accelerators.TRT or self.batch_mode == "per_item":
            return None
        for entry in self._session_providers(dynamic_batch=True):  # "native" or "rewritten": batch-dynamic
            if not isinstance(entry, str) and entry[0] == accelerators.TRT:
                return accelerators.profile_max_batch(entry[1])
        return None

    def _io_binding_device(self) -> str | None:
        """Where IOBinding puts the input: "cuda" on the NVIDIA providers, "cpu" on the CPU; None: off."""
        if not self.settings.io_binding:
            return None
        return "cuda" if self.providers[0] in accelerators.GPU_PROVIDERS else "cpu"

    def _raw(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        if self._io_device is not None:
            return self._raw_bound(session, x)
        return session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def _raw_bound(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        """One run through IOBinding: the input bound where the session computes, the output to the CPU."""
        binding = session.io_binding()
        x = np.ascontiguousarray(x)
        if self._io_device == "cpu":
            binding.bind_cpu_input(self.spec.input_name, x)
        else:
            device_id = accelerators.cuda_device_id(self._providers)
            binding.bind_ortvalue_input(self.spec.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", device_id))
        binding.bind_output(self.spec.output_name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    # -- batching -----------------------------------------------------------------------
    def _prepare_batching(self) -> tuple[str, ort.InferenceSession | None]:
        if self.spec.fixed_batch in (None, 0):
            return "native", self.session
        samples = self.normalise(sample_images(self.spec, 1)).copy()
        reference = self._raw(self.session, samples)
        try:
            rewritten = make_batch_dynamic(onnx.load(self.path))
            with tempfile.TemporaryDirectory() as tmp:
                # The file's name stays the same at every load (the TensorRT EP hashes names).
                p = os.path.join(tmp, "batch_dynamic.onnx")
                onnx.save(rewritten, p)
                session = self._new_session(p, dynamic_batch=True)
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
        session = self._new_session(self.path, self.spec.fixed_batch in (None, 0), threads)
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
        if self.simulated is not None:
            # The input is built on the CPU as for a real device; the answer comes from the cache.
            return self.simulated.run(images, x)
        if alone and self._lone_session is not None and len(images) == 1:
            return self._raw(self._lone_session, x)
        return self._run(x)

    def warm_up(self, max_batch_size: int) -> None:
        """Run every batch size once so no request pays for first-run allocation.

        Not on the simulated device: it has nothing to allocate, and its CPU session (batches of
        one) was run at load.
        """
        if self.simulated is not None:
            return
        images = sample_images(self.spec, max_batch_size, seed=3)
        for n in range(1, max_batch_size + 1):
            self.run(images[:n])
        self.run(images[:1], alone=True)
