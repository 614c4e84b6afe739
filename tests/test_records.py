"""Allocation records as API objects: names, parsing and rendering (bgpspeaker/records.py)."""

from __future__ import annotations

import ipaddress

import pytest

from bgpspeaker.kube.watcher import records_resource
from bgpspeaker.records import (
    DEFAULT_NAMESPACE, IMPORT_MARKER, LOCAL, RECORD_LABEL, RECORD_LABEL_VALUE, SHARED, AddressRecord, BadRecord,
    import_marker_body, record_body, record_from_dict, record_name,
)
from bgpspeaker.views import IMPORTED, snapshot_from_objects

ip = ipaddress.ip_address
RECORD = AddressRecord(ipaddress.ip_address("203.0.113.7"), "public", "default", "shop",
                       clusters=frozenset({"east", "west"}))


def test_a_record_round_trips_through_its_configmap():
    body = record_body(RECORD, "bgpspeaker-system")
    assert body["metadata"]["name"] == "bgpspeaker-ip-203.0.113.7"
    assert body["data"] == {"address": "203.0.113.7", "pool": "public", "namespace": "default",
                            "clusters": "east,west", "service": "shop"}
    assert record_from_dict(body) == RECORD
    group = AddressRecord(ipaddress.ip_address("2001:db8::5"), "public", "team", None, "web", frozenset({"east"}))
    assert record_from_dict(record_body(group, "x")) == group and group.holder == "team/*web"


@pytest.mark.parametrize("edit, why", [
    (lambda b: b["metadata"].update(name="bgpspeaker-ip-203.0.113.8"), "named"),  # claims another address
    (lambda b: b["data"].update(address="not-an-ip"), "not an IP address"),
    (lambda b: b["data"].update(namespace="Bad_NS"), "namespace"),
    (lambda b: b["data"].update(sharingKey="k"), "exactly one"),
    (lambda b: b["data"].pop("pool"), "pool"),
    (lambda b: b["data"].update(clusters="east,West!"), "cluster name"),
])
def test_a_record_edited_into_nonsense_is_not_evidence(edit, why):
    body = record_body(RECORD, "ns")
    edit(body)
    with pytest.raises(BadRecord, match=why):
        record_from_dict(body)


def test_the_informer_parses_records_as_records_of_their_store():
    """Found in the lab: records of the shared store were parsed as local ones, so the keeper
    joined and left them in the wrong API (a 404 there, silently nothing)."""
    resource = records_resource(SHARED, "bgpspeaker-records")
    assert resource.parse(record_body(RECORD, "bgpspeaker-records")).store == SHARED
    assert resource.label_selector == "bgpspeaker.io/address-record=v1"
    assert resource.parse(import_marker_body("bgpspeaker-records", "east", 3)) is IMPORTED
    assert import_marker_body("ns", "east", 0)["metadata"]["name"] == IMPORT_MARKER


def test_record_names_are_unique_per_address_whatever_the_spelling():
    assert record_name(ipaddress.ip_address("2001:db8::1")) == record_name(ipaddress.ip_address("2001:0db8:0::1"))


def test_parsed_records_share_what_repeats_and_keep_no_dict_each():
    """Memory at 10,000 records (issue 13's RSS): each record kept its own frozenset of
    clusters (224 bytes, a third of a record), its own pool and namespace strings, an
    address object beside the one the Service's request parsed, and a __dict__."""
    from bgpspeaker.model import parse_ip

    first = record_from_dict(record_body(RECORD, "ns"))
    other = replace_address(RECORD, "203.0.113.8")
    second = record_from_dict(record_body(other, "ns"))
    assert first.clusters is second.clusters and first.pool is second.pool and first.namespace is second.namespace
    assert first.address is parse_ip("203.0.113.7")
    assert not hasattr(first, "__dict__")


def test_an_ipv4_record_is_named_after_its_one_spelling():
    """A record's name is record_name of its address: a spelling of the same IPv4 address
    with leading zeros is not an address at all, another IPv6 spelling names the same record."""
    body = record_body(RECORD, "ns")
    body["data"]["address"] = "203.0.113.07"
    body["metadata"]["name"] = "bgpspeaker-ip-203.0.113.07"
    with pytest.raises(BadRecord, match="not an IP address"):
        record_from_dict(body)
    v6 = AddressRecord(ipaddress.ip_address("2001:db8::5"), "public", "default", "shop")
    body = record_body(v6, "ns")
    body["data"]["address"] = "2001:0db8:0::5"  # another spelling of the same address: the same name
    assert record_from_dict(body) == v6


def replace_address(record: AddressRecord, address: str) -> AddressRecord:
    import dataclasses

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
    real = record_body(AddressRecord(ip("203.0.113.0"), "public", "default", "shop", clusters=frozenset({"east"})),
                       DEFAULT_NAMESPACE)
    forged = record_body(AddressRecord(ip("203.0.113.1"), "public", "tenant", "evil"), "tenant")
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
    assert "bgpspeaker-system/junk is not a valid allocation record" in caplog.text
