"""The record keeper's one-time import against the emulated API server (real HTTP, the
official client): what it does when a record is already there.

- made by another cluster for the same identity: joined before the marker, so that this
  cluster's running Services are not withdrawn while they wait to join it once the marker
  switches the cluster to records (a cluster announces an address only once listed);
- held by another identity (a conflict the audit would have shown): no marker, so the
  cluster goes on allocating the old way rather than renumber its Service silently.
"""

from __future__ import annotations

import ipaddress

import pytest

from bgpspeaker.kube.client import api_client
from bgpspeaker.kube.records import RecordKeeper, Store
from bgpspeaker.records import IMPORT_MARKER, LOCAL, AddressRecord, record_body, record_from_dict, record_name
from integration.kubeapi import run_emulator

NAMESPACE = "bgpspeaker-system"


@pytest.fixture
def emu():
    with run_emulator() as e:
        yield e


def record(address: str, holder: str, *clusters: str) -> AddressRecord:
    namespace, _, name = holder.partition("/")
    return AddressRecord(ipaddress.ip_address(address), "public", namespace, name, clusters=frozenset(clusters))


def keeper(emu, cluster: str) -> RecordKeeper:
    return RecordKeeper({LOCAL: Store(LOCAL, api_client(emu.kubeconfig), NAMESPACE)}, cluster, lambda: True)


def stored(emu, address: str):
    obj = emu.get_object("v1", "ConfigMap", NAMESPACE, record_name(ipaddress.ip_address(address)))
    return record_from_dict(obj) if obj is not None else None


def test_the_import_joins_a_record_another_cluster_made_for_the_same_identity(emu):
    emu.set_object(record_body(record("203.0.113.0", "default/shop", "east"), NAMESPACE))
    result = keeper(emu, "west").import_once(
        [record("203.0.113.0", "default/shop", "west"), record("203.0.113.1", "default/cart", "west")], LOCAL
    )
    assert not result.failed and not result.conflicts
    assert stored(emu, "203.0.113.0").clusters == {"east", "west"}  # joined, not skipped
    assert stored(emu, "203.0.113.1").clusters == {"west"}
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER) is not None


def test_an_import_that_finds_an_address_recorded_for_another_identity_writes_no_marker(emu):
    emu.set_object(record_body(record("203.0.113.0", "tenant/evil", "east"), NAMESPACE))
    result = keeper(emu, "west").import_once(
        [record("203.0.113.0", "default/shop", "west"), record("203.0.113.1", "default/cart", "west")], LOCAL
    )
    assert [(str(claim.address), holder) for claim, holder in result.conflicts] == [("203.0.113.0", "tenant/evil")]
    assert stored(emu, "203.0.113.0").holder == "tenant/evil"  # untouched
    assert stored(emu, "203.0.113.1").clusters == {"west"}  # what could be imported is in
    # No marker: west goes on allocating from status, where shop keeps 203.0.113.0.
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER) is None
