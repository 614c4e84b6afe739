"""Kubernetes Events on Services: why an address was assigned, refused, announced or withdrawn.

`kubectl describe service` is where a user looks first, so every allocation, refusal
and announcement change is recorded there. Two protections keep a flapping Service
from flooding the API (client-go's EventCorrelator does the same two things):
* dedup: an event identical to the last one for (object, reason) — same type and
  message — is not created again: the existing Event's `count` is patched;
* rate limit: at most one API write per (object, reason) every `interval` seconds;
  occurrences in between are aggregated into one pending write (its count grows and
  the newest message wins), flushed when the interval has passed. A global token bucket
  (`qps`, `burst`) caps the total.

`record()` never blocks the caller (the daemon's loop): it only appends to a queue that
a thread drains. When the queue is full the event is dropped and logged: losing an
Event is better than stalling announcements. The queue is fair between Services: one
Service holds at most `per_object` entries in it; its further occurrences are folded
into one overflow entry per reason (count added, newest message wins) that the thread
takes with the next of its entries. So a Service that makes thousands of Events while
the thread waits on the API cannot fill the queue and crowd out every other Service's,
and its counts stay exact (issue 14).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Union

import kubernetes
from kubernetes.client.exceptions import ApiException

from bgpspeaker.kube.client import CORE, MERGE_PATCH, object_path, read_json, request_raw
from bgpspeaker.logs import fields
from bgpspeaker.model import ServiceView

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
COMPONENT = "bgpspeaker"


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str = ""
    kind: str = "Service"
    api_version: str = "v1"


@dataclass
class _Pending:
    ref: ObjectRef
    type: str
    reason: str
    message: str
    count: int  # occurrences not yet written


@dataclass
class _Posted:
    name: str  # the Event object's name
    type: str
    message: str
    count: int


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        instance: str,
        *,
        component: str = COMPONENT,
        interval: float = 10.0,
        qps: float = 5.0,
        burst: int = 25,
        queue_size: int = 10_000,
        remember: int = 4096,
        per_object: int = 16,
    ) -> None:
        self._client = api_client
        self.instance, self.component = instance, component
        self.interval, self.qps, self.burst = interval, qps, burst
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.per_object = per_object
        self._queued: dict[tuple[str, str], int] = {}  # entries in the queue per (namespace, name)
        self._overflow: dict[tuple, list] = {}  # (ns, name, uid, reason) -> [ref, type, reason, message, count]
        self._queued_lock = threading.Lock()
        self._pending: dict[tuple, _Pending] = {}
        self._due: list[tuple[float, int, tuple]] = []  # heap of (time, seq, key) of pending writes
        self._seq = itertools.count()
        self._last_write: dict[tuple, float] = {}
        # The Event we last wrote per (object, reason): bounded, oldest forgotten first.
        self._posted: OrderedDict[tuple, _Posted] = OrderedDict()
        self._remember = remember
        self._tokens, self._refilled = float(burst), time.monotonic()
        self._no_tokens_until = 0.0  # monotonic: when the next token will have refilled
        self.dropped = 0
        self.writes = 0  # API writes made (create + patch): what the rate limit bounds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def record(self, obj: Union[ServiceView, ObjectRef], reason: str, message: str, *, warning: bool = False) -> None:
        """Queue one occurrence of `reason` on `obj` (a ServiceView or an ObjectRef); returns at once.

        Thread-safe. `warning` makes it a Warning event (refusals, bad annotations).
        """
        ref = obj if isinstance(obj, ObjectRef) else ObjectRef(obj.namespace, obj.name, obj.uid)
        who = (ref.namespace, ref.name)
        kind = WARNING if warning else NORMAL
        with self._queued_lock:
            if self._queued.get(who, 0) >= self.per_object:  # its fair share is queued: fold this one in
                folded = self._overflow.setdefault((*who, ref.uid, reason), [ref, kind, reason, message, 0])
                folded[1], folded[3], folded[4] = kind, message, folded[4] + 1
                return
            try:
                self._queue.put_nowait((ref, kind, reason, message))
            except queue.Full:
                self.dropped += 1
                log.warning(
                    "event queue full; event dropped",
                    extra=fields(reason=reason, service=f"{ref.namespace}/{ref.name}", message=message),
                )
                return
            self._queued[who] = self._queued.get(who, 0) + 1

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; pending aggregated occurrences are written first if time allows."""
        self._stopping.set()
        while True:  # the sentinel must get in even when the queue is full
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()  # drop one occurrence to make room
                except queue.Empty:
                    pass
        self._thread.join(timeout)

    # ---- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            # Sleep until the next entry is due *and* a token is there: waking for an overdue
            # entry without a token spun through the whole backlog (10% of a core, measured
            # idle at 10,000 Services by integration/bench).
            wake = max(self._due[0][0], self._no_tokens_until) if self._due else None
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = ()
            if item is None:
                self._flush_all()
                return
            if item:
                self._accept(*item)
                for ref, kind, reason, message, count in self._dequeued(item[0]):
                    self._accept(ref, kind, reason, message, count)
            self._flush_due()

    def _dequeued(self, ref: ObjectRef) -> list[list]:
        """One entry of `ref` left the queue: count it out, and take its overflow, if any."""
        who = (ref.namespace, ref.name)
        with self._queued_lock:
            left = self._queued.get(who, 0) - 1
            if left > 0:
                self._queued[who] = left
            else:
                self._queued.pop(who, None)
            if not self._overflow:
                return []
            mine = [key for key in self._overflow if key[:2] == who]
            return [self._overflow.pop(key) for key in mine]

    def _accept(self, ref: ObjectRef, type_: str, reason: str, message: str, count: int = 1) -> None:
        key = (ref.namespace, ref.name, ref.uid, reason)
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(ref, type_, reason, message, count)
            due = self._last_write.get(key, -1e9) + self.interval
            heapq.heappush(self._due, (due, next(self._seq), key))
        else:  # aggregate: the newest message wins, the count says how many happened
            pending.type, pending.message, pending.count = type_, message, pending.count + count

    def _flush_due(self) -> None:
        while self._due and self._due[0][0] <= time.monotonic():
            if not self._take_token():  # over the global budget: _run sleeps until the next token
                return
            _, _, key = heapq.heappop(self._due)
            self._write(key, self._pending.pop(key))

    def _flush_all(self) -> None:
        deadline = time.monotonic() + 2.0
        while self._due and time.monotonic() < deadline:
            _, _, key = heapq.heappop(self._due)
            self._write(key, self._pending.pop(key))

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.qps)
        self._refilled = now
        if self._tokens < 1.0:
            self._no_tokens_until = now + (1.0 - self._tokens) / self.qps
            return False
        self._tokens -= 1.0
        return True

    def _write(self, key: tuple, pending: _Pending) -> None:
        self._last_write[key] = time.monotonic()
        if len(self._last_write) > 4 * self._remember:  # forget the oldest rate-limit entries
            for old in list(itertools.islice(self._last_write, len(self._last_write) // 2)):
                del self._last_write[old]
        try:
            posted = self._posted.get(key)
            if posted is not None and (posted.type, posted.message) == (pending.type, pending.message):
                if self._patch_count(pending.ref, posted, pending.count):
                    self._posted.move_to_end(key)
                    return
            self._posted[key] = self._create(pending)
            self._posted.move_to_end(key)
            while len(self._posted) > self._remember:
                self._posted.popitem(last=False)
        except Exception as exc:  # an Event is best effort; never kill the thread
            log.warning(
                "event not written",
                extra=fields(reason=pending.reason, service=f"{pending.ref.namespace}/{pending.ref.name}", error=exc),
            )

    def _create(self, pending: _Pending) -> _Posted:
        ref, now = pending.ref, _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # client-go's naming: the object's name and a unique hex suffix.
            "metadata": {"name": f"{ref.name}.{time.time_ns():x}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": ref.api_version,
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
                **({"uid": ref.uid} if ref.uid else {}),
            },
            "reason": pending.reason,
            "message": pending.message,
            "type": pending.type,
            "count": pending.count,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        self.writes += 1
        created = read_json(request_raw(self._client, "POST", object_path(CORE, "events", ref.namespace), body))
        return _Posted(created["metadata"]["name"], pending.type, pending.message, pending.count)

    def _patch_count(self, ref: ObjectRef, posted: _Posted, more: int) -> bool:
        """Add `more` to the Event's count; False when it is gone (expired): create anew."""
        count = posted.count + more
        self.writes += 1
        try:
            request_raw(
                self._client,
                "PATCH",
                object_path(CORE, "events", ref.namespace, posted.name),
                {"count": count, "lastTimestamp": _now()},
                MERGE_PATCH,
            ).release_conn()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        posted.count = count
        return True
