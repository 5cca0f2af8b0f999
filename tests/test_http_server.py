"""The ingress's own HTTP server (serve/http_server.py) on a real socket, without Ray: clients
that send nothing or too many connections hold nothing for long, and get the API's JSON."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import pytest
from starlette.responses import JSONResponse

from serve.app_deploy import free_port
from serve.http_api import new_request_id
from serve.http_server import IngressHttpServer

HEADER_TIMEOUT_S = 0.5
PER_CLIENT = 3


@pytest.fixture(scope="module")
def server_port():
    async def handle(request):
        return JSONResponse({"path": request.url.path})

    port = free_port()
    loop = asyncio.new_event_loop()
    server = IngressHttpServer(handle, "127.0.0.1", port, header_timeout_s=HEADER_TIMEOUT_S,
                               max_connections_per_client=PER_CLIENT)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield port
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def read_all(s: socket.socket, timeout: float = 5.0) -> str:
    s.settimeout(timeout)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out.decode(errors="replace")


def json_error(answer: str) -> tuple[str, dict]:
    head, _, body = answer.partition("\r\n\r\n")
    assert "content-type: application/json" in head.lower(), head
    error = json.loads(body)
    assert error["request_id"] and f"x-request-id: {error['request_id']}" in head.lower(), answer
    return head, error


def get(s: socket.socket, path: str = "/x") -> str:
    """One whole response on a kept-alive connection: the head and body may come in separate
    segments, so read until Content-Length is satisfied (a lone recv can stop after the head)."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(5)
    out = b""
    while True:
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return out.decode()
        chunk = s.recv(65536)
        if not chunk:
            return out.decode()
        out += chunk


@pytest.mark.parametrize("sent", [b"", b"GET /x HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half the headers"])
def test_a_connection_without_complete_headers_gets_a_json_408_and_is_closed(server_port, sent):
    with socket.create_connection(("127.0.0.1", server_port)) as s:
        t0 = time.monotonic()
        s.sendall(sent)
        answer = read_all(s)  # returns when the server closes
        waited = time.monotonic() - t0
    head, error = json_error(answer)
    assert head.startswith("HTTP/1.1 408") and error["error"]["code"] == "request_timeout", answer
    assert HEADER_TIMEOUT_S * 0.8 < waited < HEADER_TIMEOUT_S + 2, waited


def test_a_kept_alive_connection_is_not_cut_between_requests_by_the_header_timer(server_port):
    with socket.create_connection(("127.0.0.1", server_port)) as s:
        assert get(s).startswith("HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 2)  # idle between requests: uvicorn's keep-alive (5 s) governs
        assert get(s, "/y").startswith("HTTP/1.1 200")


def test_more_connections_than_the_per_client_limit_get_a_json_503(server_port):
    held = [socket.create_connection(("127.0.0.1", server_port)) for _ in range(PER_CLIENT)]
    try:
        for s in held:
            assert get(s).startswith("HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", server_port)) as extra:
            head, error = json_error(read_all(extra))
        assert head.startswith("HTTP/1.1 503") and error["error"]["code"] == "too_many_connections"
        assert "retry-after:" in head.lower()
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server sees the close asynchronously
            with socket.create_connection(("127.0.0.1", server_port)) as again:
                answer = get(again)
            if answer.startswith("HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.startswith("HTTP/1.1 200"), answer
    finally:
        for s in held:
            s.close()


def test_new_request_ids_are_32_hex_digits_and_do_not_repeat():
    ids = [new_request_id() for _ in range(20000)]
    assert all(len(rid) == 32 and set(rid) <= set("0123456789abcdef") for rid in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_request_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != new_request_id()
