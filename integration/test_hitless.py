"""Hitless peer changes, seen from a real FRR: one peer changed, removed, re-added or
given a new password on a node with two peers, and the other session never notices.

Topology (FRR holds both sessions, one per address pair):

    node  10.99.1.2 (tor-a's session)  10.99.1.3 (tor-b's session)   ExaBGP via the driver
      | veth
    tor   10.99.1.1 (tor-a)            10.99.1.11 (tor-b)            FRR bgpd

What FRR says about tor-b's session is the evidence: its established-since time does
not move (the uptime keeps growing), it receives no UPDATE at all (so no withdraw), and
a poller never sees tor-b's paths missing. A change of the router ID, which restarts
ExaBGP (reload.py), closes the test: there tor-b's session does reset, so the same
checks can fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.driver import ExabgpDriver
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import NodeView, RouteAttributes, RouteIntent, Tier
from integration.lab import netns
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.frr import FrrConfig, FrrRouter, Neighbor
from integration.test_exabgp_lab import EXABGP, until

pytestmark = pytest.mark.lab

A = ipaddress.ip_address
MY_ASN, TOR_ASN = 64512, 64500
NODE_A, NODE_B, TOR_A, TOR_B = "10.99.1.2", "10.99.1.3", "10.99.1.1", "10.99.1.11"
NODE = NodeView("node-1", addresses=(("InternalIP", NODE_A),))
PREFIXES = [ipaddress.ip_network(f"203.0.113.{i}/32") for i in range(20)]


def config(a_hold=3, a_password=None, with_a=True, router_id="10.99.1.2", a_gr=None) -> Config:
    a = PeerConfig("tor-a", A(TOR_A), TOR_ASN, hold_time=a_hold, password_file=a_password,
                   source_address=A(NODE_A), graceful_restart=a_gr)
    b = PeerConfig("tor-b", A(TOR_B), TOR_ASN, hold_time=3, source_address=A(NODE_B))
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=MY_ASN, router_id=A(router_id)),
                  peers=(a, b) if with_a else (b,), exabgp=ExabgpConfig(graceful_restart=0))


def intents(peers=("tor-a", "tor-b")) -> list[RouteIntent]:
    attrs = RouteAttributes(next_hop=A(NODE_A), as_path=(MY_ASN,), med=100)
    return [RouteIntent(p, peer, attrs, Tier.PRIMARY, ("ns/svc",)) for peer in peers for p in PREFIXES]


class Watch:
    """Polls FRR every 20 ms: how many of tor-b's paths it holds (the minimum seen)."""

    def __init__(self, router: FrrRouter):
        self.router, self.minimum, self.polls = router, len(PREFIXES), 0

    def from_b(self) -> int:
        routes = self.router.routes("ipv4")
        return sum(1 for p in PREFIXES for path in routes.get(str(p), []) if path.peer == NODE_B)

    async def run(self) -> None:
        while True:
            self.minimum = min(self.minimum, self.from_b())
            self.polls += 1
            await asyncio.sleep(0.02)


def session(router: FrrRouter, address: str) -> tuple[int, int, int]:
    """(sessions established so far, UPDATEs received, uptime in ms), FRR's own view."""
    data = router.show_json(f"show bgp neighbors {address}")[address]
    return (data.get("connectionsEstablished", 0), data.get("messageStats", {}).get("updatesRecv", 0),
            data.get("bgpTimerUpMsec", 0))


def two_peer_bed(lab) -> tuple[FrrRouter, str, Path]:
    """(the router, the node's namespace, a run directory): FRR with both sessions configured."""
    tor, node = lab.netns("tor"), lab.netns("node")
    lab.veth(tor, "eth0", node, "eth0")
    for ns, addresses in ((tor, (TOR_A, TOR_B)), (node, (NODE_A, NODE_B))):
        for address in addresses:
            netns.add_addr(ns, "eth0", f"{address}/24")
    router = FrrRouter(tor, FrrConfig(asn=TOR_ASN, router_id=TOR_A, hold_time=9, neighbors=(
        Neighbor(NODE_A, MY_ASN), Neighbor(NODE_B, MY_ASN))), lab=lab).start()
    run_dir = Path(tempfile.mkdtemp(prefix=f"bgpl-hitless-{os.getpid()}-"))
    lab.on_close(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    return router, node, run_dir


def test_one_peer_changed_the_other_session_never_notices(lab, tmp_path):
    router, node, run_dir = two_peer_bed(lab)
    secret = tmp_path / "tor-a.password"

    def established(*addresses: str) -> bool:
        return router.established(*addresses)

    def routes_from(address: str) -> int:
        return sum(1 for paths in router.routes("ipv4").values() for p in paths if p.peer == address)

    async def body():
        driver = ExabgpDriver(config(), NODE, run_dir, Metrics(),
                              exabgp_argv=[netns.IP, "netns", "exec", node, EXABGP])
        await driver.start()
        watch_task = None
        try:
            await driver.apply(intents())
            await until(lambda: routes_from(NODE_A) == routes_from(NODE_B) == len(PREFIXES), 20, "both sessions")
            # the routes' UPDATE and then the End-of-RIB (an UPDATE too): tor-b's last message from us
            await until(lambda: session(router, NODE_B)[1] >= 2, 10, "tor-b's End-of-RIB")
            pid = driver.exabgp_pid
            b_before, started = session(router, NODE_B), time.monotonic()
            watch = Watch(router)
            watch_task = asyncio.create_task(watch.run())

            async def a_reset_and_back(change: Config, what: str, a_since: int = 0) -> None:
                a_since = a_since or session(router, NODE_A)[0]
                assert await driver.reconfigure(change, NODE) is False, f"{what}: ExaBGP restarted"
                await driver.apply(intents())  # as the daemon does after a reload (a no-op but for a new peer)
                await until(lambda: established(NODE_A) and session(router, NODE_A)[0] != a_since
                            and routes_from(NODE_A) == len(PREFIXES), 30, f"tor-a back after {what}")

            # 1. tor-a's hold time: that session re-opens with the new one (FRR: min(9, 6) = 6 s)
            await a_reset_and_back(config(a_hold=6), "hold time")
            assert router.show_json(f"show bgp neighbors {NODE_A}")[NODE_A]["bgpTimerHoldTimeMsecs"] == 6000
            # tor-a's own graceful restart: in that session's OPEN only
            await a_reset_and_back(config(a_hold=6, a_gr=30), "graceful restart")
            info = router.show_json(f"show bgp neighbors {NODE_A}")[NODE_A]
            assert info["gracefulRestartInfo"]["timers"]["receivedRestartTimer"] == 30, info.get("gracefulRestartInfo")
            # 2. a password on tor-a (both ends), then rotated
            for password in ("lab-one", "lab-two"):
                a_since = session(router, NODE_A)[0]
                router.configure([f"router bgp {TOR_ASN}", f" neighbor {NODE_A} password {password}"])
                secret.write_text(password + "\n")
                await a_reset_and_back(config(a_hold=6, a_password=str(secret)), f"password {password}", a_since)
            # 3. tor-a removed: its routes leave FRR; then added again: its routes come back
            assert await driver.reconfigure(config(with_a=False, a_hold=6, a_password=str(secret)), NODE) is False
            await driver.apply(intents(("tor-b",)))
            await until(lambda: routes_from(NODE_A) == 0, 20, "tor-a's routes gone")
            await a_reset_and_back(config(a_hold=6, a_password=str(secret)), "peer added")

            assert driver.exabgp_pid == pid
            b_after, elapsed = session(router, NODE_B), time.monotonic() - started
            assert b_after[:2] == b_before[:2], "tor-b's session re-established or received an UPDATE"
            assert b_after[2] >= b_before[2] + elapsed * 1000 - 1500, (b_before, b_after, elapsed)  # uptime grew
            assert watch.minimum == len(PREFIXES) and watch.polls >= 10, (watch.minimum, watch.polls)

            # The control: a router ID change restarts ExaBGP, and tor-b's session does reset
            assert await driver.reconfigure(config(a_hold=6, a_password=str(secret), router_id="10.99.1.3"),
                                            NODE) is True
            await until(lambda: established(NODE_B) and session(router, NODE_B)[0] > b_before[0], 30,
                        "tor-b re-established after the restart")
        finally:
            if watch_task is not None:
                watch_task.cancel()
            await driver.stop(withdraw=False)

    asyncio.run(asyncio.wait_for(body(), 240))


def test_a_reload_exabgp_keeps_dropping_falls_back_to_a_restart(lab):
    """ExaBGP 5.0.15 drops a reload while UPDATEs are queued for a peer; for a peer that is
    down they stay queued until its connection attempt ends. Measured with tor-b shut down
    at the router for 0 / 5 / 20 s: the reload was taken after 0.05 / 1.2 / 4.9 s (the
    attempts are refused at once). Here tor-b's SYNs go into a black hole (a namespace that
    does not forward them), so the attempt hangs and every reload is dropped: past the
    driver's deadline it restarts ExaBGP, and the router ends with every route."""
    router, node, run_dir = two_peer_bed(lab)
    sink = lab.netns("sink")
    lab.veth(node, "eth1", sink, "eth0")
    netns.add_addr(node, "eth1", "10.77.0.1/30")
    netns.add_addr(sink, "eth0", "10.77.0.2/30")  # forwarding off: what it receives for others is dropped

    async def body():
        driver = ExabgpDriver(config(), NODE, run_dir, Metrics(), reload_timeout=1.0,
                              exabgp_argv=[netns.IP, "netns", "exec", node, EXABGP])
        await driver.start()
        try:
            await driver.apply(intents())
            await until(lambda: router.established(NODE_A, NODE_B), 20, "both sessions")
            netns.add_route(node, f"{TOR_B}/32", via="10.77.0.2")
            router.set_neighbor_shutdown(NODE_B, True)
            await until(lambda: not driver.peer_states()["tor-b"].up, 20, "tor-b down")
            # routes changed while tor-b is down: queued for it while its connection attempt hangs
            attrs = RouteAttributes(next_hop=A(NODE_A), as_path=(MY_ASN,), med=150)
            changed = [RouteIntent(p, peer, attrs, Tier.PRIMARY, ("ns/svc",))
                       for peer in ("tor-a", "tor-b") for p in PREFIXES]
            await driver.apply(changed)
            pid = driver.exabgp_pid
            assert await driver.reconfigure(config(a_hold=6), NODE) is True  # fell back to a restart
            assert driver.exabgp_pid != pid and "hold-time 6;" in driver.config_path.read_text()
            netns.del_route(node, f"{TOR_B}/32")
            router.set_neighbor_shutdown(NODE_B, False)
            await until(lambda: all(p.med == 150 for paths in router.routes("ipv4").values() for p in paths)
                        and sum(map(len, router.routes("ipv4").values())) == 2 * len(PREFIXES), 40,
                        "every route, as last applied, on both sessions")
        finally:
            await driver.stop(withdraw=False)

    asyncio.run(asyncio.wait_for(body(), 120))
