"""Inference stage: ONNX Runtime sessions behind per-model dynamic batching."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from core.onnx_backend import BackendSettings, OnnxModel
from core.postprocessing import yolo_candidates
from deployments.config import BatchingConfig, PipelineConfig, make_source
from deployments.metrics import METRICS
from deployments.model_versions import LoadedVersions
from deployments.placement import node_id, node_info
from model_registry.source import RegistryUnavailable, ResolvedModel, model_key

log = logging.getLogger("ray.serve")


def _ray_gpu_ids() -> list[str] | None:
    """The GPUs Ray gave this replica (`num_gpus`; logical ones for a simulated device); None outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_accelerator_ids().get("GPU", [])


def _not_run_timings() -> dict:
    """The timings of images that were not run (their deadline had passed)."""
    return {"inference_ms": 0.0, "batch_size": 0, "node_id": node_id()}


class BatchedModel:
    """One model version: its session, its own batch queue, its own run threads."""

    def __init__(self, resolved: ResolvedModel, backend: BackendSettings, batching: BatchingConfig):
        self.resolved = resolved
        self.model = OnnxModel(resolved.path, resolved.spec, backend)
        self._tags = {"model": resolved.name, "version": resolved.version}
        METRICS.observe("model_load_ms", self.model.load_ms, **self._tags)
        self.batch_sizes: Counter[int] = Counter()
        self.deadline_dropped = 0  # images not run: their request's deadline had passed
        self._warmed = 0
        self._running = 0
        self.max_concurrent_batches = 0
        self._executor: ThreadPoolExecutor | None = None
        # Ray Serve forms the next batch as soon as its wait timeout ends, even while the
        # previous batches still hold the model, so under load batches would stay at size 1.
        # Holding arrivals until a run slot is free lets them form one batch together;
        # a model with a free slot takes a request at once, so a lone request never waits.
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self.apply(batching)

    def apply(self, batching: BatchingConfig) -> None:
        if batching.max_concurrent_batches != self.max_concurrent_batches:
            self._start_runners(batching.max_concurrent_batches)
        # A batch-variant model (e.g. dynamically quantized) must never share a run, and a TensorRT
        # engine runs no batch beyond its profile.
        size = batching.max_batch_size if self.model.batch_invariant else 1
        if self.model.max_batch_size is not None and size > self.model.max_batch_size:
            log.warning("%s: max_batch_size %d exceeds the TensorRT profile's %d (backend.trt_max_batch); "
                        "batches stop at %d", self.resolved.name, size, self.model.max_batch_size,
                        self.model.max_batch_size)
            size = self.model.max_batch_size
        if size > self._warmed:
            self.model.warm_up(size)
            self._warmed = size
        self.submit.set_max_batch_size(size)
        self.submit.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.max_batch_size = size
        self.batch_wait_timeout_s = batching.batch_wait_timeout_s

    def _start_runners(self, concurrent: int) -> None:
        """A batch queue and `concurrent` run threads; runs already started finish on the old ones."""
        old = self._executor
        # ORT releases the GIL and its sessions are thread-safe: runs go to their own
        # threads, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix=f"ort-{self.resolved.name}")
        # Items are groups of images (one per ingress call); a batch counts images.
        self.submit = serve.batch(self._run_batch, max_batch_size=1, batch_wait_timeout_s=0.0,
                                  max_concurrent_batches=concurrent,
                                  batch_size_fn=lambda groups: sum(len(images) for images, _ in groups))
        self._run_slots = asyncio.Semaphore(concurrent)
        self.max_concurrent_batches = concurrent
        if old is not None:
            old.shutdown(wait=False)

    async def infer(self, images: list[np.ndarray], confs: list[float],
                    deadlines: list[float] | None = None, lone: bool = False) -> tuple[list, dict, bool]:
        """A group of images (from one ingress call) -> (outputs, timings, outputs_probabilities).

        An image whose deadline (wall clock) has passed before its run starts is not run: its
        output is None, and it is counted in `deadline_dropped`. `lone`: the caller has no other
        request in progress (in_process stages: the ingress replica's only predict), so a short
        run may take the caller's thread.
        """
        deadlines = deadlines or [float("inf")] * len(images)
        if self.max_batch_size == 1:
            return await self._infer_unbatched(images, confs, deadlines, lone)
        await self._slot_free.wait()
        live = [i for i, deadline in enumerate(deadlines) if not self._expired(deadline)]
        outputs: list = [None] * len(images)
        timings = _not_run_timings()
        step = self.max_batch_size
        chunks = [live[i:i + step] for i in range(0, len(live), step)]
        answers = await asyncio.gather(*(self.submit(([images[j] for j in chunk], [confs[j] for j in chunk]))
                                         for chunk in chunks))
        for chunk, (chunk_outputs, _) in zip(chunks, answers):
            for j, out in zip(chunk, chunk_outputs):
                outputs[j] = out
        if answers:
            timings = answers[-1][1]
        return outputs, timings, self.model.outputs_probabilities

    def _expired(self, deadline: float) -> bool:
        if time.time() <= deadline:
            return False
        self.deadline_dropped += 1
        METRICS.inc("deadline_dropped", **self._tags)
        return True

    async def _infer_unbatched(self, images: list[np.ndarray], confs: list[float],
                               deadlines: list[float], lone: bool = False) -> tuple[list, dict, bool]:
        """Each image its own run, at most max_concurrent_batches at once (the CPU default).

        A group's images go to the run threads in one share per thread, and a thread runs its
        share one image after another: one hand-off per share, not per image. Each hand-off costs a
        future, a thread wake-up and a wait for the GIL on the way back, which on a 2-core EPYC
        weighed more than the spread: shares gave the fast model 1.04 x the img/s at concurrency 8
        (load_tests/app_ab.py, README). Serve's batch queue would only add its own hand-offs.
        """
        step = -(-len(images) // self.max_concurrent_batches)
        shares = [slice(i, i + step) for i in range(0, len(images), step)]
        if len(shares) == 1:
            parts = [await self._run_share(images, confs, deadlines, lone)]
        else:
            parts = await asyncio.gather(*(self._run_share(images[s], confs[s], deadlines[s]) for s in shares))
        outputs = [out for part_outputs, _ in parts for out in part_outputs]
        run_ms = [ms for _, part_ms in parts for ms in part_ms]
        timings = _not_run_timings()
        if run_ms:
            timings.update(inference_ms=round(sum(run_ms) / len(run_ms), 2), batch_size=1)
        return outputs, timings, self.model.outputs_probabilities

    async def _run_share(self, images: list[np.ndarray], confs: list[float], deadlines: list[float],
                         lone: bool = False) -> tuple[list, list[float]]:
        """Images run one by one on one run thread: (outputs, ms of each run). An image whose
        deadline has passed when its turn comes is not run: None.

        A lone request's short run (OnnxModel.short_runs: a few ms on CPU) runs right here, on the
        event loop's thread: with nothing else in progress there is nothing for the loop to do
        meanwhile, and the hand-off to a run thread and back (two thread wake-ups, a GIL wait)
        cost the fast model 8 % of its CPU per request at concurrency 1 (2-core EPYC,
        load_tests/app_ab.py). A request arriving meanwhile waits at most that run.
        """
        async with self._run_slots:
            self._running += 1
            METRICS.set("concurrent_runs", self._running, **self._tags)
            # Alone: nothing else runs this model now, so a single image may use every core.
            alone = self._running == 1 and len(images) == 1
            try:
                if lone and alone and self.model.short_runs:
                    outputs, run_ms = self._run_each(images, confs, deadlines, alone)
                else:
                    outputs, run_ms = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._run_each, images, confs, deadlines, alone)
            finally:
                self._running -= 1
                METRICS.set("concurrent_runs", self._running, **self._tags)
        for _ in run_ms:
            METRICS.observe("batch_size", 1, **self._tags)
        self.batch_sizes[1] += len(run_ms)
        expired = len(images) - len(run_ms)
        if expired:
            self.deadline_dropped += expired
            METRICS.inc("deadline_dropped", expired, **self._tags)
        return outputs, run_ms

    def _run_each(self, images: list[np.ndarray], confs: list[float], deadlines: list[float],
                  alone: bool) -> tuple[list, list[float]]:
        outputs, run_ms = [], []
        for image, conf, deadline in zip(images, confs, deadlines):
            if time.time() > deadline:
                outputs.append(None)
                continue
            t0 = time.perf_counter()
            outputs.append(self._infer([image], [conf], alone)[0])
            run_ms.append((time.perf_counter() - t0) * 1000)
        return outputs, run_ms

    async def _run_batch(self, groups: list[tuple[list[np.ndarray], list[float]]]) -> list:
        """Groups from several callers run as one model batch."""
        images = [img for group_images, _ in groups for img in group_images]
        confs = [conf for _, group_confs in groups for conf in group_confs]
        self.batch_sizes[len(images)] += 1
        METRICS.observe("batch_size", len(images), **self._tags)
        self._running += 1
        METRICS.set("concurrent_runs", self._running, **self._tags)
        if self._running >= self.max_concurrent_batches:
            self._slot_free.clear()
        t0 = time.perf_counter()
        try:
            # Alone: nothing else runs this model now, so a single image may use every core.
            alone = self._running == 1
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._infer, images, confs, alone)
        finally:
            self._running -= 1
            METRICS.set("concurrent_runs", self._running, **self._tags)
            self._slot_free.set()
        ms = round((time.perf_counter() - t0) * 1000, 2)
        timings = {"inference_ms": ms, "batch_size": len(images), "node_id": node_id()}
        answers, start = [], 0
        for group_images, _ in groups:
            answers.append((outputs[start:start + len(group_images)], timings))
            start += len(group_images)
        return answers

    def _infer(self, images: list[np.ndarray], confs: list[float], alone: bool) -> list[np.ndarray]:
        out = self.model.run(images, alone)
        if self.resolved.spec.task == "detect":
            # Ship only candidates above the request's threshold, not the raw [4+nc, N].
            return [yolo_candidates(out[i], conf) for i, conf in enumerate(confs)]
        return [np.ascontiguousarray(out[i]) for i in range(len(images))]

    def status(self) -> dict:
        out = self._status()
        if self.model.simulated is not None:
            # SIMULATED DEVICE (benchmarks and tests only): its curve, counters and answer cache.
            out["device"] = {**self.model.simulated.status(), "ray_gpu_ids": _ray_gpu_ids()}
        return out

    def _status(self) -> dict:
        return {
            "version": self.resolved.version,
            "state": "ready",
            "providers": self.model.providers,
            "batch_mode": self.model.batch_mode,
            "batch_invariant": self.model.batch_invariant,
            "outputs_probabilities": self.model.outputs_probabilities,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "max_concurrent_batches": self.max_concurrent_batches,
            "lone_run_threads": self.model.lone_run_threads,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "deadline_dropped": self.deadline_dropped,
            "load_ms": round(self.model.load_ms, 1),
        }


class InferenceStage:
    """The inference stage: every loaded version of every model, each with its batch queue.

    A Serve deployment of its own (`Inference`, below) or, with `stages: in_process`, an
    object inside the ingress replica (deployments/stage_links.py).
    """

    def __init__(self, config: dict):
        cfg = PipelineConfig.model_validate(config)
        METRICS.enabled = cfg.metrics
        self._backend = cfg.backend.settings()
        self._batching = BatchingConfig()
        source = make_source(cfg)
        self.versions = LoadedVersions(source, self._build, cfg.registry.keep_versions)
        # Load and warm what serves now before this replica reports healthy.
        try:
            catalog = source.poll()
        except Exception as exc:  # noqa: BLE001 - no catalog: the cached one, else load on demand later
            log.warning("could not read the model catalog at start: %s", exc)
            catalog = (exc.cached if isinstance(exc, RegistryUnavailable) else None) or {}
        # The catalog lists the serving alias first: what serves now is warm first.
        for models in catalog.values():
            for name, version in models.items():
                try:
                    self.versions.load_now(model_key(name, version))
                except Exception:  # noqa: BLE001 - recorded in versions.failures; others still load
                    pass

    def _build(self, resolved: ResolvedModel) -> BatchedModel:
        return BatchedModel(resolved, self._backend, self._batching)

    def reconfigure(self, user_config: dict) -> None:
        self._batching = BatchingConfig.model_validate(user_config or {})
        for _, m in self.versions.items():
            m.apply(self._batching)

    async def load(self, key: str) -> dict:
        """Load and warm a version (idempotent); raises if it cannot serve."""
        return (await self.versions.get(key)).status()

    async def __call__(self, key: str, images: list[np.ndarray], confs: list[float],
                       deadlines: list[float] | None = None, lone: bool = False):
        model = await self.versions.get(key)
        return await model.infer(images, confs, deadlines, lone)

    def status(self) -> dict:
        return {
            "models": {key: m.status() for key, m in self.versions.items()},
            "failures": dict(self.versions.failures),
            "node": node_info(),
        }


Inference = serve.deployment(
    name="Inference",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=64,
    user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.0},
)(InferenceStage)
