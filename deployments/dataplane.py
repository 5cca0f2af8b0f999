"""The data plane: what every protocol asks of the ingress, with no protocol in it.

    admit(resolved, n, budget)        -> refuse now, before a body is read, or go on
    predict(resolved, images, params, budget, record) -> one result per image, in order
    readiness / model_ready / model_detail
    catalog                            -> which version answers; describe (deployments/catalog.py)

The /v1 HTTP API (serve/protocols/v1_http.py), the Open Inference Protocol over REST
(oip_rest.py) and gRPC (oip_grpc.py), and camera streams (streams.py) only parse and encode
around these calls, so admission, deadlines, the stages and the metrics are one code path
whatever the way in. Errors are DataPlaneError (core/errors.py); each protocol maps them.
MLServer's `handlers/dataplane.py` under its `rest/` and `grpc/` is the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ray.serve.exceptions import BackPressureError

from core import errors
from core.errors import DataPlaneError, shown
from core.image_codec import ImageDecodeError, decode_image, to_bgr8
from core.predict_params import PredictParams
from core.preprocessing import prepare_image
from core.text import one_line
from deployments.alias_watcher import AliasWatcher
from deployments.call_grouping import CallGrouper, Overloaded
from deployments.catalog import Catalog
from deployments.metrics import METRICS, UNKNOWN_MODEL, request_log_line
from deployments.placement import node_id, node_info
from deployments.recent_stats import RecentStats
from deployments.stage_links import STAGE_FAILURES, StageUnavailable
from model_registry.source import ResolvedModel
from review.capture import Capture, capture_reason
from review.store import LocalReviewStore

log = logging.getLogger("ray.serve")
# A child of Serve's logger: its lines go where Serve writes the replica's log.
request_log = logging.getLogger("ray.serve.visionray.requests")

# A lone request (nothing else in progress) decodes on the event loop's thread instead of the
# decode pool when its image is at most this big: the hand-off to a pool thread and back cost more
# than the decode of a small image (2-core EPYC: 8 % of the CPU per request at concurrency 1,
# load_tests/app_ab.py). Bigger images still go to the pool: their decode would hold up the loop.
INLINE_DECODE_MAX_BYTES = 256 << 10

# An image as a protocol hands it over: encoded bytes (JPEG/PNG), or decoded pixels, HxWx3 uint8
# RGB (OIP's raw UINT8 input, for clients that decode themselves).
ImageInput = bytes | np.ndarray


@dataclass
class RequestRecord:
    """What one request's metrics and log line are labelled with; filled in as it goes."""

    model: str = UNKNOWN_MODEL
    version: str = ""
    alias: str = ""
    images: int = 0
    timings: dict | None = None
    resolved: bool = False
    request_id: str = ""


class DataPlane:
    def __init__(self, cfg, stages, watcher: AliasWatcher, decode_workers: int):
        self.cfg = cfg
        self.stages = stages
        self.watcher = watcher
        self.catalog = Catalog(watcher, cfg.registry.serving_alias, cfg.registry.aliases)
        self.serving_alias = cfg.registry.serving_alias
        self.aliases = cfg.registry.aliases
        self.grouper = CallGrouper(self._send_group, cfg.max_group, cfg.max_in_flight,
                                   on_abandoned=self._count_abandoned)
        # Decoding is CPU work: more threads than cores only add switches and GIL hand-offs.
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")
        self.recent = RecentStats()  # the try-it page's live panel
        self._in_progress = 0  # predict calls in progress in this replica (lone requests take shortcuts)
        self.review = cfg.review
        self.capture = None
        if cfg.review.enabled:
            store = LocalReviewStore(cfg.review.directory(), cfg.review.max_items, cfg.review.max_bytes,
                                     cfg.review.when_full)
            self.capture = Capture(store, cfg.review.queue_size)

    # -- predict --------------------------------------------------------------------------
    def admit(self, resolved: ResolvedModel, budget_s: float) -> None:
        """Refuse now what would be refused later: called before the body is read, so that a
        refusal costs nothing."""
        try:
            self.stages.check()
            self.grouper.check(resolved.key, budget_s)
        except Overloaded as exc:
            raise self._overloaded(resolved, budget_s, exc) from None
        except StageUnavailable as exc:
            raise errors.stage_unavailable(one_line(exc)) from None

    async def predict(self, resolved: ResolvedModel, images: list[ImageInput], params: PredictParams,
                      budget_s: float, record: RequestRecord, t0: float | None = None) -> list[dict]:
        """One result dict per image, in order (the /v1 answer's fields per image). The N images
        are admitted together and go downstream together: one trip through the pipeline."""
        t0 = time.perf_counter() if t0 is None else t0
        self._in_progress += 1
        try:
            return await self._predict(resolved, images, params, budget_s, record, t0)
        finally:
            self._in_progress -= 1

    async def _predict(self, resolved: ResolvedModel, images: list[ImageInput], params: PredictParams,
                       budget_s: float, record: RequestRecord, t0: float) -> list[dict]:
        key, spec = resolved.key, resolved.spec
        reservations = []
        try:
            # Before decoding, holding places: requests decoding count as queued, so a burst is not
            # all decoded only to be refused when queued. Not while the body arrives: slow clients
            # would hold places and refuse everyone else.
            for _ in images:
                reservations.append(self.grouper.admit(key, budget_s - (time.perf_counter() - t0)))
            if len(images) == 1 and self._in_progress == 1 and _image_bytes(images[0]) <= INLINE_DECODE_MAX_BYTES:
                prepared = [self._prepare(images[0], resolved)]
            else:
                # cv2 releases the GIL: decoding off the event loop lets requests overlap.
                loop = asyncio.get_running_loop()
                decodes = [loop.run_in_executor(self._decode_pool, self._prepare, image, resolved) for image in images]
                prepared = [await decodes[0]] if len(decodes) == 1 else await asyncio.gather(*decodes)
            pre_ms = (time.perf_counter() - t0) * 1000
            conf_floor = params.conf if spec.task == "detect" else 0.0
            remaining_s = budget_s - pre_ms / 1000
            # Wall-clock: the deadline is compared in other processes, maybe on other nodes.
            deadline = time.time() + remaining_s
            submits = [self.grouper.submit(key, (image, conf_floor, meta, params, deadline), remaining_s, reservation)
                       for (image, meta), reservation in zip(prepared, reservations)]
            # One image (the /v1 case): awaited as is; gather would wrap it in a task of its own.
            results = [await submits[0]] if len(submits) == 1 else await asyncio.gather(*submits)
        except Overloaded as exc:
            raise self._overloaded(resolved, budget_s, exc) from None
        except BackPressureError:
            raise errors.overloaded("the pipeline is at capacity; retry shortly") from None
        except (*STAGE_FAILURES, StageUnavailable) as exc:
            # A stage replica died or is restarting (Serve's own failures; errors in a stage's code
            # arrive as RayTaskError): predict is idempotent, the client may retry.
            log.warning("a stage is unavailable: %s", one_line(exc))
            raise errors.stage_unavailable(one_line(exc)) from None
        finally:
            for reservation in reservations:
                reservation.release()  # a bad body, a decode error, a client gone: its place is free

        if any(result.get("expired") for result in results):
            # Inference dropped it unrun: its deadline passed while it waited for the model.
            raise errors.deadline_exceeded(resolved.name, budget_s)
        total_ms = round((time.perf_counter() - t0) * 1000, 2)
        out = []
        for (_, meta), result in zip(prepared, results):
            timings = {"preprocess_ms": round(pre_ms, 2), **result.pop("timings_ms"), "total_ms": total_ms}
            out.append({"image": {"width": meta.width, "height": meta.height}, **result,
                        "served_by": {"preprocess": node_id(), **result.pop("served_by")},
                        "timings_ms": timings})
        record.images, record.timings = len(images), out[0]["timings_ms"]
        if self.capture is not None:
            self._capture(resolved, images, out, record)
        return out

    def _capture(self, resolved: ResolvedModel, images: list[ImageInput], results: list[dict],
                 record: RequestRecord) -> None:
        """The predictions the model's capture rule picks go to the review queue: a queue put each."""
        rule = self.review.rule_for(resolved.name)
        if rule is None:
            return
        task = resolved.spec.task
        for image, result in zip(images, results):
            prediction = result.get("detections") if task == "detect" else result.get("classes")
            reason = capture_reason(rule, task, prediction or [])
            if reason is not None:
                self.capture.offer(image, {
                    "created": time.time(), "model": resolved.name, "version": resolved.version,
                    "alias": record.alias, "task": task, "request_id": record.request_id, "reason": reason,
                    "width": result["image"]["width"], "height": result["image"]["height"],
                    "prediction": prediction})

    def record(self, record: RequestRecord, rid: str, status: int, total_ms: float) -> None:
        """Metrics (and, if configured, the log line) of one predict request, whatever its protocol."""
        METRICS.predict_answered(record.model, record.version, record.alias, status, total_ms,
                                 record.images, record.timings)
        self.recent.record(record.model, status, total_ms)
        if self.cfg.request_log:
            seen = {"model": record.model, "version": record.version, "alias": record.alias,
                    "timings": record.timings} if record.resolved else None
            request_log.info(request_log_line(rid, seen, status, total_ms))

    def _overloaded(self, resolved: ResolvedModel, budget_s: float, exc: Overloaded) -> DataPlaneError:
        METRICS.inc("shed", model=resolved.name, version=resolved.version)
        return errors.overloaded(f"model {shown(resolved.name)} cannot answer within the {budget_s * 1000:.0f} ms "
                                 f"budget now ({exc}); retry later", exc.retry_after_s)

    async def _send_group(self, key: str, items: list) -> list[dict]:
        images, confs, metas, params, deadlines = (list(column) for column in zip(*items))
        lone = len(items) == 1 and self._in_progress == 1
        return await self.stages.run(key, images, confs, metas, params, deadlines, lone)

    @staticmethod
    def _count_abandoned(key: str, count: int) -> None:
        METRICS.inc("abandoned", count, model=key.rpartition(":")[0])

    def _prepare(self, image: ImageInput, resolved: ResolvedModel):
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise errors.invalid_image(f"pixels must be HxWx3 uint8, got {image.dtype} {list(image.shape)}")
            if image.shape[0] * image.shape[1] > self.cfg.max_image_pixels:
                raise errors.invalid_image(f"image is {image.shape[1]}x{image.shape[0]}; the limit is "
                                           f"{self.cfg.max_image_pixels} pixels")
            img = to_bgr8(np.ascontiguousarray(image[:, :, ::-1]))
        else:
            try:
                img = decode_image(image, self.cfg.max_image_pixels)
            except ImageDecodeError as exc:
                if exc.unsupported_type:
                    raise errors.unsupported_media_type(str(exc)) from None
                raise errors.invalid_image(str(exc)) from None
        return prepare_image(img, resolved.spec.preprocessing)

    # -- which version serves: the catalog's, for callers that hold only the plane -------------
    def serving(self, name: str, alias: str | None = None) -> ResolvedModel:
        return self.catalog.serving(name, alias)

    def served_versions(self, name: str) -> dict[str, ResolvedModel]:
        return self.catalog.served_versions(name)

    def serving_version(self, name: str, version: str | None) -> tuple[ResolvedModel, str]:
        return self.catalog.serving_version(name, version)

    def names(self) -> list[str]:
        return self.catalog.names()

    def unknown(self, name: str, alias: str | None = None) -> DataPlaneError:
        return self.catalog.unknown(name, alias)

    def describe(self, name: str) -> dict:
        return self.catalog.describe(name)

    # -- a model in detail ----------------------------------------------------------------------
    async def model_detail(self, name: str) -> dict:
        """describe(), plus the serving version's spec, inference's view of it and the placement."""
        self.catalog.require(name)
        body = {"name": name, **self.catalog.describe(name)}
        resolved = self.catalog.serving_now(name)
        if resolved is not None:
            body["spec"] = resolved.spec.model_dump()
            body.update(await self._inference_info(resolved.key))
        body["placement"] = await self._placement()
        # How many requests' images this ingress replica sent downstream per call (all models).
        body["ingress"] = {"group_sizes": dict(sorted(self.grouper.group_sizes.items()))}
        return body

    # -- readiness --------------------------------------------------------------------------
    async def readiness(self) -> dict:
        """{"ready", "models", "stages"[, "registry_error"]}: ready when every model of the serving
        alias serves and every stage answers with all of them loaded."""
        models = self.catalog.serving_states()
        stages = await self._stage_readiness()
        body = {"ready": self.catalog.ready and all(v == "ready" for v in stages.values()),
                "models": models, "stages": stages}
        if self.catalog.registry_error:
            body["registry_error"] = self.catalog.registry_error
        return body

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        """This model (version) would be answered now: it serves and no stage is known down."""
        try:
            resolved, _ = self.catalog.serving_version(name, version)
        except DataPlaneError:
            return False
        if self.stages.down is not None:
            return False
        stages = await self._stage_readiness({resolved.key})
        return all(v == "ready" for v in stages.values())

    async def _stage_readiness(self, keys: set[str] | None = None) -> dict[str, str]:
        """Per stage: "ready" when a replica answers and holds every version the serving alias serves."""
        if keys is None:
            keys = self.catalog.serving_keys()
        stages = ("inference", "postprocess")
        answers = await asyncio.gather(*(self.stages.status(s) for s in stages), return_exceptions=True)
        out = {}
        for stage, answer in zip(stages, answers):
            if isinstance(answer, BaseException):
                reason = "no replica answered" if isinstance(answer, asyncio.TimeoutError) else one_line(answer)
                out[stage] = f"unavailable: {reason}"
            elif missing := sorted(keys - set(answer["models"])):
                out[stage] = f"loading: {', '.join(missing)}"
            elif self.stages.down is not None:
                # It answers again, but predict still fails fast until the next probe round says so:
                # readiness must not promise what predict refuses.
                out[stage] = f"unavailable: recovering from {self.stages.down}"
            else:
                out[stage] = "ready"
        return out

    async def _inference_info(self, key: str) -> dict:
        try:
            status = await self.stages.status("inference")
        except Exception as exc:  # noqa: BLE001 - a stage being down is a state, not a 500
            return {"inference_error": one_line(exc)}
        info = dict(status["models"].get(key, {}))
        info.pop("version", None)
        info.pop("state", None)
        return info

    async def _placement(self) -> dict:
        """The node (id, labels) of the replica of each stage that answered this call."""
        placement = {"preprocess": node_info()}
        for stage in ("inference", "postprocess"):
            try:
                placement[stage] = (await self.stages.status(stage))["node"]
            except Exception as exc:  # noqa: BLE001 - a stage being down is a state, not a 500
                placement[stage] = {"error": one_line(exc)}
        return placement


def _image_bytes(image: ImageInput) -> int:
    return image.nbytes if isinstance(image, np.ndarray) else len(image)
