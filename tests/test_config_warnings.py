"""config_warnings: valid configs that probably do not do what the operator wants."""

from __future__ import annotations

import pytest

from bgpspeaker.config.load import config_warnings, load_config_text
from bgpspeaker.config.schema import DEFAULT_TIERS, Config, ClusterConfig, SpeakerConfig

HEAD = "cluster: {name: east}\nspeaker: {myASN: 64512}\n"
EBGP = "peers:\n  - {name: tor-a, address: 10.0.0.1, asn: 64500}\n"
IBGP = "peers:\n  - {name: rr, address: 10.0.0.1, asn: 64512}\n"
MIXED_ASNS = "peers:\n  - {name: tor-a, address: 10.0.0.1, asn: 64500}\n  - {name: tor-b, address: 10.0.0.2, asn: 64501}\n"
POOL = "pools:\n  - {name: vip, addresses: [203.0.113.0/28]}\n"
DESIGN_TIERS = """tiers:
  primary:   {med: 100, localPref: 300, asPathPrepend: 0, communities: ["64512:100"]}
  secondary: {med: 200, localPref: 200, asPathPrepend: 1, communities: ["64512:200"]}
  tertiary:  {med: 300, localPref: 100, asPathPrepend: 2, communities: ["64512:300"]}
"""


def warnings_for(text: str) -> list[str]:
    return [str(w) for w in config_warnings(load_config_text(text))]


def test_default_tiers_draw_no_warning_whatever_the_peers():
    for peers in (EBGP, IBGP, MIXED_ASNS):
        assert warnings_for(HEAD + peers + POOL) == []


def test_design_tiers_toward_a_single_ebgp_router_warn_only_about_local_pref():
    assert warnings_for(HEAD + EBGP + POOL + DESIGN_TIERS) == [
        "tiers.primary.localPref: every peer is eBGP (none has asn 64512) and local-preference is only sent "
        "over iBGP: it has no effect here"]


def test_prepends_toward_only_ibgp_peers():
    assert warnings_for(HEAD + IBGP + POOL + DESIGN_TIERS) == [
        "tiers.secondary.asPathPrepend: every peer is iBGP (asn 64512) and iBGP routes carry an empty AS_PATH: "
        "prepends have no effect here"]


def test_med_with_peers_in_different_ases():
    tiers = DESIGN_TIERS.replace("localPref: 300, ", "").replace("localPref: 200, ", "").replace("localPref: 100, ", "")
    assert warnings_for(HEAD + MIXED_ASNS + POOL + tiers) == [
        "tiers.primary.med: eBGP peers are in different ASes (64500, 64501): a router compares MED only between "
        "routes from the same neighbouring AS (unless always-compare-med), so MED alone may not order the tiers"]
    # An iBGP peer beside eBGP peers of one AS is not "different ASes" for MED.
    assert warnings_for(HEAD + EBGP + IBGP.replace("peers:\n", "").replace("10.0.0.1", "10.0.0.9")
                        + POOL + tiers) == []


def test_tiers_that_differ_only_in_ignored_attributes():
    tiers = "tiers:\n  primary: {localPref: 300}\n  secondary: {localPref: 200}\n  tertiary: {localPref: 100}\n"
    assert warnings_for(HEAD + EBGP + POOL + tiers) == [
        "tiers.primary.localPref: every peer is eBGP (none has asn 64512) and local-preference is only sent "
        "over iBGP: it has no effect here",
        "tiers.secondary: differs from tiers.primary only in what these peers ignore (localPref: eBGP peers drop "
        "it): routers cannot prefer the primary cluster",
        "tiers.tertiary: differs from tiers.secondary only in what these peers ignore (localPref: eBGP peers drop "
        "it): routers cannot prefer the secondary cluster",
    ]
    tiers = "tiers:\n  primary: {asPathPrepend: 0}\n  secondary: {asPathPrepend: 1}\n  tertiary: {asPathPrepend: 2}\n"
    found = warnings_for(HEAD + IBGP + POOL + tiers)
    assert "tiers.secondary: differs from tiers.primary only in what these peers ignore (asPathPrepend: iBGP " \
           "routes carry no AS_PATH): routers cannot prefer the primary cluster" in found


def test_identical_tiers():
    tiers = "tiers:\n  primary: {med: 5}\n  secondary: {med: 5}\n"
    assert warnings_for(HEAD + EBGP + POOL + tiers) == [
        "tiers.secondary: has the same attributes as tiers.primary: routers cannot prefer the primary cluster"]


def test_tiers_that_differ_only_in_communities_are_left_to_router_policy():
    tiers = ('tiers:\n  primary: {communities: ["64512:100"]}\n  secondary: {communities: ["64512:200"]}\n'
             '  tertiary: {communities: ["64512:300"]}\n')
    assert warnings_for(HEAD + EBGP + POOL + tiers) == []


def test_tiers_the_wrong_way_round():
    tiers = ("tiers:\n  primary: {med: 200, localPref: 100, asPathPrepend: 1}\n"
             "  secondary: {med: 100, localPref: 200, asPathPrepend: 0}\n")
    found = warnings_for(HEAD + IBGP + EBGP.replace("peers:\n", "").replace("10.0.0.1", "10.0.0.9") + POOL + tiers)
    assert [w for w in found if "would be preferred" in w] == [
        "tiers.secondary.med: 100 is lower than tiers.primary.med 200: lower MED wins, so secondary routes would "
        "be preferred",
        "tiers.secondary.localPref: 200 is higher than tiers.primary.localPref 100: higher local-preference wins, "
        "so secondary routes would be preferred",
        "tiers.secondary.asPathPrepend: 0 is less than tiers.primary.asPathPrepend 1: the shorter AS_PATH wins, "
        "so secondary routes would be preferred",
    ]


def test_graceful_shutdown_community_configured_by_hand():
    text = HEAD + EBGP + POOL + 'tiers:\n  primary: {med: 1, communities: ["65535:0"]}\n' \
        + 'advertisements:\n  - {communities: ["65535:0"]}\n'
    found = warnings_for(text)
    assert [w.split(":")[0] for w in found] == ["tiers.primary.communities", "advertisements[0].communities"]
    assert all("GRACEFUL_SHUTDOWN (RFC 8326)" in w for w in found)


@pytest.mark.parametrize("extra, warning", [
    ("", None),
    ("advertisements:\n  - {pools: [vip]}\n", "advertisements[0]: adds no communities or largeCommunities: it "
                                              "changes nothing"),
])
def test_empty_advertisement(extra, warning):
    assert warnings_for(HEAD + EBGP + POOL + extra) == ([warning] if warning else [])


def test_hold_time_zero_and_keep_without_graceful_restart():
    text = HEAD.replace("{myASN: 64512}", "{myASN: 64512, shutdown: keep}") + "exabgp: {gracefulRestart: 0}\n" \
        + EBGP.replace("asn: 64500}", "asn: 64500, holdTime: 0}") + POOL
    assert warnings_for(text) == [
        "peers[0].holdTime: 0 turns keepalives off: if this node dies, the router keeps its routes and never "
        "fails over to another cluster",
        "speaker.shutdown: keep leaves the routes to graceful restart, but exabgp.gracefulRestart is 0: routers "
        "drop them when the session closes",
    ]


def test_reserved_pool_open_to_every_namespace():
    pools = "pools:\n  - {name: vip, addresses: [203.0.113.0/28], autoAssign: false}\n" \
            "  - {name: t, addresses: [198.51.100.0/28], autoAssign: false, namespaces: [t]}\n"
    assert warnings_for(HEAD + EBGP + pools) == [
        "pools[0].autoAssign: false, but namespaces is empty: any namespace can still take these addresses by "
        "requesting them; list the namespaces that may"]


def test_nothing_to_announce():
    assert warnings_for(HEAD) == ["peers: no peers: this speaker announces nothing",
                                  "pools: no pools: no Service gets an address and nothing is announced"]


def test_a_config_built_in_code_with_default_tiers():
    config = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(64512), tiers=dict(DEFAULT_TIERS))
    assert [w.path for w in config_warnings(config)] == ["peers", "pools"]
