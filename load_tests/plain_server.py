"""The peer to beat: the single-process server a vision team would write in an afternoon.

Starlette + uvicorn, one process, the same decode / letterbox / ORT / NMS steps
(`LocalPipeline`), the work on Starlette's thread pool. No Ray, no registry, no admission, no
stages. `make bench` runs it beside the served platform:

    .venv/bin/python -m load_tests.plain_server --model demo_models/detector.onnx --port 8600
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.local_pipeline import LocalPipeline
from core.onnx_backend import BackendSettings


def make_app(pipeline: LocalPipeline) -> Starlette:
    async def predict(request: Request) -> Response:
        data = await request.body()
        result = await run_in_threadpool(pipeline, data)
        body = {"model": request.path_params["name"], "task": pipeline.spec.task, **result}
        return Response(json.dumps(body), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response('{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"]),
                             Route("/healthz", healthz)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8600)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--providers", default="CPUExecutionProvider", help="comma-separated")
    args = ap.parse_args(argv)
    backend = BackendSettings(providers=args.providers.split(","), intra_op_threads=args.intra_op_threads)
    uvicorn.run(make_app(LocalPipeline(args.model, backend)), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
