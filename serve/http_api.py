"""The HTTP contract: routes, request parsing and validation, JSON errors.

Plain functions over Starlette requests, no Ray: the Preprocess deployment (our HTTP
ingress) calls them, and they are unit-tested on their own.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from starlette.requests import Request
from starlette.responses import Response

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    body = {"error": {"code": err.code, "message": err.message}}
    if request_id:
        body["request_id"] = request_id
    return json_response(body, err.status, err.headers)


def shown(text: str, limit: int = 80) -> str:
    """A client-supplied name as echoed in an error: repr'd and cut, so a 10 KB name stays a line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    """The client's x-request-id when it is a sane token, else a new one."""
    rid = request.headers.get("x-request-id", "")
    return rid if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid) else new_request_id()


# -- routing ------------------------------------------------------------------------------
_ROUTES = [
    ("GET", re.compile(r"^/healthz/?$"), "healthz"),
    ("GET", re.compile(r"^/readyz/?$"), "readyz"),
    ("GET", re.compile(r"^/v1/models/?$"), "list_models"),
    ("GET", re.compile(r"^/v1/models/(?P<name>[^/]+)/?$"), "get_model"),
    ("POST", re.compile(r"^/v1/models/(?P<name>[^/]+)/predict/?$"), "predict"),
]


def route(method: str, path: str) -> tuple[str, dict]:
    """(handler name, path params) or ApiError 404/405."""
    allowed = []
    for m, pattern, handler in _ROUTES:
        match = pattern.match(path)
        if match:
            if m == method or (m == "GET" and method == "HEAD"):
                return handler, match.groupdict()
            allowed.append(m)
    if allowed:
        raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {shown(path)}; use {', '.join(allowed)}",
                       {"Allow": ", ".join(allowed)})
    raise ApiError(404, "not_found", f"no route for {method} {shown(path)}")


# -- predict parameters -------------------------------------------------------------------
@dataclass(frozen=True)
class PredictParams:
    conf: float
    iou: float
    max_det: int
    top_k: int


def _number(query, name: str, kind, default, lo, hi, lo_open: bool = False):
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ApiError(422, "invalid_parameter", f"{name}={raw} is out of range {bound}")
    return value


def predict_params(query, defaults, n_classes: int) -> PredictParams:
    """Validate `conf`, `iou`, `max_det`, `top_k` (422 when out of range)."""
    return PredictParams(
        conf=_number(query, "conf", float, defaults.conf, 0.0, 1.0, lo_open=True),
        iou=_number(query, "iou", float, defaults.iou, 0.0, 1.0),
        max_det=_number(query, "max_det", int, defaults.max_det, 1, 10_000),
        top_k=_number(query, "top_k", int, min(defaults.top_k, n_classes), 1, max(n_classes, 1)),
    )


def latency_budget_s(request: Request, default_s: float) -> float:
    """The request's latency budget: `X-Request-Timeout-Ms` header or `timeout_ms` query, else the model's."""
    raw = request.headers.get("x-request-timeout-ms") or request.query_params.get("timeout_ms")
    if not raw:
        return default_s
    return _number({"timeout_ms": raw}, "timeout_ms", int, None, 1, 600_000) / 1000


# -- body ---------------------------------------------------------------------------------
async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without ever holding more, and
    (408) a body that has not fully arrived within `timeout_s`: a client trickling bytes holds no
    slot, but must not hold its request open for ever either."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "payload_too_large", f"body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


# After an error answered before the body was read, how much more of it is read and thrown away.
# Clients such as urllib and requests send the whole body before reading: if the server answers
# and closes while bytes are still arriving, the kernel resets the connection and the client sees
# a reset instead of the JSON error. Reading (and dropping) up to this bound lets it read the
# answer; past the bound the connection is closed, which is all a flood deserves.
DRAIN_LIMIT_BYTES = 256 << 20
DRAIN_TIMEOUT_S = 10.0


async def discard_unread_body(request: Request) -> None:
    """Read and drop what is left of the request body, within DRAIN_LIMIT_BYTES and DRAIN_TIMEOUT_S."""
    if request._stream_consumed:  # noqa: SLF001 - Starlette's own flag: the last body message was read
        return

    async def drain() -> None:
        read = 0
        while read <= DRAIN_LIMIT_BYTES:
            message = await request.receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            read += len(message.get("body", b""))

    try:
        await asyncio.wait_for(drain(), DRAIN_TIMEOUT_S)
    except asyncio.TimeoutError:
        pass


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """Raw image bytes from a raw or multipart body (415 for other content types)."""
    media = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if media in IMAGE_TYPES:
        return body
    if media == "multipart/form-data":
        return _multipart_image(content_type, body)
    raise ApiError(
        415, "unsupported_media_type",
        f"Content-Type {media!r} is not accepted; send image/jpeg, image/png, "
        "application/octet-stream or multipart/form-data with an 'image' field",
    )


def _multipart_image(content_type: str, body: bytes) -> bytes:
    if "boundary=" not in content_type:
        raise ApiError(400, "bad_request", "multipart body without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise ApiError(400, "bad_request", "malformed multipart body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "image":
            payload = part.get_payload(decode=True)
            if payload:
                return payload
    raise ApiError(400, "missing_image", "multipart body has no non-empty 'image' field")
