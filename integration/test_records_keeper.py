"""The record keeper against the emulated API server (real HTTP, the official client).

Blocks: every write is guarded by the resourceVersion read, so a claim decided from a
stale read is refused by the API server (409) and decided again from a fresh one: of
two holders, the second sees the first. One write per block per round; the last entry
out deletes the block.

The one-time import: what it does when a record is already there.

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
from bgpspeaker.records import IMPORT_MARKER, LOCAL, AddressRecord, block_name, blocks_of
from integration.kubeapi import run_emulator
from testkit.records import recorded

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
    return recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE).get(address)


def put(emu, *records: AddressRecord) -> None:
    for block in blocks_of(records, NAMESPACE):
        emu.set_object(block)


def writes(emu) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in emu.requests
            if r["method"] in ("POST", "PUT", "PATCH", "DELETE") and "/configmaps" in r["path"]]


def test_one_round_writes_each_block_once_and_the_last_one_out_deletes_it(emu):
    east = keeper(emu, "east")
    claims = [record(f"203.0.113.{i}", f"default/s{i}", "east") for i in range(3)] + [
        record("203.0.114.9", "default/other", "east")]
    result = east.apply(claims, (), ())
    assert not result.failed and len(result.created) == 4
    assert [m for m, _ in writes(emu)] == ["POST", "POST"]  # two blocks, one create each
    assert stored(emu, "203.0.113.2").holder == "default/s2"
    result = east.apply((), (), [stored(emu, "203.0.113.0")])
    assert stored(emu, "203.0.113.0") is None and stored(emu, "203.0.113.1").clusters == {"east"}
    east.apply((), (), [stored(emu, a) for a in ("203.0.113.1", "203.0.113.2", "203.0.114.9")])
    assert not recorded(emu.snapshot().get("v1/ConfigMap") or [])
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, block_name(ipaddress.ip_address("203.0.113.0"))) is None


class StaleReader(RecordKeeper):
    """A keeper whose first read of a block is overtaken: before its write goes out,
    `meanwhile` runs (another cluster's write to the same block)."""

    def __init__(self, emu, cluster, meanwhile):
        super().__init__({LOCAL: Store(LOCAL, api_client(emu.kubeconfig), NAMESPACE)}, cluster, lambda: True)
        self._meanwhile = meanwhile

    def _get(self, store, name):
        try:
            return super()._get(store, name)  # a 404 too: what was read is what was true then
        finally:
            if self._meanwhile is not None:
                self._meanwhile, meanwhile = None, self._meanwhile
                meanwhile()


def test_a_claim_decided_from_a_stale_read_is_refused_and_decided_again(emu):
    """West reads the block (203.0.113.5 free), east claims .5 for payroll, then west's
    write goes out: the API server refuses it (the block's version moved), west reads
    again and sees payroll: a conflict, not a second holder (invariant 1)."""
    put(emu, record("203.0.113.1", "default/web", "east"))
    west = StaleReader(emu, "west", lambda: keeper(emu, "east").apply(
        [record("203.0.113.5", "default/payroll", "east")], (), ()))
    result = west.apply([record("203.0.113.5", "default/shop", "west")], (), ())
    assert [(str(c.address), holder) for c, holder in result.conflicts] == [("203.0.113.5", "default/payroll")]
    assert not result.created and stored(emu, "203.0.113.5").holder == "default/payroll"
    assert ("PATCH", block_name(ipaddress.ip_address("203.0.113.5"))) in writes(emu)


def test_two_clusters_creating_one_block_at_once_both_land(emu):
    """The block did not exist when west read it; east created it first: west's create is
    a 409, and its fresh read finds east's entry beside which its own goes."""
    west = StaleReader(emu, "west", lambda: keeper(emu, "east").apply(
        [record("203.0.113.1", "default/web", "east")], (), ()))
    result = west.apply([record("203.0.113.2", "default/shop", "west")], (), ())
    assert not result.failed and [str(c.address) for c in result.created] == ["203.0.113.2"]
    assert [m for m, _ in writes(emu)] == ["POST", "POST", "PATCH"]  # east's create, west's refused one, west's patch
    assert stored(emu, "203.0.113.1").holder == "default/web" and stored(emu, "203.0.113.2").holder == "default/shop"


def test_a_leave_decided_from_a_stale_read_keeps_the_cluster_that_joined_meanwhile(emu):
    """East is the last one on shop's record and leaves; west joins between east's read and
    its write. The guarded write makes east read again: the record stays, with west."""
    put(emu, record("203.0.113.0", "default/shop", "east"))
    shop = stored(emu, "203.0.113.0")
    east = StaleReader(emu, "east", lambda: keeper(emu, "west").apply((), [shop], ()))
    east.apply((), (), [shop])
    assert stored(emu, "203.0.113.0").clusters == {"west"}


def test_the_import_joins_a_record_another_cluster_made_for_the_same_identity(emu):
    put(emu, record("203.0.113.0", "default/shop", "east"))
    result = keeper(emu, "west").import_once(
        [record("203.0.113.0", "default/shop", "west"), record("203.0.113.1", "default/cart", "west")], LOCAL
    )
    assert not result.failed and not result.conflicts
    assert stored(emu, "203.0.113.0").clusters == {"east", "west"}  # joined, not skipped
    assert stored(emu, "203.0.113.1").clusters == {"west"}
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER) is not None


def test_an_import_that_finds_an_address_recorded_for_another_identity_writes_no_marker(emu):
    put(emu, record("203.0.113.0", "tenant/evil", "east"))
    result = keeper(emu, "west").import_once(
        [record("203.0.113.0", "default/shop", "west"), record("203.0.113.1", "default/cart", "west")], LOCAL
    )
    assert [(str(claim.address), holder) for claim, holder in result.conflicts] == [("203.0.113.0", "tenant/evil")]
    assert stored(emu, "203.0.113.0").holder == "tenant/evil"  # untouched
    assert stored(emu, "203.0.113.1").clusters == {"west"}  # what could be imported is in
    # No marker: west goes on allocating from status, where shop keeps 203.0.113.0.
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER) is None
