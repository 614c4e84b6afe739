"""The daemon's HTTP surface and the `status`/`drain` client, over a real loopback socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from bgpspeaker.httpapi import HttpApi
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
def api():
    controls, metrics = FakeDaemonControls(), Metrics()
    metrics.session_up.labels("tor-a").set(1)
    server = HttpApi("127.0.0.1", 0, controls, metrics.registry)
    server.start()
    yield server, controls
    server.stop()


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bgpspeaker", *args], capture_output=True, text=True, timeout=60)


def test_metrics_are_prometheus_text_with_the_contract_names(api):
    server, _ = api
    code, body = get(server, "/metrics")
    assert code == 200
    assert 'bgpspeaker_bgp_session_up{peer="tor-a"} 1.0' in body
    for name in ("bgpspeaker_bgp_updates_sent_total", "bgpspeaker_exabgp_restarts_total",
                 "bgpspeaker_event_to_ack_seconds_bucket", "bgpspeaker_config_reloads_total"):
        assert f"# TYPE {name.removesuffix('_bucket').removesuffix('_total')}" in body


def test_readyz_reflects_readiness_and_healthz_is_up(api):
    server, controls = api
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz")[0] == 503
    controls.is_ready = True
    assert get(server, "/readyz") == (200, "ok\n")


def test_unknown_path_is_404_json(api):
    server, _ = api
    code, body = get(server, "/nope")
    assert code == 404 and json.loads(body)["error"] == "no such path: /nope"


def test_status_command_prints_peers_and_routes(api):
    server, _ = api
    result = cli("status", "--url", f"http://127.0.0.1:{server.port}")
    assert result.returncode == 0, result.stderr
    assert "tor-a" in result.stdout and "up" in result.stdout
    assert "demo/web" in result.stdout and "203.0.113.1/32" in result.stdout and "64512:100" in result.stdout


def test_drain_wait_returns_once_withdrawn_and_undrain_undoes(api):
    server, controls = api
    url = f"http://127.0.0.1:{server.port}"
    result = cli("drain", "--wait", "--url", url)
    assert result.returncode == 0, result.stderr
    assert "every route withdrawn" in result.stdout
    assert cli("undrain", "--url", url).returncode == 0
    assert controls.calls == ["drain", "undrain"] and controls.drained is None


def test_unreachable_daemon_exits_1_with_a_clear_message():
    # Port 9 on loopback: nothing listens there (discard is never enabled on these machines).
    result = cli("status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "unreachable" in result.stderr


def test_a_client_hanging_up_mid_answer_is_not_an_error(api, caplog):
    """Probes time out and close; that must not log errors (operators alert on level=error)."""
    import socket
    server, _ = api
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # SO_LINGER 0: close sends RST, so the server's write fails with a connection error.
    assert get(server, "/healthz")[0] == 200  # still serving
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
