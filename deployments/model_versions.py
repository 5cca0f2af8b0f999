"""The model versions one replica holds: loaded on first use, a few kept per model.

Inference and postprocess replicas never decide which version serves; the ingress does,
and names the version in every call. A replica that has not seen that version yet loads
it on the spot (from the node cache), so a switch never fails a request, and the previous
version stays loaded so that a rollback is instant.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from model_registry.source import ModelSource, ResolvedModel, split_key

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class LoadedVersions(Generic[T]):
    def __init__(self, source: ModelSource, build: Callable[[ResolvedModel], T], keep_per_model: int = 2):
        self._source = source
        self._build = build
        self._keep = keep_per_model
        self._loaded: OrderedDict[str, T] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Future] = {}
        self.failures: dict[str, str] = {}  # key -> error of its last failed load

    def load_now(self, key: str) -> T:
        """Blocking load (replica start-up, before the replica reports healthy)."""
        if key not in self._loaded:
            self._store(key, self._fetch_and_build(key))
        return self._loaded[key]

    async def get(self, key: str) -> T:
        item = self._loaded.get(key)
        if item is not None:
            self._loaded.move_to_end(key)
            return item
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(asyncio.to_thread(self._fetch_and_build, key))
            pending.add_done_callback(lambda fut, k=key: self._done(k, fut))
        return await asyncio.shield(pending)

    def _fetch_and_build(self, key: str) -> T:
        name, version = split_key(key)
        try:
            item = self._build(self._source.fetch(name, version))
        except Exception as exc:
            self.failures[key] = f"{type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s", key, self.failures[key])
            raise
        self.failures.pop(key, None)
        return item

    def _done(self, key: str, fut: asyncio.Future) -> None:
        self._loading.pop(key, None)
        if not fut.cancelled() and fut.exception() is None:
            self._store(key, fut.result())

    def _store(self, key: str, item: T) -> None:
        self._loaded[key] = item
        name = split_key(key)[0]
        same_model = [k for k in self._loaded if split_key(k)[0] == name]
        for old in same_model[: max(0, len(same_model) - self._keep)]:
            log.info("unloading %s (keeping %d versions of %s)", old, self._keep, name)
            del self._loaded[old]

    def items(self):
        return list(self._loaded.items())

    def __contains__(self, key: str) -> bool:
        return key in self._loaded
