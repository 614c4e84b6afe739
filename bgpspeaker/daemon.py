"""`bgpspeaker run`: wiring, the reconcile loop, drain, reload, signals, graceful shutdown.

Everything that decides lives elsewhere (allocator, planner, reconciler: pure); this
module only moves values between the shells, on one asyncio loop that owns all state:

    informers ──on_change──▶ [dirty] ──▶ reconcile: snapshot → allocate → plan → driver.apply
                                                    ├─ leader only: status and record writes (leader_writes.py)
                                                    └─ metrics, Events, log lines (publish.py)

Coalescing without added latency: a change wakes the loop at once; changes that arrive
while a reconcile is running are folded into the next one. So a lone event is handled
immediately and a burst of 1,000 costs a few reconciles, not 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, TypeVar

from bgpspeaker.allocator import Allocation, RecordsMemo, allocate_snapshot, is_managed
from bgpspeaker.bfd.runner import BfdService
from bgpspeaker.config.load import ConfigError, config_warnings, load_config
from bgpspeaker.config.schema import Config
from bgpspeaker.httpapi import HttpServer, control_routes, tcp_routes
from bgpspeaker.leader_writes import ColdStartHold, RecordSchedule, StatusSchedule
from bgpspeaker.logs import fields, setup_logging
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import JSON, NodeView, RouteIntent, SameObjects, ServiceView, Snapshot, is_dns_subdomain
from bgpspeaker.planner import Health, Plan, PlanMemo, plan as make_plan
from bgpspeaker.publish import Publisher
from bgpspeaker.records import DEFAULT_NAMESPACE, LOCAL, SHARED
from bgpspeaker.routes_view import route_entries

if TYPE_CHECKING:  # imported for real in run(): the kubernetes client is slow to import and not needed offline
    from bgpspeaker.exabgp.driver import ExabgpDriver
    from bgpspeaker.kube.events import EventRecorder
    from bgpspeaker.kube.leader import LeaderElector
    from bgpspeaker.kube.watcher import KubeWatcher

log = logging.getLogger("bgpspeaker.daemon")
T = TypeVar("T")

LEASE_NAME = "bgpspeaker-allocator"
CONFIG_POLL_SECONDS = 1.0  # a ConfigMap update lands as a symlink swap; polling catches it without inotify
RECONCILE_RETRY_SECONDS = 1.0
SHUTDOWN_JOIN_SECONDS = 2.0
GC_PAUSE_LIMIT_SECONDS = 60.0  # the cyclic collector is back on by then, synced or not
HEARTBEAT_SECONDS = 1.0
LOOP_STUCK_SECONDS = 10.0  # /healthz fails when the loop has not beaten for this long
# A cold start's leader writes wait this long at most for this node's first routes (ColdStartHold)
COLD_START_WRITES_WAIT_SECONDS = 5.0
CONTROL_SOCKET = "control.sock"  # in the run directory


@dataclass(frozen=True)
class Options:
    config_path: str
    node_name: str
    kubeconfig: Optional[str]
    allocator: bool
    dry_run: bool
    run_dir: Path
    lease_namespace: str = DEFAULT_NAMESPACE
    # False: `bgpspeaker allocator`: allocate, write status, Events and records (on the Lease
    # holder), announce nothing and start no ExaBGP; `node_name` is then the pod's name.
    speaker: bool = True


@dataclass(frozen=True)
class _Allocator:
    """On an allocator: the Lease elector, and the leader's writes it gates (all or none).

    One allocator per cluster: the Lease holder writes Service status and records, the
    others only read."""

    elector: LeaderElector
    status: StatusSchedule
    records: RecordSchedule
    cold_start: ColdStartHold  # both schedules' offers, until this node's first routes are sent


class DrainState:
    """`None` → normal; DRAINING → announce with GSHUT + lowest tier; WITHDRAWN → announce nothing."""

    DRAINING = "draining"
    WITHDRAWN = "withdrawn"


def maintenance_state(mode: Optional[str], since: float, now: float, drain_seconds: float) -> Optional[str]:
    """The fleet switch (`cluster.maintenance`) as a drain state, from the time it started.

    `drain`: draining for as long as it is set. `withdraw`: draining, then withdrawn once
    `drain_seconds` have passed since draining began: the ordering of `bgpspeaker drain`,
    so traffic moves to the other clusters before anything is withdrawn. Every node of
    the cluster reads the same config, so one change takes the whole cluster out."""
    if mode is None:
        return None
    if mode == "withdraw" and now - since >= drain_seconds:
        return DrainState.WITHDRAWN
    return DrainState.DRAINING


class Daemon:
    """`bgpspeaker run`: owns every piece of mutable state, on one asyncio loop.

    It exists so that the shells (informers, the ExaBGP driver, the status writer, the
    Event recorder, the control server) never share state with each other: each reports
    to the daemon, and the daemon alone decides when to reconcile, runs the pure core
    (allocate, plan) and hands the results out: to the driver, to the leader's writes
    (leader_writes.py: what to write when) and to the Publisher (publish.py: metrics,
    Events and log lines, by difference). Besides that wiring it runs drain, the fleet
    switch and config reload.
    """

    def __init__(self, options: Options, config: Config, metrics: Optional[Metrics] = None) -> None:
        """Made on the loop it runs on (see run_command): every timer and thread hand-off uses it."""
        self.options, self.config = options, config
        self.metrics = metrics or Metrics()
        self.loop = asyncio.get_running_loop()
        self.drain: Optional[str] = None
        self._drain_timer: Optional[asyncio.TimerHandle] = None
        # cluster.maintenance: (mode, loop time draining began), and the wake-up for its withdraw
        self._maintenance: Optional[tuple[str, float]] = None
        self._maintenance_timer: Optional[asyncio.TimerHandle] = None
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._config_fingerprint = _fingerprint(options.config_path)
        self._secrets_fingerprint = _secrets_fingerprint(config)
        self._node: Optional[NodeView] = None  # the node view the driver was started/configured with
        self._last_plan: Optional[Plan] = None
        # Incremental reconcile: an EndpointSlice event leaves the config and the Services
        # as they were (the watcher replaces a dict only when its resource changed), so the
        # allocation is reused as is, and the planner re-decides only the Services whose
        # inputs changed. 1,000 Services: most of an event's CPU before (bench profile).
        self._allocation_memo: Optional[tuple[Config, Mapping[str, ServiceView], Allocation, Optional[SameObjects]]] = (
            None
        )
        self._plan_memo = PlanMemo()
        self._records_memo = RecordsMemo()  # the records allocation, by difference (allocator.RecordsMemo)
        # Tier hysteresis (planner._health): the records each plan hands to the next (None:
        # no history yet, so a restart counts healthy Services as settled and moves no
        # traffic), and the wake-up for the next rise that ends.
        self._health: Optional[Health] = None
        self._rise_timer: Optional[tuple[float, asyncio.TimerHandle]] = None
        self.publisher = Publisher(self.metrics, options.node_name)
        self._dry_run_entries: list[dict[str, JSON]] = []
        self._node_seen = False
        self.watcher: Optional[KubeWatcher] = None
        self.driver: Optional[ExabgpDriver] = None
        self.events: Optional[EventRecorder] = None
        self.allocator: Optional[_Allocator] = None  # with options.allocator, once the API client exists
        self.servers: list[HttpServer] = []
        # Liveness, read by the HTTP threads without touching the loop (httpapi.py):
        # the loop's last heartbeat, and since when this node has been unable to announce.
        self._heartbeat = time.monotonic()
        self._unable_since: Optional[float] = None
        self.bfd = BfdService(options.run_dir, self.metrics)  # starts nothing without a bfdProfile

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        self._follow_maintenance(at_start=True)
        self._pause_gc_for_the_initial_sync()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_config("SIGHUP")))
        for warning in config_warnings(self.config):
            log.warning("config warning", extra=fields(path=warning.path, message=warning.message))

        self._start_http()

        try:
            self._start_kubernetes()
            tasks = [
                asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                asyncio.create_task(self._config_watch_loop(), name="config-watch"),
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            ]
            await self._stopping.wait()
            log.info("stopping", extra=fields(shutdown=self.config.speaker.shutdown))
            for task in tasks:
                task.cancel()
            # Bounded: a task that survives its cancellation must not keep the process (and the
            # next pod) waiting; the shutdown below stops ExaBGP either way.
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_JOIN_SECONDS)
            for task in stuck:
                log.error("task still running after cancel; stopping anyway", extra=fields(task=task.get_name()))
        finally:
            await self._shutdown()
        return 0

    def _start_http(self) -> None:
        """Read-only TCP listeners (metrics.address, and health.address if set) and the
        control socket in the run directory (mode 0600). Addresses are read once: a reload
        that changes them takes effect at the next start."""
        controls = _ThreadSafeControls(self)
        metrics, health = self.config.metrics, self.config.health
        listeners = [("http", metrics.host, metrics.port)]
        if (
            health.host is not None
            and health.port is not None
            and (health.host, health.port) != (metrics.host, metrics.port)
        ):  # (host and port are set together: one address)
            listeners.append(("health", health.host, health.port))
        for name, host, port in listeners:
            server = HttpServer.tcp(host, port, tcp_routes(controls, self.metrics.registry), name=name).start()
            self.servers.append(server)
            log.info("http listening", extra=fields(address=f"{host}:{server.port}", serves=name))
        path = str(self.options.run_dir / CONTROL_SOCKET)
        self.servers.append(HttpServer.unix(path, control_routes(controls, controls), name="control").start())
        log.info("control socket listening", extra=fields(path=path))

    def _start_kubernetes(self) -> None:
        from bgpspeaker.kube.client import api_client
        from bgpspeaker.kube.events import EventRecorder
        from bgpspeaker.kube.records import RecordKeeper, Store
        from bgpspeaker.kube.watcher import KubeWatcher

        api = api_client(self.options.kubeconfig)
        self.events = EventRecorder(api, instance=self.options.node_name)
        self.publisher.events = self.events
        # The allocation records: this cluster's own (the Lease's namespace), and the shared
        # store of pools several clusters announce (docs/design.md, "Addresses across clusters").
        stores = {LOCAL: Store(LOCAL, api, self.options.lease_namespace)}
        if self.config.shared_store is not None:
            shared = self.config.shared_store
            stores[SHARED] = Store(SHARED, api_client(shared.kubeconfig), shared.namespace)
        # The EndpointSlices cached are those of the Services we may announce (issue 14).
        self.watcher = KubeWatcher(
            api,
            self.loop,
            on_change=self._on_change,
            metrics=self.metrics,
            record_stores={name: (store.client, store.namespace) for name, store in stores.items()},
            announced=lambda service: is_managed(self.config, service),
        )
        self.watcher.start()
        if not self.options.dry_run:
            # Imported while the Node list is in flight, rather than between that list and
            # ExaBGP's spawn, where it queued behind the other lists' parsing for the GIL.
            import bgpspeaker.exabgp.driver  # noqa: F401
        if self.options.allocator:
            from bgpspeaker.kube.leader import LeaderElector
            from bgpspeaker.kube.status import StatusWriter

            loop = self.loop

            def from_elector_thread() -> None:
                loop.call_soon_threadsafe(self._on_change)

            # One allocator per cluster: the Lease holder writes Service status, the others only read.
            elector = LeaderElector(
                api,
                identity=self.options.node_name,
                namespace=self.options.lease_namespace,
                name=LEASE_NAME,
                on_started_leading=from_elector_thread,
                on_stopped_leading=from_elector_thread,
            )

            def is_leader() -> bool:
                return elector.is_leader

            # The writer reports allocations, refusals and releases as Events itself (deduplicated).
            self.allocator = _Allocator(
                elector,
                StatusSchedule(StatusWriter(api, is_leader=is_leader, events=self.events), on_retry=self._on_change),
                RecordSchedule(
                    RecordKeeper(stores, self.config.cluster.name, is_leader=is_leader),
                    reports=self.publisher,
                    on_retry=self._on_change,
                ),
                ColdStartHold(self.loop, COLD_START_WRITES_WAIT_SECONDS, self._leader_writes),
            )
            if not self.options.speaker:  # `bgpspeaker allocator`: no routes of its own to wait for
                self.allocator.cold_start.release()
            elector.start()

    async def _shutdown(self) -> None:
        if self.allocator is not None:
            # Before any await: the hold's timer must not start the leader's writes on the way out.
            self.allocator.cold_start.stop()
        if self._drain_timer:
            self._drain_timer.cancel()
        self._wake_at(None)
        if self._maintenance_timer is not None:
            self._maintenance_timer.cancel()
        if self.driver is not None:
            withdraw = self.config.speaker.shutdown == "withdraw"
            try:
                await self.driver.stop(withdraw=withdraw)
            except Exception:
                log.exception("stopping ExaBGP failed")
        await self.bfd.stop()  # after the withdraw: the router must not cut a session still withdrawing
        # Bounded joins: informer threads sit in blocking watch reads and are daemon threads,
        # so waiting long for them would only delay the exit (and the next pod's start).
        # The elector releases its Lease (an immediate takeover) and events flush first.
        stops: list[Callable[[], None]] = []
        if self.allocator is not None:
            stops.append(partial(self.allocator.elector.stop, timeout=SHUTDOWN_JOIN_SECONDS))
        if self.watcher is not None:
            stops.append(partial(self.watcher.stop, timeout=0.2))
        if self.events is not None:
            stops.append(partial(self.events.stop, timeout=SHUTDOWN_JOIN_SECONDS))
        results = await asyncio.gather(*(asyncio.to_thread(stop) for stop in stops), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("stopping a component failed", extra=fields(error=repr(result)))
        if self.allocator is not None:
            self.allocator.status.stop()  # a write in flight is abandoned
            self.allocator.records.stop()
        for server in self.servers:
            server.stop()
        log.info("stopped")

    # --- the reconcile loop --------------------------------------------------------------

    def _on_change(self) -> None:
        """Called on the loop after real changes: informers, elector, drain, config reload."""
        self._dirty.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            # When the informer thread received the oldest change this reconcile covers.
            started = self.watcher.changed_at if self.watcher is not None else None
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Keep what is announced (invariant 2: nothing is withdrawn on our own failure) and retry.
                log.exception("reconcile failed; keeping the announced routes and retrying")
                await asyncio.sleep(RECONCILE_RETRY_SECONDS)
                self._on_change()
                continue
            if started is not None and self.driver is not None and self.driver.ready:
                self.metrics.event_to_ack.observe(time.monotonic() - started)

    async def reconcile(self) -> None:
        if self.watcher is None:
            return
        if not self.watcher.synced:
            # Announce nothing before the first complete snapshot (a partial view would
            # withdraw), but start ExaBGP as soon as this Node is known, while the Service
            # lists finish: serially, cold start at 10k Services was 2x raw ExaBGP (bench).
            # The driver sends nothing, not even End-of-RIB, before its first apply().
            node = self.watcher.snapshot().nodes.get(self.options.node_name)
            if node is not None and self.driver is None and self.options.speaker:
                await self._ensure_driver(node)
            return
        snapshot: Snapshot = self.watcher.snapshot()
        node = snapshot.nodes.get(self.options.node_name)
        if node is None and self.options.speaker:
            log.warning(
                "this node is not in the API (yet); announcing nothing", extra=fields(node=self.options.node_name)
            )
        allocation = self._allocate(snapshot)
        # Status and records in their own tasks: they never wait on this node's BGP (a leader
        # whose ExaBGP crash-loops still writes every Service's status; issue 14), but for a
        # cold start's first routes, a few seconds at most (ColdStartHold).
        if self.allocator is not None and self.allocator.elector.is_leader:
            self.allocator.cold_start.offer(self.config, snapshot, allocation)
        if not self.options.speaker:  # `bgpspeaker allocator`: no BGP here
            self._node_seen = True
            self.publisher.allocation(self.config, snapshot, allocation, self._is_leader())
            return
        maintenance = self.maintenance()
        the_plan = make_plan(
            self.config,
            snapshot,
            self.options.node_name,
            allocation,
            drained=self.drain is not None or maintenance is not None,
            memo=self._plan_memo,
            now=self.loop.time(),
            health=self._health,
        )
        self._health = the_plan.health
        self._wake_at(the_plan.wake_at)
        withdrawn = DrainState.WITHDRAWN in (self.drain, maintenance)
        desired: tuple[RouteIntent, ...] = () if withdrawn else the_plan.routes
        if node is not None:
            await self._ensure_driver(node)
        if self.driver is not None:
            await self.driver.apply(desired)
            if node is not None:  # BFD follows the routes: up once announced, stopped only after a withdraw
                await self.bfd.update(self.config, node, routes_withdrawn=self.drain == DrainState.WITHDRAWN)
        elif self.options.dry_run:
            entries = route_entries(desired)
            if entries != self._dry_run_entries:
                for entry in entries:
                    log.info("dry-run: would announce", extra=fields(**entry))
                self._dry_run_entries = entries
        if self.allocator is not None:  # the first routes are with ExaBGP (or this node has none to send)
            self.allocator.cold_start.release()
        self._node_seen = node is not None
        first_plan = not self.publisher.planned
        self._last_plan = the_plan
        self.publisher.plan(snapshot, the_plan, desired)
        self.publisher.allocation(self.config, snapshot, allocation, self._is_leader())
        if first_plan:
            self._resume_gc()

    def _leader_writes(self, config: Config, snapshot: Snapshot, allocation: Allocation) -> None:
        """Hand an allocation to the leader's writes (status, then records): each returns at once."""
        if self.allocator is None or not self.allocator.elector.is_leader:  # lost the Lease while held
            return
        self.allocator.status.offer(allocation, snapshot.services)
        self.allocator.records.offer(config, snapshot, allocation)

    def _is_leader(self) -> bool:
        return self.allocator is not None and self.allocator.elector.is_leader

    def _wake_at(self, when: Optional[float]) -> None:
        """Plan again at `when` (loop time): a Service's riseSeconds end then. One timer, the earliest."""
        if self._rise_timer is not None:
            if self._rise_timer[0] == when:
                return
            self._rise_timer[1].cancel()
            self._rise_timer = None
        if when is not None:
            # a hair late: asyncio may run a timer up to its clock resolution early, and a plan
            # made before `when` would still see the Service rising and ask for the same time
            self._rise_timer = (when, self.loop.call_at(when + 0.005, self._rise_ended))

    def _rise_ended(self) -> None:
        self._rise_timer = None
        self._on_change()

    def _pause_gc_for_the_initial_sync(self) -> None:
        """The cyclic collector is paused until the first plan, 60 s at most.

        While the cache fills, the heap only grows, and every few thousand new objects a
        collection rescans it: at 10,000 Services that was half of allocate + plan (0.45 s
        of a cold start, measured with bench_plan's inputs). Lists and views hold no
        reference cycles; refcounting frees them as usual while the collector sleeps.
        """
        gc.disable()
        self.loop.call_later(GC_PAUSE_LIMIT_SECONDS, self._resume_gc)

    def _resume_gc(self) -> None:
        if gc.isenabled():
            return
        # The synced cache and the first plan live as long as the process: move them out of
        # the collector's reach. A full collection walking 10,000 Services' views took
        # 0.1-0.2 s, the tail of event latency (bench). Refcounting still frees them when
        # replaced; only a reference cycle among them would leak, and frozen views hold none.
        gc.freeze()
        gc.enable()

    def _allocate(self, snapshot: Snapshot) -> Allocation:
        """allocate(), skipped while neither the config nor the Services changed (identity:
        both are replaced, never mutated, when they change)."""
        memo = self._allocation_memo
        records = snapshot.records_identity()
        if memo is not None and memo[0] is self.config and memo[1] is snapshot.services and memo[3] == records:
            return memo[2]
        allocation = allocate_snapshot(self.config, snapshot, memo=self._records_memo)
        self._allocation_memo = (self.config, snapshot.services, allocation, records)
        return allocation

    async def _ensure_driver(self, node: NodeView) -> None:
        if self.options.dry_run:
            self._node = node
            return
        if self.driver is None:
            from bgpspeaker.exabgp.driver import ExabgpDriver

            self.options.run_dir.mkdir(parents=True, exist_ok=True)
            self.driver = ExabgpDriver(
                self.config, node, self.options.run_dir, self.metrics, exabgp_argv=_exabgp_argv()
            )
            self._node = node
            # Not waiting for ExaBGP: its supervisor retries a failed start with backoff, forever,
            # and apply() returns while it is down (the desired set is replayed once it is up).
            # Waiting here once meant: not ready in 30 s, never started again (issue 14).
            await self.driver.start(timeout=None)
            log.info("exabgp supervised", extra=fields(node=node.name, peers=len(self.config.peers)))
        elif node != self._node:
            restarted = await self.driver.reconfigure(self.config, node)
            self._node = node
            log.info("node changed", extra=fields(node=node.name, exabgp_restarted=restarted))

    # --- drain ---------------------------------------------------------------------------

    def start_drain(self) -> dict[str, JSON]:
        if self.drain is None:
            self.drain = DrainState.DRAINING
            seconds = self.config.speaker.drain_seconds
            log.info("draining", extra=fields(withdraw_after_seconds=seconds))
            self._drain_timer = self.loop.call_later(seconds, self._drain_done)
            self._on_change()
        return {"drain": self.drain, "withdrawAfterSeconds": self.config.speaker.drain_seconds}

    def _drain_done(self) -> None:
        if self.drain == DrainState.DRAINING:
            self.drain = DrainState.WITHDRAWN
            log.info("drained: withdrawing every route")
            self._on_change()

    def stop_drain(self) -> dict[str, JSON]:
        if self._drain_timer:
            self._drain_timer.cancel()
        if self.drain is not None:
            log.info("undrained")
        self.drain = None
        self._on_change()
        return {"drain": None}

    # --- the fleet switch: cluster.maintenance ---------------------------------------------

    def maintenance(self) -> Optional[str]:
        """This cluster's maintenance as a drain state (None: in service)."""
        if self._maintenance is None:
            return None
        mode, since = self._maintenance
        return maintenance_state(mode, since, self.loop.time(), self.config.speaker.drain_seconds)

    def _follow_maintenance(self, at_start: bool = False) -> None:
        """After the config (re)loads: start, change or end the cluster's maintenance.

        Draining begins when the mode first appears; `drain` → `withdraw` keeps that start,
        so a cluster drained for long enough withdraws at once. A speaker that starts with
        `withdraw` already set announces nothing: its cluster was taken out before."""
        mode = self.config.cluster.maintenance
        if self._maintenance_timer is not None:
            self._maintenance_timer.cancel()
            self._maintenance_timer = None
        before = self._maintenance
        if mode is None:
            self._maintenance = None
        elif before is None:
            self._maintenance = (mode, float("-inf") if at_start else self.loop.time())
        else:
            self._maintenance = (mode, before[1])
        if (before and before[0]) != mode:
            log.info(
                "cluster maintenance",
                extra=fields(
                    mode=mode or "none",
                    state=self.maintenance() or "in service",
                    withdraw_after_seconds=self.config.speaker.drain_seconds if mode == "withdraw" else "",
                ),
            )
        if self._maintenance is not None and mode == "withdraw" and self.maintenance() == DrainState.DRAINING:
            when = self._maintenance[1] + self.config.speaker.drain_seconds
            # a hair late: asyncio may run a timer up to its clock resolution early
            self._maintenance_timer = self.loop.call_at(when + 0.005, self._maintenance_withdraws)

    def _maintenance_withdraws(self) -> None:
        self._maintenance_timer = None
        log.info("cluster maintenance: withdrawing every route")
        self._on_change()

    # --- config reload -------------------------------------------------------------------

    async def _config_watch_loop(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            fingerprint = _fingerprint(self.options.config_path)
            if fingerprint != self._config_fingerprint:
                self._config_fingerprint = fingerprint
                await self.reload_config("file changed")
                self._secrets_fingerprint = _secrets_fingerprint(self.config)
            elif (secrets := _secrets_fingerprint(self.config)) != self._secrets_fingerprint:
                # A rotated Secret: the config is the same, the password behind a passwordFile is
                # not. The driver reloads ExaBGP, which resets only that peer's session (reload.py).
                self._secrets_fingerprint = secrets
                await self.reload_config("password file changed", secrets_changed=True)

    async def reload_config(self, why: str, secrets_changed: bool = False) -> bool:
        try:
            new = load_config(self.options.config_path)
        except Exception as exc:  # ConfigError, and anything else: the watch loop must survive any file
            self.metrics.config_reloads.labels("invalid").inc()
            log.error(
                "config reload refused; keeping the running config",
                extra=fields(why=why, errors=str(exc) if isinstance(exc, ConfigError) else repr(exc)),
            )
            return False
        self.metrics.config_reloads.labels("ok").inc()
        if new == self.config and not secrets_changed:
            log.info("config reloaded: no change", extra=fields(why=why))
            return True
        for warning in config_warnings(new):
            log.warning("config warning", extra=fields(path=warning.path, message=warning.message))
        self.config = new
        if self.watcher is not None:
            self.watcher.reannounce()  # loadBalancerClass may have changed which Services are ours
        self._follow_maintenance()
        if self.driver is not None and self._node is not None:
            restarted = await self.driver.reconfigure(new, self._node)
            log.info("config reloaded", extra=fields(why=why, exabgp_restarted=restarted))
        else:
            log.info("config reloaded", extra=fields(why=why))
        self._on_change()
        return True

    # --- what the HTTP API shows -----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            self._note_liveness(time.monotonic())
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _announce_blocked(self) -> bool:
        """This node should announce but cannot: it is in the API, not a dry run, and ExaBGP
        is not running with its relay connected (not started, failing to start, crash-looping)."""
        if self.options.dry_run or self.watcher is None or self._node is None and self.driver is None:
            return False  # the Node is not known yet: nothing a restart would fix
        return self.driver is None or not self.driver.ready

    def _note_liveness(self, now: float) -> None:
        self._heartbeat = now
        if not self._announce_blocked():
            self._unable_since = None
        elif self._unable_since is None:
            self._unable_since = now

    def healthy(self) -> tuple[bool, str]:
        """Called from HTTP threads: plain reads, never the loop (a stuck loop shows as a stale beat)."""
        return liveness(time.monotonic(), self._heartbeat, self._unable_since, self.config.health.fail_after_seconds)

    def ready(self) -> tuple[bool, str]:
        if self.watcher is None or not self.watcher.synced:
            return False, "waiting for the first Kubernetes sync"
        if not self._node_seen:
            return False, "this node is not in the API"
        if self.driver is not None and not self.driver.ready:  # live: ExaBGP may have died since
            return False, "ExaBGP not ready"
        return True, "ok (kubernetes watch stale: keeping the last known state)" if self.watcher.stale else "ok"

    def status(self) -> dict[str, JSON]:
        peers = []
        states = self.driver.peer_states() if self.driver is not None else {}
        held = self.driver.held_peers() if self.driver is not None else frozenset()
        bfd = self.bfd.peer_states()
        for peer in self.config.peers:
            state = states.get(peer.name)
            peers.append(
                {
                    "name": peer.name,
                    "address": str(peer.address),
                    "asn": peer.asn,
                    "up": bool(state and state.up),
                    "since": state.since if state else None,
                    "lastDownReason": state.last_down_reason if state else None,
                    "routesHeldBack": peer.name in held,
                    "bfd": bfd.get(peer.name),
                }
            )
        announced = list(self.driver.announced().values()) if self.driver is not None else []
        return {
            "node": self.options.node_name,
            "cluster": self.config.cluster.name,
            "ready": self.ready()[0],
            "drain": self.drain,
            "maintenance": {"mode": self.config.cluster.maintenance, "state": self.maintenance()},
            "leader": self._is_leader(),
            "kubernetes": {
                "synced": bool(self.watcher and self.watcher.synced),
                "stale": bool(self.watcher and self.watcher.stale),
            },
            "peers": peers,
            "routes": route_entries(announced),
            "skipped": [
                {"service": s.service, "reason": s.reason, "message": s.message}
                for s in (self._last_plan.skipped if self._last_plan else ())
            ],
        }


def liveness(now: float, heartbeat: float, unable_since: Optional[float], fail_after: float) -> tuple[bool, str]:
    """/healthz: the loop beats, and the node has not been unable to announce for `fail_after` s. Pure."""
    if now - heartbeat > LOOP_STUCK_SECONDS:
        return False, f"event loop not responding for {now - heartbeat:.0f}s"
    if unable_since is not None and now - unable_since > fail_after:
        return False, (
            f"unable to announce for {now - unable_since:.0f}s (ExaBGP not running; "
            f"health.failAfterSeconds {fail_after:g})"
        )
    return True, "ok"


class _ThreadSafeControls:
    """The HTTP threads' view of the daemon.

    Probes (healthy, ready) read plain attributes, so no number of TCP requests can queue
    work on the reconcile loop. The control socket's calls run on the loop, with a timeout.
    """

    TIMEOUT_SECONDS = 5.0

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _on_loop(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self.daemon.loop).result(self.TIMEOUT_SECONDS)

    def healthy(self) -> tuple[bool, str]:
        return self.daemon.healthy()

    def ready(self) -> tuple[bool, str]:
        return self.daemon.ready()

    def status(self) -> dict[str, JSON]:
        return self._on_loop(self.daemon.status)

    def drain(self) -> dict[str, JSON]:
        return self._on_loop(self.daemon.start_drain)

    def undrain(self) -> dict[str, JSON]:
        return self._on_loop(self.daemon.stop_drain)


def _fingerprint(path: str) -> Optional[str]:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _secrets_fingerprint(config: Config) -> tuple[Optional[str], ...]:
    """One digest per passwordFile (kept in memory only, never shown): a rotation changes it."""
    return tuple(_fingerprint(peer.password_file) for peer in config.peers if peer.password_file)


def _exabgp_argv() -> Optional[list[str]]:
    """$BGPSPEAKER_EXABGP: another ExaBGP executable (tests use a wrapper that fails on purpose)."""
    path = os.environ.get("BGPSPEAKER_EXABGP")
    return [path] if path else None


M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _map_large_allocations() -> None:
    """glibc: every allocation over 128 KB gets its own mapping, returned to the system on free.

    By default glibc raises that threshold after each such free (up to 32 MB), so the
    250 KB strings of a tenant's annotations, parsed page by page and freed at once, then
    come from the heap, and the heap, fragmented by the views kept in between, never
    shrinks. Measured (integration/bench/bench_hostile.py, 10,000 ClusterIP Services with a
    250 KB annotation each + 10,000 LoadBalancer Services): RSS after the first plan 216 MB
    with the default, 141 MB with the threshold fixed. Setting it also turns the dynamic
    adjustment off. Elsewhere than glibc this does nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def run_command(args: argparse.Namespace) -> int:
    _map_large_allocations()
    # Everything the daemon creates (ExaBGP's config with the MD5 secrets, its log, the
    # sockets) is for its own user only, from the moment it exists.
    os.umask(0o077)
    setup_logging(args.log_level)
    speaker = getattr(args, "speaker", True)
    if not args.node_name:
        log.error(
            "no node name: pass --node-name or set NODE_NAME"
            if speaker
            else "no identity: pass --identity or set POD_NAME"
        )
        return 2
    if not is_dns_subdomain(args.node_name):
        log.error(
            "the node name is not a Kubernetes Node name (an RFC 1123 DNS subdomain)",
            extra=fields(node_name=args.node_name[:80]),
        )
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("invalid config; refusing to start", extra=fields(file=args.config, errors=str(exc)))
        return 2
    except OSError as exc:
        log.error("cannot read config", extra=fields(file=args.config, error=exc.strerror or str(exc)))
        return 2
    run_dir = Path(args.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        log.error("run directory is not writable", extra=fields(run_dir=str(run_dir), error=exc.strerror or str(exc)))
        return 1
    options = Options(
        config_path=args.config,
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        allocator=not args.no_allocator,
        dry_run=args.dry_run,
        run_dir=run_dir,
        lease_namespace=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        speaker=speaker,
    )

    async def main() -> int:
        return await Daemon(options, config).run()

    try:
        code = asyncio.run(main())
    except Exception:
        log.exception("fatal error")
        code = 1
    # Exit now. By here ExaBGP is stopped, the Lease released and the Events flushed (each
    # bounded); what may remain are API requests in worker threads (a status write, an
    # Event) stuck on a slow API, which the interpreter's exit would join for up to their
    # 30 s read timeout, past a pod's grace period. The next leader redoes the writes.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
