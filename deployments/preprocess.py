"""The ingress: HTTP, routing, validation, decode + letterbox; inference and postprocess after.

Request path, one read:
  client -> this replica's own HTTP port (serve/http_server.py), or Serve's proxy -> __call__
         -> route, validate, admit, decode + letterbox (uint8)
         -> stages.run: inference (batched) -> postprocess -> JSON dict -> back here
`stages` is either the Inference and Postprocess deployments (`stages: deployments`) or the
same stage classes inside this replica (`stages: in_process`); deployments/stage_links.py
says when each pays. Putting the ingress and preprocess in one deployment saves a hop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from deployments.alias_watcher import AliasWatcher, one_line
from deployments.call_grouping import CallGrouper, Overloaded
from deployments.image_codec import ImageDecodeError, decode_image
from deployments.metrics import METRICS, UNKNOWN_MODEL, request_log_line
from deployments.onnx_backend import cores_available
from deployments.placement import node_id, node_info
from deployments.preprocessing import prepare_image
from deployments.stage_links import STAGE_FAILURES, InProcessStages, RemoteStages, StageUnavailable
from model_registry.source import ResolvedModel
from serve.autoscaling import OWN_HTTP_ONGOING
from serve.http_api import (
    ApiError,
    discard_unread_body,
    error_response,
    image_bytes,
    json_response,
    latency_budget_s,
    predict_params,
    read_body,
    request_id,
    route,
    shown,
)
from serve.http_server import IngressHttpServer
from serve.settings import PipelineConfig, make_source

log = logging.getLogger("ray.serve")
# A child of Serve's logger: its lines go where Serve writes the replica's log.
request_log = logging.getLogger("ray.serve.visionray.requests")

RETRY_AFTER_S = "1"
# Where predict leaves what the request's metrics are labelled with (model, version, alias, timings).
_METRICS_SCOPE_KEY = "visionray.metrics"


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Preprocess:
    async def __init__(self, config: dict, inference: DeploymentHandle | None = None,
                       postprocess: DeploymentHandle | None = None):
        self.cfg = PipelineConfig.model_validate(config)
        METRICS.enabled = self.cfg.metrics
        if inference is not None and postprocess is not None:
            self.stages = RemoteStages(inference, postprocess)
        else:
            self.stages = InProcessStages(config)
        self.grouper = CallGrouper(self._send_group, self.cfg.max_group, self.cfg.max_in_flight,
                                   on_abandoned=self._count_abandoned)
        # Decoding is CPU work: more threads than cores only add switches and GIL hand-offs.
        self._decode_pool = ThreadPoolExecutor(max_workers=max(2, cores_available()), thread_name_prefix="decode")
        self.serving_alias = self.cfg.registry.serving_alias
        self.aliases = self.cfg.registry.aliases
        self.watcher = AliasWatcher(make_source(self.cfg), self._prepare_stages, self.cfg.registry.poll_interval_s)
        await self.watcher.poll_once()
        self._watch_task = asyncio.create_task(self.watcher.run())
        self.http = None
        if self.cfg.http_port is not None:
            self.http = IngressHttpServer(self._own_http_request, self.cfg.http_host, self.cfg.http_port,
                                          header_timeout_s=self.cfg.header_timeout_s,
                                          max_connections_per_client=self.cfg.max_connections_per_client)
            await self.http.start()
            self._sample_task = asyncio.create_task(self._sample_in_progress())

    @staticmethod
    def _count_abandoned(key: str, count: int) -> None:
        METRICS.inc("abandoned", count, model=key.rpartition(":")[0])

    async def _prepare_stages(self, resolved: ResolvedModel) -> None:
        """Load and warm a version in inference and postprocess before it may serve."""
        await self.stages.load(resolved.key)

    def reconfigure(self, user_config: dict) -> None:
        self.stages.reconfigure(user_config)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {OWN_HTTP_ONGOING: float(self.http.ongoing if self.http else 0)}

    async def _sample_in_progress(self) -> None:
        """The own port's queue depth as a gauge, once a second (not per request: it costs CPU)."""
        while True:
            METRICS.set("ingress_requests_in_progress", self.http.ongoing)
            await asyncio.sleep(1.0)

    async def __del__(self):
        if getattr(self, "http", None) is not None:
            await self.http.stop()

    async def __call__(self, request: Request) -> Response:
        """A request from Serve's proxy, which sets the x-request-id header itself."""
        return await self.answer(request, request_id(request))

    async def _own_http_request(self, request: Request) -> Response:
        rid = request_id(request)
        response = await self.answer(request, rid)
        response.headers["x-request-id"] = rid
        return response

    async def answer(self, request: Request, rid: str) -> Response:
        t0 = time.perf_counter()
        handler = None
        try:
            path = request.url.path
            # Under a route_prefix other than "/", Serve passes it as root_path.
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            handler, path_params = route(request.method, path)
            response = await getattr(self, handler)(request, rid, **path_params)
        except ApiError as err:
            if err.status != 408:  # a stalled body is not waited for twice
                await discard_unread_body(request)
            response = error_response(err, rid)
        except BackPressureError:
            response = error_response(
                ApiError(503, "overloaded", "the pipeline is at capacity; retry shortly",
                         {"Retry-After": RETRY_AFTER_S}), rid)
        except (*STAGE_FAILURES, StageUnavailable) as exc:
            # A stage replica died or is restarting (Serve's own failures; errors in a stage's code
            # arrive as RayTaskError): predict is idempotent, the client may retry.
            log.warning("request %s: a stage is unavailable: %s", rid, one_line(exc))
            response = error_response(ApiError(503, "stage_unavailable", f"a pipeline stage is unavailable: "
                                               f"{one_line(exc)}", {"Retry-After": RETRY_AFTER_S}), rid)
        except Exception as exc:  # noqa: BLE001 - every error is the documented JSON, never Serve's text
            log.exception("request %s failed", rid)
            response = error_response(ApiError(500, "internal_error", one_line(exc)), rid)
        if handler == "predict":
            self._record_predict(request, rid, response.status_code, (time.perf_counter() - t0) * 1000)
        return response

    def _record_predict(self, request: Request, rid: str, status: int, total_ms: float) -> None:
        """Metrics (and, if configured, the log line) of one predict request."""
        seen = request.scope.get(_METRICS_SCOPE_KEY)
        if seen is None:  # refused before its model was resolved (unknown model or alias)
            METRICS.predict_answered(UNKNOWN_MODEL, "", "", status, total_ms, 0, None)
        else:
            METRICS.predict_answered(seen["model"], seen["version"], seen["alias"], status, total_ms,
                                     seen.get("images", 0), seen.get("timings"))
        if self.cfg.request_log:
            request_log.info(request_log_line(rid, seen, status, total_ms))

    # -- handlers -------------------------------------------------------------------------
    async def healthz(self, request: Request, rid: str) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request, rid: str) -> Response:
        models = {name: self.watcher.states[(self.serving_alias, name)].state
                  for (alias, name) in self.watcher.states if alias == self.serving_alias}
        stages = await self._stage_readiness()
        ready = self.watcher.ready and all(v == "ready" for v in stages.values())
        body = {"ready": ready, "models": models, "stages": stages}
        if self.watcher.registry_error:
            body["registry_error"] = self.watcher.registry_error
        return json_response(body, 200 if ready else 503, None if ready else {"Retry-After": "5"})

    async def list_models(self, request: Request, rid: str) -> Response:
        out = []
        for name in self._names():
            info = self._describe(name)
            out.append({"name": name, "task": info.get("task"), "version": info.get("version"),
                        "state": info["state"], "aliases": info["aliases"]})
        body = {"models": out}
        if self.watcher.registry_error:
            body["registry_error"] = self.watcher.registry_error
        return json_response(body)

    async def get_model(self, request: Request, rid: str, name: str) -> Response:
        if name not in self._names():
            raise self._unknown(name)
        body = {"name": name, **self._describe(name)}
        resolved = self.watcher.serving.get(self.serving_alias, {}).get(name)
        if resolved is not None:
            body["spec"] = resolved.spec.model_dump()
            body.update(await self._inference_info(resolved.key))
        body["placement"] = await self._placement()
        return json_response(body)

    async def predict(self, request: Request, rid: str, name: str) -> Response:
        t0 = time.perf_counter()
        alias = request.query_params.get("alias") or self.serving_alias
        resolved = self._serving(name, alias)  # read once: this request's version, end to end
        seen = request.scope[_METRICS_SCOPE_KEY] = {"model": name, "version": resolved.version, "alias": alias}
        spec = resolved.spec
        params = predict_params(request.query_params, spec, len(spec.labels))
        budget_s = latency_budget_s(request, self.cfg.latency_budget_s)
        reservation = None
        try:
            # Before reading: a request that will be refused should cost nothing.
            self.stages.check()
            self.grouper.check(resolved.key, budget_s)
            body = await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)
            data = image_bytes(request.headers.get("content-type"), body)
            # Before decoding, again, now holding a place: requests decoding count as queued, so a
            # burst is not all decoded only to be refused when queued. Not while the body arrives:
            # slow clients would hold places and refuse everyone else.
            reservation = self.grouper.admit(resolved.key, budget_s - (time.perf_counter() - t0))
            # cv2 releases the GIL: decoding off the event loop lets requests overlap.
            image, meta = await asyncio.get_running_loop().run_in_executor(
                self._decode_pool, self._prepare, data, resolved)
            pre_ms = (time.perf_counter() - t0) * 1000
            conf_floor = params.conf if spec.task == "detect" else 0.0
            remaining_s = budget_s - pre_ms / 1000
            # Wall-clock: the deadline is compared in other processes, maybe on other nodes.
            item = (image, conf_floor, meta, params, time.time() + remaining_s)
            result = await self.grouper.submit(resolved.key, item, remaining_s, reservation)
        except Overloaded as exc:
            METRICS.inc("shed", model=name, version=resolved.version)
            raise ApiError(503, "overloaded", f"model {shown(name)} cannot answer within the "
                           f"{budget_s * 1000:.0f} ms budget now ({exc}); retry later",
                           {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from None
        finally:
            if reservation is not None:
                reservation.release()  # a bad body, a decode error, a client gone: its place is free

        if result.get("expired"):
            # Inference dropped it unrun: its deadline passed while it waited for the model.
            raise ApiError(503, "deadline_exceeded", f"model {shown(name)} could not start this image within "
                           f"the {budget_s * 1000:.0f} ms budget; retry later", {"Retry-After": RETRY_AFTER_S})
        timings = {"preprocess_ms": round(pre_ms, 2), **result.pop("timings_ms")}
        timings["total_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        seen.update(images=1, timings=timings)
        return json_response({
            "model": name,
            "version": resolved.version,
            "alias": alias,
            "task": spec.task,
            "image": {"width": meta.width, "height": meta.height},
            **result,
            "served_by": {"preprocess": node_id(), **result.pop("served_by")},
            "timings_ms": timings,
            "request_id": rid,
        })

    async def _send_group(self, key: str, items: list) -> list[dict]:
        images, confs, metas, params, deadlines = (list(column) for column in zip(*items))
        return await self.stages.run(key, images, confs, metas, params, deadlines)

    # -- helpers --------------------------------------------------------------------------
    def _prepare(self, data: bytes, resolved: ResolvedModel):
        try:
            img = decode_image(data, self.cfg.max_image_pixels)
        except ImageDecodeError as exc:
            status, code = (415, "unsupported_media_type") if exc.unsupported_type else (400, "invalid_image")
            raise ApiError(status, code, str(exc)) from None
        return prepare_image(img, resolved.spec.preprocessing)

    def _serving(self, name: str, alias: str) -> ResolvedModel:
        if alias not in self.aliases:
            raise ApiError(404, "alias_not_served",
                           f"alias {shown(alias)} is not served; served aliases: {self.aliases}")
        resolved = self.watcher.serving.get(alias, {}).get(name)
        if resolved is not None:
            return resolved
        st = self.watcher.states.get((alias, name))
        if st is None or (st.version is None and st.previous is not None and not st.error):
            raise self._unknown(name, alias)
        if st.error:
            raise ApiError(503, "model_unavailable",
                           f"model {name!r}@{alias} version {st.failed_version} cannot serve: {st.error}",
                           {"Retry-After": "30"})
        raise ApiError(503, "model_loading", f"model {name!r}@{alias} is loading", {"Retry-After": "5"})

    def _names(self) -> list[str]:
        return sorted({name for (_, name) in self.watcher.states})

    def _describe(self, name: str) -> dict:
        aliases = {}
        for alias in self.aliases:
            st = self.watcher.states.get((alias, name))
            if st is None:
                continue
            entry = {"version": st.version, "state": st.state, "previous": st.previous}
            if st.error:
                entry.update(failed_version=st.failed_version, error=st.error, attempts=st.attempts)
            aliases[alias] = entry
        main = aliases.get(self.serving_alias) or next(iter(aliases.values()), {"state": "not_served"})
        resolved = self.watcher.serving.get(self.serving_alias, {}).get(name)
        out = {"version": main.get("version"), "alias": self.serving_alias, "state": main["state"],
               "task": resolved.spec.task if resolved else None, "aliases": aliases}
        if main.get("error"):
            out["error"] = main["error"]
        return out

    async def _stage_readiness(self) -> dict[str, str]:
        """Per stage: "ready" when a replica answers and holds every version the serving alias serves."""
        keys = {r.key for r in self.watcher.serving.get(self.serving_alias, {}).values()}
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

    def _unknown(self, name: str, alias: str | None = None) -> ApiError:
        where = f" under alias {alias!r}" if alias else ""
        return ApiError(404, "model_not_found",
                        f"no model named {shown(name)} is served{where}; served: {self._names()}")
