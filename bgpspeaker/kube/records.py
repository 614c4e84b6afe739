"""The allocator's record keeper: writes allocation records, on the leader only (I/O shell).

The policy is pure (allocator.allocate_recorded and record_updates decide which records
to create, join and leave); this is the one place that writes them:

- a claim is created create-if-absent (POST): the API server refuses a second holder
  with 409 AlreadyExists. That is not retried: it means another cluster (or our own
  previous round) got there first; the watch brings the record and the next reconcile
  decides again. An AlreadyExists whose record names another identity is a conflict
  (counted in `bgpspeaker_allocator_conflicts_total{pool}`).
- joining or leaving a record is a read-modify-write guarded by the resourceVersion
  (409 → a fresh read, through tenacity); the last cluster to leave deletes the record
  with a resourceVersion precondition, so a cluster that joined in between keeps it.
- the one-time import (records_from_status) creates the records of today's allocations,
  then the import marker; from then on the cluster allocates from records.

Nothing here withdraws or renumbers anything: a store that cannot be reached only
leaves new Services waiting (Pending, an Event, `bgpspeaker_allocator_pending_services`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Mapping, Optional

import kubernetes
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from bgpspeaker.kube.client import CORE, MERGE_PATCH, object_path, read_json, request_raw
from bgpspeaker.logs import fields
from bgpspeaker.records import (
    AddressRecord,
    BadRecord,
    import_marker_body,
    record_body,
    record_from_dict,
    record_name,
)

log = logging.getLogger(__name__)

# Record writes are small and few; a store that does not answer within this is "down" for
# this round (the Services wait, the next reconcile tries again).
RECORD_REQUEST_TIMEOUT = (3.0, 5.0)


@dataclass(frozen=True)
class Store:
    """One record store: the API that holds it and the namespace of its records."""

    name: str  # local | shared
    client: kubernetes.client.ApiClient
    namespace: str


@dataclass
class KeeperResult:
    created: list[AddressRecord] = field(default_factory=list)
    conflicts: list[tuple[AddressRecord, str]] = field(default_factory=list)  # (our claim, the holder that won)
    joined: list[AddressRecord] = field(default_factory=list)
    left: list[AddressRecord] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # store -> error: that store is unreachable now


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status in (409, 429, 500, 503, 504)


class RecordKeeper:
    """Creates, joins and leaves records for one cluster; call from a worker thread (blocks)."""

    def __init__(
        self, stores: Mapping[str, Store], cluster: str, is_leader: Callable[[], bool], attempts: int = 4
    ) -> None:
        self._stores = dict(stores)
        self._cluster = cluster
        self._is_leader = is_leader
        self._attempts = attempts

    # --- the steady state -------------------------------------------------------------------

    def apply(
        self, claims: Iterable[AddressRecord], joins: Iterable[AddressRecord], leaves: Iterable[AddressRecord]
    ) -> KeeperResult:
        result = KeeperResult()
        for claim in claims:
            self._guarded(result, claim.store, self._create, claim, result)
        for record in joins:
            self._guarded(result, record.store, self._change_clusters, record, True, result)
        for record in leaves:
            self._guarded(result, record.store, self._change_clusters, record, False, result)
        return result

    def _guarded(self, result: KeeperResult, store: str, fn: Callable, *args: object) -> None:
        if store in result.failed or not self._is_leader():
            return  # that store failed already this round: the rest waits for the next one
        try:
            fn(*args)
        except Exception as exc:  # the store is down or refuses: nothing changes, the Services wait
            result.failed[store] = _describe(exc)
            log.warning("record store write failed", extra=fields(store=store, error=_describe(exc)))

    def _create(self, claim: AddressRecord, result: KeeperResult, join_own: bool = False) -> None:
        """Create `claim` if absent; a 409 whose record names another identity is a conflict.
        With `join_own` (the import), a record of the same identity (another cluster's) is
        joined: its Services would otherwise wait to join it, withdrawn, once the marker is in."""
        store = self._stores[claim.store]
        try:
            self._request(
                store, "POST", object_path(CORE, "configmaps", store.namespace), record_body(claim, store.namespace)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            holder = self._holder_of(store, claim)
            if holder is not None and holder != claim.holder:
                result.conflicts.append((claim, holder))
                log.warning(
                    "address already recorded for another identity",
                    extra=fields(address=str(claim.address), wanted_by=claim.holder, held_by=holder, store=store.name),
                )
            elif holder == claim.holder and join_own:
                self._change_clusters(claim, True, result)
            return
        result.created.append(claim)
        log.info(
            "address recorded",
            extra=fields(address=str(claim.address), holder=claim.holder, pool=claim.pool, store=store.name),
        )

    def _holder_of(self, store: Store, claim: AddressRecord) -> Optional[str]:
        try:
            obj = self._get(store, record_name(claim.address))
        except ApiException as exc:
            if exc.status == 404:
                return None  # released since: the next round claims it again
            raise
        try:
            return record_from_dict(obj, store.name).holder
        except BadRecord:
            return "(an object that is not a valid record)"

    def _change_clusters(self, seen: AddressRecord, join: bool, result: KeeperResult) -> None:
        store = self._stores[seen.store]
        name = record_name(seen.address)

        def attempt() -> None:
            try:
                current = record_from_dict(self._get(store, name), store.name)
            except ApiException as exc:
                if exc.status == 404:
                    return  # gone: nothing to join (the next round claims again) or to leave
                raise
            if current.holder != seen.holder:
                return  # released and taken by someone else since: not ours to change
            clusters = current.clusters | {self._cluster} if join else current.clusters - {self._cluster}
            if clusters == current.clusters:
                return
            path = object_path(CORE, "configmaps", store.namespace, name)
            if clusters:
                body = {
                    "metadata": {"resourceVersion": current.resource_version},
                    "data": {"clusters": ",".join(sorted(clusters))},
                }
                self._request(store, "PATCH", path, body, MERGE_PATCH)
            else:  # the last one out releases the address
                self._request(
                    store,
                    "DELETE",
                    path,
                    {
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "preconditions": {"resourceVersion": current.resource_version},
                    },
                )
            (result.joined if join else result.left).append(replace(current, clusters=clusters))
            log.info(
                "record joined" if join else ("record left" if clusters else "address released"),
                extra=fields(address=str(current.address), holder=current.holder, store=store.name),
            )

        Retrying(
            stop=stop_after_attempt(self._attempts),
            reraise=True,
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
        )(attempt)

    # --- the one-time import ------------------------------------------------------------------

    def import_once(self, records: Iterable[AddressRecord], local: str) -> KeeperResult:
        """Create `records` (today's allocations) create-if-absent, then the import marker.

        Idempotent: an interrupted import is redone by the next leader (records already
        there are skipped, or joined when another cluster made them for the same identity);
        the marker is written only when every record is in. Not when one of them is
        recorded for another identity: the marker would make this cluster allocate from
        records, and renumber its Service silently. Without it, the cluster goes on
        allocating the old way (nothing moves), and the import is tried again and says so.
        """
        result = KeeperResult()
        records = list(records)
        for record in records:
            self._guarded(result, record.store, partial(self._create, join_own=True), record, result)
        if result.failed or not self._is_leader():
            return result
        if result.conflicts:
            log.error(
                "import not complete: addresses recorded for other identities; allocating from status until "
                "they are resolved (bgpspeaker audit lists them)",
                extra=fields(
                    conflicts=", ".join(f"{c.address} {c.holder} vs {holder}" for c, holder in result.conflicts)
                ),
            )
            return result
        store = self._stores[local]
        try:
            self._request(
                store,
                "POST",
                object_path(CORE, "configmaps", store.namespace),
                import_marker_body(store.namespace, self._cluster, len(records)),
            )
        except ApiException as exc:
            if exc.status != 409:
                result.failed[local] = _describe(exc)
                return result
        log.info(
            "allocations imported into records",
            extra=fields(
                records=len(result.created),
                already_there=len(records) - len(result.created),
                conflicts=len(result.conflicts),
            ),
        )
        return result

    # --- requests -------------------------------------------------------------------------------

    def _get(self, store: Store, name: str) -> dict:
        return read_json(self._request_raw(store, "GET", object_path(CORE, "configmaps", store.namespace, name)))

    def _request(self, store: Store, method: str, path: str, body: object, content_type: Optional[str] = None) -> dict:
        if not self._is_leader():
            raise RuntimeError("no longer the leader")
        return read_json(self._request_raw(store, method, path, body, content_type))

    def _request_raw(
        self, store: Store, method: str, path: str, body: object = None, content_type: Optional[str] = None
    ):
        # 429/5xx are retried briefly here; a refused connection is not: the store is down,
        # and the Services wait for the next round rather than hold this one.
        def once():
            return request_raw(store.client, method, path, body, content_type, request_timeout=RECORD_REQUEST_TIMEOUT)

        return Retrying(
            stop=stop_after_attempt(self._attempts),
            reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, ApiException) and e.status in (429, 500, 503)),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
        )(once)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
