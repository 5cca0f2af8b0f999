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

from core.model_spec import spec_from_onnx
from model_registry.registry import (
    cached_model_path,
    download_version,
    resolve_tracking_uri,
    spec_from_tags,
    sqlite_path,
)
from model_registry.source import RegistryUnavailable, ResolvedModel

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
        self._client_instance: MlflowClient | None = None

    @property
    def _client(self) -> MlflowClient:
        # Made only after _check_store: MLflow creates and initialises a missing sqlite store.
        if self._client_instance is None:
            self._client_instance = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client_instance

    def _check_store(self) -> None:
        """A serving replica never creates a registry: a missing sqlite file is an outage."""
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.is_file():
            raise RegistryUnavailable(f"registry store {path} does not exist (moved or deleted?)")

    def _cached_catalog(self) -> dict[str, dict[str, str]] | None:
        cached = self.cache_dir / CATALOG_FILE
        return json.loads(cached.read_text()) if cached.is_file() else None

    def poll(self) -> dict[str, dict[str, str]]:
        """{alias: {name: version}} for the served aliases, or RegistryUnavailable with the cached answer."""
        try:
            self._check_store()
            models = self._client.search_registered_models(max_results=1000)
        except Exception as exc:  # noqa: BLE001 - any failure is an outage, never an empty catalog
            # Reconnect from scratch next time, by path: the store may come back as another file.
            self._client_instance = None
            reason = str(exc) if isinstance(exc, RegistryUnavailable) else f"{type(exc).__name__}: {exc}"
            raise RegistryUnavailable(reason[:500], self._cached_catalog()) from exc
        if not models:
            # A registry that lost its models answers like one whose aliases were all removed;
            # only the first is plausible while we serve models from it.
            raise RegistryUnavailable("the registry answered with no registered models", self._cached_catalog())
        catalog: dict[str, dict[str, str]] = {a: {} for a in self.aliases}
        for m in models:
            for alias, version in (m.aliases or {}).items():
                if alias in catalog:
                    catalog[alias][m.name] = str(version)
        _write_json_atomic(self.cache_dir / CATALOG_FILE, catalog)
        return catalog

    def fetch(self, name: str, version: str) -> ResolvedModel:
        if not self.is_cached(name, version):
            self._check_store()
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
