"""The cyclic collector is paused for the initial sync only: back on after the first plan,
or after GC_PAUSE_LIMIT_SECONDS if the sync never completes (a paused collector for ever
would leak every reference cycle: tracebacks of retried requests, for one)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bgpspeaker import daemon as daemon_module
from bgpspeaker.config.schema import ClusterConfig, Config, SpeakerConfig
from bgpspeaker.daemon import Daemon, Options


@pytest.fixture
def make_speaker(tmp_path):
    """A Daemon is made on the loop it runs on: call this inside the scenario."""
    config_path = tmp_path / "speaker.yaml"
    config_path.write_text("")
    yield lambda: Daemon(Options(str(config_path), "node-a", None, allocator=False, dry_run=True, run_dir=tmp_path),
                         Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(64512)))
    gc.unfreeze()
    gc.enable()


def test_paused_until_the_first_plan_then_frozen_and_back_on(make_speaker):
    async def scenario() -> None:
        speaker = make_speaker()
        speaker._pause_gc_for_the_initial_sync()
        assert not gc.isenabled()
        speaker._resume_gc()
        assert gc.isenabled() and gc.get_freeze_count() > 0

    asyncio.run(scenario())


def test_back_on_after_the_limit_if_the_sync_never_completes(make_speaker, monkeypatch):
    monkeypatch.setattr(daemon_module, "GC_PAUSE_LIMIT_SECONDS", 0.05)

    async def scenario() -> None:
        speaker = make_speaker()
        speaker._pause_gc_for_the_initial_sync()
        assert not gc.isenabled()
        async with asyncio.timeout(5):
            while not gc.isenabled():
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
