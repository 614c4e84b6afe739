"""The leader's writes, beside the reconcile loop: Service status and allocation records.

Why a room of its own: a write is an API round trip (3.5 s for 1,000 new Services,
measured), and the reconcile loop must never wait for one: an endpoint change arriving
meanwhile would wait before reaching BGP, and a leader whose ExaBGP crash-loops must still
write every Service's status (issue 14). So the daemon hands each reconcile's allocation
here and goes on. What this module decides is what to write, and when:

- latest wins: one write task per kind; what arrives while it runs replaces what waits;
- after a complete status pass, only the Services whose view or allocation entry changed
  since (by identity: the watcher and the allocator keep unchanged objects) are checked
  again, plus what that pass left undone (failed, or changed under it): at 10,000
  Services, a Service event costs a check of that Service, not of 10,000 statuses;
- a pass that failed comes back after a pause, with fresh state (the reconcile loop is
  woken, and hands over the allocation of that moment);
- on a cold start, the first writes wait until this node's first routes are with ExaBGP,
  a few seconds at most (ColdStartHold): the loop still never waits for them.

The decisions are pure functions (tests/test_leader_writes.py); the two classes only keep
the state between passes and run the blocking writers (kube/status.py, kube/records.py)
in a thread of their own each: a record claim must not queue behind a status pass. They
are not the loop's default executor either: asyncio.run() joins that one at exit, and a
write stuck on a slow API (30 s read timeout) would hold the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Protocol, Union

from bgpspeaker.allocator import Allocation, RecordUpdates, record_updates, records_from_status
from bgpspeaker.config.schema import Config
from bgpspeaker.logs import fields
from bgpspeaker.model import ServiceView, Snapshot
from bgpspeaker.reconciler import replaced_keys
from bgpspeaker.records import LOCAL, AddressRecord, record_key

if TYPE_CHECKING:  # kube/ imports the kubernetes client, slow to import and not needed offline
    from bgpspeaker.kube.records import KeeperResult, RecordKeeper
    from bgpspeaker.kube.status import StatusWriter, WriteResult

log = logging.getLogger(__name__)

STATUS_RETRY_SECONDS = 1.0  # a failed status pass is tried again this often
RECORD_RETRY_SECONDS = 2.0  # a record store that failed is tried again this often (and on any change)
CONFLICT_RETRY_SECONDS = 1.0  # a claim that lost a race: decide again with what the watch brings
# A record this leader created is waited for until its watch brings it, at most this long
# (the watch takes milliseconds; past this, the record was deleted before it was seen, or
# the watch is broken and relisting: decide as if it were not there).
UNSEEN_CLAIM_SECONDS = 10.0

Services = Mapping[str, ServiceView]


# --- status: pure decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class StatusPass:
    """What a complete status pass left: every Service of `services` in line with
    `allocation`, but for `leftover` (failed, or changed since the snapshot)."""

    allocation: Allocation
    services: Services
    leftover: frozenset[str]


def keys_to_check(last: Optional[StatusPass], allocation: Allocation, services: Services) -> Optional[set[str]]:
    """The Services that may need a write since the `last` complete pass (None: all of them).

    By identity: the watcher replaces a Service's view only when the Service changed, and
    the allocator keeps an unchanged Service's assignment, refusal or wait; so a Service
    whose view and entries are the same objects as at the last pass needs nothing."""
    if last is None:
        return None
    before, seen = last.allocation, last.services
    keys = set(last.leftover)
    if services is not seen:  # (in C: a Python loop over 10,000 Services held the GIL the loop needs)
        keys.update(replaced_keys(seen, services) & services.keys())
    for now, then in (
        (allocation.assigned, before.assigned),
        (allocation.refused, before.refused),
        (allocation.pending, before.pending),
    ):
        if now is not then:
            keys.update(replaced_keys(then, now))
    return keys


def pass_left(allocation: Allocation, services: Services, result: Optional[WriteResult]) -> Optional[StatusPass]:
    """What the next pass may take as done after this one (None: nothing, check every Service).

    A pass that raised, or stopped because this replica is not (or no longer) the leader,
    vouches for nothing."""
    if result is None or result.not_leader:
        return None
    return StatusPass(allocation, services, frozenset(result.failed) | frozenset(result.skipped))


def all_in_line(result: Optional[WriteResult]) -> bool:
    """Every Service's status matches the pass's allocation: while the reconcile loop keeps
    that allocation (no Service or config change), there is nothing to write. Checking even
    by identity on each endpoint event was 17 % of its CPU at 1,000 Services (bench profile)."""
    return result is not None and not result.failed and not result.not_leader


def status_retry(result: Optional[WriteResult]) -> bool:
    """The pass failed (the writer retried inside already): come back later with fresh state."""
    return result is None or bool(result.failed)


# --- records: pure decisions --------------------------------------------------------------


@dataclass(frozen=True)
class RecordImport:
    """Once, to move a cluster onto records: today's allocations (status + marker) as records."""

    records: tuple[AddressRecord, ...]


@dataclass(frozen=True)
class RecordApply:
    """The steady state: records to create (claims), and records this cluster joins or leaves."""

    claims: tuple[AddressRecord, ...]
    joins: tuple[AddressRecord, ...]
    leaves: tuple[AddressRecord, ...]


RecordWork = Union[RecordImport, RecordApply]


def record_work(
    config: Config, snapshot: Snapshot, allocation: Allocation, updates: Optional[RecordUpdates] = None
) -> Optional[RecordWork]:
    """What the records need after this allocation (None: nothing), from a complete snapshot.

    Before the import marker (`snapshot.records` is None): import today's allocations.
    After it: create the claims, join and leave records (kept by difference in `updates`,
    the same answer as record_updates)."""
    cluster = config.cluster.name
    if snapshot.records is None:
        return RecordImport(records_from_status(config, snapshot.services.values(), cluster))
    joins, leaves = (updates.update if updates is not None else record_updates)(snapshot.records, allocation, cluster)
    if not (allocation.claims or joins or leaves):
        return None
    return RecordApply(allocation.claims, tuple(joins), tuple(leaves))


# Records this leader created and has not read back yet: (store, record key) -> (record,
# when it was created, on the loop's clock).
Unseen = Mapping[tuple[str, str], tuple[AddressRecord, float]]


def wait_over(since: float, now: float) -> bool:
    """Whether a record created at `since` is waited for no more at `now` (UNSEEN_CLAIM_SECONDS)."""
    return now - since >= UNSEEN_CLAIM_SECONDS


def still_unseen(unseen: Unseen, records: Mapping[str, Mapping[str, AddressRecord]], now: float) -> dict:
    """The created records a snapshot with `records` does not show yet, whose wait is not
    over at `now`. Shown with any holder, a record is read back (or taken since): the
    allocator decides from it."""
    return {
        (store, key): (rec, since)
        for (store, key), (rec, since) in unseen.items()
        if key not in records.get(store, {}) and not wait_over(since, now)
    }


def claims_not_waiting(claims: tuple[AddressRecord, ...], unseen: Unseen) -> tuple[AddressRecord, ...]:
    """The claims to make now: none for an identity whose record this leader created and has
    not read back, and none for an address it recorded so.

    Why: the allocator sees only the records the watch brought. An identity whose new
    record is not back yet looks unrecorded, and if an address freed meanwhile is now the
    lowest, the allocator claims that one too: two records of one identity, and the higher
    (the one the Service was just assigned, announced and given in its status) is released:
    the Service renumbered (CI, test_community_abuse_gets_an_event). Held back, the
    claim is decided again once the record is read back, from it."""
    if not unseen:
        return claims
    waiting = {(rec.store, rec.holder) for rec, _ in unseen.values()}
    return tuple(
        claim
        for claim in claims
        if (claim.store, record_key(claim.address)) not in unseen and (claim.store, claim.holder) not in waiting
    )


# --- the schedules ------------------------------------------------------------------------


class StatusSchedule:
    """Status writes for the allocations the leader hands over: latest wins, beside the loop.

    It exists so that the reconcile loop never waits on a status write, and so that one
    place decides what a pass checks: every Service at first, then only what changed since
    the last complete pass (keys_to_check), and nothing while the allocation stays the one
    every status already matches (all_in_line).
    """

    def __init__(self, writer: StatusWriter, on_retry: Callable[[], None]) -> None:
        self._writer = writer
        self._on_retry = on_retry  # wakes the reconcile loop, which hands over fresh state
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-writer")
        self._waiting: Optional[tuple[Allocation, Services]] = None
        self._task: Optional[asyncio.Task] = None
        self._in_line: Optional[Allocation] = None  # the allocation every Service status matches
        self._last: Optional[StatusPass] = None  # read and written in the writer's thread only

    def offer(self, allocation: Allocation, services: Services) -> None:
        """Called on the loop after each reconcile on the leader; returns at once."""
        if allocation is self._in_line:
            return
        self._waiting = (allocation, services)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="status-writer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting is not None:
            (allocation, services), self._waiting = self._waiting, None
            try:
                result: Optional[WriteResult] = await loop.run_in_executor(
                    self._executor, self._pass, allocation, services
                )
            except Exception:
                log.exception("status write failed")
                result = None
            if all_in_line(result):
                self._in_line = allocation
            if status_retry(result):
                log.warning(
                    "status writes failed; retrying",
                    extra=fields(services=len(result.failed) if result is not None else "all"),
                )
                loop.call_later(STATUS_RETRY_SECONDS, self._on_retry)

    def _pass(self, allocation: Allocation, services: Services) -> WriteResult:
        """One pass, in the writer's thread (it blocks)."""
        keys = keys_to_check(self._last, allocation, services)
        self._last = None  # a pass that raises vouches for nothing
        result = self._writer.write(allocation, services, keys)
        self._last = pass_left(allocation, services, result)
        return result

    def stop(self) -> None:
        """A write in flight is abandoned: the next leader redoes it."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class ColdStartHold:
    """The leader's writes of a cold start, held until this node has handed its first routes
    to ExaBGP, and `limit` seconds at most.

    Why: issue 14 put the writes beside the reconcile loop, so that a broken ExaBGP never
    holds them back; but on a cold start they then ran (on threads, holding the GIL) while
    the loop made its first plan and started the feed: the first status pass and the first
    record decision are a walk of every Service and every record (at 50,000 Services, ~0.7 s
    of the ~3 s from the lists to the first route; py-spy, bench). Held, they run while
    ExaBGP sends and the daemon waits for its answers. Bounded, so that status still never
    waits on BGP for longer than `limit`: a crash-looping ExaBGP makes the first apply
    return at once, and a slow one is out-waited. Nothing is lost while held: the latest
    offer wins, as in the schedules.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: float,
        write: Callable[[Config, Snapshot, Allocation], None],
    ) -> None:
        self._loop, self._limit, self._write = loop, limit, write
        self.open = False
        self._stopped = False  # the daemon is shutting down: nothing more is written
        self._held: Optional[tuple[Config, Snapshot, Allocation]] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    def offer(self, config: Config, snapshot: Snapshot, allocation: Allocation) -> None:
        """On the loop, after each reconcile on the leader: written now, or held (latest wins)."""
        if self._stopped:
            return
        if self.open:
            self._write(config, snapshot, allocation)
            return
        self._held = (config, snapshot, allocation)
        if self._timer is None:  # counted from the first offer: the first plan is being made
            self._timer = self._loop.call_later(self._limit, self._timed_out)

    def release(self) -> None:
        """This node's first routes are handed to ExaBGP (or it has none to hand): write what waits."""
        if self.open:
            return
        self.open = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, None
        if held is not None:
            self._write(*held)

    def _timed_out(self) -> None:
        self._timer = None  # (release() cancels the timer: it fires only while held)
        log.info("leader writes no longer wait for the first routes", extra=fields(waited=self._limit))
        self.release()

    def stop(self) -> None:
        """On the loop, first thing at shutdown: what is held, or offered from now on, is dropped."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None


class RecordReports(Protocol):
    """Where the record writes' outcomes are told (publish.Publisher)."""

    def records_pending(
        self, pending: Mapping[str, str], snapshot: Optional[Snapshot], failed: Mapping[str, str]
    ) -> None: ...

    def record_conflicts(self, conflicts: list[tuple[AddressRecord, str]]) -> None: ...


class RecordSchedule:
    """The leader's record writes (claims, joins, leaves, or the one-time import): latest wins.

    It exists for the same reason as StatusSchedule, with its own thread so that a claim,
    which new Services wait for, never queues behind a status pass. It also decides when
    nothing is to be done: an endpoint event leaves the allocation and the records the
    same objects (O(1), not O(records)), and work already handed over is not handed over
    again until a failure or a lost race asks for a new decision.
    """

    def __init__(self, keeper: RecordKeeper, reports: RecordReports, on_retry: Callable[[], None]) -> None:
        self._keeper = keeper
        self._reports = reports
        self._on_retry = on_retry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record-writer")
        self._offered: Optional[tuple[Config, Snapshot, Allocation]] = None  # the latest, to decide from
        self._task: Optional[asyncio.Task] = None
        self._done: Optional[RecordWork] = None  # the last work handed to the keeper
        self._seen: tuple[Optional[Allocation], object] = (None, None)  # (allocation, records) last decided from
        self._retry = False  # the last writes failed or lost a race: decide again
        self._pending: tuple[Mapping[str, str], Optional[Snapshot]] = ({}, None)  # (allocation.pending, snapshot)
        self._updates = RecordUpdates()  # the joins and leaves, by difference (O(records) per new Service before)
        self._unseen: dict[tuple[str, str], tuple[AddressRecord, float]] = {}  # see claims_not_waiting
        self._unseen_timer: Optional[asyncio.TimerHandle] = None

    def offer(self, config: Config, snapshot: Snapshot, allocation: Allocation) -> None:
        """Called on the loop after each reconcile on the leader (of a complete snapshot); returns at once."""
        seen = (allocation, snapshot.records_identity())
        if seen[0] is self._seen[0] and seen[1] == self._seen[1] and not self._retry:
            return
        self._seen, self._retry = seen, False
        # Decided on the writer's thread, not here: the first decision walks every record
        # (0.09 s at 10,000, on the loop before the cold start's first plan; bench).
        self._offered = (config, snapshot, allocation)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="record-writer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._offered is not None:
            (config, snapshot, allocation), self._offered = self._offered, None
            try:  # `_updates` is only ever used on the writer's one thread
                work = await loop.run_in_executor(
                    self._executor, record_work, config, snapshot, allocation, self._updates
                )
            except Exception:
                log.exception("record decision failed")
                self._updates, self._retry = RecordUpdates(), True  # decide afresh, a little later
                loop.call_later(RECORD_RETRY_SECONDS, self._on_retry)
                continue
            if snapshot.records is not None and self._unseen:  # what the watch brought is waited for no more
                now = loop.time()
                if any(wait_over(since, now) for _, since in self._unseen.values()):
                    # A record never read back (deleted before the watch brought it): the
                    # claim that made it, decided again, is the same work, and must be made
                    # again rather than skipped as already handed over.
                    self._done = None
                self._unseen = still_unseen(self._unseen, snapshot.records, now)
            if work is None:
                continue
            if isinstance(work, RecordApply):
                self._pending = (allocation.pending, snapshot)
                work = self._hold_unseen(work, loop)
                if work is None:
                    continue
            if work == self._done:
                continue  # already handed over; the watch brings the result, or a retry is scheduled
            self._done = work
            try:
                result: Optional[KeeperResult] = await loop.run_in_executor(self._executor, self._write, work)
            except Exception:
                log.exception("record writes failed")
                result = None
            if result is not None:
                self._reports.record_conflicts(result.conflicts)
                for rec in result.created:
                    self._unseen[(rec.store, record_key(rec.address))] = (rec, loop.time())
            if result is None or result.failed:
                # The store is down: new Services wait (pending; nothing running changes),
                # each told once by a Warning Event.
                pending, of = self._pending
                self._reports.records_pending(
                    pending, of, result.failed if result is not None else {"?": "record writes failed"}
                )
                self._done, self._retry = None, True
                loop.call_later(RECORD_RETRY_SECONDS, self._on_retry)
            elif result.conflicts or result.busy:
                self._done, self._retry = None, True  # re-decide with what the watch brings
                loop.call_later(CONFLICT_RETRY_SECONDS, self._on_retry)

    def _hold_unseen(self, work: RecordApply, loop: asyncio.AbstractEventLoop) -> Optional[RecordApply]:
        """`work` without the claims that wait for a created record to be read back
        (claims_not_waiting); None if nothing is left. What is held back is decided again
        when the watch brings the record (a records change is a new offer), or, should it
        never come, after UNSEEN_CLAIM_SECONDS."""
        claims = claims_not_waiting(work.claims, self._unseen)
        if claims == work.claims:
            return work
        log.debug("claims wait for records not read back yet", extra=fields(held=len(work.claims) - len(claims)))
        self._retry = True  # the same allocation and records, offered again, are decided again
        if self._unseen_timer is None or self._unseen_timer.when() <= loop.time():
            # When the oldest wait is over (not UNSEEN_CLAIM_SECONDS from now: up to twice
            # that), a hair late: a timer may run up to the clock's resolution early.
            oldest = min(since for _, since in self._unseen.values())
            self._unseen_timer = loop.call_at(oldest + UNSEEN_CLAIM_SECONDS + 0.01, self._on_retry)
        if not (claims or work.joins or work.leaves):
            return None
        return replace(work, claims=claims)

    def _write(self, work: RecordWork) -> KeeperResult:
        if isinstance(work, RecordImport):
            return self._keeper.import_once(work.records, LOCAL)
        return self._keeper.apply(work.claims, work.joins, work.leaves)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._unseen_timer is not None:
            self._unseen_timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
