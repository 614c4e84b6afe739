"""Session damping: stop feeding a peer that resets the session after our UPDATEs.

ExaBGP reconnects at once after a peer closes an established session, and re-sends its
adj-rib-out on every new session (docs/reference/exabgp-api.md §8). A router that rejects what we send
(NOTIFICATION 3/x for an attribute it dislikes, or a Cease on every UPDATE) therefore
makes ExaBGP flap forever: ~30 sessions/s measured here, a log line each
(integration/test_faults.py). docs/reference/exabgp-api.md §9 asks the parent to react to repeated
downs. ExaBGP 5.0 has no per-neighbor disable, and restarting it would drop the healthy
peers too; but the loop needs our UPDATEs, so the reaction is to hold our routes back
from that one peer: the driver withdraws them from ExaBGP's adj-rib-out (a reconnect then
sends nothing), keeps the session, and tries again after a hold that doubles each time
the peer keeps resetting (like BGP route-flap damping, RFC 2439, but per session).

Pure bookkeeping with the clock passed in, so the policy is tested without a router.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

FLAP_LIMIT = 5  # established sessions lost within FLAP_WINDOW before routes are held back
FLAP_WINDOW = 30.0  # seconds; a healthy peer never loses 5 sessions in 30 s
HOLD_BASE = 10.0  # seconds of the first hold; each further one doubles...
HOLD_MAX = 300.0  # ...up to this
CALM_AFTER = 600.0  # seconds without a flap that forget the peer's history


@dataclass
class _Peer:
    flaps: deque = field(default_factory=deque)
    level: int = 0  # holds so far, for the exponential backoff
    held_until: float = 0.0
    last_flap: float = float("-inf")


class SessionDamping:
    def __init__(
        self,
        limit: int = FLAP_LIMIT,
        window: float = FLAP_WINDOW,
        base: float = HOLD_BASE,
        maximum: float = HOLD_MAX,
        calm_after: float = CALM_AFTER,
    ) -> None:
        self.limit, self.window, self.base, self.maximum, self.calm_after = limit, window, base, maximum, calm_after
        self._peers: dict[str, _Peer] = {}

    def session_lost(self, peer: str, now: float) -> Optional[float]:
        """Record that an *established* session to `peer` went down at `now`.

        Returns the number of seconds to hold the peer's routes back when this loss starts
        a hold, else None (also while a hold is already running).
        """
        state = self._peers.setdefault(peer, _Peer())
        if now - state.last_flap > self.calm_after:
            state.level = 0
        state.last_flap = now
        if now < state.held_until:
            return None
        state.flaps.append(now)
        while state.flaps and state.flaps[0] < now - self.window:
            state.flaps.popleft()
        if len(state.flaps) < self.limit:
            return None
        seconds = min(self.base * 2**state.level, self.maximum)
        state.level += 1
        state.held_until = now + seconds
        state.flaps.clear()
        return seconds

    def held(self, peer: str, now: float) -> bool:
        state = self._peers.get(peer)
        return state is not None and now < state.held_until

    def held_peers(self, now: float) -> frozenset[str]:
        return frozenset(name for name, state in self._peers.items() if now < state.held_until)
