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
    monkeypatch.setattr(platform, "GRPC_PORT", free_port())
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


def _spawn(env_marker: str | None, ignore_sigterm: bool = False, new_session: bool = True):
    """A stand-in for one of the platform's processes: a child that sleeps until it is stopped."""
    import os
    import subprocess
    import sys

    code = ("import signal, sys, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else "")
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    env = dict(os.environ)
    env.pop(platform.PLATFORM_MARKER_ENV, None)
    if env_marker is not None:
        env[platform.PLATFORM_MARKER_ENV] = env_marker
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=new_session)
    assert proc.stdout.readline().strip() == "ready"  # its signal handling is set up
    return proc


def test_down_stops_every_process_of_the_platform_and_only_those(isolated, capsys):
    """`down` finds the platform's processes by the head's session and by the marker every process
    inherits (not by name), SIGTERMs them, SIGKILLs the one that ignores SIGTERM and says so, and
    leaves a process of another checkout alone."""
    head = _spawn(str(platform.DATA_DIR))  # the head: a session of its own
    stubborn = _spawn(str(platform.DATA_DIR), ignore_sigterm=True)  # e.g. a lingering Ray process
    other = _spawn(str(isolated.parent / "elsewhere" / ".data"))
    try:
        platform.DATA_DIR.mkdir(parents=True)
        platform.STATE_FILE.write_text(json.dumps({"pgid": head.pid, "gcs_address": f"127.0.0.1:{free_port()}",
                                                   "temp_dir": str(platform.DATA_DIR / "ray")}))
        assert set(platform.platform_pids(head.pid)) == {head.pid, stubborn.pid}
        assert platform.stop_platform(head.pid, grace_s=1) == {stubborn.pid: stubborn.args[0]}
        assert head.wait(5) == -15 and stubborn.wait(5) == -9
        assert "killed" in capsys.readouterr().out
        assert other.poll() is None, "another checkout's process must not be touched"
        assert platform.platform_pids(head.pid) == {}
    finally:
        for proc in (head, stubborn, other):
            proc.kill()
            proc.wait()


def test_down_waits_for_the_ports_and_removes_the_state(isolated, capsys):
    head = _spawn(str(platform.DATA_DIR))
    try:
        platform.DATA_DIR.mkdir(parents=True)
        platform.STATE_FILE.write_text(json.dumps({"pgid": head.pid, "gcs_address": f"127.0.0.1:{free_port()}",
                                                   "temp_dir": str(platform.DATA_DIR / "ray")}))
        assert platform.down() == 0
        assert head.wait(5) == -15
        assert not platform.STATE_FILE.exists()
        assert capsys.readouterr().out.strip().endswith("stopped")
        assert platform.down() == 0  # a second `down` has nothing to do
    finally:
        head.kill()
        head.wait()
