"""Where a model's file and spec come from: the one interface the pipeline depends on.

`LocalFileSource` reads ONNX paths named in the config. The MLflow registry source
implements the same two methods.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployments.model_spec import ModelSpec, read_labels_file, spec_from_onnx

# Relative model paths in the config resolve against the project root (the folder that
# holds the packages), so the config works from any working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    path: str
    spec: ModelSpec

    @property
    def key(self) -> str:
        """Identifies one version of one model across all three stages."""
        return f"{self.name}:{self.version}"


class ModelSource(Protocol):
    def names(self) -> list[str]: ...

    def resolve(self, name: str) -> ResolvedModel: ...


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalFileSource:
    """Models from local ONNX files; the version is the file's content hash."""

    def __init__(self, entries):
        self._entries = {e.name: e for e in entries}

    def names(self) -> list[str]:
        return list(self._entries)

    def resolve(self, name: str) -> ResolvedModel:
        e = self._entries[name]
        path = (PROJECT_ROOT / Path(e.path).expanduser()).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model {name!r}: no ONNX file at {path}")
        labels = e.labels or (read_labels_file(e.labels_file) if e.labels_file else None)
        defaults = {"conf": e.conf, "iou": e.iou, "max_det": e.max_det, "top_k": e.top_k}
        overrides = {k: v for k, v in defaults.items() if v is not None}
        spec = spec_from_onnx(path, task=e.task, preset_name=e.preset, labels=labels, overrides=overrides)
        return ResolvedModel(name=name, version=file_sha256(path)[:12], path=str(path), spec=spec)
