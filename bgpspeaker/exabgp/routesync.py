"""Desired routes vs what ExaBGP acknowledged, and the commands that close the gap: a pure state machine.

Why a module of its own, with no I/O and no asyncio: the rules that make the router end
up with exactly the desired set (docs/design.md invariant 3) — what to replay after a
restart or a relay reconnect, what a peer gets when its session comes up, what happens
to a command whose answer never came — are the part that must be right every time, and
they are easiest to get right where a test can drive every order of events without a
process (tests/test_routesync.py). The driver (driver.py) only carries the commands
this machine emits to ExaBGP and reports back what happened to them.

Inputs (events), each a method call:
- `desire(intents)`: the desired set changed (the daemon's apply); `replace_desired`,
  `set_peers`, `reload`: the desired set or the peers changed for another reason.
- `connected(established)`: a relay connection passed its barrier: replay everything.
- `session_up(peer)`: that peer's routes again, then its End-of-RIB.
- `connection_lost()`: the commands in flight have an unknown effect (suspect).
- `restarted()`: a new ExaBGP, its RIB empty: nothing is announced, nothing in doubt.
- `acked(id)`, `refused(id, reason)`, `lost(id)`: the fate of one emitted command.
- `touch()`: sync again (a peer's damping hold started: its routes are withdrawn).

Outputs: `begin(held)` plans a sync; `next_commands()` gives what may be sent now: at
most `window` `Send`s unanswered at any time, an `EndOfRib` only alone on the window
(ExaBGP answers it out of order, docs/reference/exabgp-api.md §5).

A sync, planned at `begin` from a snapshot of the desired set (minus the routes of
damped peers):
- after a (re)connection: every desired route announced, and a withdraw for whatever is
  (or may be) announced and no longer desired (idempotent: ExaBGP deduplicates against
  its adj-rib-out, §8), then an End-of-RIB to every established peer;
- otherwise: the diff (reconciler.diff_indexed: announces before withdraws) over the
  keys that may differ — the ones changed since the last sync, the ones the last sync
  left differing (refused), the suspect ones — or over everything when the bookkeeping
  cannot tell (a new ExaBGP, a replaced desired set, a sync that did not complete, a
  changed set of damped peers); then each peer that came up gets its routes again, one
  peer after the other, then its End-of-RIB.
Each step of that list waits for the previous one's answers. A sync is complete when
its last command is answered; `synced` is then the generation it was planned at, which
is what the driver's apply() waits for.

Diffing only what may differ: with 10,000 routes, building the desired dict and diffing
it whole took 16 ms per endpoint event (a prefix hashes in Python). `desire` finds what
changed by identity (reconciler.by_identity): the planner hands out the very same
objects for what did not change.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Union

from bgpspeaker.model import RouteIntent
from bgpspeaker.reconciler import Batch, Key, by_identity, diff_indexed

# Commands in flight, and prefixes per command. ExaBGP runs 50 NLRI steps per reactor loop,
# sleeps between loops, and scans its whole command queue every loop (docs/reference/exabgp-api.md §7):
# a deep queue slows it down. Measured in the bench lab (integration/bench/bench_window.py,
# raw ExaBGP, 10,000 routes into FRR, medians of 3): windows 4-10 x 100 prefixes 1.38-1.42 s,
# 16 x 50 1.42 s, 32 x 100 1.71 s, 64 x 100 2.18 s, 8 x 200 2.1 s. exabgp-api.md §7's "about
# 20-50" is slower here: the daemon's cold start at 10,000 took 2.08 s with 8, 2.32 s with 32.
WINDOW = 8
BATCH_SIZE = 100


@dataclass(frozen=True)
class Send:
    """One announce or withdraw command: `batch` as planned, `intents` per `batch.keys()`
    (for a withdraw: what was, or may have been, announced; None when nothing is known)."""

    id: int
    batch: Batch
    intents: tuple[Optional[RouteIntent], ...]


@dataclass(frozen=True)
class EndOfRib:
    """End-of-RIB to `peer`, every family it has (the driver knows which)."""

    id: int
    peer: str


Command = Union[Send, EndOfRib]


class _Barrier:
    """A step that waits until every command before it is answered."""


_BARRIER = _Barrier()
_Step = Union[tuple[Batch, tuple[Optional[RouteIntent], ...]], _Barrier, str]  # str: an End-of-RIB's peer


@dataclass
class _Sync:
    generation: int
    desired: Mapping[Key, RouteIntent]  # the held-filtered snapshot
    steps: deque[_Step]
    keys: Optional[set[Key]]  # to check at the end; None: desired | announced then (a resync)


class RouteSync:
    """The bookkeeping the driver's worker consults: what is desired, what ExaBGP holds
    (`announced`, from `done` answers only), what is in doubt (`suspect`), what ExaBGP or
    the command builder refused (`rejected`), and the sync in progress. See the module
    docstring for the events and the rules."""

    def __init__(self, peers: Iterable[str], *, window: int = WINDOW, batch_size: int = BATCH_SIZE) -> None:
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        self.window = window
        self.batch_size = batch_size
        self.peers: frozenset[str] = frozenset(peers)
        self.desired: dict[Key, RouteIntent] = {}
        self.announced: dict[Key, RouteIntent] = {}
        self.suspect: dict[Key, RouteIntent] = {}  # commands whose effect is unknown (connection lost)
        self.rejected: dict[Key, str] = {}  # keys whose command was refused, and why
        self.counts: Counter[str] = Counter()  # announced prefixes per peer
        self.generation = 0  # bumped by every change a sync must follow
        self.synced = 0  # the generation of the last complete sync
        self.applied_once = False  # see has_work
        self._intents: Optional[Sequence[RouteIntent]] = None  # desire()'s last input, for by_identity
        self._changed: set[Key] = set()  # desired entries replaced since the last sync began
        self._unsynced: set[Key] = set()  # left differing by the last sync (refused)
        self._diff_all = True
        self._held: frozenset[str] = frozenset()  # damped peers at the last sync
        self._resync = False
        self._replays: set[str] = set()  # peers whose session came up since the last sync began
        self._established: set[str] = set()  # peers ESTABLISHED per the last barrier
        self._sync: Optional[_Sync] = None
        self._in_flight: dict[int, Command] = {}
        self._next_id = 0

    # --- events -----------------------------------------------------------------------------

    def desire(self, intents: Sequence[RouteIntent]) -> tuple[int, frozenset[str]]:
        """The new desired set; returns (the generation a sync must reach, the peers named
        by routes that no session of this node serves: those routes are skipped)."""
        unknown: set[str] = set()
        if self._intents is None:
            wanted: dict[Key, RouteIntent] = {}
            for intent in intents:
                if intent.peer not in self.peers:
                    unknown.add(intent.peer)
                    continue
                wanted[intent.key] = intent
            self._diff_all = True
        else:
            added, removed = by_identity(self._intents, intents)
            # Changed in place, unless a sync in progress diffs against it: then a copy (copying
            # 10,000 routes at every desire() was ~1 ms of each event, py-spy).
            held = self._sync is not None and self._sync.desired is self.desired
            wanted = dict(self.desired) if held else self.desired
            for intent in removed:
                if wanted.get(intent.key) is intent:
                    del wanted[intent.key]
                    self._changed.add(intent.key)
            for intent in added:
                if intent.peer not in self.peers:
                    unknown.add(intent.peer)
                    continue
                wanted[intent.key] = intent
                self._changed.add(intent.key)
        self._intents = intents
        self.desired = wanted
        self.applied_once = True
        return self.touch(), frozenset(unknown)

    def replace_desired(self, wanted: Mapping[Key, RouteIntent]) -> int:
        """A desired set not from desire() (stop's empty set): the next desire() starts afresh,
        the next sync diffs everything."""
        self.desired = dict(wanted)
        self._intents = None
        self._diff_all = True
        return self.touch()

    def set_peers(self, peers: Iterable[str]) -> None:
        """The sessions this node has now: routes for any other peer are no longer desired."""
        self.peers = frozenset(peers)
        self._intents = None  # the peers may have been renamed: the next desire() filters afresh
        if any(intent.peer not in self.peers for intent in self.desired.values()):
            self.replace_desired({k: v for k, v in self.desired.items() if v.peer in self.peers})

    def reload(self, peers: Iterable[str], changed: Iterable[str]) -> None:
        """ExaBGP reloaded its config: a removed peer's adj-rib-out went with its session
        (nothing to withdraw); a changed peer's may have started afresh (a new ASN or source
        address is a new neighbor to ExaBGP), so its routes become suspect: announced again,
        ExaBGP deduplicating what it still holds."""
        new = frozenset(peers)
        gone = self.peers - new
        for key in [k for k in {**self.announced, **self.suspect, **self.rejected} if k[0] in gone]:
            if self.announced.pop(key, None) is not None:
                self.counts[key[0]] -= 1
            self.suspect.pop(key, None)
            self.rejected.pop(key, None)
        for name in gone:
            del self.counts[name]
        changed = set(changed)
        self.suspect.update({k: v for k, v in self.announced.items() if v.peer in changed})
        self.set_peers(new)
        self._diff_all = True

    def touch(self) -> int:
        """Something a sync must follow changed (a damping hold started or ended); returns
        the generation that sync will reach."""
        self.generation += 1
        return self.generation

    def connected(self, established: Iterable[str]) -> None:
        """A relay connection passed its barrier: the next sync replays everything."""
        self._established = set(established) & self.peers
        self._resync = True

    def session_up(self, peer: str) -> None:
        """The peer's routes again at the next sync, then its End-of-RIB."""
        self._replays.add(peer)

    def released(self, peer: str) -> int:
        """The peer's damping hold ended: its routes go out again, then its End-of-RIB."""
        self._replays.add(peer)
        return self.touch()

    def connection_lost(self) -> None:
        """The commands in flight may or may not have taken effect: suspect; the sync in
        progress is abandoned (the next one, after `connected`, replays everything). An
        answer still arriving for one of them is ignored: suspect is the safe side."""
        for command in self._in_flight.values():
            if isinstance(command, Send):
                self._suspect(command)
        self._in_flight.clear()
        if self._sync is not None:
            self._diff_all = True  # the changes it had taken from `_changed` went with it
        self._sync = None

    def restarted(self) -> None:
        """A new ExaBGP: its RIB starts empty."""
        self.connection_lost()
        self.announced.clear()
        self.suspect.clear()
        self.counts.clear()
        self._diff_all = True

    def acked(self, command_id: int) -> Optional[Command]:
        """ExaBGP answered `done`; returns the command (None if it is no longer tracked)."""
        command = self._in_flight.pop(command_id, None)
        if isinstance(command, Send):
            announce = command.batch.action == "announce"
            for key, intent in zip(command.batch.keys(), command.intents):
                self.suspect.pop(key, None)
                self.rejected.pop(key, None)
                if key[0] not in self.peers:  # removed by a reload while this was in flight: ExaBGP dropped it
                    continue
                if announce:
                    if intent is None:
                        continue
                    if key not in self.announced:
                        self.counts[key[0]] += 1
                    self.announced[key] = intent
                elif self.announced.pop(key, None) is not None:
                    self.counts[key[0]] -= 1
        self._finish_if_done()
        return command

    def refused(self, command_id: int, reason: str) -> Optional[Command]:
        """ExaBGP answered `error`, or the command could not be built: the keys stay as they
        were and are tried again by the next sync (they are left differing)."""
        command = self._in_flight.pop(command_id, None)
        if isinstance(command, Send):
            for key in command.batch.keys():
                self.rejected[key] = reason
        self._finish_if_done()
        return command

    def lost(self, command_id: int) -> Optional[Command]:
        """The command's effect is unknown (its connection ended before the answer)."""
        command = self._in_flight.pop(command_id, None)
        if isinstance(command, Send):
            self._suspect(command)
        self._finish_if_done()
        return command

    # --- outputs ----------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        # Nothing before the first desire(): a session that comes up earlier would get an
        # End-of-RIB after an empty replay, and a graceful-restart router would then flush
        # the routes it kept stale for us (docs/reference/lab-notes.md, "Graceful restart trap"). Its
        # replay and End-of-RIB stay queued until the desired set is known.
        return self.applied_once and (self._resync or bool(self._replays) or self.synced < self.generation)

    @property
    def in_progress(self) -> bool:
        return self._sync is not None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def begin(self, held: frozenset[str] = frozenset()) -> bool:
        """Plan the next sync if there is work and none is in progress; `held`: the peers
        whose routes are held back (damping.py). Returns whether a sync is in progress."""
        if self._sync is not None:
            return True
        if not self.has_work:
            return False
        source = self.desired
        desired = {k: v for k, v in source.items() if v.peer not in held} if held else source
        changed, self._changed = self._changed, set()
        everything = self._diff_all or self._resync or held != self._held
        # Consumed here, not when the sync completes: a reason to diff everything that arrives
        # while it runs (a fresh desired set after a reload) is for the next sync. Clearing it at
        # completion lost that reason: a peer removed and added back by two reloads during a sync
        # never got its routes (found by the random sequences in tests/test_routesync.py).
        self._diff_all, self._held = False, held
        steps: deque[_Step] = deque()
        keys: Optional[set[Key]]
        if self._resync:
            self._resync = False
            ups = (self._established | self._replays) - held
            self._replays.clear()
            # everything desired, plus withdraws of what is (or may be) announced and no longer wanted
            leftovers = {k: v for k, v in {**self.suspect, **self.announced}.items() if k not in desired}
            self.suspect.clear()
            self._add(steps, diff_indexed(desired, {}, self.batch_size), desired, {})
            self._add(steps, diff_indexed({}, leftovers, self.batch_size), {}, leftovers)
            keys = None
        else:
            if everything:
                want: Mapping[Key, RouteIntent] = desired
                view = dict(self.announced)
                keys = set(desired.keys() | self.announced.keys() | self.suspect.keys())
            else:
                keys = changed | self._unsynced | self.suspect.keys()
                want = {k: desired[k] for k in keys if k in desired}
                view = {k: self.announced[k] for k in keys if k in self.announced}
            for key, intent in self.suspect.items():
                if key in desired:
                    view.pop(key, None)  # unknown: announce again
                else:
                    view[key] = intent  # unknown: withdraw again
            self._add(steps, diff_indexed(want, view, self.batch_size), want, view)
            ups = set(self._replays)
            self._replays.clear()
            for name in sorted(ups):
                mine = {k: i for k, i in desired.items() if i.peer == name}
                if mine:
                    steps.append(_BARRIER)
                    self._add(steps, diff_indexed(mine, {}, self.batch_size), mine, {})
            ups -= held
        for name in sorted(ups):
            steps.append(name)  # an End-of-RIB waits for an empty window by itself
        self._sync = _Sync(self.generation, desired, steps, keys)
        self._finish_if_done()
        return True

    def next_commands(self) -> list[Command]:
        """What may be sent now, in order; the caller sends each and reports its fate."""
        sync = self._sync
        out: list[Command] = []
        while sync is not None and sync.steps:
            step = sync.steps[0]
            if isinstance(step, _Barrier):
                if self._in_flight:
                    break
                sync.steps.popleft()
                continue
            if isinstance(step, str):
                if self._in_flight:
                    break
                sync.steps.popleft()
                out.append(self._emit(EndOfRib(self._new_id(), step)))
                break  # alone on the window until answered
            if len(self._in_flight) >= self.window:
                break
            sync.steps.popleft()
            batch, intents = step
            out.append(self._emit(Send(self._new_id(), batch, intents)))
        return out

    # --- inside -----------------------------------------------------------------------------

    @staticmethod
    def _add(
        steps: deque[_Step], batches: Iterable[Batch], want: Mapping[Key, RouteIntent], have: Mapping[Key, RouteIntent]
    ) -> None:
        """The batches as steps, each with its intents: the desired ones for an announce, for a
        withdraw what is (or may be) announced."""
        for batch in batches:
            get = want.get if batch.action == "announce" else have.get
            steps.append((batch, tuple(get(key) for key in batch.keys())))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _emit(self, command: Command) -> Command:
        self._in_flight[command.id] = command
        return command

    def _suspect(self, command: Send) -> None:
        for key, intent in zip(command.batch.keys(), command.intents):
            if intent is not None:
                self.suspect[key] = intent

    def _finish_if_done(self) -> None:
        sync = self._sync
        if sync is None or sync.steps or self._in_flight:
            return
        desired = sync.desired
        keys = sync.keys if sync.keys is not None else desired.keys() | self.announced.keys()
        self._unsynced = {key for key in keys if not self._in_sync(key, desired)}
        # A refusal whose key is in sync now (refused after it stopped being wanted) is moot:
        # no command will ever answer it, and it would be reported as rejected for ever. In
        # sync with what is desired, not only with this sync's set: a held (damped) peer's
        # routes are left out of that, and are still wanted.
        for key in [key for key in self.rejected if self._in_sync(key, desired) and self._in_sync(key, self.desired)]:
            del self.rejected[key]
        self.synced = max(self.synced, sync.generation)
        self._sync = None

    def _in_sync(self, key: Key, desired: Mapping[Key, RouteIntent]) -> bool:
        """ExaBGP holds what is desired for `key` (the diff's own test: equal attributes need no command)."""
        if key in self.suspect:
            return False
        want, have = desired.get(key), self.announced.get(key)
        if want is None or have is None:
            return want is have
        return want is have or want.attributes == have.attributes
