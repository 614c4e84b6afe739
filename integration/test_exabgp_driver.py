"""The driver against a real ExaBGP 5.0.15 on loopback (no router: ExaBGP keeps announced routes in
its adj-rib-out while the session is down, docs/reference/exabgp-api.md §8, and `show adj-rib out` is the truth).

What a router sees is tested in test_exabgp_lab.py; here: bookkeeping, resync after
relay and ExaBGP deaths, the ack deadline, reconfigure, metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
from pathlib import Path

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.driver import ExabgpDriver
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import NodeView, RouteAttributes, RouteIntent, Tier

A = ipaddress.ip_address
NODE = NodeView("node-1", addresses=(("InternalIP", "10.0.0.10"),))
ATTRS = RouteAttributes(next_hop=A("10.0.0.10"), as_path=(64512,), med=100)
ATTRS2 = RouteAttributes(next_hop=A("10.0.0.10"), as_path=(64512, 64512), med=200)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_config(hold_time=3, peers=("tor-a",)) -> Config:
    port = closed_port()  # nobody listens: sessions stay down, commands are still acked
    addrs = {"tor-a": "127.0.0.2", "tor-b": "127.0.0.3"}
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512, router_id=A("10.0.0.10")),
                  peers=tuple(PeerConfig(p, A(addrs[p]), 64500, port=port, hold_time=hold_time,
                                         source_address=A("127.0.0.1")) for p in peers),
                  exabgp=ExabgpConfig(graceful_restart=0))


def routes(n: int, peer: str = "tor-a", attrs=ATTRS, offset=0) -> list[RouteIntent]:
    base = int(A("198.18.0.0"))
    return [RouteIntent(ipaddress.ip_network(f"{A(base + offset + i)}/32"), peer, attrs, Tier.PRIMARY, ("ns/s",))
            for i in range(n)]


async def rib(driver: ExabgpDriver) -> set[tuple[str, str]]:
    lines = await driver.adj_rib_out()
    return {(line.split()[0], line.split()[3]) for line in lines}


def expected(intents, addrs={"tor-a": "127.0.0.2", "tor-b": "127.0.0.3"}) -> set[tuple[str, str]]:
    return {(addrs[i.peer], str(i.prefix)) for i in intents}


async def wait(predicate, timeout=20.0):
    async def loop():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), timeout)


def drive(tmp_path: Path, body, **kw):
    async def main():
        metrics = Metrics()
        driver = ExabgpDriver(kw.pop("config", None) or make_config(), NODE, tmp_path / f"run-{os.getpid()}",
                              metrics, **kw)
        await driver.start()
        try:
            await asyncio.wait_for(body(driver, metrics), 120)
        finally:
            await driver.stop(withdraw=False)
            assert driver.exabgp_pid is None
    asyncio.run(main())


def test_apply_announces_changes_and_withdraws(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        assert d.ready
        first = routes(250)
        await d.apply(first)
        assert set(d.announced()) == {i.key for i in first}
        assert await rib(d) == expected(first)
        second = routes(100, attrs=ATTRS2) + routes(50, offset=300)
        await d.apply(second)
        assert await rib(d) == expected(second)
        assert {k: v.attributes for k, v in d.announced().items()} == {i.key: i.attributes for i in second}
        assert m.announced_prefixes.labels("tor-a")._value.get() == 150
        assert m.updates_sent.labels("tor-a")._value.get() >= 5
        assert m.session_up.labels("tor-a")._value.get() == 0
        assert d.peer_states()["tor-a"].up is False
        await d.apply([])
        assert await rib(d) == set() and d.announced() == {}
        assert m.announced_prefixes.labels("tor-a")._value.get() == 0
    drive(tmp_path, body)


def test_an_apply_that_changes_nothing_returns_on_progress_not_on_the_safety_net(tmp_path, monkeypatch):
    """A new Service's claim and its status coming back are reconciles that change no route:
    each apply() must return when its (empty) sync is done. It used to wait out _wait's
    0.5 s safety net, twice per new Service (~0.9 s to the router at any size); with the net
    at 60 s, that would be the 10 s deadline here."""
    monkeypatch.setattr(ExabgpDriver, "progress_safety_net", 60.0)

    async def body(d: ExabgpDriver, m: Metrics):
        first = routes(20)
        await asyncio.wait_for(d.apply(first), 10)
        for _ in range(3):
            await asyncio.wait_for(d.apply(tuple(first)), 10)  # the same route objects: nothing to send
        await asyncio.wait_for(d.apply([]), 10)
        await asyncio.wait_for(d.apply([]), 10)
    drive(tmp_path, body)


def test_random_applies_leave_exactly_the_desired_routes(tmp_path):
    """apply() diffs only what changed since the last one (by identity, like the planner hands
    routes over); whatever the sequence, ExaBGP must hold exactly the desired routes."""
    import random
    rnd = random.Random(7)
    bad = RouteAttributes(next_hop=A("127.0.0.1"), as_path=(64512,))  # rejected before it is sent

    async def body(d: ExabgpDriver, m: Metrics):
        current = routes(120)
        fresh = iter(range(1000, 100000))
        for step in range(30):
            change = rnd.choice(["add", "remove", "attrs", "equal", "unknown", "bad", "same", "empty"])
            keep = [r for r in current if r.attributes is not bad or rnd.random() < 0.5]
            if change == "add":
                keep += routes(rnd.randint(1, 30), offset=next(fresh) * 40)
            elif change == "remove":
                keep = rnd.sample(keep, max(0, len(keep) - rnd.randint(1, 30)))
            elif change in ("attrs", "equal"):  # new objects for the same keys
                for i in rnd.sample(range(len(keep)), min(len(keep), 20)):
                    r = keep[i]
                    attrs = (ATTRS2 if r.attributes == ATTRS else ATTRS) if change == "attrs" else r.attributes
                    keep[i] = RouteIntent(r.prefix, r.peer, attrs, r.tier, r.services)
            elif change == "unknown":
                keep += routes(3, peer="nope", offset=next(fresh) * 40)
            elif change == "bad":
                keep += routes(2, attrs=bad, offset=next(fresh) * 40)
            elif change == "empty":
                keep = []
            current = keep
            await d.apply(tuple(current) if rnd.random() < 0.5 else iter(current))
            good = [r for r in current if r.peer == "tor-a" and r.attributes is not bad]
            assert await rib(d) == expected(good), (step, change)
            assert {k: v.attributes for k, v in d.announced().items()} == {r.key: r.attributes for r in good}, step
    drive(tmp_path, body)


def test_routes_for_unknown_peers_are_skipped(tmp_path):
    async def body(d, m):
        await d.apply(routes(3) + routes(3, peer="nope"))
        assert await rib(d) == expected(routes(3))
    drive(tmp_path, body)


def test_relay_killed_during_apply_loses_nothing(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        await d.apply(routes(3000))
        target = routes(2000, attrs=ATTRS2, offset=1000) + routes(500, peer="tor-b")
        task = asyncio.create_task(d.apply(target))
        kills = 0
        for _ in range(3):
            await wait(lambda: d.relay_pid is not None and d.ready)
            await asyncio.sleep(0.05)
            seen = d._channel.connections
            os.kill(d.relay_pid, signal.SIGKILL)
            kills += 1
            await wait(lambda: d._channel.connections > seen)
        await task
        assert await rib(d) == expected(target)
        assert {k: v.attributes for k, v in d.announced().items()} == {i.key: i.attributes for i in target}
        assert m.exabgp_restarts._value.get() == 0  # the relay was respawned by ExaBGP, not a restart
        assert d._channel.unexpected_lines == 0  # no ack ever arrived that we could not attribute
    drive(tmp_path, body, config=make_config(peers=("tor-a", "tor-b")))


def test_relay_killed_past_exabgps_respawn_limit_restarts_exabgp(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        target = routes(500)
        await d.apply(target)
        first_pid = d.exabgp_pid
        # ExaBGP respawns its helper 5 times per 64 s window, then exits rc=1 (docs/reference/exabgp-api.md §8);
        # the window is wall-clock aligned, so keep killing until it gives up.
        for _ in range(14):
            if d.exabgp_pid not in (None, first_pid):
                break
            await wait(lambda: d.ready or d.exabgp_pid not in (None, first_pid))
            if d.exabgp_pid != first_pid:
                break
            seen = d._channel.connections
            os.kill(d.relay_pid, signal.SIGKILL)
            await wait(lambda: d._channel.connections > seen or d.exabgp_pid != first_pid)
        await wait(lambda: d.ready and d.exabgp_pid not in (None, first_pid))
        assert m.exabgp_restarts._value.get() == 1
        await d.apply(target)
        assert await rib(d) == expected(target)
    drive(tmp_path, body)


def test_exabgp_killed_is_restarted_and_replayed(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        target = routes(800)
        await d.apply(target)
        pid = d.exabgp_pid
        os.kill(pid, signal.SIGKILL)
        await wait(lambda: d.ready and d.exabgp_pid not in (None, pid))
        assert m.exabgp_restarts._value.get() == 1
        await wait(lambda: len(d.announced()) == 800)
        assert await rib(d) == expected(target)
    drive(tmp_path, body)


def test_unacknowledged_command_past_deadline_restarts_exabgp(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        await d.apply(routes(10))
        pid = d.exabgp_pid
        os.kill(pid, signal.SIGSTOP)  # wedged: reads nothing, acks nothing
        try:
            await d.apply(routes(20))  # returns once the restarted ExaBGP acked the replay
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert d.exabgp_pid != pid and m.exabgp_restarts._value.get() == 1
        assert await rib(d) == expected(routes(20))
    drive(tmp_path, body, ack_timeout=1.5)


def test_reconfigure_reloads_peer_changes_and_restarts_only_for_global_ones(tmp_path):
    """A peer changed, added or removed: ExaBGP reloads its config (same pid) and holds the
    new neighbors; a new router ID: ExaBGP restarts and the desired routes are replayed.
    (Sessions here are down, and ExaBGP drops a reload while routes are queued for a peer,
    so the reloads come before the first routes; what a router sees is test_hitless.py.)"""
    import dataclasses

    config = make_config(peers=("tor-a", "tor-b"))
    a, b = config.peers

    async def neighbors(d: ExabgpDriver) -> str:
        return "\n".join((await d._channel.exclusive("show neighbor configuration"))[1])

    async def body(d: ExabgpDriver, m: Metrics):
        pid = d.exabgp_pid
        relabelled = NodeView(NODE.name, labels=(("rack", "r9"),), addresses=NODE.addresses)
        assert await d.reconfigure(config, relabelled) is False
        slower = dataclasses.replace(config, peers=(a, dataclasses.replace(b, hold_time=6)))
        assert await d.reconfigure(slower, NODE) is False  # not restarted
        assert d.exabgp_pid == pid and "hold-time 6;" in await neighbors(d)
        only_a = dataclasses.replace(config, peers=(a,))
        assert await d.reconfigure(only_a, NODE) is False
        assert d.exabgp_pid == pid and "127.0.0.3" not in await neighbors(d)
        assert set(d.peer_states()) == {"tor-a"}
        assert await d.reconfigure(config, NODE) is False
        assert d.exabgp_pid == pid and "127.0.0.3" in await neighbors(d)
        # two at once (a config reload and a node change): one after the other, neither restarts
        both = await asyncio.gather(d.reconfigure(slower, NODE), d.reconfigure(config, NODE))
        assert both == [False, False] and d.exabgp_pid == pid and "hold-time 6;" not in await neighbors(d)
        await d.apply(routes(100) + routes(5, peer="tor-b", offset=500))
        assert await rib(d) == expected(routes(100) + routes(5, peer="tor-b", offset=500))
        new_id = dataclasses.replace(config, speaker=dataclasses.replace(config.speaker, router_id=A("10.0.0.11")))
        assert await d.reconfigure(new_id, NODE) is True
        assert d.ready and d.exabgp_pid != pid
        assert await rib(d) == expected(routes(100) + routes(5, peer="tor-b", offset=500))
    drive(tmp_path, body, config=config)


def test_an_unusable_next_hop_affects_only_its_own_routes(tmp_path):
    async def body(d: ExabgpDriver, m: Metrics):
        bad = RouteAttributes(next_hop=A("127.0.0.1"), as_path=(64512,))
        good = routes(5)
        await d.apply(good + routes(3, attrs=bad, offset=100))  # returns: nothing waits forever
        assert await rib(d) == expected(good)
        assert set(d.announced()) == {i.key for i in good}
        assert len(d.rejected) == 3 and all("next-hop" in why for why in d.rejected.values())
    drive(tmp_path, body)


def test_orphaned_exabgp_exits_on_its_own(tmp_path):
    """The daemon is gone (nobody listens on the socket): each relay gives up after a few
    seconds, ExaBGP respawns it 5 times per 64 s window, then exits rc=1 (docs/reference/exabgp-api.md §8,
    docs/reference/lab-notes.md). Without the relay's connect timeout it would linger for minutes."""
    import subprocess
    import sys

    from bgpspeaker.exabgp.render import exabgp_environment, render_config

    conf = tmp_path / "orphan.conf"
    conf.write_text(render_config(make_config(), NODE, str(tmp_path / "nobody.sock"), mask_secrets=False))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "exabgp"), str(conf)],
                            env=dict(os.environ, **exabgp_environment()), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # 6 deaths × ~3 s, twice if they straddle a 64 s window boundary. Measured here: it exits
        # rc=0 in ~20 s when its helper keeps exiting 1 (docs/reference/exabgp-api.md saw rc=1 for SIGKILLed helpers).
        proc.wait(90)  # TimeoutExpired if it lingers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
