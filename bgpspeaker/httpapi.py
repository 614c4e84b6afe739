"""The daemon's HTTP surface on `metrics.address`: /metrics /healthz /readyz /status, POST /drain /undrain.

A stdlib threading server rather than an async framework: it serves a handful of
requests a minute (Prometheus scrapes, probes, an operator's `bgpspeaker status`), must
keep answering /healthz even if the daemon's event loop is busy, and should add no
dependency. Handlers never touch daemon state directly: they ask a `Controls` object,
which the daemon implements by running the request on its own loop (one owner of state).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Controls(Protocol):
    def healthy(self) -> tuple[bool, str]: ...
    def ready(self) -> tuple[bool, str]: ...
    def status(self) -> dict[str, Any]: ...
    def drain(self) -> dict[str, Any]: ...
    def undrain(self) -> dict[str, Any]: ...


class HttpApi:
    def __init__(self, host: str, port: int, controls: Controls, registry: CollectorRegistry) -> None:
        self.controls, self.registry = controls, registry
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "bgpspeaker"

            def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(api.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, text = api.controls.healthy() if path == "/healthz" else api.controls.ready()
                    self._send(200 if ok else 503, (text + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/status":
                    self._json(200, api.controls.status())
                else:
                    self._json(404, {"error": f"no such path: {path}"})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                actions = {"/drain": api.controls.drain, "/undrain": api.controls.undrain}
                if path not in actions:
                    self._json(404, {"error": f"no such path: {path}"})
                    return
                self._json(200, actions[path]())

            def _json(self, code: int, body: Any) -> None:
                self._send(code, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except ConnectionError:  # the client hung up (a probe that timed out): nothing to answer
                    log.debug("http client disconnected")
                    self.close_connection = True
                except Exception:  # a failing handler must not kill the server thread
                    log.exception("http handler failed")
                    try:
                        self._json(500, {"error": "internal error, see the daemon's log"})
                    except Exception:
                        pass

            def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s: not worth a log line
                log.debug("http %s", format % args)

        return Handler
