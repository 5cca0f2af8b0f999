"""The HTTP contract: routes, request parsing and validation, JSON errors.

Plain functions over Starlette requests, no Ray: the Ingress deployment (our HTTP
ingress) calls them, and they are unit-tested on their own.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from email.parser import BytesParser
from email.policy import HTTP

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core import errors
from core.errors import DataPlaneError, shown
from core.predict_params import number

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}


def json_bytes(body) -> bytes:
    """Compact JSON. orjson, not json: this runs on the event loop for every answer, and a
    detection answer took json 12.3 us against orjson's 1.4 (2-core EPYC). NaN and infinities come
    out as null (json would write the invalid `NaN`); int keys (batch sizes) as strings, as json."""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        json_bytes(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(err: DataPlaneError, request_id: str | None = None) -> Response:
    body = {"error": {"code": err.code, "message": err.message}}
    if request_id:
        body["request_id"] = request_id
    return json_response(body, err.status, err.headers)


# Request ids need to be unique, not secret. uuid4 reads os.urandom, which releases the GIL:
# on the event loop of a busy replica every release is a wait to take it back from the decode
# and run threads (py-spy on a 2-core EPYC: uuid4 was active in 3 % of the loop's samples and
# held the GIL in none). A Mersenne Twister seeded from the OS makes 128 random bits without a
# release; its own instance, so that no random.seed() elsewhere can make ids repeat, reseeded
# in a forked child so that parent and child never share a sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def request_id(request: Request) -> str:
    """The client's x-request-id when it is a sane token, else a new one."""
    rid = request.headers.get("x-request-id", "")
    return rid if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid) else new_request_id()


# -- routing ------------------------------------------------------------------------------
Routes = list[tuple[str, re.Pattern, str]]  # (method, path pattern, handler name)


def routes(*table: tuple[str, str, str]) -> Routes:
    return [(method, re.compile(pattern), handler) for method, pattern, handler in table]


def route(table: Routes, method: str, path: str) -> tuple[str, dict]:
    """(handler name, path params) or DataPlaneError 404/405."""
    allowed = []
    for m, pattern, handler in table:
        match = pattern.match(path)
        if match:
            if m == method or (m == "GET" and method == "HEAD"):
                return handler, match.groupdict()
            allowed.append(m)
    if allowed:
        raise errors.method_not_allowed(method, path, allowed)
    raise errors.not_found(f"no route for {method} {shown(path)}")


# -- predict parameters -------------------------------------------------------------------
def latency_budget_s(request: Request, default_s: float) -> float:
    """The request's latency budget: `X-Request-Timeout-Ms` header or `timeout_ms` query, else the model's."""
    raw = request.headers.get("x-request-timeout-ms") or request.query_params.get("timeout_ms")
    if not raw:
        return default_s
    return number({"timeout_ms": raw}, "timeout_ms", int, None, 1, 600_000) / 1000


# -- body ---------------------------------------------------------------------------------
async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without ever holding more, and
    (408) a body that has not fully arrived within `timeout_s`: a client trickling bytes holds no
    slot, but must not hold its request open for ever either."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise errors.request_timeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise errors.payload_too_large(f"body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise errors.bad_request("invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.payload_too_large(f"body exceeds the {limit} byte limit")
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
    raise errors.unsupported_media_type(
        f"Content-Type {media!r} is not accepted; send image/jpeg, image/png, "
        "application/octet-stream or multipart/form-data with an 'image' field",
    )


def _multipart_image(content_type: str, body: bytes) -> bytes:
    if "boundary=" not in content_type:
        raise errors.bad_request("multipart body without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise errors.bad_request("malformed multipart body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "image":
            payload = part.get_payload(decode=True)
            if payload:
                return payload
    raise errors.missing_image("multipart body has no non-empty 'image' field")
