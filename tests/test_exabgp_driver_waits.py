"""The driver's waits give up when their task is cancelled, whatever else is ready.

CPython 3.11's `asyncio.wait_for` returns the inner result instead of raising when the
cancellation and the inner completion land in the same loop iteration (gh-86296, fixed
in 3.12). The daemon's reconcile task sits in these waits; a lost cancellation left it
running after SIGTERM and the speaker never exited (seen once in CI, 1 run in ~10 here).
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from bgpspeaker.config.schema import ClusterConfig, Config, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.driver import ExabgpDriver
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import NodeView


def driver(tmp_path) -> ExabgpDriver:
    config = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512),
                    peers=(PeerConfig("tor", ipaddress.ip_address("10.0.0.1"), 64500),))
    node = NodeView(name="node-1", addresses=(("InternalIP", "10.0.0.10"),))
    return ExabgpDriver(config, node, tmp_path, Metrics())  # not started: no ExaBGP needed


def test_a_wait_cancelled_as_progress_arrives_raises_cancelled(tmp_path):
    async def scenario() -> None:
        the_driver = driver(tmp_path)
        waiter = asyncio.create_task(the_driver._wait(lambda: False))
        await asyncio.sleep(0)  # the waiter now sleeps on the progress event
        the_driver._progress()  # progress and cancellation in the same iteration
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):  # the bug: the waiter goes on waiting for ever
                await waiter

    asyncio.run(scenario())


def test_a_wait_still_returns_on_progress_and_polls_without_it(tmp_path):
    async def scenario() -> None:
        the_driver = driver(tmp_path)
        done = []
        waiter = asyncio.create_task(the_driver._wait(lambda: bool(done)))
        await asyncio.sleep(0)
        done.append(True)
        the_driver._progress()
        async with asyncio.timeout(2):
            await waiter
        # no progress signal at all: the 0.5 s safety poll still sees the predicate
        flag = []
        waiter = asyncio.create_task(the_driver._wait(lambda: bool(flag)))
        await asyncio.sleep(0)
        flag.append(True)
        async with asyncio.timeout(2):
            await waiter

    asyncio.run(scenario())
