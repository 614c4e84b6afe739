"""Allocation records: who holds which address, as API objects only the allocator writes (pure).

Why records, and not the Services' status: a Service's status and annotations can be
written by whoever may edit that Service (a tenant with `services/status`, a
controller, a forged `ip-allocated-from-pool` annotation). If they were the evidence of
who holds an address, a tenant could take an address another Service asked for, or an
older tenant Service could take a running address from a younger one. And across
clusters nothing at all tied an address to one Service: two clusters could give one
address to two Services, and a failover would hand one application's clients to another.

So the evidence is a set of ConfigMaps in the allocator's own namespace (or, for a pool
shared by several clusters, in the namespace of a record store that all of them use),
one per block of 256 addresses (an IPv4 /24, an IPv6 /120; Calico's IPAM blocks are the
same idea), holding one entry per address held in the block:

    bgpspeaker-ips-203.0.113.0-24:   data: {"203.0.113.5": "service=default/shop pool=public clusters=east,west"}

Every change to a block is a write guarded by the resourceVersion the writer read (or a
create-if-absent of the block), so the API server itself refuses a second holder: of two
clusters claiming one address, one write fails with 409 and the writer reads the block
again, and sees the winner. Only the allocator's ServiceAccount may write there; Service
status and the annotation are outputs only. docs/design.md, "Addresses across clusters",
states the invariants these records carry.

Why blocks and not one ConfigMap per address (the first records version): every speaker
lists every record at its start, and 50,000 objects cost the API server and each speaker
as much as the Services did (docs/performance.md); 200 blocks cost a fraction of that.

A record names its holder: one Service (namespace/name: the same identity in every
cluster, as the multi-cluster Services KEP's namespace sameness), or one sharing group
(namespace + allow-shared-ip key) for Services that share the address. It also lists
the clusters whose Services use it: a cluster adds itself when it starts using the
address and removes itself when it stops; the last one out removes the entry. So an
address is released only when no cluster uses it any more.

This module is values only: names, parsing a block into AddressRecords and back. The
shell that reads and writes them is bgpspeaker/kube/records.py.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from bgpspeaker.logs import fields
from bgpspeaker.model import JSON, IPAddress, JSONObject, parse_ip, service_key

log = logging.getLogger(__name__)

RECORD_LABEL = "bgpspeaker.io/address-block"  # label selector of the records' watch: "<label>=v1"
RECORD_LABEL_VALUE = "v1"
BLOCK_PREFIX = "bgpspeaker-ips-"
BLOCK_BITS = 8  # addresses per block: 2 ** BLOCK_BITS (an IPv4 /24, an IPv6 /120)
# Written once the first allocator of the records version has imported the allocations it
# found (status + allocated-from-pool annotation). Before it exists every node allocates
# the old way, so an upgrade moves no address; after it, a marker counts for nothing.
# Not the name the per-address records of development builds used for theirs: a cluster
# that ran those imports again, from status, into blocks (their records are not read).
IMPORT_MARKER = "bgpspeaker-address-blocks-imported"

# The speaker's namespace (its POD_NAMESPACE) when none is given: the Lease, the config and
# the local store's records live there.
DEFAULT_NAMESPACE = "bgpspeaker-system"

LOCAL = "local"  # the store in this cluster's own API
SHARED = "shared"  # the store named by `sharedStore` in the config, for pools marked `shared`

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label: namespace, Service and pool names
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
    # Which store it was read from (or is meant for): bookkeeping, not part of what it says.
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
    return sys.intern(f"{namespace}/*{sharing_key}") if sharing_key is not None else service_key(namespace, name)


# --- names ------------------------------------------------------------------------------------


def record_key(address: IPAddress) -> str:
    """The key of `address`'s entry in its block (and of its record in a Snapshot's records).

    IPv4 dotted; IPv6 exploded, with '-' for ':' (a ConfigMap key allows no ':'). One key
    per address: these are the canonical spellings, and an entry spelled otherwise is
    refused. Exploded, not compressed: how Python compresses an address has changed
    between versions (IPv4-mapped ones, CPython gh-87799), and two speakers on two
    Pythons must agree on every key.
    """
    return str(address) if address.version == 4 else address.exploded.replace(":", "-")


def _address_of_key(key: str) -> IPAddress:
    # parse_ip's cache: the Service asking for an IPv4 address parses the same text, and
    # both then hold one address object (one parse and 80 bytes less per record); an IPv6
    # key (exploded) is not the text a Service writes, and is parsed apart
    return parse_ip(key.replace("-", ":") if "-" in key else key)  # no '-' in IPv4, always one in IPv6


def block_name(address: IPAddress) -> str:
    """The ConfigMap holding `address`'s entry: one per 256 addresses, named after its first.

    IPv4 `bgpspeaker-ips-203.0.113.0-24`; IPv6 `bgpspeaker-ips-v6-<32 hex digits>-120`
    (no ':' in a name, and the exploded form has one spelling)."""
    first = int(address) >> BLOCK_BITS << BLOCK_BITS
    if address.version == 4:
        return f"{BLOCK_PREFIX}{ipaddress.IPv4Address(first)}-{32 - BLOCK_BITS}"
    return f"{BLOCK_PREFIX}v6-{first:032x}-{128 - BLOCK_BITS}"


@functools.lru_cache(maxsize=4096)
def _block_of_name(name: str) -> Optional[tuple[int, int]]:
    """(IP version, first address as an int) of a block named `name`, or None if it is no block name."""
    rest = name.removeprefix(BLOCK_PREFIX)
    try:
        if rest.startswith("v6-") and rest.endswith(f"-{128 - BLOCK_BITS}"):
            first = int(rest[3:-4], 16)
            version = 6
            address: IPAddress = ipaddress.IPv6Address(first)
        elif rest.endswith(f"-{32 - BLOCK_BITS}"):
            address = ipaddress.IPv4Address(rest[:-3])
            version, first = 4, int(address)
        else:
            return None
    except ValueError:
        return None
    return (version, first) if block_name(address) == name else None


# --- entries ------------------------------------------------------------------------------------


def entry_text(record: AddressRecord) -> str:
    """What a block says of `record`: `service=ns/name pool=P clusters=a,b` (or `sharing=ns/key`)."""
    holder = (
        f"service={record.namespace}/{record.service}"
        if record.service is not None
        else (f"sharing={record.namespace}/{record.sharing_key}")
    )
    return f"{holder} pool={record.pool} clusters={','.join(sorted(record.clusters))}"


@functools.lru_cache(maxsize=4096)
def _is_name(text: str) -> bool:
    """A namespace or pool name (a DNS label). Cached: a fleet has few, and each is in
    thousands of entries (the check was a tenth of a block's parse)."""
    return _NAME.fullmatch(text) is not None


class BadRecord(ValueError):
    """A block, or an entry of one, that does not hold a valid record (ignored, and logged)."""


def entry_from_text(key: str, text: object, store: str = LOCAL) -> AddressRecord:
    """Parse one entry of a block; BadRecord says what is wrong (the block's range is checked
    by block_from_dict). Strict: a canonical key, Kubernetes names, nothing else."""
    try:
        address = _address_of_key(key)
    except ValueError:
        raise BadRecord(f"key {key[:64]!r} is not an IP address") from None
    # IPv4 text that parses is the one spelling (ipaddress refuses leading zeros and
    # anything but four decimal octets); IPv6 has many, and only one is the key.
    if address.version == 6 and record_key(address) != key:
        raise BadRecord(f"key {key[:64]!r} is not spelled {record_key(address)!r}")
    if not isinstance(text, str):
        raise BadRecord(f"{key}: not a string")
    parts = text.split(" ")
    if len(parts) != 3:
        raise BadRecord(f"{key}: not 'service=ns/name pool=P clusters=a,b'")
    who, pool, clusters = parts
    kind, _, holder = who.partition("=")
    namespace, _, name = holder.partition("/")
    if not _is_name(namespace):
        raise BadRecord(f"{key}: {namespace[:64]!r} is not a namespace name")
    if kind == "service":
        if not _NAME.fullmatch(name):
            raise BadRecord(f"{key}: {name[:64]!r} is not a Service name")
        service, sharing_key = name, None
    elif kind == "sharing":
        if not SHARING_KEY.fullmatch(name):
            raise BadRecord(f"{key}: {name[:64]!r} is not a sharing key")
        service, sharing_key = None, name
    else:
        raise BadRecord(f"{key}: the holder is neither service= nor sharing=")
    if not pool.startswith("pool=") or not _is_name(pool[5:]):
        raise BadRecord(f"{key}: no valid pool=")
    if not clusters.startswith("clusters="):
        raise BadRecord(f"{key}: no clusters=")
    return AddressRecord(
        address=address,
        pool=sys.intern(pool[5:]),
        namespace=sys.intern(namespace),
        service=service,
        sharing_key=sharing_key,
        clusters=_clusters(clusters[9:]),
        store=store,
    )


Block = dict[str, AddressRecord]  # a block's records by record_key; never changed once parsed


def block_from_dict(
    obj: JSONObject, store: str = LOCAL, previous: Optional[Mapping[str, AddressRecord]] = None
) -> Block:
    """The records of a block ConfigMap. A block not named as one is BadRecord as a whole;
    an entry that is not a valid record, or lies outside the block, is left out and logged
    (the rest of the block stands: one bad entry must not hide 255 good ones).

    `previous`: this block's records as last parsed; an entry whose text is unchanged keeps
    its record object (a block changes one entry at a time, and consumers compare records
    by identity first), and costs a comparison rather than a parse.
    """
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    block = _block_of_name(name)
    if block is None:
        raise BadRecord(f"{name[:80]!r} is not the name of an address block")
    data = obj.get("data") or {}
    if not isinstance(data, Mapping):
        raise BadRecord("data is not a mapping")
    version, first = block
    records: Block = {}
    for key, text in data.items():
        known = previous.get(key) if previous else None
        if known is not None and known.store == store and entry_text(known) == text:
            records[key] = known
            continue
        try:
            record = entry_from_text(key, text, store)
            if record.address.version != version or int(record.address) >> BLOCK_BITS != first >> BLOCK_BITS:
                raise BadRecord(f"{key}: not an address of block {name}")
        except BadRecord as error:
            log.warning(
                "ignored: entry %s of %s is not a valid allocation record: %s",
                key[:64],
                name,
                error,
                extra=fields(block=name, error=str(error)),
            )
            if known is not None and known.store == store:
                records[key] = known  # edited into nonsense: keep what it said (as a per-address record's view was)
            continue
        records[key] = record
    return records


def labels() -> dict[str, JSON]:
    """The labels of every object of ours in a record store: RECORD_LABEL is what speakers watch."""
    return {RECORD_LABEL: RECORD_LABEL_VALUE, "app.kubernetes.io/managed-by": "bgpspeaker"}


def block_body(namespace: str, name: str, records: Iterable[AddressRecord]) -> dict[str, JSON]:
    """The ConfigMap of block `name` holding `records` (a create body: changes are merge patches)."""
    metadata: dict[str, JSON] = {"name": name, "namespace": namespace, "labels": labels()}
    data: dict[str, JSON] = {record_key(r.address): entry_text(r) for r in records}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def blocks_of(records: Iterable[AddressRecord], namespace: str) -> list[dict[str, JSON]]:
    """The block ConfigMaps that hold `records` (test lab and bench fixtures, the offline tools)."""
    by_block: dict[str, list[AddressRecord]] = {}
    for record in records:
        by_block.setdefault(block_name(record.address), []).append(record)
    return [block_body(namespace, name, recs) for name, recs in sorted(by_block.items())]


@functools.lru_cache(maxsize=1024)
def _clusters(text: str) -> frozenset[str]:
    """The clusters of an entry's `clusters=` text. Cached: a fleet has a few combinations,
    and each record kept its own frozenset (224 bytes, a third of a record; tracemalloc).
    Pools and namespaces are interned for the same reason."""
    clusters = frozenset(sys.intern(c) for c in text.split(",") if c)
    if any(not _CLUSTER.fullmatch(c) for c in clusters):
        raise BadRecord("clusters= holds something that is not a cluster name")
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
            "labels": labels(),
        },
        "data": {"cluster": cluster, "imported": str(imported)},
    }
