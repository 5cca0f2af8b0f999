"""Open Inference Protocol v2 over REST (/v2, KServe v2 / Triton), with Triton's binary tensor
data extension (`Inference-Header-Content-Length`). Parses and encodes only: serve/protocols/oip.py
says what the requests mean."""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import Response

from core import errors
from core.errors import DataPlaneError
from deployments.dataplane import RequestRecord
from serve.http_api import json_bytes, json_response, latency_budget_s, read_body, routes
from serve.protocols.oip import (
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    InferResponse,
    Oip,
    RequestedOutput,
    json_data,
    raw_bytes,
    server_version,
    tensor_from_json,
    tensor_from_raw,
)

PREFIX = "/v2"
_MODEL = r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES = routes(
    ("GET", r"^/v2/?$", "server_metadata"),
    ("GET", r"^/v2/health/live/?$", "live"),
    ("GET", r"^/v2/health/ready/?$", "ready"),
    ("GET", _MODEL + r"/?$", "model_metadata"),
    ("GET", _MODEL + r"/ready/?$", "model_ready"),
    ("POST", _MODEL + r"/infer/?$", "infer"),
)
HEADER_LENGTH = "inference-header-content-length"


def error_response(err: DataPlaneError, request_id: str | None = None) -> Response:
    """OIP's error body, `{"error": "<message>"}`, plus the platform's `code` and `request_id`."""
    body = {"error": err.message, "code": err.code}
    if request_id:
        body["request_id"] = request_id
    return json_response(body, err.status, err.headers)


class OipRest:
    predict_handlers = {"infer"}
    error_response = staticmethod(error_response)

    def __init__(self, oip: Oip, cfg):
        self.oip, self.cfg = oip, cfg

    async def server_metadata(self, request: Request, rid: str, record: RequestRecord) -> Response:
        return json_response({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})

    async def live(self, request: Request, rid: str, record: RequestRecord) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request, rid: str, record: RequestRecord) -> Response:
        # OIP: the status is the answer, 200 ready and 4xx not.
        ready = await self.oip.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def model_metadata(self, request: Request, rid: str, record: RequestRecord, name: str,
                             version: str | None = None) -> Response:
        return json_response(self.oip.metadata(name, version))

    async def model_ready(self, request: Request, rid: str, record: RequestRecord, name: str,
                          version: str | None = None) -> Response:
        ready = await self.oip.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 400)

    async def infer(self, request: Request, rid: str, record: RequestRecord, name: str,
                    version: str | None = None) -> Response:
        t0 = time.perf_counter()
        resolved = self.oip.resolve(name, version, record)
        budget_s = latency_budget_s(request, self.cfg.latency_budget_s)
        self.oip.plane.admit(resolved, budget_s)  # before reading: a refusal should cost nothing
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise errors.unsupported_media_type(f"Content-Encoding {encoding!r} is not accepted; "
                                                "send the request uncompressed (images are compressed already)")
        body = await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)
        req = parse_infer_request(name, version, body, request.headers.get(HEADER_LENGTH))
        req.id = req.id or rid
        answer = await self.oip.infer(req, resolved, budget_s, record, t0)
        return encode_infer_response(answer, req)


def parse_infer_request(name: str, version: str | None, body: bytes, header_length: str | None) -> InferRequest:
    """The JSON part (all of the body, or its first `Inference-Header-Content-Length` bytes) and
    the binary tensors after it, in the order of the inputs that declare `binary_data_size`."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise errors.invalid_input(f"{HEADER_LENGTH}: {header_length!r} is not a number") from None
        if not 0 <= split <= len(body):
            raise errors.invalid_input(f"{HEADER_LENGTH} is {split}, but the body has {len(body)} bytes")
    else:
        split = len(body)
    try:
        doc = json.loads(body[:split])
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.invalid_input(f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise errors.invalid_input('the request must be a JSON object with an "inputs" list')
    binary, at, inputs = memoryview(body)[split:], 0, []
    for item in doc["inputs"]:
        if not isinstance(item, dict):
            raise errors.invalid_input("each input must be an object with name, datatype, shape and data")
        tname, datatype, shape = item.get("name", ""), item.get("datatype"), item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise errors.invalid_input(f"input {tname!r}: shape must be a list of integers")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise errors.invalid_input(f"input {tname!r}: binary_data_size {size!r} runs past the body's "
                                           "binary part")
            inputs.append(tensor_from_raw(tname, datatype, shape, binary[at:at + size]))
            at += size
        elif "data" in item:
            inputs.append(tensor_from_json(tname, datatype, shape, item["data"]))
        else:
            raise errors.invalid_input(f"input {tname!r} has neither data nor binary_data_size")
    parameters = doc.get("parameters") or {}
    default_binary = bool(parameters.get("binary_data_output", False))
    outputs = []
    for item in doc.get("outputs") or []:
        params = (item or {}).get("parameters") or {}
        outputs.append(RequestedOutput(str(item.get("name", "")), bool(params.get("binary_data", default_binary)),
                                       _int_or_none(params.get("classification"))))
    return InferRequest(model=name, version=version, inputs=inputs, outputs=outputs, parameters=parameters,
                        id=str(doc.get("id", "") or ""), binary_outputs=default_binary)


def encode_infer_response(answer: InferResponse, req: InferRequest) -> Response:
    """JSON, with the outputs asked for as binary data after it (then the header says where)."""
    binary_of = {o.name: o.binary for o in req.outputs}
    default_binary = req.binary_outputs
    outputs, chunks = [], []
    for tensor in answer.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_of.get(tensor.name, default_binary):
            raw = raw_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_data(tensor)
        outputs.append(entry)
    doc = {"model_name": answer.model, "model_version": answer.version, "id": answer.id,
           "parameters": answer.parameters, "outputs": outputs}
    head = json_bytes(doc)
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def _int_or_none(value) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        raise errors.invalid_input(f"classification must be an integer, got {value!r}") from None
