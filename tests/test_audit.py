"""The offline audit: each cluster's own allocation and plan, compared across the fleet.

Pure tests build the clusters' objects as the API would dump them and run bgpspeaker.audit;
the CLI tests run `python -m bgpspeaker audit` on files in a tmp dir. No network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml

from bgpspeaker.allocator import allocate
from bgpspeaker.audit import (
    BASIS_NODES, BASIS_TIER, ClusterInput, Holder, Placement, audit, conflict_line, report_from_json, report_json,
    report_text, split_line,
)
from bgpspeaker.config.load import load_config
from bgpspeaker.planner import plan
from bgpspeaker.views import snapshot_from_objects

ROOT = Path(__file__).resolve().parent.parent
EAST = ROOT / "configs" / "east.yaml"  # pool vip 203.0.113.0/28, autoAssign, defaultTier primary
WEST = ROOT / "configs" / "west.yaml"  # the same pool, defaultTier secondary
IP = ipaddress.ip_address


# --- objects as a cluster's dump holds them ------------------------------------------------


def node(name: str, address: str, ready: bool = True) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def service(name: str, created: str, *, namespace: str = "default", preference: Optional[str] = None,
            request: Optional[str] = None, share: Optional[str] = None, ports=(80,),
            status: Optional[str] = None, local: bool = False) -> dict:
    annotations = {}
    if preference is not None:
        annotations["bgpspeaker.io/cluster-preference"] = preference
    if request is not None:
        annotations["bgpspeaker.io/load-balancer-ips"] = request
    if share is not None:
        annotations["bgpspeaker.io/allow-shared-ip"] = share
    obj = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created,
                        "annotations": annotations},
           "spec": {"type": "LoadBalancer",
                    "ports": [{"name": f"p{port}", "port": port, "protocol": "TCP"} for port in ports]}}
    if local:
        obj["spec"]["externalTrafficPolicy"] = "Local"
    if status is not None:  # written by that cluster's allocator, with its marker
        annotations["bgpspeaker.io/ip-allocated-from-pool"] = "vip"
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": status}]}}
    return obj


def endpoints(service_name: str, node_name: str, namespace: str = "default") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": True}, "nodeName": node_name}]}


def east_objects(*services: dict, ready: bool = True) -> list[dict]:
    return _cluster_objects("east-1", "10.99.1.2", services, ready)


def west_objects(*services: dict, ready: bool = True) -> list[dict]:
    return _cluster_objects("west-1", "10.99.2.2", services, ready)


def _cluster_objects(node_name: str, address: str, services, ready: bool) -> list[dict]:
    objects = [node(node_name, address)]
    for svc in services:
        objects.append(svc)
        if ready:
            objects.append(endpoints(svc["metadata"]["name"], node_name, svc["metadata"]["namespace"]))
    return objects


def run_audit(*clusters: tuple[Path, list[dict]]):
    return audit([ClusterInput(load_config(str(config)), snapshot_from_objects(objects), config.stem)
                  for config, objects in clusters])


# The case: payroll exists only in west (older, no preference), shop in both with
# "east,west"; nobody requests an address.
PAYROLL = service("payroll", "2026-01-01T00:00:00Z")
SHOP = service("shop", "2026-01-02T00:00:00Z", preference="east,west")


def payroll_shop():
    return run_audit((EAST, east_objects(SHOP)), (WEST, west_objects(PAYROLL, SHOP)))


# --- the case ----------------------------------------------------------------------


def test_payroll_shop_is_a_conflict_on_the_first_address_and_a_split_shop():
    report = payroll_shop()
    assert not report.clean
    [conflict] = report.conflicts
    assert conflict.address == IP("203.0.113.0") and not conflict.latent
    assert conflict.holders == (
        Holder("east", "default/shop", "primary", True), Holder("west", "default/payroll", "secondary", True))
    [split] = report.splits
    assert split.identity == "default/shop" and not split.latent
    assert split.placements == (Placement("east", (IP("203.0.113.0"),), "primary", True),
                                Placement("west", (IP("203.0.113.1"),), "secondary", True))
    assert report_text(report).splitlines() == [
        "203.0.113.0/32: east announces default/shop (primary), west announces default/payroll (secondary)",
        "default/shop: east announces 203.0.113.0 (primary), west announces 203.0.113.1 (secondary)",
        "found: 1 address conflict, 1 split Service, 0 latent (2 clusters: east 1/1 announced, "
        "west 2/2 announced)",
    ]
    assert [(c.name, c.basis) for c in report.clusters] == [("east", BASIS_NODES), ("west", BASIS_NODES)]


def test_the_audit_reads_the_allocation_from_status_as_the_clusters_do():
    # The dump after the allocators ran: the addresses are in status, with the marker.
    # Computed from scratch, west would give the older payroll .0 (the conflict);
    # the status, not a fresh allocation, is what each cluster keeps and announces.
    shop_east = service("shop", "2026-01-02T00:00:00Z", preference="east,west", status="203.0.113.0")
    payroll_west = service("payroll", "2026-01-01T00:00:00Z", status="203.0.113.7")
    shop_west = service("shop", "2026-01-02T00:00:00Z", preference="east,west", status="203.0.113.0")
    report = run_audit((EAST, east_objects(shop_east)), (WEST, west_objects(payroll_west, shop_west)))
    assert report.clean, report_text(report)
    payroll_on_0 = service("payroll", "2026-01-01T00:00:00Z", status="203.0.113.0")
    shop_on_1 = service("shop", "2026-01-02T00:00:00Z", preference="east,west", status="203.0.113.1")
    report = run_audit((EAST, east_objects(shop_east)), (WEST, west_objects(payroll_on_0, shop_on_1)))
    assert [c.address for c in report.conflicts] == [IP("203.0.113.0")]
    assert [s.identity for s in report.splits] == ["default/shop"]


def test_a_clean_fleet_reports_nothing():
    payroll = service("payroll", "2026-01-01T00:00:00Z", request="203.0.113.2")
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east,west", request="203.0.113.1")
    report = run_audit((EAST, east_objects(payroll, shop)), (WEST, west_objects(payroll, shop)))
    assert report.clean and report.conflicts == () and report.splits == ()
    assert report_text(report) == ("ok: 2 clusters (east 2/2 announced, west 2/2 announced): no address held by "
                                   "two Services, no Service with two addresses\n")


def test_a_service_only_in_one_cluster_with_its_own_address_is_no_finding():
    only_west = service("payroll", "2026-01-01T00:00:00Z", request="203.0.113.9")
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east,west", request="203.0.113.1")
    assert run_audit((EAST, east_objects(shop)), (WEST, west_objects(only_west, shop))).clean


def test_a_tenant_requesting_an_address_another_cluster_gave_out_is_a_conflict():
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east,west", request="203.0.113.1")
    thief = service("thief", "2026-01-03T00:00:00Z", namespace="tenant", preference="west",
                    request="203.0.113.1")
    report = run_audit((EAST, east_objects(shop)), (WEST, west_objects(thief)))
    [conflict] = report.conflicts
    assert not conflict.latent
    assert conflict_line(conflict) == ("203.0.113.1/32: east announces default/shop (primary), "
                                       "west announces tenant/thief (primary)")


# --- sharing -------------------------------------------------------------------------------


def shared(name: str, port: int, key: str = "k", namespace: str = "default") -> dict:
    return service(name, "2026-01-01T00:00:00Z", namespace=namespace, request="203.0.113.5", share=key,
                   ports=(port,))


def test_allow_shared_ip_in_one_namespace_with_one_key_is_not_a_conflict():
    # In one cluster, and across clusters (a in east only, b in west only, on the same address).
    both = run_audit((EAST, east_objects(shared("a", 80), shared("b", 443))),
                     (WEST, west_objects(shared("a", 80), shared("b", 443))))
    assert both.clean, report_text(both)
    across = run_audit((EAST, east_objects(shared("a", 80))), (WEST, west_objects(shared("b", 443))))
    assert across.clean, report_text(across)


@pytest.mark.parametrize("b", [
    shared("b", 443, key="other"),  # another key
    shared("b", 80),  # the same port: traffic for port 80 would reach the other Service
    shared("b", 443, namespace="tenant"),  # keys only apply within one namespace
    service("b", "2026-01-01T00:00:00Z", request="203.0.113.5", ports=(443,)),  # no key at all
], ids=["other-key", "same-port", "other-namespace", "no-key"])
def test_sharing_across_clusters_outside_the_sharing_rule_is_a_conflict(b):
    report = run_audit((EAST, east_objects(shared("a", 80))), (WEST, west_objects(b)))
    [conflict] = report.conflicts
    assert conflict.address == IP("203.0.113.5") and not conflict.latent
    assert {h.identity for h in conflict.holders} == {"default/a", f"{b['metadata']['namespace']}/b"}


# --- latent findings -----------------------------------------------------------------------


def test_an_assigned_but_unannounced_service_makes_latent_findings():
    # shop prefers east only: west assigns it an address (the allocator ignores tiers) but
    # does not announce it. payroll in west has no endpoints yet, so it is not announced
    # either: its address clash with east's shop is real only once its pods come up.
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east")
    west = west_objects(PAYROLL, shop, ready=False)
    report = run_audit((EAST, east_objects(shop)), (WEST, west))
    [conflict] = report.conflicts
    assert conflict.latent
    assert [(h.cluster, h.identity, h.announced) for h in conflict.holders] == [
        ("east", "default/shop", True), ("west", "default/payroll", False)]
    assert conflict.holders[1].reason == "noEndpoints" and conflict.holders[1].tier == "secondary"
    [split] = report.splits
    assert split.latent and split.placements[1].reason == "notListedInPreference"
    assert split.placements[1].tier is None
    lines = report_text(report).splitlines()
    assert lines == [
        "latent: 203.0.113.0/32: east announces default/shop (primary), "
        "west assigns default/payroll (secondary, not announced: noEndpoints)",
        "latent: default/shop: east announces 203.0.113.0 (primary), "
        "west assigns 203.0.113.1 (not announced: notListedInPreference)",
        "found: 0 address conflicts, 0 split Services, 2 latent (2 clusters: east 1/1 announced, "
        "west 0/2 announced)",
    ]


def test_real_findings_are_listed_before_latent_ones():
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east,west")
    quiet = service("quiet", "2026-01-03T00:00:00Z", preference="west")  # west .2, no endpoints
    late = service("late", "2026-01-04T00:00:00Z", preference="east", request="203.0.113.2")
    east = east_objects(shop, late)
    west = west_objects(PAYROLL, shop) + [quiet]
    report = run_audit((EAST, east), (WEST, west))
    assert [(str(c.address), c.latent) for c in report.conflicts] == [("203.0.113.0", False),
                                                                      ("203.0.113.2", True)]
    text = report_text(report).splitlines()
    assert [line.startswith("latent:") for line in text[:-1]] == [False, False, True]


def test_without_nodes_a_service_counts_as_announced_by_its_tier():
    # No Nodes in the dumps: the planner cannot run; "assigned and the cluster's tier is
    # not none" decides. shop is not listed for west there: latent, not real.
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east")
    report = run_audit((EAST, [shop]), (WEST, [PAYROLL, shop]))
    assert [c.basis for c in report.clusters] == [BASIS_TIER, BASIS_TIER]
    [conflict] = report.conflicts
    assert not conflict.latent  # payroll: west's default tier (secondary), counted as announced
    [split] = report.splits
    assert split.latent and split.placements[1].reason == "notListedInPreference"


def test_planning_stops_early_only_when_no_node_can_change_the_answer():
    # west-a is not Ready; payroll (Local) has its only endpoint on west-z, the last node
    # planned; idle has no endpoints; hidden is not listed for west. Only planning every
    # node finds payroll announced; the audit must agree with that brute force.
    payroll = service("payroll", "2026-01-01T00:00:00Z", local=True)
    idle = service("idle", "2026-01-02T00:00:00Z")
    hidden = service("hidden", "2026-01-03T00:00:00Z", preference="east")
    shop = service("shop", "2026-01-04T00:00:00Z", preference="east,west", request="203.0.113.9")
    west = [node("west-a", "10.99.2.2", ready=False), node("west-b", "10.99.2.3"), node("west-z", "10.99.2.4"),
            payroll, endpoints("payroll", "west-z"), idle, hidden, shop, endpoints("shop", "west-b")]
    eastie = service("eastie", "2026-01-05T00:00:00Z", request="203.0.113.0")  # payroll's address in west
    report = run_audit((EAST, east_objects(eastie)), (WEST, west))

    config, snapshot = load_config(str(WEST)), snapshot_from_objects(west)
    allocation = allocate(config, snapshot.services.values())
    brute = {s for name in snapshot.nodes for r in plan(config, snapshot, name, allocation).routes for s in r.services}
    assert brute == {"default/payroll", "default/shop"}
    assert report.clusters[1].announced == len(brute) and report.clusters[1].assigned == 4
    [conflict] = report.conflicts
    assert conflict.address == IP("203.0.113.0") and not conflict.latent
    assert [(h.identity, h.announced) for h in conflict.holders] == [("default/eastie", True),
                                                                     ("default/payroll", True)]


# --- input checks and formats --------------------------------------------------------------


def test_one_cluster_given_twice_is_refused():
    with pytest.raises(ValueError, match="cluster 'east' is given twice"):
        run_audit((EAST, east_objects(SHOP)), (EAST, east_objects(PAYROLL)))


def test_json_round_trip():
    for report in (payroll_shop(), run_audit((EAST, east_objects(SHOP)))):
        data = report_json(report)
        assert report_from_json(json.loads(json.dumps(data))) == report
    data = report_json(payroll_shop())
    assert data["conflicts"][0] == {
        "address": "203.0.113.0", "latent": False,
        "holders": [{"cluster": "east", "service": "default/shop", "tier": "primary", "announced": True,
                     "reason": ""},
                    {"cluster": "west", "service": "default/payroll", "tier": "secondary", "announced": True,
                     "reason": ""}]}


def test_line_renderers_agree_with_the_report_text():
    report = payroll_shop()
    assert report_text(report).splitlines()[:2] == [conflict_line(report.conflicts[0]), split_line(report.splits[0])]


# --- the command ---------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bgpspeaker", "audit", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def dump(path: Path, objects: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    return path


def test_cli_reports_payroll_shop_and_exits_1(tmp_path):
    east, west = dump(tmp_path / "east.yaml", east_objects(SHOP)), dump(tmp_path / "west.yaml",
                                                                         west_objects(PAYROLL, SHOP))
    done = cli("--cluster", f"{EAST}={east}", "--cluster", f"{WEST}={west}")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "203.0.113.0/32: east announces default/shop (primary), west announces default/payroll (secondary)",
        "default/shop: east announces 203.0.113.0 (primary), west announces 203.0.113.1 (secondary)"]
    assert done.stderr == ""

    done = cli("--cluster", f"{EAST}={east}", "--cluster", f"{WEST}={west}", "--format", "json")
    assert done.returncode == 1, done.stderr
    expected = audit([ClusterInput(load_config(str(EAST)), snapshot_from_objects(east_objects(SHOP)), f"{EAST}={east}"),
                      ClusterInput(load_config(str(WEST)), snapshot_from_objects(west_objects(PAYROLL, SHOP)),
                                   f"{WEST}={west}")])
    assert report_from_json(json.loads(done.stdout)) == expected


def test_cli_clean_fleet_exits_0(tmp_path):
    shop = service("shop", "2026-01-02T00:00:00Z", preference="east,west", request="203.0.113.1")
    east, west = dump(tmp_path / "e.yaml", east_objects(shop)), dump(tmp_path / "w.yaml", west_objects(shop))
    done = cli("--cluster", f"{EAST}={east}", "--cluster", f"{WEST}={west}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 2 clusters")


def test_cli_without_nodes_says_which_rule_it_used(tmp_path):
    east = dump(tmp_path / "e.yaml", [SHOP])
    done = cli("--cluster", f"{EAST}={east}")
    assert done.returncode == 0
    assert f"note: east: no Nodes in {east}" in done.stderr


def test_cli_bad_input_exits_2(tmp_path):
    good = dump(tmp_path / "good.yaml", east_objects(SHOP))
    bad_config = tmp_path / "bad-config.yaml"
    bad_config.write_text("cluster: {name: east}\nspeaker: {myASN: 0}\n")
    not_yaml = tmp_path / "not-yaml.yaml"
    not_yaml.write_text("kind: List\nitems: [\n")
    cases = [
        ((f"{bad_config}={good}",), f"{bad_config}: invalid config", "speaker.myASN"),
        ((f"{EAST}={not_yaml}",), f"{not_yaml}: not valid YAML", ""),
        ((f"{EAST}={tmp_path / 'missing.yaml'}",), "cannot read objects", ""),
        ((f"{EAST}={good}", f"{EAST}={good}"), "cluster 'east' is given twice", ""),
        (("no-equals-sign",), "give CONFIG=OBJECTS", ""),
    ]
    for clusters, message, detail in cases:
        args = [part for c in clusters for part in ("--cluster", c)]
        done = cli(*args)
        assert done.returncode == 2 and message in done.stderr and detail in done.stderr, (clusters, done.stderr)
        assert done.stdout == ""


def test_cli_on_the_shipped_multicluster_demo_is_clean():
    objects = ROOT / "configs" / "objects" / "multicluster.yaml"
    done = cli(*[part for name in ("east", "west", "central")
                 for part in ("--cluster", f"{ROOT / 'configs' / (name + '.yaml')}={objects}")])
    assert done.returncode == 0, done.stdout + done.stderr
