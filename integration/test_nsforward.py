"""nsforward: relays across network namespaces (what connects each node's speaker to its
cluster's emulated API, and the tests to each speaker's HTTP API)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from integration.lab import netns
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.nsforward import Forwarder, connect_in, in_netns

pytestmark = pytest.mark.lab


class EchoServer:
    """Echoes every line back, prefixed with "echo:"; in the root namespace on port 0."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while data := c.recv(4096):
                c.sendall(b"echo:" + data)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): close() alone leaves it listening
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def _roundtrip(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    return sock.recv(4096)


def test_sockets_are_created_in_the_namespace(lab):
    ns = lab.netns("inode")
    mine = os.readlink("/proc/thread-self/ns/net")
    theirs = in_netns(ns, lambda: os.readlink("/proc/thread-self/ns/net"))
    assert theirs != mine
    assert os.readlink("/proc/thread-self/ns/net") == mine  # the caller never moved


def test_node_namespace_reaches_a_root_service_at_a_fixed_local_address(lab):
    ns = lab.netns("node")
    echo = EchoServer()
    with Forwarder(ns, ("127.0.0.1", 6443), None, ("127.0.0.1", echo.port)):
        with connect_in(ns, ("127.0.0.1", 6443)) as s:
            assert _roundtrip(s, b"hello") == b"echo:hello"
        # the same port in the root namespace is not ours: nothing listens there for us
        r = netns.run(ns, ["ss", "-Htln", "sport = :6443"])
        assert "127.0.0.1:6443" in r.stdout
    echo.close()


def test_root_reaches_a_service_inside_a_namespace(lab):
    ns = lab.netns("svc")
    listener = in_netns(ns, lambda: socket.socket())
    listener.bind(("127.0.0.1", 7472))
    listener.listen(4)

    def serve():
        c, _ = listener.accept()
        c.sendall(b"from-ns:" + c.recv(100))
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    with Forwarder(None, ("127.0.0.1", 0), ns, ("127.0.0.1", 7472)) as fwd:
        assert fwd.port != 0
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as s:
            assert _roundtrip(s, b"x") == b"from-ns:x"
    listener.close()


def test_target_gone_closes_the_clients_connections(lab):
    """An apiserver outage must look like one from the node: open connections end, and
    new ones are closed at once instead of hanging."""
    ns = lab.netns("out")
    echo = EchoServer()
    with Forwarder(ns, ("127.0.0.1", 6443), None, ("127.0.0.1", echo.port)):
        s = connect_in(ns, ("127.0.0.1", 6443))
        assert _roundtrip(s, b"a") == b"echo:a"
        echo.close()  # the target goes away, and cuts its connections
        s.settimeout(5)
        assert s.recv(10) == b""  # the relay propagated the close
        s.close()
        s2 = connect_in(ns, ("127.0.0.1", 6443))
        s2.settimeout(5)
        try:
            assert s2.recv(10) == b""  # accepted, then closed: the target refuses
        except ConnectionResetError:
            pass
        s2.close()


def test_close_stops_listening_and_cuts_relays(lab):
    ns = lab.netns("cls")
    echo = EchoServer()
    fwd = Forwarder(ns, ("127.0.0.1", 6443), None, ("127.0.0.1", echo.port)).start()
    s = connect_in(ns, ("127.0.0.1", 6443))
    assert _roundtrip(s, b"b") == b"echo:b"
    fwd.close()
    s.settimeout(5)
    assert s.recv(10) == b""
    s.close()
    with pytest.raises(ConnectionRefusedError):
        connect_in(ns, ("127.0.0.1", 6443), timeout=2)
    echo.close()
