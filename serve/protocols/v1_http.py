"""visionray's own HTTP API, /v1: a raw or multipart image in, the documented JSON out."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from core import errors
from core.image_codec import sniff_format
from core.predict_params import number, predict_params
from deployments.dataplane import DataPlane, RequestRecord
from deployments.recent_stats import WINDOW_S
from review.store import STATUSES
from serve.http_api import error_response, image_bytes, json_response, latency_budget_s, read_body, routes

ROUTES = routes(
    ("GET", r"^/$", "root"),
    ("GET", r"^/healthz/?$", "healthz"),
    ("GET", r"^/readyz/?$", "readyz"),
    ("GET", r"^/v1/models/?$", "list_models"),
    ("GET", r"^/v1/models/(?P<name>[^/]+)/?$", "get_model"),
    ("POST", r"^/v1/models/(?P<name>[^/]+)/predict/?$", "predict"),
    ("GET", r"^/v1/stats/?$", "stats"),
    ("GET", r"^/v1/review/?$", "review_list"),
    ("GET", r"^/v1/review/(?P<item_id>[A-Za-z0-9-]+)/?$", "review_item"),
    ("GET", r"^/v1/review/(?P<item_id>[A-Za-z0-9-]+)/image/?$", "review_image"),
    ("POST", r"^/v1/review/(?P<item_id>[A-Za-z0-9-]+)/(?P<action>accept|discard|reopen)/?$", "review_mark"),
)
_STATUS_OF_ACTION = {"accept": "accepted", "discard": "discarded", "reopen": "pending"}


class V1Http:
    predict_handlers = {"predict"}  # the handlers whose answers are counted as predict requests
    error_response = staticmethod(error_response)

    def __init__(self, plane: DataPlane, cfg):
        self.plane, self.cfg = plane, cfg

    async def root(self, request: Request, rid: str, record: RequestRecord) -> Response:
        """The try-it page lives under /ui (serve/protocols/ui.py)."""
        return Response(status_code=307, headers={"Location": "/ui/"})

    async def healthz(self, request: Request, rid: str, record: RequestRecord) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request, rid: str, record: RequestRecord) -> Response:
        body = await self.plane.readiness()
        if body["ready"]:
            return json_response(body)
        return json_response(body, 503, {"Retry-After": str(errors.NOT_READY_RETRY_AFTER_S)})

    async def list_models(self, request: Request, rid: str, record: RequestRecord) -> Response:
        catalog = self.plane.catalog
        body = {"models": catalog.list_models()}
        if catalog.registry_error:
            body["registry_error"] = catalog.registry_error
        return json_response(body)

    async def get_model(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        return json_response(await self.plane.model_detail(name))

    async def predict(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        t0 = time.perf_counter()
        alias = request.query_params.get("alias") or self.plane.catalog.serving_alias
        resolved = self.plane.catalog.serving(name, alias)  # read once: this request's version, end to end
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

    # -- the try-it page's numbers and the review queue ------------------------------------------
    async def stats(self, request: Request, rid: str, record: RequestRecord) -> Response:
        """The last minute of this replica's predict requests per model (the page's live panel)."""
        return json_response({"window_s": WINDOW_S, "models": self.plane.recent.summary(),
                              "scope": "the ingress replica that answered"})

    def _store(self):
        if self.plane.capture is None:
            raise errors.review_disabled("the review queue is off; set the app's review.enabled "
                                         "(README, Review queue)")
        return self.plane.capture.store

    async def review_list(self, request: Request, rid: str, record: RequestRecord) -> Response:
        if self.plane.capture is None:
            return json_response({"enabled": False, "items": []})
        query = request.query_params
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise errors.invalid_parameter(f"status must be one of {list(STATUSES)}")
        limit = number(query, "limit", int, 50, 1, 500)
        offset = number(query, "offset", int, 0, 0, 10**9)
        store = self._store()
        items = store.list(query.get("model") or None, status, limit, offset)
        return json_response({"enabled": True, "items": [i.summary() for i in items], "store": store.stats(),
                              "capture": self.plane.capture.stats()})

    async def review_item(self, request: Request, rid: str, record: RequestRecord, item_id: str) -> Response:
        item = self._store().get(item_id)
        if item is None:
            raise errors.not_found(f"no review item {item_id!r}")
        return json_response(item.summary())

    async def review_image(self, request: Request, rid: str, record: RequestRecord, item_id: str) -> Response:
        data = self._store().image(item_id)
        if data is None:
            raise errors.not_found(f"no review item {item_id!r}")
        media = "image/png" if sniff_format(data) == "png" else "image/jpeg"
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    async def review_mark(self, request: Request, rid: str, record: RequestRecord, item_id: str,
                          action: str) -> Response:
        status = _STATUS_OF_ACTION[action]
        if not self._store().set_status(item_id, status):
            raise errors.not_found(f"no review item {item_id!r}")
        return json_response({"id": item_id, "status": status})
