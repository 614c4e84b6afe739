"""Allocation records: who holds which address, as API objects only the allocator writes (pure).

Why records, and not the Services' status: a Service's status and annotations can be
written by whoever may edit that Service (a tenant with `services/status`, a
controller, a forged `ip-allocated-from-pool` annotation). If they were the evidence of
who holds an address, a tenant could take an address another Service asked for, or an
older tenant Service could take a running address from a younger one. And across
clusters nothing at all tied an address to one Service: two clusters could give one
address to two Services, and a failover would hand one application's clients to another.

So the evidence is one ConfigMap per address, in the allocator's own namespace (or, for
a pool shared by several clusters, in the namespace of a record store that all of them
use), named after the address and created create-if-absent: the API server itself
refuses a second holder (409 AlreadyExists). Only the allocator's ServiceAccount may
write there; Service status and the annotation are outputs only. docs/design.md,
"Addresses across clusters", states the invariants these records carry.

A record names its holder: one Service (namespace/name: the same identity in every
cluster, as the multi-cluster Services KEP's namespace sameness), or one sharing group
(namespace + allow-shared-ip key) for Services that share the address. It also lists
the clusters whose Services use it: a cluster adds itself when it starts using the
address and removes itself when it stops; the last one out deletes the record. So an
address is released only when no cluster uses it any more.

This module is values only: names, parsing a ConfigMap into an AddressRecord and back.
The shell that reads and writes them is bgpspeaker/kube/records.py.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass, field
from typing import Mapping, Optional

from bgpspeaker.model import JSON, IPAddress, JSONObject, parse_ip

RECORD_LABEL = "bgpspeaker.io/address-record"  # label selector of the records' watch: "<label>=v1"
RECORD_LABEL_VALUE = "v1"
RECORD_PREFIX = "bgpspeaker-ip-"
# Written once the first allocator of the records version has imported the allocations it
# found (status + allocated-from-pool annotation). Before it exists every node allocates
# the old way, so an upgrade moves no address; after it, a marker counts for nothing.
IMPORT_MARKER = "bgpspeaker-records-imported"

# The speaker's namespace (its POD_NAMESPACE) when none is given: the Lease, the config and
# the local store's records live there.
DEFAULT_NAMESPACE = "bgpspeaker-system"

LOCAL = "local"  # the store in this cluster's own API
SHARED = "shared"  # the store named by `sharedStore` in the config, for pools marked `shared`

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label: namespace and Service names
SHARING_KEY = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,252}")  # a sharing key as we accept it in a record
_CLUSTER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)  # one per address, 10,000s held: no __dict__ each
class AddressRecord:
    address: IPAddress
    pool: str
    namespace: str  # the holder's namespace
    service: Optional[str] = None  # the holder Service's name; None when a sharing group holds it
    sharing_key: Optional[str] = None  # the allow-shared-ip key of the group holding it
    clusters: frozenset[str] = frozenset()  # the clusters whose Services use it now
    # Bookkeeping of the API object, not part of what the record says.
    resource_version: str = field(default="", compare=False)
    store: str = field(default=LOCAL, compare=False)

    @property
    def holder(self) -> str:
        """The identity holding the address: `ns/name`, or `ns/*key` for a sharing group."""
        return holder_of(self.namespace, self.service or "", self.sharing_key if self.service is None else None)

    def describe_holder(self) -> str:
        if self.service is not None:
            return f"Service {self.namespace}/{self.service}"
        return f"the Services of namespace {self.namespace} sharing key {self.sharing_key!r}"


def holder_of(namespace: str, name: str, sharing_key: Optional[str]) -> str:
    """The identity a Service allocates as: its group when it shares, else itself.

    Interned: the allocator's memo keeps each identity in several indexes, built from the
    record and from the Service separately; one string object each, not three (~1.3 MB at
    10,000 Services, tracemalloc)."""
    return sys.intern(f"{namespace}/*{sharing_key}" if sharing_key is not None else f"{namespace}/{name}")


def record_name(address: IPAddress) -> str:
    """The ConfigMap's name for `address`: one name per address, so create-if-absent is the lock.

    IPv4 dotted (a valid DNS subdomain); IPv6 as its 32 hex digits (no ':' in a name, and
    the exploded form is unique where the compressed one has several spellings).
    """
    if address.version == 4:
        return RECORD_PREFIX + str(address)
    return RECORD_PREFIX + "v6-" + f"{int(address):032x}"


def record_body(record: AddressRecord, namespace: str) -> dict[str, JSON]:
    """The ConfigMap that stores `record` (a create body; resourceVersion added for updates)."""
    data = {
        "address": str(record.address),
        "pool": record.pool,
        "namespace": record.namespace,
        "clusters": ",".join(sorted(record.clusters)),
    }
    if record.service is not None:
        data["service"] = record.service
    else:
        data["sharingKey"] = record.sharing_key or ""
    metadata: dict[str, JSON] = {
        "name": record_name(record.address),
        "namespace": namespace,
        "labels": {RECORD_LABEL: RECORD_LABEL_VALUE, "app.kubernetes.io/managed-by": "bgpspeaker"},
    }
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


class BadRecord(ValueError):
    """A ConfigMap with our label that does not hold a valid record (it is ignored, and logged)."""


def record_from_dict(obj: JSONObject, store: str = LOCAL) -> AddressRecord:
    """Parse a record ConfigMap; BadRecord says what is wrong.

    Strict: the address must match the object's name (a record renamed or edited by hand
    to claim another address is not evidence of anything), names must be Kubernetes names.
    """
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    if not isinstance(data, Mapping):
        raise BadRecord("data is not a mapping")
    text = data.get("address", "")
    try:
        # parse_ip's cache: the Service asking for this address parses the same text, and
        # both then hold one address object (one parse and 80 bytes less per record)
        address = parse_ip(text)
    except ValueError:
        raise BadRecord(f"data.address {str(text)[:64]!r} is not an IP address") from None
    name = record_name(address)
    if meta.get("name") != name:
        raise BadRecord(f"named {str(meta.get('name'))[:80]!r}, but a record of {address} is named {name!r}")
    namespace, service, key = data.get("namespace"), data.get("service"), data.get("sharingKey")
    if not isinstance(namespace, str) or not _NAME.fullmatch(namespace):
        raise BadRecord("data.namespace is not a namespace name")
    if (service is None) == (key is None):
        raise BadRecord("exactly one of data.service and data.sharingKey names the holder")
    if service is not None and not (isinstance(service, str) and _NAME.fullmatch(service)):
        raise BadRecord("data.service is not a Service name")
    if key is not None and not (isinstance(key, str) and SHARING_KEY.fullmatch(key)):
        raise BadRecord("data.sharingKey is not a sharing key")
    pool = data.get("pool")
    if not isinstance(pool, str) or not pool:
        raise BadRecord("data.pool is missing")
    return AddressRecord(
        address=address,
        pool=sys.intern(pool),
        namespace=sys.intern(namespace),
        service=service,
        sharing_key=key,
        clusters=_clusters(str(data.get("clusters", ""))),
        resource_version=str(meta.get("resourceVersion") or ""),
        store=store,
    )


@functools.lru_cache(maxsize=1024)
def _clusters(text: str) -> frozenset[str]:
    """The clusters of a record's `clusters` text. Cached: a fleet has a few combinations,
    and each record kept its own frozenset (224 bytes, a third of a record; tracemalloc).
    Pools and namespaces are interned for the same reason."""
    clusters = frozenset(sys.intern(c) for c in text.split(",") if c)
    if any(not _CLUSTER.fullmatch(c) for c in clusters):
        raise BadRecord("data.clusters holds something that is not a cluster name")
    return clusters


def is_import_marker(obj: JSONObject) -> bool:
    return (obj.get("metadata") or {}).get("name") == IMPORT_MARKER


def import_marker_body(namespace: str, cluster: str, imported: int) -> dict[str, JSON]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": IMPORT_MARKER,
            "namespace": namespace,
            "labels": {RECORD_LABEL: RECORD_LABEL_VALUE, "app.kubernetes.io/managed-by": "bgpspeaker"},
        },
        "data": {"cluster": cluster, "imported": str(imported)},
    }
