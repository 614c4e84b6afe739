"""The reconciler's diff: ordering, grouping, batching, determinism, and the model property."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpspeaker.model import Community, RouteAttributes, RouteIntent, Tier
from bgpspeaker.reconciler import Batch, Versioned, apply, diff, index, replaced_keys

NH4 = ipaddress.ip_address("10.0.0.2")
NH6 = ipaddress.ip_address("fd00::2")
PRIMARY = RouteAttributes(next_hop=NH4, as_path=(64512,), med=100, communities=(Community(64512, 100),))
SECONDARY = RouteAttributes(next_hop=NH4, as_path=(64512, 64512), med=200, communities=(Community(64512, 200),))
PRIMARY6 = RouteAttributes(next_hop=NH6, as_path=(64512,), med=100)


def net(text: str):
    return ipaddress.ip_network(text)


def intent(prefix: str, peer: str = "tor-a", attributes: RouteAttributes = PRIMARY, tier=Tier.PRIMARY,
           services=("ns/svc",)) -> RouteIntent:
    return RouteIntent(prefix=net(prefix), peer=peer, attributes=attributes, tier=tier, services=services)


def test_unchanged_set_gives_empty_diff():
    routes = [intent(f"203.0.113.{i}/32", peer) for i in range(50) for peer in ("tor-a", "tor-b")]
    assert diff(routes, list(reversed(routes))) == ()


def test_tier_or_services_change_without_attribute_change_sends_nothing():
    assert diff([intent("203.0.113.1/32", services=("a/b", "a/c"), tier=Tier.SECONDARY)],
                [intent("203.0.113.1/32")]) == ()


def test_new_routes_are_announced_in_one_batch_per_attributes_and_peers():
    batches = diff([intent("203.0.113.2/32"), intent("203.0.113.1/32"),
                    intent("203.0.113.1/32", "tor-b"), intent("203.0.113.2/32", "tor-b")], [])
    assert batches == (Batch("announce", ("tor-a", "tor-b"), PRIMARY,
                             (net("203.0.113.1/32"), net("203.0.113.2/32"))),)


def test_changed_attributes_reannounce_without_withdraw():
    batches = diff([intent("203.0.113.1/32", attributes=SECONDARY)], [intent("203.0.113.1/32")])
    assert batches == (Batch("announce", ("tor-a",), SECONDARY, (net("203.0.113.1/32"),)),)


def test_announces_come_before_withdraws():
    batches = diff([intent("203.0.113.2/32")], [intent("203.0.113.1/32")])
    assert [b.action for b in batches] == ["announce", "withdraw"]
    assert batches[1] == Batch("withdraw", ("tor-a",), None, (net("203.0.113.1/32"),))


def test_different_peer_sets_split_batches():
    batches = diff([intent("203.0.113.1/32", "tor-a"), intent("203.0.113.1/32", "tor-b"),
                    intent("203.0.113.2/32", "tor-a")], [])
    assert {(b.peers, b.prefixes) for b in batches} == {
        (("tor-a", "tor-b"), (net("203.0.113.1/32"),)),
        (("tor-a",), (net("203.0.113.2/32"),)),
    }


def test_ipv4_and_ipv6_never_share_a_batch():
    desired = [intent("203.0.113.1/32"), intent("2001:db8::1/128", attributes=PRIMARY6)]
    batches = diff(desired, [])
    assert len(batches) == 2
    assert all(len({p.version for p in b.prefixes}) == 1 for b in batches)
    withdraws = diff([], desired)
    assert len(withdraws) == 2 and all(b.action == "withdraw" for b in withdraws)
    assert all(len({p.version for p in b.prefixes}) == 1 for b in withdraws)
    assert [b.version for b in withdraws] == [4, 6]


def test_batches_hold_at_most_max_batch_prefixes_in_order():
    desired = [intent(str(ipaddress.ip_address("198.51.100.0") + i) + "/32") for i in range(250)]
    random.Random(1).shuffle(desired)
    batches = diff(desired, [], max_batch=100)
    assert [len(b.prefixes) for b in batches] == [100, 100, 50]
    flat = [p for b in batches for p in b.prefixes]
    assert flat == sorted(flat)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError):
        diff([], [], max_batch=0)


def test_conflicting_desired_attributes_for_one_key_are_refused():
    with pytest.raises(ValueError, match="tor-a 203.0.113.1/32"):
        diff([intent("203.0.113.1/32"), intent("203.0.113.1/32", attributes=SECONDARY)], [])


def test_index_keeps_identical_duplicates():
    assert len(index([intent("203.0.113.1/32"), intent("203.0.113.1/32")])) == 1


def test_unchanged_10000_routes_diff_is_empty():
    routes = [intent(str(ipaddress.ip_address("10.128.0.0") + i) + "/32") for i in range(10_000)]
    assert diff(routes, routes[::-1]) == ()


# --- properties -----------------------------------------------------------------------

ATTRS = st.sampled_from([PRIMARY, SECONDARY, RouteAttributes(next_hop=NH4, as_path=(64512,), local_pref=300)])
ATTRS6 = st.sampled_from([PRIMARY6, RouteAttributes(next_hop=NH6, as_path=(64512, 64512, 64512), med=300)])
PEERS = st.sampled_from(["tor-a", "tor-b", "tor-c"])
V4 = st.integers(0, 40).map(lambda i: ipaddress.ip_network(f"203.0.113.{i}/32"))
V6 = st.integers(0, 40).map(lambda i: ipaddress.ip_network(f"2001:db8::{i:x}/128"))
INTENT = st.one_of(
    st.builds(lambda p, peer, a: RouteIntent(p, peer, a, Tier.PRIMARY, ()), V4, PEERS, ATTRS),
    st.builds(lambda p, peer, a: RouteIntent(p, peer, a, Tier.PRIMARY, ()), V6, PEERS, ATTRS6),
)


def unique(intents):
    return list({i.key: i for i in intents}.values())


ROUTES = st.lists(INTENT, max_size=60).map(unique)


@settings(max_examples=300, deadline=None)
@given(ROUTES, ROUTES, st.integers(1, 7))
def test_applying_the_diff_to_announced_yields_desired(desired, announced, max_batch):
    batches = diff(desired, announced, max_batch=max_batch)
    before = {i.key: i.attributes for i in announced}
    assert apply(before, batches) == {i.key: i.attributes for i in desired}
    for b in batches:
        assert 1 <= len(b.prefixes) <= max_batch
        assert len({p.version for p in b.prefixes}) == 1
        assert list(b.prefixes) == sorted(b.prefixes, key=lambda p: int(p.network_address))
        assert list(b.peers) == sorted(set(b.peers))
        assert (b.attributes is None) == (b.action == "withdraw")
        if b.attributes is not None:
            assert b.attributes.next_hop.version == b.version
    actions = [b.action for b in batches]
    assert actions == sorted(actions)  # every announce before every withdraw
    # nothing redundant: each key touched at most once
    keys = [k for b in batches for k in b.keys()]
    assert len(keys) == len(set(keys))


@settings(max_examples=100, deadline=None)
@given(ROUTES, ROUTES, st.randoms())
def test_diff_is_deterministic_under_reordering(desired, announced, rnd):
    shuffled_d, shuffled_a = desired[:], announced[:]
    rnd.shuffle(shuffled_d)
    rnd.shuffle(shuffled_a)
    assert diff(desired, announced) == diff(shuffled_d, shuffled_a)


@settings(max_examples=100, deadline=None)
@given(ROUTES)
def test_diff_of_a_set_with_itself_is_empty(routes):
    assert diff(routes, routes) == ()


# --- what changed between two versions of a dict (replaced_keys, Versioned) -------------------


@pytest.mark.parametrize("seed", range(20))
def test_replaced_keys_from_the_versions_notes_equals_the_full_walk(seed):
    """Copy-on-write versions, as the watcher and the allocator make them: a successor per
    step, keys set (a new object, or the same one again), popped, noted; some versions
    dropped by everyone (their weak reference dies), a few kept. From any kept version to
    the latest, the answer from the notes equals the walk over both dicts."""
    rnd = random.Random(seed)
    kept: list[Versioned] = [Versioned({f"k{i}": object() for i in range(20)})]
    current = kept[0]
    shortcut = 0
    for _ in range(60):
        current = current.successor()
        for _ in range(rnd.randint(0, 4)):
            key = f"k{rnd.randint(0, 30)}"
            current.note(key)
            how = rnd.random()
            if how < 0.4:
                current[key] = object()
            elif how < 0.6 and key in current:
                current[key] = current[key]  # set again, the same object: not a change
            else:
                current.pop(key, None)
        if rnd.random() < 0.5:
            kept.append(current)  # else only `current` holds it: dropped at the next step
        for old in kept[-6:]:
            full = replaced_keys(dict(old), dict(current))  # plain dicts: the walk
            assert replaced_keys(old, current) == full
            shortcut += _descends(current, old)
    assert shortcut > 20, "seldom answered from the notes: this test proved little"
    first = Versioned({"a": 1})
    assert first.changed == set() and not first.successor().changed  # a whole first list keeps no key set


def test_a_version_that_changed_most_keys_keeps_no_notes_and_is_answered_by_the_walk():
    """The watcher's first list arrives in batches, each a successor noting every key it
    adds: those notes were three sets of every key after a cold start (6 MB at 20,000
    Services). Past half the dict, a version forgets its predecessor instead."""
    old = Versioned({f"k{i}": i for i in range(10)})
    new = old.successor()
    for i in range(5):
        new.note(f"k{i}")
        new[f"k{i}"] = -i - 1
    assert new.base is not None and len(new.changed) == 5  # half: still answered from the notes
    new.note("k5")
    new["k5"] = -6
    assert new.base is None and new.changed == set()
    new.note("k6")  # no predecessor: nothing more is noted
    new["k6"] = -7
    assert new.changed == set()
    assert replaced_keys(old, new) == {f"k{i}" for i in range(7)}
    grown = Versioned().successor()  # the watcher's first batch into an empty dict
    for i in range(1000):
        grown.note(i)
        grown[i] = i
    assert grown.base is None and grown.changed == set()
    assert replaced_keys({}, grown) == set(range(1000))


def _descends(new, old) -> bool:
    version = new
    while isinstance(version, Versioned) and version is not old and version.base is not None:
        version = version.base()
    return version is old
