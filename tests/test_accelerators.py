"""The GPU path, as far as a CPU can check it: TensorRT's options built for a model and a host, the
backend wiring them into its sessions, IOBinding (on the CPU), and `make gpu-check`'s dry run.

On a GPU host `make gpu-check` runs the rest (CUDA and TensorRT answers, throughput).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from core import accelerators
from core.model_spec import spec_from_onnx
from core.onnx_backend import BackendSettings, OnnxModel, sample_images
from demo_models.evaluate import DETECTOR_PATH
from deployments.config import BackendConfig

REPO = Path(__file__).resolve().parents[1]
HOST = {"model_sha256": "ab" * 32, "gpu_name": "NVIDIA H200", "trt_version": "10.16.1.11"}


def trt(options=None, **kwargs) -> dict:
    args = {"input_name": "images", "item_shape": (3, 640, 640), "dynamic_batch": True, "max_batch": 8,
            "cache_root": "/cache/trt", **HOST, **kwargs}
    return accelerators.tensorrt_options(options or {}, **args)


def test_profile_covers_batches_one_to_max_and_tunes_for_the_max():
    opts = trt()
    assert opts["trt_profile_min_shapes"] == "images:1x3x640x640"
    assert opts["trt_profile_opt_shapes"] == "images:8x3x640x640"
    assert opts["trt_profile_max_shapes"] == "images:8x3x640x640"
    assert trt(opt_batch=4)["trt_profile_opt_shapes"] == "images:4x3x640x640"
    assert trt(opt_batch=64)["trt_profile_opt_shapes"] == "images:8x3x640x640"  # never past the max
    assert accelerators.profile_max_batch(opts) == 8 and accelerators.profile_max_batch({}) is None


def test_a_fixed_batch_input_gets_no_profile():
    assert not any(k.startswith("trt_profile") for k in trt(dynamic_batch=False))


def test_fp16_switch_and_explicit_options_win():
    assert trt()["trt_fp16_enable"] is True and trt(fp16=False)["trt_fp16_enable"] is False
    given = {"trt_fp16_enable": False, "trt_engine_cache_path": "/mine", "trt_profile_max_shapes": "images:4x3x640x640"}
    opts = trt(given)
    assert opts["trt_fp16_enable"] is False and opts["trt_engine_cache_path"] == "/mine"
    assert accelerators.profile_max_batch(opts) == 4
    assert given == {"trt_fp16_enable": False, "trt_engine_cache_path": "/mine",
                     "trt_profile_max_shapes": "images:4x3x640x640"}  # the caller's dict is left alone


def test_engine_cache_is_a_folder_per_model_gpu_and_tensorrt_version():
    opts = trt()
    assert opts["trt_engine_cache_enable"] is True and opts["trt_timing_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == "/cache/trt/abababababababab-nvidia-h200-trt10.16.1.11"
    assert opts["trt_timing_cache_path"] == "/cache/trt/timing-nvidia-h200-trt10.16.1.11"
    paths = {trt()["trt_engine_cache_path"], trt(model_sha256="cd" * 32)["trt_engine_cache_path"],
             trt(gpu_name="NVIDIA T4")["trt_engine_cache_path"], trt(trt_version="10.3.0")["trt_engine_cache_path"]}
    assert len(paths) == 4
    assert not any("cache" in k for k in trt(cache_root=None))  # no folder: engines only in memory


def test_host_probes_answer_without_a_gpu(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"visionray")
    assert accelerators.file_sha256(path) == hashlib.sha256(b"visionray").hexdigest()
    assert isinstance(accelerators.gpu_name(), str) and isinstance(accelerators.tensorrt_version(), str)
    assert accelerators.cuda_device_id(["CPUExecutionProvider", ("CUDAExecutionProvider", {"device_id": 1})]) == 1


def test_the_backend_completes_tensorrt_options_per_session(tmp_path):
    """Without TensorRT: the options each session would get (fixed-batch original, batch-dynamic copy)."""
    model = OnnxModel(DETECTOR_PATH, spec_from_onnx(DETECTOR_PATH),
                      BackendSettings(trt_engine_cache_dir=str(tmp_path), trt_max_batch=4))
    model._providers = [("TensorrtExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    model._trt_host = dict(HOST)
    dynamic, fixed = model._session_providers(True), model._session_providers(False)
    name, opts = dynamic[0]
    assert name == "TensorrtExecutionProvider" and dynamic[1] == "CPUExecutionProvider"
    assert opts["trt_profile_max_shapes"] == "images:4x3x320x320" and opts["device_id"] == 0
    assert Path(opts["trt_engine_cache_path"]).is_dir() and Path(opts["trt_timing_cache_path"]).is_dir()
    assert "trt_profile_max_shapes" not in fixed[0][1]
    model.providers = ["TensorrtExecutionProvider"]  # as if the session had got TensorRT
    assert model._profile_max_batch() == 4  # the inference stage caps its batches there


def test_backend_config_carries_the_gpu_settings():
    settings = BackendConfig(trt_fp16=False, trt_max_batch=16, trt_opt_batch=8, io_binding=True).settings()
    assert (settings.trt_fp16, settings.trt_max_batch, settings.trt_opt_batch, settings.io_binding) == (
        False, 16, 8, True)


def test_io_binding_on_cpu_gives_the_same_answers():
    spec = spec_from_onnx(DETECTOR_PATH)
    plain = OnnxModel(DETECTOR_PATH, spec)
    bound = OnnxModel(DETECTOR_PATH, spec, BackendSettings(io_binding=True))
    assert bound._io_device == "cpu" and plain._io_device is None
    images = sample_images(spec, 3, seed=7)
    np.testing.assert_array_equal(bound.run(images), plain.run(images))
    np.testing.assert_array_equal(bound.run(images[:1]), plain.run(images[:1]))


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """Every step is printed; the CPU reference runs for real; the GPU steps say they were skipped."""
    env = {**os.environ, "DRY_RUN": "1", "GPU_CHECK_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "load_tests.gpu_check"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "skipped: no GPU" in out.stdout
    assert (tmp_path / "reference.json").is_file()
    for step in ("GPU", "CPU reference", "GPU venv", "CUDA", "TensorRT", "throughput"):
        assert step in out.stdout, step
