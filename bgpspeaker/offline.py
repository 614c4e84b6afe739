"""The offline commands: `check-config`, `render-exabgp`, `plan`, `explain` and `audit`.

Why it exists: an operator dry-runs a config or annotation change without a cluster or
a router, and the whole core (config → allocate → plan) is tested end to end through
the same entry point users have. This module is the thin I/O shell; every decision is
made by the pure allocator and planner, and `explain` uses the planner's own trail, so
the two commands can never disagree.

`audit` runs the same core on one config and object dump per cluster and compares the
clusters (bgpspeaker/audit.py decides; this module only loads and prints).

One loader for all of them: `load_config` and `load_objects` turn a bad file (unreadable,
not UTF-8, not YAML, an invalid config) into one `bgpspeaker: ...` line on stderr and exit
code 2, whatever the command. `check-config` is the exception by design: its report *is*
its output (stdout), see check_config_command.

Output: `plan --format json` prints exactly the shape of docs/design.md §3.1 on stdout (warnings, which
that shape has no place for, go to stderr); the text format is a table for humans.
Exit codes: 0 ok, 2 bad config / objects / node, 3 Service not found (explain), 1 when
the cluster cannot be read (explain --kubeconfig); audit: 0 clean, 1 findings, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional, Sequence, TextIO

import yaml

from bgpspeaker.allocator import allocate_snapshot
from bgpspeaker.audit import BASIS_NODES, ClusterInput, audit, report_json, report_text
from bgpspeaker.config.load import ConfigError, config_warnings
from bgpspeaker.config.load import load_config as load_config_file
from bgpspeaker.config.warn import fleet_warnings
from bgpspeaker.config.schema import Config
from bgpspeaker.exabgp.render import DEFAULT_SOCKET, RenderError, render_config
from bgpspeaker.model import JSON, NodeView, Snapshot
from bgpspeaker.planner import Explanation, Plan, Skip, explain, plan
from bgpspeaker.records import DEFAULT_NAMESPACE, LOCAL, SHARED
from bgpspeaker.routes_view import route_entries
from bgpspeaker.views import snapshot_from_objects


class _Exit(Exception):
    """Stop the command: `message` goes to stderr as `bgpspeaker: message`, `code` is the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def load_config(path: str) -> Config:
    """The Config in the file at `path`, or _Exit(2) naming every problem."""
    try:
        return load_config_file(path)
    except ConfigError as error:
        raise _Exit(2, f"{path}: invalid config:\n{error}") from None
    except OSError as error:
        raise _Exit(2, f"{path}: cannot read config: {error.strerror or error}") from None


def record_namespaces(config: Config) -> dict[str, str]:
    """Where a cluster with `config` reads its allocation records (store -> namespace): the
    speaker's namespace (POD_NAMESPACE, as in the pod; bgpspeaker-system by default), and
    the shared store's when the config has one."""
    namespaces = {LOCAL: os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE}
    if config.shared_store is not None:
        namespaces[SHARED] = config.shared_store.namespace
    return namespaces


def load_objects(path: str, config: Optional[Config] = None) -> Snapshot:
    """A Snapshot from a multi-document YAML file or a `List` (as `kubectl get -o yaml` prints),
    with the allocation records found where a cluster with `config` reads them."""
    try:
        with open(path, encoding="utf-8") as stream:
            documents = list(yaml.safe_load_all(stream))
    except OSError as error:
        raise _Exit(2, f"{path}: cannot read objects: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise _Exit(2, f"{path}: not UTF-8 text: {error}") from None
    except yaml.YAMLError as error:
        raise _Exit(2, f"{path}: not valid YAML: {error}") from None
    if config is None:
        return snapshot_from_objects(documents)
    return snapshot_from_objects(documents, record_namespaces(config))


def _check_node(snapshot: Snapshot, node_name: str, source: str) -> NodeView:
    if node_name not in snapshot.nodes:
        known = ", ".join(sorted(snapshot.nodes)) or "none"
        raise _Exit(2, f"node {node_name!r} is not among the Nodes in {source} (known: {known})")
    return snapshot.nodes[node_name]


# --- rendering -------------------------------------------------------------------------


def plan_entries(result: Plan) -> list[dict[str, JSON]]:
    """The route entries of docs/design.md §3.1: one per (service, prefix, identical attributes), peers grouped.

    The same function renders the running daemon's /status, so a prediction made with
    `plan` compares line by line with what a node really announces.
    """
    return route_entries(result.routes)


def _skip_entry(skip: Skip) -> dict[str, str]:
    return {"service": skip.service, "reason": skip.reason, "message": skip.message}


def plan_json(node_name: str, result: Plan) -> dict[str, JSON]:
    return {"node": node_name, "routes": plan_entries(result), "skipped": [_skip_entry(s) for s in result.skipped]}


def _table(rows: Sequence[Sequence[str]], out: TextIO, indent: str = "") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def _route_rows(entries: list[dict[str, JSON]]) -> list[list[str]]:
    rows = [
        [
            "SERVICE",
            "PREFIX",
            "TIER",
            "NEXT-HOP",
            "MED",
            "LOCAL-PREF",
            "AS-PATH",
            "COMMUNITIES",
            "LARGE-COMMUNITIES",
            "PEERS",
        ]
    ]
    for e in entries:
        rows.append(
            [
                e["service"],
                e["prefix"],
                e["tier"],
                e["nextHop"],
                "-" if e["med"] is None else str(e["med"]),
                "-" if e["localPref"] is None else str(e["localPref"]),
                " ".join(map(str, e["asPath"])) or "-",
                ",".join(e["communities"]) or "-",
                ",".join(e["largeCommunities"]) or "-",
                ",".join(e["peers"]),
            ]
        )
    return rows


def write_plan_text(node_name: str, result: Plan, out: TextIO) -> None:
    entries = plan_entries(result)
    out.write(f"node {node_name}: {len(entries)} route(s), {len(result.skipped)} skipped\n")
    if entries:
        out.write("\n")
        _table(_route_rows(entries), out)
    for title, items in (("Skipped", result.skipped), ("Warnings", result.warnings)):
        if items:
            out.write(f"\n{title}:\n")
            _table([["SERVICE", "REASON", "MESSAGE"]] + [[s.service, s.reason, s.message] for s in items], out)


def write_explanation(explanation: Explanation, out: TextIO) -> None:
    verdict = "announced" if explanation.announced else "NOT announced"
    out.write(f"Service {explanation.service} on node {explanation.node}: {verdict}\n\n")
    rows = []
    for step in explanation.steps:
        mark = "NO" if not step.ok else "!!" if step.warning else "ok"
        rows.append([mark, step.name, (f"[{step.reason}] " if step.reason else "") + step.detail])
    if rows:
        _table(rows, out, indent="  ")
    if explanation.routes:
        out.write("\nRoutes:\n")
        _table(
            _route_rows([e for e in plan_entries(Plan(explanation.routes, ())) if e["service"] == explanation.service]),
            out,
            indent="  ",
        )


# --- commands --------------------------------------------------------------------------


def _run(body: Callable[[], int]) -> int:
    try:
        return body()
    except _Exit as error:
        print(f"bgpspeaker: {error}", file=sys.stderr)
        return error.code


def check_config_command(args: argparse.Namespace) -> int:
    """`bgpspeaker check-config F [F ...]`: the report on stdout; exit 0 valid (warnings allowed), 2 not.

    Unlike the other commands, a bad config is not an error message here but the report
    itself (one `path: message (line N)` per problem, then a summary), so it can be piped
    and grepped. Several files are the configs of a fleet: each is checked, then they are
    checked together (fleet_warnings: pools several clusters announce must share a store).
    """
    paths = args.config if isinstance(args.config, list) else [args.config]
    loaded, code = [], 0
    for path in paths:
        try:
            config = load_config_file(path)
        except ConfigError as error:
            for issue in error.issues:
                print(issue)
            print(f"invalid: {path}: {len(error.issues)} error{'s' if len(error.issues) != 1 else ''}")
            code = 2
            continue
        for warning in config_warnings(config):
            print(f"warning: {warning}")
        addresses = sum(net.num_addresses for pool in config.pools for net in pool.addresses)
        print(f"ok: {path}: {len(config.peers)} peers, {len(config.pools)} pools ({addresses} addresses)")
        loaded.append((path, config))
    for warning in fleet_warnings(loaded):
        print(f"warning: {warning}")
    sys.stdout.flush()
    return code


def render_command(args: argparse.Namespace) -> int:
    """`bgpspeaker render-exabgp`: the ExaBGP config the node would run, secrets masked."""

    def body() -> int:
        config = load_config(args.config)
        node = _check_node(load_objects(args.objects), args.node_name, args.objects)
        try:
            text = render_config(config, node, DEFAULT_SOCKET, mask_secrets=True)
        except RenderError as error:
            raise _Exit(2, str(error)) from None
        sys.stdout.write(text)
        return 0

    return _run(body)


def plan_command(args: argparse.Namespace) -> int:
    def body() -> int:
        config = load_config(args.config)
        snapshot = load_objects(args.objects, config)
        _check_node(snapshot, args.node_name, args.objects)
        allocation = allocate_snapshot(config, snapshot)  # as the allocator would
        # cluster.maintenance: the routes as the switch first makes them (drain's lowest tier + GSHUT)
        result = plan(config, snapshot, args.node_name, allocation, drained=config.cluster.maintenance is not None)
        if getattr(args, "format", "text") == "json":
            json.dump(plan_json(args.node_name, result), sys.stdout, indent=2)
            sys.stdout.write("\n")
            for warning in result.warnings:
                print(f"warning: {warning.service}: {warning.reason}: {warning.message}", file=sys.stderr)
        else:
            write_plan_text(args.node_name, result, sys.stdout)
        return 0

    return _run(body)


def _fetch(kubeconfig: str) -> Snapshot:
    # Imported lazily: the kubernetes client is slow to import and not needed for --objects.
    from bgpspeaker.kube.client import fetch_snapshot

    try:
        return fetch_snapshot(kubeconfig)
    except Exception as error:  # any client/transport failure: the cluster cannot be read
        raise _Exit(1, f"cannot read the cluster with {kubeconfig}: {error}") from None


def explain_command(args: argparse.Namespace) -> int:
    def body() -> int:
        config = load_config(args.config)
        objects: Optional[str] = getattr(args, "objects", None)
        if objects:
            snapshot, source = load_objects(objects, config), objects
        else:
            snapshot, source = _fetch(args.kubeconfig), "the cluster"
        _check_node(snapshot, args.node_name, source)
        if args.service not in snapshot.services:
            raise _Exit(3, f"Service {args.service!r} not found in {source} (give it as NAMESPACE/NAME)")
        allocation = allocate_snapshot(config, snapshot)
        write_explanation(
            explain(
                config,
                snapshot,
                args.node_name,
                allocation,
                args.service,
                drained=config.cluster.maintenance is not None,
            ),
            sys.stdout,
        )
        return 0

    return _run(body)


def audit_command(args: argparse.Namespace) -> int:
    def body() -> int:
        inputs = []
        for config_path, objects_path in args.cluster:
            config = load_config(config_path)
            inputs.append(ClusterInput(config, load_objects(objects_path, config), f"{config_path}={objects_path}"))
        try:
            report = audit(inputs)
        except ValueError as error:
            raise _Exit(2, str(error)) from None
        if getattr(args, "format", "text") == "json":
            json.dump(report_json(report), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(report_text(report))
        for summary in report.clusters:
            if summary.basis != BASIS_NODES:
                print(
                    f"note: {summary.name}: no Nodes in {summary.source.partition('=')[2]}: an assigned "
                    f"address counts as announced when the cluster's tier for the Service is not none",
                    file=sys.stderr,
                )
        return 0 if report.clean else 1

    return _run(body)
