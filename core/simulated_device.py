"""SIMULATED DEVICE: an accelerator that is not there, for benchmarks and tests only.

Selected like an ONNX Runtime provider (`backend.providers: [SimulatedDevice]`, or
`[[SimulatedDevice, {preset: jetson-orin-nano-yolov8n}]]`, or an explicit curve
`{fixed_ms: 0.8, per_image_ms: 0.25, streams: 1}`). It lets a CPU-only machine measure what
the serving pipeline does around a fast device (hops, batching, queueing, the CPU of the other
stages) without pretending the CPU is that device:

- one device per process (per inference replica); a run of b images holds one of its `streams`
  for `t(b) = fixed_ms + b * per_image_ms`, after the runs queued before it. The wait is a
  `time.sleep` on the run thread: it uses no CPU and releases the GIL;
- the answers are the real model's: each distinct input (a hash of its bytes) is computed once
  with the real ONNX session on the CPU and cached, so answers still equal the CPU reference.
  That first run costs real CPU; a benchmark sending the same few images runs from the cache;
- device statistics (busy time, runs, batch sizes) let a benchmark compute the device's busy
  fraction and mean batch size.

It is not a model of any particular GPU's behaviour beyond that curve: no transfers, no memory
limit, no clock or thermal effects. Presets and their sources: docs/accelerators.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger("visionray.onnx")

NAME = "SimulatedDevice"
WARNING = "SIMULATED DEVICE: for benchmarks and tests only; answers computed on CPU, timing simulated"


@dataclass(frozen=True)
class Curve:
    """Device time of one run of `b` images: `fixed_ms + b * per_image_ms`, on one of `streams`."""

    fixed_ms: float
    per_image_ms: float
    streams: int = 1
    preset: str | None = None

    def run_ms(self, batch: int) -> float:
        return self.fixed_ms + batch * self.per_image_ms


# YOLOv8n at 640x640, TensorRT FP16, batch 1 from published figures; the per-image slopes are
# assumptions (docs/accelerators.md says which figures and why).
PRESETS = {
    # Ultralytics' YOLOv8 table: 0.99 ms on an A100 with TensorRT (1.47 ms on a T4, TensorRT 10).
    "datacenter-gpu-yolov8n": Curve(fixed_ms=0.7, per_image_ms=0.3, preset="datacenter-gpu-yolov8n"),
    # Jetson Orin Nano 8GB (MAXN_SUPER, JetPack 6.2, TensorRT 10.3), trtexec FP16: 4.43 ms GPU
    # compute, 5.2 ms host latency (hokwangchoi/jetson-orin-nano-benchmarks).
    "jetson-orin-nano-yolov8n": Curve(fixed_ms=0.8, per_image_ms=4.4, preset="jetson-orin-nano-yolov8n"),
}
DEFAULT_PRESET = "datacenter-gpu-yolov8n"
DEFAULT_CACHE_SIZE = 32  # distinct inputs kept per model (a YOLOv8n output is 2.8 MB)
_OPTIONS = {"preset", "fixed_ms", "per_image_ms", "streams", "cache_size"}


def is_simulated(entry) -> bool:
    """Is this `backend.providers` entry (a name or [name, options]) the simulated device?"""
    name = entry if isinstance(entry, str) else entry[0]
    return name == NAME


def simulated_options(providers: list) -> dict | None:
    """The simulated device's options if `providers` lists it ({} for the bare name), else None."""
    for entry in providers:
        if is_simulated(entry):
            return {} if isinstance(entry, str) else dict(entry[1] if len(entry) > 1 else {})
    return None


def parse_options(options: dict) -> tuple[Curve, int]:
    """{preset?, fixed_ms?, per_image_ms?, streams?, cache_size?} -> (curve, cache size).

    A preset gives the curve; fixed_ms / per_image_ms / streams override it. Without a preset,
    both times must be given; with neither, the default preset.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"{NAME}: unknown options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    preset = options.get("preset")
    if preset is None and not {"fixed_ms", "per_image_ms"} & set(options):
        preset = DEFAULT_PRESET
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"{NAME}: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        base = asdict(PRESETS[preset])
    elif not {"fixed_ms", "per_image_ms"} <= set(options):
        raise ValueError(f"{NAME}: give a preset, or both fixed_ms and per_image_ms")
    else:
        base = {"preset": None}
    fields = {**base, **{k: options[k] for k in ("fixed_ms", "per_image_ms", "streams") if k in options}}
    curve = Curve(fixed_ms=float(fields["fixed_ms"]), per_image_ms=float(fields["per_image_ms"]),
                  streams=fields.get("streams", 1), preset=fields["preset"])
    cache_size = options.get("cache_size", DEFAULT_CACHE_SIZE)
    if curve.fixed_ms < 0 or curve.per_image_ms < 0:
        raise ValueError(f"{NAME}: times must be >= 0, got {curve}")
    if not isinstance(curve.streams, int) or curve.streams < 1:
        raise ValueError(f"{NAME}: streams must be an integer >= 1, got {curve.streams!r}")
    if not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"{NAME}: cache_size must be an integer >= 1, got {cache_size!r}")
    return curve, cache_size


class SimulatedDevice:
    """One simulated accelerator: `streams` runs at once, later runs queue (first come, first served).

    A run reserves the stream that frees first, from max(now, when it frees) for its run time, and
    its thread sleeps until then. Reservations are made under a lock and in virtual time, so
    concurrent runs from several threads queue exactly, and a thread waking late does not delay
    the runs behind it.
    """

    def __init__(self, streams: int = 1, clock: Callable[[], float] = time.monotonic):
        self.streams = streams
        self._clock = clock
        self._free_at = [0.0] * streams
        self._lock = threading.Lock()
        self.started = clock()
        self.runs = 0
        self.images = 0
        self.busy_s = 0.0  # device time of every run so far (summed over streams)
        self.queued_s = 0.0  # time runs waited for a free stream
        self.batch_sizes: Counter[int] = Counter()

    def occupy(self, batch: int, run_ms: float) -> float:
        """Hold a stream for `run_ms` once one is free; returns the seconds from call to end of run."""
        now = self._clock()
        run_s = run_ms / 1000
        with self._lock:
            stream = min(range(self.streams), key=self._free_at.__getitem__)
            start = max(now, self._free_at[stream])
            end = self._free_at[stream] = start + run_s
            self.runs += 1
            self.images += batch
            self.busy_s += run_s
            self.queued_s += start - now
            self.batch_sizes[batch] += 1
        remaining = end - self._clock()
        if remaining > 0:
            time.sleep(remaining)
        return end - now

    def stats(self) -> dict:
        """Counters since start. Busy fraction over an interval: the difference of two snapshots'
        busy_s over the difference of their elapsed_s (divided by streams)."""
        with self._lock:
            elapsed = self._clock() - self.started
            return {
                "streams": self.streams,
                "runs": self.runs,
                "images": self.images,
                "busy_s": round(self.busy_s, 6),
                "queued_s": round(self.queued_s, 6),
                "elapsed_s": round(elapsed, 6),
                "busy_fraction": round(self.busy_s / (elapsed * self.streams), 4) if elapsed > 0 else 0.0,
                "mean_batch": round(self.images / self.runs, 3) if self.runs else 0.0,
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
            }


_process_device: SimulatedDevice | None = None
_process_lock = threading.Lock()


def process_device(streams: int) -> SimulatedDevice:
    """This process's device (an inference replica has one), created on first use."""
    global _process_device
    with _process_lock:
        if _process_device is None:
            _process_device = SimulatedDevice(streams)
        elif _process_device.streams != streams:
            raise ValueError(f"{NAME}: this process's device has {_process_device.streams} stream(s), "
                             f"a model asks for {streams}")
        return _process_device


class OutputCache:
    """Outputs by input hash, least recently used dropped first. Thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE):
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(array: np.ndarray) -> bytes:
        h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        h.update(np.ascontiguousarray(array).data)
        return h.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "max_entries": self.max_entries,
                    "hits": self.hits, "misses": self.misses}


class SimulatedRuns:
    """What a model runs instead of its session on the simulated device.

    `compute_one(x)`: the real model on the CPU for a batch of one (the normalised input);
    called once per distinct image, whose uint8 bytes are the cache key.
    """

    def __init__(self, options: dict, compute_one: Callable[[np.ndarray], np.ndarray], model_name: str = ""):
        self.curve, cache_size = parse_options(options)
        self.device = process_device(self.curve.streams)
        self.cache = OutputCache(cache_size)
        self._compute_one = compute_one
        log.warning("%s for %s: t(b) = %.3f + b x %.3f ms on %d stream(s)%s; answers are the real "
                    "model's, computed once per distinct input on the CPU",
                    WARNING, model_name or "a model", self.curve.fixed_ms, self.curve.per_image_ms,
                    self.curve.streams, f" (preset {self.curve.preset})" if self.curve.preset else "")

    def run(self, images: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        """Images and their normalised batch -> outputs `[B, ...]`, after the simulated run time."""
        outputs = []
        for i, image in enumerate(images):
            key = self.cache.key(image)
            out = self.cache.get(key)
            if out is None:
                out = self._compute_one(x[i:i + 1])[0]
                self.cache.put(key, out)
            outputs.append(out)
        self.device.occupy(len(images), self.curve.run_ms(len(images)))
        return np.stack(outputs)  # a copy: callers never hold the cached arrays

    def status(self) -> dict:
        return {"simulated": True, "warning": WARNING, "name": NAME, "curve": asdict(self.curve),
                "device": self.device.stats(), "cache": self.cache.stats()}
