"""One ingress replica's request path in this process, without Ray, for tests.

The real parts, wired as serve/ingress.py wires them: `InProcessStages` (inference and
postprocess as objects here), an `AliasWatcher` over a `LocalFileSource`, the `DataPlane`, and
the protocol adapters (/v1, OIP REST, the try-it page) behind the real `IngressHttpServer` on a
free loopback port, and the real gRPC servicer (`IngressGrpcServer`) on another. Only the path
-> protocol dispatch of `Ingress.answer` is repeated here (`_answer`): it is the one part of the
front door that needs a Serve deployment around it.

Everything async runs on one event loop in a thread of its own, as in a replica: the stages'
batch queues, run slots and the call grouper's futures belong to the loop they were made on, so
they are made on it (`start_replica`). Tests call from their own thread over real sockets.

Nothing here starts Ray or needs it: `deployments/placement.node_info()` answers `node_id: None`
when Ray is not initialized in this process. The platform's metrics are off in these replicas
(`metrics: false`): where the suite's shared Ray cluster runs in this same process, the recorder
would hand this process's points to it, and tests/test_metrics_prometheus.py counts every series
the cluster exports. `stop()` puts the recorder's switch back as it was.

Inference runs unbatched here, as the shipped CPU configuration does (serve/config.yaml's
user_config). A `max_batch_size` above 1 puts Ray Serve's `@serve.batch` queue in the path, and
that queue needs a Serve replica around it (it asks `serve.get_replica_context()` when first
used): the batched path is the cluster tests'.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from core.errors import DataPlaneError
from core.local_pipeline import LocalPipeline
from core.text import one_line
from deployments.alias_watcher import AliasWatcher
from deployments.config import PipelineConfig, make_source
from deployments.dataplane import DataPlane, RequestRecord
from deployments.metrics import METRICS
from deployments.stage_links import InProcessStages
from serve.app_deploy import app_config, free_port
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

START_TIMEOUT_S = 120.0


class LoopThread:
    """An asyncio event loop running in a daemon thread; `run(coro)` waits for its result."""

    def __init__(self, name: str = "replica-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout_s: float = START_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable, *args):
        """`fn(*args)` on the loop's thread (asyncio objects are not thread-safe), once it has run."""

        async def call():
            return fn(*args)

        return self.run(call(), 30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        if not self.loop.is_running():
            self.loop.close()


class Gate:
    """Holds every call that reaches it until opened; `entered` says a call is held.

    Set on the loop's thread (`LoopThread.call(gate.open)`), waited on from the test's thread.
    """

    def __init__(self, is_open: bool = True):
        self._open = asyncio.Event()
        if is_open:
            self._open.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def pass_through(self) -> None:
        if not self._open.is_set():
            self.entered.set()
            await self._open.wait()


class GatedStages:
    """The real stages behind a gate: `run` waits at the gate, then runs them as is."""

    def __init__(self, stages: InProcessStages, gate: Gate):
        self.inner, self.gate = stages, gate

    @property
    def down(self):
        return self.inner.down

    async def load(self, key: str) -> None:
        await self.inner.load(key)

    async def run(self, *args, **kwargs) -> list[dict]:
        await self.gate.pass_through()
        return await self.inner.run(*args, **kwargs)

    async def status(self, stage: str) -> dict:
        return await self.inner.status(stage)

    def check(self) -> None:
        self.inner.check()

    def reconfigure(self, user_config: dict | None) -> None:
        self.inner.reconfigure(user_config)


@dataclass
class InProcessReplica:
    cfg: PipelineConfig
    loop: LoopThread
    stages: InProcessStages | GatedStages
    watcher: AliasWatcher
    plane: DataPlane
    http: IngressHttpServer
    grpc: IngressGrpcServer | None
    base: str  # http://127.0.0.1:PORT
    grpc_address: str | None  # 127.0.0.1:PORT
    gate: Gate | None = None
    _protocols: list = field(default_factory=list)
    _metrics_were_enabled: bool = True

    async def _answer(self, request: Request) -> Response:
        """What `Ingress` does with a request on its own port: the path's prefix picks the protocol,
        its errors are that protocol's JSON, predict requests are recorded, and the request id is
        the x-request-id header."""
        t0 = time.perf_counter()
        rid = request_id(request)
        path = request.scope["path"]
        table, protocol = next((t, p) for prefix, t, p in self._protocols if path.startswith(prefix))
        handler, record = None, RequestRecord(request_id=rid)
        try:
            handler, path_params = route(table, request.method, path)
            response = await getattr(protocol, handler)(request, rid, record, **path_params)
        except DataPlaneError as err:
            if err.code != "request_timeout":
                await discard_unread_body(request)
            response = protocol.error_response(err, rid)
        except Exception as exc:  # noqa: BLE001 - as the ingress: the documented JSON, never a traceback
            response = protocol.error_response(DataPlaneError(500, "internal_error", one_line(exc)), rid)
        if handler in protocol.predict_handlers:
            self.plane.record(record, rid, response.status_code, (time.perf_counter() - t0) * 1000)
        response.headers["x-request-id"] = rid
        return response

    def stop(self) -> None:
        async def stop():
            await self.http.stop()
            if self.grpc is not None:
                await self.grpc.stop()

        try:
            self.loop.run(stop(), 30)
        finally:
            self.loop.close()
            METRICS.enabled = self._metrics_were_enabled


def shipped_user_config() -> dict:
    """The Ingress deployment's user_config in serve/config.yaml: the inference batching it ships."""
    app = app_config("in-process", "/", [])
    return dict(app["deployments"][0].get("user_config") or {})


def start_replica(models: list[dict], *, grpc: bool = True, gated: bool = False,
                  user_config: dict | None = None, **arg_overrides) -> InProcessReplica:
    """The shipped application's args (serve/config.yaml) with `models` and `arg_overrides`, served
    by one in-process replica on free loopback ports. `user_config`: the inference batching
    (default: the shipped one). `gated`: the stages sit behind a `Gate`, open at first."""
    arg_overrides.setdefault("metrics", False)
    args = app_config("in-process", "/", models, http_port=free_port(), grpc_port=free_port() if grpc else None,
                      **arg_overrides)["args"]
    if "backend" not in arg_overrides:
        # No lone-run threads: where a model is slow enough to get them (core/onnx_backend.py,
        # LONE_RUN_MIN_MS), a lone request's run on every core need not match LocalPipeline's
        # single-threaded one to the last bit. The demo models are too fast for them on most CPUs.
        args["backend"] = {**args["backend"], "lone_run_threads": 0}
    cfg = PipelineConfig.model_validate(args)
    config = cfg.model_dump()
    metrics_were_enabled = METRICS.enabled
    loop = LoopThread()

    async def build() -> InProcessReplica:
        stages = InProcessStages(config)
        stages.reconfigure(shipped_user_config() if user_config is None else user_config)
        gate = Gate() if gated else None
        link = GatedStages(stages, gate) if gated else stages

        async def prepare(resolved) -> None:
            await link.load(resolved.key)

        watcher = AliasWatcher(make_source(cfg), prepare, cfg.registry.poll_interval_s)
        plane = DataPlane(cfg, link, watcher, decode_workers=2)
        oip = Oip(plane, cfg)
        await watcher.poll_once()
        http = IngressHttpServer(lambda request: replica._answer(request), cfg.http_host, cfg.http_port,
                                 header_timeout_s=cfg.header_timeout_s,
                                 max_connections_per_client=cfg.max_connections_per_client)
        server = IngressGrpcServer(oip, cfg, cfg.http_host, cfg.grpc_port) if cfg.grpc_port else None
        replica = InProcessReplica(
            cfg=cfg, loop=loop, stages=link, watcher=watcher, plane=plane, http=http, grpc=server,
            base=f"http://{cfg.http_host}:{cfg.http_port}",
            grpc_address=f"{cfg.http_host}:{cfg.grpc_port}" if server else None, gate=gate,
            _metrics_were_enabled=metrics_were_enabled,
            _protocols=[(OIP_PREFIX, OIP_ROUTES, OipRest(oip, cfg)), (UI_PREFIX, UI_ROUTES, TryItPage()),
                        ("", V1_ROUTES, V1Http(plane, cfg))])
        await http.start()
        if server is not None:
            await server.start()
        return replica

    try:
        return loop.run(build())
    except BaseException:
        loop.close()
        METRICS.enabled = metrics_were_enabled
        raise


class Reference:
    """The answer computed here: core.local_pipeline.LocalPipeline on the same bytes, with the
    replica's ONNX Runtime settings and a request's parameters (conf, iou, max_det, top_k)."""

    def __init__(self, cfg: PipelineConfig):
        self._backend = cfg.backend.settings()
        self._pipelines: dict[str, LocalPipeline] = {}

    def __call__(self, path, data: bytes, **params) -> dict:
        pipeline = self._pipelines.get(str(path))
        if pipeline is None:
            pipeline = self._pipelines[str(path)] = LocalPipeline(path, self._backend)
        if params:
            pipeline = copy.copy(pipeline)
            pipeline.params = dataclasses.replace(pipeline.params, **params)
        return pipeline(data)
