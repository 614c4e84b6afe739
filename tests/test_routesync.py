"""The route-sync state machine without a process: a simulated ExaBGP answers its commands.

What is checked: a resync (after a restart or a relay reconnect) sends every desired route
exactly once and ends with one End-of-RIB per established peer; the window is never
exceeded and an End-of-RIB goes out alone; within a sync, announces go before withdraws
(reconciler's order: the router always has a path); a refused command is tried again by
the next partial sync; and over random sequences of events (desired-set changes, session
ups, damping holds, refusals, lost connections, ExaBGP restarts, live reloads) the simulated router ends
with exactly the desired set, the machine's bookkeeping agrees with it, and no sync sends a
route twice.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpspeaker.exabgp.routesync import Command, EndOfRib, RouteSync, Send
from bgpspeaker.model import RouteAttributes, RouteIntent, Tier
from bgpspeaker.reconciler import Key

A = ipaddress.ip_address
PEERS = ("tor-a", "tor-b", "tor-c")
ATTRS = tuple(RouteAttributes(next_hop=A("10.0.0.10"), as_path=(64512,), med=med) for med in (100, 200))


def intent(i: int, peer: str = "tor-a", attrs: int = 0) -> RouteIntent:
    return RouteIntent(ipaddress.ip_network(f"198.18.{i // 256}.{i % 256}/32"), peer, ATTRS[attrs], Tier.PRIMARY,
                       (f"ns/s{i}",))


class Exabgp:
    """What ExaBGP holds (its adj-rib-out, by key) and the commands it was sent."""

    def __init__(self) -> None:
        self.rib: dict[Key, RouteAttributes] = {}
        self.sent: list[Command] = []
        self.peers = set(PEERS)  # its configured neighbors: a command for any other is dropped

    def take(self, command: Command) -> None:
        if isinstance(command, Send):
            for key in command.batch.keys():
                if key[0] not in self.peers:
                    continue
                if command.batch.action == "announce":
                    assert command.batch.attributes is not None
                    self.rib[key] = command.batch.attributes
                else:
                    self.rib.pop(key, None)


def run(sync: RouteSync, exabgp: Exabgp, held: frozenset[str] = frozenset(), rng: Optional[random.Random] = None,
        window_seen: Optional[list[int]] = None) -> list[list[Command]]:
    """Syncs until there is no work, answering `done` in a random order (by id, as the machine
    matches them); every command also checked against the window. Returns each sync's commands."""
    rng = rng or random.Random(0)
    syncs: list[list[Command]] = []
    while sync.begin(held):
        this: list[Command] = []
        flying: list[Command] = []
        while sync.in_progress:
            new = sync.next_commands()
            for command in new:
                assert sync.in_flight <= sync.window
                if isinstance(command, EndOfRib):
                    assert sync.in_flight == 1 and not flying, "an End-of-RIB goes out alone"
            flying += new
            this += new
            if window_seen is not None:
                window_seen.append(sync.in_flight)
            assert flying, "a sync in progress with nothing to send and nothing in flight"
            command = flying.pop(rng.randrange(len(flying)))
            exabgp.take(command)
            exabgp.sent.append(command)
            sync.acked(command.id)
        syncs.append(this)
    return syncs


def announced_keys(commands: list[Command]) -> Counter[Key]:
    return Counter(key for c in commands if isinstance(c, Send) and c.batch.action == "announce"
                   for key in c.batch.keys())


def desired_rib(intents) -> dict[Key, RouteAttributes]:
    return {i.key: i.attributes for i in intents}


def test_a_resync_after_a_restart_sends_everything_exactly_once_then_one_eor_per_established_peer():
    sync, exabgp = RouteSync(PEERS, window=4, batch_size=7), Exabgp()
    routes = [intent(i, PEERS[i % 3], i % 2) for i in range(200)]
    sync.desire(routes)
    sync.connected(["tor-a", "tor-b"])
    run(sync, exabgp)
    assert exabgp.rib == desired_rib(routes)

    exabgp.rib.clear()  # a new ExaBGP starts empty
    sync.restarted()
    sync.connected(["tor-a", "tor-c"])
    [resync] = run(sync, exabgp)
    assert announced_keys(resync) == Counter({r.key: 1 for r in routes})
    assert not [c for c in resync if isinstance(c, Send) and c.batch.action == "withdraw"]
    assert [c.peer for c in resync if isinstance(c, EndOfRib)] == ["tor-a", "tor-c"]
    assert isinstance(resync[-1], EndOfRib) and isinstance(resync[-2], EndOfRib)  # after every route
    assert exabgp.rib == desired_rib(routes) and sync.announced == {r.key: r for r in routes}
    assert run(sync, exabgp) == []  # nothing left to do


def test_the_window_is_never_exceeded_and_is_used():
    sync, exabgp = RouteSync(PEERS, window=8, batch_size=1), Exabgp()
    seen: list[int] = []
    sync.desire([intent(i, PEERS[i % 3]) for i in range(300)])
    sync.connected(PEERS)
    run(sync, exabgp, rng=random.Random(3), window_seen=seen)
    assert max(seen) == 8


def test_announces_go_before_withdraws_in_a_sync():
    sync, exabgp = RouteSync(PEERS, batch_size=2), Exabgp()
    old = [intent(i) for i in range(10)]
    sync.desire(old)
    sync.connected(["tor-a"])
    run(sync, exabgp)
    new = [intent(i) for i in range(5, 15)]
    sync.desire(new)
    [commands] = run(sync, exabgp)
    actions = [c.batch.action for c in commands if isinstance(c, Send)]
    assert actions == sorted(actions)  # "announce" < "withdraw": every announce first
    assert set(actions) == {"announce", "withdraw"}
    assert exabgp.rib == desired_rib(new)


def test_a_refusal_of_a_route_no_longer_wanted_is_forgotten_when_the_sync_ends():
    """A route refused after it stopped being desired (its announce was in flight): nothing
    differs for its key, so no command will ever clear the refusal; it is dropped when the
    next sync ends, rather than reported as rejected for ever (found by the random
    sequences below: desire, begin, desire without it, the announce refused)."""
    sync, exabgp = RouteSync(PEERS, window=1, batch_size=1), Exabgp()
    sync.desire([intent(1)])
    sync.connected(["tor-a"])
    assert sync.begin()
    [command] = sync.next_commands()
    sync.desire([])  # no longer wanted while its announce is with ExaBGP
    sync.refused(command.id, "error")
    assert list(sync.rejected) == [intent(1).key]  # still true while that sync runs
    run(sync, exabgp)
    assert not sync.rejected and not sync.announced and exabgp.rib == {}


def test_a_refusal_of_a_route_still_wanted_is_kept_while_its_peer_is_held():
    """A held (damped) peer's routes are left out of the sync, not unwanted: a refusal of one
    of them stays reported until the route is sent again (found by a review)."""
    sync, exabgp = RouteSync(PEERS, window=1, batch_size=1), Exabgp()
    sync.desire([intent(1)])
    sync.connected(["tor-a"])
    assert sync.begin()
    [command] = sync.next_commands()
    sync.refused(command.id, "error")
    sync.touch()
    run(sync, exabgp, held=frozenset({"tor-a"}))
    assert list(sync.rejected) == [intent(1).key] and intent(1).key in sync.desired


def test_a_refused_command_is_retried_by_the_next_partial_sync_and_only_it():
    sync, exabgp = RouteSync(PEERS, batch_size=1), Exabgp()
    routes = [intent(i) for i in range(1, 6)]
    sync.desire(routes)
    sync.connected(["tor-a"])
    assert sync.begin()
    refused = 0
    while sync.in_progress:
        for command in sync.next_commands():
            if isinstance(command, Send) and intent(3).prefix in command.batch.prefixes:
                sync.refused(command.id, "error")
                refused += 1
            else:
                exabgp.take(command)
                sync.acked(command.id)
    assert refused == 1 and set(sync.rejected) == {intent(3).key}
    assert set(sync.announced) == {r.key for r in routes} - {intent(3).key}

    sync.desire(routes + [intent(9)])  # an unrelated change: a partial sync
    [commands] = run(sync, exabgp)
    assert sorted(announced_keys(commands)) == sorted([intent(3).key, intent(9).key])
    assert not sync.rejected and exabgp.rib == desired_rib(routes + [intent(9)])

    sync.desire(routes + [intent(9)])  # nothing changed, nothing differs: nothing sent
    assert run(sync, exabgp) == [[]]


def test_commands_in_flight_when_the_connection_goes_are_suspect_and_fixed_by_the_resync():
    sync, exabgp = RouteSync(PEERS, window=2, batch_size=1), Exabgp()
    sync.desire([intent(i) for i in range(4)])
    sync.connected(["tor-a"])
    sync.begin()
    first = sync.next_commands()
    assert len(first) == 2
    exabgp.take(first[0])  # ExaBGP took it, but the answer never came
    sync.connection_lost()
    assert set(sync.suspect) == {k for c in first if isinstance(c, Send) for k in c.batch.keys()}
    assert sync.acked(first[0].id) is None  # a late answer of a lost connection changes nothing
    assert not sync.in_progress and sync.synced < sync.generation
    sync.desire([intent(i) for i in range(1, 4)])  # meanwhile route 0 is no longer wanted
    sync.connected(["tor-a"])
    run(sync, exabgp)
    assert exabgp.rib == desired_rib([intent(i) for i in range(1, 4)])  # the suspect 0 was withdrawn
    assert not sync.suspect and set(sync.announced) == set(exabgp.rib)


def test_nothing_is_sent_before_the_first_desired_set():
    sync = RouteSync(PEERS)
    sync.connected(PEERS)
    sync.session_up("tor-a")
    assert not sync.begin() and sync.next_commands() == []
    sync.desire([])
    assert sync.begin()
    assert [c.peer for c in sync.next_commands() if isinstance(c, EndOfRib)] == ["tor-a"]


def test_routes_for_unknown_peers_are_skipped_and_named():
    sync = RouteSync(["tor-a"])
    _, unknown = sync.desire([intent(1), intent(2, "tor-x")])
    assert unknown == {"tor-x"} and set(sync.desired) == {intent(1).key}


def test_a_peer_that_comes_up_gets_its_routes_again_then_its_eor():
    sync, exabgp = RouteSync(PEERS, batch_size=10), Exabgp()
    routes = [intent(i, PEERS[i % 2]) for i in range(20)]
    sync.desire(routes)
    sync.connected([])
    run(sync, exabgp)
    sync.session_up("tor-b")
    [commands] = run(sync, exabgp)
    assert announced_keys(commands) == Counter({r.key: 1 for r in routes if r.peer == "tor-b"})
    assert isinstance(commands[-1], EndOfRib) and commands[-1].peer == "tor-b"


def test_a_held_peer_gets_its_routes_withdrawn_and_back_with_its_eor_on_release():
    sync, exabgp = RouteSync(PEERS), Exabgp()
    routes = [intent(i, PEERS[i % 2]) for i in range(20)]
    sync.desire(routes)
    sync.connected(["tor-a", "tor-b"])
    run(sync, exabgp)
    sync.touch()  # tor-b's hold starts
    run(sync, exabgp, held=frozenset({"tor-b"}))
    assert exabgp.rib == desired_rib(r for r in routes if r.peer == "tor-a")
    sync.released("tor-b")
    [commands] = run(sync, exabgp)
    assert exabgp.rib == desired_rib(routes) and isinstance(commands[-1], EndOfRib)


def test_a_reload_forgets_removed_peers_and_resends_changed_ones():
    sync, exabgp = RouteSync(PEERS), Exabgp()
    routes = [intent(i, PEERS[i % 3]) for i in range(30)]
    sync.desire(routes)
    sync.connected(PEERS)
    run(sync, exabgp)
    sync.reload(["tor-a", "tor-b"], changed=["tor-b"])  # tor-c removed, tor-b's neighbor changed
    for key in [k for k in exabgp.rib if k[0] == "tor-c"]:
        del exabgp.rib[key]  # ExaBGP dropped tor-c's adj-rib-out with its session
    assert sync.counts["tor-c"] == 0 and all(k[0] == "tor-b" for k in sync.suspect)
    [commands] = run(sync, exabgp)
    assert announced_keys(commands) == Counter({r.key: 1 for r in routes if r.peer == "tor-b"})
    assert exabgp.rib == desired_rib(r for r in routes if r.peer != "tor-c")


def test_the_first_desired_set_after_the_peers_changed_is_diffed_whole():
    """set_peers/reload forget which objects were desired (a renamed peer's routes are new
    objects): the next desire() is taken from scratch, so its sync must diff everything."""
    sync, exabgp = RouteSync(PEERS), Exabgp()
    sync.desire([intent(i) for i in range(10)])
    sync.connected(PEERS)
    run(sync, exabgp)
    sync.set_peers(PEERS)  # the same rendered config: nothing to do
    assert run(sync, exabgp) == []
    new = [intent(i, attrs=1) for i in range(5, 15)]
    sync.desire(new)
    run(sync, exabgp)
    assert exabgp.rib == desired_rib(new)


def test_a_desired_set_taken_afresh_during_a_sync_is_diffed_whole_by_the_next_one():
    """set_peers (a reload) makes the next desire() start from scratch; when that desire()
    comes while a sync runs, the sync after it must still diff everything. The old code
    cleared that request when the running sync completed: the new routes were never sent
    and the old one never withdrawn (found by the random sequences below)."""
    sync, exabgp = RouteSync(PEERS, window=1, batch_size=1), Exabgp()
    sync.desire([intent(0)])
    sync.connected(PEERS)
    sync.begin()
    [first] = sync.next_commands()  # the sync is in progress
    sync.set_peers(PEERS)
    new = [intent(i) for i in range(1, 4)]
    sync.desire(new)
    exabgp.take(first)
    sync.acked(first.id)
    run(sync, exabgp)
    assert exabgp.rib == desired_rib(new)
    assert {k: v.attributes for k, v in sync.announced.items()} == desired_rib(new)


# --- random sequences against a model -------------------------------------------------------

OPS = ("desire", "desire", "begin", "send", "answer", "answer", "answer", "refuse", "lose", "restart", "up",
       "hold", "release", "reload")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2 ** 16)), max_size=60),
       st.integers(1, 4), st.integers(1, 3))
def test_random_event_sequences_end_with_exactly_the_desired_routes(events, window, batch_size):
    """The model: ExaBGP's adj-rib-out as a dict, changed by the commands it took. Whatever
    happened before, once the connection is back, no peer is held and ExaBGP answers `done`,
    the router holds exactly the desired set and the bookkeeping says so. No sync sends a key
    twice, unless that key's peer came up during it (its routes are replayed on purpose)."""
    sync, exabgp = RouteSync(PEERS, window=window, batch_size=batch_size), Exabgp()
    universe = [[intent(i, peer, a) for a in (0, 1)] for i in range(12) for peer in PEERS]
    current: list[RouteIntent] = []
    connected, held = False, frozenset[str]()
    flying: list[Command] = []
    this_sync: list[Command] = []
    replayed: set[str] = set()  # peers whose routes the current sync replays
    ups: set[str] = set()  # peers up since the last sync began: the next one replays them

    def no_key_twice() -> None:
        counts = announced_keys(this_sync) + Counter(key for c in this_sync if isinstance(c, Send)
                                                     and c.batch.action == "withdraw" for key in c.batch.keys())
        assert all(n == 1 or key[0] in replayed for key, n in counts.items()), counts

    for op, n in events:
        rng = random.Random(n)
        if op == "desire":
            # keep most objects (the planner hands out the same objects for what did not change)
            keep = [i for i in current if rng.random() < 0.8]
            taken = {i.key for i in keep}
            extra = [rng.choice(pair) for pair in rng.sample(universe, 3) if pair[0].key not in taken]
            current = keep + extra
            sync.desire(current)
        elif op == "begin" and connected:
            if not sync.in_progress:
                if this_sync:
                    no_key_twice()
                this_sync, replayed, ups = [], ups, set()
            sync.begin(held)
        elif op == "send" and connected:
            new = sync.next_commands()
            assert sync.in_flight <= window
            flying += new
            this_sync += new
        elif op in ("answer", "refuse") and flying:
            command = flying.pop(n % len(flying))
            if op == "answer" or isinstance(command, EndOfRib):
                exabgp.take(command)
                sync.acked(command.id)
            else:
                sync.refused(command.id, "error")
        elif op == "lose" and connected:
            for command in flying:  # ExaBGP may or may not have taken each before the relay went
                if rng.random() < 0.5:
                    exabgp.take(command)
            flying, connected = [], False
            sync.connection_lost()
        elif op == "reload":
            # a live reload: some peers removed (ExaBGP drops their adj-rib-out with the session),
            # some changed (ExaBGP may have started theirs afresh), maybe one added back
            new = {p for p in PEERS if rng.random() < 0.8} or {PEERS[n % 3]}
            changed = {p for p in new & exabgp.peers if rng.random() < 0.4}
            for key in list(exabgp.rib):
                if key[0] not in new or (key[0] in changed and rng.random() < 0.5):
                    del exabgp.rib[key]
            exabgp.peers = new
            sync.reload(sorted(new), sorted(changed))
        elif op == "restart":
            flying, connected = [], False
            exabgp.rib.clear()
            sync.restarted()
        elif op == "up" and connected:
            peer = PEERS[n % 3]
            ups.add(peer)
            sync.session_up(peer)
        elif op == "hold":
            held |= {PEERS[n % 3]}
            sync.touch()
        elif op == "release" and held:
            peer = sorted(held)[n % len(held)]
            held -= {peer}
            ups.add(peer)
            sync.released(peer)
        if not connected and op in ("begin", "send") and rng.random() < 0.5:
            sync.connected([p for p in PEERS if rng.random() < 0.7])
            connected = True
        assert sync.in_flight == len(flying)
    if this_sync:
        no_key_twice()

    # quiescence: answers for what is in flight, the connection back, every hold released
    for command in flying:
        exabgp.take(command)
        sync.acked(command.id)
    if not connected:
        sync.connected(PEERS)
    for peer in held:
        sync.released(peer)
    sync.desire(current)  # at least one sync happens (routes for removed peers: skipped)
    ups |= held
    continued = sync.in_progress  # run()'s first sync is then the one begun above
    for commands in run(sync, exabgp):
        if continued:
            this_sync, continued = this_sync + commands, False
        else:
            this_sync, replayed, ups = commands, ups, set()
        no_key_twice()
    want = desired_rib(i for i in current if i.peer in exabgp.peers)
    assert exabgp.rib == want
    assert {k: v.attributes for k, v in sync.announced.items()} == want
    assert not sync.suspect and not sync.rejected
    assert sync.counts + Counter() == Counter(k[0] for k in want)  # `+ Counter()` drops the zero entries
    assert sync.synced == sync.generation and not sync.has_work
