"""The allocator's writer: puts an Allocation into Services' status, on the leader only.

`allocate()` is pure and every replica computes the same result; this is the one place
that writes it back (`status.loadBalancer.ingress` through the services/status
subresource, and the `bgpspeaker.io/ip-allocated-from-pool` annotation on the Service).

Why it re-reads before writing: the Allocation was computed from a snapshot that may be
a few events old. Each Service that seems to need a write is fetched fresh (raw JSON),
and written only if its fresh view is the one the allocation was computed from (else
the watch will bring the new version and the next reconcile decides again). Writes
carry that resourceVersion, so an object changed in between is a 409, which is retried
from a fresh read (tenacity). Nothing is sent for a Service whose status is already
right: a reconcile that finds no difference costs no request at all.

`is_leader` is checked before every write request, so a replica that loses its Lease
mid-batch stops writing at once. Which Services a pass looks at, and when passes run, is
decided by bgpspeaker/leader_writes.py (StatusSchedule).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Mapping, Optional

import kubernetes
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from bgpspeaker import views
from bgpspeaker.allocator import ALLOCATED_FROM_POOL_ANNOTATION, Allocation, Refusal
from bgpspeaker.kube.client import CORE, MERGE_PATCH, object_path, read_json, request_raw
from bgpspeaker.kube.events import EventRecorder
from bgpspeaker.logs import fields
from bgpspeaker.model import JSON, ServiceView

log = logging.getLogger(__name__)

# (connect, read) seconds of one status request: well inside the Lease's margin (a leader
# that cannot renew steps down after 10 s of a 15 s Lease), so a hung API cannot keep a
# deposed leader writing after its successor has started.
WRITE_TIMEOUT = (2.0, 4.0)


@dataclass(frozen=True)
class Desired:
    """What our part of a Service should say: the ingress IPs and the pool (None: neither)."""

    ingress: tuple[str, ...]
    pool: Optional[str]


def desired_state(allocation: Allocation, service: ServiceView) -> Optional[Desired]:
    """What to write for `service`, or None to leave it alone (pure).

    Assigned: its addresses and pool. Refused: nothing (clear what it holds, as the
    address is not announced anyway). Neither (not ours: other type or class) but
    carrying our annotation: we wrote its status, so we clear it. Otherwise not ours.
    """
    assignment = allocation.assigned.get(service.key)
    if assignment is not None:
        return Desired(tuple(str(a) for a in assignment.addresses), assignment.pool)
    if service.key in allocation.pending:
        return None  # waiting for its record (or for a store): what it shows stays until decided
    if service.key in allocation.refused or service.annotation(ALLOCATED_FROM_POOL_ANNOTATION) is not None:
        return Desired((), None)
    return None


def current_state(service: ServiceView) -> Desired:
    return Desired(service.ingress_ips, service.annotation(ALLOCATED_FROM_POOL_ANNOTATION))


def needs_write(allocation: Allocation, service: ServiceView) -> Optional[Desired]:
    """The Desired state when it differs from what the Service holds, else None."""
    desired = desired_state(allocation, service)
    if desired is None or desired == current_state(service):
        return None
    return desired


@dataclass
class WriteResult:
    written: list[str] = field(default_factory=list)  # namespace/name whose status or annotation we changed
    skipped: list[str] = field(default_factory=list)  # changed or gone since the snapshot: next reconcile
    failed: dict[str, str] = field(default_factory=dict)  # namespace/name -> error
    not_leader: bool = False  # stopped because we are not (or no longer) the leader


class _NotLeader(Exception):
    pass


def _retryable(exc: BaseException) -> bool:
    # 409: changed since our read (retry from a fresh read); 429/5xx: the API is busy.
    return isinstance(exc, ApiException) and exc.status in (409, 429, 500, 503, 504)


class StatusWriter:
    """Writes allocations back; call `write()` from a worker thread (it blocks)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        is_leader: Callable[[], bool],
        *,
        events: Optional[EventRecorder] = None,
        workers: int = 4,
        attempts: int = 5,
    ) -> None:
        self._client = api_client
        self._is_leader = is_leader
        self._events = events
        self._workers, self._attempts = workers, attempts
        # The refusal last reported per Service: an Event only when it is new or changed.
        self._refusals: dict[str, Refusal] = {}

    def pending(self, allocation: Allocation, services: Mapping[str, ServiceView]) -> dict[str, Desired]:
        """The Services whose status differs from the allocation (pure: no request)."""
        out = {}
        for key, service in services.items():
            desired = needs_write(allocation, service)
            if desired is not None:
                out[key] = desired
        return out

    def write(
        self, allocation: Allocation, services: Mapping[str, ServiceView], keys: Optional[Collection[str]] = None
    ) -> WriteResult:
        """Bring the Services of `services` (a snapshot) in line with `allocation`: those
        named in `keys` (the others are known to be in line already), or all of them."""
        result = WriteResult()
        if not self._is_leader():
            # Only the leader writes, and only the leader reports: N replicas posting the
            # same refusal would be N Events.
            result.not_leader = True
            return result
        self._report_refusals(allocation, services)
        if keys is None:
            todo = self.pending(allocation, services)
        else:
            todo = {k: d for k in keys if k in services and (d := needs_write(allocation, services[k])) is not None}
        if not todo:
            return result

        def one(key: str) -> tuple[str, str, str]:
            try:
                return key, self._write_one(services[key], todo[key]), ""
            except _NotLeader:
                return key, "not_leader", ""
            except Exception as exc:
                return key, "failed", _describe(exc)

        with ThreadPoolExecutor(max_workers=min(self._workers, len(todo)), thread_name_prefix="status") as pool:
            for key, outcome, error in pool.map(one, sorted(todo)):
                if outcome == "written":
                    result.written.append(key)
                    self._report_written(services[key], todo[key])
                elif outcome == "skipped":
                    result.skipped.append(key)
                elif outcome == "not_leader":
                    result.not_leader = True
                else:
                    result.failed[key] = error
                    log.warning("status write failed", extra=fields(service=key, error=error))
        return result

    def _report_refusals(self, allocation: Allocation, services: Mapping[str, ServiceView]) -> None:
        for key in list(self._refusals):
            if key not in allocation.refused:
                del self._refusals[key]
        for key, refusal in allocation.refused.items():
            if self._refusals.get(key) != refusal and key in services:
                self._refusals[key] = refusal
                if self._events is not None:
                    self._events.record(
                        services[key], "AllocationFailed", f"{refusal.reason}: {refusal.message}", warning=True
                    )

    def _report_written(self, service: ServiceView, desired: Desired) -> None:
        if self._events is None:
            return
        if desired.ingress:
            self._events.record(
                service, "IPAllocated", f"Assigned IP {', '.join(desired.ingress)} from pool {desired.pool}"
            )
        elif service.ingress_ips:
            self._events.record(service, "IPReleased", f"Released IP {', '.join(service.ingress_ips)}")

    def _write_one(self, seen: ServiceView, desired: Desired) -> str:
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            reraise=True,
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
        )
        return retrying(self._attempt, seen, desired)

    def _attempt(self, seen: ServiceView, desired: Desired) -> str:
        """One read-check-write round; 'written' or 'skipped'."""
        try:
            obj = read_json(
                request_raw(
                    self._client,
                    "GET",
                    object_path(CORE, "services", seen.namespace, seen.name),
                    request_timeout=WRITE_TIMEOUT,
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return "skipped"  # deleted since the snapshot: nothing to release
            raise
        fresh = views.service_from_dict(obj)
        current = current_state(fresh)
        if current == desired:
            return "skipped"  # someone (a previous round of ours) already wrote it
        # Only our fields may differ from what the allocation saw: anything else (spec,
        # annotations, a recreated uid) means the allocation is stale for this Service.
        if _without_ours(fresh) != _without_ours(seen):
            log.info(
                "service changed since the snapshot; leaving it to the next reconcile", extra=fields(service=seen.key)
            )
            return "skipped"
        rv = obj["metadata"]["resourceVersion"]
        writes: list[tuple[dict[str, JSON], bool]] = []  # (merge patch, to the status subresource)
        if current.pool != desired.pool:
            writes.append(({"metadata": {"annotations": {ALLOCATED_FROM_POOL_ANNOTATION: desired.pool}}}, False))
        if current.ingress != desired.ingress:
            ingress = [{"ip": ip} for ip in desired.ingress] or None
            writes.append(({"status": {"loadBalancer": {"ingress": ingress}}}, True))
        # The allocator trusts a status address only under the annotation naming its pool
        # (allocator._keep_status): so the annotation goes first when addresses are set,
        # and last when they are cleared — status is never left "unmarked" in between.
        if not desired.ingress:
            writes.reverse()
        for body, status in writes:
            rv = self._patch(seen, rv, body, status=status)
        log.info(
            "service status written",
            extra=fields(service=seen.key, ingress=",".join(desired.ingress) or "cleared", pool=desired.pool or ""),
        )
        return "written"

    def _patch(self, service: ServiceView, rv: str, body: dict[str, JSON], status: bool) -> str:
        """A merge patch guarded by `rv`; returns the new resourceVersion."""
        if not self._is_leader():
            raise _NotLeader()
        body.setdefault("metadata", {})["resourceVersion"] = rv
        path = object_path(CORE, "services", service.namespace, service.name, "status" if status else None)
        # merge-patch: the ingress list is replaced as a whole and `null` deletes the annotation.
        answer = read_json(request_raw(self._client, "PATCH", path, body, MERGE_PATCH, request_timeout=WRITE_TIMEOUT))
        return answer["metadata"]["resourceVersion"]


def _without_ours(service: ServiceView) -> ServiceView:
    return replace(
        service,
        ingress_ips=(),
        annotations=tuple(p for p in service.annotations if p[0] != ALLOCATED_FROM_POOL_ANNOTATION),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
