"""The allocator's record keeper: writes allocation records, on the leader only (I/O shell).

The policy is pure (allocator.allocate_recorded and record_updates decide which records
to create, join and leave); this is the one place that writes them. Records live in
blocks of 256 addresses (bgpspeaker/records.py); every write to a block is a
read-modify-write guarded by the resourceVersion just read, so the API server refuses a
write made from a stale read (409), and the writer reads again and decides again:

- a claim adds its entry only if the address has none: if another identity's entry is
  there (another cluster, or our own previous round, got there first), the claim is a
  conflict (counted in `bgpspeaker_allocator_conflicts_total{pool}`), never retried; the
  watch brings that record and the next reconcile decides again. A block that does not
  exist yet is created create-if-absent (POST; 409 → read again).
- joining or leaving a record changes the clusters of its entry; the last cluster to
  leave removes the entry, and an empty block is deleted with a resourceVersion
  precondition, so a cluster that wrote in between keeps it.
- all the changes of one round to one block are one write (an import of 10,000
  allocations is ~40 writes, not 10,000).
- the one-time import (records_from_status) records today's allocations, then writes
  the import marker; from then on the cluster allocates from records.

Nothing here withdraws or renumbers anything: a store that cannot be reached only
leaves new Services waiting (Pending, an Event, `bgpspeaker_allocator_pending_services`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Callable, Iterable, Mapping, Optional

import kubernetes
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from bgpspeaker.kube.client import CORE, MERGE_PATCH, object_path, read_json, request_raw
from bgpspeaker.logs import fields
from bgpspeaker.records import (
    RECORD_LABEL,
    RECORD_LABEL_VALUE,
    AddressRecord,
    labels,
    block_body,
    block_from_dict,
    block_name,
    entry_text,
    import_marker_body,
    record_key,
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
    busy: list[str] = field(default_factory=list)  # blocks still contended after every attempt: retry soon


def _retryable(exc: BaseException) -> bool:
    # 409: written since our read (or created since we found none); 404: deleted since
    # (the last entry left): either way, read again and decide again.
    return isinstance(exc, ApiException) and exc.status in (404, 409, 429, 500, 503, 504)


@dataclass
class _BlockWork:
    """What one round asks of one block."""

    claims: list[AddressRecord] = field(default_factory=list)
    joins: list[AddressRecord] = field(default_factory=list)
    leaves: list[AddressRecord] = field(default_factory=list)


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
        self,
        claims: Iterable[AddressRecord],
        joins: Iterable[AddressRecord],
        leaves: Iterable[AddressRecord],
        join_own: bool = False,
    ) -> KeeperResult:
        """Write what the allocator decided, one write per block. With `join_own` (the
        import), a claim whose address another cluster recorded for the same identity joins
        that record: its Services would otherwise wait to join it, withdrawn, once the
        marker is in."""
        work: dict[tuple[str, str], _BlockWork] = {}
        for kind, records in (("claims", claims), ("joins", joins), ("leaves", leaves)):
            for record in records:
                block = work.setdefault((record.store, block_name(record.address)), _BlockWork())
                getattr(block, kind).append(record)
        result = KeeperResult()
        for (store, name), block in sorted(work.items()):
            self._guarded(result, store, name, self._write_block, store, name, block, join_own, result)
        return result

    def _guarded(self, result: KeeperResult, store: str, block: str, fn: Callable, *args: object) -> None:
        if store in result.failed or not self._is_leader():
            return  # that store failed already this round: the rest waits for the next one
        try:
            fn(*args)
        except Exception as exc:  # the store is down or refuses: nothing changes, the Services wait
            if isinstance(exc, ApiException) and exc.status == 409:
                # a block others kept writing through every attempt: the store is up; retried soon
                result.busy.append(block)
                log.warning("record block busy", extra=fields(store=store, block=block, error=_describe(exc)))
                return
            result.failed[store] = _describe(exc)
            log.warning("record store write failed", extra=fields(store=store, error=_describe(exc)))

    def _write_block(self, store_name: str, name: str, work: _BlockWork, join_own: bool, result: KeeperResult) -> None:
        store = self._stores[store_name]
        path = object_path(CORE, "configmaps", store.namespace, name)
        done = KeeperResult()
        # Keys an attempt wrote whose answer never came (a timeout, a 5xx after the write
        # committed): found done by the next attempt, they count as done by us.
        sent: set[str] = set()

        def attempt() -> None:
            nonlocal done
            done = KeeperResult()  # what this attempt did: only the successful one counts
            try:
                obj: Optional[dict] = self._get(store, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                obj = None
            before = block_from_dict(obj, store_name) if obj is not None else {}
            # Entries there that are no valid record (a hand edit's typo, a newer writer's
            # format): not evidence, but not free either; never written over nor deleted.
            unreadable = set((obj.get("data") or {}) if obj is not None else ()) - set(before)
            after = self._decide(before, work, join_own, done, unreadable, sent)
            labelled = ((obj or {}).get("metadata") or {}).get("labels") or {}
            if after == before and (obj is None or labelled.get(RECORD_LABEL) == RECORD_LABEL_VALUE):
                return  # nothing to write (an unlabelled block is relabelled: every speaker misses it)
            sent.update(record_key(rec.address) for rec in done.created + done.joined + done.left)
            if obj is None:  # create-if-absent: a block made meanwhile is a 409, and a fresh read
                self._request(
                    store,
                    "POST",
                    object_path(CORE, "configmaps", store.namespace),
                    block_body(store.namespace, name, after.values()),
                )
                return
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if not version:
                raise RuntimeError(f"block {name} has no resourceVersion: a write could not be guarded")
            if not after and not unreadable:  # the last entry gone: the block goes too, unless written since
                self._request(
                    store,
                    "DELETE",
                    path,
                    {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": version}},
                )
                return
            changed: dict[str, Optional[str]] = {key: None for key in before if key not in after}
            changed.update({key: entry_text(rec) for key, rec in after.items() if before.get(key) != rec})
            # A merge patch of the entries that changed, guarded by the version read: any
            # write in between (another cluster's claim) makes it a 409, and a fresh read.
            self._request(
                store,
                "PATCH",
                path,
                # the label too: a block that lost it is invisible to every speaker
                {"metadata": {"resourceVersion": version, "labels": labels()}, "data": changed},
                MERGE_PATCH,
            )

        Retrying(
            stop=stop_after_attempt(self._attempts),
            reraise=True,
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
        )(attempt)
        self._report(store, done)
        result.created += done.created
        result.conflicts += done.conflicts
        result.joined += done.joined
        result.left += done.left

    def _decide(
        self,
        before: Mapping[str, AddressRecord],
        work: _BlockWork,
        join_own: bool,
        done: KeeperResult,
        unreadable: AbstractSet[str],
        sent: AbstractSet[str],
    ) -> dict[str, AddressRecord]:
        """The block's entries after `work`, from `before` as just read (pure but for `done`).
        `unreadable`: keys whose entries are no valid record (never written over); `sent`:
        keys an earlier attempt wrote whose answer was lost (found now: created by us)."""
        after = dict(before)
        me = self._cluster
        for claim in work.claims:
            key = record_key(claim.address)
            held = after.get(key)
            if held is None and key in unreadable:
                done.conflicts.append((claim, "(an entry that is not a valid record)"))
            elif held is None:
                after[key] = claim
                done.created.append(claim)
            elif held.holder != claim.holder:
                done.conflicts.append((claim, held.holder))
            elif key in sent and held == claim:
                done.created.append(claim)
            elif join_own and me not in held.clusters:
                after[key] = replace(held, clusters=held.clusters | {me})
                done.joined.append(after[key])
        for seen, join in [(r, True) for r in work.joins] + [(r, False) for r in work.leaves]:
            key = record_key(seen.address)
            held = after.get(key)
            if held is None and key in sent and not join:  # our release landed, its answer did not
                done.left.append(replace(seen, clusters=seen.clusters - {me}))
                continue
            if held is None or held.holder != seen.holder:
                continue  # gone (the next round claims again), or released and taken since: not ours
            clusters = held.clusters | {me} if join else held.clusters - {me}
            if clusters == held.clusters:
                if key in sent:  # an earlier attempt's write landed, its answer did not
                    (done.joined if join else done.left).append(held)
                continue
            if clusters:
                after[key] = replace(held, clusters=clusters)
            else:  # the last one out releases the address
                del after[key]
            (done.joined if join else done.left).append(replace(held, clusters=clusters))
        return after

    def _report(self, store: Store, done: KeeperResult) -> None:
        for claim in done.created:
            log.info(
                "address recorded",
                extra=fields(address=str(claim.address), holder=claim.holder, pool=claim.pool, store=store.name),
            )
        for claim, holder in done.conflicts:
            log.warning(
                "address already recorded for another identity",
                extra=fields(address=str(claim.address), wanted_by=claim.holder, held_by=holder, store=store.name),
            )
        for rec in done.joined:
            log.info("record joined", extra=fields(address=str(rec.address), holder=rec.holder, store=store.name))
        for rec in done.left:
            log.info(
                "record left" if rec.clusters else "address released",
                extra=fields(address=str(rec.address), holder=rec.holder, store=store.name),
            )

    # --- the one-time import ------------------------------------------------------------------

    def import_once(self, records: Iterable[AddressRecord], local: str) -> KeeperResult:
        """Record `records` (today's allocations) where absent, then write the import marker.

        Idempotent: an interrupted import is redone by the next leader (records already
        there are skipped, or joined when another cluster made them for the same identity);
        the marker is written only when every record is in. Not when one of them is
        recorded for another identity: the marker would make this cluster allocate from
        records, and renumber its Service silently. Without it, the cluster goes on
        allocating the old way (nothing moves), and the import is tried again and says so.
        """
        records = list(records)
        result = self.apply(records, (), (), join_own=True)
        if result.failed or result.busy or not self._is_leader():
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
