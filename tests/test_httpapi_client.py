"""The daemon's HTTP surface and the `status`/`drain` client, over a real loopback socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from bgpspeaker.client import control_request
from bgpspeaker.httpapi import HttpServer, control_routes, route_request, tcp_routes
from bgpspeaker.metrics import Metrics


class FakeDaemonControls:
    """Stands in for the daemon's loop-bound controls; records calls, returns canned state."""

    def __init__(self) -> None:
        self.drained = None
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.is_ready = False

    def healthy(self):
        return True, "ok"

    def ready(self):
        return (True, "ok") if self.is_ready else (False, "waiting for the first Kubernetes sync")

    def status(self):
        return {
            "node": "east-1", "cluster": "east", "ready": self.is_ready, "drain": self.drained, "leader": True,
            "kubernetes": {"synced": True, "stale": False},
            "peers": [{"name": "tor-a", "address": "10.99.1.1", "asn": 64500, "up": True, "since": 1.0,
                       "lastDownReason": None}],
            "routes": [{"service": "demo/web", "prefix": "203.0.113.1/32", "tier": "primary",
                        "nextHop": "10.99.1.2", "med": 100, "localPref": None, "asPath": [64512],
                        "communities": ["64512:100"], "largeCommunities": [], "peers": ["tor-a"]}],
            "skipped": [],
        }

    def drain(self):
        with self.lock:
            self.calls.append("drain")
            self.drained = "withdrawn"  # as if drainSeconds had passed
        return {"drain": "draining", "withdrawAfterSeconds": 0}

    def undrain(self):
        with self.lock:
            self.calls.append("undrain")
            self.drained = None
        return {"drain": None}


@pytest.fixture
def api(tmp_path):
    controls, metrics = FakeDaemonControls(), Metrics()
    metrics.session_up.labels("tor-a").set(1)
    server = HttpServer.tcp("127.0.0.1", 0, tcp_routes(controls, metrics.registry)).start()
    control = HttpServer.unix(str(tmp_path / "control.sock"), control_routes(controls, controls)).start()
    yield server, controls, str(tmp_path / "control.sock")
    server.stop()
    control.stop()


def get(server, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bgpspeaker", *args], capture_output=True, text=True, timeout=60)


def test_metrics_are_prometheus_text_with_the_contract_names(api):
    server, _, _ = api
    code, body = get(server, "/metrics")
    assert code == 200
    assert 'bgpspeaker_bgp_session_up{peer="tor-a"} 1.0' in body
    for name in ("bgpspeaker_bgp_updates_sent_total", "bgpspeaker_exabgp_restarts_total",
                 "bgpspeaker_event_to_ack_seconds_bucket", "bgpspeaker_config_reloads_total"):
        assert f"# TYPE {name.removesuffix('_bucket').removesuffix('_total')}" in body


def test_readyz_reflects_readiness_and_healthz_is_up(api):
    server, controls, _ = api
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz")[0] == 503
    controls.is_ready = True
    assert get(server, "/readyz") == (200, "ok\n")


def test_unknown_path_is_404_json(api):
    server, _, _ = api
    code, body = get(server, "/nope")
    assert code == 404 and json.loads(body)["error"] == "no such path: /nope"


def test_tcp_refuses_every_control_request_and_changes_nothing(api):
    """Issue 14: POST /drain on the node's port withdrew its routes. TCP is read-only now."""
    server, controls, _ = api
    assert get(server, "/drain", "POST")[0] == 404
    assert get(server, "/undrain", "POST")[0] == 404
    assert get(server, "/status")[0] == 404  # every namespace's Services: control socket only
    code, _ = get(server, "/metrics", "POST")
    assert code == 405
    assert controls.calls == [] and controls.drained is None


def test_route_request_is_exact_about_paths_and_methods():
    from bgpspeaker.httpapi import Route
    routes = {"/healthz": Route("GET", lambda: (200, b"", "text/plain"))}
    assert route_request(b"GET /healthz?x=1 HTTP/1.1", routes)[0] is routes["/healthz"]
    assert route_request(b"DELETE /healthz HTTP/1.1", routes)[1].startswith(b"HTTP/1.1 405 ")
    assert route_request(b"GET /healthz/ HTTP/1.1", routes)[1].startswith(b"HTTP/1.1 404 ")
    assert route_request(b"GET /healthz", routes)[1].startswith(b"HTTP/1.1 400 ")
    assert route_request(b"\xff\xfe", routes)[1].startswith(b"HTTP/1.1 400 ")


def test_control_socket_is_mode_0600_and_serves_status_drain_undrain(api):
    import os
    import stat
    _, controls, path = api
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    code, body = control_request(path, "/status")
    assert code == 200 and json.loads(body)["node"] == "east-1"
    assert control_request(path, "/drain")[0] == 405  # GET does not drain
    assert control_request(path, "/drain", "POST")[0] == 200 and controls.calls == ["drain"]


def test_status_command_prints_peers_and_routes(api):
    _, _, path = api
    result = cli("status", "--socket", path)
    assert result.returncode == 0, result.stderr
    assert "tor-a" in result.stdout and "up" in result.stdout
    assert "demo/web" in result.stdout and "203.0.113.1/32" in result.stdout and "64512:100" in result.stdout


def test_drain_wait_returns_once_withdrawn_and_undrain_undoes(api):
    _, controls, path = api
    result = cli("drain", "--wait", "--socket", path)
    assert result.returncode == 0, result.stderr
    assert "every route withdrawn" in result.stdout
    assert cli("undrain", "--socket", path).returncode == 0
    assert controls.calls == ["drain", "undrain"] and controls.drained is None


def test_unreachable_daemon_exits_1_with_a_clear_message(tmp_path):
    result = cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert result.returncode == 1
    assert "unreachable" in result.stderr


def test_a_client_hanging_up_mid_answer_is_not_an_error(api, caplog):
    """Probes time out and close; that must not log errors (operators alert on level=error)."""
    import socket
    server, _, _ = api
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # SO_LINGER 0: close sends RST, so the server's write fails with a connection error.
    assert get(server, "/healthz")[0] == 200  # still serving
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def _threads() -> int:
    return threading.active_count()


def test_300_slow_clients_leave_threads_bounded_and_healthz_answers(api):
    """Issue 14: 300 half-sent requests kept 300 handler threads alive and the probe waited.
    Now they cost a file descriptor each; the thread count does not move and /healthz answers."""
    import socket
    import time
    server, _, _ = api
    before = _threads()
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends the head
            slow.append(sock)
        started = time.monotonic()
        assert get(server, "/healthz") == (200, "ok\n")
        assert time.monotonic() - started < 2.0, "the probe waited behind the slow clients"
        assert get(server, "/metrics")[0] == 200  # and the workers are free
        assert _threads() <= before + 2, (before, _threads())  # at most the two metrics workers
    finally:
        for sock in slow:
            sock.close()


def test_a_slow_client_is_cut_off_at_its_deadline(api, monkeypatch):
    import socket
    import time
    from bgpspeaker import httpapi
    server, _, _ = api
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, not by us
        assert httpapi.REQUEST_SECONDS - 0.1 <= time.monotonic() - started <= httpapi.REQUEST_SECONDS + 2
