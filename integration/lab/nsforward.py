"""TCP relays across network namespaces, from inside one Python process.

Why: the lab runs one emulated Kubernetes API per cluster inside the test process
(root namespace, 127.0.0.1:<random port>), while each `bgpspeaker run` lives in its
node's namespace and must reach "its" API at a fixed address, as a real node reaches
its apiserver. And the test wants each daemon's HTTP API (127.0.0.1:7472 inside the
node namespace) without forking `ip netns exec curl` for every query.

How: a socket keeps the network namespace it was *created* in, whatever thread later
uses it. So a socket is created in a worker thread that has joined the target
namespace with setns(2) (Python 3.11 has no `os.setns`: libc through ctypes), and is
then used from ordinary threads. setns is per thread; the worker thread joins once and
never leaves, so no thread ever has to switch back (a failed switch-back would leave a
thread of the test process in the wrong namespace). Threads inherit the namespace of
the thread that spawns them, so relay threads are always spawned from root threads.

Trade-off: two threads per relayed connection. The lab has a handful of long-lived
connections (watches, keep-alive), so threads are simpler than an event loop and
cost nothing measurable.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import os
import socket
import threading
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_executors: dict[Optional[str], concurrent.futures.ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _netns_path(ns: str) -> str:
    return ns if ns.startswith("/") else f"/run/netns/{ns}"


def setns(ns: str) -> None:
    """Move the *calling thread* into network namespace `ns` (a name under /run/netns or a path)."""
    fd = os.open(_netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _executor(ns: Optional[str]) -> concurrent.futures.ThreadPoolExecutor:
    with _executors_lock:
        ex = _executors.get(ns)
        if ex is None:
            ex = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"netns-{ns}",
                initializer=(setns if ns else None), initargs=((ns,) if ns else ()))
            _executors[ns] = ex
        return ex


def in_netns(ns: Optional[str], fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run `fn` in a worker thread that lives in namespace `ns` (None: run it here).

    Use it to *create* sockets (and for short blocking calls); use the sockets anywhere.
    """
    if ns is None:
        return fn()
    return _executor(ns).submit(fn).result(timeout)


def forget_netns(ns: str) -> None:
    """Drop the worker thread of `ns` (call before deleting the namespace)."""
    with _executors_lock:
        ex = _executors.pop(ns, None)
    if ex is not None:
        ex.shutdown(wait=False, cancel_futures=True)


def socket_in(ns: Optional[str], family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that belongs to namespace `ns` (None: the caller's)."""
    return in_netns(ns, lambda: socket.socket(family, type))


def connect_in(ns: Optional[str], address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP connection made from namespace `ns`."""
    sock = socket_in(ns, socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class Forwarder:
    """Listen on `listen` inside `listen_ns`; relay each connection to `target` from `target_ns`.

        fwd = Forwarder(node_ns, ("127.0.0.1", 6443), None, ("127.0.0.1", emu.port)).start()
        api = Forwarder(None, ("127.0.0.1", 0), node_ns, ("127.0.0.1", 7472)).start()
        api.port   # the port chosen in the root namespace

    When the target refuses or drops, the client's connection is closed too: an
    emulator outage looks, from the node, exactly like an apiserver that went away.
    """

    def __init__(self, listen_ns: Optional[str], listen: tuple[str, int],
                 target_ns: Optional[str], target: tuple[str, int], name: str = "fwd"):
        self.listen_ns, self.listen = listen_ns, listen
        self.target_ns, self.target = target_ns, target
        self.name = name
        self.port: int = listen[1]
        self._listener: Optional[socket.socket] = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Forwarder":
        def make_listener() -> socket.socket:
            s = socket.socket(socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self.listen)
            s.listen(128)
            return s

        self._listener = in_netns(self.listen_ns, make_listener)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            threading.Thread(target=self._relay, args=(client,), name=f"{self.name}-conn", daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self._track(client)
        try:
            upstream = connect_in(self.target_ns, self.target, timeout=5.0)
        except OSError:
            self._close(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        self._track(upstream)
        t = threading.Thread(target=self._pump, args=(upstream, client), name=f"{self.name}-pump", daemon=True)
        t.start()
        self._pump(client, upstream)
        t.join()
        self._close(client)
        self._close(upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # propagate the close both ways: a half-open relay would hide an outage from the client
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    def drop_connections(self) -> None:
        """Cut every relayed connection (the listener stays)."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> "Forwarder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
