"""A tiny HTTP responder to put behind a VIP, and a probe that curls it from a client.

Why: the flagship tests send real packets from a client namespace to a VIP and look
at *which* cluster answered. The responder answers every GET with a fixed body such as
`east/east-1` (cluster/node), so the answer names the path the packet took.

- The responder listens on `::` with IPV6_V6ONLY off by default: it answers on every
  address of the node's namespace, IPv4 and IPv6, including VIPs added to `lo` after
  it started (no restart when the speaker moves a VIP).
- `probe()` uses short timeouts (0.3 s): when the tor has no route, it rate-limits ICMP
  unreachables to ~1/s, so every other probe waits for its full timeout (docs/reference/lab-notes.md).
  Wait for the answer you expect with `wait_until`, never a fixed sleep.

Run directly: `python -m integration.lab.http --body east/east-1 [--address A] [--port P]`.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import netns

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- server side

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, body: bytes):
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.body = body
        super().__init__((address, port), _Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # IP_FREEBIND: bind a VIP that is not (yet) on lo
        self.socket.setsockopt(socket.SOL_IP, 15, 1)
        self.server_bind()
        self.server_activate()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server API)
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: stdout is the readiness pipe
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--body", required=True)
    ap.add_argument("--address", default="::")
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args(argv)
    server = _Server(args.address, args.port, args.body.encode())
    print("ready", flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- helpers for tests

def serve(ns: str, body: str, address: str = "::", port: int = 80, lab=None,
          timeout: float = 5.0) -> subprocess.Popen:
    """Start a responder inside `ns` answering `body`; return once it listens.

    The process is registered (stopped by PID with the lab / at exit)."""
    argv = [sys.executable, "-m", "integration.lab.http", "--body", body,
            "--address", address, "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1")
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    proc = lab.popen(ns, argv, **kw) if lab is not None else netns.popen(ns, argv, **kw)
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        netns.stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise netns.LabError(f"http responder in {ns} on [{address}]:{port} did not start: {err.strip()}")
    return proc


def url(address: str, port: int = 80, path: str = "/") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{path}"


def probe(ns: str, target: str, timeout: float = 0.3) -> str | None:
    """GET `target` (a URL, or a bare address for port 80) from inside `ns` with curl.

    Returns the body (stripped), or None on any failure (no route, refused, timeout)."""
    if "://" not in target:
        target = url(target)
    try:
        r = netns.run(ns, ["curl", "-s", "-g", "--noproxy", "*", "--connect-timeout", str(timeout),
                           "-m", str(timeout), target], check=False, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


if __name__ == "__main__":
    main()
