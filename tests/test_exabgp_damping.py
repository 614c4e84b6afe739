"""Session damping policy (pure): when to hold a resetting peer's routes back, and for how long."""

from __future__ import annotations

from bgpspeaker.exabgp.damping import SessionDamping


def lose(damping: SessionDamping, times: list[float], peer: str = "tor") -> list:
    return [damping.session_lost(peer, t) for t in times]


def test_a_few_resets_are_tolerated():
    damping = SessionDamping(limit=5, window=30)
    assert lose(damping, [0, 1, 2, 3]) == [None] * 4
    assert not damping.held("tor", 3.5)


def test_the_fifth_reset_within_the_window_starts_a_hold():
    damping = SessionDamping(limit=5, window=30, base=10)
    assert lose(damping, [0, 1, 2, 3, 4]) == [None, None, None, None, 10]
    assert damping.held("tor", 13.9) and not damping.held("tor", 14.1)
    assert damping.held_peers(5) == frozenset({"tor"})


def test_resets_spread_wider_than_the_window_never_hold():
    damping = SessionDamping(limit=5, window=30)
    assert lose(damping, [0, 10, 20, 31, 41, 51, 62, 72]) == [None] * 8


def test_holds_double_up_to_the_maximum_and_calm_resets_them():
    damping = SessionDamping(limit=2, window=30, base=10, maximum=35, calm_after=600)
    assert lose(damping, [0, 1]) == [None, 10]          # held until 11
    assert lose(damping, [5]) == [None]                 # during a hold: not counted
    assert lose(damping, [12, 13]) == [None, 20]        # 2nd hold: doubled
    assert lose(damping, [40, 41]) == [None, 35]        # 3rd: capped at the maximum
    assert lose(damping, [1000, 1001]) == [None, 10]    # after 10 calm minutes: from the start


def test_peers_are_independent():
    damping = SessionDamping(limit=2, window=30, base=10)
    assert lose(damping, [0, 1], "tor-a") == [None, 10]
    assert not damping.held("tor-b", 2)
    assert damping.held_peers(2) == frozenset({"tor-a"})
