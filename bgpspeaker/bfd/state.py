"""BFD session state from bfdd's own JSON, folded into what /status and metrics show.

bfdd answers `show bfd peers json` (status, diagnostic, uptime or downtime in seconds)
and `show bfd peers counters json` (session-up / session-down events since bfdd
started). The tracker turns successive polls into per-peer state that survives bfdd
restarts: `transitions` only grows (a bfdd restart resets its counters: the new
counts are added, not compared), `since` is when the status last changed, and a
session that is not up says why (bfdd's diagnostic, else the remote's, else ours:
"bfdd not running").

Pure: no I/O, the clock is passed in; `runner.py` polls and feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from bgpspeaker.model import JSON

UP = "up"
NOT_RUNNING = "bfdd not running"


@dataclass(frozen=True)
class Session:
    """One row of bfdd's answer, keyed by the peer address as bfdd prints it."""

    peer: str
    status: str  # up | down | init | shutdown (FRR's words)
    diagnostic: str
    remote_diagnostic: str
    seconds_in_status: Optional[int]  # uptime or downtime as bfdd counts it
    ups: int = 0
    downs: int = 0


def parse_sessions(peers_json: JSON, counters_json: JSON) -> dict[str, Session]:
    """bfdd's two JSON answers (lists of dicts) → {peer address: Session}; bad rows are skipped."""
    counters: dict[str, tuple[int, int]] = {}
    for row in counters_json if isinstance(counters_json, list) else ():
        if isinstance(row, dict) and isinstance(row.get("peer"), str):
            counters[row["peer"]] = (_int(row.get("session-up")), _int(row.get("session-down")))
    sessions = {}
    for row in peers_json if isinstance(peers_json, list) else ():
        if not isinstance(row, dict) or not isinstance(row.get("peer"), str):
            continue
        status = str(row.get("status") or "unknown")
        seconds = row.get("uptime") if status == UP else row.get("downtime")
        ups, downs = counters.get(row["peer"], (0, 0))
        sessions[row["peer"]] = Session(
            row["peer"],
            status,
            str(row.get("diagnostic") or "ok"),
            str(row.get("remote-diagnostic") or "ok"),
            seconds if isinstance(seconds, int) else None,
            ups,
            downs,
        )
    return sessions


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class PeerBfd:
    """What /status shows under a peer's `bfd`."""

    status: str
    why_down: Optional[str]
    since: Optional[float]  # time.time() of the last status change seen
    transitions: int

    @property
    def up(self) -> bool:
        return self.status == UP

    def as_dict(self) -> dict[str, JSON]:
        return {
            "status": self.status,
            "up": self.up,
            "whyDown": self.why_down,
            "since": self.since,
            "transitions": self.transitions,
        }


def why_down(session: Session) -> Optional[str]:
    if session.status == UP:
        return None
    if session.diagnostic != "ok":
        return session.diagnostic
    if session.remote_diagnostic != "ok":
        return f"peer says: {session.remote_diagnostic}"
    return "never came up" if session.ups == 0 else "down"


class Tracker:
    """Per peer address: the PeerBfd after each poll. `observe` returns the peers whose
    transition count grew (for the metrics' counter), with by how much."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.states: dict[str, PeerBfd] = {a: PeerBfd("down", NOT_RUNNING, None, 0) for a in addresses}
        self._counted: dict[str, int] = {a: 0 for a in self.states}  # bfdd's ups + downs already counted
        self._downs: dict[str, int] = {a: 0 for a in self.states}  # bfdd's downs already seen
        self.new_downs: dict[str, int] = {}  # sessions bfdd saw go down since the previous observe()

    def retarget(self, addresses: Iterable[str]) -> None:
        """Follow a new set of peers: those that stay keep their history, new ones start down."""
        wanted = set(addresses)
        self.states = {a: self.states.get(a) or PeerBfd("down", NOT_RUNNING, None, 0) for a in sorted(wanted)}
        self._counted = {a: self._counted.get(a, 0) for a in self.states}
        self._downs = {a: self._downs.get(a, 0) for a in self.states}

    def observe(self, sessions: Optional[dict[str, Session]], now: float) -> dict[str, int]:
        """One poll (`None`: bfdd is not running or did not answer)."""
        grown = {}
        self.new_downs = {}
        for address, old in self.states.items():
            session = sessions.get(address) if sessions is not None else None
            why: Optional[str]  # why it is down (None: up)
            if session is None:
                status, why, counted = "down", NOT_RUNNING, 0
                step = 1 if old.status == UP else 0
            else:
                status, why, counted = session.status, why_down(session), session.ups + session.downs
                previous = self._counted[address]
                # bfdd restarted when its counters went back: every event it counts now is new
                step = counted - previous if counted >= previous else counted
                if step == 0 and (status == UP) != (old.status == UP):
                    step = 1  # a change bfdd's counters cannot show (a new bfdd's first Up is counted, Down not)
            self._counted[address] = counted
            if session is None:
                self._downs[address] = 0  # the next bfdd counts from 0; a stopped bfdd is not a flap
            else:
                seen = self._downs[address]
                downs = session.downs - seen if session.downs >= seen else session.downs
                self._downs[address] = session.downs
                if downs:
                    self.new_downs[address] = downs
            if status == old.status and old.since is not None:
                since = old.since
            elif old.since is None and session is not None and session.seconds_in_status is not None:
                since = now - session.seconds_in_status  # first sight: bfdd knows for how long
            else:
                since = now
            self.states[address] = PeerBfd(status, why, since, old.transitions + step)
            if step:
                grown[address] = step
        return grown


@dataclass(frozen=True)
class Damping:
    """RFC 2439's route flap damping, applied to BFD session flaps (FRR's bfdd has none).

    Each time bfdd sees the session go down the penalty grows by PENALTY; it halves every
    `half_life` seconds. Above `suppress` the session is held administratively down (the
    router's BGP session then runs on its hold timer alone, and stays up on a lossy link:
    TCP retransmits, BFD's three missed packets do not); below `reuse` it is let up again.
    The ceiling bounds a hold to `max_hold` seconds. Defaults: a third flap within ~20 s,
    or a second right after the first, holds BFD down for ~30-40 s; under lasting loss a
    flap per ~30 s instead of one every few seconds (measured: docs/bfd.md).
    """

    penalty: float = 1000.0
    half_life: float = 30.0
    suppress: float = 2000.0
    reuse: float = 1000.0
    max_hold: float = 120.0

    @property
    def ceiling(self) -> float:
        return self.reuse * 2 ** (self.max_hold / self.half_life)

    def decayed(self, penalty: float, seconds: float) -> float:
        return penalty * 2 ** (-max(0.0, seconds) / self.half_life)


@dataclass(frozen=True)
class FlapState:
    penalty: float = 0.0
    at: float = 0.0  # when `penalty` was computed
    held: bool = False

    def flapped(self, damping: Damping, now: float, downs: int = 1) -> "FlapState":
        penalty = min(damping.ceiling, damping.decayed(self.penalty, now - self.at) + damping.penalty * downs)
        return FlapState(penalty, now, self.held or penalty >= damping.suppress)

    def tick(self, damping: Damping, now: float) -> "FlapState":
        """Release the hold once the penalty decayed below `reuse`."""
        if self.held and damping.decayed(self.penalty, now - self.at) < damping.reuse:
            return FlapState(damping.decayed(self.penalty, now - self.at), now, False)
        return self

    def held_until(self, damping: Damping) -> Optional[float]:
        """When the hold ends if nothing else flaps (None: not held)."""
        if not self.held:
            return None
        return self.at + damping.half_life * math.log2(self.penalty / damping.reuse)
