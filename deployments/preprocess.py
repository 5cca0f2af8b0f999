"""Preprocess stage, which is also the HTTP ingress.

Request path, one read:
  proxy -> Preprocess.__call__: route, validate, decode + letterbox (uint8)
        -> Inference (batched)  --candidates-->  Postprocess  --JSON dict--> back here
The inference response is handed to Postprocess as a DeploymentResponse, so the model
output goes straight from Inference to Postprocess and never through this replica.
Putting the ingress and preprocess in one deployment saves a full hop per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from deployments.image_codec import ImageDecodeError, decode_image
from deployments.preprocessing import prepare_image
from model_registry.source import LocalFileSource, ResolvedModel
from serve.http_api import (
    ApiError,
    error_response,
    image_bytes,
    json_response,
    predict_params,
    read_body,
    request_id,
    route,
)
from serve.settings import PipelineConfig

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = "1"


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Preprocess:
    def __init__(self, config: dict, inference: DeploymentHandle, postprocess: DeploymentHandle):
        self.cfg = PipelineConfig.model_validate(config)
        self.inference = inference
        self.postprocess = postprocess
        self.models: dict[str, ResolvedModel] = {}
        self.failures: dict[str, str] = {}
        source = LocalFileSource(self.cfg.models)
        for name in source.names():
            try:
                self.models[name] = source.resolve(name)
            except Exception as exc:  # noqa: BLE001 - one bad model must not stop the others
                log.exception("model %s failed to load", name)
                self.failures[name] = f"{type(exc).__name__}: {exc}"

    async def __call__(self, request: Request) -> Response:
        rid = request_id(request)
        try:
            path = request.url.path
            # Under a route_prefix other than "/", Serve passes it as root_path.
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            handler, path_params = route(request.method, path)
            return await getattr(self, handler)(request, rid, **path_params)
        except ApiError as err:
            return error_response(err, rid)
        except BackPressureError:
            return error_response(
                ApiError(503, "overloaded", "the pipeline is at capacity; retry shortly",
                         {"Retry-After": RETRY_AFTER_S}), rid)

    # -- handlers -------------------------------------------------------------------------
    async def healthz(self, request: Request, rid: str) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request, rid: str) -> Response:
        states = await self._model_states()
        ready = bool(states) and all(s["state"] == "ready" for s in states.values())
        body = {"ready": ready, "models": {n: s["state"] for n, s in states.items()}}
        return json_response(body, 200 if ready else 503, None if ready else {"Retry-After": "5"})

    async def list_models(self, request: Request, rid: str) -> Response:
        states = await self._model_states()
        return json_response({"models": [
            {"name": n, "task": s.get("task"), "version": s.get("version"), "state": s["state"]}
            for n, s in states.items()
        ]})

    async def get_model(self, request: Request, rid: str, name: str) -> Response:
        states = await self._model_states()
        if name not in states:
            raise self._unknown(name)
        body = {"name": name, **states[name]}
        if name in self.models:
            body["spec"] = self.models[name].spec.model_dump()
        return json_response(body)

    async def predict(self, request: Request, rid: str, name: str) -> Response:
        t0 = time.perf_counter()
        resolved = self.models.get(name)
        if resolved is None:
            if name in self.failures:
                raise ApiError(503, "model_unavailable", f"model {name!r} failed to load: {self.failures[name]}",
                               {"Retry-After": "30"})
            raise self._unknown(name)
        spec = resolved.spec
        params = predict_params(request.query_params, spec, len(spec.labels))
        body = await read_body(request, self.cfg.max_body_bytes)
        data = image_bytes(request.headers.get("content-type"), body)
        # cv2 releases the GIL: decoding off the event loop lets requests overlap.
        image, meta = await asyncio.to_thread(self._prepare, data, resolved)
        pre_ms = (time.perf_counter() - t0) * 1000

        conf_floor = params.conf if spec.task == "detect" else 0.0
        inferred = self.inference.remote(resolved.key, image, conf_floor)
        result = await self.postprocess.remote(resolved.key, inferred, meta, params)

        timings = {"preprocess_ms": round(pre_ms, 2), **result.pop("timings_ms")}
        timings["total_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return json_response({
            "model": name,
            "version": resolved.version,
            "task": spec.task,
            "image": {"width": meta.width, "height": meta.height},
            **result,
            "timings_ms": timings,
            "request_id": rid,
        }, headers={"x-request-id": rid})

    # -- helpers --------------------------------------------------------------------------
    def _prepare(self, data: bytes, resolved: ResolvedModel):
        try:
            img = decode_image(data, self.cfg.max_image_pixels)
        except ImageDecodeError as exc:
            status, code = (415, "unsupported_media_type") if exc.unsupported_type else (400, "invalid_image")
            raise ApiError(status, code, str(exc)) from None
        return prepare_image(img, resolved.spec.preprocessing)

    def _unknown(self, name: str) -> ApiError:
        known = sorted(set(self.models) | set(self.failures))
        return ApiError(404, "model_not_found", f"no model named {name!r}; served models: {known}")

    async def _model_states(self) -> dict[str, dict]:
        """Per model: the worst state across stages, plus what inference reports."""
        try:
            inf, post = await asyncio.gather(
                self.inference.status.remote(), self.postprocess.status.remote()
            )
        except Exception as exc:  # noqa: BLE001 - a stage being down is a state, not a 500
            log.warning("status call failed: %s", exc)
            inf, post = {"models": {}, "failures": {}}, {"models": {}, "failures": {}}
        states = {}
        for name in list(self.models) + list(self.failures):
            r = self.models.get(name)
            failure = self.failures.get(name) or inf["failures"].get(name) or post["failures"].get(name)
            info = inf["models"].get(name, {})
            if failure:
                state = "failed"
            elif info.get("state") == "ready" and name in post["models"]:
                state = "ready"
            else:
                state = "loading"
            states[name] = {
                "state": state,
                "task": r.spec.task if r else None,
                "version": r.version if r else None,
                **({"error": failure} if failure else {}),
                **{k: v for k, v in info.items() if k not in ("state", "version")},
            }
        return states
