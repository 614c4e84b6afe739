"""Injection, at a real router: commands generated from hostile Services, fed to a real
ExaBGP (config from our renderer, our relay) peering with a real FRR.

The pure fuzz (tests/test_hardening_injection.py) shows the text is one line of our
grammar; this shows ExaBGP reads that grammar the way we think: a chain of fuzz cases,
each sent as the reconciler would send it (diff against the previous case's plan), gives
no `error` ack, and at the end the router's RIB holds exactly the last plan's routes with
exactly its attributes — nothing more, nothing less.

The driver is deliberately not used: this test is about the command text and ExaBGP's
parser, so the harness is a bare stop-and-wait client on the relay's socket.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
import sys
import tempfile

import pytest

from bgpspeaker.exabgp.render import exabgp_environment, render_config
from bgpspeaker.model import NodeView
from bgpspeaker.reconciler import diff
from integration.lab import netns
from integration.lab.topology import Topology, TopologySpec
from integration.lab.wait import wait_until
from testkit.hardening import (
    FIELDS, HOSTILE, ODD_VALUES, Topology as AttackTopology, attack_config, batch_line, check_line, hostile_base,
    legit_objects, node_obj, run_pipeline, service_obj, slice_obj,
)

pytestmark = pytest.mark.lab

SAMPLE_COMMANDS = 200
EXABGP = os.path.join(os.path.dirname(sys.executable), "exabgp")


class ExabgpClient:
    """A real ExaBGP (rendered config, our relay) in a node namespace; commands stop-and-wait."""

    def __init__(self, ns: str, config, node: NodeView, workdir: str):
        self.path = os.path.join(workdir, "exabgp.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        conf = os.path.join(workdir, "exabgp.conf")
        with open(conf, "w") as f:
            f.write(render_config(config, node, self.path, mask_secrets=False, python=sys.executable))
        env = dict(os.environ, **exabgp_environment(user="root", log_level="INFO"),
                   PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.log_path = os.path.join(workdir, "exabgp.log")
        self.log = open(self.log_path, "wb")
        self.proc = netns.popen(ns, [EXABGP, conf], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.server.settimeout(20)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(20)
        self.reader = self.conn.makefile("r", encoding="ascii", newline="\n")
        self.events: list[str] = []

    def send(self, line: str) -> str:
        """Send one command and return its ack (`done` / `error`), keeping events aside."""
        self.conn.sendall(line.encode("ascii") + b"\n")
        while True:
            answer = self.reader.readline()
            if not answer:
                raise AssertionError(f"relay closed while waiting for the ack of {line!r}")
            answer = answer.rstrip("\n")
            if answer in ("done", "error"):
                return answer
            self.events.append(answer)

    def close(self) -> None:
        netns.stop(self.proc)
        for closer in (lambda: self.conn.shutdown(socket.SHUT_RDWR), self.reader.close, self.conn.close,
                       self.server.close, self.log.close):
            try:
                closer()
            except OSError:
                pass

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-30:])


def _fuzz_chain(topo: AttackTopology, rng: random.Random, want: int):
    """Plans of hostile cases, each with the lines that take the previous plan to it."""
    config = attack_config(topo, with_v6_peer=False)
    legit = [node_obj(topo=topo) if o["kind"] == "Node" else o for o in legit_objects()]
    fields, values = list(FIELDS), HOSTILE + ODD_VALUES
    previous: tuple = ()
    steps, count = [], 0
    while count < want:
        objects = list(legit)
        for i in range(rng.randint(1, 4)):  # several hostile Services per step, so routes come and go
            svc, sl = hostile_base()
            svc["metadata"]["name"] = sl["metadata"]["labels"]["kubernetes.io/service-name"] = f"evil{i}"
            for field in rng.sample(fields, rng.randint(0, 3)):
                FIELDS[field](svc, sl, rng.choice(values))
            objects += [svc, sl]
        # and a Service that asks for allowed and disallowed communities, announced either way
        objects += [service_obj("tenant", "comm", {"bgpspeaker.io/communities": rng.choice(
            ["64512:777", "64512:7:7,65535:666", "65535:0", "64512:777\n65535:666", "0:0,64512:777"])},
            created="2025-07-01T00:00:00Z"), slice_obj("tenant", "comm")]
        outcome = run_pipeline(objects, config=config, previous=previous, topo=topo)  # all checks of the pure test
        lines = [batch_line(config, b) for b in diff(outcome.routes, previous)]
        for line in lines:
            check_line(line)
        steps.append((outcome.routes, lines))
        count += len(lines)
        previous = outcome.routes
    return config, steps


def _rib(router) -> dict:
    out = {}
    for afi in ("ipv4", "ipv6"):
        for prefix, paths in router.routes(afi).items():
            for p in paths:
                out[str(ipaddress.ip_network(prefix))] = (p.nexthop, p.med, tuple(p.aspath), tuple(sorted(p.communities)),
                                                          tuple(sorted(p.large_communities)))
    return out


def _expected(routes) -> dict:
    def key(c):
        return tuple(int(x) for x in str(c).split(":"))
    return {str(r.prefix): (str(r.attributes.next_hop), r.attributes.med, tuple(r.attributes.as_path),
                            tuple(str(c) for c in sorted(r.attributes.communities, key=key)),
                            tuple(str(c) for c in sorted(r.attributes.large_communities, key=key)))
            for r in routes}


def test_fuzzed_commands_through_real_exabgp_to_frr(capsys):
    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    spec = TopologySpec(nodes=(("east-1", "east"),), ipv6=True, hold_time=9)
    with Topology(spec) as topo, tempfile.TemporaryDirectory(prefix=f"attack-inj-{os.getpid()}-") as workdir:
        node = topo.node("east-1")
        attack_topo = AttackTopology(peer4=node.tor_address, peer6=node.tor_address6 or "fd00::1",
                                     node4=node.address, node6=node.address6)
        config, steps = _fuzz_chain(attack_topo, random.Random(7), SAMPLE_COMMANDS)
        view = NodeView("east-1", addresses=(("InternalIP", node.address), ("InternalIP", node.address6)))
        exa = ExabgpClient(node.ns, config, view, workdir)
        try:
            router = topo.router
            wait_until(lambda: router.established(node.address), 20, "ExaBGP session with FRR")
            sent, errors = 0, []
            for routes, lines in steps:
                for line in lines:
                    ack = exa.send(line)
                    sent += 1
                    if ack != "done":
                        errors.append(line)
            assert not errors, f"ExaBGP answered error to {len(errors)} commands, e.g. {errors[:3]}\n{exa.log_tail()}"
            final = _expected(steps[-1][0])
            assert final, "the last plan announces something (else the RIB check is vacuous)"
            try:
                wait_until(lambda: _rib(router) == final, 20, "the router's RIB == the last plan")
            except AssertionError:
                got = _rib(router)
                raise AssertionError(f"RIB differs: extra {sorted(set(got) - set(final))}, missing "
                                     f"{sorted(set(final) - set(got))}, different "
                                     f"{[(p, got[p], final[p]) for p in set(got) & set(final) if got[p] != final[p]]}")
            assert router.established(node.address), "a command reset the session"
            # the harness can see an `error`: a malformed command (docs/reference/exabgp-api.md §5) is refused
            assert exa.send("announce route 300.1.1.1/32 next-hop 10.0.0.1") == "error"
            assert _rib(router) == final
            with capsys.disabled():
                print(f"\n[hardening] real ExaBGP + FRR: {sent} fuzzed commands over {len(steps)} plans, 0 errors; "
                      f"RIB == plan ({len(final)} prefixes)")
        finally:
            exa.close()


# --------------------------------------------------------------------------- through the whole daemon

DAEMON_CASES = 60
# Fields a tenant controls on its own Service (names and namespaces are validated by the API server).
TENANT_FIELDS = [f for f in FIELDS if f not in ("metadata.name", "metadata.namespace", "metadata.uid",
                                                 "endpoints[0].nodeName", "annotation-key")]


def test_fuzzed_services_through_the_daemon_to_frr(capsys):
    """Hostile Services written to the (emulated) API: the running daemon — informer, allocator,
    status writer, planner, driver, ExaBGP — ends with the router's RIB equal to the offline plan of
    the very objects in the API, the session never dropped, and no error in its log."""
    import json

    from bgpspeaker.allocator import allocate
    from bgpspeaker.config.load import load_config
    from bgpspeaker.planner import plan
    from bgpspeaker.views import snapshot_from_objects
    from integration.attack_lab import NODE, AttackLab

    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    rng = random.Random(11)
    lab = AttackLab()
    try:
        lab.start()
        sp, address = lab.speakers[NODE], lab.nodes[NODE].address
        config = load_config(sp.config_path)
        dropped0 = lab.router.show_json(f"show bgp neighbors {address} json")[address]["connectionsDropped"]
        lab.service("default", "healthy", {"bgpspeaker.io/load-balancer-ips": "203.0.113.3"})
        for i in range(DAEMON_CASES):
            svc, sl = hostile_base()
            for field in rng.sample(TENANT_FIELDS, rng.randint(1, 3)):
                value = rng.choice(HOSTILE + ODD_VALUES)
                FIELDS[field](svc, sl, json.loads(json.dumps(value, default=str)) if not isinstance(value, float)
                              or value == value else 0)  # JSON-representable, as the API stores it
            name = f"fuzz{i}"
            svc["metadata"].update(name=name, namespace="tenant")
            svc["metadata"].pop("uid", None)
            svc["metadata"].pop("creationTimestamp", None)
            sl["metadata"].update(name=f"{name}-x", namespace="tenant")
            sl["metadata"]["labels"]["kubernetes.io/service-name"] = name
            sl["endpoints"][0]["nodeName"] = NODE
            lab.emu.set_object(svc)
            lab.emu.set_object(sl)

        def expected() -> dict:
            snap = lab.emu.snapshot()
            objects = [dict(o, kind=k.split("/")[-1]) for k, items in snap.items()
                       if k.split("/")[-1] in ("Service", "EndpointSlice", "Node") for o in items]
            snapshot = snapshot_from_objects(objects)
            result = plan(config, snapshot, NODE, allocate(config, snapshot.services.values()))
            return _expected(result.routes)

        def rib_is_plan():
            want = expected()
            return _rib(lab.router) == want and want

        try:
            final = wait_until(rib_is_plan, 60, "the router's RIB == the offline plan of the API's objects",
                               interval=0.2)
        except AssertionError:
            want, got = expected(), _rib(lab.router)
            raise AssertionError(f"RIB vs plan: extra {sorted(set(got) - set(want))}, missing "
                                 f"{sorted(set(want) - set(got))}\n{lab.diagnostics()}") from None
        assert "203.0.113.3/32" in final
        dropped = lab.router.show_json(f"show bgp neighbors {address} json")[address]["connectionsDropped"]
        assert dropped == dropped0, "the BGP session dropped during the fuzz"
        log = open(sp.log_path, errors="replace").read()
        assert "Traceback" not in log and "level=error" not in log, [l for l in log.splitlines()
                                                                     if "level=error" in l][:3]
        assert sp.running
        with capsys.disabled():
            print(f"\n[hardening] {DAEMON_CASES} fuzzed Services through the running daemon: RIB == offline plan "
                  f"({len(final)} prefixes), session never dropped, no error logged")
    finally:
        lab.close()
