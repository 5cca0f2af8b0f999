"""Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` (KServe v2 / Triton),
and Triton's bidirectional `ModelStreamInfer` for camera streams.

A grpc.aio server in the ingress replica's own event loop, on the app's `grpc_port`, shared by
the node's ingress replicas (gRPC binds with SO_REUSEPORT), beside the own HTTP port and for the
same reason (docs/design/dataplane.md: Serve's gRPC proxy would add its hop to every call).
Parses and encodes only: serve/protocols/oip.py says what the requests mean.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from core import errors
from core.errors import DataPlaneError
from core.text import one_line
from deployments.dataplane import RequestRecord
from serve.http_api import new_request_id
from serve.protocols import inference_pb2 as pb
from serve.protocols import inference_pb2_grpc as pb_grpc
from serve.protocols.oip import (
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    InferResponse,
    Oip,
    RequestedOutput,
    raw_bytes,
    serialize_bytes,
    server_version,
    tensor_from_raw,
)
from serve.protocols.streams import LatestFrames, StreamStats

log = logging.getLogger("ray.serve")

# A request without a gRPC deadline gets the app's latency budget; one with a deadline, that
# deadline, up to this.
MAX_BUDGET_S = 600.0


def grpc_code(err: DataPlaneError) -> grpc.StatusCode:
    """The error's kind as a gRPC status (core/errors.py's table names it)."""
    return grpc.StatusCode[err.grpc_code_name]


def _param_value(p: pb.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _set_param(target, key: str, value) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    else:
        target[key].string_param = str(value)


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """An input given in typed `contents` instead of raw bytes, as raw bytes."""
    c = tensor.contents
    if tensor.datatype == "BYTES":
        return serialize_bytes(c.bytes_contents)
    if tensor.datatype == "UINT8":
        return np.asarray(c.uint_contents, np.uint8).tobytes()
    raise errors.invalid_input(f"input {tensor.name!r}: datatype must be BYTES or UINT8, got {tensor.datatype}")


def parse_request(msg: pb.ModelInferRequest) -> InferRequest:
    if msg.raw_input_contents and len(msg.raw_input_contents) != len(msg.inputs):
        raise errors.invalid_input(f"{len(msg.raw_input_contents)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        raw = msg.raw_input_contents[i] if msg.raw_input_contents else _contents(tensor)
        inputs.append(tensor_from_raw(tensor.name, tensor.datatype, list(tensor.shape), raw))
    outputs = []
    for out in msg.outputs:
        k = _param_value(out.parameters["classification"]) if "classification" in out.parameters else None
        outputs.append(RequestedOutput(out.name, True, int(k) if k else None))
    return InferRequest(model=msg.model_name, version=msg.model_version or None, inputs=inputs,
                        outputs=outputs, parameters={k: _param_value(v) for k, v in msg.parameters.items()},
                        id=msg.id)


def encode_response(answer: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
    for key, value in answer.parameters.items():
        _set_param(msg.parameters, key, value)
    for tensor in answer.outputs:
        msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        msg.raw_output_contents.append(raw_bytes(tensor))
    return msg


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, oip: Oip, cfg):
        self.oip, self.cfg = oip, cfg

    async def ServerLive(self, request, context):  # noqa: N802 - the protocol's method names
        return pb.ServerLiveResponse(live=self.oip.live())

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=await self.oip.ready())

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    async def ModelReady(self, request, context):  # noqa: N802
        try:
            return pb.ModelReadyResponse(ready=await self.oip.model_ready(request.name, request.version or None))
        except DataPlaneError as err:
            await self._abort(context, err, new_request_id())

    async def ModelMetadata(self, request, context):  # noqa: N802
        try:
            meta = self.oip.metadata(request.name, request.version or None)
        except DataPlaneError as err:
            await self._abort(context, err, new_request_id())
        msg = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for item in meta["inputs"]:
            msg.inputs.add(**item)
        for item in meta["outputs"]:
            msg.outputs.add(**item)
        return msg

    async def ModelInfer(self, request, context):  # noqa: N802
        rid = _request_id(context, request)
        context.set_trailing_metadata((("x-request-id", rid),))
        try:
            return encode_response(await self._infer(request, rid, context.time_remaining()))
        except DataPlaneError as err:
            await self._abort(context, err, rid)

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        """One camera: frames in, results out in order; stale frames dropped (streams.py)."""
        stats = StreamStats()
        frames = LatestFrames(self.cfg.stream_max_pending, stats)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    frames.put(request)
            finally:
                frames.close()

        reader = asyncio.create_task(read())
        try:
            while (item := await frames.get()) is not None:
                request, arrived = item
                rid = request.id or new_request_id()
                try:
                    msg = encode_response(await self._infer(request, rid, None, arrived))
                except DataPlaneError as err:
                    if err.code in ("overloaded", "deadline_exceeded"):
                        stats.dropped += 1  # a frame the pipeline cannot take now is a stale frame
                        continue
                    stats.failed += 1
                    yield pb.ModelStreamInferResponse(
                        error_message=f"{err.code}: {err.message}",
                        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id))
                    continue
                stats.answered_one()
                for key, value in stats.parameters(round((time.perf_counter() - arrived) * 1000, 2)).items():
                    _set_param(msg.parameters, key, value)
                yield pb.ModelStreamInferResponse(infer_response=msg)
        finally:
            reader.cancel()

    async def _infer(self, request, rid: str, time_remaining: float | None, t0: float | None = None):
        t0 = time.perf_counter() if t0 is None else t0
        record, status = RequestRecord(request_id=rid), 200
        try:
            resolved = self.oip.resolve(request.model_name, request.model_version or None, record)
            budget_s = self.cfg.latency_budget_s if time_remaining is None else min(time_remaining, MAX_BUDGET_S)
            self.oip.plane.admit(resolved, budget_s)
            req = parse_request(request)
            req.id = req.id or rid
            return await self.oip.infer(req, resolved, budget_s, record, t0)
        except DataPlaneError as err:
            status = err.status
            raise
        except Exception as exc:  # noqa: BLE001 - a gRPC status, never UNKNOWN
            log.exception("gRPC request %s failed", rid)
            status = 500
            raise errors.internal_error(one_line(exc)) from None
        finally:
            self.oip.plane.record(record, rid, status, (time.perf_counter() - t0) * 1000)

    @staticmethod
    async def _abort(context, err: DataPlaneError, rid: str):
        metadata = [("x-request-id", rid), ("visionray-error-code", err.code)]
        if err.retry_after_s:
            metadata.append(("retry-after", err.retry_after_s))
        context.set_trailing_metadata(tuple(metadata))
        await context.abort(grpc_code(err), f"{err.code}: {err.message}")


def _request_id(context, request) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return value[:64]
    return request.id[:64] if request.id else new_request_id()


class IngressGrpcServer:
    """The gRPC service on `host:port` in this event loop; every ingress replica of a node binds it."""

    def __init__(self, oip: Oip, cfg, host: str, port: int):
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", cfg.max_body_bytes),
            ("grpc.max_send_message_length", 64 << 20),
        ])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(oip, cfg), self._server)

    async def start(self) -> None:
        try:
            self._server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address} for the visionray gRPC port: {exc} (another program "
                          "has it; set the app's grpc_port, or null for none)") from None
        await self._server.start()
        log.info("visionray gRPC on %s", self.address)

    async def stop(self) -> None:
        await self._server.stop(grace=2)
