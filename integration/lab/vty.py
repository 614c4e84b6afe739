"""Talk to an FRR daemon through its vty unix socket, without spawning vtysh.

Why: `vtysh -c ...` costs ~20 ms per call (a process start), the socket ~0.14 ms
(docs/reference/lab-notes.md, re-measured here: 0.07-0.4 ms). Tests that poll the RIB every 20 ms
need the fast path.

Protocol (FRR 8.4, measured): write `command\\0`; the reply is the text followed by
`\\0\\0\\0` and one status byte (0 ok, 1 warning, 2 unknown command, 3 ambiguous,
4 incomplete, ...). One connection is one vty session: `enable`, `configure terminal`,
`router bgp N`, ... must share a connection, which `session()` gives.
"""

from __future__ import annotations

import json
import socket
from typing import Iterable


class VtyError(RuntimeError):
    """A command returned a non-zero status; the message has the command and the reply."""


class VtySession:
    """One connection = one vty session (keeps `configure terminal` context)."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def command(self, cmd: str, check: bool = True) -> str:
        self.sock.sendall(cmd.encode() + b"\0")
        buf = bytearray()
        while True:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise VtyError(f"{self.path}: connection closed during {cmd!r}")
            buf += chunk
            # the terminator is three NULs followed by the status byte
            if len(buf) >= 4 and buf[-4:-1] == b"\0\0\0":
                break
        status = buf[-1]
        text = bytes(buf[:-4]).decode(errors="replace")
        if check and status != 0:
            raise VtyError(f"{self.path}: {cmd!r} -> status {status}: {text.strip()}")
        return text

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "VtySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def command(path: str, cmd: str, check: bool = True, timeout: float = 10.0) -> str:
    with VtySession(path, timeout) as s:
        return s.command(cmd, check)


def show_json(path: str, cmd: str, timeout: float = 10.0):
    """Run a `... json` command and parse the answer ({} for an empty answer)."""
    if " json" not in f"{cmd} ":  # FRR also has `... json detail`
        cmd = cmd.rstrip() + " json"
    text = command(path, cmd, timeout=timeout).strip()
    return json.loads(text) if text else {}


def configure(path: str, lines: Iterable[str], timeout: float = 10.0) -> None:
    """Apply config lines (as in a config file, contexts included) in one session."""
    with VtySession(path, timeout) as s:
        s.command("enable")
        s.command("configure terminal")
        for line in lines:
            line = line.strip()
            if line and not line.startswith("!"):
                s.command(line)
        s.command("end")
