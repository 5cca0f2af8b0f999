"""`make gpu-check`: the GPU path on a real NVIDIA GPU, in one run of a few minutes.

    [1/6] GPU on this host
    [2/6] CPU reference        the model's answer on the test image with CPU onnxruntime (this venv)
    [3/6] GPU venv             onnxruntime-gpu[cuda,cudnn] + TensorRT 10 libraries in a venv of their
                               own (.data/gpu-venv): never beside CPU onnxruntime (one package dir)
    [4/6] CUDA                 the app served on CUDA (Ray with one GPU, the replica asks num_gpus: 1):
                               the provider in use and the answer vs the CPU reference
    [5/6] TensorRT             the same on TensorRT: FP16, batch profile 1..8, engine cache per
                               model/GPU/TensorRT version, engine built at load
    [6/6] throughput           OnnxModel on the device, batch 1 and 8: images/s, and the
                               SimulatedDevice curve that would match it

Answers are compared with the tolerance that holds across CPUs for these int8 models
(../shared/models/README.md): same classes and count, IoU >= 0.85, score within 0.06.

Environment: DRY_RUN=1 (CPU host: every step printed, the CPU reference and the CPU side of each
check run for real, the GPU parts "skipped: no GPU"; exits 0); GPU_CHECK_DIR (results, engines;
default .data/gpu-check); GPU_VENV (default .data/gpu-venv); SKIP_INSTALL=1 (use GPU_VENV as it is:
a Jetson with NVIDIA's wheel, an offline host); WHEELHOUSE=dir (install from there, offline);
TENSORRT=0 (leave TensorRT out on purpose). Needs only PyPI, except TensorRT's libraries: the PyPI
package `tensorrt-cu13-libs` fetches its wheel from pypi.nvidia.com (or have TensorRT 10 installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from core import accelerators

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "models"
STEPS = 6
SERVED_PROVIDERS = {
    "cuda": [["CUDAExecutionProvider", {"device_id": 0}], "CPUExecutionProvider"],
    "tensorrt": [["TensorrtExecutionProvider", {"device_id": 0}], ["CUDAExecutionProvider", {"device_id": 0}],
                 "CPUExecutionProvider"],
}
EXPECTED_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# TensorRT 10: the TensorRT EP of the onnxruntime-gpu 1.31 wheel links libnvinfer.so.10 (CUDA 13).
TENSORRT_LIBS = "tensorrt-cu13-libs>=10.13,<11"
MAX_BATCH = 8


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say(f"\n[{n}/{STEPS}] {title}")


def skipped(reason: str = "no GPU") -> None:
    say(f"    skipped: {reason}")


def model_and_image() -> tuple[Path, Path]:
    """YOLOv8n (static QDQ int8: TensorRT runs its Q/DQ) on bus.jpg where ../shared is, else the demo detector."""
    if (SHARED / "yolov8n_quantized_int8.onnx").is_file():
        return SHARED / "yolov8n_quantized_int8.onnx", SHARED / "images" / "bus.jpg"
    return PROJECT / "demo_models" / "detector.onnx", PROJECT / "demo_models" / "samples" / "shapes_640x480.jpg"


# -- comparing answers ------------------------------------------------------------------------
def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare(detections: list[dict], reference: list[dict]) -> list[str]:
    """What differs beyond the cross-CPU tolerance ([] when the answers agree)."""
    if len(detections) != len(reference):
        return [f"{len(detections)} detections, the CPU reference has {len(reference)}"]
    problems, unmatched = [], list(detections)
    for ref in reference:
        match = next((d for d in unmatched if d["label"] == ref["label"] and iou(d["box"], ref["box"]) >= 0.85
                      and abs(d["score"] - ref["score"]) <= 0.06), None)
        if match is None:
            problems.append(f"no match for {ref['label']} {ref['score']:.3f} {ref['box']}")
        else:
            unmatched.remove(match)
    return problems


def summary(detections: list[dict]) -> str:
    return ", ".join(f"{d['label']} {d['score']:.3f}" for d in detections) or "nothing"


# -- the parts that run in a venv's own process -------------------------------------------------
def cpu_reference(model: Path, image: Path) -> dict:
    from core.local_pipeline import LocalPipeline

    pipeline = LocalPipeline(model)
    return {"model": str(model), "image": str(image), "detections": pipeline(image.read_bytes())["detections"]}


def gpu_app(provider: str, model: Path, cache_dir: Path) -> dict:
    """The shipped app (stages in process) serving `model` on `provider`; its replica asks Ray for the GPU."""
    from serve.app_deploy import app_config

    backend = {"providers": SERVED_PROVIDERS[provider], "intra_op_threads": 1, "trt_engine_cache_dir": str(cache_dir),
               "trt_max_batch": MAX_BATCH}
    app = app_config("gpu", "/gpu", [{"name": "m", "path": str(model)}], backend=backend)
    (ingress,) = app["deployments"]
    ingress["ray_actor_options"] = {**ingress["ray_actor_options"], "num_gpus": 1}
    ingress["user_config"] = {"max_batch_size": MAX_BATCH, "max_concurrent_batches": 2, "batch_wait_timeout_s": 0.0}
    return app


def validate_app(app: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    from deployments.config import PipelineConfig

    ServeDeploySchema.model_validate({"applications": [app]})
    PipelineConfig.model_validate(app["args"])


def http_json(url: str, data: bytes | None = None, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=data, headers={"content-type": "image/jpeg"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def served_check(provider: str, model: Path, image: Path, out_dir: Path) -> int:
    """Serve on `provider` with Ray given one GPU; the provider in use and the answer vs reference.json."""
    import ray
    from ray import serve

    from deployments.ray_compat import ray_init
    from serve.app_deploy import deploy, free_port, wait_ready

    reference = json.loads((out_dir / "reference.json").read_text())["detections"]
    app = gpu_app(provider, model, out_dir / "trt")
    validate_app(app)
    ray_init(tempfile.mkdtemp(prefix="vrg", dir="/tmp"), address="local", num_cpus=4, num_gpus=1,
             include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        t0 = time.perf_counter()
        deploy([app], timeout_s=360)  # TensorRT builds its engine while the replica loads
        base = f"http://127.0.0.1:{port}/gpu"
        wait_ready(f"{base}/readyz", timeout_s=360)
        detail = http_json(f"{base}/v1/models/m")
        say(f"    loaded in {time.perf_counter() - t0:.0f} s; providers in use: {detail.get('providers')}; "
            f"max batch {detail.get('max_batch_size')}")
        answer = http_json(f"{base}/v1/models/m/predict", image.read_bytes())
        say(f"    served:    {summary(answer['detections'])}")
        say(f"    reference: {summary(reference)}")
        problems = compare(answer["detections"], reference)
        if (detail.get("providers") or [None])[0] != EXPECTED_PROVIDER[provider]:
            problems.insert(0, f"the replica runs on {detail.get('providers')}, not {EXPECTED_PROVIDER[provider]} "
                               "(see the replica's log for why onnxruntime fell back)")
    finally:
        serve.shutdown()
        ray.shutdown()
    for p in problems:
        say(f"    FAILED: {p}")
    if not problems:
        say("    ok")
    return 1 if problems else 0


def throughput(model: Path, providers: list, cache_dir: Path, seconds: float) -> dict:
    """OnnxModel.run (the input built on the CPU, the run, the output back) at batch 1 and MAX_BATCH."""
    from core.model_spec import spec_from_onnx
    from core.onnx_backend import BackendSettings, OnnxModel, sample_images

    spec = spec_from_onnx(model)
    settings = BackendSettings(providers=providers, intra_op_threads=1, trt_engine_cache_dir=str(cache_dir),
                               trt_max_batch=MAX_BATCH)
    m = OnnxModel(model, spec, settings)
    m.warm_up(MAX_BATCH)
    images = sample_images(spec, MAX_BATCH, seed=5)
    rows = []
    for batch in (1, MAX_BATCH):
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or runs < 3:
            m.run(images[:batch])
            runs += 1
        run_ms = (time.perf_counter() - t0) / runs * 1000
        rows.append({"batch": batch, "run_ms": round(run_ms, 3), "images_per_s": round(batch * 1000 / run_ms, 1)})
    per_image = max(0.0, (rows[1]["run_ms"] - rows[0]["run_ms"]) / (MAX_BATCH - 1))
    curve = {"fixed_ms": round(max(0.0, rows[0]["run_ms"] - per_image), 3), "per_image_ms": round(per_image, 3)}
    for r in rows:
        say(f"    batch {r['batch']:>2}: {r['run_ms']:8.2f} ms a run, {r['images_per_s']:8.1f} images/s")
    say(f"    providers {m.providers}; a SimulatedDevice curve matching these runs: {json.dumps(curve)}")
    return {"model": str(model), "providers": m.providers, "rows": rows, "curve": curve}


# -- the steps --------------------------------------------------------------------------------
def run(command: list[str], timeout: float, env: dict | None = None) -> int:
    say(f"    $ {shlex.join(command)}")
    try:
        return subprocess.run(command, cwd=PROJECT, timeout=timeout, env=env).returncode
    except subprocess.TimeoutExpired:
        say(f"    FAILED: no answer within {timeout:.0f} s")
        return 124


def install_commands(venv: Path, trt: bool) -> list[list[str]]:
    py = str(venv / "bin" / "python")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    constraints = PROJECT / "constraints" / f"py{version}.txt"
    pin = ["-c", str(constraints)] if constraints.is_file() else []
    source = ["--no-index", "--find-links", os.environ["WHEELHOUSE"]] if os.environ.get("WHEELHOUSE") else []
    commands = [[sys.executable, "-m", "venv", str(venv)],
                [py, "-m", "pip", "install", "--quiet", *source, "-e", ".[gpu]", "onnxruntime-gpu[cuda,cudnn]", *pin]]
    if trt:
        commands.append([py, "-m", "pip", "install", "--quiet", *source, TENSORRT_LIBS])
    return commands


NO_CPU_ORT = ("import importlib.metadata as m, sys\n"
              "names = {d.metadata['Name'].lower() for d in m.distributions()}\n"
              "sys.exit('CPU onnxruntime is installed beside onnxruntime-gpu' if 'onnxruntime' in names else 0)")


def main() -> int:
    dry = os.environ.get("DRY_RUN") == "1"
    trt = os.environ.get("TENSORRT", "1") != "0"
    out_dir = Path(os.environ.get("GPU_CHECK_DIR", PROJECT / ".data" / "gpu-check"))
    venv = Path(os.environ.get("GPU_VENV", PROJECT / ".data" / "gpu-venv"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model, image = model_and_image()
    started = time.perf_counter()
    failed = []
    say(f"gpu-check: {model.name} on {image.name}; results in {out_dir}" + ("  (DRY_RUN: no GPU steps)" if dry else ""))

    step(1, "GPU on this host")
    gpu = accelerators.gpu_name()
    say(f"    {gpu if gpu != 'unknown' else 'no NVIDIA GPU found (nvidia-smi, /proc/driver/nvidia)'}")
    if gpu == "unknown" and not dry:
        say("    FAILED: no GPU; on a CPU host, `DRY_RUN=1 make gpu-check` checks everything but the GPU steps")
        return 2
    on_gpu = not dry
    reason = "no GPU" if gpu == "unknown" else "DRY_RUN=1"

    step(2, f"CPU reference: {model.name} on {image.name} (CPU onnxruntime, this venv)")
    reference = cpu_reference(model, image)
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=1))
    say(f"    {summary(reference['detections'])}  -> {out_dir / 'reference.json'}")

    step(3, f"GPU venv {venv}: onnxruntime-gpu[cuda,cudnn]" + (" and TensorRT 10" if trt else "")
         + ", never beside CPU onnxruntime")
    py = str(venv / "bin" / "python")
    if os.environ.get("SKIP_INSTALL") == "1":
        say("    SKIP_INSTALL=1: using the venv as it is")
    elif not on_gpu:
        for command in install_commands(venv, trt):
            say(f"    $ {shlex.join(command)}")
        skipped(reason)
    else:
        for command in install_commands(venv, trt):
            if run(command, timeout=360) != 0:
                failed.append(f"install: {shlex.join(command)}")
                if TENSORRT_LIBS in command:
                    say("    (TensorRT's libraries come from pypi.nvidia.com; TENSORRT=0 leaves TensorRT out)")
                    trt = False
                else:
                    return report(failed, started)
    if on_gpu and run([py, "-c", NO_CPU_ORT], timeout=60) != 0:
        failed.append("CPU onnxruntime beside onnxruntime-gpu in the GPU venv")

    checks = ((4, "cuda", "CUDA"), (5, "tensorrt", "TensorRT (FP16, batch profile 1..8, engine cache)"))
    for n, provider, title in checks:
        step(n, f"{title}: the served answer vs the CPU reference")
        app = gpu_app(provider, model, out_dir / "trt")
        validate_app(app)
        say(f"    app validated (ServeDeploySchema, PipelineConfig): providers {SERVED_PROVIDERS[provider]}, "
            f"replica num_gpus {app['deployments'][0]['ray_actor_options']['num_gpus']}")
        if provider == "tensorrt":
            say(f"    TensorRT options for this model on this host: {json.dumps(trt_options(model, out_dir, gpu))}")
        if provider == "tensorrt" and not trt:
            skipped("TensorRT left out (TENSORRT=0 or its libraries did not install)")
            if os.environ.get("TENSORRT", "1") != "0" and on_gpu:
                failed.append("TensorRT: not checked")
        elif not on_gpu:
            # The comparison itself, on a CPU answer through IOBinding (not a GPU figure).
            problems = compare(io_binding_answer(model, image), reference["detections"])
            say(f"    dry run: a CPU answer through IOBinding compared: {problems or 'agrees'}")
            skipped(reason)
        elif run([py, "-m", "load_tests.gpu_check", "--served", provider, str(model), str(image), str(out_dir)],
                 timeout=420) != 0:
            failed.append(f"{title}: served answer")

    step(6, f"throughput on the device: OnnxModel batch 1 and {MAX_BATCH}")
    if not on_gpu:
        say("    dry run: the same measurement on the CPU, to prove the code (not a GPU figure):")
        throughput(model, ["CPUExecutionProvider"], out_dir / "trt", seconds=0.3)
        skipped(reason)
    else:
        providers = SERVED_PROVIDERS["tensorrt" if trt else "cuda"]
        if run([py, "-m", "load_tests.gpu_check", "--throughput", json.dumps(providers), str(model), str(out_dir)],
               timeout=300) != 0:
            failed.append("throughput")
    return report(failed, started)


def trt_options(model: Path, out_dir: Path, gpu: str) -> dict:
    """What the backend gives the TensorRT EP for `model`'s batch-dynamic session (core/accelerators.py)."""
    from core.model_spec import spec_from_onnx

    spec = spec_from_onnx(model)
    pre = spec.preprocessing
    return accelerators.tensorrt_options(
        {"device_id": 0}, input_name=spec.input_name, item_shape=(3, pre.height, pre.width), dynamic_batch=True,
        max_batch=MAX_BATCH, cache_root=str(out_dir / "trt"), model_sha256=accelerators.file_sha256(model),
        gpu_name=gpu, trt_version=accelerators.tensorrt_version())


def io_binding_answer(model: Path, image: Path) -> list[dict]:
    from core.local_pipeline import LocalPipeline
    from core.onnx_backend import BackendSettings

    return LocalPipeline(model, BackendSettings(io_binding=True))(image.read_bytes())["detections"]


def report(failed: list[str], started: float) -> int:
    passed = "dry run passed (the GPU steps skipped)" if os.environ.get("DRY_RUN") == "1" else "passed"
    say(f"\ngpu-check: {'FAILED: ' + '; '.join(failed) if failed else passed} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--served", nargs=4, metavar=("PROVIDER", "MODEL", "IMAGE", "OUT_DIR"))
    parser.add_argument("--throughput", nargs=3, metavar=("PROVIDERS_JSON", "MODEL", "OUT_DIR"))
    args = parser.parse_args()
    if args.served:
        provider, model, image, out = args.served
        sys.exit(served_check(provider, Path(model), Path(image), Path(out)))
    if args.throughput:
        providers, model, out = args.throughput
        result = throughput(Path(model), json.loads(providers), Path(out) / "trt", seconds=3.0)
        (Path(out) / "throughput.json").write_text(json.dumps(result, indent=1))
        sys.exit(0)
    sys.exit(main())
