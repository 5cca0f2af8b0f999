"""`visionray up` refuses clearly, before starting anything, when the machine can't host it.

The happy path (a Ray head, the registry, `serve deploy`, a sample request) is what
`make up` does; these tests cover the failures a new user meets first. Each points the
platform at a temp .data dir and at ports the test controls, so a running `make up` on
the same machine is neither needed nor disturbed.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from serve.app_deploy import free_port
from visionray import platform


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    data = tmp_path / ".data"
    monkeypatch.setattr(platform, "DATA_DIR", data)
    monkeypatch.setattr(platform, "STATE_FILE", data / "platform.json")
    monkeypatch.setattr(platform, "LOG_DIR", data / "logs")
    monkeypatch.setattr(platform, "HTTP_PORT", free_port())
    monkeypatch.setattr(platform, "SERVE_PROXY_PORT", free_port())
    monkeypatch.setattr(platform, "DASHBOARD_PORT", free_port())
    return data


@pytest.fixture
def listening():
    """Occupies a port the way another program would."""
    sockets = []

    def occupy(port: int) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        sockets.append(s)

    yield occupy
    for s in sockets:
        s.close()


def test_up_refuses_a_busy_http_port(isolated, listening, capsys):
    listening(platform.HTTP_PORT)
    assert platform.up() == 1
    err = capsys.readouterr().err
    assert f"error: port {platform.HTTP_PORT} (HTTP) is in use by another program" in err
    assert not platform.STATE_FILE.exists(), "nothing may have been started"


def test_up_names_another_ray_cluster_on_the_dashboard_port(isolated, capsys):
    class FakeRayDashboard(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = json.dumps({"ray_version": "2.60.0"}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", platform.DASHBOARD_PORT), FakeRayDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert platform.up() == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "another Ray cluster (not the one this checkout's `visionray up` started)" in err
    assert str(platform.DASHBOARD_PORT) in err


def test_up_refuses_a_full_disk(isolated, monkeypatch, capsys):
    monkeypatch.setattr(platform, "MIN_FREE_DISK_BYTES", 1 << 60)
    assert platform.up() == 1
    err = capsys.readouterr().err
    assert "MiB free on the disk of" in err and str(isolated) in err


def test_down_and_status_when_nothing_runs(isolated, capsys):
    assert platform.down() == 0
    assert platform.status() == 1
    out = capsys.readouterr().out
    assert "not running" in out
