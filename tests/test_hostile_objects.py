"""Issue 14: a tenant's object must not grow every speaker's memory or flood its logs and Events.

The informer's cache holds views (views.py): a view keeps only the annotations bgpspeaker
reads, values capped; the planner lists the first few problems of an annotation, then
how many more.
"""

from __future__ import annotations

import ipaddress
import sys

from bgpspeaker.annotations import COMMUNITIES_ANNOTATION, MAX_VALUE_CHARS, READ_ANNOTATIONS
from bgpspeaker.config.schema import PoolConfig
from bgpspeaker.planner import MAX_WARNINGS, service_communities
from bgpspeaker.views import service_from_dict


def service(annotations: dict) -> dict:
    return {"kind": "Service", "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"type": "ClusterIP"}}


def test_a_view_keeps_only_the_annotations_we_read():
    big = "x" * 250_000
    view = service_from_dict(service({
        "kubectl.kubernetes.io/last-applied-configuration": big, "example.com/notes": big,
        "bgpspeaker.io/cluster-preference": "east,west", "metallb.io/address-pool": "public",
        "metallb.universe.tf/allow-shared-ip": "k", "bgpspeaker.io/some-future-key": "v"}))
    assert dict(view.annotations) == {"bgpspeaker.io/cluster-preference": "east,west",
                                      "metallb.io/address-pool": "public", "metallb.universe.tf/allow-shared-ip": "k",
                                      "bgpspeaker.io/some-future-key": "v"}
    assert sum(sys.getsizeof(v) for _, v in view.annotations) < 1000


def test_every_annotation_the_code_reads_is_kept():
    import bgpspeaker.annotations as names
    read = {value for name, value in vars(names).items() if name.endswith("_ANNOTATION") and isinstance(value, str)}
    read |= {v for name, value in vars(names).items() if name.endswith("_ANNOTATIONS") for v in value}
    assert read <= READ_ANNOTATIONS | {k for k in read if k.startswith("bgpspeaker.io/")}
    assert {"metallb.io/loadBalancerIPs", "metallb.universe.tf/address-pool"} <= READ_ANNOTATIONS


def test_an_overlong_value_of_ours_is_a_short_placeholder_the_planner_refuses():
    communities = ",".join(f"64512:{i}" for i in range(20_000))
    assert len(communities) > MAX_VALUE_CHARS
    view = service_from_dict(service({COMMUNITIES_ANNOTATION: communities}))
    value = dict(view.annotations)[COMMUNITIES_ANNOTATION]
    assert len(value) < 100 and str(len(communities)) in value
    pool = PoolConfig("public", (ipaddress.ip_network("203.0.113.0/28"),))
    allowed, warnings = service_communities(view, pool)
    assert allowed == () and len(warnings) == 1


def test_warnings_are_capped_per_service():
    """20,000 communities the pool does not allow: the first few, then "N more"."""
    communities = ",".join(f"64512:{i}" for i in range(400))  # under the value cap, still hundreds
    view = service_from_dict(service({COMMUNITIES_ANNOTATION: communities}))
    pool = PoolConfig("public", (ipaddress.ip_network("203.0.113.0/28"),))
    _, warnings = service_communities(view, pool)
    assert len(warnings) == MAX_WARNINGS + 1
    assert "64512:0 is not in pool" in warnings[0][1]
    assert warnings[-1][1] == (f"annotation {COMMUNITIES_ANNOTATION}: {400 - MAX_WARNINGS} more items not added "
                               f"(only the first {MAX_WARNINGS} problems are listed)")


def test_list_pages_are_bounded_in_bytes_not_only_in_objects():
    from bgpspeaker.kube.client import MIN_PAGE, PAGE_BYTES, next_page_size
    assert next_page_size(500 * 1500, 500, 500) == 500  # ordinary Services: full pages
    assert next_page_size(50 * 250_000, 50, 500) == PAGE_BYTES // 250_000  # 250 KB each: 16 a page
    assert next_page_size(5 * 2_000_000, 5, 500) == MIN_PAGE
    assert next_page_size(0, 0, 500) == 500  # an empty page
