"""NVIDIA providers: TensorRT options built from the model and the host, and the GPU libraries.

`tensorrt_options` is a pure function (tested without TensorRT): it completes the options of a
`TensorrtExecutionProvider` entry with

- an optimization profile for the dynamic batch, 1..max_batch (`trt_profile_*_shapes`), so one
  engine serves every batch size the inference stage forms and is built when the session is
  created, not on a first request of a new shape;
- FP16 (`trt_fp16_enable`; TensorRT 10's weak typing, which the TensorRT EP of onnxruntime 1.31 uses);
- an engine cache in a folder per (model sha256, GPU name, TensorRT version). ONNX Runtime names
  its engines from the model's *file name* and graph, not its weights, so a new version of a model
  saved under the same name (every MLflow download is `model.onnx`) would otherwise load the old
  version's engine;
- a timing cache per (GPU name, TensorRT version), shared by the models (it holds kernel timings).

Options given in the entry win over these defaults. docs/accelerators.md has the whole picture.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger("visionray.onnx")

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PROVIDERS = (TRT, CUDA)


def slug(text: str) -> str:
    """A file-name-safe form: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def engine_cache_key(model_sha256: str, gpu_name: str, trt_version: str) -> str:
    """The engine cache folder's name: a change of any of the three gets a new engine."""
    return f"{model_sha256[:16]}-{slug(gpu_name)}-trt{slug(trt_version)}"


def profile_shapes(input_name: str, item_shape: tuple[int, ...], batch: int) -> str:
    """ORT's shape syntax: "images:8x3x640x640"."""
    return f"{input_name}:" + "x".join(str(d) for d in (batch, *item_shape))


def tensorrt_options(options: dict, *, input_name: str, item_shape: tuple[int, ...], dynamic_batch: bool,
                     max_batch: int, opt_batch: int | None = None, fp16: bool = True,
                     cache_root: str | None = None, model_sha256: str = "", gpu_name: str = "unknown",
                     trt_version: str = "unknown") -> dict:
    """A TensorRT EP entry's options completed for this model and host (a new dict).

    `item_shape`: one input item without the batch axis, e.g. (3, 640, 640). The profile is set only
    for a batch-dynamic input (a fixed-batch export has its one shape). `cache_root`: None keeps the
    engines in memory only (built at every start).
    """
    out = dict(options)
    if dynamic_batch:
        opt = min(opt_batch or max_batch, max_batch)
        out.setdefault("trt_profile_min_shapes", profile_shapes(input_name, item_shape, 1))
        out.setdefault("trt_profile_opt_shapes", profile_shapes(input_name, item_shape, opt))
        out.setdefault("trt_profile_max_shapes", profile_shapes(input_name, item_shape, max_batch))
    out.setdefault("trt_fp16_enable", fp16)
    if cache_root:
        root = Path(cache_root)
        out.setdefault("trt_engine_cache_enable", True)
        out.setdefault("trt_engine_cache_path",
                       str(root / engine_cache_key(model_sha256, gpu_name, trt_version)))
        out.setdefault("trt_timing_cache_enable", True)
        out.setdefault("trt_timing_cache_path", str(root / f"timing-{slug(gpu_name)}-trt{slug(trt_version)}"))
    return out


def profile_max_batch(options: dict) -> int | None:
    """The largest batch a TensorRT entry's profile allows (None: no profile)."""
    shapes = options.get("trt_profile_max_shapes")
    if not shapes:
        return None
    return min(int(s.split(":", 1)[1].split("x")[0]) for s in str(shapes).split(","))


def cuda_device_id(providers: list) -> int:
    """The device_id of the first CUDA/TensorRT entry (0 when not given)."""
    for entry in providers:
        name, opts = (entry, {}) if isinstance(entry, str) else (entry[0], entry[1])
        if name in GPU_PROVIDERS:
            return int(opts.get("device_id", 0))
    return 0


# -- the host (read once per model load; each answers "unknown" rather than fail) ---------------
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gpu_name(device_id: int = 0) -> str:
    """The GPU's model name: the NVIDIA driver's /proc entry, a Jetson's device tree, or nvidia-smi."""
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information"))[device_id:device_id + 1]:
        for line in Path(info).read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    model = Path("/proc/device-tree/model")
    if model.is_file() and "jetson" in (text := model.read_text(errors="replace").strip("\x00 \n")).lower():
        return text
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def tensorrt_version() -> str:
    """The TensorRT the TensorRT EP will load: a pip distribution's version, else libnvinfer's own."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs",
                 "tensorrt-libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:  # JetPack installs TensorRT from apt: ask the library (e.g. 100300 for 10.3.0)
        v = ctypes.CDLL("libnvinfer.so.10").getInferLibVersion()
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    except (OSError, AttributeError):
        return "unknown"


_preloaded = False


def preload_gpu_libraries(providers: list) -> None:
    """Load CUDA/cuDNN (and TensorRT) from pip packages before the first GPU session, once.

    onnxruntime-gpu[cuda,cudnn] brings CUDA and cuDNN as pip packages, which the loader does not
    find by itself: `onnxruntime.preload_dlls()` loads them. The `tensorrt-cu13-libs` package keeps
    libnvinfer in its own folder: loaded here by path, the TensorRT EP's later dlopen by soname
    finds it. Neither exists on CPU builds or on JetPack (system libraries, found anyway).
    """
    global _preloaded
    names = {e if isinstance(e, str) else e[0] for e in providers}
    if _preloaded or not names & set(GPU_PROVIDERS):
        return
    _preloaded = True
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - the session then reports which provider it got
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)
    spec = importlib.util.find_spec("tensorrt_libs") if TRT in names else None
    for pattern in ("libnvinfer.so.*", "libnvinfer_plugin.so.*", "libnvonnxparser.so.*"):
        for lib in sorted(glob.glob(str(Path(spec.origin).parent / pattern))) if spec and spec.origin else []:
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                log.warning("could not load %s: %s", lib, exc)
