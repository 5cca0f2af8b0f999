"""Serving from the MLflow registry: which versions the aliases point at, and their files.

Each poll is one registry call (`search_registered_models` carries every model's aliases).
The last answer is written to the node cache, so a replica that restarts while the
registry is down still knows what to serve, and `fetch` of a cached version never
contacts the registry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from deployments.model_spec import spec_from_onnx
from model_registry.registry import cached_model_path, download_version, resolve_tracking_uri, spec_from_tags
from model_registry.source import ResolvedModel

log = logging.getLogger("visionray.registry")

CATALOG_FILE = "catalog.json"
TAGS_FILE = "tags.json"


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class MlflowSource:
    def __init__(self, tracking_uri: str | None, cache_dir: str | Path, aliases: list[str]):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.cache_dir = Path(cache_dir)
        self.aliases = list(aliases)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def poll(self) -> dict[str, dict[str, str]]:
        """{alias: {name: version}} for the served aliases; the cached answer if unreachable."""
        try:
            models = self._client.search_registered_models(max_results=1000)
        except Exception as exc:  # noqa: BLE001 - registry down: serve what we know
            cached = self.cache_dir / CATALOG_FILE
            if cached.is_file():
                log.warning("registry unreachable (%s); serving from the cached catalog", exc)
                return json.loads(cached.read_text())
            raise
        catalog: dict[str, dict[str, str]] = {a: {} for a in self.aliases}
        for m in models:
            for alias, version in (m.aliases or {}).items():
                if alias in catalog:
                    catalog[alias][m.name] = str(version)
        _write_json_atomic(self.cache_dir / CATALOG_FILE, catalog)
        return catalog

    def fetch(self, name: str, version: str) -> ResolvedModel:
        path = download_version(name, version, self.cache_dir, self.tracking_uri)
        tags_path = path.parent / TAGS_FILE
        if tags_path.is_file():
            tags = json.loads(tags_path.read_text())
        else:
            tags = dict(self._client.get_model_version(name, version).tags or {})
            _write_json_atomic(tags_path, tags)
        # Versions registered outside visionray carry no spec: read it from the file.
        spec = spec_from_tags(tags) or spec_from_onnx(path)
        return ResolvedModel(name=name, version=str(version), path=str(path), spec=spec)

    def is_cached(self, name: str, version: str) -> bool:
        return cached_model_path(self.cache_dir, name, version).is_file()
