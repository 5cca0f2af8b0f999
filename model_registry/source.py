"""Where models come from: the one small interface the pipeline depends on.

    poll()  -> {alias: {model name: version}}   what should serve now (or RegistryUnavailable)
    fetch(name, version) -> ResolvedModel        that version's file on local disk + spec

`LocalFileSource` serves ONNX paths named in the config (version = content hash, the one
alias is the serving alias). `MlflowSource` (model_registry/mlflow_source.py) follows
registry aliases.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.model_spec import ModelSpec, read_labels_file, spec_from_onnx

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
        return model_key(self.name, self.version)


def model_key(name: str, version: str) -> str:
    return f"{name}:{version}"


def split_key(key: str) -> tuple[str, str]:
    name, _, version = key.rpartition(":")
    return name, version


class RegistryUnavailable(RuntimeError):
    """The registry cannot say what serves now (down, missing, or an answer that cannot be right).

    `cached` is the last catalog this node saw, for a replica that starts during the outage.
    Never "every alias was removed": only a registry that answers can remove an alias.
    """

    def __init__(self, reason: str, cached: dict[str, dict[str, str]] | None = None):
        super().__init__(reason)
        self.cached = cached


class ModelSource(Protocol):
    def poll(self) -> dict[str, dict[str, str]]: ...

    def fetch(self, name: str, version: str) -> ResolvedModel: ...


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalFileSource:
    """Models from local ONNX files; the version is the file's content hash."""

    def __init__(self, entries, alias: str = "production"):
        self._entries = {e.name: e for e in entries}
        self._alias = alias
        self._hashes: dict[tuple, str] = {}  # (path, mtime, size) -> version: no rehash per poll

    def _path(self, name: str) -> Path:
        return (PROJECT_ROOT / Path(self._entries[name].path).expanduser()).resolve()

    def poll(self) -> dict[str, dict[str, str]]:
        out = {}
        for name in self._entries:
            path = self._path(name)
            # A missing file still "serves" so that fetch reports why it cannot load.
            out[name] = self._version(path) if path.is_file() else "missing"
        return {self._alias: out}

    def _version(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)[:12]
        return self._hashes[key]

    def fetch(self, name: str, version: str) -> ResolvedModel:
        e = self._entries[name]
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(f"model {name!r}: no ONNX file at {path}")
        actual = self._version(path)
        if actual != version:
            raise LookupError(f"model {name!r}: file {path} is version {actual}, not {version}")
        labels = e.labels or (read_labels_file(e.labels_file) if e.labels_file else None)
        defaults = {"conf": e.conf, "iou": e.iou, "max_det": e.max_det, "top_k": e.top_k}
        overrides = {k: v for k, v in defaults.items() if v is not None}
        spec = spec_from_onnx(path, task=e.task, preset_name=e.preset, labels=labels, overrides=overrides)
        return ResolvedModel(name=name, version=version, path=str(path), spec=spec)
