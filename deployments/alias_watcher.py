"""Which version of each model serves, per alias, in one ingress replica.

The watcher polls the model source. When an alias moves, the new version is fetched and
prepared in the other stages (loaded and warmed) while the old one keeps serving; only
then does the table switch, by replacing one dict. Every request reads the table once,
so preprocess, inference and postprocess all see the version it named.

A version that fails to fetch, validate, load or warm never replaces the serving one; the
error is kept for the API and the watcher retries with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.text import one_line
from deployments.metrics import METRICS
from model_registry.source import ModelSource, RegistryUnavailable, ResolvedModel

log = logging.getLogger("ray.serve")

MAX_BACKOFF_S = 300.0


@dataclass
class AliasState:
    version: str | None = None  # serving now
    previous: str | None = None
    failed_version: str | None = None
    error: str | None = None
    attempts: int = 0
    retry_at: float = 0.0

    @property
    def state(self) -> str:
        if self.version is not None:
            return "ready"
        return "failed" if self.error else "loading"


class AliasWatcher:
    def __init__(
        self,
        source: ModelSource,
        prepare: Callable[[ResolvedModel], Awaitable[object]],
        poll_interval_s: float,
        base_backoff_s: float = 2.0,
    ):
        self.source = source
        self.prepare = prepare
        self.poll_interval_s = poll_interval_s
        self.base_backoff_s = base_backoff_s
        # alias -> name -> serving version. Replaced, never mutated: readers need no lock.
        self.serving: dict[str, dict[str, ResolvedModel]] = {}
        self.states: dict[tuple[str, str], AliasState] = {}
        self.catalog: dict[str, dict[str, str]] | None = None
        self.registry_error: str | None = None
        self._last_good_poll = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("alias watcher poll failed")
            await asyncio.sleep(self.poll_interval_s)

    async def poll_once(self) -> None:
        t0 = time.monotonic()
        try:
            catalog = await asyncio.to_thread(self.source.poll)
            self.registry_error = None
            self._last_good_poll = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - registry down: keep serving what is loaded
            METRICS.inc("registry_poll_errors")
            self.registry_error = one_line(exc)
            # Follow the last catalog known (this replica's, else the node's cached one), so that
            # versions that failed to load are retried during the outage too.
            catalog = self.catalog or (exc.cached if isinstance(exc, RegistryUnavailable) else None)
            if catalog is None:
                log.warning("model source unreachable and no catalog known yet: %s", self.registry_error)
                return
            log.warning("model source unreachable, following the last known catalog: %s", self.registry_error)
        finally:
            METRICS.observe("registry_poll_ms", (time.monotonic() - t0) * 1000)
            METRICS.set("registry_seconds_since_success", time.monotonic() - self._last_good_poll)
        self.catalog = catalog
        for alias, models in catalog.items():
            for name, version in models.items():
                await self._follow(alias, name, version)
        # Ray stops exporting a gauge that is not set again: the serving versions are, each poll.
        for alias, table in self.serving.items():
            for name, resolved in table.items():
                METRICS.set("model_serving", 1, model=name, version=resolved.version, alias=alias)
        for (alias, name), st in self.states.items():
            if name not in catalog.get(alias, {}) and st.version is not None:
                log.info("%s@%s: alias removed; no longer serving version %s", name, alias, st.version)
                st.previous, st.version = st.version, None
                self._publish(alias, name, None)

    async def _follow(self, alias: str, name: str, version: str) -> None:
        st = self.states.setdefault((alias, name), AliasState())
        if st.version == version:
            return
        if st.failed_version == version and time.monotonic() < st.retry_at:
            return
        try:
            resolved = await asyncio.to_thread(self.source.fetch, name, version)
            await self.prepare(resolved)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the serving version
            st.attempts = st.attempts + 1 if st.failed_version == version else 1
            st.failed_version, st.error = version, one_line(exc)
            st.retry_at = time.monotonic() + min(MAX_BACKOFF_S, self.base_backoff_s * 2 ** (st.attempts - 1))
            log.error("%s@%s: version %s cannot serve (attempt %d), keeping %s: %s",
                      name, alias, version, st.attempts, st.version, st.error)
            METRICS.inc("model_load_failures", model=name, version=version)
            return
        log.info("%s@%s: switching %s -> %s", name, alias, st.version, version)
        st.previous, st.version = st.version, version
        st.failed_version, st.error, st.attempts = None, None, 0
        self._publish(alias, name, resolved)

    def _publish(self, alias: str, name: str, resolved: ResolvedModel | None) -> None:
        table = dict(self.serving.get(alias, {}))
        old = table.get(name)
        if resolved is None:
            table.pop(name, None)
        else:
            table[name] = resolved
        self.serving = {**self.serving, alias: table}
        if old is not None and (resolved is None or old.version != resolved.version):
            METRICS.set("model_serving", 0, model=name, version=old.version, alias=alias)
        if resolved is not None:
            METRICS.set("model_serving", 1, model=name, version=resolved.version, alias=alias)

    @property
    def ready(self) -> bool:
        """Every model the source lists serves some version (after the first poll)."""
        if self.catalog is None:
            return False
        return all(
            self.states.get((alias, name), AliasState()).version is not None
            for alias, models in self.catalog.items()
            for name in models
        )
