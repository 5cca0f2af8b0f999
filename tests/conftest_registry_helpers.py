"""Helpers for tests/test_registry.py: tiny ONNX models, and a child process that downloads.

The download worker lives in an importable module (not the test file) because the
concurrency test starts it in `spawn` processes, which import it by name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_classifier(path: Path, classes: int = 3, declared_classes: int | None = None, seed: int = 0) -> Path:
    """A valid tiny classifier: images [1,3,32,32] -> GlobalAveragePool -> Flatten -> Gemm -> [1, classes].

    `declared_classes` makes the graph *declare* a different output width than it computes,
    a file that only running it can expose. `seed` changes the weights (and so the sha256).
    """
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(classes, 3)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "fc.bias")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, declared_classes or classes])],
        initializer=[weight, bias],
    )
    _save(graph, path)
    return path


def write_3d_output_model(path: Path) -> Path:
    """images [1,3,32,32] -> [1, 7, 5]: a shape no classifier decoder accepts."""
    weight = numpy_helper.from_array(np.ones((35, 3), np.float32), "fc.weight")
    shape = numpy_helper.from_array(np.array([1, 7, 5], np.int64), "out_shape")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc.weight"], ["fc"], transB=1),
            helper.make_node("Reshape", ["fc", "out_shape"], ["out"]),
        ],
        "wrong_shape",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 7, 5])],
        initializer=[weight, shape],
    )
    _save(graph, path)
    return path


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def download_and_count(name, version, cache_dir, tracking_uri, start_together, marker_path, results) -> None:
    """Child process: start together with the others, download, note each real download in `marker_path`."""
    import mlflow.artifacts

    from model_registry import registry

    real_download = mlflow.artifacts.download_artifacts

    def counted_download(*args, **kwargs):
        with open(marker_path, "a") as marker:
            marker.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # a slow download: without the lock the other process would start its own
        return real_download(*args, **kwargs)

    mlflow.artifacts.download_artifacts = counted_download
    start_together.wait(timeout=120)
    results.put(str(registry.download_version(name, version, cache_dir, tracking_uri=tracking_uri)))
