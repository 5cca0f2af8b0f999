"""visionray's own HTTP API, /v1: a raw or multipart image in, the documented JSON out."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from deployments.dataplane import DataPlane, RequestRecord
from deployments.predict_params import predict_params
from serve.http_api import error_response, image_bytes, json_response, latency_budget_s, read_body, routes

ROUTES = routes(
    ("GET", r"^/healthz/?$", "healthz"),
    ("GET", r"^/readyz/?$", "readyz"),
    ("GET", r"^/v1/models/?$", "list_models"),
    ("GET", r"^/v1/models/(?P<name>[^/]+)/?$", "get_model"),
    ("POST", r"^/v1/models/(?P<name>[^/]+)/predict/?$", "predict"),
)


class V1Http:
    predict_handlers = {"predict"}  # the handlers whose answers are counted as predict requests
    error_response = staticmethod(error_response)

    def __init__(self, plane: DataPlane, cfg):
        self.plane, self.cfg = plane, cfg

    async def healthz(self, request: Request, rid: str, record: RequestRecord) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request, rid: str, record: RequestRecord) -> Response:
        body = await self.plane.readiness()
        return json_response(body, 200 if body["ready"] else 503, None if body["ready"] else {"Retry-After": "5"})

    async def list_models(self, request: Request, rid: str, record: RequestRecord) -> Response:
        out = []
        for name in self.plane.names():
            info = self.plane.describe(name)
            out.append({"name": name, "task": info.get("task"), "version": info.get("version"),
                        "state": info["state"], "aliases": info["aliases"]})
        body = {"models": out}
        if self.plane.watcher.registry_error:
            body["registry_error"] = self.plane.watcher.registry_error
        return json_response(body)

    async def get_model(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        return json_response(await self.plane.model_detail(name))

    async def predict(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        t0 = time.perf_counter()
        alias = request.query_params.get("alias") or self.plane.serving_alias
        resolved = self.plane.serving(name, alias)  # read once: this request's version, end to end
        record.model, record.version, record.alias, record.resolved = name, resolved.version, alias, True
        spec = resolved.spec
        params = predict_params(request.query_params, spec, len(spec.labels))
        budget_s = latency_budget_s(request, self.cfg.latency_budget_s)
        # Before reading: a request that will be refused should cost nothing.
        self.plane.admit(resolved, budget_s)
        body = await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)
        data = image_bytes(request.headers.get("content-type"), body)
        [result] = await self.plane.predict(resolved, [data], params, budget_s, record, t0)
        return json_response({
            "model": name,
            "version": resolved.version,
            "alias": alias,
            "task": spec.task,
            **result,
            "request_id": rid,
        })
