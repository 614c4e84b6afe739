"""Attacks on the record keeper's blocks, against the emulated API server (found by a
review of the blocks' first version, each test failing on it).

- An entry the parser refuses (an operator's typo, a newer writer's format) is no
  evidence, but it is not free either: the first version let a claim by any identity
  overwrite it, and the last valid entry's leave deleted the whole block with it (the
  per-address records answered such an object with a conflict, and never deleted it).
- A block that lost its label is invisible to every speaker: the keeper puts it back.
- A block other clusters keep writing is busy, not a store that is down.
- A write whose answer was lost is found by the retry, and counted as ours.
"""

from __future__ import annotations

import ipaddress

from bgpspeaker.kube.client import api_client
from bgpspeaker.kube.records import RecordKeeper, Store
from bgpspeaker.records import LOCAL, RECORD_LABEL, block_name, blocks_of
from integration.test_records_keeper import NAMESPACE, StaleReader, emu, keeper, record  # noqa: F401  (emu: a fixture)
from testkit.records import recorded

BLOCK = block_name(ipaddress.ip_address("203.0.113.0"))
# payroll's entry after an operator added a cluster by hand with a capital letter:
TYPO = "service=default/payroll pool=public clusters=east,West"


def block_with_typo(emu) -> None:
    [body] = blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)
    body["data"]["203.0.113.6"] = TYPO
    emu.set_object(body)


def raw(emu) -> dict | None:
    return emu.get_object("v1", "ConfigMap", NAMESPACE, BLOCK)


def test_a_claim_does_not_overwrite_an_entry_it_cannot_parse(emu):
    """West's tenant asks for 203.0.113.6; its entry (payroll's) has a typo. The claim
    must not be written over it (a conflict, as the per-address keeper answered)."""
    block_with_typo(emu)
    result = keeper(emu, "west").apply([record("203.0.113.6", "tenant/evil", "west")], (), ())
    assert raw(emu)["data"]["203.0.113.6"] == TYPO, "payroll's entry was overwritten by tenant/evil's claim"
    assert not result.created and result.conflicts


def test_the_last_one_out_does_not_delete_a_block_holding_an_entry_it_cannot_parse(emu):
    """East leaves shop's 203.0.113.5, the last entry it can parse: the block (and
    payroll's entry with it) must stay."""
    block_with_typo(emu)
    east = keeper(emu, "east")
    east.apply((), (), [recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.113.5"]])
    obj = raw(emu)
    assert obj is not None, "the block was deleted with payroll's entry in it"
    assert obj["data"] == {"203.0.113.6": TYPO}


def test_a_block_the_keeper_writes_carries_the_label_every_speaker_watches(emu):
    """A block that lost its label (an operator's `kubectl apply` of a hand-written one,
    a `kubectl label ... bgpspeaker.io/address-block-`) is invisible to every speaker, yet
    the keeper reads and writes it: its records are honoured by claims and never seen by
    the allocator or planner (every Service in it withdrawn, the claims for it no-ops)."""
    [body] = blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)
    del body["metadata"]["labels"]
    emu.set_object(body)
    keeper(emu, "east").apply([record("203.0.113.9", "default/cart", "east")], (), ())
    assert RECORD_LABEL in (raw(emu)["metadata"].get("labels") or {}), "the keeper wrote an unlabelled block"


class Contended(RecordKeeper):
    """Every read of block `hot` is overtaken by another cluster's write to it (a busy
    block: several clusters claiming in one /24 at once, as a fleet's imports do, all
    walking the blocks in the same sorted order)."""

    def __init__(self, emu, cluster, hot):
        super().__init__({LOCAL: Store(LOCAL, api_client(emu.kubeconfig), NAMESPACE)}, cluster, lambda: True)
        self._emu, self._hot, self._n = emu, hot, 0

    def _get(self, store, name):
        try:
            return super()._get(store, name)
        finally:
            if name == self._hot:
                self._n += 1
                keeper(self._emu, "east").apply(
                    [record(f"203.0.113.{100 + self._n}", f"default/s{self._n}", "east")], (), ()
                )


def test_a_busy_block_does_not_fail_the_whole_store_for_the_round(emu):
    """Four 409s on one block (attempts=4) were reported as the store being unreachable,
    and every other block of the store was skipped for the round: its Services got the
    store-down Warning and waited RECORD_RETRY_SECONDS, though the store answered every
    request. Now the block is `busy` (retried soon), and the other blocks are written."""
    west = Contended(emu, "west", block_name(ipaddress.ip_address("203.0.113.0")))
    result = west.apply(
        [record("203.0.113.5", "default/shop", "west"), record("203.0.114.5", "default/cart", "west")], (), ()
    )
    assert not result.failed, f"a contended block was reported as the store failing: {result.failed}"
    assert result.busy == [block_name(ipaddress.ip_address("203.0.113.0"))]
    assert recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.114.5"].holder == "default/cart"


class LostResponse(RecordKeeper):
    """The first write of the round by one of `methods` commits, but its answer is lost (a
    504 from a proxy or the apiserver's own timeout, after etcd committed)."""

    def __init__(self, emu, cluster, methods=("POST", "PATCH")):
        super().__init__({LOCAL: Store(LOCAL, api_client(emu.kubeconfig), NAMESPACE)}, cluster, lambda: True)
        self.methods, self.lost = methods, False

    def _request(self, store, method, path, body, content_type=None):
        answer = super()._request(store, method, path, body, content_type)
        if not self.lost and method in self.methods:
            from kubernetes.client.exceptions import ApiException

            self.lost = True
            raise ApiException(status=504, reason="Gateway Timeout")
        return answer


def test_a_write_whose_answer_was_lost_is_neither_doubled_nor_a_conflict(emu):
    """The retry reads the block, finds its own entry, writes nothing, reports no
    conflict, and counts the claim as created (the first version lost it from `created`:
    the 'address recorded' log line and the import's records= count missed it)."""
    west = LostResponse(emu, "west")
    result = west.apply([record("203.0.113.5", "default/shop", "west")], (), ())
    assert west.lost and not result.failed and not result.conflicts
    assert recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.113.5"].holder == "default/shop"
    assert [str(c.address) for c in result.created] == ["203.0.113.5"], "a claim that landed is not reported as created"


def test_a_claim_read_before_the_last_one_out_deleted_the_block_lands_in_a_new_one(emu):
    """West reads the block (east's shop in it), east's leave deletes the block, then
    west's guarded PATCH: a 404, a fresh read (none), a create."""
    emu.set_object(blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)[0])
    shop = recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.113.5"]
    west = StaleReader(emu, "west", lambda: keeper(emu, "east").apply((), (), [shop]))
    result = west.apply([record("203.0.113.6", "default/other", "west")], (), ())
    assert not result.failed and [str(c.address) for c in result.created] == ["203.0.113.6"]
    now = recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)
    assert "203.0.113.5" not in now and now["203.0.113.6"].holder == "default/other"
    assert ("PATCH", BLOCK) in [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in emu.requests]  # the 404


def test_the_last_one_out_read_before_a_claim_keeps_the_block(emu):
    emu.set_object(blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)[0])
    shop = recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.113.5"]
    east = StaleReader(
        emu, "east", lambda: keeper(emu, "west").apply([record("203.0.113.9", "default/cart", "west")], (), ())
    )
    east.apply((), (), [shop])
    now = recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)
    assert "203.0.113.5" not in now and now["203.0.113.9"].holder == "default/cart"


def test_a_block_that_lost_its_label_is_relabelled_even_when_no_entry_changes(emu):
    """The allocator cannot see an unlabelled block, so it claims shop's address again for
    shop: a no-op for the entries. The first relabelling wrote only with an entry change,
    so the block stayed invisible and shop waited for good (found by a second review)."""
    [body] = blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)
    del body["metadata"]["labels"]
    emu.set_object(body)
    result = keeper(emu, "east").apply([record("203.0.113.5", "default/shop", "east")], (), ())
    assert not result.failed and not result.conflicts
    assert RECORD_LABEL in (raw(emu)["metadata"].get("labels") or {})
    assert raw(emu)["data"] == body["data"]


def test_a_release_whose_answer_was_lost_is_counted_once(emu):
    """The last one out's DELETE commits, its answer is lost: the retry finds no entry, and
    counts the release as done (not lost from `left`, not an error)."""
    emu.set_object(blocks_of([record("203.0.113.5", "default/shop", "east")], NAMESPACE)[0])
    shop = recorded(emu.snapshot().get("v1/ConfigMap") or [], NAMESPACE)["203.0.113.5"]

    east = LostResponse(emu, "east", methods=("DELETE",))
    result = east.apply((), (), [shop])
    assert east.lost and not result.failed
    assert [(str(r.address), r.clusters) for r in result.left] == [("203.0.113.5", frozenset())]
    assert raw(emu) is None
