"""The daemon's wiring of ColdStartHold (tests/test_leader_writes.py tests the class alone):
the leader's writes wait for the first routes to be with ExaBGP, a bounded time; the hold
changes nothing else a reconcile does (`--dry-run` still logs); a shutdown during the hold
starts no writes on the way out. Found by a review of 3ed69f6: the release had been put
between `if driver` and its `elif dry_run`, and the hold was stopped after the shutdown's
awaits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from bgpspeaker.daemon import Daemon, Options, _Allocator
from bgpspeaker.leader_writes import ColdStartHold
from bgpspeaker.views import snapshot_from_objects
from testkit.hardening import attack_config, legit_objects

DEADLINE = 5.0  # seconds: what the tests wait for at most


@dataclass
class FakeWatcher:
    snap: object
    synced: bool = True
    stale: bool = False
    changed_at: object = None

    def snapshot(self):
        return self.snap

    def stop(self, timeout: float) -> None:
        pass


@dataclass
class FakeElector:
    is_leader: bool

    def stop(self, timeout: float) -> None:
        pass


@dataclass
class FakeSchedule:
    """A status or record schedule: what it was offered."""

    offers: list = field(default_factory=list)

    def offer(self, *args) -> None:
        self.offers.append(args)

    def stop(self) -> None:
        pass


class BlockingDriver:
    """apply() waits until `acked` is set: an ExaBGP that is up but slow to answer."""

    ready = True

    def __init__(self) -> None:
        self.acked = asyncio.Event()
        self.applied = 0

    async def apply(self, desired) -> None:
        self.applied += 1
        await self.acked.wait()

    async def stop(self, withdraw: bool) -> None:
        await asyncio.sleep(0.3)  # a withdraw being acked: longer than the short holds below


def make(tmp_path, *, dry_run: bool, leader: bool, limit: float = 60.0) -> tuple[Daemon, FakeSchedule, FakeSchedule]:
    config_path = tmp_path / "c.yaml"
    config_path.write_text("")
    daemon = Daemon(
        Options(str(config_path), "node-1", None, allocator=True, dry_run=dry_run, run_dir=tmp_path), attack_config()
    )
    daemon.watcher = FakeWatcher(snapshot_from_objects(legit_objects()))
    status, records = FakeSchedule(), FakeSchedule()
    hold = ColdStartHold(daemon.loop, limit, daemon._leader_writes)
    daemon.allocator = _Allocator(FakeElector(leader), status, records, hold)
    return daemon, status, records


def with_blocking_driver(daemon: Daemon) -> BlockingDriver:
    daemon.driver = driver = BlockingDriver()
    daemon._node = daemon.watcher.snapshot().nodes["node-1"]  # the driver is started: nothing to (re)start
    return driver


async def until(condition, what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE} s: {what}") from None


def test_dry_run_with_the_allocator_logs_what_it_would_announce(tmp_path, caplog):
    """`bgpspeaker run --dry-run`, the allocator on (the default): it logged nothing."""

    async def scenario() -> None:
        daemon, _, _ = make(tmp_path, dry_run=True, leader=False)
        with caplog.at_level(logging.INFO, logger="bgpspeaker.daemon"):
            await daemon.reconcile()
        assert any("dry-run: would announce" in r.getMessage() for r in caplog.records)
        assert daemon.allocator.cold_start.open  # no driver: nothing to wait for

    asyncio.run(scenario())


def test_the_leaders_writes_wait_for_the_first_apply_then_go(tmp_path):
    async def scenario() -> None:
        daemon, status, records = make(tmp_path, dry_run=False, leader=True)
        driver = with_blocking_driver(daemon)
        first = asyncio.create_task(daemon.reconcile())
        await until(lambda: driver.applied == 1, "the first apply")
        assert status.offers == [] and records.offers == []  # held while ExaBGP takes the first routes
        driver.acked.set()
        await first
        assert len(status.offers) == 1 and len(records.offers) == 1
        await daemon.reconcile()
        assert len(status.offers) == 2  # open: every later reconcile hands over at once
        daemon.allocator.cold_start.stop()

    asyncio.run(scenario())


def test_the_leaders_writes_go_after_the_limit_while_the_first_apply_hangs(tmp_path):
    """Issue 14, bounded: an ExaBGP that never answers holds the status back `limit` at most."""

    async def scenario() -> None:
        daemon, status, records = make(tmp_path, dry_run=False, leader=True, limit=0.1)
        with_blocking_driver(daemon)
        first = asyncio.create_task(daemon.reconcile())
        await until(lambda: status.offers and records.offers, "the writes after the limit")
        first.cancel()
        daemon.allocator.cold_start.stop()

    asyncio.run(scenario())


def test_a_node_that_loses_the_lease_while_held_writes_nothing(tmp_path):
    async def scenario() -> None:
        daemon, status, records = make(tmp_path, dry_run=False, leader=True, limit=0.1)
        driver = with_blocking_driver(daemon)
        first = asyncio.create_task(daemon.reconcile())
        await until(lambda: driver.applied == 1, "the first apply")
        daemon.allocator.elector.is_leader = False
        await until(lambda: daemon.allocator.cold_start.open, "the hold to open after its limit")
        assert status.offers == [] and records.offers == []
        first.cancel()

    asyncio.run(scenario())


def test_a_shutdown_during_the_hold_starts_no_leader_writes(tmp_path):
    """SIGTERM in the first seconds of a cold start: the hold's limit passed while the
    shutdown awaited the driver's withdraw, and a full status pass and record decision
    started on the way out."""

    async def scenario() -> None:
        daemon, status, records = make(tmp_path, dry_run=False, leader=True, limit=0.1)
        driver = with_blocking_driver(daemon)
        first = asyncio.create_task(daemon.reconcile())
        await until(lambda: driver.applied == 1, "the first apply")
        first.cancel()  # run() cancels the reconcile task, then calls _shutdown()
        await daemon._shutdown()  # driver.stop takes 0.3 s: past the hold's limit
        assert status.offers == [] and records.offers == []

    asyncio.run(scenario())
