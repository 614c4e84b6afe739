"""What this node announces per Service, kept by difference between plans (no I/O).

The daemon reports every change of a Service's announcement (a log line, an Event, the
`bgpspeaker_service_announced` series). Recomputing every Service's state from the whole
plan on each event was 46 % of the daemon's CPU per event with 10,000 Services (bench
profile): one endpoint change paid for 10,000 Services. The planner reuses its route and
skip objects for every Service whose inputs did not change (`planner.PlanMemo`), so the
difference between two plans *by identity* is what changed, and only the Services it
touches are looked at again. A plan without the memo (a new config) has all new objects:
then everything is looked at, and the result is the same (tests/test_ledger.py checks it
against a full recomputation after every step of random plan sequences).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from bgpspeaker.model import IPNetwork, RouteIntent, Tier
from bgpspeaker.reconciler import by_identity

Item = tuple[IPNetwork, Tier]
# A Service's state: the (prefix, tier) pairs announced for it, or the reason code it is not.
State = Union[frozenset[Item], str]
Label = tuple[str, str, str, str]  # namespace, name, address, tier: the metric's labels


@dataclass(frozen=True)
class LedgerChanges:
    states: dict[str, Optional[State]]  # the Services whose state changed: the new one, None when gone
    labels_added: frozenset[Label]
    labels_removed: frozenset[Label]


class AnnouncementLedger:
    def __init__(self) -> None:
        self._routes: Sequence[RouteIntent] = ()  # the last plan's: kept alive, so their ids stay theirs
        self._skips: Sequence = ()
        self._items: dict[str, Counter[Item]] = {}  # one count per peer route
        self._skip_reasons: dict[str, Counter[tuple[str, str]]] = {}  # (reason, message) per skip
        self.states: dict[str, State] = {}

    @property
    def announced(self) -> int:
        """How many Services have at least one route."""
        return len(self._items)

    def update(self, routes: Sequence[RouteIntent], skipped: Sequence) -> LedgerChanges:
        """Take the plan's routes and skips (`planner.Skip`: service, reason, message); say what changed."""
        added, removed = by_identity(self._routes, routes)
        skips_added, skips_removed = by_identity(self._skips, skipped)
        self._routes, self._skips = routes, skipped
        items_before: dict[tuple[str, Item], bool] = {}
        for route, step in [(r, -1) for r in removed] + [(r, 1) for r in added]:
            item = (route.prefix, route.tier)
            for service in route.services:
                items_before.setdefault((service, item), item in self._items.get(service, ()))
                _count(self._items, service, item, step)
        for skip, step in [(s, -1) for s in skips_removed] + [(s, 1) for s in skips_added]:
            _count(self._skip_reasons, skip.service, (skip.reason, skip.message), step)

        labels_added: set[Label] = set()
        labels_removed: set[Label] = set()
        for (service, item), was in items_before.items():
            present = item in self._items.get(service, ())
            if present != was:
                (labels_added if present else labels_removed).add(_label(service, item))
        touched = (
            {service for service, _ in items_before}
            | {s.service for s in skips_added}
            | {s.service for s in skips_removed}
        )
        states: dict[str, Optional[State]] = {}
        for service in touched:
            now = self._state_of(service)
            if self.states.get(service) != now:
                states[service] = now
                if now is None:
                    del self.states[service]
                else:
                    self.states[service] = now
        return LedgerChanges(states, frozenset(labels_added), frozenset(labels_removed))

    def _state_of(self, service: str) -> Optional[State]:
        items = self._items.get(service)
        if items:
            return frozenset(items)
        reasons = self._skip_reasons.get(service)
        if reasons:
            return min(reasons)[0]  # the plan lists skips by (service, reason, message): its first one
        return None


def _count(table: dict[str, Counter], service: str, entry: object, step: int) -> None:
    """Add `step` to the Service's count of `entry`; a count that reaches 0 goes, and so does an empty Service."""
    counts = table.setdefault(service, Counter())
    counts[entry] += step
    if counts[entry] <= 0:
        del counts[entry]
        if not counts:
            del table[service]


def _label(service: str, item: Item) -> Label:
    namespace, name = service.split("/", 1)
    prefix, tier = item
    return (namespace, name, str(prefix.network_address), tier.value)
