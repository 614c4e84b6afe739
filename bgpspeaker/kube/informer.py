"""One informer per resource: LIST, then WATCH from the list's resourceVersion, forever.

Why our own instead of `kubernetes.watch.Watch`: we need, and Watch does not give,
(1) raw JSON straight into slim views (Watch deserialises into the client's models, or,
with `deserialize=False`, stops tracking the resourceVersion), (2) a relist on 410 that
is *diffed* against the cache, so a relist of unchanged objects produces no change
downstream (docs/design.md invariant 2), (3) reconnects with capped, jittered backoff
that never drop the cache, and (4) a stop that interrupts a blocked read.

Trade-offs:
* Changes are diffed as *views*, not resourceVersions: a Node heartbeat or a status
  field the core never reads changes the RV but not the view, and is dropped here.
* Any watch error (connection refused, reset, 5xx, read timeout) marks the informer
  stale and recovers by a diffed relist rather than by resuming the watch: the relist
  is what proves the cache is complete again, and it costs one LIST per outage.
  A clean end of the stream (timeoutSeconds, an LB idle timeout, an apiserver
  restart) resumes from the last resourceVersion instead: no relist, no event lost.
* The thread only parses and diffs; it hands each batch of changes to `on_batch`
  (which the KubeWatcher forwards to the daemon's loop) and never touches shared state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from bgpspeaker import views
from bgpspeaker.kube.client import (
    DISCOVERY,
    ENDPOINT_SLICES_PATH,
    NODES_PATH,
    SERVICES_PATH,
    Listing,
    object_path,
    request_raw,
)
from bgpspeaker.keyindex import OneOrSet, index_key, keys_of, unindex_key
from bgpspeaker.logs import fields
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import EndpointSliceView, JSONObject, NodeView, ServiceView, service_key

log = logging.getLogger(__name__)

# What an informer caches: the view its resource's `parse` makes of an object.
View = Union[ServiceView, EndpointSliceView, NodeView, views.RecordView]
# (key, view or None for deleted)
Change = tuple[str, Optional[View]]


@dataclass(frozen=True)
class Resource:
    name: str  # the `resource` label of watch_restarts, and the batch's name
    path: str  # the list-all URL path, e.g. /api/v1/services
    parse: Callable[[JSONObject], View]  # raw dict -> view
    label_selector: Optional[str] = None  # list and watch only the objects it selects
    # Views fall into groups (an EndpointSlice's: its Service's key) that the informer's
    # `keeps` decides on, and a group's objects can be listed alone: view -> group, and
    # group -> (list path, label selector). See Informer.regroup.
    group: Optional[Callable[[View], str]] = None
    group_list: Optional[Callable[[str], tuple[str, str]]] = None
    # Parse an object whose previous view is cached, given that view: a big object that
    # changes a little at a time (an address block) reuses what did not change.
    parse_again: Optional[Callable[[JSONObject, View], View]] = None
    # Keys that are Service identities: made by model.service_key (interned), so the cache's
    # key is the very string the planner, the allocator and the slices' index keep.
    service_keys: bool = False

    def key(self, obj: JSONObject) -> str:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        if not namespace:
            return str(meta.get("name"))
        return service_key(namespace, str(meta.get("name"))) if self.service_keys else f"{namespace}/{meta.get('name')}"


def _slices_of_service(service_key: str) -> tuple[str, str]:
    namespace, _, name = service_key.partition("/")
    return (object_path(DISCOVERY, "endpointslices", namespace), f"{views.SERVICE_NAME_LABEL}={name}")


SERVICES = Resource("services", SERVICES_PATH, views.service_from_dict, service_keys=True)


def _service_of_slice(view: View) -> str:
    return view.service_key if isinstance(view, EndpointSliceView) else ""  # (only slices are parsed here)


ENDPOINT_SLICES = Resource(
    "endpointslices",
    ENDPOINT_SLICES_PATH,
    views.endpoint_slice_from_dict,
    group=_service_of_slice,
    group_list=_slices_of_service,
)
# More groups than this to fetch at once (a config reload that changes loadBalancerClass,
# thousands of Services turned LoadBalancer together) are fetched by one relist instead.
MAX_GROUP_LISTS = 20
NODES = Resource("nodes", NODES_PATH, views.node_from_dict)


class WatchError(Exception):
    """The watch stream carried an ERROR event other than 410."""


class _Expired(Exception):
    """410: the resourceVersion we resume from was compacted away; relist."""


def iter_lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The newline-delimited events of a chunked watch response, as they arrive.

    kubernetes.watch.iter_resp_lines re-slices its whole buffer for every line (quadratic
    in a chunk holding thousands of events) and decodes to str; json.loads takes bytes.
    """
    pending = b""
    for segment in response.stream(amt=None, decode_content=True):
        lines = (pending + segment).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class Informer:
    """LIST+WATCH of one resource in a daemon thread; changes go to `on_batch`.

    `on_batch(resource_name, changes, listed)` is called from the informer's thread, in
    order: `changes` is a list of (key, view | None); `listed` is True when the batch
    completes a (re)list, i.e. the sender's cache is now complete and fresh. `on_lost`
    (resource_name) is called from the thread when the watch is lost (the cache stands).

    A resource with groups keeps only the views whose group `keeps(group)` (called from
    this thread; it must be safe to call there); whoever changes its answer for a group
    calls `regroup` afterwards (see there).
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        resource: Resource,
        on_batch: Callable[[str, list[Change], bool], None],
        metrics: Metrics,
        *,
        on_lost: Callable[[str], None] = lambda name: None,
        watch_timeout: float = 60.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        healthy_after: float = 1.0,
        page_size: int = 500,
        keeps: Callable[[str], bool] = lambda group: True,
    ) -> None:
        self.resource = resource
        self._keeps = keeps
        # Groups to decide again (regroup), shared with the threads that ask; `_response`
        # is set under the same lock, so a request either sees the watch to interrupt or
        # is seen by the thread before it reads that watch.
        self._lock = threading.Lock()
        self._regroup: set[str] = set()
        self._regroup_all = False
        self._client = api_client
        self._on_batch, self._on_lost = on_batch, on_lost
        self._restarts = metrics.watch_restarts.labels(resource=resource.name)
        self.watch_timeout, self.page_size = watch_timeout, page_size
        # Full jitter (uniform up to the exponential cap) so a fleet of speakers that lost
        # the same apiserver does not reconnect in lockstep.
        self._wait = wait_random_exponential(multiplier=2 * backoff_initial, min=backoff_initial, max=backoff_max)
        # A watch that fails sooner than this after its relist counts as a failed attempt
        # (backoff grows); one that ran longer starts a fresh backoff with an immediate relist.
        self.healthy_after = healthy_after
        self._cache: dict[str, View] = {}
        # The cache's keys by group (only for a resource with groups; written by _put, _drop
        # and _reindex alone): a regroup of a few groups touches only their views, not the
        # whole cache (a new Service among 10,000 cost ~5 ms of walk on this thread, bench).
        # A group's one key as itself (bgpspeaker/keyindex.py): nearly every Service has one
        # EndpointSlice, and a set each was 4.5 MB at 20,000 Services (tracemalloc).
        self._members: dict[str, OneOrSet[str]] = {}
        self.resource_version: Optional[str] = None
        self.synced = False  # the first LIST was delivered
        self.stale = False  # the watch is lost; cleared when a relist is delivered
        self._stopping = threading.Event()
        self.first_list_tried = threading.Event()  # set when the first list delivered or failed
        self._response: Optional[urllib3.BaseHTTPResponse] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self, after: Optional[threading.Event] = None, wait: Optional[float] = 0.0) -> None:
        """Start the thread; with `after`, its first list waits up to `wait` seconds (None:
        until it is set) for that event."""

        def run() -> None:
            if after is not None:
                after.wait(wait)
            self._run()

        self._thread = threading.Thread(target=run, name=f"informer-{self.resource.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end, interrupting a blocked watch read; does not wait."""
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread
            except Exception:  # already closed
                pass

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def regroup(self, groups: Optional[Iterable[str]] = None) -> None:
        """Decide these groups (None: every group) again with `keeps`, from any thread, once
        `keeps` gives its new answers: the views of a group no longer kept are dropped
        (delivered as deletions); a group kept now is listed alone (its label selector),
        since the watch dropped its objects until now, and kept from then on.

        Done on the informer's thread between two watches: the watch in progress is cut
        and resumed from its resourceVersion afterwards. That order is what makes it
        lossless: an event the watch dropped came before the request, so the group's LIST
        (a fresh read) shows it; every event after the request is kept; and events that
        the resumed watch replays, older than that LIST, are followed by the newer ones.
        """
        with self._lock:
            if groups is None:
                self._regroup_all = True
            else:
                self._regroup.update(groups)
            response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks the watch's read (urllib3 >= 2.3)
            except Exception:  # already closed
                pass

    def _asked(self) -> bool:
        with self._lock:
            return self._regroup_all or bool(self._regroup)

    def _kept(self, view: View) -> bool:
        group = self.resource.group
        return group is None or self._keeps(group(view))

    # ---- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            retrying = Retrying(
                wait=self._wait,
                sleep=self._sleep,
                reraise=True,
                retry=retry_if_exception(lambda exc: not self._stopping.is_set()),
                before_sleep=self._before_sleep,
            )
            try:
                retrying(self._session)
            except Exception:  # only when stopping
                return

    def _session(self) -> None:
        """Relist, then watch until the stream expires (410), fails, or we stop."""
        if self._stopping.is_set():
            return
        try:
            self._relist()
        finally:
            self.first_list_tried.set()
        started = time.monotonic()
        try:
            self._watch()
        except _Expired as exc:
            log.info("relisting", extra=fields(resource=self.resource.name, why=exc))
            self._restarts.inc()
        except Exception as exc:
            if self._stopping.is_set():
                return
            if time.monotonic() - started < self.healthy_after:
                raise  # the Retrying backs off before the next relist
            self._lost(exc)

    def _sleep(self, seconds: float) -> None:
        """tenacity's sleep between attempts, cut short by stop()."""
        self._stopping.wait(seconds)

    def _before_sleep(self, state: RetryCallState) -> None:
        if state.outcome is not None:  # always set once an attempt failed
            self._lost(state.outcome.exception())

    def _lost(self, exc: BaseException | None) -> None:
        self._restarts.inc()
        if not self.stale:
            log.warning(
                "watch lost; keeping the last known state until a relist",
                extra=fields(resource=self.resource.name, error=_describe(exc)),
            )
            self.stale = True
            self._on_lost(self.resource.name)

    def _relist(self) -> None:
        # A relist decides every group with `keeps` as it is now: requests made so far are done.
        with self._lock:
            self._regroup.clear()
            self._regroup_all = False
        old = self._cache
        fresh: dict[str, View] = {}
        changes: list[Change] = []
        # Each object becomes a view as it is parsed off the stream: see Listing.
        listing = Listing(self._client, self.resource.path, self.page_size, self.resource.label_selector)
        for obj in listing:
            key = self.resource.key(obj)
            view = self._parse(key, obj)
            known = old.get(key)
            if view is None:  # unparseable: keep what we had, if anything
                if known is not None:
                    fresh[key] = known
                continue
            if not self._kept(view):  # as if absent: a deletion if we had it
                continue
            # Views are frozen dataclasses: == is "did anything the core reads change?".
            # An unchanged object keeps its old view, and the new one is freed at once:
            # a relist holds one copy of the cache, not two (peak RSS at 10,000
            # Services was 157 MB with both, bench), and the daemon's caches, which
            # compare views by identity first, stay valid.
            if known is not None and known == view:
                fresh[key] = known
            else:
                fresh[key] = view
                changes.append((key, view))
        changes.extend((k, None) for k in old if k not in fresh)
        self._cache = fresh
        self._reindex()
        self.resource_version = listing.resource_version
        if self.stale or not self.synced or changes:
            log.info(
                "listed",
                extra=fields(
                    resource=self.resource.name,
                    objects=len(fresh),
                    resource_version=self.resource_version,
                    changed=len(changes),
                ),
            )
        self.synced, self.stale = True, False
        self._on_batch(self.resource.name, changes, True)

    def _watch(self) -> None:
        """Watch from self.resource_version, re-watching on a clean end, until an error."""
        short = 0  # consecutive watches that ended at once with nothing in them
        while not self._stopping.is_set():
            if self._asked():
                self._do_regroup()
                continue
            opened, lines = time.monotonic(), 0
            try:
                response = request_raw(
                    self._client,
                    "GET",
                    self.resource.path,
                    query={
                        "watch": True,
                        "resourceVersion": self.resource_version,
                        "labelSelector": self.resource.label_selector,
                        "allowWatchBookmarks": True,
                        "timeoutSeconds": int(self.watch_timeout),
                    },
                    # The server ends the stream after timeoutSeconds; a read that blocks
                    # much longer than that means a dead peer (half-open TCP).
                    request_timeout=(5.0, self.watch_timeout + 15.0),
                )
            except ApiException as exc:
                if exc.status == 410:
                    raise _Expired(f"watch from {self.resource_version}: 410 Gone") from None
                raise
            with self._lock:
                self._response = response
            try:
                if self._stopping.is_set():  # stop() ran before _response was visible
                    return
                if self._asked():  # regroup() ran before _response was visible
                    continue
                try:
                    for line in iter_lines(response):
                        lines += 1
                        self._handle(json.loads(line))
                except Exception:
                    if not self._asked():
                        raise
                    # cut by regroup(): resumed from self.resource_version after it
            finally:
                with self._lock:
                    self._response = None
                response.close()
                response.release_conn()
            if self._stopping.is_set():
                return
            if self._asked():
                continue  # cut by regroup(): not a restart
            self._restarts.inc()  # a clean end: resume from the last resourceVersion
            # A server (or proxy) that closes every watch at once would make this a busy
            # loop; client-go calls it a "very short watch". Back off, without relisting.
            short = short + 1 if lines == 0 and time.monotonic() - opened < 1.0 else 0
            if short and self._stopping.wait(self._wait_seconds(short)):
                return

    def _do_regroup(self) -> None:
        """What regroup() asked, on the informer's thread (see there); one batch of changes.
        A failed LIST raises, as a failed watch does: the relist that follows decides
        every group anyway."""
        with self._lock:
            groups, every = self._regroup, self._regroup_all
            self._regroup, self._regroup_all = set(), False
        group_of, group_list = self.resource.group, self.resource.group_list
        if group_of is None or group_list is None:
            return
        changes: list[Change] = []
        fetch = {group for group in groups if self._keeps(group)}
        members: dict[str, set[str]] = {group: set() for group in fetch}
        if every:
            cached = list(self._cache.items())
        else:  # only the asked groups' views: O(their members), not O(cache)
            cached = [(key, self._cache[key]) for group in groups for key in keys_of(self._members, group)]
        for key, view in cached:
            group = group_of(view)
            if (every or group in groups) and not self._keeps(group):
                self._drop(key)
                changes.append((key, None))
            elif group in members:
                members[group].add(key)
        if len(fetch) > MAX_GROUP_LISTS:
            if changes:
                self._on_batch(self.resource.name, changes, False)
            self._relist()
            return
        for group in sorted(fetch):
            path, selector = group_list(group)
            for obj in Listing(self._client, path, self.page_size, selector):
                key = self.resource.key(obj)
                parsed = self._parse(key, obj)
                if parsed is None or group_of(parsed) != group:
                    members[group].discard(key)  # unparseable: keep what we had
                    continue
                members[group].discard(key)
                if self._cache.get(key) != parsed:
                    self._put(key, parsed)
                    changes.append((key, parsed))
            for key in members[group]:  # gone since the watch last kept this group
                self._drop(key)
                changes.append((key, None))
        log.debug(
            "regrouped", extra=fields(resource=self.resource.name, listed=len(fetch), every=every, changed=len(changes))
        )
        if changes:
            self._on_batch(self.resource.name, changes, False)

    def _wait_seconds(self, attempt: int) -> float:
        class _State:  # what a tenacity wait strategy reads
            attempt_number = attempt

        return self._wait(_State())  # type: ignore[arg-type]

    def _handle(self, event: JSONObject) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired(obj.get("message") or "410 Gone")
            raise WatchError(f"watch error {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            key = self.resource.key(obj)
            change: Optional[Change] = None
            if kind == "DELETED":
                if self._drop(key):
                    change = (key, None)
            else:
                view = self._parse(key, obj)
                if view is not None and not self._kept(view):
                    if self._drop(key):  # moved to a group we do not keep
                        change = (key, None)
                elif view is not None and self._cache.get(key) != view:
                    self._put(key, view)
                    change = (key, view)
            if change is not None:
                self._on_batch(self.resource.name, [change], False)
        # BOOKMARK: only the resourceVersion moves (so a resumed watch skips ahead).
        if rv:
            self.resource_version = rv

    # ---- the cache and its index by group ------------------------------------------------

    def _put(self, key: str, view: View) -> None:
        """Cache `view` as `key`, in the index under its group: a view replaced may have
        moved group (the group is read from the view, and the view changed)."""
        group_of = self.resource.group
        old = self._cache.get(key)
        self._cache[key] = view
        if group_of is None:
            return
        group = group_of(view)
        if old is not None:
            before = group_of(old)
            if before == group:
                return
            unindex_key(self._members, before, key)
        index_key(self._members, group, key)

    def _drop(self, key: str) -> bool:
        """Uncache `key`, and take it out of the index; whether it was cached."""
        old = self._cache.pop(key, None)
        if old is None:
            return False
        if self.resource.group is not None:
            unindex_key(self._members, self.resource.group(old), key)
        return True

    def _reindex(self) -> None:
        """The index of a cache replaced whole (a relist)."""
        self._members = {}
        group_of = self.resource.group
        if group_of is not None:
            for key, view in self._cache.items():
                index_key(self._members, group_of(view), key)

    def _parse(self, key: str, obj: JSONObject) -> Optional[View]:
        try:
            known = self._cache.get(key) if self.resource.parse_again is not None else None
            if known is not None:
                return self.resource.parse_again(obj, known)  # type: ignore[misc]
            return self.resource.parse(obj)
        except Exception as exc:  # bad input affects only itself
            log.warning(
                "cannot parse an object; keeping its previous state",
                extra=fields(resource=self.resource.name, key=key, error=exc),
            )
            return None


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
