"""Warnings: configs that are valid but probably do not do what the operator wants.

Mostly about multi-cluster preference, where a mistake is silent: the routes go out, the
sessions are up, and the routers simply cannot tell the primary cluster from the backup.
The facts behind them (docs/design.md §5 "Multi-cluster preference", docs/reference/exabgp-api.md):
local-preference is dropped on eBGP; toward iBGP peers the planner sends an empty
AS_PATH (our own ASN would be a loop at the router), so prepends do nothing there; and a
router compares MED only between routes from the same neighbouring AS unless it runs
always-compare-med.

To stay quiet about things the operator never wrote, tier warnings look only at tiers
written in the file: a tier left out is the DEFAULT_TIERS object itself (see load.py),
whose attributes are chosen to work toward iBGP and eBGP peers alike.
"""

from __future__ import annotations

from typing import Optional, Sequence

from bgpspeaker.config.issues import ConfigIssue
from bgpspeaker.config.schema import DEFAULT_TIERS, Config, TierAttributes
from bgpspeaker.model import GRACEFUL_SHUTDOWN, TIERS_IN_ORDER, Tier


def config_warnings(config: Config) -> list[ConfigIssue]:
    """Every warning for `config`, in a stable order. An empty list means nothing to say."""
    return [*_peer_and_pool_warnings(config), *_tier_warnings(config), *_advertisement_warnings(config)]


def _written(config: Config, tier: Tier) -> Optional[TierAttributes]:
    attributes = config.tiers.get(tier)
    return None if attributes is None or attributes is DEFAULT_TIERS.get(tier) else attributes


def _peer_and_pool_warnings(config: Config) -> list[ConfigIssue]:
    found = []
    if not config.peers:
        found.append(ConfigIssue("peers", "no peers: this speaker announces nothing"))
    if not config.pools:
        found.append(ConfigIssue("pools", "no pools: no Service gets an address and nothing is announced"))
    for i, peer in enumerate(config.peers):
        if peer.hold_time == 0:
            found.append(
                ConfigIssue(
                    f"peers[{i}].holdTime",
                    "0 turns keepalives off: if this node dies, "
                    "the router keeps its routes and never fails over to another cluster",
                )
            )
    if config.speaker.shutdown == "keep":
        if config.exabgp.graceful_restart == 0 and any(p.graceful_restart is None for p in config.peers):
            found.append(
                ConfigIssue(
                    "speaker.shutdown",
                    "keep leaves the routes to graceful restart, but "
                    "exabgp.gracefulRestart is 0: routers drop them when the session closes",
                )
            )
        for i, peer in enumerate(config.peers):
            if peer.graceful_restart == 0:
                found.append(
                    ConfigIssue(
                        f"peers[{i}].gracefulRestart",
                        "0, but speaker.shutdown is keep: this router drops the routes when the session closes",
                    )
                )
    for i, pool in enumerate(config.pools):
        if not pool.shared and config.cluster.default_tier is not Tier.PRIMARY:
            # A cluster that stands in for others (its default tier is not primary) announces
            # addresses other clusters announce too: with records in each cluster's own API,
            # two clusters can give one address to two Services (docs/design.md).
            found.append(
                ConfigIssue(
                    f"pools[{i}].shared",
                    "false, but this cluster stands in for others "
                    "(cluster.defaultTier is not primary): if other clusters announce this "
                    "pool's addresses, mark it shared and give sharedStore, or two clusters "
                    "may give one address to two Services",
                )
            )
        if not pool.auto_assign and not pool.namespaces:
            found.append(
                ConfigIssue(
                    f"pools[{i}].autoAssign",
                    "false, but namespaces is empty: any namespace "
                    "can still take these addresses by requesting them; list the namespaces "
                    "that may",
                )
            )
    return found


def fleet_warnings(configs: Sequence[tuple[str, Config]]) -> list[ConfigIssue]:
    """Warnings across the configs of several clusters (`check-config a.yaml b.yaml ...`).

    A pool whose addresses several clusters announce must be shared by all of them, with
    one store (the same kubeconfig'd namespace): else each cluster records its own
    holders, and two clusters can give one address to two Services.
    """
    found = []
    for n, (source, config) in enumerate(configs):
        for other_source, other in configs[:n]:
            for i, pool in enumerate(config.pools):
                for other_pool in other.pools:
                    if not any(
                        a.overlaps(b) for a in pool.addresses for b in other_pool.addresses if a.version == b.version
                    ):
                        continue
                    if not (pool.shared and other_pool.shared):
                        found.append(
                            ConfigIssue(
                                f"{source}: pools[{i}]",
                                f"pool {pool.name} overlaps pool "
                                f"{other_pool.name} of {other_source}, and they are not both "
                                f"shared: mark them shared, with one sharedStore",
                            )
                        )
                    elif (
                        config.shared_store is not None
                        and other.shared_store is not None
                        and config.shared_store.namespace != other.shared_store.namespace
                    ):
                        found.append(
                            ConfigIssue(
                                f"{source}: sharedStore.namespace",
                                f"differs from "
                                f"{other_source}'s ({other.shared_store.namespace}), which "
                                f"shares pool {other_pool.name} with this one: one store for both",
                            )
                        )
    return found


def _tier_warnings(config: Config) -> list[ConfigIssue]:
    found = []
    peers = config.peers
    my_asn = config.speaker.my_asn
    any_ibgp = any(p.is_ibgp(my_asn) for p in peers)
    any_ebgp = any(not p.is_ibgp(my_asn) for p in peers)
    written = {tier: _written(config, tier) for tier in TIERS_IN_ORDER}

    if peers and not any_ibgp:
        for tier, attributes in written.items():
            if attributes and attributes.local_pref is not None:
                found.append(
                    ConfigIssue(
                        f"tiers.{tier.value}.localPref",
                        f"every peer is eBGP (none has asn {my_asn}) and local-preference is "
                        "only sent over iBGP: it has no effect here",
                    )
                )
                break
    if peers and not any_ebgp:
        for tier, attributes in written.items():
            if attributes and attributes.as_path_prepend:
                found.append(
                    ConfigIssue(
                        f"tiers.{tier.value}.asPathPrepend",
                        f"every peer is iBGP (asn {my_asn}) and iBGP routes carry an empty "
                        "AS_PATH: prepends have no effect here",
                    )
                )
                break
    # Only eBGP peers count: iBGP peers get our routes with an empty AS_PATH, which routers
    # treat as one (internal) neighbour, so MED is compared between those.
    peer_asns = sorted({p.asn for p in peers if not p.is_ibgp(my_asn)})
    meds = {attributes.med for attributes in config.tiers.values()}
    if len(peer_asns) > 1 and len(meds) > 1:
        for tier, attributes in written.items():
            if attributes and attributes.med is not None:
                found.append(
                    ConfigIssue(
                        f"tiers.{tier.value}.med",
                        f"eBGP peers are in different ASes ({', '.join(map(str, peer_asns))}): a "
                        "router compares MED only between routes from the same neighbouring AS "
                        "(unless always-compare-med), so MED alone may not order the tiers",
                    )
                )
                break

    for better, worse in zip(TIERS_IN_ORDER, TIERS_IN_ORDER[1:]):
        if not (written[better] or written[worse]) or better not in config.tiers or worse not in config.tiers:
            continue
        found.extend(
            _compare_tiers(better, config.tiers[better], worse, config.tiers[worse], bool(peers), any_ibgp, any_ebgp)
        )

    for tier, attributes in written.items():
        if attributes and GRACEFUL_SHUTDOWN in attributes.communities:
            found.append(ConfigIssue(f"tiers.{tier.value}.communities", _GRACEFUL_SHUTDOWN_TEXT))
    return found


_GRACEFUL_SHUTDOWN_TEXT = (
    "65535:0 is GRACEFUL_SHUTDOWN (RFC 8326): routers lower the preference of every "
    "route carrying it; `bgpspeaker drain` adds it when it is wanted"
)


def _compare_tiers(
    better: Tier, a: TierAttributes, worse: Tier, b: TierAttributes, have_peers: bool, any_ibgp: bool, any_ebgp: bool
) -> list[ConfigIssue]:
    """Warnings for two adjacent tiers: indistinguishable to the routers, or the wrong way round."""
    found = []
    here = f"tiers.{worse.value}"
    # (attribute, differs, honoured by at least one peer, why not)
    attributes = [
        ("med", a.med != b.med, True, ""),
        ("localPref", a.local_pref != b.local_pref, any_ibgp, "eBGP peers drop it"),
        ("asPathPrepend", a.as_path_prepend != b.as_path_prepend, any_ebgp, "iBGP routes carry no AS_PATH"),
        ("communities", a.communities != b.communities or a.large_communities != b.large_communities, True, ""),
    ]
    if have_peers and not any(differs and honoured for _, differs, honoured, _ in attributes):
        ignored = [(name, why) for name, differs, _, why in attributes if differs]
        if ignored:
            detail = "; ".join(f"{name}: {why}" for name, why in ignored)
            message = f"differs from tiers.{better.value} only in what these peers ignore ({detail})"
        else:
            message = f"has the same attributes as tiers.{better.value}"
        found.append(ConfigIssue(here, f"{message}: routers cannot prefer the {better.value} cluster"))
    # Each attribute's own "better" direction: lower MED, higher local-pref, shorter AS_PATH.
    if a.med is not None and b.med is not None and b.med < a.med:
        found.append(
            ConfigIssue(
                f"{here}.med",
                f"{b.med} is lower than tiers.{better.value}.med {a.med}: "
                f"lower MED wins, so {worse.value} routes would be preferred",
            )
        )
    if a.local_pref is not None and b.local_pref is not None and b.local_pref > a.local_pref:
        found.append(
            ConfigIssue(
                f"{here}.localPref",
                f"{b.local_pref} is higher than tiers.{better.value}.localPref "
                f"{a.local_pref}: higher local-preference wins, so {worse.value} routes would "
                "be preferred",
            )
        )
    if b.as_path_prepend < a.as_path_prepend:
        found.append(
            ConfigIssue(
                f"{here}.asPathPrepend",
                f"{b.as_path_prepend} is less than tiers.{better.value}"
                f".asPathPrepend {a.as_path_prepend}: the shorter AS_PATH wins, so {worse.value} "
                "routes would be preferred",
            )
        )
    return found


def _advertisement_warnings(config: Config) -> list[ConfigIssue]:
    found = []
    for i, advertisement in enumerate(config.advertisements):
        if not advertisement.communities and not advertisement.large_communities:
            found.append(
                ConfigIssue(f"advertisements[{i}]", "adds no communities or largeCommunities: it changes nothing")
            )
        if GRACEFUL_SHUTDOWN in advertisement.communities:
            found.append(ConfigIssue(f"advertisements[{i}].communities", _GRACEFUL_SHUTDOWN_TEXT))
    return found
