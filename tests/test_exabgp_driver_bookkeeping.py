"""The driver's bookkeeping with a scripted channel (no ExaBGP): after a partial diff, what
ExaBGP refused is sent again at the next sync, as a whole diff would.

apply() diffs only the keys that changed since the last sync plus those a sync left
differing (`_unsynced`). This is the part a real ExaBGP cannot be made to exercise: it
answers `error` only to commands it cannot parse, which the driver never builds.
"""

from __future__ import annotations

import asyncio
import ipaddress

from bgpspeaker.config.schema import ClusterConfig, Config, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.driver import ExabgpDriver
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import NodeView, RouteAttributes, RouteIntent, Tier

A = ipaddress.ip_address
ATTRS = RouteAttributes(next_hop=A("10.0.0.10"), as_path=(64512,), med=100)


class ScriptedChannel:
    """Answers every command `done`, except `error` to the first `refusals` commands naming `prefix`."""

    def __init__(self, prefix: str, refusals: int) -> None:
        self.prefix, self.refusals, self.lines = prefix, refusals, []

    async def submit(self, line: str) -> asyncio.Future:
        self.lines.append(line)
        future = asyncio.get_running_loop().create_future()
        refuse = self.prefix in line.split() and self.refusals > 0
        self.refusals -= refuse
        future.set_result("error" if refuse else "done")
        return future


def route(i: int) -> RouteIntent:
    return RouteIntent(ipaddress.ip_network(f"198.18.0.{i}/32"), "tor", ATTRS, Tier.PRIMARY, (f"ns/s{i}",))


async def applied(driver: ExabgpDriver, routes) -> None:
    """apply() with this test standing in for the worker: one sync, then apply returns."""
    task = asyncio.create_task(driver.apply(routes))
    await asyncio.sleep(0)
    await driver._sync_once()
    async with asyncio.timeout(2):
        await task


def test_a_refused_command_is_retried_at_the_next_partial_sync(tmp_path):
    async def scenario() -> None:
        config = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512),
                        peers=(PeerConfig("tor", A("10.0.0.1"), 64500),))
        driver = ExabgpDriver(config, NodeView("node-1", addresses=(("InternalIP", "10.0.0.10"),)), tmp_path,
                              Metrics(), batch_size=1)
        driver._channel = channel = ScriptedChannel("198.18.0.3/32", refusals=1)
        first = [route(i) for i in range(1, 6)]
        await applied(driver, first)
        assert {str(k[1]) for k in driver.announced()} == {f"198.18.0.{i}/32" for i in (1, 2, 4, 5)}
        sent = len(channel.lines)

        await applied(driver, first + [route(9)])  # an unrelated change: a partial sync
        assert {str(k[1]) for k in driver.announced()} == {f"198.18.0.{i}/32" for i in (1, 2, 3, 4, 5, 9)}
        assert len(channel.lines) - sent == 2, channel.lines[sent:]  # .9 and the retried .3, nothing else

        await applied(driver, first + [route(9)])  # nothing changed, nothing differs: nothing sent
        assert len(channel.lines) - sent == 2

    asyncio.run(scenario())
