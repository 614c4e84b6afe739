"""The `bgpspeaker` command line: one parser, and the table of the function that runs each command.

The parser lives here so the whole command-line contract (docs/design.md, "Command
line") reads in one place. The handlers are plain imports, visible to "find usages":
the offline commands in offline.py, the daemon's clients in client.py. Only `run`
imports its module when called, so `check-config` or `plan` never pays for (or depends
on) the kubernetes client.

Exit codes: 0 ok, 1 fatal/unreachable (audit: findings), 2 bad config or input, 3 not found (explain).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from bgpspeaker import client, offline


def run_daemon(args: argparse.Namespace) -> int:
    """`bgpspeaker run`: imported here, as the only command that needs the kubernetes client."""
    from bgpspeaker.daemon import run_command

    return run_command(args)


def run_allocator(args: argparse.Namespace) -> int:
    """`bgpspeaker allocator`: the daemon without BGP (MetalLB's controller beside its
    speakers): on the Lease holder, the only writer of Service status, allocation Events
    and allocation records; the DaemonSet's speakers run `run --no-allocator`."""
    from bgpspeaker.daemon import run_command

    args.node_name, args.no_allocator, args.dry_run, args.speaker = args.identity, False, False, False
    return run_command(args)


# command -> the function that runs it: takes the parsed args, returns the exit code.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run_daemon,
    "allocator": run_allocator,
    "check-config": offline.check_config_command,
    "render-exabgp": offline.render_command,
    "plan": offline.plan_command,
    "explain": offline.explain_command,
    "audit": offline.audit_command,
    "status": client.status_command,
    "drain": client.drain_command,
    "undrain": client.undrain_command,
}

DEFAULT_SOCKET = "/run/bgpspeaker/control.sock"  # = client.DEFAULT_SOCKET (not imported: cheap start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgpspeaker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="the daemon")
    run.add_argument("--config", required=True)
    run.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (default: $NODE_NAME)")
    run.add_argument("--kubeconfig", help="default: in-cluster config")
    run.add_argument("--no-allocator", action="store_true", help="never write Service status (announce only)")
    run.add_argument("--dry-run", action="store_true", help="plan and log, but start no ExaBGP")
    run.add_argument(
        "--run-dir",
        default="/run/bgpspeaker",
        help="ExaBGP's config and socket and the control socket (control.sock) live here",
    )
    run.add_argument("--log-level", default="INFO")

    allocator = commands.add_parser("allocator", help="the allocator alone: status, Events, records; no BGP")
    allocator.add_argument("--config", required=True)
    allocator.add_argument(
        "--identity", default=os.environ.get("POD_NAME"), help="the Lease holder's name: the pod's (default: $POD_NAME)"
    )
    allocator.add_argument("--kubeconfig", help="default: in-cluster config")
    allocator.add_argument("--run-dir", default="/run/bgpspeaker", help="its control socket")
    allocator.add_argument("--log-level", default="INFO")

    check = commands.add_parser("check-config", help="validate a config file (several: a fleet, checked together)")
    check.add_argument("config", nargs="+")

    render = commands.add_parser("render-exabgp", help="print the ExaBGP config a node would run")
    render.add_argument("--config", required=True)
    render.add_argument("--node-name", required=True)
    render.add_argument("--objects", required=True, help="YAML with the Node objects (and anything else)")

    plan = commands.add_parser("plan", help="offline: the routes a node would announce")
    plan.add_argument("--config", required=True)
    plan.add_argument("--node-name", required=True)
    plan.add_argument("--objects", required=True, help="multi-document YAML or a List")
    plan.add_argument("--format", choices=("text", "json"), default="text")

    explain = commands.add_parser("explain", help="why a Service is or is not announced from a node")
    explain.add_argument("service", metavar="NS/NAME")
    explain.add_argument("--config", required=True)
    explain.add_argument("--node-name", required=True)
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--objects")
    source.add_argument("--kubeconfig")

    audit = commands.add_parser(
        "audit", help="offline: addresses held by two Services, Services with two addresses, across clusters"
    )
    audit.add_argument(
        "--cluster",
        action="append",
        required=True,
        type=_cluster_pair,
        metavar="CONFIG=OBJECTS",
        help="one cluster's config and object dump; give it once per cluster",
    )
    audit.add_argument("--format", choices=("text", "json"), default="text")

    status = commands.add_parser("status", help="a running daemon's sessions and routes")
    status.add_argument("--socket", default=DEFAULT_SOCKET, help="the daemon's control socket")
    drain = commands.add_parser("drain", help="move traffic away from this node, then withdraw")
    drain.add_argument("--socket", default=DEFAULT_SOCKET, help="the daemon's control socket")
    drain.add_argument("--wait", action="store_true", help="return once the routes are withdrawn (for preStop)")
    undrain = commands.add_parser("undrain", help="undo drain")
    undrain.add_argument("--socket", default=DEFAULT_SOCKET, help="the daemon's control socket")
    return parser


def _cluster_pair(text: str) -> tuple[str, str]:
    config, sep, objects = text.partition("=")
    if not (sep and config and objects):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give CONFIG=OBJECTS (a config file and that cluster's object dump)"
        )
    return config, objects


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bgpspeaker plan ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
