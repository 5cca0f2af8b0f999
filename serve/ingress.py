"""The ingress deployment: wiring. Its HTTP ports and protocols over one data plane.

Request path, one read:
  client -> this replica's own HTTP port (serve/http_server.py), or Serve's proxy -> __call__
         -> answer: the path picks a protocol (serve/protocols/), which parses and validates
         -> DataPlane (deployments/dataplane.py): admit, decode + letterbox (uint8)
         -> stages.run: inference (batched) -> postprocess -> result dicts -> the protocol encodes
`stages` is either the Inference and Postprocess deployments (`stages: deployments`) or the
same stage classes inside this replica (`stages: in_process`); deployments/stage_links.py
says when each pays. Putting the ingress and preprocess in one deployment saves a hop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from core import errors
from core.errors import DataPlaneError
from core.onnx_backend import cores_available
from core.text import one_line
from deployments.alias_watcher import AliasWatcher
from deployments.autoscaling import OWN_HTTP_ONGOING
from deployments.config import PipelineConfig, make_source
from deployments.dataplane import DataPlane, RequestRecord
from deployments.metrics import METRICS
from deployments.stage_links import InProcessStages, RemoteStages
from model_registry.source import ResolvedModel
from serve.http_api import discard_unread_body, request_id, route
from serve.http_server import IngressHttpServer
from serve.protocols.oip import Oip
from serve.protocols.oip_grpc import IngressGrpcServer
from serve.protocols.oip_rest import PREFIX as OIP_PREFIX
from serve.protocols.oip_rest import ROUTES as OIP_ROUTES
from serve.protocols.oip_rest import OipRest
from serve.protocols.ui import PREFIX as UI_PREFIX
from serve.protocols.ui import ROUTES as UI_ROUTES
from serve.protocols.ui import TryItPage
from serve.protocols.v1_http import ROUTES as V1_ROUTES
from serve.protocols.v1_http import V1Http

log = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Ingress:
    async def __init__(self, config: dict, inference: DeploymentHandle | None = None,
                       postprocess: DeploymentHandle | None = None):
        self.cfg = PipelineConfig.model_validate(config)
        METRICS.enabled = self.cfg.metrics
        if inference is not None and postprocess is not None:
            self.stages = RemoteStages(inference, postprocess)
        else:
            self.stages = InProcessStages(config)
        self.watcher = AliasWatcher(make_source(self.cfg), self._prepare_stages, self.cfg.registry.poll_interval_s)
        self.plane = DataPlane(self.cfg, self.stages, self.watcher, decode_workers=max(2, cores_available()))
        # Every HTTP protocol over the one data plane: (path prefix, routes, adapter); the first
        # prefix that matches wins.
        self.oip = Oip(self.plane, self.cfg)
        self._http_protocols = [(OIP_PREFIX, OIP_ROUTES, OipRest(self.oip, self.cfg)),
                                (UI_PREFIX, UI_ROUTES, TryItPage()),
                                ("", V1_ROUTES, V1Http(self.plane, self.cfg))]
        await self.watcher.poll_once()
        self._watch_task = asyncio.create_task(self.watcher.run())
        self.http = None
        if self.cfg.http_port is not None:
            self.http = IngressHttpServer(self._own_http_request, self.cfg.http_host, self.cfg.http_port,
                                          header_timeout_s=self.cfg.header_timeout_s,
                                          max_connections_per_client=self.cfg.max_connections_per_client)
            await self.http.start()
            self._sample_task = asyncio.create_task(self._sample_in_progress())
        self.grpc = None
        if self.cfg.grpc_port is not None:
            self.grpc = IngressGrpcServer(self.oip, self.cfg, self.cfg.http_host, self.cfg.grpc_port)
            await self.grpc.start()

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
        if getattr(self, "grpc", None) is not None:
            await self.grpc.stop()

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
        path = request.scope["path"]  # request.url would build (and parse) the whole URL: ~20 us
        # Under a route_prefix other than "/", Serve passes it as root_path.
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        # The path's prefix picks the protocol, so even its 404s are in that protocol's format.
        table, protocol = next((t, p) for prefix, t, p in self._http_protocols if path.startswith(prefix))
        handler, record = None, RequestRecord(request_id=rid)
        try:
            handler, path_params = route(table, request.method, path)
            response = await getattr(protocol, handler)(request, rid, record, **path_params)
        except DataPlaneError as err:
            if err.code != "request_timeout":  # a stalled body is not waited for twice
                await discard_unread_body(request)
            response = protocol.error_response(err, rid)
        except Exception as exc:  # noqa: BLE001 - every error is the documented JSON, never Serve's text
            log.exception("request %s failed", rid)
            response = protocol.error_response(errors.internal_error(one_line(exc)), rid)
        if handler in protocol.predict_handlers:
            self.plane.record(record, rid, response.status_code, (time.perf_counter() - t0) * 1000)
        return response
