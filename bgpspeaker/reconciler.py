"""Desired routes vs announced routes → the ordered, batched commands that turn one into the other.

Why a pure function: what to send (and in which order) is the policy of the BGP side; the
ExaBGP channel only carries it. Kept pure, it is tested exhaustively (including the
property "applying the diff to `announced` gives `desired`") without a router.

Decisions, and why:
- The key of an announcement is (peer, prefix): that is what a router holds. A changed
  attribute set is a plain re-announce: BGP replaces the previous path from the same
  peer implicitly (RFC 4271 §3.1), so no withdraw is sent and there is no gap.
- Announces go first, withdraws after. A VIP that changes tier is a re-announce, and a
  VIP that moves to another prefix/peer gets its new path before the old one goes, so
  the router always has a path. Withdrawing a prefix nobody wants can wait a few ms.
- Prefixes that share (attributes, set of peers, address family) go in one batch,
  which becomes one `announce attributes ... nlri P1 P2 ...` command: ExaBGP handles
  ≤100 NLRI per command with a bounded window best (docs/reference/exabgp-api.md §7: 9.5k routes/s
  at ×100 per command vs 4-5k/s one route per command; ×1000 is slower again).
- IPv4 and IPv6 are never mixed in a batch: `announce attributes ... nlri` parses
  every NLRI in the family of its next-hop/first prefix.
- Withdraw batches carry no attributes: ExaBGP removes from its adj-rib-out by NLRI,
  so withdraws of one family to one set of peers share a command whatever they carried.
- Output order is a deterministic function of the input sets (never of dict or
  iteration order), so the same state always produces the same commands.
- Only the attributes travel on the wire: a RouteIntent whose tier or services changed
  but whose attributes did not needs no update (a resync sends nothing, docs/design.md
  invariant 2).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional, Sequence, TypeVar

from bgpspeaker.model import IPNetwork, RouteAttributes, RouteIntent

T = TypeVar("T")

Action = Literal["announce", "withdraw"]
Key = tuple[str, IPNetwork]

DEFAULT_MAX_BATCH = 100


@dataclass(frozen=True)
class Batch:
    """One command's worth of work: the same action, attributes and peers for ≤ max_batch prefixes
    of one address family. `peers` are peer *names* (the driver maps them to addresses)."""

    action: Action
    peers: tuple[str, ...]
    attributes: Optional[RouteAttributes]  # None for withdraws
    prefixes: tuple[IPNetwork, ...]

    @property
    def version(self) -> int:
        return self.prefixes[0].version

    def keys(self) -> list[Key]:
        return [(peer, prefix) for prefix in self.prefixes for peer in self.peers]


def _prefix_key(prefix: IPNetwork) -> tuple[int, int, int]:
    return (prefix.version, int(prefix.network_address), prefix.prefixlen)


def index(intents: Iterable[RouteIntent], what: str = "routes") -> dict[Key, RouteIntent]:
    """Intents by (peer, prefix). Two intents for one key with different attributes are a
    bug upstream (the router can hold only one path per peer): ValueError naming the key."""
    # One dict operation per intent: hashing an IPv4Network is the cost that dominates a
    # 10,000-route diff (profiled: 70% of the time in ipaddress's __hash__).
    result: dict[Key, RouteIntent] = {}
    setdefault = result.setdefault
    for intent in intents:
        previous = setdefault(intent.key, intent)
        if previous is not intent and previous.attributes != intent.attributes:
            raise ValueError(f"{what}: two different attribute sets for {intent.peer} {intent.prefix}")
    return result


def _batches(action: Action, groups: Mapping[tuple, set[IPNetwork]], max_batch: int) -> list[Batch]:
    """groups: (attributes|None, peers tuple, version) -> prefixes; chunked and ordered."""
    out: list[Batch] = []
    for (attributes, peers, _version), prefixes in groups.items():
        ordered = sorted(prefixes, key=_prefix_key)
        for i in range(0, len(ordered), max_batch):
            out.append(Batch(action, peers, attributes, tuple(ordered[i : i + max_batch])))
    out.sort(
        key=lambda b: (
            b.version,
            () if b.attributes is None else b.attributes.sort_key(),
            b.peers,
            _prefix_key(b.prefixes[0]),
        )
    )
    return out


def _group(entries: Iterable[tuple[Key, Optional[RouteAttributes]]]) -> dict[tuple, set[IPNetwork]]:
    # prefix -> attributes -> peers, then regroup by (attributes, peers set, family)
    peers_of: dict[tuple[IPNetwork, Optional[RouteAttributes]], set[str]] = defaultdict(set)
    for (peer, prefix), attributes in entries:
        peers_of[(prefix, attributes)].add(peer)
    groups: dict[tuple, set[IPNetwork]] = defaultdict(set)
    for (prefix, attributes), peers in peers_of.items():
        groups[(attributes, tuple(sorted(peers)), prefix.version)].add(prefix)
    return groups


def diff(
    desired: Iterable[RouteIntent], announced: Iterable[RouteIntent], max_batch: int = DEFAULT_MAX_BATCH
) -> tuple[Batch, ...]:
    """The batches that turn `announced` into `desired`: announces first, then withdraws."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
    return diff_indexed(index(desired, "desired"), index(announced, "announced"), max_batch)


def diff_indexed(
    want: Mapping[Key, RouteIntent], have: Mapping[Key, RouteIntent], max_batch: int = DEFAULT_MAX_BATCH
) -> tuple[Batch, ...]:
    """diff() for callers that already hold both sets indexed by key (the driver does)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
    announces = []
    get = have.get
    matched = 0
    for key, intent in want.items():
        old = get(key)
        if old is None:
            announces.append((key, intent.attributes))
            continue
        matched += 1
        if old.attributes is not intent.attributes and old.attributes != intent.attributes:
            announces.append((key, intent.attributes))
    # every announced key is still wanted: skip the second pass (a third of a 10k diff's time)
    withdraws = [] if matched == len(have) else [(key, None) for key in have if key not in want]
    return tuple(_batches("announce", _group(announces), max_batch)) + tuple(
        _batches("withdraw", _group(withdraws), max_batch)
    )


def apply(state: Mapping[Key, RouteAttributes], batches: Iterable[Batch]) -> dict[Key, RouteAttributes]:
    """What a router holds after `batches` (a model of BGP, for tests and for bookkeeping)."""
    result = dict(state)
    for batch in batches:
        for key in batch.keys():
            if batch.action == "announce":
                assert batch.attributes is not None
                result[key] = batch.attributes
            else:
                result.pop(key, None)
    return result


class Routes(tuple):
    """A plan's routes (a tuple), knowing what changed since the planner's previous ones.

    Why: the ledger and the driver each ask by_identity what changed since the routes they
    had; at 10,000 Services that walk (in C, but over every route, twice) was the largest
    cost left of a new Service's reconcile (py-spy). The planner knows what it replaced:
    `since(previous, added, removed)` records it, and by_identity answers from it when asked
    about exactly that pair. Only one step back is kept (the previous routes forget theirs),
    so no chain of old plans stays alive.
    """

    base: Optional["Routes"] = None
    added: Sequence = ()
    removed: Sequence = ()

    def since(self, previous: "Routes", added: Sequence, removed: Sequence) -> "Routes":
        previous.base, previous.added, previous.removed = None, (), ()  # one step only
        self.base, self.added, self.removed = previous, added, removed
        return self


def by_identity(before: Sequence[T], after: Sequence[T]) -> tuple[list[T], list[T]]:
    """(the objects in `after` only, the objects in `before` only), by identity. Built in C:
    no per-object Python code runs, so it costs far less than comparing values (a 10,000
    route diff by key hashes every prefix in Python). An object listed twice counts once.
    The planner hands out the very same objects for what did not change (PlanMemo), and
    says what it replaced since its previous routes (Routes): then this is O(change)."""
    if after is before:
        return [], []  # the planner hands out its last routes again when nothing changed
    if isinstance(after, Routes) and after.base is not None and after.base is before:
        return list(after.added), list(after.removed)
    old, new = dict(zip(map(id, before), before)), dict(zip(map(id, after), after))
    return [new[i] for i in new.keys() - old.keys()], [old[i] for i in old.keys() - new.keys()]


class Versioned(dict):
    """A copy-on-write dict that knows which keys it changed since the dict it was copied
    from (`successor`), so replaced_keys can answer in O(change).

    Why: the watcher's dicts (Services, records) and the allocator's assignments are
    copied when they change, and five consumers ask what changed since the version they
    saw; at 10,000 Services each such walk, even in C, was the largest cost left of a new
    Service's reconcile (py-spy). The predecessor is held by a weak reference: a version
    nobody holds any more is gone, and the question is then answered by the full walk.
    Writers call `note(key)` (or `note_all`) for every key they set or pop in a successor.
    """

    __slots__ = ("__weakref__", "base", "changed")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.base: Optional[weakref.ReferenceType] = None
        self.changed: set = set()

    def successor(self) -> "Versioned":
        new = Versioned(self)
        new.base = weakref.ref(self)
        return new

    def note(self, key: object) -> None:
        if self.base is not None:  # a first version (a whole list) keeps no set of every key
            changed = self.changed
            changed.add(key)
            if len(changed) > len(self) // 2:
                self._forget_base()

    def note_all(self, keys: Iterable[object]) -> None:
        if self.base is not None:
            self.changed.update(keys)
            if len(self.changed) > len(self) // 2:
                self._forget_base()

    def _forget_base(self) -> None:
        # Most keys changed (a first list delivered in batches, a relist, the first
        # allocation from records): the full walk costs no more than these notes, and the
        # sets of them were the biggest thing a cold start left behind (6 MB at 20,000
        # Services, tracemalloc). Without a predecessor, replaced_keys walks.
        self.base = None
        self.changed = set()


_MISSING = object()
_MAX_STEPS = 16  # versions walked back before the full walk is cheaper to reason about


def replaced_keys(old: Mapping, new: Mapping) -> set:
    """The keys whose value is not the same object in `old` and `new` (added, removed,
    replaced). The watcher's dicts and the allocator's entries are replaced, never
    mutated, when they change, so this is what changed (the planner, the status and record
    writers and the pool gauges use it). From the versions' notes when `new` descends from
    `old` (Versioned); else built in C but for the differing keys: ~1 ms for 10,000 entries."""
    if isinstance(new, Versioned):
        keys: set = set()
        version: Optional[Mapping] = new
        for _ in range(_MAX_STEPS):
            if version is old:
                return {key for key in keys if old.get(key, _MISSING) is not new.get(key, _MISSING)}
            if not isinstance(version, Versioned) or version.base is None:
                break
            keys |= version.changed
            version = version.base()
    before = dict(zip(old.keys(), map(id, old.values())))
    after = dict(zip(new.keys(), map(id, new.values())))
    return {key for key, _ in before.items() ^ after.items()}  # a replaced key is in both sides
