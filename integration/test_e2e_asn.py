"""End to end: clusters in different ASes (east 64512, west 64513, central 64514).

BGP compares MED only between paths from the same neighbouring AS, unless the router
has `bgp always-compare-med` (docs/reference/lab-notes.md, measured on FRR 8.4 and BIRD 2: without it,
MED 100 vs 200 from two ASes keeps the *older* path). So the tiers must carry a second
signal that every router honours: the AS-path prepends.

Each scenario makes the most preferred cluster announce *last* (east becomes ready
after west is already the best path), which is exactly when "older path wins" would
pick the wrong cluster.
"""

from __future__ import annotations

import pytest

from integration.conftest import lab_for_test, start_lab
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab

VIP = "203.0.113.7"
ASNS = {"east": 64512, "west": 64513, "central": 64514}


def _east_comes_last(lab):
    """Service everywhere, east not ready; west becomes best; then east becomes ready."""
    lab.create_service("web", VIP, "east,west,central",
                       endpoints={"east": {"east-1": False, "east-2": False}})
    wait_until(lambda: lab.announcing_nodes(VIP) == {"west-1", "central-1"}, 15, "west and central announce")
    lab.wait_best_cluster(VIP, "west")
    lab.wait_served_by(VIP, "west")
    lab.set_cluster_ready("web", "east", True)
    wait_until(lambda: {"east-1", "east-2"} <= lab.announcing_nodes(VIP), 15, "east announces")


@pytest.fixture(scope="module")
def with_acm():
    # prepends off: only MED can make east win
    lab = start_lab(asns=ASNS, always_compare_med=True, speaker_options={"prepends": (0, 0, 0)})
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def without_acm():
    lab = start_lab(asns=ASNS, always_compare_med=False)
    yield lab
    lab.close()


@pytest.fixture
def acm(with_acm, request):
    yield from lab_for_test(with_acm, request)


@pytest.fixture
def no_acm(without_acm, request):
    yield from lab_for_test(without_acm, request)


def test_with_always_compare_med_the_med_decides(acm):
    _east_comes_last(acm)
    acm.wait_best_cluster(VIP, "east")
    best = acm.best_path(VIP)
    assert best.med == 100 and best.aspath == [64512], acm.describe_paths(VIP)
    # every path has the same AS-path length: MED is what decided
    assert {len(p.aspath) for p in acm.paths(VIP)} == {1}
    acm.wait_served_by(VIP, "east")


def test_without_always_compare_med_the_as_path_prepends_decide(no_acm):
    _east_comes_last(no_acm)
    no_acm.wait_best_cluster(VIP, "east")
    by_cluster = {no_acm.cluster_of_peer(p.peer): p for p in no_acm.paths(VIP)}
    assert by_cluster["east"].aspath == [64512]
    assert by_cluster["west"].aspath == [64513, 64513]
    assert by_cluster["central"].aspath == [64514, 64514, 64514]
    no_acm.wait_served_by(VIP, "east")


def test_without_always_compare_med_and_without_prepends_the_older_path_wins(no_acm):
    """The trap the prepends exist for, shown on the real router: the speaker's config is
    hot-reloaded to tiers without prepends, and the router keeps the older path (west)
    although east's MED is better."""
    reloads = {n: no_acm.metric(n, "bgpspeaker_config_reloads_total", {"result": "ok"}) or 0
               for n in no_acm.speakers}
    for node in no_acm.speakers:
        no_acm.write_config(node, prepends=(0, 0, 0))
    wait_until(lambda: all((no_acm.metric(n, "bgpspeaker_config_reloads_total", {"result": "ok"}) or 0) > reloads[n]
                           for n in no_acm.speakers), 15, "every speaker reloaded its config")
    _east_comes_last(no_acm)
    wait_until(lambda: {len(p.aspath) for p in no_acm.paths(VIP)} == {1}, 15, "no prepends on any path")
    # give the router every chance to change its mind: east's paths must be there and
    # its decision taken (a best path exists among all four)
    wait_until(lambda: len(no_acm.paths(VIP)) == 4 and no_acm.best_path(VIP) is not None, 10, "four paths")
    assert no_acm.best_cluster(VIP) == "west", no_acm.describe_paths(VIP)
    assert no_acm.curl_from_client(VIP, timeout=1.0).startswith("west/")
