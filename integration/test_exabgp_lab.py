"""The ExaBGP driver against a real FRR router: what arrives in the router's RIB, exactly.

Topology (one pair of namespaces per test, unique names, removed after the test):

    node  10.99.1.2/24 fd00:99:1::2/64  (ExaBGP + relay, spawned by the driver via `ip netns exec`)
      | veth
    tor   10.99.1.1/24 fd00:99:1::1/64  (FRR bgpd)

Next-hops are the node's veth addresses, never 127/8 (FRR answers a 127/8 next-hop with
NOTIFICATION 3/8 and the session flaps forever, docs/reference/exabgp-api.md §9). The driver runs in
this process's event loop, so every wait here is an async poll (a blocking wait would
stall the driver's reader, the very thing these tests guard).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import pytest

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.driver import ExabgpDriver
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import Community, LargeCommunity, NodeView, RouteAttributes, RouteIntent, Tier
from integration.lab import netns
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.frr import FrrConfig, FrrRouter, Neighbor

pytestmark = pytest.mark.lab

A = ipaddress.ip_address
N = ipaddress.ip_network
EXABGP = str(Path(os.sys.executable).parent / "exabgp")
MY_ASN, TOR_ASN = 64512, 64500
NODE_V4, NODE_V6 = "10.99.1.2", "fd00:99:1::2"
TOR_V4 = "10.99.1.1"
NODE = NodeView("node-1", addresses=(("InternalIP", NODE_V4), ("InternalIP", NODE_V6)))


async def until(condition: Callable, timeout: float, what: str, interval: float = 0.05):
    """Async wait_until: poll without blocking the event loop (the driver's reader runs in it)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
        except Exception as exc:  # the router may be starting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(interval)


def speaker_config(peer_asn=TOR_ASN, gr=0, hold_time=3, password_file=None, peer_address=TOR_V4) -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=MY_ASN),
                  peers=(PeerConfig("tor", A(peer_address), peer_asn, hold_time=hold_time,
                                    password_file=password_file),),
                  exabgp=ExabgpConfig(graceful_restart=gr))


def attrs(**kw) -> RouteAttributes:
    kw.setdefault("next_hop", A(NODE_V4))
    kw.setdefault("as_path", (MY_ASN,))
    return RouteAttributes(**kw)


def intents(prefixes, a=None, peer="tor") -> list[RouteIntent]:
    return [RouteIntent(p if not isinstance(p, str) else N(p), peer, a or attrs(), Tier.PRIMARY, ("ns/svc",))
            for p in prefixes]


def hosts(n: int, base: str = "198.18.0.0") -> list:
    start = int(A(base))
    return [N(f"{A(start + i)}/32") for i in range(n)]


class Bed:
    """Two namespaces, FRR in one, the driver's ExaBGP in the other."""

    def __init__(self, lab, frr_asn_of_us=MY_ASN, tor_asn=TOR_ASN, gr=False, password=None, hold=3,
                 neighbor=NODE_V4):
        self.lab = lab
        self.tor, self.node = lab.netns("tor"), lab.netns("node")
        lab.veth(self.tor, "eth0", self.node, "eth0")
        netns.add_addr(self.tor, "eth0", f"{TOR_V4}/24")
        netns.add_addr(self.tor, "eth0", "fd00:99:1::1/64")
        netns.add_addr(self.node, "eth0", f"{NODE_V4}/24")
        netns.add_addr(self.node, "eth0", f"{NODE_V6}/64")
        self.router = FrrRouter(self.tor, FrrConfig(
            asn=tor_asn, router_id=TOR_V4, hold_time=hold, graceful_restart=gr,
            neighbors=(Neighbor(neighbor, frr_asn_of_us, password=password),)), lab=lab).start()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"bgpl-exabgp-{os.getpid()}-"))
        lab.on_close(lambda: shutil.rmtree(self.run_dir, ignore_errors=True))
        self.metrics = Metrics()

    def driver(self, config: Config, **kw) -> ExabgpDriver:
        return ExabgpDriver(config, NODE, self.run_dir, self.metrics,
                            exabgp_argv=[netns.IP, "netns", "exec", self.node, EXABGP], **kw)

    def established(self) -> bool:
        return self.router.established(NODE_V4)

    def v4(self) -> set[str]:
        return set(self.router.prefixes("ipv4"))

    def v6(self) -> set[str]:
        return set(self.router.prefixes("ipv6"))


@asynccontextmanager
async def running(driver: ExabgpDriver, withdraw=False):
    await driver.start()
    try:
        yield driver
    finally:
        await driver.stop(withdraw=withdraw)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 240))


def test_attributes_arrive_exactly_ebgp_and_ipv6(lab):
    bed = Bed(lab)
    primary = attrs(med=100, as_path=(MY_ASN,), communities=(Community(64512, 100),),
                    large_communities=(LargeCommunity(64512, 1, 1),))
    tertiary = attrs(med=300, as_path=(MY_ASN, MY_ASN, MY_ASN),
                     communities=(Community(64512, 300), Community(65535, 0)),
                     large_communities=(LargeCommunity(64512, 3, 1), LargeCommunity(64512, 3, 2)))
    v6 = attrs(next_hop=A(NODE_V6), med=200, as_path=(MY_ASN, MY_ASN), communities=(Community(64512, 200),))

    async def body():
        async with running(bed.driver(speaker_config())) as d:
            await until(bed.established, 20, "session up")
            await until(lambda: d.peer_states()["tor"].up, 10, "driver sees the session up")
            assert bed.metrics.session_up.labels("tor")._value.get() == 1
            await d.apply(intents(["203.0.113.5/32"], primary) + intents(["203.0.113.6/32"], tertiary)
                          + intents(["2001:db8::5/128"], v6))
            p = await until(lambda: bed.router.best_path("203.0.113.5/32"), 10, "primary route")
            assert (p.med, p.aspath, p.communities, p.large_communities, p.nexthop, p.origin) == (
                100, [MY_ASN], ["64512:100"], ["64512:1:1"], NODE_V4, "IGP")
            t = await until(lambda: bed.router.best_path("203.0.113.6/32"), 10, "tertiary route")
            assert (t.med, t.aspath, t.large_communities) == (300, [MY_ASN] * 3, ["64512:3:1", "64512:3:2"])
            # FRR names 65535:0 (RFC 8326) when it prints it
            assert t.communities in (["64512:300", "65535:0"], ["64512:300", "graceful-shutdown"])
            s = await until(lambda: bed.router.best_path("2001:db8::5/128"), 10, "ipv6 route")
            assert (s.med, s.aspath, s.communities, s.nexthop) == (200, [MY_ASN] * 2, ["64512:200"], NODE_V6)
            assert bed.v4() == {"203.0.113.5/32", "203.0.113.6/32"} and bed.v6() == {"2001:db8::5/128"}
            # change one, withdraw one, withdraw the IPv6 one
            await d.apply(intents(["203.0.113.5/32"], tertiary))
            await until(lambda: bed.v4() == {"203.0.113.5/32"} and not bed.v6(), 10, "withdrawn")
            p = await until(lambda: (lambda b: b if b and b.med == 300 else None)(
                bed.router.best_path("203.0.113.5/32")), 10, "re-announced with new attributes")
            assert p.aspath == [MY_ASN] * 3
    run(body())


def test_ipv6_session_carries_both_families(lab):
    bed = Bed(lab, neighbor=NODE_V6)

    async def body():
        async with running(bed.driver(speaker_config(peer_address="fd00:99:1::1"))) as d:
            await until(lambda: bed.router.established(NODE_V6), 20, "IPv6 session up")
            assert "local-address fd00:99:1::2;" in d.config_path.read_text()
            await d.apply(intents(["2001:db8::7/128"], attrs(next_hop=A(NODE_V6), med=100)) +
                          intents(["203.0.113.10/32"], attrs(med=100)))
            p = await until(lambda: bed.router.best_path("2001:db8::7/128"), 10, "IPv6 route over IPv6")
            assert (p.nexthop, p.med, p.aspath, p.peer) == (NODE_V6, 100, [MY_ASN], NODE_V6)
            q = await until(lambda: bed.router.best_path("203.0.113.10/32"), 10, "IPv4 route over IPv6")
            assert q.med == 100 and q.nexthop == NODE_V4
            await d.apply([])
            await until(lambda: not bed.v6() and not bed.v4(), 10, "withdrawn")
    run(body())


def test_ibgp_local_preference_and_empty_as_path(lab):
    bed = Bed(lab, tor_asn=MY_ASN)

    async def body():
        async with running(bed.driver(speaker_config(peer_asn=MY_ASN))) as d:
            await until(bed.established, 20, "iBGP session up")
            await d.apply(intents(["203.0.113.7/32"], attrs(as_path=(), med=100, local_pref=300)) +
                          intents(["203.0.113.8/32"], attrs(as_path=(), local_pref=100)))
            p = await until(lambda: bed.router.best_path("203.0.113.7/32"), 10, "iBGP route")
            assert (p.localpref, p.med, p.aspath) == (300, 100, [])
            q = await until(lambda: bed.router.best_path("203.0.113.8/32"), 10, "iBGP route 2")
            assert q.localpref == 100
    run(body())


def test_md5_session_needs_the_password_from_the_file(lab, tmp_path):
    bed = Bed(lab, password="lab-secret-1")
    secret = tmp_path / "tor.password"
    secret.write_text("lab-secret-1\n")

    async def body():
        async with running(bed.driver(speaker_config())) as d:
            # without the password: no session. A negative needs a window; 3 hold times of
            # connect attempts (FRR retries every 1 s, ExaBGP at once) are plenty.
            with pytest.raises(AssertionError):
                await until(bed.established, 9, "session without MD5 (must not come up)")
            assert "md5-password" not in d.config_path.read_text()
            assert await d.reconfigure(speaker_config(password_file=str(secret)), NODE) is False  # reloaded
            await until(bed.established, 20, "session with MD5")
            await d.apply(intents(["203.0.113.9/32"]))
            await until(lambda: bed.v4() == {"203.0.113.9/32"}, 10, "route over MD5 session")
            assert 'md5-password "lab-secret-1";' in d.config_path.read_text()
            assert oct(d.config_path.stat().st_mode & 0o777) == "0o600"
    run(body())


def test_exabgp_sigkill_without_gr_every_route_back_none_extra(lab):
    bed = Bed(lab)
    target = intents(hosts(300))

    async def body():
        async with running(bed.driver(speaker_config())) as d:
            await until(bed.established, 20, "session up")
            await d.apply(target)
            await until(lambda: len(bed.v4()) == 300, 20, "300 routes")
            os.kill(d.exabgp_pid, signal.SIGKILL)
            await until(lambda: len(bed.v4()) < 300, 15, "routes gone with the session (no GR)")
            await until(lambda: d.ready, 20, "ExaBGP restarted")
            await until(lambda: bed.v4() == {str(i.prefix) for i in target}, 20, "every route back")
            assert bed.metrics.exabgp_restarts._value.get() == 1
    run(body())


def test_graceful_restart_keeps_routes_stale_and_eor_removes_leftovers(lab):
    bed = Bed(lab, gr=True)
    first = intents(hosts(60))
    kept = first[:40]

    async def body():
        async with running(bed.driver(speaker_config(gr=120))) as d:
            await until(bed.established, 20, "session up")
            await d.apply(first)
            await until(lambda: len(bed.v4()) == 60, 20, "60 routes")
            seen_min = [60]

            async def watch():  # the router must never lose a kept route meanwhile
                while True:
                    have = bed.v4()
                    seen_min[0] = min(seen_min[0], sum(1 for i in kept if str(i.prefix) in have))
                    await asyncio.sleep(0.02)
            watcher = asyncio.create_task(watch())
            try:
                os.kill(d.exabgp_pid, signal.SIGKILL)
                applying = asyncio.create_task(d.apply(kept))  # lands on the restarted ExaBGP
                stale = await until(lambda: (lambda p: p if p and p.stale else None)(
                    bed.router.best_path(str(first[-1].prefix))), 15, "router keeps routes stale")
                assert stale.stale
                await applying
                await until(lambda: bed.v4() == {str(i.prefix) for i in kept}, 30,
                            "stale leftovers removed after our EOR")
                await until(lambda: not any(p.stale for p in bed.router.paths(str(kept[0].prefix))), 10,
                            "kept routes refreshed")
            finally:
                watcher.cancel()
            assert seen_min[0] == 40, f"a kept route vanished during the restart (min {seen_min[0]})"
    run(body())


def test_relay_killed_repeatedly_and_past_respawn_limit(lab):
    bed = Bed(lab)
    target = intents(hosts(1500))
    later = intents(hosts(1000, "198.19.0.0"))

    async def body():
        async with running(bed.driver(speaker_config())) as d:
            await until(bed.established, 20, "session up")
            task = asyncio.create_task(d.apply(target))
            first_pid = d.exabgp_pid
            for _ in range(14):  # ExaBGP respawns it 5 times per 64 s window, then exits (§8)
                await until(lambda: d.ready or d.exabgp_pid not in (None, first_pid), 20, "relay back")
                if d.exabgp_pid != first_pid:
                    break
                seen = d._channel.connections
                os.kill(d.relay_pid, signal.SIGKILL)
                # not "not ready": a respawned relay can pass its barrier between two polls
                await until(lambda: d._channel.connections > seen or d.exabgp_pid != first_pid, 10,
                            "a new relay or a new ExaBGP")
            await task
            assert bed.metrics.exabgp_restarts._value.get() == 1
            await d.apply(target + later)
            want = {str(i.prefix) for i in target + later}
            await until(lambda: bed.v4() == want, 30, "exactly the desired routes")
            assert set(d.announced()) == {i.key for i in target + later}
            assert d._channel.unexpected_lines == 0
    run(body())


def test_consumer_stall_longer_than_hold_time_keeps_the_session(lab):
    bed = Bed(lab, hold=3)

    async def body():
        async with running(bed.driver(speaker_config(hold_time=3))) as d:
            await until(bed.established, 20, "session up")
            await d.apply(intents(hosts(20000)))
            await until(lambda: bed.router.neighbor(NODE_V4).pfx_rcd == 20000, 60, "20k routes")
            up_before = bed.router.neighbor(NODE_V4).uptime_msec
            # ~1.2 MB of `show adj-rib out` output: far beyond the pipe and socket buffers.
            # The consumer sleeps for 2 hold times before looking; ExaBGP's blocking writes
            # must still complete, or keepalives stop and the router drops the session (§7).
            query = asyncio.create_task(d.adj_rib_out())
            await asyncio.sleep(7)
            lines = await query
            assert len(lines) == 20000
            n = bed.router.neighbor(NODE_V4)
            assert n.established and n.uptime_msec > up_before + 6000, "the session was reset"
            assert d.peer_states()["tor"].up
    run(body())


def test_10000_announced_then_withdrawn_router_ends_exact(lab):
    bed = Bed(lab)
    all_routes = intents(hosts(10000))
    remaining = all_routes[::4] + intents(hosts(500, "198.20.0.0"))

    async def body():
        async with running(bed.driver(speaker_config(), batch_size=100)) as d:
            await until(bed.established, 20, "session up")
            await d.apply(all_routes)
            await until(lambda: bed.router.neighbor(NODE_V4).pfx_rcd == 10000, 60, "10k routes")
            await d.apply(remaining)
            want = {str(i.prefix) for i in remaining}
            await until(lambda: bed.v4() == want, 60, "exactly the remaining routes")
            assert bed.metrics.announced_prefixes.labels("tor")._value.get() == len(remaining)
            await d.apply([])
            await until(lambda: not bed.v4(), 60, "everything withdrawn")
    run(body())


def test_stop_withdraw_empties_the_router_and_keep_leaves_stale_routes(lab):
    bed = Bed(lab, gr=True)

    async def body():
        d = bed.driver(speaker_config(gr=120))
        await d.start()
        await until(bed.established, 20, "session up")
        await d.apply(intents(hosts(50)))
        await until(lambda: len(bed.v4()) == 50, 20, "50 routes")
        await d.stop(withdraw=False)  # keep: SIGTERM only, GR keeps the routes stale
        p = await until(lambda: (lambda b: b if b and b.stale else None)(bed.router.best_path("198.18.0.0/32")),
                        10, "stale after keep-stop")
        assert len(bed.v4()) == 50
        d = bed.driver(speaker_config(gr=120), settle=0.5)
        await d.start()
        await d.apply(intents(hosts(50)))
        await until(lambda: bed.established() and not any(
            p.stale for p in bed.router.paths("198.18.0.0/32")), 30, "refreshed")
        # withdraw: SIGTERM alone would leave them stale (§8); the driver withdraws first
        await d.stop(withdraw=True)
        await until(lambda: not bed.v4(), 5, "router empty after withdraw-stop")
    run(body())
