"""The three informers combined into one cache owned by the daemon's event loop.

The informers run in threads (the client blocks); every batch they produce is applied
here on the loop, so the loop is the single owner of the state and `snapshot()` never
needs a lock. The snapshot is copy-on-write: `snapshot()` hands out the live dicts and
the next change copies only the dict it touches, so the daemon can take a snapshot on
every coalesced change at the cost of one dict copy per changed resource.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import AbstractSet, Callable, Iterable, Mapping, Optional, TypedDict, Unpack

import kubernetes

from bgpspeaker.kube.client import object_path
from bgpspeaker.kube.informer import ENDPOINT_SLICES, NODES, SERVICES, Change, Informer, Resource
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import ServiceView, Snapshot
from bgpspeaker.reconciler import Versioned
from bgpspeaker.records import IMPORT_MARKER, LOCAL, RECORD_LABEL, RECORD_LABEL_VALUE, AddressRecord, Block
from bgpspeaker.views import IMPORTED, record_or_marker_from_dict

log = logging.getLogger(__name__)

RESOURCES: tuple[Resource, ...] = (SERVICES, ENDPOINT_SLICES, NODES)


class InformerOptions(TypedDict, total=False):
    """What KubeWatcher passes on to every Informer (tests shorten the timings)."""

    watch_timeout: float
    backoff_initial: float
    backoff_max: float
    healthy_after: float
    page_size: int


# The Service and EndpointSlice lists wait this long at most for the Node list: ExaBGP's
# config depends on this Node, so its session can come up while they are read. Listed
# side by side, the one-object Node list queued behind them (1.3 s at 50,000 Services, bench).
NODES_FIRST_WAIT = 2.0


# ---- which EndpointSlices the cache keeps (issue 14) ---------------------------------------
# Only those of Services this speaker may announce: the planner reads no others, and a
# tenant's ClusterIP Services (any number of them) must not grow every node's cache.


def announced_services(services: Mapping[str, ServiceView], announced: Callable[[ServiceView], bool]) -> set[str]:
    """The keys of the Services `announced` says yes to. Pure."""
    return {key for key, service in services.items() if announced(service)}


def came_and_went(
    services: Mapping[str, ServiceView],
    announced: Callable[[ServiceView], bool],
    keys: Iterable[str],
    wanted: AbstractSet[str],
) -> tuple[set[str], set[str]]:
    """Of the Services `keys` (changed; a missing key is a deleted Service), those that
    `announced` now says yes to and `wanted` lacks, and those it holds that it no longer
    should. O(len(keys)): a Service event does not cost a pass over every Service. Pure."""
    came, went = set(), set()
    for key in keys:
        service = services.get(key)
        if service is not None and announced(service):
            if key not in wanted:
                came.add(key)
        elif key in wanted:
            went.add(key)
    return came, went


def slices_kept(service_key: str, wanted: Optional[AbstractSet[str]]) -> bool:
    """Whether the cache keeps the EndpointSlices of this Service: only the announced
    ones' once the Services are listed; every one while `wanted` is None (nothing known
    yet; the watcher lists the slices after the Services, so only without `announced`). Pure."""
    return wanted is None or service_key in wanted


def records_resource(store: str, namespace: str) -> Resource:
    """The allocation records' blocks (and the import marker) of one store, as an informer resource."""
    return Resource(
        f"records-{store}",
        object_path("/api/v1", "configmaps", namespace),
        functools.partial(record_or_marker_from_dict, store=store),
        label_selector=f"{RECORD_LABEL}={RECORD_LABEL_VALUE}",
        parse_again=lambda obj, previous: record_or_marker_from_dict(obj, store, previous),
    )


def flatten_block(records: dict[str, AddressRecord], note: Callable[[str], None], before: Block, after: Block) -> None:
    """Bring `records` (every block's records, by key) from block `before` to `after`: the
    records that went are removed, and those that came or changed are set and noted. A
    record the block kept (the same object: block_from_dict reuses unchanged ones) is not
    noted, so the allocator looks only at what changed. Pure but for its arguments."""
    for key in before:
        if key not in after:
            note(key)
            records.pop(key, None)
    for key, record in after.items():
        if before.get(key) is not record:
            note(key)
            records[key] = record


class KubeWatcher:
    """Services, EndpointSlices and Nodes, kept current; `on_change()` runs on `loop`.

    `on_change` is called on the loop after each batch of real changes, and once when
    `synced` becomes true (so an empty cluster still gets its first reconcile). It is
    never called for a relist that found nothing new: that is safety invariant 2.
    `informer_options` go to every Informer (watch_timeout, backoff_initial, ...).
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        metrics: Metrics,
        record_stores: Optional[Mapping[str, tuple[kubernetes.client.ApiClient, str]]] = None,
        announced: Optional[Callable[[ServiceView], bool]] = None,
        **informer_options: Unpack[InformerOptions],
    ) -> None:
        """`record_stores`: store name (local | shared) -> (its API, its namespace): the
        allocation records watched there. The local store is part of `synced` (it decides
        whether this cluster allocates from records at all); another store that cannot be
        read only keeps the Services of its pools waiting.

        `announced(service)`: whether this speaker may announce the Service (the daemon
        passes allocator.is_managed with its config); only those Services' EndpointSlices
        are kept. Called on the loop only. None keeps every slice."""
        self._loop, self._on_change = loop, on_change
        self._announced = announced
        # The Services whose slices are kept: None until the Services are listed. Changed
        # only on the loop, in place (a copy per new Service cost 7.5 ms at 50,000); the
        # slices informer's thread only tests membership (slices_kept), one atomic
        # operation on a set in CPython, and is told what changed afterwards (regroup).
        self._wanted: Optional[set[str]] = None
        # The slices list waits for it (set once `_wanted` is known, or at stop): listed
        # before the Services, every slice would be kept until then, and the memory of the
        # dropped ones is not given back (bench_hostile: 165 MB against 144 without them).
        # Measured not to slow the first snapshot: 1.10 / 11.5 s after the Services at
        # 10,000 / 50,000 LoadBalancer Services, against 1.68 / 12.2 s side by side (min).
        self._services_known = threading.Event()
        record_stores = dict(record_stores or {})
        self._record_resources = {
            store: records_resource(store, namespace) for store, (_, namespace) in record_stores.items()
        }
        self._required = {r.name for r in RESOURCES} | {
            r.name for store, r in self._record_resources.items() if store == LOCAL
        }
        # Versioned: each copy notes what it changed, so consumers find that in O(change)
        self._views: dict[str, Versioned] = {r.name: Versioned() for r in RESOURCES}
        self._views.update({r.name: Versioned() for r in self._record_resources.values()})
        self._imported: set[str] = set()  # records resources whose store holds the import marker
        # records resource -> block key -> its records as last applied (the views hold them flat)
        self._blocks: dict[str, dict[str, Block]] = {r.name: {} for r in self._record_resources.values()}
        self._shared: set[str] = set()  # dicts the last snapshot holds: copy before writing
        self._snapshot: Optional[Snapshot] = None
        self._synced: set[str] = set()
        self._stale: set[str] = set()
        self.changed_at: Optional[float] = None  # monotonic receipt time of the oldest change not yet snapshotted
        self._informers = [
            Informer(
                api_client, r, self._batch_from_thread, metrics, on_lost=self._lost_from_thread, **informer_options
            )
            for r in RESOURCES
            if r is not ENDPOINT_SLICES
        ]
        self._slices = Informer(
            api_client,
            ENDPOINT_SLICES,
            self._batch_from_thread,
            metrics,
            on_lost=self._lost_from_thread,
            keeps=self._keeps_slices_of,
            **informer_options,
        )
        self._informers.insert(1, self._slices)
        self._informers += [
            Informer(
                record_stores[store][0],
                resource,
                self._batch_from_thread,
                metrics,
                on_lost=self._lost_from_thread,
                **informer_options,
            )
            for store, resource in self._record_resources.items()
        ]

    def start(self) -> None:
        nodes = next(i for i in self._informers if i.resource is NODES)
        nodes.start()
        for informer in self._informers:
            if informer is self._slices and self._announced is not None:
                informer.start(after=self._services_known, wait=None)
            elif informer is not nodes:
                informer.start(after=nodes.first_list_tried, wait=NODES_FIRST_WAIT)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every informer thread (blocking, up to `timeout` each); the cache stands."""
        for informer in self._informers:
            informer.request_stop()
        self._services_known.set()  # a slices informer still waiting ends
        for informer in self._informers:
            informer.stop(timeout)

    def reannounce(self) -> None:
        """Decide again which Services' slices are kept (on the loop), after `announced`
        changed its answers (a config reload: loadBalancerClass)."""
        if self._announced is not None and self._wanted is not None:
            wanted = announced_services(self._views[SERVICES.name], self._announced)
            self._want(wanted - self._wanted, self._wanted - wanted)

    def _keeps_slices_of(self, service_key: str) -> bool:  # the slices informer's thread
        return slices_kept(service_key, self._wanted)

    def _want(self, came: set[str], went: set[str]) -> None:
        """The slices of `came` kept from now on, those of `went` dropped: `_wanted`
        changes first, then the informer is told to decide those Services again."""
        if self._wanted is None:  # the first list of the Services: the slices informer waits for it
            self._wanted = came
            self._slices.regroup()
        elif came or went:
            self._wanted |= came
            self._wanted -= went
            self._slices.regroup(came | went)
        self._services_known.set()

    @property
    def synced(self) -> bool:
        """The initial lists of Services, EndpointSlices, Nodes (and local records) are applied."""
        return self._required <= self._synced

    @property
    def stale(self) -> bool:
        """Some watch is currently lost: the cache is the last known state, maybe outdated."""
        return bool(self._stale)

    @property
    def resource_versions(self) -> dict[str, Optional[str]]:
        """resource -> the resourceVersion its informer resumes from (for /status and tests)."""
        return {i.resource.name: i.resource_version for i in self._informers}

    def snapshot(self) -> Snapshot:
        """The current state. Shares dicts with the cache: callers must not mutate it."""
        if self._snapshot is None:
            self._snapshot = Snapshot(
                services=self._views[SERVICES.name],
                endpoint_slices=self._views[ENDPOINT_SLICES.name],
                nodes=self._views[NODES.name],
                records=self._records(),
            )
            self._shared = set(self._views)
        self.changed_at = None
        return self._snapshot

    def _records(self) -> Optional[dict[str, Mapping[str, AddressRecord]]]:
        """The records of every store listed once, or None before this cluster imported its
        allocations (no import marker in the local store): see bgpspeaker/records.py."""
        local = self._record_resources.get(LOCAL)
        if local is None or local.name not in self._imported:
            return None
        return {store: self._views[r.name] for store, r in self._record_resources.items() if r.name in self._synced}

    # ---- from the informer threads to the loop ------------------------------------------

    def _batch_from_thread(self, resource: str, changes: list[Change], listed: bool) -> None:
        self._post(self._apply, resource, changes, listed, time.monotonic())

    def _lost_from_thread(self, resource: str) -> None:
        self._post(self._stale.add, resource)

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the daemon is shutting down
            pass

    # ---- on the loop ---------------------------------------------------------------------

    def _apply(self, resource: str, changes: list[Change], listed: bool, received: float) -> None:
        if changes:
            if resource in self._shared:
                self._views[resource] = self._views[resource].successor()
                self._shared.discard(resource)
            views = self._views[resource]
            note = views.note
            blocks = self._blocks.get(resource)
            for key, view in changes:
                if blocks is not None:  # records: one object, a block, holds many
                    if key.endswith("/" + IMPORT_MARKER):
                        # The import marker is a flag, not a record: kept apart so the records
                        # dict holds records only (the allocator's memo compares it by identity).
                        (self._imported.add if view is IMPORTED else self._imported.discard)(resource)
                    elif view is None or isinstance(view, dict):
                        after: Block = view if view is not None else {}
                        flatten_block(views, note, blocks.pop(key, {}), after)
                        if after:
                            blocks[key] = after
                    continue
                note(key)
                if view is None:
                    views.pop(key, None)
                else:
                    views[key] = view
            self._snapshot = None
            if self.changed_at is None:
                self.changed_at = received
            if resource == SERVICES.name and self._announced is not None and self._wanted is not None:
                self._want(*came_and_went(views, self._announced, (key for key, _ in changes), self._wanted))
        if resource == SERVICES.name and listed and self._announced is not None and self._wanted is None:
            self._want(announced_services(self._views[SERVICES.name], self._announced), set())
        became_synced = False
        if listed:
            self._stale.discard(resource)
            if resource not in self._synced:
                self._synced.add(resource)
                became_synced = self.synced
        if changes or became_synced:
            try:
                self._on_change()
            except Exception:  # the daemon's bug must not kill the loop's callback machinery
                log.exception("on_change failed")
