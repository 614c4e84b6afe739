"""Allocation records as API objects: names, parsing and rendering (bgpspeaker/records.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest

from bgpspeaker.kube.watcher import flatten_block, records_resource
from bgpspeaker.records import (
    DEFAULT_NAMESPACE, IMPORT_MARKER, LOCAL, RECORD_LABEL, RECORD_LABEL_VALUE, SHARED, AddressRecord, BadRecord,
    block_from_dict, block_name, blocks_of, entry_text, import_marker_body, record_key,
)
from bgpspeaker.views import IMPORTED, snapshot_from_objects

ip = ipaddress.ip_address
RECORD = AddressRecord(ipaddress.ip_address("203.0.113.7"), "public", "default", "shop",
                       clusters=frozenset({"east", "west"}))
GROUP = AddressRecord(ipaddress.ip_address("2001:db8::5"), "public", "team", None, "web", frozenset({"east"}))


def one_block(record: AddressRecord, namespace: str = "ns") -> dict:
    [body] = blocks_of([record], namespace)
    return body


def test_records_round_trip_through_their_block():
    body = one_block(RECORD, "bgpspeaker-system")
    assert body["metadata"]["name"] == "bgpspeaker-ips-203.0.113.0-24"
    assert body["metadata"]["labels"][RECORD_LABEL] == RECORD_LABEL_VALUE
    assert body["data"] == {"203.0.113.7": "service=default/shop pool=public clusters=east,west"}
    assert block_from_dict(body) == {"203.0.113.7": RECORD}
    group = one_block(GROUP)
    assert group["metadata"]["name"] == "bgpspeaker-ips-v6-20010db8000000000000000000000000-120"
    assert group["data"] == {"2001-0db8-0000-0000-0000-0000-0000-0005": "sharing=team/web pool=public clusters=east"}
    assert block_from_dict(group) == {"2001-0db8-0000-0000-0000-0000-0000-0005": GROUP} and GROUP.holder == "team/*web"


def test_one_block_holds_256_addresses():
    records = [replace_address(RECORD, f"203.0.113.{i}") for i in (0, 255)] + [replace_address(RECORD, "203.0.114.0")]
    assert [len(b["data"]) for b in blocks_of(records, "ns")] == [2, 1]
    assert block_name(ip("2001:db8::1ff")) == block_name(ip("2001:db8::100")) != block_name(ip("2001:db8::ff"))


@pytest.mark.parametrize("key, text, why", [
    ("203.0.114.7", "service=default/shop pool=public clusters=east", "not an address of block"),  # another block's
    ("203.0.113.07", "service=default/shop pool=public clusters=east", "not an IP address"),
    ("2001-db8--5", "service=default/shop pool=public clusters=east", "not spelled"),  # IPv6 keys are exploded
    ("--ffff-1.2.3.4", "service=default/shop pool=public clusters=east", "not an IP address|not spelled"),
    ("203.0.113.8", "service=Bad_NS/shop pool=public clusters=east", "namespace"),
    ("203.0.113.8", "service=default/shop sharing=x pool=public clusters=east", "not 'service="),
    ("203.0.113.8", "owner=default/shop pool=public clusters=east", "neither"),
    ("203.0.113.8", "service=default/shop pol=public clusters=east", "pool"),
    ("203.0.113.8", "service=default/shop pool=public clusters=east,West!", "cluster name"),
    ("203.0.113.8", "sharing=default/k!y pool=public clusters=east", "sharing key"),
])
def test_an_entry_edited_into_nonsense_is_not_evidence_and_costs_only_itself(key, text, why, caplog):
    body = one_block(RECORD)
    body["data"][key] = text
    assert block_from_dict(body) == {"203.0.113.7": RECORD}  # the good entry stands
    assert re.search(why, caplog.text), caplog.text


@pytest.mark.parametrize("name", ["bgpspeaker-ips-203.0.113.1-24", "bgpspeaker-ips-203.0.113.0-25", "junk",
                                  "bgpspeaker-ips-v6-20010db8000000000000000000000001-120"])
def test_a_block_not_named_as_one_is_no_evidence(name):
    body = one_block(RECORD)
    body["metadata"]["name"] = name
    with pytest.raises(BadRecord, match="not the name of an address block"):
        block_from_dict(body)


def test_the_informer_parses_blocks_as_records_of_their_store():
    """Found in the lab: records of the shared store were parsed as local ones, so the keeper
    joined and left them in the wrong API (a 404 there, silently nothing)."""
    resource = records_resource(SHARED, "bgpspeaker-records")
    assert resource.parse(one_block(RECORD, "bgpspeaker-records"))["203.0.113.7"].store == SHARED
    assert resource.label_selector == "bgpspeaker.io/address-block=v1"
    assert resource.parse(import_marker_body("bgpspeaker-records", "east", 3)) is IMPORTED
    assert import_marker_body("ns", "east", 0)["metadata"]["name"] == IMPORT_MARKER


def test_a_changed_block_keeps_the_records_it_did_not_change():
    """A block changes an entry at a time; its other records stay the same objects, so the
    allocator (which compares records by identity first) looks at the changed one only."""
    resource = records_resource(LOCAL, "ns")
    records = [replace_address(RECORD, f"203.0.113.{i}") for i in range(4)]
    before = resource.parse(blocks_of(records, "ns")[0])
    changed = [records[0], dataclasses.replace(records[1], clusters=frozenset({"east"})), records[3]]
    after = resource.parse_again(blocks_of(changed, "ns")[0], before)
    assert after["203.0.113.0"] is before["203.0.113.0"] and after["203.0.113.3"] is before["203.0.113.3"]
    assert after["203.0.113.1"] == changed[1] and "203.0.113.2" not in after
    flat, noted = dict(before), []
    flatten_block(flat, noted.append, before, after)
    assert sorted(noted) == ["203.0.113.1", "203.0.113.2"] and flat == after


def test_an_entry_edited_into_nonsense_keeps_the_record_it_had():
    """An operator adds a cluster by hand to s1's entry and types `West`. With one
    ConfigMap per address the informer kept the record's previous view; in the blocks'
    first version the entry just vanished: every speaker of every cluster dropped the
    record at once, s1 was withdrawn and (autoAssign) renumbered, and 203.0.113.1 was free
    for any identity (found by a review)."""
    resource = records_resource(LOCAL, "ns")
    records = [replace_address(RECORD, f"203.0.113.{i}") for i in range(3)]
    before = resource.parse(blocks_of(records, "ns")[0])
    edited = blocks_of(records, "ns")[0]
    edited["data"]["203.0.113.1"] = "service=default/shop pool=public clusters=east,West"
    after = resource.parse_again(edited, before)
    flat, noted = dict(before), []
    flatten_block(flat, noted.append, before, after)
    assert flat["203.0.113.1"] is before["203.0.113.1"] and not noted


def test_a_block_deleted_and_recreated_is_flattened_exactly():
    resource = records_resource(LOCAL, "ns")
    records = [replace_address(RECORD, f"203.0.113.{i}") for i in range(3)]
    before = resource.parse(blocks_of(records, "ns")[0])
    flat, noted = dict(before), []
    flatten_block(flat, noted.append, before, {})
    assert flat == {} and sorted(noted) == sorted(before)
    again = resource.parse(blocks_of(records[:2] + [dataclasses.replace(records[2], service="other")], "ns")[0])
    noted.clear()
    flatten_block(flat, noted.append, {}, again)
    assert flat == again and sorted(noted) == sorted(again)


def test_record_keys_are_one_per_address_whatever_the_spelling():
    assert record_key(ipaddress.ip_address("2001:db8::1")) == record_key(ipaddress.ip_address("2001:0db8:0::1"))
    assert record_key(ip("203.0.113.7")) == "203.0.113.7"
    assert entry_text(RECORD) == "service=default/shop pool=public clusters=east,west"


def test_parsed_records_share_what_repeats_and_keep_no_dict_each():
    """Memory at 10,000 records (issue 13's RSS): each record kept its own frozenset of
    clusters (224 bytes, a third of a record), its own pool and namespace strings, an
    address object beside the one the Service's request parsed, and a __dict__."""
    from bgpspeaker.model import parse_ip

    block = block_from_dict(blocks_of([RECORD, replace_address(RECORD, "203.0.113.8")], "ns")[0])
    first, second = block["203.0.113.7"], block["203.0.113.8"]
    assert first.clusters is second.clusters and first.pool is second.pool and first.namespace is second.namespace
    assert first.address is parse_ip("203.0.113.7")
    assert not hasattr(first, "__dict__")


def replace_address(record: AddressRecord, address: str) -> AddressRecord:
    return dataclasses.replace(record, address=ipaddress.ip_address(address))


# --- records in an object dump (offline plan, explain, audit) -----------------------------
# Found by an attack on the records: a dump taken with `kubectl get cm -A` holds tenants'
# ConfigMaps, and any labelled one counted. With the marker in its own namespace, a tenant
# switched a cluster's audit to records (with none of them): every conflict was hidden.

def _service(namespace, name, ingress):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": namespace, "name": name, "creationTimestamp": "2024-01-01T00:00:00Z",
                         "annotations": {"bgpspeaker.io/ip-allocated-from-pool": "public"}},
            "spec": {"type": "LoadBalancer", "ports": [{"protocol": "TCP", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ingress}]}}}


def _labelled(namespace, name, data=None):
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": data or {},
            "metadata": {"namespace": namespace, "name": name, "labels": {RECORD_LABEL: RECORD_LABEL_VALUE}}}


def test_a_dump_reads_records_and_the_marker_only_where_the_cluster_keeps_them():
    shop = _service("default", "shop", "203.0.113.0")
    real = one_block(AddressRecord(ip("203.0.113.0"), "public", "default", "shop", clusters=frozenset({"east"})),
                     DEFAULT_NAMESPACE)
    forged = one_block(AddressRecord(ip("203.0.113.1"), "public", "tenant", "evil"), "tenant")
    # the marker a tenant made in its own namespace switches nothing
    assert snapshot_from_objects([shop, real, _labelled("tenant", IMPORT_MARKER)]).records is None
    snapshot = snapshot_from_objects([shop, real, forged, import_marker_body(DEFAULT_NAMESPACE, "east", 1)])
    assert {store: sorted(r.holder for r in recs.values()) for store, recs in snapshot.records.items()} == {
        LOCAL: ["default/shop"]}
    # a shared store's namespace (from the config) holds the shared pools' records
    shared = snapshot_from_objects([shop, dict(real, metadata=dict(real["metadata"], namespace="bgpspeaker-records")),
                                    import_marker_body(DEFAULT_NAMESPACE, "east", 1)],
                                   {LOCAL: DEFAULT_NAMESPACE, SHARED: "bgpspeaker-records"})
    assert {store: len(recs) for store, recs in shared.records.items()} == {LOCAL: 0, SHARED: 1}
    assert next(iter(shared.records[SHARED].values())).store == SHARED


def test_a_dump_skips_a_labelled_configmap_that_is_not_a_record(caplog):
    shop = _service("default", "shop", "203.0.113.0")
    snapshot = snapshot_from_objects([shop, _labelled(DEFAULT_NAMESPACE, "junk", {"address": "not-an-ip"}),
                                      import_marker_body(DEFAULT_NAMESPACE, "east", 0)])
    assert snapshot.records == {LOCAL: {}}  # was: BadRecord out of `bgpspeaker audit`
    assert "bgpspeaker-system/junk is not a valid address block" in caplog.text


def test_the_informer_reuses_a_blocks_unchanged_records_in_a_relist_and_an_event(monkeypatch):
    """Resource.parse_again wired in: the informer hands each block's cached view to its
    parse, in a relist (the old cache) as in a watch event. An unchanged relist delivers
    nothing; an event that changes one entry keeps the other records' objects."""
    from bgpspeaker.kube import informer as informer_module
    from bgpspeaker.kube.informer import Informer
    from bgpspeaker.metrics import Metrics

    records = [replace_address(RECORD, f"203.0.113.{i}") for i in range(3)]
    stored = {"block": blocks_of(records, "ns")[0]}

    class Listing:
        resource_version = "1"

        def __init__(self, *args, **kwargs):
            pass

        def __iter__(self):
            yield from stored.values()

    monkeypatch.setattr(informer_module, "Listing", Listing)
    batches: list = []
    informer = Informer(None, records_resource(LOCAL, "ns"), lambda name, changes, listed: batches.append(changes),
                        Metrics())
    informer._relist()
    [(key, first)] = batches[0]
    informer._relist()
    assert len(batches) == 1 or batches[1] == []  # nothing changed: nothing delivered
    changed = [records[0], dataclasses.replace(records[1], clusters=frozenset({"east"})), records[2]]
    informer._handle({"type": "MODIFIED", "object": blocks_of(changed, "ns")[0]})
    [(same_key, second)] = batches[-1]
    assert same_key == key and second["203.0.113.0"] is first["203.0.113.0"]
    assert second["203.0.113.2"] is first["203.0.113.2"] and second["203.0.113.1"] == changed[1]
