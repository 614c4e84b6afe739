"""What the daemon tells the world after each reconcile: metrics, Events and log lines.

Why a room of its own: the reconcile loop decides what to announce and allocate; what it
reports about that is a different job with its own memory (what was reported last, so
that each change is told once). Everything here works by difference: with 10,000
Services, rebuilding every Service's state on each event was 46 % of the daemon's CPU
per event (bench profile; ledger.py keeps the per-Service state). The first plan is not a
change: it gets one summary line, not one Event per Service (10,000 queued Events took
half an hour to drain at the API's rate).

The decisions are pure functions (tests/test_publish.py); Publisher keeps what was
reported last and sends to the metrics registry, the log and the Event recorder.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Optional, Protocol, Sequence

from bgpspeaker.allocator import IP_IN_USE, Allocation, PoolUsage, Refusal
from bgpspeaker.config.schema import Config
from bgpspeaker.ledger import AnnouncementLedger, State
from bgpspeaker.logs import fields
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import RouteIntent, ServiceView, Snapshot
from bgpspeaker.planner import Plan
from bgpspeaker.reasons import event_reason
from bgpspeaker.records import AddressRecord

log = logging.getLogger("bgpspeaker.daemon")  # the daemon's lines, as before this room was cut out

Notice = tuple[str, str, str]  # (service, reason code, message): something ignored, told once


class EventSink(Protocol):
    """Where Events go (kube/events.EventRecorder: queued, deduplicated, rate-limited)."""

    def record(self, obj: ServiceView, reason: str, message: str, *, warning: bool = False) -> None: ...


# --- pure decisions -----------------------------------------------------------------------


def describe(state: State) -> str:
    """`203.0.113.5/32=primary`, or `not announced: noEndpoints`."""
    if isinstance(state, frozenset):
        return " ".join(f"{prefix}={tier.value}" for prefix, tier in sorted(state, key=lambda i: (i[0].version, i[0])))
    return f"not announced: {state}"


def new_notices(notices: set[Notice], before: set[Notice]) -> list[Notice]:
    """The notices to tell: those not told last time, in a stable order."""
    return sorted(notices - before)


def discarded_notices(allocation: Allocation) -> set[Notice]:
    """The status addresses the allocation did not keep, and why (told by the leader only)."""
    return {
        (service, refusal.reason, refusal.message)
        for service, refusals in allocation.discarded.items()
        for refusal in refusals
    }


def address_conflicts(refused: Mapping[str, Refusal]) -> set[tuple[str, Refusal]]:
    """(service, refusal) of the refusals for an address another identity holds."""
    return {(key, refusal) for key, refusal in refused.items() if refusal.reason == IP_IN_USE}


def pending_to_tell(pending: Mapping[str, str], told: set[str]) -> tuple[list[str], set[str]]:
    """(the waiting Services not told yet, in order; who has been told after this), so that
    each Service waiting for an unreachable record store gets one Event, and one again if it
    waits anew after it stopped waiting."""
    new = [key for key in sorted(pending) if key not in told]
    return new, (told | set(new)) & set(pending)


# --- the shell ----------------------------------------------------------------------------


class Publisher:
    """Metrics, Events and log lines for what changed since the last reconcile.

    It exists so that the daemon's reconcile loop only decides and hands results out:
    the memory of what was already reported (the announcement ledger, the notices, the
    conflicts counted, the Services told they wait) lives here, in one place.
    """

    def __init__(self, metrics: Metrics, node_name: str) -> None:
        self.metrics = metrics
        self.node_name = node_name
        self.events: Optional[EventSink] = None  # set once the API client exists (none in unit tests)
        self._ledger: Optional[AnnouncementLedger] = None  # per Service, what is announced; None before a plan
        self._notices: set[Notice] = set()  # the plan's warnings last reported
        self._allocation_notices: set[Notice] = set()  # discarded status addresses last reported
        self._usage_published: Optional[Allocation] = None
        self._pool_usage = PoolUsage()  # the pool gauges, by difference
        self._conflicts_seen: set[tuple[str, Refusal]] = set()  # ipInUse refusals counted
        self._pending_told: set[str] = set()  # Services told by an Event that they wait for the store

    @property
    def planned(self) -> bool:
        """Whether a plan has been published (the first one is a summary, not changes)."""
        return self._ledger is not None

    def plan(self, snapshot: Snapshot, the_plan: Plan, desired: Sequence[RouteIntent]) -> None:
        """What this node announces per Service (a gauge, and a log line and an Event per
        change), and the Service settings the plan ignored (a warning and an Event each)."""
        first_plan = self._ledger is None
        if self._ledger is None:
            self._ledger = AnnouncementLedger()
        changes = self._ledger.update(desired, the_plan.skipped)
        for gone in changes.labels_removed:
            self.metrics.service_announced.remove(*gone)
        for new in changes.labels_added:
            self.metrics.service_announced.labels(*new).set(1)

        if first_plan:
            states = self._ledger.states
            log.info(
                "initial plan",
                extra=fields(
                    services_announced=self._ledger.announced,
                    routes=len(desired),
                    services_not_announced=len(states) - self._ledger.announced,
                ),
            )
        else:
            for service, now in sorted(changes.states.items()):
                if now is None:
                    log.info("announcement removed", extra=fields(service=service))
                    continue
                text = describe(now)
                log.info("announcement changed", extra=fields(service=service, now=text))
                self._event(
                    snapshot,
                    service,
                    "AnnouncementChanged",
                    f"node {self.node_name}: {text}",
                    warning=not isinstance(now, frozenset),
                )

        # Something in the Service was ignored (a community its pool does not allow): an
        # Event and a log line say why (invariant 6). Every node plans, so these warnings are
        # per node, and only when they change.
        notices = {(w.service, w.reason, w.message) for w in the_plan.warnings}
        self._notify(snapshot, new_notices(notices, self._notices))
        self._notices = notices

    def allocation(self, config: Config, snapshot: Snapshot, allocation: Allocation, leader: bool) -> None:
        """The allocation's metrics, and (leader only) the Events about it: what a status
        address ignored says, once. Shared by `run` and `bgpspeaker allocator`."""
        if leader:
            notices = discarded_notices(allocation)
            self._notify(snapshot, new_notices(notices, self._allocation_notices))
            self._allocation_notices = notices
        if allocation is self._usage_published:  # an endpoint event reuses the allocation
            return
        self._usage_published = allocation
        self.metrics.allocator_pending.set(len(allocation.pending))
        if leader:
            conflicts = address_conflicts(allocation.refused)
            for _key, refusal in conflicts - self._conflicts_seen:
                self.metrics.allocator_conflicts.labels(refusal.pool).inc()
            self._conflicts_seen = conflicts
        for pool, (size, in_use) in self._pool_usage.update(config, allocation).items():
            self.metrics.allocator_addresses.labels(pool).set(size)
            self.metrics.allocator_in_use.labels(pool).set(in_use)

    def records_pending(
        self, pending: Mapping[str, str], snapshot: Optional[Snapshot], failed: Mapping[str, str]
    ) -> None:
        """The record store is unreachable: each Service waiting for it is told once, by a Warning."""
        why = "; ".join(f"{store} record store: {error}" for store, error in sorted(failed.items()))
        new, self._pending_told = pending_to_tell(pending, self._pending_told)
        for key in new:
            self._event(
                snapshot,
                key,
                "AllocationPending",
                f"{pending[key]}; cannot write it now ({why}); retrying",
                warning=True,
            )

    def record_conflicts(self, conflicts: Iterable[tuple[AddressRecord, str]]) -> None:
        """Claims another identity won (its record was there first), counted per pool."""
        for claim, _holder in conflicts:
            self.metrics.allocator_conflicts.labels(claim.pool).inc()

    def _notify(self, snapshot: Snapshot, notices: Iterable[Notice]) -> None:
        for service, reason, message in notices:
            log.warning("service setting ignored", extra=fields(service=service, reason=reason, message=message))
            self._event(snapshot, service, event_reason(reason), message, warning=True)

    def _event(
        self, snapshot: Optional[Snapshot], service_key: str, reason: str, message: str, warning: bool = False
    ) -> None:
        service = snapshot.services.get(service_key) if snapshot is not None else None
        if service is not None and self.events is not None:
            self.events.record(service, reason, message, warning=warning)
