"""The daemon's two HTTP surfaces: read-only TCP (/metrics /healthz /readyz) and the control socket.

Why two: the TCP port listens on the node's network (a hostNetwork pod), where any pod or
anything routed to a node address can reach it. It therefore serves only what is safe to
show anyone and cannot change anything: GET /metrics, /healthz, /readyz; any other path
is 404 and any other method 405. What changes announcements (drain, undrain) or shows the
whole picture (/status: every namespace's Services, the peers) is served on a Unix socket
in the run directory, mode 0600: only the daemon's own user (the CLI in the same
container, the preStop hook) can open it.

Why a selector loop rather than http.server's thread per connection: a thread per
connection with no timeout let 300 half-sent requests keep 300 threads alive (issue 14).
Here one I/O thread reads every request head without blocking, each connection has a
deadline, at most MAX_CONNECTIONS are open (when full, the oldest that has not finished
sending its request is closed: a slow client cannot lock out the kubelet's probe), and
only complete requests reach a small fixed pool of worker threads. Handlers marked
`inline` (the probes: they read a snapshot, never the daemon's loop) answer on the I/O
thread itself, so /healthz answers even while every worker is busy.

Nothing here calls the daemon's event loop except the control socket's handlers, which
the daemon runs on its loop with a timeout (daemon.py); the TCP side reads plain
snapshots, so no number of requests can stall the reconcile loop.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bgpspeaker.logs import fields
from bgpspeaker.model import JSON

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
MAX_HEAD_BYTES = 8192  # request line + headers; the bodies we accept are empty
REQUEST_SECONDS = 5.0  # from accept to the last byte of the answer
WORKERS = 2
MAX_QUEUED = 16  # complete requests waiting for a worker; beyond that: 503

Answer = tuple[int, bytes, str]  # status, body, content type


class Probes(Protocol):
    """What the TCP side may ask: answered from a snapshot, never by waiting on the daemon's loop."""

    def healthy(self) -> tuple[bool, str]: ...
    def ready(self) -> tuple[bool, str]: ...


class Controls(Protocol):
    """What the control socket may ask; the daemon runs each on its loop (with a timeout)."""

    def status(self) -> dict[str, JSON]: ...
    def drain(self) -> dict[str, JSON]: ...
    def undrain(self) -> dict[str, JSON]: ...


@dataclass(frozen=True)
class Route:
    method: str
    handler: Callable[[], Answer]
    inline: bool = False  # answer on the I/O thread (cheap, never blocks)


def text_answer(ok_text: tuple[bool, str]) -> Answer:
    ok, text = ok_text
    return (200 if ok else 503), (text + "\n").encode(), "text/plain; charset=utf-8"


def json_answer(body: JSON, code: int = 200) -> Answer:
    return code, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), "application/json"


def tcp_routes(probes: Probes, registry: CollectorRegistry) -> dict[str, Route]:
    return {
        "/metrics": Route("GET", lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST)),
        "/healthz": Route("GET", lambda: text_answer(probes.healthy()), inline=True),
        "/readyz": Route("GET", lambda: text_answer(probes.ready()), inline=True),
    }


def control_routes(probes: Probes, controls: Controls) -> dict[str, Route]:
    return {
        "/status": Route("GET", lambda: json_answer(controls.status())),
        "/drain": Route("POST", lambda: json_answer(controls.drain())),
        "/undrain": Route("POST", lambda: json_answer(controls.undrain())),
        "/healthz": Route("GET", lambda: text_answer(probes.healthy()), inline=True),
        "/readyz": Route("GET", lambda: text_answer(probes.ready()), inline=True),
    }


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def render_answer(answer: Answer, allow: Optional[str] = None) -> bytes:
    code, body, content_type = answer
    head = [
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}",
        "Server: bgpspeaker",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        head.append(f"Allow: {allow}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def route_request(head: bytes, routes: dict[str, Route]) -> tuple[Optional[Route], bytes]:
    """(the route to run, b"") or (None, the complete error answer). Pure: unit-tested."""
    try:
        method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return None, render_answer(json_answer({"error": "malformed request line"}, 400))
    path = target.split("?", 1)[0]
    route = routes.get(path)
    if route is None:
        return None, render_answer(json_answer({"error": f"no such path: {path[:200]}"}, 404))
    if method != route.method:
        return None, render_answer(json_answer({"error": f"{path} takes {route.method} only"}, 405), allow=route.method)
    return route, b""


class _Connection:
    __slots__ = ("sock", "inbox", "outbox", "deadline", "accepted", "busy")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = b""
        self.accepted = time.monotonic()
        self.deadline = self.accepted + REQUEST_SECONDS
        self.busy = False  # a worker is computing its answer


class HttpServer:
    """One listening socket (TCP or Unix), one I/O thread, a fixed worker pool. See the module doc."""

    def __init__(self, listener: socket.socket, routes: dict[str, Route], name: str) -> None:
        self.listener, self.routes, self.name = listener, routes, name
        listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        self._connections: dict[int, _Connection] = {}
        self._done: list[tuple[_Connection, bytes]] = []  # answers from workers, taken by the I/O thread
        self._lock = threading.Lock()
        self._queued = 0
        self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=f"{name}-worker")
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @classmethod
    def tcp(cls, host: str, port: int, routes: dict[str, Route], name: str = "http") -> "HttpServer":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        return cls(sock, routes, name)

    @classmethod
    def unix(cls, path: str, routes: dict[str, Route], name: str = "control") -> "HttpServer":
        """A socket file only our user may open: created under umask 0o177 and checked, so
        it is never, even briefly, connectable by another user."""
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # left by a previous run in the same directory
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        return cls(sock, routes, name)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(timeout=2)
        self._workers.shutdown(wait=False, cancel_futures=True)
        if self.listener.family == socket.AF_UNIX:
            try:
                os.unlink(self.listener.getsockname())
            except OSError:
                pass
        self.listener.close()

    # --- the I/O thread ---------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass

    def _serve(self) -> None:
        try:
            while not self._stop:
                for key, events in self._selector.select(timeout=0.5):
                    try:
                        if key.fileobj is self.listener:
                            self._accept()
                        elif key.data == "wakeup":
                            self._wakeup_r.recv(4096)
                        elif events & selectors.EVENT_READ:
                            self._read(key.data)
                        elif events & selectors.EVENT_WRITE:
                            self._write(key.data)
                    except Exception:  # one bad connection must never end the server
                        log.exception("http connection failed", extra=fields(server=self.name))
                        if isinstance(key.data, _Connection):
                            self._close(key.data)
                self._take_answers()
                self._expire()
        finally:
            for connection in list(self._connections.values()):
                self._close(connection)
            self._selector.close()

    def _accept(self) -> None:
        for _ in range(64):  # a burst at most per wakeup; the rest wait in the backlog
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: keep serving those we have
                log.warning("http accept failed", extra=fields(server=self.name, error=exc))
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                self._evict_oldest_idle()
            if len(self._connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock)
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _evict_oldest_idle(self) -> None:
        waiting = [c for c in self._connections.values() if not c.busy and not c.outbox]
        if waiting:
            self._close(min(waiting, key=lambda c: c.accepted))

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        if connection.busy or connection.outbox:
            return  # one request per connection; anything after it is ignored
        connection.inbox += data
        end = connection.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.inbox) > MAX_HEAD_BYTES:
                self._answer(connection, render_answer(json_answer({"error": "request head too large"}, 431)))
            return
        route, error = route_request(bytes(connection.inbox[:end]), self.routes)
        if route is None:
            self._answer(connection, error)
        elif route.inline:
            self._answer(connection, self._run(route))
        else:
            with self._lock:
                if self._queued >= MAX_QUEUED:
                    full = True
                else:
                    full = False
                    self._queued += 1
            if full:
                self._answer(connection, render_answer(json_answer({"error": "busy"}, 503)))
                return
            connection.busy = True
            self._workers.submit(self._work, connection, route)

    def _run(self, route: Route) -> bytes:
        try:
            return render_answer(route.handler())
        except Exception:
            log.exception("http handler failed", extra=fields(server=self.name))
            return render_answer(json_answer({"error": "internal error, see the daemon's log"}, 500))

    def _work(self, connection: _Connection, route: Route) -> None:
        answer = self._run(route)
        with self._lock:
            self._queued -= 1
            self._done.append((connection, answer))
        self._wake()

    def _take_answers(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for connection, answer in done:
            connection.busy = False
            if self._connections.get(connection.sock.fileno()) is connection:
                self._answer(connection, answer)

    def _answer(self, connection: _Connection, answer: bytes) -> None:
        connection.outbox = answer
        self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client hung up (a probe that timed out): nothing to answer
            self._close(connection)
            return
        connection.outbox = connection.outbox[sent:]
        if not connection.outbox:
            self._close(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self._connections.values() if c.deadline < now]:
            if connection.busy:
                continue  # its worker answers (or fails) soon; the pool is bounded anyway
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        if fd >= 0 and self._connections.get(fd) is connection:
            del self._connections[fd]
            try:
                self._selector.unregister(connection.sock)
            except (KeyError, ValueError):
                pass
        try:
            connection.sock.close()
        except OSError:
            pass
