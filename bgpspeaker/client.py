"""`bgpspeaker status`, `drain`, `undrain`: talk to a running daemon over its HTTP API.

Plain urllib: these run on an operator's terminal or in a preStop hook, where a short
timeout and a clear "unreachable" (exit 1) matter more than features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional

TIMEOUT_SECONDS = 5.0
WITHDRAW_MARGIN_SECONDS = 15.0


def _call(url: str, method: str = "GET") -> Optional[dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"bgpspeaker at {url} is unreachable: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return None


def format_status(status: dict[str, Any]) -> str:
    lines = [f"node {status.get('node')}  cluster {status.get('cluster')}  "
             f"ready {status.get('ready')}  drain {status.get('drain') or 'no'}  "
             f"allocator leader {status.get('leader')}"]
    kube = status.get("kubernetes") or {}
    lines.append(f"kubernetes: synced {kube.get('synced')}  stale {kube.get('stale')}")
    lines.append("")
    lines.append(f"{'PEER':<16} {'ADDRESS':<26} {'ASN':>10}  STATE")
    for peer in status.get("peers", []):
        state = "up" if peer.get("up") else f"down ({peer.get('lastDownReason') or 'never up'})"
        if peer.get("routesHeldBack"):
            state += ", routes held back: it kept resetting the session"
        lines.append(f"{peer['name']:<16} {peer['address']:<26} {peer['asn']:>10}  {state}")
    lines.append("")
    lines.append(f"{'SERVICE':<32} {'PREFIX':<24} {'TIER':<10} {'MED':>5} {'LPREF':>6}  AS-PATH / COMMUNITIES -> PEERS")
    for route in status.get("routes", []):
        extras = " ".join(route.get("communities", []) + route.get("largeCommunities", []))
        lines.append(
            f"{route['service']:<32} {route['prefix']:<24} {route['tier']:<10} "
            f"{'-' if route.get('med') is None else route['med']:>5} "
            f"{'-' if route.get('localPref') is None else route['localPref']:>6}  "
            f"[{' '.join(map(str, route.get('asPath', [])))}] {extras} -> {','.join(route.get('peers', []))}")
    return "\n".join(lines)


def status_command(args: argparse.Namespace) -> int:
    status = _call(args.url.rstrip("/") + "/status")
    if status is None:
        return 1
    print(format_status(status))
    return 0


def _post(args: argparse.Namespace, action: str) -> int:
    answer = _call(args.url.rstrip("/") + "/" + action, method="POST")
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0


def drain_command(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    answer = _call(base + "/drain", method="POST")
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    if not getattr(args, "wait", False):
        return 0
    # The daemon withdraws after drainSeconds; allow a margin for ExaBGP's acks.
    deadline = time.monotonic() + float(answer.get("withdrawAfterSeconds") or 0) + WITHDRAW_MARGIN_SECONDS
    while time.monotonic() < deadline:
        status = _call(base + "/status")
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
