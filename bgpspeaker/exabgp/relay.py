"""ExaBGP's `process` helper: a dumb byte relay between ExaBGP's pipes and the daemon's unix socket.

Why: ExaBGP 5.0 has no socket API, and its named pipes carry no session events
(docs/reference/exabgp-api.md §2). Its `process` API does (acks, JSON `neighbor-changes`, `show`
output), but only to a child it spawns itself, with close_fds (no inherited fds). So
ExaBGP runs this relay, which connects back to the daemon's socket by path (§3.1).

Trade-offs:
- No buffering of its own, on purpose: if the daemon stops reading, `sendall` blocks,
  ExaBGP's blocking write blocks and keepalives stop (§7). Buffering here would only
  hide a stuck daemon; the daemon's reader is what must never stall.
- A short connect timeout with retry: an orphaned ExaBGP (daemon gone) respawns the
  relay 5 times per 64 s and then exits (§8); each relay giving up after a few seconds
  makes that happen in seconds, not minutes (docs/reference/lab-notes.md: "give the relay a short
  connect timeout so an orphaned ExaBGP does not linger").
- Nothing else may ever be printed to stdout: ExaBGP parses every line as a command.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

CONNECT_TIMEOUT = 3.0  # seconds of retrying before giving up (the daemon creates the socket before ExaBGP)
RETRY_INTERVAL = 0.05


def connect(path: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            s.connect(path)
            s.settimeout(None)
            return s
        except OSError:
            s.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_INTERVAL)


def relay(sock: socket.socket, fd_in: int, fd_out: int) -> int:
    sel = selectors.DefaultSelector()
    sel.register(fd_in, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in sel.select():
            if key.data == "in":  # ExaBGP -> daemon: acks, events, show output
                data = os.read(fd_in, 65536)
                if not data:
                    return 0
                sock.sendall(data)
            else:  # daemon -> ExaBGP: commands
                data = sock.recv(65536)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    n = os.write(fd_out, view)
                    view = view[n:]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bgpspeaker.exabgp.relay SOCKET", file=sys.stderr)
        return 2
    try:
        sock = connect(argv[1])
    except OSError as exc:
        print(f"bgpspeaker relay: cannot connect to {argv[1]}: {exc}", file=sys.stderr)
        return 1
    try:
        return relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    except (BrokenPipeError, ConnectionResetError):
        return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
