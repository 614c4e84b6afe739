"""`bgpspeaker status`, `drain`, `undrain`: talk to a running daemon over its control socket.

The control socket (/run/bgpspeaker/control.sock, mode 0600) is the only way to change a
node's announcements: the TCP port serves metrics and probes only (httpapi.py). These
commands run in the speaker's container (`kubectl exec`, the preStop hook) as the
daemon's user, where a short timeout and a clear "unreachable" (exit 1) matter more
than features. Plain http.client over AF_UNIX: no dependency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # nothing else of bgpspeaker is imported: the client starts fast
    from bgpspeaker.model import JSONObject

TIMEOUT_SECONDS = 5.0
WITHDRAW_MARGIN_SECONDS = 15.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def control_request(path: str, target: str, method: str = "GET", timeout: float = TIMEOUT_SECONDS) -> tuple[int, bytes]:
    """One request on the control socket at `path`: (HTTP status, body). OSError if unreachable."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request(method, target, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer: {exc!r}") from None
    finally:
        connection.close()


def _call(path: str, target: str, method: str = "GET") -> Optional[JSONObject]:
    try:
        code, body = control_request(path, target, method)
        if code != 200:
            print(f"bgpspeaker at {path} answered {code}: {body.decode(errors='replace').strip()}", file=sys.stderr)
            return None
        return json.loads(body)
    except (OSError, ValueError) as exc:
        print(f"bgpspeaker at {path} is unreachable: {exc}", file=sys.stderr)
        return None


def format_status(status: JSONObject) -> str:
    lines = [
        f"node {status.get('node')}  cluster {status.get('cluster')}  "
        f"ready {status.get('ready')}  drain {status.get('drain') or 'no'}  "
        f"allocator leader {status.get('leader')}"
    ]
    kube = status.get("kubernetes") or {}
    lines.append(f"kubernetes: synced {kube.get('synced')}  stale {kube.get('stale')}")
    lines.append("")
    lines.append(f"{'PEER':<16} {'ADDRESS':<26} {'ASN':>10}  STATE")
    for peer in status.get("peers", []):
        state = "up" if peer.get("up") else f"down ({peer.get('lastDownReason') or 'never up'})"
        if peer.get("routesHeldBack"):
            state += ", routes held back: it kept resetting the session"
        bfd = peer.get("bfd")
        if bfd:
            state += (
                f"; bfd {bfd['status']}"
                + (f" ({bfd['whyDown']})" if bfd.get("whyDown") else "")
                + f", {bfd.get('transitions', 0)} transitions"
            )
        lines.append(f"{peer['name']:<16} {peer['address']:<26} {peer['asn']:>10}  {state}")
    lines.append("")
    lines.append(f"{'SERVICE':<32} {'PREFIX':<24} {'TIER':<10} {'MED':>5} {'LPREF':>6}  AS-PATH / COMMUNITIES -> PEERS")
    for route in status.get("routes", []):
        extras = " ".join(route.get("communities", []) + route.get("largeCommunities", []))
        lines.append(
            f"{route['service']:<32} {route['prefix']:<24} {route['tier']:<10} "
            f"{'-' if route.get('med') is None else route['med']:>5} "
            f"{'-' if route.get('localPref') is None else route['localPref']:>6}  "
            f"[{' '.join(map(str, route.get('asPath', [])))}] {extras} -> {','.join(route.get('peers', []))}"
        )
    return "\n".join(lines)


def status_command(args: argparse.Namespace) -> int:
    status = _call(args.socket, "/status")
    if status is None:
        return 1
    print(format_status(status))
    return 0


def _post(args: argparse.Namespace, action: str) -> int:
    answer = _call(args.socket, "/" + action, method="POST")
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0


def drain_command(args: argparse.Namespace) -> int:
    answer = _call(args.socket, "/drain", method="POST")
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    if not getattr(args, "wait", False):
        return 0
    # The daemon withdraws after drainSeconds; allow a margin for ExaBGP's acks.
    deadline = time.monotonic() + float(answer.get("withdrawAfterSeconds") or 0) + WITHDRAW_MARGIN_SECONDS
    while time.monotonic() < deadline:
        status = _call(args.socket, "/status")
        if status is None:
            return 1
        if status.get("drain") == "withdrawn":
            print("drained: every route withdrawn")
            return 0
        time.sleep(0.2)
    print("drain did not complete in time", file=sys.stderr)
    return 1


def undrain_command(args: argparse.Namespace) -> int:
    return _post(args, "undrain")
