"""The fleet switch (cluster.maintenance) as a drain state: the same ordering as `bgpspeaker drain`."""

from __future__ import annotations

from bgpspeaker.daemon import DrainState, maintenance_state


def test_drain_stays_draining_and_withdraw_withdraws_after_drain_seconds():
    assert maintenance_state(None, 0.0, 100.0, 5.0) is None
    assert maintenance_state("drain", 0.0, 1e9, 5.0) == DrainState.DRAINING
    assert maintenance_state("withdraw", 10.0, 10.0, 5.0) == DrainState.DRAINING
    assert maintenance_state("withdraw", 10.0, 14.9, 5.0) == DrainState.DRAINING
    assert maintenance_state("withdraw", 10.0, 15.0, 5.0) == DrainState.WITHDRAWN
    # a speaker that starts with `withdraw` set (its cluster was taken out before): at once
    assert maintenance_state("withdraw", float("-inf"), 0.0, 5.0) == DrainState.WITHDRAWN
    assert maintenance_state("withdraw", 0.0, 0.0, 0.0) == DrainState.WITHDRAWN
