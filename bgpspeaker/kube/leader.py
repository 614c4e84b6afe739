"""Leader election on a coordination.k8s.io/v1 Lease: exactly one replica runs the allocator's writer.

The algorithm is client-go's leaderelection, reduced to what we need:
* Optimistic concurrency: every write carries the resourceVersion we read; a 409 means
  someone else wrote first, so we re-read instead of overwriting.
* Expiry is judged on *our* clock: a holder's lease is expired when its record has not
  changed for `leaseDurationSeconds` since we first saw it. Comparing its `renewTime`
  with our wall clock would let clock skew between nodes make two leaders (client-go
  made the same choice). The price: a fresh replica waits one lease duration before it
  takes over a lease whose holder died before the replica started.
* A leader that cannot renew steps down after `renew_deadline`, which is shorter than
  the lease duration, so it stops writing before anyone else may take over.
  `is_leader` is computed from the time of the last successful renewal, so it turns
  false on time even while the elector's thread is blocked in a request.
* `stop()` releases the lease (empty holder), so a rolling restart hands over at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Optional

import kubernetes
from kubernetes.client.exceptions import ApiException

from bgpspeaker.kube.client import LEASES, object_path, read_json, request_raw
from bgpspeaker.logs import fields
from bgpspeaker.model import JSON, JSONObject

log = logging.getLogger(__name__)


def _micro_time(moment: Optional[datetime] = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


DEFAULT_NAMESPACE = "bgpspeaker-system"  # configs/kubernetes/rbac.yaml grants Leases there only
DEFAULT_NAME = "bgpspeaker-allocator"


class LeaderElector:
    """Campaigns for the Lease `namespace/name` as `identity` (the node name) in a daemon thread.

    Callbacks (`on_started_leading`, `on_stopped_leading`, and `on_change` for either)
    run on `loop` when one is given (via call_soon_threadsafe), else on the elector's
    thread. Defaults are client-go's (15/10/2 s) with a renewal every `renew_interval` s
    while leading; tests pass shorter ones.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        identity: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        name: str = DEFAULT_NAME,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        renew_interval: float = 5.0,
        retry_period: float = 2.0,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        on_change: Optional[Callable[[], None]] = None,
        on_started_leading: Optional[Callable[[], None]] = None,
        on_stopped_leading: Optional[Callable[[], None]] = None,
    ) -> None:
        if not 0 < renew_interval < renew_deadline < lease_duration:
            raise ValueError(
                "leader election: need 0 < renew_interval < renew_deadline < lease_duration, got "
                f"{renew_interval}, {renew_deadline}, {lease_duration}"
            )
        if not identity:
            raise ValueError("leader election: identity (the node name) must not be empty")
        self._client = api_client
        self.namespace, self.name, self.identity = namespace, name, identity
        self._path = object_path(LEASES, "leases", namespace, name)
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.renew_interval, self.retry_period = renew_interval, retry_period
        self._loop = loop
        self._on_started, self._on_stopped, self._on_change = on_started_leading, on_stopped_leading, on_change
        self._leading_until = 0.0  # monotonic: we may act as leader before this
        self._leading = False  # what the callbacks last announced
        self._observed: Optional[tuple] = None  # the holder's record as last seen...
        self._observed_at = 0.0  # ...and when (monotonic) it last changed
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._leading_until

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"leader-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; when leading and `release`, give the Lease up for an immediate takeover."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        was_leader = self.is_leader
        self._leading_until = 0.0
        if was_leader and release:
            try:
                self._release()
            except Exception as exc:  # the others take over after the lease duration instead
                log.warning("lease release failed", extra=fields(lease=f"{self.namespace}/{self.name}", error=exc))
        self._announce(False)

    # ---- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            attempt = time.monotonic()
            try:
                leading = self._try_acquire_or_renew()
            except Exception as exc:
                log.warning(
                    "lease renewal failed", extra=fields(lease=f"{self.namespace}/{self.name}", error=_describe(exc))
                )
                leading = False
            if leading:
                # Renewal began at `attempt`: the deadline counts from there, not from the answer.
                self._leading_until = attempt + self.renew_deadline
            self._announce(self.is_leader)
            if self._stopping.wait(self.renew_interval if leading else self.retry_period):
                return

    def _announce(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info(
            "now the leader" if leading else "stopped leading",
            extra=fields(lease=f"{self.namespace}/{self.name}", identity=self.identity),
        )
        for callback in (self._on_started if leading else self._on_stopped, self._on_change):
            if callback is not None:
                self._call(callback)

    def _call(self, callback: Callable[[], None]) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop is closed: shutting down
                pass
            return
        try:
            callback()
        except Exception:
            log.exception("leader callback failed")

    def _try_acquire_or_renew(self) -> bool:
        """One round: True when we hold the Lease after it."""
        now = _micro_time()
        try:
            lease = read_json(request_raw(self._client, "GET", self._path))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._write(
                None,
                {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self._duration(),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            )
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if holder == self.identity:
            return self._write(lease, dict(spec, renewTime=now, leaseDurationSeconds=self._duration()))
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and time.monotonic() - self._observed_at < duration:
            return False  # held, and its holder renewed within the lease duration
        log.info(
            "lease taken over", extra=fields(lease=f"{self.namespace}/{self.name}", previous=holder or "(released)")
        )
        return self._write(
            lease,
            {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._duration(),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": (spec.get("leaseTransitions") or 0) + (1 if holder else 0),
            },
        )

    def _write(self, lease: Optional[JSONObject], spec: JSONObject) -> bool:
        """Create or replace (with the read resourceVersion); False when someone else won."""
        body: dict[str, JSON] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        try:
            if lease is None:
                request_raw(self._client, "POST", object_path(LEASES, "leases", self.namespace), body).release_conn()
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                request_raw(self._client, "PUT", self._path, body).release_conn()
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists or Conflict: another replica wrote first; re-read next round
                return False
            raise
        return True

    def _release(self) -> None:
        lease = read_json(request_raw(self._client, "GET", self._path))
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        now = _micro_time()
        # client-go's release: empty holder, a 1 s duration, so the next candidate need not wait.
        self._write(lease, dict(spec, holderIdentity=None, leaseDurationSeconds=1, renewTime=now))
        log.info("lease released", extra=fields(lease=f"{self.namespace}/{self.name}", identity=self.identity))

    def _duration(self) -> int:
        return max(1, math.ceil(self.lease_duration))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        if exc.body:
            try:
                return f"HTTP {exc.status}: {json.loads(exc.body).get('message')}"
            except Exception:  # not a Status object
                pass
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
